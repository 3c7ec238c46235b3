//! The assignment kernel: for each point, the nearest and the runner-up centroid.
//!
//! Distances use ‖x‖² − 2x·c + ‖c‖². Centroids are packed once per iteration into panels of
//! `V × W` lanes (`W` = 16 with AVX-512, 8 with AVX2) laid out `[dim][lane]`, so that for a
//! group of points the `P × V` dot-product accumulators stay in registers over the whole
//! dimension loop, one broadcast of each point coordinate feeding `V` fused multiply-adds.
//! A lane-wise running top-2 (distance and index) is updated after each panel, and the 16
//! (or 8) lanes are reduced once per point at the end: no `n × k` distance matrix is ever
//! written. The instruction set is chosen at run time (`is_x86_feature_detected!`), so one
//! binary runs everywhere and uses AVX-512 where it exists.
//!
//! Ties go to the lower centroid index, in every path, so results do not depend on the thread
//! count.

mod portable;
#[cfg(target_arch = "x86_64")]
mod x86_avx2;
#[cfg(target_arch = "x86_64")]
mod x86_avx512;

use rayon::prelude::*;
use serde::{Deserialize, Serialize};

use crate::matrix::{Centroids, Points, dot};

/// Adds each row, as f64, to the sums of its cluster (`labels[i]`), scaled by `scale[i]` when
/// given (cosine: 1/‖x‖). Vectorised for the instruction set.
pub(crate) fn add_rows(
    isa: Isa,
    rows: &[f32],
    d: usize,
    labels: &[u32],
    scale: Option<&[f64]>,
    sums: &mut [f64],
) {
    match isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512 is only chosen after detecting avx512f.
        Isa::Avx512 => unsafe { x86_avx512::add_rows(rows, d, labels, scale, sums) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2 is only chosen after detecting avx2 and fma.
        Isa::Avx2 => unsafe { x86_avx2::add_rows(rows, d, labels, scale, sums) },
        _ => portable::add_rows(rows, d, labels, scale, sums),
    }
}

/// The distance k-means minimises.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Metric {
    /// Squared Euclidean distance.
    #[default]
    L2,
    /// Cosine distance `1 − cos(x, c)` (spherical k-means: centroids are unit vectors).
    Cosine,
}

/// A point's nearest and runner-up centroid.
#[derive(Debug, Clone, Copy, PartialEq, Default, Serialize, Deserialize)]
pub struct Assignment {
    /// Nearest centroid.
    pub cluster: u32,
    /// Its distance (squared Euclidean, or cosine distance).
    pub distance: f32,
    /// Second-nearest centroid (`u32::MAX` when k = 1).
    pub runner_up: u32,
    /// Its distance (`+inf` when k = 1).
    pub runner_up_distance: f32,
}

impl Assignment {
    /// How much closer the nearest centroid is than the runner-up.
    pub fn margin(&self) -> f32 {
        self.runner_up_distance - self.distance
    }
}

/// The instruction set a kernel runs with.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Isa {
    /// AVX-512F, 16 lanes.
    Avx512,
    /// AVX2 with FMA, 8 lanes.
    Avx2,
    /// Plain Rust (whatever the compiler vectorises).
    Portable,
}

impl Isa {
    /// The best instruction set of this CPU (`SEQCLUST_ISA=avx2|portable` forces a lesser one).
    pub fn detect() -> Isa {
        let forced = std::env::var("SEQCLUST_ISA").ok();
        #[cfg(target_arch = "x86_64")]
        {
            let want = |name: &str| forced.as_deref().is_none_or(|f| f == name);
            if want("avx512") && std::arch::is_x86_feature_detected!("avx512f") {
                return Isa::Avx512;
            }
            if (want("avx2") || forced.as_deref() == Some("avx512"))
                && std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                return Isa::Avx2;
            }
        }
        let _ = forced;
        Isa::Portable
    }

    /// Lanes per vector.
    fn lanes(self) -> usize {
        match self {
            Isa::Avx512 => 16,
            Isa::Avx2 => 8,
            Isa::Portable => 1,
        }
    }

    /// Most vectors per panel (bounded by the register file).
    fn max_vectors(self) -> usize {
        match self {
            Isa::Avx512 => 4,
            Isa::Avx2 => 3,
            Isa::Portable => 1,
        }
    }
}

/// One panel of packed centroids.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Panel {
    /// First centroid index.
    pub start: usize,
    /// Vectors in the panel.
    pub v: usize,
    /// Offset of the panel's `[dim][v × lanes]` block in `Packed::data`.
    pub data: usize,
    /// Offset of its `v × lanes` norms in `Packed::norms`.
    pub norms: usize,
}

/// Centroids packed for the kernel of one instruction set.
#[derive(Debug, Clone)]
pub struct Packed {
    pub(crate) isa: Isa,
    pub(crate) k: usize,
    pub(crate) d: usize,
    pub(crate) metric: Metric,
    pub(crate) panels: Vec<Panel>,
    pub(crate) data: Vec<f32>,
    /// ‖c‖² per lane (0 for cosine), +inf in padding lanes.
    pub(crate) norms: Vec<f32>,
    /// Row-major centroids, for the portable path.
    pub(crate) rows: Vec<f32>,
}

impl Packed {
    /// Packs centroids for the detected instruction set.
    pub fn new(c: &Centroids, metric: Metric) -> Packed {
        Packed::with_isa(c, metric, Isa::detect())
    }

    /// Packs centroids for a given instruction set. For cosine the centroids are normalised.
    pub fn with_isa(c: &Centroids, metric: Metric, isa: Isa) -> Packed {
        let mut c = c.clone();
        if metric == Metric::Cosine {
            c.normalize_rows();
        }
        let (k, d) = (c.k(), c.d());
        let w = isa.lanes();
        let norm_of = |i: usize| match metric {
            Metric::L2 => dot(c.row(i), c.row(i)),
            Metric::Cosine => 0.0,
        };
        let mut panels = Vec::new();
        let mut data = Vec::new();
        let mut norms = Vec::new();
        if isa != Isa::Portable {
            let full = isa.max_vectors() * w;
            let mut start = 0;
            while start < k {
                let v = ((k - start).min(full)).div_ceil(w);
                let width = v * w;
                let panel = Panel {
                    start,
                    v,
                    data: data.len(),
                    norms: norms.len(),
                };
                for j in 0..d {
                    for l in 0..width {
                        data.push(if start + l < k {
                            c.row(start + l)[j]
                        } else {
                            0.0
                        });
                    }
                }
                for l in 0..width {
                    norms.push(if start + l < k {
                        norm_of(start + l)
                    } else {
                        f32::INFINITY
                    });
                }
                panels.push(panel);
                start += width;
            }
        } else {
            norms = (0..k).map(norm_of).collect();
        }
        Packed {
            isa,
            k,
            d,
            metric,
            panels,
            data,
            norms,
            rows: c.into_vec(),
        }
    }

    /// Number of centroids.
    pub fn k(&self) -> usize {
        self.k
    }

    /// The instruction set in use.
    pub fn isa(&self) -> Isa {
        self.isa
    }

    /// Centroid `c` as packed (normalised for cosine).
    pub fn centroid(&self, c: usize) -> &[f32] {
        &self.rows[c * self.d..(c + 1) * self.d]
    }
}

/// The raw kernel result for one point: best and second-best of ‖c‖² − 2x·c (L2) or −2x·ĉ
/// (cosine), with their indices.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Raw {
    pub b1: f32,
    pub i1: u32,
    pub b2: f32,
    pub i2: u32,
    /// ‖x‖², computed by the kernel while the row is in registers.
    pub xx: f32,
}

impl Raw {
    pub(crate) const ZERO: Raw = Raw {
        b1: 0.0,
        i1: 0,
        b2: 0.0,
        i2: 0,
        xx: 0.0,
    };
}

/// Nearest and runner-up raw scores for each row of `rows` (`out.len()` rows of dimension `d`).
pub(crate) fn raw_rows(packed: &Packed, rows: &[f32], out: &mut [Raw]) {
    debug_assert_eq!(rows.len(), out.len() * packed.d);
    match packed.isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512 is only chosen after `is_x86_feature_detected!("avx512f")`.
        Isa::Avx512 => unsafe { x86_avx512::raw_rows(packed, rows, out) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2 is only chosen after detecting avx2 and fma.
        Isa::Avx2 => unsafe { x86_avx2::raw_rows(packed, rows, out) },
        _ => portable::raw_rows(packed, rows, out),
    }
}

/// Every raw score of each row against every centroid, into `out` (`rows × k`), and ‖x‖²
/// into `xx`: ‖c‖² − 2x·c for L2 (add ‖x‖² for the squared distance), −2x·ĉ for cosine.
pub(crate) fn scores_rows(packed: &Packed, rows: &[f32], out: &mut [f32], xx: &mut [f32]) {
    assert_eq!(rows.len(), xx.len() * packed.d);
    assert_eq!(out.len(), xx.len() * packed.k);
    match packed.isa {
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx512 is only chosen after detecting avx512f; sizes checked above.
        Isa::Avx512 => unsafe { x86_avx512::scores_rows(packed, rows, out, xx) },
        #[cfg(target_arch = "x86_64")]
        // SAFETY: Avx2 is only chosen after detecting avx2 and fma; sizes checked above.
        Isa::Avx2 => unsafe { x86_avx2::scores_rows(packed, rows, out, xx) },
        _ => portable::scores_rows(packed, rows, out, xx),
    }
}

/// Distances from each row to every centroid (squared Euclidean for L2, `1 − cos` for
/// cosine), into `out` (`rows × k`), with the same kernel as the assignment.
pub fn distances_into(packed: &Packed, rows: &[f32], out: &mut [f32]) {
    let m = rows.len() / packed.d;
    let mut xx = vec![0f32; m];
    scores_rows(packed, rows, out, &mut xx);
    for (i, row) in out.chunks_exact_mut(packed.k.max(1)).enumerate() {
        match packed.metric {
            Metric::L2 => row.iter_mut().for_each(|s| *s = (*s + xx[i]).max(0.0)),
            Metric::Cosine => {
                let norm = xx[i].sqrt().max(f32::MIN_POSITIVE);
                row.iter_mut()
                    .for_each(|s| *s = (1.0 + *s / (2.0 * norm)).max(0.0));
            }
        }
    }
}

/// Turns a raw result into distances.
pub(crate) fn finish(packed: &Packed, r: Raw) -> Assignment {
    let (distance, runner_up_distance) = match packed.metric {
        Metric::L2 => ((r.xx + r.b1).max(0.0), (r.xx + r.b2).max(0.0)),
        Metric::Cosine => {
            let norm = r.xx.sqrt().max(f32::MIN_POSITIVE);
            (
                (1.0 + r.b1 / (2.0 * norm)).max(0.0),
                (1.0 + r.b2 / (2.0 * norm)).max(0.0),
            )
        }
    };
    if packed.k < 2 {
        return Assignment {
            cluster: r.i1,
            distance,
            runner_up: u32::MAX,
            runner_up_distance: f32::INFINITY,
        };
    }
    Assignment {
        cluster: r.i1,
        distance,
        runner_up: r.i2,
        runner_up_distance,
    }
}

/// Rows per parallel work item.
pub(crate) const CHUNK: usize = 1024;

/// Nearest and runner-up centroid of every point, in parallel.
pub fn assign(points: &Points<'_>, packed: &Packed) -> Vec<Assignment> {
    let mut out = vec![Assignment::default(); points.n()];
    assign_into(points, packed, &mut out);
    out
}

/// [`assign`] into a caller's buffer (`out.len() == points.n()`).
pub fn assign_into(points: &Points<'_>, packed: &Packed, out: &mut [Assignment]) {
    assert_eq!(points.d(), packed.d, "point and centroid dimensions differ");
    assert_eq!(out.len(), points.n());
    out.par_chunks_mut(CHUNK)
        .enumerate()
        .for_each(|(ci, chunk)| {
            let a = ci * CHUNK;
            let mut raw = vec![Raw::ZERO; chunk.len()];
            raw_rows(packed, points.rows(a, a + chunk.len()), &mut raw);
            for (o, r) in chunk.iter_mut().zip(raw) {
                *o = finish(packed, r);
            }
        });
}

#[cfg(test)]
mod tests {
    use rand::rngs::ChaCha8Rng;
    use rand::{RngExt, SeedableRng};

    use super::*;
    use crate::matrix::sq_dist;

    fn random(n: usize, d: usize, seed: u64) -> Vec<f32> {
        let mut rng = ChaCha8Rng::seed_from_u64(seed);
        (0..n * d)
            .map(|_| rng.random::<f32>() * 2.0 - 1.0)
            .collect()
    }

    fn brute(x: &[f32], c: &Centroids) -> (u32, f32, u32, f32) {
        let mut d: Vec<(f32, u32)> = (0..c.k())
            .map(|i| (sq_dist(x, c.row(i)), i as u32))
            .collect();
        d.sort_by(|a, b| a.0.total_cmp(&b.0).then(a.1.cmp(&b.1)));
        let second = d.get(1).copied().unwrap_or((f32::INFINITY, u32::MAX));
        (d[0].1, d[0].0, second.1, second.0)
    }

    fn isas() -> Vec<Isa> {
        let mut v = vec![Isa::Portable];
        #[cfg(target_arch = "x86_64")]
        {
            if std::arch::is_x86_feature_detected!("avx2")
                && std::arch::is_x86_feature_detected!("fma")
            {
                v.push(Isa::Avx2);
            }
            if std::arch::is_x86_feature_detected!("avx512f") {
                v.push(Isa::Avx512);
            }
        }
        v
    }

    #[test]
    fn every_isa_matches_brute_force() {
        // sizes that exercise full and partial panels and point groups
        for (n, d, k) in [
            (1, 1, 1),
            (7, 3, 2),
            (13, 5, 17),
            (40, 64, 100),
            (33, 7, 49),
            (50, 16, 130),
        ] {
            let x = random(n, d, n as u64);
            let c = Centroids::new(random(k, d, 99 + k as u64), d).unwrap();
            let pts = Points::new(&x, d).unwrap();
            for isa in isas() {
                let packed = Packed::with_isa(&c, Metric::L2, isa);
                let got = assign(&pts, &packed);
                for (i, &g) in got.iter().enumerate() {
                    let (l, dl, r, dr) = brute(pts.row(i), &c);
                    assert!(
                        (g.distance - dl).abs() <= 1e-4 * (1.0 + dl),
                        "{isa:?} n{n} d{d} k{k} row {i}"
                    );
                    if g.cluster != l {
                        // only acceptable on a float tie
                        assert!(
                            (sq_dist(pts.row(i), c.row(g.cluster as usize)) - dl).abs() < 1e-5,
                            "{isa:?} row {i}"
                        );
                    }
                    if k > 1 {
                        assert!(
                            (g.runner_up_distance - dr).abs() <= 1e-4 * (1.0 + dr),
                            "{isa:?} k{k} row {i}"
                        );
                        assert_ne!(g.runner_up, g.cluster);
                        let _ = r;
                    } else {
                        assert_eq!(g.runner_up, u32::MAX);
                    }
                }
            }
        }
    }

    #[test]
    fn distances_match_brute_force() {
        for (n, d, k) in [(1, 1, 1), (11, 5, 3), (17, 64, 100), (9, 7, 33)] {
            let x = random(n, d, 5 + n as u64);
            let c = Centroids::new(random(k, d, 77), d).unwrap();
            for isa in isas() {
                let packed = Packed::with_isa(&c, Metric::L2, isa);
                let mut out = vec![0f32; n * k];
                distances_into(&packed, &x, &mut out);
                for i in 0..n {
                    for j in 0..k {
                        let want = sq_dist(&x[i * d..(i + 1) * d], c.row(j));
                        assert!(
                            (out[i * k + j] - want).abs() <= 1e-4 * (1.0 + want),
                            "{isa:?} n{n} d{d} k{k} ({i},{j})"
                        );
                    }
                }
            }
        }
    }

    #[test]
    fn ties_go_to_the_lower_index() {
        let c = Centroids::new(vec![1.0, 0.0, 1.0, 0.0, -1.0, 0.0, 1.0, 0.0], 2).unwrap();
        let x = [0.5f32, 0.0, 0.0, 0.0];
        let pts = Points::new(&x, 2).unwrap();
        for isa in isas() {
            let a = assign(&pts, &Packed::with_isa(&c, Metric::L2, isa));
            assert_eq!((a[0].cluster, a[0].runner_up), (0, 1), "{isa:?}");
            // equidistant from all four: index 0 wins
            assert_eq!(a[1].cluster, 0, "{isa:?}");
        }
    }

    #[test]
    fn cosine_distance() {
        let c = Centroids::new(vec![2.0, 0.0, 0.0, 3.0], 2).unwrap();
        let x = [1.0f32, 1.0, -4.0, 0.1];
        let pts = Points::new(&x, 2).unwrap();
        for isa in isas() {
            let a = assign(&pts, &Packed::with_isa(&c, Metric::Cosine, isa));
            let want = 1.0 - std::f32::consts::FRAC_1_SQRT_2;
            assert!((a[0].distance - want).abs() < 1e-5, "{isa:?} {a:?}");
            assert_eq!(a[1].cluster, 1, "{isa:?}");
        }
    }
}
