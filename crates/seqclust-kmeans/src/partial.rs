//! Partial statistics: per-cluster f64 sums, counts and inertia of some points. This is the
//! unit distributed k-means exchanges: workers compute partials on their shards, the
//! coordinator merges them and derives the new centroids.

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::assign::{Assignment, CHUNK, Metric, Packed, Raw, add_rows, finish, raw_rows};
use crate::error::{Error, Result};
use crate::matrix::{Centroids, Points, dot};

/// Sums, counts and inertia per cluster.
///
/// [`PartialStats::merge`] is commutative exactly and associative up to f64 rounding (a
/// relative 1e-12 or so), and counts merge exactly; merging in a fixed order (by shard or
/// rank) gives bit-identical results.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PartialStats {
    /// Clusters.
    pub k: usize,
    /// Dimension.
    pub d: usize,
    /// Row-major `k × d` sums of the points (unit vectors for cosine).
    pub sums: Vec<f64>,
    /// Points per cluster.
    pub counts: Vec<u64>,
    /// Sum of distances per cluster.
    pub inertia: Vec<f64>,
}

impl PartialStats {
    /// Empty statistics.
    pub fn new(k: usize, d: usize) -> Self {
        PartialStats {
            k,
            d,
            sums: vec![0.0; k * d],
            counts: vec![0; k],
            inertia: vec![0.0; k],
        }
    }

    /// Adds one point with its assignment.
    pub fn add(&mut self, x: &[f32], a: &Assignment, metric: Metric) {
        let c = a.cluster as usize;
        let scale = match metric {
            Metric::L2 => 1.0,
            Metric::Cosine => 1.0 / f64::from(dot(x, x)).sqrt().max(f64::MIN_POSITIVE),
        };
        add_row(&mut self.sums[c * self.d..(c + 1) * self.d], x, scale);
        self.counts[c] += 1;
        self.inertia[c] += f64::from(a.distance);
    }

    /// Adds another partial's statistics. Fails if the shapes differ.
    pub fn merge(&mut self, other: &PartialStats) -> Result<()> {
        if (self.k, self.d) != (other.k, other.d)
            || other.sums.len() != other.k * other.d
            || other.counts.len() != other.k
            || other.inertia.len() != other.k
        {
            return Err(Error::Mismatch(format!(
                "cannot merge partial statistics of k={} d={} into k={} d={}",
                other.k, other.d, self.k, self.d
            )));
        }
        self.sums
            .iter_mut()
            .zip(&other.sums)
            .for_each(|(a, b)| *a += b);
        self.counts
            .iter_mut()
            .zip(&other.counts)
            .for_each(|(a, b)| *a += b);
        self.inertia
            .iter_mut()
            .zip(&other.inertia)
            .for_each(|(a, b)| *a += b);
        Ok(())
    }

    /// Checks that the statistics are internally consistent (shapes, finite values); for
    /// partials that arrive from elsewhere.
    pub fn validate(&self) -> Result<()> {
        if self.sums.len() != self.k * self.d
            || self.counts.len() != self.k
            || self.inertia.len() != self.k
        {
            return Err(Error::Mismatch(format!(
                "partial statistics of k={} d={} have the wrong lengths",
                self.k, self.d
            )));
        }
        if self
            .sums
            .iter()
            .chain(&self.inertia)
            .any(|v| !v.is_finite())
            || self.inertia.iter().any(|v| *v < 0.0)
        {
            return Err(Error::Mismatch(
                "partial statistics hold non-finite or negative values".into(),
            ));
        }
        Ok(())
    }

    /// Total inertia.
    pub fn total_inertia(&self) -> f64 {
        self.inertia.iter().sum()
    }

    /// Total points.
    pub fn points(&self) -> u64 {
        self.counts.iter().sum()
    }

    /// The mean of each cluster; empty clusters keep their `previous` centroid. For cosine the
    /// means are normalised (spherical k-means).
    pub fn means(&self, previous: &Centroids, metric: Metric) -> Centroids {
        let mut out = previous.clone();
        for c in 0..self.k {
            if self.counts[c] > 0 {
                let n = self.counts[c] as f64;
                let row = out.row_mut(c);
                for (j, v) in row.iter_mut().enumerate() {
                    *v = (self.sums[c * self.d + j] / n) as f32;
                }
            }
        }
        if metric == Metric::Cosine {
            out.normalize_rows();
        }
        out
    }

    /// The mini-batch update (Sculley 2010) with per-centre learning rates: each centre moves
    /// to the mean of every point it has been assigned so far, `weight[c]` being how many
    /// (updated here). Clusters without points in this batch stay put.
    pub fn apply_minibatch(&self, centroids: &mut Centroids, weight: &mut [f64], metric: Metric) {
        let d = self.d;
        for (c, w) in weight.iter_mut().enumerate().take(self.k) {
            let m = self.counts[c] as f64;
            if m == 0.0 {
                continue;
            }
            let total = *w + m;
            let sums = &self.sums[c * d..(c + 1) * d];
            for (v, s) in centroids.row_mut(c).iter_mut().zip(sums) {
                *v = ((f64::from(*v) * *w + s) / total) as f32;
            }
            *w = total;
        }
        if metric == Metric::Cosine {
            centroids.normalize_rows();
        }
    }

    /// The wire form: `k`, `d` (u64 LE), then sums (f64), counts (u64), inertia (f64), all
    /// little-endian.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + 8 * (self.sums.len() + 2 * self.k));
        out.extend_from_slice(&(self.k as u64).to_le_bytes());
        out.extend_from_slice(&(self.d as u64).to_le_bytes());
        self.sums
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        self.counts
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        self.inertia
            .iter()
            .for_each(|v| out.extend_from_slice(&v.to_le_bytes()));
        out
    }

    /// Decodes [`Self::to_bytes`] and [`Self::validate`]s the result; a payload of the wrong
    /// size or with non-finite values is an error, never a panic.
    pub fn from_bytes(b: &[u8]) -> Result<PartialStats> {
        let word = |i: usize| -> [u8; 8] {
            let mut w = [0u8; 8];
            w.copy_from_slice(&b[i * 8..i * 8 + 8]);
            w
        };
        if b.len() < 16 || !b.len().is_multiple_of(8) {
            return Err(Error::Mismatch(format!(
                "partial statistics payload of {} bytes",
                b.len()
            )));
        }
        let k = u64::from_le_bytes(word(0));
        let d = u64::from_le_bytes(word(1));
        let expected = k
            .checked_mul(d)
            .and_then(|kd| kd.checked_add(2 * k))
            .and_then(|w| w.checked_add(2))
            .and_then(|w| w.checked_mul(8));
        if expected != Some(b.len() as u64) {
            return Err(Error::Mismatch(format!(
                "partial statistics of k={k} d={d} cannot be {} bytes",
                b.len()
            )));
        }
        let (k, d) = (k as usize, d as usize);
        let mut at = 2;
        let mut take = |n: usize| {
            let r = at..at + n;
            at += n;
            r
        };
        let sums = take(k * d).map(|i| f64::from_le_bytes(word(i))).collect();
        let counts = take(k).map(|i| u64::from_le_bytes(word(i))).collect();
        let inertia = take(k).map(|i| f64::from_le_bytes(word(i))).collect();
        let p = PartialStats {
            k,
            d,
            sums,
            counts,
            inertia,
        };
        p.validate()?;
        Ok(p)
    }
}

#[inline]
fn add_row(dst: &mut [f64], x: &[f32], scale: f64) {
    if scale == 1.0 {
        dst.iter_mut().zip(x).for_each(|(s, v)| *s += f64::from(*v));
    } else {
        dst.iter_mut()
            .zip(x)
            .for_each(|(s, v)| *s += f64::from(*v) * scale);
    }
}

/// Lanes of partial statistics in [`accumulate`]: fixed by the data size (not the thread
/// count) so that results are identical whatever the parallelism, and bounded in memory.
fn lanes(n: usize, k: usize, d: usize) -> usize {
    let chunks = n.div_ceil(CHUNK).max(1);
    let by_memory = ((64usize << 20) / (k * d * 8 + 1)).max(1);
    chunks.min(16).min(by_memory)
}

/// A chunk index with, optionally, where its assignments go.
type LaneChunk<'a> = (usize, Option<&'a mut [Assignment]>);

/// One pass over the points: assigns each to its nearest centroid and accumulates the partial
/// statistics; optionally stores the assignments. Deterministic for any thread count.
pub fn accumulate(
    points: &Points<'_>,
    packed: &Packed,
    out: Option<&mut [Assignment]>,
) -> PartialStats {
    let (n, d, k) = (points.n(), points.d(), packed.k());
    let nl = lanes(n, k, d);
    let nchunks = n.div_ceil(CHUNK);
    // lane l takes chunks l, l + nl, …, in order; lanes are merged in order
    let mut work: Vec<Vec<LaneChunk<'_>>> = (0..nl).map(|_| Vec::new()).collect();
    match out {
        Some(o) => {
            for (ci, ch) in o.chunks_mut(CHUNK).enumerate() {
                work[ci % nl].push((ci, Some(ch)));
            }
        }
        None => {
            for ci in 0..nchunks {
                work[ci % nl].push((ci, None));
            }
        }
    }
    let metric = packed.metric;
    let parts: Vec<PartialStats> = work
        .into_par_iter()
        .map(|chunks| {
            let mut part = PartialStats::new(k, d);
            let mut raw = vec![Raw::ZERO; CHUNK];
            let mut labels = vec![0u32; CHUNK];
            let mut scale = vec![1f64; CHUNK];
            for (ci, mut dst) in chunks {
                let a = ci * CHUNK;
                let b = (a + CHUNK).min(n);
                let raw = &mut raw[..b - a];
                raw_rows(packed, points.rows(a, b), raw);
                for (i, r) in raw.iter().enumerate() {
                    let asg = finish(packed, *r);
                    let c = asg.cluster as usize;
                    labels[i] = asg.cluster;
                    part.counts[c] += 1;
                    part.inertia[c] += f64::from(asg.distance);
                    if metric == Metric::Cosine {
                        scale[i] = 1.0 / f64::from(r.xx).sqrt().max(f64::MIN_POSITIVE);
                    }
                    if let Some(dst) = dst.as_deref_mut() {
                        dst[i] = asg;
                    }
                }
                let sc = (metric == Metric::Cosine).then(|| &scale[..b - a]);
                add_rows(
                    packed.isa(),
                    points.rows(a, b),
                    d,
                    &labels[..b - a],
                    sc,
                    &mut part.sums,
                );
            }
            part
        })
        .collect();
    let mut total = PartialStats::new(k, d);
    for p in &parts {
        // shapes are equal by construction
        let _ = total.merge(p);
    }
    total
}

#[cfg(test)]
mod tests {
    use proptest::prelude::*;

    use super::*;

    fn stats(seed: u64, k: usize, d: usize) -> PartialStats {
        let mut s = PartialStats::new(k, d);
        let mut x = seed
            .wrapping_mul(6364136223846793005)
            .wrapping_add(1442695040888963407);
        let mut next = || {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 33) as f64 / (1u64 << 31) as f64) * 20.0 - 10.0
        };
        for v in &mut s.sums {
            *v = next();
        }
        for (c, i) in s.counts.iter_mut().zip(s.inertia.iter_mut()) {
            *c = (next().abs() * 100.0) as u64;
            *i = next().abs();
        }
        s
    }

    #[test]
    fn the_wire_form_round_trips_and_bad_payloads_are_refused() {
        let s = stats(7, 5, 3);
        let b = s.to_bytes();
        assert_eq!(PartialStats::from_bytes(&b).unwrap(), s);
        assert!(PartialStats::from_bytes(&b[..b.len() - 8]).is_err());
        assert!(PartialStats::from_bytes(&b[..7]).is_err());
        let mut huge = b.clone();
        huge[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(PartialStats::from_bytes(&huge).is_err());
        let mut nan = b.clone();
        nan[16..24].copy_from_slice(&f64::NAN.to_le_bytes());
        assert!(PartialStats::from_bytes(&nan).is_err());
    }

    fn close(a: &PartialStats, b: &PartialStats) -> bool {
        a.counts == b.counts
            && a.sums
                .iter()
                .zip(&b.sums)
                .all(|(x, y)| (x - y).abs() <= 1e-12 * (1.0 + x.abs()))
            && a.inertia
                .iter()
                .zip(&b.inertia)
                .all(|(x, y)| (x - y).abs() <= 1e-12 * (1.0 + x.abs()))
    }

    proptest! {
        #[test]
        fn merge_is_commutative_and_associative(s1 in any::<u64>(), s2 in any::<u64>(), s3 in any::<u64>(), k in 1usize..6, d in 1usize..5) {
            let (a, b, c) = (stats(s1, k, d), stats(s2, k, d), stats(s3, k, d));
            let mut ab = a.clone(); ab.merge(&b).unwrap();
            let mut ba = b.clone(); ba.merge(&a).unwrap();
            prop_assert_eq!(&ab, &ba);
            let mut ab_c = ab.clone(); ab_c.merge(&c).unwrap();
            let mut bc = b.clone(); bc.merge(&c).unwrap();
            let mut a_bc = a.clone(); a_bc.merge(&bc).unwrap();
            prop_assert!(close(&ab_c, &a_bc));
            // the empty partial is the identity
            let mut e = PartialStats::new(k, d); e.merge(&a).unwrap();
            prop_assert_eq!(&e, &a);
        }

        /// What the coordinator's upload handler decodes: arbitrary bytes, or a valid
        /// encoding with one byte changed or cut short, never panic, and whatever decodes
        /// encodes back to the same bytes.
        #[test]
        fn from_bytes_of_arbitrary_or_damaged_payloads_never_panics(
            seed in any::<u64>(), k in 1usize..5, d in 1usize..4,
            at in any::<usize>(), byte in any::<u8>(), cut in any::<bool>(),
            noise in proptest::collection::vec(any::<u8>(), 0..200),
        ) {
            if let Ok(p) = PartialStats::from_bytes(&noise) {
                prop_assert_eq!(p.to_bytes(), noise);
            }
            let mut b = stats(seed, k, d).to_bytes();
            let i = at % b.len();
            if cut { b.truncate(i); } else { b[i] = byte; }
            if let Ok(p) = PartialStats::from_bytes(&b) {
                prop_assert_eq!(p.to_bytes(), b);
            }
        }
    }

    #[test]
    fn merge_rejects_other_shapes_and_serialises() {
        let mut a = PartialStats::new(2, 3);
        assert!(a.merge(&PartialStats::new(3, 3)).is_err());
        let mut bad = PartialStats::new(2, 3);
        bad.sums.pop();
        assert!(a.merge(&bad).is_err());
        assert!(bad.validate().is_err());
        let s = stats(5, 2, 3);
        let back: PartialStats = serde_json::from_str(&serde_json::to_string(&s).unwrap()).unwrap();
        assert_eq!(back, s);
    }
}
