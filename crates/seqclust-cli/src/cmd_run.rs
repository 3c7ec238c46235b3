//! `seqclust run`: a whole job on this machine — an in-process coordinator with the
//! in-memory metadata store, N worker processes over loopback gRPC, storage under a local
//! root. The embedded default, and the README's main job.

use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;

use anyhow::{Context, Result, bail};
use clap::Args;

use seqclust_coordinator::CoordinatorConfig;
use seqclust_data::generator::{GenConfig, GenFormat, gen_columns, generate_to_files};
use seqclust_data::ingest::NoProgress;
use seqclust_data::{Format, IngestConfig, Location};
use seqclust_job::JobSpec;
use seqclust_meta::MemoryStore;

use crate::cmd_jobs;

/// Run a job on this machine: coordinator in-process, worker processes over loopback.
#[derive(Debug, Args)]
pub struct RunArgs {
    /// The job spec (TOML), e.g. examples/job-personas.toml.
    spec: PathBuf,
    #[command(flatten)]
    local: LocalArgs,
}

/// The embedded default's workers and storage (`seqclust run`, `seqclust tune`).
#[derive(Debug, Args)]
pub(crate) struct LocalArgs {
    /// Worker processes.
    #[arg(long, default_value_t = 2)]
    pub workers: usize,
    /// Compute threads per worker (default: the cores divided among the workers).
    #[arg(long)]
    pub threads: Option<usize>,
    /// Storage root for datasets and runs (overrides dataset.root and output).
    #[arg(long, env = "SEQCLUST_ROOT")]
    pub root: Option<String>,
}

impl LocalArgs {
    /// Points the job's dataset root and output at `--root`, when given.
    pub fn apply_root(&self, spec: &mut JobSpec) {
        if let Some(root) = &self.root {
            spec.dataset.root = root.clone();
            spec.output = root.clone();
        }
    }

    /// Sizes the job to exactly the `--workers` local workers.
    pub fn apply_workers(&self, spec: &mut JobSpec) -> Result<()> {
        if self.workers == 0 {
            bail!("--workers must be at least 1");
        }
        spec.resources.min_workers = self.workers;
        spec.resources.max_workers = self.workers;
        Ok(())
    }

    /// Starts the local coordinator and workers for `spec`.
    pub fn start(&self, spec: &JobSpec, rt: &tokio::runtime::Runtime) -> Result<LocalCluster> {
        LocalCluster::start(spec.output_root(), self.workers, self.threads, rt)
    }
}

/// Worker processes, killed when dropped.
struct Workers(Vec<Child>);

/// A coordinator in this process (in-memory metadata store, loopback gRPC) and worker
/// processes of this binary: the embedded default of `seqclust run` and `seqclust tune`.
pub(crate) struct LocalCluster {
    /// The coordinator's URL.
    pub url: String,
    logs: PathBuf,
    workers: Workers,
    stop_tx: tokio::sync::watch::Sender<bool>,
    running: seqclust_coordinator::Running,
}

impl LocalCluster {
    /// Starts the coordinator and `workers` workers (`threads` compute threads each, default
    /// the cores divided among them); their logs go under `<output_root>/logs`.
    pub fn start(
        output_root: &str,
        workers: usize,
        threads: Option<usize>,
        rt: &tokio::runtime::Runtime,
    ) -> Result<LocalCluster> {
        let threads = threads.unwrap_or_else(|| {
            let cores = std::thread::available_parallelism().map_or(1, |n| n.get());
            (cores / workers).max(1)
        });
        let logs = Path::new(output_root).join("logs");
        std::fs::create_dir_all(&logs)
            .with_context(|| format!("cannot create {}", logs.display()))?;
        let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
        let running = rt.block_on(seqclust_coordinator::start(
            CoordinatorConfig {
                listen: "127.0.0.1:0".into(),
                ..CoordinatorConfig::default()
            },
            Arc::new(MemoryStore::new("/seqclust/")),
            stop_rx,
        ))?;
        let url = format!("http://{}", running.addr);
        let exe = std::env::current_exe().context("cannot find the seqclust binary")?;
        let mut procs = Workers(Vec::new());
        for i in 0..workers {
            let log = logs.join(format!("worker-{i}.log"));
            let file = std::fs::File::create(&log)
                .with_context(|| format!("cannot create {}", log.display()))?;
            let child = Command::new(&exe)
                .args([
                    "worker",
                    "--coordinator",
                    &url,
                    "--name",
                    &format!("local-{i}"),
                ])
                .args(["--threads", &threads.to_string(), "--connect-timeout", "30"])
                .env(
                    "SEQCLUST_LOG",
                    std::env::var("SEQCLUST_LOG").unwrap_or_else(|_| "info".into()),
                )
                // candle sizes its own thread pools from these, not from --threads
                .env("RAYON_NUM_THREADS", threads.to_string())
                .env("CANDLE_NUM_THREADS", threads.to_string())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(file)
                .spawn()
                .with_context(|| format!("cannot start worker {i}"))?;
            procs.0.push(child);
        }
        println!(
            "coordinator {url}; {workers} workers × {threads} threads (logs in {})",
            logs.display()
        );
        Ok(LocalCluster {
            url,
            logs,
            workers: procs,
            stop_tx,
            running,
        })
    }

    /// Stops the workers and the coordinator; returns where the worker logs are.
    pub fn stop(self, rt: &tokio::runtime::Runtime) -> PathBuf {
        let _ = self.stop_tx.send(true);
        drop(self.workers);
        rt.block_on(self.running.join());
        self.logs
    }
}

impl Drop for Workers {
    fn drop(&mut self) {
        for c in &mut self.0 {
            let _ = c.kill();
            let _ = c.wait();
        }
    }
}

pub fn run(a: RunArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let mut spec = JobSpec::from_file(&a.spec)?;
    a.local.apply_root(&mut spec);
    a.local.apply_workers(&mut spec)?;
    spec.validate()
        .with_context(|| format!("invalid job spec {}", a.spec.display()))?;
    ensure_dataset(&spec, rt)?;

    let cluster = a.local.start(&spec, rt)?;
    let outcome = rt.block_on(async {
        let mut client =
            cmd_jobs::connect(&cmd_jobs::CoordinatorAddr::plain(cluster.url.clone())).await?;
        let job = cmd_jobs::submit(&mut client, &spec, None).await?;
        println!("job {}", job.id);
        cmd_jobs::follow(&mut client, &job.id).await
    });
    let logs = cluster.stop(rt);
    let job = outcome.with_context(|| format!("see the worker logs in {}", logs.display()))?;
    cmd_jobs::print_job(&job);
    print_clusters(&job.run_uri, rt)?;
    let truth = truth_path(&spec);
    if truth.exists() {
        print_against_truth(&job.run_uri, &truth)?;
    }
    Ok(())
}

/// Where `ensure_dataset` writes the planted personas of `[sample_data]`.
pub(crate) fn truth_path(spec: &JobSpec) -> PathBuf {
    Path::new(&spec.dataset.root)
        .join("raw")
        .join(format!("{}.truth.csv", spec.dataset.uri))
}

/// Prints ARI and NMI of the committed clusters against the planted personas.
fn print_against_truth(run_uri: &str, truth: &Path) -> Result<()> {
    let (users, ari, nmi) = against_truth(run_uri, truth)?;
    println!("against the planted personas ({users} users): ARI {ari:.3}, NMI {nmi:.3}");
    Ok(())
}

/// Users scored, ARI and NMI of a committed run's clusters (a local run directory) against
/// known classes: a CSV of `user,class` rows after a header.
pub(crate) fn against_truth(run_uri: &str, truth: &Path) -> Result<(usize, f64, f64)> {
    let text = std::fs::read_to_string(truth)
        .with_context(|| format!("cannot read {}", truth.display()))?;
    let persona: std::collections::HashMap<&str, u64> = text
        .lines()
        .skip(1)
        .filter_map(|l| {
            let mut f = l.split(',');
            Some((f.next()?, f.next()?.trim().parse().ok()?))
        })
        .collect();
    if seqclust_data::store::is_url(run_uri) {
        bail!("{run_uri}: the truth metrics read a local run directory, not a URL");
    }
    let dir = Path::new(run_uri).join("clusters/assignments");
    let (mut want, mut got) = (Vec::new(), Vec::new());
    for s in 0.. {
        let f = dir.join(format!("part-{s:05}.parquet"));
        if !f.exists() {
            break;
        }
        let (users, clusters) = seqclust_data::embeddings::read_assignments(&f)?;
        for (u, c) in users.iter().zip(clusters) {
            if let Some(p) = persona.get(u.as_str()) {
                want.push(*p);
                got.push(u64::from(c));
            }
        }
    }
    if want.is_empty() {
        bail!(
            "no user of {} has a class in {}",
            dir.display(),
            truth.display()
        );
    }
    Ok((
        want.len(),
        seqclust_kmeans::adjusted_rand_index(&want, &got),
        seqclust_kmeans::normalized_mutual_info(&want, &got),
    ))
}

/// Generates and ingests `[sample_data]` when the dataset does not exist yet.
pub(crate) fn ensure_dataset(spec: &JobSpec, rt: &tokio::runtime::Runtime) -> Result<()> {
    match rt.block_on(seqclust_trainer::open_dataset(&spec.train_job())) {
        Ok(_) => return Ok(()),
        Err(seqclust_trainer::Error::Data(seqclust_data::Error::DatasetNotFound { .. }))
            if spec.sample_data.is_some() => {}
        Err(e) => return Err(e).context(format!("dataset {}", spec.dataset.uri)),
    }
    let sd = spec.sample_data.clone().unwrap_or_default();
    let root = &spec.dataset.root;
    let raw = Path::new(root)
        .join("raw")
        .join(format!("{}.csv.gz", spec.dataset.uri));
    let truth = truth_path(spec);
    println!(
        "dataset {} not found: generating {} users with planted personas ({})",
        spec.dataset.uri,
        sd.users,
        raw.display()
    );
    let gen_cfg = GenConfig {
        users: sd.users,
        seed: sd.seed,
        ..GenConfig::default()
    };
    generate_to_files(&gen_cfg, &raw, Some(&truth), GenFormat::Csv, &NoProgress)?;
    let mut cfg = IngestConfig::default();
    cfg.source.paths = vec![raw.display().to_string()];
    cfg.source.format = Format::Csv;
    cfg.source.columns = gen_columns();
    cfg.output.root = root.clone();
    cfg.output.name = spec.dataset.uri.clone();
    let report = seqclust_data::ingest(&cfg, rt.handle(), &NoProgress)?;
    println!(
        "ingested {} users into {}",
        report.manifest.counts.users, report.location
    );
    Ok(())
}

fn print_clusters(run_uri: &str, rt: &tokio::runtime::Runtime) -> Result<()> {
    let run = Location::parse(run_uri, false)?;
    let doc: serde_json::Value =
        serde_json::from_slice(&rt.block_on(run.get("clusters/kmeans.json"))?)?;
    let r = &doc["result"];
    let mut sizes: Vec<u64> = r["sizes"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|v| v.as_u64())
        .collect();
    sizes.sort_unstable_by(|a, b| b.cmp(a));
    println!(
        "clusters  k={} over {} users, {} iterations, inertia/user {:.4}; largest {:?}",
        r["k"],
        r["users"],
        r["iterations"],
        r["inertia"].as_f64().unwrap_or(0.0) / r["users"].as_f64().unwrap_or(1.0).max(1.0),
        &sizes[..sizes.len().min(8)]
    );
    println!("committed {run_uri}/_MANIFEST.json");
    Ok(())
}
