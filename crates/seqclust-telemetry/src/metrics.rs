//! Prometheus metrics: process-wide families registered once in the default registry, and the
//! text exposition format.
//!
//! Crates declare their families as `LazyLock` statics built with these helpers; a family is
//! registered the first time it is touched, so a process exposes the metrics of the parts it
//! runs.

use prometheus::{Encoder, HistogramOpts, Opts, TextEncoder, core::Collector};
pub use prometheus::{
    Gauge, GaugeVec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
    Registry,
};

/// Seconds buckets from 0.5 ms to 5 min, for RPCs, steps and phases.
pub const SECONDS_BUCKETS: &[f64] = &[
    0.0005, 0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0, 10.0, 30.0,
    60.0, 120.0, 300.0,
];

fn register<C: Collector + Clone + 'static>(c: C) -> C {
    // a family registered twice (two statics with one name) is a programming error
    // caught by the tests that render every family
    if let Err(e) = prometheus::default_registry().register(Box::new(c.clone())) {
        tracing::error!(error = %e, "metric registration failed");
    }
    c
}

/// An integer counter with labels, in the default registry.
pub fn counter_vec(name: &str, help: &str, labels: &[&str]) -> IntCounterVec {
    register(IntCounterVec::new(Opts::new(name, help), labels).expect("valid metric name"))
}

/// An integer counter, in the default registry.
pub fn counter(name: &str, help: &str) -> IntCounter {
    register(IntCounter::new(name, help).expect("valid metric name"))
}

/// An integer gauge with labels, in the default registry.
pub fn gauge_vec(name: &str, help: &str, labels: &[&str]) -> IntGaugeVec {
    register(IntGaugeVec::new(Opts::new(name, help), labels).expect("valid metric name"))
}

/// An integer gauge, in the default registry.
pub fn gauge(name: &str, help: &str) -> IntGauge {
    register(IntGauge::new(name, help).expect("valid metric name"))
}

/// A float gauge with labels (losses, inertia), in the default registry.
pub fn float_gauge_vec(name: &str, help: &str, labels: &[&str]) -> GaugeVec {
    register(GaugeVec::new(Opts::new(name, help), labels).expect("valid metric name"))
}

/// A histogram with labels, in the default registry.
pub fn histogram_vec(name: &str, help: &str, labels: &[&str], buckets: &[f64]) -> HistogramVec {
    register(
        HistogramVec::new(
            HistogramOpts::new(name, help).buckets(buckets.to_vec()),
            labels,
        )
        .expect("valid metric name"),
    )
}

/// A histogram, in the default registry.
pub fn histogram(name: &str, help: &str, buckets: &[f64]) -> Histogram {
    register(
        Histogram::with_opts(HistogramOpts::new(name, help).buckets(buckets.to_vec()))
            .expect("valid metric name"),
    )
}

/// `registry` in the Prometheus text format.
pub fn render(registry: &Registry) -> String {
    let mut buf = Vec::new();
    let _ = TextEncoder::new().encode(&registry.gather(), &mut buf);
    String::from_utf8(buf).unwrap_or_default()
}

/// The default registry (every family made with the helpers above) in the text format.
pub fn render_default() -> String {
    render(prometheus::default_registry())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn families_render_once_touched() {
        let c = counter_vec("seqclust_test_things_total", "Things", &["kind"]);
        c.with_label_values(&["a"]).inc_by(3);
        let h = histogram("seqclust_test_seconds", "Time", SECONDS_BUCKETS);
        h.observe(0.02);
        let text = render_default();
        assert!(
            text.contains("seqclust_test_things_total{kind=\"a\"} 3"),
            "{text}"
        );
        assert!(text.contains("seqclust_test_seconds_count 1"), "{text}");
    }
}
