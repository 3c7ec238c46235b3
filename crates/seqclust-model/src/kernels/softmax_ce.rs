//! Softmax cross-entropy over a whole item table without materialising the logits.
//!
//! `loss = mean_i [ logsumexp_j (h_i · e_j) − h_i · e_{y_i} ]` over the items `j` that are
//! not masked. The forward pass streams blocks of items through a GEMM and keeps a running
//! maximum and sum per row; the backward pass recomputes each block's logits and forms
//! `dH = P E` and `dE = Pᵀ H` block by block. Memory is O(block), not O(rows × items), which
//! removes the largest tensors (and their page faults) from a training step.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use rayon::prelude::*;

use super::gemm_f32;

/// Rows per work item.
const ROWS: usize = 64;
/// Items per block.
const ITEMS: usize = 1024;

/// One lane's backward output: its row blocks' `dH` and its `dE` accumulator.
type LaneGrads = (Vec<(usize, Vec<f32>)>, Vec<f32>);

/// The op: labels and the items excluded from the softmax are fixed per call.
pub struct SoftmaxCe {
    labels: Vec<u32>,
    /// Items `< skip` (padding, out-of-vocabulary) are not part of the softmax.
    skip: usize,
    /// Per-row log-sum-exp from the forward pass, for the backward.
    lse: Mutex<Vec<f32>>,
}

impl SoftmaxCe {
    /// Cross-entropy of `h` (`n × d`) against `e` (`v × d`) with `labels[i]` the item of row `i`.
    pub fn apply(
        h: &Tensor,
        e: &Tensor,
        labels: Vec<u32>,
        skip: usize,
    ) -> candle_core::Result<Tensor> {
        h.apply_op2(
            e,
            SoftmaxCe {
                labels,
                skip,
                lse: Mutex::new(Vec::new()),
            },
        )
    }
}

fn slice<'a>(s: &'a CpuStorage, l: &Layout, what: &str) -> candle_core::Result<&'a [f32]> {
    let CpuStorage::F32(v) = s else {
        candle_core::bail!("{what}: f32 expected")
    };
    let Some((a, b)) = l.contiguous_offsets() else {
        candle_core::bail!("{what}: contiguous input expected")
    };
    Ok(&v[a..b])
}

fn lanes(n_blocks: usize) -> usize {
    n_blocks.clamp(1, 4)
}

/// Logits of rows `r0..r1` against items `c0..c1` into `s` (row-major, `c1 − c0` columns).
#[allow(clippy::too_many_arguments)] // a GEMM call: shapes and offsets
fn block_logits(
    h: &[f32],
    e: &[f32],
    d: usize,
    r0: usize,
    r1: usize,
    c0: usize,
    c1: usize,
    s: &mut [f32],
) {
    let (m, n) = (r1 - r0, c1 - c0);
    // SAFETY: h has rows r0..r1 of d values, e has rows c0..c1 of d values, s has m × n.
    unsafe {
        gemm_f32(
            gemm::Parallelism::None,
            m,
            n,
            d,
            s.as_mut_ptr(),
            n as isize,
            1,
            false,
            h.as_ptr().add(r0 * d),
            d as isize,
            1,
            e.as_ptr().add(c0 * d),
            1,
            d as isize,
        );
    }
}

impl CustomOp2 for SoftmaxCe {
    fn name(&self) -> &'static str {
        "softmax-cross-entropy"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let h = slice(s1, l1, "states")?;
        let e = slice(s2, l2, "items")?;
        let (n, d) = l1.shape().dims2()?;
        let (v, d2) = l2.shape().dims2()?;
        if d != d2 || self.labels.len() != n {
            candle_core::bail!(
                "softmax-ce: states {n}×{d}, items {v}×{d2}, {} labels",
                self.labels.len()
            );
        }
        let blocks = n.div_ceil(ROWS);
        let per_block: Vec<(Vec<f32>, f64)> = (0..blocks)
            .into_par_iter()
            .map(|b| {
                let (r0, r1) = (b * ROWS, ((b + 1) * ROWS).min(n));
                let m = r1 - r0;
                let mut mx = vec![f32::NEG_INFINITY; m];
                let mut sum = vec![0f32; m];
                let mut s = vec![0f32; m * ITEMS];
                let mut c0 = self.skip.min(v);
                while c0 < v {
                    let c1 = (c0 + ITEMS).min(v);
                    let w = c1 - c0;
                    block_logits(h, e, d, r0, r1, c0, c1, &mut s[..m * w]);
                    for i in 0..m {
                        let row = &s[i * w..(i + 1) * w];
                        let bm = row.iter().cloned().fold(f32::NEG_INFINITY, f32::max);
                        if bm > mx[i] {
                            sum[i] *= (mx[i] - bm).exp();
                            mx[i] = bm;
                        }
                        sum[i] += row.iter().map(|x| (x - mx[i]).exp()).sum::<f32>();
                    }
                    c0 = c1;
                }
                let mut loss = 0f64;
                let mut lse = vec![0f32; m];
                for i in 0..m {
                    lse[i] = mx[i] + sum[i].ln();
                    let y = self.labels[r0 + i] as usize;
                    let target: f32 = h[(r0 + i) * d..(r0 + i + 1) * d]
                        .iter()
                        .zip(&e[y * d..(y + 1) * d])
                        .map(|(a, b)| a * b)
                        .sum();
                    loss += f64::from(lse[i] - target);
                }
                (lse, loss)
            })
            .collect();
        let mut lse = Vec::with_capacity(n);
        let mut total = 0f64;
        for (l, loss) in per_block {
            lse.extend(l);
            total += loss;
        }
        *self
            .lse
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))? = lse;
        Ok((
            CpuStorage::F32(vec![(total / n.max(1) as f64) as f32]),
            Shape::from(()),
        ))
    }

    fn bwd(
        &self,
        arg1: &Tensor,
        arg2: &Tensor,
        _res: &Tensor,
        grad_res: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (n, d) = arg1.dims2()?;
        let (v, _) = arg2.dims2()?;
        let h = arg1.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let e = arg2.contiguous()?.flatten_all()?.to_vec1::<f32>()?;
        let g = grad_res.to_scalar::<f32>()? / n.max(1) as f32;
        let lse = self
            .lse
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))?
            .clone();
        if lse.len() != n {
            candle_core::bail!("softmax-ce backward without its forward");
        }
        let blocks = n.div_ceil(ROWS);
        let nl = lanes(blocks);
        // each lane: its row blocks' dH, and its own dE accumulator (merged in lane order)
        let lanes_out: Vec<LaneGrads> = (0..nl)
            .into_par_iter()
            .map(|l| {
                let mut de = vec![0f32; v * d];
                let mut dhs = Vec::new();
                let mut p = vec![0f32; ROWS * ITEMS];
                let mut b = l;
                while b < blocks {
                    let (r0, r1) = (b * ROWS, ((b + 1) * ROWS).min(n));
                    let m = r1 - r0;
                    let mut dh = vec![0f32; m * d];
                    let mut c0 = self.skip.min(v);
                    while c0 < v {
                        let c1 = (c0 + ITEMS).min(v);
                        let w = c1 - c0;
                        let pb = &mut p[..m * w];
                        block_logits(&h, &e, d, r0, r1, c0, c1, pb);
                        for i in 0..m {
                            let y = self.labels[r0 + i] as usize;
                            let row = &mut pb[i * w..(i + 1) * w];
                            for x in row.iter_mut() {
                                *x = (*x - lse[r0 + i]).exp() * g;
                            }
                            if (c0..c1).contains(&y) {
                                row[y - c0] -= g;
                            }
                        }
                        // SAFETY: shapes as documented: P m×w, E rows c0..c1, H rows r0..r1.
                        unsafe {
                            gemm_f32(
                                gemm::Parallelism::None,
                                m,
                                d,
                                w,
                                dh.as_mut_ptr(),
                                d as isize,
                                1,
                                true,
                                pb.as_ptr(),
                                w as isize,
                                1,
                                e.as_ptr().add(c0 * d),
                                d as isize,
                                1,
                            );
                            gemm_f32(
                                gemm::Parallelism::None,
                                w,
                                d,
                                m,
                                de.as_mut_ptr().add(c0 * d),
                                d as isize,
                                1,
                                true,
                                pb.as_ptr(),
                                1,
                                w as isize,
                                h.as_ptr().add(r0 * d),
                                d as isize,
                                1,
                            );
                        }
                        c0 = c1;
                    }
                    dhs.push((b, dh));
                    b += nl;
                }
                (dhs, de)
            })
            .collect();
        let mut dh = vec![0f32; n * d];
        let mut de = vec![0f32; v * d];
        for (dhs, lde) in lanes_out {
            for (b, blk) in dhs {
                dh[b * ROWS * d..b * ROWS * d + blk.len()].copy_from_slice(&blk);
            }
            de.iter_mut().zip(&lde).for_each(|(a, b)| *a += b);
        }
        let dev = arg1.device();
        Ok((
            Some(Tensor::from_vec(dh, (n, d), dev)?),
            Some(Tensor::from_vec(de, (v, d), dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    use candle_core::{Device, Var};

    use super::*;

    fn reference(h: &Tensor, e: &Tensor, labels: &[u32], skip: usize) -> Tensor {
        let v = e.dim(0).unwrap();
        let logits = h.matmul(&e.t().unwrap()).unwrap();
        let mut bias = vec![0f32; v];
        bias[..skip].iter_mut().for_each(|b| *b = -1e9);
        let logits = logits
            .broadcast_add(&Tensor::from_vec(bias, (1, v), h.device()).unwrap())
            .unwrap();
        let y = Tensor::from_slice(labels, labels.len(), h.device()).unwrap();
        candle_nn::loss::cross_entropy(&logits, &y).unwrap()
    }

    #[test]
    fn matches_plain_candle_forward_and_backward() {
        let dev = Device::Cpu;
        // sizes that cross the row and item block boundaries
        for (n, v, d) in [(3, 7, 4), (130, 2100, 16), (64, 1024, 8)] {
            let hv: Vec<f32> = (0..n * d)
                .map(|i| ((i * 37 % 101) as f32 / 50.0) - 1.0)
                .collect();
            let ev: Vec<f32> = (0..v * d)
                .map(|i| ((i * 53 % 97) as f32 / 48.0) - 1.0)
                .collect();
            let labels: Vec<u32> = (0..n).map(|i| (2 + (i * 7) % (v - 2)) as u32).collect();
            let (h1, e1) = (
                Var::from_vec(hv.clone(), (n, d), &dev).unwrap(),
                Var::from_vec(ev.clone(), (v, d), &dev).unwrap(),
            );
            let (h2, e2) = (
                Var::from_vec(hv, (n, d), &dev).unwrap(),
                Var::from_vec(ev, (v, d), &dev).unwrap(),
            );
            let fused =
                SoftmaxCe::apply(h1.as_tensor(), e1.as_tensor(), labels.clone(), 2).unwrap();
            let plain = reference(h2.as_tensor(), e2.as_tensor(), &labels, 2);
            let (a, b) = (
                fused.to_scalar::<f32>().unwrap(),
                plain.to_scalar::<f32>().unwrap(),
            );
            assert!(
                (a - b).abs() < 1e-4 * b.abs().max(1.0),
                "n{n} v{v}: {a} vs {b}"
            );
            let (g1, g2) = (fused.backward().unwrap(), plain.backward().unwrap());
            for (x, y) in [(&h1, &h2), (&e1, &e2)] {
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
                let max = gy.iter().fold(0f32, |m, v| m.max(v.abs()));
                for (p, q) in gx.iter().zip(&gy) {
                    assert!(
                        (p - q).abs() <= 1e-5 + 1e-3 * max,
                        "n{n} v{v}: grad {p} vs {q}"
                    );
                }
            }
        }
    }
}
