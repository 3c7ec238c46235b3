#![doc = include_str!("../README.md")]

#[cfg(feature = "conformance")]
pub mod conformance;
pub mod error;
pub mod etcd;
mod keep_alive;
pub mod memory;
pub mod store;

pub use error::{Error, Result};
pub use etcd::{EtcdConfig, EtcdStore};
pub use keep_alive::{KEEP_ALIVE_FAILED_PERIODS, spawn_keep_alive};
pub use memory::MemoryStore;
pub use store::{KeyValue, LeaderKey, LeaseId, MetaStore, Revision, WatchEvent, WatchStream};
