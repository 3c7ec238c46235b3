//! The tests' etcd: `seqclust_meta::conformance::etcd_server` (shared with the runtime tests).

pub use seqclust_meta::conformance::etcd_server::*;
