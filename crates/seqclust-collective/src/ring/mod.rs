//! The CPU collective: ranks in a ring over TCP, each connected to the next and accepting
//! from the previous one. Each algorithm is in its own file.

mod all_gather;
mod all_reduce;
mod broadcast;
mod shm;

use std::io::{Read, Write};
use std::net::{Shutdown, SocketAddr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::time::{Duration, Instant};

use self::shm::{ShmLink, Waiter};
use crate::{Collective, Error, Result};

const MAGIC: u32 = 0x5351_434C; // "SQCL"
const VERSION: u32 = 1;
/// Requested kernel socket buffer size.
const SOCKET_BUFFER: usize = 4 << 20;

/// Settings of a ring group.
#[derive(Debug, Clone)]
pub struct RingConfig {
    /// Deadline of every socket read and write (and of forming the group): a peer silent for
    /// this long fails the call.
    pub timeout: Duration,
    /// Floats per pipelined bucket of the all-reduce.
    pub bucket_floats: usize,
    /// The membership epoch: peers of another epoch (a stale group) are turned away.
    pub epoch: u64,
    /// Move the data of links between ranks on the same machine through shared memory
    /// (`/dev/shm`) instead of loopback TCP; links to other machines stay on TCP.
    pub shared_memory: bool,
}

impl Default for RingConfig {
    fn default() -> Self {
        RingConfig {
            timeout: Duration::from_secs(60),
            bucket_floats: 1 << 18,
            epoch: 0,
            shared_memory: true,
        }
    }
}

/// One rank of a ring group.
#[derive(Debug)]
pub struct Ring {
    rank: usize,
    world: usize,
    cfg: RingConfig,
    /// The link to rank + 1 (we write) and from rank − 1 (we read); `None` in a world of one.
    next: Option<TcpStream>,
    prev: Option<TcpStream>,
    /// Shared-memory data paths of the two links, when both ends are on this machine.
    next_shm: Option<ShmLink>,
    prev_shm: Option<ShmLink>,
    seq: u64,
    poisoned: Option<String>,
}

/// Ends a group's calls from another thread: shuts both links down, so that a rank blocked
/// in a call whose peer is cut off by the network fails at once instead of at the deadline
/// (a partition drops packets without closing anything).
#[derive(Debug)]
pub struct RingAbort {
    links: Vec<TcpStream>,
}

impl RingAbort {
    /// Shuts both links down; the blocked or next call fails with a peer error.
    pub fn abort(&self) {
        for s in &self.links {
            let _ = s.shutdown(Shutdown::Both);
        }
    }
}

/// Operation codes of the per-call header.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
enum Op {
    AllReduce = 1,
    AllGather = 2,
    Broadcast = 3,
}

impl Op {
    fn name(self) -> &'static str {
        match self {
            Op::AllReduce => "all-reduce",
            Op::AllGather => "all-gather",
            Op::Broadcast => "broadcast",
        }
    }
}

impl Ring {
    /// Forms the group: `listener` is this rank's bound listener and `addrs[r]` the listener
    /// address of rank `r` (the coordinator hands them out). Connects to the next rank and
    /// accepts the previous one, checking epoch, world size, rank and byte order; returns
    /// when both links are up or fails at the deadline.
    pub fn connect(
        rank: usize,
        addrs: &[SocketAddr],
        listener: TcpListener,
        cfg: RingConfig,
    ) -> Result<Ring> {
        let world = addrs.len();
        if rank >= world {
            return Err(Error::Invalid(format!("rank {rank} in a world of {world}")));
        }
        if cfg.bucket_floats == 0 {
            return Err(Error::Invalid("bucket_floats must be positive".into()));
        }
        let mut ring = Ring {
            rank,
            world,
            cfg,
            next: None,
            prev: None,
            next_shm: None,
            prev_shm: None,
            seq: 0,
            poisoned: None,
        };
        if world == 1 {
            return Ok(ring);
        }
        let deadline = Instant::now() + ring.cfg.timeout;
        let next_rank = (rank + 1) % world;
        let next = connect_until(addrs[next_rank], next_rank, deadline)?;
        ring.configure(&next, next_rank, "next")?;
        let mut hello = Vec::with_capacity(28);
        hello.extend_from_slice(&MAGIC.to_le_bytes());
        hello.extend_from_slice(&VERSION.to_le_bytes());
        hello.extend_from_slice(&ring.cfg.epoch.to_le_bytes());
        hello.extend_from_slice(&(rank as u32).to_le_bytes());
        hello.extend_from_slice(&(world as u32).to_le_bytes());
        hello.extend_from_slice(&1.0f32.to_ne_bytes());
        (&next).write_all(&hello).map_err(|source| Error::Peer {
            op: "connect",
            peer: next_rank,
            role: "next",
            source,
        })?;
        ring.next = Some(next);
        ring.prev = Some(ring.accept_prev(&listener, deadline)?);
        ring.negotiate_shared_memory()?;
        Ok(ring)
    }

    /// A handle that ends this group's calls from another thread ([`RingAbort::abort`]).
    pub fn abort_handle(&self) -> Result<RingAbort> {
        let links = [&self.next, &self.prev]
            .into_iter()
            .flatten()
            .map(|s| {
                s.try_clone()
                    .map_err(|e| Error::Invalid(format!("cannot clone a link: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(RingAbort { links })
    }

    /// Offers the previous rank a shared-memory segment for the data it sends us, answers the
    /// next rank's offer, and keeps whichever links both ends could map. Every message is
    /// small, so the writes cannot block one another.
    fn negotiate_shared_memory(&mut self) -> Result<()> {
        let (Some(next), Some(prev)) = (&self.next, &self.prev) else {
            return Ok(());
        };
        let (pn, nn) = (self.prev_rank(), self.next_rank());
        let peer = |peer, role| {
            move |source| Error::Peer {
                op: "connect",
                peer,
                role,
                source,
            }
        };
        let offer = if self.cfg.shared_memory {
            static SEGMENTS: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
            let name = format!(
                "seqclust-ring-{}-{}-{}-{}",
                std::process::id(),
                self.cfg.epoch,
                self.rank,
                SEGMENTS.fetch_add(1, std::sync::atomic::Ordering::Relaxed)
            );
            match ShmLink::create(&shm_dir(), &name) {
                Ok(o) => Some(o),
                Err(e) => {
                    tracing::debug!(error = %e, "collective: no shared memory, staying on TCP");
                    None
                }
            }
        } else {
            None
        };
        let mut msg = vec![u8::from(offer.is_some())];
        if let Some((_, path, token)) = &offer {
            let p = path.to_string_lossy();
            msg.extend_from_slice(&token.to_le_bytes());
            msg.extend_from_slice(&(p.len() as u16).to_le_bytes());
            msg.extend_from_slice(p.as_bytes());
        }
        (&*prev).write_all(&msg).map_err(peer(pn, "prev"))?;
        // the next rank's offer
        let mut flag = [0u8; 1];
        (&*next).read_exact(&mut flag).map_err(peer(nn, "next"))?;
        let mut accepted = None;
        if flag[0] == 1 {
            let mut head = [0u8; 18];
            (&*next).read_exact(&mut head).map_err(peer(nn, "next"))?;
            let token = u128::from_le_bytes(head[..16].try_into().unwrap_or_default());
            let mut path = vec![0u8; usize::from(u16::from_le_bytes([head[16], head[17]]))];
            (&*next).read_exact(&mut path).map_err(peer(nn, "next"))?;
            let path = PathBuf::from(String::from_utf8_lossy(&path).into_owned());
            accepted = ShmLink::open(&path, token).ok();
        }
        (&*next)
            .write_all(&[u8::from(accepted.is_some())])
            .map_err(peer(nn, "next"))?;
        // the previous rank's answer to ours
        (&*prev).read_exact(&mut flag).map_err(peer(pn, "prev"))?;
        if let Some((link, path, _)) = offer {
            // both ends have it mapped (or never will): nothing is left behind in /dev/shm
            let _ = std::fs::remove_file(path);
            if flag[0] == 1 {
                self.prev_shm = Some(link);
            }
        }
        self.next_shm = accepted;
        Ok(())
    }

    /// Whether the links to the next and from the previous rank use shared memory.
    pub fn shared_memory_links(&self) -> (bool, bool) {
        (self.next_shm.is_some(), self.prev_shm.is_some())
    }

    fn prev_rank(&self) -> usize {
        (self.rank + self.world - 1) % self.world
    }

    fn next_rank(&self) -> usize {
        (self.rank + 1) % self.world
    }

    fn configure(&self, s: &TcpStream, peer: usize, role: &'static str) -> Result<()> {
        let io = |source| Error::Peer {
            op: "connect",
            peer,
            role,
            source,
        };
        s.set_nodelay(true).map_err(io)?;
        // large kernel buffers: a bucket goes out in a few system calls instead of many
        // wake-ups of a 16 KiB default (the kernel caps these at net.core.[rw]mem_max)
        let sock = socket2::SockRef::from(s);
        sock.set_send_buffer_size(SOCKET_BUFFER).map_err(io)?;
        sock.set_recv_buffer_size(SOCKET_BUFFER).map_err(io)?;
        s.set_read_timeout(Some(self.cfg.timeout)).map_err(io)?;
        s.set_write_timeout(Some(self.cfg.timeout)).map_err(io)
    }

    /// Accepts connections until one from the previous rank of this epoch arrives; others
    /// (a stale group's stragglers) are dropped with a warning.
    fn accept_prev(&self, listener: &TcpListener, deadline: Instant) -> Result<TcpStream> {
        let prev = self.prev_rank();
        let io = |source| Error::Peer {
            op: "connect",
            peer: prev,
            role: "prev",
            source,
        };
        listener.set_nonblocking(true).map_err(io)?;
        loop {
            match listener.accept() {
                Ok((s, from)) => {
                    s.set_nonblocking(false).map_err(io)?;
                    self.configure(&s, prev, "prev")?;
                    let mut hello = [0u8; 28];
                    if let Err(e) = (&s).read_exact(&mut hello) {
                        tracing::warn!(%from, error = %e, "collective: dropped a connection without a handshake");
                        continue;
                    }
                    let u32_at = |i: usize| {
                        u32::from_le_bytes([hello[i], hello[i + 1], hello[i + 2], hello[i + 3]])
                    };
                    let epoch = u64::from_le_bytes(hello[8..16].try_into().unwrap_or_default());
                    let (magic, version, rank, world) =
                        (u32_at(0), u32_at(4), u32_at(16), u32_at(20));
                    if magic != MAGIC || version != VERSION {
                        tracing::warn!(%from, magic, version, "collective: dropped a connection speaking another protocol");
                        continue;
                    }
                    if epoch != self.cfg.epoch
                        || world as usize != self.world
                        || rank as usize != prev
                    {
                        tracing::warn!(%from, epoch, world, rank, "collective: dropped a connection from another group");
                        continue;
                    }
                    if hello[24..28] != 1.0f32.to_ne_bytes() {
                        return Err(Error::Mismatch {
                            op: "connect",
                            peer: prev,
                            what: "uses another byte order".into(),
                        });
                    }
                    return Ok(s);
                }
                Err(e) if e.kind() == std::io::ErrorKind::WouldBlock => {
                    if Instant::now() >= deadline {
                        return Err(io(std::io::Error::new(
                            std::io::ErrorKind::TimedOut,
                            "the previous rank did not connect before the deadline",
                        )));
                    }
                    std::thread::sleep(Duration::from_millis(2));
                }
                Err(e) => return Err(io(e)),
            }
        }
    }

    /// Fails fast on a poisoned group; otherwise the links (for a world of two or more).
    fn links(&self) -> Result<(&TcpStream, &TcpStream)> {
        if let Some(why) = &self.poisoned {
            return Err(Error::Poisoned(why.clone()));
        }
        match (&self.next, &self.prev) {
            (Some(n), Some(p)) => Ok((n, p)),
            _ => Err(Error::Invalid("no links in a world of one".into())),
        }
    }

    /// Runs one call: sends and checks the header, then `body`; any failure poisons the
    /// group and shuts both links so that no peer waits for the full deadline.
    fn call<T>(
        &mut self,
        op: Op,
        len: u64,
        body: impl FnOnce(&Ring, &TcpStream, &TcpStream) -> Result<T>,
    ) -> Result<T> {
        self.seq += 1;
        let out = (|| {
            let (next, prev) = self.links()?;
            let mut h = [0u8; 17];
            h[0] = op as u8;
            h[1..9].copy_from_slice(&self.seq.to_le_bytes());
            h[9..17].copy_from_slice(&len.to_le_bytes());
            self.send(next, &h, op)?;
            let mut got = [0u8; 17];
            self.recv(prev, &mut got, op)?;
            if got != h {
                let seq = u64::from_le_bytes(got[1..9].try_into().unwrap_or_default());
                let their_len = u64::from_le_bytes(got[9..17].try_into().unwrap_or_default());
                return Err(Error::Mismatch {
                    op: op.name(),
                    peer: self.prev_rank(),
                    what: format!(
                        "sent operation {} call {seq} of length {their_len}, expected {} call {} of length {len}",
                        got[0], op as u8, self.seq
                    ),
                });
            }
            body(self, next, prev)
        })();
        if let Err(e) = &out {
            self.poison(e.to_string());
        }
        out
    }

    fn poison(&mut self, why: String) {
        for s in [&self.next, &self.prev].into_iter().flatten() {
            let _ = s.shutdown(Shutdown::Both);
        }
        self.poisoned = Some(why);
    }

    fn send(&self, mut s: &TcpStream, bytes: &[u8], op: Op) -> Result<()> {
        s.write_all(bytes).map_err(|source| Error::Peer {
            op: op.name(),
            peer: self.next_rank(),
            role: "next",
            source,
        })
    }

    /// Sends a data block to the next rank (through shared memory when the link has it).
    fn send_data(&self, next: &TcpStream, bytes: &[u8], op: Op) -> Result<()> {
        match &self.next_shm {
            Some(l) => l
                .write(bytes, &mut Waiter::new(next, self.cfg.timeout))
                .map_err(|source| Error::Peer {
                    op: op.name(),
                    peer: self.next_rank(),
                    role: "next",
                    source,
                }),
            None => self.send(next, bytes, op),
        }
    }

    /// Receives a data block of `len` bytes from the previous rank, handing `f` its pieces and
    /// their offsets (straight out of shared memory, or out of `scratch` over TCP).
    fn recv_data(
        &self,
        prev: &TcpStream,
        len: usize,
        scratch: &mut Vec<u8>,
        f: &mut dyn FnMut(&[u8], usize),
        op: Op,
    ) -> Result<()> {
        match &self.prev_shm {
            Some(l) => l
                .read_with(len, f, &mut Waiter::new(prev, self.cfg.timeout))
                .map_err(|source| Error::Peer {
                    op: op.name(),
                    peer: self.prev_rank(),
                    role: "prev",
                    source,
                }),
            None => {
                scratch.resize(len, 0);
                self.recv(prev, scratch, op)?;
                f(scratch, 0);
                Ok(())
            }
        }
    }

    fn recv(&self, mut s: &TcpStream, bytes: &mut [u8], op: Op) -> Result<()> {
        s.read_exact(bytes).map_err(|source| Error::Peer {
            op: op.name(),
            peer: self.prev_rank(),
            role: "prev",
            source,
        })
    }
}

/// Runs `send` over what `queue` yields on a helper thread while `receive` runs on this one,
/// so the link is busy in both directions (and a message larger than the socket buffers
/// cannot deadlock the ring). `receive` must drop the queue's sender when it is done. A
/// failure on either side shuts the other side's link so that neither waits for the
/// deadline; the sender's error is reported when both fail (it is the cause).
fn duplex<T: Send>(
    next: &TcpStream,
    prev: &TcpStream,
    queue: crossbeam_channel::Receiver<T>,
    mut send: impl FnMut(T) -> Result<()> + Send,
    receive: impl FnOnce() -> Result<()>,
) -> Result<()> {
    std::thread::scope(|s| {
        let sender = s.spawn(move || {
            for item in queue.iter() {
                if let Err(e) = send(item) {
                    let _ = prev.shutdown(Shutdown::Both);
                    return Err(e);
                }
            }
            Ok(())
        });
        let received = receive();
        if received.is_err() {
            let _ = next.shutdown(Shutdown::Both);
        }
        let sent = sender
            .join()
            .unwrap_or_else(|p| std::panic::resume_unwind(p));
        sent.and(received)
    })
}

/// Where shared segments live: `/dev/shm` when the machine has it.
fn shm_dir() -> PathBuf {
    let d = PathBuf::from("/dev/shm");
    if d.is_dir() { d } else { std::env::temp_dir() }
}

fn connect_until(addr: SocketAddr, peer: usize, deadline: Instant) -> Result<TcpStream> {
    loop {
        let left = deadline.saturating_duration_since(Instant::now());
        match TcpStream::connect_timeout(&addr, left.max(Duration::from_millis(1))) {
            Ok(s) => return Ok(s),
            Err(source) if Instant::now() >= deadline => {
                return Err(Error::Connect { peer, addr, source });
            }
            // the peer may not listen yet
            Err(_) => std::thread::sleep(Duration::from_millis(10)),
        }
    }
}

impl Collective for Ring {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        if self.world == 1 {
            return Ok(());
        }
        let bucket = self.cfg.bucket_floats;
        self.call(Op::AllReduce, buf.len() as u64, |r, next, prev| {
            all_reduce::ring_all_reduce(r, next, prev, buf, bucket)
        })
    }

    fn all_gather(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        if self.world == 1 {
            return Ok(vec![mine.to_vec()]);
        }
        self.call(Op::AllGather, 0, |r, next, prev| {
            all_gather::ring_all_gather(r, next, prev, mine)
        })
    }

    fn broadcast(&mut self, data: &mut Vec<u8>, root: usize) -> Result<()> {
        if root >= self.world {
            return Err(Error::Invalid(format!(
                "broadcast root {root} in a world of {}",
                self.world
            )));
        }
        if self.world == 1 {
            return Ok(());
        }
        self.call(Op::Broadcast, root as u64, |r, next, prev| {
            broadcast::chain_broadcast(r, next, prev, data, root)
        })
    }
}
