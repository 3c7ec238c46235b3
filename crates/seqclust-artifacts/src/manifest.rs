//! `_MANIFEST.json`: what a committed run contains, written last.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The manifest's file name inside a run.
pub const MANIFEST: &str = "_MANIFEST.json";
/// The manifest format this crate writes and reads.
pub const FORMAT: &str = "seqclust-run/1";

/// One file of a run.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
pub struct FileEntry {
    /// Path relative to the run directory, `/`-separated.
    pub path: String,
    /// Size in bytes.
    pub size: u64,
    /// sha256 of the content, lower-case hex.
    pub sha256: String,
}

/// What the committer states about a run besides its files.
#[derive(Clone, Debug, Default, Serialize, Deserialize)]
pub struct RunInfo {
    /// The job id (also the run directory's name).
    pub job_id: String,
    /// The job name (`latest/<name>` points at the newest committed run of the name).
    pub name: String,
    /// When the job was submitted (Unix ms).
    pub created_unix_ms: i64,
    /// The dataset URI the job read.
    pub dataset: String,
    /// The dataset version that was read.
    #[serde(default)]
    pub dataset_version: Option<String>,
    /// Workers in the final membership.
    pub world_size: u32,
    /// The job configuration (the job spec as JSON).
    pub config: serde_json::Value,
    /// Phase summaries (training, k-means, analysis, timings …).
    #[serde(default)]
    pub summary: serde_json::Map<String, serde_json::Value>,
}

/// The parsed `_MANIFEST.json` of a committed run.
#[derive(Clone, Debug, Serialize, Deserialize)]
pub struct RunManifest {
    /// Always [`FORMAT`].
    pub format: String,
    /// When the manifest was written (Unix ms).
    pub committed_unix_ms: i64,
    /// The version of seqclust that committed the run.
    pub code_version: String,
    /// Everything the committer stated.
    #[serde(flatten)]
    pub info: RunInfo,
    /// Every file of the run, sorted by path (the manifest itself and checkpoints excluded).
    pub files: Vec<FileEntry>,
}

impl RunManifest {
    /// Parses and checks a manifest read from `location`.
    pub fn parse(bytes: &[u8], location: &str) -> Result<RunManifest> {
        let bad = |message: String| Error::BadManifest {
            location: location.to_string(),
            message,
        };
        let m: RunManifest = serde_json::from_slice(bytes).map_err(|e| bad(e.to_string()))?;
        if m.format != FORMAT {
            return Err(bad(format!(
                "format {:?}, this build reads {FORMAT:?}",
                m.format
            )));
        }
        if m.info.job_id.is_empty() {
            return Err(bad("job_id is empty".into()));
        }
        let mut seen = std::collections::HashSet::new();
        for f in &m.files {
            if f.path.is_empty() || f.path.starts_with('/') || f.path.split('/').any(|p| p == "..")
            {
                return Err(bad(format!(
                    "file path {:?} is not a relative path",
                    f.path
                )));
            }
            if f.sha256.len() != 64 || !f.sha256.bytes().all(|b| b.is_ascii_hexdigit()) {
                return Err(bad(format!(
                    "{}: sha256 {:?} is not 64 hex digits",
                    f.path, f.sha256
                )));
            }
            if !seen.insert(&f.path) {
                return Err(bad(format!("{} is listed twice", f.path)));
            }
        }
        Ok(m)
    }

    /// The entry of `path`.
    pub fn file(&self, path: &str) -> Option<&FileEntry> {
        self.files.iter().find(|f| f.path == path)
    }

    /// The total size of the run's files.
    pub fn total_bytes(&self) -> u64 {
        self.files.iter().map(|f| f.size).sum()
    }
}
