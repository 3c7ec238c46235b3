//! Ingest: raw event files → a versioned, sharded sequence dataset.
//!
//! Two passes, memory bounded by the vocabularies plus a few shards whatever the input size:
//! 1. One reader thread cuts the input into record-aligned chunks; parser threads turn them
//!    into events, append each to the scratch file of its user's partition and count items
//!    and categories. Malformed rows are counted and sampled into the quarantine report.
//! 2. After the vocabularies are fixed, each partition is sorted by (user, time, input order),
//!    de-duplicated, sessionised, truncated and written as one Parquet shard.
//!
//! The manifest is written last with a create-only put: a failed or interrupted ingest leaves
//! no manifest, so readers see no dataset; a committed version is never overwritten.

mod config;
mod partition;
pub(crate) mod spill;

use std::sync::Arc;
use std::sync::atomic::{AtomicU64, Ordering};
use std::time::Instant;

use bytes::Bytes;

pub use config::{Dedup, IngestConfig, OutputConfig, PreprocessConfig, validate_segment};
pub use spill::partition_of;

use crate::dataset::manifest::{
    Counts, DatasetManifest, FileEntry, InputEntry, KIND, LengthStats, MANIFEST_FILE,
    QUARANTINE_FILE, SCHEMA_VERSION, ShardEntry, Splits, Stats, TemporalCutoffs, VocabInfo,
};
use crate::error::{Error, Result};
use crate::event::TimeKind;
use crate::quarantine::Quarantine;
use crate::source::input::{InputFile, expand_inputs};
use crate::store::{Location, sha256_hex};
use crate::vocab::{KeyVocab, action_order};

/// Receives progress; the CLI draws bars with it.
pub trait Progress: Send + Sync {
    /// A new phase starts; `total` is its size in the unit of [`Progress::inc`].
    fn phase(&self, name: &str, total: Option<u64>);
    /// Progress within the phase.
    fn inc(&self, n: u64);
}

/// Progress that goes nowhere.
pub struct NoProgress;

impl Progress for NoProgress {
    fn phase(&self, _: &str, _: Option<u64>) {}
    fn inc(&self, _: u64) {}
}

/// What an ingest produced.
#[derive(Debug, Clone)]
pub struct IngestReport {
    /// Where the dataset was committed.
    pub location: String,
    /// Its manifest.
    pub manifest: DatasetManifest,
    /// The rejected rows.
    pub quarantine: Quarantine,
    /// Wall time of pass 1 (read, parse, partition), seconds.
    pub read_seconds: f64,
    /// Wall time of pass 2 (sort, preprocess, write), seconds.
    pub write_seconds: f64,
}

/// The dataset directory for a config: `<root>/datasets/<name>/<version>`.
pub fn dataset_location(out: &OutputConfig, version: &str) -> Result<Location> {
    let root = Location::parse(&out.root, true)?;
    Ok(root.join(&format!("datasets/{}/{}", out.name, version)))
}

/// A version string from the current UTC time, `YYYYMMDDTHHMMSSZ`.
pub fn default_version() -> String {
    chrono::Utc::now().format("%Y%m%dT%H%M%SZ").to_string()
}

fn auto_shards(files: &[InputFile]) -> usize {
    let est: u64 = files
        .iter()
        .map(|f| {
            let n = f.display.to_ascii_lowercase();
            if n.ends_with(".gz") || n.ends_with(".parquet") {
                f.size * 4
            } else {
                f.size
            }
        })
        .sum();
    (est.div_ceil(64 << 20) as usize).clamp(8, 4096)
}

/// Runs an ingest. Blocking; object-store calls run on `rt`.
pub fn ingest(
    cfg: &IngestConfig,
    rt: &tokio::runtime::Handle,
    progress: &dyn Progress,
) -> Result<IngestReport> {
    cfg.validate()?;
    let source = cfg.source.resolve()?;
    let pre = &cfg.preprocess;
    let out = &cfg.output;
    let version = out.version.clone().unwrap_or_else(default_version);
    let files = expand_inputs(&source.paths, rt)?;
    let location = dataset_location(out, &version)?;
    if rt.block_on(location.exists(MANIFEST_FILE))? {
        return Err(Error::AlreadyExists {
            location: location.to_string(),
        });
    }
    let partitions = if out.shards == 0 {
        auto_shards(&files)
    } else {
        out.shards
    };
    let threads = if out.threads == 0 {
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(2)
    } else {
        out.threads
    };
    let mut tmp = tempfile::Builder::new();
    tmp.prefix("seqclust-ingest-");
    let scratch = match &out.tmp_dir {
        Some(d) => tmp.tempdir_in(d),
        None => tmp.tempdir(),
    }
    .map_err(|e| {
        Error::io(
            out.tmp_dir
                .as_ref()
                .map_or("the temporary directory".into(), |d| {
                    d.display().to_string()
                }),
            e,
        )
    })?;
    let file_names: Vec<String> = files.iter().map(|f| f.display.clone()).collect();
    let shared = spill::SpillShared::create(
        scratch.path(),
        partitions,
        out.memory_mb.saturating_mul(1 << 20),
        source.aliases.clone(),
        source.default_action.clone(),
        source.numeric_names.len(),
        file_names,
    )?;

    // ---- pass 1: read, parse, partition
    let t0 = Instant::now();
    let total_bytes: u64 = files.iter().map(|f| f.size).sum();
    progress.phase("read", Some(total_bytes));
    let read_bytes = Arc::new(AtomicU64::new(0));
    let flush_at = ((64usize << 20) / partitions / threads).clamp(4 << 10, 256 << 10);
    let ctx = source.parse_ctx();
    let (tx, rx) = crossbeam_channel::bounded::<crate::source::Chunk>(threads * 2);
    let (read_result, sinks) = std::thread::scope(|s| {
        let workers: Vec<_> = (0..threads)
            .map(|t| {
                let rx = rx.clone();
                let shared = &shared;
                s.spawn(move || -> Result<spill::SpillSink<'_>> {
                    let mut sink = spill::SpillSink::new(shared, flush_at, t as u8);
                    let mut failed = None;
                    for chunk in rx {
                        if failed.is_none()
                            && let Err(e) = chunk.parser.parse(&chunk, &ctx, &mut sink)
                        {
                            failed = Some(e);
                        }
                    }
                    if let Some(e) = failed {
                        return Err(e);
                    }
                    sink.finish()?;
                    Ok(sink)
                })
            })
            .collect();
        drop(rx);
        let counter = Arc::clone(&read_bytes);
        let on_bytes: Arc<dyn Fn(u64) + Send + Sync> = Arc::new(move |n| {
            counter.fetch_add(n, Ordering::Relaxed);
        });
        let mut last = 0u64;
        let res = source.read_all(&files, rt, on_bytes, |chunk| {
            let now = read_bytes.load(Ordering::Relaxed);
            progress.inc(now - last);
            last = now;
            tx.send(chunk)
                .map_err(|_| Error::Internal("parser threads stopped early"))
        });
        drop(tx);
        let sinks: Vec<_> = workers
            .into_iter()
            .map(|w| {
                w.join()
                    .unwrap_or(Err(Error::Internal("a parser thread panicked")))
            })
            .collect();
        (res, sinks)
    });
    let mut sinks = sinks.into_iter().collect::<Result<Vec<_>>>()?;
    let columns: std::collections::BTreeMap<String, String> = read_result?.into_iter().collect();
    let read_seconds = t0.elapsed().as_secs_f64();

    let mut quarantine = Quarantine::default();
    let mut item_parts = Vec::with_capacity(threads);
    let mut cat_parts = Vec::with_capacity(threads);
    let mut events = 0u64;
    let mut too_many_actions = false;
    let mut dwell_seen = false;
    let (mut min_ts, mut max_ts) = (i64::MAX, i64::MIN);
    for sink in &mut sinks {
        events += sink.events;
        too_many_actions |= sink.too_many_actions;
        dwell_seen |= sink.dwell_seen;
        min_ts = min_ts.min(sink.min_ts);
        max_ts = max_ts.max(sink.max_ts);
        quarantine.merge(std::mem::take(&mut sink.quarantine));
        item_parts.push(std::mem::take(&mut sink.items));
        cat_parts.push(std::mem::take(&mut sink.categories));
    }
    drop(sinks);
    let seen_actions = shared
        .actions
        .lock()
        .map_err(|_| Error::Internal("action registry poisoned"))?
        .names
        .clone();
    if too_many_actions {
        return Err(Error::config(
            "source.columns.action",
            format!(
                "more than {} distinct action names; is the action column mapped to the right field?",
                spill::MAX_ACTIONS
            ),
        ));
    }
    let bad = quarantine.total();
    let rows = events + bad;
    if rows > 0 && bad as f64 > out.max_bad_fraction * rows as f64 {
        let examples: Vec<String> = quarantine
            .examples
            .iter()
            .take(10)
            .map(|e| format!("  {e}"))
            .collect();
        return Err(Error::TooManyBadRows {
            bad,
            total: rows,
            pct: 100.0 * bad as f64 / rows as f64,
            max_pct: 100.0 * out.max_bad_fraction,
            examples: examples.join("\n"),
        });
    }
    if events == 0 {
        return Err(Error::NoEvents { total: rows, bad });
    }

    // ---- vocabularies
    let spill::Merged {
        keys: item_keys,
        counts: item_counts,
        remaps: item_remaps,
    } = spill::Interner::merge(item_parts);
    let items_seen = item_keys.len() as u64;
    let (item_vocab, item_ids) = KeyVocab::from_keys(item_keys, item_counts, pre.item_min_count);
    let spill::Merged {
        keys: cat_keys,
        counts: cat_counts,
        remaps: cat_remaps,
    } = spill::Interner::merge(cat_parts);
    let (cat_vocab, cat_ids) = KeyVocab::from_keys(cat_keys, cat_counts, 1);
    let (action_names, action_remap) = action_order(&seen_actions);

    // ---- pass 2: per-partition sort, preprocess, write
    let has_dwell = source.has_dwell || dwell_seen;
    let t1 = Instant::now();
    progress.phase("write", Some(partitions as u64));
    let pctx = partition::PartitionCtx {
        spill: &shared,
        n_numeric: source.numeric_names.len(),
        has_dwell,
        numeric_names: &source.numeric_names,
        item_remaps: &item_remaps,
        item_ids: &item_ids,
        cat_remaps: &cat_remaps,
        cat_ids: &cat_ids,
        action_remap: &action_remap,
        pre,
        total_events: events,
    };
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(threads)
        .build()
        .map_err(|_| Error::Internal("could not start the writer threads"))?;
    let shard_results: Vec<Result<(ShardEntry, partition::ShardStats)>> = pool.install(|| {
        use rayon::prelude::*;
        (0..partitions)
            .into_par_iter()
            .map(|p| {
                let (batch, stats) = partition::process(p, &pctx)?;
                let path = format!("shards/part-{p:05}.parquet");
                let bytes = batch.to_parquet()?;
                let entry = ShardEntry {
                    file: FileEntry {
                        path: path.clone(),
                        bytes: bytes.len() as u64,
                        sha256: sha256_hex(&bytes),
                    },
                    users: stats.users,
                    events: stats.events,
                };
                rt.block_on(location.put(&path, Bytes::from(bytes)))?;
                progress.inc(1);
                Ok((entry, stats))
            })
            .collect()
    });
    let mut shards = Vec::with_capacity(partitions);
    let mut stats = Vec::with_capacity(partitions);
    for r in shard_results {
        let (e, s) = r?;
        shards.push(e);
        stats.push(s);
    }
    drop(shared);
    drop(scratch);

    // ---- vocab files, quarantine report, then the manifest
    let mut files_out: Vec<FileEntry> = shards.iter().map(|s| s.file.clone()).collect();
    let mut put = |rel: &str, data: Vec<u8>| -> Result<()> {
        files_out.push(FileEntry {
            path: rel.to_string(),
            bytes: data.len() as u64,
            sha256: sha256_hex(&data),
        });
        rt.block_on(location.put(rel, Bytes::from(data)))
    };
    put("vocab/items.parquet", item_vocab.to_parquet()?)?;
    put("vocab/categories.parquet", cat_vocab.to_parquet()?)?;
    let qjson = serde_json::to_vec_pretty(&quarantine).map_err(|source| Error::Serialize {
        what: QUARANTINE_FILE,
        source,
    })?;
    put(QUARANTINE_FILE, qjson)?;

    let counts = merge_counts(
        &stats,
        rows,
        bad,
        events,
        items_seen,
        &item_vocab,
        &cat_vocab,
    );
    let mut actions = std::collections::BTreeMap::new();
    for s in &stats {
        for (id, n) in s.actions.iter().enumerate() {
            if *n > 0 {
                *actions
                    .entry(action_names.get(id).cloned().unwrap_or_default())
                    .or_insert(0) += n;
            }
        }
    }
    let temporal = match (source.time_kind, pre.temporal_split) {
        (TimeKind::Absolute, Some(q)) => {
            let mut sample: Vec<i64> = stats
                .iter()
                .flat_map(|s| s.ts_sample.iter().copied())
                .collect();
            sample.sort_unstable();
            (!sample.is_empty()).then(|| {
                let at =
                    |f: f64| sample[((f * sample.len() as f64) as usize).min(sample.len() - 1)];
                TemporalCutoffs {
                    quantiles: q,
                    valid_from_ms: at(q[0]),
                    test_from_ms: at(q[1]),
                }
            })
        }
        _ => None,
    };
    let manifest = DatasetManifest {
        schema_version: SCHEMA_VERSION,
        kind: KIND.to_string(),
        name: out.name.clone(),
        version: version.clone(),
        created_at: chrono::Utc::now().to_rfc3339_opts(chrono::SecondsFormat::Secs, true),
        code_version: env!("CARGO_PKG_VERSION").to_string(),
        time_kind: source.time_kind,
        format: source.format.name().to_string(),
        inputs: files
            .iter()
            .map(|f| InputEntry {
                path: f.display.clone(),
                bytes: f.size,
            })
            .collect(),
        columns,
        config: cfg.clone(),
        partitioning: format!("fnv1a64(user) % {partitions}"),
        stats: Stats {
            length: length_stats(&stats, pre.max_len),
            min_ts_ms: stats.iter().map(|s| s.min_ts).min().unwrap_or(min_ts),
            max_ts_ms: stats.iter().map(|s| s.max_ts).max().unwrap_or(max_ts),
            actions,
        },
        counts,
        vocab: VocabInfo {
            items: "vocab/items.parquet".into(),
            categories: "vocab/categories.parquet".into(),
            actions: action_names,
        },
        has_dwell,
        numeric_fields: source.numeric_names.clone(),
        splits: Splits {
            leave_one_out: true,
            temporal,
        },
        shards,
        files: files_out,
    };
    let body = serde_json::to_vec_pretty(&manifest).map_err(|source| Error::Serialize {
        what: MANIFEST_FILE,
        source,
    })?;
    if !rt.block_on(location.put_if_absent(MANIFEST_FILE, Bytes::from(body)))? {
        return Err(Error::AlreadyExists {
            location: location.to_string(),
        });
    }
    Ok(IngestReport {
        location: location.to_string(),
        manifest,
        quarantine,
        read_seconds,
        write_seconds: t1.elapsed().as_secs_f64(),
    })
}

fn merge_counts(
    stats: &[partition::ShardStats],
    rows: u64,
    bad: u64,
    events: u64,
    items_seen: u64,
    items: &KeyVocab,
    cats: &KeyVocab,
) -> Counts {
    let mut c = Counts {
        rows_read: rows,
        rows_bad: bad,
        events_read: events,
        items_seen,
        item_vocab: items.len() as u64,
        category_vocab: cats.len() as u64,
        ..Default::default()
    };
    for s in stats {
        c.events += s.events;
        c.users += s.users;
        c.sessions += s.sessions;
        c.duplicates_dropped += s.duplicates;
        c.events_truncated += s.truncated;
        c.users_dropped_short += s.short_users;
        c.events_dropped_short += s.short_events;
        c.oov_events += s.oov_events;
    }
    c
}

fn length_stats(stats: &[partition::ShardStats], max_len: usize) -> LengthStats {
    let mut hist = vec![0u64; max_len + 1];
    for s in stats {
        for (l, n) in s.lengths.iter().enumerate() {
            hist[l] += n;
        }
    }
    let users: u64 = hist.iter().sum();
    if users == 0 {
        return LengthStats::default();
    }
    let total: u64 = hist.iter().enumerate().map(|(l, n)| l as u64 * n).sum();
    let q = |f: f64| -> u64 {
        let target = ((f * users as f64).ceil() as u64).max(1);
        let mut acc = 0;
        for (l, n) in hist.iter().enumerate() {
            acc += n;
            if acc >= target {
                return l as u64;
            }
        }
        max_len as u64
    };
    LengthStats {
        min: hist.iter().position(|&n| n > 0).unwrap_or(0) as u64,
        p50: q(0.5),
        p90: q(0.9),
        p99: q(0.99),
        max: hist.iter().rposition(|&n| n > 0).unwrap_or(0) as u64,
        mean: total as f64 / users as f64,
    }
}
