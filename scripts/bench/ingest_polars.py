#!/usr/bin/env python3
"""The polars peer of `seqclust bench ingest`: the same read / sort / group-by-user / Parquet
write on the generated CSV, partitioned by user hash into shards.

    pip install polars
    POLARS_MAX_THREADS=2 python3 scripts/bench/ingest_polars.py --input events.csv --out DIR

Prints one JSON line with the polars version and the wall time of the work.
"""
import argparse
import json
import os
import time

import polars as pl


def main():
    ap = argparse.ArgumentParser(description=__doc__)
    ap.add_argument("--input", required=True)
    ap.add_argument("--out", required=True)
    ap.add_argument("--shards", type=int, default=8)
    args = ap.parse_args()
    t0 = time.perf_counter()
    schema = {
        "user_id": pl.Utf8,
        "item_id": pl.Utf8,
        "category_id": pl.Utf8,
        "action": pl.Utf8,
        "timestamp": pl.Int64,
        "dwell": pl.Float32,
    }
    df = (
        pl.scan_csv(args.input, schema=schema)
        .with_row_index("seq")
        .sort(["user_id", "timestamp", "seq"])
        .group_by("user_id", maintain_order=True)
        .agg(
            pl.col("item_id"),
            pl.col("action"),
            pl.col("category_id"),
            (pl.col("timestamp") * 1000).alias("timestamps"),
            pl.col("dwell"),
        )
        .with_columns((pl.col("user_id").hash(seed=0) % args.shards).alias("shard"))
        .collect()
    )
    os.makedirs(args.out, exist_ok=True)
    for (shard,), part in df.partition_by("shard", as_dict=True).items():
        part.drop("shard").write_parquet(os.path.join(args.out, f"part-{shard:05d}.parquet"))
    print(json.dumps({"polars": pl.__version__, "seconds": time.perf_counter() - t0, "users": df.height}))


if __name__ == "__main__":
    main()
