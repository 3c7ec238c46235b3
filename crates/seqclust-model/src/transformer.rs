//! SASRec-style self-attention blocks: pre-LayerNorm, multi-head attention (causal, or
//! bidirectional for Cloze), a ReLU feed-forward, residual dropout.

use candle_core::{D, Tensor};
use candle_nn::VarBuilder;
use rand::rngs::ChaCha8Rng;

use crate::error::{Ctx, Result};
use crate::layers::{LayerNorm, Linear, dropout};

/// One block.
#[derive(Debug, Clone)]
pub struct Block {
    heads: usize,
    ln1: LayerNorm,
    q: Linear,
    k: Linear,
    v: Linear,
    o: Linear,
    ln2: LayerNorm,
    ff1: Linear,
    ff2: Linear,
}

impl Block {
    /// Weights under `vb`.
    pub fn new(dim: usize, heads: usize, ff: usize, vb: VarBuilder<'_>) -> Result<Self> {
        Ok(Block {
            heads,
            ln1: LayerNorm::new(dim, vb.pp("ln1"))?,
            q: Linear::new(dim, dim, true, vb.pp("q"))?,
            k: Linear::new(dim, dim, true, vb.pp("k"))?,
            v: Linear::new(dim, dim, true, vb.pp("v"))?,
            o: Linear::new(dim, dim, true, vb.pp("o"))?,
            ln2: LayerNorm::new(dim, vb.pp("ln2"))?,
            ff1: Linear::new(dim, ff, true, vb.pp("ff1"))?,
            ff2: Linear::new(ff, dim, true, vb.pp("ff2"))?,
        })
    }

    /// `x`: `b × t × dim`; `mask`: `b × t` (1 = event). With `fused` the attention and the
    /// layer norms run as fused kernels; otherwise as plain candle ops.
    pub fn forward(
        &self,
        x: &Tensor,
        mask: &[f32],
        causal: bool,
        p: f32,
        mut rng: Option<&mut ChaCha8Rng>,
        fused: bool,
    ) -> Result<Tensor> {
        let (b, t, d) = x.dims3().ctx("block input")?;
        let h = self.heads;
        let dh = d / h;
        let a = self.ln1.forward(x, fused)?;
        let split = |y: Tensor| -> Result<Tensor> {
            y.reshape((b, t, h, dh))
                .ctx("heads")?
                .transpose(1, 2)
                .ctx("heads")?
                .contiguous()
                .ctx("heads")
        };
        let q = split(self.q.forward(&a)?)?;
        let k = split(self.k.forward(&a)?)?;
        let v = split(self.v.forward(&a)?)?;
        let attended = if fused {
            let seed = rng.as_deref_mut().map(rand::RngExt::random::<u64>);
            crate::kernels::attention::Attention::apply(&q, &k, &v, mask.to_vec(), causal, p, seed)
                .ctx("attention")?
        } else {
            let bias = attention_bias(mask, b, t, causal, x.device())?;
            let scores =
                (q.matmul(&k.t().ctx("kᵀ")?).ctx("qkᵀ")? / (dh as f64).sqrt()).ctx("scale")?;
            let scores = scores.broadcast_add(&bias).ctx("mask")?;
            let attn = candle_nn::ops::softmax(&scores, D::Minus1).ctx("softmax")?;
            let attn = dropout(&attn, p, rng.as_deref_mut())?;
            attn.matmul(&v).ctx("attention")?
        };
        let ctxv = attended
            .transpose(1, 2)
            .ctx("merge")?
            .reshape((b, t, d))
            .ctx("merge")?;
        let x = (x + dropout(&self.o.forward(&ctxv)?, p, rng.as_deref_mut())?).ctx("residual")?;
        let f = self.ln2.forward(&x, fused)?;
        let f = self
            .ff2
            .forward(&self.ff1.forward(&f)?.relu().ctx("relu")?)?;
        (x + dropout(&f, p, rng)?).ctx("residual")
    }
}

/// The additive attention bias for a left-padded batch: key `j` is visible from query `i` when
/// it is an event and (for causal attention) `j ≤ i`. Fully masked rows (queries on padding)
/// get a finite bias, so they stay finite; their outputs are never used.
pub fn attention_bias(
    mask: &[f32],
    b: usize,
    t: usize,
    causal: bool,
    dev: &candle_core::Device,
) -> Result<Tensor> {
    let mut bias = vec![0f32; b * t * t];
    for s in 0..b {
        for i in 0..t {
            for j in 0..t {
                let visible = mask[s * t + j] > 0.0 && (!causal || j <= i);
                if !visible {
                    bias[(s * t + i) * t + j] = -1e9;
                }
            }
        }
    }
    Tensor::from_vec(bias, (b, 1, t, t), dev).ctx("attention bias")
}
