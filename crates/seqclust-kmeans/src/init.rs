//! Initial centroids: random points, greedy k-means++ (Arthur & Vassilvitskii 2007, with the
//! local trials of scikit-learn), and k-means|| (Bahmani et al. 2012).

use rand::RngExt;
use rand::seq::index::sample;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::assign::{Assignment, Metric, Packed, assign_into};
use crate::matrix::{Centroids, Points, dot, sq_dist};
use crate::rng;

/// How initial centroids are chosen.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum Init {
    /// `k` distinct points drawn uniformly.
    Random,
    /// Greedy k-means++ on a sample of the points.
    KMeansPlusPlus,
    /// k-means||: `rounds` rounds oversampling `oversampling × k` candidates each, in
    /// proportion to the squared distance, then weighted greedy k-means++ on the candidates.
    KMeansParallel {
        /// Sampling rounds (Bahmani et al. found 5 enough).
        rounds: usize,
        /// Expected candidates per round, as a multiple of k.
        oversampling: f64,
    },
}

impl Default for Init {
    fn default() -> Self {
        Init::KMeansParallel {
            rounds: 5,
            oversampling: 2.0,
        }
    }
}

/// Distance of a point to a centroid under the metric (centroid already unit for cosine).
fn point_dist(x: &[f32], c: &[f32], metric: Metric) -> f32 {
    match metric {
        Metric::L2 => sq_dist(x, c),
        Metric::Cosine => {
            let n = dot(x, x).sqrt().max(f32::MIN_POSITIVE);
            (1.0 - dot(x, c) / n).max(0.0)
        }
    }
}

fn unit(x: &[f32], metric: Metric) -> Vec<f32> {
    match metric {
        Metric::L2 => x.to_vec(),
        Metric::Cosine => {
            let n = dot(x, x).sqrt().max(f32::MIN_POSITIVE);
            x.iter().map(|v| v / n).collect()
        }
    }
}

/// `k` distinct random rows.
pub fn random(points: &Points<'_>, k: usize, seed: u64) -> Centroids {
    let mut r = rng::stream(seed, 1);
    let mut idx = sample(&mut r, points.n(), k).into_vec();
    idx.sort_unstable();
    Centroids::from_rows(points, &idx)
}

/// Greedy weighted k-means++ over `points` (weights default to 1): each step draws
/// `2 + ln k` candidates in proportion to weight × distance and keeps the one that lowers the
/// total weighted distance most.
pub fn kmeans_plus_plus(
    points: &Points<'_>,
    weights: Option<&[f64]>,
    k: usize,
    metric: Metric,
    seed: u64,
) -> Centroids {
    let n = points.n();
    let d = points.d();
    let w = |i: usize| weights.map_or(1.0, |w| w[i]);
    let mut r = rng::stream(seed, 2);
    let trials = 2 + (k as f64).ln().floor() as usize;
    let total_w: f64 = (0..n).map(w).sum();
    // first centre: by weight
    let first = pick(&mut r, n, w, total_w);
    let mut chosen = vec![first];
    let mut centres: Vec<Vec<f32>> = vec![unit(points.row(first), metric)];
    let mut closest: Vec<f64> = (0..n)
        .into_par_iter()
        .map(|i| f64::from(point_dist(points.row(i), &centres[0], metric)))
        .collect();
    while centres.len() < k {
        let pot: f64 = (0..n).map(|i| w(i) * closest[i]).sum();
        if pot <= 0.0 {
            // every point coincides with a centre: fill with unused points
            let next = (0..n).find(|i| !chosen.contains(i)).unwrap_or(0);
            chosen.push(next);
            centres.push(unit(points.row(next), metric));
            continue;
        }
        let cands: Vec<usize> = (0..trials)
            .map(|_| pick(&mut r, n, |i| w(i) * closest[i], pot))
            .collect();
        let mut best: Option<(f64, usize, Vec<f64>)> = None;
        for &c in &cands {
            let cu = unit(points.row(c), metric);
            let new: Vec<f64> = (0..n)
                .into_par_iter()
                .map(|i| closest[i].min(f64::from(point_dist(points.row(i), &cu, metric))))
                .collect();
            let p: f64 = (0..n).map(|i| w(i) * new[i]).sum();
            if best.as_ref().is_none_or(|b| p < b.0) {
                best = Some((p, c, new));
            }
        }
        if let Some((_, c, new)) = best {
            chosen.push(c);
            centres.push(unit(points.row(c), metric));
            closest = new;
        }
    }
    let mut data = Vec::with_capacity(k * d);
    for c in &chosen {
        data.extend_from_slice(points.row(*c));
    }
    // rows are finite points
    Centroids::new(data, d).unwrap_or_else(|_| Centroids::from_rows(points, &chosen))
}

/// Draws an index with probability proportional to `f(i)` (total `total`).
fn pick(r: &mut impl rand::Rng, n: usize, f: impl Fn(usize) -> f64, total: f64) -> usize {
    let mut target = r.random::<f64>() * total;
    for i in 0..n {
        target -= f(i);
        if target < 0.0 {
            return i;
        }
    }
    (0..n).rev().find(|&i| f(i) > 0.0).unwrap_or(n - 1)
}

/// k-means|| followed by weighted k-means++ on the candidates.
pub fn kmeans_parallel(
    points: &Points<'_>,
    k: usize,
    metric: Metric,
    rounds: usize,
    oversampling: f64,
    seed: u64,
) -> Centroids {
    let n = points.n();
    let mut r = rng::stream(seed, 3);
    let first = r.random_range(0..n);
    let mut cand: Vec<usize> = vec![first];
    let mut asg = vec![Assignment::default(); n];
    assign_into(
        points,
        &Packed::new(&Centroids::from_rows(points, &[first]), metric),
        &mut asg,
    );
    let mut closest: Vec<f32> = asg.iter().map(|a| a.distance).collect();
    let ell = oversampling * k as f64;
    for round in 0..rounds {
        let phi: f64 = closest.par_iter().map(|&v| f64::from(v)).sum();
        if phi <= 0.0 {
            break;
        }
        let new: Vec<usize> = (0..n)
            .into_par_iter()
            .filter(|&i| {
                rng::uniform(seed, round as u64 + 1, i as u64) < ell * f64::from(closest[i]) / phi
            })
            .collect();
        if new.is_empty() {
            continue;
        }
        let packed = Packed::new(&Centroids::from_rows(points, &new), metric);
        assign_into(points, &packed, &mut asg);
        closest
            .par_iter_mut()
            .zip(&asg)
            .for_each(|(c, a)| *c = c.min(a.distance));
        cand.extend(new);
    }
    cand.sort_unstable();
    cand.dedup();
    if cand.len() <= k {
        // too few candidates (tiny or duplicated data): top up with other points
        let mut extra: Vec<usize> = (0..n).filter(|i| cand.binary_search(i).is_err()).collect();
        extra.truncate(k - cand.len());
        cand.extend(extra);
        cand.sort_unstable();
        return Centroids::from_rows(points, &cand[..k.min(cand.len())]);
    }
    // weight of a candidate = points closest to it
    let cpts = Centroids::from_rows(points, &cand);
    assign_into(points, &Packed::new(&cpts, metric), &mut asg);
    let mut weights = vec![0f64; cand.len()];
    for a in &asg {
        weights[a.cluster as usize] += 1.0;
    }
    let cview = cpts.as_points();
    kmeans_plus_plus(&cview, Some(&weights), k, metric, seed ^ 0x11)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn blobs(per: usize, centres: &[(f32, f32)], seed: u64) -> Vec<f32> {
        let mut r = rng::stream(seed, 9);
        let mut v = Vec::new();
        for &(cx, cy) in centres {
            for _ in 0..per {
                v.push(cx + r.random::<f32>() - 0.5);
                v.push(cy + r.random::<f32>() - 0.5);
            }
        }
        v
    }

    #[test]
    fn seeding_finds_separated_blobs() {
        let centres = [
            (0.0, 0.0),
            (20.0, 0.0),
            (0.0, 20.0),
            (20.0, 20.0),
            (40.0, 40.0),
        ];
        let x = blobs(200, &centres, 1);
        let p = Points::new(&x, 2).unwrap();
        for init in [Init::KMeansPlusPlus, Init::default()] {
            let c = match init {
                Init::KMeansPlusPlus => kmeans_plus_plus(&p, None, 5, Metric::L2, 7),
                _ => kmeans_parallel(&p, 5, Metric::L2, 5, 2.0, 7),
            };
            // one seed per blob
            let mut hit = [false; 5];
            for i in 0..5 {
                let r = c.row(i);
                let b = centres
                    .iter()
                    .position(|&(cx, cy)| (r[0] - cx).abs() < 1.0 && (r[1] - cy).abs() < 1.0)
                    .unwrap();
                hit[b] = true;
            }
            assert!(hit.iter().all(|h| *h), "{init:?}: {c:?}");
        }
        let c1 = kmeans_parallel(&p, 5, Metric::L2, 5, 2.0, 7);
        let c2 = kmeans_parallel(&p, 5, Metric::L2, 5, 2.0, 7);
        assert_eq!(c1, c2, "deterministic for a seed");
    }

    #[test]
    fn random_rows_are_distinct() {
        let x: Vec<f32> = (0..100).map(|i| i as f32).collect();
        let p = Points::new(&x, 1).unwrap();
        let c = random(&p, 10, 3);
        let mut v: Vec<i64> = c.as_slice().iter().map(|v| *v as i64).collect();
        v.dedup();
        assert_eq!(v.len(), 10);
    }
}
