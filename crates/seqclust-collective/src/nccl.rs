//! The GPU collective (feature `nccl`): one rank per GPU, through NVIDIA's NCCL via
//! `cudarc::nccl`. cudarc loads libcuda and libnccl at run time, so this compiles on machines
//! without CUDA; [`nccl_available`] tells whether they can be loaded, and every constructor
//! checks it and returns an error instead of letting cudarc panic on a missing library.
//!
//! Forming a group: rank 0 calls [`NcclId::new`], the coordinator forwards its 128 bytes to the
//! other ranks ([`NcclId::from_bytes`]), and every rank calls [`Nccl::connect`] with the same id.
//!
//! A dead peer leaves NCCL's kernels spinning on the GPU, so every call waits for its work with
//! a deadline ([`Nccl::set_timeout`]); past it the call fails with a retryable [`Error::Nccl`],
//! the group is poisoned, and dropping it aborts the communicator (`ncclCommAbort`), which stops
//! those kernels. Forming the group (`ncclCommInitRank`) blocks until every rank has joined.

use std::ffi::c_char;
use std::sync::{Arc, OnceLock};
use std::time::{Duration, Instant};

use cudarc::driver::{CudaContext, CudaSlice, CudaStream, DeviceRepr, DriverError};
use cudarc::nccl::ReduceOp::Sum;
use cudarc::nccl::result::NcclError;
use cudarc::nccl::sys::ncclResult_t::{ncclRemoteError, ncclSystemError};
use cudarc::nccl::{Comm, Id};

use crate::{Collective, Error, Result};

/// Bytes of an NCCL unique id (`ncclUniqueId::internal`).
pub const NCCL_ID_BYTES: usize = 128;

/// The largest message accepted, as in the ring (a corrupt length must not allocate without
/// bound).
const MAX_MESSAGE: u64 = 1 << 32;

/// Whether the CUDA driver library (libcuda) and libnccl can be loaded in this process (checked
/// once). Without them every cudarc call would panic.
pub fn nccl_available() -> bool {
    static PRESENT: OnceLock<bool> = OnceLock::new();
    *PRESENT.get_or_init(|| {
        // SAFETY: both only try to open the libraries under their usual names (running their
        // initialisers, as any use of them would) and close them again; no state is shared.
        unsafe { cudarc::driver::sys::is_culib_present() && cudarc::nccl::sys::is_culib_present() }
    })
}

fn require_nccl(op: &'static str) -> Result<()> {
    if nccl_available() {
        return Ok(());
    }
    let message = "libcuda or libnccl cannot be loaded (no GPU driver or NCCL here)";
    Err(failure(op, message.into(), false))
}

fn failure(op: &'static str, message: String, transport: bool) -> Error {
    Error::Nccl {
        op,
        message,
        transport,
    }
}

/// Turns cudarc's errors into ours, naming the operation.
trait During<T> {
    fn during(self, op: &'static str) -> Result<T>;
}

/// NCCL errors: transport failures (a system call such as a socket operation failed, or a
/// remote rank failed or exited) are retryable with a new group; misuse is not.
impl<T> During<T> for std::result::Result<T, NcclError> {
    fn during(self, op: &'static str) -> Result<T> {
        let transport = |e: &NcclError| matches!(e.0, ncclSystemError | ncclRemoteError);
        self.map_err(|e| failure(op, format!("{:?}", e.0), transport(&e)))
    }
}

/// CUDA driver errors (no device, out of memory, a fault): not retryable.
impl<T> During<T> for std::result::Result<T, DriverError> {
    fn during(self, op: &'static str) -> Result<T> {
        self.map_err(|e| failure(op, format!("CUDA: {e}"), false))
    }
}

/// The id that names one NCCL group: created on rank 0, sent to every other rank.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct NcclId(pub [u8; NCCL_ID_BYTES]);

impl NcclId {
    /// A fresh id (`ncclGetUniqueId`; it holds rank 0's bootstrap address). Call on rank 0 only.
    pub fn new() -> Result<NcclId> {
        require_nccl("id")?;
        let id = Id::new().during("id")?;
        Ok(NcclId(id.internal().map(|c| c.to_ne_bytes()[0])))
    }

    /// The id from the bytes rank 0 sent ([`Self::as_bytes`]); fails unless there are exactly
    /// [`NCCL_ID_BYTES`].
    pub fn from_bytes(bytes: &[u8]) -> Result<NcclId> {
        let raw = bytes.try_into().map_err(|_| Error::Malformed {
            what: "NCCL id",
            detail: format!("{} bytes, expected {NCCL_ID_BYTES}", bytes.len()),
        })?;
        Ok(NcclId(raw))
    }

    /// The bytes to forward to the other ranks.
    pub fn as_bytes(&self) -> &[u8] {
        &self.0
    }

    fn to_cudarc(self) -> Id {
        Id::uninit(self.0.map(|b| c_char::from_ne_bytes([b])))
    }
}

/// One rank of an NCCL group, driving one GPU on its own stream.
#[derive(Debug)]
pub struct Nccl {
    rank: usize,
    world: usize,
    /// Declared before the stream, so it is dropped (aborted) first.
    comm: Comm,
    stream: Arc<CudaStream>,
    timeout: Duration,
    poisoned: Option<String>,
}

// SAFETY: `Comm` is not `Send` only because it holds NCCL's raw communicator pointer. NCCL allows
// a communicator to be used from any thread as long as no two threads use it at once; `Nccl` is
// not `Sync` and every call takes `&mut self`. cudarc binds the CUDA context to the calling
// thread in each driver call, and its stream, context and buffers are `Send`.
unsafe impl Send for Nccl {}

impl Nccl {
    /// Joins the group named by `id` as `rank` of `world`, on GPU `device` (an ordinal of this
    /// machine). Every rank calls it with the same `id` and `world`; it returns once all have
    /// joined. Fails, without panicking, where libcuda, libnccl or the device is missing.
    pub fn connect(rank: usize, world: usize, id: &NcclId, device: usize) -> Result<Nccl> {
        if rank >= world {
            return Err(Error::Invalid(format!("rank {rank} in a world of {world}")));
        }
        if i32::try_from(world).is_err() {
            // cudarc's `Comm::from_rank` would panic converting it
            return Err(Error::Invalid(format!("world of {world} exceeds an i32")));
        }
        require_nccl("connect")?;
        let ctx = CudaContext::new(device).during("connect")?;
        let stream = ctx.new_stream().during("connect")?;
        let comm =
            Comm::from_rank(stream.clone(), rank, world, id.to_cudarc()).during("connect")?;
        let timeout = Duration::from_secs(60);
        Ok(Nccl {
            rank,
            world,
            comm,
            stream,
            timeout,
            poisoned: None,
        })
    }

    /// How long a call waits for its GPU work before failing (default 60 s).
    pub fn set_timeout(&mut self, timeout: Duration) {
        self.timeout = timeout;
    }

    /// Runs one call; any failure poisons the group (the ranks no longer agree where they are).
    fn guarded<T>(&mut self, call: impl FnOnce(&Self) -> Result<T>) -> Result<T> {
        if let Some(why) = &self.poisoned {
            return Err(Error::Poisoned(why.clone()));
        }
        let out = call(self);
        if let Err(e) = &out {
            self.poisoned = Some(e.to_string());
        }
        out
    }

    /// Waits until the work queued on the stream so far has finished, or the deadline passes.
    fn wait(&self, op: &'static str) -> Result<()> {
        let done = self.stream.record_event(None).during(op)?;
        let deadline = Instant::now() + self.timeout;
        let mut polls = 0u64;
        while !done.try_is_complete().during(op)? {
            if Instant::now() >= deadline {
                let t = self.timeout;
                return Err(failure(
                    op,
                    format!("unfinished after {t:?}: a peer died"),
                    true,
                ));
            }
            // spin at first (short calls), then back off to 100 µs naps
            polls += 1;
            std::thread::sleep(Duration::from_micros(polls.saturating_sub(1000).min(100)));
        }
        Ok(())
    }

    /// Copies a device buffer into `dst` once the collective that fills it has finished.
    fn download<T: DeviceRepr>(
        &self,
        op: &'static str,
        src: &CudaSlice<T>,
        dst: &mut [T],
    ) -> Result<()> {
        self.wait(op)?;
        self.stream.memcpy_dtoh(src, dst).during(op)?;
        self.stream.synchronize().during(op)
    }
}

fn check_len(len: u64, whose: usize) -> Result<usize> {
    if len > MAX_MESSAGE {
        return Err(Error::Malformed {
            what: "NCCL message",
            detail: format!("rank {whose}'s message claims {len} bytes (limit {MAX_MESSAGE})"),
        });
    }
    Ok(len as usize)
}

impl Collective for Nccl {
    fn rank(&self) -> usize {
        self.rank
    }

    fn world_size(&self) -> usize {
        self.world
    }

    /// Copies `buf` to the GPU, sums it there (`ncclAllReduce`, in place) and copies it back.
    /// The training loop keeps its gradients in CPU buffers today, hence the two copies; with
    /// training on the GPU the buffers would stay on the device. NCCL does not document that
    /// every rank gets bit-identical sums, though its ring and tree algorithms deliver them.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()> {
        const OP: &str = "all-reduce";
        if buf.is_empty() {
            return Ok(());
        }
        self.guarded(|n| {
            let mut dev = n.stream.clone_htod(buf).during(OP)?;
            n.comm.all_reduce_in_place(&mut dev, &Sum).during(OP)?;
            n.download(OP, &dev, buf)
        })
    }

    /// All-gathers the lengths (u64), then every message padded to the longest, then trims.
    fn all_gather(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>> {
        const OP: &str = "all-gather";
        self.guarded(|n| {
            let len = n.stream.clone_htod(&[mine.len() as u64]).during(OP)?;
            let mut lens_dev = n.stream.alloc_zeros::<u64>(n.world).during(OP)?;
            n.comm.all_gather(&len, &mut lens_dev).during(OP)?;
            let mut lens = vec![0u64; n.world];
            n.download(OP, &lens_dev, &mut lens)?;
            let lens = (lens.iter().enumerate())
                .map(|(r, &l)| check_len(l, r))
                .collect::<Result<Vec<usize>>>()?;
            let longest = lens.iter().copied().max().unwrap_or(0);
            if longest == 0 {
                return Ok(vec![Vec::new(); n.world]);
            }
            let total = longest.checked_mul(n.world).ok_or_else(|| {
                Error::Invalid(format!("{} messages of {longest} bytes overflow", n.world))
            })?;
            let mut padded = vec![0u8; longest];
            padded[..mine.len()].copy_from_slice(mine);
            let send = n.stream.clone_htod(&padded).during(OP)?;
            let mut recv_dev = n.stream.alloc_zeros::<u8>(total).during(OP)?;
            n.comm.all_gather(&send, &mut recv_dev).during(OP)?;
            let mut all = vec![0u8; total];
            n.download(OP, &recv_dev, &mut all)?;
            let split = all.chunks_exact(longest).zip(&lens);
            Ok(split.map(|(m, &l)| m[..l].to_vec()).collect())
        })
    }

    /// Broadcasts the length (u64), then the bytes (`ncclBroadcast`, in place).
    fn broadcast(&mut self, data: &mut Vec<u8>, root: usize) -> Result<()> {
        const OP: &str = "broadcast";
        if root >= self.world {
            let world = self.world;
            return Err(Error::Invalid(format!(
                "broadcast root {root} in a world of {world}"
            )));
        }
        let root32 = root as i32; // < world, which `connect` checked fits in an i32
        self.guarded(|n| {
            let mut dlen = n.stream.clone_htod(&[data.len() as u64]).during(OP)?;
            n.comm.broadcast_in_place(&mut dlen, root32).during(OP)?;
            let mut len = [0u64];
            n.download(OP, &dlen, &mut len)?;
            let len = check_len(len[0], root)?;
            if n.rank != root {
                data.clear();
                data.resize(len, 0);
            }
            if len == 0 {
                return Ok(());
            }
            let mut bytes = n.stream.clone_htod(&data[..]).during(OP)?;
            n.comm.broadcast_in_place(&mut bytes, root32).during(OP)?;
            if n.rank == root {
                n.wait(OP)
            } else {
                n.download(OP, &bytes, &mut data[..])
            }
        })
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn availability_check_does_not_panic() {
        // false on machines without a GPU driver or NCCL (CI), true on GPU hosts
        assert_eq!(nccl_available(), nccl_available());
    }

    #[test]
    fn id_from_bytes_checks_the_length() {
        for bad in [0, 127, 129] {
            let err = NcclId::from_bytes(&vec![7u8; bad]).err();
            assert!(
                matches!(err, Some(Error::Malformed { .. })),
                "{bad} bytes: {err:?}"
            );
        }
        let raw: Vec<u8> = (0..128u8).collect();
        let id = NcclId::from_bytes(&raw).ok();
        assert_eq!(id.map(|i| i.as_bytes().to_vec()), Some(raw));
    }

    #[test]
    fn connect_fails_with_an_error_not_a_panic() {
        let id = NcclId([0; NCCL_ID_BYTES]);
        // no such GPU anywhere: an error on GPU hosts too, before any NCCL bootstrap
        let err = Nccl::connect(0, 1, &id, 1 << 20).err();
        assert!(matches!(err, Some(Error::Nccl { .. })), "{err:?}");
        assert!(err.is_some_and(|e| !e.is_retryable()));
        let err = Nccl::connect(2, 2, &id, 0).err();
        assert!(matches!(err, Some(Error::Invalid(_))), "{err:?}");
        if !nccl_available() {
            let err = Nccl::connect(0, 1, &id, 0).err();
            assert!(matches!(err, Some(Error::Nccl { .. })), "{err:?}");
            assert!(matches!(NcclId::new(), Err(Error::Nccl { .. })));
        }
    }
}
