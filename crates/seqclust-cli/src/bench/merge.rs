//! The coordinator's side of one distributed k-means step: `workers` partials of k × d
//! arrive as 1 MiB chunks, are reassembled, decoded and checked (as `PushPartials` does),
//! merged in rank order and applied as a mini-batch update (as the KMEANS phase does).

use std::time::Instant;

use anyhow::Result;
use rand::{RngExt, SeedableRng};
use serde_json::json;

use seqclust_kmeans::{Centroids, Metric, PartialStats};
use seqclust_proto::{Reassembly, chunk_offsets};

use super::measure::{Probe, emit, median};

fn partial(k: usize, d: usize, seed: u64) -> PartialStats {
    let mut r = rand::rngs::ChaCha8Rng::seed_from_u64(seed);
    let mut p = PartialStats::new(k, d);
    p.sums
        .iter_mut()
        .for_each(|v| *v = r.random::<f64>() * 100.0);
    p.counts.iter_mut().for_each(|v| *v = r.random_range(1..50));
    p.inertia.iter_mut().for_each(|v| *v = r.random::<f64>());
    p
}

/// Times the merge of `workers` partials at k × d; prints one JSON line.
pub fn run(
    k: usize,
    d: usize,
    workers: usize,
    tag: &str,
    out: Option<&std::path::Path>,
) -> Result<()> {
    let wire: Vec<Vec<u8>> = (0..workers)
        .map(|w| partial(k, d, w as u64).to_bytes())
        .collect();
    let mut centroids = Centroids::new(vec![0.5; k * d], d)?;
    let mut weight = vec![1.0; k];
    let mut times = Vec::new();
    let probe = Probe::start();
    for _ in 0..7 {
        let t = Instant::now();
        let mut merged = PartialStats::new(k, d);
        for bytes in &wire {
            let mut re = Reassembly::new(1 << 30);
            for (o, n) in chunk_offsets(bytes.len()) {
                re.push(o as u64, bytes.len() as u64, &bytes[o..o + n])
                    .map_err(anyhow::Error::msg)?;
            }
            let p = PartialStats::from_bytes(&re.finish().map_err(anyhow::Error::msg)?)?;
            merged.merge(&p)?;
        }
        merged.apply_minibatch(&mut centroids, &mut weight, Metric::L2);
        times.push(t.elapsed().as_secs_f64());
    }
    let load = probe.finish();
    let mb = wire.iter().map(Vec::len).sum::<usize>() as f64 / 1e6;
    let s = median(times);
    emit(
        json!({
            "script": "kmeans_rust", "tag": tag,
            "args": {"k": k, "d": d, "workers": workers},
            "results": [{
                "impl": "seqclust coordinator merge", "k": k, "n_train": workers,
                "merge_s": s, "payload_mb": mb, "mb_per_s": mb / s,
                "params": {"steps": "reassemble 1 MiB chunks, decode, validate, merge in rank order, mini-batch update"},
                "load": load,
            }],
        }),
        out,
    )
}
