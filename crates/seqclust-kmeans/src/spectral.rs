//! Spectral clustering for small n (Ng, Jordan & Weiss 2001): an RBF affinity, the
//! symmetric normalised affinity `D^{-1/2} W D^{-1/2}`, its top-k eigenvectors (nalgebra's
//! symmetric eigensolver), rows normalised to unit length, then k-means on the rows.

use crate::error::{Error, Result};
use crate::kmeans::{KMeansConfig, fit};
use crate::matrix::{Points, sq_dist};

/// Largest n accepted: the dense eigendecomposition is O(n³).
pub const SPECTRAL_MAX_N: usize = 2_000;

/// Cluster labels of spectral clustering. `gamma` is the RBF width (default: 1 / the median
/// squared distance between points).
pub fn spectral(points: &Points<'_>, k: usize, gamma: Option<f64>, seed: u64) -> Result<Vec<u32>> {
    let n = points.n();
    if n > SPECTRAL_MAX_N {
        return Err(Error::config(
            "algorithm",
            format!(
                "spectral clustering is for at most {SPECTRAL_MAX_N} points ({n} given); use k-means, or a sample"
            ),
        ));
    }
    if n < k {
        return Err(Error::TooFewPoints { n, k });
    }
    let mut d2 = vec![0f64; n * n];
    for i in 0..n {
        for j in i + 1..n {
            let v = f64::from(sq_dist(points.row(i), points.row(j)));
            d2[i * n + j] = v;
            d2[j * n + i] = v;
        }
    }
    let gamma = match gamma {
        Some(g) if g > 0.0 && g.is_finite() => g,
        Some(_) => return Err(Error::config("gamma", "must be positive")),
        None => {
            let mut off: Vec<f64> = (0..n)
                .flat_map(|i| (i + 1..n).map(move |j| (i, j)))
                .map(|(i, j)| d2[i * n + j])
                .collect();
            off.sort_by(f64::total_cmp);
            let med = off.get(off.len() / 2).copied().unwrap_or(1.0);
            1.0 / med.max(f64::MIN_POSITIVE)
        }
    };
    let mut w = nalgebra::DMatrix::<f64>::zeros(n, n);
    for i in 0..n {
        for j in 0..n {
            if i != j {
                w[(i, j)] = (-gamma * d2[i * n + j]).exp();
            }
        }
    }
    let deg: Vec<f64> = (0..n)
        .map(|i| w.row(i).sum().max(f64::MIN_POSITIVE).sqrt().recip())
        .collect();
    for i in 0..n {
        for j in 0..n {
            w[(i, j)] *= deg[i] * deg[j];
        }
    }
    let eig = nalgebra::SymmetricEigen::new(w);
    let mut order: Vec<usize> = (0..n).collect();
    order.sort_by(|&a, &b| eig.eigenvalues[b].total_cmp(&eig.eigenvalues[a]));
    let mut emb = vec![0f32; n * k];
    for i in 0..n {
        let row: Vec<f64> = order[..k]
            .iter()
            .map(|&c| eig.eigenvectors[(i, c)])
            .collect();
        let norm = row
            .iter()
            .map(|v| v * v)
            .sum::<f64>()
            .sqrt()
            .max(f64::MIN_POSITIVE);
        for (j, v) in row.iter().enumerate() {
            emb[i * k + j] = (v / norm) as f32;
        }
    }
    let ep = Points::new(&emb, k)?;
    // the best of a few seeds
    let mut best: Option<(f64, Vec<u32>)> = None;
    for s in 0..5 {
        let model = fit(
            &ep,
            &KMeansConfig {
                k,
                seed: seed.wrapping_add(s),
                ..KMeansConfig::default()
            },
        )?;
        let asg = model.predict(&ep);
        let inertia: f64 = asg.iter().map(|a| f64::from(a.distance)).sum();
        if best.as_ref().is_none_or(|b| inertia < b.0) {
            best = Some((inertia, asg.iter().map(|a| a.cluster).collect()));
        }
    }
    Ok(best.map(|b| b.1).unwrap_or_default())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::labels::adjusted_rand_index;

    #[test]
    fn separates_concentric_rings_that_kmeans_cannot() {
        // two rings: k-means cuts them in half, spectral separates them
        let mut x = Vec::new();
        let mut truth = Vec::new();
        for i in 0..120 {
            let t = i as f32 / 120.0 * std::f32::consts::TAU;
            let r = if i % 2 == 0 { 1.0 } else { 4.0 };
            x.extend([r * t.cos(), r * t.sin()]);
            truth.push((i % 2) as u64);
        }
        let p = Points::new(&x, 2).unwrap();
        let labels = spectral(&p, 2, Some(2.0), 1).unwrap();
        let l: Vec<u64> = labels.iter().map(|&v| u64::from(v)).collect();
        assert!(adjusted_rand_index(&truth, &l) > 0.99);
        let km = fit(
            &p,
            &KMeansConfig {
                k: 2,
                ..KMeansConfig::default()
            },
        )
        .unwrap()
        .predict(&p);
        let kl: Vec<u64> = km.iter().map(|a| u64::from(a.cluster)).collect();
        assert!(adjusted_rand_index(&truth, &kl) < 0.5);
        assert!(spectral(&Points::new(&vec![0.0; 2 * 2001], 2).unwrap(), 2, None, 1).is_err());
    }
}
