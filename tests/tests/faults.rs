//! Network partitions (hosts of their own in network namespaces) and etcd member loss, with
//! the artifacts checked against undisturbed runs.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::sync::Arc;
use std::time::{Duration, Instant};

use seqclust_job::{JobSpec, Phase};
use seqclust_meta::conformance::etcd_server::{cluster_or_skip, etcd_or_skip};
use seqclust_proto::convert::phase_of;
use seqclust_tests::netns::net_or_skip;
use seqclust_tests::{TestCluster, ari, assignments};

const MINUTES: Duration = Duration::from_secs(240);

/// A job of two workers (bounds 1..2) that trains long enough to be disturbed, with
/// checkpoints every 10 steps.
fn long_spec(c: &TestCluster, name: &str, ds: &str) -> JobSpec {
    let mut spec = c.spec(name, ds, 2);
    spec.resources.min_workers = 1;
    spec.resources.max_workers = 2;
    spec.encoder.dim = 64;
    spec.train.epochs = 20;
    spec.train.checkpoint_every = 10;
    spec
}

fn training_on_two(c: &TestCluster, id: &str) {
    c.wait_for(id, MINUTES, |j| {
        phase_of(j).ok() == Some(Phase::Train) && j.world_size == 2 && j.phase_progress > 0.1
    })
    .unwrap();
}

/// A worker cut off by a partition during TRAIN is fenced — its lease expires, the
/// coordinator ends the survivor's blocked collective call, the survivor goes on from the
/// last checkpoint, and the result
/// the cut-off worker reports once the link is back is refused as stale — then registers
/// again when the link returns, is taken back at the next checkpoint, and the clusters equal
/// an undisturbed run's.
#[test]
fn a_partitioned_worker_is_fenced_and_rejoins_when_the_link_returns() {
    let Some(net) = net_or_skip("partition", 2) else {
        return;
    };
    let Some(etcd) = etcd_or_skip("partition") else {
        return;
    };
    let mut c = TestCluster::listening("0.0.0.0:0", |rt| {
        Arc::new(rt.block_on(etcd.store(Duration::from_secs(5), 3)))
    });
    let ds = c.dataset("people", 1500);
    c.add_process_worker_on(&net, 0);
    let cut = c.add_process_worker_on(&net, 1);
    c.wait_workers_exactly(2);
    let up = Instant::now();
    // twice the epochs of the other fault tests: the lone survivor must still be training
    // when the cut-off worker is back (11 s after the cut, plus its registration), or the job
    // ends before it can be taken back — a race the shorter job lost on loaded machines
    let spec = |name| {
        let mut s = long_spec(&c, name, &ds);
        s.train.epochs = 40;
        s
    };
    let base = c
        .wait_done(&c.submit(&spec("undisturbed")), MINUTES)
        .unwrap();
    assert_eq!(base.world_size, 2);
    // the cut comes more than the workers' connect timeout (30 s) after they registered: the
    // timeout counts from the last contact with the coordinator, not from the worker's start
    // (a worker that counted from its start gave up during the partition)
    std::thread::sleep(Duration::from_secs(31).saturating_sub(up.elapsed()));
    let id = c.submit(&spec("partitioned"));
    training_on_two(&c, &id);
    let t = Instant::now();
    net.cut(1);
    c.wait_workers_exactly(1);
    let fenced = t.elapsed();
    c.wait_for(&id, Duration::from_secs(60), |j| {
        j.world_size == 1 && j.message.starts_with("epoch ")
    })
    .unwrap();
    let progressing = t.elapsed();
    // the coordinator ends the survivor's blocked collective call when the lease expires,
    // rather than leaving it to the collective deadline (10 s)
    assert!(
        progressing < Duration::from_secs(8),
        "the survivor trained again only after {progressing:?}"
    );
    // the link comes back after the cut-off worker's collective deadline (10 s) has passed
    std::thread::sleep(Duration::from_secs(11).saturating_sub(t.elapsed()));
    net.heal(1);
    let healed = Instant::now();
    c.wait_workers_exactly(2);
    let registered = healed.elapsed();
    let j = c.wait_done(&id, MINUTES).unwrap();
    let log = std::fs::read_to_string(c.root.path().join(format!("worker-{cut}.log"))).unwrap();
    assert!(
        log.contains("registering again"),
        "the cut-off worker did not notice it was fenced: {log}"
    );
    assert!(
        log.contains("refused this task's result"),
        "the late result was not refused: {log}"
    );
    assert_eq!(j.world_size, 2, "the rejoined worker was not taken back");
    assert!(j.membership_epoch >= 3, "{}", j.membership_epoch);
    let a = ari(&assignments(&base), &assignments(&j));
    assert!(a >= 0.95, "ARI {a} against the undisturbed run");
    eprintln!(
        "partition: lease expired after {fenced:?}, survivor training again after {progressing:?}; \
         link back after {:?}, worker registered again {registered:?} later; ARI {a:.4}",
        healed.duration_since(t)
    );
}

/// With a 3-member etcd, SIGKILL of the member that leads it mid-job changes nothing
/// visible: no worker is lost (the membership epoch stays), the job completes once, and the
/// workers' leases live on.
#[test]
fn an_etcd_member_lost_mid_job_changes_nothing_visible() {
    let Some(mut etcd) = cluster_or_skip("etcd member loss", 3) else {
        return;
    };
    // the default retries (6: about 3 s of backoff) outlast the leader election
    let mut c =
        TestCluster::with_meta(|rt| Arc::new(rt.block_on(etcd.store(Duration::from_secs(2), 6))));
    let ds = c.dataset("people", 1500);
    c.add_process_worker();
    c.add_process_worker();
    c.wait_workers_exactly(2);
    let id = c.submit(&long_spec(&c, "member-loss", &ds));
    training_on_two(&c, &id);
    let before = c.get(&id);
    let leader = c.rt.block_on(etcd.leader());
    etcd.kill(leader);
    let t = Instant::now();
    let next = c.rt.block_on(etcd.leader());
    let elected = t.elapsed();
    assert_ne!(next, leader);
    let j = c.wait_done(&id, MINUTES).unwrap();
    assert_eq!(
        j.membership_epoch, before.membership_epoch,
        "the membership changed: {}",
        j.message
    );
    assert_eq!(j.world_size, 2);
    assert_eq!(c.rt.block_on(c.meta.list("workers/")).unwrap().len(), 2);
    assert_eq!(c.rt.block_on(c.meta.list("jobs/")).unwrap().len(), 1);
    assert_eq!(assignments(&j).len(), 1500);
    eprintln!(
        "etcd leader (member {leader} of 3) killed mid-training: member {next} leads after {elected:?}; job completed with the membership unchanged"
    );
}

/// The whole cluster as processes on a real etcd and a real S3 endpoint (the dataset and the
/// runs in a bucket): a worker that dies at its first EMBED task and a coordinator that
/// crashes in the middle of the job's commit (before its second write) lose nothing — a
/// coordinator started after it resumes the job, which is committed exactly once, with
/// clusters equal to an undisturbed run's, and no half-written run is left in the bucket.
#[test]
fn a_job_on_s3_survives_a_lost_worker_and_a_coordinator_crash_in_its_commit() {
    use seqclust_proto::v1;
    use seqclust_proto::v1::job_service_client::JobServiceClient;
    use seqclust_tests::s3::{ACCESS_KEY, BUCKET, LocalS3, SECRET_KEY};
    use seqclust_tests::services::{Proc, free_port, wait_until, write_config};
    use seqclust_tests::{make_dataset, runtime, small_spec};

    let Some(etcd) = etcd_or_skip("s3 faults") else {
        return;
    };
    let rt = runtime();
    let s3 = rt.block_on(LocalS3::start());
    let dir = tempfile::tempdir().unwrap();
    // the dataset is written straight into the bucket's directory: s3s-fs serves files
    let bucket_dir = s3.dir.path().join(BUCKET);
    make_dataset(&rt, &bucket_dir.join("data"), "people", 1500);
    let root = format!("s3://{BUCKET}/data");
    let grpc = free_port();
    let cfg = write_config(dir.path(), grpc, &etcd.endpoint(), "s3-faults");
    let aws = [
        ("AWS_ACCESS_KEY_ID", ACCESS_KEY),
        ("AWS_SECRET_ACCESS_KEY", SECRET_KEY),
        ("AWS_REGION", "us-east-1"),
        ("AWS_ENDPOINT", s3.endpoint.as_str()),
        ("AWS_ALLOW_HTTP", "true"),
    ];
    let log = |n: &str| dir.path().join(format!("{n}.log"));
    let coordinator = |name: &str, env: &[(&str, &str)]| {
        let env: Vec<(&str, &str)> = aws.iter().chain(env).copied().collect();
        Proc::start_with_env(
            &["coordinator", "--config", &cfg, "--candidate", name],
            &log(&format!("coordinator-{name}")),
            &env,
        )
    };
    let worker = |name: &str, env: &[(&str, &str)]| {
        let env: Vec<(&str, &str)> = aws.iter().chain(env).copied().collect();
        Proc::start_with_env(
            &["worker", "--config", &cfg, "--name", name],
            &log(&format!("worker-{name}")),
            &env,
        )
    };
    let url = format!("http://127.0.0.1:{grpc}");
    let client = || {
        rt.block_on(async {
            JobServiceClient::new(
                tonic::transport::Endpoint::from_shared(url.clone())
                    .unwrap()
                    .connect_lazy(),
            )
        })
    };
    let get = |id: &str| -> Option<v1::Job> {
        rt.block_on(client().get_job(v1::GetJobRequest { id: id.into() }))
            .ok()
            .map(|r| r.into_inner())
    };
    let submit = |name: &str| -> String {
        let mut spec = small_spec(&root, name, "people", 2);
        // every registered worker takes part (the one that dies too)
        spec.resources.min_workers = 2;
        spec.resources.max_workers = 0;
        let mut c = client();
        let mut tries = 0;
        loop {
            match rt.block_on(c.submit_job(v1::SubmitJobRequest {
                spec: Some((&spec).into()),
                idempotency_key: format!("s3-{name}"),
            })) {
                Ok(r) => return r.into_inner().job.unwrap().id,
                Err(e) if tries < 100 => {
                    tries += 1;
                    eprintln!("submit: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("submit {name}: {e}"),
            }
        }
    };
    let succeeded = |id: &str| -> v1::Job {
        let mut last = None;
        wait_until("the job to succeed", Duration::from_secs(300), || {
            last = get(id);
            last.as_ref().is_some_and(|j| {
                assert_ne!(phase_of(j).unwrap(), Phase::Failed, "{}", j.error);
                phase_of(j).unwrap() == Phase::Succeeded
            })
        });
        last.unwrap()
    };
    // s3://seqclust/data/runs/ID is the file under the bucket's directory
    let local = |j: &v1::Job| {
        let mut j = j.clone();
        let key = j.run_uri.strip_prefix(&format!("s3://{BUCKET}/")).unwrap();
        j.run_uri = bucket_dir.join(key).display().to_string();
        assignments(&j)
    };

    let mut a = coordinator("a", &[]);
    let _w0 = worker("w0", &[]);
    let _w1 = worker("w1", &[]);
    let base = succeeded(&submit("undisturbed"));
    let want = local(&base);
    assert_eq!(want.len(), 1500);
    // the next coordinator crashes before the second write of its commit; one worker dies
    // at its first EMBED task
    assert!(a.terminate(Duration::from_secs(20)).success());
    let mut b = coordinator("b", &[("SEQCLUST_FAULT_COMMIT", "2")]);
    let _w2 = worker("w2", &[("SEQCLUST_FAULT_TASK", "embed")]);
    wait_until("w2 to register", Duration::from_secs(60), || {
        std::fs::read_to_string(log("worker-w2")).is_ok_and(|l| l.contains("registered"))
    });
    let id = submit("disturbed");
    wait_until(
        "the coordinator to crash in the commit",
        Duration::from_secs(300),
        || b.0.try_wait().unwrap().is_some(),
    );
    let crashed = std::fs::read_to_string(log("coordinator-b")).unwrap();
    assert!(
        crashed.contains("aborting before commit write 2"),
        "{crashed}"
    );
    let _c = coordinator("c", &[]);
    let j = succeeded(&id);
    let score = ari(&want, &local(&j));
    assert!(score >= 0.95, "ARI {score} against the undisturbed run");
    let died = std::fs::read_to_string(log("worker-w2")).unwrap();
    assert!(died.contains("SEQCLUST_FAULT_TASK"), "{died}");
    // two jobs, two committed runs, nothing half-written
    let bucket = seqclust_data::Location::from_store(
        s3.store(),
        object_store::path::Path::from("data"),
        root.clone(),
    );
    let runs = rt.block_on(seqclust_artifacts::list(&bucket)).unwrap();
    let committed: Vec<&str> = runs
        .iter()
        .filter(|r| r.manifest.is_some())
        .map(|r| r.id.as_str())
        .collect();
    assert_eq!(runs.len(), 2, "{runs:?}");
    assert_eq!(committed, [base.id.as_str(), id.as_str()]);
    eprintln!(
        "on S3: a lost worker and a coordinator crash in the commit; the job committed once, ARI {score:.4}"
    );
}
