//! The trainer end to end on a small generated dataset: training, evaluation, checkpoints,
//! resume, incompatible checkpoints, a loss that blows up, clustering objectives, and
//! initialising from another run's model.
#![allow(clippy::unwrap_used)] // tests fail loudly on any error

use std::sync::Mutex;

use seqclust_data::Location;
use seqclust_trainer::{EvalLog, Observer, StepLog, TrainJob};

#[derive(Default)]
struct Quiet(Mutex<Vec<String>>);

impl Observer for Quiet {
    fn step(&self, _: &StepLog) {}
    fn eval(&self, _: &EvalLog) {}
    fn note(&self, t: &str) {
        self.0.lock().unwrap().push(t.to_string());
    }
}

fn dataset(dir: &std::path::Path, rt: &tokio::runtime::Runtime) -> String {
    dataset_of(dir, rt, 300, 42)
}

/// A generated dataset of 400 users over `items` items (10 categories).
fn dataset_of(
    dir: &std::path::Path,
    rt: &tokio::runtime::Runtime,
    items: u32,
    seed: u64,
) -> String {
    let csv = dir.join("ev.csv");
    seqclust_data::generator::generate_to_files(
        &seqclust_data::generator::GenConfig {
            users: 400,
            items,
            categories: 10,
            mean_events: 12.0,
            seed,
            ..Default::default()
        },
        &csv,
        None,
        seqclust_data::generator::GenFormat::Csv,
        &seqclust_data::ingest::NoProgress,
    )
    .unwrap();
    let mut cfg = seqclust_data::IngestConfig::default();
    cfg.source.paths = vec![csv.display().to_string()];
    cfg.output.root = dir.join("store").display().to_string();
    cfg.output.name = "p".into();
    cfg.output.version = Some("v1".into());
    cfg.output.shards = 3;
    seqclust_data::ingest(&cfg, rt.handle(), &seqclust_data::ingest::NoProgress)
        .unwrap()
        .location
}

fn job(ds: &str) -> TrainJob {
    let mut j = TrainJob::default();
    j.dataset.uri = ds.to_string();
    j.encoder.dim = 16;
    j.encoder.layers = 1;
    j.encoder.max_len = 20;
    j.train.epochs = 2;
    j.train.batch_size = 64;
    j.train.warmup_steps = 2;
    j.train.log_every = 1;
    j
}

#[test]
fn trains_checkpoints_and_resumes() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ds = dataset(dir.path(), &rt);
    let run = Location::parse(&dir.path().join("run").display().to_string(), true).unwrap();
    let j = job(&ds);
    let obs = Quiet::default();
    let r = seqclust_trainer::train(&j, &run, rt.handle(), &obs).unwrap();
    assert_eq!(r.epochs, 2);
    assert!(r.steps >= 2 * (400 / 64) as u64);
    assert!(r.log.last().unwrap().loss < r.log[0].loss);
    let test = r.evals.iter().find(|e| e.split == "test").unwrap();
    assert!(test.metrics.full.users > 300);
    for f in [
        "model/config.json",
        "model/encoder.safetensors",
        "metrics.json",
        "checkpoints/LATEST",
    ] {
        assert!(rt.block_on(run.exists(f)).unwrap(), "{f}");
    }
    // the exported model reloads and gives the same test metrics
    let (model, _) = rt.block_on(seqclust_trainer::load_model(&run)).unwrap();
    let dsh = rt.block_on(seqclust_data::Dataset::open(&ds)).unwrap();
    let ex =
        seqclust_trainer::held_out_examples(&dsh, rt.handle(), seqclust_trainer::Holdout::Test, 0)
            .unwrap();
    let m = seqclust_trainer::evaluate(&model, &ex, 128).unwrap();
    assert_eq!(m.full, test.metrics.full);
    // asking for more epochs resumes from the latest checkpoint instead of starting over
    let mut more = j.clone();
    more.train.epochs = 3;
    let r2 = seqclust_trainer::train(&more, &run, rt.handle(), &obs).unwrap();
    assert_eq!(r2.epochs, 3);
    assert!(
        r2.steps > r.steps && r2.steps < 2 * r.steps,
        "{} then {}",
        r.steps,
        r2.steps
    );
    assert!(
        obs.0
            .lock()
            .unwrap()
            .iter()
            .any(|n| n.starts_with("resuming from step"))
    );
}

#[test]
fn incompatible_checkpoint_is_refused() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ds = dataset(dir.path(), &rt);
    let run = Location::parse(&dir.path().join("run").display().to_string(), true).unwrap();
    let mut j = job(&ds);
    j.train.epochs = 1;
    seqclust_trainer::train(&j, &run, rt.handle(), &Quiet::default()).unwrap();
    j.encoder.dim = 32;
    j.train.epochs = 2;
    let err = seqclust_trainer::train(&j, &run, rt.handle(), &Quiet::default())
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("checkpoints/step-") && err.contains("dim: 16") && err.contains("dim: 32"),
        "{err}"
    );
}

#[test]
fn a_loss_that_blows_up_stops_training_and_keeps_the_last_checkpoint() {
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ds = dataset(dir.path(), &rt);
    let run = Location::parse(&dir.path().join("run").display().to_string(), true).unwrap();
    let mut j = job(&ds);
    j.train.epochs = 1;
    seqclust_trainer::train(&j, &run, rt.handle(), &Quiet::default()).unwrap();
    let good = rt.block_on(run.get("checkpoints/LATEST")).unwrap();
    // an absurd learning rate without clipping sends the weights to infinity
    j.train.epochs = 3;
    j.train.lr = 1e30;
    j.train.warmup_steps = 0;
    j.train.clip_norm = 0.0;
    let err = seqclust_trainer::train(&j, &run, rt.handle(), &Quiet::default()).unwrap_err();
    let mut chain = err.to_string();
    let mut src = std::error::Error::source(&err);
    while let Some(s) = src {
        chain.push_str(&format!(": {s}"));
        src = s.source();
    }
    assert!(chain.contains("at step"), "{chain}");
    let latest = rt.block_on(run.get("checkpoints/LATEST")).unwrap();
    assert_eq!(latest, good, "no checkpoint written after the blow-up");
}

/// Next-event prediction and the clustering losses train end to end; the intents are
/// re-estimated each epoch after the warm-up, and two ranks estimating them together over the
/// ring agree with each other and with one rank alone.
#[test]
fn clustering_objectives_train_and_intents_are_collective() {
    use seqclust_collective::{Local, Ring, RingConfig};
    let dir = tempfile::tempdir().unwrap();
    let rt = tokio::runtime::Runtime::new().unwrap();
    let ds = dataset(dir.path(), &rt);
    let run = Location::parse(&dir.path().join("run").display().to_string(), true).unwrap();
    let mut j = job(&ds);
    j.encoder.kind = seqclust_model::EncoderKind::Gru;
    j.encoder.pooling = seqclust_model::Pooling::Mean;
    j.encoder.use_hour = true;
    j.encoder.event_heads = true;
    j.objective.next_event = 1.0;
    j.objective.intent = 0.5;
    j.objective.dec = 0.2;
    j.objective.intents = 4;
    j.objective.cluster_warmup_epochs = 1;
    let obs = Quiet::default();
    let r = seqclust_trainer::train(&j, &run, rt.handle(), &obs).unwrap();
    let first = &r.log[0];
    let last = r.log.last().unwrap();
    let names = |l: &StepLog| l.parts.iter().map(|p| p.0.clone()).collect::<Vec<_>>();
    assert_eq!(names(first), ["next_event", "next_item"], "warm-up epoch");
    assert_eq!(names(last), ["next_event", "next_item", "intent", "dec"]);
    let notes = obs.0.lock().unwrap().clone();
    assert_eq!(
        notes
            .iter()
            .filter(|n| n.contains("intents re-estimated"))
            .count(),
        1,
        "{notes:?}"
    );

    let (model, _) = rt.block_on(seqclust_trainer::load_model(&run)).unwrap();
    let dsh = rt.block_on(seqclust_data::Dataset::open(&ds)).unwrap();
    let alone =
        seqclust_trainer::intents::estimate(&model, &dsh, rt.handle(), &mut Local, 4, true, 7)
            .unwrap();
    assert_eq!(alone.sizes.iter().sum::<u64>(), 400);
    assert!(alone.sizes.iter().all(|&s| s > 0), "{:?}", alone.sizes);
    let w = alone.intents.whitened.as_ref().unwrap();
    assert_eq!(
        (
            w.transform.mean.len(),
            w.transform.matrix.len(),
            w.centroids.len()
        ),
        (16, 256, 64)
    );
    for row in alone.intents.centroids.chunks(16) {
        let n: f32 = row.iter().map(|x| x * x).sum();
        assert!((n - 1.0).abs() < 1e-4, "unit centroids: {n}");
    }
    let listeners: Vec<_> = (0..2)
        .map(|_| std::net::TcpListener::bind("127.0.0.1:0").unwrap())
        .collect();
    let addrs: Vec<_> = listeners.iter().map(|l| l.local_addr().unwrap()).collect();
    let together: Vec<_> = std::thread::scope(|s| {
        let hs: Vec<_> = listeners
            .into_iter()
            .enumerate()
            .map(|(rank, l)| {
                let (addrs, model, dsh, h) = (&addrs, &model, &dsh, rt.handle());
                s.spawn(move || {
                    let mut ring = Ring::connect(rank, addrs, l, RingConfig::default()).unwrap();
                    seqclust_trainer::intents::estimate(model, dsh, h, &mut ring, 4, true, 7)
                        .unwrap()
                })
            })
            .collect();
        hs.into_iter().map(|h| h.join().unwrap()).collect()
    });
    assert_eq!(together[0], together[1], "ranks agree exactly");
    assert_eq!(together[0].sizes, alone.sizes);
    for (a, b) in together[0]
        .intents
        .centroids
        .iter()
        .zip(&alone.intents.centroids)
    {
        assert!((a - b).abs() < 1e-5, "{a} vs {b}");
    }
}

/// `train.init_from` copies the sequence layers of another dataset's model and leaves the
/// item table and the category tensors fresh; a model that does not fit is refused.
#[test]
fn init_from_copies_the_sequence_layers_of_another_run() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ds_a, ds_b) = (
        dataset_of(a.path(), &rt, 300, 1),
        dataset_of(b.path(), &rt, 450, 2),
    );
    let src = a.path().join("run");
    let src_loc = Location::parse(&src.display().to_string(), true).unwrap();
    let mut j = job(&ds_a);
    j.train.epochs = 1;
    j.train.eval_every = 0;
    seqclust_trainer::train(&j, &src_loc, rt.handle(), &Quiet::default()).unwrap();
    let (source, _) = rt.block_on(seqclust_trainer::load_model(&src_loc)).unwrap();

    let mut t = job(&ds_b);
    t.train.epochs = 1;
    t.train.eval_every = 0;
    // a learning rate too small to move the weights: the result is the initialisation
    t.train.lr = 1e-9;
    t.train.init_from = src.display().to_string();
    let run = Location::parse(&b.path().join("run").display().to_string(), true).unwrap();
    let obs = Quiet::default();
    seqclust_trainer::train(&t, &run, rt.handle(), &obs).unwrap();
    let (model, _) = rt.block_on(seqclust_trainer::load_model(&run)).unwrap();
    assert_ne!(model.items.rows(), source.items.rows());
    let values = |m: &seqclust_model::SeqModel| -> std::collections::HashMap<String, Vec<f32>> {
        m.vars()
            .unwrap()
            .into_iter()
            .map(|(n, v)| (n, v.flatten_all().unwrap().to_vec1::<f32>().unwrap()))
            .collect()
    };
    let (got, had) = (values(&model), values(&source));
    let mut copied = 0;
    for (name, v) in &got {
        let gap = v
            .iter()
            .zip(&had[name])
            .map(|(x, y)| (x - y).abs())
            .fold(0f32, f32::max);
        if name.starts_with("emb.category") {
            assert!(gap > 1e-3, "{name} was copied from another catalogue");
        } else {
            assert!(gap < 1e-4, "{name} differs from the source by {gap}");
            copied += 1;
        }
    }
    assert!(copied >= 4, "{copied} tensors copied");
    let notes = obs.0.lock().unwrap().clone();
    assert!(
        notes
            .iter()
            .any(|n| n.starts_with("initialised") && n.contains("emb.category")),
        "{notes:?}"
    );

    // another dimension: nothing fits, and the error names the setting
    let mut wide = t.clone();
    wide.encoder.dim = 24;
    let other = Location::parse(&b.path().join("wide").display().to_string(), true).unwrap();
    let e = seqclust_trainer::train(&wide, &other, rt.handle(), &Quiet::default()).unwrap_err();
    assert!(e.to_string().contains("train.init_from"), "{e}");
    // a source that is not there is named
    let mut gone = t.clone();
    gone.train.init_from = a.path().join("nope").display().to_string();
    let other = Location::parse(&b.path().join("gone").display().to_string(), true).unwrap();
    let e = seqclust_trainer::train(&gone, &other, rt.handle(), &Quiet::default()).unwrap_err();
    let chain: Vec<String> =
        std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .map(|e| e.to_string())
            .collect();
    assert!(chain.iter().any(|m| m.contains("nope")), "{chain:?}");
}

/// A run stopped after one epoch of a three-epoch schedule (`train.stop_after_epochs`) and
/// continued by another run (`train.resume_from`) ends with the model one uninterrupted
/// three-epoch run trains; a source without a checkpoint is refused by name.
#[test]
fn a_stopped_run_continued_elsewhere_equals_one_run() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let dir = tempfile::tempdir().unwrap();
    let ds = dataset_of(dir.path(), &rt, 300, 1);
    let loc = |name: &str| Location::parse(&dir.path().join(name).display().to_string(), true);
    let mut j = job(&ds);
    j.train.epochs = 3;
    j.train.eval_every = 0;
    let whole = loc("whole").unwrap();
    let r = seqclust_trainer::train(&j, &whole, rt.handle(), &Quiet::default()).unwrap();
    assert_eq!(r.epochs, 3);

    let mut first = j.clone();
    first.train.stop_after_epochs = 1;
    let a = loc("rung-0").unwrap();
    let r = seqclust_trainer::train(&first, &a, rt.handle(), &Quiet::default()).unwrap();
    assert_eq!(r.epochs, 1);
    let mut rest = j.clone();
    rest.train.resume_from = dir.path().join("rung-0").display().to_string();
    let b = loc("rung-1").unwrap();
    let obs = Quiet::default();
    let r = seqclust_trainer::train(&rest, &b, rt.handle(), &obs).unwrap();
    assert_eq!(r.epochs, 3);
    assert!(
        obs.0
            .lock()
            .unwrap()
            .iter()
            .any(|n| n.starts_with("continuing")),
        "{:?}",
        obs.0.lock().unwrap()
    );
    let (one, _) = rt.block_on(seqclust_trainer::load_model(&whole)).unwrap();
    let (two, _) = rt.block_on(seqclust_trainer::load_model(&b)).unwrap();
    let (x, y) = (one.dense_values().unwrap(), two.dense_values().unwrap());
    let gap = x
        .iter()
        .zip(&y)
        .map(|(p, q)| (p - q).abs())
        .fold(0f32, f32::max);
    assert!(gap < 1e-5, "continued training differs by {gap}");

    let mut none = j.clone();
    none.train.resume_from = dir.path().join("whole/model").display().to_string();
    let e = seqclust_trainer::train(&none, &loc("x").unwrap(), rt.handle(), &Quiet::default())
        .unwrap_err();
    assert!(e.to_string().contains("train.resume_from"), "{e}");
    let mut long = j.clone();
    long.train.stop_after_epochs = 4;
    let e = seqclust_trainer::train(&long, &loc("y").unwrap(), rt.handle(), &Quiet::default())
        .unwrap_err();
    assert!(e.to_string().contains("train.stop_after_epochs"), "{e}");
}

/// `objective.distill` trains a smaller student toward a teacher of the same dataset; a
/// teacher of another catalogue, one that is not there, and a half-given setting are refused
/// by name.
#[test]
fn distillation_trains_a_smaller_student_toward_its_teacher() {
    let rt = tokio::runtime::Runtime::new().unwrap();
    let (a, b) = (tempfile::tempdir().unwrap(), tempfile::tempdir().unwrap());
    let (ds_a, ds_b) = (
        dataset_of(a.path(), &rt, 300, 1),
        dataset_of(b.path(), &rt, 450, 2),
    );
    let teacher = a.path().join("teacher");
    let mut j = job(&ds_a);
    j.train.eval_every = 0;
    j.train.lr = 5e-3;
    let teacher_loc = Location::parse(&teacher.display().to_string(), true).unwrap();
    seqclust_trainer::train(&j, &teacher_loc, rt.handle(), &Quiet::default()).unwrap();

    let mut s = job(&ds_a);
    s.encoder.dim = 8;
    s.encoder.kind = seqclust_model::EncoderKind::Gru;
    s.objective.next_item = 0.0;
    s.objective.distill = 1.0;
    s.train.teacher = teacher.display().to_string();
    s.train.epochs = 3;
    s.train.lr = 1e-2;
    let run = Location::parse(&a.path().join("student").display().to_string(), true).unwrap();
    let obs = Quiet::default();
    let rep = seqclust_trainer::train(&s, &run, rt.handle(), &obs).unwrap();
    let kl: Vec<f32> = rep
        .log
        .iter()
        .map(|l| l.parts.iter().find(|p| p.0 == "distill").unwrap().1)
        .collect();
    let (first, last) = (
        kl[..3].iter().sum::<f32>(),
        kl[kl.len() - 3..].iter().sum::<f32>(),
    );
    assert!(last < 0.9 * first, "KL to the teacher {kl:?}");
    let notes = obs.0.lock().unwrap().clone();
    assert!(
        notes.iter().any(|n| n.starts_with("distilling from")),
        "{notes:?}"
    );
    let (student, _) = rt.block_on(seqclust_trainer::load_model(&run)).unwrap();
    assert_eq!(student.config().dim, 8);
    // its next-item ranking is evaluated like any model's
    assert!(rep.evals.iter().any(|e| e.split == "test"));

    let refused = |mut t: TrainJob, name: &str| -> String {
        let other = Location::parse(&b.path().join(name).display().to_string(), true).unwrap();
        t.train.epochs = 1;
        let e = seqclust_trainer::train(&t, &other, rt.handle(), &Quiet::default()).unwrap_err();
        std::iter::successors(Some(&e as &dyn std::error::Error), |e| e.source())
            .map(|e| e.to_string())
            .collect::<Vec<_>>()
            .join(": ")
    };
    // another catalogue: the item ids mean other items
    let mut t = s.clone();
    t.dataset.uri = ds_b.clone();
    let e = refused(t, "other");
    assert!(e.contains("train.teacher") && e.contains("items"), "{e}");
    let mut t = s.clone();
    t.train.teacher = a.path().join("nope").display().to_string();
    let e = refused(t, "gone");
    assert!(e.contains("train.teacher") && e.contains("nope"), "{e}");
    let mut t = s.clone();
    t.train.teacher.clear();
    assert!(refused(t, "none").contains("train.teacher"));
    let mut t = s.clone();
    t.objective.distill = 0.0;
    t.objective.next_item = 1.0;
    assert!(refused(t, "zero").contains("objective.distill"));
}
