//! Coordinator failover the hard way: the leading coordinator process is SIGKILLed while a job
//! trains. Its etcd lease runs out, the standby's campaign wins, it reads the job record and
//! carries the job on (training from the last checkpoint); the workers register with it; the
//! job is committed exactly once.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::{Duration, Instant};

use seqclust_meta::conformance::etcd_server::etcd_or_skip;
use seqclust_proto::v1;
use seqclust_proto::v1::job_service_client::JobServiceClient;
use seqclust_tests::services::{
    LEASE_TTL, Proc, free_port, metrics, ready, sample, wait_until, write_config,
};
use seqclust_tests::{make_dataset, runtime, small_spec};

#[test]
fn a_killed_leader_is_replaced_and_its_job_completes_once() {
    let Some(etcd) = etcd_or_skip("failover") else {
        return;
    };
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    let ds = make_dataset(&rt, dir.path(), "fo", 1500);
    let grpc = free_port();
    let ttl = LEASE_TTL;
    let cfg = write_config(dir.path(), grpc, &etcd.endpoint(), "failover");
    let log = |n: &str| dir.path().join(format!("{n}.log"));
    let (ma, mb) = (free_port(), free_port());
    let coordinator = |m: u16, name: &str| {
        Proc::start(
            &[
                "coordinator",
                "--config",
                &cfg,
                "--metrics-listen",
                &format!("127.0.0.1:{m}"),
                "--candidate",
                name,
            ],
            &log(&format!("coordinator-{name}")),
        )
    };
    let mut a = coordinator(ma, "a");
    wait_until("a to lead", Duration::from_secs(30), || {
        ready(ma).is_some_and(|(c, _)| c == 200)
    });
    let _b = coordinator(mb, "b");
    let _workers: Vec<Proc> = (0..2)
        .map(|i| Proc::start(&["worker", "--config", &cfg], &log(&format!("worker-{i}"))))
        .collect();
    wait_until("two workers", Duration::from_secs(30), || {
        sample(&metrics(ma), "seqclust_workers", &[("state", "ready")]) == Some(2.0)
    });

    let mut spec = small_spec(&root, "fo", &ds, 2);
    spec.encoder.dim = 64;
    spec.train.epochs = 30;
    spec.train.checkpoint_every = 10;
    let url = format!("http://127.0.0.1:{grpc}");
    let client = || {
        rt.block_on(async {
            let ch = tonic::transport::Endpoint::from_shared(url.clone())
                .unwrap()
                .connect()
                .await
                .ok()?;
            Some(JobServiceClient::new(ch))
        })
    };
    let job = |id: &str| {
        let mut c = client()?;
        rt.block_on(c.get_job(v1::GetJobRequest { id: id.into() }))
            .ok()
            .map(|r| r.into_inner())
    };
    let id = rt
        .block_on(client().unwrap().submit_job(v1::SubmitJobRequest {
            spec: Some((&spec).into()),
            idempotency_key: "failover-once".into(),
        }))
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    wait_until("training under way", Duration::from_secs(120), || {
        job(&id).is_some_and(|j| j.phase == v1::Phase::Train as i32 && j.phase_progress > 0.1)
    });

    // the leader dies without a word: its lease has to run out
    let before = job(&id).unwrap().phase_progress;
    let t = Instant::now();
    a.kill();
    wait_until("the standby to lead", Duration::from_secs(30), || {
        ready(mb).is_some_and(|(c, _)| c == 200)
    });
    let takeover = t.elapsed();
    // progress again: the job is driven by the new leader (a new round, or further along)
    wait_until(
        "the job to make progress again",
        Duration::from_secs(60),
        || {
            sample(&metrics(mb), "seqclust_workers", &[("state", "ready")]) == Some(2.0)
                && job(&id).is_some_and(|j| {
                    j.phase != v1::Phase::Train as i32 || j.phase_progress > before + 0.005
                })
        },
    );
    let recovered = t.elapsed();
    eprintln!(
        "leader SIGKILLed: standby leads after {takeover:?}, job progressing after {recovered:?}"
    );
    assert!(
        takeover <= Duration::from_secs_f64(ttl + 2.0),
        "takeover took {takeover:?} with a {ttl} s lease"
    );
    assert!(
        recovered <= Duration::from_secs(20),
        "recovery took {recovered:?}"
    );

    wait_until("the job to succeed", Duration::from_secs(300), || {
        let j = job(&id);
        if let Some(j) = &j {
            assert!(j.error.is_empty(), "job failed: {}", j.error);
        }
        j.is_some_and(|j| j.phase == v1::Phase::Succeeded as i32)
    });
    // once: one job, one committed run, the pointer on it; the same idempotency key returns it
    let mut c = client().unwrap();
    let jobs = rt
        .block_on(c.list_jobs(v1::ListJobsRequest::default()))
        .unwrap()
        .into_inner()
        .jobs;
    assert_eq!(jobs.len(), 1);
    let again = rt
        .block_on(c.submit_job(v1::SubmitJobRequest {
            spec: Some((&spec).into()),
            idempotency_key: "failover-once".into(),
        }))
        .unwrap()
        .into_inner()
        .job
        .unwrap();
    assert_eq!(again.id, id);
    let runs: Vec<_> = std::fs::read_dir(dir.path().join("runs"))
        .unwrap()
        .map(|e| e.unwrap().path())
        .filter(|p| p.join("_MANIFEST.json").exists())
        .collect();
    assert_eq!(runs.len(), 1, "{runs:?}");
    let latest = std::fs::read_to_string(dir.path().join("latest/fo")).unwrap();
    assert!(latest.contains(&id), "{latest}");
    let survivor = std::fs::read_to_string(log("coordinator-b")).unwrap();
    assert!(survivor.contains("elected leader"), "{survivor}");
}
