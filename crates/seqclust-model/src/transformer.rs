//! SASRec-style self-attention blocks: pre-LayerNorm, multi-head attention (causal, or
//! bidirectional for Cloze), a ReLU feed-forward, residual dropout.

use candle_core::{D, Tensor};
use candle_nn::VarBuilder;
use rand::RngExt;
use rand::rngs::ChaCha8Rng;

use crate::error::{Ctx, Result};
use crate::kernels::block::{BlockShape, Mode};
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

    /// The parameters as one flat vector in the order of [`crate::kernels::block`].
    fn packed(&self) -> Result<Tensor> {
        let flat = |t: &Tensor| t.flatten_all().ctx("block params");
        let lin = |l: &Linear| -> Result<(Tensor, Tensor)> {
            let (w, b) = l.parts();
            let b = b.ok_or_else(|| crate::error::Error::Shape("block bias".into()))?;
            Ok((flat(w)?, b.clone()))
        };
        let (g1, b1) = self.ln1.parts();
        let (g2, b2) = self.ln2.parts();
        let (wq, bq) = lin(&self.q)?;
        let (wk, bk) = lin(&self.k)?;
        let (wv, bv) = lin(&self.v)?;
        let (wo, bo) = lin(&self.o)?;
        let (w1, bf1) = lin(&self.ff1)?;
        let (w2, bf2) = lin(&self.ff2)?;
        Tensor::cat(
            &[
                g1.clone(),
                b1.clone(),
                wq,
                wk,
                wv,
                bq,
                bk,
                bv,
                wo,
                bo,
                g2.clone(),
                b2.clone(),
                w1,
                bf1,
                w2,
                bf2,
            ],
            0,
        )
        .ctx("block params")
    }

    /// `x`: `b × t × dim`; `mask`: `b × t` (1 = event). Returns the block's output with
    /// padding positions zeroed. With `fused: Some(mode)` the whole block runs as one op
    /// ([`crate::kernels::block`]); `mode` says whether to keep activations and whether only
    /// the last position is wanted (`b × 1 × dim`). With `None` it runs as plain candle ops
    /// (same values, any device, every position).
    pub fn forward(
        &self,
        x: &Tensor,
        mask: &[f32],
        causal: bool,
        p: f32,
        mut rng: Option<&mut ChaCha8Rng>,
        fused: Option<Mode>,
    ) -> Result<Tensor> {
        let (b, t, d) = x.dims3().ctx("block input")?;
        if let Some(mode) = fused {
            let shape = BlockShape {
                dim: d,
                heads: self.heads,
                ff: self.ff1.parts().0.dim(0).ctx("block")?,
                causal,
                dropout: p,
            };
            let seed = rng.map(|r| r.random::<u64>());
            let x = x.contiguous().ctx("block input")?;
            return crate::kernels::block::Block::apply(
                &x,
                &self.packed()?,
                shape,
                mask.to_vec(),
                seed,
                mode,
            )
            .ctx("transformer block");
        }
        let h = self.heads;
        let dh = d / h;
        let a = self.ln1.forward(x, false)?;
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
        let bias = attention_bias(mask, b, t, causal, x.device())?;
        let scores = (q.matmul(&k.t().ctx("kᵀ")?).ctx("qkᵀ")? / (dh as f64).sqrt()).ctx("scale")?;
        let scores = scores.broadcast_add(&bias).ctx("mask")?;
        let attn = candle_nn::ops::softmax(&scores, D::Minus1).ctx("softmax")?;
        let attn = dropout(&attn, p, rng.as_deref_mut())?;
        let attended = attn.matmul(&v).ctx("attention")?;
        let ctxv = attended
            .transpose(1, 2)
            .ctx("merge")?
            .reshape((b, t, d))
            .ctx("merge")?;
        let x = (x + dropout(&self.o.forward(&ctxv)?, p, rng.as_deref_mut())?).ctx("residual")?;
        let f = self.ln2.forward(&x, false)?;
        let f = self
            .ff2
            .forward(&self.ff1.forward(&f)?.relu().ctx("relu")?)?;
        let y = (x + dropout(&f, p, rng)?).ctx("residual")?;
        let m = crate::layers::mask_tensor(mask, b, t, y.device())?;
        y.broadcast_mul(&m).ctx("mask")
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
