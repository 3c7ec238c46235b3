//! Errors of the artifacts layer. Every message names the run and the file involved.

/// Errors raised while committing, reading, pulling or collecting runs.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The storage layer failed (the location is in the message of the source).
    #[error(transparent)]
    Store(#[from] seqclust_data::Error),
    /// A raw object-store call failed.
    #[error("object store error at {location}")]
    ObjectStore {
        /// The object.
        location: String,
        /// The underlying error.
        #[source]
        source: object_store::Error,
    },
    /// No run matches what was asked for.
    #[error("no committed run {spec:?} under {root}{hint}")]
    NotFound {
        /// What was asked for.
        spec: String,
        /// The storage root searched.
        root: String,
        /// A hint on what exists.
        hint: String,
    },
    /// A run directory has no manifest: it was never committed (or is still being written).
    #[error("{run} has no _MANIFEST.json: the run was never committed and is not a result")]
    NotCommitted {
        /// The run location.
        run: String,
    },
    /// The manifest cannot be parsed or is inconsistent.
    #[error("{location}: invalid run manifest: {message}")]
    BadManifest {
        /// The manifest's location.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// A file is not in the manifest.
    #[error("{file} is not listed in the manifest of {run}")]
    NotListed {
        /// The run.
        run: String,
        /// The file.
        file: String,
    },
    /// A file's content does not match the manifest.
    #[error(
        "{file}: {what} mismatch (manifest {expected}, found {found}); the file is corrupt or was replaced"
    )]
    Checksum {
        /// The file (location as displayed).
        file: String,
        /// `size` or `sha256`.
        what: &'static str,
        /// The manifest's value.
        expected: String,
        /// What the file has.
        found: String,
    },
    /// A local file could not be written or read.
    #[error("{path}")]
    Io {
        /// The path.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An artifact could not be encoded or decoded.
    #[error("{location}: {message}")]
    Format {
        /// The file.
        location: String,
        /// What is wrong.
        message: String,
    },
}

impl Error {
    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> Error {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }

    pub(crate) fn object_store(
        location: impl std::fmt::Display,
        source: object_store::Error,
    ) -> Error {
        Error::ObjectStore {
            location: location.to_string(),
            source,
        }
    }
}

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
