//! Logging: `tracing` to stderr as text or JSON lines, and (feature `otel`) spans exported
//! over OTLP.

use tracing_subscriber::EnvFilter;
use tracing_subscriber::layer::SubscriberExt;
use tracing_subscriber::util::SubscriberInitExt;

use crate::{Result, TelemetryConfig};

/// Keeps the trace exporter running; dropping it flushes the spans not yet sent.
#[must_use = "dropping the guard stops the trace export"]
pub struct LogGuard {
    #[cfg(feature = "otel")]
    provider: Option<opentelemetry_sdk::trace::SdkTracerProvider>,
}

impl Drop for LogGuard {
    fn drop(&mut self) {
        #[cfg(feature = "otel")]
        if let Some(p) = self.provider.take() {
            let _ = p.shutdown();
        }
    }
}

/// Installs the process's subscriber: the filter is `SEQCLUST_LOG` when set, else
/// `cfg.log_filter`. Call once, early; a second call leaves the first subscriber in place.
pub fn init(cfg: &TelemetryConfig) -> Result<LogGuard> {
    cfg.validate()?;
    let filter =
        EnvFilter::try_from_env("SEQCLUST_LOG").unwrap_or_else(|_| EnvFilter::new(&cfg.log_filter));
    let json = cfg.log_format == "json";
    let text_layer = (!json).then(|| tracing_subscriber::fmt::layer().with_writer(std::io::stderr));
    let json_layer = json.then(|| {
        tracing_subscriber::fmt::layer()
            .json()
            .with_current_span(true)
            .with_span_list(false)
            .with_writer(std::io::stderr)
    });
    let registry = tracing_subscriber::registry()
        .with(filter)
        .with(text_layer)
        .with(json_layer);
    #[cfg(feature = "otel")]
    {
        let (layer, provider) = if cfg.otlp_endpoint.is_empty() {
            (None, None)
        } else {
            let (l, p) = otel::layer(cfg)?;
            (Some(l), Some(p))
        };
        let _ = registry.with(layer).try_init();
        Ok(LogGuard { provider })
    }
    #[cfg(not(feature = "otel"))]
    {
        let _ = registry.try_init();
        Ok(LogGuard {})
    }
}

#[cfg(feature = "otel")]
mod otel {
    use opentelemetry::trace::TracerProvider as _;
    use opentelemetry_otlp::WithExportConfig;
    use opentelemetry_sdk::Resource;
    use opentelemetry_sdk::trace::SdkTracerProvider;

    use crate::{Error, Result, TelemetryConfig};

    /// A `tracing` layer exporting spans in batches to the OTLP/gRPC collector.
    pub(super) fn layer<S>(
        cfg: &TelemetryConfig,
    ) -> Result<(
        tracing_opentelemetry::OpenTelemetryLayer<S, opentelemetry_sdk::trace::Tracer>,
        SdkTracerProvider,
    )>
    where
        S: tracing::Subscriber + for<'a> tracing_subscriber::registry::LookupSpan<'a>,
    {
        let exporter = opentelemetry_otlp::SpanExporter::builder()
            .with_tonic()
            .with_endpoint(cfg.otlp_endpoint.clone())
            .build()
            .map_err(|e| Error::Otel {
                endpoint: cfg.otlp_endpoint.clone(),
                message: e.to_string(),
            })?;
        let provider = SdkTracerProvider::builder()
            .with_batch_exporter(exporter)
            .with_resource(
                Resource::builder()
                    .with_service_name(cfg.service_name.clone())
                    .build(),
            )
            .build();
        let tracer = provider.tracer("seqclust");
        Ok((tracing_opentelemetry::layer().with_tracer(tracer), provider))
    }
}
