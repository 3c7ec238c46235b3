#![doc = include_str!("../README.md")]

pub mod commit;
pub mod error;
pub mod fault;
pub mod manifest;
pub mod read;
pub mod tensors;

pub use commit::{Commit, Committed, move_latest, run_location};
pub use error::{Error, Result};
pub use manifest::{FORMAT, FileEntry, MANIFEST, RunInfo, RunManifest};
pub use read::{Collected, Run, RunEntry, discard, gc, latest, list};
