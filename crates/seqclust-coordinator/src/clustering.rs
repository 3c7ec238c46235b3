//! EMBED → KMEANS_INIT → KMEANS → ASSIGN over the workers. The iteration state (centroids,
//! per-centre weights, the step) lives here, so losing a worker costs one EMBED round for
//! the shards it held and the iteration resumes where it was: every mini-batch is the same
//! set of users whichever worker holds them.

use std::collections::BTreeMap;
use std::time::Instant;

use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand::seq::index::sample;
use serde::Serialize;
use tracing::{info, warn};

use seqclust_job::Phase;
use seqclust_kmeans::init;
use seqclust_kmeans::{
    Algorithm, Centroids, Init, IterStat, Metric, PartialStats, Points, total_variance,
};
use seqclust_proto::{Sample, v1};

use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::shards::assign_shards;
use crate::state::{CentroidVersion, TaskDone};

/// What the clustering produced, for the commit.
#[derive(Debug, Clone, Serialize)]
pub(crate) struct Clusters {
    pub k: usize,
    pub d: usize,
    pub metric: Metric,
    pub algorithm: Algorithm,
    #[serde(skip)]
    pub centroids: Vec<f32>,
    pub users: u64,
    pub sizes: Vec<u64>,
    pub inertia: f64,
    pub iterations: usize,
    pub converged: bool,
    pub reseeded: usize,
    pub empty: usize,
    pub sample_size: usize,
    pub history: Vec<IterStat>,
    pub assignment_files: Vec<String>,
    pub world_size: usize,
    pub seconds: f64,
}

/// The iteration state.
struct Progress {
    centroids: Option<Centroids>,
    sample: Option<Vec<f32>>,
    d: usize,
    version: u64,
    weight: Vec<f64>,
    step: usize,
    steps: usize,
    fraction: f64,
    tol: f64,
    history: Vec<IterStat>,
    ewa: Option<f64>,
    best: f64,
    since_best: usize,
    last_inertia: f64,
    converged: bool,
    reseeded: usize,
    done: bool,
}

pub(crate) async fn run(job: &mut Driver) -> Result<Clusters> {
    let t0 = Instant::now();
    let cfg = job.rec.spec.kmeans.clone();
    let ds = seqclust_trainer::open_dataset(&job.rec.spec.train_job())
        .await
        .map_err(|e| Error::Phase {
            phase: Phase::Embed,
            message: seqclust_proto::convert::error_chain(&e),
        })?;
    let num_shards = ds.num_shards();
    let mut p = Progress {
        centroids: None,
        sample: None,
        d: 0,
        version: 0,
        weight: vec![0.0; cfg.k],
        step: 0,
        steps: 0,
        fraction: 1.0,
        tol: 0.0,
        history: Vec::new(),
        ewa: None,
        best: f64::INFINITY,
        since_best: 0,
        last_inertia: f64::INFINITY,
        converged: false,
        reseeded: 0,
        done: false,
    };
    let mut attempt = 0;
    loop {
        match attempt_once(job, &mut p, num_shards, t0).await {
            Ok(c) => return Ok(c),
            Err(Error::Grow(joined)) => {
                crate::metrics::REGROUPS
                    .with_label_values(&["clustering"])
                    .inc();
                info!(job = %job.rec.id, joined, step = p.step, "workers joined: giving them shards");
                job.rec.message = format!("{joined} worker(s) joined: giving them shards");
                job.save().await?;
            }
            Err(e) if e.is_retryable() && attempt < job.state.cfg.phase_retries => {
                attempt += 1;
                crate::metrics::ROUND_RETRIES.inc();
                warn!(job = %job.rec.id, error = %e, attempt, "clustering round failed; reassigning shards");
                job.rec.message = format!("reassigning shards after: {e}");
                job.save().await?;
            }
            Err(e) => return Err(e),
        }
    }
}

async fn attempt_once(
    job: &mut Driver,
    p: &mut Progress,
    num_shards: usize,
    t0: Instant,
) -> Result<Clusters> {
    let cfg = job.rec.spec.kmeans.clone();
    let members = job.members().await?;
    let ids: Vec<String> = members.iter().map(|(w, _)| w.clone()).collect();
    let holdings = assign_shards(num_shards, &ids);

    // EMBED: every worker embeds the shards it now holds (kept shards cost nothing)
    let tasks = shard_tasks(job, &ids, &holdings, v1::TaskKind::Embed);
    let done = job.round(tasks, Some(job.state.cfg.task_timeout)).await?;
    let users: u64 = done.iter().map(|d| d.result.users).sum();
    if users < cfg.k as u64 {
        return Err(Error::Phase {
            phase: Phase::Embed,
            message: format!("kmeans.k = {} but the dataset has {users} users", cfg.k),
        });
    }
    let n = users as f64;

    // KMEANS_INIT: seeding on a uniform sample the workers draw
    if p.centroids.is_none() {
        job.enter(Phase::KmeansInit).await?;
        let want = cfg.init_sample.max(20 * cfg.k).max(cfg.k) as f64;
        let mut tasks = shard_tasks(job, &ids, &holdings, v1::TaskKind::Sample);
        for (_, t) in &mut tasks {
            t.fraction = (want / n).min(1.0);
        }
        let done = job.round(tasks, Some(job.state.cfg.task_timeout)).await?;
        let mut rows: Vec<(u64, Vec<f32>)> = Vec::new();
        let mut d = 0;
        for s in payloads(&done, |b| {
            Sample::from_bytes(b).map_err(|m| phase_err(Phase::KmeansInit, m))
        })? {
            d = s.d;
            for (i, k) in s.keys.iter().enumerate() {
                rows.push((*k, s.rows[i * s.d..(i + 1) * s.d].to_vec()));
            }
        }
        // one order whatever the sharding
        rows.sort_by_key(|r| r.0);
        if rows.len() < cfg.k {
            return Err(phase_err(
                Phase::KmeansInit,
                format!(
                    "the seeding sample has {} users, fewer than kmeans.k = {}",
                    rows.len(),
                    cfg.k
                ),
            ));
        }
        let flat: Vec<f32> = rows.into_iter().flat_map(|r| r.1).collect();
        let pts = Points::new(&flat, d)?;
        let mut c = match cfg.init {
            Init::Random => init::random(&pts, cfg.k, cfg.seed),
            Init::KMeansPlusPlus => init::kmeans_plus_plus(&pts, None, cfg.k, cfg.metric, cfg.seed),
            Init::KMeansParallel {
                rounds,
                oversampling,
            } => init::kmeans_parallel(&pts, cfg.k, cfg.metric, rounds, oversampling, cfg.seed),
        };
        if cfg.metric == Metric::Cosine {
            c.normalize_rows();
        }
        p.tol = if cfg.tol > 0.0 {
            cfg.tol * total_variance(&pts) / d as f64
        } else {
            0.0
        };
        p.d = d;
        p.centroids = Some(c);
        p.sample = Some(flat);
        let (b, steps, fraction) = match cfg.algorithm {
            Algorithm::Lloyd => (users as usize, cfg.max_iter, 1.0),
            Algorithm::MiniBatch => {
                let b = cfg.batch_size.min(users as usize).max(1);
                (
                    b,
                    ((cfg.epochs * n) / b as f64).ceil().max(1.0) as usize,
                    (b as f64 / n).min(1.0),
                )
            }
        };
        let _ = b;
        p.steps = steps;
        p.fraction = fraction;
    }

    // KMEANS: each step a round of partial statistics, merged in rank order; a worker that
    // joins is given shards at the next step (the round re-forms; only the shards that move
    // are embedded again, and the k-means state carries over)
    job.enter(Phase::Kmeans).await?;
    while !p.done && p.step < p.steps {
        grown(job, &ids)?;
        let step = p.step + 1;
        let version = publish(job, p);
        let mut tasks = shard_tasks(job, &ids, &holdings, v1::TaskKind::Partials);
        for (_, t) in &mut tasks {
            t.centroids_version = version;
            t.iteration = step as u64;
            t.fraction = p.fraction;
        }
        let done = job.round(tasks, Some(job.state.cfg.task_timeout)).await?;
        let parts = payloads(&done, |b| PartialStats::from_bytes(b).map_err(Error::from))?;
        let mut merged = PartialStats::new(cfg.k, p.d);
        for part in &parts {
            merged.merge(part)?;
        }
        update(p, &merged, &cfg, step, t0);
        p.step = step;
        let last = p.history.last().map_or(0.0, |h| h.inertia_per_point);
        crate::metrics::KMEANS_STEPS.inc();
        crate::metrics::KMEANS_INERTIA
            .with_label_values(&[&job.rec.id])
            .set(last);
        job.progress(
            step as f64 / p.steps.max(1) as f64,
            format!("step {step}/{} inertia/point {last:.5}", p.steps),
        )
        .await?;
    }

    // ASSIGN: final assignments, written by the workers per shard
    grown(job, &ids)?;
    job.enter(Phase::Assign).await?;
    let version = publish(job, p);
    let mut tasks = shard_tasks(job, &ids, &holdings, v1::TaskKind::Assign);
    for (_, t) in &mut tasks {
        t.centroids_version = version;
    }
    let done = job.round(tasks, Some(job.state.cfg.task_timeout)).await?;
    let mut sizes = vec![0u64; cfg.k];
    let mut inertia = 0.0;
    let mut files = Vec::new();
    let mut assigned = 0;
    for d in &done {
        let s: serde_json::Value = serde_json::from_str(&d.result.summary_json).map_err(|e| {
            phase_err(
                Phase::Assign,
                format!("bad summary from {}: {e}", d.result.worker_id),
            )
        })?;
        for (c, v) in s["counts"]
            .as_array()
            .into_iter()
            .flatten()
            .enumerate()
            .take(cfg.k)
        {
            sizes[c] += v.as_u64().unwrap_or(0);
        }
        inertia += s["inertia"].as_f64().unwrap_or(0.0);
        files.extend(
            s["files"]
                .as_array()
                .into_iter()
                .flatten()
                .filter_map(|f| f.as_str().map(String::from)),
        );
        assigned += d.result.users;
    }
    files.sort();
    if assigned != users || files.len() != num_shards {
        return Err(Error::Retry(format!(
            "assignments cover {assigned} of {users} users in {} of {num_shards} shards",
            files.len()
        )));
    }
    let c = p
        .centroids
        .clone()
        .unwrap_or_else(|| unreachable!("initialised above"));
    Ok(Clusters {
        k: cfg.k,
        d: p.d,
        metric: cfg.metric,
        algorithm: cfg.algorithm,
        centroids: c.into_vec(),
        users,
        empty: sizes.iter().filter(|&&s| s == 0).count(),
        sizes,
        inertia,
        iterations: p.step,
        converged: p.converged,
        reseeded: p.reseeded,
        sample_size: p.sample.as_ref().map_or(0, |s| s.len() / p.d.max(1)),
        history: p.history.clone(),
        assignment_files: files,
        world_size: ids.len(),
        seconds: t0.elapsed().as_secs_f64(),
    })
}

/// [`Error::Grow`] when workers the job could take have joined the group `ids`.
fn grown(job: &Driver, ids: &[String]) -> Result<()> {
    match job.joined(ids) {
        0 => Ok(()),
        n => Err(Error::Grow(n)),
    }
}

fn phase_err(phase: Phase, message: impl Into<String>) -> Error {
    Error::Phase {
        phase,
        message: message.into(),
    }
}

/// One task per member, carrying the shards it holds.
fn shard_tasks(
    job: &mut Driver,
    ids: &[String],
    holdings: &BTreeMap<String, Vec<u32>>,
    kind: v1::TaskKind,
) -> Vec<(String, v1::Task)> {
    ids.iter()
        .map(|w| {
            let mut t = job.task(kind);
            t.shards = holdings.get(w).cloned().unwrap_or_default();
            (w.clone(), t)
        })
        .collect()
}

/// The decoded payload of every task, in task (rank) order.
fn payloads<T>(done: &[TaskDone], decode: impl Fn(&[u8]) -> Result<T>) -> Result<Vec<T>> {
    done.iter()
        .map(|d| {
            let bytes = d.payload.as_deref().ok_or_else(|| {
                Error::Retry(format!(
                    "task {} ended without its payload",
                    d.result.task_id
                ))
            })?;
            decode(bytes)
        })
        .collect()
}

/// Makes the current centroids fetchable under a new version.
fn publish(job: &Driver, p: &mut Progress) -> u64 {
    p.version += 1;
    let c = p
        .centroids
        .as_ref()
        .unwrap_or_else(|| unreachable!("initialised before use"));
    job.state.set_centroids(
        &job.rec.id,
        CentroidVersion {
            version: p.version,
            k: c.k(),
            d: c.d(),
            values: std::sync::Arc::new(c.as_slice().to_vec()),
        },
    );
    p.version
}

/// Applies one step's merged statistics (Lloyd: the means; mini-batch: the per-centre
/// learning-rate update, light centres moved to sample points every 10 steps), with the
/// engine's stopping rules.
fn update(
    p: &mut Progress,
    merged: &PartialStats,
    cfg: &seqclust_kmeans::KMeansConfig,
    step: usize,
    t0: Instant,
) {
    let Some(c) = p.centroids.as_mut() else {
        return;
    };
    let before = c.clone();
    let points = merged.points().max(1) as f64;
    let per_point = merged.total_inertia() / points;
    match cfg.algorithm {
        Algorithm::Lloyd => {
            *c = merged.means(&before, cfg.metric);
            let improvement = (p.last_inertia - merged.total_inertia())
                / merged.total_inertia().max(f64::MIN_POSITIVE);
            p.last_inertia = merged.total_inertia();
            let sh = shift(&before, c);
            if (p.tol > 0.0 && sh <= p.tol)
                || (cfg.min_improvement > 0.0 && improvement.abs() < cfg.min_improvement)
            {
                p.converged = true;
                p.done = true;
            }
            p.history.push(IterStat {
                iter: step,
                inertia_per_point: per_point,
                shift: sh,
                seconds: t0.elapsed().as_secs_f64(),
            });
        }
        Algorithm::MiniBatch => {
            merged.apply_minibatch(c, &mut p.weight, cfg.metric);
            if cfg.reassignment_ratio > 0.0 && step.is_multiple_of(10) {
                p.reseeded += reassign_light(
                    c,
                    &mut p.weight,
                    p.sample.as_deref().unwrap_or(&[]),
                    p.d,
                    cfg,
                    step,
                );
            }
            let alpha = (2.0 * p.fraction).min(1.0);
            let smooth = match p.ewa {
                None => per_point,
                Some(e) => e * (1.0 - alpha) + per_point * alpha,
            };
            p.ewa = Some(smooth);
            let sh = shift(&before, c);
            p.history.push(IterStat {
                iter: step,
                inertia_per_point: smooth,
                shift: sh,
                seconds: t0.elapsed().as_secs_f64(),
            });
            if p.tol > 0.0 && sh <= p.tol * p.fraction {
                p.converged = true;
                p.done = true;
            } else if smooth < p.best {
                p.best = smooth;
                p.since_best = 0;
            } else {
                p.since_best += 1;
                if cfg.max_no_improvement > 0 && p.since_best >= cfg.max_no_improvement {
                    p.converged = true;
                    p.done = true;
                }
            }
        }
    }
}

fn shift(a: &Centroids, b: &Centroids) -> f64 {
    (0..a.k())
        .map(|c| {
            a.row(c)
                .iter()
                .zip(b.row(c))
                .map(|(x, y)| f64::from(x - y).powi(2))
                .sum::<f64>()
        })
        .sum()
}

/// Moves centres lighter than `reassignment_ratio` × the heaviest to sample points.
fn reassign_light(
    c: &mut Centroids,
    weight: &mut [f64],
    sample_rows: &[f32],
    d: usize,
    cfg: &seqclust_kmeans::KMeansConfig,
    step: usize,
) -> usize {
    let n = sample_rows.len() / d.max(1);
    let max_w = weight.iter().cloned().fold(0.0, f64::max);
    let light: Vec<usize> = (0..weight.len())
        .filter(|&i| weight[i] < cfg.reassignment_ratio * max_w)
        .collect();
    if light.is_empty() || n == 0 {
        return 0;
    }
    let keep_min = (0..weight.len())
        .filter(|i| !light.contains(i))
        .map(|i| weight[i])
        .fold(f64::INFINITY, f64::min);
    let mut r =
        ChaCha8Rng::seed_from_u64(cfg.seed ^ (step as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let take = light.len().min(n);
    let rows = sample(&mut r, n, take).into_vec();
    for (&cl, row) in light.iter().zip(rows) {
        c.row_mut(cl)
            .copy_from_slice(&sample_rows[row * d..(row + 1) * d]);
        weight[cl] = keep_min;
    }
    if cfg.metric == Metric::Cosine {
        c.normalize_rows();
    }
    take
}
