#![doc = include_str!("../README.md")]

mod analyze;
mod clustering;
mod commit;
pub mod config;
mod driver;
pub mod error;
mod grpc;
mod limits;
pub mod metrics;
pub mod shards;
mod state;

use std::net::SocketAddr;
use std::sync::Arc;

use futures::StreamExt;
use tokio::sync::watch;
use tonic::transport::Server;
use tracing::{info, warn};

use seqclust_meta::{MetaStore, WatchEvent};
use seqclust_proto::MAX_MESSAGE_BYTES;
use seqclust_proto::security::{AuthConfig, Guard, TlsConfig, Tokens};
use seqclust_proto::v1::job_service_server::JobServiceServer;
use seqclust_proto::v1::worker_service_server::WorkerServiceServer;
use seqclust_telemetry::{GrpcMetricsLayer, Health};
use tonic::service::interceptor::InterceptedService;
use tonic::transport::ServerTlsConfig;

pub use config::CoordinatorConfig;
pub use error::{Error, Result};
pub use seqclust_artifacts::MANIFEST;

/// A running coordinator.
#[derive(Debug)]
pub struct Running {
    /// The address the gRPC server is bound to (tests use port 0).
    pub addr: SocketAddr,
    server: tokio::task::JoinHandle<()>,
    driver: tokio::task::JoinHandle<()>,
}

impl Running {
    /// Waits for the server and the job driver to stop (after the shutdown signal).
    pub async fn join(self) {
        let _ = self.server.await;
        let _ = self.driver.await;
    }
}

/// How the coordinator's gRPC port is secured (the `[tls]` and `[auth]` tables).
#[derive(Debug, Clone, Default)]
pub struct Security {
    /// TLS on the listener; `None`: plaintext.
    pub tls: Option<ServerTlsConfig>,
    /// Mutual TLS: WorkerService calls need a client certificate that `tls.ca` signed.
    pub require_client_cert: bool,
    /// Bearer tokens both services accept; empty: no token needed.
    pub tokens: Tokens,
}

impl Security {
    /// From the service config's tables (reads the certificate, key, CA and token files).
    pub fn from_config(tls: &TlsConfig, auth: &AuthConfig) -> Result<Security> {
        Ok(Security {
            tls: tls.server()?,
            require_client_cert: tls.require_client_cert,
            tokens: auth.tokens()?,
        })
    }
}

/// Starts the coordinator without TLS or authentication (the embedded `seqclust run`,
/// tests): [`start_with`] and `Security::default()`.
pub async fn start(
    cfg: CoordinatorConfig,
    meta: Arc<dyn MetaStore>,
    shutdown: watch::Receiver<bool>,
) -> Result<Running> {
    start_with(cfg, meta, Security::default(), shutdown).await
}

/// Starts the coordinator: binds `cfg.listen`, serves `JobService` and `WorkerService`
/// (secured by `security`), watches worker leases and drives the jobs persisted in `meta`,
/// until `shutdown` turns true. A job a previous coordinator left unfinished is carried on.
pub async fn start_with(
    cfg: CoordinatorConfig,
    meta: Arc<dyn MetaStore>,
    security: Security,
    shutdown: watch::Receiver<bool>,
) -> Result<Running> {
    cfg.validate()?;
    let mut builder = Server::builder();
    if let Some(tls) = security.tls.clone() {
        builder = builder.tls_config(tls).map_err(|e| Error::Serve {
            addr: cfg.listen.clone(),
            source: Box::new(e),
        })?;
    }
    let listener = tokio::net::TcpListener::bind(&cfg.listen)
        .await
        .map_err(|e| Error::Serve {
            addr: cfg.listen.clone(),
            source: Box::new(e),
        })?;
    let addr = listener.local_addr().map_err(|e| Error::Serve {
        addr: cfg.listen.clone(),
        source: Box::new(e),
    })?;
    let limits = Arc::new(limits::Limits::new(&cfg));
    let state = Arc::new(state::State::new(cfg, meta, shutdown.clone()));
    let closing = state.clone();
    let mut stop_streams = shutdown.clone();
    tokio::spawn(async move {
        stopped(&mut stop_streams).await;
        closing.close_controls();
    });
    watch_leases(state.clone(), shutdown.clone()).await?;
    // a call without an accepted token (or, for workers under mutual TLS, without a client
    // certificate) is refused before any handler runs
    let jobs = InterceptedService::new(
        JobServiceServer::new(grpc::JobApi {
            state: state.clone(),
            limits,
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES),
        Guard {
            tokens: security.tokens.clone(),
            client_cert: false,
        },
    );
    let workers = InterceptedService::new(
        WorkerServiceServer::new(grpc::WorkerApi {
            state: state.clone(),
        })
        .max_decoding_message_size(MAX_MESSAGE_BYTES)
        .max_encoding_message_size(MAX_MESSAGE_BYTES),
        Guard {
            tokens: security.tokens.clone(),
            client_cert: security.require_client_cert,
        },
    );
    let mut stop = shutdown.clone();
    let server = tokio::spawn(async move {
        let res = builder
            .trace_fn(|req| tracing::info_span!("rpc", path = %req.uri().path()))
            .layer(GrpcMetricsLayer)
            .add_service(jobs)
            .add_service(workers)
            // without TCP_NODELAY, small RPCs wait on delayed ACKs (≈40 ms each)
            .serve_with_incoming_shutdown(
                tonic::transport::server::TcpIncoming::from(listener).with_nodelay(Some(true)),
                async move {
                    let _ = stop.wait_for(|s| *s).await;
                },
            )
            .await;
        if let Err(e) = res {
            warn!(error = %e, "gRPC server stopped");
        }
    });
    let driver = tokio::spawn(driver::run(state, shutdown));
    info!(%addr, "coordinator listening");
    Ok(Running {
        addr,
        server,
        driver,
    })
}

async fn stopped(shutdown: &mut watch::Receiver<bool>) {
    let _ = shutdown.wait_for(|s| *s).await;
}

/// A worker whose lease expires (no heartbeat for the TTL) is lost: its key disappears from
/// the store and the watch says so.
async fn watch_leases(state: Arc<state::State>, mut shutdown: watch::Receiver<bool>) -> Result<()> {
    let mut events = state.meta.watch_prefix(state::WORKERS).await?;
    tokio::spawn(async move {
        loop {
            tokio::select! {
                ev = events.next() => match ev {
                    Some(Ok(WatchEvent::Delete { key, .. })) => {
                        if let Some(id) = key.strip_prefix(state::WORKERS) {
                            state.worker_lost(id, "its lease expired").await;
                        }
                    }
                    Some(Ok(_)) => {}
                    Some(Err(e)) => warn!(error = %e, "worker lease watch failed"),
                    None => return,
                },
                _ = stopped(&mut shutdown) => return,
            }
        }
    });
    Ok(())
}

/// The election coordinator replicas campaign in (a key under the metadata store's prefix).
pub const ELECTION: &str = "coordinator";

/// Runs the coordinator as one of several replicas sharing `meta` (two pods of a Deployment):
/// campaigns for the leadership of [`ELECTION`] on a lease of `cfg.lease_ttl`, and only the
/// leader binds `cfg.listen` and drives jobs, carrying on from the persisted job records.
/// `health` says not-ready while it waits (so a Kubernetes Service routes to the leader only)
/// and ready once it leads.
///
/// Returns `Ok` when `shutdown` turns true (resigning, so a standby takes over at once), or
/// [`Error::LeadershipLost`] when the lease could not be kept (etcd unreachable for about the
/// TTL): the coordinator has then stopped, and the process should exit so that it comes back
/// as a standby.
pub async fn lead(
    cfg: CoordinatorConfig,
    meta: Arc<dyn MetaStore>,
    security: Security,
    candidate: &str,
    health: Health,
    mut shutdown: watch::Receiver<bool>,
) -> Result<()> {
    cfg.validate()?;
    metrics::LEADER.set(0);
    let lease = meta.grant_lease(cfg.lease_ttl).await?;
    let (keep_stop, keep_rx) = watch::channel(false);
    let mut keep = seqclust_meta::spawn_keep_alive(meta.clone(), lease, cfg.lease_ttl / 3, keep_rx);
    let leader = meta.leader(ELECTION).await?.unwrap_or_default();
    health.set_not_ready(&format!("standby, waiting to lead (leader: {leader:?})"));
    info!(candidate, leader = %leader, "campaigning for leadership");
    let key = tokio::select! {
        k = meta.campaign(ELECTION, candidate, lease) => k?,
        r = &mut keep => return Err(lost(r)),
        _ = stopped(&mut shutdown) => {
            let _ = keep_stop.send(true);
            let _ = meta.revoke_lease(lease).await;
            return Ok(());
        }
    };
    info!(candidate, "elected leader");
    let (inner_stop, inner_rx) = watch::channel(false);
    let running = match start_with(cfg, meta.clone(), security, inner_rx).await {
        Ok(r) => r,
        Err(e) => {
            let _ = meta.resign(&key).await;
            let _ = keep_stop.send(true);
            let _ = meta.revoke_lease(lease).await;
            return Err(e);
        }
    };
    metrics::LEADER.set(1);
    health.set_ready();
    let outcome = tokio::select! {
        r = &mut keep => Err(lost(r)),
        _ = stopped(&mut shutdown) => Ok(()),
    };
    health.set_not_ready("stopping");
    metrics::LEADER.set(0);
    let _ = inner_stop.send(true);
    running.join().await;
    if outcome.is_ok() {
        let _ = meta.resign(&key).await;
        let _ = keep_stop.send(true);
        let _ = meta.revoke_lease(lease).await;
        info!(candidate, "resigned");
    } else {
        warn!(candidate, "leadership lost; stopped");
    }
    outcome
}

fn lost(r: std::result::Result<seqclust_meta::Result<()>, tokio::task::JoinError>) -> Error {
    Error::LeadershipLost(match r {
        Ok(Ok(())) => "the lease renewal stopped".into(),
        Ok(Err(e)) => e.to_string(),
        Err(e) => format!("the lease renewal task failed: {e}"),
    })
}
