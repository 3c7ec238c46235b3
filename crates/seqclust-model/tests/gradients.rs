//! Gradient correctness: every trainable parameter receives a gradient, and the analytic
//! gradients match finite differences on a tiny model.
#![allow(clippy::unwrap_used)] // tests fail loudly on any error

use seqclust_model::{
    EncoderConfig, EncoderKind, Intents, NextItemLoss, ObjectiveConfig, Pooling, SeqInput,
    SeqModel, StepCtx, Teacher, Vocab, Whitened, Whitening, step,
};

struct Data {
    items: Vec<Vec<u32>>,
    actions: Vec<Vec<u16>>,
    cats: Vec<Vec<u32>>,
    ts: Vec<Vec<i64>>,
}

fn data(users: usize, vocab: u32) -> Data {
    let mut d = Data {
        items: vec![],
        actions: vec![],
        cats: vec![],
        ts: vec![],
    };
    for u in 0..users {
        let n = 3 + u % 5;
        d.items.push(
            (0..n)
                .map(|k| 2 + ((u * 7 + k * 3) as u32 % (vocab - 2)))
                .collect(),
        );
        d.actions
            .push((0..n).map(|k| 1 + ((u + k) % 3) as u16).collect());
        d.cats
            .push((0..n).map(|k| 2 + ((u + k) % 4) as u32).collect());
        d.ts.push(
            (0..n)
                .map(|k| 1_600_000_000_000 + (k as i64) * 60_000 * (1 + u as i64))
                .collect(),
        );
    }
    d
}

fn seqs(d: &Data) -> Vec<SeqInput<'_>> {
    (0..d.items.len())
        .map(|i| SeqInput {
            items: &d.items[i],
            actions: &d.actions[i],
            categories: &d.cats[i],
            timestamps: &d.ts[i],
        })
        .collect()
}

const VOCAB: Vocab = Vocab {
    items: 20,
    actions: 6,
    categories: 7,
};

fn tiny(kind: EncoderKind, pooling: Pooling) -> EncoderConfig {
    EncoderConfig {
        kind,
        dim: 8,
        layers: 2,
        heads: 2,
        ff_mult: 2,
        dropout: 0.0,
        max_len: 6,
        pooling,
        ..Default::default()
    }
}

/// A step context with no popularity table.
fn ctx<'a>(
    objective: &'a ObjectiveConfig,
    seed: u64,
    step: u64,
    train: bool,
    intents: Option<&'a Intents>,
) -> StepCtx<'a> {
    StepCtx {
        objective,
        popularity: None,
        seed,
        step,
        train,
        intents,
        teacher: None,
    }
}

/// Every dense parameter of `model` has a non-zero gradient in `dense`.
fn assert_dense_gradients(model: &SeqModel, dense: &[f32], what: &str) {
    let mut off = 0;
    for (name, var) in model.vars().unwrap() {
        let n = var.elem_count();
        let gn: f32 = dense[off..off + n].iter().map(|v| v * v).sum();
        assert!(gn > 0.0, "{what}: {name} gets no gradient");
        off += n;
    }
}

/// Central differences of the loss under `cx` w.r.t. every `stride`-th dense parameter,
/// against the analytic gradient `dense`.
fn assert_dense_matches_differences(
    model: &SeqModel,
    s: &[SeqInput<'_>],
    cx: &StepCtx<'_>,
    dense: &[f32],
    pieces: usize,
    what: &str,
) {
    let w0 = model.dense_values().unwrap();
    let eps = 1e-2f32;
    for idx in (0..w0.len()).step_by((w0.len() / pieces).max(1)) {
        let mut w = w0.clone();
        w[idx] += eps;
        model.set_dense_values(&w).unwrap();
        let up = f64::from(step(model, s, cx).unwrap().loss);
        w[idx] -= 2.0 * eps;
        model.set_dense_values(&w).unwrap();
        let down = f64::from(step(model, s, cx).unwrap().loss);
        model.set_dense_values(&w0).unwrap();
        let num = (up - down) / (2.0 * f64::from(eps));
        let ana = f64::from(dense[idx]);
        assert!(
            (num - ana).abs() <= 2e-3 + 0.05 * ana.abs().max(num.abs()),
            "{what} dense[{idx}]: numeric {num} analytic {ana}"
        );
    }
}

#[test]
fn every_parameter_gets_a_gradient() {
    let d = data(6, VOCAB.items as u32);
    let s = seqs(&d);
    let cases: Vec<(EncoderKind, Pooling, ObjectiveConfig)> = vec![
        (
            EncoderKind::Gru,
            Pooling::Attention,
            ObjectiveConfig {
                contrastive: 0.5,
                ..Default::default()
            },
        ),
        (
            EncoderKind::Lstm,
            Pooling::Mean,
            ObjectiveConfig {
                contrastive: 0.5,
                ..Default::default()
            },
        ),
        (
            EncoderKind::Transformer,
            Pooling::Attention,
            ObjectiveConfig {
                contrastive: 0.5,
                ..Default::default()
            },
        ),
        (
            EncoderKind::Transformer,
            Pooling::Last,
            ObjectiveConfig {
                next_item_loss: NextItemLoss::InBatch,
                ..Default::default()
            },
        ),
        (
            EncoderKind::BiTransformer,
            Pooling::Attention,
            ObjectiveConfig {
                next_item: 0.0,
                cloze: 1.0,
                contrastive: 0.5,
                ..Default::default()
            },
        ),
    ];
    for (kind, pooling, obj) in cases {
        let model = SeqModel::new(&tiny(kind, pooling), VOCAB, 3).unwrap();
        let g = step(&model, &s, &ctx(&obj, 1, 1, true, None)).unwrap();
        assert!(g.loss.is_finite() && g.loss > 0.0);
        assert_dense_gradients(&model, &g.dense, &format!("{kind:?}/{pooling:?}"));
        assert!(
            !g.items.ids.is_empty() && g.items.sq_norm() > 0.0,
            "{kind:?}: item table gets no gradient"
        );
        assert!(!g.items.ids.contains(&0), "padding row must not learn");
    }
}

/// Central differences of the loss w.r.t. a few dense parameters and item rows, against the
/// analytic gradient.
#[test]
fn gradients_match_finite_differences() {
    let d = data(4, VOCAB.items as u32);
    let s = seqs(&d);
    for kind in [
        EncoderKind::Gru,
        EncoderKind::Lstm,
        EncoderKind::Transformer,
    ] {
        let obj = ObjectiveConfig::default();
        let model = SeqModel::new(&tiny(kind, Pooling::Last), VOCAB, 11).unwrap();
        let cx = ctx(&obj, 1, 1, false, None);
        let g = step(&model, &s, &cx).unwrap();
        let loss_at = |model: &SeqModel| step(model, &s, &cx).unwrap().loss as f64;
        let eps = 1e-2f32;
        // a spread of dense parameters
        assert_dense_matches_differences(&model, &s, &cx, &g.dense, 12, &format!("{kind:?}"));
        // item rows (tied input and output embeddings)
        let mut model = model;
        for (k, &row) in g.items.ids.iter().enumerate().take(4) {
            let col = 1;
            let base = model.items.values().to_vec();
            let at = |delta: f32, model: &mut SeqModel| {
                let mut v = base.clone();
                v[row as usize * 8 + col] += delta;
                model.items = seqclust_model::ItemTable::from_values(VOCAB.items, 8, v).unwrap();
                loss_at(model)
            };
            let num = (at(eps, &mut model) - at(-eps, &mut model)) / (2.0 * f64::from(eps));
            model.items = seqclust_model::ItemTable::from_values(VOCAB.items, 8, base).unwrap();
            let ana = f64::from(g.items.rows[k * 8 + col]);
            assert!(
                (num - ana).abs() <= 2e-3 + 0.05 * ana.abs().max(num.abs()),
                "{kind:?} item {row}: numeric {num} analytic {ana}"
            );
        }
    }
}

#[test]
fn training_reduces_the_loss_and_is_deterministic() {
    let d = data(32, VOCAB.items as u32);
    let s = seqs(&d);
    let obj = ObjectiveConfig::default();
    let run = || {
        let mut model =
            SeqModel::new(&tiny(EncoderKind::Transformer, Pooling::Last), VOCAB, 5).unwrap();
        let mut opt = seqclust_model::Optimizer::new(
            &model,
            seqclust_model::AdamParams {
                lr: 0.01,
                ..Default::default()
            },
        )
        .unwrap();
        let mut losses = Vec::new();
        for st in 1..=40 {
            let mut g = step(&model, &s, &ctx(&obj, 9, st, true, None)).unwrap();
            losses.push(g.loss);
            opt.apply(&mut model, &mut g, 0.01, Some(5.0)).unwrap();
        }
        (losses, model.dense_values().unwrap())
    };
    let (l1, w1) = run();
    let (l2, w2) = run();
    assert_eq!(l1, l2, "same seed, same losses");
    assert_eq!(w1, w2, "same seed, same parameters");
    assert!(l1[39] < 0.7 * l1[0], "{} → {}", l1[0], l1[39]);
}

#[test]
fn fused_kernels_match_the_plain_path() {
    // more sequences than one chunk of the fused kernels, and not a multiple of it
    let d = data(21, VOCAB.items as u32);
    let s = seqs(&d);
    for (kind, obj) in [
        (
            EncoderKind::Gru,
            ObjectiveConfig {
                contrastive: 0.5,
                ..Default::default()
            },
        ),
        (EncoderKind::Transformer, ObjectiveConfig::default()),
        (
            EncoderKind::BiTransformer,
            ObjectiveConfig {
                next_item: 0.0,
                cloze: 1.0,
                ..Default::default()
            },
        ),
    ] {
        let cfg = EncoderConfig {
            dropout: 0.0,
            ..tiny(kind, Pooling::Last)
        };
        let fused = SeqModel::new(&cfg, VOCAB, 4).unwrap();
        let mut plain = SeqModel::new(&cfg, VOCAB, 4).unwrap();
        plain.set_fused(false);
        assert!(fused.fused() && !plain.fused());
        let cx = ctx(&obj, 2, 1, true, None);
        let (a, b) = (
            step(&fused, &s, &cx).unwrap(),
            step(&plain, &s, &cx).unwrap(),
        );
        assert!(
            (a.loss - b.loss).abs() < 1e-4,
            "{kind:?}: {} vs {}",
            a.loss,
            b.loss
        );
        for (x, y) in a.dense.iter().zip(&b.dense) {
            assert!(
                (x - y).abs() < 1e-4 + 1e-3 * y.abs(),
                "{kind:?}: dense grad {x} vs {y}"
            );
        }
        assert_eq!(a.items.ids, b.items.ids);
        for (x, y) in a.items.rows.iter().zip(&b.items.rows) {
            assert!(
                (x - y).abs() < 1e-4 + 1e-3 * y.abs(),
                "{kind:?}: item grad {x} vs {y}"
            );
        }
    }
}

#[test]
fn inference_path_matches_the_plain_path() {
    // the fused inference skips saving activations and, with last-position pooling, runs
    // the final block for the last position only; the plain path computes everything
    let d = data(21, VOCAB.items as u32);
    let s = seqs(&d);
    for kind in [
        EncoderKind::Gru,
        EncoderKind::Transformer,
        EncoderKind::BiTransformer,
    ] {
        for (pooling, hour) in [
            (Pooling::Last, false),
            (Pooling::Mean, false),
            (Pooling::Mean, true),
        ] {
            let cfg = EncoderConfig {
                use_hour: hour,
                event_heads: hour,
                ..tiny(kind, pooling)
            };
            let fused = SeqModel::new(&cfg, VOCAB, 4).unwrap();
            let mut plain = SeqModel::new(&cfg, VOCAB, 4).unwrap();
            plain.set_fused(false);
            let input = seqclust_model::BatchInput::encode(&s, cfg.max_len, cfg.time_buckets);
            let (a, b) = (fused.embed(&input).unwrap(), plain.embed(&input).unwrap());
            assert_eq!(a.len(), 21 * cfg.dim);
            assert_eq!(a.len(), b.len());
            for (x, y) in a.iter().zip(&b) {
                assert!(
                    (x - y).abs() < 1e-4 + 1e-4 * y.abs(),
                    "{kind:?} {pooling:?}: {x} vs {y}"
                );
            }
        }
    }
}

fn behaviour(kind: EncoderKind) -> EncoderConfig {
    EncoderConfig {
        use_hour: true,
        event_heads: true,
        normalize: true,
        ..tiny(kind, Pooling::Mean)
    }
}

/// Unit centroids `k × 8` for the clustering losses, optionally with an identity whitening.
fn centroids(k: usize, whiten: bool) -> Intents {
    let c = unit_rows(k);
    Intents {
        whitened: whiten.then(|| Whitened {
            transform: Whitening {
                mean: vec![0.0; 8],
                matrix: (0..64).map(|i| f32::from(u8::from(i % 9 == 0))).collect(),
            },
            centroids: c.clone(),
        }),
        centroids: c,
    }
}

fn unit_rows(k: usize) -> Vec<f32> {
    let mut c: Vec<f32> = (0..k * 8)
        .map(|i| ((i * 37 % 11) as f32 - 5.0) / 5.0)
        .collect();
    for row in c.chunks_mut(8) {
        let n = row.iter().map(|x| x * x).sum::<f32>().sqrt();
        row.iter_mut().for_each(|x| *x /= n);
    }
    c
}

/// The next-event heads, the hour embedding and the clustering losses all train.
#[test]
fn behaviour_objectives_reach_every_parameter() {
    let d = data(6, VOCAB.items as u32);
    let s = seqs(&d);
    for (kind, whiten) in [(EncoderKind::Gru, true), (EncoderKind::Transformer, false)] {
        let c = centroids(3, whiten);
        let model = SeqModel::new(&behaviour(kind), VOCAB, 5).unwrap();
        let names: Vec<String> = model.vars().unwrap().into_iter().map(|v| v.0).collect();
        for want in ["emb.hour.weight", "head.action.weight", "head.gap.bias"] {
            assert!(names.iter().any(|n| n == want), "{want} missing: {names:?}");
        }
        let obj = ObjectiveConfig {
            next_event: 1.0,
            intent: 0.5,
            dec: 0.5,
            intents: 3,
            ..Default::default()
        };
        obj.validate(model.config()).unwrap();
        let g = step(&model, &s, &ctx(&obj, 1, 1, true, Some(&c))).unwrap();
        let parts: Vec<&str> = g.parts.iter().map(|p| p.0.as_str()).collect();
        assert_eq!(parts, ["next_event", "next_item", "intent", "dec"]);
        assert!(
            g.parts.iter().all(|p| p.1.is_finite() && p.1 > 0.0),
            "{:?}",
            g.parts
        );
        assert_dense_gradients(&model, &g.dense, &format!("{kind:?}"));
        // without centroids (before the warm-up ends) the clustering losses are left out
        let g = step(&model, &s, &ctx(&obj, 1, 1, true, None)).unwrap();
        assert_eq!(g.parts.len(), 2, "{:?}", g.parts);
    }
    // the heads are required, and named
    let e = ObjectiveConfig {
        next_event: 1.0,
        ..Default::default()
    }
    .validate(&tiny(EncoderKind::Gru, Pooling::Mean))
    .unwrap_err();
    assert!(e.to_string().contains("encoder.event_heads"), "{e}");
}

/// Next-event and intent-contrastive gradients against central differences (DEC's target
/// distribution is held constant by design, so its loss is not a function finite
/// differences can check).
#[test]
fn behaviour_gradients_match_finite_differences() {
    let d = data(4, VOCAB.items as u32);
    let s = seqs(&d);
    let c = centroids(3, true);
    let obj = ObjectiveConfig {
        next_item: 0.0,
        next_event: 1.0,
        intent: 1.0,
        intents: 3,
        ..Default::default()
    };
    let model = SeqModel::new(&behaviour(EncoderKind::Gru), VOCAB, 13).unwrap();
    let cx = ctx(&obj, 1, 1, false, Some(&c));
    let g = step(&model, &s, &cx).unwrap();
    assert_dense_matches_differences(&model, &s, &cx, &g.dense, 16, "behaviour");
}

/// Distillation: every student parameter and the item table learn from the teacher, the
/// gradients match central differences, and a student identical to its teacher has nothing
/// left to learn (KL 0).
#[test]
fn distillation_trains_the_student_toward_its_teacher() {
    let d = data(6, VOCAB.items as u32);
    let s = seqs(&d);
    let obj = ObjectiveConfig {
        next_item: 0.0,
        distill: 1.0,
        distill_temperature: 2.0,
        ..Default::default()
    };
    let student_cfg = tiny(EncoderKind::Transformer, Pooling::Last);
    obj.validate(&student_cfg).unwrap();
    // a teacher of another kind and size
    let teacher_cfg = EncoderConfig {
        dim: 12,
        max_len: 4,
        ..tiny(EncoderKind::Gru, Pooling::Last)
    };
    let teacher =
        Teacher::new(SeqModel::new(&teacher_cfg, VOCAB, 21).unwrap(), VOCAB.items).unwrap();
    let model = SeqModel::new(&student_cfg, VOCAB, 3).unwrap();
    let with = |train| StepCtx {
        teacher: Some(&teacher),
        ..ctx(&obj, 1, 1, train, None)
    };
    let g = step(&model, &s, &with(true)).unwrap();
    assert_eq!(g.parts.len(), 1);
    assert_eq!(g.parts[0].0, "distill");
    assert!(g.loss.is_finite() && g.loss > 0.0, "{}", g.loss);
    assert_dense_gradients(&model, &g.dense, "distilled transformer");
    assert!(g.items.sq_norm() > 0.0 && !g.items.ids.contains(&0));
    let cx = with(false);
    let g = step(&model, &s, &cx).unwrap();
    assert_dense_matches_differences(&model, &s, &cx, &g.dense, 16, "distill");

    // the student's own architecture and weights as its teacher: the two softmaxes agree
    let twin = Teacher::new(SeqModel::new(&student_cfg, VOCAB, 3).unwrap(), VOCAB.items).unwrap();
    let g = step(
        &model,
        &s,
        &StepCtx {
            teacher: Some(&twin),
            ..ctx(&obj, 1, 1, false, None)
        },
    )
    .unwrap();
    assert!(
        g.loss.abs() < 1e-4,
        "KL to an identical teacher: {}",
        g.loss
    );

    // a teacher of another catalogue, and no teacher at all, are refused by name
    let other = Vocab { items: 30, ..VOCAB };
    let e = Teacher::new(SeqModel::new(&teacher_cfg, other, 1).unwrap(), VOCAB.items).unwrap_err();
    assert!(e.to_string().contains("train.teacher"), "{e}");
    assert!(e.to_string().contains("30 items"), "{e}");
    let e = step(&model, &s, &ctx(&obj, 1, 1, true, None)).unwrap_err();
    assert!(e.to_string().contains("train.teacher"), "{e}");
}
