//! Same-host links through shared memory. Over loopback TCP every byte is copied into the
//! kernel and out again, with a system call and a wake-up per chunk; two ranks on one machine
//! can instead share a ring of slots in a `/dev/shm` file: the sender copies a bucket into a
//! slot, the receiver reduces straight out of it. The TCP connection stays up beside it for
//! the per-call headers and as the liveness signal: a peer that dies closes its socket, and a
//! waiting rank checks for that while it waits.
//!
//! Layout of the mapping: `head` (slots published, written by the sender) and `tail` (slots
//! consumed, written by the receiver) on separate cache lines, a random token that proves both
//! ends mapped the same file, then `SLOTS` slots of a 64-byte length header and `SLOT` bytes
//! of data. A message longer than a slot takes several, in order.

use std::fs::OpenOptions;
use std::io;
use std::net::TcpStream;
use std::os::fd::AsRawFd;
use std::path::{Path, PathBuf};
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::{Duration, Instant};

use memmap2::MmapMut;

/// Data bytes per slot.
pub(super) const SLOT: usize = 1 << 20;
/// Slots per link.
pub(super) const SLOTS: usize = 8;
const HEADER: usize = 256;
const SLOT_HEADER: usize = 64;
const SIZE: usize = HEADER + SLOTS * (SLOT_HEADER + SLOT);

/// One direction of a same-host link.
#[derive(Debug)]
pub(super) struct ShmLink {
    map: MmapMut,
}

impl ShmLink {
    /// The receiving end creates the segment (under `dir`) and offers its path and token to
    /// the sender; the caller unlinks the file once the sender has answered.
    pub(super) fn create(dir: &Path, name: &str) -> io::Result<(ShmLink, PathBuf, u128)> {
        let path = dir.join(name);
        let file = OpenOptions::new()
            .read(true)
            .write(true)
            .create_new(true)
            .open(&path)?;
        // reserve the pages now: on a full tmpfs (a container's 64 MiB /dev/shm) a sparse file
        // would map fine and then kill the process with SIGBUS on first write; reserving fails
        // cleanly instead and the link stays on TCP
        // SAFETY: a valid open descriptor; posix_fallocate only allocates file space.
        let err = unsafe { libc::posix_fallocate(file.as_raw_fd(), 0, SIZE as libc::off_t) };
        if err != 0 {
            let _ = std::fs::remove_file(&path);
            return Err(io::Error::from_raw_os_error(err));
        }
        // SAFETY: the file was just created by us with this size; the only other process that
        // maps it is the peer, and all shared state goes through the atomics below.
        let map = unsafe { MmapMut::map_mut(&file)? };
        let token = random_token();
        let mut link = ShmLink { map };
        link.map[192..208].copy_from_slice(&token.to_le_bytes());
        Ok((link, path, token))
    }

    /// The sending end maps the offered file and checks the token (a different machine, or
    /// a container with its own `/dev/shm`, fails here and the link stays on TCP).
    pub(super) fn open(path: &Path, token: u128) -> io::Result<ShmLink> {
        let file = OpenOptions::new().read(true).write(true).open(path)?;
        if file.metadata()?.len() != SIZE as u64 {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared segment of another size",
            ));
        }
        // SAFETY: as in `create`; the size was checked.
        let link = ShmLink {
            map: unsafe { MmapMut::map_mut(&file)? },
        };
        if link.map[192..208] != token.to_le_bytes() {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                "shared segment of another link",
            ));
        }
        Ok(link)
    }

    fn counter(&self, at: usize) -> &AtomicU64 {
        // SAFETY: offsets 0 and 128 of a page-aligned mapping are 8-byte aligned and inside it;
        // both processes access them only atomically; the reference lives no longer than `self`.
        unsafe { &*self.map.as_ptr().add(at).cast::<AtomicU64>() }
    }

    fn slot_ptr(&self, i: usize) -> *mut u8 {
        // SAFETY: in bounds for i < SLOTS by the layout.
        unsafe {
            self.map
                .as_ptr()
                .add(HEADER + (i % SLOTS) * (SLOT_HEADER + SLOT))
                .cast_mut()
        }
    }

    /// Writes `msg` (in slot-sized pieces; an empty message takes one empty slot), waiting
    /// for free slots with `wait`.
    pub(super) fn write(&self, msg: &[u8], wait: &mut Waiter<'_>) -> io::Result<()> {
        let mut pieces = msg.chunks(SLOT).peekable();
        let empty: &[u8] = &[];
        let first = pieces.peek().is_none().then_some(empty);
        for piece in first.into_iter().chain(pieces) {
            wait.reset();
            while !self.try_write(piece) {
                wait.step()?;
            }
        }
        Ok(())
    }

    /// Writes one piece (at most [`SLOT`] bytes) if a slot is free.
    pub(super) fn try_write(&self, piece: &[u8]) -> bool {
        debug_assert!(piece.len() <= SLOT);
        let (head, tail) = (self.counter(0), self.counter(128));
        let h = head.load(Ordering::Relaxed);
        if h - tail.load(Ordering::Acquire) >= SLOTS as u64 {
            return false;
        }
        let p = self.slot_ptr(h as usize);
        let n = piece.len().min(SLOT);
        // SAFETY: slot h is free (the receiver has consumed slot h − SLOTS) and only this
        // thread writes slots; n ≤ SLOT bytes fit after the 64-byte header.
        unsafe {
            p.cast::<u64>().write((n as u64).to_le());
            std::ptr::copy_nonoverlapping(piece.as_ptr(), p.add(SLOT_HEADER), n);
        }
        head.store(h + 1, Ordering::Release);
        true
    }

    /// Reads a message of `len` bytes, handing each piece and its offset to `f` straight out
    /// of the shared slot.
    pub(super) fn read_with(
        &self,
        len: usize,
        f: &mut dyn FnMut(&[u8], usize),
        wait: &mut Waiter<'_>,
    ) -> io::Result<()> {
        let mut got = 0;
        loop {
            let want = (len - got).min(SLOT);
            wait.reset();
            while !self.try_read(want, &mut |b| f(b, got))? {
                wait.step()?;
            }
            got += want;
            if got == len {
                return Ok(());
            }
        }
    }

    /// Reads one piece of exactly `want` bytes (at most [`SLOT`]) if one has arrived; a piece
    /// of another size means the two ends are out of step.
    pub(super) fn try_read(&self, want: usize, f: &mut dyn FnMut(&[u8])) -> io::Result<bool> {
        let (head, tail) = (self.counter(0), self.counter(128));
        let t = tail.load(Ordering::Relaxed);
        if head.load(Ordering::Acquire) <= t {
            return Ok(false);
        }
        let p = self.slot_ptr(t as usize);
        // SAFETY: slot t was published by the sender (the Acquire above pairs with its
        // Release) and is not rewritten until this thread advances `tail`.
        let n = u64::from_le(unsafe { p.cast::<u64>().read() }) as usize;
        if n != want {
            return Err(io::Error::new(
                io::ErrorKind::InvalidData,
                format!("a piece of {n} bytes where {want} were due"),
            ));
        }
        // SAFETY: as above; n ≤ SLOT bytes follow the header.
        f(unsafe { std::slice::from_raw_parts(p.add(SLOT_HEADER), n) });
        tail.store(t + 1, Ordering::Release);
        Ok(true)
    }
}

fn random_token() -> u128 {
    use std::hash::{BuildHasher, Hasher};
    let mut h = std::collections::hash_map::RandomState::new().build_hasher();
    h.write_u128(Instant::now().elapsed().as_nanos() ^ u128::from(std::process::id()) << 64);
    let a = h.finish();
    let mut h2 = std::collections::hash_map::RandomState::new().build_hasher();
    h2.write_u64(a);
    (u128::from(a) << 64) | u128::from(h2.finish())
}

/// Waiting for the peer: spin briefly, then yield, then sleep in short naps; fails when the
/// peer's socket has closed or nothing happened for `timeout`.
pub(super) struct Waiter<'a> {
    peer: &'a TcpStream,
    other: Option<&'a TcpStream>,
    timeout: Duration,
    since: Instant,
    spins: u32,
}

impl<'a> Waiter<'a> {
    pub(super) fn new(peer: &'a TcpStream, timeout: Duration) -> Self {
        Waiter {
            peer,
            other: None,
            timeout,
            since: Instant::now(),
            spins: 0,
        }
    }

    /// Also watches a second link (a loop that waits on both directions).
    pub(super) fn and(mut self, other: &'a TcpStream) -> Self {
        self.other = Some(other);
        self
    }

    pub(super) fn reset(&mut self) {
        self.spins = 0;
        self.since = Instant::now();
    }

    pub(super) fn step(&mut self) -> io::Result<()> {
        self.spins += 1;
        if self.spins < 200 {
            std::hint::spin_loop();
            return Ok(());
        }
        if self.spins < 400 {
            std::thread::yield_now();
            return Ok(());
        }
        std::thread::sleep(Duration::from_micros(20));
        if self.spins.is_multiple_of(256) {
            if !peer_alive(self.peer)? || !self.other.map_or(Ok(true), peer_alive)? {
                return Err(io::Error::new(
                    io::ErrorKind::ConnectionAborted,
                    "the peer closed its link",
                ));
            }
            if self.since.elapsed() > self.timeout {
                return Err(io::Error::new(
                    io::ErrorKind::TimedOut,
                    "the peer made no progress before the deadline",
                ));
            }
        }
        Ok(())
    }
}

/// Whether the peer's end of `s` is still open (a peek that does not block or consume).
fn peer_alive(s: &TcpStream) -> io::Result<bool> {
    let mut b = [0u8; 1];
    // SAFETY: b is a valid 1-byte buffer; MSG_PEEK | MSG_DONTWAIT neither blocks nor consumes.
    let n = unsafe {
        libc::recv(
            s.as_raw_fd(),
            b.as_mut_ptr().cast(),
            1,
            libc::MSG_PEEK | libc::MSG_DONTWAIT,
        )
    };
    if n > 0 {
        return Ok(true);
    }
    if n == 0 {
        return Ok(false);
    }
    let e = io::Error::last_os_error();
    match e.kind() {
        io::ErrorKind::WouldBlock | io::ErrorKind::Interrupted => Ok(true),
        _ => Err(e),
    }
}
