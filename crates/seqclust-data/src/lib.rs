#![doc = include_str!("../README.md")]

pub mod dataset;
pub mod embeddings;
pub mod error;
pub mod event;
pub mod generator;
pub mod ingest;
pub mod quarantine;
pub mod source;
pub mod store;
pub mod vocab;

pub use dataset::{
    Dataset, DatasetManifest, SeqRef, SequenceBatch, ShardSampler, SplitPolicy, SplitRanges,
};
pub use error::{Error, Result};
pub use event::{
    Event, STANDARD_ACTIONS, TimeBounds, TimeKind, TimestampFormat, canonical_action,
    parse_timestamp,
};
pub use ingest::{IngestConfig, IngestReport, OutputConfig, PreprocessConfig, Progress, ingest};
pub use quarantine::{BadExample, BadReason, Quarantine};
pub use source::{ColumnMap, ColumnRef, Format, SourceConfig};
pub use store::Location;
pub use vocab::KeyVocab;
