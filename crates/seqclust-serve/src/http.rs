//! The JSON HTTP front end: `POST /v1/embed|assign|recommend`, `GET /v1/info`, `/healthz`,
//! `/metrics`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::extract::State;
use axum::extract::rejection::JsonRejection;
use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use serde::Deserialize;
use serde_json::json;
use tokio::sync::watch;

use crate::batcher::Want;
use crate::error::{Error, Result};
use crate::loaded::EventIn;
use crate::{Query, Server};

#[derive(Deserialize)]
#[serde(deny_unknown_fields)]
struct Body {
    events: Vec<EventIn>,
    #[serde(default)]
    n: u32,
}

fn error(status: StatusCode, message: String) -> Response {
    (status, Json(json!({ "error": message }))).into_response()
}

fn respond(r: Result<serde_json::Value>) -> Response {
    match r {
        Ok(v) => Json(v).into_response(),
        Err(Error::BadRequest(m)) => error(StatusCode::BAD_REQUEST, m),
        Err(Error::Unavailable(m)) => error(StatusCode::SERVICE_UNAVAILABLE, m),
        Err(e) => error(StatusCode::INTERNAL_SERVER_ERROR, e.to_string()),
    }
}

fn body(b: std::result::Result<Json<Body>, JsonRejection>) -> Result<Body> {
    b.map(|Json(b)| b)
        .map_err(|e| Error::BadRequest(format!("request body: {}", e.body_text())))
}

async fn embed(
    State(s): State<Arc<Server>>,
    b: std::result::Result<Json<Body>, JsonRejection>,
) -> Response {
    respond(
        async {
            let b = body(b)?;
            let (a, unknown) = s
                .query(
                    "embed",
                    Query {
                        events: &b.events,
                        want: Want::Embed,
                    },
                )
                .await?;
            Ok(json!({ "vector": a.vector, "run_id": &*a.run_id, "unknown_items": unknown }))
        }
        .await,
    )
}

async fn assign(
    State(s): State<Arc<Server>>,
    b: std::result::Result<Json<Body>, JsonRejection>,
) -> Response {
    respond(
        async {
            let b = body(b)?;
            let (a, unknown) = s.query("assign", Query { events: &b.events, want: Want::Assign }).await?;
            Ok(json!({
                "cluster": a.cluster, "distance": a.distance, "runner_up": a.runner_up,
                "runner_up_distance": a.runner_up_distance, "margin": a.runner_up_distance - a.distance,
                "run_id": &*a.run_id, "unknown_items": unknown,
            }))
        }
        .await,
    )
}

async fn recommend(
    State(s): State<Arc<Server>>,
    b: std::result::Result<Json<Body>, JsonRejection>,
) -> Response {
    respond(
        async {
            let b = body(b)?;
            let n = crate::wanted_n(b.n)?.unwrap_or(s.current.load().recommend.n);
            let (a, unknown) = s
                .query("recommend", Query { events: &b.events, want: Want::Recommend(n) })
                .await?;
            let items: Vec<_> = a.items.iter().map(|(i, sc)| json!({ "item": i, "score": sc })).collect();
            Ok(json!({ "items": items, "cluster": a.cluster, "run_id": &*a.run_id, "unknown_items": unknown }))
        }
        .await,
    )
}

async fn info(State(s): State<Arc<Server>>) -> Response {
    let i = s.info();
    Json(json!({
        "run_id": i.run_id, "name": i.name, "committed_unix_ms": i.committed_unix_ms,
        "k": i.k, "dim": i.dim, "items": i.items, "reloads": i.reloads,
    }))
    .into_response()
}

async fn healthz(State(s): State<Arc<Server>>) -> Response {
    (StatusCode::OK, format!("ok {}\n", s.current.load().run_id)).into_response()
}

async fn metrics(State(s): State<Arc<Server>>) -> Response {
    (
        [(
            axum::http::header::CONTENT_TYPE,
            "text/plain; version=0.0.4",
        )],
        s.metrics.render(),
    )
        .into_response()
}

pub(crate) async fn start(
    addr: SocketAddr,
    server: Arc<Server>,
    shutdown: watch::Receiver<bool>,
) -> Result<(SocketAddr, tokio::task::JoinHandle<()>)> {
    let app = Router::new()
        .route("/v1/embed", post(embed))
        .route("/v1/assign", post(assign))
        .route("/v1/recommend", post(recommend))
        .route("/v1/info", get(info))
        .route("/healthz", get(healthz))
        .route("/metrics", get(metrics))
        .with_state(server);
    seqclust_telemetry::admin::serve_router(&addr.to_string(), app, shutdown)
        .await
        .map_err(|source| Error::Bind {
            addr: addr.to_string(),
            source,
        })
}
