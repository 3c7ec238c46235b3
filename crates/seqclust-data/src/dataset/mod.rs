//! Reading a committed dataset: manifest, vocabularies, checksum-verified shards, and a
//! streaming epoch iterator with deterministic shuffling and rank sharding.

mod batch;
pub mod manifest;
mod shard_sampler;
mod split;

use std::sync::Arc;

pub use batch::{SeqRef, SequenceBatch, columns};
pub use manifest::DatasetManifest;
pub use shard_sampler::ShardSampler;
pub use split::{SplitPolicy, SplitRanges};

use crate::error::{Error, Result};
use crate::store::{Location, sha256_hex};
use crate::vocab::KeyVocab;
use manifest::{KIND, MANIFEST_FILE, SCHEMA_VERSION};

/// A committed dataset.
#[derive(Debug, Clone)]
pub struct Dataset {
    location: Location,
    manifest: Arc<DatasetManifest>,
}

impl Dataset {
    /// Opens the dataset at `uri` (a version directory), or the newest committed version when
    /// `uri` is a dataset's name directory (`<root>/datasets/<name>`).
    pub async fn open(uri: &str) -> Result<Dataset> {
        Dataset::open_at(Location::parse(uri, false)?).await
    }

    /// Opens `name` or `name/version` under a storage root.
    pub async fn open_in(root: &str, spec: &str) -> Result<Dataset> {
        let root = Location::parse(root, false)?;
        Dataset::open_at(root.join(&format!("datasets/{}", spec.trim_matches('/')))).await
    }

    /// Opens a dataset at a location (see [`Dataset::open`]).
    pub async fn open_at(location: Location) -> Result<Dataset> {
        if location.exists(MANIFEST_FILE).await? {
            return Dataset::load(location).await;
        }
        let versions = location.list_dirs("").await?;
        for v in versions.iter().rev() {
            let candidate = location.join(v);
            if candidate.exists(MANIFEST_FILE).await? {
                return Dataset::load(candidate).await;
            }
        }
        let hint = if versions.is_empty() {
            String::new()
        } else {
            format!(
                "; versions without a manifest (incomplete ingests): {}",
                versions.join(", ")
            )
        };
        Err(Error::DatasetNotFound {
            location: location.to_string(),
            hint,
        })
    }

    async fn load(location: Location) -> Result<Dataset> {
        let raw = location.get(MANIFEST_FILE).await?;
        let where_ = location.display_of(MANIFEST_FILE);
        let manifest: DatasetManifest =
            serde_json::from_slice(&raw).map_err(|e| Error::Manifest {
                location: where_.clone(),
                message: e.to_string(),
            })?;
        if manifest.kind != KIND {
            return Err(Error::Manifest {
                location: where_,
                message: format!("kind is {:?}, not {KIND:?}", manifest.kind),
            });
        }
        if manifest.schema_version > SCHEMA_VERSION {
            return Err(Error::Manifest {
                location: where_,
                message: format!(
                    "schema version {} is newer than this seqclust understands ({SCHEMA_VERSION}); upgrade seqclust",
                    manifest.schema_version
                ),
            });
        }
        Ok(Dataset {
            location,
            manifest: Arc::new(manifest),
        })
    }

    /// The manifest.
    pub fn manifest(&self) -> &DatasetManifest {
        &self.manifest
    }

    /// Where the dataset is.
    pub fn location(&self) -> &Location {
        &self.location
    }

    /// Number of shards.
    pub fn num_shards(&self) -> usize {
        self.manifest.shards.len()
    }

    /// Reads a file listed in the manifest, checking its size and sha256.
    pub async fn read_verified(&self, rel: &str) -> Result<bytes::Bytes> {
        let entry = self.manifest.file(rel).ok_or_else(|| Error::Manifest {
            location: self.location.display_of(MANIFEST_FILE),
            message: format!("no entry for {rel}"),
        })?;
        let data = self.location.get(rel).await?;
        if data.len() as u64 != entry.bytes {
            return Err(Error::Checksum {
                location: self.location.display_of(rel),
                what: "size",
                expected: entry.bytes.to_string(),
                found: data.len().to_string(),
            });
        }
        let sha = sha256_hex(&data);
        if sha != entry.sha256 {
            return Err(Error::Checksum {
                location: self.location.display_of(rel),
                what: "sha256",
                expected: entry.sha256.clone(),
                found: sha,
            });
        }
        Ok(data)
    }

    /// Reads shard `i` (verified).
    pub async fn read_shard(&self, i: usize) -> Result<SequenceBatch> {
        let entry = self.manifest.shards.get(i).ok_or_else(|| Error::Manifest {
            location: self.location.display_of(MANIFEST_FILE),
            message: format!(
                "no shard {i} (the dataset has {})",
                self.manifest.shards.len()
            ),
        })?;
        let data = self.read_verified(&entry.file.path).await?;
        let loc = self.location.display_of(&entry.file.path);
        tokio::task::spawn_blocking(move || SequenceBatch::from_parquet(data, &loc))
            .await
            .map_err(|_| Error::Internal("shard decoder panicked"))?
    }

    /// The item vocabulary.
    pub async fn item_vocab(&self) -> Result<KeyVocab> {
        let rel = self.manifest.vocab.items.clone();
        KeyVocab::from_parquet(
            self.read_verified(&rel).await?,
            &self.location.display_of(&rel),
        )
    }

    /// The category vocabulary.
    pub async fn category_vocab(&self) -> Result<KeyVocab> {
        let rel = self.manifest.vocab.categories.clone();
        KeyVocab::from_parquet(
            self.read_verified(&rel).await?,
            &self.location.display_of(&rel),
        )
    }

    /// Checks every file's size and checksum.
    pub async fn verify(&self) -> Result<()> {
        for f in &self.manifest.files {
            self.read_verified(&f.path).await?;
        }
        Ok(())
    }

    /// Streams one epoch of this rank's shards, each with its users in shuffled order, one
    /// shard in memory at a time plus one prefetched. Blocking; I/O runs on `rt`.
    pub fn epoch(
        &self,
        sampler: ShardSampler,
        epoch: u64,
        rt: tokio::runtime::Handle,
    ) -> EpochIter {
        let order = sampler.shards_for(epoch, self.num_shards());
        let (tx, rx) = std::sync::mpsc::sync_channel::<Result<SequenceBatch>>(1);
        let ds = self.clone();
        std::thread::spawn(move || {
            for shard in order {
                let res = rt.block_on(ds.read_shard(shard)).map(|b| {
                    let perm = sampler.user_order(epoch, shard, b.len());
                    b.permuted(&perm)
                });
                let failed = res.is_err();
                if tx.send(res).is_err() || failed {
                    return;
                }
            }
        });
        EpochIter { rx }
    }
}

/// Shards of one epoch, each shuffled; see [`Dataset::epoch`].
pub struct EpochIter {
    rx: std::sync::mpsc::Receiver<Result<SequenceBatch>>,
}

impl Iterator for EpochIter {
    type Item = Result<SequenceBatch>;
    fn next(&mut self) -> Option<Self::Item> {
        self.rx.recv().ok()
    }
}

/// The committed datasets under a storage root: `(name, versions)`, sorted.
pub async fn list_datasets(root: &str) -> Result<Vec<(String, Vec<String>)>> {
    let root = Location::parse(root, false)?;
    let base = root.join("datasets");
    let mut out = Vec::new();
    for name in base.list_dirs("").await? {
        let mut versions = Vec::new();
        for v in base.join(&name).list_dirs("").await? {
            if base.join(&name).join(&v).exists(MANIFEST_FILE).await? {
                versions.push(v);
            }
        }
        if !versions.is_empty() {
            out.push((name, versions));
        }
    }
    Ok(out)
}

impl SequenceBatch {
    /// A copy with users in the given order.
    pub fn permuted(&self, order: &[u32]) -> SequenceBatch {
        let mut out = SequenceBatch::new(self.has_dwell(), self.numeric_names().to_vec());
        for &i in order {
            let s = self.get(i as usize);
            out.begin_user(s.user);
            for k in 0..s.len() {
                out.push_event(
                    s.items[k],
                    s.actions[k],
                    s.categories[k],
                    s.timestamps[k],
                    s.sessions[k],
                    s.dwell.map_or(f32::NAN, |d| d[k]),
                    (0..self.numeric.len()).map(|j| self.numeric_of(i as usize, j)[k]),
                );
            }
            out.end_user();
        }
        out
    }
}
