//! Errors of the worker.

/// What can go wrong in a worker.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The coordinator could not be reached or answered with an error.
    #[error("coordinator call {call} failed: {status}")]
    Rpc {
        /// The call.
        call: &'static str,
        /// Its status.
        status: Box<tonic::Status>,
    },
    /// A setting has a bad value.
    #[error("invalid config field {field}: {message}")]
    Config {
        /// The field (`worker.coordinator`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// The TLS or token settings are unusable.
    #[error(transparent)]
    Security(#[from] seqclust_proto::security::SecurityError),
    /// The collective listener could not be bound.
    #[error("failed to bind the collective listener on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
    /// Training, checkpoints or embedding failed.
    #[error(transparent)]
    Train(Box<seqclust_trainer::Error>),
    /// Reading the dataset or writing to storage failed.
    #[error(transparent)]
    Data(Box<seqclust_data::Error>),
    /// The k-means kernel refused its input.
    #[error(transparent)]
    KMeans(#[from] seqclust_kmeans::Error),
    /// Forming the collective group failed.
    #[error(transparent)]
    Collective(#[from] seqclust_collective::Error),
    /// The job spec in a task does not convert.
    #[error(transparent)]
    Spec(#[from] seqclust_job::Error),
    /// A task that cannot be carried out as sent.
    #[error("task {task}: {message}")]
    Task {
        /// The task id.
        task: String,
        /// What is wrong.
        message: String,
    },
    /// The job was cancelled while the task ran.
    #[error("the job was cancelled")]
    Cancelled,
}

impl Error {
    /// Whether the coordinator may retry the work with a new membership: a peer or the
    /// network failed. Default: not retryable.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Train(e) => e.is_retryable(),
            Error::Collective(e) => e.is_retryable(),
            Error::Rpc { status, .. } => matches!(
                status.code(),
                tonic::Code::Unavailable | tonic::Code::DeadlineExceeded | tonic::Code::Aborted
            ),
            _ => false,
        }
    }

    pub(crate) fn rpc(call: &'static str, status: tonic::Status) -> Self {
        Error::Rpc {
            call,
            status: Box::new(status),
        }
    }
}

impl From<seqclust_trainer::Error> for Error {
    fn from(e: seqclust_trainer::Error) -> Self {
        Error::Train(Box::new(e))
    }
}

impl From<seqclust_data::Error> for Error {
    fn from(e: seqclust_data::Error) -> Self {
        Error::Data(Box::new(e))
    }
}

/// Result type of the worker.
pub type Result<T, E = Error> = std::result::Result<T, E>;
