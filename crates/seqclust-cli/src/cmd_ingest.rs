//! `seqclust ingest`: event files → a committed sequence dataset.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use seqclust_data::ingest::{Dedup, IngestConfig};
use seqclust_data::{ColumnRef, Format, IngestReport, TimestampFormat};

use crate::progress::Bars;
use crate::summary;

/// Read raw event files and commit a versioned, sharded sequence dataset.
///
/// Settings come from, in increasing priority: defaults, --config FILE, SEQCLUST_* variables,
/// then flags.
#[derive(Debug, Args)]
pub struct IngestArgs {
    /// Input files, directories or s3:// URLs (in addition to the config's source.paths).
    inputs: Vec<String>,
    /// TOML config with [source], [preprocess] and [output] tables.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Input format or dataset preset (default: from the file name, else csv):
    /// csv, tsv, jsonl, parquet, taobao, retailrocket, amazon, jd, diginetica.
    #[arg(long, short)]
    format: Option<Format>,
    /// Column mapping FIELD=COLUMN (FIELD: user, item, timestamp, action, category, dwell,
    /// numeric); COLUMN is a header name or a 0-based index. Repeatable. Unmapped fields are
    /// guessed from common header names (user_id, item_id, timestamp, …).
    #[arg(long = "col", value_name = "FIELD=COLUMN")]
    columns: Vec<String>,
    /// Field delimiter of csv input.
    #[arg(long)]
    delimiter: Option<char>,
    /// The csv files have no header line.
    #[arg(long)]
    no_header: bool,
    /// How timestamps are written: auto, unix_s, unix_ms, iso8601, ordinal.
    #[arg(long, value_parser = parse_ts_format)]
    timestamp_format: Option<TimestampFormat>,
    /// Action of events when no action column is mapped.
    #[arg(long)]
    default_action: Option<String>,
    /// Action alias RAW=CANONICAL (e.g. pv=view). Repeatable.
    #[arg(long = "action", value_name = "RAW=CANONICAL")]
    actions: Vec<String>,
    /// Dataset name (default: the first input's file name).
    #[arg(long, short)]
    name: Option<String>,
    /// Dataset version (default: the current UTC time).
    #[arg(long)]
    version: Option<String>,
    /// Storage root: a directory or s3://bucket/prefix.
    #[arg(long, env = "SEQCLUST_ROOT")]
    root: Option<String>,
    /// Number of shards (default: from the input size, at least 8).
    #[arg(long)]
    shards: Option<usize>,
    /// Fail, publishing nothing, above this fraction of malformed rows.
    #[arg(long)]
    max_bad_fraction: Option<f64>,
    /// Parser threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Memory (MiB) for partitioned events before they spill to --tmp-dir (default 1024).
    #[arg(long)]
    memory_mb: Option<usize>,
    /// Scratch directory (needs about the input's size).
    #[arg(long, env = "SEQCLUST_TMP_DIR")]
    tmp_dir: Option<PathBuf>,
    /// Items seen fewer times map to the out-of-vocabulary id.
    #[arg(long)]
    min_item_count: Option<u64>,
    /// Keep each user's most recent N events.
    #[arg(long)]
    max_len: Option<usize>,
    /// Drop users with fewer events.
    #[arg(long)]
    min_len: Option<usize>,
    /// Inactivity gap (seconds) that starts a new session.
    #[arg(long)]
    session_gap: Option<f64>,
    /// Consecutive duplicates: none, exact, item-action.
    #[arg(long, value_parser = parse_dedup)]
    dedup: Option<Dedup>,
    /// Temporal split quantiles VALID,TEST (e.g. 0.8,0.9).
    #[arg(long, value_parser = parse_split)]
    temporal_split: Option<[f64; 2]>,
    /// No temporal split.
    #[arg(long, conflicts_with = "temporal_split")]
    no_temporal_split: bool,
    /// Print the manifest as JSON on stdout instead of the summary table.
    #[arg(long)]
    json: bool,
    /// No progress bar and no summary.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_ts_format(s: &str) -> Result<TimestampFormat, String> {
    serde_json::from_value(serde_json::Value::String(s.replace('-', "_")))
        .map_err(|_| format!("{s:?}: expected auto, unix_s, unix_ms, iso8601 or ordinal"))
}

fn parse_dedup(s: &str) -> Result<Dedup, String> {
    serde_json::from_value(serde_json::Value::String(s.replace('-', "_")))
        .map_err(|_| format!("{s:?}: expected none, exact or item-action"))
}

fn parse_split(s: &str) -> Result<[f64; 2], String> {
    let v: Vec<f64> = s
        .split(',')
        .map(|x| x.trim().parse::<f64>())
        .collect::<Result<_, _>>()
        .map_err(|e| e.to_string())?;
    match v[..] {
        [a, b] => Ok([a, b]),
        _ => Err(format!("{s:?}: expected two quantiles like 0.8,0.9")),
    }
}

fn guess_format(path: &str) -> Format {
    let p = path.to_ascii_lowercase();
    let p = p.strip_suffix(".gz").unwrap_or(&p);
    if p.ends_with(".parquet") || p.ends_with(".pq") {
        Format::Parquet
    } else if p.ends_with(".jsonl") || p.ends_with(".ndjson") || p.ends_with(".json") {
        Format::Jsonl
    } else if p.ends_with(".tsv") || p.ends_with(".tab") {
        Format::Tsv
    } else {
        Format::Csv
    }
}

fn default_name(path: &str) -> String {
    let base = path
        .trim_end_matches('/')
        .rsplit('/')
        .next()
        .unwrap_or("dataset");
    let stem = base.split('.').next().unwrap_or(base);
    let clean: String = stem
        .chars()
        .map(|c| {
            if c.is_ascii_alphanumeric() || c == '-' || c == '_' {
                c
            } else {
                '_'
            }
        })
        .collect();
    if clean.is_empty() {
        "dataset".into()
    } else {
        clean
    }
}

/// Builds the effective config: defaults < file < environment < flags.
pub fn build_config(a: &IngestArgs) -> Result<IngestConfig> {
    let mut cfg = match &a.config {
        Some(p) => IngestConfig::from_file(p)?,
        None => IngestConfig::default(),
    };
    let s = &mut cfg.source;
    s.paths.extend(a.inputs.iter().cloned());
    if s.paths.is_empty() {
        bail!("no input: give files, directories or URLs, or source.paths in --config");
    }
    match a.format {
        Some(f) => s.format = f,
        None if a.config.is_none() => s.format = guess_format(&s.paths[0]),
        None => {}
    }
    for spec in &a.columns {
        let (field, col) = spec
            .split_once('=')
            .with_context(|| format!("--col {spec:?}: expected FIELD=COLUMN"))?;
        let col = ColumnRef::parse(col.trim());
        let c = &mut s.columns;
        match field.trim() {
            "user" => c.user = Some(col),
            "item" => c.item = Some(col),
            "timestamp" | "time" | "ts" => c.timestamp = Some(col),
            "action" => c.action = Some(col),
            "category" => c.category = Some(col),
            "dwell" => c.dwell = Some(col),
            "numeric" => c.numeric.push(col),
            other => bail!(
                "--col {spec:?}: unknown field {other:?}; expected user, item, timestamp, action, category, dwell or numeric"
            ),
        }
    }
    if let Some(d) = a.delimiter {
        s.delimiter = Some(d);
    }
    if a.no_header {
        s.has_header = Some(false);
    }
    if let Some(t) = a.timestamp_format {
        s.timestamp_format = t;
    }
    if let Some(d) = &a.default_action {
        s.default_action = d.clone();
    }
    for spec in &a.actions {
        let (raw, canon) = spec
            .split_once('=')
            .with_context(|| format!("--action {spec:?}: expected RAW=CANONICAL"))?;
        s.actions
            .insert(raw.trim().to_string(), canon.trim().to_string());
    }
    let p = &mut cfg.preprocess;
    if let Some(v) = a.min_item_count {
        p.item_min_count = v;
    }
    if let Some(v) = a.max_len {
        p.max_len = v;
    }
    if let Some(v) = a.min_len {
        p.min_len = v;
    }
    if let Some(v) = a.session_gap {
        p.session_gap_s = v;
    }
    if let Some(v) = a.dedup {
        p.dedup = v;
    }
    if let Some(v) = a.temporal_split {
        p.temporal_split = Some(v);
    }
    if a.no_temporal_split {
        p.temporal_split = None;
    }
    let o = &mut cfg.output;
    if let Some(v) = &a.root {
        o.root = v.clone();
    }
    if let Some(v) = &a.name {
        o.name = v.clone();
    }
    if o.name.is_empty() {
        o.name = default_name(&cfg.source.paths[0]);
    }
    if let Some(v) = &a.version {
        o.version = Some(v.clone());
    }
    if let Some(v) = a.shards {
        o.shards = v;
    }
    if let Some(v) = a.max_bad_fraction {
        o.max_bad_fraction = v;
    }
    if let Some(v) = a.threads {
        o.threads = v;
    }
    if let Some(v) = a.memory_mb {
        o.memory_mb = v;
    }
    if let Some(v) = &a.tmp_dir {
        o.tmp_dir = Some(v.clone());
    }
    cfg.validate()?;
    Ok(cfg)
}

pub fn run(a: IngestArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let cfg = build_config(&a)?;
    let bars = Bars::new(a.quiet || a.json);
    let t = std::time::Instant::now();
    let report = seqclust_data::ingest(&cfg, rt.handle(), &bars);
    bars.finish();
    let report: IngestReport = report?;
    let secs = t.elapsed().as_secs_f64();
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report.manifest)?);
    } else if !a.quiet {
        summary::print_manifest(&report.location, &report.manifest, Some(&report.quarantine));
        let m = &report.manifest.counts;
        println!(
            "ingested {} events in {:.2} s: {:.2} M events/s (read+parse {:.2} s, sort+write {:.2} s)",
            m.events_read,
            secs,
            m.events_read as f64 / secs / 1e6,
            report.read_seconds,
            report.write_seconds
        );
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn names_and_formats() {
        assert_eq!(
            default_name("/x/UserBehavior_head.csv.gz"),
            "UserBehavior_head"
        );
        assert_eq!(default_name("s3://b/p/events/"), "events");
        assert_eq!(guess_format("a.parquet"), Format::Parquet);
        assert_eq!(guess_format("a.jsonl.gz"), Format::Jsonl);
        assert_eq!(guess_format("a.txt"), Format::Csv);
        assert_eq!(parse_split("0.7, 0.85").unwrap(), [0.7, 0.85]);
        assert!(parse_split("0.7").is_err());
        assert_eq!(parse_dedup("item-action").unwrap(), Dedup::ItemAction);
        assert_eq!(parse_ts_format("unix-ms").unwrap(), TimestampFormat::UnixMs);
    }
}
