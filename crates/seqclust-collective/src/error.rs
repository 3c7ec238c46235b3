//! Errors of the collectives.

use std::net::SocketAddr;

/// What can go wrong in a collective call.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A socket operation with a peer failed (closed, reset, or past the deadline).
    #[error("collective {op} failed talking to rank {peer} ({role})")]
    Peer {
        /// The operation.
        op: &'static str,
        /// The peer's rank.
        peer: usize,
        /// Which link: "next" (we send) or "prev" (we receive).
        role: &'static str,
        /// The I/O error.
        #[source]
        source: std::io::Error,
    },
    /// The group could not be formed before the deadline.
    #[error("could not reach rank {peer} at {addr} to form the group")]
    Connect {
        /// The peer's rank.
        peer: usize,
        /// Its address.
        addr: SocketAddr,
        /// The last error.
        #[source]
        source: std::io::Error,
    },
    /// A peer sent something other than what this rank expected (another operation, length
    /// or epoch): the ranks disagree about the program they run.
    #[error("collective {op}: rank {peer} {what}")]
    Mismatch {
        /// The operation this rank was running.
        op: &'static str,
        /// The peer's rank.
        peer: usize,
        /// What differed.
        what: String,
    },
    /// Arguments that cannot be right on any rank.
    #[error("invalid collective call: {0}")]
    Invalid(String),
    /// A message that does not decode (length or shape wrong).
    #[error("malformed {what}: {detail}")]
    Malformed {
        /// What was being decoded.
        what: &'static str,
        /// What is wrong.
        detail: String,
    },
    /// An earlier call failed; the group must be formed again.
    #[error("the collective group failed earlier ({0}); form a new group")]
    Poisoned(String),
    /// An NCCL or CUDA call failed, or the libraries or the GPU are missing (feature `nccl`).
    #[cfg(feature = "nccl")]
    #[error("NCCL {op} failed: {message}")]
    Nccl {
        /// The operation.
        op: &'static str,
        /// NCCL's or CUDA's error.
        message: String,
        /// The communicator's transport failed (a peer died or stalled, the network broke):
        /// a newly formed group may succeed.
        transport: bool,
    },
}

impl Error {
    /// Whether retrying with a newly formed group may succeed (a peer was lost or slow). The
    /// default is no: protocol mismatches and bad arguments repeat on retry.
    pub fn is_retryable(&self) -> bool {
        #[cfg(feature = "nccl")]
        if let Error::Nccl { transport, .. } = self {
            return *transport;
        }
        matches!(
            self,
            Error::Peer { .. } | Error::Connect { .. } | Error::Poisoned(_)
        )
    }
}

/// Result of the collectives.
pub type Result<T> = std::result::Result<T, Error>;
