//! Data-parallel equivalence: two ranks, each with half of a batch, exchange gradients over
//! the ring and end with the gradient of the whole batch on one process — and with identical
//! bits on both ranks.
#![allow(clippy::unwrap_used)] // tests fail loudly on any error

use std::net::TcpListener;

use seqclust_collective::{Collective, Local, Ring, RingConfig};
use seqclust_model::{
    EncoderConfig, EncoderKind, Gradients, ObjectiveConfig, Pooling, SeqInput, SeqModel, StepCtx,
    Vocab, step,
};
use seqclust_trainer::{average_gradients, shard_of};

const VOCAB: Vocab = Vocab {
    items: 30,
    actions: 6,
    categories: 5,
};

struct Data {
    items: Vec<Vec<u32>>,
    actions: Vec<u16>,
    cats: Vec<u32>,
    ts: Vec<i64>,
}

fn data(users: usize) -> Data {
    // equal lengths: every rank's share holds the same number of targets
    Data {
        items: (0..users)
            .map(|u| (0..6).map(|k| 2 + ((u * 7 + k * 5) % 27) as u32).collect())
            .collect(),
        actions: vec![1; 6],
        cats: vec![2; 6],
        ts: (0..6).map(|k| 1_600_000_000_000 + k * 60_000).collect(),
    }
}

fn seqs(d: &Data) -> Vec<SeqInput<'_>> {
    d.items
        .iter()
        .map(|it| SeqInput {
            items: it,
            actions: &d.actions,
            categories: &d.cats,
            timestamps: &d.ts,
        })
        .collect()
}

fn grads(model: &SeqModel, batch: &[SeqInput<'_>]) -> Gradients {
    let obj = ObjectiveConfig::default(); // full softmax at every position
    let cx = StepCtx {
        objective: &obj,
        popularity: None,
        seed: 3,
        step: 1,
        train: false,
        intents: None,
        teacher: None,
    };
    step(model, batch, &cx).unwrap()
}

fn close(a: &[f32], b: &[f32], what: &str) {
    assert_eq!(a.len(), b.len(), "{what}");
    for (x, y) in a.iter().zip(b) {
        assert!((x - y).abs() <= 1e-6 + 1e-4 * y.abs(), "{what}: {x} vs {y}");
    }
}

#[test]
fn two_ranks_reproduce_the_whole_batch_gradient() {
    let d = data(16);
    let all = seqs(&d);
    for kind in [EncoderKind::Gru, EncoderKind::Transformer] {
        let cfg = EncoderConfig {
            kind,
            dim: 8,
            layers: 1,
            heads: 2,
            dropout: 0.0,
            max_len: 6,
            pooling: Pooling::Last,
            ..Default::default()
        };
        let whole = grads(&SeqModel::new(&cfg, VOCAB, 4).unwrap(), &all);
        let listeners: Vec<_> = (0..2)
            .map(|_| TcpListener::bind("127.0.0.1:0").unwrap())
            .collect();
        let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
        let per_rank: Vec<Gradients> = std::thread::scope(|s| {
            let hs: Vec<_> = listeners
                .into_iter()
                .enumerate()
                .map(|(rank, l)| {
                    let (addrs, all, cfg) = (&addrs, &all, &cfg);
                    s.spawn(move || {
                        let mut ring =
                            Ring::connect(rank, addrs, l, RingConfig::default()).unwrap();
                        // the same seed gives every rank the same initial replica
                        let model = SeqModel::new(cfg, VOCAB, 4).unwrap();
                        let mut g = grads(&model, &all[shard_of(all.len(), rank, 2)]);
                        average_gradients(&mut ring, &mut g).unwrap();
                        g
                    })
                })
                .collect();
            hs.into_iter().map(|h| h.join().unwrap()).collect()
        });
        let (a, b) = (&per_rank[0], &per_rank[1]);
        assert_eq!(a.dense, b.dense, "{kind:?}: ranks differ");
        assert_eq!((&a.items.ids, &a.items.rows), (&b.items.ids, &b.items.rows));
        assert_eq!(a.sequences, 16);
        close(&a.dense, &whole.dense, "dense");
        assert_eq!(a.items.ids, whole.items.ids);
        close(&a.items.rows, &whole.items.rows, "item rows");
        assert!((a.loss - whole.loss).abs() < 1e-5);
    }
}

#[test]
fn a_world_of_one_leaves_gradients_alone() {
    let d = data(4);
    let cfg = EncoderConfig {
        dim: 8,
        max_len: 6,
        ..Default::default()
    };
    let model = SeqModel::new(&cfg, VOCAB, 1).unwrap();
    let mut g = grads(&model, &seqs(&d));
    let before = (g.dense.clone(), g.items.rows.clone());
    average_gradients(&mut Local, &mut g).unwrap();
    assert_eq!(Local.world_size(), 1);
    assert_eq!((g.dense, g.items.rows), before);
}
