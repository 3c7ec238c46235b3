//! The coordinator's side of one distributed k-means step: `workers` partials of k × d
//! arrive as 1 MiB chunks, are reassembled, decoded and checked (as `PushPartials` does),
//! merged in rank order and applied as a mini-batch update (as the KMEANS phase does).

use std::time::Instant;

use anyhow::Result;
use rand::{RngExt, SeedableRng};
use serde_json::json;

use seqclust_kmeans::{Centroids, Metric, PartialStats};
use seqclust_proto::{Reassembly, chunk_offsets};

use super::measure::{Probe, emit, median};

fn partial(k: usize, d: usize, seed: u64) -> PartialStats {
    let mut r = rand::rngs::ChaCha8Rng::seed_from_u64(seed);
    let mut p = PartialStats::new(k, d);
    p.sums
        .iter_mut()
        .for_each(|v| *v = r.random::<f64>() * 100.0);
    p.counts.iter_mut().for_each(|v| *v = r.random_range(1..50));
    p.inertia.iter_mut().for_each(|v| *v = r.random::<f64>());
    p
}

/// Times the merge of `workers` partials at k × d; prints one JSON line.
pub fn run(
    k: usize,
    d: usize,
    workers: usize,
    tag: &str,
    out: Option<&std::path::Path>,
) -> Result<()> {
    let wire: Vec<Vec<u8>> = (0..workers)
        .map(|w| partial(k, d, w as u64).to_bytes())
        .collect();
    let mut centroids = Centroids::new(vec![0.5; k * d], d)?;
    let mut weight = vec![1.0; k];
    let mut times = Vec::new();
    let probe = Probe::start();
    for _ in 0..7 {
        let t = Instant::now();
        let mut merged = PartialStats::new(k, d);
        for bytes in &wire {
            let mut re = Reassembly::new(1 << 30);
            for (o, n) in chunk_offsets(bytes.len()) {
                re.push(o as u64, bytes.len() as u64, &bytes[o..o + n])
                    .map_err(anyhow::Error::msg)?;
            }
            let p = PartialStats::from_bytes(&re.finish().map_err(anyhow::Error::msg)?)?;
            merged.merge(&p)?;
        }
        merged.apply_minibatch(&mut centroids, &mut weight, Metric::L2);
        times.push(t.elapsed().as_secs_f64());
    }
    let load = probe.finish();
    let mb = wire.iter().map(Vec::len).sum::<usize>() as f64 / 1e6;
    let s = median(times);
    line(
        tag,
        (k, d, workers),
        json!({
            "impl": "seqclust coordinator merge", "k": k, "n_train": workers,
            "merge_s": s, "payload_mb": mb, "mb_per_s": mb / s,
            "params": {"steps": "reassemble 1 MiB chunks, decode, validate, merge in rank order, mini-batch update"},
            "load": load,
        }),
        out,
    )
}

/// One JSON line in the peers' k-means schema.
fn line(
    tag: &str,
    (k, d, workers): (usize, usize, usize),
    result: serde_json::Value,
    out: Option<&std::path::Path>,
) -> Result<()> {
    emit(
        json!({
            "script": "kmeans_rust", "tag": tag,
            "args": {"k": k, "d": d, "workers": workers},
            "results": [result],
        }),
        out,
    )
}

/// The same step through the real coordinator over loopback gRPC: `workers` stand-in
/// workers (tokio tasks that answer every task at once) each fetch the k × d centroids
/// and push a pre-computed k × d partial per Lloyd step; the coordinator reassembles,
/// checks, merges and updates. Reports the median time of a step (the coordinator's
/// per-iteration history), which is everything but the workers' own arithmetic.
pub fn run_grpc(
    k: usize,
    d: usize,
    workers: usize,
    tag: &str,
    out: Option<&std::path::Path>,
) -> Result<()> {
    use std::sync::Arc;

    use anyhow::Context;
    use seqclust_data::generator::{GenConfig, GenFormat, gen_columns, generate_to_files};
    use seqclust_data::ingest::NoProgress;
    use seqclust_proto::v1;

    let rt = tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()?;
    let dir = tempfile::tempdir()?;
    let root = dir.path().display().to_string();
    // a small real dataset with one shard per worker (the stand-ins never read it)
    let raw = dir.path().join("raw.csv");
    let g = GenConfig {
        users: 200,
        ..GenConfig::default()
    };
    generate_to_files(&g, &raw, None, GenFormat::Csv, &NoProgress)?;
    let mut ic = seqclust_data::IngestConfig::default();
    ic.source.paths = vec![raw.display().to_string()];
    ic.source.columns = gen_columns();
    ic.output.root = root.clone();
    ic.output.name = "merge".into();
    ic.output.shards = workers;
    seqclust_data::ingest(&ic, rt.handle(), &NoProgress)?;

    let (stop_tx, stop_rx) = tokio::sync::watch::channel(false);
    let running = rt.block_on(seqclust_coordinator::start(
        seqclust_coordinator::CoordinatorConfig {
            listen: "127.0.0.1:0".into(),
            ..Default::default()
        },
        Arc::new(seqclust_meta::MemoryStore::new("/bench/")),
        stop_rx,
    ))?;
    let url = format!("http://{}", running.addr);
    let users_each = 2 * k / workers + 1;
    let mut fakes = Vec::new();
    for w in 0..workers {
        let url = url.clone();
        let partial = Arc::new(partial(k, d, w as u64).to_bytes());
        fakes.push(rt.spawn(async move { stand_in(url, w, users_each, d, k, partial).await }));
    }
    let spec = seqclust_job::JobSpec::from_toml_str(&format!(
        "name = \"merge\"\n[dataset]\nuri = \"merge\"\nroot = \"{root}\"\n\
         [train]\nepochs = 1\nbatch_size = 64\n\
         [kmeans]\nk = {k}\nalgorithm = \"lloyd\"\nmax_iter = 6\ntol = 0.0\ninit = {{ kind = \"random\" }}\n\
         [resources]\nmin_workers = {workers}\nmax_workers = {workers}\n\
         [analysis]\nenabled = false\n"
    ))?;
    let probe = Probe::start();
    let job = rt.block_on(async {
        let mut c =
            crate::cmd_jobs::connect(&crate::cmd_jobs::CoordinatorAddr::plain(url.clone())).await?;
        let j = crate::cmd_jobs::submit(&mut c, &spec, None).await?;
        let mut stream = c
            .watch_job(v1::WatchJobRequest { id: j.id.clone() })
            .await?
            .into_inner();
        let mut last = j;
        while let Some(u) = stream.message().await? {
            last = u;
        }
        anyhow::Ok(last)
    })?;
    let load = probe.finish();
    let _ = stop_tx.send(true);
    for f in fakes {
        f.abort();
    }
    rt.block_on(running.join());
    let run = std::path::PathBuf::from(&job.run_uri);
    let report: serde_json::Value = serde_json::from_slice(
        &std::fs::read(run.join("clusters/kmeans.json"))
            .with_context(|| format!("the job did not commit: {}", job.error))?,
    )?;
    let secs: Vec<f64> = report["result"]["history"]
        .as_array()
        .into_iter()
        .flatten()
        .filter_map(|h| h["seconds"].as_f64())
        .collect();
    let steps: Vec<f64> = secs.windows(2).map(|w| w[1] - w[0]).collect();
    let step_s = median(steps);
    line(
        tag,
        (k, d, workers),
        json!({
            "impl": "seqclust coordinator step over gRPC", "k": k, "n_train": workers,
            "merge_s": step_s,
            "payload_mb": (workers * (k * d + 2 * k + 2) * 8) as f64 / 1e6,
            "params": {"steps": "task over the control stream, centroid fetch (k x d f32) by every worker, chunked partial upload, checks, merge, Lloyd update"},
            "load": load,
        }),
        out,
    )
}

/// A worker that answers every task at once: its "partials" are a fixed payload.
async fn stand_in(
    url: String,
    w: usize,
    users: usize,
    d: usize,
    k: usize,
    partial: std::sync::Arc<Vec<u8>>,
) -> Result<()> {
    use seqclust_proto::v1::worker_service_client::WorkerServiceClient;
    use seqclust_proto::v1::{self, TaskKind};

    let mut c = WorkerServiceClient::connect(url)
        .await?
        .max_decoding_message_size(seqclust_proto::MAX_MESSAGE_BYTES);
    let me = c
        .register_worker(v1::RegisterWorkerRequest {
            protocol_version: seqclust_proto::PROTOCOL_VERSION,
            name: format!("stand-in-{w}"),
            collective_addr: "127.0.0.1:1".into(),
            threads: 1,
            ..Default::default()
        })
        .await?
        .into_inner()
        .worker_id;
    let mut tasks = c
        .control(v1::ControlRequest {
            worker_id: me.clone(),
        })
        .await?
        .into_inner();
    let mut r = rand::rngs::ChaCha8Rng::seed_from_u64(w as u64);
    let upload = |t: &v1::Task, bytes: Vec<u8>| {
        let total = bytes.len() as u64;
        let chunks: Vec<v1::PartialChunk> = chunk_offsets(bytes.len())
            .into_iter()
            .map(|(o, n)| v1::PartialChunk {
                worker_id: me.clone(),
                task_id: t.task_id.clone(),
                membership_epoch: t.membership_epoch,
                offset: o as u64,
                total,
                data: bytes[o..o + n].to_vec(),
            })
            .collect();
        tokio_stream::iter(chunks)
    };
    while let Some(t) = tasks.message().await? {
        let kind = TaskKind::try_from(t.kind).unwrap_or(TaskKind::Unspecified);
        let mut res = v1::TaskResult {
            worker_id: me.clone(),
            task_id: t.task_id.clone(),
            membership_epoch: t.membership_epoch,
            ok: true,
            ..Default::default()
        };
        match kind {
            TaskKind::Embed => res.users = users as u64,
            TaskKind::Sample => {
                let s = seqclust_proto::Sample {
                    d,
                    keys: (0..users as u64).map(|i| (w as u64) << 32 | i).collect(),
                    rows: (0..users * d).map(|_| r.random::<f32>()).collect(),
                };
                c.push_partials(upload(&t, s.to_bytes())).await?;
            }
            TaskKind::Partials => {
                let mut s = c
                    .fetch_centroids(v1::FetchCentroidsRequest {
                        job_id: t.job_id.clone(),
                        version: t.centroids_version,
                    })
                    .await?
                    .into_inner();
                while s.message().await?.is_some() {}
                c.push_partials(upload(&t, partial.as_ref().clone()))
                    .await?;
            }
            TaskKind::Assign => {
                res.users = users as u64;
                let files: Vec<String> = t
                    .shards
                    .iter()
                    .map(|s| format!("clusters/assignments/part-{s:05}.parquet"))
                    .collect();
                let mut counts = vec![0u64; k];
                counts[0] = users as u64;
                res.summary_json =
                    json!({ "counts": counts, "inertia": 0.0, "files": files }).to_string();
            }
            TaskKind::Release | TaskKind::Regroup | TaskKind::Abort => return Ok(()),
            _ => {}
        }
        c.complete_task(res).await?;
    }
    Ok(())
}
