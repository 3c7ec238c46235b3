//! A fault hook for crash tests: `SEQCLUST_FAULT_COMMIT=N` aborts the process (as `kill -9`
//! would, without unwinding or flushing) just before the N-th write of a commit (counting
//! from 1: staged files, the manifest, the `latest` pointer). Unset in production.
//!
//! Hand-written rather than the `fail` crate: `fail` has no action that kills the process
//! outright, and a panic would run destructors that a real crash does not.

use std::sync::atomic::{AtomicU64, Ordering};

/// The environment variable that arms the hook.
pub const FAULT_ENV: &str = "SEQCLUST_FAULT_COMMIT";

static WRITES: AtomicU64 = AtomicU64::new(0);

/// Counts one commit write and aborts when the hook says so.
pub(crate) fn before_write(what: &str) {
    let n = WRITES.fetch_add(1, Ordering::SeqCst) + 1;
    if let Some(at) = std::env::var(FAULT_ENV)
        .ok()
        .and_then(|v| v.parse::<u64>().ok())
        && n == at
    {
        eprintln!("{FAULT_ENV}={at}: aborting before commit write {n} ({what})");
        std::process::abort();
    }
}
