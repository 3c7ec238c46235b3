//! Storage locations: a local directory or an object-store URL, behind one type.
//!
//! Local paths (absolute or relative) and `file://` URLs use the local filesystem; `s3://bucket/prefix`
//! uses [`object_store::aws::AmazonS3Builder::from_env`], so the usual `AWS_ACCESS_KEY_ID`,
//! `AWS_SECRET_ACCESS_KEY`, `AWS_REGION`, `AWS_ENDPOINT` and `AWS_ALLOW_HTTP` variables apply
//! (set `AWS_ENDPOINT` and `AWS_ALLOW_HTTP=true` for a local S3-compatible server).

use std::sync::Arc;

use bytes::Bytes;
use object_store::path::Path;
use object_store::{ObjectStore, ObjectStoreExt, PutMode, PutOptions, PutPayload};

use crate::error::{Error, Result};

/// A prefix in an object store, with a display form for messages.
#[derive(Clone)]
pub struct Location {
    store: Arc<dyn ObjectStore>,
    prefix: Path,
    display: String,
}

impl std::fmt::Debug for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

impl std::fmt::Display for Location {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(&self.display)
    }
}

/// Whether `uri` names an object-store URL rather than a local path.
pub fn is_url(uri: &str) -> bool {
    uri.contains("://")
}

impl Location {
    /// Parses a local path or URL. A local directory is created when `create` is set.
    pub fn parse(uri: &str, create: bool) -> Result<Location> {
        let bad = |message: String| Error::StoreUrl {
            url: uri.to_string(),
            message,
        };
        if let Some(rest) = uri.strip_prefix("file://") {
            return Location::local(rest, create, uri);
        }
        if !is_url(uri) {
            return Location::local(uri, create, uri);
        }
        let url = url::Url::parse(uri).map_err(|e| bad(e.to_string()))?;
        match url.scheme() {
            "s3" | "s3a" => {
                let store = object_store::aws::AmazonS3Builder::from_env()
                    .with_url(uri)
                    .build()
                    .map_err(|e| bad(e.to_string()))?;
                let prefix = Path::from_url_path(url.path()).map_err(|e| bad(e.to_string()))?;
                Ok(Location {
                    store: Arc::new(store),
                    prefix,
                    display: uri.trim_end_matches('/').to_string(),
                })
            }
            other => Err(bad(format!(
                "unsupported scheme {other:?}; use a local path, file:// or s3://"
            ))),
        }
    }

    fn local(path: &str, create: bool, original: &str) -> Result<Location> {
        let p = std::path::Path::new(path);
        if create {
            std::fs::create_dir_all(p).map_err(|e| Error::io(path, e))?;
        } else if !p.exists() {
            return Err(Error::DatasetNotFound {
                location: original.to_string(),
                hint: ": the directory does not exist".into(),
            });
        }
        let store = object_store::local::LocalFileSystem::new_with_prefix(p)
            .map_err(|e| Error::store(path, e))?;
        Ok(Location {
            store: Arc::new(store),
            prefix: Path::default(),
            display: path.trim_end_matches('/').to_string(),
        })
    }

    /// A location in the given store (for tests and callers that build their own store).
    pub fn from_store(
        store: Arc<dyn ObjectStore>,
        prefix: Path,
        display: impl Into<String>,
    ) -> Self {
        Location {
            store,
            prefix,
            display: display.into(),
        }
    }

    /// The location of `rel` (a `/`-separated relative path) under this one.
    pub fn join(&self, rel: &str) -> Location {
        let mut prefix = self.prefix.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            prefix = prefix.join(part);
        }
        Location {
            store: Arc::clone(&self.store),
            prefix,
            display: format!("{}/{}", self.display, rel.trim_matches('/')),
        }
    }

    /// The object path of `rel` under this location.
    pub fn path(&self, rel: &str) -> Path {
        let mut p = self.prefix.clone();
        for part in rel.split('/').filter(|p| !p.is_empty()) {
            p = p.join(part);
        }
        p
    }

    /// Display form of `rel` under this location.
    pub fn display_of(&self, rel: &str) -> String {
        format!("{}/{}", self.display, rel)
    }

    /// The underlying store.
    pub fn store(&self) -> &Arc<dyn ObjectStore> {
        &self.store
    }

    /// The prefix inside the store.
    pub fn prefix(&self) -> &Path {
        &self.prefix
    }

    /// Reads a whole object.
    pub async fn get(&self, rel: &str) -> Result<Bytes> {
        let path = self.path(rel);
        let res = self
            .store
            .get(&path)
            .await
            .map_err(|e| Error::store(self.display_of(rel), e))?;
        res.bytes()
            .await
            .map_err(|e| Error::store(self.display_of(rel), e))
    }

    /// Whether an object exists.
    pub async fn exists(&self, rel: &str) -> Result<bool> {
        match self.store.head(&self.path(rel)).await {
            Ok(_) => Ok(true),
            Err(object_store::Error::NotFound { .. }) => Ok(false),
            Err(e) => Err(Error::store(self.display_of(rel), e)),
        }
    }

    /// Writes an object, replacing what is there.
    pub async fn put(&self, rel: &str, data: Bytes) -> Result<()> {
        self.store
            .put(&self.path(rel), PutPayload::from_bytes(data))
            .await
            .map_err(|e| Error::store(self.display_of(rel), e))?;
        Ok(())
    }

    /// Writes an object only if none exists; `Ok(false)` when one already did.
    pub async fn put_if_absent(&self, rel: &str, data: Bytes) -> Result<bool> {
        let opts = PutOptions {
            mode: PutMode::Create,
            ..Default::default()
        };
        match self
            .store
            .put_opts(&self.path(rel), PutPayload::from_bytes(data), opts)
            .await
        {
            Ok(_) => Ok(true),
            Err(object_store::Error::AlreadyExists { .. }) => Ok(false),
            Err(e) => Err(Error::store(self.display_of(rel), e)),
        }
    }

    /// Lists the immediate sub-directories (common prefixes) under `rel`.
    pub async fn list_dirs(&self, rel: &str) -> Result<Vec<String>> {
        let base = self.path(rel);
        let res = self
            .store
            .list_with_delimiter(Some(&base))
            .await
            .map_err(|e| Error::store(self.display_of(rel), e))?;
        let mut out: Vec<String> = res
            .common_prefixes
            .iter()
            .filter_map(|p| p.filename().map(str::to_string))
            .collect();
        out.sort();
        Ok(out)
    }
}

impl Location {
    /// Every object under `rel` (recursively): its path relative to this location and its
    /// size, sorted by path.
    pub async fn list_files(&self, rel: &str) -> Result<Vec<(String, u64)>> {
        use futures::TryStreamExt;
        let base = self.path(rel);
        let metas: Vec<object_store::ObjectMeta> = self
            .store
            .list(Some(&base))
            .try_collect()
            .await
            .map_err(|e| Error::store(self.display_of(rel), e))?;
        let skip = self.prefix.parts().count();
        let mut out: Vec<(String, u64)> = metas
            .into_iter()
            .map(|m| {
                let parts: Vec<String> = m
                    .location
                    .parts()
                    .skip(skip)
                    .map(|p| p.as_ref().to_string())
                    .collect();
                (parts.join("/"), m.size)
            })
            .collect();
        out.sort();
        Ok(out)
    }
}

/// The sha256 of a byte slice as lower-case hex.
pub fn sha256_hex(data: &[u8]) -> String {
    use sha2::Digest;
    hex::encode(sha2::Sha256::digest(data))
}
