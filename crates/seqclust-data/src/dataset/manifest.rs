//! `_MANIFEST.json`: the commit record of a dataset, written last.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

use crate::event::TimeKind;
use crate::ingest::IngestConfig;

/// The manifest's file name.
pub const MANIFEST_FILE: &str = "_MANIFEST.json";
/// The quarantine report's file name.
pub const QUARANTINE_FILE: &str = "_quarantine.json";
/// Current manifest schema version.
pub const SCHEMA_VERSION: u32 = 1;
/// The `kind` field of a dataset manifest.
pub const KIND: &str = "seqclust.dataset";

/// A file of the dataset with its size and checksum.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the dataset directory.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
    /// Lower-case hex sha256.
    pub sha256: String,
}

/// A sequence shard.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct ShardEntry {
    /// The file.
    #[serde(flatten)]
    pub file: FileEntry,
    /// Users in the shard.
    pub users: u64,
    /// Events in the shard.
    pub events: u64,
}

/// Counts of what happened to the input.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
pub struct Counts {
    /// Rows (or events, for sequence-per-line formats) read.
    pub rows_read: u64,
    /// Rows rejected (see `_quarantine.json`).
    pub rows_bad: u64,
    /// Valid events read.
    pub events_read: u64,
    /// Events in the dataset.
    pub events: u64,
    /// Consecutive duplicates dropped.
    pub duplicates_dropped: u64,
    /// Old events dropped to keep `max_len`.
    pub events_truncated: u64,
    /// Users in the dataset.
    pub users: u64,
    /// Users dropped for having fewer than `min_len` events.
    pub users_dropped_short: u64,
    /// Their events.
    pub events_dropped_short: u64,
    /// Sessions in the dataset.
    pub sessions: u64,
    /// Distinct items in the input.
    pub items_seen: u64,
    /// Item ids, padding and OOV included.
    pub item_vocab: u64,
    /// Events whose item is out of vocabulary.
    pub oov_events: u64,
    /// Category ids, padding and OOV included.
    pub category_vocab: u64,
}

/// Sequence-length statistics (after preprocessing).
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct LengthStats {
    /// Shortest.
    pub min: u64,
    /// Median.
    pub p50: u64,
    /// 90th percentile.
    pub p90: u64,
    /// 99th percentile.
    pub p99: u64,
    /// Longest.
    pub max: u64,
    /// Mean.
    pub mean: f64,
}

/// Dataset statistics.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Stats {
    /// Events per user.
    pub length: LengthStats,
    /// Earliest timestamp (ms).
    pub min_ts_ms: i64,
    /// Latest timestamp (ms).
    pub max_ts_ms: i64,
    /// Events per action name.
    pub actions: BTreeMap<String, u64>,
}

/// Time cut-offs of the temporal split.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TemporalCutoffs {
    /// Quantiles the cut-offs were taken at.
    pub quantiles: [f64; 2],
    /// Events at or after this time (ms) are validation.
    pub valid_from_ms: i64,
    /// Events at or after this time (ms) are test.
    pub test_from_ms: i64,
}

/// The evaluation splits a reader can apply.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Splits {
    /// Leave-one-out is always available: last event test, second to last validation.
    pub leave_one_out: bool,
    /// Temporal cut-offs, for datasets with absolute times.
    pub temporal: Option<TemporalCutoffs>,
}

/// The vocabulary files and action names.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct VocabInfo {
    /// Item vocabulary file.
    pub items: String,
    /// Category vocabulary file.
    pub categories: String,
    /// Action names by id (id 0 is `<pad>`).
    pub actions: Vec<String>,
}

/// An input file.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct InputEntry {
    /// Path or URL.
    pub path: String,
    /// Size in bytes.
    pub bytes: u64,
}

/// The dataset manifest.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct DatasetManifest {
    /// Manifest schema version.
    pub schema_version: u32,
    /// Always [`KIND`].
    pub kind: String,
    /// Dataset name.
    pub name: String,
    /// Dataset version.
    pub version: String,
    /// RFC 3339 creation time.
    pub created_at: String,
    /// seqclust version that wrote it.
    pub code_version: String,
    /// Absolute or ordinal timestamps.
    pub time_kind: TimeKind,
    /// Source format name.
    pub format: String,
    /// The input files.
    pub inputs: Vec<InputEntry>,
    /// Event field → source column used (of the first file; guessed names included).
    pub columns: BTreeMap<String, String>,
    /// The configuration used.
    pub config: IngestConfig,
    /// How users were assigned to shards.
    pub partitioning: String,
    /// Counts.
    pub counts: Counts,
    /// Statistics.
    pub stats: Stats,
    /// Vocabularies.
    pub vocab: VocabInfo,
    /// Whether shards have a dwell column.
    pub has_dwell: bool,
    /// Extra numeric columns (`num_<name>` in the shards).
    pub numeric_fields: Vec<String>,
    /// Evaluation splits.
    pub splits: Splits,
    /// Sequence shards, in order.
    pub shards: Vec<ShardEntry>,
    /// Every file of the dataset other than the manifest (shards included).
    pub files: Vec<FileEntry>,
}

impl DatasetManifest {
    /// The entry of a file, by relative path.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }
}
