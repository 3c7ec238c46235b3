//! The distributed runtime end to end on loopback gRPC, with in-process workers.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::path::{Path, PathBuf};
use std::time::Duration;

use seqclust_data::embeddings::read_assignments;
use seqclust_data::store::sha256_hex;
use seqclust_job::Phase;
use seqclust_kmeans::{Packed, PartialStats, Points, accumulate};
use seqclust_proto::convert::phase_of;
use seqclust_proto::v1::worker_service_client::WorkerServiceClient;
use seqclust_proto::v1::{self, TaskKind};
use seqclust_proto::{PROTOCOL_VERSION, Sample, f32s};
use seqclust_tests::{TestCluster, ari, assignments};

const MINUTES: Duration = Duration::from_secs(240);

fn run_dir(j: &v1::Job) -> PathBuf {
    PathBuf::from(&j.run_uri)
}

fn manifest(j: &v1::Job) -> serde_json::Value {
    serde_json::from_slice(&std::fs::read(run_dir(j).join("_MANIFEST.json")).unwrap()).unwrap()
}

fn tensors(path: &Path) -> Vec<(String, Vec<f32>)> {
    let bytes = std::fs::read(path).unwrap();
    let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Vec<(String, Vec<f32>)> = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, f32s(v.data()).unwrap()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

/// Largest per-tensor max |a − b| / max |a|.
fn max_relative(a: &[(String, Vec<f32>)], b: &[(String, Vec<f32>)]) -> f64 {
    assert_eq!(a.len(), b.len());
    a.iter()
        .zip(b)
        .map(|((na, va), (nb, vb))| {
            assert_eq!(na, nb);
            let scale = va.iter().fold(0f32, |m, v| m.max(v.abs())).max(1e-12);
            let diff = va
                .iter()
                .zip(vb)
                .fold(0f32, |m, (x, y)| m.max((x - y).abs()));
            f64::from(diff / scale)
        })
        .fold(0.0, f64::max)
}

#[test]
fn a_job_commits_a_complete_verifiable_run() {
    let mut c = TestCluster::new();
    let ds = c.dataset("people", 400);
    c.add_worker();
    c.add_worker();
    let id = c.submit(&c.spec("e2e", &ds, 2));
    let j = c.wait_done(&id, MINUTES).unwrap();
    assert_eq!(j.world_size, 2);
    let m = manifest(&j);
    let files = m["files"].as_array().unwrap();
    let names: Vec<&str> = files.iter().map(|f| f["path"].as_str().unwrap()).collect();
    for want in [
        "model/encoder.safetensors",
        "model/config.json",
        "clusters/centroids.safetensors",
        "clusters/kmeans.json",
        "clusters/assignments/part-00000.parquet",
        "clusters/assignments/part-00003.parquet",
        "metrics.json",
        "job.toml",
    ] {
        assert!(names.contains(&want), "{want} missing from {names:?}");
    }
    for f in files {
        let bytes = std::fs::read(run_dir(&j).join(f["path"].as_str().unwrap())).unwrap();
        assert_eq!(f["size"].as_u64().unwrap(), bytes.len() as u64);
        assert_eq!(f["sha256"].as_str().unwrap(), sha256_hex(&bytes));
    }
    assert_eq!(assignments(&j).len(), 400);
    assert_eq!(m["world_size"], 2);
    let latest = std::fs::read_to_string(c.root.path().join("latest/e2e")).unwrap();
    assert_eq!(latest, id);
    // every phase ran and was timed
    let phases: Vec<i32> = j.phase_times.iter().map(|t| t.phase).collect();
    for p in [
        v1::Phase::Train,
        v1::Phase::Embed,
        v1::Phase::KmeansInit,
        v1::Phase::Kmeans,
        v1::Phase::Assign,
        v1::Phase::Commit,
    ] {
        assert!(phases.contains(&(p as i32)), "{p:?} not in {phases:?}");
    }
}

#[test]
fn one_two_and_four_workers_agree_and_a_repeat_is_bit_identical() {
    let mut c = TestCluster::new();
    let ds = c.dataset("people", 512);
    for _ in 0..4 {
        c.add_worker();
    }
    let mut runs = Vec::new();
    for (name, w) in [("w1", 1), ("w2", 2), ("w4", 4), ("w2again", 2)] {
        let id = c.submit(&c.spec(name, &ds, w));
        runs.push(c.wait_done(&id, MINUTES).unwrap());
    }
    let model = |j: &v1::Job| tensors(&run_dir(j).join("model/encoder.safetensors"));
    let base = model(&runs[0]);
    for j in &runs[1..3] {
        let rel = max_relative(&base, &model(j));
        assert!(
            rel <= 1e-4,
            "world {}: model differs by {rel:e} relative",
            j.world_size
        );
        let a = ari(&assignments(&runs[0]), &assignments(j));
        assert!(
            a >= 0.99,
            "world {}: ARI {a} against one worker",
            j.world_size
        );
    }
    // same seed, same world size: the same bytes
    for f in [
        "model/encoder.safetensors",
        "clusters/centroids.safetensors",
    ] {
        assert_eq!(
            std::fs::read(run_dir(&runs[1]).join(f)).unwrap(),
            std::fs::read(run_dir(&runs[3]).join(f)).unwrap(),
            "{f} differs between two runs of world 2"
        );
    }
    for s in 0..4 {
        let f = format!("clusters/assignments/part-{s:05}.parquet");
        let (a, b) = (
            read_assignments(&run_dir(&runs[1]).join(&f)).unwrap(),
            read_assignments(&run_dir(&runs[3]).join(&f)).unwrap(),
        );
        assert_eq!(a, b, "{f}");
    }
}

#[test]
fn bad_submissions_get_the_right_codes_and_submits_are_idempotent() {
    let c = TestCluster::new();
    let ds = c.dataset("people", 200);
    let mut client = c.client();
    let mut bad = c.spec("bad", &ds, 1);
    bad.kmeans.k = 0;
    let e =
        c.rt.block_on(client.submit_job(v1::SubmitJobRequest {
            spec: Some((&bad).into()),
            idempotency_key: String::new(),
        }))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("kmeans.k"), "{}", e.message());

    let mut wire = v1::JobSpec::from(&c.spec("bad", &ds, 1));
    wire.encoder.as_mut().unwrap().kind = Some("cnn".into());
    let e =
        c.rt.block_on(client.submit_job(v1::SubmitJobRequest {
            spec: Some(wire),
            idempotency_key: String::new(),
        }))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::InvalidArgument);
    assert!(e.message().contains("encoder.kind"), "{}", e.message());

    let missing = c.spec("nope", "no-such-dataset", 1);
    let e =
        c.rt.block_on(client.submit_job(v1::SubmitJobRequest {
            spec: Some((&missing).into()),
            idempotency_key: String::new(),
        }))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound, "{}", e.message());

    let e =
        c.rt.block_on(client.get_job(v1::GetJobRequest { id: "nope".into() }))
            .unwrap_err();
    assert_eq!(e.code(), tonic::Code::NotFound);

    let good = c.spec("once", &ds, 1);
    let submit = |key: &str| {
        let mut client = c.client();
        c.rt.block_on(client.submit_job(v1::SubmitJobRequest {
            spec: Some((&good).into()),
            idempotency_key: key.into(),
        }))
        .unwrap()
        .into_inner()
    };
    let first = submit("k-1");
    let again = submit("k-1");
    assert!(first.created && !again.created);
    assert_eq!(first.job.unwrap().id, again.job.unwrap().id);
    let other = submit("k-2");
    assert!(other.created);
    let jobs =
        c.rt.block_on(client.list_jobs(v1::ListJobsRequest { limit: 0 }))
            .unwrap()
            .into_inner()
            .jobs;
    assert_eq!(jobs.len(), 2, "one job per idempotency key");

    // cancelling a pending job (no workers) ends it
    let id = other.job.unwrap().id;
    c.rt.block_on(client.cancel_job(v1::CancelJobRequest { id: id.clone() }))
        .unwrap();
    let j = c.wait_for(&id, MINUTES, |_| false).unwrap_err();
    assert!(j.to_string().contains("Cancelled"), "{j}");

    // a worker of another protocol version is refused
    let mut w =
        c.rt.block_on(WorkerServiceClient::connect(c.url()))
            .unwrap();
    let e =
        c.rt.block_on(w.register_worker(v1::RegisterWorkerRequest {
            protocol_version: PROTOCOL_VERSION + 1,
            name: "old".into(),
            collective_addr: "127.0.0.1:1".into(),
            ..Default::default()
        }))
        .unwrap_err();
    assert_eq!(e.code(), tonic::Code::FailedPrecondition);
}

/// A hand-written worker that answers every task itself (registered as an NCCL worker, so
/// the group id must travel through the coordinator), and tries a malformed and a
/// mis-shaped partial before the right one.
#[test]
fn malformed_partials_are_refused_at_the_upload_and_the_reduction_goes_on() {
    let c = TestCluster::new();
    let ds = c.dataset("people", 200);
    let rt = &c.rt;
    let mut w = rt.block_on(WorkerServiceClient::connect(c.url())).unwrap();
    let reg = rt
        .block_on(w.register_worker(v1::RegisterWorkerRequest {
            protocol_version: PROTOCOL_VERSION,
            name: "fake".into(),
            collective_addr: "127.0.0.1:1".into(),
            threads: 1,
            code_version: "test".into(),
            // as a GPU worker: the coordinator must fetch an NCCL id from rank 0 and hand
            // it to every rank's TRAIN task
            collective: "nccl".into(),
        }))
        .unwrap()
        .into_inner();
    let me = reg.worker_id;
    let mut tasks = rt
        .block_on(w.control(v1::ControlRequest {
            worker_id: me.clone(),
        }))
        .unwrap()
        .into_inner();
    let mut spec = c.spec("fake", &ds, 1);
    spec.kmeans.k = 3;
    // the stand-in worker writes no assignment files for an analysis to read
    spec.analysis.enabled = false;
    let id = c.submit(&spec);
    // 90 fake users in 3 blobs, d = 4
    let d = 4;
    let rows: Vec<f32> = (0..90)
        .flat_map(|i| {
            let b = (i % 3) as f32 * 10.0;
            [b + (i as f32 * 0.01), b, -b, 1.0]
        })
        .collect();
    let push =
        |w: &mut WorkerServiceClient<tonic::transport::Channel>, t: &v1::Task, payload: Vec<u8>| {
            let chunk = v1::PartialChunk {
                worker_id: me.clone(),
                task_id: t.task_id.clone(),
                membership_epoch: t.membership_epoch,
                offset: 0,
                total: payload.len() as u64,
                data: payload,
            };
            rt.block_on(w.push_partials(tokio_stream::iter(vec![chunk])))
        };
    let mut refused = Vec::new();
    loop {
        let t = match rt.block_on(async {
            tokio::time::timeout(Duration::from_secs(60), tasks.message()).await
        }) {
            Ok(Ok(Some(t))) => t,
            other => panic!("control stream: {other:?}"),
        };
        let kind = TaskKind::try_from(t.kind).unwrap();
        let mut result = v1::TaskResult {
            worker_id: me.clone(),
            task_id: t.task_id.clone(),
            membership_epoch: t.membership_epoch,
            ok: true,
            ..Default::default()
        };
        match kind {
            TaskKind::NcclId => {
                result.summary_json = serde_json::json!({ "nccl_id": "00ff10" }).to_string();
            }
            TaskKind::Train => assert_eq!(t.nccl_id, vec![0u8, 255, 16], "the NCCL id travels"),
            TaskKind::Embed => result.users = 90,
            TaskKind::Sample => {
                let s = Sample {
                    d,
                    keys: (0..90).collect(),
                    rows: rows.clone(),
                };
                push(&mut w, &t, s.to_bytes()).unwrap();
            }
            TaskKind::Partials => {
                if refused.is_empty() {
                    refused.push(push(&mut w, &t, vec![7; 13]).unwrap_err());
                    refused.push(push(&mut w, &t, PartialStats::new(5, d).to_bytes()).unwrap_err());
                    let mut nan = PartialStats::new(3, d);
                    nan.sums[0] = f64::NAN;
                    refused.push(push(&mut w, &t, nan.to_bytes()).unwrap_err());
                }
                let mut cs = rt
                    .block_on(w.fetch_centroids(v1::FetchCentroidsRequest {
                        job_id: t.job_id.clone(),
                        version: t.centroids_version,
                    }))
                    .unwrap()
                    .into_inner();
                let mut vals = Vec::new();
                while let Some(ch) = rt.block_on(cs.message()).unwrap() {
                    vals.extend(f32s(&ch.data).unwrap());
                }
                let cents = seqclust_kmeans::Centroids::new(vals, d).unwrap();
                let stats = accumulate(
                    &Points::new(&rows, d).unwrap(),
                    &Packed::new(&cents, spec.kmeans.metric),
                    None,
                );
                push(&mut w, &t, stats.to_bytes()).unwrap();
            }
            TaskKind::Assign => {
                result.users = 90;
                let files: Vec<String> = t
                    .shards
                    .iter()
                    .map(|s| format!("clusters/assignments/part-{s:05}.parquet"))
                    .collect();
                result.summary_json =
                    serde_json::json!({ "counts": [30, 30, 30], "inertia": 1.0, "files": files })
                        .to_string();
            }
            TaskKind::Release => break,
            TaskKind::Unspecified | TaskKind::Regroup | TaskKind::Abort => {
                panic!("unexpected {kind:?} message")
            }
        }
        rt.block_on(w.complete_task(result)).unwrap();
        if phase_of(&c.get(&id)).is_ok_and(Phase::is_terminal) {
            break;
        }
    }
    let j = c.wait_done(&id, MINUTES).unwrap();
    assert_eq!(refused.len(), 3);
    for (e, what) in refused.iter().zip(["13 bytes", "k=5", "non-finite"]) {
        assert_eq!(e.code(), tonic::Code::InvalidArgument, "{e}");
        assert!(e.message().contains(what), "{what}: {}", e.message());
    }
    // the three blobs are found: the reduction was not corrupted
    let report: serde_json::Value =
        serde_json::from_slice(&std::fs::read(run_dir(&j).join("clusters/kmeans.json")).unwrap())
            .unwrap();
    let hist = report["result"]["history"].as_array().unwrap();
    let last = hist.last().unwrap()["inertia_per_point"].as_f64().unwrap();
    assert!(last < 1.0, "inertia per point {last}");
}

#[test]
fn a_restarted_coordinator_carries_the_job_on() {
    let mut c = TestCluster::new();
    let ds = c.dataset("people", 600);
    c.add_worker();
    let mut spec = c.spec("restart", &ds, 1);
    spec.encoder.dim = 64;
    spec.train.epochs = 40;
    spec.train.checkpoint_every = 10;
    let id = c.submit(&spec);
    c.wait_for(&id, MINUTES, |j| {
        phase_of(j).ok() == Some(Phase::Train) && j.phase_progress > 0.05
    })
    .unwrap();
    c.restart_coordinator();
    let j = c.wait_done(&id, MINUTES).unwrap();
    assert!(!manifest(&j)["files"].as_array().unwrap().is_empty());
    assert_eq!(assignments(&j).len(), 600);
    let steps = manifest(&j)["summary"]["train"]["steps"].as_u64().unwrap();
    assert_eq!(
        steps,
        40 * 600u64.div_ceil(64),
        "training resumed where it was"
    );
}

/// The production metadata path: the coordinator's leases, job records and idempotency keys
/// in a real etcd (spawned from PATH; required under CI).
#[test]
fn a_job_runs_with_its_state_in_etcd() {
    let Some(etcd) = seqclust_meta::conformance::etcd_server::etcd_or_skip("runtime on etcd")
    else {
        return;
    };
    let mut c = TestCluster::with_meta(|rt| {
        let store = rt.block_on(etcd.store(Duration::from_secs(5), 3));
        std::sync::Arc::new(store)
    });
    let ds = c.dataset("people", 300);
    c.add_worker();
    c.add_worker();
    let id = c.submit(&c.spec("on-etcd", &ds, 2));
    let j = c.wait_done(&id, MINUTES).unwrap();
    assert_eq!(assignments(&j).len(), 300);
    // the record and the workers' leased keys are in etcd
    let jobs = c.rt.block_on(c.meta.list("jobs/")).unwrap();
    assert_eq!(jobs.len(), 1);
    let workers = c.rt.block_on(c.meta.list("workers/")).unwrap();
    assert_eq!(workers.len(), 2);
    assert!(
        workers.iter().all(|kv| kv.lease.is_some()),
        "worker keys carry leases"
    );
    drop(c);
    drop(etcd);
}

/// `seqclust submit --min-workers/--max-workers` set the job's worker bounds; bounds that
/// contradict each other are refused by field name before anything is submitted.
#[test]
fn submit_flags_set_the_worker_bounds() {
    let c = TestCluster::new();
    let ds = c.dataset("people", 200);
    let spec_file = c.root.path().join("job.toml");
    std::fs::write(&spec_file, c.spec("flags", &ds, 1).to_toml()).unwrap();
    let submit = |extra: &[&str]| {
        std::process::Command::new(seqclust_tests::seqclust_bin())
            .arg("submit")
            .arg(&spec_file)
            .args(["--coordinator", &c.url()])
            .args(extra)
            .output()
            .unwrap()
    };
    let bad = submit(&["--min-workers", "3", "--max-workers", "2"]);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("resources.max_workers"), "{err}");
    let jobs = |c: &TestCluster| {
        let mut client = c.client();
        c.rt.block_on(client.list_jobs(v1::ListJobsRequest::default()))
            .unwrap()
            .into_inner()
            .jobs
    };
    assert!(jobs(&c).is_empty(), "a refused submit recorded a job");
    let ok = submit(&["--min-workers", "2", "--max-workers", "5"]);
    assert!(
        ok.status.success(),
        "{}",
        String::from_utf8_lossy(&ok.stderr)
    );
    let id = String::from_utf8_lossy(&ok.stdout).trim().to_string();
    let j = c.get(&id);
    let res = j.spec.unwrap().resources.unwrap();
    assert_eq!((res.min_workers, res.max_workers), (Some(2), Some(5)));
    // no worker is registered: the job waits for two
    assert_eq!(phase_of(&c.get(&id)).unwrap(), Phase::Pending);
}
