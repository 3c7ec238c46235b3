#![doc = include_str!("../README.md")]

mod analyze;
mod clustering;
mod commit;
pub mod config;
mod driver;
pub mod error;
mod grpc;
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
use seqclust_proto::v1::job_service_server::JobServiceServer;
use seqclust_proto::v1::worker_service_server::WorkerServiceServer;

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

/// Starts the coordinator: binds `cfg.listen`, serves `JobService` and `WorkerService`,
/// watches worker leases and drives the jobs persisted in `meta`, until `shutdown` turns
/// true. A job a previous coordinator left unfinished is carried on.
pub async fn start(
    cfg: CoordinatorConfig,
    meta: Arc<dyn MetaStore>,
    shutdown: watch::Receiver<bool>,
) -> Result<Running> {
    cfg.validate()?;
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
    let state = Arc::new(state::State::new(cfg, meta, shutdown.clone()));
    let closing = state.clone();
    let mut stop_streams = shutdown.clone();
    tokio::spawn(async move {
        stopped(&mut stop_streams).await;
        closing.close_controls();
    });
    watch_leases(state.clone(), shutdown.clone()).await?;
    let jobs = JobServiceServer::new(grpc::JobApi {
        state: state.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let workers = WorkerServiceServer::new(grpc::WorkerApi {
        state: state.clone(),
    })
    .max_decoding_message_size(MAX_MESSAGE_BYTES)
    .max_encoding_message_size(MAX_MESSAGE_BYTES);
    let mut stop = shutdown.clone();
    let server = tokio::spawn(async move {
        let res = Server::builder()
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
