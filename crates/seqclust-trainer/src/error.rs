//! Errors of the trainer.

/// What can go wrong training, checkpointing or evaluating.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// The dataset could not be read.
    #[error("dataset error")]
    Data(#[from] seqclust_data::Error),
    /// The model failed.
    #[error("model error")]
    Model(#[from] seqclust_model::Error),
    /// Exchanging gradients with the other ranks failed.
    #[error("gradient exchange failed")]
    Collective(#[from] seqclust_collective::Error),
    /// A setting is invalid; `field` names it.
    #[error("invalid training setting {field}: {message}")]
    Config {
        /// The setting.
        field: String,
        /// What is wrong.
        message: String,
    },
    /// A config file could not be parsed.
    #[error("failed to parse {path}")]
    ConfigFile {
        /// The file.
        path: String,
        /// The TOML error (line and key).
        #[source]
        source: toml::de::Error,
    },
    /// A checkpoint or model file is unreadable or does not fit.
    #[error("checkpoint {location}: {message}")]
    Checkpoint {
        /// Where.
        location: String,
        /// What is wrong.
        message: String,
    },
    /// The observer asked training to stop (the job was cancelled).
    #[error("training was cancelled")]
    Cancelled,
    /// The group stopped at a checkpoint to be formed again (the observer asked for it on
    /// rank 0: a worker joined). Retryable: the next group resumes from that checkpoint.
    #[error("training stopped at the checkpoint of step {step} to form the group again")]
    Regroup {
        /// The step of the checkpoint the next group resumes from.
        step: u64,
    },
    /// A file could not be written.
    #[error("failed to write {what}")]
    Write {
        /// What.
        what: String,
        /// The cause.
        #[source]
        source: std::io::Error,
    },
}

/// Result type of the trainer.
pub type Result<T, E = Error> = std::result::Result<T, E>;

impl Error {
    /// Whether running again with a newly formed group may succeed: a peer was lost or slow.
    /// Everything else (bad settings, bad data, a diverged model) repeats on retry.
    pub fn is_retryable(&self) -> bool {
        matches!(self, Error::Regroup { .. })
            || matches!(self, Error::Collective(e) if e.is_retryable())
    }

    pub(crate) fn config(field: impl Into<String>, message: impl Into<String>) -> Self {
        Error::Config {
            field: field.into(),
            message: message.into(),
        }
    }

    pub(crate) fn checkpoint(location: impl std::fmt::Display, message: impl Into<String>) -> Self {
        Error::Checkpoint {
            location: location.to_string(),
            message: message.into(),
        }
    }
}
