//! Layer normalisation over the last dimension in one pass, with the closed-form backward:
//! with `x̂ = (x − μ) / σ`, `dx = (1/σ) (g − mean(g) − x̂ mean(g x̂))` for `g = dy ⊙ γ`,
//! `dγ = Σ dy ⊙ x̂`, `dβ = Σ dy`.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;

use super::{cpu_f32, flat, sum_map, sum_map2, sum_map3, sum_parts};

/// The op (ε = 1e-6, as the plain version).
pub struct LayerNorm {
    /// x̂ and 1/σ per row, from the forward.
    saved: Mutex<(Vec<f32>, Vec<f32>)>,
}

pub(crate) const EPS: f32 = 1e-6;
const ROWS: usize = 256;

impl LayerNorm {
    /// Normalises `x` (`… × d`) with weight `gamma` and bias `beta` (`d`).
    pub fn apply(x: &Tensor, gamma: &Tensor, beta: &Tensor) -> candle_core::Result<Tensor> {
        x.apply_op3(
            gamma,
            beta,
            LayerNorm {
                saved: Mutex::new((Vec::new(), Vec::new())),
            },
        )
    }
}

/// Normalises `n` rows of `x` (`n × d`): writes `y = x̂ γ + β`, `x̂` and `1/σ` per row.
#[multiversion(targets("x86_64+avx2+fma"))]
pub(crate) fn rows_fwd(
    x: &[f32],
    (g, b): (&[f32], &[f32]),
    y: &mut [f32],
    xh: &mut [f32],
    inv: &mut [f32],
) {
    let d = g.len();
    for (r, is_out) in inv.iter_mut().enumerate() {
        let row = &x[r * d..(r + 1) * d];
        let mean = sum_map(row, |v| v) / d as f32;
        let var = sum_map(row, |v| (v - mean) * (v - mean)) / d as f32;
        let is = 1.0 / (var + EPS).sqrt();
        *is_out = is;
        let (yr, hr) = (&mut y[r * d..(r + 1) * d], &mut xh[r * d..(r + 1) * d]);
        for j in 0..d {
            let h = (row[j] - mean) * is;
            hr[j] = h;
            yr[j] = h * g[j] + b[j];
        }
    }
}

/// The backward of [`rows_fwd`] for `inv.len()` rows: `dx` is set (or, with `accumulate`,
/// added to); `dg`, `db` are added to.
#[multiversion(targets("x86_64+avx2+fma"))]
#[allow(clippy::too_many_arguments)]
pub(crate) fn rows_bwd(
    dy: &[f32],
    xh: &[f32],
    inv: &[f32],
    g: &[f32],
    dx: &mut [f32],
    accumulate: bool,
    dg: &mut [f32],
    db: &mut [f32],
) {
    let d = g.len();
    for (i, &is) in inv.iter().enumerate() {
        let (h, dyr) = (&xh[i * d..(i + 1) * d], &dy[i * d..(i + 1) * d]);
        let mg = sum_map2(dyr, g, |a, b| a * b) / d as f32;
        let mgh = sum_map3(dyr, g, h, |a, b, c| a * b * c);
        for j in 0..d {
            dg[j] += dyr[j] * h[j];
            db[j] += dyr[j];
        }
        let mgh = mgh / d as f32;
        let dxr = &mut dx[i * d..(i + 1) * d];
        for j in 0..d {
            let v = is * (dyr[j] * g[j] - mg - h[j] * mgh);
            dxr[j] = if accumulate { dxr[j] + v } else { v };
        }
    }
}

impl CustomOp3 for LayerNorm {
    fn name(&self) -> &'static str {
        "layer-norm"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
        s3: &CpuStorage,
        l3: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let op = "layer norm";
        let (x, g, b) = (
            cpu_f32(op, s1, l1)?,
            cpu_f32(op, s2, l2)?,
            cpu_f32(op, s3, l3)?,
        );
        let d = g.len();
        if d == 0 || x.len() % d != 0 || b.len() != d {
            candle_core::bail!("layer norm: inconsistent shapes");
        }
        let n = x.len() / d;
        let mut y = vec![0f32; n * d];
        let mut xh = vec![0f32; n * d];
        let mut inv = vec![0f32; n];
        y.par_chunks_mut(ROWS * d)
            .zip(xh.par_chunks_mut(ROWS * d))
            .zip(inv.par_chunks_mut(ROWS))
            .enumerate()
            .for_each(|(c, ((yc, hc), ic))| {
                let x = &x[c * ROWS * d..(c * ROWS + ic.len()) * d];
                rows_fwd(x, (g, b), yc, hc, ic);
            });
        *self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))? = (xh, inv);
        Ok((CpuStorage::F32(y), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        gamma: &Tensor,
        _beta: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let d = gamma.dim(0)?;
        let g = gamma.to_vec1::<f32>()?;
        let dy = flat(grad)?;
        let (xh, inv) = std::mem::take(
            &mut *self
                .saved
                .lock()
                .map_err(|_| candle_core::Error::Msg("poisoned".into()))?,
        );
        let n = inv.len();
        if xh.len() != n * d || dy.len() != n * d {
            candle_core::bail!("layer norm backward without its forward");
        }
        let mut dx = vec![0f32; n * d];
        // per-chunk partial dγ, dβ, merged in chunk order (deterministic)
        let parts: Vec<Vec<f32>> = dx
            .par_chunks_mut(ROWS * d)
            .enumerate()
            .map(|(c, dxc)| {
                let mut part = vec![0f32; 2 * d];
                let (dg, db) = part.split_at_mut(d);
                let rows = c * ROWS..c * ROWS + dxc.len() / d;
                let span = rows.start * d..rows.end * d;
                rows_bwd(
                    &dy[span.clone()],
                    &xh[span],
                    &inv[rows],
                    &g,
                    dxc,
                    false,
                    dg,
                    db,
                );
                part
            })
            .collect();
        let mut part = sum_parts(parts, 2 * d);
        let db = part.split_off(d);
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(part, d, dev)?),
            Some(Tensor::from_vec(db, d, dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    #[test]
    fn matches_plain_candle() {
        let dev = Device::Cpu;
        let (n, d) = (300, 8);
        let xv: Vec<f32> = (0..n * d)
            .map(|i| ((i * 31 % 89) as f32 / 30.0) - 1.5)
            .collect();
        let gv: Vec<f32> = (0..d).map(|i| 0.5 + i as f32 * 0.1).collect();
        let bv: Vec<f32> = (0..d).map(|i| i as f32 * -0.05).collect();
        let mk = || {
            (
                Var::from_vec(xv.clone(), (n / 3, 3, d), &dev).unwrap(),
                Var::from_vec(gv.clone(), d, &dev).unwrap(),
                Var::from_vec(bv.clone(), d, &dev).unwrap(),
            )
        };
        let ((x1, g1, b1), (x2, g2, b2)) = (mk(), mk());
        let w = Tensor::from_vec(
            (0..n * d)
                .map(|i| ((i % 7) as f32) - 3.0)
                .collect::<Vec<_>>(),
            (n / 3, 3, d),
            &dev,
        )
        .unwrap();
        let lf = LayerNorm::apply(x1.as_tensor(), g1.as_tensor(), b1.as_tensor())
            .unwrap()
            .mul(&w)
            .unwrap()
            .sum_all()
            .unwrap();
        let lp =
            candle_nn::ops::layer_norm_slow(x2.as_tensor(), g2.as_tensor(), b2.as_tensor(), 1e-6)
                .unwrap()
                .mul(&w)
                .unwrap()
                .sum_all()
                .unwrap();
        let (a, c) = (
            lf.to_scalar::<f32>().unwrap(),
            lp.to_scalar::<f32>().unwrap(),
        );
        assert!((a - c).abs() < 1e-3 * c.abs().max(1.0), "{a} vs {c}");
        let (ga, gb) = (lf.backward().unwrap(), lp.backward().unwrap());
        for (p, q) in [(&x1, &x2), (&g1, &g2), (&b1, &b2)] {
            let u = ga
                .get(p.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            let v = gb
                .get(q.as_tensor())
                .unwrap()
                .flatten_all()
                .unwrap()
                .to_vec1::<f32>()
                .unwrap();
            for (s, t) in u.iter().zip(&v) {
                assert!((s - t).abs() < 1e-3 * t.abs().max(1.0), "{s} vs {t}");
            }
        }
    }
}
