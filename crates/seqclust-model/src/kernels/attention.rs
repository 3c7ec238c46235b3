//! Multi-head scaled dot-product attention with a causal/padding mask and attention dropout,
//! fused per (sequence, head): `O = dropout(softmax(Q Kᵀ / √d + mask)) V`. The forward keeps
//! the (dropped-out) probabilities for the backward:
//! `dV = Pᵀ dO`, `dP = dO Vᵀ`, `dS = P ⊙ (dP − rowsum(dP ⊙ P))` (on the pre-dropout
//! probabilities), `dQ = dS K / √d`, `dK = dSᵀ Q / √d`.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp3, Layout, Shape, Tensor};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use rayon::prelude::*;

/// The attention op for one batch.
pub struct Attention {
    /// `b × t`: 1 for events, 0 for padding.
    key_mask: Vec<f32>,
    causal: bool,
    dropout: f32,
    seed: Option<u64>,
    /// Forward probabilities (after dropout scaling) and the pre-dropout ones.
    saved: Mutex<(Vec<f32>, Vec<f32>)>,
}

impl Attention {
    /// `q`, `k`, `v`: `b × heads × t × dh` contiguous. Dropout applies when `seed` is given.
    pub fn apply(
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        key_mask: Vec<f32>,
        causal: bool,
        dropout: f32,
        seed: Option<u64>,
    ) -> candle_core::Result<Tensor> {
        q.apply_op3(
            k,
            v,
            Attention {
                key_mask,
                causal,
                dropout,
                seed,
                saved: Mutex::new((Vec::new(), Vec::new())),
            },
        )
    }
}

fn data<'a>(s: &'a CpuStorage, l: &Layout) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("attention: f32 expected")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("attention: contiguous input expected")
    };
    Ok(&v[a..b])
}

impl Attention {
    fn visible(&self, b: usize, t: usize, i: usize, j: usize) -> bool {
        self.key_mask[b * t + j] > 0.0 && (!self.causal || j <= i)
    }
}

impl CustomOp3 for Attention {
    fn name(&self) -> &'static str {
        "attention"
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
        let (q, k, v) = (data(s1, l1)?, data(s2, l2)?, data(s3, l3)?);
        let (b, h, t, dh) = l1.shape().dims4()?;
        if l2.shape() != l1.shape() || l3.shape() != l1.shape() || self.key_mask.len() != b * t {
            candle_core::bail!("attention: inconsistent shapes");
        }
        let scale = 1.0 / (dh as f32).sqrt();
        let keep = 1.0 / (1.0 - self.dropout);
        let mut out = vec![0f32; b * h * t * dh];
        let mut probs = vec![0f32; b * h * t * t];
        let mut raw = vec![0f32; b * h * t * t];
        out.par_chunks_mut(t * dh)
            .zip(probs.par_chunks_mut(t * t))
            .zip(raw.par_chunks_mut(t * t))
            .enumerate()
            .for_each(|(bh, ((o, p), pr))| {
                let bi = bh / h;
                let base = bh * t * dh;
                let mut rng = self.seed.map(|s| {
                    ChaCha8Rng::seed_from_u64(s ^ (bh as u64).wrapping_mul(0x9E37_79B9_7F4A_7C15))
                });
                for i in 0..t {
                    let qi = &q[base + i * dh..base + (i + 1) * dh];
                    let row = &mut pr[i * t..(i + 1) * t];
                    let mut mx = f32::NEG_INFINITY;
                    for j in 0..t {
                        row[j] = if self.visible(bi, t, i, j) {
                            let kj = &k[base + j * dh..base + (j + 1) * dh];
                            qi.iter().zip(kj).map(|(a, c)| a * c).sum::<f32>() * scale
                        } else {
                            f32::NEG_INFINITY
                        };
                        mx = mx.max(row[j]);
                    }
                    if mx == f32::NEG_INFINITY {
                        // a query on padding sees nothing: its output is zero and unused
                        row.iter_mut().for_each(|x| *x = 0.0);
                        continue;
                    }
                    let mut sum = 0f32;
                    for x in row.iter_mut() {
                        *x = (*x - mx).exp();
                        sum += *x;
                    }
                    let inv = 1.0 / sum;
                    row.iter_mut().for_each(|x| *x *= inv);
                    let prow = &mut p[i * t..(i + 1) * t];
                    for j in 0..t {
                        prow[j] = match rng.as_mut() {
                            Some(r) if self.dropout > 0.0 => {
                                if r.random::<f32>() < self.dropout {
                                    0.0
                                } else {
                                    row[j] * keep
                                }
                            }
                            _ => row[j],
                        };
                    }
                    let oi = &mut o[i * dh..(i + 1) * dh];
                    for j in 0..t {
                        let w = prow[j];
                        if w != 0.0 {
                            let vj = &v[base + j * dh..base + (j + 1) * dh];
                            oi.iter_mut().zip(vj).for_each(|(a, c)| *a += w * c);
                        }
                    }
                }
            });
        *self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))? = (probs, raw);
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        q: &Tensor,
        k: &Tensor,
        v: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>, Option<Tensor>)> {
        let (b, h, t, dh) = q.dims4()?;
        let qv = q.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let kv = k.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let vv = v.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let go = grad.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let (probs, raw) = self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?
            .clone();
        if probs.len() != b * h * t * t {
            candle_core::bail!("attention backward without its forward");
        }
        let scale = 1.0 / (dh as f32).sqrt();
        let mut dq = vec![0f32; b * h * t * dh];
        let mut dk = vec![0f32; b * h * t * dh];
        let mut dv = vec![0f32; b * h * t * dh];
        dq.par_chunks_mut(t * dh)
            .zip(dk.par_chunks_mut(t * dh))
            .zip(dv.par_chunks_mut(t * dh))
            .enumerate()
            .for_each(|(bh, ((dqs, dks), dvs))| {
                let base = bh * t * dh;
                let p = &probs[bh * t * t..(bh + 1) * t * t];
                let pr = &raw[bh * t * t..(bh + 1) * t * t];
                let mut dp = vec![0f32; t];
                for i in 0..t {
                    let goi = &go[base + i * dh..base + (i + 1) * dh];
                    // dV += p_ij dO_i ; dP_ij = dO_i · V_j
                    for j in 0..t {
                        let pij = p[i * t + j];
                        let vj = &vv[base + j * dh..base + (j + 1) * dh];
                        if pij != 0.0 {
                            dvs[j * dh..(j + 1) * dh]
                                .iter_mut()
                                .zip(goi)
                                .for_each(|(a, g)| *a += pij * g);
                        }
                        dp[j] = goi.iter().zip(vj).map(|(a, c)| a * c).sum::<f32>();
                    }
                    // through dropout: dP_raw = dP · (p / raw) (0 where dropped, 1/(1−p) kept)
                    let mut dot = 0f32;
                    for j in 0..t {
                        let r = pr[i * t + j];
                        dp[j] = if r > 0.0 {
                            dp[j] * p[i * t + j] / r
                        } else {
                            0.0
                        };
                        dot += dp[j] * r;
                    }
                    let qi = &qv[base + i * dh..base + (i + 1) * dh];
                    for j in 0..t {
                        let ds = pr[i * t + j] * (dp[j] - dot) * scale;
                        if ds != 0.0 {
                            let kj = &kv[base + j * dh..base + (j + 1) * dh];
                            dqs[i * dh..(i + 1) * dh]
                                .iter_mut()
                                .zip(kj)
                                .for_each(|(a, c)| *a += ds * c);
                            dks[j * dh..(j + 1) * dh]
                                .iter_mut()
                                .zip(qi)
                                .for_each(|(a, c)| *a += ds * c);
                        }
                    }
                }
            });
        let dev = q.device();
        let shape = (b, h, t, dh);
        Ok((
            Some(Tensor::from_vec(dq, shape, dev)?),
            Some(Tensor::from_vec(dk, shape, dev)?),
            Some(Tensor::from_vec(dv, shape, dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{D, Device, Var};

    use super::*;

    fn reference(q: &Tensor, k: &Tensor, v: &Tensor, mask: &[f32], causal: bool) -> Tensor {
        let (b, _, t, dh) = q.dims4().unwrap();
        let mut bias = vec![0f32; b * t * t];
        for s in 0..b {
            for i in 0..t {
                for j in 0..t {
                    if !(mask[s * t + j] > 0.0 && (!causal || j <= i)) {
                        bias[(s * t + i) * t + j] = -1e9;
                    }
                }
            }
        }
        let bias = Tensor::from_vec(bias, (b, 1, t, t), q.device()).unwrap();
        let s = (q.matmul(&k.t().unwrap()).unwrap() / (dh as f64).sqrt())
            .unwrap()
            .broadcast_add(&bias)
            .unwrap();
        candle_nn::ops::softmax(&s, D::Minus1)
            .unwrap()
            .matmul(v)
            .unwrap()
    }

    #[test]
    fn matches_plain_candle_without_dropout() {
        let dev = Device::Cpu;
        let (b, h, t, dh) = (3, 2, 5, 4);
        let n = b * h * t * dh;
        let mk = |s: usize| -> Vec<f32> {
            (0..n)
                .map(|i| (((i * s) % 97) as f32 / 40.0) - 1.2)
                .collect()
        };
        // left padding: sequence 0 has 2 padded positions, sequence 2 one
        let mask = vec![0., 0., 1., 1., 1., 1., 1., 1., 1., 1., 0., 1., 1., 1., 1.];
        for causal in [true, false] {
            let (q1, k1, v1) = (
                Var::from_vec(mk(7), (b, h, t, dh), &dev).unwrap(),
                Var::from_vec(mk(11), (b, h, t, dh), &dev).unwrap(),
                Var::from_vec(mk(13), (b, h, t, dh), &dev).unwrap(),
            );
            let (q2, k2, v2) = (
                Var::from_vec(mk(7), (b, h, t, dh), &dev).unwrap(),
                Var::from_vec(mk(11), (b, h, t, dh), &dev).unwrap(),
                Var::from_vec(mk(13), (b, h, t, dh), &dev).unwrap(),
            );
            let fused = Attention::apply(
                q1.as_tensor(),
                k1.as_tensor(),
                v1.as_tensor(),
                mask.clone(),
                causal,
                0.0,
                None,
            )
            .unwrap();
            let plain = reference(
                q2.as_tensor(),
                k2.as_tensor(),
                v2.as_tensor(),
                &mask,
                causal,
            );
            // compare outputs on non-padded queries; weight the loss the same way
            let w: Vec<f32> = (0..n)
                .map(|i| ((i % 9) as f32 - 4.0) * mask[(i / (h * t * dh)) * t + (i / dh) % t])
                .collect();
            let w = Tensor::from_vec(w, (b, h, t, dh), &dev).unwrap();
            let (lf, lp) = (
                fused.mul(&w).unwrap().sum_all().unwrap(),
                plain.mul(&w).unwrap().sum_all().unwrap(),
            );
            let (a, c) = (
                lf.to_scalar::<f32>().unwrap(),
                lp.to_scalar::<f32>().unwrap(),
            );
            assert!(
                (a - c).abs() < 1e-4 * c.abs().max(1.0),
                "causal {causal}: {a} vs {c}"
            );
            let (g1, g2) = (lf.backward().unwrap(), lp.backward().unwrap());
            for (x, y) in [(&q1, &q2), (&k1, &k2), (&v1, &v2)] {
                let gx = g1
                    .get(x.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                let gy = g2
                    .get(y.as_tensor())
                    .unwrap()
                    .flatten_all()
                    .unwrap()
                    .to_vec1::<f32>()
                    .unwrap();
                for (p, r) in gx.iter().zip(&gy) {
                    assert!((p - r).abs() < 1e-4, "causal {causal}: {p} vs {r}");
                }
            }
        }
    }

    #[test]
    fn dropout_is_deterministic_and_unbiased() {
        let dev = Device::Cpu;
        let (b, h, t, dh) = (2, 2, 8, 4);
        let x = Tensor::ones((b, h, t, dh), candle_core::DType::F32, &dev).unwrap();
        let mask = vec![1.0; b * t];
        let a = Attention::apply(&x, &x, &x, mask.clone(), true, 0.5, Some(3))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        let c = Attention::apply(&x, &x, &x, mask, true, 0.5, Some(3))
            .unwrap()
            .flatten_all()
            .unwrap()
            .to_vec1::<f32>()
            .unwrap();
        assert_eq!(a, c);
        let mean = a.iter().sum::<f32>() / a.len() as f32;
        assert!((mean - 1.0).abs() < 0.3, "{mean}");
    }
}
