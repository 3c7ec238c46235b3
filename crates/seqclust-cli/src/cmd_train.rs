//! `seqclust train`, `seqclust eval` and `seqclust embed`.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use comfy_table::Table;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use seqclust_data::Location;
use seqclust_model::{EncoderKind, NextItemLoss, Pooling};
use seqclust_trainer::{EvalLog, Evaluation, Holdout, Observer, Owned, StepLog, TrainJob};

/// Train a sequence encoder (self-supervised) on a committed dataset.
///
/// Settings: defaults < --config FILE (tables [dataset], [encoder], [objective], [train]) <
/// flags. Training resumes from the run's latest checkpoint when --out already holds one.
#[derive(Debug, Args)]
pub struct TrainArgs {
    /// TOML job file.
    #[arg(long, short)]
    config: Option<PathBuf>,
    /// Dataset: a location, or NAME[/VERSION] under --root.
    #[arg(long, short)]
    dataset: Option<String>,
    /// Storage root for dataset names.
    #[arg(long, env = "SEQCLUST_ROOT")]
    root: Option<String>,
    /// Run directory or URL for checkpoints, the model and metrics.json.
    #[arg(long, short)]
    out: String,
    /// gru, lstm, transformer or bi_transformer.
    #[arg(long)]
    encoder: Option<String>,
    /// Hidden size.
    #[arg(long)]
    dim: Option<usize>,
    /// Layers.
    #[arg(long)]
    layers: Option<usize>,
    /// Attention heads.
    #[arg(long)]
    heads: Option<usize>,
    /// Dropout.
    #[arg(long)]
    dropout: Option<f32>,
    /// Events per sequence.
    #[arg(long)]
    max_len: Option<usize>,
    /// last, mean or attention.
    #[arg(long)]
    pooling: Option<String>,
    /// Next-item loss: full, sampled:N or inbatch.
    #[arg(long)]
    loss: Option<String>,
    /// Weight of next-item prediction.
    #[arg(long)]
    next_item: Option<f32>,
    /// Weight of the contrastive objective.
    #[arg(long)]
    contrastive: Option<f32>,
    /// Weight of masked-item prediction (bi_transformer).
    #[arg(long)]
    cloze: Option<f32>,
    /// Weight of next-event prediction (the next action, category and time gap); a weight
    /// above 0 also turns on the encoder's event heads.
    #[arg(long)]
    next_event: Option<f32>,
    /// Weight of the intent-contrastive clustering loss (ICLRec).
    #[arg(long)]
    intent: Option<f32>,
    /// Weight of DEC's clustering loss.
    #[arg(long)]
    dec: Option<f32>,
    /// Intents (centroids) of the clustering losses.
    #[arg(long)]
    intents: Option<usize>,
    /// Distil from this teacher: a run directory or URL holding the model/ of a model trained
    /// on the same dataset (sets the distillation weight to 1 unless --distill is given).
    #[arg(long)]
    teacher: Option<String>,
    /// Weight of the distillation loss (the KL divergence to the teacher's next-item softmax).
    #[arg(long)]
    distill: Option<f32>,
    /// Temperature of the distillation softmaxes.
    #[arg(long)]
    distill_temperature: Option<f32>,
    /// Add the hour-of-day input embedding.
    #[arg(long)]
    use_hour: bool,
    /// PCA-whiten the vectors clustering sees (fitted when training ends).
    #[arg(long)]
    whiten: bool,
    /// Epochs.
    #[arg(long)]
    epochs: Option<usize>,
    /// Sequences per step.
    #[arg(long)]
    batch_size: Option<usize>,
    /// Peak learning rate.
    #[arg(long)]
    lr: Option<f32>,
    /// Seed.
    #[arg(long)]
    seed: Option<u64>,
    /// Stop after this many evaluations without improvement.
    #[arg(long)]
    patience: Option<usize>,
    /// Users evaluated (0 = all).
    #[arg(long)]
    eval_users: Option<usize>,
    /// Initialise the sequence layers from another run's model (a run directory or URL
    /// holding model/); the item table starts fresh.
    #[arg(long)]
    init_from: Option<String>,
    /// Also write the int8 serving model (`model-int8/`).
    #[arg(long)]
    export_int8: bool,
    /// Threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
    /// Only the final summary.
    #[arg(long, short)]
    quiet: bool,
}

fn parse_loss(s: &str) -> Result<NextItemLoss> {
    Ok(match s {
        "full" => NextItemLoss::Full,
        "inbatch" | "in-batch" | "in_batch" => NextItemLoss::InBatch,
        s if s.starts_with("sampled") => {
            let n = s
                .split_once(':')
                .map(|(_, n)| n.parse::<usize>())
                .transpose()
                .context("--loss sampled:N")?
                .unwrap_or(1024);
            NextItemLoss::Sampled { negatives: n }
        }
        other => bail!("--loss {other:?}: expected full, sampled:N or inbatch"),
    })
}

/// The effective job: defaults < file < flags.
pub fn build_job(a: &TrainArgs) -> Result<TrainJob> {
    let mut job = match &a.config {
        Some(p) => TrainJob::from_file(p)?,
        None => TrainJob::default(),
    };
    if let Some(d) = &a.dataset {
        job.dataset.uri = d.clone();
    }
    if let Some(r) = &a.root {
        job.dataset.root = r.clone();
    }
    let e = &mut job.encoder;
    if let Some(k) = &a.encoder {
        e.kind = match k.as_str() {
            "gru" => EncoderKind::Gru,
            "lstm" => EncoderKind::Lstm,
            "transformer" | "sasrec" => EncoderKind::Transformer,
            "bi_transformer" | "bert4rec" => EncoderKind::BiTransformer,
            other => {
                bail!("--encoder {other:?}: expected gru, lstm, transformer or bi_transformer")
            }
        };
    }
    if let Some(p) = &a.pooling {
        e.pooling = match p.as_str() {
            "last" => Pooling::Last,
            "mean" => Pooling::Mean,
            "attention" => Pooling::Attention,
            other => bail!("--pooling {other:?}: expected last, mean or attention"),
        };
    }
    macro_rules! set {
        ($src:expr, $dst:expr) => {
            if let Some(v) = $src {
                $dst = v;
            }
        };
    }
    set!(a.dim, e.dim);
    set!(a.layers, e.layers);
    set!(a.heads, e.heads);
    set!(a.dropout, e.dropout);
    set!(a.max_len, e.max_len);
    if a.use_hour {
        e.use_hour = true;
    }
    if a.whiten {
        e.whiten = true;
    }
    if a.next_event.is_some_and(|w| w > 0.0) {
        e.event_heads = true;
    }
    let o = &mut job.objective;
    if let Some(l) = &a.loss {
        o.next_item_loss = parse_loss(l)?;
    }
    set!(a.next_item, o.next_item);
    set!(a.contrastive, o.contrastive);
    set!(a.cloze, o.cloze);
    set!(a.next_event, o.next_event);
    set!(a.intent, o.intent);
    set!(a.dec, o.dec);
    set!(a.intents, o.intents);
    if a.teacher.is_some() && a.distill.is_none() && o.distill == 0.0 {
        o.distill = 1.0;
    }
    set!(a.distill, o.distill);
    set!(a.distill_temperature, o.distill_temperature);
    let t = &mut job.train;
    set!(a.epochs, t.epochs);
    set!(a.batch_size, t.batch_size);
    set!(a.lr, t.lr);
    set!(a.seed, t.seed);
    set!(a.patience, t.patience);
    set!(a.eval_users, t.eval_users);
    if a.export_int8 {
        t.export_int8 = true;
    }
    if let Some(s) = &a.init_from {
        t.init_from = s.clone();
    }
    if let Some(s) = &a.teacher {
        t.teacher = s.clone();
    }
    job.validate()?;
    Ok(job)
}

struct Printer {
    quiet: bool,
}

fn fmt_eval(m: &Evaluation) -> String {
    let g = |map: &std::collections::BTreeMap<usize, f64>, k| map.get(&k).copied().unwrap_or(0.0);
    format!(
        "HR@10 {:.4} NDCG@10 {:.4} HR@20 {:.4} NDCG@20 {:.4} MRR {:.4} | sampled-99 HR@10 {:.4} NDCG@10 {:.4}",
        g(&m.full.hr, 10),
        g(&m.full.ndcg, 10),
        g(&m.full.hr, 20),
        g(&m.full.ndcg, 20),
        m.full.mrr,
        g(&m.sampled_99.hr, 10),
        g(&m.sampled_99.ndcg, 10)
    )
}

impl Observer for Printer {
    fn step(&self, l: &StepLog) {
        if !self.quiet {
            eprintln!(
                "step {:>6} epoch {:>3} loss {:.4} lr {:.2e} |g| {:.3} {:>7.0} seq/s",
                l.step, l.epoch, l.loss, l.lr, l.grad_norm, l.seq_per_s
            );
        }
    }
    fn eval(&self, e: &EvalLog) {
        if !self.quiet || e.split == "test" {
            eprintln!(
                "{} after epoch {}: {} ({} users)",
                e.split,
                e.epoch,
                fmt_eval(&e.metrics),
                e.metrics.full.users
            );
        }
    }
    fn note(&self, t: &str) {
        if !self.quiet {
            eprintln!("{t}");
        }
    }
}

fn metrics_table(title: &str, m: &Evaluation) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        title, "HR@5", "HR@10", "HR@20", "NDCG@5", "NDCG@10", "NDCG@20", "MRR",
    ]);
    for (name, r) in [
        ("full ranking", &m.full),
        ("full, history scored 0 (S3-Rec code)", &m.full_zero_mask),
        ("99 sampled negatives", &m.sampled_99),
    ] {
        let mut row = vec![name.to_string()];
        for k in [5, 10, 20] {
            row.push(format!("{:.4}", r.hr.get(&k).copied().unwrap_or(0.0)));
        }
        for k in [5, 10, 20] {
            row.push(format!("{:.4}", r.ndcg.get(&k).copied().unwrap_or(0.0)));
        }
        row.push(format!("{:.4}", r.mrr));
        t.add_row(row);
    }
    t
}

pub fn run_train(a: TrainArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let job = build_job(&a)?;
    let run = Location::parse(&a.out, true)?;
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads.unwrap_or(0))
        .build()?;
    let printer = Printer {
        quiet: a.quiet || a.json,
    };
    let report = pool.install(|| {
        seqclust_trainer::train(&job, &run, rt.handle(), &printer).map_err(anyhow::Error::from)
    })?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    if let Some(test) = report.evals.iter().rev().find(|e| e.split == "test") {
        println!("{}", metrics_table("test (leave-one-out)", &test.metrics));
    }
    println!(
        "{} steps, {} epochs{} in {:.0} s ({:.0} seq/s training); model in {}/model",
        report.steps,
        report.epochs,
        if report.stopped_early {
            " (early stop)"
        } else {
            ""
        },
        report.seconds,
        report.train_seq_per_s,
        run
    );
    Ok(())
}

/// Evaluate a trained model on a dataset's leave-one-out test split.
#[derive(Debug, Args)]
pub struct EvalArgs {
    /// The training run (directory or URL holding model/); required.
    #[arg(long, short)]
    model: Option<String>,
    /// Dataset (default: the one the model was trained on).
    #[arg(long, short)]
    dataset: Option<String>,
    /// Storage root for dataset names.
    #[arg(long, env = "SEQCLUST_ROOT", default_value = "./seqclust-data")]
    root: String,
    /// Users evaluated (0 = all).
    #[arg(long, default_value_t = 0)]
    users: usize,
    /// Evaluate the validation split instead.
    #[arg(long)]
    valid: bool,
    /// Print JSON.
    #[arg(long)]
    json: bool,
}

pub(crate) fn open_for(
    model_ds: &str,
    dataset: &Option<String>,
    root: &str,
    rt: &tokio::runtime::Runtime,
) -> Result<seqclust_data::Dataset> {
    let job = TrainJob {
        dataset: seqclust_trainer::DatasetRef {
            uri: dataset.clone().unwrap_or_else(|| model_ds.to_string()),
            root: root.to_string(),
        },
        ..TrainJob::default()
    };
    Ok(rt.block_on(seqclust_trainer::open_dataset(&job))?)
}

pub fn run_eval(a: EvalArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let Some(model) = &a.model else {
        bail!("seqclust eval needs --model RUN (or a subcommand: seqclust eval clustering)");
    };
    let run = Location::parse(model, false)?;
    let (model, info) = rt.block_on(seqclust_trainer::load_model(&run))?;
    let ds = open_for(&info.dataset, &a.dataset, &a.root, rt)?;
    if seqclust_trainer::vocab_of(&ds) != info.vocab {
        bail!(
            "the model's vocabulary {:?} differs from {}'s {:?}",
            info.vocab,
            ds.location(),
            seqclust_trainer::vocab_of(&ds)
        );
    }
    let which = if a.valid {
        Holdout::Valid
    } else {
        Holdout::Test
    };
    let ex = seqclust_trainer::held_out_examples(&ds, rt.handle(), which, a.users)?;
    let m = seqclust_trainer::evaluate(&model, &ex, 512)?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&m)?);
    } else {
        println!(
            "{}",
            metrics_table(
                if a.valid {
                    "validation"
                } else {
                    "test (leave-one-out)"
                },
                &m
            )
        );
        println!("{} users of {}", m.full.users, ds.location());
    }
    Ok(())
}

/// Write every user's vector: embeddings.parquet (user, vector) and embeddings.f32 (PEERRAW1).
#[derive(Debug, Args)]
pub struct EmbedArgs {
    /// The training run (directory or URL holding model/).
    #[arg(long, short)]
    model: String,
    /// Dataset (default: the one the model was trained on).
    #[arg(long, short)]
    dataset: Option<String>,
    /// Storage root for dataset names.
    #[arg(long, env = "SEQCLUST_ROOT", default_value = "./seqclust-data")]
    root: String,
    /// Output directory.
    #[arg(long, short)]
    out: PathBuf,
}

pub fn run_embed(a: EmbedArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let run = Location::parse(&a.model, false)?;
    let (model, info) = rt.block_on(seqclust_trainer::load_model(&run))?;
    let ds = open_for(&info.dataset, &a.dataset, &a.root, rt)?;
    let t = std::time::Instant::now();
    let mut ids = Vec::new();
    let mut vecs = Vec::new();
    for s in 0..ds.num_shards() {
        let shard = rt.block_on(ds.read_shard(s))?;
        let users: Vec<Owned> = seqclust_trainer::examples::users(&shard);
        vecs.extend(seqclust_trainer::embed_for_clusters(&model, &users, 512)?);
        ids.extend(users.into_iter().map(|u| u.user));
    }
    let d = model.config().dim;
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    seqclust_data::embeddings::write_embeddings_parquet(
        &a.out.join("embeddings.parquet"),
        &ids,
        &vecs,
        d,
    )?;
    seqclust_data::embeddings::write_peerraw_f32(
        &a.out.join("embeddings.f32"),
        &vecs,
        ids.len(),
        d,
    )?;
    println!(
        "{} users × {d} in {:.1} s → {}/embeddings.{{parquet,f32}}",
        ids.len(),
        t.elapsed().as_secs_f64(),
        a.out.display()
    );
    Ok(())
}
