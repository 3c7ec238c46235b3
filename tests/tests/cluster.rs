//! The cluster tests, as one test binary.
//!
//! Every module below was a binary of its own; each linked the whole runtime (coordinator,
//! worker, candle, tonic, object_store), and the links were a large part of the CI time. One
//! binary links once and keeps both test threads busy across all of them. Run one group with
//! a filter: `cargo test --release --workspace --test cluster -- faults::`.

mod artifacts;
mod failover;
mod faults;
mod fuzz_worker_service;
mod operations;
mod runtime;
mod security;
mod serve;
mod soak;
mod worker_loss;
