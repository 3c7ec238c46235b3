//! Fitting: configuration, Lloyd and mini-batch k-means, empty-cluster repair.

use std::time::Instant;

use rand::RngExt;
use rand::seq::index::sample;
use serde::{Deserialize, Serialize};

use crate::assign::{Assignment, Metric, Packed, assign_into};
use crate::error::{Error, Result};
use crate::init::{self, Init};
use crate::matrix::{Centroids, Points, sq_dist};
use crate::partial::{PartialStats, accumulate};
use crate::rng;

/// Which algorithm updates the centroids.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Algorithm {
    /// Full-batch Lloyd iterations.
    #[default]
    Lloyd,
    /// Mini-batch k-means (Sculley 2010) with per-centre learning rates `1 / count`.
    MiniBatch,
}

/// k-means settings; `validate` names the bad field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct KMeansConfig {
    /// Number of clusters.
    pub k: usize,
    /// Distance.
    pub metric: Metric,
    /// Initialisation.
    pub init: Init,
    /// Points the initialisation looks at (a uniform sample; 0 = all).
    pub init_sample: usize,
    /// Lloyd or mini-batch.
    pub algorithm: Algorithm,
    /// Lloyd: most iterations.
    pub max_iter: usize,
    /// Stop when the total squared centroid shift is at most `tol` × the data's mean
    /// per-dimension variance × d (scikit-learn's rule; 0 disables).
    pub tol: f64,
    /// Lloyd: stop when inertia improves by less than this fraction (0 disables).
    pub min_improvement: f64,
    /// Mini-batch: points per batch.
    pub batch_size: usize,
    /// Mini-batch: most passes over the data, in epochs.
    pub epochs: f64,
    /// Mini-batch: stop after this many batches without improving the smoothed batch inertia
    /// (0 disables).
    pub max_no_improvement: usize,
    /// Mini-batch: clusters lighter than this fraction of the heaviest are moved to random
    /// batch points every 10 batches (0 disables).
    pub reassignment_ratio: f64,
    /// Train on at most `k ×` this many points (a uniform sample, like FAISS's
    /// `max_points_per_centroid`); 0 uses all.
    pub max_points_per_centroid: usize,
    /// Seed.
    pub seed: u64,
}

impl Default for KMeansConfig {
    fn default() -> Self {
        KMeansConfig {
            k: 8,
            metric: Metric::L2,
            init: Init::default(),
            init_sample: 100_000,
            algorithm: Algorithm::Lloyd,
            max_iter: 50,
            tol: 1e-4,
            min_improvement: 0.0,
            batch_size: 4096,
            epochs: 10.0,
            max_no_improvement: 10,
            reassignment_ratio: 0.01,
            max_points_per_centroid: 0,
            seed: 42,
        }
    }
}

impl KMeansConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.k == 0 {
            return Err(Error::config("k", "must be at least 1"));
        }
        if self.k > u32::MAX as usize / 2 {
            return Err(Error::config("k", "too large"));
        }
        if self.algorithm == Algorithm::Lloyd && self.max_iter == 0 {
            return Err(Error::config("max_iter", "must be at least 1"));
        }
        if !(self.tol >= 0.0 && self.tol.is_finite()) {
            return Err(Error::config("tol", "must be a finite number >= 0"));
        }
        if !(0.0..1.0).contains(&self.min_improvement) {
            return Err(Error::config("min_improvement", "must be in [0, 1)"));
        }
        if self.algorithm == Algorithm::MiniBatch {
            if self.batch_size == 0 {
                return Err(Error::config("batch_size", "must be at least 1"));
            }
            if !(self.epochs > 0.0 && self.epochs.is_finite()) {
                return Err(Error::config("epochs", "must be positive"));
            }
        }
        if !(0.0..1.0).contains(&self.reassignment_ratio) {
            return Err(Error::config("reassignment_ratio", "must be in [0, 1)"));
        }
        if let Init::KMeansParallel {
            rounds,
            oversampling,
        } = self.init
        {
            if rounds == 0 {
                return Err(Error::config("init.rounds", "must be at least 1"));
            }
            if !(oversampling > 0.0 && oversampling.is_finite()) {
                return Err(Error::config("init.oversampling", "must be positive"));
            }
        }
        Ok(())
    }
}

/// One iteration (Lloyd) or one logged batch (mini-batch).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct IterStat {
    /// Iteration or batch number, from 1.
    pub iter: usize,
    /// Mean distance of the points of this pass or batch to their centroids before the update.
    pub inertia_per_point: f64,
    /// Total squared centroid shift of the update.
    pub shift: f64,
    /// Seconds since the start of the fit.
    pub seconds: f64,
}

/// A fitted model.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KMeansModel {
    /// Final centroids (unit vectors for cosine).
    pub centroids: Centroids,
    /// Distance used.
    pub metric: Metric,
    /// Points trained on.
    pub n_train: usize,
    /// Lloyd iterations or mini-batches run.
    pub iterations: usize,
    /// Whether a convergence rule stopped the fit (rather than the iteration budget).
    pub converged: bool,
    /// Passes over the training points (assignment work, in units of `n_train`).
    pub passes: f64,
    /// Per-iteration log.
    pub history: Vec<IterStat>,
    /// Seconds spent initialising.
    pub init_seconds: f64,
    /// Seconds for the whole fit.
    pub fit_seconds: f64,
    /// Clusters emptied during the fit and re-seeded.
    pub reseeded: usize,
    /// Clusters still empty at the end (only when the data has fewer than k distinct points).
    pub empty: usize,
}

impl KMeansModel {
    /// Packs the centroids for assignment.
    pub fn packed(&self) -> Packed {
        Packed::new(&self.centroids, self.metric)
    }

    /// Nearest and runner-up centroid of every point.
    pub fn predict(&self, points: &Points<'_>) -> Vec<Assignment> {
        crate::assign::assign(points, &self.packed())
    }
}

/// Fits k-means to the points. Fails with a clear error on `n < k` or a bad setting.
pub fn fit(points: &Points<'_>, cfg: &KMeansConfig) -> Result<KMeansModel> {
    cfg.validate()?;
    let n = points.n();
    if n < cfg.k {
        return Err(Error::TooFewPoints { n, k: cfg.k });
    }
    if cfg.metric == Metric::Cosine
        && let Some(row) = (0..n).find(|&i| points.row(i).iter().all(|v| *v == 0.0))
    {
        return Err(Error::ZeroVector { row });
    }
    let t0 = Instant::now();
    // training sample (max_points_per_centroid)
    let owned;
    let train = if cfg.max_points_per_centroid > 0 && n > cfg.k * cfg.max_points_per_centroid {
        owned = sample_rows(
            points,
            cfg.k * cfg.max_points_per_centroid,
            cfg.seed ^ 0xA11,
        );
        Points::new(&owned, points.d())?
    } else {
        *points
    };
    let init_owned;
    let init_pts = if cfg.init_sample > 0 && train.n() > cfg.init_sample.max(cfg.k) {
        init_owned = sample_rows(&train, cfg.init_sample.max(cfg.k), cfg.seed ^ 0x1417);
        Points::new(&init_owned, points.d())?
    } else {
        train
    };
    let centroids = match cfg.init {
        Init::Random => init::random(&init_pts, cfg.k, cfg.seed),
        Init::KMeansPlusPlus => {
            init::kmeans_plus_plus(&init_pts, None, cfg.k, cfg.metric, cfg.seed)
        }
        Init::KMeansParallel {
            rounds,
            oversampling,
        } => init::kmeans_parallel(&init_pts, cfg.k, cfg.metric, rounds, oversampling, cfg.seed),
    };
    let init_seconds = t0.elapsed().as_secs_f64();
    let mut model = refine(&train, centroids, cfg, t0)?;
    model.init_seconds = init_seconds;
    Ok(model)
}

/// Fits k-means starting from the given centroids (instead of `cfg.init`), e.g. a previous
/// run's or the coordinator's. `initial.k()` must equal `cfg.k`.
pub fn fit_from(
    points: &Points<'_>,
    initial: Centroids,
    cfg: &KMeansConfig,
) -> Result<KMeansModel> {
    cfg.validate()?;
    if initial.k() != cfg.k || initial.d() != points.d() {
        return Err(Error::Mismatch(format!(
            "initial centroids are {}×{}, expected {}×{}",
            initial.k(),
            initial.d(),
            cfg.k,
            points.d()
        )));
    }
    if points.n() < cfg.k {
        return Err(Error::TooFewPoints {
            n: points.n(),
            k: cfg.k,
        });
    }
    refine(points, initial, cfg, Instant::now())
}

/// Runs the configured algorithm from `centroids` and repairs empty clusters.
fn refine(
    train: &Points<'_>,
    mut centroids: Centroids,
    cfg: &KMeansConfig,
    t0: Instant,
) -> Result<KMeansModel> {
    if cfg.metric == Metric::Cosine {
        centroids.normalize_rows();
    }
    let mut model = match cfg.algorithm {
        Algorithm::Lloyd => lloyd(train, centroids, cfg, t0)?,
        Algorithm::MiniBatch => minibatch(train, centroids, cfg, t0)?,
    };
    let (empty, fixed) = repair_empty(train, &mut model.centroids, cfg.metric);
    model.reseeded += fixed;
    model.empty = empty;
    model.fit_seconds = t0.elapsed().as_secs_f64();
    Ok(model)
}

/// A uniform sample of `m` rows (without replacement), in row order.
fn sample_rows(points: &Points<'_>, m: usize, seed: u64) -> Vec<f32> {
    let mut r = rng::stream(seed, 4);
    let mut idx = sample(&mut r, points.n(), m).into_vec();
    idx.sort_unstable();
    let mut out = Vec::with_capacity(m * points.d());
    for i in idx {
        out.extend_from_slice(points.row(i));
    }
    out
}

/// Mean per-dimension variance × d: the scale of `tol` (the distributed k-means computes it
/// on the seeding sample).
pub fn total_variance(points: &Points<'_>) -> f64 {
    let (n, d) = (points.n(), points.d());
    let mut mean = vec![0f64; d];
    let mut sq = vec![0f64; d];
    for i in 0..n {
        for (j, v) in points.row(i).iter().enumerate() {
            let v = f64::from(*v);
            mean[j] += v;
            sq[j] += v * v;
        }
    }
    (0..d)
        .map(|j| (sq[j] / n as f64 - (mean[j] / n as f64).powi(2)).max(0.0))
        .sum()
}

fn shift(a: &Centroids, b: &Centroids) -> f64 {
    (0..a.k())
        .map(|c| f64::from(sq_dist(a.row(c), b.row(c))))
        .sum()
}

/// Re-seeds each empty cluster by splitting the cluster with the most inertia: both halves
/// move apart along a random direction by a tenth of its RMS radius.
fn split_for_empty(
    stats: &mut PartialStats,
    centroids: &mut Centroids,
    seed: u64,
    iter: usize,
) -> usize {
    let d = centroids.d();
    let mut fixed = 0;
    for e in 0..stats.k {
        if stats.counts[e] > 0 {
            continue;
        }
        let Some(big) = (0..stats.k)
            .filter(|&c| stats.counts[c] >= 2)
            .max_by(|&a, &b| {
                stats.inertia[a]
                    .total_cmp(&stats.inertia[b])
                    .then(b.cmp(&a))
            })
        else {
            break;
        };
        let radius = (stats.inertia[big] / stats.counts[big] as f64)
            .sqrt()
            .max(1e-6) as f32;
        let mut r = rng::stream(seed, 1000 + (iter * stats.k + e) as u64);
        let dir: Vec<f32> = (0..d).map(|_| r.random::<f32>() - 0.5).collect();
        let norm = dir
            .iter()
            .map(|v| v * v)
            .sum::<f32>()
            .sqrt()
            .max(f32::MIN_POSITIVE);
        let base = centroids.row(big).to_vec();
        for j in 0..d {
            let step = 0.1 * radius * dir[j] / norm;
            centroids.row_mut(e)[j] = base[j] + step;
            centroids.row_mut(big)[j] = base[j] - step;
        }
        // halve the donor so that the next empty cluster splits another one
        stats.counts[e] = stats.counts[big] / 2;
        stats.counts[big] -= stats.counts[e];
        stats.inertia[big] /= 2.0;
        stats.inertia[e] = stats.inertia[big];
        fixed += 1;
    }
    fixed
}

fn lloyd(
    train: &Points<'_>,
    mut centroids: Centroids,
    cfg: &KMeansConfig,
    t0: Instant,
) -> Result<KMeansModel> {
    let n = train.n();
    let tol = if cfg.tol > 0.0 {
        cfg.tol * total_variance(train) / train.d() as f64
    } else {
        0.0
    };
    let mut history = Vec::new();
    let mut converged = false;
    let mut reseeded = 0;
    let mut last_inertia = f64::INFINITY;
    let mut iterations = 0;
    for it in 1..=cfg.max_iter {
        let packed = Packed::new(&centroids, cfg.metric);
        let mut stats = accumulate(train, &packed, None);
        let inertia = stats.total_inertia();
        let mut next = stats.means(&centroids, cfg.metric);
        reseeded += split_for_empty(&mut stats, &mut next, cfg.seed, it);
        let sh = shift(&centroids, &next);
        centroids = next;
        iterations = it;
        history.push(IterStat {
            iter: it,
            inertia_per_point: inertia / n as f64,
            shift: sh,
            seconds: t0.elapsed().as_secs_f64(),
        });
        let improvement = (last_inertia - inertia) / inertia.max(f64::MIN_POSITIVE);
        if (tol > 0.0 && sh <= tol)
            || (cfg.min_improvement > 0.0 && improvement.abs() < cfg.min_improvement)
        {
            converged = true;
            break;
        }
        last_inertia = inertia;
    }
    Ok(KMeansModel {
        centroids,
        metric: cfg.metric,
        n_train: n,
        iterations,
        converged,
        passes: iterations as f64,
        history,
        init_seconds: 0.0,
        fit_seconds: 0.0,
        reseeded,
        empty: 0,
    })
}

fn minibatch(
    train: &Points<'_>,
    mut centroids: Centroids,
    cfg: &KMeansConfig,
    t0: Instant,
) -> Result<KMeansModel> {
    let (n, d, k) = (train.n(), train.d(), cfg.k);
    let b = cfg.batch_size.min(n);
    let steps = ((cfg.epochs * n as f64) / b as f64).ceil().max(1.0) as usize;
    let tol = if cfg.tol > 0.0 {
        cfg.tol * total_variance(train) / d as f64
    } else {
        0.0
    };
    let mut weight = vec![0f64; k];
    let mut r = rng::stream(cfg.seed, 5);
    let mut buf = vec![0f32; b * d];
    let mut asg = vec![Assignment::default(); b];
    let mut history = Vec::new();
    let mut ewa: Option<f64> = None;
    let mut best = f64::INFINITY;
    let mut since_best = 0;
    let mut converged = false;
    let mut reseeded = 0;
    let alpha = (2.0 * b as f64 / (n as f64 + 1.0)).min(1.0);
    let mut step = 0;
    let log_every = (steps / 200).max(1);
    while step < steps {
        step += 1;
        for row in 0..b {
            let i = r.random_range(0..n);
            buf[row * d..(row + 1) * d].copy_from_slice(train.row(i));
        }
        let batch = Points::new(&buf, d)?;
        let packed = Packed::new(&centroids, cfg.metric);
        let stats = accumulate(&batch, &packed, Some(&mut asg));
        let before = centroids.clone();
        stats.apply_minibatch(&mut centroids, &mut weight, cfg.metric);
        if cfg.reassignment_ratio > 0.0 && step % 10 == 0 {
            let max_w = weight.iter().cloned().fold(0.0, f64::max);
            let light: Vec<usize> = (0..k)
                .filter(|&c| weight[c] < cfg.reassignment_ratio * max_w)
                .collect();
            if !light.is_empty() {
                let keep_min = (0..k)
                    .filter(|c| !light.contains(c))
                    .map(|c| weight[c])
                    .fold(f64::INFINITY, f64::min);
                let take = light.len().min(b / 2).max(1);
                let rows = sample(&mut r, b, take).into_vec();
                for (c, row) in light.iter().zip(rows) {
                    centroids.row_mut(*c).copy_from_slice(batch.row(row));
                    weight[*c] = keep_min;
                    reseeded += 1;
                }
                if cfg.metric == Metric::Cosine {
                    centroids.normalize_rows();
                }
            }
        }
        let per_point = stats.total_inertia() / b as f64;
        let smooth = match ewa {
            None => per_point,
            Some(e) => e * (1.0 - alpha) + per_point * alpha,
        };
        ewa = Some(smooth);
        let sh = shift(&before, &centroids);
        if step % log_every == 0 || step == steps {
            history.push(IterStat {
                iter: step,
                inertia_per_point: smooth,
                shift: sh,
                seconds: t0.elapsed().as_secs_f64(),
            });
        }
        if tol > 0.0 && sh <= tol * (b as f64 / n as f64) {
            converged = true;
            break;
        }
        if smooth < best {
            best = smooth;
            since_best = 0;
        } else {
            since_best += 1;
            if cfg.max_no_improvement > 0 && since_best >= cfg.max_no_improvement {
                converged = true;
                break;
            }
        }
    }
    Ok(KMeansModel {
        centroids,
        metric: cfg.metric,
        n_train: n,
        iterations: step,
        converged,
        passes: step as f64 * b as f64 / n as f64,
        history,
        init_seconds: 0.0,
        fit_seconds: 0.0,
        reseeded,
        empty: 0,
    })
}

/// Makes every cluster non-empty when the data allows it: an empty cluster takes over the
/// point farthest from its centroid among clusters with at least two points. Returns
/// (clusters still empty, clusters re-seeded). Costs one assignment pass, plus one per repair.
pub fn repair_empty(
    points: &Points<'_>,
    centroids: &mut Centroids,
    metric: Metric,
) -> (usize, usize) {
    let mut asg = vec![Assignment::default(); points.n()];
    let mut fixed = 0;
    for _ in 0..centroids.k() {
        assign_into(points, &Packed::new(centroids, metric), &mut asg);
        let mut counts = vec![0usize; centroids.k()];
        for a in &asg {
            counts[a.cluster as usize] += 1;
        }
        let Some(empty) = counts.iter().position(|&c| c == 0) else {
            return (0, fixed);
        };
        let far = asg
            .iter()
            .enumerate()
            .filter(|(_, a)| counts[a.cluster as usize] >= 2 && a.distance > 0.0)
            .max_by(|x, y| x.1.distance.total_cmp(&y.1.distance).then(y.0.cmp(&x.0)));
        let Some((row, _)) = far else {
            return (counts.iter().filter(|&&c| c == 0).count(), fixed);
        };
        centroids.row_mut(empty).copy_from_slice(points.row(row));
        if metric == Metric::Cosine {
            centroids.normalize_rows();
        }
        fixed += 1;
    }
    assign_into(points, &Packed::new(centroids, metric), &mut asg);
    let mut counts = vec![0usize; centroids.k()];
    for a in &asg {
        counts[a.cluster as usize] += 1;
    }
    (counts.iter().filter(|&&c| c == 0).count(), fixed)
}
