//! Admission limits of `SubmitJob`: a request rate per client and a bound on the jobs that
//! have not ended. Both answer `ResourceExhausted` (a client may retry later) and change
//! nothing. Message sizes are bounded on the servers themselves (`MAX_MESSAGE_BYTES`).

use std::num::NonZeroU32;
use std::time::Duration;

use governor::{DefaultKeyedRateLimiter, Quota, RateLimiter};
use tonic::{Request, Status};

use crate::config::CoordinatorConfig;

/// Keyed limiters above this many clients drop the ones that are back at full burst.
const RETAIN_ABOVE: usize = 10_000;

/// The per-client submit rate (token bucket, `governor`) and the pending-job bound.
#[derive(Debug)]
pub(crate) struct Limits {
    rate: Option<DefaultKeyedRateLimiter<String>>,
    rate_per_s: f64,
    burst: u32,
    /// Jobs not yet ended at most (0: no bound).
    pub max_pending: usize,
    /// Held while a submit counts the pending jobs and records its own, so concurrent submits
    /// cannot overshoot the bound together.
    pub admission: tokio::sync::Mutex<()>,
}

impl Limits {
    pub fn new(cfg: &CoordinatorConfig) -> Limits {
        let burst = NonZeroU32::new(cfg.submit_burst).unwrap_or(NonZeroU32::MIN);
        let rate = (cfg.submit_rate_per_s > 0.0)
            .then(|| Quota::with_period(Duration::from_secs_f64(1.0 / cfg.submit_rate_per_s)))
            .flatten()
            .map(|q| RateLimiter::keyed(q.allow_burst(burst)));
        Limits {
            rate,
            rate_per_s: cfg.submit_rate_per_s,
            burst: burst.get(),
            max_pending: cfg.max_pending_jobs,
            admission: tokio::sync::Mutex::new(()),
        }
    }

    /// Takes one submit from the caller's bucket, or refuses it.
    pub fn admit<T>(&self, req: &Request<T>) -> Result<(), Status> {
        let Some(rate) = &self.rate else {
            return Ok(());
        };
        if rate.len() > RETAIN_ABOVE {
            rate.retain_recent();
        }
        rate.check_key(&client_key(req)).map_err(|_| {
            Status::resource_exhausted(format!(
                "rate limit: at most {} SubmitJob calls at once and {} per second from one client (coordinator.submit_burst, coordinator.submit_rate_per_s); retry later",
                self.burst, self.rate_per_s
            ))
        })
    }

    /// Refuses a new job when `pending` jobs have not ended and the bound is reached.
    pub fn check_pending(&self, pending: usize) -> Result<(), Status> {
        if self.max_pending > 0 && pending >= self.max_pending {
            return Err(Status::resource_exhausted(format!(
                "{pending} jobs are queued or running, the most this coordinator takes (coordinator.max_pending_jobs); retry when one ends"
            )));
        }
        Ok(())
    }
}

/// Who is calling: the peer's IP address and, when it sent one, a digest of its bearer
/// token (never the token itself), so clients behind one address with their own tokens get
/// their own buckets.
fn client_key<T>(req: &Request<T>) -> String {
    let ip = req
        .remote_addr()
        .map_or_else(|| "unknown".to_string(), |a| a.ip().to_string());
    match req.metadata().get("authorization") {
        Some(v) => format!(
            "{ip}/{}",
            &seqclust_data::store::sha256_hex(v.as_bytes())[..16]
        ),
        None => ip,
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn limits(rate: f64, burst: u32, pending: usize) -> Limits {
        Limits::new(&CoordinatorConfig {
            submit_rate_per_s: rate,
            submit_burst: burst,
            max_pending_jobs: pending,
            ..CoordinatorConfig::default()
        })
    }

    fn from(token: Option<&str>) -> Request<()> {
        let mut r = Request::new(());
        if let Some(t) = token {
            r.metadata_mut()
                .insert("authorization", format!("Bearer {t}").parse().unwrap());
        }
        r
    }

    #[test]
    fn a_client_gets_its_burst_then_is_refused_and_others_are_not() {
        let l = limits(0.001, 3, 0);
        for _ in 0..3 {
            l.admit(&from(Some("a"))).unwrap();
        }
        let e = l.admit(&from(Some("a"))).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("coordinator.submit_rate_per_s"), "{e}");
        assert!(!e.message().contains("Bearer"), "{e}");
        // another token is another bucket
        l.admit(&from(Some("b"))).unwrap();
        // no limit configured: everything passes
        let open = limits(0.0, 1, 0);
        for _ in 0..100 {
            open.admit(&from(None)).unwrap();
        }
    }

    #[test]
    fn the_pending_bound_names_its_setting() {
        let l = limits(0.0, 1, 2);
        l.check_pending(1).unwrap();
        let e = l.check_pending(2).unwrap_err();
        assert_eq!(e.code(), tonic::Code::ResourceExhausted);
        assert!(e.message().contains("coordinator.max_pending_jobs"), "{e}");
        limits(0.0, 1, 0).check_pending(1_000_000).unwrap();
    }
}
