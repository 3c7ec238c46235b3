//! Ring all-reduce: reduce-scatter then all-gather over `2(n − 1)` steps. At step `k` rank `r`
//! receives segment `r − k − 1 (mod n)` from the previous rank — adding it in during the
//! first `n − 1` steps, copying it during the rest — and sends what it received in the step
//! before (step 0 sends its own segment `r`). After the reduce-scatter rank `r` holds the
//! complete sum of segment `r + 1`; the all-gather passes the sums around. Each rank sends
//! `2(n − 1)/n` of the buffer, the least any algorithm can.
//!
//! Segments are cut into buckets. Over TCP a sender thread writes to the next rank while the
//! calling thread reads and adds what the previous rank sends, so the link is busy in both
//! directions and a bucket is forwarded as soon as it is complete; the sender owns the
//! buckets it writes (moved through a channel and handed back for reuse), so the two threads
//! never share the caller's buffer. When both links are in shared memory one loop does both
//! directions straight between the buffer and the shared slots ([`over_shared_memory`]).

use std::collections::VecDeque;
use std::net::TcpStream;

use crossbeam_channel::unbounded;

use super::shm::{SLOT, ShmLink, Waiter};
use super::{Op, Ring, duplex};
use crate::{Error, Result};

pub(super) fn ring_all_reduce(
    r: &Ring,
    next: &TcpStream,
    prev: &TcpStream,
    buf: &mut [f32],
    bucket: usize,
) -> Result<()> {
    let (n, rank, len) = (r.world, r.rank, buf.len());
    let seg = |i: usize| (i * len / n, (i + 1) * len / n);
    let steps = 2 * (n - 1);
    if let (Some(out), Some(inn)) = (&r.next_shm, &r.prev_shm) {
        return over_shared_memory(r, (next, out), (prev, inn), buf, bucket);
    }
    let (to_send, queue) = unbounded::<Vec<f32>>();
    let (give_back, spare) = unbounded::<Vec<f32>>();
    let (a, b) = seg(rank);
    for chunk in buf[a..b].chunks(bucket) {
        let _ = to_send.send(chunk.to_vec());
    }
    let send = |v: Vec<f32>| {
        r.send_data(next, bytemuck::cast_slice(&v), Op::AllReduce)?;
        let _ = give_back.send(v);
        Ok(())
    };
    duplex(next, prev, queue, send, move || {
        let mut scratch = Vec::new();
        for k in 0..steps {
            let (a, b) = seg((rank + 2 * n - 1 - k % n) % n);
            let (reduce, forward) = (k < n - 1, k + 1 < steps);
            let mut at = a;
            while at < b {
                let m = bucket.min(b - at);
                let mut v = if forward {
                    spare.try_recv().unwrap_or_default()
                } else {
                    Vec::new()
                };
                v.resize(if forward { m } else { 0 }, 0.0);
                let dst = &mut buf[at..at + m];
                let mut take = |src: &[u8], off: usize| {
                    let (o, len) = (off / 4, src.len() / 4);
                    let fwd = forward.then(|| &mut v[o..o + len]);
                    apply(&mut dst[o..o + len], fwd, src, reduce);
                };
                r.recv_data(prev, m * 4, &mut scratch, &mut take, Op::AllReduce)?;
                if forward {
                    let _ = to_send.send(v);
                }
                at += m;
            }
        }
        Ok(())
    })
}

/// The schedule on one thread when both links are in shared memory: a loop that writes the
/// next queued bucket when the outgoing link has a free slot and takes in the next expected
/// bucket when it has arrived, straight between `buf` and the shared slots (no sender thread,
/// no intermediate buffers). Buckets are queued in step order, which is the order the next
/// rank reads them; a queued range is not overwritten before it goes out, because the data
/// that would overwrite it has to pass through this rank's own send first.
fn over_shared_memory(
    r: &Ring,
    (next, out): (&TcpStream, &ShmLink),
    (prev, inn): (&TcpStream, &ShmLink),
    buf: &mut [f32],
    bucket: usize,
) -> Result<()> {
    let (n, rank, len) = (r.world, r.rank, buf.len());
    let seg = |i: usize| (i * len / n, (i + 1) * len / n);
    let recv_seg = |k: usize| seg((rank + 2 * n - 1 - k % n) % n);
    let steps = 2 * (n - 1);
    let bucket = bucket.min(SLOT / 4);
    let peer_err = |role, source| Error::Peer {
        op: Op::AllReduce.name(),
        peer: if role == "next" {
            r.next_rank()
        } else {
            r.prev_rank()
        },
        role,
        source,
    };
    let mut pending: VecDeque<(usize, usize)> = VecDeque::new();
    let (a, b) = seg(rank);
    pending.extend((a..b).step_by(bucket).map(|s| (s, (s + bucket).min(b))));
    // the next bucket to take in: step k, range at..end of its segment
    let (mut k, (mut at, mut end)) = (0, recv_seg(0));
    let mut wait = Waiter::new(prev, r.cfg.timeout).and(next);
    loop {
        while at == end && k < steps {
            k += 1;
            if k < steps {
                (at, end) = recv_seg(k);
            }
        }
        if k == steps && pending.is_empty() {
            return Ok(());
        }
        let mut moved = false;
        if let Some(&(s, e)) = pending.front()
            && out.try_write(bytemuck::cast_slice(&buf[s..e]))
        {
            pending.pop_front();
            moved = true;
        }
        if k < steps {
            let m = bucket.min(end - at);
            let dst = &mut buf[at..at + m];
            let reduce = k < n - 1;
            let took = inn
                .try_read(m * 4, &mut |src| apply(dst, None, src, reduce))
                .map_err(|e| peer_err("prev", e))?;
            if took {
                if k + 1 < steps {
                    pending.push_back((at, at + m));
                }
                at += m;
                moved = true;
            }
        }
        if moved {
            wait.reset();
        } else {
            wait.step().map_err(|e| peer_err("prev", e))?;
        }
    }
}

/// Takes in a received piece (native-endian f32 bytes): `dst += src` when reducing,
/// `dst = src` when gathering; `fwd` (what goes on to the next rank) gets the new `dst`.
fn apply(dst: &mut [f32], fwd: Option<&mut [f32]>, src: &[u8], reduce: bool) {
    let src = src
        .chunks_exact(4)
        .map(|c| f32::from_ne_bytes([c[0], c[1], c[2], c[3]]));
    match (reduce, fwd) {
        (true, Some(v)) => {
            for ((d, x), s) in dst.iter_mut().zip(v).zip(src) {
                *d += s;
                *x = *d;
            }
        }
        (true, None) => dst.iter_mut().zip(src).for_each(|(d, s)| *d += s),
        (false, Some(v)) => {
            for ((d, x), s) in dst.iter_mut().zip(v).zip(src) {
                *d = s;
                *x = s;
            }
        }
        (false, None) => dst.iter_mut().zip(src).for_each(|(d, s)| *d = s),
    }
}
