//! Ring all-gather of variable-size messages: `n − 1` steps; at step `k` each rank sends the
//! message it received at step `k − 1` (its own at step 0) and receives rank `r − k − 1`'s.
//! A sender thread writes while the caller reads, so messages larger than the socket buffers
//! cannot deadlock the ring.

use std::net::TcpStream;
use std::sync::Arc;

use crossbeam_channel::unbounded;

use super::{Op, Ring, duplex};
use crate::{Error, Result};

/// The largest message accepted (a corrupt length must not allocate without bound).
pub(super) const MAX_MESSAGE: u64 = 1 << 32;

pub(super) fn ring_all_gather(
    r: &Ring,
    next: &TcpStream,
    prev: &TcpStream,
    mine: &[u8],
) -> Result<Vec<Vec<u8>>> {
    let (n, rank) = (r.world, r.rank);
    let mut out: Vec<Option<Arc<Vec<u8>>>> = vec![None; n];
    let own = Arc::new(mine.to_vec());
    out[rank] = Some(own.clone());
    let (to_send, queue) = unbounded::<Arc<Vec<u8>>>();
    let _ = to_send.send(own);
    let send = |m: Arc<Vec<u8>>| {
        r.send_data(next, &(m.len() as u64).to_le_bytes(), Op::AllGather)?;
        r.send_data(next, &m, Op::AllGather)
    };
    duplex(next, prev, queue, send, || {
        let to_send = to_send;
        for k in 0..n - 1 {
            let from = (rank + 2 * n - 1 - k) % n;
            let m = Arc::new(read_message(r, prev, Op::AllGather, from)?);
            if k + 1 < n - 1 {
                let _ = to_send.send(m.clone());
            }
            out[from] = Some(m);
        }
        Ok(())
    })?;
    Ok(out
        .into_iter()
        .map(|m| m.map_or_else(Vec::new, Arc::unwrap_or_clone))
        .collect())
}

/// A length-prefixed message from the previous rank (`from` names its origin in errors).
pub(super) fn read_message(r: &Ring, prev: &TcpStream, op: Op, from: usize) -> Result<Vec<u8>> {
    let mut scratch = Vec::new();
    let mut len = [0u8; 8];
    r.recv_data(
        prev,
        8,
        &mut scratch,
        &mut |b, o| len[o..o + b.len()].copy_from_slice(b),
        op,
    )?;
    let len = u64::from_le_bytes(len);
    if len > MAX_MESSAGE {
        return Err(Error::Malformed {
            what: "collective message",
            detail: format!("rank {from}'s message claims {len} bytes (limit {MAX_MESSAGE})"),
        });
    }
    let len = len as usize;
    let mut m = vec![0u8; len];
    let mut take = |b: &[u8], o: usize| m[o..o + b.len()].copy_from_slice(b);
    r.recv_data(prev, len, &mut scratch, &mut take, op)?;
    Ok(m)
}
