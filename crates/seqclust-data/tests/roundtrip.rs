//! CSV / JSON Lines / Parquet → dataset → reader round trips, and the shard invariants as
//! property tests: every valid event lands in exactly one shard, and each user's order is the
//! input's (by time, ties in input order).
#![allow(clippy::unwrap_used)] // tests fail loudly on any error

mod common;

use std::collections::BTreeMap;

use common::*;
use proptest::prelude::*;
use seqclust_data::ingest::Dedup;
use seqclust_data::{Dataset, Format, ShardSampler};

/// (user, item, ts seconds, action)
type Ev = (u8, u16, u32, u8);
const ACTIONS: [&str; 4] = ["view", "cart", "buy", "share"];

fn write_csv(path: &std::path::Path, events: &[Ev]) {
    let mut s = String::from("user_id,item_id,timestamp,action\n");
    for (u, i, t, a) in events {
        s.push_str(&format!(
            "u{u},item{i},{},{}\n",
            1_600_000_000 + t,
            ACTIONS[*a as usize]
        ));
    }
    std::fs::write(path, s).unwrap();
}

/// Each user's events as (item key, timestamp ms, action name).
type Sequences = BTreeMap<String, Vec<(String, i64, String)>>;

/// The expected sequence of each user: stable sort by time.
fn expected(events: &[Ev]) -> Sequences {
    let mut by_user = Sequences::new();
    for (u, i, t, a) in events {
        by_user.entry(format!("u{u}")).or_default().push((
            format!("item{i}"),
            (1_600_000_000 + i64::from(*t)) * 1000,
            ACTIONS[*a as usize].to_string(),
        ));
    }
    for v in by_user.values_mut() {
        v.sort_by_key(|e| e.1);
    }
    by_user
}

fn actual(location: &str) -> (Sequences, Vec<usize>) {
    let (ds, shards) = read_all(location);
    let rt = rt();
    let vocab = rt.block_on(ds.item_vocab()).unwrap();
    let names = &ds.manifest().vocab.actions;
    let mut out = BTreeMap::new();
    let mut users_per_shard = Vec::new();
    for shard in &shards {
        users_per_shard.push(shard.len());
        for s in shard.iter() {
            let evs = (0..s.len())
                .map(|k| {
                    (
                        vocab.key(s.items[k]).unwrap().to_string(),
                        s.timestamps[k],
                        names[s.actions[k] as usize].clone(),
                    )
                })
                .collect();
            assert!(
                out.insert(s.user.to_string(), evs).is_none(),
                "user {} in two shards",
                s.user
            );
        }
    }
    (out, users_per_shard)
}

proptest! {
    #![proptest_config(ProptestConfig { cases: 24, ..ProptestConfig::default() })]
    #[test]
    fn every_event_in_one_shard_in_order(
        events in prop::collection::vec((0u8..30, 0u16..50, 0u32..20, 0u8..4), 1..400),
        shards in 1usize..7,
    ) {
        let dir = tempfile::tempdir().unwrap();
        let path = dir.path().join("e.csv");
        write_csv(&path, &events);
        let mut cfg = keep_all(dir.path(), vec![path.display().to_string()]);
        cfg.output.shards = shards;
        let r = run(&cfg).unwrap();
        prop_assert_eq!(r.manifest.counts.events as usize, events.len());
        prop_assert_eq!(r.manifest.shards.len(), shards);
        let (got, _) = actual(&r.location);
        prop_assert_eq!(got, expected(&events));
    }
}

#[test]
fn preprocessing_dedup_sessions_truncation() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("e.csv");
    // user a: duplicate at t=10, a 2-hour gap, 6 events; user b: 2 events (dropped by min_len 3)
    std::fs::write(
        &path,
        "user,item,ts,action,dwell\n\
         a,x,1600000000,view,1\n\
         a,y,1600000010,view,1\n\
         a,y,1600000010,view,1\n\
         a,z,1600000020,cart,1\n\
         a,z,1600007300,buy,2\n\
         a,w,1600007310,view,\n\
         a,v,1600007320,view,3\n\
         b,x,1600000000,view,1\n\
         b,x,1600000005,view,1\n",
    )
    .unwrap();
    let mut cfg = keep_all(dir.path(), vec![path.display().to_string()]);
    cfg.source.columns.user = Some(seqclust_data::ColumnRef::Name("user".into()));
    cfg.source.columns.item = Some(seqclust_data::ColumnRef::Name("item".into()));
    cfg.preprocess.dedup = Dedup::Exact;
    cfg.preprocess.min_len = 3;
    cfg.preprocess.max_len = 5;
    let r = run(&cfg).unwrap();
    let c = &r.manifest.counts;
    assert_eq!(c.duplicates_dropped, 1);
    assert_eq!(c.users, 1);
    assert_eq!(c.users_dropped_short, 1);
    assert_eq!(c.events_truncated, 1);
    assert_eq!(c.events, 5);
    assert!(r.manifest.has_dwell, "dwell column guessed from the header");
    let (_, shards) = read_all(&r.location);
    let a = shards
        .iter()
        .flat_map(|s| s.iter())
        .find(|s| s.user == "a")
        .unwrap();
    assert_eq!(
        a.sessions,
        &[0, 0, 1, 1, 1],
        "session 0 of the kept tail starts at 0"
    );
    let dwell = a.dwell.unwrap();
    assert!(dwell[3].is_nan() && dwell[4] == 3.0);
    // ItemAction collapses repeated (item, action) whatever the time
    cfg.preprocess.dedup = Dedup::ItemAction;
    cfg.output.version = Some("v2".into());
    let r = run(&cfg).unwrap();
    assert_eq!(r.manifest.counts.duplicates_dropped, 2);
}

#[test]
fn jsonl_and_parquet_and_gzip_inputs_agree() {
    use std::io::Write;
    let dir = tempfile::tempdir().unwrap();
    let events: Vec<Ev> = (0..300u32)
        .map(|k| ((k % 17) as u8, (k % 23) as u16, k / 3, (k % 4) as u8))
        .collect();
    let csv = dir.path().join("e.csv");
    write_csv(&csv, &events);
    // the same events as gzip'd JSON Lines (numbers for timestamps, strings for ids)
    let jsonl = dir.path().join("e.jsonl.gz");
    let mut gz = flate2::write::GzEncoder::new(
        std::fs::File::create(&jsonl).unwrap(),
        flate2::Compression::fast(),
    );
    for (u, i, t, a) in &events {
        writeln!(
            gz,
            r#"{{"who":{{"id":"u{u}"}},"item":"item{i}","t":{},"what":"{}"}}"#,
            1_600_000_000 + t,
            ACTIONS[*a as usize]
        )
        .unwrap();
    }
    gz.finish().unwrap();
    // and as Parquet written by the generator's writer path (arrow)
    let pq = dir.path().join("e.parquet");
    {
        use std::sync::Arc;

        use arrow_array::{ArrayRef, Int64Array, RecordBatch, StringArray};
        let cols: Vec<ArrayRef> = vec![
            Arc::new(StringArray::from_iter_values(
                events.iter().map(|e| format!("u{}", e.0)),
            )),
            Arc::new(StringArray::from_iter_values(
                events.iter().map(|e| format!("item{}", e.1)),
            )),
            Arc::new(Int64Array::from_iter_values(
                events
                    .iter()
                    .map(|e| (1_600_000_000 + i64::from(e.2)) * 1000),
            )),
            Arc::new(StringArray::from_iter_values(
                events.iter().map(|e| ACTIONS[e.3 as usize]),
            )),
        ];
        let batch = RecordBatch::try_from_iter(
            ["user_id", "item_id", "ts_ms", "event"]
                .into_iter()
                .zip(cols),
        )
        .unwrap();
        let mut w = parquet::arrow::ArrowWriter::try_new(
            std::fs::File::create(&pq).unwrap(),
            batch.schema(),
            None,
        )
        .unwrap();
        w.write(&batch).unwrap();
        w.close().unwrap();
    }
    let want = expected(&events);
    let mut cfg = keep_all(dir.path(), vec![csv.display().to_string()]);
    cfg.output.version = Some("csv".into());
    let r = run(&cfg).unwrap();
    assert_eq!(actual(&r.location).0, want);

    let mut cfg = keep_all(dir.path(), vec![jsonl.display().to_string()]);
    cfg.source.format = Format::Jsonl;
    cfg.source.columns.user = Some(seqclust_data::ColumnRef::Name("who.id".into()));
    cfg.source.columns.item = Some(seqclust_data::ColumnRef::Name("item".into()));
    cfg.source.columns.timestamp = Some(seqclust_data::ColumnRef::Name("t".into()));
    cfg.source.columns.action = Some(seqclust_data::ColumnRef::Name("what".into()));
    cfg.output.version = Some("jsonl".into());
    let r = run(&cfg).unwrap();
    assert_eq!(actual(&r.location).0, want);

    let mut cfg = keep_all(dir.path(), vec![pq.display().to_string()]);
    cfg.source.format = Format::Parquet;
    cfg.source.columns.timestamp = Some(seqclust_data::ColumnRef::Name("ts_ms".into()));
    cfg.source.columns.action = Some(seqclust_data::ColumnRef::Name("event".into()));
    cfg.output.version = Some("parquet".into());
    let r = run(&cfg).unwrap();
    assert_eq!(actual(&r.location).0, want);
    assert_eq!(
        r.manifest.columns.get("user").map(String::as_str),
        Some("user_id"),
        "guessed"
    );
}

#[test]
fn generated_data_round_trip_and_epoch_stream() {
    let dir = tempfile::tempdir().unwrap();
    let csv = dir.path().join("gen.csv");
    let gen_cfg = seqclust_data::generator::GenConfig {
        users: 2_000,
        ..Default::default()
    };
    let s = seqclust_data::generator::generate_to_files(
        &gen_cfg,
        &csv,
        Some(&dir.path().join("truth.csv")),
        seqclust_data::generator::GenFormat::Csv,
        &seqclust_data::ingest::NoProgress,
    )
    .unwrap();
    // the same seed gives the same bytes
    let csv2 = dir.path().join("gen2.csv");
    seqclust_data::generator::generate_to_files(
        &gen_cfg,
        &csv2,
        None,
        seqclust_data::generator::GenFormat::Csv,
        &seqclust_data::ingest::NoProgress,
    )
    .unwrap();
    assert_eq!(std::fs::read(&csv).unwrap(), std::fs::read(&csv2).unwrap());

    let mut cfg = keep_all(dir.path(), vec![csv.display().to_string()]);
    cfg.output.shards = 5;
    let r = run(&cfg).unwrap();
    assert_eq!(r.manifest.counts.events, s.events);
    assert_eq!(r.manifest.counts.users, 2_000);
    assert_eq!(r.manifest.stats.actions.values().sum::<u64>(), s.events);

    // two ranks together stream every user once per epoch, in a seed-determined order
    let rt = rt();
    let ds = rt.block_on(Dataset::open(&r.location)).unwrap();
    let mut seen = std::collections::HashSet::new();
    let mut order = Vec::new();
    for rank in 0..2 {
        for batch in ds.epoch(ShardSampler::new(9, rank, 2), 0, rt.handle().clone()) {
            for s in batch.unwrap().iter() {
                assert!(seen.insert(s.user.to_string()));
                order.push(s.user.to_string());
            }
        }
    }
    assert_eq!(seen.len(), 2_000);
    let again: Vec<String> = ds
        .epoch(ShardSampler::new(9, 0, 2), 0, rt.handle().clone())
        .flat_map(|b| {
            b.unwrap()
                .iter()
                .map(|s| s.user.to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_eq!(again, order[..again.len()]);
    let other_epoch: Vec<String> = ds
        .epoch(ShardSampler::new(9, 0, 2), 1, rt.handle().clone())
        .flat_map(|b| {
            b.unwrap()
                .iter()
                .map(|s| s.user.to_string())
                .collect::<Vec<_>>()
        })
        .collect();
    assert_ne!(other_epoch, again);

    // the same input gives bit-identical shards
    cfg.output.version = Some("v2".into());
    let r2 = run(&cfg).unwrap();
    let sums = |m: &seqclust_data::DatasetManifest| {
        m.shards
            .iter()
            .map(|s| s.file.sha256.clone())
            .collect::<Vec<_>>()
    };
    assert_eq!(sums(&r.manifest), sums(&r2.manifest));
}
