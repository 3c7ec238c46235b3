//! Errors of the server.

/// What can go wrong while loading a run or answering a request.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The run could not be opened or verified.
    #[error(transparent)]
    Artifacts(Box<seqclust_artifacts::Error>),
    /// Storage failed.
    #[error(transparent)]
    Data(Box<seqclust_data::Error>),
    /// The model could not be built.
    #[error(transparent)]
    Trainer(Box<seqclust_trainer::Error>),
    /// The model failed.
    #[error(transparent)]
    Model(Box<seqclust_model::Error>),
    /// The centroids are invalid.
    #[error(transparent)]
    KMeans(#[from] seqclust_kmeans::Error),
    /// The run lacks something serving needs, or has it in a bad form.
    #[error("{run}: {message}")]
    Run {
        /// The run.
        run: String,
        /// What is wrong.
        message: String,
    },
    /// A request is malformed; the message names the field.
    #[error("{0}")]
    BadRequest(String),
    /// The server is overloaded or shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// The TLS certificate or key is unusable.
    #[error("TLS: {0}")]
    Tls(String),
    /// A listener could not be bound.
    #[error("cannot listen on {addr}")]
    Bind {
        /// The address.
        addr: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

macro_rules! boxed_from {
    ($($variant:ident: $ty:ty),*) => {$(
        impl From<$ty> for Error {
            fn from(e: $ty) -> Error {
                Error::$variant(Box::new(e))
            }
        }
    )*};
}
boxed_from!(
    Artifacts: seqclust_artifacts::Error,
    Data: seqclust_data::Error,
    Trainer: seqclust_trainer::Error,
    Model: seqclust_model::Error
);

impl From<Error> for tonic::Status {
    fn from(e: Error) -> tonic::Status {
        match e {
            Error::BadRequest(m) => tonic::Status::invalid_argument(m),
            Error::Unavailable(m) => tonic::Status::unavailable(m),
            other => tonic::Status::internal(other.to_string()),
        }
    }
}

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
