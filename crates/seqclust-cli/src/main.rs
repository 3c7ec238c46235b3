//! The `seqclust` command: generate, ingest and inspect behaviour-sequence datasets.

mod bench;
mod cmd_cluster;
mod cmd_dataset;
mod cmd_gen;
mod cmd_ingest;
mod progress;
mod summary;

use anyhow::Result;
use clap::{Parser, Subcommand};

/// seqclust: learn behaviour patterns from e-commerce event sequences.
#[derive(Debug, Parser)]
#[command(name = "seqclust", version, about, max_term_width = 100)]
struct Cli {
    /// Log as JSON lines.
    #[arg(long, global = true, env = "SEQCLUST_LOG_JSON")]
    log_json: bool,
    #[command(subcommand)]
    cmd: Cmd,
}

#[derive(Debug, Subcommand)]
enum Cmd {
    /// Generate events of users with planted personas.
    Gen(cmd_gen::GenArgs),
    /// Ingest event files into a versioned sequence dataset.
    Ingest(Box<cmd_ingest::IngestArgs>),
    /// Inspect committed datasets.
    Dataset(cmd_dataset::DatasetArgs),
    /// Cluster an embeddings file with k-means, Ward or spectral clustering.
    Cluster(Box<cmd_cluster::ClusterArgs>),
    /// Benchmarks (JSON lines in the reference peers' format).
    Bench(bench::BenchArgs),
}

fn init_tracing(json: bool) {
    let filter = tracing_subscriber::EnvFilter::try_from_env("SEQCLUST_LOG")
        .unwrap_or_else(|_| tracing_subscriber::EnvFilter::new("warn"));
    let builder = tracing_subscriber::fmt()
        .with_env_filter(filter)
        .with_writer(std::io::stderr);
    if json {
        builder.json().init();
    } else {
        builder.init();
    }
}

fn main() -> std::process::ExitCode {
    let cli = Cli::parse();
    init_tracing(cli.log_json);
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

fn run(cli: Cli) -> Result<()> {
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Gen(a) => cmd_gen::run(a),
        Cmd::Ingest(a) => cmd_ingest::run(*a, &rt),
        Cmd::Dataset(a) => cmd_dataset::run(a, &rt),
        Cmd::Cluster(a) => cmd_cluster::run(*a),
        Cmd::Bench(a) => bench::run(a),
    }
}
