//! Errors of the analysis.

/// What can go wrong while analysing a run.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A configuration value is out of range.
    #[error("{field}: {message}")]
    Config {
        /// The field, e.g. `analysis.tree_depth`.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// The dataset layer failed.
    #[error(transparent)]
    Data(#[from] seqclust_data::Error),
    /// The k-means arithmetic refused its input.
    #[error(transparent)]
    KMeans(#[from] seqclust_kmeans::Error),
    /// The model failed.
    #[error(transparent)]
    Model(#[from] seqclust_model::Error),
    /// Training-side helpers failed (embedding).
    #[error(transparent)]
    Trainer(Box<seqclust_trainer::Error>),
    /// The inputs do not fit together.
    #[error("{0}")]
    Input(String),
    /// A plot could not be drawn.
    #[error("plot {plot}: {message}")]
    Plot {
        /// The plot.
        plot: String,
        /// What failed.
        message: String,
    },
    /// An output could not be encoded.
    #[error("{what}: {message}")]
    Encode {
        /// The output.
        what: String,
        /// What failed.
        message: String,
    },
}

impl From<seqclust_trainer::Error> for Error {
    fn from(e: seqclust_trainer::Error) -> Error {
        Error::Trainer(Box::new(e))
    }
}

/// A result with this crate's [`Error`].
pub type Result<T, E = Error> = std::result::Result<T, E>;
