//! The crate's error type and the one place that decides which errors are worth retrying.

use std::time::Duration;

use crate::store::LeaseId;

/// Errors of the metadata store.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// etcd answered `op` on `key` with an error (or the connection to it failed).
    #[error("etcd {op} on {key:?} failed")]
    Etcd {
        /// The store operation, e.g. `"put"`.
        op: &'static str,
        /// The key (or prefix, election, lease) the operation was about.
        key: String,
        /// What the client reported.
        #[source]
        source: etcd_client::Error,
    },
    /// `op` on `key` did not finish within its deadline.
    #[error("etcd {op} on {key:?} timed out after {after:?}")]
    Timeout {
        /// The store operation.
        op: &'static str,
        /// The key (or prefix, election, lease) the operation was about.
        key: String,
        /// The deadline that passed.
        after: Duration,
    },
    /// The lease does not exist (any more): it expired or was revoked.
    #[error("lease {lease:#x} expired or was revoked")]
    LeaseExpired {
        /// The lease.
        lease: LeaseId,
    },
    /// A configuration value is invalid.
    #[error("invalid metadata store config: {field}: {reason}")]
    Config {
        /// The offending field, e.g. `"endpoints"`.
        field: &'static str,
        /// Why it is invalid.
        reason: String,
    },
    /// An argument cannot be used as given, e.g. an election name with a `/`.
    #[error("invalid {what} {value:?}: {reason}")]
    InvalidArgument {
        /// What the argument is (`"election name"`).
        what: &'static str,
        /// The value given.
        value: String,
        /// Why it cannot be used.
        reason: &'static str,
    },
    /// A key or value read from the store is not what this crate writes (e.g. not UTF-8
    /// where a string is expected), or a response lacks a part it must have.
    #[error("unexpected data from the store for {key:?}: {reason}")]
    Corrupt {
        /// The key concerned (lossily decoded).
        key: String,
        /// What is wrong.
        reason: &'static str,
    },
    /// The watch on `prefix` cannot continue because the history it needs was compacted.
    #[error("watch on {prefix:?} lost history: revision {revision} was compacted")]
    Compacted {
        /// The watched prefix.
        prefix: String,
        /// The oldest revision still available.
        revision: i64,
    },
    /// The store (or a stream of it) was closed.
    #[error("the metadata store was closed")]
    Closed,
}

/// Result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether trying the same call again may succeed: timeouts and the transport or gRPC
    /// failures that a restarting, partitioned or re-electing etcd produces. Everything else
    /// (including anything not listed here) is not retryable, so that no loop retries a
    /// request that can never succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Timeout { .. } => true,
            Error::Etcd { source, .. } => etcd_error_is_transient(source),
            _ => false,
        }
    }
}

/// Whether an etcd client error is a transient failure of the connection or of the cluster:
/// no leader, leader changed, request timed out (etcd answers these as unavailable), and every
/// failure of the connection itself (refused, reset, closed), which tonic reports as a status
/// with a transport error as its source, whatever the status code.
pub(crate) fn etcd_error_is_transient(error: &etcd_client::Error) -> bool {
    use etcd_client::Error as E;
    use tonic::Code;
    match error {
        E::TransportError(_) | E::IoError(_) => true,
        E::GRpcStatus(status) => {
            matches!(
                status.code(),
                Code::Unavailable | Code::DeadlineExceeded | Code::ResourceExhausted
            ) || caused_by_transport(status)
        }
        _ => false,
    }
}

fn caused_by_transport(status: &tonic::Status) -> bool {
    let mut source = std::error::Error::source(status);
    while let Some(error) = source {
        if error.is::<tonic::transport::Error>() || error.is::<std::io::Error>() {
            return true;
        }
        source = error.source();
    }
    false
}

#[cfg(test)]
mod tests {
    use super::*;

    fn etcd(source: etcd_client::Error) -> Error {
        Error::Etcd {
            op: "get",
            key: "k".to_owned(),
            source,
        }
    }

    #[test]
    fn only_transient_failures_are_retryable() {
        let status = |code| {
            etcd(etcd_client::Error::GRpcStatus(tonic::Status::new(
                code, "x",
            )))
        };
        assert!(status(tonic::Code::Unavailable).is_retryable());
        assert!(status(tonic::Code::DeadlineExceeded).is_retryable());
        assert!(!status(tonic::Code::PermissionDenied).is_retryable());
        assert!(!status(tonic::Code::InvalidArgument).is_retryable());
        assert!(!status(tonic::Code::Unknown).is_retryable());
        let reset = std::io::Error::from(std::io::ErrorKind::ConnectionReset);
        let local = tonic::Status::from_error(Box::new(reset));
        assert!(etcd(etcd_client::Error::GRpcStatus(local)).is_retryable());
        let timeout = Error::Timeout {
            op: "get",
            key: "k".to_owned(),
            after: Duration::from_secs(1),
        };
        assert!(timeout.is_retryable());
        assert!(!Error::LeaseExpired { lease: 1 }.is_retryable());
        assert!(!Error::Closed.is_retryable());
    }
}
