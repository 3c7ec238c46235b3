//! A whole GRU layer over all time steps as one op (PyTorch's gate conventions), with
//! back-propagation through time written out by hand:
//!
//! ```text
//! r = σ(Wᵢᵣx + bᵢᵣ + Wₕᵣh + bₕᵣ)    z = σ(Wᵢ𝓏x + bᵢ𝓏 + Wₕ𝓏h + bₕ𝓏)
//! n = tanh(Wᵢₙx + bᵢₙ + r ⊙ (Wₕₙh + bₕₙ))    h' = n + z ⊙ (h − n)
//! ```
//!
//! and the padding carry `h ← h + m (h' − h)`. The batch is cut into fixed chunks of
//! sequences, each run through every step by one thread (sequences are independent), so a
//! step costs one small GEMM and no synchronisation; weight gradients are summed per chunk
//! and reduced in chunk order, which keeps results identical for any thread count.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use multiversion::multiversion;
use rayon::prelude::*;

use super::{
    cpu_f32, flat, gemm_f32, give_buffers, linear_dw, linear_dx, linear_fwd, sigmoid, sum_parts,
    take_buffer, tanh,
};

/// Sequences per chunk (fixed, so results do not depend on the thread count).
const CHUNK: usize = 16;
/// Sequences per chunk of an inference forward.
const INFER_CHUNK: usize = 64;

/// Offsets of the packed parameters `[W_ih (3h × in), b_ih, W_hh (3h × h), b_hh]`.
#[derive(Debug, Clone, Copy)]
struct Packed {
    input: usize,
    hidden: usize,
}

impl Packed {
    fn len(self) -> usize {
        let g = 3 * self.hidden;
        g * self.input + g + g * self.hidden + g
    }
    fn split(self, p: &[f32]) -> (&[f32], &[f32], &[f32], &[f32]) {
        let g = 3 * self.hidden;
        let (w_ih, rest) = p.split_at(g * self.input);
        let (b_ih, rest) = rest.split_at(g);
        let (w_hh, b_hh) = rest.split_at(g * self.hidden);
        (w_ih, b_ih, w_hh, b_hh)
    }
    fn split_mut(self, p: &mut [f32]) -> (&mut [f32], &mut [f32], &mut [f32], &mut [f32]) {
        let g = 3 * self.hidden;
        let (w_ih, rest) = p.split_at_mut(g * self.input);
        let (b_ih, rest) = rest.split_at_mut(g);
        let (w_hh, b_hh) = rest.split_at_mut(g * self.hidden);
        (w_ih, b_ih, w_hh, b_hh)
    }
}

/// What the backward needs, each `b × t × h` (gate values, the recurrent part of the `n`
/// pre-activation, and the state before each step).
#[derive(Default)]
struct Saved {
    r: Vec<f32>,
    z: Vec<f32>,
    n: Vec<f32>,
    hn: Vec<f32>,
    h_prev: Vec<f32>,
}

impl Drop for Saved {
    fn drop(&mut self) {
        give_buffers(
            [
                &mut self.r,
                &mut self.z,
                &mut self.n,
                &mut self.hn,
                &mut self.h_prev,
            ]
            .map(std::mem::take),
        );
    }
}

/// The op for one batch.
pub struct Gru {
    /// `b × t`: 1 for events, 0 for padding.
    mask: Vec<f32>,
    hidden: usize,
    /// Keep the gate values for a backward (off for inference).
    save: bool,
    saved: Mutex<Saved>,
}

impl Gru {
    /// Runs the layer over `x` (`b × t × in`, contiguous); `params` is the flat concatenation
    /// `[W_ih, b_ih, W_hh, b_hh]`. Returns every position's state (`b × t × hidden`).
    /// Without `save` nothing is kept for a backward (inference).
    pub fn apply(
        x: &Tensor,
        params: &Tensor,
        mask: Vec<f32>,
        hidden: usize,
        save: bool,
    ) -> candle_core::Result<Tensor> {
        x.apply_op2(
            params,
            Gru {
                mask,
                hidden,
                save,
                saved: Mutex::new(Saved::default()),
            },
        )
    }
}

/// Unit `k`'s gates from its input (`x`) and recurrent (`p`) pre-activations:
/// `(r, z, n, W_hn h + b_hn)`; the new state is `n + z (h − n)`.
#[inline(always)]
fn gates(x: &[f32], p: &[f32], hd: usize, k: usize) -> (f32, f32, f32, f32) {
    let r = sigmoid(x[k] + p[k]);
    let z = sigmoid(x[hd + k] + p[hd + k]);
    let hn = p[2 * hd + k];
    (r, z, tanh(x[2 * hd + k] + r * hn), hn)
}

/// The gates of one step for `rows` sequences. `xp` rows have stride `xs`, `hp` and `h` are
/// dense; writes the new state into `h` and the saved values at stride `ss`.
#[multiversion(targets("x86_64+avx2+fma"))]
#[allow(clippy::too_many_arguments)]
fn step_fwd(
    hd: usize,
    xp: &[f32],
    xs: usize,
    hp: &[f32],
    mask: &[f32],
    h: &mut [f32],
    out: &mut [f32],
    saved: [&mut [f32]; 5],
    ss: usize,
) {
    let [sr, sz, sn, shn, sh] = saved;
    for (j, &m) in mask.iter().enumerate() {
        let x = &xp[j * xs..j * xs + 3 * hd];
        let p = &hp[j * 3 * hd..(j + 1) * 3 * hd];
        let hj = &mut h[j * hd..(j + 1) * hd];
        let o = j * ss;
        sh[o..o + hd].copy_from_slice(hj);
        for k in 0..hd {
            let (r, z, n, hn) = gates(x, p, hd, k);
            hj[k] += m * (n + z * (hj[k] - n) - hj[k]);
            sr[o + k] = r;
            sz[o + k] = z;
            sn[o + k] = n;
            shn[o + k] = hn;
        }
        out[j * ss..j * ss + hd].copy_from_slice(hj);
    }
}

/// `hp[j] += h[j] · W_hhᵀ` for every row `j` (`w_t` is h × 3h): per unit of `h`, one axpy
/// over a 3h-long row, which vectorises and keeps `hp[j]` in L1.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
fn recurrent_infer(hd: usize, g: usize, w_t: &[f32], h: &[f32], hp: &mut [f32]) {
    const B: usize = 64;
    for (hj, hpj) in h.chunks_exact(hd).zip(hp.chunks_exact_mut(g)) {
        let mut lo = 0;
        while lo < g {
            let n = B.min(g - lo);
            if n == B {
                // a fixed-size accumulator stays in vector registers across the k loop
                let mut acc = [0f32; B];
                acc.copy_from_slice(&hpj[lo..lo + B]);
                for (k, &hk) in hj.iter().enumerate() {
                    let w: &[f32; B] = w_t[k * g + lo..k * g + lo + B]
                        .try_into()
                        .unwrap_or(&[0.0; B]);
                    for i in 0..B {
                        acc[i] += hk * w[i];
                    }
                }
                hpj[lo..lo + B].copy_from_slice(&acc);
            } else {
                for (k, &hk) in hj.iter().enumerate() {
                    let w = &w_t[k * g + lo..k * g + lo + n];
                    for (o, &wv) in hpj[lo..lo + n].iter_mut().zip(w) {
                        *o += hk * wv;
                    }
                }
            }
            lo += n;
        }
    }
}

/// [`step_fwd`] without the saved values (inference). The gates are split into slices and
/// zipped so that the loop over units has no bounds checks and vectorises.
#[multiversion(targets("x86_64+avx512f+avx2+fma", "x86_64+avx2+fma"))]
#[allow(clippy::too_many_arguments)]
fn step_infer(
    hd: usize,
    xp: &[f32],
    xs: usize,
    hp: &[f32],
    mask: &[f32],
    h: &mut [f32],
    out: &mut [f32],
    os: usize,
) {
    for (j, &m) in mask.iter().enumerate() {
        let x = &xp[j * xs..j * xs + 3 * hd];
        let p = &hp[j * 3 * hd..(j + 1) * 3 * hd];
        let (xr, x) = x.split_at(hd);
        let (xz, xn) = x.split_at(hd);
        let (pr, p) = p.split_at(hd);
        let (pz, pn) = p.split_at(hd);
        let hj = &mut h[j * hd..(j + 1) * hd];
        for (hk, (((&xr, &xz), &xn), ((&pr, &pz), &pn))) in hj
            .iter_mut()
            .zip(xr.iter().zip(xz).zip(xn).zip(pr.iter().zip(pz).zip(pn)))
        {
            let r = sigmoid(xr + pr);
            let z = sigmoid(xz + pz);
            let n = tanh(xn + r * pn);
            *hk += m * (n + z * (*hk - n) - *hk);
        }
        out[j * os..j * os + hd].copy_from_slice(hj);
    }
}

/// The backward of one step's gates: consumes `dh` (+ the output gradient `dy`), writes the
/// pre-activation gradients of the input part (`dxp`) and the recurrent part (`dhp`), and
/// leaves in `dh` the direct part of the previous state's gradient.
#[multiversion(targets("x86_64+avx2+fma"))]
#[allow(clippy::too_many_arguments)]
fn step_bwd(
    hd: usize,
    mask: &[f32],
    dy: &[f32],
    saved: [&[f32]; 5],
    ss: usize,
    dh: &mut [f32],
    dxp: &mut [f32],
    dhp: &mut [f32],
    gs: usize,
) {
    let [sr, sz, sn, shn, sh] = saved;
    for (j, &m) in mask.iter().enumerate() {
        let o = j * ss;
        let g0 = j * gs;
        let dhj = &mut dh[j * hd..(j + 1) * hd];
        for k in 0..hd {
            let g = dhj[k] + dy[o + k];
            let (r, z, n, hn, prev) = (sr[o + k], sz[o + k], sn[o + k], shn[o + k], sh[o + k]);
            let dnew = m * g;
            let dn = dnew * (1.0 - z);
            let dz = dnew * (prev - n);
            let dan = dn * (1.0 - n * n);
            let dar = dan * hn * r * (1.0 - r);
            let daz = dz * z * (1.0 - z);
            dxp[g0 + k] = dar;
            dxp[g0 + hd + k] = daz;
            dxp[g0 + 2 * hd + k] = dan;
            dhp[g0 + k] = dar;
            dhp[g0 + hd + k] = daz;
            dhp[g0 + 2 * hd + k] = dan * r;
            dhj[k] = (1.0 - m) * g + dnew * z;
        }
    }
}

impl CustomOp2 for Gru {
    fn name(&self) -> &'static str {
        "gru"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, p) = (cpu_f32("gru", s1, l1)?, cpu_f32("gru", s2, l2)?);
        let (b, t, inp) = l1.shape().dims3()?;
        let hd = self.hidden;
        let pk = Packed {
            input: inp,
            hidden: hd,
        };
        if p.len() != pk.len() || self.mask.len() != b * t {
            candle_core::bail!("gru: inconsistent shapes");
        }
        let (w_ih, b_ih, w_hh, b_hh) = pk.split(p);
        let g = 3 * hd;
        // inference: W_hhᵀ (h × 3h), so that a step is row updates that stay in registers
        let w_hh_t: Vec<f32> = if self.save {
            Vec::new()
        } else {
            let mut wt = vec![0f32; hd * g];
            for (i, row) in w_hh.chunks_exact(hd).enumerate() {
                for (k, &v) in row.iter().enumerate() {
                    wt[k * g + i] = v;
                }
            }
            wt
        };
        let mut out = vec![0f32; b * t * hd];
        let mut sv: [Vec<f32>; 5] = std::array::from_fn(|_| {
            if self.save {
                take_buffer(b * t * hd)
            } else {
                Vec::new()
            }
        });
        // inference keeps nothing per step, so a wider chunk (wider recurrent GEMMs) fits in cache
        let chunk = if self.save { CHUNK } else { INFER_CHUNK };
        let per = chunk * t * hd;
        let saved_chunks: Vec<Option<[&mut [f32]; 5]>> = if self.save {
            let [r, z, n, hn, hs] = &mut sv;
            r.chunks_mut(per)
                .zip(z.chunks_mut(per))
                .zip(n.chunks_mut(per))
                .zip(hn.chunks_mut(per))
                .zip(hs.chunks_mut(per))
                .map(|((((r, z), n), hn), hs)| Some([r, z, n, hn, hs]))
                .collect()
        } else {
            (0..b.div_ceil(chunk)).map(|_| None).collect()
        };
        out.par_chunks_mut(per)
            .zip(saved_chunks.into_par_iter())
            .enumerate()
            .for_each(|(c, (o, mut saved))| {
                let rows = o.len() / (t * hd);
                let s0 = c * chunk;
                // input projections of every step at once
                let mut xp = take_buffer(rows * t * g);
                linear_fwd(
                    &x[s0 * t * inp..(s0 + rows) * t * inp],
                    w_ih,
                    b_ih,
                    (rows * t, inp, g),
                    &mut xp,
                );
                let mut h = vec![0f32; rows * hd];
                let mut hp = vec![0f32; rows * g];
                let mut m = vec![0f32; rows];
                for s in 0..t {
                    for (j, hpj) in hp.chunks_exact_mut(g).enumerate() {
                        hpj.copy_from_slice(b_hh);
                        m[j] = self.mask[(s0 + j) * t + s];
                    }
                    if saved.is_none() {
                        // small row counts: an axpy per unit beats a GEMM call per step
                        recurrent_infer(hd, g, &w_hh_t, &h, &mut hp);
                    } else {
                        // hpᵀ (3h × rows) += W_hh (3h × h) · hᵀ: the long side is the gate axis
                        // SAFETY: shapes as allocated above.
                        unsafe {
                            gemm_f32(
                                gemm::Parallelism::None,
                                g,
                                rows,
                                hd,
                                hp.as_mut_ptr(),
                                1,
                                g as isize,
                                true,
                                w_hh.as_ptr(),
                                hd as isize,
                                1,
                                h.as_ptr(),
                                1,
                                hd as isize,
                            );
                        }
                    }
                    let at = s * hd;
                    match &mut saved {
                        Some([r, z, n, hn, hs]) => step_fwd(
                            hd,
                            &xp[s * g..],
                            t * g,
                            &hp,
                            &m,
                            &mut h,
                            &mut o[at..],
                            [
                                &mut r[at..],
                                &mut z[at..],
                                &mut n[at..],
                                &mut hn[at..],
                                &mut hs[at..],
                            ],
                            t * hd,
                        ),
                        None => step_infer(
                            hd,
                            &xp[s * g..],
                            t * g,
                            &hp,
                            &m,
                            &mut h,
                            &mut o[at..],
                            t * hd,
                        ),
                    }
                }
                give_buffers([xp]);
            });
        let [r, z, n, hn, h_prev] = sv;
        *self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))? = Saved {
            r,
            z,
            n,
            hn,
            h_prev,
        };
        Ok((CpuStorage::F32(out), Shape::from((b, t, hd))))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, t, inp) = x.dims3()?;
        let hd = self.hidden;
        let g = 3 * hd;
        let pk = Packed {
            input: inp,
            hidden: hd,
        };
        let xv = flat(x)?;
        let pv = flat(params)?;
        let dy = flat(grad)?;
        let saved = std::mem::take(
            &mut *self
                .saved
                .lock()
                .map_err(|_| candle_core::Error::Msg("poisoned".into()))?,
        );
        if saved.r.len() != b * t * hd || dy.len() != b * t * hd {
            candle_core::bail!("gru backward without its forward");
        }
        let (w_ih, _, w_hh, _) = pk.split(&pv);
        let mut dx = vec![0f32; b * t * inp];
        let parts: Vec<Vec<f32>> = dx
            .par_chunks_mut(CHUNK * t * inp)
            .enumerate()
            .map(|(c, dxc)| {
                let rows = dxc.len() / (t * inp);
                let s0 = c * CHUNK;
                let span = s0 * t * hd..(s0 + rows) * t * hd;
                let sv = [
                    &saved.r[span.clone()],
                    &saved.z[span.clone()],
                    &saved.n[span.clone()],
                    &saved.hn[span.clone()],
                    &saved.h_prev[span.clone()],
                ];
                let dyc = &dy[span.clone()];
                let mut dxp = vec![0f32; rows * t * g];
                let mut dhp = vec![0f32; rows * t * g];
                let mut dh = vec![0f32; rows * hd];
                let mut m = vec![0f32; rows];
                for s in (0..t).rev() {
                    for (j, mj) in m.iter_mut().enumerate() {
                        *mj = self.mask[(s0 + j) * t + s];
                    }
                    let at = s * hd;
                    step_bwd(
                        hd,
                        &m,
                        &dyc[at..],
                        sv.map(|v| &v[at..]),
                        t * hd,
                        &mut dh,
                        &mut dxp[s * g..],
                        &mut dhp[s * g..],
                        t * g,
                    );
                    // dhᵀ (h × rows) += W_hhᵀ (h × 3h) · dhpᵀ (3h × rows)
                    // SAFETY: shapes as allocated above.
                    unsafe {
                        gemm_f32(
                            gemm::Parallelism::None,
                            hd,
                            rows,
                            g,
                            dh.as_mut_ptr(),
                            1,
                            hd as isize,
                            true,
                            w_hh.as_ptr(),
                            1,
                            hd as isize,
                            dhp.as_ptr().add(s * g),
                            1,
                            (t * g) as isize,
                        );
                    }
                }
                let mut part = vec![0f32; pk.len()];
                let (dw_ih, db_ih, dw_hh, db_hh) = pk.split_mut(&mut part);
                let xc = &xv[s0 * t * inp..(s0 + rows) * t * inp];
                linear_dw(&dxp, xc, (rows * t, inp, g), dw_ih, db_ih);
                linear_dw(&dhp, sv[4], (rows * t, hd, g), dw_hh, db_hh);
                linear_dx(&dxp, w_ih, (rows * t, inp, g), dxc, false);
                part
            })
            .collect();
        let dp = sum_parts(parts, pk.len());
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (b, t, inp), dev)?),
            Some(Tensor::from_vec(dp, pk.len(), dev)?),
        ))
    }
}
