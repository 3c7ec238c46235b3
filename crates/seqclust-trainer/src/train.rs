//! The training loop.

use std::time::Instant;

use bytes::Bytes;
use serde::{Deserialize, Serialize};
use tracing::info;

use seqclust_collective::{Collective, Local};
use seqclust_data::{Dataset, Location, ShardSampler};
use seqclust_model::{
    AdamParams, NextItemLoss, Optimizer, Popularity, Schedule, SeqInput, SeqModel, StepCtx,
    Teacher, Vocab, step,
};

use crate::checkpoint::{
    INT8_MODEL_DIR, ModelInfo, TrainState, init_from, load_latest, load_model, save_checkpoint,
    save_model, save_model_int8,
};
use crate::config::TrainJob;
use crate::data_parallel::{average_gradients, shard_of};
use crate::error::{Error, Result};
use crate::evaluate::{Evaluation, evaluate};
use crate::examples::{Holdout, Owned, held_out, training, users};

/// One logged step.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct StepLog {
    /// Optimiser step.
    pub step: u64,
    /// Epoch (from 0).
    pub epoch: usize,
    /// Weighted loss.
    pub loss: f32,
    /// Each objective's loss.
    pub parts: Vec<(String, f32)>,
    /// Learning rate.
    pub lr: f32,
    /// Gradient norm before clipping.
    pub grad_norm: f32,
    /// Training throughput over the logging window.
    pub seq_per_s: f64,
}

/// One evaluation.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct EvalLog {
    /// After this many epochs.
    pub epoch: usize,
    /// At this step.
    pub step: u64,
    /// `valid` or `test`.
    pub split: String,
    /// The metrics.
    pub metrics: Evaluation,
}

/// Receives progress (the CLI prints it).
pub trait Observer {
    /// A logged step.
    fn step(&self, log: &StepLog);
    /// An evaluation.
    fn eval(&self, log: &EvalLog);
    /// Anything else worth saying.
    fn note(&self, text: &str);
    /// Checked before every step: `true` ends training with [`Error::Cancelled`] (the last
    /// checkpoint stays).
    fn cancelled(&self) -> bool {
        false
    }
    /// Every optimiser step (not only logged ones): its wall time, including the gradient
    /// exchange, and the sequences of this rank's share of the batch (metrics).
    fn step_done(&self, _seconds: f64, _sequences: usize) {}
    /// Asked on rank 0 after every checkpoint it writes (mid-epoch and at an epoch's end,
    /// the last epoch's excepted): `true` ends training on every rank with
    /// [`Error::Regroup`], so that a group with more members resumes from that checkpoint.
    fn regroup(&self) -> bool {
        false
    }
}

/// After a checkpoint: whether the group stops here to be formed again. Rank 0 decides
/// and the others learn it by broadcast, so every rank stops at the same step.
fn regroup_here(group: &mut dyn Collective, obs: &dyn Observer, step: u64) -> Result<()> {
    let mut flag = vec![u8::from(group.rank() == 0 && obs.regroup())];
    if group.world_size() > 1 {
        group.broadcast(&mut flag, 0)?;
    }
    if flag.first() == Some(&1) {
        obs.note(&format!(
            "stopping at the checkpoint of step {step}: the group is formed again"
        ));
        return Err(Error::Regroup { step });
    }
    Ok(())
}

/// What a training run produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainReport {
    /// The job.
    pub job: TrainJob,
    /// The model description.
    pub model: ModelInfo,
    /// Steps taken.
    pub steps: u64,
    /// Epochs completed.
    pub epochs: usize,
    /// Whether early stopping ended the run.
    pub stopped_early: bool,
    /// Logged steps.
    pub log: Vec<StepLog>,
    /// Evaluations (validation, then the final test).
    pub evals: Vec<EvalLog>,
    /// Wall seconds.
    pub seconds: f64,
    /// Mean training throughput (sequences per second, evaluation excluded).
    pub train_seq_per_s: f64,
}

/// Opens the job's dataset.
pub async fn open_dataset(job: &TrainJob) -> Result<Dataset> {
    let uri = &job.dataset.uri;
    let local = std::path::Path::new(uri);
    Ok(
        if seqclust_data::store::is_url(uri) || local.is_absolute() || local.exists() {
            Dataset::open(uri).await?
        } else {
            Dataset::open_in(&job.dataset.root, uri).await?
        },
    )
}

/// The model's vocabulary sizes from a dataset manifest.
pub fn vocab_of(ds: &Dataset) -> Vocab {
    let m = ds.manifest();
    Vocab {
        items: m.counts.item_vocab as usize,
        actions: m.vocab.actions.len(),
        categories: m.counts.category_vocab as usize,
    }
}

/// Held-out examples of every user (in shard order), at most `limit` (0 = all).
pub fn held_out_examples(
    ds: &Dataset,
    rt: &tokio::runtime::Handle,
    which: Holdout,
    limit: usize,
) -> Result<Vec<(Owned, u32)>> {
    let mut out = Vec::new();
    for s in 0..ds.num_shards() {
        let shard = rt.block_on(ds.read_shard(s))?;
        for u in users(&shard) {
            if let Some(ex) = held_out(&u, which) {
                out.push(ex);
                if limit > 0 && out.len() >= limit {
                    return Ok(out);
                }
            }
        }
    }
    Ok(out)
}

/// Trains the job's model, writing checkpoints, the final model and `metrics.json` under
/// `run`; resumes from `run`'s latest checkpoint when there is one.
pub fn train(
    job: &TrainJob,
    run: &Location,
    rt: &tokio::runtime::Handle,
    obs: &dyn Observer,
) -> Result<TrainReport> {
    train_with(job, run, rt, obs, &mut Local)
}

/// [`train`] as one rank of a data-parallel group. Every rank reads the same global batches
/// (the order depends on the seed alone, not on the group) and computes the gradients of its
/// contiguous share ([`shard_of`]); the group averages them ([`average_gradients`]) before
/// the optimiser step, so the replicas stay identical and the model depends on the global
/// batch, not on the number of ranks. Rank 0 evaluates (and tells the others the validation
/// score, which early stopping depends on) and writes checkpoints, `metrics.json` and the
/// model; every rank resumes from the latest checkpoint. A final batch with fewer than two
/// sequences per rank is left out.
pub fn train_with(
    job: &TrainJob,
    run: &Location,
    rt: &tokio::runtime::Handle,
    obs: &dyn Observer,
    group: &mut dyn Collective,
) -> Result<TrainReport> {
    job.validate()?;
    let (rank, world) = (group.rank(), group.world_size());
    let lead = rank == 0;
    if job.train.batch_size < 2 * world {
        return Err(Error::config(
            "train.batch_size",
            format!(
                "the global batch {} cannot be split over {world} ranks (at least 2 each)",
                job.train.batch_size
            ),
        ));
    }
    let t0 = Instant::now();
    let tc = &job.train;
    let ds = rt.block_on(open_dataset(job))?;
    let vocab = vocab_of(&ds);
    let popularity = match job.objective.next_item_loss {
        NextItemLoss::Sampled { .. } | NextItemLoss::InBatch if job.objective.next_item > 0.0 => {
            let v = rt.block_on(ds.item_vocab())?;
            Some(Popularity::from_counts(
                &(0..v.len() as u32).map(|i| v.count(i)).collect::<Vec<_>>(),
            ))
        }
        _ => None,
    };
    let mut model = SeqModel::new(&job.encoder, vocab, tc.seed)?;
    let params = AdamParams {
        lr: tc.lr,
        weight_decay: tc.weight_decay,
        ..AdamParams::default()
    };
    let mut opt = Optimizer::new(&model, params)?;
    let info = ModelInfo {
        encoder: job.encoder.clone(),
        vocab,
        dataset: ds.location().to_string(),
        code_version: env!("CARGO_PKG_VERSION").to_string(),
    };
    let mut state = TrainState {
        step: 0,
        epoch: 0,
        batches_in_epoch: 0,
        best_ndcg10: None,
        since_best: 0,
        model: info.clone(),
    };
    if let Some(s) = rt.block_on(load_latest(run, &mut model, &mut opt))? {
        obs.note(&format!(
            "resuming from step {} (epoch {}, batch {})",
            s.step, s.epoch, s.batches_in_epoch
        ));
        state = s;
    } else if !tc.resume_from.trim().is_empty() {
        let source = Location::parse(tc.resume_from.trim(), false)?;
        let s = rt
            .block_on(load_latest(&source, &mut model, &mut opt))?
            .ok_or_else(|| {
                Error::config(
                    "train.resume_from",
                    format!("{source} holds no checkpoint (checkpoints/LATEST) to continue from"),
                )
            })?;
        obs.note(&format!(
            "continuing {source} from step {} (epoch {}, batch {})",
            s.step, s.epoch, s.batches_in_epoch
        ));
        state = s;
        state.model = info.clone();
    } else if !tc.init_from.trim().is_empty() {
        let source = Location::parse(tc.init_from.trim(), false)?;
        let t = rt.block_on(init_from(&mut model, &source))?;
        obs.note(&format!(
            "initialised {} of {} dense tensors from {} (fresh: {})",
            t.copied.len(),
            t.copied.len() + t.fresh.len(),
            t.source,
            if t.fresh.is_empty() {
                "none".to_string()
            } else {
                t.fresh.join(", ")
            }
        ));
    }
    let teacher = if job.objective.distill > 0.0 {
        let teacher_error = |e: &dyn std::fmt::Display| {
            Error::config(
                "train.teacher",
                format!(
                    "cannot load the teacher model of {}: {e}",
                    tc.teacher.trim()
                ),
            )
        };
        let source = Location::parse(tc.teacher.trim(), false).map_err(|e| match e {
            // a run directory, not a dataset, is what is missing
            seqclust_data::Error::DatasetNotFound { .. } => {
                teacher_error(&"the directory does not exist")
            }
            e => teacher_error(&e),
        })?;
        let (m, _) = rt
            .block_on(load_model(&source))
            .map_err(|e| teacher_error(&e))?;
        let t = Teacher::new(m, vocab.items)?;
        let c = t.model().config();
        obs.note(&format!(
            "distilling from {}: {:?} dim {} × {} layers, {} dense parameters",
            source.display_of("model"),
            c.kind,
            c.dim,
            c.layers,
            t.model().dense_len()?
        ));
        Some(t)
    } else {
        None
    };
    let users_total = ds.manifest().counts.users as usize;
    let steps_per_epoch = users_total.div_ceil(tc.batch_size).max(1) as u64;
    let schedule = Schedule {
        peak: tc.lr,
        warmup: tc.warmup_steps,
        total: steps_per_epoch * tc.epochs as u64,
        floor: tc.min_lr_ratio,
    };
    let valid = if tc.eval_every > 0 && lead {
        held_out_examples(&ds, rt, Holdout::Valid, tc.eval_users)?
    } else {
        Vec::new()
    };
    obs.note(&format!(
        "{} users, {} items; {} dense parameters + {}×{} item table; {} validation users",
        users_total,
        vocab.items,
        model.dense_len()?,
        model.items.rows(),
        model.items.dim(),
        valid.len()
    ));
    let mut best: Option<(Vec<f32>, seqclust_model::ItemTable)> = None;
    let mut log = Vec::new();
    let mut evals = Vec::new();
    let mut train_seconds = 0.0;
    let mut train_seqs = 0usize;
    let mut stopped_early = false;
    let mut window = (Instant::now(), 0usize);
    let start_epoch = state.epoch;
    let end_epoch = match tc.stop_after_epochs {
        0 => tc.epochs,
        n => n.min(tc.epochs),
    };
    for epoch in start_epoch..end_epoch {
        let skip = if epoch == start_epoch {
            state.batches_in_epoch
        } else {
            0
        };
        let intents = if job.objective.clustering() && epoch >= job.objective.cluster_warmup_epochs
        {
            let t = Instant::now();
            let it = crate::intents::estimate(
                &model,
                &ds,
                rt,
                group,
                job.objective.intents,
                job.objective.intent_whiten,
                tc.seed ^ epoch as u64,
            )?;
            info!(
                epoch,
                k = job.objective.intents,
                inertia = it.inertia_per_user,
                iterations = it.iterations,
                "intent centroids"
            );
            obs.note(&format!(
                "epoch {}: {} intents re-estimated in {:.1} s ({} Lloyd iterations, mean cosine distance {:.4}, sizes {:?})",
                epoch + 1,
                job.objective.intents,
                t.elapsed().as_secs_f64(),
                it.iterations,
                it.inertia_per_user,
                it.sizes
            ));
            Some(it.intents)
        } else {
            None
        };
        let mut batch_no = 0usize;
        let mut pending: Vec<Owned> = Vec::new();
        let sampler = ShardSampler::new(tc.seed, 0, 1);
        let shards = ds.epoch(sampler, epoch as u64, rt.clone());
        let mut shards = shards.peekable();
        while let Some(shard) = shards.next() {
            pending.extend(users(&shard?).iter().filter_map(training));
            let last = shards.peek().is_none();
            while pending.len() >= tc.batch_size || (last && pending.len() >= 2 * world) {
                let take = pending.len().min(tc.batch_size);
                let batch: Vec<Owned> = pending.drain(..take).collect();
                batch_no += 1;
                if batch_no <= skip {
                    continue;
                }
                if obs.cancelled() {
                    return Err(Error::Cancelled);
                }
                let ts = Instant::now();
                let _span = tracing::debug_span!("step", step = state.step + 1).entered();
                let mine = &batch[shard_of(batch.len(), rank, world)];
                let inputs: Vec<SeqInput<'_>> = mine.iter().map(Owned::input).collect();
                let cx = StepCtx {
                    objective: &job.objective,
                    popularity: popularity.as_ref(),
                    seed: tc.seed,
                    step: state.step + 1,
                    train: true,
                    intents: intents.as_ref(),
                    teacher: teacher.as_ref(),
                };
                let mut g = step(&model, &inputs, &cx)?;
                average_gradients(group, &mut g)?;
                let lr = schedule.at(state.step + 1);
                let clip = (tc.clip_norm > 0.0).then_some(tc.clip_norm);
                let rep = opt.apply(&mut model, &mut g, lr, clip)?;
                state.step += 1;
                state.epoch = epoch;
                state.batches_in_epoch = batch_no;
                let took = ts.elapsed().as_secs_f64();
                obs.step_done(took, shard_of(batch.len(), rank, world).len());
                train_seconds += took;
                train_seqs += batch.len();
                window.1 += batch.len();
                if state.step.is_multiple_of(tc.log_every) {
                    let l = StepLog {
                        step: state.step,
                        epoch,
                        loss: g.loss,
                        parts: g.parts.clone(),
                        lr: rep.lr,
                        grad_norm: rep.grad_norm,
                        seq_per_s: window.1 as f64 / window.0.elapsed().as_secs_f64().max(1e-9),
                    };
                    info!(
                        step = l.step,
                        loss = l.loss,
                        lr = l.lr,
                        grad_norm = l.grad_norm,
                        seq_per_s = l.seq_per_s,
                        "train step"
                    );
                    obs.step(&l);
                    log.push(l);
                    window = (Instant::now(), 0);
                }
                if tc.checkpoint_every > 0 && state.step.is_multiple_of(tc.checkpoint_every) {
                    if lead {
                        rt.block_on(save_checkpoint(run, &model, &opt, &state))?;
                    }
                    regroup_here(group, obs, state.step)?;
                }
            }
        }
        // the epoch is complete: the next one starts from its first batch
        state.epoch = epoch + 1;
        state.batches_in_epoch = 0;
        let evaluating = tc.eval_every > 0 && (epoch + 1) % tc.eval_every == 0;
        // rank 0 evaluates; the others learn the score (or that there was none: NaN)
        let mut score = [f32::NAN];
        if lead && evaluating && !valid.is_empty() {
            let m = evaluate(&model, &valid, 512)?;
            let ndcg = m.full.ndcg.get(&10).copied().unwrap_or(0.0);
            let e = EvalLog {
                epoch: epoch + 1,
                step: state.step,
                split: "valid".into(),
                metrics: m,
            };
            info!(
                epoch = epoch + 1,
                hr10 = e.metrics.full.hr.get(&10).copied().unwrap_or(0.0),
                ndcg10 = ndcg,
                "validation"
            );
            obs.eval(&e);
            evals.push(e);
            score[0] = ndcg as f32;
        }
        if evaluating && world > 1 {
            let mut bytes = score[0].to_le_bytes().to_vec();
            group.broadcast(&mut bytes, 0)?;
            let raw: [u8; 4] = bytes
                .as_slice()
                .try_into()
                .map_err(|_| Error::checkpoint("validation score", "malformed broadcast"))?;
            score[0] = f32::from_le_bytes(raw);
        }
        // with clustering losses, only models trained with them are candidates for "best"
        let eligible =
            !job.objective.clustering() || epoch + 1 > job.objective.cluster_warmup_epochs;
        if !score[0].is_nan() && eligible {
            if job.objective.clustering() && epoch == job.objective.cluster_warmup_epochs {
                state.best_ndcg10 = None;
                state.since_best = 0;
            }
            let ndcg = f64::from(score[0]);
            if state.best_ndcg10.is_none_or(|b| ndcg > b) {
                state.best_ndcg10 = Some(ndcg);
                state.since_best = 0;
                best = Some((model.dense_values()?, model.items.clone()));
            } else {
                state.since_best += 1;
            }
        }
        if lead {
            rt.block_on(save_checkpoint(run, &model, &opt, &state))?;
            write_metrics(run, rt, job, &log, &evals)?;
        }
        if tc.patience > 0 && state.since_best >= tc.patience {
            obs.note(&format!(
                "no improvement of validation NDCG@10 for {} evaluations: stopping",
                state.since_best
            ));
            stopped_early = true;
            break;
        }
        if epoch + 1 < end_epoch {
            regroup_here(group, obs, state.step)?;
        }
    }
    if let Some((dense, items)) = best {
        model.set_dense_values(&dense)?;
        model.items = items;
        obs.note(&format!(
            "keeping the best validation model (NDCG@10 {:.4})",
            state.best_ndcg10.unwrap_or(0.0)
        ));
    }
    if job.encoder.whiten {
        let t = Instant::now();
        crate::intents::fit_whitening(&mut model, &ds, rt, group)?;
        obs.note(&format!(
            "whitening of the user vectors estimated in {:.1} s",
            t.elapsed().as_secs_f64()
        ));
    }
    let test = if lead {
        held_out_examples(&ds, rt, Holdout::Test, tc.eval_users)?
    } else {
        Vec::new()
    };
    if !test.is_empty() {
        let m = evaluate(&model, &test, 512)?;
        let e = EvalLog {
            epoch: state.epoch,
            step: state.step,
            split: "test".into(),
            metrics: m,
        };
        obs.eval(&e);
        evals.push(e);
    }
    if lead {
        rt.block_on(save_model(run, &model, &info))?;
        if tc.export_int8 {
            rt.block_on(save_model_int8(run, INT8_MODEL_DIR, &model, &info))?;
        }
        write_metrics(run, rt, job, &log, &evals)?;
    }
    Ok(TrainReport {
        job: job.clone(),
        model: info,
        steps: state.step,
        epochs: state.epoch,
        stopped_early,
        log,
        evals,
        seconds: t0.elapsed().as_secs_f64(),
        train_seq_per_s: train_seqs as f64 / train_seconds.max(1e-9),
    })
}

fn write_metrics(
    run: &Location,
    rt: &tokio::runtime::Handle,
    job: &TrainJob,
    log: &[StepLog],
    evals: &[EvalLog],
) -> Result<()> {
    let doc = serde_json::json!({ "job": job, "steps": log, "evals": evals });
    let bytes = serde_json::to_vec_pretty(&doc)
        .map_err(|e| Error::checkpoint("metrics.json", e.to_string()))?;
    rt.block_on(run.put("metrics.json", Bytes::from(bytes)))?;
    Ok(())
}
