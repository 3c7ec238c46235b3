//! Binary payloads that travel in chunks: seeding samples and centroid matrices. (Partial
//! statistics have their own form, `seqclust_kmeans::PartialStats::to_bytes`.)

/// A sample of user vectors, each with the key that orders it (shard << 32 | position), so
/// that the union of the workers' samples can be put in one order whatever the sharding.
#[derive(Debug, Clone, PartialEq)]
pub struct Sample {
    /// Dimension.
    pub d: usize,
    /// Ordering key of each row.
    pub keys: Vec<u64>,
    /// Row-major vectors.
    pub rows: Vec<f32>,
}

impl Sample {
    /// `n`, `d` (u64 LE), the keys (u64 LE), then the rows (f32 LE).
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::with_capacity(16 + self.keys.len() * 8 + self.rows.len() * 4);
        out.extend_from_slice(&(self.keys.len() as u64).to_le_bytes());
        out.extend_from_slice(&(self.d as u64).to_le_bytes());
        self.keys
            .iter()
            .for_each(|k| out.extend_from_slice(&k.to_le_bytes()));
        out.extend_from_slice(&f32_bytes(&self.rows));
        out
    }

    /// Decodes [`Self::to_bytes`]; the error says what does not fit.
    pub fn from_bytes(b: &[u8]) -> Result<Sample, String> {
        if b.len() < 16 {
            return Err(format!("sample payload of {} bytes", b.len()));
        }
        let word = |i: usize| u64::from_le_bytes(b[i * 8..i * 8 + 8].try_into().unwrap_or([0; 8]));
        let (n, d) = (word(0), word(1));
        let expected = n
            .checked_mul(d)
            .and_then(|nd| nd.checked_mul(4))
            .and_then(|x| x.checked_add(n.checked_mul(8)?))
            .and_then(|x| x.checked_add(16));
        if expected != Some(b.len() as u64) || d == 0 {
            return Err(format!(
                "sample of {n} rows of dimension {d} cannot be {} bytes",
                b.len()
            ));
        }
        let (n, d) = (n as usize, d as usize);
        let keys = (0..n).map(|i| word(2 + i)).collect();
        let rows = f32s(&b[16 + 8 * n..])?;
        if rows.iter().any(|v| !v.is_finite()) {
            return Err("sample holds non-finite values".into());
        }
        Ok(Sample { d, keys, rows })
    }
}

/// f32 values as little-endian bytes.
pub fn f32_bytes(v: &[f32]) -> Vec<u8> {
    let mut out = Vec::with_capacity(v.len() * 4);
    v.iter()
        .for_each(|x| out.extend_from_slice(&x.to_le_bytes()));
    out
}

/// Little-endian bytes as f32 values.
pub fn f32s(b: &[u8]) -> Result<Vec<f32>, String> {
    if !b.len().is_multiple_of(4) {
        return Err(format!("{} bytes are not a whole number of f32", b.len()));
    }
    Ok(b.chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn samples_round_trip_and_bad_sizes_are_refused() {
        let s = Sample {
            d: 2,
            keys: vec![3, 1 << 33],
            rows: vec![1.0, 2.0, 3.0, 4.0],
        };
        let b = s.to_bytes();
        assert_eq!(Sample::from_bytes(&b).unwrap(), s);
        assert!(Sample::from_bytes(&b[..b.len() - 1]).is_err());
        let mut bad = b.clone();
        bad[..8].copy_from_slice(&u64::MAX.to_le_bytes());
        assert!(Sample::from_bytes(&bad).is_err());
    }
}
