//! The plain-Rust kernel (any CPU).

use super::{Packed, Raw};
use crate::matrix::dot;

pub(super) fn raw_rows(p: &Packed, rows: &[f32], out: &mut [Raw]) {
    let d = p.d;
    for (x, o) in rows.chunks_exact(d).zip(out.iter_mut()) {
        let mut r = Raw {
            b1: f32::INFINITY,
            i1: 0,
            b2: f32::INFINITY,
            i2: 0,
            xx: dot(x, x),
        };
        for c in 0..p.k {
            let s = p.norms[c] - 2.0 * dot(x, &p.rows[c * d..(c + 1) * d]);
            if s < r.b1 {
                r.b2 = r.b1;
                r.i2 = r.i1;
                r.b1 = s;
                r.i1 = c as u32;
            } else if s < r.b2 {
                r.b2 = s;
                r.i2 = c as u32;
            }
        }
        *o = r;
    }
}

/// Adds rows to their clusters' f64 sums (the body the vector paths compile with wider
/// instructions).
#[inline(always)]
pub(super) fn add_rows(
    rows: &[f32],
    d: usize,
    labels: &[u32],
    scale: Option<&[f64]>,
    sums: &mut [f64],
) {
    for (i, (x, &c)) in rows.chunks_exact(d).zip(labels).enumerate() {
        let dst = &mut sums[c as usize * d..(c as usize + 1) * d];
        match scale {
            None => dst.iter_mut().zip(x).for_each(|(s, v)| *s += f64::from(*v)),
            Some(sc) => dst
                .iter_mut()
                .zip(x)
                .for_each(|(s, v)| *s += f64::from(*v) * sc[i]),
        }
    }
}

/// Every score of each row against every centroid (see `scores_rows` in the parent module).
pub(super) fn scores_rows(p: &Packed, rows: &[f32], out: &mut [f32], xx: &mut [f32]) {
    let (d, k) = (p.d, p.k);
    for (i, x) in rows.chunks_exact(d).enumerate() {
        xx[i] = dot(x, x);
        for c in 0..k {
            out[i * k + c] = p.norms[c] - 2.0 * dot(x, &p.rows[c * d..(c + 1) * d]);
        }
    }
}
