//! `seqclust bench allreduce`: the ring all-reduce between rank processes on loopback, in the
//! setup of the reference peers' `allreduce_peers.py` (torch.distributed with gloo): each
//! iteration refills the buffer and passes a barrier (both untimed), then times one
//! all-reduce on every rank; an iteration's time is the slowest rank's, and the figure is the
//! median over the iterations after the warm-up. Results are checked on every rank.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use clap::Args;
use seqclust_collective::{Collective, RingConfig};
use serde_json::json;

use super::measure::{Probe, emit, median};
use super::ranks::{join_ring, run_ranks};

/// Ring all-reduce bandwidth between rank processes on loopback.
#[derive(Debug, Args)]
pub struct AllReduceBench {
    /// World 2 only, 1 and 16 MiB, 2 + 5 iterations.
    #[arg(long)]
    quick: bool,
    /// World sizes (comma-separated).
    #[arg(long, default_value = "2,4")]
    worlds: String,
    /// Buffer sizes in MiB (comma-separated).
    #[arg(long, default_value = "1,16,64")]
    sizes_mb: String,
    /// Untimed iterations first.
    #[arg(long, default_value_t = 3)]
    warmup: usize,
    /// Timed iterations.
    #[arg(long, default_value_t = 10)]
    iters: usize,
    /// Floats per pipelined bucket.
    #[arg(long, default_value_t = RingConfig::default().bucket_floats)]
    bucket_floats: usize,
    /// Move the data over loopback TCP even between ranks on this machine (by default
    /// same-host links use shared memory).
    #[arg(long)]
    tcp: bool,
    /// Tag of the JSON lines (make_table.py puts runs side by side by tag).
    #[arg(long, default_value = "round1")]
    tag: String,
    /// Also append the JSON lines to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Run as this rank of a benchmark group (set by the parent process).
    #[arg(long, hide = true)]
    rank: Option<usize>,
    /// World size of the group (set by the parent process).
    #[arg(long, hide = true)]
    world: Option<usize>,
}

pub fn run(a: AllReduceBench) -> Result<()> {
    let (worlds, sizes, warmup, iters) = if a.quick {
        (vec![2], vec![1, 16], 2, 5)
    } else {
        (
            parse_list(&a.worlds, "--worlds")?,
            parse_list(&a.sizes_mb, "--sizes-mb")?,
            a.warmup,
            a.iters,
        )
    };
    if let (Some(rank), Some(world)) = (a.rank, a.world) {
        let cfg = RingConfig {
            timeout: Duration::from_secs(60),
            bucket_floats: a.bucket_floats,
            epoch: 0,
            shared_memory: !a.tcp,
        };
        return rank_main(rank, world, &sizes, warmup, iters, cfg);
    }
    if iters == 0 {
        bail!("--iters must be positive");
    }
    let mut results = Vec::new();
    for &world in &worlds {
        if world < 2 {
            bail!("--worlds: a world of {world} has nothing to reduce");
        }
        let probe = Probe::start();
        let per_rank = run_group(world, &sizes, warmup, iters, &a)?;
        let load = probe.finish();
        for (i, &mib) in sizes.iter().enumerate() {
            // an iteration lasts as long as its slowest rank
            let times: Vec<f64> = (0..iters)
                .map(|it| {
                    per_rank
                        .iter()
                        .map(|r| r.sizes[i].times_ms[it])
                        .fold(0.0, f64::max)
                })
                .collect();
            let ms = median(times.clone());
            let best = times.iter().copied().fold(f64::INFINITY, f64::min);
            let bytes = mib * (1 << 20);
            let gbps = |ms: f64| bytes as f64 / (ms / 1e3) / 1e9;
            let bus = 2.0 * (world - 1) as f64 / world as f64;
            results.push(json!({
                "world": world, "size_mib": mib, "bytes": bytes, "time_ms": round3(ms), "time_ms_min": round3(best),
                "algbw_gbps": round3(gbps(ms)), "busbw_gbps": round3(gbps(ms) * bus), "algbw_gbps_best": round3(gbps(best)),
                "correct": per_rank.iter().all(|r| r.sizes[i].correct), "load": load,
            }));
        }
    }
    emit(
        json!({"script": "allreduce_rust", "tag": a.tag,
               "backend": if a.tcp { "seqclust ring (TCP, 127.0.0.1 loopback)" } else { "seqclust ring (same-host shared memory; TCP for headers and liveness)" },
               "args": {"worlds": worlds, "sizes_mb": sizes, "warmup": warmup, "iters": iters,
                        "threads_per_rank": 1, "bucket_floats": a.bucket_floats, "tcp": a.tcp},
               "results": results}),
        a.out.as_deref(),
    )
}

fn round3(v: f64) -> f64 {
    (v * 1000.0).round() / 1000.0
}

fn parse_list(s: &str, flag: &str) -> Result<Vec<usize>> {
    s.split(',')
        .map(|x| {
            x.trim()
                .parse()
                .with_context(|| format!("{flag}: {x:?} is not a whole number"))
        })
        .collect()
}

#[derive(serde::Deserialize)]
struct RankReport {
    sizes: Vec<SizeReport>,
}

#[derive(serde::Deserialize)]
struct SizeReport {
    times_ms: Vec<f64>,
    correct: bool,
}

/// Starts `world` rank processes and collects their reports.
fn run_group(
    world: usize,
    sizes: &[usize],
    warmup: usize,
    iters: usize,
    a: &AllReduceBench,
) -> Result<Vec<RankReport>> {
    let sizes_arg = sizes
        .iter()
        .map(ToString::to_string)
        .collect::<Vec<_>>()
        .join(",");
    let mut args: Vec<String> = ["bench", "allreduce", "--sizes-mb", &sizes_arg]
        .into_iter()
        .map(String::from)
        .collect();
    args.extend([
        "--warmup".into(),
        warmup.to_string(),
        "--iters".into(),
        iters.to_string(),
    ]);
    args.extend(["--bucket-floats".into(), a.bucket_floats.to_string()]);
    if a.tcp {
        args.push("--tcp".into());
    }
    run_ranks(world, 1, &args)?
        .iter()
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad rank report {l:?}")))
        .collect()
}

/// One rank: binds, reports its address, reads the group's, forms the ring and measures.
fn rank_main(
    rank: usize,
    world: usize,
    sizes: &[usize],
    warmup: usize,
    iters: usize,
    cfg: RingConfig,
) -> Result<()> {
    let mut ring = join_ring(rank, world, cfg)?;
    let mut reports = Vec::new();
    let total: f32 = (1..=world).sum::<usize>() as f32;
    for &mib in sizes {
        let n = mib * (1 << 20) / 4;
        // small integers: every partial sum is exact in f32
        let pattern: Vec<f32> = (0..n).map(|i| (i % 97) as f32).collect();
        let mine: Vec<f32> = pattern.iter().map(|v| v * (rank + 1) as f32).collect();
        let mut buf = vec![0f32; n];
        let mut times = Vec::with_capacity(iters);
        let mut correct = true;
        for it in 0..warmup + iters {
            buf.copy_from_slice(&mine);
            ring.barrier()?;
            let t = Instant::now();
            ring.all_reduce_sum(&mut buf)?;
            let ms = t.elapsed().as_secs_f64() * 1e3;
            correct &= buf.iter().zip(&pattern).all(|(&v, &p)| v == p * total);
            if it >= warmup {
                times.push(ms);
            }
        }
        reports.push(json!({"times_ms": times, "correct": correct}));
    }
    println!("{}", json!({"sizes": reports}));
    Ok(())
}
