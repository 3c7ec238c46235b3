#![doc = include_str!("../README.md")]

pub mod admin;
mod config;
pub mod logging;
pub mod metrics;
pub mod rpc;

pub use admin::{Admin, Health};
pub use config::TelemetryConfig;
pub use rpc::GrpcMetricsLayer;

/// What can go wrong setting up telemetry.
#[derive(Debug, thiserror::Error)]
pub enum Error {
    /// A config field has a bad value; the message names it.
    #[error("invalid config field {field}: {message}")]
    Config {
        /// The field (`telemetry.log_format`).
        field: &'static str,
        /// What is wrong with it.
        message: String,
    },
    /// The admin endpoint could not bind.
    #[error("cannot listen on {addr} (telemetry.metrics_listen): {source}")]
    Bind {
        /// The address.
        addr: String,
        /// Why.
        source: std::io::Error,
    },
    /// The OpenTelemetry exporter could not start.
    #[error("OpenTelemetry export to {endpoint}: {message}")]
    Otel {
        /// The OTLP endpoint.
        endpoint: String,
        /// Why.
        message: String,
    },
}

/// Results of this crate.
pub type Result<T> = std::result::Result<T, Error>;
