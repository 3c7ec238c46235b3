#![doc = include_str!("../README.md")]

pub mod error;
mod metrics;
mod select;
mod tasks;

use std::net::TcpListener;
use std::sync::Arc;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use tokio::sync::watch;
use tonic::transport::{Channel, Endpoint};

use seqclust_proto::security::{BearerToken, TlsConfig};
use tracing::{info, warn};

use seqclust_proto::convert::error_chain;
use seqclust_proto::v1::worker_service_client::WorkerServiceClient;
use seqclust_proto::v1::{self, TaskKind};
use seqclust_proto::{MAX_MESSAGE_BYTES, PROTOCOL_VERSION};

pub use error::{Error, Result};
use tasks::{Ctx, WorkerState};

/// Settings of a worker (the `[worker]` table of the service config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct WorkerConfig {
    /// The coordinator's gRPC address (`http://host:port`).
    pub coordinator: String,
    /// A name for the coordinator's logs.
    pub name: String,
    /// Where the collective listener binds (`0.0.0.0:0` in a pod, `127.0.0.1:0` locally).
    pub collective_bind: String,
    /// The host peers reach this worker at (default: the bound address's IP).
    pub advertise_host: Option<String>,
    /// Compute threads (reported to the coordinator); 0: every core.
    pub threads: usize,
    /// Deadline of every collective call: a silent peer fails it after this long.
    #[serde(with = "seqclust_job::secs")]
    pub collective_timeout: Duration,
    /// How long to keep trying to reach the coordinator before giving up (0: forever),
    /// counted from the last contact with it (a registration, or a registered session's end).
    #[serde(with = "seqclust_job::secs")]
    pub connect_timeout: Duration,
    /// The collective backend: "ring" (CPU) or "nccl" (needs the nccl feature and a GPU).
    pub collective: String,
    /// The GPU ordinal an NCCL group uses.
    pub gpu: usize,
    /// TLS to the coordinator (`[worker.tls]`): `ca` verifies its certificate (an `https://`
    /// coordinator URL), `cert`/`key` are this worker's client certificate for mutual TLS.
    pub tls: TlsConfig,
    /// The bearer token sent with every call (from `[auth] tokens_file`; the CLI sets it).
    #[serde(skip)]
    pub token: BearerToken,
}

impl WorkerConfig {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<()> {
        let field = |field: &str, message: String| Error::Config {
            field: field.to_string(),
            message,
        };
        if !(self.coordinator.starts_with("http://") || self.coordinator.starts_with("https://")) {
            return Err(field(
                "worker.coordinator",
                format!("{:?} is not an http(s) URL", self.coordinator),
            ));
        }
        if !is_host_port(&self.collective_bind) {
            return Err(field(
                "worker.collective_bind",
                format!("{:?} is not host:port", self.collective_bind),
            ));
        }
        if self.collective_timeout < Duration::from_millis(100) {
            return Err(field(
                "worker.collective_timeout",
                "must be at least 0.1 s".into(),
            ));
        }
        self.tls.validate()?;
        if self.tls.require_client_cert {
            return Err(field(
                "worker.tls.require_client_cert",
                "is a coordinator setting ([tls]); give workers cert and key".into(),
            ));
        }
        if !matches!(self.collective.as_str(), "ring" | "nccl") {
            return Err(field(
                "worker.collective",
                format!("{:?} (ring or nccl)", self.collective),
            ));
        }
        Ok(())
    }
}

/// `threads`, with 0 read as every core.
pub fn effective_threads(threads: usize) -> usize {
    if threads > 0 {
        return threads;
    }
    std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1)
}

/// `host:port` with a numeric port (the host is resolved later, when binding).
fn is_host_port(s: &str) -> bool {
    s.rsplit_once(':')
        .is_some_and(|(host, port)| !host.is_empty() && port.parse::<u16>().is_ok())
}

impl Default for WorkerConfig {
    fn default() -> Self {
        WorkerConfig {
            coordinator: "http://127.0.0.1:7070".into(),
            name: "worker".into(),
            collective_bind: "127.0.0.1:0".into(),
            advertise_host: None,
            threads: 0,
            collective_timeout: Duration::from_secs(30),
            connect_timeout: Duration::from_secs(60),
            collective: "ring".into(),
            gpu: 0,
            tls: TlsConfig::default(),
            token: BearerToken::default(),
        }
    }
}

/// Runs a worker until `shutdown` turns true: registers, heartbeats, takes tasks from the
/// control stream one at a time, and registers again when the coordinator comes back after
/// a restart. Returns an error only when the coordinator cannot be reached within
/// `connect_timeout` or refuses the registration (another protocol version).
pub async fn run(cfg: WorkerConfig, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    let listener = TcpListener::bind(&cfg.collective_bind).map_err(|source| Error::Bind {
        addr: cfg.collective_bind.clone(),
        source,
    })?;
    let bound = listener.local_addr().map_err(|source| Error::Bind {
        addr: cfg.collective_bind.clone(),
        source,
    })?;
    let host = cfg
        .advertise_host
        .clone()
        .unwrap_or_else(|| bound.ip().to_string());
    let collective_addr = format!("{host}:{}", bound.port());
    if cfg.collective == "nccl" && !cfg!(feature = "nccl") {
        return Err(Error::Task {
            task: "startup".into(),
            message: "collective \"nccl\" needs a worker built with the nccl feature".into(),
        });
    }
    let state = Arc::new(WorkerState::new(listener, cfg.collective_timeout, cfg.gpu));
    // HTTP/2 keep-alive pings find a dead connection (a partition, a coordinator host gone)
    // within seconds, so that calls fail and the next ones dial again, rather than waiting on
    // TCP retransmits for as long as the kernel keeps trying
    let endpoint = cfg
        .tls
        .endpoint(&cfg.coordinator)?
        .http2_keep_alive_interval(KEEP_ALIVE_INTERVAL)
        .keep_alive_timeout(KEEP_ALIVE_TIMEOUT)
        .keep_alive_while_idle(true);
    let mut last_contact = tokio::time::Instant::now();
    while !*shutdown.borrow() {
        let session = session(
            &cfg,
            &endpoint,
            &collective_addr,
            &state,
            &mut shutdown,
            &mut last_contact,
        )
        .await;
        match session {
            // the session has set `last_contact` if it registered
            Ok(()) => {}
            Err(e) if matches!(e, Error::Rpc { ref status, .. } if status.code() == tonic::Code::FailedPrecondition) =>
            {
                return Err(e);
            }
            Err(e) => {
                if !cfg.connect_timeout.is_zero() && last_contact.elapsed() > cfg.connect_timeout {
                    return Err(e);
                }
                warn!(error = %e, "coordinator unreachable; retrying");
            }
        }
        tokio::select! {
            _ = tokio::time::sleep(Duration::from_millis(500)) => {}
            _ = shutdown.changed() => {}
        }
    }
    Ok(())
}

/// How often an idle connection to the coordinator is pinged, and how long a ping may go
/// unanswered before the connection is taken for dead.
const KEEP_ALIVE_INTERVAL: Duration = Duration::from_secs(2);
const KEEP_ALIVE_TIMEOUT: Duration = Duration::from_secs(3);
/// How long a task's result is offered again while the coordinator cannot be reached (a
/// partition that heals, a coordinator restarting); past it the coordinator's task deadline
/// takes over.
const REPORT_PATIENCE: Duration = Duration::from_secs(20);

/// Reports a task's result, again every half second while the coordinator is unreachable
/// (up to [`REPORT_PATIENCE`]): a result lost to a short outage would otherwise cost the
/// task's deadline.
async fn report(cx: &Ctx, result: v1::TaskResult) {
    let until = tokio::time::Instant::now() + REPORT_PATIENCE;
    let mut c = cx.client.clone();
    loop {
        match c.complete_task(result.clone()).await {
            Ok(_) => return,
            Err(s) if s.code() == tonic::Code::FailedPrecondition => {
                // fenced by the membership epoch: the task was given to others
                warn!(task = %result.task_id, reason = %s.message(), "the coordinator refused this task's result (stale membership)");
                return;
            }
            Err(s)
                if s.code() == tonic::Code::Unavailable && tokio::time::Instant::now() < until =>
            {
                warn!(task = %result.task_id, error = %s, "could not report a task result; trying again");
                tokio::time::sleep(Duration::from_millis(500)).await;
            }
            Err(s) => {
                warn!(task = %result.task_id, error = %s, "could not report a task result");
                return;
            }
        }
    }
}

/// One registration: until the control stream ends, the lease is lost or shutdown.
/// `contact` is set when the coordinator registers this worker and again when a registered
/// session ends, however it ends: the `connect_timeout` counts from the last time the
/// coordinator was there, not from the worker's start (a partition late in a long job must
/// not make the worker give up at once).
async fn session(
    cfg: &WorkerConfig,
    endpoint: &Endpoint,
    collective_addr: &str,
    state: &Arc<WorkerState>,
    shutdown: &mut watch::Receiver<bool>,
    contact: &mut tokio::time::Instant,
) -> Result<()> {
    let channel: Channel = endpoint
        .clone()
        .connect_timeout(Duration::from_secs(5))
        .connect()
        .await
        .map_err(|e| Error::rpc("connect", tonic::Status::unavailable(e.to_string())))?;
    let mut client = WorkerServiceClient::with_interceptor(channel, cfg.token.clone())
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let reg = client
        .register_worker(v1::RegisterWorkerRequest {
            protocol_version: PROTOCOL_VERSION,
            name: cfg.name.clone(),
            collective_addr: collective_addr.to_string(),
            threads: effective_threads(cfg.threads) as u32,
            code_version: env!("CARGO_PKG_VERSION").into(),
            collective: cfg.collective.clone(),
        })
        .await
        .map_err(|s| Error::rpc("RegisterWorker", s))?
        .into_inner();
    let worker_id = reg.worker_id.clone();
    *contact = tokio::time::Instant::now();
    info!(worker = %worker_id, collective = collective_addr, "registered");
    metrics::REGISTERED.set(1);
    let mut stream = client
        .control(v1::ControlRequest {
            worker_id: worker_id.clone(),
        })
        .await
        .map_err(|s| Error::rpc("Control", s))?
        .into_inner();
    // heartbeats until the session ends; `forgotten` turns true when the coordinator no
    // longer knows this registration (its lease expired while this worker was cut off), which
    // ends the session so that the worker registers again
    let (hb_stop, mut hb_rx) = watch::channel(false);
    let (forgotten_tx, mut forgotten) = watch::channel(false);
    let mut hb_client = client.clone();
    let hb_id = worker_id.clone();
    let every = Duration::from_millis(reg.heartbeat_interval_ms.max(100));
    let heartbeat = tokio::spawn(async move {
        loop {
            tokio::select! {
                _ = tokio::time::sleep(every) => {}
                _ = hb_rx.changed() => return,
            }
            let req = v1::HeartbeatRequest {
                worker_id: hb_id.clone(),
            };
            let res = hb_client.heartbeat(req).await;
            metrics::HEARTBEATS
                .with_label_values(&[if res.is_ok() { "ok" } else { "failed" }])
                .inc();
            if let Err(s) = res {
                warn!(error = %s, "heartbeat failed");
                if s.code() == tonic::Code::NotFound {
                    let _ = forgotten_tx.send(true);
                    return;
                }
            }
        }
    });
    // tasks run one at a time on a blocking thread; the stream keeps being read meanwhile
    // so that a release (cancellation) reaches a running task
    let (task_tx, mut task_rx) = tokio::sync::mpsc::unbounded_channel::<v1::Task>();
    let cx = Ctx {
        rt: tokio::runtime::Handle::current(),
        client: client.clone(),
        worker_id: worker_id.clone(),
    };
    let exec_state = state.clone();
    let executor = tokio::spawn(async move {
        while let Some(task) = task_rx.recv().await {
            let (st, cx2) = (exec_state.clone(), cx.clone());
            let t = task.clone();
            let kind = TaskKind::try_from(task.kind).unwrap_or(TaskKind::Unspecified);
            let kind = kind
                .as_str_name()
                .trim_start_matches("TASK_KIND_")
                .to_ascii_lowercase();
            let span = tracing::info_span!(
                "task",
                kind = %kind,
                job = %task.job_id,
                task = %task.task_id,
                rank = task.rank
            );
            let started = std::time::Instant::now();
            let out = tokio::task::spawn_blocking(move || span.in_scope(|| st.run(&cx2, &t))).await;
            metrics::TASK_SECONDS
                .with_label_values(&[&kind])
                .observe(started.elapsed().as_secs_f64());
            let outcome = match &out {
                Ok(Ok(_)) => "ok",
                Ok(Err(Error::Cancelled)) => "cancelled",
                Ok(Err(e)) if e.is_retryable() => "retryable",
                _ => "failed",
            };
            metrics::TASKS.with_label_values(&[&kind, outcome]).inc();
            let mut result = v1::TaskResult {
                worker_id: cx.worker_id.clone(),
                task_id: task.task_id.clone(),
                membership_epoch: task.membership_epoch,
                ..Default::default()
            };
            match out {
                Ok(Ok(o)) => {
                    result.ok = true;
                    result.users = o.users;
                    result.summary_json = o.summary.to_string();
                }
                Ok(Err(_)) if exec_state.is_stopping() => {
                    info!(task = %task.task_id, "task stopped: this worker is shutting down");
                    result.error = format!("worker {} is shutting down", cx.worker_id);
                    result.retryable = true;
                }
                Ok(Err(e)) => {
                    warn!(task = %task.task_id, error = %format!("{e:#}"), "task failed");
                    result.error = error_chain(&e);
                    result.retryable = e.is_retryable();
                }
                Err(join) => {
                    result.error = format!("task panicked: {join}");
                }
            }
            report(&cx, result).await;
        }
    });
    let outcome = loop {
        tokio::select! {
            msg = stream.message() => match msg {
                Ok(Some(task)) => {
                    let kind = TaskKind::try_from(task.kind).unwrap_or(TaskKind::Unspecified);
                    if kind == TaskKind::Release {
                        state.release(&task.job_id, true);
                        continue;
                    }
                    if kind == TaskKind::Abort {
                        info!(task = %task.task_id, "the training group lost a member: ending its collective calls");
                        state.abort(&task.task_id);
                        continue;
                    }
                    if kind == TaskKind::Regroup {
                        info!(task = %task.task_id, "a worker joined: training stops at its next checkpoint");
                        state.regroup(&task.task_id);
                        continue;
                    }
                    if task_tx.send(task).is_err() {
                        break Ok(());
                    }
                }
                Ok(None) => break Ok(()),
                Err(s) => {
                    // the connection broke (a partition, a coordinator restart): whatever
                    // this registration held is, or soon will be, given to others
                    warn!(worker = %worker_id, error = %s, "the control stream to the coordinator broke: registering again");
                    break Err(Error::rpc("Control", s));
                }
            },
            _ = forgotten.changed() => {
                // fenced: the coordinator has given this registration's work to others and
                // refuses its results; a running task ends (at the latest at the collective
                // deadline, its peers being gone) before the worker registers again
                warn!(worker = %worker_id, "the coordinator no longer knows this worker (its lease expired): registering again");
                break Ok(());
            }
            _ = shutdown.changed() => {
                // graceful leave: the running task ends at its next step and is handed back
                state.stop();
                info!(worker = %worker_id, "shutting down: stopping the running task at its next step");
                break Ok(());
            }
        }
    };
    *contact = tokio::time::Instant::now();
    let _ = hb_stop.send(true);
    metrics::REGISTERED.set(0);
    drop(task_tx);
    let _ = heartbeat.await;
    let _ = executor.await;
    outcome
}
