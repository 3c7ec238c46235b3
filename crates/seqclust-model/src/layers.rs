//! Small building blocks on candle: deterministic dropout, LayerNorm from primitive ops (so
//! that its backward is recorded — `candle_nn::LayerNorm` drops it on contiguous input), and
//! linear layers.

use candle_core::{D, DType, Device, Tensor};
use candle_nn::{Init, VarBuilder};
use rand::RngExt;
use rand::rngs::ChaCha8Rng;

use crate::error::{Ctx, Result};

/// Dropout with a mask drawn from `rng` (candle's CPU generator cannot be seeded, and
/// training must be deterministic for a seed). Identity when `p == 0` or not training.
pub fn dropout(x: &Tensor, p: f32, rng: Option<&mut ChaCha8Rng>) -> Result<Tensor> {
    let Some(rng) = rng else { return Ok(x.clone()) };
    if p <= 0.0 {
        return Ok(x.clone());
    }
    let keep = 1.0 / (1.0 - p);
    let mask: Vec<f32> = (0..x.elem_count())
        .map(|_| if rng.random::<f32>() < p { 0.0 } else { keep })
        .collect();
    let mask = Tensor::from_vec(mask, x.shape(), x.device()).ctx("dropout mask")?;
    x.mul(&mask).ctx("dropout")
}

/// Layer normalisation over the last dimension.
#[derive(Debug, Clone)]
pub struct LayerNorm {
    gamma: Tensor,
    beta: Tensor,
}

impl LayerNorm {
    /// Weights under `vb` (`weight` = 1, `bias` = 0).
    pub fn new(dim: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let gamma = vb
            .get_with_hints(dim, "weight", Init::Const(1.0))
            .ctx("layer norm weight")?;
        let beta = vb
            .get_with_hints(dim, "bias", Init::Const(0.0))
            .ctx("layer norm bias")?;
        Ok(LayerNorm { gamma, beta })
    }

    /// The weight γ and the bias β.
    pub fn parts(&self) -> (&Tensor, &Tensor) {
        (&self.gamma, &self.beta)
    }

    /// Normalises `x` (`… × dim`), with the fused kernel when `fused`.
    pub fn forward(&self, x: &Tensor, fused: bool) -> Result<Tensor> {
        if fused {
            let x = x.contiguous().ctx("layer norm")?;
            crate::kernels::layer_norm::LayerNorm::apply(&x, &self.gamma, &self.beta)
                .ctx("layer norm")
        } else {
            candle_nn::ops::layer_norm_slow(x, &self.gamma, &self.beta, 1e-6).ctx("layer norm")
        }
    }
}

/// `y = x Wᵀ + b` with Xavier-uniform `W` (out × in).
#[derive(Debug, Clone)]
pub struct Linear {
    w: Tensor,
    b: Option<Tensor>,
}

impl Linear {
    /// Weights under `vb`.
    pub fn new(input: usize, output: usize, bias: bool, vb: VarBuilder<'_>) -> Result<Self> {
        let bound = (6.0 / (input + output) as f64).sqrt();
        let w = vb
            .get_with_hints(
                (output, input),
                "weight",
                Init::Uniform {
                    lo: -bound,
                    up: bound,
                },
            )
            .ctx("linear weight")?;
        let b = if bias {
            Some(
                vb.get_with_hints(output, "bias", Init::Const(0.0))
                    .ctx("linear bias")?,
            )
        } else {
            None
        };
        Ok(Linear { w, b })
    }

    /// The weight (`out × in`) and the bias.
    pub fn parts(&self) -> (&Tensor, Option<&Tensor>) {
        (&self.w, self.b.as_ref())
    }

    /// Applies the layer to `… × input`.
    pub fn forward(&self, x: &Tensor) -> Result<Tensor> {
        let dims = x.dims().to_vec();
        let input = *dims.last().unwrap_or(&0);
        let rows = x.elem_count() / input.max(1);
        let y = x
            .reshape((rows, input))
            .ctx("linear reshape")?
            .matmul(&self.w.t().ctx("linear")?)
            .ctx("linear matmul")?;
        let y = match &self.b {
            Some(b) => y.broadcast_add(b).ctx("linear bias")?,
            None => y,
        };
        let mut out = dims;
        if let Some(last) = out.last_mut() {
            *last = self.w.dim(0).ctx("linear")?;
        }
        y.reshape(out).ctx("linear reshape back")
    }
}

/// An embedding table `n × dim` looked up with u32 ids of any shape.
#[derive(Debug, Clone)]
pub struct Embedding {
    table: Tensor,
    dim: usize,
}

impl Embedding {
    /// A table under `vb`, N(0, 0.02²) like BERT's.
    pub fn new(n: usize, dim: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let table = vb
            .get_with_hints(
                (n, dim),
                "weight",
                Init::Randn {
                    mean: 0.0,
                    stdev: 0.02,
                },
            )
            .ctx("embedding")?;
        Ok(Embedding { table, dim })
    }

    /// The table, `n × dim`.
    pub fn table(&self) -> &Tensor {
        &self.table
    }

    /// Rows for `ids` (`shape` of the ids), as `shape × dim`.
    pub fn forward(&self, ids: &[u32], shape: &[usize], dev: &Device) -> Result<Tensor> {
        let idx = Tensor::from_slice(ids, ids.len(), dev).ctx("embedding ids")?;
        let rows = self.table.index_select(&idx, 0).ctx("embedding lookup")?;
        let mut s = shape.to_vec();
        s.push(self.dim);
        rows.reshape(s).ctx("embedding reshape")
    }
}

/// `ids` as a u32 tensor.
pub fn ids_tensor(ids: &[u32], dev: &Device) -> Result<Tensor> {
    Tensor::from_slice(ids, ids.len(), dev).ctx("ids")
}

/// A mask vector as a `b × t × 1` f32 tensor.
pub fn mask_tensor(mask: &[f32], b: usize, t: usize, dev: &Device) -> Result<Tensor> {
    Tensor::from_slice(mask, (b, t, 1), dev)
        .ctx("mask")?
        .to_dtype(DType::F32)
        .ctx("mask")
}

/// L2-normalises the last dimension.
pub fn l2_normalize(x: &Tensor) -> Result<Tensor> {
    let n = x
        .sqr()
        .ctx("norm")?
        .sum_keepdim(D::Minus1)
        .ctx("norm")?
        .sqrt()
        .ctx("norm")?;
    x.broadcast_div(&(n + 1e-12).ctx("norm")?).ctx("normalise")
}
