//! Broadcast along the ring: the root sends to the next rank, every other rank receives from
//! its previous one and passes the message on, until it would reach the root again. Meant for
//! small payloads (initial parameters, an NCCL id, centroids): latency grows with the ring.

use std::net::TcpStream;

use super::all_gather::read_message;
use super::{Op, Ring};
use crate::Result;

pub(super) fn chain_broadcast(
    r: &Ring,
    next: &TcpStream,
    prev: &TcpStream,
    data: &mut Vec<u8>,
    root: usize,
) -> Result<()> {
    if r.rank != root {
        *data = read_message(r, prev, Op::Broadcast, root)?;
    }
    if r.next_rank() != root {
        r.send_data(next, &(data.len() as u64).to_le_bytes(), Op::Broadcast)?;
        r.send_data(next, data, Op::Broadcast)?;
    }
    Ok(())
}
