//! The run layout's conformance suite, over the local filesystem and a real S3-compatible
//! endpoint (s3s-fs), and the crash test of the commit (a child process aborted before each
//! of its writes in turn).
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;
use std::time::Duration;

use bytes::Bytes;
use object_store::path::Path as StorePath;
use seqclust_artifacts::{Commit, Error, MANIFEST, Run, RunInfo, discard, gc, list};
use seqclust_data::Location;
use seqclust_tests::s3::LocalS3;

fn info(id: &str, name: &str) -> RunInfo {
    RunInfo {
        job_id: id.into(),
        name: name.into(),
        dataset: "ds".into(),
        world_size: 2,
        config: serde_json::json!({ "kmeans": { "metric": "cosine" } }),
        ..RunInfo::default()
    }
}

/// Stages a few files of run `id` (as the workers and the coordinator would).
async fn stage(root: &Location, id: &str, salt: &str) -> Commit {
    let c = Commit::new(root, id);
    for (rel, body) in [
        ("model/encoder.safetensors", format!("weights {salt}")),
        (
            "clusters/assignments/part-00000.parquet",
            format!("a0 {salt}"),
        ),
        (
            "clusters/assignments/part-00001.parquet",
            format!("a1 {salt}"),
        ),
        ("metrics.json", format!("{{\"salt\": \"{salt}\"}}")),
        ("checkpoints/step-1/state.json", "working state".to_string()),
    ] {
        c.put(rel, Bytes::from(body)).await.unwrap();
    }
    c
}

/// What every store must do.
async fn conformance(root: Location) {
    // a committed run: manifest with every staged file but the checkpoints, latest pointer
    let a = stage(&root, "job-a", "a").await;
    let done = a.finish(info("job-a", "demo")).await.unwrap();
    assert!(done.new && done.latest);
    let paths: Vec<&str> = done
        .manifest
        .files
        .iter()
        .map(|f| f.path.as_str())
        .collect();
    assert_eq!(
        paths,
        [
            "clusters/assignments/part-00000.parquet",
            "clusters/assignments/part-00001.parquet",
            "metrics.json",
            "model/encoder.safetensors"
        ]
    );
    let run = Run::open(&root, "latest/demo").await.unwrap();
    assert_eq!(run.id(), "job-a");
    run.verify().await.unwrap();
    assert_eq!(
        &run.read("metrics.json").await.unwrap()[..],
        b"{\"salt\": \"a\"}"
    );
    assert!(matches!(
        run.read("checkpoints/step-1/state.json").await,
        Err(Error::NotListed { .. })
    ));
    // committing again changes nothing
    let again = a.finish(info("job-a", "demo")).await.unwrap();
    assert!(!again.new && again.latest);
    assert_eq!(
        again.manifest.committed_unix_ms,
        done.manifest.committed_unix_ms
    );

    // a run that was only staged is not a result
    stage(&root, "job-b", "b").await;
    assert!(matches!(
        Run::open(&root, "job-b").await,
        Err(Error::NotCommitted { .. })
    ));
    assert!(matches!(
        Run::open(&root, "job-zzz").await,
        Err(Error::NotFound { .. })
    ));
    assert!(matches!(
        Run::open(&root, "latest/nobody").await,
        Err(Error::NotFound { .. })
    ));
    let runs = list(&root).await.unwrap();
    let b = runs.iter().find(|r| r.id == "job-b").unwrap();
    assert!(b.manifest.is_none());
    assert!(runs.iter().find(|r| r.id == "job-a").unwrap().latest);
    // gc leaves young staged runs alone, removes old ones, never touches committed runs
    let young = gc(&root, Duration::from_secs(3600), false, false)
        .await
        .unwrap();
    assert!(young.uncommitted.is_empty());
    let old = gc(&root, Duration::ZERO, false, false).await.unwrap();
    assert_eq!(old.uncommitted, ["job-b"]);
    assert!(list(&root).await.unwrap().iter().all(|r| r.id != "job-b"));
    Run::open(&root, "job-a")
        .await
        .unwrap()
        .verify()
        .await
        .unwrap();
    // gc of checkpoints keeps the committed files
    let ck = gc(&root, Duration::ZERO, true, false).await.unwrap();
    assert_eq!(ck.checkpoints, ["job-a"]);
    Run::open(&root, "job-a")
        .await
        .unwrap()
        .verify()
        .await
        .unwrap();

    // a newer run moves the pointer; an older run committed late does not move it back
    tokio::time::sleep(Duration::from_millis(5)).await;
    let c = stage(&root, "job-c", "c").await;
    assert!(c.finish(info("job-c", "demo")).await.unwrap().latest);
    assert_eq!(Run::open(&root, "latest/demo").await.unwrap().id(), "job-c");
    assert!(!a.finish(info("job-a", "demo")).await.unwrap().latest);
    assert_eq!(Run::open(&root, "latest/demo").await.unwrap().id(), "job-c");

    // a replaced file is refused by name, and a pull stops without writing a manifest
    let c_run = Run::open(&root, "job-c").await.unwrap();
    let target = c_run.location().clone();
    target
        .put(
            "clusters/assignments/part-00001.parquet",
            Bytes::from("tampered"),
        )
        .await
        .unwrap();
    let err = c_run.verify().await.unwrap_err();
    assert!(
        matches!(&err, Error::Checksum { file, .. } if file.ends_with("part-00001.parquet")),
        "{err}"
    );
    let dir = tempfile::tempdir().unwrap();
    let err = c_run.pull(dir.path()).await.unwrap_err();
    assert!(err.to_string().contains("part-00001.parquet"), "{err}");
    assert!(!dir.path().join(MANIFEST).exists());
    // a good run pulls, and the copy opens as a run
    let n = Run::open(&root, "job-a")
        .await
        .unwrap()
        .pull(dir.path())
        .await
        .unwrap();
    assert!(n > 0);
    let pulled = Run::open_dir(Location::parse(&dir.path().display().to_string(), false).unwrap())
        .await
        .unwrap();
    pulled.verify().await.unwrap();
    assert_eq!(pulled.id(), "job-a");

    // a cancelled job's staged files go at once
    stage(&root, "job-d", "d").await;
    assert_eq!(discard(&root, "job-d").await.unwrap(), 5);
    assert!(list(&root).await.unwrap().iter().all(|r| r.id != "job-d"));
    assert_eq!(
        discard(&root, "job-a").await.unwrap(),
        0,
        "a committed run is kept"
    );

    // a manifest that does not parse is named
    let e = root.join("runs/job-e");
    e.put(MANIFEST, Bytes::from("{not json")).await.unwrap();
    let err = Run::open(&root, "job-e").await.unwrap_err();
    assert!(matches!(err, Error::BadManifest { .. }), "{err}");
}

#[test]
fn conformance_on_the_local_filesystem() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let root = Location::parse(&dir.path().display().to_string(), true).unwrap();
    rt.block_on(conformance(root));
}

#[test]
fn conformance_on_an_s3_endpoint() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let s3 = LocalS3::start().await;
        let root = Location::from_store(
            s3.store(),
            StorePath::from("prefix/root"),
            "s3://seqclust/prefix/root",
        );
        conformance(root).await;
        // a client with the wrong secret is refused
        let bad = Location::from_store(
            s3.store_with("wrong"),
            StorePath::from("prefix/root"),
            "s3://bad",
        );
        assert!(Run::open(&bad, "latest/demo").await.is_err());
    });
}

const CHILD: &str = "SEQCLUST_TEST_COMMIT_CHILD";

/// Run in a child process by `a_crash_at_any_commit_write_leaves_old_or_new_run`.
#[test]
fn commit_child() {
    let Ok(root) = std::env::var(CHILD) else {
        return;
    };
    let rt = tokio::runtime::Runtime::new().unwrap();
    rt.block_on(async {
        let root = Location::parse(&root, true).unwrap();
        let c = stage(&root, "job-new", "new").await;
        c.finish(info("job-new", "demo")).await.unwrap();
    });
}

#[test]
fn a_crash_at_any_commit_write_leaves_old_or_new_run() {
    let exe = std::env::current_exe().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    // 5 staged files, the manifest, the pointer: 7 writes; 8 = no crash
    let mut outcomes = Vec::new();
    for at in 1..=8 {
        let dir = tempfile::tempdir().unwrap();
        let root = Location::parse(&dir.path().display().to_string(), true).unwrap();
        rt.block_on(async {
            stage(&root, "job-old", "old")
                .await
                .finish(info("job-old", "demo"))
                .await
                .unwrap();
        });
        let status = Command::new(&exe)
            .args([
                "--exact",
                // the test's name in the cluster binary (tests/cluster.rs)
                "artifacts::commit_child",
                "--nocapture",
                "--test-threads",
                "1",
            ])
            .env(CHILD, dir.path())
            .env(seqclust_artifacts::fault::FAULT_ENV, at.to_string())
            .output()
            .unwrap();
        let crashed = !status.status.success();
        assert_eq!(
            crashed,
            at < 8,
            "write {at}: {}",
            String::from_utf8_lossy(&status.stderr)
        );
        rt.block_on(async {
            // a reader sees a complete run, old or new, never a mixture
            let seen = Run::open(&root, "latest/demo").await.unwrap();
            seen.verify().await.unwrap();
            let salt = if seen.id() == "job-old" { "old" } else { "new" };
            for f in ["metrics.json", "model/encoder.safetensors"] {
                let b = seen.read(f).await.unwrap();
                assert!(
                    String::from_utf8_lossy(&b).contains(salt),
                    "{f} of {}",
                    seen.id()
                );
            }
            // the new run is either committed and whole, or not a result at all
            match Run::open(&root, "job-new").await {
                Ok(r) => r.verify().await.unwrap(),
                Err(Error::NotCommitted { .. }) | Err(Error::NotFound { .. }) => {}
                Err(e) => panic!("write {at}: {e}"),
            }
            outcomes.push(seen.id().to_string());
            // the coordinator's retry completes the commit
            stage(&root, "job-new", "new")
                .await
                .finish(info("job-new", "demo"))
                .await
                .unwrap();
            let now = Run::open(&root, "latest/demo").await.unwrap();
            assert_eq!(now.id(), "job-new");
            now.verify().await.unwrap();
        });
    }
    // the manifest is the commit point: before it the old run, after it the new one
    assert_eq!(&outcomes[..6], ["job-old"; 6]);
    assert_eq!(outcomes[7], "job-new");
}
