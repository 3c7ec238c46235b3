//! Worker processes killed with SIGKILL, or stopped with SIGTERM, while a job trains.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use seqclust_job::Phase;
use seqclust_proto::convert::phase_of;
use seqclust_tests::TestCluster;

/// Two process workers training a job (30 epochs, checkpoints every 10 steps) that may go on
/// with one: the cluster, the first worker's index and the job id, once training is under way.
fn training_on_two_process_workers(name: &str) -> (TestCluster, usize, String) {
    let mut c = TestCluster::new();
    let ds = c.dataset("people", 1500);
    let a = c.add_process_worker();
    c.add_process_worker();
    let mut spec = c.spec(name, &ds, 2);
    // the job may go on with one worker once the other is gone
    spec.resources.min_workers = 1;
    spec.resources.max_workers = 2;
    spec.encoder.dim = 64;
    spec.train.epochs = 30;
    spec.train.checkpoint_every = 10;
    c.wait_workers(2);
    let id = c.submit(&spec);
    c.wait_for(&id, Duration::from_secs(240), |j| {
        phase_of(j).ok() == Some(Phase::Train) && j.world_size == 2 && j.phase_progress > 0.1
    })
    .unwrap();
    (c, a, id)
}

#[test]
fn a_worker_killed_during_training_does_not_lose_the_job() {
    let (mut c, a, id) = training_on_two_process_workers("loss");
    let t = std::time::Instant::now();
    c.kill_worker(a);
    let j = c
        .wait_for(&id, Duration::from_secs(60), |j| j.world_size == 1)
        .unwrap();
    let noticed = t.elapsed();
    assert!(
        noticed < Duration::from_secs(4),
        "loss noticed after {noticed:?}"
    );
    assert!(j.membership_epoch >= 2);
    let j = c.wait_done(&id, Duration::from_secs(240)).unwrap();
    assert_eq!(j.world_size, 1);
    // the survivor resumed from the last checkpoint rather than from scratch
    let log = std::fs::read_to_string(c.root.path().join("worker-1.log")).unwrap();
    assert!(log.contains("resuming from step"), "{log}");
    eprintln!("worker loss noticed in {noticed:?}; job finished on the survivor");
}

#[test]
fn a_worker_stopped_with_sigterm_during_training_hands_back_its_work_and_leaves() {
    let (mut c, a, id) = training_on_two_process_workers("leave");
    // Kubernetes scales the pool down: the worker stops at its next step and exits cleanly
    let (status, took) = c.terminate_worker(a);
    assert!(status.success(), "the worker exited with {status}");
    assert!(took < Duration::from_secs(10), "SIGTERM took {took:?}");
    let j = c
        .wait_for(&id, Duration::from_secs(60), |j| j.world_size == 1)
        .unwrap();
    assert!(j.membership_epoch >= 2);
    let j = c.wait_done(&id, Duration::from_secs(240)).unwrap();
    assert_eq!(j.world_size, 1);
    let log = std::fs::read_to_string(c.root.path().join("worker-0.log")).unwrap();
    assert!(log.contains("shutting down"), "{log}");
    let survivor = std::fs::read_to_string(c.root.path().join("worker-1.log")).unwrap();
    assert!(survivor.contains("resuming from step"), "{survivor}");
    eprintln!("worker left {took:?} after SIGTERM; the job finished on the survivor");
}

/// A worker that dies (aborts, as under `kill -9`) when its first EMBED task, its third
/// k-means PARTIALS task or its first ASSIGN task arrives: the coordinator notices, the
/// survivor takes the lost shards, the round runs again, and the clusters equal those of an
/// undisturbed run (ARI ≥ 0.95).
#[test]
fn a_worker_lost_in_embed_kmeans_or_assign_leaves_the_clusters_unchanged() {
    use seqclust_tests::{ari, assignments};
    let mut c = TestCluster::new();
    let ds = c.dataset("people", 1500);
    c.add_process_worker();
    c.wait_workers(1);
    let t = std::time::Instant::now();
    let base = c
        .wait_done(
            &c.submit(&c.spec("undisturbed", &ds, 1)),
            Duration::from_secs(240),
        )
        .unwrap();
    let undisturbed = t.elapsed();
    let want = assignments(&base);
    for fault in ["embed", "partials:3", "assign"] {
        let i = c.add_process_worker_with_env(&[("SEQCLUST_FAULT_TASK", fault)]);
        c.wait_workers_exactly(2);
        let mut spec = c.spec(&format!("lost-{}", fault.replace(':', "-")), &ds, 2);
        spec.resources.min_workers = 1;
        spec.resources.max_workers = 2;
        let t = std::time::Instant::now();
        let id = c.submit(&spec);
        c.wait_for(&id, Duration::from_secs(240), |j| j.world_size == 1)
            .unwrap();
        let seen = now_ms();
        let j = c.wait_done(&id, Duration::from_secs(240)).unwrap();
        let (took, done) = (t.elapsed(), now_ms());
        let log = std::fs::read_to_string(c.root.path().join(format!("worker-{i}.log"))).unwrap();
        let died: u128 = log
            .split("(unix ms ")
            .nth(1)
            .and_then(|r| r.split(')').next())
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{fault}: the worker did not fail: {log}"));
        assert_eq!(j.world_size, 1, "{fault}");
        assert!(j.membership_epoch >= 2, "{fault}: {}", j.membership_epoch);
        let a = ari(&want, &assignments(&j));
        assert!(a >= 0.95, "{fault}: ARI {a} against the undisturbed run");
        eprintln!(
            "worker lost at {fault}: membership changed within {} ms, job done {} ms after the loss, in {took:?} (undisturbed {undisturbed:?}); ARI {a:.4}",
            seen.saturating_sub(died),
            done.saturating_sub(died)
        );
        c.wait_workers_exactly(1);
    }
}

fn now_ms() -> u128 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .unwrap()
        .as_millis()
}

/// Elastic growth: a job training on one worker (bounds 1..2) takes a second worker that
/// starts mid-training at the group's next checkpoint — the group stops there, is formed
/// again with both, and resumes from that checkpoint (no step is trained twice) — and the
/// clusters equal those of a run trained on one worker throughout.
#[test]
fn a_worker_started_mid_training_joins_at_the_next_checkpoint() {
    use seqclust_tests::{ari, assignments};
    let mut c = TestCluster::new();
    let ds = c.dataset("people", 1500);
    c.add_process_worker();
    c.wait_workers(1);
    let mut spec = c.spec("grow", &ds, 1);
    spec.resources.max_workers = 2;
    spec.encoder.dim = 64;
    spec.train.epochs = 20;
    spec.train.checkpoint_every = 10;
    let base = {
        let mut s = spec.clone();
        s.name = "one-worker".into();
        s.resources.max_workers = 1;
        c.wait_done(&c.submit(&s), Duration::from_secs(240))
            .unwrap()
    };
    let id = c.submit(&spec);
    c.wait_for(&id, Duration::from_secs(240), |j| {
        phase_of(j).ok() == Some(Phase::Train) && j.phase_progress > 0.1
    })
    .unwrap();
    let started = std::time::Instant::now();
    let joiner = c.add_process_worker();
    c.wait_workers_exactly(2);
    let registered = started.elapsed();
    let j = c
        .wait_for(&id, Duration::from_secs(120), |j| {
            phase_of(j).ok() == Some(Phase::Train) && j.world_size == 2
        })
        .unwrap();
    let joined = started.elapsed();
    assert!(j.membership_epoch >= 2);
    let j = c
        .wait_for(&id, Duration::from_secs(60), |j| {
            j.world_size == 2 && j.message.starts_with("epoch ")
        })
        .unwrap();
    let training = started.elapsed();
    let done = c.wait_done(&id, Duration::from_secs(240)).unwrap();
    assert_eq!(done.world_size, 2, "{}", j.message);
    // both resumed from the checkpoint the group stopped at, not from scratch
    let first = std::fs::read_to_string(c.root.path().join("worker-0.log")).unwrap();
    assert!(first.contains("stops at its next checkpoint"), "{first}");
    let second =
        std::fs::read_to_string(c.root.path().join(format!("worker-{joiner}.log"))).unwrap();
    let step: u64 = second
        .split("resuming from step ")
        .nth(1)
        .and_then(|r| r.split(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("the joined worker did not resume: {second}"));
    assert!(
        step > 0 && step.is_multiple_of(10),
        "resumed at step {step}"
    );
    let a = ari(&assignments(&base), &assignments(&done));
    assert!(a >= 0.95, "ARI {a} against the one-worker run");
    eprintln!(
        "worker joined mid-training: registered after {registered:?}, in the group after {joined:?}, training again after {training:?} (resumed at step {step}); ARI {a:.4} against one worker throughout"
    );
}

/// Elastic growth in the clustering phases: a worker that starts while k-means runs is
/// given shards at the next k-means step (it embeds them; the others keep theirs and the
/// k-means state carries over), and the clusters equal those of one worker throughout.
#[test]
fn a_worker_started_during_kmeans_takes_shards_at_the_next_step() {
    use seqclust_tests::{ari, assignments};
    let mut c = TestCluster::new();
    let ds = c.dataset("people", 1500);
    c.add_process_worker();
    c.wait_workers(1);
    let mut spec = c.spec("grow-kmeans", &ds, 1);
    spec.resources.max_workers = 2;
    // thousands of Lloyd iterations, without early stopping, so that the join lands mid-way
    spec.kmeans.max_iter = 5000;
    spec.kmeans.tol = 0.0;
    spec.kmeans.min_improvement = 0.0;
    let base = {
        let mut s = spec.clone();
        s.name = "one-worker".into();
        s.resources.max_workers = 1;
        c.wait_done(&c.submit(&s), Duration::from_secs(240))
            .unwrap()
    };
    let id = c.submit(&spec);
    c.wait_for(&id, Duration::from_secs(240), |j| {
        phase_of(j).ok() == Some(Phase::Kmeans) && j.phase_progress > 0.05
    })
    .unwrap();
    let started = std::time::Instant::now();
    let joiner = c.add_process_worker();
    c.wait_workers_exactly(2);
    let registered = started.elapsed();
    let j = c
        .wait_for(&id, Duration::from_secs(120), |j| j.world_size == 2)
        .unwrap();
    let joined = started.elapsed();
    let at = phase_of(&j).unwrap();
    let done = c.wait_done(&id, Duration::from_secs(240)).unwrap();
    assert_eq!(done.world_size, 2);
    let log = std::fs::read_to_string(c.root.path().join(format!("worker-{joiner}.log"))).unwrap();
    assert!(
        log.contains("embedded"),
        "the joined worker embedded nothing: {log}"
    );
    // the first worker kept some of its shards rather than embedding everything again
    let first = std::fs::read_to_string(c.root.path().join("worker-0.log")).unwrap();
    let last_embed = first.lines().rfind(|l| l.contains("embedded")).unwrap();
    assert!(!last_embed.contains("kept=0"), "{last_embed}");
    let a = ari(&assignments(&base), &assignments(&done));
    assert!(a >= 0.95, "ARI {a} against the one-worker run");
    eprintln!(
        "worker joined during k-means: registered after {registered:?}, in the group after {joined:?} (in {at:?}); ARI {a:.4} against one worker throughout"
    );
}
