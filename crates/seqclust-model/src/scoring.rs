//! Scoring every item for a batch of user vectors: one matrix product of the users against
//! the item table, in f32 or int8.
//!
//! - [`Precision::F32`]: one GEMM on the `gemm` crate (what candle's matmul runs; AVX2/FMA or
//!   AVX-512 kernels chosen at run time, on candle's thread count), reading the table in place.
//! - [`Precision::Int8`]: the table held as int8 with one scale per row ([`Int8Rows`], what
//!   `seqclust quantize` writes), each user vector quantised the same way (one scale), and
//!   i8 × i8 dot products summed in i32, then scaled back. The loop is written for the
//!   compiler to vectorise and built twice with `multiversion` (x86-64 baseline and AVX2, the
//!   one used chosen at run time), like the encoder kernels. It reads a quarter of the f32
//!   table's bytes and walks the table once per batch, each row against every vector of it.
//!
//! [`ItemScorer::of_table`] shares the model's item table rather than copying it when the
//! precisions agree (a served int8 model keeps its table as int8 for both the encoder's
//! input and the scoring), so serving holds one copy of the table.
//!
//! candle's own quantised matmul (Q8_0) was the first int8 path: 2× the f32 throughput for
//! one request at a time but 0.75× under batching, where its per-dot-product overhead on
//! 64-wide rows dominates (docs/PERFORMANCE.md).

use std::sync::Arc;

use multiversion::multiversion;
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::item_table::{ItemTable, Values};
use crate::quant::Int8Rows;

/// The arithmetic of item scoring.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Default, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Precision {
    /// f32 table and vectors.
    #[default]
    F32,
    /// int8 table and vectors (one scale per row and per vector), i32 dot products.
    Int8,
}

impl std::str::FromStr for Precision {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        match s {
            "f32" => Ok(Precision::F32),
            "int8" => Ok(Precision::Int8),
            _ => Err(format!("{s:?}: expected f32 or int8")),
        }
    }
}

impl std::fmt::Display for Precision {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Precision::F32 => "f32",
            Precision::Int8 => "int8",
        })
    }
}

/// The rows scored are the first `ItemScorer::rows` of the buffer (a model's table may hold
/// a Cloze mask row after them).
enum Table {
    F32(Arc<Vec<f32>>),
    Int8(Arc<Int8Rows>),
}

/// An item table ready to score user vectors against (see the module docs).
pub struct ItemScorer {
    rows: usize,
    dim: usize,
    table: Table,
}

impl std::fmt::Debug for ItemScorer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ItemScorer")
            .field("rows", &self.rows)
            .field("dim", &self.dim)
            .field("precision", &self.precision())
            .finish()
    }
}

impl ItemScorer {
    /// A scorer over a copy of `table` (`rows × dim`, row-major). For int8 the table is
    /// quantised row by row; a table that was dequantised from int8 comes back to the same
    /// int8 values.
    pub fn new(table: &[f32], rows: usize, dim: usize, precision: Precision) -> Result<Self> {
        if table.len() != rows * dim || dim == 0 {
            return Err(Error::Shape(format!(
                "item table of {} values for {rows} × {dim}",
                table.len()
            )));
        }
        match precision {
            Precision::F32 => Ok(ItemScorer {
                rows,
                dim,
                table: Table::F32(Arc::new(table.to_vec())),
            }),
            Precision::Int8 => Self::int8(Int8Rows::quantize(table, rows, dim)?),
        }
    }

    /// An int8 scorer over already quantised rows.
    pub fn int8(q: Int8Rows) -> Result<Self> {
        q.check()?;
        if q.cols == 0 {
            return Err(Error::Shape("int8 table of rows of width 0".into()));
        }
        Ok(ItemScorer {
            rows: q.rows,
            dim: q.cols,
            table: Table::Int8(Arc::new(q)),
        })
    }

    /// A scorer over the first `rows` rows of a model's item table, sharing its buffer when
    /// the table already holds `precision` (an f32 table scored in f32, an int8 one in int8)
    /// and converting a copy otherwise.
    pub fn of_table(table: &ItemTable, rows: usize, precision: Precision) -> Result<Self> {
        let dim = table.dim();
        if rows > table.rows() || dim == 0 {
            return Err(Error::Shape(format!(
                "{rows} rows to score of a {}×{dim} item table",
                table.rows()
            )));
        }
        let table = match (precision, table.shared()) {
            (Precision::F32, Values::F32(v)) => Table::F32(Arc::clone(v)),
            (Precision::Int8, Values::Int8(q)) => Table::Int8(Arc::clone(q)),
            (Precision::F32, Values::Int8(q)) => Table::F32(Arc::new(q.dequantize())),
            (Precision::Int8, Values::F32(v)) => {
                Table::Int8(Arc::new(Int8Rows::quantize(&v[..rows * dim], rows, dim)?))
            }
        };
        Ok(ItemScorer { rows, dim, table })
    }

    /// Items (rows of the table).
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// The arithmetic.
    pub fn precision(&self) -> Precision {
        match self.table {
            Table::F32(_) => Precision::F32,
            Table::Int8(_) => Precision::Int8,
        }
    }

    /// Bytes the table takes in memory.
    pub fn bytes(&self) -> usize {
        match &self.table {
            Table::F32(_) => 4 * self.rows * self.dim,
            Table::Int8(_) => self.rows * (self.dim + 4),
        }
    }

    /// Scores of every item for each of the `users.len() / dim` vectors: row-major,
    /// `users × rows`.
    pub fn scores(&self, users: &[f32]) -> Result<Vec<f32>> {
        if users.is_empty() {
            return Ok(Vec::new());
        }
        if !users.len().is_multiple_of(self.dim) {
            return Err(Error::Shape(format!(
                "{} values are not whole vectors of {}",
                users.len(),
                self.dim
            )));
        }
        let (n, rows, dim) = (users.len() / self.dim, self.rows, self.dim);
        if rows == 0 {
            return Ok(Vec::new());
        }
        match &self.table {
            Table::F32(t) => {
                let table = &t[..rows * dim];
                let mut out = vec![0f32; n * rows];
                let threads = candle_core::utils::get_num_threads();
                let parallelism = if threads > 1 {
                    gemm::Parallelism::Rayon(threads)
                } else {
                    gemm::Parallelism::None
                };
                // SAFETY: `out` is n × rows (row stride rows), `users` n × dim (row stride
                // dim), and the table rows × dim read as its transpose, dim × rows (row
                // stride 1, column stride dim): every index gemm forms is inside its slice.
                unsafe {
                    crate::kernels::gemm_f32(
                        parallelism,
                        n,
                        rows,
                        dim,
                        out.as_mut_ptr(),
                        rows as isize,
                        1,
                        false,
                        users.as_ptr(),
                        dim as isize,
                        1,
                        table.as_ptr(),
                        1,
                        dim as isize,
                    );
                }
                Ok(out)
            }
            Table::Int8(t) => {
                let q = Int8Rows::quantize(users, n, dim)?;
                let mut dots = vec![0i32; n * rows];
                int8_dots(&t.values[..rows * dim], &q.values, dim, &mut dots);
                let mut out = Vec::with_capacity(dots.len());
                for (row, &qs) in dots.chunks_exact(rows).zip(&q.scales) {
                    out.extend(
                        row.iter()
                            .zip(&t.scales[..rows])
                            .map(|(&d, &ts)| d as f32 * (ts * qs)),
                    );
                }
                Ok(out)
            }
        }
    }
}

/// `out[u · rows + r] = Σᵢ table[r][i] · queries[u][i]` in i32 (rows of `dim`): each table row
/// is read once and met with every query while it is in cache. |values| ≤ 127, so a dim up
/// to 133,000 cannot overflow.
#[multiversion(targets("x86_64+avx2+fma"))]
fn int8_dots(table: &[i8], queries: &[i8], dim: usize, out: &mut [i32]) {
    let rows = table.len() / dim;
    for (r, row) in table.chunks_exact(dim).enumerate() {
        for (u, q) in queries.chunks_exact(dim).enumerate() {
            out[u * rows + r] = row
                .iter()
                .zip(q)
                .map(|(&a, &b)| i32::from(a) * i32::from(b))
                .sum();
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn table(rows: usize, dim: usize, seed: u32) -> Vec<f32> {
        (0..rows * dim)
            .map(|i| {
                let x = (i as u32).wrapping_mul(2_654_435_761).wrapping_add(seed) >> 8;
                (x as f32 / (1u32 << 24) as f32 - 0.5) * 0.2
            })
            .collect()
    }

    fn reference(t: &[f32], u: &[f32], dim: usize) -> Vec<f32> {
        u.chunks(dim)
            .flat_map(|q| {
                t.chunks(dim)
                    .map(move |r| r.iter().zip(q).map(|(a, b)| a * b).sum())
            })
            .collect()
    }

    #[test]
    fn both_precisions_match_the_dot_products() {
        for dim in [64, 40] {
            let (rows, n) = (203, 5);
            let t = table(rows, dim, 1);
            let u = table(n, dim, 2);
            let want = reference(&t, &u, dim);
            let f = ItemScorer::new(&t, rows, dim, Precision::F32).unwrap();
            let q = ItemScorer::new(&t, rows, dim, Precision::Int8).unwrap();
            assert_eq!(
                (f.bytes(), q.precision()),
                (4 * rows * dim, Precision::Int8)
            );
            // a byte per value and 4 per row (dim 64: 3.76× smaller than f32)
            assert_eq!(q.bytes(), rows * (dim + 4));
            let (sf, sq) = (f.scores(&u).unwrap(), q.scores(&u).unwrap());
            assert_eq!((sf.len(), sq.len()), (n * rows, n * rows));
            let top = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            for ((w, a), b) in want.iter().zip(&sf).zip(&sq) {
                assert!((w - a).abs() <= 1e-5 * top.max(1.0), "f32 {a} vs {w}");
                // two 8-bit roundings: well under 2 % of the largest score
                assert!((w - b).abs() <= 0.02 * top, "int8 {b} vs {w} (top {top})");
            }
        }
    }

    #[test]
    fn int8_works_for_tables_of_any_magnitude() {
        let dim = 32;
        let u = table(3, dim, 4);
        for factor in [1e-6f32, 1e7] {
            let t: Vec<f32> = table(64, dim, 3).iter().map(|v| v * factor).collect();
            let want = reference(&t, &u, dim);
            let got = ItemScorer::new(&t, 64, dim, Precision::Int8)
                .unwrap()
                .scores(&u)
                .unwrap();
            let top = want.iter().fold(0f32, |m, v| m.max(v.abs()));
            assert!(top > 0.0);
            for (w, g) in want.iter().zip(&got) {
                assert!((w - g).abs() <= 0.02 * top, "x{factor}: {g} vs {w}");
            }
        }
    }

    #[test]
    fn a_scorer_of_a_table_shares_its_buffer_and_leaves_out_trailing_rows() {
        let (rows, dim) = (40, 16);
        let mut t = ItemTable::new(rows + 1, dim, 5);
        let u = table(3, dim, 6);
        let want = reference(&t.values()[..rows * dim], &u, dim);
        let f = ItemScorer::of_table(&t, rows, Precision::F32).unwrap();
        let (Values::F32(a), Table::F32(b)) = (t.shared(), &f.table) else {
            panic!("f32 table, f32 scorer")
        };
        assert!(
            Arc::ptr_eq(a, b),
            "the f32 scorer reads the model's table in place"
        );
        let got = f.scores(&u).unwrap();
        assert_eq!(got.len(), 3 * rows, "the trailing (mask) row is not scored");
        for (w, g) in want.iter().zip(&got) {
            assert!((w - g).abs() <= 1e-5, "{g} vs {w}");
        }
        // int8 from an f32 table: a quantised copy, the same as quantising the rows
        let q = ItemScorer::of_table(&t, rows, Precision::Int8).unwrap();
        let copy = ItemScorer::new(&t.values()[..rows * dim], rows, dim, Precision::Int8).unwrap();
        assert_eq!(q.scores(&u).unwrap(), copy.scores(&u).unwrap());
        // an int8 table scored in int8 is shared, and scores as its f32 original quantised
        t.quantize_in_place().unwrap();
        let s = ItemScorer::of_table(&t, rows, Precision::Int8).unwrap();
        let (Values::Int8(a), Table::Int8(b)) = (t.shared(), &s.table) else {
            panic!("int8 table, int8 scorer")
        };
        assert!(Arc::ptr_eq(a, b));
        assert_eq!(s.scores(&u).unwrap(), copy.scores(&u).unwrap());
        assert!(ItemScorer::of_table(&t, rows + 2, Precision::F32).is_err());
    }

    #[test]
    fn bad_shapes_are_refused() {
        assert!(ItemScorer::new(&[0.0; 5], 2, 2, Precision::F32).is_err());
        let s = ItemScorer::new(&[0.0; 4], 2, 2, Precision::Int8).unwrap();
        assert!(s.scores(&[1.0; 3]).is_err());
        assert!(s.scores(&[]).unwrap().is_empty());
        assert_eq!("int8".parse::<Precision>(), Ok(Precision::Int8));
        assert!("fp16".parse::<Precision>().is_err());
    }
}
