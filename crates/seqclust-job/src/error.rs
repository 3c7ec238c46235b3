//! Errors of job specs.

/// What is wrong with a job spec.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A field has a bad value; `field` is its dotted path (`train.batch_size`).
    #[error("invalid job field {field}: {message}")]
    Field {
        /// The field.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The TOML does not parse (the message names line, column and key).
    #[error("failed to parse job spec {source_name}: {message}")]
    Parse {
        /// The file (or "<string>").
        source_name: String,
        /// The parser's message.
        message: String,
    },
    /// The job file cannot be read.
    #[error("failed to read job spec {path}")]
    Read {
        /// The file.
        path: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

impl Error {
    /// A bad field.
    pub fn field(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Field {
            field: field.into(),
            message: message.into(),
        }
    }

    /// The dotted name of the field at fault, if the error is about one field.
    pub fn field_name(&self) -> Option<&str> {
        match self {
            Error::Field { field, .. } => Some(field),
            _ => None,
        }
    }
}

/// Result type of job specs.
pub type Result<T, E = Error> = std::result::Result<T, E>;
