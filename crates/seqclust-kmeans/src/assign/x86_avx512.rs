//! The AVX-512 kernel: groups of 6 points × panels of up to 4 × 16 centroids.
//!
//! Per dimension `j`, a panel step loads `V` vectors of 16 centroid coordinates and broadcasts
//! each point's `x[j]`: `6 × V` fused multiply-adds against `V + 6` loads, with the 24
//! accumulators, 4 centroid vectors and the broadcast in 29 of the 32 vector registers. The
//! same dot-product tile feeds two epilogues: a running top-2 (assignment) and a plain store of
//! every score (pairwise distances).

use std::arch::x86_64::*;

use super::{Packed, Raw};

/// Points per group.
const P: usize = 6;

/// Calls `f(Q, row offset)` for groups of `P` rows and a final smaller group.
macro_rules! groups {
    ($n:expr, $f:ident, $($arg:expr),*) => {{
        let n = $n;
        let mut i = 0;
        while i + P <= n {
            $f::<P>(i, $($arg),*);
            i += P;
        }
        match n - i {
            5 => $f::<5>(i, $($arg),*),
            4 => $f::<4>(i, $($arg),*),
            3 => $f::<3>(i, $($arg),*),
            2 => $f::<2>(i, $($arg),*),
            1 => $f::<1>(i, $($arg),*),
            _ => {}
        }
    }};
}

/// Nearest and runner-up raw scores of each row.
///
/// # Safety
/// The CPU must support AVX-512F; `rows.len() == out.len() * packed.d`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn raw_rows(packed: &Packed, rows: &[f32], out: &mut [Raw]) {
    #[target_feature(enable = "avx512f")]
    fn one<const Q: usize>(i: usize, packed: &Packed, rows: &[f32], out: &mut [Raw]) {
        // SAFETY: rows i..i+Q exist (checked by the slicing in `groups!`' bounds).
        unsafe { group::<Q>(packed, rows.as_ptr().add(i * packed.d), &mut out[i..i + Q]) }
    }
    groups!(out.len(), one, packed, rows, out);
}

/// Every score ‖c‖² − 2x·c (L2) or −2x·ĉ (cosine) of each row against every centroid, into
/// `out` (`rows × k`, row-major), and ‖x‖² into `xx`.
///
/// # Safety
/// The CPU must support AVX-512F; `rows.len() == xx.len() * packed.d`,
/// `out.len() == xx.len() * packed.k`.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn scores_rows(packed: &Packed, rows: &[f32], out: &mut [f32], xx: &mut [f32]) {
    #[target_feature(enable = "avx512f")]
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
                    4 => store_tile::<Q, 4>(x, d, data, norms, panel.start, k, o),
                    3 => store_tile::<Q, 3>(x, d, data, norms, panel.start, k, o),
                    2 => store_tile::<Q, 2>(x, d, data, norms, panel.start, k, o),
                    _ => store_tile::<Q, 1>(x, d, data, norms, panel.start, k, o),
                }
            }
            for q in 0..Q {
                xx[i + q] = norm2(x.add(q * d), d);
            }
        }
    }
    groups!(xx.len(), one, packed, rows, out, xx);
}

/// Running lane-wise top-2 of `Q` points.
struct State<const Q: usize> {
    b1: [__m512; Q],
    i1: [__m512i; Q],
    b2: [__m512; Q],
    i2: [__m512i; Q],
}

#[target_feature(enable = "avx512f")]
unsafe fn group<const Q: usize>(packed: &Packed, x: *const f32, out: &mut [Raw]) {
    let inf = _mm512_set1_ps(f32::INFINITY);
    let zero = _mm512_setzero_si512();
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
                4 => top2_tile::<Q, 4>(x, d, data, norms, start, &mut st),
                3 => top2_tile::<Q, 3>(x, d, data, norms, start, &mut st),
                2 => top2_tile::<Q, 2>(x, d, data, norms, start, &mut st),
                _ => top2_tile::<Q, 1>(x, d, data, norms, start, &mut st),
            }
        }
    }
    for (q, o) in out.iter_mut().enumerate().take(Q) {
        // SAFETY: row q has d floats.
        let xx = unsafe { norm2(x.add(q * d), d) };
        *o = reduce(st.b1[q], st.i1[q], st.b2[q], st.i2[q], xx);
    }
}

/// ‖x‖² of a row.
#[target_feature(enable = "avx512f")]
#[inline]
unsafe fn norm2(x: *const f32, d: usize) -> f32 {
    let mut acc = _mm512_setzero_ps();
    let mut j = 0;
    while j + 16 <= d {
        // SAFETY: j + 16 <= d.
        let v = unsafe { _mm512_loadu_ps(x.add(j)) };
        acc = _mm512_fmadd_ps(v, v, acc);
        j += 16;
    }
    let mut s = _mm512_reduce_add_ps(acc);
    while j < d {
        // SAFETY: j < d.
        let v = unsafe { *x.add(j) };
        s += v * v;
        j += 1;
    }
    s
}

/// Reduces the 16 lanes' top-2 to the overall nearest and runner-up; ties go to the lower
/// index.
#[target_feature(enable = "avx512f")]
#[inline]
fn reduce(b1: __m512, i1: __m512i, b2: __m512, i2: __m512i, xx: f32) -> Raw {
    let big = _mm512_set1_epi32(i32::MAX);
    let best = _mm512_reduce_min_ps(b1);
    let at_best = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(b1, _mm512_set1_ps(best));
    let bi = _mm512_mask_reduce_min_epi32(at_best, i1);
    // the winning lane is the one holding (best, bi); its runner-up competes with the other
    // lanes' best
    let win = at_best & _mm512_cmpeq_epi32_mask(i1, _mm512_set1_epi32(bi));
    let cand = _mm512_mask_blend_ps(win, b1, b2);
    let cand_i = _mm512_mask_blend_epi32(win, i1, i2);
    let second = _mm512_reduce_min_ps(cand);
    let at_second = _mm512_cmp_ps_mask::<_CMP_EQ_OQ>(cand, _mm512_set1_ps(second));
    let si = _mm512_reduce_min_epi32(_mm512_mask_blend_epi32(at_second, big, cand_i));
    Raw {
        b1: best,
        i1: bi as u32,
        b2: second,
        i2: si as u32,
        xx,
    }
}

/// The `Q × (V·16)` dot products of a group of points with one panel.
#[target_feature(enable = "avx512f")]
#[inline]
#[allow(clippy::needless_range_loop)] // indexes several register arrays in lockstep
unsafe fn dots<const Q: usize, const V: usize>(
    x: *const f32,
    d: usize,
    data: *const f32,
) -> [[__m512; V]; Q] {
    let mut acc = [[_mm512_setzero_ps(); V]; Q];
    for j in 0..d {
        let mut c = [_mm512_setzero_ps(); V];
        for (v, cv) in c.iter_mut().enumerate() {
            // SAFETY: the panel has d × V × 16 floats.
            *cv = unsafe { _mm512_loadu_ps(data.add(j * V * 16 + v * 16)) };
        }
        for (q, aq) in acc.iter_mut().enumerate() {
            // SAFETY: row q of the group has d floats.
            let xb = _mm512_set1_ps(unsafe { *x.add(q * d + j) });
            for v in 0..V {
                aq[v] = _mm512_fmadd_ps(xb, c[v], aq[v]);
            }
        }
    }
    acc
}

#[target_feature(enable = "avx512f")]
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
    let m2 = _mm512_set1_ps(-2.0);
    let lane = _mm512_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 11, 12, 13, 14, 15);
    for v in 0..V {
        // SAFETY: the panel has V × 16 norms.
        let nrm = unsafe { _mm512_loadu_ps(norms.add(v * 16)) };
        let cidx = _mm512_add_epi32(lane, _mm512_set1_epi32(start + (v * 16) as i32));
        for q in 0..Q {
            let dist = _mm512_fmadd_ps(m2, acc[q][v], nrm);
            let lt1 = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(dist, st.b1[q]);
            let lt2 = _mm512_cmp_ps_mask::<_CMP_LT_OQ>(dist, st.b2[q]);
            let nb2 = _mm512_mask_blend_ps(lt2, st.b2[q], dist);
            let ni2 = _mm512_mask_blend_epi32(lt2, st.i2[q], cidx);
            st.b2[q] = _mm512_mask_blend_ps(lt1, nb2, st.b1[q]);
            st.i2[q] = _mm512_mask_blend_epi32(lt1, ni2, st.i1[q]);
            st.b1[q] = _mm512_mask_blend_ps(lt1, st.b1[q], dist);
            st.i1[q] = _mm512_mask_blend_epi32(lt1, st.i1[q], cidx);
        }
    }
}

#[target_feature(enable = "avx512f")]
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
    let m2 = _mm512_set1_ps(-2.0);
    for v in 0..V {
        let first = start + v * 16;
        if first >= k {
            break;
        }
        let valid = (k - first).min(16);
        let mask: __mmask16 = if valid == 16 {
            0xFFFF
        } else {
            (1u16 << valid) - 1
        };
        // SAFETY: the panel has V × 16 norms.
        let nrm = unsafe { _mm512_loadu_ps(norms.add(v * 16)) };
        for (q, aq) in acc.iter().enumerate() {
            let dist = _mm512_fmadd_ps(m2, aq[v], nrm);
            // SAFETY: lanes first..first+valid of row q are inside out.
            unsafe { _mm512_mask_storeu_ps(out.add(q * k + first), mask, dist) };
        }
    }
}

/// Adds rows to their clusters' f64 sums with 8-wide f64 vectors.
///
/// # Safety
/// The CPU must support AVX-512F.
#[target_feature(enable = "avx512f")]
pub(super) unsafe fn add_rows(
    rows: &[f32],
    d: usize,
    labels: &[u32],
    scale: Option<&[f64]>,
    sums: &mut [f64],
) {
    super::portable::add_rows(rows, d, labels, scale, sums)
}
