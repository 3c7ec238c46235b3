//! Reading committed runs: open by id or `latest/<name>`, verified reads, pull, listing and
//! garbage collection of runs that were never committed.

use std::path::Path;
use std::time::Duration;

use bytes::Bytes;
use futures::{StreamExt, TryStreamExt};
use object_store::{ObjectStore, ObjectStoreExt};
use seqclust_data::Location;
use seqclust_data::store::sha256_hex;

use crate::commit::{CHECKPOINTS, latest_key, now_ms, run_location};
use crate::error::{Error, Result};
use crate::manifest::{MANIFEST, RunManifest};

/// A committed run, opened through its manifest. Every read through it is checked against
/// the manifest's size and sha256.
#[derive(Clone, Debug)]
pub struct Run {
    location: Location,
    manifest: RunManifest,
}

/// The job id that `latest/<name>` names, if any.
pub async fn latest(root: &Location, name: &str) -> Result<Option<String>> {
    let rel = latest_key(name);
    if !root.exists(&rel).await? {
        return Ok(None);
    }
    let bytes = root.get(&rel).await?;
    Ok(Some(String::from_utf8_lossy(&bytes).trim().to_string()))
}

impl Run {
    /// Opens a run under `root`: `spec` is `latest/<name>`, `runs/<job id>` or a job id.
    pub async fn open(root: &Location, spec: &str) -> Result<Run> {
        let id = if let Some(name) = spec.strip_prefix("latest/") {
            latest(root, name).await?.ok_or_else(|| Error::NotFound {
                spec: spec.to_string(),
                root: root.to_string(),
                hint: format!(": no job named {name:?} has committed a run"),
            })?
        } else {
            spec.strip_prefix("runs/").unwrap_or(spec).to_string()
        };
        if id.is_empty() || id.contains('/') {
            return Err(Error::NotFound {
                spec: spec.to_string(),
                root: root.to_string(),
                hint: "; give latest/<name>, runs/<job id> or a job id".into(),
            });
        }
        let loc = run_location(root, &id);
        match Run::open_dir(loc).await {
            Err(Error::NotCommitted { .. }) if root.list_dirs("runs").await?.contains(&id) => {
                Err(Error::NotCommitted {
                    run: run_location(root, &id).to_string(),
                })
            }
            Err(Error::NotCommitted { .. }) => Err(Error::NotFound {
                spec: spec.to_string(),
                root: root.to_string(),
                hint: "; `seqclust runs list` shows the runs there".into(),
            }),
            other => other,
        }
    }

    /// Opens the run whose directory is `location` (a run under a root, or a pulled copy).
    pub async fn open_dir(location: Location) -> Result<Run> {
        if !location.exists(MANIFEST).await? {
            return Err(Error::NotCommitted {
                run: location.to_string(),
            });
        }
        let bytes = location.get(MANIFEST).await?;
        let manifest = RunManifest::parse(&bytes, &location.display_of(MANIFEST))?;
        Ok(Run { location, manifest })
    }

    /// Opens `spec` as a run directory when it has a manifest, else as a run under `root`.
    pub async fn open_any(root: &str, spec: &str) -> Result<Run> {
        if !spec.starts_with("latest/")
            && let Ok(loc) = Location::parse(spec, false)
            && loc.exists(MANIFEST).await.unwrap_or(false)
        {
            return Run::open_dir(loc).await;
        }
        Run::open(&Location::parse(root, false)?, spec).await
    }

    /// The run's job id.
    pub fn id(&self) -> &str {
        &self.manifest.info.job_id
    }

    /// The manifest.
    pub fn manifest(&self) -> &RunManifest {
        &self.manifest
    }

    /// The run directory.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Reads one file of the run, refusing it when it is not in the manifest or does not match.
    pub async fn read(&self, rel: &str) -> Result<Bytes> {
        let entry = self.manifest.file(rel).ok_or_else(|| Error::NotListed {
            run: self.location.to_string(),
            file: rel.to_string(),
        })?;
        let bytes = self.location.get(rel).await?;
        let shown = self.location.display_of(rel);
        if bytes.len() as u64 != entry.size {
            return Err(Error::Checksum {
                file: shown,
                what: "size",
                expected: entry.size.to_string(),
                found: bytes.len().to_string(),
            });
        }
        let sha = {
            let bytes = bytes.clone();
            tokio::task::spawn_blocking(move || sha256_hex(&bytes))
                .await
                .map_err(|e| Error::Format {
                    location: shown.clone(),
                    message: e.to_string(),
                })?
        };
        if sha != entry.sha256 {
            return Err(Error::Checksum {
                file: shown,
                what: "sha256",
                expected: entry.sha256.clone(),
                found: sha,
            });
        }
        Ok(bytes)
    }

    /// The files whose path starts with `prefix`, sorted.
    pub fn files_under(&self, prefix: &str) -> Vec<&str> {
        self.manifest
            .files
            .iter()
            .filter(|f| f.path.starts_with(prefix))
            .map(|f| f.path.as_str())
            .collect()
    }

    /// Checks every file of the run.
    pub async fn verify(&self) -> Result<()> {
        futures::stream::iter(self.manifest.files.iter())
            .map(|f| async move { self.read(&f.path).await.map(|_| ()) })
            .buffer_unordered(8)
            .try_collect::<Vec<()>>()
            .await?;
        Ok(())
    }

    /// Copies the run into local directory `dir`, verifying every file; the manifest is
    /// written last, so an interrupted or refused pull never looks like a run. Returns the
    /// bytes copied.
    pub async fn pull(&self, dir: &Path) -> Result<u64> {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
        let manifest_path = dir.join(MANIFEST);
        if manifest_path.exists() {
            std::fs::remove_file(&manifest_path)
                .map_err(|e| Error::io(manifest_path.display(), e))?;
        }
        let total: Vec<u64> = futures::stream::iter(self.manifest.files.iter())
            .map(|f| async move {
                let bytes = self.read(&f.path).await?;
                let dest = dir.join(&f.path);
                write_atomic(&dest, &bytes)?;
                Ok::<_, Error>(bytes.len() as u64)
            })
            .buffer_unordered(8)
            .try_collect()
            .await?;
        let bytes = serde_json::to_vec_pretty(&self.manifest).map_err(|e| Error::Format {
            location: manifest_path.display().to_string(),
            message: e.to_string(),
        })?;
        write_atomic(&manifest_path, &bytes)?;
        Ok(total.iter().sum())
    }
}

fn write_atomic(dest: &Path, bytes: &[u8]) -> Result<()> {
    if let Some(parent) = dest.parent() {
        std::fs::create_dir_all(parent).map_err(|e| Error::io(parent.display(), e))?;
    }
    let tmp = dest.with_extension("part");
    std::fs::write(&tmp, bytes).map_err(|e| Error::io(tmp.display(), e))?;
    std::fs::rename(&tmp, dest).map_err(|e| Error::io(dest.display(), e))
}

/// One run directory under a root.
#[derive(Clone, Debug)]
pub struct RunEntry {
    /// The job id.
    pub id: String,
    /// The manifest, when the run is committed.
    pub manifest: Option<RunManifest>,
    /// Whether `latest/<name>` names this run.
    pub latest: bool,
}

/// Every run directory under `root`, committed or not, oldest first (by commit time, then id).
pub async fn list(root: &Location) -> Result<Vec<RunEntry>> {
    let ids = root.list_dirs("runs").await?;
    let mut out: Vec<RunEntry> = futures::stream::iter(ids)
        .map(|id| async move {
            let loc = run_location(root, &id);
            let manifest = match Run::open_dir(loc.clone()).await {
                Ok(r) => Some(r.manifest),
                Err(Error::NotCommitted { .. }) => {
                    // a directory left empty by a deletion (local filesystems keep them)
                    let any = loc.store().list(Some(loc.prefix())).next().await;
                    if any.is_none() {
                        return Ok(None);
                    }
                    None
                }
                Err(e) => return Err(e),
            };
            Ok::<_, Error>(Some(RunEntry {
                id,
                manifest,
                latest: false,
            }))
        })
        .buffer_unordered(8)
        .try_filter_map(|e| async move { Ok(e) })
        .try_collect()
        .await?;
    for e in &mut out {
        if let Some(m) = &e.manifest {
            e.latest = latest(root, &m.info.name).await?.as_deref() == Some(e.id.as_str());
        }
    }
    out.sort_by_key(|e| {
        (
            e.manifest
                .as_ref()
                .map_or(i64::MAX, |m| m.committed_unix_ms),
            e.id.clone(),
        )
    });
    Ok(out)
}

/// What [`gc`] removed.
#[derive(Clone, Debug, Default)]
pub struct Collected {
    /// Run directories deleted because they were never committed.
    pub uncommitted: Vec<String>,
    /// Committed runs whose checkpoints were deleted.
    pub checkpoints: Vec<String>,
    /// Objects deleted.
    pub objects: usize,
}

/// Removes run directories that have no manifest and no object newer than `min_age` (so a
/// run still being written is left alone), and — when `checkpoints` is set — the
/// checkpoints of committed runs. With `dry_run`, only reports.
pub async fn gc(
    root: &Location,
    min_age: Duration,
    checkpoints: bool,
    dry_run: bool,
) -> Result<Collected> {
    let mut out = Collected::default();
    for e in list(root).await? {
        let prefix = match &e.manifest {
            None => String::new(),
            Some(_) if checkpoints => CHECKPOINTS.to_string(),
            Some(_) => continue,
        };
        let run = run_location(root, &e.id);
        let objects: Vec<object_store::ObjectMeta> = run
            .store()
            .list(Some(&run.path(&prefix)))
            .try_collect()
            .await
            .map_err(|err| Error::object_store(run.display_of(&prefix), err))?;
        let newest = objects
            .iter()
            .map(|m| m.last_modified.timestamp_millis())
            .max()
            .unwrap_or(0);
        if e.manifest.is_none() && now_ms() - newest < min_age.as_millis() as i64 {
            continue;
        }
        if objects.is_empty() {
            continue;
        }
        if !dry_run {
            delete_all(&run, &objects).await?;
        }
        out.objects += objects.len();
        if e.manifest.is_none() {
            out.uncommitted.push(e.id);
        } else {
            out.checkpoints.push(e.id);
        }
    }
    Ok(out)
}

/// Deletes an uncommitted run's staged files now (a cancelled or failed job); a committed
/// run is left alone. Returns the objects deleted.
pub async fn discard(root: &Location, job_id: &str) -> Result<usize> {
    let run = run_location(root, job_id);
    if run.exists(MANIFEST).await? {
        return Ok(0);
    }
    let objects: Vec<object_store::ObjectMeta> = run
        .store()
        .list(Some(run.prefix()))
        .try_collect()
        .await
        .map_err(|e| Error::object_store(&run, e))?;
    delete_all(&run, &objects).await?;
    Ok(objects.len())
}

async fn delete_all(run: &Location, objects: &[object_store::ObjectMeta]) -> Result<()> {
    for m in objects {
        match run.store().delete(&m.location).await {
            Ok(()) | Err(object_store::Error::NotFound { .. }) => {}
            Err(e) => return Err(Error::object_store(&m.location, e)),
        }
    }
    Ok(())
}
