//! Property tests for every reader: arbitrary bytes never panic, and every row is accounted for
//! either as an event or as a quarantined row.
#![allow(clippy::unwrap_used)] // tests fail loudly on any error

mod common;

use common::*;
use proptest::prelude::*;
use seqclust_data::Format;

fn ingest_bytes(
    format: Format,
    name: &str,
    bytes: &[u8],
) -> Result<(u64, u64), seqclust_data::Error> {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join(name);
    std::fs::write(&p, bytes).unwrap();
    let mut cfg = keep_all(dir.path(), vec![p.display().to_string()]);
    cfg.source.format = format;
    cfg.output.max_bad_fraction = 1.0;
    if format == Format::Jsonl {
        for (f, k) in [("user", "u"), ("item", "i"), ("timestamp", "t")] {
            let c = Some(seqclust_data::ColumnRef::Name(k.into()));
            match f {
                "user" => cfg.source.columns.user = c,
                "item" => cfg.source.columns.item = c,
                _ => cfg.source.columns.timestamp = c,
            }
        }
    }
    run(&cfg).map(|r| (r.manifest.counts.events_read, r.manifest.counts.rows_bad))
}

fn line() -> impl Strategy<Value = String> {
    prop_oneof![
        "[a-z0-9]{0,4},[a-z0-9]{0,4},[0-9]{0,13},(pv|buy|cart|fav|)",
        "[a-z0-9]{0,4}( [a-z0-9]{0,4}){0,6}",
        "[0-9]{1,4}\\+[0-9]{1,2}\\+[0-9]{1,3}\\+[0-9]{1,3}\\+[0-9]{1,3}( [0-9+]{0,12}){0,3}",
        "[0-9]{1,3};(NA|[0-9]{1,3});[0-9]{0,4};[0-9]{0,6};2016-0[1-6]-[0-2][0-9]",
        "\\{\"u\":\"[a-z]{0,3}\",\"i\":[0-9]{0,3},\"t\":[0-9]{0,10}\\}",
        ".{0,40}",
    ]
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 40, ..ProptestConfig::default() })]
    #[test]
    fn readers_never_panic(lines in prop::collection::vec(line(), 1..60), fmt in 0usize..6) {
        let (format, name, header) = [
            (Format::Taobao, "t.csv", ""),
            (Format::Csv, "c.csv", "user_id,item_id,timestamp,action\n"),
            (Format::Amazon, "a.txt", ""),
            (Format::Jd, "j.txt", ""),
            (Format::Diginetica, "d.csv", "session_id;user_id;item_id;timeframe;eventdate\n"),
            (Format::Jsonl, "e.jsonl", ""),
        ][fmt];
        let text = format!("{header}{}\n", lines.join("\n"));
        match ingest_bytes(format, name, text.as_bytes()) {
            Ok((events, bad)) => prop_assert!(events > 0 && events + bad > 0),
            Err(seqclust_data::Error::NoEvents { .. }) => {}
            Err(e) => prop_assert!(false, "unexpected error {e}"),
        }
    }

    #[test]
    fn random_bytes_never_panic(bytes in prop::collection::vec(any::<u8>(), 0..2000), fmt in 0usize..3) {
        let (format, name) = [(Format::Csv, "r.csv"), (Format::Parquet, "r.parquet"), (Format::Jd, "r.txt")][fmt];
        let _ = ingest_bytes(format, name, &bytes);
    }
}
