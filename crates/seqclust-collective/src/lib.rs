#![doc = include_str!("../README.md")]

pub mod error;
pub mod local;
#[cfg(feature = "nccl")]
pub mod nccl;
pub mod ring;
pub mod sparse;

pub use error::{Error, Result};
pub use local::Local;
#[cfg(feature = "nccl")]
pub use nccl::{Nccl, NcclId, nccl_available};
pub use ring::{Ring, RingAbort, RingConfig};
pub use sparse::{SparseRows, all_gather_rows};

/// A group of ranks that run the same sequence of calls. Every call is collective: all ranks
/// make it, in the same order, with compatible arguments (equal lengths for
/// [`Self::all_reduce_sum`], the same root for [`Self::broadcast`]).
pub trait Collective: Send {
    /// This process's rank, `0..world_size()`.
    fn rank(&self) -> usize;

    /// Number of ranks.
    fn world_size(&self) -> usize;

    /// Replaces `buf` on every rank with the element-wise sum over ranks. The summation order
    /// is fixed by the algorithm, so every rank gets bit-identical values.
    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> Result<()>;

    /// Every rank's message, indexed by rank (this rank's own included).
    fn all_gather(&mut self, mine: &[u8]) -> Result<Vec<Vec<u8>>>;

    /// Replaces `data` on every rank with `root`'s.
    fn broadcast(&mut self, data: &mut Vec<u8>, root: usize) -> Result<()>;

    /// Returns once every rank has called it.
    fn barrier(&mut self) -> Result<()> {
        self.all_reduce_sum(&mut [0.0])
    }
}
