//! Prometheus metrics of the server (`GET /metrics`).

use prometheus::{
    Histogram, HistogramOpts, HistogramVec, IntCounter, IntCounterVec, IntGaugeVec, Opts, Registry,
};

/// The server's metrics.
pub struct Metrics {
    registry: Registry,
    /// Requests by method and outcome (`ok`, `invalid_argument`, `unavailable`, `internal`).
    pub requests: IntCounterVec,
    /// Request latency by method, seconds.
    pub latency: HistogramVec,
    /// Requests per forward pass.
    pub batch_size: Histogram,
    /// Events whose item the run does not know.
    pub unknown_items: IntCounter,
    /// Runs loaded after the first.
    pub reloads: IntCounter,
    /// Reloads refused (invalid manifest, checksum, bad files); the old run kept serving.
    pub reload_failures: IntCounter,
    /// 1 for the run being served.
    pub run: IntGaugeVec,
}

impl Metrics {
    /// Registers every metric.
    pub fn new() -> Metrics {
        let registry = Registry::new();
        let requests = IntCounterVec::new(
            Opts::new(
                "seqclust_serve_requests_total",
                "Inference requests by method and outcome",
            ),
            &["method", "code"],
        )
        .expect("static metric");
        let latency = HistogramVec::new(
            HistogramOpts::new("seqclust_serve_request_seconds", "Inference latency").buckets(
                vec![
                    0.0002, 0.0005, 0.001, 0.002, 0.003, 0.005, 0.0075, 0.01, 0.02, 0.05, 0.1, 0.5,
                ],
            ),
            &["method"],
        )
        .expect("static metric");
        let batch_size = Histogram::with_opts(
            HistogramOpts::new("seqclust_serve_batch_size", "Requests per forward pass")
                .buckets(vec![1.0, 2.0, 4.0, 8.0, 16.0, 32.0, 64.0, 128.0]),
        )
        .expect("static metric");
        let unknown_items = IntCounter::new(
            "seqclust_serve_unknown_items_total",
            "Request events whose item the served run does not know",
        )
        .expect("static metric");
        let reloads = IntCounter::new("seqclust_serve_reloads_total", "New runs loaded")
            .expect("static metric");
        let reload_failures = IntCounter::new(
            "seqclust_serve_reload_failures_total",
            "Runs refused at reload (the previous run kept serving)",
        )
        .expect("static metric");
        let run = IntGaugeVec::new(
            Opts::new("seqclust_serve_run_info", "The run being served"),
            &["run_id", "name"],
        )
        .expect("static metric");
        for c in [
            Box::new(requests.clone()) as Box<dyn prometheus::core::Collector>,
            Box::new(latency.clone()),
            Box::new(batch_size.clone()),
            Box::new(unknown_items.clone()),
            Box::new(reloads.clone()),
            Box::new(reload_failures.clone()),
            Box::new(run.clone()),
        ] {
            registry.register(c).expect("unique metric names");
        }
        Metrics {
            registry,
            requests,
            latency,
            batch_size,
            unknown_items,
            reloads,
            reload_failures,
            run,
        }
    }

    /// The text exposition format.
    pub fn render(&self) -> String {
        seqclust_telemetry::metrics::render(&self.registry)
    }
}

impl Default for Metrics {
    fn default() -> Self {
        Metrics::new()
    }
}
