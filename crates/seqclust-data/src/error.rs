//! Errors of the dataset layer.

use std::path::PathBuf;

/// Errors raised while reading events, building or reading a dataset.
///
/// Messages name the file, line, column or field involved so that a user can act on them
/// without reading the code. The underlying cause is not repeated in the message: it is the
/// error's [`source`](std::error::Error::source), which `anyhow`'s `{:#}` prints after it.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// An input file could not be opened or read.
    #[error("failed to read {path}")]
    ReadInput {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// An input file does not exist.
    #[error("input file {path} does not exist")]
    MissingInput {
        /// The file.
        path: String,
    },
    /// A column named in the mapping is not in the file.
    #[error(
        "{path}: column {column:?} (mapped to {field}) is not in the header; the header has: {available}"
    )]
    MissingColumn {
        /// The file.
        path: String,
        /// The mapped column.
        column: String,
        /// The event field it was mapped to.
        field: &'static str,
        /// The columns that exist, comma-separated.
        available: String,
    },
    /// No column was mapped to a required field and none of the usual names is present.
    #[error(
        "{path}: no column for {field} (none of {tried} is in the header); map one with --col {field}=NAME; the header has: {available}"
    )]
    UnmappedColumn {
        /// The file.
        path: String,
        /// The event field.
        field: &'static str,
        /// The names that were looked for.
        tried: String,
        /// The columns that exist, comma-separated.
        available: String,
    },
    /// A column exists but has a type that cannot be read as the field.
    #[error("{path}: column {column:?} (mapped to {field}) has type {found}, expected {expected}")]
    ColumnType {
        /// The file.
        path: String,
        /// The column.
        column: String,
        /// The event field it was mapped to.
        field: &'static str,
        /// The type found.
        found: String,
        /// What can be read.
        expected: &'static str,
    },
    /// A Parquet file could not be read.
    #[error("failed to read Parquet file {path}")]
    Parquet {
        /// The file.
        path: String,
        /// The underlying error.
        #[source]
        source: parquet::errors::ParquetError,
    },
    /// An Arrow operation failed (a programming error or a malformed file).
    #[error("Arrow error in {context}")]
    Arrow {
        /// What was being done.
        context: String,
        /// The underlying error.
        #[source]
        source: arrow_schema::ArrowError,
    },
    /// The configuration is invalid; `field` names the offending setting.
    #[error("invalid configuration: {field}: {message}")]
    Config {
        /// The setting, as written in the config file (`preprocess.max_len`).
        field: String,
        /// What is wrong with it.
        message: String,
    },
    /// A configuration file could not be parsed.
    #[error("failed to parse config {path}")]
    ConfigFile {
        /// The file.
        path: PathBuf,
        /// The TOML error, which names the line and key.
        #[source]
        source: toml::de::Error,
    },
    /// Too many rows were malformed.
    #[error(
        "{bad} of {total} rows ({pct:.2}%) are malformed, above --max-bad-fraction {max_pct:.2}%; nothing was published. First problems:\n{examples}"
    )]
    TooManyBadRows {
        /// Malformed rows.
        bad: u64,
        /// All rows read.
        total: u64,
        /// `bad / total` in percent.
        pct: f64,
        /// The limit in percent.
        max_pct: f64,
        /// The first examples, one per line, with file:line.
        examples: String,
    },
    /// No valid events were found.
    #[error("no valid events in the input ({total} rows read, {bad} malformed)")]
    NoEvents {
        /// Rows read.
        total: u64,
        /// Malformed rows.
        bad: u64,
    },
    /// An object-store operation failed.
    #[error("object store error at {location}")]
    Store {
        /// The object or prefix.
        location: String,
        /// The underlying error.
        #[source]
        source: object_store::Error,
    },
    /// A storage URL could not be understood.
    #[error("invalid storage location {url:?}: {message}")]
    StoreUrl {
        /// The URL as given.
        url: String,
        /// Why it was rejected.
        message: String,
    },
    /// The dataset version already exists and is committed.
    #[error(
        "dataset {location} is already committed; choose another --version (nothing was changed)"
    )]
    AlreadyExists {
        /// The dataset location.
        location: String,
    },
    /// No committed dataset at the location.
    #[error("no committed dataset at {location} (no _MANIFEST.json{hint})")]
    DatasetNotFound {
        /// Where we looked.
        location: String,
        /// An extra hint.
        hint: String,
    },
    /// The manifest is unreadable or of an unknown schema.
    #[error("invalid dataset manifest {location}: {message}")]
    Manifest {
        /// The manifest.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// A file's checksum or size does not match the manifest.
    #[error(
        "{location}: {what} mismatch (manifest {expected}, file {found}); the file is corrupt or was modified"
    )]
    Checksum {
        /// The file.
        location: String,
        /// `sha256` or `size`.
        what: &'static str,
        /// The value in the manifest.
        expected: String,
        /// The value found.
        found: String,
    },
    /// A shard file has an unexpected layout.
    #[error("shard {location} is malformed: {message}")]
    Shard {
        /// The shard.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// A local I/O operation on a scratch or output file failed.
    #[error("I/O error on {path}")]
    Io {
        /// The file or directory.
        path: String,
        /// The underlying error.
        #[source]
        source: std::io::Error,
    },
    /// A JSON document could not be written.
    #[error("failed to serialise {what}")]
    Serialize {
        /// The document.
        what: &'static str,
        /// The underlying error.
        #[source]
        source: serde_json::Error,
    },
    /// A worker thread panicked (a bug).
    #[error("internal error: {0}")]
    Internal(&'static str),
}

/// Result type of the dataset layer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn store(location: impl std::fmt::Display, source: object_store::Error) -> Self {
        Error::Store {
            location: location.to_string(),
            source,
        }
    }

    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn io(path: impl std::fmt::Display, source: std::io::Error) -> Self {
        Error::Io {
            path: path.to_string(),
            source,
        }
    }

    /// Whether retrying the same operation may succeed (transient storage errors only).
    ///
    /// Decided here once for the crate; everything else is permanent so that callers never loop.
    pub fn is_retryable(&self) -> bool {
        match self {
            Error::Store { source, .. } => matches!(
                source,
                object_store::Error::Generic { .. } | object_store::Error::JoinError { .. }
            ),
            _ => false,
        }
    }
}
