//! Exactly-once commit of a run.
//!
//! Everything a run publishes is first written (staged) under `runs/<job id>/`, by the workers
//! and by [`Commit::put`]. [`Commit::finish`] then hashes every staged file, writes
//! `_MANIFEST.json` with a create-only put — the commit point: a run without a manifest is not a
//! result, and of two committers only one manifest is written — and last moves
//! `latest/<name>` forward with a conditional put. A crash anywhere before the manifest leaves
//! only staged files that readers ignore and [`crate::gc`] removes; a crash after it is repaired
//! by calling `finish` again, which finds the manifest and moves the pointer.

use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload, UpdateVersion};
use seqclust_data::Location;
use seqclust_data::store::sha256_hex;

use crate::error::{Error, Result};
use crate::fault;
use crate::manifest::{FORMAT, FileEntry, MANIFEST, RunInfo, RunManifest};

/// Files under this prefix of a run are working state, not part of the result.
pub const CHECKPOINTS: &str = "checkpoints/";

/// The directory of run `job_id` under a storage root.
pub fn run_location(root: &Location, job_id: &str) -> Location {
    root.join(&format!("runs/{job_id}"))
}

/// The `latest` pointer of a job name, relative to the root.
pub fn latest_key(name: &str) -> String {
    format!("latest/{name}")
}

/// The outcome of [`Commit::finish`].
#[derive(Clone, Debug)]
pub struct Committed {
    /// The run's manifest.
    pub manifest: RunManifest,
    /// False when the run had already been committed (by an earlier attempt or another
    /// coordinator); the manifest is then the one found.
    pub new: bool,
    /// Whether `latest/<name>` now names this run (false when a newer run holds it).
    pub latest: bool,
}

/// A run being committed.
#[derive(Clone, Debug)]
pub struct Commit {
    root: Location,
    run: Location,
    job_id: String,
}

impl Commit {
    /// The commit of run `job_id` under `root`.
    pub fn new(root: &Location, job_id: &str) -> Commit {
        Commit {
            root: root.clone(),
            run: run_location(root, job_id),
            job_id: job_id.to_string(),
        }
    }

    /// The run directory.
    pub fn run(&self) -> &Location {
        &self.run
    }

    /// The manifest, when the run is already committed.
    pub async fn committed(&self) -> Result<Option<RunManifest>> {
        if !self.run.exists(MANIFEST).await? {
            return Ok(None);
        }
        let bytes = self.run.get(MANIFEST).await?;
        RunManifest::parse(&bytes, &self.run.display_of(MANIFEST)).map(Some)
    }

    /// Stages one file of the run.
    pub async fn put(&self, rel: &str, data: Bytes) -> Result<()> {
        fault::before_write(rel);
        self.run.put(rel, data).await?;
        Ok(())
    }

    /// Hashes every staged file, writes the manifest (create-only) and moves `latest/<name>`.
    pub async fn finish(&self, info: RunInfo) -> Result<Committed> {
        if info.job_id != self.job_id {
            return Err(Error::BadManifest {
                location: self.run.display_of(MANIFEST),
                message: format!("job id {:?} for run {:?}", info.job_id, self.job_id),
            });
        }
        let (manifest, new) = match self.committed().await? {
            Some(m) => (m, false),
            None => {
                let files = hash_files(&self.run).await?;
                let manifest = RunManifest {
                    format: FORMAT.to_string(),
                    committed_unix_ms: now_ms(),
                    code_version: env!("CARGO_PKG_VERSION").to_string(),
                    info,
                    files,
                };
                let bytes = serde_json::to_vec_pretty(&manifest).map_err(|e| Error::Format {
                    location: self.run.display_of(MANIFEST),
                    message: e.to_string(),
                })?;
                fault::before_write(MANIFEST);
                if self.run.put_if_absent(MANIFEST, Bytes::from(bytes)).await? {
                    (manifest, true)
                } else {
                    // another committer won; theirs is the run
                    let m = self.committed().await?.ok_or_else(|| Error::NotCommitted {
                        run: self.run.to_string(),
                    })?;
                    (m, false)
                }
            }
        };
        let latest = move_latest(
            &self.root,
            &manifest.info.name,
            &self.job_id,
            manifest.committed_unix_ms,
        )
        .await?;
        Ok(Committed {
            manifest,
            new,
            latest,
        })
    }
}

/// Every staged file of a run (checkpoints and the manifest excluded), hashed.
async fn hash_files(run: &Location) -> Result<Vec<FileEntry>> {
    let listed = run.list_files("").await?;
    let wanted: Vec<(String, u64)> = listed
        .into_iter()
        .filter(|(p, _)| p != MANIFEST && !p.starts_with(CHECKPOINTS))
        .collect();
    let mut files: Vec<FileEntry> = futures::stream::iter(wanted)
        .map(|(path, _)| async move {
            let bytes = run.get(&path).await?;
            let sha256 = tokio::task::spawn_blocking({
                let bytes = bytes.clone();
                move || sha256_hex(&bytes)
            })
            .await
            .map_err(|e| Error::Format {
                location: run.display_of(&path),
                message: e.to_string(),
            })?;
            Ok::<_, Error>(FileEntry {
                size: bytes.len() as u64,
                path,
                sha256,
            })
        })
        .buffer_unordered(8)
        .try_collect()
        .await?;
    files.sort_by(|a, b| a.path.cmp(&b.path));
    Ok(files)
}

pub(crate) fn now_ms() -> i64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

/// When run `id` was committed, if it was.
async fn committed_at(root: &Location, id: &str) -> Option<i64> {
    let run = run_location(root, id);
    let bytes = run.get(MANIFEST).await.ok()?;
    RunManifest::parse(&bytes, &run.display_of(MANIFEST))
        .ok()
        .map(|m| m.committed_unix_ms)
}

/// Moves `latest/<name>` to `job_id` unless it already names a run committed later. Uses a
/// conditional put (If-Match on the pointer's version) where the store has one, and a
/// create-only lock object where it does not (the local filesystem).
pub async fn move_latest(
    root: &Location,
    name: &str,
    job_id: &str,
    committed_unix_ms: i64,
) -> Result<bool> {
    let rel = latest_key(name);
    let path = root.path(&rel);
    let store = root.store();
    // the local filesystem has no conditional update: go straight to the lock
    if store.to_string().starts_with("LocalFileSystem") {
        return move_latest_locked(root, name, job_id, committed_unix_ms).await;
    }
    for _ in 0..100 {
        let current = match store.get(&path).await {
            Ok(r) => {
                let version = UpdateVersion {
                    e_tag: r.meta.e_tag.clone(),
                    version: r.meta.version.clone(),
                };
                let bytes = r
                    .bytes()
                    .await
                    .map_err(|e| Error::object_store(root.display_of(&rel), e))?;
                Some((String::from_utf8_lossy(&bytes).trim().to_string(), version))
            }
            Err(object_store::Error::NotFound { .. }) => None,
            Err(e) => return Err(Error::object_store(root.display_of(&rel), e)),
        };
        let mode = match current {
            None => PutMode::Create,
            Some((cur, version)) => {
                if cur == job_id {
                    return Ok(true);
                }
                if committed_at(root, &cur)
                    .await
                    .is_some_and(|t| t > committed_unix_ms)
                {
                    return Ok(false);
                }
                PutMode::Update(version)
            }
        };
        fault::before_write(&rel);
        let opts = PutOptions {
            mode,
            ..Default::default()
        };
        match store
            .put_opts(&path, PutPayload::from(job_id.to_string()), opts)
            .await
        {
            Ok(_) => return Ok(true),
            Err(object_store::Error::AlreadyExists { .. })
            | Err(object_store::Error::Precondition { .. }) => continue,
            Err(object_store::Error::NotImplemented { .. })
            | Err(object_store::Error::NotSupported { .. }) => {
                return move_latest_locked(root, name, job_id, committed_unix_ms).await;
            }
            Err(e) => return Err(Error::object_store(root.display_of(&rel), e)),
        }
    }
    Err(Error::Format {
        location: root.display_of(&rel),
        message: "the pointer kept changing under 100 attempts to move it".into(),
    })
}

/// A lock older than this is taken to belong to a crashed committer and is broken.
const STALE_LOCK: Duration = Duration::from_secs(10);

async fn move_latest_locked(
    root: &Location,
    name: &str,
    job_id: &str,
    committed_unix_ms: i64,
) -> Result<bool> {
    let lock = format!("locks/latest/{name}");
    let deadline = tokio::time::Instant::now() + 2 * STALE_LOCK;
    loop {
        if root
            .put_if_absent(&lock, Bytes::from(job_id.to_string()))
            .await?
        {
            break;
        }
        // our own lock, left by a crashed attempt at this same commit: take it over
        if root
            .get(&lock)
            .await
            .is_ok_and(|b| b.as_ref() == job_id.as_bytes())
        {
            let _ = root.store().delete(&root.path(&lock)).await;
            continue;
        }
        let head = root.store().head(&root.path(&lock)).await;
        if let Ok(meta) = head {
            let age = now_ms() - meta.last_modified.timestamp_millis();
            if age > STALE_LOCK.as_millis() as i64 {
                let _ = root.store().delete(&root.path(&lock)).await;
                continue;
            }
        }
        if tokio::time::Instant::now() > deadline {
            return Err(Error::Format {
                location: root.display_of(&lock),
                message: "could not take the pointer lock".into(),
            });
        }
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let rel = latest_key(name);
    let result = async {
        let current = match root.get(&rel).await {
            Ok(b) => Some(String::from_utf8_lossy(&b).trim().to_string()),
            Err(_) if !root.exists(&rel).await? => None,
            Err(e) => return Err(Error::from(e)),
        };
        if let Some(cur) = &current {
            if cur == job_id {
                return Ok(true);
            }
            if committed_at(root, cur)
                .await
                .is_some_and(|t| t > committed_unix_ms)
            {
                return Ok(false);
            }
        }
        fault::before_write(&rel);
        root.put(&rel, Bytes::from(job_id.to_string())).await?;
        Ok(true)
    }
    .await;
    let _ = root.store().delete(&root.path(&lock)).await;
    result
}
