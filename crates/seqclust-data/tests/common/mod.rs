//! Helpers shared by the integration tests.
#![allow(dead_code, clippy::unwrap_used)] // helpers: not every test uses each; tests fail loudly

use std::path::PathBuf;

use seqclust_data::{Dataset, IngestConfig, IngestReport, SequenceBatch, ingest::NoProgress};

/// `../shared/data` beside the repository (or `SEQCLUST_SHARED_DATA`). The real datasets are
/// part of the test environment: a missing directory is a failure, not a skip.
pub fn shared_data() -> PathBuf {
    let p = std::env::var_os("SEQCLUST_SHARED_DATA")
        .map(PathBuf::from)
        .unwrap_or_else(|| PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    assert!(
        p.is_dir(),
        "the shared datasets are missing at {} (set SEQCLUST_SHARED_DATA)",
        p.display()
    );
    p
}

pub fn rt() -> tokio::runtime::Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// A config that keeps every event (no dedup, no length limits), written under `root`.
pub fn keep_all(root: &std::path::Path, paths: Vec<String>) -> IngestConfig {
    let mut cfg = IngestConfig::default();
    cfg.source.paths = paths;
    cfg.preprocess.dedup = seqclust_data::ingest::Dedup::None;
    cfg.preprocess.min_len = 1;
    cfg.preprocess.max_len = 100_000;
    cfg.output.root = root.display().to_string();
    cfg.output.name = "t".into();
    cfg.output.version = Some("v1".into());
    cfg.output.shards = 4;
    cfg
}

pub fn run(cfg: &IngestConfig) -> seqclust_data::Result<IngestReport> {
    let rt = rt();
    seqclust_data::ingest(cfg, rt.handle(), &NoProgress)
}

/// Every shard of the committed dataset, verified.
pub fn read_all(location: &str) -> (Dataset, Vec<SequenceBatch>) {
    let rt = rt();
    rt.block_on(async {
        let ds = Dataset::open(location).await.unwrap();
        ds.verify().await.unwrap();
        let mut shards = Vec::new();
        for i in 0..ds.num_shards() {
            shards.push(ds.read_shard(i).await.unwrap());
        }
        (ds, shards)
    })
}
