#![doc = include_str!("../README.md")]

pub mod batcher;
pub mod error;
mod http;
pub mod loaded;
pub mod metrics;

use std::net::SocketAddr;
use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use arc_swap::ArcSwap;
use tokio::sync::watch;
use tonic::{Request, Response, Status};
use tracing::{info, warn};

use seqclust_artifacts::Run;
use seqclust_data::Location;
use seqclust_proto::v1;
use seqclust_proto::v1::inference_service_server::{InferenceService, InferenceServiceServer};

pub use batcher::{BatchConfig, Batcher, Want};
pub use error::{Error, Result};
pub use loaded::{EventIn, Loaded, MAX_EVENTS};
pub use metrics::Metrics;
pub use seqclust_model::Precision;

/// How `seqclust serve` runs.
#[derive(Debug, Clone)]
pub struct ServeConfig {
    /// Storage root of the runs.
    pub root: String,
    /// `latest/<name>` (followed: hot reload), `runs/<id>`, a job id, or a pulled directory.
    pub run: String,
    /// gRPC listen address.
    pub grpc: SocketAddr,
    /// HTTP (JSON, /healthz, /metrics) listen address; `None`: no HTTP.
    pub http: Option<SocketAddr>,
    /// How often `latest/<name>` is checked.
    pub poll: Duration,
    /// Micro-batching.
    pub batch: BatchConfig,
    /// TLS on the gRPC listener (`seqclust serve --tls-cert/--tls-key`); `None`: plaintext.
    pub tls: Option<tonic::transport::ServerTlsConfig>,
    /// The arithmetic of Recommend's item scoring (`seqclust serve --precision`).
    pub precision: Precision,
}

/// Shared by the gRPC and HTTP front ends.
pub struct Server {
    current: Arc<ArcSwap<Loaded>>,
    batcher: Batcher,
    /// The metrics.
    pub metrics: Arc<Metrics>,
    reloads: AtomicU64,
}

/// A request in the form both front ends share.
pub struct Query<'a> {
    /// The events.
    pub events: &'a [EventIn],
    /// What is wanted.
    pub want: Want,
}

impl Server {
    /// Answers one request (parsing, batching, metrics).
    pub async fn query(
        &self,
        method: &'static str,
        q: Query<'_>,
    ) -> Result<(batcher::Answer, u32)> {
        let t0 = Instant::now();
        let result = async {
            let run = self.current.load_full();
            let (seq, unknown) = run.parse(q.events)?;
            self.metrics.unknown_items.inc_by(u64::from(unknown));
            let a = self.batcher.submit(run, seq, q.want).await?;
            Ok((a, unknown))
        }
        .await;
        let code = match &result {
            Ok(_) => "ok",
            Err(Error::BadRequest(_)) => "invalid_argument",
            Err(Error::Unavailable(_)) => "unavailable",
            Err(_) => "internal",
        };
        self.metrics
            .requests
            .with_label_values(&[method, code])
            .inc();
        self.metrics
            .latency
            .with_label_values(&[method])
            .observe(t0.elapsed().as_secs_f64());
        result
    }

    /// The run being served.
    pub fn info(&self) -> v1::InfoResponse {
        let m = self.current.load();
        v1::InfoResponse {
            run_id: m.run_id.clone(),
            name: m.name.clone(),
            committed_unix_ms: m.committed_unix_ms,
            k: m.k as u32,
            dim: m.model.config().dim as u32,
            items: m.items.len() as u64,
            reloads: self.reloads.load(Ordering::Relaxed),
        }
    }

    fn install(&self, loaded: Loaded) {
        let old = self.current.load();
        self.metrics
            .run
            .with_label_values(&[&old.run_id, &old.name])
            .set(0);
        self.metrics
            .run
            .with_label_values(&[&loaded.run_id, &loaded.name])
            .set(1);
        self.current.store(Arc::new(loaded));
    }
}

fn events_of(events: Vec<v1::Event>) -> Vec<EventIn> {
    events
        .into_iter()
        .map(|e| EventIn {
            item: e.item,
            action: e.action,
            category: e.category,
            timestamp_ms: e.timestamp_ms,
        })
        .collect()
}

fn wanted_n(n: u32) -> Result<Option<usize>> {
    match n {
        0 => Ok(None),
        1..=1000 => Ok(Some(n as usize)),
        _ => Err(Error::BadRequest(format!("n: {n}, at most 1000"))),
    }
}

struct Grpc(Arc<Server>);

#[tonic::async_trait]
impl InferenceService for Grpc {
    async fn embed(
        &self,
        r: Request<v1::SequenceRequest>,
    ) -> Result<Response<v1::EmbedResponse>, Status> {
        let events = events_of(r.into_inner().events);
        let (a, unknown) = self
            .0
            .query(
                "embed",
                Query {
                    events: &events,
                    want: Want::Embed,
                },
            )
            .await?;
        Ok(Response::new(v1::EmbedResponse {
            vector: a.vector,
            run_id: a.run_id.to_string(),
            unknown_items: unknown,
        }))
    }

    async fn assign(
        &self,
        r: Request<v1::SequenceRequest>,
    ) -> Result<Response<v1::AssignResponse>, Status> {
        let events = events_of(r.into_inner().events);
        let (a, unknown) = self
            .0
            .query(
                "assign",
                Query {
                    events: &events,
                    want: Want::Assign,
                },
            )
            .await?;
        Ok(Response::new(v1::AssignResponse {
            cluster: a.cluster,
            distance: a.distance,
            runner_up: a.runner_up,
            runner_up_distance: a.runner_up_distance,
            margin: a.runner_up_distance - a.distance,
            run_id: a.run_id.to_string(),
            unknown_items: unknown,
        }))
    }

    async fn recommend(
        &self,
        r: Request<v1::RecommendRequest>,
    ) -> Result<Response<v1::RecommendResponse>, Status> {
        let r = r.into_inner();
        let n = wanted_n(r.n)?.unwrap_or(self.0.current.load().recommend.n);
        let events = events_of(r.events);
        let (a, unknown) = self
            .0
            .query(
                "recommend",
                Query {
                    events: &events,
                    want: Want::Recommend(n),
                },
            )
            .await?;
        Ok(Response::new(v1::RecommendResponse {
            items: a
                .items
                .into_iter()
                .map(|(item, score)| v1::ScoredItem { item, score })
                .collect(),
            cluster: a.cluster,
            run_id: a.run_id.to_string(),
            unknown_items: unknown,
        }))
    }

    async fn info(
        &self,
        _r: Request<v1::InfoRequest>,
    ) -> Result<Response<v1::InfoResponse>, Status> {
        Ok(Response::new(self.0.info()))
    }
}

/// A running server.
pub struct Running {
    /// The bound gRPC address.
    pub grpc: SocketAddr,
    /// The bound HTTP address.
    pub http: Option<SocketAddr>,
    /// The shared state (for tests and embedding).
    pub server: Arc<Server>,
    /// Ends when both front ends have stopped.
    pub done: tokio::task::JoinHandle<()>,
}

/// Opens and loads the run `spec` under `root`, to score items in `precision`.
pub async fn open(root: &str, spec: &str, precision: Precision) -> Result<(Run, Loaded)> {
    let run = Run::open_any(root, spec).await?;
    let loaded = Loaded::load(&run, precision).await?;
    Ok((run, loaded))
}

/// Loads the run and serves it until `shutdown` turns true. With `latest/<name>`, the pointer
/// is polled and a new run is loaded, verified and swapped in without failing a request; a
/// run that does not load is refused and the old one keeps serving.
pub async fn serve(cfg: ServeConfig, shutdown: watch::Receiver<bool>) -> Result<Running> {
    let (_, loaded) = open(&cfg.root, &cfg.run, cfg.precision).await?;
    info!(
        run = %loaded.run_id,
        k = loaded.k,
        precision = %cfg.precision,
        model = loaded.model_dir,
        item_table_bytes = loaded.model.items.bytes(),
        "serving"
    );
    let metrics = Arc::new(Metrics::new());
    metrics
        .run
        .with_label_values(&[&loaded.run_id, &loaded.name])
        .set(1);
    let current = Arc::new(ArcSwap::from_pointee(loaded));
    let batcher = Batcher::start(cfg.batch, metrics.clone());
    let server = Arc::new(Server {
        current,
        batcher,
        metrics,
        reloads: AtomicU64::new(0),
    });

    let grpc_listener = tokio::net::TcpListener::bind(cfg.grpc)
        .await
        .map_err(|source| Error::Bind {
            addr: cfg.grpc.to_string(),
            source,
        })?;
    let grpc_addr = grpc_listener.local_addr().map_err(|source| Error::Bind {
        addr: cfg.grpc.to_string(),
        source,
    })?;
    let mut stop = shutdown.clone();
    let mut builder = tonic::transport::Server::builder();
    if let Some(tls) = cfg.tls.clone() {
        builder = builder
            .tls_config(tls)
            .map_err(|e| Error::Tls(e.to_string()))?;
    }
    let svc = InferenceServiceServer::new(Grpc(server.clone()))
        .max_decoding_message_size(seqclust_proto::MAX_MESSAGE_BYTES);
    let grpc = tokio::spawn(async move {
        // small request/response pairs: Nagle's algorithm would hold them for delayed ACKs
        let incoming =
            tonic::transport::server::TcpIncoming::from(grpc_listener).with_nodelay(Some(true));
        let r = builder
            .add_service(svc)
            .serve_with_incoming_shutdown(incoming, async move {
                let _ = stop.wait_for(|s| *s).await;
            })
            .await;
        if let Err(e) = r {
            warn!(error = %e, "gRPC server stopped");
        }
    });
    let (http_addr, http) = match cfg.http {
        Some(addr) => {
            let (a, h) = http::start(addr, server.clone(), shutdown.clone()).await?;
            (Some(a), Some(h))
        }
        None => (None, None),
    };
    if let Some(name) = cfg.run.strip_prefix("latest/") {
        tokio::spawn(watch_latest(
            cfg.root.clone(),
            name.to_string(),
            cfg.poll,
            cfg.precision,
            server.clone(),
            shutdown.clone(),
        ));
    }
    let done = tokio::spawn(async move {
        let _ = grpc.await;
        if let Some(h) = http {
            let _ = h.await;
        }
    });
    Ok(Running {
        grpc: grpc_addr,
        http: http_addr,
        server,
        done,
    })
}

/// Polls `latest/<name>`; loads and swaps in a new run when it moves.
async fn watch_latest(
    root: String,
    name: String,
    poll: Duration,
    precision: Precision,
    server: Arc<Server>,
    mut shutdown: watch::Receiver<bool>,
) {
    let mut refused: Option<String> = None;
    loop {
        tokio::select! {
            _ = tokio::time::sleep(poll) => {}
            _ = shutdown.wait_for(|s| *s) => return,
        }
        let Ok(loc) = Location::parse(&root, false) else {
            continue;
        };
        let id = match seqclust_artifacts::latest(&loc, &name).await {
            Ok(Some(id)) => id,
            Ok(None) => continue,
            Err(e) => {
                warn!(error = %e, "cannot read latest/{name}");
                continue;
            }
        };
        if id == server.current.load().run_id || refused.as_deref() == Some(id.as_str()) {
            continue;
        }
        match open(&root, &id, precision).await {
            Ok((_, loaded)) => {
                info!(from = %server.current.load().run_id, to = %id, "reloaded");
                server.install(loaded);
                server.reloads.fetch_add(1, Ordering::Relaxed);
                server.metrics.reloads.inc();
                refused = None;
            }
            Err(e) => {
                warn!(run = %id, error = %e, "refusing the new run; the previous one keeps serving");
                server.metrics.reload_failures.inc();
                refused = Some(id);
            }
        }
    }
}
