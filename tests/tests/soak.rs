//! The bounded soak: randomised faults while jobs run — SIGKILL or SIGTERM of a worker, a
//! network partition of a worker's host, a restart of the coordinator — on three hosts of
//! their own (network namespaces), a real etcd and the local store; then every job must be
//! committed exactly once with clusters equal to an undisturbed run's.
//!
//! Not in the ordinary suite (minutes): run it with
//! `cargo test --release --workspace --test cluster -- --ignored --nocapture soak`
//! (`SEQCLUST_SOAK_TRIALS`, default 50; `SEQCLUST_SOAK_SEED`, default 1). It needs root for
//! the namespaces and etcd on PATH.
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

use std::collections::{BTreeMap, HashSet};
use std::sync::Arc;
use std::time::{Duration, Instant};

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};

use seqclust_job::{JobSpec, Phase};
use seqclust_meta::conformance::etcd_server::etcd_or_skip;
use seqclust_proto::convert::phase_of;
use seqclust_tests::netns::net_or_skip;
use seqclust_tests::{TestCluster, ari, assignments};

fn env_or<T: std::str::FromStr>(name: &str, default: T) -> T {
    std::env::var(name)
        .ok()
        .and_then(|v| v.parse().ok())
        .unwrap_or(default)
}

#[test]
#[ignore = "soak, minutes: cargo test --release --workspace --test cluster -- --ignored --nocapture soak"]
fn randomised_faults_lose_or_duplicate_no_committed_run() {
    let trials: usize = env_or("SEQCLUST_SOAK_TRIALS", 50);
    let seed: u64 = env_or("SEQCLUST_SOAK_SEED", 1);
    let Some(net) = net_or_skip("soak", 3) else {
        return;
    };
    let Some(etcd) = etcd_or_skip("soak") else {
        return;
    };
    let mut c = TestCluster::listening("0.0.0.0:0", |rt| {
        Arc::new(rt.block_on(etcd.store(Duration::from_secs(5), 3)))
    });
    let ds = c.dataset("people", 2000);
    let mut on_host: Vec<usize> = (0..3).map(|h| c.add_process_worker_on(&net, h)).collect();
    c.wait_workers_exactly(3);
    let spec = |c: &TestCluster, name: &str| -> JobSpec {
        let mut s = c.spec(name, &ds, 1);
        s.resources.max_workers = 3;
        s.encoder.dim = 32;
        s.train.epochs = 3;
        s.train.checkpoint_every = 5;
        // a clustering phase long enough to be hit too
        s.kmeans.epochs = 8.0;
        s
    };
    let t = Instant::now();
    let base = c
        .wait_done(
            &c.submit(&spec(&c, "undisturbed")),
            Duration::from_secs(240),
        )
        .unwrap();
    let undisturbed = t.elapsed();
    let want = assignments(&base);
    let mut rng = ChaCha8Rng::seed_from_u64(seed);
    let kinds = ["sigkill", "partition", "sigterm", "coordinator"];
    let mut ids = vec![base.id.clone()];
    let mut took: BTreeMap<&str, Vec<f64>> = BTreeMap::new();
    let mut phases: BTreeMap<String, usize> = BTreeMap::new();
    let mut worst_ari = 1.0f64;
    for trial in 0..trials {
        let kind = kinds[rng.random_range(0..kinds.len())];
        let host = rng.random_range(0..3usize);
        let delay =
            Duration::from_millis(rng.random_range(0..undisturbed.as_millis() as u64 * 6 / 5));
        let cut_for = Duration::from_millis(rng.random_range(1_000..12_000));
        let what = format!("trial {trial}: {kind} of host {host} after {delay:?}");
        let name = format!("trial-{trial}");
        let t = Instant::now();
        let id = c.submit(&spec(&c, &name));
        std::thread::sleep(delay);
        let at = phase_of(&c.get(&id)).map_or("?".into(), |p| p.name().to_string());
        *phases.entry(format!("{kind} in {at}")).or_default() += 1;
        match kind {
            "sigkill" => {
                c.kill_worker(on_host[host]);
                on_host[host] = c.add_process_worker_on(&net, host);
            }
            "sigterm" => {
                c.terminate_worker(on_host[host]);
                on_host[host] = c.add_process_worker_on(&net, host);
            }
            "partition" => {
                net.cut(host);
                std::thread::sleep(cut_for);
                net.heal(host);
            }
            _ => c.restart_coordinator(),
        }
        let j = c
            .wait_done(&id, Duration::from_secs(300))
            .unwrap_or_else(|e| panic!("{what}: {e:#}"));
        let a = ari(&want, &assignments(&j));
        assert!(a >= 0.95, "{what}: ARI {a} against the undisturbed run");
        worst_ari = worst_ari.min(a);
        took.entry(kind)
            .or_default()
            .push(t.elapsed().as_secs_f64());
        eprintln!(
            "{what} (in {at}): done in {:.1} s, ARI {a:.4}",
            t.elapsed().as_secs_f64()
        );
        ids.push(id);
        // the next trial starts with the three hosts' workers registered again
        c.wait_workers_exactly(3);
    }
    // every job is recorded once, succeeded, and has exactly one committed run
    let records = c.rt.block_on(c.meta.list("jobs/")).unwrap();
    assert_eq!(records.len(), ids.len(), "job records");
    for id in &ids {
        assert_eq!(phase_of(&c.get(id)).unwrap(), Phase::Succeeded, "{id}");
    }
    let root = seqclust_data::Location::parse(&c.root_str(), true).unwrap();
    let runs = c.rt.block_on(seqclust_artifacts::list(&root)).unwrap();
    let committed: Vec<_> = runs.iter().filter_map(|r| r.manifest.as_ref()).collect();
    let names: HashSet<&str> = committed.iter().map(|m| m.info.name.as_str()).collect();
    assert_eq!(committed.len(), ids.len(), "committed runs");
    assert_eq!(names.len(), ids.len(), "a job name was committed twice");
    assert_eq!(
        runs.len(),
        ids.len(),
        "uncommitted run directories were left"
    );
    let median = |v: &mut Vec<f64>| {
        v.sort_by(f64::total_cmp);
        v[v.len() / 2]
    };
    eprintln!(
        "soak: {trials} trials (seed {seed}), undisturbed job {:.1} s; 0 lost, 0 duplicated; worst ARI {worst_ari:.4}",
        undisturbed.as_secs_f64()
    );
    for (kind, v) in &mut took {
        eprintln!(
            "  {kind}: {} trials, median job time {:.1} s, max {:.1} s",
            v.len(),
            median(v),
            v.iter().copied().fold(0.0, f64::max)
        );
    }
    eprintln!("  faults by phase: {phases:?}");
}
