//! Errors of the encoder crate.

/// What can go wrong building or running a model.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A setting is invalid; `field` names it as in the config file.
    #[error("invalid model setting {field}: {message}")]
    Config {
        /// The setting (`encoder.heads`).
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A tensor operation failed.
    #[error("tensor error in {context}")]
    Tensor {
        /// What was being done.
        context: &'static str,
        /// The underlying error.
        #[source]
        source: candle_core::Error,
    },
    /// The loss became NaN or infinite.
    #[error(
        "the loss is {value} at step {step}; training stopped (the last good checkpoint is kept)"
    )]
    NonFiniteLoss {
        /// Optimiser step.
        step: u64,
        /// The loss value.
        value: f32,
    },
    /// A checkpoint does not fit the model it is loaded into.
    #[error("checkpoint does not fit this model: {0}")]
    Incompatible(String),
    /// Inputs of inconsistent shapes.
    #[error("shape mismatch: {0}")]
    Shape(String),
}

/// Result type of the encoder crate.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// A converter from candle errors with a context, for callers outside this crate.
    pub fn from_candle(context: &'static str) -> impl Fn(candle_core::Error) -> Error {
        move |source| Error::Tensor { context, source }
    }

    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            message: message.into(),
        }
    }
}

/// Attaches a context to candle errors.
pub(crate) trait Ctx<T> {
    fn ctx(self, context: &'static str) -> Result<T>;
}

impl<T> Ctx<T> for candle_core::Result<T> {
    fn ctx(self, context: &'static str) -> Result<T> {
        self.map_err(|source| Error::Tensor { context, source })
    }
}
