//! The worker's Prometheus metrics (served by the process's admin endpoint).

use std::sync::LazyLock;
use std::time::Instant;

use seqclust_collective::Collective;
use seqclust_telemetry::metrics::{
    self, GaugeVec, Histogram, HistogramVec, IntCounter, IntCounterVec, IntGauge,
};

/// Tasks carried out, by kind and outcome (`ok`, `failed`, `retryable`, `cancelled`).
pub static TASKS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "seqclust_worker_tasks_total",
        "Tasks carried out by this worker, by kind and outcome",
        &["kind", "outcome"],
    )
});

/// Task duration by kind.
pub static TASK_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    metrics::histogram_vec(
        "seqclust_worker_task_seconds",
        "Duration of tasks, by kind",
        &["kind"],
        metrics::SECONDS_BUCKETS,
    )
});

/// Training steps (optimiser updates) taken.
pub static TRAIN_STEPS: LazyLock<IntCounter> = LazyLock::new(|| {
    metrics::counter(
        "seqclust_train_steps_total",
        "Training steps (optimiser updates) taken",
    )
});

/// Time of one training step, gradient exchange included.
pub static STEP_SECONDS: LazyLock<Histogram> = LazyLock::new(|| {
    metrics::histogram(
        "seqclust_train_step_seconds",
        "Wall time of one training step, gradient all-reduce included",
        metrics::SECONDS_BUCKETS,
    )
});

/// Sequences of this rank's shares of the batches (summed over ranks, `rate()` of it is the
/// group's sequences/s).
pub static TRAIN_SEQUENCES: LazyLock<IntCounter> = LazyLock::new(|| {
    metrics::counter(
        "seqclust_train_sequences_total",
        "Sequences of this rank's shares of the training batches",
    )
});

/// The latest logged training loss and throughput.
pub static TRAIN_GAUGES: LazyLock<GaugeVec> = LazyLock::new(|| {
    metrics::float_gauge_vec(
        "seqclust_train",
        "Latest logged training values: loss, sequences_per_second, grad_norm, lr",
        &["value"],
    )
});

/// Users embedded (EMBED) and assigned (ASSIGN).
pub static USERS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "seqclust_worker_users_total",
        "Users embedded (task=embed) and assigned (task=assign)",
        &["task"],
    )
});

/// Bytes this rank sent into collective calls, by operation.
pub static COLLECTIVE_BYTES: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "seqclust_collective_bytes_total",
        "Payload bytes this rank contributed to collective calls, by operation",
        &["op"],
    )
});

/// Duration of collective calls, by operation.
pub static COLLECTIVE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    metrics::histogram_vec(
        "seqclust_collective_seconds",
        "Duration of collective calls (all_reduce, all_gather, broadcast), by operation",
        &["op"],
        metrics::SECONDS_BUCKETS,
    )
});

/// Heartbeats (lease renewals) sent, by outcome.
pub static HEARTBEATS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "seqclust_worker_heartbeats_total",
        "Heartbeats (lease renewals) sent to the coordinator, by outcome (ok, failed)",
        &["outcome"],
    )
});

/// 1 while registered with a coordinator.
pub static REGISTERED: LazyLock<IntGauge> = LazyLock::new(|| {
    metrics::gauge(
        "seqclust_worker_registered",
        "1 while this worker is registered with a coordinator",
    )
});

/// A collective that records the bytes and time of every call.
pub(crate) struct Metered<'a>(pub &'a mut dyn Collective);

impl Metered<'_> {
    fn timed<T>(&mut self, op: &str, bytes: usize, f: impl FnOnce(&mut dyn Collective) -> T) -> T {
        let t = Instant::now();
        let out = f(&mut *self.0);
        COLLECTIVE_SECONDS
            .with_label_values(&[op])
            .observe(t.elapsed().as_secs_f64());
        COLLECTIVE_BYTES
            .with_label_values(&[op])
            .inc_by(bytes as u64);
        out
    }
}

impl Collective for Metered<'_> {
    fn rank(&self) -> usize {
        self.0.rank()
    }

    fn world_size(&self) -> usize {
        self.0.world_size()
    }

    fn all_reduce_sum(&mut self, buf: &mut [f32]) -> seqclust_collective::Result<()> {
        self.timed("all_reduce", size_of_val(buf), |c| c.all_reduce_sum(buf))
    }

    fn all_gather(&mut self, mine: &[u8]) -> seqclust_collective::Result<Vec<Vec<u8>>> {
        self.timed("all_gather", mine.len(), |c| c.all_gather(mine))
    }

    fn broadcast(&mut self, data: &mut Vec<u8>, root: usize) -> seqclust_collective::Result<()> {
        let n = if self.0.rank() == root { data.len() } else { 0 };
        self.timed("broadcast", n, |c| c.broadcast(data, root))
    }

    fn barrier(&mut self) -> seqclust_collective::Result<()> {
        self.timed("barrier", 0, |c| c.barrier())
    }
}
