//! The summary tables printed after ingest and by `dataset inspect`.

use comfy_table::presets::UTF8_FULL_CONDENSED;
use comfy_table::{Cell, Table};
use seqclust_data::{DatasetManifest, Quarantine, TimeKind};

fn n(v: u64) -> String {
    let s = v.to_string();
    let mut out = String::new();
    for (i, c) in s.chars().enumerate() {
        if i > 0 && (s.len() - i).is_multiple_of(3) {
            out.push(',');
        }
        out.push(c);
    }
    out
}

fn time(ms: i64, kind: TimeKind) -> String {
    match kind {
        TimeKind::Ordinal => ms.to_string(),
        TimeKind::Absolute => chrono::DateTime::from_timestamp_millis(ms)
            .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
            .unwrap_or_else(|| ms.to_string()),
    }
}

/// Prints the dataset summary, and the quarantine when given.
pub fn print_manifest(location: &str, m: &DatasetManifest, q: Option<&Quarantine>) {
    let c = &m.counts;
    let l = &m.stats.length;
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        Cell::new("dataset"),
        Cell::new(format!("{}/{}", m.name, m.version)),
    ]);
    let rows: Vec<(&str, String)> = vec![
        ("location", location.to_string()),
        (
            "format",
            format!(
                "{} ({} input file{})",
                m.format,
                m.inputs.len(),
                if m.inputs.len() == 1 { "" } else { "s" }
            ),
        ),
        (
            "columns",
            m.columns
                .iter()
                .map(|(f, c)| format!("{f}={c}"))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        (
            "rows read / malformed",
            format!("{} / {}", n(c.rows_read), n(c.rows_bad)),
        ),
        ("users", n(c.users)),
        (
            "events",
            format!("{} (of {} valid)", n(c.events), n(c.events_read)),
        ),
        ("duplicates dropped", n(c.duplicates_dropped)),
        ("events truncated (max_len)", n(c.events_truncated)),
        (
            "users dropped (min_len)",
            format!(
                "{} ({} events)",
                n(c.users_dropped_short),
                n(c.events_dropped_short)
            ),
        ),
        ("sessions", n(c.sessions)),
        (
            "items seen / vocab / oov events",
            format!(
                "{} / {} / {}",
                n(c.items_seen),
                n(c.item_vocab),
                n(c.oov_events)
            ),
        ),
        ("categories (vocab)", n(c.category_vocab)),
        (
            "length min/p50/p90/p99/max",
            format!(
                "{}/{}/{}/{}/{} (mean {:.1})",
                l.min, l.p50, l.p90, l.p99, l.max, l.mean
            ),
        ),
        (
            "time range",
            format!(
                "{} .. {}",
                time(m.stats.min_ts_ms, m.time_kind),
                time(m.stats.max_ts_ms, m.time_kind)
            ),
        ),
        (
            "actions",
            m.stats
                .actions
                .iter()
                .map(|(a, k)| format!("{a}={}", n(*k)))
                .collect::<Vec<_>>()
                .join(" "),
        ),
        (
            "shards",
            format!(
                "{} ({} bytes)",
                m.shards.len(),
                n(m.shards.iter().map(|s| s.file.bytes).sum())
            ),
        ),
        (
            "splits",
            match &m.splits.temporal {
                Some(tc) => format!(
                    "leave-one-out; temporal valid from {}, test from {}",
                    time(tc.valid_from_ms, m.time_kind),
                    time(tc.test_from_ms, m.time_kind)
                ),
                None => "leave-one-out".into(),
            },
        ),
    ];
    for (k, v) in rows {
        t.add_row(vec![Cell::new(k), Cell::new(v)]);
    }
    println!("{t}");
    if let Some(q) = q.filter(|q| q.total() > 0) {
        let mut t = Table::new();
        t.load_preset(UTF8_FULL_CONDENSED);
        t.set_header(vec!["malformed rows", "count", "first example"]);
        for (reason, count) in &q.counts {
            let ex = q
                .examples
                .iter()
                .find(|e| e.reason == *reason)
                .map(|e| format!("{}:{} {}={:?}", e.file, e.line, e.field, e.text))
                .unwrap_or_default();
            t.add_row(vec![reason.as_str().to_string(), n(*count), ex]);
        }
        println!("{t}");
        println!("full report: {location}/_quarantine.json");
    }
}
