#![doc = include_str!("../README.md")]

pub mod error;
pub mod record;
pub mod secs;
pub mod spec;
pub mod tune;

pub use error::{Error, Result};
pub use record::{JobRecord, Phase, PhaseTime};
pub use spec::{JobSpec, Resources, SampleData};
