//! Coordinator settings.

use std::time::Duration;

use serde::{Deserialize, Serialize};

/// Settings of a coordinator (the `[coordinator]` table of its config file).
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct CoordinatorConfig {
    /// gRPC listen address (`0.0.0.0:7070` in a pod; port 0 picks one).
    pub listen: String,
    /// A worker silent for this long is dropped and its shards reassigned.
    #[serde(with = "seqclust_job::secs")]
    pub lease_ttl: Duration,
    /// Workers heartbeat this often.
    #[serde(with = "seqclust_job::secs")]
    pub heartbeat_interval: Duration,
    /// Largest binary result a worker may push (partials, samples), in bytes.
    pub max_payload_bytes: usize,
    /// A round of EMBED / k-means / ASSIGN tasks fails after this long.
    #[serde(with = "seqclust_job::secs")]
    pub task_timeout: Duration,
    /// How often a phase is retried after losing workers before the job fails.
    pub phase_retries: usize,
    /// SubmitJob calls one client (peer address and bearer token) may make per second on
    /// average; more get ResourceExhausted (0: no limit).
    pub submit_rate_per_s: f64,
    /// SubmitJob calls one client may make at once before the rate applies.
    pub submit_burst: u32,
    /// Jobs queued or running at most; a submit beyond gets ResourceExhausted (0: no bound).
    pub max_pending_jobs: usize,
}

impl Default for CoordinatorConfig {
    fn default() -> Self {
        CoordinatorConfig {
            listen: "127.0.0.1:7070".into(),
            lease_ttl: Duration::from_secs(10),
            heartbeat_interval: Duration::from_secs(2),
            max_payload_bytes: 1 << 30,
            task_timeout: Duration::from_secs(3600),
            phase_retries: 10,
            submit_rate_per_s: 10.0,
            submit_burst: 20,
            max_pending_jobs: 1000,
        }
    }
}

impl CoordinatorConfig {
    /// Checks the settings; the error names the field.
    pub fn validate(&self) -> Result<(), seqclust_job::Error> {
        use seqclust_job::Error;
        if self.lease_ttl < Duration::from_secs(1) {
            return Err(Error::field(
                "coordinator.lease_ttl",
                "must be at least 1 s",
            ));
        }
        if self.heartbeat_interval.is_zero() || self.heartbeat_interval * 2 > self.lease_ttl {
            return Err(Error::field(
                "coordinator.heartbeat_interval",
                "must be positive and at most half of coordinator.lease_ttl",
            ));
        }
        if self.max_payload_bytes < 1 << 20 {
            return Err(Error::field(
                "coordinator.max_payload_bytes",
                "must be at least 1 MiB",
            ));
        }
        if !(self.submit_rate_per_s >= 0.0 && self.submit_rate_per_s.is_finite()) {
            return Err(Error::field(
                "coordinator.submit_rate_per_s",
                "must be a number >= 0 (0: no limit)",
            ));
        }
        if self.submit_rate_per_s > 0.0 && self.submit_burst == 0 {
            return Err(Error::field(
                "coordinator.submit_burst",
                "must be at least 1 when coordinator.submit_rate_per_s is set",
            ));
        }
        Ok(())
    }
}
