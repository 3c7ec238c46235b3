//! GRU and LSTM layers (PyTorch's gate conventions) written with candle primitives.
//! Padding is masked: at a padded position the state is carried over unchanged, so with left
//! padding a sequence sees zeros until its first event, exactly as if it had no padding.

use candle_core::{D, Tensor};
use candle_nn::VarBuilder;

use crate::error::{Ctx, Result};
use crate::layers::Linear;

/// The cell type.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Cell {
    /// Gated recurrent unit: gates r, z, n.
    Gru,
    /// Long short-term memory: gates i, f, g, o.
    Lstm,
}

/// One recurrent layer.
#[derive(Debug, Clone)]
pub struct RecurrentLayer {
    cell: Cell,
    hidden: usize,
    input_proj: Linear,
    hidden_proj: Linear,
}

impl RecurrentLayer {
    /// Weights under `vb` (`ih`, `hh`).
    pub fn new(cell: Cell, input: usize, hidden: usize, vb: VarBuilder<'_>) -> Result<Self> {
        let gates = match cell {
            Cell::Gru => 3,
            Cell::Lstm => 4,
        };
        Ok(RecurrentLayer {
            cell,
            hidden,
            input_proj: Linear::new(input, gates * hidden, true, vb.pp("ih"))?,
            hidden_proj: Linear::new(hidden, gates * hidden, true, vb.pp("hh"))?,
        })
    }

    /// Runs over `x` (`b × t × input`) with `mask` (`b × t × 1`, 1 = event; `mask_values` the
    /// same as a slice); returns every position's hidden state (`b × t × hidden`). With
    /// `fused`, a GRU runs as one op over all steps ([`crate::kernels::gru`]), keeping what
    /// its backward needs only when `train`.
    pub fn forward(
        &self,
        x: &Tensor,
        mask: &Tensor,
        mask_values: &[f32],
        fused: bool,
        train: bool,
    ) -> Result<Tensor> {
        let (b, t, _) = x.dims3().ctx("recurrent input")?;
        let hd = self.hidden;
        if fused && self.cell == Cell::Gru {
            let flat = |l: &Linear| -> Result<[Tensor; 2]> {
                let (w, bias) = l.parts();
                let bias = bias.ok_or_else(|| crate::error::Error::Shape("GRU bias".into()))?;
                Ok([w.flatten_all().ctx("gru params")?, bias.clone()])
            };
            let [w_ih, b_ih] = flat(&self.input_proj)?;
            let [w_hh, b_hh] = flat(&self.hidden_proj)?;
            let params = Tensor::cat(&[w_ih, b_ih, w_hh, b_hh], 0).ctx("gru params")?;
            let x = x.contiguous().ctx("gru input")?;
            return crate::kernels::gru::Gru::apply(&x, &params, mask_values.to_vec(), hd, train)
                .ctx("gru");
        }
        let xp = self.input_proj.forward(x)?;
        let mut h = Tensor::zeros((b, hd), x.dtype(), x.device()).ctx("h0")?;
        let mut c = h.clone();
        let mut states = Vec::with_capacity(t);
        for step in 0..t {
            let xs = xp
                .narrow(1, step, 1)
                .ctx("step input")?
                .squeeze(1)
                .ctx("step input")?;
            let m = mask
                .narrow(1, step, 1)
                .ctx("step mask")?
                .squeeze(1)
                .ctx("step mask")?;
            let hp = self.hidden_proj.forward(&h)?;
            let gate = |a: &Tensor, i: usize| a.narrow(D::Minus1, i * hd, hd).ctx("gate");
            let (h_new, c_new) = match self.cell {
                Cell::Gru => {
                    let r = candle_nn::ops::sigmoid(&(gate(&xs, 0)? + gate(&hp, 0)?).ctx("r")?)
                        .ctx("r")?;
                    let z = candle_nn::ops::sigmoid(&(gate(&xs, 1)? + gate(&hp, 1)?).ctx("z")?)
                        .ctx("z")?;
                    let n = (gate(&xs, 2)? + r.mul(&gate(&hp, 2)?).ctx("n")?)
                        .ctx("n")?
                        .tanh()
                        .ctx("n")?;
                    // h' = (1 − z) n + z h = n + z (h − n)
                    let hn = (&n + z.mul(&(&h - &n).ctx("h")?).ctx("h")?).ctx("h")?;
                    (hn, c.clone())
                }
                Cell::Lstm => {
                    let pre = (&xs + &hp).ctx("lstm gates")?;
                    let i = candle_nn::ops::sigmoid(&gate(&pre, 0)?).ctx("i")?;
                    let f = candle_nn::ops::sigmoid(&gate(&pre, 1)?).ctx("f")?;
                    let g = gate(&pre, 2)?.tanh().ctx("g")?;
                    let o = candle_nn::ops::sigmoid(&gate(&pre, 3)?).ctx("o")?;
                    let cn = (f.mul(&c).ctx("c")? + i.mul(&g).ctx("c")?).ctx("c")?;
                    let hn = o.mul(&cn.tanh().ctx("c")?).ctx("h")?;
                    (hn, cn)
                }
            };
            // carry the state through padding: h = h + m (h' − h)
            h = (&h + (h_new - &h).ctx("mask")?.broadcast_mul(&m).ctx("mask")?).ctx("mask")?;
            if self.cell == Cell::Lstm {
                c = (&c + (c_new - &c).ctx("mask")?.broadcast_mul(&m).ctx("mask")?).ctx("mask")?;
            }
            states.push(h.clone());
        }
        Tensor::stack(&states, 1).ctx("stack states")
    }
}
