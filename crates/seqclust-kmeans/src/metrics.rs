//! Internal cluster-quality metrics: inertia, silhouette (exact up to 20k points, sampled
//! above), Davies–Bouldin, Calinski–Harabasz and size imbalance.

use rand::seq::index::sample;
use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::assign::{Assignment, Metric, Packed, distances_into};
use crate::matrix::{Centroids, Points, dot, sq_dist};
use crate::rng;

/// Points above which the silhouette is estimated on a uniform sample of this size.
pub const SILHOUETTE_EXACT_MAX: usize = 20_000;

/// Quality of a clustering.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Quality {
    /// Points evaluated.
    pub n: usize,
    /// Clusters with at least one point.
    pub non_empty: usize,
    /// Sum of distances to the assigned centroid.
    pub inertia: f64,
    /// Inertia / n.
    pub inertia_per_point: f64,
    /// Mean silhouette in [-1, 1] (higher is better).
    pub silhouette: f64,
    /// Points the silhouette was computed on (n, or the sample size).
    pub silhouette_points: usize,
    /// Davies–Bouldin index (lower is better).
    pub davies_bouldin: f64,
    /// Calinski–Harabasz index (higher is better).
    pub calinski_harabasz: f64,
    /// Largest cluster size / mean cluster size.
    pub size_max_over_mean: f64,
    /// Coefficient of variation of the cluster sizes.
    pub size_cv: f64,
}

/// Distance between two points under a metric (Euclidean, not squared, for the silhouette).
fn dist(a: &[f32], b: &[f32], metric: Metric) -> f64 {
    match metric {
        Metric::L2 => f64::from(sq_dist(a, b)).sqrt(),
        Metric::Cosine => {
            let n = (f64::from(dot(a, a)) * f64::from(dot(b, b)))
                .sqrt()
                .max(f64::MIN_POSITIVE);
            (1.0 - f64::from(dot(a, b)) / n).max(0.0)
        }
    }
}

/// Mean silhouette of the given rows, each against all of them. Pairwise distances come from
/// the assignment kernel (the rows packed as "centroids"), 64 rows at a time.
fn silhouette_of(
    points: &Points<'_>,
    labels: &[u32],
    rows: &[usize],
    k: usize,
    metric: Metric,
) -> f64 {
    let m = rows.len();
    if m < 2 {
        return 0.0;
    }
    let mut sizes = vec![0usize; k];
    let lab: Vec<u32> = rows.iter().map(|&r| labels[r]).collect();
    for &l in &lab {
        sizes[l as usize] += 1;
    }
    let sample = Centroids::from_rows(points, rows);
    let packed = Packed::new(&sample, metric);
    const BLOCK: usize = 64;
    let total: f64 = (0..m.div_ceil(BLOCK))
        .into_par_iter()
        .map(|b| {
            let (a, e) = (b * BLOCK, ((b + 1) * BLOCK).min(m));
            let mut dist = vec![0f32; (e - a) * m];
            distances_into(&packed, sample.as_points().rows(a, e), &mut dist);
            let mut sums = vec![0f64; k];
            let mut acc = 0f64;
            for (bi, row) in dist.chunks_exact_mut(m).enumerate() {
                let i = a + bi;
                if metric == Metric::L2 {
                    row.iter_mut().for_each(|v| *v = v.sqrt());
                }
                row[i] = 0.0;
                sums.iter_mut().for_each(|s| *s = 0.0);
                for (j, &dv) in row.iter().enumerate() {
                    sums[lab[j] as usize] += f64::from(dv);
                }
                let own = lab[i] as usize;
                if sizes[own] <= 1 {
                    continue;
                }
                let ai = sums[own] / (sizes[own] - 1) as f64;
                let bi = (0..k)
                    .filter(|&c| c != own && sizes[c] > 0)
                    .map(|c| sums[c] / sizes[c] as f64)
                    .fold(f64::INFINITY, f64::min);
                if bi.is_finite() {
                    let mx = ai.max(bi);
                    if mx > 0.0 {
                        acc += (bi - ai) / mx;
                    }
                }
            }
            acc
        })
        .sum();
    total / m as f64
}

/// The mean silhouette, exact for up to [`SILHOUETTE_EXACT_MAX`] points and on a uniform
/// sample of that many otherwise (deterministic for `seed`). Returns (value, points used).
pub fn silhouette(
    points: &Points<'_>,
    labels: &[u32],
    k: usize,
    metric: Metric,
    seed: u64,
) -> (f64, usize) {
    let n = points.n();
    let rows: Vec<usize> = if n <= SILHOUETTE_EXACT_MAX {
        (0..n).collect()
    } else {
        let mut r = rng::stream(seed, 6);
        let mut v = sample(&mut r, n, SILHOUETTE_EXACT_MAX).into_vec();
        v.sort_unstable();
        v
    };
    (silhouette_of(points, labels, &rows, k, metric), rows.len())
}

/// Every metric of a clustering given the assignments.
pub fn quality(
    points: &Points<'_>,
    centroids: &Centroids,
    asg: &[Assignment],
    metric: Metric,
    seed: u64,
) -> Quality {
    let (n, d, k) = (points.n(), points.d(), centroids.k());
    let labels: Vec<u32> = asg.iter().map(|a| a.cluster).collect();
    let mut sizes = vec![0usize; k];
    let mut spread = vec![0f64; k];
    let mut inertia = 0f64;
    let mut mean = vec![0f64; d];
    for (i, a) in asg.iter().enumerate() {
        let c = a.cluster as usize;
        sizes[c] += 1;
        inertia += f64::from(a.distance);
        spread[c] += dist(points.row(i), centroids.row(c), metric);
        for (m, v) in mean.iter_mut().zip(points.row(i)) {
            *m += f64::from(*v);
        }
    }
    mean.iter_mut().for_each(|m| *m /= n.max(1) as f64);
    let non_empty: Vec<usize> = (0..k).filter(|&c| sizes[c] > 0).collect();
    // Davies–Bouldin: mean over clusters of the worst (s_i + s_j) / d(c_i, c_j)
    let s: Vec<f64> = (0..k)
        .map(|c| {
            if sizes[c] > 0 {
                spread[c] / sizes[c] as f64
            } else {
                0.0
            }
        })
        .collect();
    let db = if non_empty.len() < 2 {
        0.0
    } else {
        non_empty
            .iter()
            .map(|&i| {
                non_empty
                    .iter()
                    .filter(|&&j| j != i)
                    .map(|&j| {
                        let sep = dist(centroids.row(i), centroids.row(j), metric);
                        if sep == 0.0 {
                            f64::INFINITY
                        } else {
                            (s[i] + s[j]) / sep
                        }
                    })
                    .fold(0.0, f64::max)
            })
            .sum::<f64>()
            / non_empty.len() as f64
    };
    // Calinski–Harabasz: between / within dispersion, scaled by degrees of freedom
    let between: f64 = non_empty
        .iter()
        .map(|&c| {
            let row = centroids.row(c);
            sizes[c] as f64
                * row
                    .iter()
                    .zip(&mean)
                    .map(|(x, m)| (f64::from(*x) - m).powi(2))
                    .sum::<f64>()
        })
        .sum();
    let within: f64 = (0..n)
        .map(|i| f64::from(sq_dist(points.row(i), centroids.row(labels[i] as usize))))
        .sum();
    let kk = non_empty.len() as f64;
    let ch = if kk < 2.0 || within == 0.0 || n as f64 <= kk {
        0.0
    } else {
        (between / (kk - 1.0)) / (within / (n as f64 - kk))
    };
    let mean_size = n as f64 / kk.max(1.0);
    let max_size = sizes.iter().copied().max().unwrap_or(0) as f64;
    let var = non_empty
        .iter()
        .map(|&c| (sizes[c] as f64 - mean_size).powi(2))
        .sum::<f64>()
        / kk.max(1.0);
    let (sil, sil_n) = silhouette(points, &labels, k, metric, seed);
    Quality {
        n,
        non_empty: non_empty.len(),
        inertia,
        inertia_per_point: inertia / n.max(1) as f64,
        silhouette: sil,
        silhouette_points: sil_n,
        davies_bouldin: db,
        calinski_harabasz: ch,
        size_max_over_mean: max_size / mean_size.max(f64::MIN_POSITIVE),
        size_cv: var.sqrt() / mean_size.max(f64::MIN_POSITIVE),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::assign::{Packed, assign};

    // Reference values computed with scikit-learn 1.9.1 on this fixed data:
    //   import numpy as np
    //   from sklearn.metrics import silhouette_score, davies_bouldin_score, calinski_harabasz_score
    //   X = np.array([[0,0],[1,0],[0,1],[10,10],[11,10],[10,11],[20,0],[21,1]], float)
    //   y = [0,0,0,1,1,1,2,2]
    //   silhouette_score(X, y)        -> 0.9140160925616481
    //   davies_bouldin_score(X, y)    -> 0.09498779612447232
    //   calinski_harabasz_score(X, y) -> 463.6931818181817
    #[test]
    fn golden_values() {
        let x = [
            0., 0., 1., 0., 0., 1., 10., 10., 11., 10., 10., 11., 20., 0., 21., 1.,
        ];
        let p = Points::new(&x, 2).unwrap();
        let c = Centroids::new(vec![1. / 3., 1. / 3., 31. / 3., 31. / 3., 20.5, 0.5], 2).unwrap();
        let asg = assign(&p, &Packed::new(&c, Metric::L2));
        let labels: Vec<u32> = asg.iter().map(|a| a.cluster).collect();
        assert_eq!(labels, vec![0, 0, 0, 1, 1, 1, 2, 2]);
        let q = quality(&p, &c, &asg, Metric::L2, 1);
        assert!(
            (q.silhouette - 0.9140160925616481).abs() < 1e-9,
            "{}",
            q.silhouette
        );
        assert!(
            (q.davies_bouldin - 0.09498779612447232).abs() < 1e-7,
            "{}",
            q.davies_bouldin
        );
        assert!(
            (q.calinski_harabasz - 463.6931818181817).abs() < 1e-4,
            "{}",
            q.calinski_harabasz
        );
        assert_eq!(q.non_empty, 3);
    }
}
