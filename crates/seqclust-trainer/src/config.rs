//! A training job: `[dataset]`, `[encoder]`, `[objective]`, `[train]` (TOML).

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use seqclust_model::{EncoderConfig, ObjectiveConfig};

/// Which dataset to train on.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct DatasetRef {
    /// A dataset location (directory or URL), or `NAME[/VERSION]` under `root`.
    pub uri: String,
    /// Storage root for names.
    pub root: String,
}

impl Default for DatasetRef {
    fn default() -> Self {
        DatasetRef {
            uri: String::new(),
            root: "./seqclust-data".into(),
        }
    }
}

/// Optimisation and evaluation settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TrainConfig {
    /// Passes over the training users at most.
    pub epochs: usize,
    /// Sequences per step.
    pub batch_size: usize,
    /// Peak learning rate.
    pub lr: f32,
    /// Decoupled weight decay.
    pub weight_decay: f32,
    /// Warm-up steps (linear), then cosine decay to `lr × min_lr_ratio`.
    pub warmup_steps: u64,
    /// Final learning rate as a fraction of `lr`.
    pub min_lr_ratio: f32,
    /// Clip the global gradient norm at this (0 disables).
    pub clip_norm: f32,
    /// Seed of everything random (initialisation, order, dropout, sampling).
    pub seed: u64,
    /// Evaluate on the validation split every this many epochs (0 disables).
    pub eval_every: usize,
    /// Stop after this many evaluations without improving NDCG@10 (0 disables).
    pub patience: usize,
    /// Users evaluated (0 = all).
    pub eval_users: usize,
    /// Write a checkpoint every this many steps (0: only at each epoch end).
    pub checkpoint_every: u64,
    /// Log a step line every this many steps.
    pub log_every: u64,
    /// Start from another run's model (a run directory or URL holding `model/`): its sequence
    /// layers — every dense tensor whose name and shape fit, except the category embedding
    /// and head — are copied; the item table and the rest start fresh (cross-domain
    /// transfer). Empty: a fresh model. A run that resumes from its own checkpoint ignores it.
    pub init_from: String,
    /// Continue another run's training (a run directory or URL holding `checkpoints/`): its
    /// latest checkpoint — weights, optimiser moments, step, epoch and early-stopping state —
    /// is restored and training goes on toward `epochs`. The encoder and the dataset must be
    /// the ones it was trained with. A run with a checkpoint of its own resumes from that
    /// instead. `seqclust tune` promotes a trial to a larger budget this way.
    pub resume_from: String,
    /// End training after this many epochs of the schedule (0: `epochs`). The learning-rate
    /// schedule still spans `epochs`, so a run stopped here and continued with `resume_from`
    /// trains exactly as one run would: the budget of a successive-halving rung.
    pub stop_after_epochs: usize,
    /// Also write the int8 serving model when training ends: `model-int8/{config.json,
    /// encoder.safetensors}`, the item table and weight matrices as int8 with per-row scales
    /// (3.8× smaller at dim 64). `seqclust serve --precision int8` loads it instead of
    /// quantising `model/`; the vocabularies stay under `model/vocab/`.
    pub export_int8: bool,
    /// The teacher of `objective.distill`: a run directory or URL holding the `model/` of a
    /// model trained on this dataset (the same item vocabulary), usually a larger one. The
    /// student (this job's encoder) learns to rank the next item as the teacher does.
    pub teacher: String,
}

impl Default for TrainConfig {
    fn default() -> Self {
        TrainConfig {
            epochs: 20,
            batch_size: 256,
            lr: 1e-3,
            weight_decay: 0.0,
            warmup_steps: 100,
            min_lr_ratio: 0.1,
            clip_norm: 5.0,
            seed: 42,
            eval_every: 1,
            patience: 5,
            eval_users: 0,
            checkpoint_every: 0,
            log_every: 50,
            init_from: String::new(),
            resume_from: String::new(),
            stop_after_epochs: 0,
            export_int8: false,
            teacher: String::new(),
        }
    }
}

/// A whole training job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize, Default)]
#[serde(default, deny_unknown_fields)]
pub struct TrainJob {
    /// Input dataset.
    pub dataset: DatasetRef,
    /// Encoder architecture.
    pub encoder: EncoderConfig,
    /// Objectives.
    pub objective: ObjectiveConfig,
    /// Optimisation.
    pub train: TrainConfig,
}

impl TrainJob {
    /// Parses a TOML job file.
    pub fn from_file(path: &std::path::Path) -> Result<TrainJob> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::Write {
            what: path.display().to_string(),
            source: e,
        })?;
        toml::from_str(&text).map_err(|source| Error::ConfigFile {
            path: path.display().to_string(),
            source,
        })
    }

    /// Checks every table; errors name the field.
    pub fn validate(&self) -> Result<()> {
        if self.dataset.uri.trim().is_empty() {
            return Err(Error::config("dataset.uri", "no dataset given"));
        }
        self.encoder.validate()?;
        self.objective.validate(&self.encoder)?;
        let t = &self.train;
        if t.epochs == 0 {
            return Err(Error::config("train.epochs", "must be at least 1"));
        }
        if t.batch_size < 2 {
            return Err(Error::config("train.batch_size", "must be at least 2"));
        }
        if !(t.lr > 0.0 && t.lr.is_finite()) {
            return Err(Error::config("train.lr", "must be positive"));
        }
        if !(0.0..=1.0).contains(&t.min_lr_ratio) {
            return Err(Error::config("train.min_lr_ratio", "must be in [0, 1]"));
        }
        if !(t.weight_decay >= 0.0 && t.clip_norm >= 0.0) {
            return Err(Error::config(
                "train.weight_decay",
                "weight_decay and clip_norm must be >= 0",
            ));
        }
        if t.stop_after_epochs > t.epochs {
            return Err(Error::config(
                "train.stop_after_epochs",
                format!(
                    "{} is more than train.epochs = {} (the schedule's length)",
                    t.stop_after_epochs, t.epochs
                ),
            ));
        }
        if !t.init_from.trim().is_empty() && !t.resume_from.trim().is_empty() {
            return Err(Error::config(
                "train.resume_from",
                "give init_from (new training from another run's layers) or resume_from (continued training), not both",
            ));
        }
        let distill = self.objective.distill > 0.0;
        if distill && t.teacher.trim().is_empty() {
            return Err(Error::config(
                "train.teacher",
                "objective.distill is above 0 but no teacher model is given",
            ));
        }
        if !distill && !t.teacher.trim().is_empty() {
            return Err(Error::config(
                "objective.distill",
                "a teacher is given (train.teacher) but the distillation weight is 0",
            ));
        }
        if t.log_every == 0 {
            return Err(Error::config("train.log_every", "must be at least 1"));
        }
        Ok(())
    }
}
