//! The self-supervised objectives and one training step's gradients.
//!
//! A step encodes a batch, computes the weighted objectives, runs backward, and returns the
//! gradients in the form the optimiser and the data-parallel exchange use: one flat vector
//! for the dense parameters and a row-sparse gradient for the item table.

use candle_core::{Tensor, Var};
use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::config::{EncoderKind, NextItemLoss, ObjectiveConfig, Positions};
use crate::error::{Ctx, Error, Result};
use crate::features::{BatchInput, FIRST_ITEM, SeqBuf, SeqInput};
use crate::item_table::SparseGrad;
use crate::kernels::softmax_ce::SoftmaxCe;
use crate::layers::l2_normalize;
use crate::model::SeqModel;
use crate::whitening::Whitening;

/// Item sampling distribution for sampled softmax (counts from the dataset's vocabulary).
#[derive(Debug, Clone)]
pub struct Popularity {
    cum: Vec<f64>,
    log_q: Vec<f32>,
}

impl Popularity {
    /// From per-id counts (ids below [`FIRST_ITEM`] are never sampled); `count^0.75` smoothing
    /// as in word2vec.
    pub fn from_counts(counts: &[u64]) -> Popularity {
        let w: Vec<f64> = counts
            .iter()
            .enumerate()
            .map(|(i, &c)| {
                if (i as u32) < FIRST_ITEM {
                    0.0
                } else {
                    (c.max(1) as f64).powf(0.75)
                }
            })
            .collect();
        let total: f64 = w.iter().sum::<f64>().max(f64::MIN_POSITIVE);
        let log_q = w
            .iter()
            .map(|&x| {
                if x > 0.0 {
                    (x / total).ln() as f32
                } else {
                    0.0
                }
            })
            .collect();
        let cum = w
            .iter()
            .scan(0.0, |a, &x| {
                *a += x / total;
                Some(*a)
            })
            .collect();
        Popularity { cum, log_q }
    }

    fn sample(&self, r: &mut ChaCha8Rng) -> u32 {
        let u = r.random::<f64>();
        self.cum.partition_point(|&c| c < u).min(self.cum.len() - 1) as u32
    }
}

/// One step's loss and gradients.
#[derive(Debug, Clone, Default, Serialize, Deserialize)]
pub struct Gradients {
    /// Gradient of every dense parameter, flattened in [`SeqModel::vars`] order.
    pub dense: Vec<f32>,
    /// Row-sparse gradient of the item table.
    pub items: SparseGrad,
    /// Weighted total loss.
    pub loss: f32,
    /// Each objective's (unweighted) loss.
    pub parts: Vec<(String, f32)>,
    /// Sequences in the batch.
    pub sequences: usize,
    /// Milliseconds spent in the forward pass (encoding and losses).
    pub fwd_ms: f64,
    /// Milliseconds spent in the backward pass (including gradient extraction).
    pub bwd_ms: f64,
}

impl Gradients {
    /// Sum of squares of all gradient values.
    pub fn sq_norm(&self) -> f64 {
        self.dense
            .iter()
            .map(|v| f64::from(*v).powi(2))
            .sum::<f64>()
            + self.items.sq_norm()
    }

    /// Multiplies every gradient value.
    pub fn scale(&mut self, s: f32) {
        self.dense.iter_mut().for_each(|v| *v *= s);
        self.items.scale(s);
    }
}

/// Cross-entropy of `logits` (`n × c`) against `labels` (`n` u32).
fn cross_entropy(logits: &Tensor, labels: &[u32]) -> Result<Tensor> {
    let y = Tensor::from_slice(labels, labels.len(), logits.device()).ctx("labels")?;
    candle_nn::loss::cross_entropy(logits, &y).ctx("cross entropy")
}

/// Cross-entropy of the next event's action, category and time-gap bucket at every position
/// that has a next event (the mean of the three).
fn next_event_loss(model: &SeqModel, batch: &BatchInput, states: &Tensor) -> Result<Tensor> {
    let heads = model.event_heads().ok_or_else(|| {
        Error::config(
            "objective.next_event",
            "next-event prediction needs encoder.event_heads = true",
        )
    })?;
    let d = model.config().dim;
    let dev = model.device();
    let pos: Vec<u32> = (0..batch.b * batch.t)
        .filter(|&i| batch.next.gaps.get(i).is_some_and(|&g| g != 0))
        .map(|i| i as u32)
        .collect();
    if pos.is_empty() {
        return Err(Error::Shape(
            "no next events in the batch (sequences shorter than 2?)".into(),
        ));
    }
    let h = states
        .reshape((batch.b * batch.t, d))
        .ctx("flatten")?
        .index_select(
            &Tensor::from_slice(&pos, pos.len(), dev).ctx("positions")?,
            0,
        )
        .ctx("positions")?;
    let v = model.vocab();
    let pick = |field: &[u32], cap: usize| -> Vec<u32> {
        pos.iter()
            .map(|&i| field[i as usize].min(cap.saturating_sub(1) as u32))
            .collect()
    };
    let actions = pick(&batch.next.actions, v.actions.max(1));
    let cats = pick(&batch.next.categories, v.categories.max(1));
    let gaps = pick(&batch.next.gaps, model.config().time_buckets);
    let la = cross_entropy(&heads.action.forward(&h)?, &actions)?;
    let lc = cross_entropy(&heads.category.forward(&h)?, &cats)?;
    let lg = cross_entropy(&heads.gap.forward(&h)?, &gaps)?;
    ((la + lc).ctx("sum")? + lg)
        .ctx("sum")?
        .affine(1.0 / 3.0, 0.0)
        .ctx("mean")
}

/// ICLRec's intent-contrastive loss: InfoNCE of each (unit) user vector against the intent
/// centroids, its own intent (`labels`) the positive. `dots` is `b × k` cosine similarity.
fn intent_loss(dots: &Tensor, labels: &[u32], temperature: f32) -> Result<Tensor> {
    let logits = (dots / f64::from(temperature)).ctx("intent temperature")?;
    cross_entropy(&logits, labels)
}

fn argmax(row: &[f32]) -> usize {
    row.iter()
        .enumerate()
        .fold((0, f32::NEG_INFINITY), |best, (j, &v)| {
            if v > best.1 { (j, v) } else { best }
        })
        .0
}

/// DEC's clustering loss, KL(P ‖ Q): `Q` the Student-t (α = 1) soft assignment of each unit
/// user vector to the unit centroids (squared distance `2 − 2 cos`), `P` its sharpened target
/// `q² / f` (f the batch's soft cluster sizes), held constant as in DEC.
fn dec_loss(dots: &Tensor) -> Result<Tensor> {
    let dev = dots.device();
    let (b, k) = dots.dims2().ctx("dec")?;
    // q ∝ 1 / (1 + ‖z − μ‖²) = 1 / (3 − 2 cos)
    let kernel = dots
        .affine(-2.0, 3.0)
        .ctx("dec distance")?
        .recip()
        .ctx("dec kernel")?;
    let q = kernel
        .broadcast_div(&kernel.sum_keepdim(1).ctx("dec")?)
        .ctx("dec q")?;
    let qv = q.to_vec2::<f32>().ctx("dec q")?;
    let f: Vec<f32> = (0..k).map(|j| qv.iter().map(|r| r[j]).sum()).collect();
    let mut p = vec![0f32; b * k];
    for (i, r) in qv.iter().enumerate() {
        let w: Vec<f32> = r
            .iter()
            .zip(&f)
            .map(|(&x, &fj)| x * x / fj.max(f32::MIN_POSITIVE))
            .collect();
        let s: f32 = w.iter().sum::<f32>().max(f32::MIN_POSITIVE);
        for j in 0..k {
            p[i * k + j] = w[j] / s;
        }
    }
    let p_log_p: f32 = p
        .iter()
        .filter(|&&x| x > 0.0)
        .map(|&x| x * x.ln())
        .sum::<f32>()
        / b as f32;
    let p = Tensor::from_vec(p, (b, k), dev).ctx("dec p")?;
    let cross = (p * q.log().ctx("dec log q")?)
        .ctx("dec")?
        .sum_all()
        .ctx("dec")?
        .affine(-1.0 / b as f64, f64::from(p_log_p))
        .ctx("dec")?;
    Ok(cross)
}

/// A trained model a student learns to rank like (`objective.distill`), its item table held
/// as one tensor for the step's logits.
pub struct Teacher {
    model: SeqModel,
    table: Tensor,
}

impl std::fmt::Debug for Teacher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Teacher")
            .field("encoder", &self.model.config().kind)
            .field("dim", &self.model.config().dim)
            .field("items", &self.model.vocab().items)
            .finish()
    }
}

impl Teacher {
    /// The teacher of a student that scores `items` items (the student's dataset must be the
    /// one the teacher was trained on: the item ids must mean the same items).
    pub fn new(model: SeqModel, items: usize) -> Result<Teacher> {
        let v = model.vocab().items;
        if v != items {
            return Err(Error::config(
                "train.teacher",
                format!(
                    "the teacher scores {v} items and this dataset has {items}: a student is \
                     distilled on the dataset (and item vocabulary) its teacher was trained on"
                ),
            ));
        }
        if model.config().kind == EncoderKind::BiTransformer {
            return Err(Error::config(
                "train.teacher",
                "the teacher must be a causal encoder (gru, lstm or transformer)",
            ));
        }
        let all: Vec<u32> = (0..v as u32).collect();
        let table = Tensor::from_vec(
            model.items.gather(&all),
            (v, model.config().dim),
            model.device(),
        )
        .ctx("teacher table")?;
        Ok(Teacher { model, table })
    }

    /// The teacher's model.
    pub fn model(&self) -> &SeqModel {
        &self.model
    }
}

/// Knowledge distillation (Hinton et al.) after each sequence that has a next item:
/// `T² · KL(softmax(teacher / T) ‖ softmax(student / T))` over every item (padding and OOV
/// never the answer), averaged over those sequences. `student` holds the user vectors of
/// `batch` (`b × dim`) and `table` the student's item table (`items × dim`); the teacher
/// encodes the same sequences with its own settings and without dropout.
fn distill_loss(
    seqs: &[SeqInput<'_>],
    batch: &BatchInput,
    student: &Tensor,
    table: &Tensor,
    teacher: &Teacher,
    temperature: f32,
) -> Result<Tensor> {
    let dev = student.device();
    let t = batch.t;
    let keep: Vec<usize> = (0..batch.b)
        .filter(|&s| batch.targets[s * t + t - 1] != 0)
        .collect();
    if keep.is_empty() {
        return Err(Error::Shape(
            "no sequence of the batch has a next item to distil (sequences shorter than 2?)".into(),
        ));
    }
    let n = keep.len();
    let v = table.dim(0).ctx("distill")?;
    let tc = teacher.model.config();
    let kept: Vec<SeqInput<'_>> = keep.iter().map(|&s| seqs[s]).collect();
    let tb = BatchInput::next_item(&kept, tc.max_len, tc.time_buckets);
    let tu = Tensor::from_vec(teacher.model.embed(&tb)?, (n, tc.dim), dev).ctx("teacher")?;
    let inv_t = 1.0 / f64::from(temperature);
    let mut mask = vec![0f32; v];
    mask.iter_mut()
        .take(FIRST_ITEM as usize)
        .for_each(|m| *m = -1e9);
    let mask = Tensor::from_vec(mask, (1, v), dev).ctx("distill mask")?;
    // the teacher's soft targets, held constant
    let tl = (tu
        .matmul(&teacher.table.t().ctx("t")?)
        .ctx("teacher logits")?
        * inv_t)
        .ctx("teacher logits")?
        .broadcast_add(&mask)
        .ctx("teacher logits")?
        .to_vec2::<f32>()
        .ctx("teacher logits")?;
    let mut p = Vec::with_capacity(n * v);
    let mut p_log_p = 0f64;
    for row in &tl {
        let m = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
        let e: Vec<f64> = row.iter().map(|&x| f64::from(x - m).exp()).collect();
        let z: f64 = e.iter().sum();
        for x in e {
            let q = x / z;
            if q > 0.0 {
                p_log_p += q * q.ln();
            }
            p.push(q as f32);
        }
    }
    let p = Tensor::from_vec(p, (n, v), dev).ctx("teacher softmax")?;
    let idx = Tensor::from_vec(keep.iter().map(|&s| s as u32).collect::<Vec<_>>(), n, dev)
        .ctx("distill rows")?;
    let sl = (student
        .index_select(&idx, 0)
        .ctx("distill rows")?
        .matmul(&table.t().ctx("t")?)
        .ctx("student logits")?
        * inv_t)
        .ctx("student logits")?
        .broadcast_add(&mask)
        .ctx("student logits")?;
    // log-softmax from primitive ops (the shift is a constant)
    let z = sl
        .broadcast_sub(&sl.max_keepdim(1).ctx("max")?.detach())
        .ctx("shift")?;
    let log_q = z
        .broadcast_sub(
            &z.exp()
                .ctx("exp")?
                .sum_keepdim(1)
                .ctx("sum")?
                .log()
                .ctx("log")?,
        )
        .ctx("log softmax")?;
    let t2 = f64::from(temperature) * f64::from(temperature);
    (p * log_q)
        .ctx("distill")?
        .sum_all()
        .ctx("distill")?
        .affine(-t2 / n as f64, t2 * p_log_p / n as f64)
        .ctx("distill")
}

/// CL4SRec's augmentations: a random crop, masking, or a local reorder.
fn augment(s: &SeqInput<'_>, cfg: &ObjectiveConfig, mask_token: u32, r: &mut ChaCha8Rng) -> SeqBuf {
    let n = s.len();
    let mut out = SeqBuf::from_input(s);
    match r.random_range(0..3) {
        0 => {
            // crop: a random contiguous window
            let keep = ((n as f32 * cfg.crop_ratio).ceil() as usize).clamp(1, n);
            let start = r.random_range(0..=n - keep);
            out = SeqBuf::from_input(&SeqInput {
                items: &s.items[start..start + keep],
                actions: &s.actions[start..start + keep],
                categories: &s.categories[start..start + keep],
                timestamps: &s.timestamps[start..start + keep],
            });
        }
        1 => {
            // mask: replace some items with the mask token
            for it in out.items.iter_mut() {
                if r.random::<f32>() < cfg.mask_ratio {
                    *it = mask_token;
                }
            }
        }
        _ => {
            // reorder: shuffle a random contiguous window (times keep their positions)
            let len = ((n as f32 * cfg.reorder_ratio).ceil() as usize).clamp(1, n);
            let start = r.random_range(0..=n - len);
            let mut idx: Vec<usize> = (start..start + len).collect();
            idx.shuffle(r);
            for (k, &j) in idx.iter().enumerate() {
                out.items[start + k] = s.items[j];
                out.actions[start + k] = s.actions[j];
                out.categories[start + k] = s.categories[j];
            }
        }
    }
    out
}

/// What a step needs besides the model and the batch.
pub struct StepCtx<'a> {
    /// Objectives and weights.
    pub objective: &'a ObjectiveConfig,
    /// Sampling distribution (for sampled softmax).
    pub popularity: Option<&'a Popularity>,
    /// Seed of the whole run.
    pub seed: u64,
    /// Global step (dropout and sampling streams depend on it).
    pub step: u64,
    /// Apply dropout.
    pub train: bool,
    /// The intents of the clustering losses (`objective.intent`, `objective.dec`). `None`
    /// leaves those losses out (before `cluster_warmup_epochs`, or when they are off).
    pub intents: Option<&'a Intents>,
    /// The teacher of `objective.distill` (required when its weight is above 0).
    pub teacher: Option<&'a Teacher>,
}

/// The intent centroids the clustering losses use, re-estimated by the trainer.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Intents {
    /// `k × dim` row-major unit rows in the space of the user vectors: the losses pull each
    /// user toward its intent's row.
    pub centroids: Vec<f32>,
    /// When set, a user's intent is its nearest centroid in this whitened space rather than
    /// its nearest row of `centroids`.
    pub whitened: Option<Whitened>,
}

/// Intent centroids in a whitened space of the user vectors.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct Whitened {
    /// The whitening.
    pub transform: Whitening,
    /// `k × dim` unit rows in the whitened space.
    pub centroids: Vec<f32>,
}

impl Whitened {
    /// The nearest centroid (cosine) of each unit vector in `z` (`n × dim`).
    pub fn nearest(&self, z: &[f32]) -> Vec<u32> {
        let d = self.transform.dim();
        let mut w = vec![0f32; d];
        z.chunks_exact(d)
            .map(|x| {
                self.transform.apply(x, &mut w);
                let dots: Vec<f32> = self
                    .centroids
                    .chunks_exact(d)
                    .map(|c| c.iter().zip(&w).map(|(a, b)| a * b).sum())
                    .collect();
                argmax(&dots) as u32
            })
            .collect()
    }
}

/// The whole item table as a gradient leaf of the step (its gradient becomes item-table
/// rows).
fn table_leaf(model: &SeqModel, leaves: &mut Vec<(Var, Vec<u32>)>) -> Result<Var> {
    let (v, d) = (model.vocab().items, model.config().dim);
    let all: Vec<u32> = (0..v as u32).collect();
    let tv = Var::from_tensor(
        &Tensor::from_vec(model.items.gather(&all), (v, d), model.device()).ctx("table")?,
    )
    .ctx("table")?;
    leaves.push((tv.clone(), all));
    Ok(tv)
}

/// Loss and gradients of one batch.
pub fn step(model: &SeqModel, seqs: &[SeqInput<'_>], cx: &StepCtx<'_>) -> Result<Gradients> {
    let t_fwd = std::time::Instant::now();
    let cfg = cx.objective;
    let enc_cfg = model.config();
    let d = enc_cfg.dim;
    let dev = model.device().clone();
    let mut rng = ChaCha8Rng::seed_from_u64(cx.seed ^ cx.step.wrapping_mul(0x9E37_79B9_7F4A_7C15));
    let mut total: Option<Tensor> = None;
    let mut parts = Vec::new();
    // leaves whose gradients become item-table rows: (var, ids)
    let mut leaves: Vec<(Var, Vec<u32>)> = Vec::new();
    let add = |total: &mut Option<Tensor>, l: Tensor, w: f32| -> Result<()> {
        let lw = (l * f64::from(w)).ctx("weight")?;
        *total = Some(match total.take() {
            Some(t) => (t + lw).ctx("sum losses")?,
            None => lw,
        });
        Ok(())
    };

    let intents = cx.intents.filter(|_| cfg.clustering());
    // the user vectors the clustering losses pull toward their intents
    let mut users: Option<Tensor> = None;
    if cfg.next_item > 0.0 || cfg.next_event > 0.0 || cfg.distill > 0.0 {
        let batch = BatchInput::next_item(seqs, enc_cfg.max_len, enc_cfg.time_buckets);
        let rows = Var::from_tensor(&model.gather_items(&batch)?).ctx("item leaf")?;
        leaves.push((rows.clone(), batch.items.clone()));
        let enc = model.forward(&batch, rows.as_tensor(), cx.train.then_some(&mut rng))?;
        if cfg.next_event > 0.0 {
            let loss = next_event_loss(model, &batch, &enc.states)?;
            parts.push((
                "next_event".to_string(),
                loss.to_scalar::<f32>().ctx("loss")?,
            ));
            add(&mut total, loss, cfg.next_event)?;
        }
        if intents.is_some() {
            users = Some(enc.user.clone());
        }
        if cfg.next_item > 0.0 {
            let loss = match cfg.next_item_loss {
                NextItemLoss::InBatch => {
                    // the most recent position of each sequence against the batch's next items
                    let t = batch.t;
                    let keep: Vec<u32> = (0..batch.b)
                        .filter(|&s| batch.targets[s * t + t - 1] != 0)
                        .map(|s| s as u32)
                        .collect();
                    if keep.len() < 2 {
                        return Err(Error::Shape(
                            "in-batch negatives need at least two sequences with a target".into(),
                        ));
                    }
                    let targets: Vec<u32> = keep
                        .iter()
                        .map(|&s| batch.targets[s as usize * t + t - 1])
                        .collect();
                    let h = enc
                        .user
                        .index_select(&Tensor::from_slice(&keep, keep.len(), &dev).ctx("rows")?, 0)
                        .ctx("rows")?;
                    let tv = Var::from_tensor(
                        &Tensor::from_vec(model.items.gather(&targets), (targets.len(), d), &dev)
                            .ctx("targets")?,
                    )
                    .ctx("targets")?;
                    leaves.push((tv.clone(), targets.clone()));
                    let mut logits = h
                        .matmul(&tv.as_tensor().t().ctx("t")?)
                        .ctx("in-batch logits")?;
                    if let Some(p) = cx.popularity {
                        let lq: Vec<f32> = targets.iter().map(|&i| p.log_q[i as usize]).collect();
                        logits = logits
                            .broadcast_sub(
                                &Tensor::from_vec(lq, (1, targets.len()), &dev).ctx("logq")?,
                            )
                            .ctx("logq")?;
                    }
                    // the same item elsewhere in the batch is not a negative
                    let n = targets.len();
                    let mut dup = vec![0f32; n * n];
                    for i in 0..n {
                        for j in 0..n {
                            if i != j && targets[i] == targets[j] {
                                dup[i * n + j] = -1e9;
                            }
                        }
                    }
                    logits =
                        (logits + Tensor::from_vec(dup, (n, n), &dev).ctx("dups")?).ctx("dups")?;
                    cross_entropy(&logits, &(0..n as u32).collect::<Vec<_>>())?
                }
                NextItemLoss::Full | NextItemLoss::Sampled { .. } => {
                    let t = batch.t;
                    let pos: Vec<u32> = match cfg.next_item_positions {
                        Positions::All => (0..batch.b * t)
                            .filter(|&i| batch.targets[i] != 0)
                            .map(|i| i as u32)
                            .collect(),
                        Positions::Last => (0..batch.b)
                            .map(|s| s * t + t - 1)
                            .filter(|&i| batch.targets[i] != 0)
                            .map(|i| i as u32)
                            .collect(),
                    };
                    if pos.is_empty() {
                        return Err(Error::Shape(
                            "no next-item targets in the batch (sequences shorter than 2?)".into(),
                        ));
                    }
                    let targets: Vec<u32> =
                        pos.iter().map(|&i| batch.targets[i as usize]).collect();
                    let flat = enc.states.reshape((batch.b * batch.t, d)).ctx("flatten")?;
                    let h = flat
                        .index_select(
                            &Tensor::from_slice(&pos, pos.len(), &dev).ctx("positions")?,
                            0,
                        )
                        .ctx("positions")?;
                    match cfg.next_item_loss {
                        NextItemLoss::Full => {
                            let tv = table_leaf(model, &mut leaves)?;
                            // padding and OOV are never the answer; logits are never materialised
                            SoftmaxCe::apply(&h, tv.as_tensor(), targets, FIRST_ITEM as usize)
                                .ctx("softmax cross entropy")?
                        }
                        NextItemLoss::Sampled { negatives } => {
                            let p = cx.popularity.ok_or_else(|| {
                                Error::config(
                                    "objective.next_item_loss",
                                    "sampled softmax needs item counts",
                                )
                            })?;
                            let negs: Vec<u32> =
                                (0..negatives).map(|_| p.sample(&mut rng)).collect();
                            let mut cand = targets.clone();
                            cand.extend_from_slice(&negs);
                            let cv = Var::from_tensor(
                                &Tensor::from_vec(model.items.gather(&cand), (cand.len(), d), &dev)
                                    .ctx("cands")?,
                            )
                            .ctx("cands")?;
                            leaves.push((cv.clone(), cand.clone()));
                            let n = targets.len();
                            let pos_e = cv.as_tensor().narrow(0, 0, n).ctx("pos")?;
                            let neg_e = cv.as_tensor().narrow(0, n, negatives).ctx("neg")?;
                            let pos_l = h.mul(&pos_e).ctx("pos")?.sum_keepdim(1).ctx("pos")?;
                            let neg_l = h.matmul(&neg_e.t().ctx("t")?).ctx("neg")?;
                            // log-Q correction and accidental hits
                            let lq_pos: Vec<f32> =
                                targets.iter().map(|&i| p.log_q[i as usize]).collect();
                            let mut neg_bias = vec![0f32; n * negatives];
                            for i in 0..n {
                                for (j, &ng) in negs.iter().enumerate() {
                                    neg_bias[i * negatives + j] = if ng == targets[i] {
                                        -1e9
                                    } else {
                                        -p.log_q[ng as usize]
                                    };
                                }
                            }
                            let pos_l = (pos_l
                                - Tensor::from_vec(lq_pos, (n, 1), &dev).ctx("lq")?)
                            .ctx("lq")?;
                            let neg_l = (neg_l
                                + Tensor::from_vec(neg_bias, (n, negatives), &dev).ctx("lq")?)
                            .ctx("lq")?;
                            let logits = Tensor::cat(&[&pos_l, &neg_l], 1).ctx("cat")?;
                            cross_entropy(&logits, &vec![0; n])?
                        }
                        NextItemLoss::InBatch => unreachable!("handled above"),
                    }
                }
            };
            parts.push((
                "next_item".to_string(),
                loss.to_scalar::<f32>().ctx("loss")?,
            ));
            add(&mut total, loss, cfg.next_item)?;
        }
        if cfg.distill > 0.0 {
            let teacher = cx.teacher.ok_or_else(|| {
                Error::config("train.teacher", "objective.distill needs a teacher model")
            })?;
            let tv = table_leaf(model, &mut leaves)?;
            let loss = distill_loss(
                seqs,
                &batch,
                &enc.user,
                tv.as_tensor(),
                teacher,
                cfg.distill_temperature,
            )?;
            parts.push(("distill".to_string(), loss.to_scalar::<f32>().ctx("loss")?));
            add(&mut total, loss, cfg.distill)?;
        }
    }

    if let Some(it) = intents {
        let c = it.centroids.as_slice();
        let u = match users.take() {
            Some(u) => u,
            None => {
                let batch = BatchInput::encode(seqs, enc_cfg.max_len, enc_cfg.time_buckets);
                let rows = Var::from_tensor(&model.gather_items(&batch)?).ctx("user leaf")?;
                leaves.push((rows.clone(), batch.items.clone()));
                model
                    .forward(&batch, rows.as_tensor(), cx.train.then_some(&mut rng))?
                    .user
            }
        };
        let k = c.len() / d;
        if k < 2 || k * d != c.len() {
            return Err(Error::Shape(format!(
                "{} centroid values are not k ≥ 2 rows of dim {d}",
                c.len()
            )));
        }
        let z = l2_normalize(&u)?;
        let mu = Tensor::from_slice(c, (k, d), &dev).ctx("centroids")?;
        let dots = z.matmul(&mu.t().ctx("t")?).ctx("intent dots")?; // b × k
        if cfg.intent > 0.0 {
            let labels = match &it.whitened {
                Some(w) => w.nearest(&z.flatten_all().ctx("z")?.to_vec1::<f32>().ctx("z")?),
                None => dots
                    .to_vec2::<f32>()
                    .ctx("intent")?
                    .iter()
                    .map(|row| argmax(row) as u32)
                    .collect(),
            };
            let loss = intent_loss(&dots, &labels, cfg.intent_temperature)?;
            parts.push(("intent".to_string(), loss.to_scalar::<f32>().ctx("loss")?));
            add(&mut total, loss, cfg.intent)?;
        }
        if cfg.dec > 0.0 {
            let loss = dec_loss(&dots)?;
            parts.push(("dec".to_string(), loss.to_scalar::<f32>().ctx("loss")?));
            add(&mut total, loss, cfg.dec)?;
        }
    }

    if cfg.contrastive > 0.0 {
        // CL4SRec: two augmented views per sequence; the other view is the positive
        let mask_token = model.mask_token().unwrap_or(1);
        let views: Vec<_> = (0..2)
            .flat_map(|_| {
                seqs.iter()
                    .map(|s| augment(s, cfg, mask_token, &mut rng))
                    .collect::<Vec<_>>()
            })
            .collect();
        let vin: Vec<SeqInput<'_>> = views.iter().map(SeqBuf::input).collect();
        let batch = BatchInput::encode(&vin, enc_cfg.max_len, enc_cfg.time_buckets);
        let rows = Var::from_tensor(&model.gather_items(&batch)?).ctx("view leaf")?;
        leaves.push((rows.clone(), batch.items.clone()));
        let enc = model.forward(&batch, rows.as_tensor(), cx.train.then_some(&mut rng))?;
        let z = l2_normalize(&enc.user)?;
        let n = seqs.len();
        let sim = (z.matmul(&z.t().ctx("t")?).ctx("sim")? / f64::from(cfg.temperature))
            .ctx("temperature")?;
        let mut self_mask = vec![0f32; 4 * n * n];
        for i in 0..2 * n {
            self_mask[i * 2 * n + i] = -1e9;
        }
        let sim =
            (sim + Tensor::from_vec(self_mask, (2 * n, 2 * n), &dev).ctx("self")?).ctx("self")?;
        let labels: Vec<u32> = (0..2 * n as u32)
            .map(|i| (i + n as u32) % (2 * n as u32))
            .collect();
        let loss = cross_entropy(&sim, &labels)?;
        parts.push((
            "contrastive".to_string(),
            loss.to_scalar::<f32>().ctx("loss")?,
        ));
        add(&mut total, loss, cfg.contrastive)?;
    }

    if cfg.cloze > 0.0 {
        let mask_token = model
            .mask_token()
            .ok_or_else(|| Error::config("objective.cloze", "needs a bidirectional encoder"))?;
        let mut batch = BatchInput::encode(seqs, enc_cfg.max_len, enc_cfg.time_buckets);
        batch.targets.iter_mut().for_each(|t| *t = 0);
        for i in 0..batch.b * batch.t {
            if batch.mask[i] > 0.0
                && batch.items[i] >= FIRST_ITEM
                && rng.random::<f32>() < cfg.cloze_prob
            {
                batch.targets[i] = batch.items[i];
                batch.items[i] = mask_token;
            }
        }
        // always predict at least one item per sequence: its most recent
        for s in 0..batch.b {
            let last = s * batch.t + batch.t - 1;
            if batch.targets[s * batch.t..(s + 1) * batch.t]
                .iter()
                .all(|&t| t == 0)
                && batch.items[last] >= FIRST_ITEM
            {
                batch.targets[last] = batch.items[last];
                batch.items[last] = mask_token;
            }
        }
        let rows = Var::from_tensor(&model.gather_items(&batch)?).ctx("cloze leaf")?;
        leaves.push((rows.clone(), batch.items.clone()));
        let enc = model.forward(&batch, rows.as_tensor(), cx.train.then_some(&mut rng))?;
        let pos: Vec<u32> = (0..batch.b * batch.t)
            .filter(|&i| batch.targets[i] != 0)
            .map(|i| i as u32)
            .collect();
        if !pos.is_empty() {
            let targets: Vec<u32> = pos.iter().map(|&i| batch.targets[i as usize]).collect();
            let flat = enc.states.reshape((batch.b * batch.t, d)).ctx("flatten")?;
            let h = flat
                .index_select(&Tensor::from_slice(&pos, pos.len(), &dev).ctx("pos")?, 0)
                .ctx("pos")?;
            let tv = table_leaf(model, &mut leaves)?;
            let loss = SoftmaxCe::apply(&h, tv.as_tensor(), targets, FIRST_ITEM as usize)
                .ctx("cloze cross entropy")?;
            parts.push(("cloze".to_string(), loss.to_scalar::<f32>().ctx("loss")?));
            add(&mut total, loss, cfg.cloze)?;
        }
    }

    let total = total.ok_or_else(|| Error::config("objective", "no objective produced a loss"))?;
    let loss = total.to_scalar::<f32>().ctx("loss")?;
    if !loss.is_finite() {
        return Err(Error::NonFiniteLoss {
            step: cx.step,
            value: loss,
        });
    }
    let fwd_ms = t_fwd.elapsed().as_secs_f64() * 1e3;
    let t_bwd = std::time::Instant::now();
    let grads = total.backward().ctx("backward")?;
    let mut dense = Vec::with_capacity(model.dense_len()?);
    for (_, var) in model.vars()? {
        match grads.get(var.as_tensor()) {
            Some(g) => dense.extend(g.flatten_all().ctx("grad")?.to_vec1::<f32>().ctx("grad")?),
            None => dense.extend(std::iter::repeat_n(0.0, var.elem_count())),
        }
    }
    let mut items = SparseGrad {
        ids: Vec::new(),
        rows: Vec::new(),
        dim: d,
    };
    for (leaf, ids) in leaves {
        if let Some(g) = grads.get(leaf.as_tensor()) {
            let g = g
                .flatten_all()
                .ctx("item grad")?
                .to_vec1::<f32>()
                .ctx("item grad")?;
            items = items.add(&SparseGrad::from_gathered(&ids, &g, d)?)?;
        }
    }
    // padding never learns
    if items.ids.first() == Some(&0) {
        items.ids.remove(0);
        items.rows.drain(..d);
    }
    Ok(Gradients {
        dense,
        items,
        loss,
        parts,
        sequences: seqs.len(),
        fwd_ms,
        bwd_ms: t_bwd.elapsed().as_secs_f64() * 1e3,
    })
}
