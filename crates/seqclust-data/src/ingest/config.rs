//! The ingest configuration: `[source]`, `[preprocess]` and `[output]` tables of a TOML file.

use std::path::{Path, PathBuf};

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::source::SourceConfig;

/// How consecutive duplicate events of a user are treated.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Dedup {
    /// Keep everything.
    None,
    /// Drop an event identical in every field to the one before it (same item, action,
    /// timestamp, category, dwell and numbers).
    #[default]
    Exact,
    /// Drop an event with the same item and action as the one before it, whatever its time.
    ItemAction,
}

/// Per-user preprocessing.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct PreprocessConfig {
    /// Consecutive duplicate handling.
    pub dedup: Dedup,
    /// A gap longer than this (seconds) starts a new session.
    pub session_gap_s: f64,
    /// Items seen fewer times than this map to the out-of-vocabulary id.
    pub item_min_count: u64,
    /// Keep at most this many of a user's most recent events.
    pub max_len: usize,
    /// Drop users with fewer events than this (after de-duplication).
    pub min_len: usize,
    /// Temporal split points as quantiles of all event times: events before the first are
    /// training, before the second validation, the rest test. Ignored for ordinal times.
    pub temporal_split: Option<[f64; 2]>,
}

impl Default for PreprocessConfig {
    fn default() -> Self {
        PreprocessConfig {
            dedup: Dedup::Exact,
            session_gap_s: 1800.0,
            item_min_count: 1,
            max_len: 200,
            min_len: 3,
            temporal_split: Some([0.8, 0.9]),
        }
    }
}

impl PreprocessConfig {
    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<()> {
        if !(self.session_gap_s.is_finite() && self.session_gap_s > 0.0) {
            return Err(Error::config(
                "preprocess.session_gap_s",
                "must be a positive number of seconds",
            ));
        }
        if self.max_len == 0 {
            return Err(Error::config("preprocess.max_len", "must be at least 1"));
        }
        if self.min_len == 0 {
            return Err(Error::config("preprocess.min_len", "must be at least 1"));
        }
        if self.min_len > self.max_len {
            return Err(Error::config(
                "preprocess.min_len",
                format!(
                    "{} is above preprocess.max_len {}",
                    self.min_len, self.max_len
                ),
            ));
        }
        if self.item_min_count == 0 {
            return Err(Error::config(
                "preprocess.item_min_count",
                "must be at least 1",
            ));
        }
        if let Some([a, b]) = self.temporal_split
            && !(0.0 < a && a < b && b < 1.0)
        {
            return Err(Error::config(
                "preprocess.temporal_split",
                format!("[{a}, {b}] must be two increasing quantiles strictly between 0 and 1"),
            ));
        }
        Ok(())
    }
}

/// Where and how the dataset is written.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct OutputConfig {
    /// Storage root (local directory or `s3://bucket/prefix`); the dataset goes to
    /// `<root>/datasets/<name>/<version>`.
    pub root: String,
    /// Dataset name (letters, digits, `-`, `_`, `.`).
    pub name: String,
    /// Version; default: the UTC time of the ingest, `YYYYMMDDTHHMMSSZ`.
    pub version: Option<String>,
    /// Number of shards; 0 picks one from the input size (about 64 MiB of input per shard,
    /// at least 8).
    pub shards: usize,
    /// Fail, publishing nothing, when more than this fraction of rows is malformed.
    pub max_bad_fraction: f64,
    /// Parser threads; 0 uses every core.
    pub threads: usize,
    /// Memory (MiB) for partitioned events before they spill to `tmp_dir`; peak memory is about
    /// this plus the vocabularies plus a few shards being written.
    pub memory_mb: usize,
    /// Scratch directory for the partition files (about the size of the input); default: the
    /// system temporary directory.
    pub tmp_dir: Option<PathBuf>,
}

impl Default for OutputConfig {
    fn default() -> Self {
        OutputConfig {
            root: "./seqclust-data".into(),
            name: String::new(),
            version: None,
            shards: 0,
            max_bad_fraction: 0.01,
            threads: 0,
            memory_mb: 1024,
            tmp_dir: None,
        }
    }
}

/// Checks a dataset name or version: a single path segment of safe characters.
pub fn validate_segment(field: &str, value: &str) -> Result<()> {
    if value.is_empty()
        || value.len() > 128
        || value.starts_with('.')
        || !value
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
    {
        return Err(Error::config(
            field,
            format!(
                "{value:?} must be 1-128 characters of letters, digits, '-', '_' or '.', not starting with '.'"
            ),
        ));
    }
    Ok(())
}

impl OutputConfig {
    /// Checks the values; the error names the field.
    pub fn validate(&self) -> Result<()> {
        validate_segment("output.name", &self.name)?;
        if let Some(v) = &self.version {
            validate_segment("output.version", v)?;
        }
        if !(0.0..=1.0).contains(&self.max_bad_fraction) {
            return Err(Error::config(
                "output.max_bad_fraction",
                "must be between 0 and 1",
            ));
        }
        if self.threads > 64 {
            return Err(Error::config("output.threads", "at most 64"));
        }
        if self.shards > 65_536 {
            return Err(Error::config("output.shards", "at most 65536"));
        }
        if self.root.trim().is_empty() {
            return Err(Error::config("output.root", "must not be empty"));
        }
        Ok(())
    }
}

/// A whole ingest job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct IngestConfig {
    /// The input.
    pub source: SourceConfig,
    /// Per-user preprocessing.
    pub preprocess: PreprocessConfig,
    /// The output.
    pub output: OutputConfig,
}

impl IngestConfig {
    /// Loads a TOML config file; relative input paths are taken relative to the file.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path.display(), e))?;
        let mut cfg: IngestConfig = toml::from_str(&text).map_err(|source| Error::ConfigFile {
            path: path.to_path_buf(),
            source,
        })?;
        if let Some(dir) = path.parent() {
            for p in &mut cfg.source.paths {
                if !crate::store::is_url(p) && Path::new(p).is_relative() {
                    *p = dir.join(&p).display().to_string();
                }
            }
        }
        Ok(cfg)
    }

    /// Checks every table.
    pub fn validate(&self) -> Result<()> {
        self.source.resolve()?;
        self.preprocess.validate()?;
        self.output.validate()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_fields() {
        let p = PreprocessConfig {
            min_len: 10,
            max_len: 5,
            ..Default::default()
        };
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("preprocess.min_len")
        );
        let p = PreprocessConfig {
            temporal_split: Some([0.9, 0.8]),
            ..Default::default()
        };
        assert!(
            p.validate()
                .unwrap_err()
                .to_string()
                .contains("preprocess.temporal_split")
        );
        let o = OutputConfig {
            name: "../x".into(),
            ..Default::default()
        };
        assert!(
            o.validate()
                .unwrap_err()
                .to_string()
                .contains("output.name")
        );
        let o = OutputConfig {
            name: "ok".into(),
            max_bad_fraction: 2.0,
            ..Default::default()
        };
        assert!(
            o.validate()
                .unwrap_err()
                .to_string()
                .contains("output.max_bad_fraction")
        );
    }
}
