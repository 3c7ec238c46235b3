//! Chunked payloads: large binary results (k-means partials, seeding samples, centroids)
//! travel in pieces below gRPC's message limit and are reassembled with checks.

/// Bytes per chunk.
pub const CHUNK_BYTES: usize = 1 << 20;

/// `(offset, len)` of each chunk of a `total`-byte payload (one empty chunk for an empty one).
pub fn chunk_offsets(total: usize) -> Vec<(usize, usize)> {
    if total == 0 {
        return vec![(0, 0)];
    }
    (0..total)
        .step_by(CHUNK_BYTES)
        .map(|o| (o, CHUNK_BYTES.min(total - o)))
        .collect()
}

/// Reassembles a chunked payload: chunks must arrive in order, contiguous, and agree on the
/// total, which may not exceed `limit`.
#[derive(Debug)]
pub struct Reassembly {
    total: Option<usize>,
    limit: usize,
    data: Vec<u8>,
}

impl Reassembly {
    /// A reassembly that accepts payloads of at most `limit` bytes.
    pub fn new(limit: usize) -> Self {
        Reassembly {
            total: None,
            limit,
            data: Vec::new(),
        }
    }

    /// Adds one chunk; the error says what is wrong with it.
    pub fn push(&mut self, offset: u64, total: u64, data: &[u8]) -> Result<(), String> {
        let total = usize::try_from(total).map_err(|_| "total does not fit in memory")?;
        if total > self.limit {
            return Err(format!(
                "payload of {total} bytes is over the limit of {} bytes",
                self.limit
            ));
        }
        match self.total {
            None => {
                self.total = Some(total);
                self.data.reserve_exact(total);
            }
            Some(t) if t != total => {
                return Err(format!("chunk declares total {total}, earlier chunks {t}"));
            }
            Some(_) => {}
        }
        if offset != self.data.len() as u64 {
            return Err(format!(
                "chunk at offset {offset}, expected {} (chunks out of order or missing)",
                self.data.len()
            ));
        }
        if self.data.len() + data.len() > total {
            return Err(format!(
                "chunks run past the declared total of {total} bytes"
            ));
        }
        self.data.extend_from_slice(data);
        Ok(())
    }

    /// The whole payload, once every byte has arrived.
    pub fn finish(self) -> Result<Vec<u8>, String> {
        match self.total {
            None => Err("no chunk arrived".into()),
            Some(t) if t != self.data.len() => Err(format!(
                "payload incomplete: {} of {t} bytes",
                self.data.len()
            )),
            Some(_) => Ok(self.data),
        }
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn chunks_reassemble_and_bad_ones_are_named() {
        let total = 2 * CHUNK_BYTES + 17;
        let payload: Vec<u8> = (0..total).map(|i| (i % 251) as u8).collect();
        let mut r = Reassembly::new(total);
        for (o, n) in chunk_offsets(total) {
            r.push(o as u64, total as u64, &payload[o..o + n]).unwrap();
        }
        assert_eq!(r.finish().unwrap(), payload);

        let mut r = Reassembly::new(10);
        assert!(
            r.push(0, 11, &[0; 11])
                .unwrap_err()
                .contains("over the limit")
        );
        let mut r = Reassembly::new(10);
        r.push(0, 10, &[0; 4]).unwrap();
        assert!(r.push(5, 10, &[0; 4]).unwrap_err().contains("out of order"));
        assert!(
            r.push(4, 9, &[0; 4])
                .unwrap_err()
                .contains("declares total")
        );
        assert!(
            r.push(4, 10, &[0; 7])
                .unwrap_err()
                .contains("past the declared")
        );
        assert!(r.finish().unwrap_err().contains("incomplete"));
        assert_eq!(chunk_offsets(0), vec![(0, 0)]);
    }
}
