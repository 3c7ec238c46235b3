//! A whole job's published run: the analysis files, the Python readers, and `seqclust serve`
//! on it — answers that match the offline assignment, bad requests, HTTP, metrics, hot reload
//! with no failed request, and a corrupt new run refused.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::HashMap;
use std::sync::Arc;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::time::{Duration, Instant};

use seqclust_artifacts::Run;
use seqclust_data::Location;
use seqclust_data::dataset::Dataset;
use seqclust_proto::v1;
use seqclust_proto::v1::inference_service_client::InferenceServiceClient;
use seqclust_serve::{BatchConfig, Precision, ServeConfig};
use seqclust_tests::{TestCluster, http};

const MINUTES: Duration = Duration::from_secs(240);

/// The first `n` users of the dataset as requests, with their ids.
fn requests(c: &TestCluster, ds: &str, n: usize) -> Vec<(String, v1::SequenceRequest)> {
    c.rt.block_on(async {
        let d = Dataset::open_in(&c.root_str(), ds).await.unwrap();
        let items = d.item_vocab().await.unwrap();
        let cats = d.category_vocab().await.unwrap();
        let actions = d.manifest().vocab.actions.clone();
        let b = d.read_shard(0).await.unwrap();
        b.iter()
            .take(n)
            .map(|s| {
                let events = (0..s.items.len())
                    .map(|i| v1::Event {
                        item: items.key(s.items[i]).unwrap().to_string(),
                        action: actions[s.actions[i] as usize].clone(),
                        category: cats.key(s.categories[i]).unwrap().to_string(),
                        timestamp_ms: s.timestamps[i],
                    })
                    .collect();
                (s.user.to_string(), v1::SequenceRequest { events })
            })
            .collect()
    })
}

#[test]
fn a_published_run_is_analysed_readable_and_served() {
    let mut c = TestCluster::new();
    let ds = c.dataset("shop", 600);
    c.add_worker();
    c.add_worker();
    let mut spec = c.spec("served", &ds, 2);
    // the run also carries the int8 serving model, which int8 serving loads
    spec.train.export_int8 = true;
    let first = c.submit(&spec);
    c.wait_done(&first, MINUTES).unwrap();
    let root = Location::parse(&c.root_str(), false).unwrap();
    let run = c.rt.block_on(Run::open(&root, "latest/served")).unwrap();
    assert_eq!(run.id(), first);
    c.rt.block_on(run.verify()).unwrap();
    for f in [
        "clusters/profiles.json",
        "clusters/trending.json",
        "recs/part-00000.parquet",
        "report/index.html",
        "report/loss.png",
        "report/inertia.png",
        "report/sizes.png",
        "report/projection.png",
        "model/vocab/items.parquet",
        "model/vocab/actions.json",
        "model/vocab/item_categories.parquet",
        "model-int8/encoder.safetensors",
        "model-int8/config.json",
    ] {
        assert!(run.manifest().file(f).is_some(), "{f} missing");
    }
    let profiles: serde_json::Value =
        serde_json::from_slice(&c.rt.block_on(run.read("clusters/profiles.json")).unwrap())
            .unwrap();
    assert_eq!(profiles["clusters"].as_array().unwrap().len(), 4);
    let fidelity = profiles["surrogate"]["fidelity"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&fidelity));
    let hr = profiles["recommendations"]["blend"]["hr"].as_f64().unwrap();
    assert!((0.0..=1.0).contains(&hr));
    let html = String::from_utf8(
        c.rt.block_on(run.read("report/index.html"))
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    assert!(html.contains("data:image/png;base64,") && html.contains("Cluster 3"));

    python_reads_the_run(run.location().to_string());

    // offline assignments, to compare the served ones with
    let offline: HashMap<String, u32> = run
        .files_under("clusters/assignments/")
        .iter()
        .flat_map(|f| {
            let a = seqclust_data::embeddings::parse_assignments(
                c.rt.block_on(run.read(f)).unwrap(),
                f,
            )
            .unwrap();
            a.ids.into_iter().zip(a.clusters).collect::<Vec<_>>()
        })
        .collect();

    let (stop_tx, stop) = tokio::sync::watch::channel(false);
    let running =
        c.rt.block_on(seqclust_serve::serve(
            ServeConfig {
                root: c.root_str(),
                run: "latest/served".into(),
                grpc: "127.0.0.1:0".parse().unwrap(),
                http: Some("127.0.0.1:0".parse().unwrap()),
                poll: Duration::from_millis(100),
                batch: BatchConfig::default(),
                tls: None,
                precision: Precision::F32,
            },
            stop,
        ))
        .unwrap();
    let url = format!("http://{}", running.grpc);
    let mut cl =
        c.rt.block_on(InferenceServiceClient::connect(url.clone()))
            .unwrap();
    let reqs = requests(&c, &ds, 60);
    let mut agree = 0;
    for (user, r) in &reqs {
        let a = c.rt.block_on(cl.assign(r.clone())).unwrap().into_inner();
        assert_eq!(a.run_id, first);
        assert_eq!(a.unknown_items, 0);
        assert!(a.margin >= 0.0 && a.runner_up.is_some());
        agree += usize::from(offline[user] == a.cluster);
    }
    assert!(
        agree * 100 >= reqs.len() * 95,
        "{agree} of {} agree",
        reqs.len()
    );
    let e =
        c.rt.block_on(cl.embed(reqs[0].1.clone()))
            .unwrap()
            .into_inner();
    assert_eq!(e.vector.len(), 16);
    let rec =
        c.rt.block_on(cl.recommend(v1::RecommendRequest {
            events: reqs[0].1.events.clone(),
            n: 7,
        }))
        .unwrap()
        .into_inner();
    assert_eq!(rec.items.len(), 7);
    let seen: Vec<&str> = reqs[0].1.events.iter().map(|e| e.item.as_str()).collect();
    assert!(
        rec.items.iter().all(|i| !seen.contains(&i.item.as_str())),
        "seen items are excluded"
    );

    // int8 serving reads the run's int8 model (under half the f32 file's size)
    let size = |f: &str| run.manifest().file(f).unwrap().size;
    assert!(2 * size("model-int8/encoder.safetensors") < size("model/encoder.safetensors"));
    let dir = |p: Precision| {
        c.rt.block_on(seqclust_serve::open(&c.root_str(), "latest/served", p))
            .unwrap()
            .1
            .model_dir
    };
    assert_eq!(
        (dir(Precision::F32), dir(Precision::Int8)),
        ("model", "model-int8")
    );

    // the same run served with an int8 item table (the encoder's input rows and the
    // scoring) recommends nearly the same items and assigns nearly the same clusters
    let (int8_stop_tx, int8_stop) = tokio::sync::watch::channel(false);
    let int8 =
        c.rt.block_on(seqclust_serve::serve(
            ServeConfig {
                root: c.root_str(),
                run: first.clone(),
                grpc: "127.0.0.1:0".parse().unwrap(),
                http: None,
                poll: Duration::from_secs(3600),
                batch: BatchConfig::default(),
                tls: None,
                precision: Precision::Int8,
            },
            int8_stop,
        ))
        .unwrap();
    let mut cl8 =
        c.rt.block_on(InferenceServiceClient::connect(format!(
            "http://{}",
            int8.grpc
        )))
        .unwrap();
    let (mut same, mut total, mut agree) = (0, 0, 0);
    for (_, r) in &reqs {
        let top = |cl: &mut InferenceServiceClient<_>| {
            let rec = c.rt.block_on(cl.recommend(v1::RecommendRequest {
                events: r.events.clone(),
                n: 10,
            }));
            let items: Vec<String> = rec
                .unwrap()
                .into_inner()
                .items
                .into_iter()
                .map(|i| i.item)
                .collect();
            items
        };
        let (f, q) = (top(&mut cl), top(&mut cl8));
        assert_eq!(q.len(), 10);
        same += q.iter().filter(|i| f.contains(i)).count();
        total += 10;
        let a = |cl: &mut InferenceServiceClient<_>| {
            c.rt.block_on(cl.assign(r.clone()))
                .unwrap()
                .into_inner()
                .cluster
        };
        agree += usize::from(a(&mut cl) == a(&mut cl8));
    }
    eprintln!(
        "int8 item table: {same} of {total} recommended items and {agree} of {} clusters as \
         with f32",
        reqs.len()
    );
    assert!(
        same * 100 >= total * 80,
        "{same} of {total} int8 recommendations agree"
    );
    assert!(
        agree * 100 >= reqs.len() * 95,
        "{agree} of {} int8 assignments agree",
        reqs.len()
    );
    let _ = int8_stop_tx.send(true);

    // bad input: clear errors, never a panic
    let status = |r: v1::SequenceRequest| c.rt.block_on(cl.clone().assign(r)).unwrap_err();
    let s = status(v1::SequenceRequest { events: vec![] });
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("events"), "{}", s.message());
    let mut bad = reqs[0].1.clone();
    bad.events[1].action = "teleport".into();
    let s = status(bad);
    assert_eq!(s.code(), tonic::Code::InvalidArgument);
    assert!(s.message().contains("events[1].action") && s.message().contains("teleport"));
    let mut bad = reqs[0].1.clone();
    bad.events[0].item = String::new();
    assert_eq!(status(bad).code(), tonic::Code::InvalidArgument);
    let long = v1::SequenceRequest {
        events: reqs[0]
            .1
            .events
            .iter()
            .cycle()
            .take(seqclust_serve::MAX_EVENTS + 1)
            .cloned()
            .collect(),
    };
    assert_eq!(status(long).code(), tonic::Code::InvalidArgument);
    let mut unknown = reqs[0].1.clone();
    unknown.events[0].item = "never-seen-item".into();
    unknown.events[2].item = "another-one".into();
    let a = c.rt.block_on(cl.assign(unknown)).unwrap().into_inner();
    assert_eq!(a.unknown_items, 2);
    let s =
        c.rt.block_on(cl.recommend(v1::RecommendRequest {
            events: reqs[0].1.events.clone(),
            n: 5000,
        }))
        .unwrap_err();
    assert_eq!(s.code(), tonic::Code::InvalidArgument);

    // HTTP
    let h = running.http.unwrap();
    let ev = |r: &v1::SequenceRequest| {
        serde_json::json!(r.events.iter().map(|e| serde_json::json!({
            "item": e.item, "action": e.action, "category": e.category, "timestamp_ms": e.timestamp_ms
        })).collect::<Vec<_>>())
    };
    let (code, body) = http(
        h,
        "POST",
        "/v1/assign",
        &serde_json::json!({ "events": ev(&reqs[0].1) }).to_string(),
    );
    assert_eq!(code, 200, "{body}");
    let v: serde_json::Value = serde_json::from_str(&body).unwrap();
    assert_eq!(v["cluster"].as_u64().unwrap() as u32, offline[&reqs[0].0]);
    let (code, body) = http(
        h,
        "POST",
        "/v1/recommend",
        &serde_json::json!({ "events": ev(&reqs[0].1), "n": 3 }).to_string(),
    );
    assert_eq!(code, 200, "{body}");
    assert_eq!(
        serde_json::from_str::<serde_json::Value>(&body).unwrap()["items"]
            .as_array()
            .unwrap()
            .len(),
        3
    );
    let (code, body) = http(h, "POST", "/v1/assign", "{\"events\": [{\"item\": 5}]}");
    assert_eq!(code, 400, "{body}");
    assert!(body.contains("request body"), "{body}");
    let (code, _) = http(h, "POST", "/v1/assign", "not json");
    assert_eq!(code, 400);
    let (code, body) = http(h, "POST", "/v1/embed", "{\"events\": []}");
    assert_eq!(code, 400);
    assert!(body.contains("empty sequence"), "{body}");
    let (code, body) = http(h, "GET", "/healthz", "");
    assert_eq!(code, 200);
    assert!(body.contains(&first));
    let (_, metrics) = http(h, "GET", "/metrics", "");
    assert!(
        metrics.contains("seqclust_serve_requests_total{code=\"ok\",method=\"assign\"}"),
        "{metrics}"
    );
    assert!(
        metrics
            .contains("seqclust_serve_requests_total{code=\"invalid_argument\",method=\"assign\"}")
    );
    assert!(metrics.contains("seqclust_serve_batch_size_bucket"));

    // hot reload: a second run of the same name is picked up with no failed request
    let failures = Arc::new(AtomicU64::new(0));
    let served = Arc::new(AtomicU64::new(0));
    let stop_load = Arc::new(AtomicBool::new(false));
    let mut load = Vec::new();
    for w in 0..4 {
        let (failures, served, stop_load) = (failures.clone(), served.clone(), stop_load.clone());
        let reqs: Vec<v1::SequenceRequest> = reqs.iter().map(|r| r.1.clone()).collect();
        let url = url.clone();
        load.push(c.rt.spawn(async move {
            let mut cl = InferenceServiceClient::connect(url).await.unwrap();
            let mut i = w;
            while !stop_load.load(Ordering::Relaxed) {
                match cl.assign(reqs[i % reqs.len()].clone()).await {
                    Ok(_) => served.fetch_add(1, Ordering::Relaxed),
                    Err(_) => failures.fetch_add(1, Ordering::Relaxed),
                };
                i += 4;
            }
        }));
    }
    let mut spec2 = spec.clone();
    spec2.train.seed = 77;
    let second = c.submit(&spec2);
    c.wait_done(&second, MINUTES).unwrap();
    let t0 = Instant::now();
    while running.server.info().run_id != second {
        assert!(
            t0.elapsed() < Duration::from_secs(20),
            "the new run was not loaded"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    std::thread::sleep(Duration::from_millis(300));
    stop_load.store(true, Ordering::Relaxed);
    for l in load {
        c.rt.block_on(l).unwrap();
    }
    assert_eq!(failures.load(Ordering::Relaxed), 0);
    assert!(served.load(Ordering::Relaxed) > 20);
    assert_eq!(running.server.info().reloads, 1);

    // a new run with a corrupt file is refused; the good one keeps serving
    let bad_id = format!("{second}-copy");
    let src = c.root.path().join("runs").join(&second);
    let dst = c.root.path().join("runs").join(&bad_id);
    copy_dir(&src, &dst);
    let mut m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(dst.join("_MANIFEST.json")).unwrap()).unwrap();
    m["job_id"] = serde_json::json!(bad_id);
    m["committed_unix_ms"] = serde_json::json!(i64::MAX / 2);
    std::fs::write(dst.join("_MANIFEST.json"), serde_json::to_vec(&m).unwrap()).unwrap();
    std::fs::write(dst.join("clusters/centroids.safetensors"), b"tampered").unwrap();
    std::fs::write(c.root.path().join("latest/served"), &bad_id).unwrap();
    let t0 = Instant::now();
    while running.server.metrics.reload_failures.get() == 0 {
        assert!(
            t0.elapsed() < Duration::from_secs(10),
            "the corrupt run was not refused"
        );
        std::thread::sleep(Duration::from_millis(50));
    }
    assert_eq!(running.server.info().run_id, second);
    let a =
        c.rt.block_on(cl.assign(reqs[0].1.clone()))
            .unwrap()
            .into_inner();
    assert_eq!(a.run_id, second);
    // and serve refuses to start on it
    let err =
        c.rt.block_on(seqclust_serve::open(&c.root_str(), &bad_id, Precision::F32))
            .err()
            .unwrap();
    assert!(err.to_string().contains("centroids.safetensors"), "{err}");
    // or on a run that was never committed
    std::fs::remove_file(dst.join("_MANIFEST.json")).unwrap();
    let err =
        c.rt.block_on(seqclust_serve::open(&c.root_str(), &bad_id, Precision::F32))
            .err()
            .unwrap();
    assert!(err.to_string().contains("never committed"), "{err}");
    let _ = stop_tx.send(true);
}

fn copy_dir(src: &std::path::Path, dst: &std::path::Path) {
    std::fs::create_dir_all(dst).unwrap();
    for e in std::fs::read_dir(src).unwrap() {
        let e = e.unwrap();
        let to = dst.join(e.file_name());
        if e.file_type().unwrap().is_dir() {
            copy_dir(&e.path(), &to);
        } else {
            std::fs::copy(e.path(), to).unwrap();
        }
    }
}

/// The run's files open in Python with pyarrow and safetensors (`SEQCLUST_PYTHON`, default
/// `python3`; skipped when the modules are missing unless `SEQCLUST_REQUIRE_PYTHON=1`).
fn python_reads_the_run(dir: String) {
    let py = std::env::var("SEQCLUST_PYTHON").unwrap_or_else(|_| "python3".into());
    let has = std::process::Command::new(&py)
        .args(["-c", "import pyarrow.parquet, safetensors.numpy"])
        .status()
        .is_ok_and(|s| s.success());
    if !has {
        assert!(
            std::env::var("SEQCLUST_REQUIRE_PYTHON").is_err(),
            "{py} lacks pyarrow/safetensors and SEQCLUST_REQUIRE_PYTHON is set"
        );
        eprintln!("skipping the Python check: {py} lacks pyarrow or safetensors");
        return;
    }
    let script = r#"
import json, sys, glob, os
import pyarrow.parquet as pq
from safetensors.numpy import load_file
run = sys.argv[1]
m = json.load(open(os.path.join(run, "_MANIFEST.json")))
a = pq.read_table(sorted(glob.glob(os.path.join(run, "clusters/assignments/*.parquet")))[0])
assert {"user", "cluster", "distance", "runner_up", "margin"} <= set(a.column_names), a.column_names
r = pq.read_table(os.path.join(run, "recs/part-00000.parquet"))
assert r.column_names == ["user", "rank", "item", "score"], r.column_names
c = load_file(os.path.join(run, "clusters/centroids.safetensors"))["centroids"]
assert c.shape[0] == m["config"]["kmeans"]["k"], c.shape
w = load_file(os.path.join(run, "model/encoder.safetensors"))
assert len(w) > 0
print("python ok", a.num_rows, r.num_rows, c.shape)
"#;
    let out = std::process::Command::new(&py)
        .args(["-c", script, &dir])
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}{}",
        String::from_utf8_lossy(&out.stdout),
        String::from_utf8_lossy(&out.stderr)
    );
}

#[test]
fn pseudonymized_runs_publish_no_raw_user_ids() {
    // SAFETY: set before any thread of this test reads it; no other test uses this variable.
    unsafe { std::env::set_var("SEQCLUST_TEST_PSEUDONYM_KEY", "a test key of 24 bytes..") };
    let mut c = TestCluster::new();
    let ds = c.dataset("private", 300);
    c.add_worker();
    let mut spec = c.spec("private", &ds, 1);
    spec.analysis.pseudonymize = true;
    spec.analysis.pseudonym_key_env = "SEQCLUST_TEST_PSEUDONYM_KEY".into();
    let id = c.submit(&spec);
    c.wait_done(&id, MINUTES).unwrap();
    let root = Location::parse(&c.root_str(), false).unwrap();
    let run = c.rt.block_on(Run::open(&root, &id)).unwrap();
    let raw: Vec<String> = requests(&c, &ds, 300).into_iter().map(|r| r.0).collect();
    let hashed = |s: &str| s.len() == 32 && s.bytes().all(|b| b.is_ascii_hexdigit());
    for f in run.files_under("clusters/assignments/") {
        let a =
            seqclust_data::embeddings::parse_assignments(c.rt.block_on(run.read(f)).unwrap(), f)
                .unwrap();
        assert!(!a.ids.is_empty());
        assert!(
            a.ids.iter().all(|u| hashed(u) && !raw.contains(u)),
            "{f}: {:?}",
            &a.ids[..3]
        );
    }
    let profiles: serde_json::Value =
        serde_json::from_slice(&c.rt.block_on(run.read("clusters/profiles.json")).unwrap())
            .unwrap();
    assert_eq!(profiles["pseudonymized"], true);
    for cl in profiles["clusters"].as_array().unwrap() {
        for m in cl["medoids"].as_array().unwrap() {
            assert!(hashed(m.as_str().unwrap()));
        }
    }
    let recs = c.rt.block_on(run.read("recs/part-00000.parquet")).unwrap();
    let text = String::from_utf8_lossy(&recs);
    assert!(!raw.iter().any(|u| text.contains(&format!("\u{0}{u}\u{0}"))));
    // without the key the job is refused at ANALYZE, naming the variable
    let mut spec = c.spec("private2", &ds, 1);
    spec.analysis.pseudonymize = true;
    spec.analysis.pseudonym_key_env = "SEQCLUST_TEST_SURELY_UNSET".into();
    let id = c.submit(&spec);
    let err = c.wait_done(&id, MINUTES).unwrap_err();
    assert!(
        format!("{err:#}").contains("SEQCLUST_TEST_SURELY_UNSET"),
        "{err:#}"
    );
    // and it left nothing behind (no staged object; empty local directories do not count)
    let runs = c.rt.block_on(seqclust_artifacts::list(&root)).unwrap();
    assert!(
        runs.iter().all(|r| r.id != id),
        "staged files of the failed job remain"
    );
}
