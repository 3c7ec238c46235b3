//! Worker processes killed with SIGKILL while a job runs.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::time::Duration;

use seqclust_job::Phase;
use seqclust_proto::convert::phase_of;
use seqclust_tests::TestCluster;

#[test]
fn a_worker_killed_during_training_does_not_lose_the_job() {
    let mut c = TestCluster::new();
    let ds = c.dataset("people", 1500);
    let a = c.add_process_worker();
    c.add_process_worker();
    let mut spec = c.spec("loss", &ds, 2);
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
