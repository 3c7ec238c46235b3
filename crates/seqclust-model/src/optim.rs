//! The optimiser: AdamW over the dense parameters (flat, with state that checkpoints carry),
//! lazy AdamW over the item table's touched rows, a warm-up + cosine learning-rate schedule
//! and global-norm gradient clipping.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::item_table::{AdamParams, adamw_update};
use crate::model::SeqModel;
use crate::objective::Gradients;

/// Learning-rate schedule: linear warm-up to `peak`, then cosine decay to `peak × floor`.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct Schedule {
    /// Peak learning rate.
    pub peak: f32,
    /// Warm-up steps.
    pub warmup: u64,
    /// Total steps (decay ends here).
    pub total: u64,
    /// Final learning rate as a fraction of the peak.
    pub floor: f32,
}

impl Schedule {
    /// The learning rate at step `s` (from 1).
    pub fn at(&self, s: u64) -> f32 {
        if self.warmup > 0 && s <= self.warmup {
            return self.peak * s as f32 / self.warmup as f32;
        }
        let span = self.total.saturating_sub(self.warmup).max(1);
        let progress = ((s.saturating_sub(self.warmup)) as f32 / span as f32).min(1.0);
        let cos = 0.5 * (1.0 + (std::f32::consts::PI * progress).cos());
        self.peak * (self.floor + (1.0 - self.floor) * cos)
    }
}

/// Optimiser state.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Optimizer {
    /// Hyper-parameters (the learning rate is set per step from the schedule).
    pub params: AdamParams,
    /// Steps taken.
    pub step: u64,
    /// Update every item-table row each step (dense AdamW over a materialised gradient, what
    /// PyTorch's default optimiser does to an `nn.Embedding`) instead of only the rows the
    /// batch touched: the baseline the lazy update is measured against (`seqclust bench
    /// encoder --table dense`). Off by default.
    pub dense_table: bool,
    m: Vec<f32>,
    v: Vec<f32>,
}

/// What a step did.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct StepReport {
    /// Learning rate used.
    pub lr: f32,
    /// Global gradient norm before clipping.
    pub grad_norm: f32,
    /// Whether clipping scaled the gradient.
    pub clipped: bool,
}

impl Optimizer {
    /// State for a model's dense parameters.
    pub fn new(model: &SeqModel, params: AdamParams) -> Result<Self> {
        let n = model.dense_len()?;
        Ok(Optimizer {
            params,
            step: 0,
            dense_table: false,
            m: vec![0.0; n],
            v: vec![0.0; n],
        })
    }

    /// The moments, for checkpoints.
    pub fn moments(&self) -> (&[f32], &[f32]) {
        (&self.m, &self.v)
    }

    /// Restores the moments and the step.
    pub fn restore(&mut self, step: u64, m: Vec<f32>, v: Vec<f32>) -> Result<()> {
        if m.len() != self.m.len() || v.len() != self.v.len() {
            return Err(Error::Incompatible(format!(
                "optimiser state of {} values for {} parameters",
                m.len(),
                self.m.len()
            )));
        }
        self.step = step;
        self.m = m;
        self.v = v;
        Ok(())
    }

    /// One update with learning rate `lr`, clipping the global norm at `clip` when given.
    pub fn apply(
        &mut self,
        model: &mut SeqModel,
        g: &mut Gradients,
        lr: f32,
        clip: Option<f32>,
    ) -> Result<StepReport> {
        if g.dense.len() != self.m.len() {
            return Err(Error::Shape(format!(
                "{} dense gradients for {} parameters",
                g.dense.len(),
                self.m.len()
            )));
        }
        let norm = g.sq_norm().sqrt() as f32;
        let clipped = matches!(clip, Some(c) if norm > c && norm.is_finite());
        if let Some(c) = clip.filter(|_| clipped) {
            g.scale(c / norm);
        }
        self.step += 1;
        let p = AdamParams { lr, ..self.params };
        let mut w = model.dense_values()?;
        adamw_update(&mut w, &g.dense, &mut self.m, &mut self.v, &p, self.step);
        model.set_dense_values(&w)?;
        if self.dense_table {
            let d = model.items.dim();
            let mut full = vec![0f32; model.items.rows() * d];
            for (k, &id) in g.items.ids.iter().enumerate() {
                let r = id as usize * d;
                if let Some(row) = full.get_mut(r..r + d) {
                    row.copy_from_slice(&g.items.rows[k * d..(k + 1) * d]);
                }
            }
            model.items.apply_dense(&full, &p, self.step)?;
        } else {
            model.items.apply(&g.items, &p, self.step)?;
        }
        Ok(StepReport {
            lr,
            grad_norm: norm,
            clipped,
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn schedule_shape() {
        let s = Schedule {
            peak: 1.0,
            warmup: 10,
            total: 110,
            floor: 0.1,
        };
        assert!((s.at(5) - 0.5).abs() < 1e-6);
        assert!((s.at(10) - 1.0).abs() < 1e-6);
        assert!((s.at(60) - 0.55).abs() < 1e-5);
        assert!((s.at(110) - 0.1).abs() < 1e-6);
        assert!((s.at(1000) - 0.1).abs() < 1e-6);
    }
}
