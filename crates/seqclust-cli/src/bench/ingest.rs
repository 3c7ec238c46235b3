//! `seqclust bench ingest`: generate a CSV event log, then time `seqclust ingest` on it against
//! the polars peer script (`scripts/bench/ingest_polars.py`) in alternating rounds.

use std::path::PathBuf;
use std::process::Command;

use anyhow::{Context, Result};
use clap::Args;
use seqclust_data::generator::{GenConfig, GenFormat, generate_to_files};
use seqclust_data::ingest::NoProgress;
use serde_json::json;

use super::measure::{self, emit};

/// Ingest throughput and memory, side by side with a polars script.
#[derive(Debug, Args)]
pub struct IngestBench {
    /// Small sizes (500k events, 1 round), finishes in seconds.
    #[arg(long)]
    quick: bool,
    /// Approximate events in the generated log (default 10M).
    #[arg(long)]
    events: Option<u64>,
    /// Alternating rounds per implementation.
    #[arg(long)]
    rounds: Option<usize>,
    /// Where the log and outputs go (needs ~3× the log size).
    #[arg(long, default_value = "/tmp/seqclust-bench-ingest")]
    work_dir: PathBuf,
    /// Threads for both implementations.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Python with polars installed; runs the polars peer in the same rounds.
    #[arg(long)]
    peer_python: Option<PathBuf>,
    /// The polars peer script.
    #[arg(long, default_value = "scripts/bench/ingest_polars.py")]
    polars_script: PathBuf,
    /// Also append the JSON lines to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

pub fn run(a: IngestBench) -> Result<()> {
    let events = a
        .events
        .unwrap_or(if a.quick { 500_000 } else { 10_000_000 });
    let rounds = a.rounds.unwrap_or(if a.quick { 1 } else { 3 });
    std::fs::create_dir_all(&a.work_dir)?;
    let csv = a.work_dir.join(format!("events_{events}.csv"));
    let meta_path = a.work_dir.join(format!("events_{events}.json"));
    let cfg = GenConfig {
        users: (events / 50).max(1),
        mean_events: 50.0,
        ..GenConfig::default()
    };
    let actual_events = match std::fs::read_to_string(&meta_path)
        .ok()
        .and_then(|s| serde_json::from_str::<serde_json::Value>(&s).ok())
    {
        Some(m) if csv.exists() => m["events"].as_u64().unwrap_or(events),
        _ => {
            eprintln!("generating {} …", csv.display());
            let s = generate_to_files(&cfg, &csv, None, GenFormat::Csv, &NoProgress)?;
            std::fs::write(
                &meta_path,
                serde_json::to_string(&json!({"events": s.events, "users": s.users}))?,
            )?;
            s.events
        }
    };
    let input_bytes = std::fs::metadata(&csv)?.len();
    let exe = std::env::current_exe()?;
    let args = json!({"events": actual_events, "users": cfg.users, "input_bytes": input_bytes, "threads": a.threads, "input": "seqclust gen csv"});
    for round in 1..=rounds {
        let out_root = a.work_dir.join("out");
        let _ = std::fs::remove_dir_all(&out_root);
        let mut cmd = Command::new(&exe);
        cmd.arg("ingest")
            .arg(&csv)
            .args([
                "--name",
                "bench",
                "--version",
                &format!("r{round}"),
                "--quiet",
            ])
            .args(["--threads", &a.threads.to_string()])
            .arg("--root")
            .arg(&out_root)
            .arg("--tmp-dir")
            .arg(&a.work_dir);
        let m = measure::run(cmd).context("running seqclust ingest")?;
        emit(
            json!({
                "script": "ingest_rust", "tag": format!("round{round}"), "args": args,
                "results": [{
                    "impl": "seqclust ingest", "events": actual_events, "seconds": m.seconds,
                    "events_per_s": actual_events as f64 / m.seconds, "cpu_s": m.cpu_s,
                    "peak_rss_mib": m.peak_rss_mib, "load": m.load,
                }]
            }),
            a.out.as_deref(),
        )?;
        let _ = std::fs::remove_dir_all(&out_root);
        if let Some(py) = &a.peer_python {
            let peer_out = a.work_dir.join("polars_out");
            let _ = std::fs::remove_dir_all(&peer_out);
            let mut cmd = Command::new(py);
            cmd.arg(&a.polars_script)
                .arg("--input")
                .arg(&csv)
                .arg("--out")
                .arg(&peer_out)
                .env("POLARS_MAX_THREADS", a.threads.to_string());
            let m = measure::run(cmd).context("running the polars peer")?;
            let version = m
                .stdout
                .lines()
                .last()
                .and_then(|l| serde_json::from_str::<serde_json::Value>(l).ok())
                .and_then(|v| v["polars"].as_str().map(str::to_string))
                .unwrap_or_default();
            emit(
                json!({
                    "script": "ingest_polars", "tag": format!("round{round}"), "args": args,
                    "results": [{
                        "impl": format!("polars {version}"), "events": actual_events, "seconds": m.seconds,
                        "events_per_s": actual_events as f64 / m.seconds, "cpu_s": m.cpu_s,
                        "peak_rss_mib": m.peak_rss_mib, "load": m.load,
                    }]
                }),
                a.out.as_deref(),
            )?;
            let _ = std::fs::remove_dir_all(&peer_out);
        }
    }
    Ok(())
}
