//! Cluster quality against ground truth (`seqclust eval clustering`): the deep encoder's user
//! vectors beside built-in baselines, each clustered by the same k-means and scored with ARI,
//! NMI, purity and silhouette.
//!
//! The baselines are what a team would try before a sequence model:
//! - **TF-IDF + k-means**: each user a bag of items weighted by TF-IDF (scikit-learn's smooth
//!   IDF, unit rows), clustered by spherical k-means directly on the sparse vectors;
//! - **item2vec + k-means**: skip-gram with negative sampling over the item sequences
//!   (word2vec's recipe: window, unigram^0.75 negatives, frequent-item subsampling, linear
//!   learning-rate decay), each user the mean of its items' vectors;
//! - **the untrained encoder**: the same architecture at its initial weights, which tells how
//!   much of the result training earned.

use std::collections::HashMap;
use std::time::Instant;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use seqclust_kmeans::{
    Algorithm, Init, KMeansConfig, Metric, Points, adjusted_rand_index, normalized_mutual_info,
    purity,
};
use seqclust_model::features::FIRST_ITEM;

use crate::error::{Error, Result};

/// One method's scores.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Row {
    /// The method (`encoder runs/x`, `tfidf+kmeans`, …).
    pub method: String,
    /// Dimension of its user vectors (the vocabulary size for TF-IDF).
    pub dim: usize,
    /// Adjusted Rand index against the truth.
    pub ari: f64,
    /// Normalised mutual information (arithmetic mean normalisation).
    pub nmi: f64,
    /// Purity.
    pub purity: f64,
    /// Mean silhouette (cosine distance) on a uniform sample of [`SILHOUETTE_SAMPLE`] users.
    pub silhouette: f64,
    /// Seconds to build the vectors (training included) and cluster them.
    pub seconds: f64,
}

/// Users the silhouette is computed on.
pub const SILHOUETTE_SAMPLE: usize = 4000;

/// k-means restarts per method (the lowest inertia is kept).
pub const RESTARTS: u64 = 3;

/// Scores predicted clusters against the truth; `dist(i, j)` is the cosine distance of users
/// `i` and `j` for the silhouette.
pub fn score(
    method: &str,
    dim: usize,
    pred: &[u32],
    truth: &[u64],
    dist: &(dyn Fn(usize, usize) -> f64 + Sync),
    seed: u64,
    seconds: f64,
) -> Row {
    let p: Vec<u64> = pred.iter().map(|&c| u64::from(c)).collect();
    Row {
        method: method.to_string(),
        dim,
        ari: adjusted_rand_index(truth, &p),
        nmi: normalized_mutual_info(truth, &p),
        purity: purity(&p, truth),
        silhouette: silhouette(pred, dist, seed),
        seconds,
    }
}

/// Mean silhouette of a uniform sample of the points, each against the sample.
fn silhouette(labels: &[u32], dist: &(dyn Fn(usize, usize) -> f64 + Sync), seed: u64) -> f64 {
    let n = labels.len();
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x5117);
    let m = n.min(SILHOUETTE_SAMPLE);
    let mut idx: Vec<usize> = rand::seq::index::sample(&mut r, n, m).into_vec();
    idx.sort_unstable();
    let k = labels.iter().copied().max().map_or(0, |x| x as usize + 1);
    let s: Vec<f64> = idx
        .par_iter()
        .map(|&i| {
            let mut sum = vec![0.0; k];
            let mut cnt = vec![0usize; k];
            for &j in &idx {
                if j != i {
                    let c = labels[j] as usize;
                    sum[c] += dist(i, j);
                    cnt[c] += 1;
                }
            }
            let own = labels[i] as usize;
            if cnt[own] == 0 {
                return 0.0;
            }
            let a = sum[own] / cnt[own] as f64;
            let b = (0..k)
                .filter(|&c| c != own && cnt[c] > 0)
                .map(|c| sum[c] / cnt[c] as f64)
                .fold(f64::INFINITY, f64::min);
            if !b.is_finite() {
                return 0.0;
            }
            (b - a) / a.max(b).max(f64::MIN_POSITIVE)
        })
        .collect();
    s.iter().sum::<f64>() / s.len().max(1) as f64
}

fn unit(v: &mut [f32]) {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if n > 0.0 {
        v.iter_mut().for_each(|x| *x /= n);
    }
}

/// Clusters dense user vectors (`n × d`) with spherical k-means (k-means++, Lloyd, the best of
/// [`RESTARTS`]) and scores them.
pub fn dense(
    method: &str,
    vectors: &[f32],
    d: usize,
    truth: &[u64],
    k: usize,
    seed: u64,
    started: Instant,
) -> Result<Row> {
    let mut v = vectors.to_vec();
    v.par_chunks_mut(d).for_each(unit);
    let points = Points::new(&v, d)?;
    let mut best: Option<(f64, Vec<u32>)> = None;
    for r in 0..RESTARTS {
        let cfg = KMeansConfig {
            k,
            metric: Metric::Cosine,
            init: Init::KMeansPlusPlus,
            algorithm: Algorithm::Lloyd,
            max_iter: 100,
            seed: seed.wrapping_add(r),
            ..KMeansConfig::default()
        };
        let model = seqclust_kmeans::fit(&points, &cfg)?;
        let asg = model.predict(&points);
        let inertia: f64 = asg.iter().map(|a| f64::from(a.distance)).sum();
        if best.as_ref().is_none_or(|(b, _)| inertia < *b) {
            best = Some((inertia, asg.iter().map(|a| a.cluster).collect()));
        }
    }
    let (_, labels) = best.ok_or_else(|| Error::Input("no k-means restart ran".into()))?;
    let dist = |i: usize, j: usize| {
        let (a, b) = (&v[i * d..(i + 1) * d], &v[j * d..(j + 1) * d]);
        (1.0 - f64::from(a.iter().zip(b).map(|(x, y)| x * y).sum::<f32>())).max(0.0)
    };
    let secs = started.elapsed().as_secs_f64();
    Ok(score(method, d, &labels, truth, &dist, seed, secs))
}

/// A user's sparse unit vector: sorted `(item, weight)`.
type Sparse = Vec<(u32, f32)>;

fn sparse_dot(a: &Sparse, b: &Sparse) -> f32 {
    let (mut i, mut j, mut s) = (0, 0, 0.0);
    while i < a.len() && j < b.len() {
        match a[i].0.cmp(&b[j].0) {
            std::cmp::Ordering::Less => i += 1,
            std::cmp::Ordering::Greater => j += 1,
            std::cmp::Ordering::Equal => {
                s += a[i].1 * b[j].1;
                i += 1;
                j += 1;
            }
        }
    }
    s
}

/// TF-IDF vectors of item sequences (ids below [`FIRST_ITEM`] ignored): term frequency times
/// `ln((1 + n) / (1 + df)) + 1`, unit rows.
pub fn tfidf(seqs: &[&[u32]], items: usize) -> Vec<Sparse> {
    let mut df = vec![0u32; items];
    let bags: Vec<Sparse> = seqs
        .iter()
        .map(|s| {
            let mut c: HashMap<u32, f32> = HashMap::new();
            for &i in s
                .iter()
                .filter(|&&i| i >= FIRST_ITEM && (i as usize) < items)
            {
                *c.entry(i).or_default() += 1.0;
            }
            let mut v: Sparse = c.into_iter().collect();
            v.sort_unstable_by_key(|x| x.0);
            v
        })
        .collect();
    for b in &bags {
        for &(i, _) in b {
            df[i as usize] += 1;
        }
    }
    let n = seqs.len() as f32;
    bags.into_par_iter()
        .map(|mut b| {
            for (i, w) in b.iter_mut() {
                *w *= ((1.0 + n) / (1.0 + df[*i as usize] as f32)).ln() + 1.0;
            }
            let norm = b.iter().map(|x| x.1 * x.1).sum::<f32>().sqrt();
            if norm > 0.0 {
                b.iter_mut().for_each(|x| x.1 /= norm);
            }
            b
        })
        .collect()
}

/// Spherical k-means on sparse unit vectors (k-means++ seeding on cosine distance, Lloyd
/// with dense centroids); returns the labels and the total cosine distance.
fn sparse_kmeans(x: &[Sparse], dim: usize, k: usize, seed: u64) -> (Vec<u32>, f64) {
    let n = x.len();
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    // k-means++ on cosine distance
    let mut chosen = vec![r.random_range(0..n)];
    let mut near: Vec<f64> = x
        .par_iter()
        .map(|p| f64::from(1.0 - sparse_dot(p, &x[chosen[0]])).max(0.0))
        .collect();
    while chosen.len() < k {
        let total: f64 = near.iter().sum();
        let pick = if total > 0.0 {
            let mut u = r.random::<f64>() * total;
            let mut pick = n - 1;
            for (i, &w) in near.iter().enumerate() {
                if u < w {
                    pick = i;
                    break;
                }
                u -= w;
            }
            pick
        } else {
            r.random_range(0..n)
        };
        chosen.push(pick);
        let c = &x[pick];
        near.par_iter_mut().zip(x).for_each(|(m, p)| {
            *m = m.min(f64::from(1.0 - sparse_dot(p, c)).max(0.0));
        });
    }
    let mut cent = vec![0f32; k * dim];
    for (c, &i) in chosen.iter().enumerate() {
        for &(j, w) in &x[i] {
            cent[c * dim + j as usize] = w;
        }
    }
    let mut labels = vec![0u32; n];
    let mut cost = f64::INFINITY;
    for _ in 0..100 {
        let (new, sims): (Vec<u32>, Vec<f32>) = x
            .par_iter()
            .map(|p| {
                let mut best = (0u32, f32::NEG_INFINITY);
                for c in 0..k {
                    let row = &cent[c * dim..(c + 1) * dim];
                    let s: f32 = p.iter().map(|&(j, w)| w * row[j as usize]).sum();
                    if s > best.1 {
                        best = (c as u32, s);
                    }
                }
                best
            })
            .unzip();
        let new_cost: f64 = sims.iter().map(|&s| f64::from(1.0 - s).max(0.0)).sum();
        let changed = new != labels;
        labels = new;
        cost = new_cost;
        cent.iter_mut().for_each(|v| *v = 0.0);
        for (p, &l) in x.iter().zip(&labels) {
            let row = &mut cent[l as usize * dim..(l as usize + 1) * dim];
            for &(j, w) in p {
                row[j as usize] += w;
            }
        }
        cent.par_chunks_mut(dim).for_each(unit);
        if !changed {
            break;
        }
    }
    (labels, cost)
}

/// TF-IDF + spherical k-means (the best of [`RESTARTS`]), scored.
pub fn tfidf_kmeans(
    seqs: &[&[u32]],
    items: usize,
    truth: &[u64],
    k: usize,
    seed: u64,
) -> Result<Row> {
    let t = Instant::now();
    let x = tfidf(seqs, items);
    if x.len() < k {
        return Err(Error::Input(format!("{} users for k = {k}", x.len())));
    }
    let (labels, _) = (0..RESTARTS)
        .map(|r| sparse_kmeans(&x, items, k, seed.wrapping_add(r)))
        .min_by(|a, b| a.1.total_cmp(&b.1))
        .ok_or_else(|| Error::Input("no k-means restart ran".into()))?;
    let dist = |i: usize, j: usize| f64::from(1.0 - sparse_dot(&x[i], &x[j])).max(0.0);
    let secs = t.elapsed().as_secs_f64();
    Ok(score(
        "tfidf+kmeans",
        items,
        &labels,
        truth,
        &dist,
        seed,
        secs,
    ))
}

/// Skip-gram with negative sampling settings (word2vec's defaults where they apply).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Item2VecConfig {
    /// Vector size.
    pub dim: usize,
    /// Largest context window (each position draws one in `1..=window`).
    pub window: usize,
    /// Negatives per positive pair.
    pub negatives: usize,
    /// Passes over the sequences.
    pub epochs: usize,
    /// Starting learning rate (decays linearly to 1e-4 of it).
    pub lr: f32,
    /// Subsampling threshold of frequent items (0 disables).
    pub subsample: f64,
}

impl Default for Item2VecConfig {
    fn default() -> Self {
        Item2VecConfig {
            dim: 64,
            window: 5,
            negatives: 5,
            epochs: 2,
            lr: 0.025,
            subsample: 1e-4,
        }
    }
}

/// Trains item vectors on the sequences (one thread: the result depends on the seed only);
/// returns `items × dim` input vectors.
pub fn item2vec(seqs: &[&[u32]], items: usize, cfg: &Item2VecConfig, seed: u64) -> Vec<f32> {
    let d = cfg.dim;
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x0127_27ec);
    let mut counts = vec![0u64; items];
    for s in seqs {
        for &i in s
            .iter()
            .filter(|&&i| i >= FIRST_ITEM && (i as usize) < items)
        {
            counts[i as usize] += 1;
        }
    }
    let total: u64 = counts.iter().sum::<u64>().max(1);
    // unigram^0.75 for negatives
    let mut cum = Vec::with_capacity(items);
    let mut acc = 0.0;
    let z: f64 = counts
        .iter()
        .map(|&c| (c as f64).powf(0.75))
        .sum::<f64>()
        .max(1e-12);
    for &c in &counts {
        acc += (c as f64).powf(0.75) / z;
        cum.push(acc);
    }
    let keep: Vec<f64> = counts
        .iter()
        .map(|&c| {
            if cfg.subsample <= 0.0 || c == 0 {
                return 1.0;
            }
            let f = c as f64 / total as f64;
            ((cfg.subsample / f).sqrt() + cfg.subsample / f).min(1.0)
        })
        .collect();
    let mut win: Vec<f32> = (0..items * d)
        .map(|_| (r.random::<f32>() - 0.5) / d as f32)
        .collect();
    let mut wout = vec![0f32; items * d];
    let steps = (cfg.epochs * seqs.len()).max(1) as f32;
    let mut done = 0f32;
    let mut grad = vec![0f32; d];
    let mut sent: Vec<u32> = Vec::new();
    for _ in 0..cfg.epochs {
        for s in seqs {
            let lr = (cfg.lr * (1.0 - done / steps)).max(cfg.lr * 1e-4);
            done += 1.0;
            sent.clear();
            sent.extend(s.iter().copied().filter(|&i| {
                i >= FIRST_ITEM && (i as usize) < items && r.random::<f64>() < keep[i as usize]
            }));
            for (p, &center) in sent.iter().enumerate() {
                let b = r.random_range(1..=cfg.window.max(1));
                let lo = p.saturating_sub(b);
                let hi = (p + b + 1).min(sent.len());
                for (q, &ctx) in sent.iter().enumerate().take(hi).skip(lo) {
                    if q == p {
                        continue;
                    }
                    let ci = ctx as usize * d;
                    grad.iter_mut().for_each(|g| *g = 0.0);
                    for n in 0..=cfg.negatives {
                        let (target, label) = if n == 0 {
                            (center as usize, 1.0)
                        } else {
                            let u = r.random::<f64>();
                            let t = cum.partition_point(|&c| c < u).min(items - 1);
                            if t == center as usize {
                                continue;
                            }
                            (t, 0.0)
                        };
                        let ti = target * d;
                        let dotp: f32 = (0..d).map(|j| win[ci + j] * wout[ti + j]).sum();
                        let sig = 1.0 / (1.0 + (-dotp.clamp(-6.0, 6.0)).exp());
                        let g = (label - sig) * lr;
                        for j in 0..d {
                            grad[j] += g * wout[ti + j];
                            wout[ti + j] += g * win[ci + j];
                        }
                    }
                    for j in 0..d {
                        win[ci + j] += grad[j];
                    }
                }
            }
        }
    }
    win
}

/// Each user's mean item vector (`n × dim`); users without known items get zeros.
pub fn mean_vectors(seqs: &[&[u32]], table: &[f32], d: usize) -> Vec<f32> {
    let items = table.len() / d;
    let mut out = vec![0f32; seqs.len() * d];
    out.par_chunks_mut(d).zip(seqs).for_each(|(o, s)| {
        let mut n = 0f32;
        for &i in s
            .iter()
            .filter(|&&i| i >= FIRST_ITEM && (i as usize) < items)
        {
            let row = &table[i as usize * d..(i as usize + 1) * d];
            o.iter_mut().zip(row).for_each(|(a, b)| *a += b);
            n += 1.0;
        }
        if n > 0.0 {
            o.iter_mut().for_each(|a| *a /= n);
        }
    });
    out
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    /// Two groups of users drawing from disjoint item ranges: every method must separate them.
    fn two_groups() -> (Vec<Vec<u32>>, Vec<u64>) {
        let mut r = ChaCha8Rng::seed_from_u64(3);
        let mut seqs = Vec::new();
        let mut truth = Vec::new();
        for u in 0..400u64 {
            let g = u % 2;
            let base = 2 + 50 * g as u32;
            seqs.push((0..20).map(|_| base + r.random_range(0..50u32)).collect());
            truth.push(g);
        }
        (seqs, truth)
    }

    #[test]
    fn tfidf_separates_disjoint_item_sets() {
        let (seqs, truth) = two_groups();
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let row = tfidf_kmeans(&refs, 102, &truth, 2, 1).unwrap();
        assert!(row.ari > 0.99 && row.nmi > 0.99, "{row:?}");
        assert!(row.silhouette > 0.0, "{row:?}");
    }

    #[test]
    fn item2vec_learns_co_occurrence() {
        let (seqs, truth) = two_groups();
        let refs: Vec<&[u32]> = seqs.iter().map(Vec::as_slice).collect();
        let cfg = Item2VecConfig {
            dim: 16,
            epochs: 5,
            subsample: 0.0,
            ..Item2VecConfig::default()
        };
        let table = item2vec(&refs, 102, &cfg, 1);
        let v = mean_vectors(&refs, &table, 16);
        let row = dense("item2vec", &v, 16, &truth, 2, 1, Instant::now()).unwrap();
        assert!(row.ari > 0.95, "{row:?}");
        // and random vectors do not
        let noise: Vec<f32> = {
            let mut r = ChaCha8Rng::seed_from_u64(9);
            (0..400 * 16).map(|_| r.random::<f32>() - 0.5).collect()
        };
        let row = dense("noise", &noise, 16, &truth, 2, 1, Instant::now()).unwrap();
        assert!(row.ari < 0.1, "{row:?}");
    }
}
