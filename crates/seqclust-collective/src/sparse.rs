//! Row-sparse gradients (item-embedding rows a step touched) and their exchange.

use crate::{Collective, Error, Result};

/// `(row id, row)` pairs of width `dim`, ids ascending and unique.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct SparseRows {
    /// Row width.
    pub dim: usize,
    /// Row ids, ascending.
    pub ids: Vec<u32>,
    /// `ids.len() × dim` values, row-major.
    pub rows: Vec<f32>,
}

const HEADER: usize = 16;

impl SparseRows {
    /// Checks the shape invariants.
    pub fn validate(&self) -> Result<()> {
        if self.rows.len() != self.ids.len() * self.dim {
            return Err(Error::Invalid(format!(
                "{} values for {} rows of width {}",
                self.rows.len(),
                self.ids.len(),
                self.dim
            )));
        }
        if self.ids.windows(2).any(|w| w[0] >= w[1]) {
            return Err(Error::Invalid("row ids not strictly ascending".into()));
        }
        Ok(())
    }

    /// The wire form: `dim` and `n` as little-endian u64, then the ids, then the rows.
    pub fn encode(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(HEADER + self.ids.len() * 4 + self.rows.len() * 4);
        out.extend_from_slice(&(self.dim as u64).to_le_bytes());
        out.extend_from_slice(&(self.ids.len() as u64).to_le_bytes());
        out.extend_from_slice(bytemuck::cast_slice(&self.ids));
        out.extend_from_slice(bytemuck::cast_slice(&self.rows));
        out
    }

    /// Reads the wire form; a message whose lengths do not add up is rejected whole.
    pub fn decode(bytes: &[u8]) -> Result<SparseRows> {
        let bad = |detail: String| Error::Malformed {
            what: "sparse rows",
            detail,
        };
        let word = |i: usize| -> Result<u64> {
            let b: [u8; 8] = bytes
                .get(i * 8..i * 8 + 8)
                .and_then(|s| s.try_into().ok())
                .ok_or_else(|| bad(format!("{} bytes, shorter than the header", bytes.len())))?;
            Ok(u64::from_le_bytes(b))
        };
        let (dim, n) = (word(0)?, word(1)?);
        let want = n
            .checked_mul(4)
            .and_then(|ids| n.checked_mul(dim)?.checked_mul(4)?.checked_add(ids))
            .and_then(|v| v.checked_add(HEADER as u64))
            .ok_or_else(|| bad(format!("{n} rows of width {dim} overflow")))?;
        if want != bytes.len() as u64 {
            return Err(bad(format!(
                "{n} rows of width {dim} need {want} bytes, got {}",
                bytes.len()
            )));
        }
        let (n, dim) = (n as usize, dim as usize);
        let ids_end = HEADER + n * 4;
        let ids: Vec<u32> = bytemuck::pod_collect_to_vec(&bytes[HEADER..ids_end]);
        let rows: Vec<f32> = bytemuck::pod_collect_to_vec(&bytes[ids_end..]);
        let s = SparseRows { dim, ids, rows };
        s.validate().map_err(|e| bad(e.to_string()))?;
        Ok(s)
    }

    /// The row-wise sum of several, ids ascending; rows are added in the order of `parts`
    /// (so every rank that sums the same parts gets the same bits). Each part's ids are
    /// ascending, so one merge walk per part places its rows: no per-row allocation.
    pub fn sum(parts: &[SparseRows]) -> Result<SparseRows> {
        let dim = parts
            .iter()
            .find(|p| !p.ids.is_empty())
            .map_or(0, |p| p.dim);
        for p in parts {
            p.validate()?;
            if p.dim != dim && !p.ids.is_empty() {
                return Err(Error::Invalid(format!("rows of width {} and {dim}", p.dim)));
            }
        }
        let mut ids: Vec<u32> = parts.iter().flat_map(|p| p.ids.iter().copied()).collect();
        ids.sort_unstable();
        ids.dedup();
        let mut rows = vec![0f32; ids.len() * dim];
        for p in parts {
            let mut at = 0;
            for (k, &id) in p.ids.iter().enumerate() {
                // the union holds every id, in the same ascending order
                while ids[at] != id {
                    at += 1;
                }
                let out = &mut rows[at * dim..(at + 1) * dim];
                out.iter_mut()
                    .zip(&p.rows[k * dim..(k + 1) * dim])
                    .for_each(|(a, b)| *a += b);
            }
        }
        Ok(SparseRows { dim, ids, rows })
    }
}

/// Every rank's rows summed row-wise (the same result, bit for bit, on every rank: the sum
/// runs in rank order). Bytes sent per rank: the rows every rank touched, independent of the
/// vocabulary.
pub fn all_gather_rows(c: &mut dyn Collective, mine: &SparseRows) -> Result<SparseRows> {
    mine.validate()?;
    let parts = c
        .all_gather(&mine.encode())?
        .iter()
        .map(|b| SparseRows::decode(b))
        .collect::<Result<Vec<_>>>()?;
    SparseRows::sum(&parts)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use proptest::prelude::*;

    use super::*;

    #[test]
    fn sums_rows_by_id_in_order() {
        let a = SparseRows {
            dim: 2,
            ids: vec![1, 5],
            rows: vec![1.0, 2.0, 3.0, 4.0],
        };
        let b = SparseRows {
            dim: 2,
            ids: vec![5, 7],
            rows: vec![10.0, 20.0, 30.0, 40.0],
        };
        let s = SparseRows::sum(&[a, b]).unwrap();
        assert_eq!(s.ids, vec![1, 5, 7]);
        assert_eq!(s.rows, vec![1.0, 2.0, 13.0, 24.0, 30.0, 40.0]);
    }

    #[test]
    fn malformed_messages_are_rejected() {
        let a = SparseRows {
            dim: 3,
            ids: vec![2, 4],
            rows: vec![0.5; 6],
        };
        let bytes = a.encode();
        assert_eq!(SparseRows::decode(&bytes).unwrap(), a);
        for cut in [0, 7, 16, bytes.len() - 1] {
            assert!(matches!(
                SparseRows::decode(&bytes[..cut]),
                Err(Error::Malformed { .. })
            ));
        }
        let mut long = bytes.clone();
        long.push(0);
        assert!(SparseRows::decode(&long).is_err());
        // a header claiming a huge row count does not allocate or panic
        let mut huge = bytes.clone();
        huge[8..16].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(SparseRows::decode(&huge).is_err());
        // ids out of order
        let mut swapped = bytes;
        swapped[16..20].copy_from_slice(&9u32.to_le_bytes());
        assert!(SparseRows::decode(&swapped).is_err());
    }

    proptest! {
        #[test]
        fn encode_decode_round_trip(dim in 1usize..5, ids in proptest::collection::btree_set(0u32..1000, 0..20)) {
            let ids: Vec<u32> = ids.into_iter().collect();
            let rows: Vec<f32> = (0..ids.len() * dim).map(|i| i as f32 * 0.5).collect();
            let s = SparseRows { dim, ids, rows };
            prop_assert_eq!(SparseRows::decode(&s.encode()).unwrap(), s);
        }
    }
}
