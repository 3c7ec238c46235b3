//! The admin HTTP endpoint of a service: `GET /metrics` (Prometheus text), `/healthz`
//! (the process is up) and `/readyz` (it should get traffic: for a coordinator, it leads).

use std::net::SocketAddr;
use std::sync::{Arc, Mutex};

use axum::Router;
use axum::extract::State;
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use tokio::sync::watch;

use crate::{Error, Result, metrics};

/// Whether the process should get traffic, and why not.
#[derive(Debug, Clone, Default)]
pub struct Health(Arc<Mutex<Option<String>>>);

impl Health {
    /// Not ready, for `reason` (shown by `/readyz`).
    pub fn not_ready(reason: &str) -> Health {
        Health(Arc::new(Mutex::new(Some(reason.to_string()))))
    }

    /// Marks the process ready.
    pub fn set_ready(&self) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = None;
    }

    /// Marks it not ready, for `reason`.
    pub fn set_not_ready(&self, reason: &str) {
        *self.0.lock().unwrap_or_else(|p| p.into_inner()) = Some(reason.to_string());
    }

    /// `None` when ready, else the reason.
    pub fn reason(&self) -> Option<String> {
        self.0.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// A running admin endpoint.
#[derive(Debug)]
pub struct Admin {
    /// Where it listens (tests bind port 0).
    pub addr: SocketAddr,
    /// Ends when the shutdown signal turns true.
    pub task: tokio::task::JoinHandle<()>,
}

async fn metrics_text() -> impl IntoResponse {
    (
        [("content-type", "text/plain; version=0.0.4")],
        metrics::render_default(),
    )
}

async fn ready(State(h): State<Health>) -> impl IntoResponse {
    match h.reason() {
        None => (StatusCode::OK, "ready\n".to_string()),
        Some(r) => (StatusCode::SERVICE_UNAVAILABLE, format!("not ready: {r}\n")),
    }
}

/// Serves `app` on `addr` until `shutdown` turns true (graceful: requests in flight finish);
/// returns the bound address. Every seqclust HTTP endpoint starts this way.
pub async fn serve_router(
    addr: &str,
    app: Router,
    mut shutdown: watch::Receiver<bool>,
) -> std::io::Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let listener = tokio::net::TcpListener::bind(addr).await?;
    let bound = listener.local_addr()?;
    let task = tokio::spawn(async move {
        let res = axum::serve(listener, app)
            .with_graceful_shutdown(async move {
                let _ = shutdown.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = res {
            tracing::warn!(error = %e, %bound, "HTTP endpoint stopped");
        }
    });
    Ok((bound, task))
}

/// Serves the admin endpoint on `addr` until `shutdown` turns true.
pub async fn serve(addr: &str, health: Health, shutdown: watch::Receiver<bool>) -> Result<Admin> {
    let app = Router::new()
        .route("/metrics", get(metrics_text))
        .route("/healthz", get(|| async { "ok\n" }))
        .route("/readyz", get(ready))
        .with_state(health);
    let (bound, task) = serve_router(addr, app, shutdown)
        .await
        .map_err(|source| Error::Bind {
            addr: addr.to_string(),
            source,
        })?;
    tracing::info!(addr = %bound, "admin endpoint (/metrics, /healthz, /readyz) listening");
    Ok(Admin { addr: bound, task })
}
