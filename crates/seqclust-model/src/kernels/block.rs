//! A whole pre-LayerNorm Transformer block as one op, forward and backward by hand:
//!
//! ```text
//! a  = LN₁(x)                    qkv = a W_qkvᵀ + b_qkv
//! c  = MHA(q, k, v)              per (sequence, head): P = dropout(softmax(q kᵀ/√dₕ + mask)),
//!                                c = P v; dS = P ⊙ (dP − rowsum(dP ⊙ P)) on the pre-dropout P
//! x₁ = x + dropout(c W_oᵀ + b_o)
//! f  = LN₂(x₁)                   r = relu(f W₁ᵀ + b₁)
//! y  = m ⊙ (x₁ + dropout(r W₂ᵀ + b₂))       (m: 1 on events, 0 on padding)
//! ```
//!
//! Candle records each small op of a block as its own tensor with its own backward, and most
//! of a step went to those allocations and elementwise passes rather than to the matrix
//! products. Here the batch is cut into fixed chunks of sequences; one thread runs a chunk
//! through the whole block (the chunk's activations stay in cache), every matrix product is
//! a GEMM, and the weight gradients are summed per chunk and reduced in chunk order, so the
//! result does not depend on the thread count.

use std::sync::Mutex;

use candle_core::{CpuStorage, CustomOp2, Layout, Shape, Tensor};
use multiversion::multiversion;
use rand::rngs::ChaCha8Rng;
use rand::{Rng, SeedableRng};
use rayon::prelude::*;

use super::layer_norm::{rows_bwd, rows_fwd};
use super::{
    cpu_f32, exp, flat, gemm_f32, give_buffers, linear_dw, linear_dx, linear_fwd, sum_map,
    sum_map2, sum_parts, take_buffer,
};

/// Sequences per chunk (fixed, so results do not depend on the thread count).
const CHUNK: usize = 8;

/// The block's shape and settings.
#[derive(Debug, Clone, Copy)]
pub struct BlockShape {
    /// Model width.
    pub dim: usize,
    /// Attention heads (`dim` divisible by it).
    pub heads: usize,
    /// Feed-forward width.
    pub ff: usize,
    /// Causal (SASRec) or bidirectional (Cloze) attention.
    pub causal: bool,
    /// Dropout on attention probabilities and both residual branches.
    pub dropout: f32,
}

/// Offsets into the packed parameters, in this order: `ln1.weight, ln1.bias, q.weight,
/// k.weight, v.weight, q.bias, k.bias, v.bias, o.weight, o.bias, ln2.weight, ln2.bias,
/// ff1.weight, ff1.bias, ff2.weight, ff2.bias`.
#[derive(Debug, Clone, Copy)]
struct Offsets {
    g1: usize,
    b1: usize,
    wqkv: usize,
    bqkv: usize,
    wo: usize,
    bo: usize,
    g2: usize,
    b2: usize,
    w1: usize,
    bf1: usize,
    w2: usize,
    bf2: usize,
    len: usize,
}

impl Offsets {
    fn new(d: usize, ff: usize) -> Offsets {
        let mut at = 0;
        let mut take = |n: usize| {
            let o = at;
            at += n;
            o
        };
        let g1 = take(d);
        let b1 = take(d);
        let wqkv = take(3 * d * d);
        let bqkv = take(3 * d);
        let wo = take(d * d);
        let bo = take(d);
        let g2 = take(d);
        let b2 = take(d);
        let w1 = take(ff * d);
        let bf1 = take(ff);
        let w2 = take(d * ff);
        let bf2 = take(d);
        Offsets {
            g1,
            b1,
            wqkv,
            bqkv,
            wo,
            bo,
            g2,
            b2,
            w1,
            bf1,
            w2,
            bf2,
            len: at,
        }
    }
}

/// Activations kept for the backward, each the full batch (chunk `c` at `c · CHUNK` rows).
#[derive(Default)]
struct Saved {
    xh1: Vec<f32>,
    inv1: Vec<f32>,
    a: Vec<f32>,
    qkv: Vec<f32>,
    /// Attention probabilities before dropout, `b × heads × t × t`.
    praw: Vec<f32>,
    /// After dropout (empty without dropout).
    pdrop: Vec<f32>,
    ctx: Vec<f32>,
    /// Residual dropout scales (empty without dropout).
    drop1: Vec<f32>,
    drop2: Vec<f32>,
    xh2: Vec<f32>,
    inv2: Vec<f32>,
    f: Vec<f32>,
    r: Vec<f32>,
}

impl Saved {
    /// Buffers for `b` sequences of `t` (from the pool).
    fn for_rows(b: usize, t: usize, d: usize, heads: usize, ff: usize, drop: bool) -> Saved {
        let n = b * t;
        let z = take_buffer;
        Saved {
            xh1: z(n * d),
            inv1: z(n),
            a: z(n * d),
            qkv: z(n * 3 * d),
            praw: z(b * heads * t * t),
            pdrop: if drop {
                z(b * heads * t * t)
            } else {
                Vec::new()
            },
            ctx: z(n * d),
            drop1: if drop { z(n * d) } else { Vec::new() },
            drop2: if drop { z(n * d) } else { Vec::new() },
            xh2: z(n * d),
            inv2: z(n),
            f: z(n * d),
            r: z(n * ff),
        }
    }
}

impl Drop for Saved {
    fn drop(&mut self) {
        give_buffers(
            [
                &mut self.xh1,
                &mut self.inv1,
                &mut self.a,
                &mut self.qkv,
                &mut self.praw,
                &mut self.pdrop,
                &mut self.ctx,
                &mut self.drop1,
                &mut self.drop2,
                &mut self.xh2,
                &mut self.inv2,
                &mut self.f,
                &mut self.r,
            ]
            .map(std::mem::take),
        );
    }
}

/// What a forward computes and keeps.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Mode {
    /// Every position, with the activations kept for the backward.
    Train,
    /// Every position, nothing kept (inference through a non-final block).
    Infer,
    /// Inference of the last position only (`b × 1 × dim`): keys and values of every
    /// position, the rest of the block for the last one — the user vector of last-position
    /// pooling needs nothing else from the final block.
    InferLast,
}

/// The op for one batch.
pub struct Block {
    shape: BlockShape,
    /// `b × t`: 1 for events, 0 for padding.
    mask: Vec<f32>,
    seed: Option<u64>,
    mode: Mode,
    saved: Mutex<Saved>,
}

impl Block {
    /// Runs the block over `x` (`b × t × dim`, contiguous) with the packed parameters (see
    /// the order above). Dropout applies when `seed` is given; `mode` says what to compute
    /// and whether to keep the activations for a backward.
    pub fn apply(
        x: &Tensor,
        params: &Tensor,
        shape: BlockShape,
        mask: Vec<f32>,
        seed: Option<u64>,
        mode: Mode,
    ) -> candle_core::Result<Tensor> {
        x.apply_op2(
            params,
            Block {
                shape,
                mask,
                seed,
                mode,
                saved: Mutex::new(Saved::default()),
            },
        )
    }

    /// Number of packed parameters for a shape.
    pub fn params_len(shape: BlockShape) -> usize {
        Offsets::new(shape.dim, shape.ff).len
    }

    fn dropping(&self) -> bool {
        self.seed.is_some() && self.shape.dropout > 0.0
    }
}

/// Fills `m` with dropout scales (0 or 1/(1 − p)).
fn draw(m: &mut [f32], p: f32, r: &mut ChaCha8Rng) {
    let cut = (f64::from(p) * f64::from(u32::MAX)) as u32;
    let keep = 1.0 / (1.0 - p);
    for v in m.iter_mut() {
        *v = if r.next_u32() < cut { 0.0 } else { keep };
    }
}

/// Softmax of one score row over the visible keys `..end` with `vis` (1 = visible),
/// scaled by `scale`; invisible keys get 0, and a row with no visible key is all zero.
#[multiversion(targets("x86_64+avx2+fma"))]
fn softmax_row(row: &mut [f32], vis: &[f32], end: usize, scale: f32) {
    let (head, rest) = row.split_at_mut(end);
    rest.fill(0.0);
    let vis = &vis[..end];
    let mut mx = f32::NEG_INFINITY;
    for (v, &m) in head.iter_mut().zip(vis) {
        *v = if m > 0.0 {
            *v * scale
        } else {
            f32::NEG_INFINITY
        };
        mx = mx.max(*v);
    }
    if mx == f32::NEG_INFINITY {
        head.fill(0.0);
        return;
    }
    // exp(−∞ − mx) is clamped, not 0: the visibility factor zeroes it
    for (v, &m) in head.iter_mut().zip(vis) {
        *v = exp(*v - mx) * m;
    }
    let inv = 1.0 / sum_map(head, |v| v);
    head.iter_mut().for_each(|v| *v *= inv);
}

/// `dS = P ⊙ (dP' − Σⱼ dP' ⊙ P) · scale` for one row, where `dP' = dP ⊙ dropout scale`.
#[multiversion(targets("x86_64+avx2+fma"))]
fn softmax_row_bwd(dp: &mut [f32], praw: &[f32], pdrop: Option<&[f32]>, keep: f32, scale: f32) {
    if let Some(pd) = pdrop {
        for (v, &p) in dp.iter_mut().zip(pd) {
            *v = if p != 0.0 { *v * keep } else { 0.0 };
        }
    }
    let dot = sum_map2(dp, praw, |a, b| a * b);
    for (v, &p) in dp.iter_mut().zip(praw) {
        *v = p * (*v - dot) * scale;
    }
}

/// `a ⊙ b`, `a += b ⊙ c` and friends over equal-length slices.
#[multiversion(targets("x86_64+avx2+fma"))]
fn mul_into(out: &mut [f32], a: &[f32], b: &[f32]) {
    for i in 0..out.len() {
        out[i] = a[i] * b[i];
    }
}

#[multiversion(targets("x86_64+avx2+fma"))]
fn relu(v: &mut [f32]) {
    v.iter_mut().for_each(|x| *x = x.max(0.0));
}

#[multiversion(targets("x86_64+avx2+fma"))]
fn relu_bwd(d: &mut [f32], r: &[f32]) {
    for i in 0..d.len() {
        d[i] = if r[i] > 0.0 { d[i] } else { 0.0 };
    }
}

/// Raw-pointer GEMM on sub-matrices of the chunk buffers: `C (m × n) (+)= A (m × k) · B`,
/// each given as (pointer, row stride, column stride).
///
/// # Safety
/// As [`gemm_f32`].
#[allow(clippy::too_many_arguments)]
unsafe fn mm(
    (m, n, k): (usize, usize, usize),
    c: (*mut f32, usize, usize),
    accumulate: bool,
    a: (*const f32, usize, usize),
    b: (*const f32, usize, usize),
) {
    // SAFETY: forwarded from the caller.
    unsafe {
        gemm_f32(
            gemm::Parallelism::None,
            m,
            n,
            k,
            c.0,
            c.1 as isize,
            c.2 as isize,
            accumulate,
            a.0,
            a.1 as isize,
            a.2 as isize,
            b.0,
            b.1 as isize,
            b.2 as isize,
        );
    }
}

/// Mutable views of one chunk's slice of each saved buffer.
struct ChunkOut<'a> {
    out: &'a mut [f32],
    xh1: &'a mut [f32],
    inv1: &'a mut [f32],
    a: &'a mut [f32],
    qkv: &'a mut [f32],
    praw: &'a mut [f32],
    pdrop: &'a mut [f32],
    ctx: &'a mut [f32],
    drop1: &'a mut [f32],
    drop2: &'a mut [f32],
    xh2: &'a mut [f32],
    inv2: &'a mut [f32],
    f: &'a mut [f32],
    r: &'a mut [f32],
}

/// Splits each buffer of `s` into per-chunk pieces (`rows` = sequences per chunk).
fn chunks<'a>(
    s: &'a mut Saved,
    out: &'a mut [f32],
    (t, d, h, ff): (usize, usize, usize, usize),
) -> Vec<ChunkOut<'a>> {
    let n = out.len().div_ceil(CHUNK * t * d);
    fn split(v: &mut [f32], per: usize, n: usize) -> Vec<&mut [f32]> {
        if v.is_empty() {
            return (0..n).map(|_| <&mut [f32]>::default()).collect();
        }
        v.chunks_mut(per).collect()
    }
    let seq = CHUNK * t;
    let mut outs = split(out, seq * d, n).into_iter();
    let mut xh1 = split(&mut s.xh1, seq * d, n).into_iter();
    let mut inv1 = split(&mut s.inv1, seq, n).into_iter();
    let mut a = split(&mut s.a, seq * d, n).into_iter();
    let mut qkv = split(&mut s.qkv, seq * 3 * d, n).into_iter();
    let mut praw = split(&mut s.praw, CHUNK * h * t * t, n).into_iter();
    let mut pdrop = split(&mut s.pdrop, CHUNK * h * t * t, n).into_iter();
    let mut ctx = split(&mut s.ctx, seq * d, n).into_iter();
    let mut drop1 = split(&mut s.drop1, seq * d, n).into_iter();
    let mut drop2 = split(&mut s.drop2, seq * d, n).into_iter();
    let mut xh2 = split(&mut s.xh2, seq * d, n).into_iter();
    let mut inv2 = split(&mut s.inv2, seq, n).into_iter();
    let mut f = split(&mut s.f, seq * d, n).into_iter();
    let mut r = split(&mut s.r, seq * ff, n).into_iter();
    let mut v = Vec::with_capacity(n);
    for _ in 0..n {
        let next = |it: &mut std::vec::IntoIter<&'a mut [f32]>| it.next().unwrap_or_default();
        v.push(ChunkOut {
            out: next(&mut outs),
            xh1: next(&mut xh1),
            inv1: next(&mut inv1),
            a: next(&mut a),
            qkv: next(&mut qkv),
            praw: next(&mut praw),
            pdrop: next(&mut pdrop),
            ctx: next(&mut ctx),
            drop1: next(&mut drop1),
            drop2: next(&mut drop2),
            xh2: next(&mut xh2),
            inv2: next(&mut inv2),
            f: next(&mut f),
            r: next(&mut r),
        });
    }
    v
}

impl Block {
    /// The visibility of key `j` for each query of sequence `s` as a 0/1 row.
    fn key_row(&self, s: usize, t: usize) -> &[f32] {
        &self.mask[s * t..(s + 1) * t]
    }

    #[allow(clippy::too_many_lines)]
    fn forward_chunk(
        &self,
        c: usize,
        x: &[f32],
        p: &[f32],
        o: &Offsets,
        co: ChunkOut<'_>,
        t: usize,
    ) {
        let BlockShape {
            dim: d,
            heads: h,
            ff,
            causal,
            dropout,
        } = self.shape;
        let dh = d / h;
        let rows = co.inv1.len();
        let seqs = rows / t;
        let s0 = c * CHUNK;
        let x = &x[s0 * t * d..(s0 * t + rows) * d];
        let mut rng = self.seed.map(|s| {
            ChaCha8Rng::seed_from_u64(s ^ (c as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15))
        });
        let drop = self.dropping();
        // 1. a = LN₁(x); qkv = a W_qkvᵀ + b
        rows_fwd(
            x,
            (&p[o.g1..o.g1 + d], &p[o.b1..o.b1 + d]),
            co.a,
            co.xh1,
            co.inv1,
        );
        linear_fwd(co.a, &p[o.wqkv..], &p[o.bqkv..], (rows, d, 3 * d), co.qkv);
        // 2. attention per (sequence, head)
        let scale = 1.0 / (dh as f32).sqrt();
        let keep = 1.0 / (1.0 - dropout);
        let cut = (f64::from(dropout) * f64::from(u32::MAX)) as u32;
        for s in 0..seqs {
            let vis = self.key_row(s0 + s, t);
            for hh in 0..h {
                let pr = &mut co.praw[(s * h + hh) * t * t..(s * h + hh + 1) * t * t];
                let q = co.qkv[s * t * 3 * d + hh * dh..].as_ptr();
                let k = co.qkv[s * t * 3 * d + d + hh * dh..].as_ptr();
                // SAFETY: q, k address t rows of dh values at row stride 3d; pr is t × t.
                unsafe {
                    mm(
                        (t, t, dh),
                        (pr.as_mut_ptr(), t, 1),
                        false,
                        (q, 3 * d, 1),
                        (k, 1, 3 * d),
                    );
                }
                for i in 0..t {
                    let end = if causal { i + 1 } else { t };
                    softmax_row(&mut pr[i * t..(i + 1) * t], vis, end, scale);
                }
                let probs: &[f32] = if drop {
                    let pd = &mut co.pdrop[(s * h + hh) * t * t..(s * h + hh + 1) * t * t];
                    let r = rng
                        .as_mut()
                        .unwrap_or_else(|| unreachable!("dropping ⇒ seed"));
                    for (a, &b) in pd.iter_mut().zip(pr.iter()) {
                        *a = if r.next_u32() < cut { 0.0 } else { b * keep };
                    }
                    pd
                } else {
                    pr
                };
                let v = co.qkv[s * t * 3 * d + 2 * d + hh * dh..].as_ptr();
                let out = co.ctx[s * t * d + hh * dh..].as_mut_ptr();
                // SAFETY: probs is t × t; v addresses t rows of dh at stride 3d; out t rows at d.
                unsafe {
                    mm(
                        (t, dh, t),
                        (out, d, 1),
                        false,
                        (probs.as_ptr(), t, 1),
                        (v, 3 * d, 1),
                    );
                }
            }
        }
        // 3. x₁ = x + dropout(ctx W_oᵀ + b_o)
        let mut x1 = vec![0f32; rows * d];
        linear_fwd(co.ctx, &p[o.wo..], &p[o.bo..], (rows, d, d), &mut x1);
        if drop {
            let r = rng
                .as_mut()
                .unwrap_or_else(|| unreachable!("dropping ⇒ seed"));
            draw(co.drop1, dropout, r);
            let y = x1.clone();
            mul_into(&mut x1, &y, co.drop1);
        }
        super::add_assign(&mut x1, x);
        // 4. f = LN₂(x₁); r = relu(f W₁ᵀ + b₁); y = x₁ + dropout(r W₂ᵀ + b₂)
        rows_fwd(
            &x1,
            (&p[o.g2..o.g2 + d], &p[o.b2..o.b2 + d]),
            co.f,
            co.xh2,
            co.inv2,
        );
        linear_fwd(co.f, &p[o.w1..], &p[o.bf1..], (rows, d, ff), co.r);
        relu(co.r);
        let mut y = vec![0f32; rows * d];
        linear_fwd(co.r, &p[o.w2..], &p[o.bf2..], (rows, ff, d), &mut y);
        if drop {
            let r = rng
                .as_mut()
                .unwrap_or_else(|| unreachable!("dropping ⇒ seed"));
            draw(co.drop2, dropout, r);
            mul_into(co.out, &y, co.drop2);
        } else {
            co.out.copy_from_slice(&y);
        }
        super::add_assign(co.out, &x1);
        for (i, row) in co.out.chunks_exact_mut(d).enumerate() {
            let m = self.mask[s0 * t + i];
            row.iter_mut().for_each(|v| *v *= m);
        }
    }

    /// [`Mode::InferLast`] for one chunk: `out` is `seqs × d`, the last position of each.
    fn forward_chunk_last(
        &self,
        c: usize,
        x: &[f32],
        p: &[f32],
        o: &Offsets,
        out: &mut [f32],
        t: usize,
    ) {
        let BlockShape {
            dim: d,
            heads: h,
            ff,
            ..
        } = self.shape;
        let dh = d / h;
        let seqs = out.len() / d;
        let rows = seqs * t;
        let s0 = c * CHUNK;
        let x = &x[s0 * t * d..(s0 * t + rows) * d];
        let mut bufs = [
            rows * d,
            rows * d,
            rows,
            rows * 2 * d,
            seqs * d,
            seqs * d,
            t,
        ]
        .map(take_buffer)
        .into_iter();
        let mut next = || bufs.next().unwrap_or_default();
        let (mut a, mut xh, mut inv, mut kv, mut q, mut cx, mut sc) =
            (next(), next(), next(), next(), next(), next(), next());
        rows_fwd(
            x,
            (&p[o.g1..o.g1 + d], &p[o.b1..o.b1 + d]),
            &mut a,
            &mut xh,
            &mut inv,
        );
        // keys and values of every position: the k and v weights follow q's in the packing
        linear_fwd(
            &a,
            &p[o.wqkv + d * d..],
            &p[o.bqkv + d..],
            (rows, d, 2 * d),
            &mut kv,
        );
        // the query of the last position
        for s in 0..seqs {
            let last = (s * t + t - 1) * d;
            xh[s * d..(s + 1) * d].copy_from_slice(&a[last..last + d]);
        }
        linear_fwd(
            &xh[..seqs * d],
            &p[o.wqkv..],
            &p[o.bqkv..],
            (seqs, d, d),
            &mut q,
        );
        let scale = 1.0 / (dh as f32).sqrt();
        for s in 0..seqs {
            let vis = self.key_row(s0 + s, t);
            for hh in 0..h {
                let k = kv[s * t * 2 * d + hh * dh..].as_ptr();
                let v = kv[s * t * 2 * d + d + hh * dh..].as_ptr();
                // SAFETY: q row of dh; k and v address t rows of dh at stride 2d; sc is t.
                unsafe {
                    mm(
                        (1, t, dh),
                        (sc.as_mut_ptr(), t, 1),
                        false,
                        (q[s * d + hh * dh..].as_ptr(), dh, 1),
                        (k, 1, 2 * d),
                    );
                }
                softmax_row(&mut sc, vis, t, scale);
                // SAFETY: sc is 1 × t; the output is dh values of row s.
                unsafe {
                    mm(
                        (1, dh, t),
                        (cx[s * d + hh * dh..].as_mut_ptr(), d, 1),
                        false,
                        (sc.as_ptr(), t, 1),
                        (v, 2 * d, 1),
                    );
                }
            }
        }
        // x₁ = x + ctx W_oᵀ + b_o (into q), f = LN₂(x₁) (into cx), then the feed-forward
        linear_fwd(&cx, &p[o.wo..], &p[o.bo..], (seqs, d, d), &mut q);
        for s in 0..seqs {
            let last = (s * t + t - 1) * d;
            super::add_assign(&mut q[s * d..(s + 1) * d], &x[last..last + d]);
        }
        rows_fwd(
            &q,
            (&p[o.g2..o.g2 + d], &p[o.b2..o.b2 + d]),
            &mut cx,
            &mut xh[..seqs * d],
            &mut inv[..seqs],
        );
        let mut r = take_buffer(seqs * ff);
        linear_fwd(&cx, &p[o.w1..], &p[o.bf1..], (seqs, d, ff), &mut r);
        relu(&mut r);
        linear_fwd(&r, &p[o.w2..], &p[o.bf2..], (seqs, ff, d), out);
        super::add_assign(out, &q);
        for (s, row) in out.chunks_exact_mut(d).enumerate() {
            let m = self.mask[(s0 + s) * t + t - 1];
            row.iter_mut().for_each(|v| *v *= m);
        }
        give_buffers([a, xh, inv, kv, q, cx, sc, r]);
    }

    /// The backward of one chunk: writes `dx` and returns the chunk's parameter gradient.
    #[allow(clippy::too_many_lines, clippy::too_many_arguments)]
    fn backward_chunk(
        &self,
        c: usize,
        dout: &[f32],
        p: &[f32],
        o: &Offsets,
        sv: &Saved,
        dx: &mut [f32],
        t: usize,
    ) -> Vec<f32> {
        let BlockShape {
            dim: d,
            heads: h,
            ff,
            causal: _,
            dropout,
        } = self.shape;
        let dh = d / h;
        let rows = dx.len() / d;
        let seqs = rows / t;
        let s0 = c * CHUNK;
        let row0 = s0 * t;
        let span = |w: usize| row0 * w..(row0 + rows) * w;
        let drop = self.dropping();
        let mut g = vec![0f32; o.len];
        // dx₂ = m ⊙ dout
        let mut dx1 = dout[span(d)].to_vec();
        for (i, row) in dx1.chunks_exact_mut(d).enumerate() {
            let m = self.mask[row0 + i];
            row.iter_mut().for_each(|v| *v *= m);
        }
        // feed-forward branch
        let mut dy = dx1.clone();
        if drop {
            mul_into(&mut dy, &dx1, &sv.drop2[span(d)]);
        }
        let r = &sv.r[span(ff)];
        {
            let (dw2, rest) = g[o.w2..].split_at_mut(d * ff);
            linear_dw(&dy, r, (rows, ff, d), dw2, &mut rest[..d]);
        }
        let mut du = vec![0f32; rows * ff];
        linear_dx(&dy, &p[o.w2..], (rows, ff, d), &mut du, false);
        relu_bwd(&mut du, r);
        {
            let (dw1, rest) = g[o.w1..].split_at_mut(ff * d);
            linear_dw(&du, &sv.f[span(d)], (rows, d, ff), dw1, &mut rest[..ff]);
        }
        let mut df = vec![0f32; rows * d];
        linear_dx(&du, &p[o.w1..], (rows, d, ff), &mut df, false);
        {
            let (dg2, rest) = g[o.g2..].split_at_mut(d);
            rows_bwd(
                &df,
                &sv.xh2[span(d)],
                &sv.inv2[span(1)],
                &p[o.g2..o.g2 + d],
                &mut dx1,
                true,
                dg2,
                &mut rest[..d],
            );
        }
        // attention branch
        let mut dy = dx1.clone();
        if drop {
            mul_into(&mut dy, &dx1, &sv.drop1[span(d)]);
        }
        {
            let (dwo, rest) = g[o.wo..].split_at_mut(d * d);
            linear_dw(&dy, &sv.ctx[span(d)], (rows, d, d), dwo, &mut rest[..d]);
        }
        let mut dctx = vec![0f32; rows * d];
        linear_dx(&dy, &p[o.wo..], (rows, d, d), &mut dctx, false);
        let qkv = &sv.qkv[span(3 * d)];
        let mut dqkv = vec![0f32; rows * 3 * d];
        let mut dp = vec![0f32; t * t];
        let scale = 1.0 / (dh as f32).sqrt();
        let keep = 1.0 / (1.0 - dropout);
        let pspan = |s: usize, hh: usize| {
            let at = ((s0 + s) * h + hh) * t * t;
            at..at + t * t
        };
        for s in 0..seqs {
            for hh in 0..h {
                let praw = &sv.praw[pspan(s, hh)];
                let pd = drop.then(|| &sv.pdrop[pspan(s, hh)]);
                let probs = pd.unwrap_or(praw);
                let base = s * t * 3 * d + hh * dh;
                let (q, k, v) = (
                    qkv[base..].as_ptr(),
                    qkv[base + d..].as_ptr(),
                    qkv[base + 2 * d..].as_ptr(),
                );
                let dout_h = dctx[s * t * d + hh * dh..].as_ptr();
                // SAFETY (all four products): sub-matrices of the chunk buffers, t rows of
                // dh values at the given row strides, and t × t score matrices.
                unsafe {
                    // dP = dO Vᵀ
                    mm(
                        (t, t, dh),
                        (dp.as_mut_ptr(), t, 1),
                        false,
                        (dout_h, d, 1),
                        (v, 1, 3 * d),
                    );
                    // dV = Pᵀ dO
                    mm(
                        (t, dh, t),
                        (dqkv[base + 2 * d..].as_mut_ptr(), 3 * d, 1),
                        false,
                        (probs.as_ptr(), 1, t),
                        (dout_h, d, 1),
                    );
                }
                for i in 0..t {
                    let row = i * t..(i + 1) * t;
                    softmax_row_bwd(
                        &mut dp[row.clone()],
                        &praw[row.clone()],
                        pd.map(|p| &p[row]),
                        keep,
                        scale,
                    );
                }
                // SAFETY: as above.
                unsafe {
                    // dQ = dS K
                    mm(
                        (t, dh, t),
                        (dqkv[base..].as_mut_ptr(), 3 * d, 1),
                        false,
                        (dp.as_ptr(), t, 1),
                        (k, 3 * d, 1),
                    );
                    // dK = dSᵀ Q
                    mm(
                        (t, dh, t),
                        (dqkv[base + d..].as_mut_ptr(), 3 * d, 1),
                        false,
                        (dp.as_ptr(), 1, t),
                        (q, 3 * d, 1),
                    );
                }
            }
        }
        {
            let (dw, rest) = g[o.wqkv..].split_at_mut(3 * d * d);
            linear_dw(
                &dqkv,
                &sv.a[span(d)],
                (rows, d, 3 * d),
                dw,
                &mut rest[..3 * d],
            );
        }
        let mut da = vec![0f32; rows * d];
        linear_dx(&dqkv, &p[o.wqkv..], (rows, d, 3 * d), &mut da, false);
        dx.copy_from_slice(&dx1);
        let (dg1, rest) = g[o.g1..].split_at_mut(d);
        rows_bwd(
            &da,
            &sv.xh1[span(d)],
            &sv.inv1[span(1)],
            &p[o.g1..o.g1 + d],
            dx,
            true,
            dg1,
            &mut rest[..d],
        );
        g
    }
}

impl CustomOp2 for Block {
    fn name(&self) -> &'static str {
        "transformer-block"
    }

    fn cpu_fwd(
        &self,
        s1: &CpuStorage,
        l1: &Layout,
        s2: &CpuStorage,
        l2: &Layout,
    ) -> candle_core::Result<(CpuStorage, Shape)> {
        let (x, p) = (cpu_f32("block", s1, l1)?, cpu_f32("block", s2, l2)?);
        let (b, t, d) = l1.shape().dims3()?;
        let BlockShape { dim, heads, ff, .. } = self.shape;
        let o = Offsets::new(d, ff);
        if d != dim || heads == 0 || d % heads != 0 || p.len() != o.len {
            candle_core::bail!("transformer block: inconsistent shapes");
        }
        if self.mask.len() != b * t {
            candle_core::bail!("transformer block: mask of the wrong length");
        }
        let n = b * t;
        match self.mode {
            Mode::Train => {}
            Mode::Infer => {
                let mut out = vec![0f32; n * d];
                out.par_chunks_mut(CHUNK * t * d)
                    .enumerate()
                    .for_each(|(c, oc)| {
                        let seqs = oc.len() / (t * d);
                        let mut sv = Saved::for_rows(seqs, t, d, heads, ff, self.dropping());
                        let mut co = chunks(&mut sv, oc, (t, d, heads, ff));
                        if let Some(co) = co.pop() {
                            self.forward_chunk(c, x, p, &o, co, t);
                        }
                    });
                return Ok((CpuStorage::F32(out), l1.shape().clone()));
            }
            Mode::InferLast => {
                let mut out = vec![0f32; b * d];
                out.par_chunks_mut(CHUNK * d)
                    .enumerate()
                    .for_each(|(c, oc)| self.forward_chunk_last(c, x, p, &o, oc, t));
                return Ok((CpuStorage::F32(out), Shape::from((b, 1, d))));
            }
        }
        let mut sv = Saved::for_rows(b, t, d, heads, ff, self.dropping());
        let mut out = vec![0f32; n * d];
        chunks(&mut sv, &mut out, (t, d, heads, ff))
            .into_par_iter()
            .enumerate()
            .for_each(|(c, co)| self.forward_chunk(c, x, p, &o, co, t));
        *self
            .saved
            .lock()
            .map_err(|_| candle_core::Error::Msg("poisoned".into()))? = sv;
        Ok((CpuStorage::F32(out), l1.shape().clone()))
    }

    fn bwd(
        &self,
        x: &Tensor,
        params: &Tensor,
        _res: &Tensor,
        grad: &Tensor,
    ) -> candle_core::Result<(Option<Tensor>, Option<Tensor>)> {
        let (b, t, d) = x.dims3()?;
        let o = Offsets::new(d, self.shape.ff);
        let p = flat(params)?;
        let dout = flat(grad)?;
        let sv = std::mem::take(
            &mut *self
                .saved
                .lock()
                .map_err(|_| candle_core::Error::Msg("poisoned".into()))?,
        );
        if sv.inv1.len() != b * t || dout.len() != b * t * d {
            candle_core::bail!("transformer block backward without its forward");
        }
        let mut dx = vec![0f32; b * t * d];
        let parts: Vec<Vec<f32>> = dx
            .par_chunks_mut(CHUNK * t * d)
            .enumerate()
            .map(|(c, dxc)| self.backward_chunk(c, &dout, &p, &o, &sv, dxc, t))
            .collect();
        let dp = sum_parts(parts, o.len);
        let dev = x.device();
        Ok((
            Some(Tensor::from_vec(dx, (b, t, d), dev)?),
            Some(Tensor::from_vec(dp, o.len, dev)?),
        ))
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use candle_core::{Device, Var};

    use super::*;

    /// Central differences through the op with dropout on (the masks are a function of the
    /// seed, so the op is a deterministic function of its inputs).
    #[test]
    fn gradients_with_dropout_match_finite_differences() {
        let dev = Device::Cpu;
        let (b, t, d) = (11, 5, 8);
        let shape = BlockShape {
            dim: d,
            heads: 2,
            ff: 16,
            causal: true,
            dropout: 0.3,
        };
        let np = Block::params_len(shape);
        let mut r = ChaCha8Rng::seed_from_u64(3);
        let mut uni = |s: f32| (r.next_u32() as f32 / u32::MAX as f32 * 2.0 - 1.0) * s;
        let mask: Vec<f32> = (0..b * t)
            .map(|i| if i % t >= (i / t) % 3 { 1.0 } else { 0.0 })
            .collect();
        let xv: Vec<f32> = (0..b * t * d).map(|_| uni(1.0)).collect();
        let mut pv: Vec<f32> = (0..np).map(|_| uni(0.4)).collect();
        let o = Offsets::new(d, 16);
        pv[o.g1..o.g1 + d].iter_mut().for_each(|v| *v += 1.0);
        pv[o.g2..o.g2 + d].iter_mut().for_each(|v| *v += 1.0);
        let w: Vec<f32> = (0..b * t * d).map(|_| uni(1.0)).collect();
        let wt = Tensor::from_vec(w, (b, t, d), &dev).unwrap();
        let loss = |x: &[f32], p: &[f32]| -> f64 {
            let x = Tensor::from_slice(x, (b, t, d), &dev).unwrap();
            let p = Tensor::from_slice(p, np, &dev).unwrap();
            let y = Block::apply(&x, &p, shape, mask.clone(), Some(9), Mode::Train).unwrap();
            f64::from(
                (y * &wt)
                    .unwrap()
                    .sum_all()
                    .unwrap()
                    .to_scalar::<f32>()
                    .unwrap(),
            )
        };
        let x = Var::from_slice(&xv, (b, t, d), &dev).unwrap();
        let p = Var::from_slice(&pv, np, &dev).unwrap();
        let y = Block::apply(
            x.as_tensor(),
            p.as_tensor(),
            shape,
            mask.clone(),
            Some(9),
            Mode::Train,
        )
        .unwrap();
        let grads = (y * &wt).unwrap().sum_all().unwrap().backward().unwrap();
        let gx = grads.get(x.as_tensor()).unwrap().flatten_all().unwrap();
        let gx = gx.to_vec1::<f32>().unwrap();
        let gp = grads.get(p.as_tensor()).unwrap().to_vec1::<f32>().unwrap();
        // small enough not to cross a ReLU kink, large enough for f32
        let eps = 1e-3f32;
        let check = |num: f64, ana: f32, what: &str| {
            let ana = f64::from(ana);
            assert!(
                (num - ana).abs() <= 3e-3 + 0.03 * ana.abs().max(num.abs()),
                "{what}: numeric {num} analytic {ana}"
            );
        };
        for i in (0..xv.len()).step_by(7) {
            let (mut up, mut dn) = (xv.clone(), xv.clone());
            up[i] += eps;
            dn[i] -= eps;
            check(
                (loss(&up, &pv) - loss(&dn, &pv)) / f64::from(2.0 * eps),
                gx[i],
                "x",
            );
        }
        for i in (0..np).step_by(5) {
            let (mut up, mut dn) = (pv.clone(), pv.clone());
            up[i] += eps;
            dn[i] -= eps;
            check(
                (loss(&xv, &up) - loss(&xv, &dn)) / f64::from(2.0 * eps),
                gp[i],
                "param",
            );
        }
        assert!(gp.iter().any(|v| *v != 0.0));
    }
}
