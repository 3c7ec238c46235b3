//! Choosing k: fit a range of k, and report the elbow of the inertia curve (kneedle), the
//! silhouette, and the stability of the clustering across seeds (mean pairwise ARI).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::kmeans::{KMeansConfig, fit};
use crate::labels::adjusted_rand_index;
use crate::matrix::Points;
use crate::metrics::quality;

/// Measurements at one k.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KRow {
    /// Number of clusters.
    pub k: usize,
    /// Mean distance to the assigned centroid (first seed).
    pub inertia_per_point: f64,
    /// Mean silhouette (first seed; sampled above 20k points).
    pub silhouette: f64,
    /// Davies–Bouldin index (first seed).
    pub davies_bouldin: f64,
    /// Calinski–Harabasz index (first seed).
    pub calinski_harabasz: f64,
    /// Mean pairwise ARI between the seeds' clusterings (1 = the same clusters every time).
    pub stability: f64,
    /// Seconds for this k (all seeds).
    pub seconds: f64,
}

/// The outcome of a k search.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct KChoice {
    /// One row per k, in increasing k.
    pub rows: Vec<KRow>,
    /// The knee of the inertia curve (Satopää et al. 2011), if the curve has one.
    pub elbow: Option<usize>,
    /// The k with the best silhouette.
    pub best_silhouette: usize,
    /// The chosen k: the best silhouette among the k whose stability is at least
    /// `min_stability` (all k if none is).
    pub chosen: usize,
    /// The stability threshold used.
    pub min_stability: f64,
}

/// The knee of a decreasing convex curve `y(x)` by kneedle: the point farthest above the
/// straight line between the normalised ends.
pub fn kneedle(x: &[f64], y: &[f64]) -> Option<usize> {
    if x.len() < 3 {
        return None;
    }
    let (x0, x1) = (x[0], x[x.len() - 1]);
    let (ymin, ymax) = y
        .iter()
        .fold((f64::INFINITY, f64::NEG_INFINITY), |(a, b), &v| {
            (a.min(v), b.max(v))
        });
    if x1 <= x0 || ymax <= ymin {
        return None;
    }
    // decreasing convex → flip to increasing concave, then difference from the diagonal
    let diff: Vec<f64> = x
        .iter()
        .zip(y)
        .map(|(&xi, &yi)| (ymax - yi) / (ymax - ymin) - (xi - x0) / (x1 - x0))
        .collect();
    let (i, &best) = diff
        .iter()
        .enumerate()
        .max_by(|a, b| a.1.total_cmp(b.1).then(b.0.cmp(&a.0)))?;
    (best > 0.0).then_some(i)
}

/// Fits every k in `ks` with `seeds` seeds each and chooses one.
pub fn choose_k(
    points: &Points<'_>,
    ks: &[usize],
    base: &KMeansConfig,
    seeds: usize,
    min_stability: f64,
) -> Result<KChoice> {
    if ks.is_empty() {
        return Err(Error::config("ks", "no values of k to try"));
    }
    if seeds == 0 {
        return Err(Error::config("seeds", "must be at least 1"));
    }
    let mut ks = ks.to_vec();
    ks.sort_unstable();
    ks.dedup();
    let mut rows = Vec::new();
    for &k in &ks {
        let t = std::time::Instant::now();
        let mut labelings: Vec<Vec<u64>> = Vec::new();
        let mut first = None;
        for s in 0..seeds {
            let cfg = KMeansConfig {
                k,
                seed: base.seed.wrapping_add(s as u64 * 7919),
                ..base.clone()
            };
            let model = fit(points, &cfg)?;
            let asg = model.predict(points);
            labelings.push(asg.iter().map(|a| u64::from(a.cluster)).collect());
            if first.is_none() {
                first = Some(quality(
                    points,
                    &model.centroids,
                    &asg,
                    model.metric,
                    base.seed,
                ));
            }
        }
        let mut pairs = 0;
        let mut ari = 0.0;
        for i in 0..labelings.len() {
            for j in i + 1..labelings.len() {
                ari += adjusted_rand_index(&labelings[i], &labelings[j]);
                pairs += 1;
            }
        }
        let q = first.ok_or_else(|| Error::config("seeds", "must be at least 1"))?;
        rows.push(KRow {
            k,
            inertia_per_point: q.inertia_per_point,
            silhouette: q.silhouette,
            davies_bouldin: q.davies_bouldin,
            calinski_harabasz: q.calinski_harabasz,
            stability: if pairs == 0 { 1.0 } else { ari / pairs as f64 },
            seconds: t.elapsed().as_secs_f64(),
        });
    }
    let xs: Vec<f64> = rows.iter().map(|r| r.k as f64).collect();
    let ys: Vec<f64> = rows.iter().map(|r| r.inertia_per_point).collect();
    let elbow = kneedle(&xs, &ys).map(|i| rows[i].k);
    let best_by = |rs: &mut dyn Iterator<Item = &KRow>| {
        rs.max_by(|a, b| a.silhouette.total_cmp(&b.silhouette).then(b.k.cmp(&a.k)))
            .map(|r| r.k)
    };
    let best_silhouette = best_by(&mut rows.iter()).unwrap_or(ks[0]);
    let chosen = best_by(&mut rows.iter().filter(|r| r.stability >= min_stability))
        .unwrap_or(best_silhouette);
    Ok(KChoice {
        rows,
        elbow,
        best_silhouette,
        chosen,
        min_stability,
    })
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::init::Init;

    #[test]
    fn kneedle_finds_the_bend() {
        let x: Vec<f64> = (1..=10).map(f64::from).collect();
        let y = [100.0, 50.0, 20.0, 15.0, 13.0, 12.0, 11.5, 11.0, 10.8, 10.6];
        assert_eq!(kneedle(&x, &y), Some(2));
        assert_eq!(kneedle(&x[..2], &y[..2]), None);
    }

    #[test]
    fn picks_the_planted_k() {
        // five well separated blobs on a line
        let mut x = Vec::new();
        for c in 0..5 {
            for i in 0..60 {
                x.push(c as f32 * 10.0 + (i % 7) as f32 * 0.1);
                x.push((i % 5) as f32 * 0.1);
            }
        }
        let p = Points::new(&x, 2).unwrap();
        let base = KMeansConfig {
            init: Init::default(),
            ..KMeansConfig::default()
        };
        let c = choose_k(&p, &[2, 3, 4, 5, 6, 7, 8], &base, 3, 0.8).unwrap();
        assert_eq!(c.chosen, 5, "{c:?}");
        assert_eq!(c.best_silhouette, 5);
        assert!(c.rows.iter().find(|r| r.k == 5).unwrap().stability > 0.99);
    }
}
