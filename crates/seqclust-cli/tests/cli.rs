//! The `seqclust` binary end to end: gen → ingest → dataset inspect/list, error messages and
//! exit codes, and every example config.
#![allow(clippy::unwrap_used)] // tests fail loudly on any error

use std::path::Path;
use std::process::{Command, Output};

fn seqclust(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seqclust"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn gen_ingest_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&seqclust(
        &[
            "gen",
            "--users",
            "3000",
            "--out",
            "raw/ev.csv.gz",
            "--seed",
            "7",
            "-q",
        ],
        d,
    ));
    let truth = std::fs::read_to_string(d.join("raw/ev.truth.csv")).unwrap();
    assert_eq!(truth.lines().count(), 3001);
    let out = ok(&seqclust(
        &[
            "ingest",
            "raw/ev.csv.gz",
            "--root",
            "store",
            "--name",
            "p",
            "--version",
            "v1",
            "--json",
        ],
        d,
    ));
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["counts"]["users"], 3000);
    assert_eq!(m["columns"]["dwell"], "dwell");
    let table = ok(&seqclust(
        &["dataset", "inspect", "p", "--root", "store", "--verify"],
        d,
    ));
    assert!(
        table.contains("p/v1") && table.contains("verified"),
        "{table}"
    );
    let list = ok(&seqclust(&["dataset", "list", "--root", "store"], d));
    assert_eq!(list.trim(), "p: v1");
    // re-ingesting into the same version is refused and changes nothing
    let again = seqclust(
        &[
            "ingest",
            "raw/ev.csv.gz",
            "--root",
            "store",
            "--name",
            "p",
            "--version",
            "v1",
            "-q",
        ],
        d,
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already committed"));
    ok(&seqclust(
        &[
            "dataset",
            "inspect",
            "store/datasets/p/v1",
            "--verify",
            "--users",
            "0",
        ],
        d,
    ));
}

#[test]
fn errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = seqclust(&["ingest", "missing.csv", "--root", "store", "-q"], d);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("missing.csv") && err.contains("does not exist"),
        "{err}"
    );
    std::fs::write(d.join("e.csv"), "who,what,when\na,b,1600000000\n").unwrap();
    let o = seqclust(
        &[
            "ingest",
            "e.csv",
            "--root",
            "store",
            "-q",
            "--col",
            "user=who",
            "--col",
            "item=wat",
            "--col",
            "timestamp=when",
        ],
        d,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("e.csv") && err.contains("\"wat\""),
        "{err}"
    );
    let o = seqclust(&["ingest", "e.csv", "--col", "usr=who"], d);
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown field \"usr\""));
    let o = seqclust(&["dataset", "inspect", "nothing", "--root", "store"], d);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no committed dataset"));
}

#[test]
fn every_example_config_loads() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut n = 0;
    for e in std::fs::read_dir(&examples).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml")
            && p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ingest")
        {
            let cfg = seqclust_data::IngestConfig::from_file(&p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            cfg.validate()
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 3);
}

/// `../shared/data` beside the repository, or `SEQCLUST_SHARED_DATA`.
fn shared_data() -> std::path::PathBuf {
    let p = std::env::var_os("SEQCLUST_SHARED_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    assert!(
        p.is_dir(),
        "the shared datasets are missing at {} (set SEQCLUST_SHARED_DATA)",
        p.display()
    );
    p
}

#[test]
fn taobao_example_config_runs() {
    // the example names the data relative to a checkout beside ../shared; point it at
    // wherever the shared data is here
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/ingest-taobao.toml");
    let text = std::fs::read_to_string(example).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = shared_data().display().to_string();
    let cfg = dir.path().join("taobao.toml");
    std::fs::write(&cfg, text.replace("../../shared/data", &data)).unwrap();
    let out = ok(&seqclust(
        &[
            "ingest",
            "--config",
            &cfg.display().to_string(),
            "--root",
            &dir.path().display().to_string(),
            "--json",
        ],
        dir.path(),
    ));
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["counts"]["rows_read"], 14_321);
}

#[test]
fn bench_ingest_smoke() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&seqclust(
        &[
            "bench",
            "ingest",
            "--events",
            "20000",
            "--rounds",
            "1",
            "--work-dir",
            &dir.path().display().to_string(),
        ],
        dir.path(),
    ));
    let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["script"], "ingest_rust");
    assert!(line["results"][0]["events_per_s"].as_f64().unwrap() > 0.0);
    assert!(line["results"][0]["peak_rss_mib"].as_f64().unwrap() > 1.0);
}
