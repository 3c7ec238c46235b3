//! Malformed rows, the quarantine report, the bad-fraction limit, and errors that name the file
//! and column; nothing committed is ever overwritten or half-written.
#![allow(clippy::unwrap_used)] // tests fail loudly on any error

mod common;

use common::*;
use seqclust_data::{BadReason, ColumnRef, Dataset, Error, Format};

const GOOD: &str = "u1,i1,1600000000,view\nu1,i2,1600000001,buy\nu2,i1,1600000002,view\n";

fn bad_file(dir: &std::path::Path) -> std::path::PathBuf {
    let mut s = String::from("user_id,item_id,timestamp,action\n");
    for _ in 0..100 {
        s.push_str(GOOD);
    }
    // line numbers: header is 1, the 300 good rows are 2..=301
    s.push_str("u3,i1,160000\n"); // 302 wrong field count
    s.push_str("u3,i1,yesterday,view\n"); // 303 bad timestamp
    s.push_str("u3,i1,99999999999999999,view\n"); // 304 absurd
    s.push_str(",i1,1600000000,view\n"); // 305 empty user
    s.push_str("u3,,1600000000,view\n"); // 306 empty item
    let mut bytes = s.into_bytes();
    bytes.extend_from_slice(b"u\xff3,i1,1600000000,view\n"); // 307 invalid UTF-8
    let p = dir.join("bad.csv");
    std::fs::write(&p, bytes).unwrap();
    p
}

#[test]
fn quarantine_names_file_and_line() {
    let dir = tempfile::tempdir().unwrap();
    let p = bad_file(dir.path());
    let mut cfg = keep_all(dir.path(), vec![p.display().to_string()]);
    cfg.output.max_bad_fraction = 0.05;
    let r = run(&cfg).unwrap();
    assert_eq!(r.manifest.counts.rows_bad, 6);
    assert_eq!(r.manifest.counts.events, 300);
    let q = &r.quarantine;
    let line_of = |reason| {
        q.examples
            .iter()
            .find(|e| e.reason == reason)
            .map(|e| e.line)
    };
    assert_eq!(line_of(BadReason::WrongFieldCount), Some(302));
    assert_eq!(line_of(BadReason::BadTimestamp), Some(303));
    assert_eq!(line_of(BadReason::AbsurdTimestamp), Some(304));
    assert_eq!(line_of(BadReason::EmptyUser), Some(305));
    assert_eq!(line_of(BadReason::EmptyItem), Some(306));
    assert_eq!(line_of(BadReason::InvalidUtf8), Some(307));
    assert!(q.examples.iter().all(|e| e.file.ends_with("bad.csv")));
    // the report is inside the dataset and listed in the manifest
    let rt = rt();
    let ds = rt.block_on(Dataset::open(&r.location)).unwrap();
    let report: seqclust_data::Quarantine =
        serde_json::from_slice(&rt.block_on(ds.read_verified("_quarantine.json")).unwrap())
            .unwrap();
    assert_eq!(&report, q);
}

#[test]
fn line_numbers_survive_chunking_and_quoted_newlines() {
    let dir = tempfile::tempdir().unwrap();
    let mut s = String::from("user_id,item_id,timestamp,action\n");
    s.push_str("u0,\"an item\nwith a newline\",1600000000,view\n"); // lines 2-3
    for k in 0..350_000 {
        s.push_str(&format!(
            "u{},i{},{},view\n",
            k % 1000,
            k % 777,
            1_600_000_000 + k
        ));
    }
    s.push_str("u1,i1,notatime,view\n");
    let bad_line = 4 + 350_000;
    let p = dir.path().join("big.csv");
    std::fs::write(&p, s).unwrap();
    assert!(
        std::fs::metadata(&p).unwrap().len() > 2 * (4 << 20),
        "spans several chunks"
    );
    let cfg = keep_all(dir.path(), vec![p.display().to_string()]);
    let r = run(&cfg).unwrap();
    assert_eq!(r.manifest.counts.events, 350_001);
    assert_eq!(r.quarantine.examples[0].line, bad_line as u64);
}

#[test]
fn too_many_bad_rows_publishes_nothing() {
    let dir = tempfile::tempdir().unwrap();
    let p = bad_file(dir.path());
    let cfg = keep_all(dir.path(), vec![p.display().to_string()]);
    let err = run(&cfg).unwrap_err();
    let msg = err.to_string();
    assert!(
        matches!(
            err,
            Error::TooManyBadRows {
                bad: 6,
                total: 306,
                ..
            }
        ),
        "{msg}"
    );
    assert!(
        msg.contains("bad.csv:302") && msg.contains("nothing was published"),
        "{msg}"
    );
    let rt = rt();
    let res = rt.block_on(Dataset::open_in(&dir.path().display().to_string(), "t"));
    assert!(matches!(res, Err(Error::DatasetNotFound { .. })), "{res:?}");
}

#[test]
fn missing_file_and_wrong_column_are_named() {
    let dir = tempfile::tempdir().unwrap();
    let missing = dir.path().join("nope.csv");
    let cfg = keep_all(dir.path(), vec![missing.display().to_string()]);
    let msg = run(&cfg).unwrap_err().to_string();
    assert!(
        msg.contains("nope.csv") && msg.contains("does not exist"),
        "{msg}"
    );

    let p = dir.path().join("ok.csv");
    std::fs::write(&p, format!("user_id,item_id,timestamp,action\n{GOOD}")).unwrap();
    let mut cfg = keep_all(dir.path(), vec![p.display().to_string()]);
    cfg.source.columns.item = Some(ColumnRef::Name("product".into()));
    let msg = run(&cfg).unwrap_err().to_string();
    assert!(
        msg.contains("ok.csv") && msg.contains("\"product\"") && msg.contains("item_id"),
        "{msg}"
    );

    let p2 = dir.path().join("nohead.csv");
    std::fs::write(&p2, "a,b,c\n1,2,3\n").unwrap();
    let cfg = keep_all(dir.path(), vec![p2.display().to_string()]);
    let msg = run(&cfg).unwrap_err().to_string();
    assert!(msg.contains("nohead.csv") && msg.contains("user"), "{msg}");
}

#[test]
fn unreadable_parquet_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("broken.parquet");
    std::fs::write(&p, b"PAR1 this is not a parquet file").unwrap();
    let mut cfg = keep_all(dir.path(), vec![p.display().to_string()]);
    cfg.source.format = Format::Parquet;
    let msg = run(&cfg).unwrap_err().to_string();
    assert!(msg.contains("broken.parquet"), "{msg}");
}

#[test]
fn committed_version_is_never_overwritten() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ok.csv");
    std::fs::write(&p, format!("user_id,item_id,timestamp,action\n{GOOD}")).unwrap();
    let cfg = keep_all(dir.path(), vec![p.display().to_string()]);
    let first = run(&cfg).unwrap();
    std::fs::write(
        &p,
        format!("user_id,item_id,timestamp,action\n{GOOD}{GOOD}u9,i9,1600000000,view\n"),
    )
    .unwrap();
    let err = run(&cfg).unwrap_err();
    assert!(matches!(err, Error::AlreadyExists { .. }), "{err}");
    let (ds, _) = read_all(&first.location);
    assert_eq!(ds.manifest(), &first.manifest);
}

#[test]
fn corrupted_shard_is_refused_by_name() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("ok.csv");
    std::fs::write(&p, format!("user_id,item_id,timestamp,action\n{GOOD}")).unwrap();
    let cfg = keep_all(dir.path(), vec![p.display().to_string()]);
    let r = run(&cfg).unwrap();
    let shard = r.manifest.shards.iter().find(|s| s.users > 0).unwrap();
    let path = std::path::Path::new(&r.location).join(&shard.file.path);
    let mut bytes = std::fs::read(&path).unwrap();
    let mid = bytes.len() / 2;
    bytes[mid] ^= 0xff;
    std::fs::write(&path, bytes).unwrap();
    let rt = rt();
    let ds = rt.block_on(Dataset::open(&r.location)).unwrap();
    let idx = r
        .manifest
        .shards
        .iter()
        .position(|s| s.file.path == shard.file.path)
        .unwrap();
    let err = rt.block_on(ds.read_shard(idx)).unwrap_err();
    assert!(
        matches!(err, Error::Checksum { what: "sha256", .. }),
        "{err}"
    );
    assert!(err.to_string().contains(&shard.file.path));
}

#[test]
fn config_errors_name_the_field() {
    let dir = tempfile::tempdir().unwrap();
    let p = dir.path().join("cfg.toml");
    std::fs::write(
        &p,
        "[preprocess]\nmax_len = 0\n[source]\npaths = [\"x.csv\"]\n[output]\nname = \"x\"\n",
    )
    .unwrap();
    let cfg = seqclust_data::IngestConfig::from_file(&p).unwrap();
    assert!(
        cfg.validate()
            .unwrap_err()
            .to_string()
            .contains("preprocess.max_len")
    );
    std::fs::write(&p, "[preprocess]\nmax_lenn = 3\n").unwrap();
    let err = seqclust_data::IngestConfig::from_file(&p).unwrap_err();
    // the TOML parser's message (line and key) is the error's source, as the CLI prints it
    let mut msg = err.to_string();
    let mut src = std::error::Error::source(&err);
    while let Some(s) = src {
        msg.push_str(&format!(": {s}"));
        src = s.source();
    }
    assert!(
        msg.contains("cfg.toml") && msg.contains("max_lenn"),
        "{msg}"
    );
}
