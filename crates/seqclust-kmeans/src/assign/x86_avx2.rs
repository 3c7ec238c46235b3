//! The AVX2 + FMA kernel: groups of 4 points × panels of up to 3 × 8 centroids (12
//! accumulators, 3 centroid vectors and a broadcast in the 16 vector registers), with the same
//! two epilogues as the AVX-512 kernel.

use std::arch::x86_64::*;

use super::{Packed, Raw};

/// Points per group.
const P: usize = 4;

/// Reduces per-lane top-2 lists to the overall nearest and runner-up; ties go to the lower
/// index (`xx` is left 0 for the caller).
pub(super) fn reduce_lanes(b1: &[f32], i1: &[i32], b2: &[f32], i2: &[i32]) -> Raw {
    let better = |d: f32, i: u32, bd: f32, bi: u32| d < bd || (d == bd && i < bi);
    let (mut bd, mut bi, mut lane) = (f32::INFINITY, u32::MAX, 0usize);
    for l in 0..b1.len() {
        if better(b1[l], i1[l] as u32, bd, bi) {
            (bd, bi, lane) = (b1[l], i1[l] as u32, l);
        }
    }
    let (mut sd, mut si) = (b2[lane], i2[lane] as u32);
    for l in 0..b1.len() {
        if l != lane && better(b1[l], i1[l] as u32, sd, si) {
            (sd, si) = (b1[l], i1[l] as u32);
        }
    }
    Raw {
        b1: bd,
        i1: bi,
        b2: sd,
        i2: si,
        xx: 0.0,
    }
}

macro_rules! groups {
    ($n:expr, $f:ident, $($arg:expr),*) => {{
        let n = $n;
        let mut i = 0;
        while i + P <= n {
            $f::<P>(i, $($arg),*);
            i += P;
        }
        match n - i {
            3 => $f::<3>(i, $($arg),*),
            2 => $f::<2>(i, $($arg),*),
            1 => $f::<1>(i, $($arg),*),
            _ => {}
        }
    }};
}

/// # Safety
/// The CPU must support AVX2 and FMA; `rows.len() == out.len() * packed.d`.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn raw_rows(packed: &Packed, rows: &[f32], out: &mut [Raw]) {
    #[target_feature(enable = "avx2,fma")]
    fn one<const Q: usize>(i: usize, packed: &Packed, rows: &[f32], out: &mut [Raw]) {
        // SAFETY: rows i..i+Q exist.
        unsafe { group::<Q>(packed, rows.as_ptr().add(i * packed.d), &mut out[i..i + Q]) }
    }
    groups!(out.len(), one, packed, rows, out);
}

/// See `x86_avx512::scores_rows`.
///
/// # Safety
/// The CPU must support AVX2 and FMA; sizes as for the AVX-512 version.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn scores_rows(packed: &Packed, rows: &[f32], out: &mut [f32], xx: &mut [f32]) {
    #[target_feature(enable = "avx2,fma")]
    fn one<const Q: usize>(
        i: usize,
        packed: &Packed,
        rows: &[f32],
        out: &mut [f32],
        xx: &mut [f32],
    ) {
        let (d, k) = (packed.d, packed.k);
        // SAFETY: rows i..i+Q exist and out has k floats per row.
        unsafe {
            let x = rows.as_ptr().add(i * d);
            let o = out.as_mut_ptr().add(i * k);
            for panel in &packed.panels {
                let data = packed.data.as_ptr().add(panel.data);
                let norms = packed.norms.as_ptr().add(panel.norms);
                match panel.v {
                    3 => store_tile::<Q, 3>(x, d, data, norms, panel.start, k, o),
                    2 => store_tile::<Q, 2>(x, d, data, norms, panel.start, k, o),
                    _ => store_tile::<Q, 1>(x, d, data, norms, panel.start, k, o),
                }
            }
        }
        for q in 0..Q {
            let row = &rows[(i + q) * d..(i + q + 1) * d];
            xx[i + q] = row.iter().map(|v| v * v).sum();
        }
    }
    groups!(xx.len(), one, packed, rows, out, xx);
}

struct State<const Q: usize> {
    b1: [__m256; Q],
    i1: [__m256; Q],
    b2: [__m256; Q],
    i2: [__m256; Q],
}

#[target_feature(enable = "avx2,fma")]
unsafe fn group<const Q: usize>(packed: &Packed, x: *const f32, out: &mut [Raw]) {
    let inf = _mm256_set1_ps(f32::INFINITY);
    let zero = _mm256_castsi256_ps(_mm256_setzero_si256());
    let mut st = State::<Q> {
        b1: [inf; Q],
        i1: [zero; Q],
        b2: [inf; Q],
        i2: [zero; Q],
    };
    let d = packed.d;
    for panel in &packed.panels {
        // SAFETY: panel offsets come from Packed::with_isa for this ISA.
        unsafe {
            let data = packed.data.as_ptr().add(panel.data);
            let norms = packed.norms.as_ptr().add(panel.norms);
            let start = panel.start as i32;
            match panel.v {
                3 => top2_tile::<Q, 3>(x, d, data, norms, start, &mut st),
                2 => top2_tile::<Q, 2>(x, d, data, norms, start, &mut st),
                _ => top2_tile::<Q, 1>(x, d, data, norms, start, &mut st),
            }
        }
    }
    for (q, o) in out.iter_mut().enumerate().take(Q) {
        let mut b1 = [0f32; 8];
        let mut b2 = [0f32; 8];
        let mut i1 = [0i32; 8];
        let mut i2 = [0i32; 8];
        // SAFETY: the arrays hold 8 lanes each.
        unsafe {
            _mm256_storeu_ps(b1.as_mut_ptr(), st.b1[q]);
            _mm256_storeu_ps(b2.as_mut_ptr(), st.b2[q]);
            _mm256_storeu_si256(i1.as_mut_ptr().cast(), _mm256_castps_si256(st.i1[q]));
            _mm256_storeu_si256(i2.as_mut_ptr().cast(), _mm256_castps_si256(st.i2[q]));
        }
        let mut r = reduce_lanes(&b1, &i1, &b2, &i2);
        // SAFETY: row q has d floats.
        let row = unsafe { std::slice::from_raw_parts(x.add(q * d), d) };
        r.xx = row.iter().map(|v| v * v).sum();
        *o = r;
    }
}

/// Adds rows to their clusters' f64 sums with 4-wide f64 vectors.
///
/// # Safety
/// The CPU must support AVX2 and FMA.
#[target_feature(enable = "avx2,fma")]
pub(super) unsafe fn add_rows(
    rows: &[f32],
    d: usize,
    labels: &[u32],
    scale: Option<&[f64]>,
    sums: &mut [f64],
) {
    super::portable::add_rows(rows, d, labels, scale, sums)
}

#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::needless_range_loop)] // indexes several register arrays in lockstep
unsafe fn dots<const Q: usize, const V: usize>(
    x: *const f32,
    d: usize,
    data: *const f32,
) -> [[__m256; V]; Q] {
    let mut acc = [[_mm256_setzero_ps(); V]; Q];
    for j in 0..d {
        let mut c = [_mm256_setzero_ps(); V];
        for (v, cv) in c.iter_mut().enumerate() {
            // SAFETY: the panel has d × V × 8 floats.
            *cv = unsafe { _mm256_loadu_ps(data.add(j * V * 8 + v * 8)) };
        }
        for (q, aq) in acc.iter_mut().enumerate() {
            // SAFETY: row q of the group has d floats.
            let xb = _mm256_set1_ps(unsafe { *x.add(q * d + j) });
            for v in 0..V {
                aq[v] = _mm256_fmadd_ps(xb, c[v], aq[v]);
            }
        }
    }
    acc
}

#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::needless_range_loop)] // indexes several register arrays in lockstep
unsafe fn top2_tile<const Q: usize, const V: usize>(
    x: *const f32,
    d: usize,
    data: *const f32,
    norms: *const f32,
    start: i32,
    st: &mut State<Q>,
) {
    // SAFETY: forwarded from the caller.
    let acc = unsafe { dots::<Q, V>(x, d, data) };
    let m2 = _mm256_set1_ps(-2.0);
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for v in 0..V {
        // SAFETY: the panel has V × 8 norms.
        let nrm = unsafe { _mm256_loadu_ps(norms.add(v * 8)) };
        let cidx = _mm256_castsi256_ps(_mm256_add_epi32(
            lane,
            _mm256_set1_epi32(start + (v * 8) as i32),
        ));
        for q in 0..Q {
            let dist = _mm256_fmadd_ps(m2, acc[q][v], nrm);
            let lt1 = _mm256_cmp_ps::<_CMP_LT_OQ>(dist, st.b1[q]);
            let lt2 = _mm256_cmp_ps::<_CMP_LT_OQ>(dist, st.b2[q]);
            let nb2 = _mm256_blendv_ps(st.b2[q], dist, lt2);
            let ni2 = _mm256_blendv_ps(st.i2[q], cidx, lt2);
            st.b2[q] = _mm256_blendv_ps(nb2, st.b1[q], lt1);
            st.i2[q] = _mm256_blendv_ps(ni2, st.i1[q], lt1);
            st.b1[q] = _mm256_blendv_ps(st.b1[q], dist, lt1);
            st.i1[q] = _mm256_blendv_ps(st.i1[q], cidx, lt1);
        }
    }
}

#[target_feature(enable = "avx2,fma")]
#[inline]
#[allow(clippy::needless_range_loop)] // indexes several register arrays in lockstep
unsafe fn store_tile<const Q: usize, const V: usize>(
    x: *const f32,
    d: usize,
    data: *const f32,
    norms: *const f32,
    start: usize,
    k: usize,
    out: *mut f32,
) {
    // SAFETY: forwarded from the caller.
    let acc = unsafe { dots::<Q, V>(x, d, data) };
    let m2 = _mm256_set1_ps(-2.0);
    let lane = _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7);
    for v in 0..V {
        let first = start + v * 8;
        if first >= k {
            break;
        }
        let valid = (k - first).min(8) as i32;
        let mask = _mm256_cmpgt_epi32(_mm256_set1_epi32(valid), lane);
        // SAFETY: the panel has V × 8 norms.
        let nrm = unsafe { _mm256_loadu_ps(norms.add(v * 8)) };
        for (q, aq) in acc.iter().enumerate() {
            let dist = _mm256_fmadd_ps(m2, aq[v], nrm);
            // SAFETY: lanes first..first+valid of row q are inside out.
            unsafe { _mm256_maskstore_ps(out.add(q * k + first), mask, dist) };
        }
    }
}
