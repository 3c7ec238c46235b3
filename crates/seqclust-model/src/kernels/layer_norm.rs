//! Layer normalisation over the last dimension in one pass, with the closed-form backward:
//! with `x̂ = (x − μ) / σ`, `dx = (1/σ) (g − mean(g) − x̂ mean(g x̂))` for `g = dy ⊙ γ`,
//! `dγ = Σ dy ⊙ x̂`, `dβ = Σ dy`.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rayon::prelude::*;

/// The op (ε = 1e-6, as the plain version).
pub struct LayerNorm {
    /// x̂ and 1/σ per row, from the forward.
    saved: Mutex<(Vec<f32>, Vec<f32>)>,
}

const EPS: f32 = 1e-6;
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

fn data<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("layer norm: f32 expected")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("layer norm: contiguous input expected")
    };
    Ok(&v[a..b])
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
        let (x, g, b) = (data(s1, l1)?, data(s2, l2)?, data(s3, l3)?);
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
                for r in 0..ic.len() {
                    let row = &x[(c * ROWS + r) * d..(c * ROWS + r + 1) * d];
                    let mean = row.iter().sum::<f32>() / d as f32;
                    let var = row.iter().map(|v| (v - mean) * (v - mean)).sum::<f32>() / d as f32;
                    let is = 1.0 / (var + EPS).sqrt();
                    ic[r] = is;
                    for j in 0..d {
                        let h = (row[j] - mean) * is;
                        hc[r * d + j] = h;
                        yc[r * d + j] = h * g[j] + b[j];
                    }
                }
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
        let dy = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let (xh, inv) = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?
            .clone();
        let n = inv.len();
        if xh.len() != n * d || dy.len() != n * d {
            candle_core::bail!("layer norm backward without its forward");
        }
        let mut dx = vec![0f32; n * d];
        // per-chunk partial dγ, dβ, merged in chunk order (deterministic)
        let parts: Vec<(Vec<f32>, Vec<f32>)> = dx
            .par_chunks_mut(ROWS * d)
            .enumerate()
            .map(|(c, dxc)| {
                let mut dg = vec![0f32; d];
                let mut db = vec![0f32; d];
                for r in 0..dxc.len() / d {
                    let i = c * ROWS + r;
                    let (h, dyr) = (&xh[i * d..(i + 1) * d], &dy[i * d..(i + 1) * d]);
                    let mut mg = 0f32;
                    let mut mgh = 0f32;
                    for j in 0..d {
                        let gj = dyr[j] * g[j];
                        mg += gj;
                        mgh += gj * h[j];
                        dg[j] += dyr[j] * h[j];
                        db[j] += dyr[j];
                    }
                    mg /= d as f32;
                    mgh /= d as f32;
                    for j in 0..d {
                        dxc[r * d + j] = inv[i] * (dyr[j] * g[j] - mg - h[j] * mgh);
                    }
                }
                (dg, db)
            })
            .collect();
        let mut dg = vec![0f32; d];
        let mut db = vec![0f32; d];
        for (a, c) in parts {
            dg.iter_mut().zip(&a).for_each(|(x, y)| *x += y);
            db.iter_mut().zip(&c).for_each(|(x, y)| *x += y);
        }
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, x.shape(), dev)?),
            Some(Tensor::from_vec(dg, d, dev)?),
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
