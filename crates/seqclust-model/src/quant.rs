//! int8 quantisation for serving: the item table and the weight matrices of the body and
//! heads, each row with its own scale (symmetric, `scale = max |x| / 127`).
//!
//! [`Int8Model`] is what a quantised model file holds; [`Int8Model::apply`] puts it into a
//! model (the item table kept as int8 and read as `q × scale`, the weight matrices
//! dequantised), which then computes exactly what an int8 model with f32 accumulation does.
//! Small tables (the action, category, gap, hour and position embeddings), biases, norms and
//! the whitening stay f32.

use crate::error::{Error, Result};
use crate::item_table::ItemTable;
use crate::model::SeqModel;

/// A row-major matrix of int8 values with one f32 scale per row.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Rows {
    /// Rows.
    pub rows: usize,
    /// Columns.
    pub cols: usize,
    /// `rows × cols` quantised values.
    pub values: Vec<i8>,
    /// One scale per row.
    pub scales: Vec<f32>,
}

impl Int8Rows {
    /// Quantises `values` (`rows × cols`) row by row.
    pub fn quantize(values: &[f32], rows: usize, cols: usize) -> Result<Int8Rows> {
        if values.len() != rows * cols {
            return Err(Error::Shape(format!(
                "{} values for {rows} × {cols}",
                values.len()
            )));
        }
        let mut q = Vec::with_capacity(values.len());
        let mut scales = Vec::with_capacity(rows);
        for row in values.chunks_exact(cols.max(1)) {
            let max = row.iter().fold(0f32, |m, v| m.max(v.abs()));
            let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
            scales.push(scale);
            q.extend(
                row.iter()
                    .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8),
            );
        }
        Ok(Int8Rows {
            rows,
            cols,
            values: q,
            scales,
        })
    }

    /// Fails unless there are `rows × cols` values and a scale per row.
    pub fn check(&self) -> Result<()> {
        if self.values.len() != self.rows * self.cols || self.scales.len() != self.rows {
            return Err(Error::Shape(format!(
                "int8 table of {} values and {} scales for {} × {}",
                self.values.len(),
                self.scales.len(),
                self.rows,
                self.cols
            )));
        }
        Ok(())
    }

    /// The f32 values `q × scale`.
    pub fn dequantize(&self) -> Vec<f32> {
        let mut out = Vec::with_capacity(self.values.len());
        (0..self.rows).for_each(|r| self.extend_row(r, &mut out));
        out
    }

    /// Appends row `r` as f32 (`q × scale`).
    pub fn extend_row(&self, r: usize, out: &mut Vec<f32>) {
        let s = self.scales[r];
        out.extend(
            self.values[r * self.cols..(r + 1) * self.cols]
                .iter()
                .map(|&q| f32::from(q) * s),
        );
    }

    /// Bytes of values and scales.
    pub fn bytes(&self) -> usize {
        self.values.len() + 4 * self.scales.len()
    }
}

/// A model's quantised tensors.
#[derive(Debug, Clone, PartialEq)]
pub struct Int8Model {
    /// The item table.
    pub items: Int8Rows,
    /// Quantised dense parameters by name (see [`quantized`]).
    pub dense: Vec<(String, Int8Rows)>,
}

/// Whether a dense parameter is quantised: a weight matrix of the body or the heads (2-d,
/// not an input embedding, not a norm).
pub fn quantized(name: &str, dims: &[usize]) -> bool {
    dims.len() == 2 && !name.starts_with("emb.") && !name.contains("norm") && !name.contains(".ln")
}

impl Int8Model {
    /// Quantises a model.
    pub fn of(model: &SeqModel) -> Result<Int8Model> {
        let items =
            Int8Rows::quantize(&model.items.values(), model.items.rows(), model.items.dim())?;
        let mut dense = Vec::new();
        for (name, var) in model.vars()? {
            let dims = var.dims().to_vec();
            if quantized(&name, &dims) {
                let v = var
                    .flatten_all()
                    .and_then(|t| t.to_vec1::<f32>())
                    .map_err(Error::from_candle("quantize"))?;
                dense.push((name, Int8Rows::quantize(&v, dims[0], dims[1])?));
            }
        }
        Ok(Int8Model { items, dense })
    }

    /// Writes the dequantised values into `model` (built from the same config).
    pub fn apply(&self, model: &mut SeqModel) -> Result<()> {
        if (self.items.rows, self.items.cols) != (model.items.rows(), model.items.dim()) {
            return Err(Error::Incompatible(format!(
                "int8 item table {}×{}, the model {}×{}",
                self.items.rows,
                self.items.cols,
                model.items.rows(),
                model.items.dim()
            )));
        }
        model.items = ItemTable::from_int8(self.items.clone())?;
        let vars = model.vars()?;
        for (name, q) in &self.dense {
            let (_, var) = vars
                .iter()
                .find(|(n, _)| n == name)
                .ok_or_else(|| Error::Incompatible(format!("the model has no {name}")))?;
            if var.dims() != [q.rows, q.cols] {
                return Err(Error::Incompatible(format!(
                    "{name}: int8 {}×{}, the model {:?}",
                    q.rows,
                    q.cols,
                    var.dims()
                )));
            }
            let t = candle_core::Tensor::from_vec(q.dequantize(), (q.rows, q.cols), model.device())
                .map_err(Error::from_candle("dequantize"))?;
            var.set(&t).map_err(Error::from_candle("dequantize"))?;
        }
        Ok(())
    }

    /// Bytes of the quantised item table (values and scales).
    pub fn item_bytes(&self) -> usize {
        self.items.bytes()
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn rows_round_trip_within_half_a_step() {
        let v: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 23) as f32 - 11.0) * 0.013)
            .collect();
        let q = Int8Rows::quantize(&v, 4, 16).unwrap();
        assert_eq!(q.bytes(), 64 + 16);
        let back = q.dequantize();
        for (r, (a, b)) in v.chunks(16).zip(back.chunks(16)).enumerate() {
            for (x, y) in a.iter().zip(b) {
                assert!((x - y).abs() <= q.scales[r] / 2.0 + 1e-7, "{x} vs {y}");
            }
        }
        // a zero row keeps scale 1 and stays zero
        let z = Int8Rows::quantize(&[0.0; 4], 1, 4).unwrap();
        assert_eq!(z.dequantize(), vec![0.0; 4]);
        assert!(Int8Rows::quantize(&[1.0; 5], 2, 2).is_err());
    }
}
