//! The `[telemetry]` table of the service config file.

use serde::{Deserialize, Serialize};

use crate::{Error, Result};

/// Logging, metrics and trace export of a process (the `[telemetry]` table).
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TelemetryConfig {
    /// `text` (human-readable) or `json` (one object per line, for log collectors).
    pub log_format: String,
    /// A `tracing` filter (`info`, `seqclust_coordinator=debug,warn`); `SEQCLUST_LOG` wins.
    pub log_filter: String,
    /// Address of the admin HTTP endpoint (`/metrics`, `/healthz`, `/readyz`), such as
    /// `0.0.0.0:9464`; empty: none.
    pub metrics_listen: String,
    /// OTLP/gRPC collector to export spans to (`http://otel-collector:4317`); empty: none.
    /// Needs a binary built with the `otel` feature.
    pub otlp_endpoint: String,
    /// `service.name` of exported spans.
    pub service_name: String,
}

impl Default for TelemetryConfig {
    fn default() -> Self {
        TelemetryConfig {
            log_format: "text".into(),
            log_filter: "warn".into(),
            metrics_listen: String::new(),
            otlp_endpoint: String::new(),
            service_name: "seqclust".into(),
        }
    }
}

impl TelemetryConfig {
    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if !matches!(self.log_format.as_str(), "text" | "json") {
            return Err(Error::Config {
                field: "telemetry.log_format",
                message: format!("{:?} (text or json)", self.log_format),
            });
        }
        if let Err(e) = tracing_subscriber::EnvFilter::builder().parse(&self.log_filter) {
            return Err(Error::Config {
                field: "telemetry.log_filter",
                message: e.to_string(),
            });
        }
        if !self.metrics_listen.is_empty()
            && self.metrics_listen.parse::<std::net::SocketAddr>().is_err()
            && !self.metrics_listen.contains(':')
        {
            return Err(Error::Config {
                field: "telemetry.metrics_listen",
                message: format!("{:?} is not host:port", self.metrics_listen),
            });
        }
        if !self.otlp_endpoint.is_empty() {
            if !(self.otlp_endpoint.starts_with("http://")
                || self.otlp_endpoint.starts_with("https://"))
            {
                return Err(Error::Config {
                    field: "telemetry.otlp_endpoint",
                    message: format!("{:?} is not an http(s) URL", self.otlp_endpoint),
                });
            }
            if !cfg!(feature = "otel") {
                return Err(Error::Config {
                    field: "telemetry.otlp_endpoint",
                    message: "this binary was built without the otel feature".into(),
                });
            }
        }
        if self.service_name.is_empty() {
            return Err(Error::Config {
                field: "telemetry.service_name",
                message: "must not be empty".into(),
            });
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bad_values_name_the_field() {
        let bad = |text: &str| {
            let c: TelemetryConfig = toml::from_str(text).unwrap();
            c.validate().unwrap_err().to_string()
        };
        assert!(bad("log_format = \"xml\"").contains("telemetry.log_format"));
        assert!(bad("log_filter = \"a=b=c\"").contains("telemetry.log_filter"));
        assert!(bad("metrics_listen = \"nowhere\"").contains("telemetry.metrics_listen"));
        assert!(bad("otlp_endpoint = \"collector:4317\"").contains("telemetry.otlp_endpoint"));
        let ok: TelemetryConfig =
            toml::from_str("log_format = \"json\"\nmetrics_listen = \"0.0.0.0:9464\"").unwrap();
        ok.validate().unwrap();
        assert!(toml::from_str::<TelemetryConfig>("color = true").is_err());
    }
}
