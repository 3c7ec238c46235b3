//! `seqclust coordinator` and `seqclust worker`: the two long-running services.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::Args;
use serde::{Deserialize, Serialize};
use tokio::sync::watch;

use seqclust_coordinator::CoordinatorConfig;
use seqclust_meta::{EtcdConfig, EtcdStore, MemoryStore, MetaStore};
use seqclust_worker::WorkerConfig;

/// The service config file: `[coordinator]` and `[meta]` tables (the Helm chart renders
/// the same file into a ConfigMap).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// Coordinator settings.
    pub coordinator: CoordinatorConfig,
    /// Metadata store.
    pub meta: MetaConfig,
}

/// Which metadata store.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct MetaConfig {
    /// `memory` (one coordinator, state lost on restart) or `etcd`.
    pub store: String,
    /// etcd settings (with `store = "etcd"`).
    pub etcd: EtcdConfig,
    /// File holding the etcd password (a mounted Secret); read at start, never logged.
    pub password_file: Option<PathBuf>,
}

impl Default for MetaConfig {
    fn default() -> Self {
        MetaConfig {
            store: "memory".into(),
            etcd: EtcdConfig::default(),
            password_file: None,
        }
    }
}

impl ServiceConfig {
    /// Loads a config file; unknown keys and bad values name the field.
    pub fn from_file(path: &std::path::Path) -> Result<ServiceConfig> {
        let text = std::fs::read_to_string(path)
            .with_context(|| format!("failed to read {}", path.display()))?;
        let cfg: ServiceConfig =
            toml::from_str(&text).with_context(|| format!("failed to parse {}", path.display()))?;
        cfg.validate()
            .with_context(|| format!("invalid config {}", path.display()))?;
        Ok(cfg)
    }

    /// Checks every table.
    pub fn validate(&self) -> Result<()> {
        self.coordinator.validate()?;
        match self.meta.store.as_str() {
            "memory" => {}
            "etcd" => self.meta.etcd.validate()?,
            other => bail!("invalid config field meta.store: {other:?} (memory or etcd)"),
        }
        Ok(())
    }
}

/// Opens the configured metadata store.
pub async fn open_meta(m: &MetaConfig) -> Result<Arc<dyn MetaStore>> {
    Ok(match m.store.as_str() {
        "memory" => Arc::new(MemoryStore::new("/seqclust/")),
        "etcd" => {
            let mut cfg = m.etcd.clone();
            if let Some(p) = &m.password_file {
                let pw = std::fs::read_to_string(p).with_context(|| {
                    format!("failed to read meta.password_file {}", p.display())
                })?;
                cfg.password = Some(pw.trim_end().to_string());
            }
            let endpoints = cfg.endpoints.join(",");
            Arc::new(
                EtcdStore::connect(cfg)
                    .await
                    .with_context(|| format!("failed to connect to etcd at {endpoints}"))?,
            )
        }
        other => bail!("invalid config field meta.store: {other:?} (memory or etcd)"),
    })
}

/// Run the coordinator: job API, worker registry, job driver.
#[derive(Debug, Args)]
pub struct CoordinatorArgs {
    /// Config file (TOML with `[coordinator]` and `[meta]` tables).
    #[arg(long, env = "SEQCLUST_CONFIG")]
    config: Option<PathBuf>,
    /// gRPC listen address (overrides coordinator.listen).
    #[arg(long, env = "SEQCLUST_LISTEN")]
    listen: Option<String>,
    /// Metadata store: `memory`, or comma-separated etcd endpoints (`http://etcd:2379`).
    #[arg(long, env = "SEQCLUST_META")]
    meta: Option<String>,
    /// Key prefix in etcd (overrides meta.etcd.prefix).
    #[arg(long, env = "SEQCLUST_ETCD_PREFIX")]
    etcd_prefix: Option<String>,
    /// Worker lease TTL in seconds (overrides coordinator.lease_ttl).
    #[arg(long)]
    lease_ttl: Option<f64>,
}

impl CoordinatorArgs {
    /// Defaults < file < environment and flags.
    fn resolve(&self) -> Result<ServiceConfig> {
        let mut cfg = match &self.config {
            Some(p) => ServiceConfig::from_file(p)?,
            None => ServiceConfig::default(),
        };
        if let Some(l) = &self.listen {
            cfg.coordinator.listen = l.clone();
        }
        if let Some(m) = &self.meta {
            if m == "memory" {
                cfg.meta.store = "memory".into();
            } else {
                cfg.meta.store = "etcd".into();
                cfg.meta.etcd.endpoints = m.split(',').map(|e| e.trim().to_string()).collect();
            }
        }
        if let Some(p) = &self.etcd_prefix {
            cfg.meta.etcd.prefix = p.clone();
        }
        if let Some(t) = self.lease_ttl {
            cfg.coordinator.lease_ttl =
                Duration::try_from_secs_f64(t).context("--lease-ttl: not a duration")?;
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// A shutdown signal that turns true on Ctrl-C or SIGTERM (what Kubernetes sends).
pub fn shutdown_on_signals(rt: &tokio::runtime::Runtime) -> watch::Receiver<bool> {
    let (tx, rx) = watch::channel(false);
    rt.spawn(async move {
        #[cfg(unix)]
        {
            use tokio::signal::unix::{SignalKind, signal};
            let mut term = match signal(SignalKind::terminate()) {
                Ok(s) => s,
                Err(_) => {
                    let _ = tokio::signal::ctrl_c().await;
                    let _ = tx.send(true);
                    return;
                }
            };
            tokio::select! {
                _ = tokio::signal::ctrl_c() => {}
                _ = term.recv() => {}
            }
        }
        #[cfg(not(unix))]
        let _ = tokio::signal::ctrl_c().await;
        let _ = tx.send(true);
    });
    rx
}

pub fn run_coordinator(a: CoordinatorArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let cfg = a.resolve()?;
    let shutdown = shutdown_on_signals(rt);
    rt.block_on(async move {
        let meta = open_meta(&cfg.meta).await?;
        let running = seqclust_coordinator::start(cfg.coordinator.clone(), meta, shutdown).await?;
        eprintln!(
            "coordinator listening on {} (metadata: {})",
            running.addr, cfg.meta.store
        );
        running.join().await;
        Ok(())
    })
}

/// Run a worker: register with the coordinator and carry out its tasks.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// The coordinator (`http://host:7070`).
    #[arg(
        long,
        env = "SEQCLUST_COORDINATOR",
        default_value = "http://127.0.0.1:7070"
    )]
    coordinator: String,
    /// Name in the coordinator's logs (default: the host name).
    #[arg(long, env = "SEQCLUST_WORKER_NAME")]
    name: Option<String>,
    /// Compute threads (default: every core).
    #[arg(long, env = "SEQCLUST_THREADS")]
    threads: Option<usize>,
    /// Where the collective listener binds.
    #[arg(long, env = "SEQCLUST_COLLECTIVE_BIND", default_value = "127.0.0.1:0")]
    collective_bind: String,
    /// The host peers reach this worker at (a pod IP); default: the bound address.
    #[arg(long, env = "SEQCLUST_ADVERTISE_HOST")]
    advertise_host: Option<String>,
    /// Deadline of every collective call, in seconds.
    #[arg(long, default_value_t = 30.0)]
    collective_timeout: f64,
    /// Give up when the coordinator has been unreachable this many seconds (0: never).
    #[arg(long, default_value_t = 60.0)]
    connect_timeout: f64,
    /// Collective backend for training: ring (CPU) or nccl (GPU; a build with --features nccl).
    #[arg(long, env = "SEQCLUST_COLLECTIVE", default_value = "ring", value_parser = ["ring", "nccl"])]
    collective: String,
    /// GPU ordinal of an NCCL worker.
    #[arg(long, env = "SEQCLUST_GPU", default_value_t = 0)]
    gpu: usize,
}

pub fn run_worker(a: WorkerArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let threads = a.threads.unwrap_or_else(|| {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1)
    });
    rayon::ThreadPoolBuilder::new()
        .num_threads(threads.max(1))
        .build_global()
        .context("failed to size the compute thread pool")?;
    let name = a
        .name
        .or_else(|| std::env::var("HOSTNAME").ok())
        .unwrap_or_else(|| format!("worker-{}", std::process::id()));
    let cfg = WorkerConfig {
        coordinator: a.coordinator,
        name,
        collective_bind: a.collective_bind,
        advertise_host: a.advertise_host,
        threads,
        collective_timeout: Duration::try_from_secs_f64(a.collective_timeout)
            .context("--collective-timeout")?,
        connect_timeout: Duration::try_from_secs_f64(a.connect_timeout)
            .context("--connect-timeout")?,
        collective: a.collective,
        gpu: a.gpu,
    };
    let shutdown = shutdown_on_signals(rt);
    rt.block_on(seqclust_worker::run(cfg, shutdown))?;
    Ok(())
}
