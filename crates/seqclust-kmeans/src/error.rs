//! Errors of the k-means engine.

/// What can go wrong in clustering. Messages name the offending row, field or value.
#[derive(Debug, Clone, PartialEq, thiserror::Error)]
pub enum Error {
    /// The data length is not a multiple of the dimension, or the dimension is 0.
    #[error("data of {len} floats is not a whole number of rows of dimension {d}")]
    Shape {
        /// Number of floats.
        len: usize,
        /// Row dimension.
        d: usize,
    },
    /// A value is NaN or infinite.
    #[error("row {row} has a non-finite value ({value}) in column {col}")]
    NonFinite {
        /// The row.
        row: usize,
        /// The column.
        col: usize,
        /// The value.
        value: f32,
    },
    /// Fewer points than clusters.
    #[error("cannot make {k} clusters from {n} points (need n >= k)")]
    TooFewPoints {
        /// Points.
        n: usize,
        /// Clusters asked for.
        k: usize,
    },
    /// A setting is out of range; `field` names it.
    #[error("invalid k-means setting {field}: {message}")]
    Config {
        /// The setting.
        field: &'static str,
        /// What is wrong.
        message: String,
    },
    /// Two inputs do not fit together (dimensions, lengths).
    #[error("mismatch: {0}")]
    Mismatch(String),
    /// Cosine distance of a zero vector is undefined.
    #[error("row {row} is the zero vector, which has no direction for cosine k-means")]
    ZeroVector {
        /// The row.
        row: usize,
    },
}

/// Result type of the k-means engine.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    pub(crate) fn config(field: &'static str, message: impl Into<String>) -> Self {
        Error::Config {
            field,
            message: message.into(),
        }
    }
}
