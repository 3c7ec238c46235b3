//! PCA whitening of user vectors for clustering.
//!
//! A sequence encoder spreads its user vectors' variance unevenly: a few directions (which
//! items a user saw) hold most of it, and a behaviour the model has learnt perfectly well can
//! sit in a direction of little variance, where k-means does not look. Whitening — centring
//! the unit vectors and rotating and scaling them so that every principal direction has unit
//! variance (the transform of BERT-whitening, Su et al. 2021, and of FAISS's `PCAMatrix` with
//! `eigen_power = -0.5`) — gives every learnt direction the same say. The model keeps its raw
//! vectors for scoring items; [`crate::SeqModel::cluster_vectors`] applies the whitening for
//! everything that clusters or assigns users.

use serde::{Deserialize, Serialize};

/// `w = (x / |x| − mean) · matrix`.
#[derive(Debug, Clone, PartialEq, Default, Serialize, Deserialize)]
pub struct Whitening {
    /// Mean of the unit vectors (`dim`).
    pub mean: Vec<f32>,
    /// `dim × dim` row-major: the covariance's eigenvectors (columns) scaled by the inverse
    /// square roots of their eigenvalues.
    pub matrix: Vec<f32>,
}

/// First and second moments of unit vectors, summed (mergeable across ranks: add them).
#[derive(Debug, Clone, PartialEq)]
pub struct Moments {
    /// Vectors.
    pub n: f64,
    /// Sum of the vectors (`dim`).
    pub sum: Vec<f64>,
    /// Sum of their outer products (`dim × dim`).
    pub outer: Vec<f64>,
}

impl Moments {
    /// The moments of the unit rows of `x` (`n × d`; rows are normalised here).
    pub fn of(x: &[f32], d: usize) -> Moments {
        let mut m = Moments {
            n: 0.0,
            sum: vec![0.0; d],
            outer: vec![0.0; d * d],
        };
        let mut u = vec![0f64; d];
        for row in x.chunks_exact(d) {
            let norm = row
                .iter()
                .map(|v| f64::from(*v).powi(2))
                .sum::<f64>()
                .sqrt();
            if norm == 0.0 {
                continue;
            }
            u.iter_mut()
                .zip(row)
                .for_each(|(a, b)| *a = f64::from(*b) / norm);
            m.n += 1.0;
            for ((s, &ui), o) in m.sum.iter_mut().zip(&u).zip(m.outer.chunks_exact_mut(d)) {
                *s += ui;
                o.iter_mut().zip(&u).for_each(|(a, b)| *a += ui * b);
            }
        }
        m
    }

    /// As a flat vector `[n, sum…, outer…]` (for an all-gather).
    pub fn to_flat(&self) -> Vec<f64> {
        let mut v = Vec::with_capacity(1 + self.sum.len() + self.outer.len());
        v.push(self.n);
        v.extend_from_slice(&self.sum);
        v.extend_from_slice(&self.outer);
        v
    }

    /// From [`Self::to_flat`]; `None` if the length does not fit `d`.
    pub fn from_flat(v: &[f64], d: usize) -> Option<Moments> {
        (v.len() == 1 + d + d * d).then(|| Moments {
            n: v[0],
            sum: v[1..1 + d].to_vec(),
            outer: v[1 + d..].to_vec(),
        })
    }

    /// The whitening these moments describe; eigenvalues are floored at 1e-6 of the largest
    /// so that a direction without variance is not blown up. `None` without vectors.
    pub fn whitening(&self) -> Option<Whitening> {
        let d = self.sum.len();
        if self.n < 1.0 || d == 0 {
            return None;
        }
        let mean: Vec<f64> = self.sum.iter().map(|s| s / self.n).collect();
        let cov = nalgebra::DMatrix::from_fn(d, d, |i, j| {
            self.outer[i * d + j] / self.n - mean[i] * mean[j]
        });
        let eig = nalgebra::SymmetricEigen::new(cov);
        let top = eig.eigenvalues.iter().copied().fold(0.0f64, f64::max);
        let floor = (top * 1e-6).max(f64::MIN_POSITIVE);
        let mut matrix = vec![0f32; d * d];
        for c in 0..d {
            let s = 1.0 / eig.eigenvalues[c].max(floor).sqrt();
            for r in 0..d {
                matrix[r * d + c] = (eig.eigenvectors[(r, c)] * s) as f32;
            }
        }
        Some(Whitening {
            mean: mean.iter().map(|&m| m as f32).collect(),
            matrix,
        })
    }
}

impl Whitening {
    /// Dimension.
    pub fn dim(&self) -> usize {
        self.mean.len()
    }

    /// The whitened vector of one vector `x` (normalised to unit length first).
    pub fn apply(&self, x: &[f32], out: &mut [f32]) {
        let d = self.dim();
        let norm = x.iter().map(|v| v * v).sum::<f32>().sqrt();
        let inv = if norm > 0.0 { 1.0 / norm } else { 0.0 };
        out.iter_mut().for_each(|v| *v = 0.0);
        for ((xv, mv), row) in x.iter().zip(&self.mean).zip(self.matrix.chunks_exact(d)) {
            let xi = xv * inv - mv;
            out.iter_mut().zip(row).for_each(|(o, m)| *o += xi * m);
        }
    }

    /// [`Self::apply`] to every row of `x` (`n × dim`).
    pub fn apply_rows(&self, x: &[f32]) -> Vec<f32> {
        use rayon::prelude::*;
        let d = self.dim();
        let mut out = vec![0f32; x.len()];
        out.par_chunks_mut(d)
            .zip(x.par_chunks(d))
            .for_each(|(o, r)| self.apply(r, o));
        out
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn whitened_vectors_have_unit_covariance() {
        // unit vectors spread mostly along axis 0, a little along 1 and 2
        let mut x = Vec::new();
        let mut s = 1u64;
        let mut r = || {
            s = s
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((s >> 33) as f32 / (1u64 << 31) as f32) - 0.5
        };
        for _ in 0..4000 {
            x.extend([1.0 + r(), 0.3 * r(), 0.05 * r()]);
        }
        let m = Moments::of(&x, 3);
        let flat = m.to_flat();
        assert_eq!(Moments::from_flat(&flat, 3).unwrap(), m);
        assert!(Moments::from_flat(&flat, 4).is_none());
        let w = m.whitening().unwrap();
        let y = w.apply_rows(&x);
        let back = Moments::of(&y, 3);
        // centred with identity covariance (the moments of `of` are of unit rows, so check
        // the raw covariance of y directly)
        let n = 4000.0;
        for i in 0..3 {
            let mean: f64 = y.chunks(3).map(|r| f64::from(r[i])).sum::<f64>() / n;
            assert!(mean.abs() < 1e-4, "mean {i}: {mean}");
            for j in 0..3 {
                let c: f64 = y
                    .chunks(3)
                    .map(|r| f64::from(r[i]) * f64::from(r[j]))
                    .sum::<f64>()
                    / n;
                let want = if i == j { 1.0 } else { 0.0 };
                assert!((c - want).abs() < 1e-3, "cov {i}{j}: {c}");
            }
        }
        assert_eq!(back.n, n);
        assert!(Moments::of(&[], 3).whitening().is_none());
    }
}
