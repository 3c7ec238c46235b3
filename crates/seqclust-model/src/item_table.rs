//! The item embedding table, kept outside candle's autograd so that its gradient is
//! row-sparse: a step gathers the rows it needs into a leaf tensor, and the gradient of that
//! leaf, summed per row, is the table's gradient as (row ids, rows) — what lazy Adam updates
//! and what data-parallel workers exchange, in size proportional to the rows touched rather
//! than the vocabulary.
//!
//! The values are f32 while training, or int8 with one scale per row for serving
//! ([`ItemTable::quantize_in_place`]); either way they sit behind an `Arc` that the
//! [`crate::ItemScorer`] built from the table shares, so a served model holds its item table
//! once. The optimiser moments are allocated by the first update: a table that is only read
//! holds its values alone.

use std::borrow::Cow;
use std::sync::Arc;

use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand_distr::{Distribution, Normal};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::quant::Int8Rows;

/// A row-sparse gradient: sorted unique row ids and their summed gradient rows.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct SparseGrad {
    /// Row ids, sorted, unique.
    pub ids: Vec<u32>,
    /// `ids.len() × dim` gradient values.
    pub rows: Vec<f32>,
    /// Row width.
    pub dim: usize,
}

impl SparseGrad {
    /// Sums the gradient rows of repeated ids (`ids[i]` owns `grads[i*dim..]`).
    pub fn from_gathered(ids: &[u32], grads: &[f32], dim: usize) -> Result<SparseGrad> {
        if grads.len() != ids.len() * dim {
            return Err(Error::Shape(format!(
                "{} gradient values for {} ids of width {dim}",
                grads.len(),
                ids.len()
            )));
        }
        let mut order: Vec<usize> = (0..ids.len()).collect();
        order.sort_unstable_by_key(|&i| (ids[i], i));
        let mut out = SparseGrad {
            ids: Vec::new(),
            rows: Vec::new(),
            dim,
        };
        for i in order {
            let g = &grads[i * dim..(i + 1) * dim];
            if out.ids.last() == Some(&ids[i]) {
                let start = out.rows.len() - dim;
                out.rows[start..]
                    .iter_mut()
                    .zip(g)
                    .for_each(|(a, b)| *a += b);
            } else {
                out.ids.push(ids[i]);
                out.rows.extend_from_slice(g);
            }
        }
        Ok(out)
    }

    /// Adds another sparse gradient (merging rows by id).
    pub fn add(&self, other: &SparseGrad) -> Result<SparseGrad> {
        if self.dim != other.dim && !self.ids.is_empty() && !other.ids.is_empty() {
            return Err(Error::Shape(format!(
                "sparse gradients of widths {} and {}",
                self.dim, other.dim
            )));
        }
        let dim = self.dim.max(other.dim);
        let mut ids = self.ids.clone();
        ids.extend_from_slice(&other.ids);
        let mut rows = self.rows.clone();
        rows.extend_from_slice(&other.rows);
        SparseGrad::from_gathered(&ids, &rows, dim)
    }

    /// Multiplies every value (gradient clipping, averaging).
    pub fn scale(&mut self, s: f32) {
        self.rows.iter_mut().for_each(|v| *v *= s);
    }

    /// Sum of squares of the values.
    pub fn sq_norm(&self) -> f64 {
        self.rows
            .iter()
            .map(|v| f64::from(*v) * f64::from(*v))
            .sum()
    }

    /// Bytes on the wire (ids and values), for the communication figures.
    pub fn wire_bytes(&self) -> usize {
        self.ids.len() * 4 + self.rows.len() * 4
    }
}

/// Adam hyper-parameters (decoupled weight decay, as AdamW).
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
pub struct AdamParams {
    /// Learning rate.
    pub lr: f32,
    /// First-moment decay.
    pub beta1: f32,
    /// Second-moment decay.
    pub beta2: f32,
    /// Denominator epsilon.
    pub eps: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
}

impl Default for AdamParams {
    fn default() -> Self {
        AdamParams {
            lr: 1e-3,
            beta1: 0.9,
            beta2: 0.999,
            eps: 1e-8,
            weight_decay: 0.0,
        }
    }
}

/// One AdamW update of `w` in place, with moments `m`, `v`, at global step `step` (from 1).
#[inline]
pub(crate) fn adamw_update(
    w: &mut [f32],
    g: &[f32],
    m: &mut [f32],
    v: &mut [f32],
    p: &AdamParams,
    step: u64,
) {
    let bc1 = 1.0 - p.beta1.powi(step.min(i32::MAX as u64) as i32);
    let bc2 = 1.0 - p.beta2.powi(step.min(i32::MAX as u64) as i32);
    let step_size = p.lr / bc1;
    let decay = 1.0 - p.lr * p.weight_decay;
    let inv_bc2 = 1.0 / bc2;
    for i in 0..w.len() {
        let gi = g[i];
        m[i] = p.beta1 * m[i] + (1.0 - p.beta1) * gi;
        v[i] = p.beta2 * v[i] + (1.0 - p.beta2) * gi * gi;
        let denom = (v[i] * inv_bc2).sqrt() + p.eps;
        w[i] = w[i] * decay - step_size * m[i] / denom;
    }
}

/// Zeros with every page already faulted in. Lazy Adam touches a few random rows per step; on
/// a fresh (calloc'd) buffer each first touch of a page is a page fault, which at vocab 1M made
/// the early updates several times slower than the steady state.
fn resident_zeros(n: usize) -> Vec<f32> {
    let mut v = vec![0.0f32; n];
    for page in v.chunks_mut(1024) {
        // SAFETY: `page` is a non-empty slice of `v`; the write is volatile because a plain
        // store of zero into memory known to be zeroed may be optimised away.
        unsafe { std::ptr::write_volatile(page.as_mut_ptr(), 0.0) };
    }
    v
}

/// The values of an item table, shared with the scorers built from it.
#[derive(Debug, Clone, PartialEq)]
pub(crate) enum Values {
    /// f32, trainable.
    F32(Arc<Vec<f32>>),
    /// int8 with one scale per row, read-only.
    Int8(Arc<Int8Rows>),
}

/// The item table with lazy-Adam state (see the module docs).
#[derive(Debug, Clone, PartialEq)]
pub struct ItemTable {
    rows: usize,
    dim: usize,
    values: Values,
    /// Adam moments; empty until the first update.
    m: Vec<f32>,
    v: Vec<f32>,
}

impl ItemTable {
    /// A table of `rows × dim` values from N(0, σ²) with σ = 1/√dim; row 0 (padding) is zero.
    pub fn new(rows: usize, dim: usize, seed: u64) -> ItemTable {
        let mut r = ChaCha8Rng::seed_from_u64(seed ^ 0x17E3_7AB1E);
        let normal = Normal::new(0.0f32, 1.0 / (dim as f32).sqrt())
            .unwrap_or_else(|_| unreachable!("σ > 0"));
        let mut data: Vec<f32> = (0..rows * dim).map(|_| normal.sample(&mut r)).collect();
        data[..dim.min(rows * dim)]
            .iter_mut()
            .for_each(|v| *v = 0.0);
        ItemTable {
            rows,
            dim,
            values: Values::F32(Arc::new(data)),
            m: Vec::new(),
            v: Vec::new(),
        }
    }

    /// From existing values (no optimiser state).
    pub fn from_values(rows: usize, dim: usize, data: Vec<f32>) -> Result<ItemTable> {
        if data.len() != rows * dim {
            return Err(Error::Shape(format!(
                "{} values for a {rows}×{dim} table",
                data.len()
            )));
        }
        Ok(ItemTable {
            rows,
            dim,
            values: Values::F32(Arc::new(data)),
            m: Vec::new(),
            v: Vec::new(),
        })
    }

    /// From int8 rows (read-only: [`ItemTable::apply`] refuses it).
    pub fn from_int8(q: Int8Rows) -> Result<ItemTable> {
        q.check()?;
        Ok(ItemTable {
            rows: q.rows,
            dim: q.cols,
            values: Values::Int8(Arc::new(q)),
            m: Vec::new(),
            v: Vec::new(),
        })
    }

    /// Replaces f32 values by int8 ones (one scale per row) and drops the optimiser state:
    /// what a served int8 model holds. [`ItemTable::gather`] then reads `q × scale`, exactly
    /// what a model whose table was dequantised from the same int8 values reads.
    pub fn quantize_in_place(&mut self) -> Result<()> {
        if let Values::F32(data) = &self.values {
            let q = Int8Rows::quantize(data, self.rows, self.dim)?;
            self.values = Values::Int8(Arc::new(q));
            self.m = Vec::new();
            self.v = Vec::new();
        }
        Ok(())
    }

    /// Whether the values are int8.
    pub fn is_int8(&self) -> bool {
        matches!(self.values, Values::Int8(_))
    }

    /// Bytes the values and the optimiser state take in memory.
    pub fn bytes(&self) -> usize {
        let values = match &self.values {
            Values::F32(d) => 4 * d.len(),
            Values::Int8(q) => q.bytes(),
        };
        values + 4 * (self.m.len() + self.v.len())
    }

    pub(crate) fn shared(&self) -> &Values {
        &self.values
    }

    /// Rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Row width.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// All values, row-major (an int8 table dequantised into a new buffer).
    pub fn values(&self) -> Cow<'_, [f32]> {
        match &self.values {
            Values::F32(d) => Cow::Borrowed(d.as_slice()),
            Values::Int8(q) => Cow::Owned(q.dequantize()),
        }
    }

    /// The optimiser moments (m, v), for checkpoints; empty before the first update.
    pub fn moments(&self) -> (&[f32], &[f32]) {
        (&self.m, &self.v)
    }

    /// Restores the optimiser moments (both empty: none yet).
    pub fn set_moments(&mut self, m: Vec<f32>, v: Vec<f32>) -> Result<()> {
        let n = self.rows * self.dim;
        let fresh = m.is_empty() && v.is_empty();
        if !fresh && (m.len() != n || v.len() != n) {
            return Err(Error::Incompatible(format!(
                "item-table moments of {} values for a {}×{} table",
                m.len(),
                self.rows,
                self.dim
            )));
        }
        self.m = m;
        self.v = v;
        Ok(())
    }

    /// Copies the rows `ids` (row-major `ids.len() × dim`). Ids beyond the table read row 1
    /// (out-of-vocabulary).
    pub fn gather(&self, ids: &[u32]) -> Vec<f32> {
        let d = self.dim;
        let mut out = Vec::with_capacity(ids.len() * d);
        let rows = ids.iter().map(|&i| {
            if (i as usize) < self.rows {
                i as usize
            } else {
                1.min(self.rows - 1)
            }
        });
        match &self.values {
            Values::F32(data) => {
                rows.for_each(|i| out.extend_from_slice(&data[i * d..(i + 1) * d]));
            }
            Values::Int8(q) => rows.for_each(|i| q.extend_row(i, &mut out)),
        }
        out
    }

    /// The values and moments for an update: the values copied first if a scorer still
    /// shares them, the moments allocated on the first update.
    fn trainable(&mut self) -> Result<(&mut [f32], &mut [f32], &mut [f32])> {
        let n = self.rows * self.dim;
        let ItemTable { values, m, v, .. } = self;
        let Values::F32(data) = values else {
            return Err(Error::Incompatible(
                "the item table is int8 (a serving copy) and cannot be trained".into(),
            ));
        };
        if m.is_empty() {
            *m = resident_zeros(n);
            *v = resident_zeros(n);
        }
        Ok((
            Arc::make_mut(data).as_mut_slice(),
            m.as_mut_slice(),
            v.as_mut_slice(),
        ))
    }

    /// Lazy AdamW: updates only the rows in `grad` (moments and values), with the global step
    /// for bias correction, like PyTorch's SparseAdam and TF's LazyAdam. Row 0 (padding)
    /// stays zero.
    pub fn apply(&mut self, grad: &SparseGrad, p: &AdamParams, step: u64) -> Result<()> {
        if grad.dim != self.dim && !grad.ids.is_empty() {
            return Err(Error::Shape(format!(
                "gradient rows of width {} for a table of width {}",
                grad.dim, self.dim
            )));
        }
        let (d, rows) = (self.dim, self.rows);
        if grad.ids.is_empty() {
            return Ok(());
        }
        let (data, m, v) = self.trainable()?;
        for (k, &id) in grad.ids.iter().enumerate() {
            let r = id as usize;
            if r == 0 || r >= rows {
                continue;
            }
            let s = r * d..(r + 1) * d;
            adamw_update(
                &mut data[s.clone()],
                &grad.rows[k * d..(k + 1) * d],
                &mut m[s.clone()],
                &mut v[s],
                p,
                step,
            );
        }
        Ok(())
    }

    /// Dense AdamW over every row (the gradient of every row given; rows without a gradient
    /// see zeros, which still decays their moments) — the reference the lazy update is
    /// measured against.
    pub fn apply_dense(&mut self, grad: &[f32], p: &AdamParams, step: u64) -> Result<()> {
        let (n, d) = (self.rows * self.dim, self.dim);
        if grad.len() != n {
            return Err(Error::Shape(format!(
                "{} gradient values for {n} table values",
                grad.len(),
            )));
        }
        let (data, m, v) = self.trainable()?;
        adamw_update(
            &mut data[d..],
            &grad[d..],
            &mut m[d..],
            &mut v[d..],
            p,
            step,
        );
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn sparse_grad_sums_repeated_rows() {
        let g = SparseGrad::from_gathered(&[3, 1, 3], &[1.0, 2.0, 10.0, 20.0, 100.0, 200.0], 2)
            .unwrap();
        assert_eq!(g.ids, vec![1, 3]);
        assert_eq!(g.rows, vec![10.0, 20.0, 101.0, 202.0]);
        let h = g
            .add(&SparseGrad::from_gathered(&[2, 3], &[1.0, 1.0, 1.0, 1.0], 2).unwrap())
            .unwrap();
        assert_eq!(h.ids, vec![1, 2, 3]);
        assert_eq!(h.rows, vec![10.0, 20.0, 1.0, 1.0, 102.0, 203.0]);
        assert_eq!(h.wire_bytes(), 3 * 4 + 6 * 4);
        assert!(SparseGrad::from_gathered(&[1], &[1.0], 2).is_err());
    }

    #[test]
    fn lazy_adam_touches_only_given_rows_and_matches_dense_on_them() {
        let mut lazy = ItemTable::new(6, 3, 1);
        let mut dense = lazy.clone();
        let p = AdamParams {
            lr: 0.1,
            weight_decay: 0.01,
            ..AdamParams::default()
        };
        let before = lazy.values().to_vec();
        let g = SparseGrad::from_gathered(&[2, 4], &[1.0, -2.0, 0.5, 0.1, 0.2, 0.3], 3).unwrap();
        lazy.apply(&g, &p, 1).unwrap();
        let mut full = vec![0.0f32; 18];
        full[6..9].copy_from_slice(&[1.0, -2.0, 0.5]);
        full[12..15].copy_from_slice(&[0.1, 0.2, 0.3]);
        dense.apply_dense(&full, &p, 1).unwrap();
        // touched rows agree with dense AdamW; untouched rows do not move at all
        assert_eq!(&lazy.values()[6..9], &dense.values()[6..9]);
        assert_eq!(&lazy.values()[12..15], &dense.values()[12..15]);
        assert_eq!(&lazy.values()[9..12], &before[9..12]);
        assert_eq!(
            &lazy.values()[..3],
            &[0.0, 0.0, 0.0],
            "padding row stays zero"
        );
        // a positive gradient moves the value down by about lr
        assert!((lazy.values()[6] - (before[6] * (1.0 - 0.1 * 0.01) - 0.1)).abs() < 1e-4);
    }

    #[test]
    fn moments_come_with_the_first_update_and_clones_copy_on_write() {
        let mut t = ItemTable::new(5, 4, 2);
        assert_eq!(t.moments().0.len(), 0);
        assert_eq!(
            t.bytes(),
            4 * 20,
            "a table that is only read holds its values alone"
        );
        let snapshot = t.clone();
        let g = SparseGrad::from_gathered(&[3], &[1.0; 4], 4).unwrap();
        t.apply(&g, &AdamParams::default(), 1).unwrap();
        assert_eq!(t.moments().0.len(), 20);
        assert_eq!(t.bytes(), 3 * 4 * 20);
        assert_ne!(&t.values()[12..16], &snapshot.values()[12..16]);
        assert_eq!(snapshot.gather(&[3]), ItemTable::new(5, 4, 2).gather(&[3]));
        // restoring moments: none, or one per value
        t.set_moments(Vec::new(), Vec::new()).unwrap();
        assert!(t.set_moments(vec![0.0; 3], vec![0.0; 3]).is_err());
    }

    #[test]
    fn an_int8_table_reads_dequantised_rows_and_refuses_updates() {
        let mut t = ItemTable::new(6, 8, 3);
        let q = Int8Rows::quantize(&t.values(), 6, 8).unwrap();
        t.quantize_in_place().unwrap();
        assert!(t.is_int8());
        assert_eq!(t.bytes(), 6 * (8 + 4));
        assert_eq!(t.values().as_ref(), q.dequantize().as_slice());
        // out-of-vocabulary ids read row 1, as for f32
        assert_eq!(
            t.gather(&[2, 99]),
            [&q.dequantize()[16..24], &q.dequantize()[8..16]].concat()
        );
        let g = SparseGrad::from_gathered(&[2], &[1.0; 8], 8).unwrap();
        assert!(t.apply(&g, &AdamParams::default(), 1).is_err());
        assert!(
            t.apply_dense(&[0.0; 48], &AdamParams::default(), 1)
                .is_err()
        );
        assert_eq!(ItemTable::from_int8(q).unwrap(), t);
    }
}
