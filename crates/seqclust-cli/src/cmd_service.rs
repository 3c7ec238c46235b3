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
use seqclust_proto::security::{AuthConfig, BearerToken, TlsConfig};
use seqclust_telemetry::{Health, TelemetryConfig};
use seqclust_worker::WorkerConfig;

/// The service config file that `seqclust coordinator` and `seqclust worker` read:
/// `[coordinator]`, `[meta]`, `[worker]` and `[telemetry]` tables, each optional (the Helm
/// chart renders one file into a ConfigMap that both mount).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ServiceConfig {
    /// Coordinator settings.
    pub coordinator: CoordinatorConfig,
    /// Metadata store.
    pub meta: MetaConfig,
    /// Worker settings.
    pub worker: WorkerConfig,
    /// Logging, metrics endpoint, trace export.
    pub telemetry: TelemetryConfig,
    /// TLS of the coordinator's listener: its certificate and key, and with
    /// `require_client_cert` the CA of the workers' certificates (workers: `[worker.tls]`).
    pub tls: TlsConfig,
    /// Bearer tokens (coordinator: those it accepts; workers: the one they send).
    pub auth: AuthConfig,
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
        self.worker.validate()?;
        self.telemetry.validate()?;
        self.tls.validate()?;
        match self.meta.store.as_str() {
            "memory" => {}
            "etcd" => {
                let mut etcd = self.meta.etcd.clone();
                if self.meta.password_file.is_some() && etcd.password.is_none() {
                    // the password is read from the file at start
                    etcd.password = Some("from meta.password_file".into());
                }
                etcd.validate()?
            }
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
    /// Admin endpoint (/metrics, /healthz, /readyz), e.g. `0.0.0.0:9464` (overrides
    /// telemetry.metrics_listen).
    #[arg(long, env = "SEQCLUST_METRICS_LISTEN")]
    metrics_listen: Option<String>,
    /// The name this replica campaigns under (default: the host name and listen address).
    #[arg(long, env = "SEQCLUST_CANDIDATE")]
    candidate: Option<String>,
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
        if let Some(m) = &self.metrics_listen {
            cfg.telemetry.metrics_listen = m.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

/// Starts logging from the `[telemetry]` table (`--log-json` wins over `log_format`).
pub fn init_logging(
    t: &TelemetryConfig,
    json: bool,
) -> Result<seqclust_telemetry::logging::LogGuard> {
    let mut t = t.clone();
    if json {
        t.log_format = "json".into();
    }
    Ok(seqclust_telemetry::logging::init(&t)?)
}

/// Starts the admin endpoint when `telemetry.metrics_listen` is set.
async fn admin(
    t: &TelemetryConfig,
    health: Health,
    shutdown: watch::Receiver<bool>,
) -> Result<Option<seqclust_telemetry::Admin>> {
    if t.metrics_listen.is_empty() {
        return Ok(None);
    }
    let a = seqclust_telemetry::admin::serve(&t.metrics_listen, health, shutdown).await?;
    eprintln!(
        "admin endpoint on http://{} (/metrics, /healthz, /readyz)",
        a.addr
    );
    Ok(Some(a))
}

fn host_name() -> String {
    std::env::var("HOSTNAME")
        .ok()
        .filter(|h| !h.is_empty())
        .unwrap_or_else(|| format!("pid-{}", std::process::id()))
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

/// Runs a coordinator replica: campaigns for leadership in the metadata store (trivially
/// won with the in-memory store), serves and drives jobs while it leads.
pub fn run_coordinator(a: CoordinatorArgs, json: bool, rt: &tokio::runtime::Runtime) -> Result<()> {
    let cfg = a.resolve()?;
    let _log = init_logging(&cfg.telemetry, json)?;
    let shutdown = shutdown_on_signals(rt);
    let candidate = a
        .candidate
        .clone()
        .unwrap_or_else(|| format!("{}/{}", host_name(), cfg.coordinator.listen));
    rt.block_on(async move {
        let health = Health::not_ready("starting");
        let _admin = admin(&cfg.telemetry, health.clone(), shutdown.clone()).await?;
        let security = seqclust_coordinator::Security::from_config(&cfg.tls, &cfg.auth)?;
        let meta = open_meta(&cfg.meta).await?;
        eprintln!(
            "coordinator {candidate}: campaigning for leadership (metadata: {}), then listening on {}",
            cfg.meta.store, cfg.coordinator.listen
        );
        seqclust_coordinator::lead(
            cfg.coordinator.clone(),
            meta,
            security,
            &candidate,
            health,
            shutdown,
        )
        .await?;
        Ok(())
    })
}

/// Run a worker: register with the coordinator and carry out its tasks.
#[derive(Debug, Args)]
pub struct WorkerArgs {
    /// Config file (TOML; this reads its `[worker]` and `[telemetry]` tables).
    #[arg(long, env = "SEQCLUST_CONFIG")]
    config: Option<PathBuf>,
    /// The coordinator (`http://host:7070`; overrides worker.coordinator).
    #[arg(long, env = "SEQCLUST_COORDINATOR")]
    coordinator: Option<String>,
    /// Name in the coordinator's logs (default: the host name).
    #[arg(long, env = "SEQCLUST_WORKER_NAME")]
    name: Option<String>,
    /// Compute threads (default: every core).
    #[arg(long, env = "SEQCLUST_THREADS")]
    threads: Option<usize>,
    /// Where the collective listener binds (default `127.0.0.1:0`).
    #[arg(long, env = "SEQCLUST_COLLECTIVE_BIND")]
    collective_bind: Option<String>,
    /// The host peers reach this worker at (a pod IP); default: the bound address.
    #[arg(long, env = "SEQCLUST_ADVERTISE_HOST")]
    advertise_host: Option<String>,
    /// Deadline of every collective call, in seconds (default 30).
    #[arg(long)]
    collective_timeout: Option<f64>,
    /// Give up when the coordinator has been unreachable this many seconds (0: never;
    /// default 60).
    #[arg(long)]
    connect_timeout: Option<f64>,
    /// Collective backend for training: ring (CPU) or nccl (GPU; a build with --features nccl).
    #[arg(long, env = "SEQCLUST_COLLECTIVE", value_parser = ["ring", "nccl"])]
    collective: Option<String>,
    /// GPU ordinal of an NCCL worker.
    #[arg(long, env = "SEQCLUST_GPU")]
    gpu: Option<usize>,
    /// Admin endpoint (/metrics, /healthz, /readyz), e.g. `0.0.0.0:9464`.
    #[arg(long, env = "SEQCLUST_METRICS_LISTEN")]
    metrics_listen: Option<String>,
}

impl WorkerArgs {
    /// Defaults < file < environment and flags.
    fn resolve(&self) -> Result<ServiceConfig> {
        let mut cfg = match &self.config {
            Some(p) => ServiceConfig::from_file(p)?,
            None => ServiceConfig::default(),
        };
        let w = &mut cfg.worker;
        if let Some(c) = &self.coordinator {
            w.coordinator = c.clone();
        }
        if let Some(n) = self.name.clone().or_else(|| std::env::var("HOSTNAME").ok()) {
            w.name = n;
        } else if w.name == WorkerConfig::default().name {
            w.name = format!("worker-{}", std::process::id());
        }
        if let Some(t) = self.threads {
            w.threads = t;
        }
        w.threads = seqclust_worker::effective_threads(w.threads);
        if let Some(b) = &self.collective_bind {
            w.collective_bind = b.clone();
        }
        if let Some(h) = &self.advertise_host {
            w.advertise_host = Some(h.clone());
        }
        if let Some(t) = self.collective_timeout {
            w.collective_timeout =
                Duration::try_from_secs_f64(t).context("--collective-timeout: not a duration")?;
        }
        if let Some(t) = self.connect_timeout {
            w.connect_timeout =
                Duration::try_from_secs_f64(t).context("--connect-timeout: not a duration")?;
        }
        if let Some(c) = &self.collective {
            w.collective = c.clone();
        }
        if let Some(g) = self.gpu {
            w.gpu = g;
        }
        if let Some(m) = &self.metrics_listen {
            cfg.telemetry.metrics_listen = m.clone();
        }
        cfg.validate()?;
        Ok(cfg)
    }
}

pub fn run_worker(a: WorkerArgs, json: bool, rt: &tokio::runtime::Runtime) -> Result<()> {
    let mut cfg = a.resolve()?;
    cfg.worker.token = BearerToken::new(cfg.auth.own_token()?.as_deref())?;
    let _log = init_logging(&cfg.telemetry, json)?;
    rayon::ThreadPoolBuilder::new()
        .num_threads(cfg.worker.threads.max(1))
        .build_global()
        .context("failed to size the compute thread pool")?;
    let shutdown = shutdown_on_signals(rt);
    rt.block_on(async move {
        let _admin = admin(&cfg.telemetry, Health::default(), shutdown.clone()).await?;
        seqclust_worker::run(cfg.worker, shutdown).await?;
        Ok(())
    })
}

/// Check a service config file (the one `coordinator` and `worker` read).
#[derive(Debug, Args)]
pub struct ConfigArgs {
    #[command(subcommand)]
    cmd: ConfigCmd,
}

#[derive(Debug, clap::Subcommand)]
enum ConfigCmd {
    /// Parse and validate every table; errors name the file and field.
    Check {
        /// The TOML file.
        file: PathBuf,
        /// Print the effective config (defaults filled in) as TOML.
        #[arg(long)]
        print: bool,
    },
    /// Print the default config as TOML (a starting point for a file).
    Defaults,
}

pub fn run_config(a: ConfigArgs) -> Result<()> {
    match a.cmd {
        ConfigCmd::Check { file, print } => {
            let cfg = ServiceConfig::from_file(&file)?;
            if print {
                print!("{}", effective_toml(&cfg)?);
            } else {
                println!("{}: ok", file.display());
            }
        }
        ConfigCmd::Defaults => print!("{}", effective_toml(&ServiceConfig::default())?),
    }
    Ok(())
}

/// The config as TOML with the etcd password left out.
fn effective_toml(cfg: &ServiceConfig) -> Result<String> {
    let mut c = cfg.clone();
    c.meta.etcd.password = None;
    Ok(toml::to_string_pretty(&c)?)
}
