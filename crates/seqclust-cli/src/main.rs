//! The `seqclust` command: datasets, training, clustering, and the distributed runtime
//! (coordinator, worker, job submission, the embedded `run`).

mod bench;
mod cmd_cluster;
mod cmd_dataset;
mod cmd_gen;
mod cmd_ingest;
mod cmd_jobs;
mod cmd_quality;
mod cmd_run;
mod cmd_runs;
mod cmd_serve;
mod cmd_service;
mod cmd_train;
mod cmd_tune;
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
    /// Train a sequence encoder on a dataset (self-supervised).
    Train(Box<cmd_train::TrainArgs>),
    /// Evaluate a trained encoder on next-item prediction (leave-one-out), or clusters
    /// against known classes (`eval clustering`).
    #[command(args_conflicts_with_subcommands = true)]
    Eval(EvalCmd),
    /// Quantise a trained model to int8 for serving, with what it costs in quality.
    Quantize(Box<cmd_quality::QuantizeArgs>),
    /// Write every user's vector (Parquet and a raw f32 matrix).
    Embed(cmd_train::EmbedArgs),
    /// Cluster an embeddings file with k-means, Ward or spectral clustering.
    Cluster(Box<cmd_cluster::ClusterArgs>),
    /// Run a whole job here: in-process coordinator, local worker processes.
    Run(cmd_run::RunArgs),
    /// Search hyper-parameters (random search or ASHA); every trial is a job.
    Tune(Box<cmd_tune::TuneArgs>),
    /// Run the coordinator (job API, worker registry, job driver).
    Coordinator(cmd_service::CoordinatorArgs),
    /// Run a worker that registers with a coordinator.
    Worker(cmd_service::WorkerArgs),
    /// Check a service config file, or print the defaults.
    Config(cmd_service::ConfigArgs),
    /// Submit a job spec to a coordinator.
    Submit(cmd_jobs::SubmitArgs),
    /// Show jobs, or one job's phases and progress.
    Status(cmd_jobs::StatusArgs),
    /// Cancel a job.
    Cancel(cmd_jobs::CancelArgs),
    /// Copy a committed run to a local directory, verifying every checksum.
    Pull(cmd_runs::PullArgs),
    /// List, show, verify and garbage-collect committed runs.
    Runs(cmd_runs::RunsArgs),
    /// Write out (and open) a run's HTML report.
    Report(cmd_runs::ReportArgs),
    /// Serve a committed run: Embed / Assign / Recommend over gRPC and JSON HTTP.
    Serve(cmd_serve::ServeArgs),
    /// Benchmarks (JSON lines in the reference peers' format).
    Bench(bench::BenchArgs),
}

/// Keeps freed memory in the process: tensors of the same sizes are allocated and freed every
/// training step, and glibc's defaults return them to the kernel and fault them back in
/// (a quarter of the CPU time in profiles). Same effect as
/// `GLIBC_TUNABLES=glibc.malloc.mmap_threshold=…:glibc.malloc.trim_threshold=…`.
fn tune_allocator() {
    #[cfg(all(target_os = "linux", target_env = "gnu"))]
    // SAFETY: mallopt only changes allocator thresholds; called before any other thread runs.
    unsafe {
        libc::mallopt(libc::M_MMAP_THRESHOLD, 32 << 20);
        libc::mallopt(libc::M_TRIM_THRESHOLD, i32::MAX);
        libc::mallopt(libc::M_TOP_PAD, 64 << 20);
    }
}

fn main() -> std::process::ExitCode {
    tune_allocator();
    let cli = Cli::parse();
    match run(cli) {
        Ok(()) => std::process::ExitCode::SUCCESS,
        Err(e) => {
            eprintln!("error: {e:#}");
            std::process::ExitCode::FAILURE
        }
    }
}

/// `seqclust eval`: next-item metrics by default, or a subcommand.
#[derive(Debug, clap::Args)]
struct EvalCmd {
    #[command(subcommand)]
    what: Option<EvalWhat>,
    #[command(flatten)]
    next: cmd_train::EvalArgs,
}

#[derive(Debug, Subcommand)]
enum EvalWhat {
    /// Cluster quality against known classes (ARI, NMI, purity, silhouette), the encoder
    /// beside the baselines (TF-IDF, item2vec, the untrained encoder).
    Clustering(Box<cmd_quality::ClusteringArgs>),
    /// Compare models of one dataset (a distilled student and its teacher): size, HR@10 and
    /// NDCG@10, throughput, and the ARI of their cluster assignments.
    Compare(Box<cmd_quality::CompareArgs>),
}

fn run(cli: Cli) -> Result<()> {
    // the services start logging from their config file's [telemetry] table
    let _log = match cli.cmd {
        Cmd::Coordinator(_) | Cmd::Worker(_) => None,
        _ => Some(cmd_service::init_logging(
            &seqclust_telemetry::TelemetryConfig::default(),
            cli.log_json,
        )?),
    };
    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    match cli.cmd {
        Cmd::Gen(a) => cmd_gen::run(a),
        Cmd::Ingest(a) => cmd_ingest::run(*a, &rt),
        Cmd::Dataset(a) => cmd_dataset::run(a, &rt),
        Cmd::Train(a) => cmd_train::run_train(*a, &rt),
        Cmd::Eval(EvalCmd {
            what: Some(EvalWhat::Clustering(a)),
            ..
        }) => cmd_quality::run(*a, &rt),
        Cmd::Eval(EvalCmd {
            what: Some(EvalWhat::Compare(a)),
            ..
        }) => cmd_quality::run_compare(*a, &rt),
        Cmd::Eval(EvalCmd { next, .. }) => cmd_train::run_eval(next, &rt),
        Cmd::Embed(a) => cmd_train::run_embed(a, &rt),
        Cmd::Quantize(a) => cmd_quality::run_quantize(*a, &rt),
        Cmd::Cluster(a) => cmd_cluster::run(*a),
        Cmd::Run(a) => cmd_run::run(a, &rt),
        Cmd::Tune(a) => cmd_tune::run(*a, &rt),
        Cmd::Coordinator(a) => cmd_service::run_coordinator(a, cli.log_json, &rt),
        Cmd::Worker(a) => cmd_service::run_worker(a, cli.log_json, &rt),
        Cmd::Config(a) => cmd_service::run_config(a),
        Cmd::Submit(a) => cmd_jobs::run_submit(a, &rt),
        Cmd::Status(a) => cmd_jobs::run_status(a, &rt),
        Cmd::Cancel(a) => cmd_jobs::run_cancel(a, &rt),
        Cmd::Pull(a) => cmd_runs::run_pull(a, &rt),
        Cmd::Runs(a) => cmd_runs::run_runs(a, &rt),
        Cmd::Report(a) => cmd_runs::run_report(a, &rt),
        Cmd::Serve(a) => cmd_serve::run(a, &rt),
        Cmd::Bench(a) => bench::run(a),
    }
}
