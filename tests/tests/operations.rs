//! Operations: the service binaries as Kubernetes runs them, from one config file on a real
//! etcd. Two coordinators campaign and one leads (the other reports not-ready on /readyz);
//! workers register; a job runs; every process's /metrics carries the documented series with
//! plausible values; a SIGTERMed leader hands over to the standby, which carries the job
//! records on; a SIGTERMed worker leaves cleanly.

#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::process::Command;
use std::time::{Duration, Instant};

use seqclust_meta::conformance::etcd_server::etcd_or_skip;
use seqclust_proto::v1;
use seqclust_proto::v1::job_service_client::JobServiceClient;
use seqclust_tests::services::{
    Proc, free_port, metrics, ready, sample, total, wait_until, write_config,
};
use seqclust_tests::{make_dataset, runtime, seqclust_bin, small_spec};

#[test]
fn services_from_one_config_elect_a_leader_expose_metrics_and_hand_over() {
    let Some(etcd) = etcd_or_skip("operations") else {
        return;
    };
    let rt = runtime();
    let dir = tempfile::tempdir().unwrap();
    let root = dir.path().display().to_string();
    let ds = make_dataset(&rt, dir.path(), "ops", 600);
    let grpc = free_port();
    let cfg = write_config(dir.path(), grpc, &etcd.endpoint(), "operations");
    let check = Command::new(seqclust_bin())
        .args(["config", "check", &cfg])
        .output()
        .unwrap();
    assert!(check.status.success(), "{check:?}");

    // two coordinator replicas on the same config (the same listen address, as behind a
    // Service): the first leads, the second waits as a standby
    let (ma, mb) = (free_port(), free_port());
    let log = |n: &str| dir.path().join(format!("{n}.log"));
    let mut a = Proc::start(
        &[
            "coordinator",
            "--config",
            &cfg,
            "--metrics-listen",
            &format!("127.0.0.1:{ma}"),
            "--candidate",
            "a",
        ],
        &log("coordinator-a"),
    );
    wait_until("coordinator a to lead", Duration::from_secs(30), || {
        ready(ma).is_some_and(|(c, _)| c == 200)
    });
    let _b = Proc::start(
        &[
            "coordinator",
            "--config",
            &cfg,
            "--metrics-listen",
            &format!("127.0.0.1:{mb}"),
            "--candidate",
            "b",
        ],
        &log("coordinator-b"),
    );
    wait_until(
        "coordinator b's admin endpoint",
        Duration::from_secs(30),
        || ready(mb).is_some(),
    );
    std::thread::sleep(Duration::from_millis(500));
    let (code, why) = ready(mb).unwrap();
    assert_eq!(code, 503, "the standby must not be ready: {why}");
    assert!(why.contains("standby"), "{why}");
    assert_eq!(
        sample(&metrics(mb), "seqclust_coordinator_leader", &[]),
        Some(0.0)
    );

    let (w0, w1) = (free_port(), free_port());
    let mut workers = vec![
        Proc::start(
            &[
                "worker",
                "--config",
                &cfg,
                "--metrics-listen",
                &format!("127.0.0.1:{w0}"),
                "--name",
                "w0",
            ],
            &log("worker-0"),
        ),
        Proc::start(
            &[
                "worker",
                "--config",
                &cfg,
                "--metrics-listen",
                &format!("127.0.0.1:{w1}"),
                "--name",
                "w1",
            ],
            &log("worker-1"),
        ),
    ];
    wait_until("two registered workers", Duration::from_secs(30), || {
        sample(&metrics(ma), "seqclust_workers", &[("state", "ready")]) == Some(2.0)
    });

    // a job through the leader
    let spec = small_spec(&root, "ops", &ds, 2);
    let url = format!("http://127.0.0.1:{grpc}");
    let mut client = rt.block_on(async {
        JobServiceClient::new(
            tonic::transport::Endpoint::from_shared(url.clone())
                .unwrap()
                .connect()
                .await
                .unwrap(),
        )
    });
    let id = rt
        .block_on(client.submit_job(v1::SubmitJobRequest {
            spec: Some((&spec).into()),
            idempotency_key: String::new(),
        }))
        .unwrap()
        .into_inner()
        .job
        .unwrap()
        .id;
    wait_until("the job to succeed", Duration::from_secs(300), || {
        let j = rt
            .block_on(client.get_job(v1::GetJobRequest { id: id.clone() }))
            .unwrap()
            .into_inner();
        assert!(j.error.is_empty(), "job failed: {}", j.error);
        sample(&metrics(ma), "seqclust_jobs", &[("phase", "succeeded")]) == Some(1.0)
    });

    // the leader's series
    let m = metrics(ma);
    assert_eq!(sample(&m, "seqclust_coordinator_leader", &[]), Some(1.0));
    assert_eq!(
        sample(&m, "seqclust_jobs", &[("phase", "train")]),
        Some(0.0)
    );
    assert_eq!(
        sample(&m, "seqclust_workers", &[("state", "registered")]),
        Some(2.0)
    );
    assert_eq!(
        sample(&m, "seqclust_jobs_ended_total", &[("phase", "succeeded")]),
        Some(1.0)
    );
    for phase in ["train", "embed", "kmeans", "assign", "analyze", "commit"] {
        assert_eq!(
            sample(&m, "seqclust_job_phase_seconds_count", &[("phase", phase)]),
            Some(1.0),
            "phase {phase}"
        );
    }
    let inertia = sample(&m, "seqclust_kmeans_inertia_per_point", &[("job", &id)]).unwrap();
    assert!(inertia.is_finite() && inertia > 0.0, "inertia {inertia}");
    assert!(sample(&m, "seqclust_kmeans_steps_total", &[]).unwrap() >= 1.0);
    assert!(sample(&m, "seqclust_partials_received_bytes_total", &[]).unwrap() > 0.0);
    wait_until("two lease renewals", Duration::from_secs(10), || {
        sample(
            &metrics(ma),
            "seqclust_lease_renewals_total",
            &[("outcome", "ok")],
        )
        .is_some_and(|n| n >= 2.0)
    });
    let submit = [
        ("service", "seqclust.v1.JobService"),
        ("method", "SubmitJob"),
    ];
    assert_eq!(
        sample(
            &m,
            "seqclust_grpc_server_handled_total",
            &[submit[0], submit[1], ("code", "OK")]
        ),
        Some(1.0)
    );
    let calls = total(&m, "seqclust_grpc_server_handling_seconds_count", &[]);
    let handled = total(&m, "seqclust_grpc_server_handled_total", &[]);
    assert!(
        calls >= 10.0 && calls == handled,
        "{calls} timed, {handled} counted"
    );

    // the workers' series
    let (m0, m1) = (metrics(w0), metrics(w1));
    for wm in [&m0, &m1] {
        let steps = sample(wm, "seqclust_train_steps_total", &[]).unwrap();
        assert!(steps >= 1.0);
        assert_eq!(
            sample(wm, "seqclust_train_step_seconds_count", &[]),
            Some(steps)
        );
        // one dense all-reduce per step at least, with real bytes in it
        assert!(
            sample(
                wm,
                "seqclust_collective_seconds_count",
                &[("op", "all_reduce")]
            )
            .unwrap()
                >= steps
        );
        assert!(
            sample(
                wm,
                "seqclust_collective_bytes_total",
                &[("op", "all_reduce")]
            )
            .unwrap()
                > 1000.0 * steps
        );
        assert_eq!(
            sample(
                wm,
                "seqclust_worker_tasks_total",
                &[("kind", "train"), ("outcome", "ok")]
            ),
            Some(1.0)
        );
        assert!(
            sample(wm, "seqclust_worker_heartbeats_total", &[("outcome", "ok")]).unwrap() >= 1.0
        );
        assert_eq!(sample(wm, "seqclust_worker_registered", &[]), Some(1.0));
        let loss = sample(wm, "seqclust_train", &[("value", "loss")]).unwrap();
        assert!(loss.is_finite() && loss > 0.0, "loss {loss}");
    }
    let trained = total(&m0, "seqclust_train_sequences_total", &[])
        + total(&m1, "seqclust_train_sequences_total", &[]);
    assert!(
        (64.0..=600.0).contains(&trained),
        "{trained} sequences trained"
    );
    let embedded = total(&m0, "seqclust_worker_users_total", &[("task", "embed")])
        + total(&m1, "seqclust_worker_users_total", &[("task", "embed")]);
    assert_eq!(embedded, 600.0);

    // the leader goes (a rollout, a drain): it resigns, the standby takes over at once and
    // carries the job records on; the workers register with it
    let t = Instant::now();
    let st = a.terminate(Duration::from_secs(20));
    assert!(st.success(), "the leader exited with {st}");
    wait_until("the standby to lead", Duration::from_secs(20), || {
        ready(mb).is_some_and(|(c, _)| c == 200)
    });
    let took = t.elapsed();
    eprintln!("standby ready {took:?} after the leader's SIGTERM");
    wait_until(
        "the workers to register with the new leader",
        Duration::from_secs(30),
        || sample(&metrics(mb), "seqclust_workers", &[("state", "ready")]) == Some(2.0),
    );
    let mb_text = metrics(mb);
    assert_eq!(
        sample(&mb_text, "seqclust_coordinator_leader", &[]),
        Some(1.0)
    );
    assert_eq!(
        sample(&mb_text, "seqclust_jobs", &[("phase", "succeeded")]),
        Some(1.0)
    );

    // a worker stopped the way Kubernetes stops it leaves without error
    let st = workers[1].terminate(Duration::from_secs(20));
    assert!(st.success(), "the worker exited with {st}");
    // the gauge drops as the worker is removed; the counter follows once its lease is revoked
    wait_until("the worker to be gone", Duration::from_secs(10), || {
        let m = metrics(mb);
        sample(&m, "seqclust_workers", &[("state", "registered")]) == Some(1.0)
            && sample(&m, "seqclust_workers_gone_total", &[("kind", "left")]) == Some(1.0)
    });
    drop(workers);
}
