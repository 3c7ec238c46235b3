//! Errors of the coordinator, and their one conversion to gRPC statuses.

/// What can go wrong in the coordinator.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The metadata store failed.
    #[error(transparent)]
    Meta(#[from] seqclust_meta::Error),
    /// Storage failed.
    #[error(transparent)]
    Data(#[from] seqclust_data::Error),
    /// The k-means arithmetic refused its input.
    #[error(transparent)]
    KMeans(#[from] seqclust_kmeans::Error),
    /// Committing or reading a run failed.
    #[error(transparent)]
    Artifacts(#[from] seqclust_artifacts::Error),
    /// The analysis failed.
    #[error(transparent)]
    Analysis(#[from] seqclust_analysis::Error),
    /// A job spec is invalid.
    #[error(transparent)]
    Spec(#[from] seqclust_job::Error),
    /// The TLS or token settings are unusable.
    #[error(transparent)]
    Security(#[from] seqclust_proto::security::SecurityError),
    /// The gRPC listener could not be bound or served.
    #[error("failed to serve on {addr}")]
    Serve {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: Box<dyn std::error::Error + Send + Sync>,
    },
    /// A persisted record does not decode.
    #[error("corrupt record {key} in the metadata store: {message}")]
    Corrupt {
        /// The key.
        key: String,
        /// What is wrong.
        message: String,
    },
    /// No job with this id.
    #[error("no job {0}")]
    NoJob(String),
    /// A phase failed in a way a retry cannot fix.
    #[error("{phase} failed: {message}")]
    Phase {
        /// The phase.
        phase: seqclust_job::Phase,
        /// What happened.
        message: String,
    },
    /// A worker was lost or a peer failed: the round can be run again with the new membership.
    #[error("{0}")]
    Retry(String),
    /// Workers joined a group below `max_workers`: the clustering rounds are formed again
    /// at this step to give them shards (not a failure).
    #[error("{0} worker(s) joined: the group is formed again to take them")]
    Grow(usize),
    /// The job was cancelled.
    #[error("cancelled")]
    Cancelled,
    /// The coordinator is shutting down.
    #[error("shutting down")]
    Shutdown,
    /// This coordinator's leadership lease ended (etcd unreachable or the lease expired):
    /// it stopped driving jobs so that the new leader is the only one.
    #[error("leadership lost: {0}")]
    LeadershipLost(String),
}

impl Error {
    /// Whether running the round again (with a new membership) may succeed.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Retry(_) => true,
            Error::Meta(e) => e.is_retryable(),
            _ => false,
        }
    }
}

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        let msg = e.to_string();
        match e {
            Error::Spec(_) => tonic::Status::invalid_argument(msg),
            Error::NoJob(_) => tonic::Status::not_found(msg),
            Error::Meta(ref m) if m.is_retryable() => tonic::Status::unavailable(msg),
            Error::Shutdown => tonic::Status::unavailable(msg),
            _ => tonic::Status::internal(msg),
        }
    }
}

/// Result type of the coordinator.
pub type Result<T, E = Error> = std::result::Result<T, E>;
