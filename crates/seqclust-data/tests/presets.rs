//! Every preset against the real files in ../shared/data; the expected counts are the ones
//! printed in each folder's README.
#![allow(clippy::unwrap_used)] // tests fail loudly on any error

mod common;

use std::collections::{BTreeMap, HashSet};

use common::*;
use seqclust_data::{Format, KeyVocab, TimeKind};

fn ingest_preset(
    format: Format,
    files: &[&str],
) -> (
    seqclust_data::IngestReport,
    Vec<seqclust_data::SequenceBatch>,
) {
    let dir = tempfile::tempdir().unwrap();
    let data = shared_data();
    let mut cfg = keep_all(
        dir.path(),
        files
            .iter()
            .map(|f| data.join(f).display().to_string())
            .collect(),
    );
    cfg.source.format = format;
    let report = run(&cfg).unwrap();
    let (_, shards) = read_all(&report.location);
    (report, shards)
}

#[test]
fn taobao_userbehavior() {
    let (r, shards) = ingest_preset(
        Format::Taobao,
        &[
            "taobao_userbehavior/UserBehavior_head.csv.gz",
            "taobao_userbehavior/UserBehavior_tail.csv.gz",
        ],
    );
    let c = &r.manifest.counts;
    assert_eq!(c.rows_read, 14_321);
    assert_eq!(c.rows_bad, 0);
    assert_eq!(c.events, 14_321);
    assert_eq!(c.users, 157);
    assert_eq!(c.items_seen, 10_744);
    assert_eq!(c.category_vocab, 1_323 + 2);
    let a = &r.manifest.stats.actions;
    assert_eq!(a["view"], 3926 + 9046);
    assert_eq!(a["cart"], 190 + 536);
    assert_eq!(a["fav"], 128 + 212);
    assert_eq!(a["buy"], 77 + 206);
    assert_eq!(r.manifest.time_kind, TimeKind::Absolute);
    // the official file's first row: user 1 viewed item 2268318 at 1511544070
    let user1 = shards
        .iter()
        .flat_map(|s| s.iter())
        .find(|s| s.user == "1")
        .unwrap();
    assert!(user1.timestamps.contains(&1_511_544_070_000));
    assert!(user1.timestamps.windows(2).all(|w| w[0] <= w[1]));
    let temporal = r.manifest.splits.temporal.as_ref().unwrap();
    assert!(temporal.valid_from_ms < temporal.test_from_ms);
}

#[test]
fn amazon_s3rec_sequences() {
    for (file, users, items, events, max_len) in [
        (
            "amazon_s3rec/Beauty.txt.gz",
            22_363u64,
            12_101u64,
            198_502u64,
            204u64,
        ),
        (
            "amazon_s3rec/Sports_and_Outdoors.txt.gz",
            35_598,
            18_357,
            296_337,
            296,
        ),
        (
            "amazon_s3rec/Toys_and_Games.txt.gz",
            19_412,
            11_924,
            167_597,
            550,
        ),
    ] {
        let (r, shards) = ingest_preset(Format::Amazon, &[file]);
        let c = &r.manifest.counts;
        assert_eq!(
            (c.users, c.items_seen, c.events, c.rows_bad),
            (users, items, events, 0),
            "{file}"
        );
        assert_eq!(r.manifest.stats.length.min, 5, "{file}");
        assert_eq!(r.manifest.stats.length.max, max_len, "{file}");
        assert_eq!(r.manifest.time_kind, TimeKind::Ordinal);
        assert!(r.manifest.splits.temporal.is_none());
        // items keep the file's order (positions are the ordinal time)
        for s in shards.iter().flat_map(|s| s.iter()) {
            assert!(s.timestamps.windows(2).all(|w| w[0] < w[1]));
            assert!(!s.items.contains(&KeyVocab::OOV));
        }
    }
}

#[test]
fn amazon_first_user_matches_file() {
    use std::io::BufRead;
    let data = shared_data();
    let f = std::fs::File::open(data.join("amazon_s3rec/Beauty.txt.gz")).unwrap();
    let mut first = String::new();
    std::io::BufReader::new(flate2::read::GzDecoder::new(f))
        .read_line(&mut first)
        .unwrap();
    let mut tokens = first.split_whitespace();
    let user = tokens.next().unwrap().to_string();
    let items: Vec<String> = tokens.map(str::to_string).collect();
    let dir = tempfile::tempdir().unwrap();
    let mut cfg = keep_all(
        dir.path(),
        vec![
            data.join("amazon_s3rec/Beauty.txt.gz")
                .display()
                .to_string(),
        ],
    );
    cfg.source.format = Format::Amazon;
    let r = run(&cfg).unwrap();
    let rt = rt();
    let vocab = rt.block_on(async {
        seqclust_data::Dataset::open(&r.location)
            .await
            .unwrap()
            .item_vocab()
            .await
            .unwrap()
    });
    let (_, shards) = read_all(&r.location);
    let seq = shards
        .iter()
        .flat_map(|s| s.iter())
        .find(|s| s.user == user)
        .unwrap();
    let keys: Vec<&str> = seq.items.iter().map(|&i| vocab.key(i).unwrap()).collect();
    assert_eq!(keys, items.iter().map(String::as_str).collect::<Vec<_>>());
}

#[test]
fn jd_micro_behaviours() {
    for (file, events, skus, cats, min, max, by_type) in [
        (
            "jd_micro_behaviors/JD_Applicances_sample.txt.gz",
            57_332u64,
            9_134u64,
            71u64,
            40u64,
            236u64,
            [589u64, 3125, 251, 5081, 27580, 5823, 7830, 3270, 3600, 183],
        ),
        (
            "jd_micro_behaviors/JD_Computers_sample.txt.gz",
            43_014,
            9_289,
            77,
            40,
            50,
            [402, 2372, 151, 2598, 23028, 2688, 7435, 1495, 2743, 102],
        ),
    ] {
        let (r, shards) = ingest_preset(Format::Jd, &[file]);
        let c = &r.manifest.counts;
        assert_eq!(
            (
                c.users,
                c.events,
                c.items_seen,
                c.category_vocab - 2,
                c.rows_bad
            ),
            (1000, events, skus, cats, 0),
            "{file}"
        );
        assert_eq!(
            (r.manifest.stats.length.min, r.manifest.stats.length.max),
            (min, max),
            "{file}"
        );
        let names = seqclust_data::source::JD_ACTIONS;
        for (k, n) in by_type.iter().enumerate() {
            assert_eq!(
                r.manifest.stats.actions[names[k]],
                *n,
                "{file} type {}",
                k + 1
            );
        }
        assert!(r.manifest.has_dwell);
        assert_eq!(r.manifest.numeric_fields, vec!["time_interval".to_string()]);
        // session keys are <file stem>:<line>
        let keys: HashSet<&str> = shards
            .iter()
            .flat_map(|s| s.iter())
            .map(|s| s.user)
            .collect();
        let stem = file.rsplit('/').next().unwrap().split('.').next().unwrap();
        assert!(
            keys.contains(format!("{stem}:1").as_str())
                && keys.contains(format!("{stem}:1000").as_str())
        );
    }
}

#[test]
fn diginetica_item_views() {
    let (r, shards) = ingest_preset(
        Format::Diginetica,
        &["diginetica_sample/sample_train-item-views.csv.gz"],
    );
    let c = &r.manifest.counts;
    assert_eq!(
        (c.rows_read, c.events, c.items_seen, c.rows_bad),
        (12_391, 12_391, 7_139, 0)
    );
    let all: Vec<_> = shards.iter().flat_map(|s| s.iter()).collect();
    let named = all
        .iter()
        .filter(|s| !s.user.starts_with("session:"))
        .count();
    let named_events: usize = all
        .iter()
        .filter(|s| !s.user.starts_with("session:"))
        .map(|s| s.len())
        .sum();
    assert_eq!((named, named_events), (1_270, 4_710));
    // 2016-01-03 .. 2016-06-01 plus in-session offsets
    assert!(r.manifest.stats.min_ts_ms >= 1_451_779_200_000);
    assert!(r.manifest.stats.max_ts_ms < 1_464_825_600_000 + 86_400_000);
}

#[test]
fn retailrocket_fixture() {
    let dir = tempfile::tempdir().unwrap();
    let path = dir.path().join("events.csv");
    std::fs::write(
        &path,
        "timestamp,visitorid,event,itemid,transactionid\n\
         1433221332117,257597,view,355908,\n\
         1433224214164,992329,view,248676,\n\
         1433221999827,257597,addtocart,355908,\n\
         1433222276276,257597,transaction,355908,4000\n",
    )
    .unwrap();
    let mut cfg = keep_all(dir.path(), vec![path.display().to_string()]);
    cfg.source.format = Format::Retailrocket;
    let r = run(&cfg).unwrap();
    let a: BTreeMap<_, _> = r.manifest.stats.actions.clone().into_iter().collect();
    assert_eq!(a.get("view"), Some(&2));
    assert_eq!(a.get("cart"), Some(&1));
    assert_eq!(a.get("buy"), Some(&1));
    let (_, shards) = read_all(&r.location);
    let v = shards
        .iter()
        .flat_map(|s| s.iter())
        .find(|s| s.user == "257597")
        .unwrap();
    let names = &r.manifest.vocab.actions;
    let acts: Vec<&str> = v
        .actions
        .iter()
        .map(|&a| names[a as usize].as_str())
        .collect();
    assert_eq!(acts, ["view", "cart", "buy"]);
    assert_eq!(v.timestamps[0], 1_433_221_332_117);
}
