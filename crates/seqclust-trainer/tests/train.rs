//! The trainer end to end on a small generated dataset: training, evaluation, checkpoints,
//! resume, incompatible checkpoints, and a loss that blows up.
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
    let csv = dir.join("ev.csv");
    seqclust_data::generator::generate_to_files(
        &seqclust_data::generator::GenConfig {
            users: 400,
            items: 300,
            categories: 10,
            mean_events: 12.0,
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
