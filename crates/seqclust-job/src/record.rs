//! Phases and the job record the coordinator persists.

use serde::{Deserialize, Serialize};

use crate::spec::JobSpec;

/// Where a job is; the order is the pipeline's.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum Phase {
    /// Waiting for `resources.min_workers` workers.
    Pending,
    /// Data-parallel training of the encoder.
    Train,
    /// Every user embedded by the worker holding its shard.
    Embed,
    /// k-means|| seeding on a sample the workers draw.
    KmeansInit,
    /// Mini-batch (or Lloyd) iterations over the workers' partial statistics.
    Kmeans,
    /// Final assignments written per shard.
    Assign,
    /// Cluster profiles, surrogate tree, recommendations and report (on the coordinator).
    Analyze,
    /// Publishing the run: manifest last, then the `latest` pointer.
    Commit,
    /// Published.
    Succeeded,
    /// Ended by an error (`JobRecord::error`).
    Failed,
    /// Cancelled by a user.
    Cancelled,
}

impl Phase {
    /// Whether the job has ended.
    pub fn is_terminal(self) -> bool {
        matches!(self, Phase::Succeeded | Phase::Failed | Phase::Cancelled)
    }

    /// The phases a job runs, in order.
    pub const PIPELINE: [Phase; 8] = [
        Phase::Pending,
        Phase::Train,
        Phase::Embed,
        Phase::KmeansInit,
        Phase::Kmeans,
        Phase::Assign,
        Phase::Analyze,
        Phase::Commit,
    ];

    /// The phase after this one in the pipeline (`Succeeded` after `Commit`).
    pub fn next(self) -> Phase {
        match self {
            Phase::Pending => Phase::Train,
            Phase::Train => Phase::Embed,
            Phase::Embed => Phase::KmeansInit,
            Phase::KmeansInit => Phase::Kmeans,
            Phase::Kmeans => Phase::Assign,
            Phase::Assign => Phase::Analyze,
            Phase::Analyze => Phase::Commit,
            Phase::Commit | Phase::Succeeded => Phase::Succeeded,
            Phase::Failed => Phase::Failed,
            Phase::Cancelled => Phase::Cancelled,
        }
    }

    /// The lower-case name (`kmeans_init`).
    pub fn name(self) -> &'static str {
        match self {
            Phase::Pending => "pending",
            Phase::Train => "train",
            Phase::Embed => "embed",
            Phase::KmeansInit => "kmeans_init",
            Phase::Kmeans => "kmeans",
            Phase::Assign => "assign",
            Phase::Analyze => "analyze",
            Phase::Commit => "commit",
            Phase::Succeeded => "succeeded",
            Phase::Failed => "failed",
            Phase::Cancelled => "cancelled",
        }
    }
}

impl std::fmt::Display for Phase {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// Seconds a job spent in one phase.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct PhaseTime {
    /// The phase.
    pub phase: Phase,
    /// Wall seconds.
    pub seconds: f64,
}

/// A job as the coordinator persists it (JSON under `jobs/<id>` in the metadata store).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct JobRecord {
    /// The job's id.
    pub id: String,
    /// What was asked.
    pub spec: JobSpec,
    /// Where it is.
    pub phase: Phase,
    /// Progress within the phase, 0..1.
    pub phase_progress: f64,
    /// A line about the phase.
    pub message: String,
    /// Why it failed or was cancelled.
    pub error: String,
    /// Where the run is committed.
    pub run_uri: String,
    /// Milliseconds since the Unix epoch.
    pub created_unix_ms: i64,
    /// Milliseconds since the Unix epoch.
    pub updated_unix_ms: i64,
    /// Workers in the current membership.
    pub world_size: usize,
    /// Membership changes so far.
    pub membership_epoch: u64,
    /// Phases that have ended.
    pub phase_times: Vec<PhaseTime>,
    /// The submit's idempotency key, if it had one.
    pub idempotency_key: Option<String>,
    /// A user asked for cancellation.
    pub cancel_requested: bool,
}

impl JobRecord {
    /// A new pending job.
    pub fn new(id: String, spec: JobSpec, run_uri: String, now_ms: i64) -> JobRecord {
        JobRecord {
            id,
            spec,
            phase: Phase::Pending,
            phase_progress: 0.0,
            message: "waiting for workers".into(),
            error: String::new(),
            run_uri,
            created_unix_ms: now_ms,
            updated_unix_ms: now_ms,
            world_size: 0,
            membership_epoch: 0,
            phase_times: Vec::new(),
            idempotency_key: None,
            cancel_requested: false,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_pipeline_ends_in_succeeded() {
        let mut p = Phase::Pending;
        let mut seen = vec![p];
        while !p.is_terminal() {
            p = p.next();
            seen.push(p);
        }
        assert_eq!(&seen[..Phase::PIPELINE.len()], &Phase::PIPELINE);
        assert_eq!(p, Phase::Succeeded);
    }
}
