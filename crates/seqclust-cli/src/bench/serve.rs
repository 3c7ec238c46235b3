//! `seqclust bench serve`: Assign (or Recommend) requests per second and latency of `seqclust
//! serve` under a closed-loop load generator on loopback gRPC, against a synthetic committed
//! run (a GRU encoder over a 20k-item vocabulary, k = 1000 centroids, 50-event sequences).

use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result};
use bytes::Bytes;
use clap::Args;
use rand::{RngExt, SeedableRng};
use rustc_hash::FxHashMap;
use serde_json::json;

use seqclust_artifacts::tensors::{CENTROIDS, Centroids};
use seqclust_artifacts::{Commit, RunInfo};
use seqclust_data::Location;
use seqclust_data::vocab::KeyVocab;
use seqclust_model::{EncoderConfig, EncoderKind, SeqModel, Vocab};
use seqclust_proto::v1;
use seqclust_serve::{BatchConfig, ServeConfig};
use seqclust_trainer::{ModelInfo, save_model};

use super::measure::{Probe, emit};

/// Serving throughput and latency.
#[derive(Debug, Args)]
pub struct ServeBench {
    /// Fewer, shorter levels.
    #[arg(long)]
    quick: bool,
    /// Clusters.
    #[arg(long, default_value_t = 1000)]
    k: usize,
    /// Events per request.
    #[arg(long, default_value_t = 50)]
    events: usize,
    /// Items in the vocabulary.
    #[arg(long, default_value_t = 20_000)]
    items: usize,
    /// Encoder width.
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Concurrent clients per level (comma-separated).
    #[arg(long, default_value = "1,4,16,32,64")]
    concurrency: String,
    /// Seconds per level.
    #[arg(long, default_value_t = 5.0)]
    seconds: f64,
    /// Largest micro-batch.
    #[arg(long, default_value_t = 64)]
    max_batch: usize,
    /// Batcher threads (default: half the CPUs).
    #[arg(long)]
    batchers: Option<usize>,
    /// Microseconds a batcher lingers for more requests.
    #[arg(long, default_value_t = 0)]
    max_wait_us: u64,
    /// The call measured: assign, or recommend (top `--n` of every item).
    #[arg(long, default_value = "assign", value_parser = ["assign", "recommend"])]
    method: String,
    /// Items per Recommend.
    #[arg(long, default_value_t = 10)]
    n: u32,
    /// Recommend's item scoring (`seqclust serve --precision`).
    #[arg(long, default_value = "f32")]
    precision: seqclust_serve::Precision,
    /// A label for the JSON lines.
    #[arg(long, default_value = "round1")]
    tag: String,
    /// Also append the JSON lines to this file.
    #[arg(long)]
    out: Option<std::path::PathBuf>,
}

async fn synthetic_run(root: &Location, b: &ServeBench) -> Result<()> {
    let counts: FxHashMap<Box<[u8]>, u64> = (0..b.items)
        .map(|i| {
            (
                i.to_string().into_bytes().into_boxed_slice(),
                (b.items - i) as u64,
            )
        })
        .collect();
    let items = KeyVocab::from_counts(counts, 1);
    let cats: FxHashMap<Box<[u8]>, u64> = (0..50)
        .map(|i| (format!("c{i}").into_bytes().into_boxed_slice(), 1))
        .collect();
    let categories = KeyVocab::from_counts(cats, 1);
    let actions = ["<pad>", "view", "click", "fav", "cart", "buy"];
    let enc = EncoderConfig {
        kind: EncoderKind::Gru,
        dim: b.dim,
        max_len: b.events,
        ..EncoderConfig::default()
    };
    let vocab = Vocab {
        items: items.len(),
        actions: actions.len(),
        categories: categories.len(),
    };
    let model = SeqModel::new(&enc, vocab, 7)?;
    let commit = Commit::new(root, "bench-serve");
    save_model(
        commit.run(),
        &model,
        &ModelInfo {
            encoder: enc,
            vocab,
            dataset: "synthetic".into(),
            code_version: env!("CARGO_PKG_VERSION").into(),
        },
    )
    .await?;
    let mut r = rand::rngs::ChaCha8Rng::seed_from_u64(3);
    let c = Centroids {
        k: b.k,
        d: b.dim,
        values: (0..b.k * b.dim).map(|_| r.random::<f32>() - 0.5).collect(),
    };
    commit
        .put(CENTROIDS, Bytes::from(c.to_safetensors()?))
        .await?;
    commit
        .put(
            "model/vocab/items.parquet",
            Bytes::from(items.to_parquet()?),
        )
        .await?;
    commit
        .put(
            "model/vocab/categories.parquet",
            Bytes::from(categories.to_parquet()?),
        )
        .await?;
    commit
        .put(
            "model/vocab/actions.json",
            Bytes::from(serde_json::to_vec(&json!({ "actions": actions }))?),
        )
        .await?;
    commit
        .finish(RunInfo {
            job_id: "bench-serve".into(),
            name: "bench-serve".into(),
            dataset: "synthetic".into(),
            world_size: 1,
            config: json!({ "kmeans": { "metric": "cosine" } }),
            ..RunInfo::default()
        })
        .await?;
    Ok(())
}

fn request(r: &mut rand::rngs::ChaCha8Rng, b: &ServeBench) -> v1::SequenceRequest {
    let actions = ["view", "click", "fav", "cart", "buy"];
    let t0 = 1_767_225_600_000i64;
    v1::SequenceRequest {
        events: (0..b.events)
            .map(|i| v1::Event {
                // a skewed item draw, as real traffic has
                item: ((r.random::<f64>().powi(3) * b.items as f64) as usize).to_string(),
                action: actions[r.random_range(0..actions.len())].into(),
                category: format!("c{}", r.random_range(0..50)),
                timestamp_ms: t0 + i as i64 * 30_000,
            })
            .collect(),
    }
}

/// One Assign, or one Recommend of the top `n`.
async fn call(
    cl: &mut v1::inference_service_client::InferenceServiceClient<tonic::transport::Channel>,
    q: v1::SequenceRequest,
    recommend: bool,
    n: u32,
) -> Result<()> {
    if recommend {
        let r = cl
            .recommend(v1::RecommendRequest {
                events: q.events,
                n,
            })
            .await?;
        anyhow::ensure!(
            r.get_ref().items.len() == n as usize,
            "short recommendation"
        );
    } else {
        cl.assign(q).await?;
    }
    Ok(())
}

pub fn run(b: ServeBench) -> Result<()> {
    let dir = tempfile::tempdir()?;
    let levels: Vec<usize> = b
        .concurrency
        .split(',')
        .map(|s| s.trim().parse::<usize>())
        .collect::<Result<_, _>>()
        .context("--concurrency: comma-separated integers")?;
    let levels = if b.quick { vec![1, 16, 64] } else { levels };
    let seconds = if b.quick { 1.0 } else { b.seconds };
    // the server gets its own runtime; the load generator runs on this thread's runtime
    let server_rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let root = Location::parse(&dir.path().display().to_string(), true)?;
    server_rt.block_on(synthetic_run(&root, &b))?;
    let (_stop_tx, stop) = tokio::sync::watch::channel(false);
    let running = server_rt.block_on(seqclust_serve::serve(
        ServeConfig {
            root: dir.path().display().to_string(),
            run: "bench-serve".into(),
            grpc: "127.0.0.1:0".parse()?,
            http: None,
            poll: Duration::from_secs(3600),
            batch: BatchConfig {
                max_batch: b.max_batch,
                max_wait: Duration::from_micros(b.max_wait_us),
                threads: b.batchers.unwrap_or(BatchConfig::default().threads),
                ..BatchConfig::default()
            },
            tls: None,
            precision: b.precision,
        },
        stop,
    ))?;
    // what the loaded run holds (the synthetic model that wrote it is gone by now)
    let server_rss_mib = super::measure::resident_mib();
    let recommend = b.method == "recommend";
    let n = b.n;
    let addr = format!("http://{}", running.grpc);
    let client_rt = tokio::runtime::Builder::new_current_thread()
        .enable_all()
        .build()?;
    let mut r = rand::rngs::ChaCha8Rng::seed_from_u64(11);
    let pool: Arc<Vec<v1::SequenceRequest>> =
        Arc::new((0..512).map(|_| request(&mut r, &b)).collect());
    for &c in &levels {
        let (lat, wall, load) = client_rt.block_on(async {
            let ch = tonic::transport::Endpoint::from_shared(addr.clone())?
                .tcp_nodelay(true)
                .connect()
                .await?;
            // warm up
            let mut cl = v1::inference_service_client::InferenceServiceClient::new(ch.clone());
            for q in pool.iter().take(32) {
                call(&mut cl, q.clone(), recommend, n).await?;
            }
            let probe = Probe::start();
            let t0 = Instant::now();
            let end = t0 + Duration::from_secs_f64(seconds);
            let mut tasks = Vec::new();
            for w in 0..c {
                let ch = ch.clone();
                let pool = pool.clone();
                tasks.push(tokio::spawn(async move {
                    let mut cl = v1::inference_service_client::InferenceServiceClient::new(ch);
                    let mut lat = Vec::new();
                    let mut i = w * 7;
                    while Instant::now() < end {
                        let q = pool[i % pool.len()].clone();
                        i += 1;
                        let t = Instant::now();
                        call(&mut cl, q, recommend, n).await?;
                        lat.push(t.elapsed().as_secs_f64() * 1e3);
                    }
                    Ok::<_, anyhow::Error>(lat)
                }));
            }
            let mut lat = Vec::new();
            for t in tasks {
                lat.extend(t.await??);
            }
            let wall = t0.elapsed().as_secs_f64();
            Ok::<_, anyhow::Error>((lat, wall, probe.finish()))
        })?;
        let mut sorted = lat.clone();
        sorted.sort_by(f64::total_cmp);
        let q = |p: f64| sorted[((sorted.len() - 1) as f64 * p).round() as usize];
        emit(
            json!({
                "script": "serve_rust", "tag": b.tag,
                "args": {"k": b.k, "events": b.events, "items": b.items, "dim": b.dim,
                         "method": if recommend { "Recommend" } else { "Assign" },
                         "n": recommend.then_some(b.n), "precision": b.precision.to_string(),
                         "encoder": "gru", "max_batch": b.max_batch,
                         "batchers": b.batchers, "max_wait_us": b.max_wait_us},
                "results": [{
                    "impl": "seqclust serve (gRPC, micro-batched)",
                    "concurrency": c, "requests": lat.len(), "seconds": wall,
                    "rps": lat.len() as f64 / wall,
                    "p50_ms": q(0.5), "p90_ms": q(0.9), "p99_ms": q(0.99),
                    "server_rss_mib": server_rss_mib, "load": load,
                }],
            }),
            b.out.as_deref(),
        )?;
    }
    Ok(())
}
