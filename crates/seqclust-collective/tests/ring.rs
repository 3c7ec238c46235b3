//! N ranks on threads over loopback TCP, against serially computed results; and what happens
//! when a peer dies, falls silent or disagrees.
#![allow(clippy::unwrap_used)] // tests fail loudly on any error

use std::net::TcpListener;
use std::time::{Duration, Instant};

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use seqclust_collective::{
    Collective, Error, Local, Ring, RingConfig, SparseRows, all_gather_rows,
};

/// Forms a group of `n` ranks (each formed on its own thread, as separate processes would).
fn group(n: usize, cfg: &RingConfig) -> Vec<Ring> {
    let listeners: Vec<TcpListener> = (0..n)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let handles: Vec<_> = listeners
        .into_iter()
        .enumerate()
        .map(|(r, l)| {
            let (addrs, cfg) = (addrs.clone(), cfg.clone());
            std::thread::spawn(move || Ring::connect(r, &addrs, l, cfg).unwrap())
        })
        .collect();
    handles.into_iter().map(|h| h.join().unwrap()).collect()
}

/// Runs `f` on every rank concurrently and returns the results by rank.
fn each<T: Send>(ranks: Vec<Ring>, f: impl Fn(&mut Ring) -> T + Sync) -> Vec<(Ring, T)> {
    std::thread::scope(|s| {
        let hs: Vec<_> = ranks
            .into_iter()
            .map(|mut r| {
                let f = &f;
                s.spawn(move || {
                    let out = f(&mut r);
                    (r, out)
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    })
}

fn small_buckets() -> RingConfig {
    RingConfig {
        bucket_floats: 7,
        timeout: Duration::from_secs(20),
        ..RingConfig::default()
    }
}

/// The same settings with the data over shared memory and over TCP.
fn both_transports(cfg: RingConfig) -> [RingConfig; 2] {
    [
        RingConfig {
            shared_memory: true,
            ..cfg.clone()
        },
        RingConfig {
            shared_memory: false,
            ..cfg
        },
    ]
}

#[test]
fn all_reduce_matches_the_serial_sum() {
    let mut rng = ChaCha8Rng::seed_from_u64(1);
    for (n, cfg) in (1..=5).flat_map(|n| both_transports(small_buckets()).map(|c| (n, c))) {
        if n > 1 {
            // same-host links use shared memory unless told not to (or /dev/shm is full)
            let links = group(n, &cfg)[0].shared_memory_links();
            if !cfg.shared_memory {
                assert_eq!(links, (false, false));
            } else if links != (true, true) {
                eprintln!("no shared memory here: the shared-memory path is not tested");
            }
        }
        for len in [0, 1, 3, n, 50, 1000 + n, (1 << 18) + 5] {
            let inputs: Vec<Vec<f32>> = (0..n)
                .map(|_| (0..len).map(|_| rng.random_range(-1.0f32..1.0)).collect())
                .collect();
            let want: Vec<f64> = (0..len)
                .map(|i| inputs.iter().map(|v| f64::from(v[i])).sum())
                .collect();
            let out = each(group(n, &cfg), |r| {
                let mut buf = inputs[r.rank()].clone();
                r.all_reduce_sum(&mut buf).unwrap();
                buf
            });
            for (_, got) in &out {
                // every rank holds the same bits, within f32 rounding of the exact sum
                assert_eq!(got, &out[0].1, "n {n} len {len}: ranks differ");
                for (g, w) in got.iter().zip(&want) {
                    assert!(
                        (f64::from(*g) - w).abs() < 1e-5,
                        "n {n} len {len}: {g} vs {w}"
                    );
                }
            }
        }
    }
}

#[test]
fn repeated_calls_barrier_and_default_buckets() {
    for cfg in both_transports(RingConfig::default()) {
        repeated_calls(&cfg);
    }
}

fn repeated_calls(cfg: &RingConfig) {
    let out = each(group(3, cfg), |r| {
        let mut last = Vec::new();
        for round in 0..5 {
            let mut buf = vec![(r.rank() + round) as f32; 300_001];
            r.all_reduce_sum(&mut buf).unwrap();
            r.barrier().unwrap();
            last = buf;
        }
        last
    });
    // round 4: (0 + 4) + (1 + 4) + (2 + 4)
    for (_, v) in out {
        assert!(v.iter().all(|&x| x == 15.0));
    }
}

#[test]
fn all_gather_and_sparse_rows() {
    for (n, cfg) in (1..=4).flat_map(|n| both_transports(small_buckets()).map(|c| (n, c))) {
        let out = each(group(n, &cfg), |r| {
            let me = r.rank();
            // rank r sends r·1000 bytes (rank 0 an empty message), rank 3 more than a slot
            let size = if me == 3 { 3 << 20 } else { me * 1000 };
            let msg: Vec<u8> = (0..size).map(|i| (i % 251) as u8 ^ me as u8).collect();
            let all = r.all_gather(&msg).unwrap();
            let rows = SparseRows {
                dim: 2,
                ids: vec![me as u32, 100],
                rows: vec![1.0, 2.0, me as f32, 1.0],
            };
            let summed = all_gather_rows(r, &rows).unwrap();
            (all, summed)
        });
        for (_, (all, summed)) in &out {
            assert_eq!(all.len(), n);
            for (from, m) in all.iter().enumerate() {
                assert_eq!(m.len(), if from == 3 { 3 << 20 } else { from * 1000 });
                assert!(
                    m.iter()
                        .enumerate()
                        .all(|(i, &b)| b == (i % 251) as u8 ^ from as u8)
                );
            }
            let mut ids: Vec<u32> = (0..n as u32).collect();
            ids.push(100);
            assert_eq!(summed.ids, ids);
            let tri = (0..n).sum::<usize>() as f32;
            assert_eq!(&summed.rows[n * 2..], &[tri, n as f32]);
            assert_eq!(summed, &out[0].1.1);
        }
    }
}

#[test]
fn broadcast_from_every_root() {
    for cfg in both_transports(small_buckets()) {
        broadcast_with(&cfg);
    }
    let mut l = Local;
    let mut d = b"x".to_vec();
    l.broadcast(&mut d, 0).unwrap();
    assert!(l.broadcast(&mut d, 1).is_err());
}

fn broadcast_with(cfg: &RingConfig) {
    let n = 4;
    let mut ranks = group(n, cfg);
    for root in 0..n {
        let out = each(ranks, |r| {
            let mut data = if r.rank() == root {
                format!("from {root}").into_bytes()
            } else {
                b"stale".to_vec()
            };
            r.broadcast(&mut data, root).unwrap();
            data
        });
        ranks = out
            .into_iter()
            .map(|(r, d)| {
                assert_eq!(d, format!("from {root}").into_bytes());
                r
            })
            .collect();
    }
}

#[test]
fn a_dead_peer_fails_the_call_quickly_and_poisons_the_group() {
    for cfg in both_transports(RingConfig {
        timeout: Duration::from_secs(30),
        ..RingConfig::default()
    }) {
        dead_peer(&cfg);
    }
}

fn dead_peer(cfg: &RingConfig) {
    let mut ranks = group(3, cfg);
    drop(ranks.pop()); // rank 2 dies: its sockets close
    let t = Instant::now();
    let out = each(ranks, |r| {
        let mut buf = vec![1.0f32; 1 << 20];
        let first = r.all_reduce_sum(&mut buf);
        let second = r.all_reduce_sum(&mut buf);
        (first, second)
    });
    // well before the 30 s deadline: a closed link is noticed at once
    assert!(t.elapsed() < Duration::from_secs(10), "{:?}", t.elapsed());
    for (_, (first, second)) in out {
        let e = first.unwrap_err();
        assert!(e.is_retryable(), "{e}");
        assert!(matches!(second, Err(Error::Poisoned(_))));
    }
}

#[test]
fn a_silent_peer_fails_the_call_at_the_deadline() {
    for cfg in both_transports(RingConfig {
        timeout: Duration::from_millis(400),
        ..RingConfig::default()
    }) {
        silent_peer(&cfg);
    }
}

fn silent_peer(cfg: &RingConfig) {
    let mut ranks = group(3, cfg);
    let silent = ranks.pop(); // alive, never calls
    let t = Instant::now();
    let out = each(ranks, |r| r.all_reduce_sum(&mut [1.0; 10]));
    assert!(t.elapsed() < Duration::from_secs(5));
    for (_, res) in out {
        assert!(res.unwrap_err().is_retryable());
    }
    drop(silent);
}

#[test]
fn ranks_that_disagree_get_a_mismatch_not_mixed_data() {
    let out = each(group(2, &small_buckets()), |r| {
        let mut buf = vec![1.0f32; 10 + r.rank()];
        r.all_reduce_sum(&mut buf)
    });
    for (_, res) in out {
        let e = res.unwrap_err();
        assert!(matches!(e, Error::Mismatch { .. }), "{e}");
        assert!(!e.is_retryable());
    }
}

#[test]
fn a_stale_epoch_is_turned_away() {
    let listeners: Vec<TcpListener> = (0..2)
        .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let mut it = listeners.into_iter();
    let (l0, l1) = (it.next().unwrap(), it.next().unwrap());
    let cfg = |epoch| RingConfig {
        epoch,
        timeout: Duration::from_millis(500),
        ..RingConfig::default()
    };
    let a0 = addrs.clone();
    let h = std::thread::spawn(move || Ring::connect(0, &a0, l0, cfg(7)));
    let r1 = Ring::connect(1, &addrs, l1, cfg(8));
    let r0 = h.join().unwrap();
    assert!(r0.is_err() && r1.is_err());
    assert!(r0.unwrap_err().is_retryable());
}
