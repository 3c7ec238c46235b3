//! The coordinator's Prometheus metrics (served by the process's admin endpoint; the gRPC
//! server's call counts and latencies come from `seqclust_telemetry::GrpcMetricsLayer`).

use std::collections::HashMap;
use std::sync::LazyLock;

use seqclust_job::{JobRecord, Phase};
use seqclust_telemetry::metrics::{
    self, GaugeVec, HistogramVec, IntCounter, IntCounterVec, IntGauge, IntGaugeVec,
};

/// Jobs in the metadata store by phase (pending … succeeded, failed, cancelled).
pub static JOBS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    metrics::gauge_vec(
        "seqclust_jobs",
        "Jobs known to the coordinator, by phase",
        &["phase"],
    )
});

/// How long each phase of a job took.
pub static PHASE_SECONDS: LazyLock<HistogramVec> = LazyLock::new(|| {
    metrics::histogram_vec(
        "seqclust_job_phase_seconds",
        "Duration of job phases",
        &["phase"],
        metrics::SECONDS_BUCKETS,
    )
});

/// Jobs that ended, by outcome.
pub static JOBS_ENDED: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "seqclust_jobs_ended_total",
        "Jobs driven to an end by this coordinator, by final phase",
        &["phase"],
    )
});

/// Registered workers, and those with an open control stream.
pub static WORKERS: LazyLock<IntGaugeVec> = LazyLock::new(|| {
    metrics::gauge_vec(
        "seqclust_workers",
        "Workers holding a lease (state=registered) and ready for tasks (state=ready)",
        &["state"],
    )
});

/// Workers that left (no task running) or were lost (tasks failed over).
pub static WORKERS_GONE: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "seqclust_workers_gone_total",
        "Workers that left (kind=left) or were lost with tasks running (kind=lost)",
        &["kind"],
    )
});

/// Worker lease renewals through heartbeats.
pub static LEASE_RENEWALS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "seqclust_lease_renewals_total",
        "Worker lease renewals on heartbeat, by outcome (ok, failed)",
        &["outcome"],
    )
});

/// Rounds of tasks retried after a membership change.
pub static ROUND_RETRIES: LazyLock<IntCounter> = LazyLock::new(|| {
    metrics::counter(
        "seqclust_round_retries_total",
        "Rounds of tasks run again after losing a worker or a peer",
    )
});

/// Groups formed again to take workers that joined, by phase (`train`: at a checkpoint;
/// `clustering`: at a k-means step).
pub static REGROUPS: LazyLock<IntCounterVec> = LazyLock::new(|| {
    metrics::counter_vec(
        "seqclust_regroups_total",
        "Groups formed again mid-phase to take workers that joined, by phase (train, clustering)",
        &["phase"],
    )
});

/// The latest k-means inertia per point of the running job (smoothed for mini-batch).
pub static KMEANS_INERTIA: LazyLock<GaugeVec> = LazyLock::new(|| {
    metrics::float_gauge_vec(
        "seqclust_kmeans_inertia_per_point",
        "Latest k-means inertia per point (mini-batch: smoothed) of a job",
        &["job"],
    )
});

/// k-means steps merged by the coordinator.
pub static KMEANS_STEPS: LazyLock<IntCounter> = LazyLock::new(|| {
    metrics::counter(
        "seqclust_kmeans_steps_total",
        "k-means steps (merged partial statistics) applied",
    )
});

/// Bytes of partial statistics and samples received from workers.
pub static PAYLOAD_BYTES: LazyLock<IntCounter> = LazyLock::new(|| {
    metrics::counter(
        "seqclust_partials_received_bytes_total",
        "Bytes of k-means partials and samples pushed by workers",
    )
});

/// 1 while this process leads (drives jobs), 0 as a standby.
pub static LEADER: LazyLock<IntGauge> = LazyLock::new(|| {
    metrics::gauge(
        "seqclust_coordinator_leader",
        "1 when this coordinator is the leader, 0 when it is a standby",
    )
});

/// Sets the job gauge from the phases of every known job.
pub(crate) fn set_jobs(phases: &HashMap<String, Phase>) {
    let all =
        Phase::PIPELINE
            .into_iter()
            .chain([Phase::Succeeded, Phase::Failed, Phase::Cancelled]);
    let mut counts: HashMap<Phase, i64> = all.map(|p| (p, 0)).collect();
    for p in phases.values() {
        *counts.entry(*p).or_default() += 1;
    }
    for (p, n) in counts {
        JOBS.with_label_values(&[p.name()]).set(n);
    }
}

/// Remembers a job's phase for [`set_jobs`].
pub(crate) fn note_job(phases: &mut HashMap<String, Phase>, rec: &JobRecord) {
    phases.insert(rec.id.clone(), rec.phase);
}
