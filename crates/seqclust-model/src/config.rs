//! Model and objective configuration (the `[encoder]` and `[objective]` tables of a training
//! config). `validate` names the offending field.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// The sequence encoder architecture.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum EncoderKind {
    /// Gated recurrent unit (GRU4Rec family).
    Gru,
    /// Long short-term memory.
    Lstm,
    /// SASRec: causal self-attention, learned positions, pre-LayerNorm.
    #[default]
    Transformer,
    /// Bidirectional self-attention (BERT4Rec), for the masked-item objective.
    BiTransformer,
}

/// How a sequence's states become one user vector.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Pooling {
    /// The state at the most recent event.
    #[default]
    Last,
    /// The mean over the (non-padding) events.
    Mean,
    /// A learned attention over the events.
    Attention,
}

/// Encoder settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct EncoderConfig {
    /// Architecture.
    pub kind: EncoderKind,
    /// Hidden size (and embedding size).
    pub dim: usize,
    /// Layers.
    pub layers: usize,
    /// Attention heads (Transformer); `dim` must be divisible by it.
    pub heads: usize,
    /// Feed-forward width as a multiple of `dim` (Transformer).
    pub ff_mult: usize,
    /// Dropout probability.
    pub dropout: f32,
    /// Events per sequence the encoder sees (the most recent).
    pub max_len: usize,
    /// Add an action-type embedding.
    pub use_action: bool,
    /// Add a category embedding.
    pub use_category: bool,
    /// Add an embedding of the log-bucketed time gap to the previous event.
    pub use_time_gap: bool,
    /// Number of time-gap buckets.
    pub time_buckets: usize,
    /// Add an embedding of the event's hour of the day (UTC).
    pub use_hour: bool,
    /// Output heads that predict the next event's action, category and time gap from each
    /// state (needed by `objective.next_event`; small: `dim × (actions + categories +
    /// time_buckets)` weights).
    pub event_heads: bool,
    /// PCA-whiten the user vectors that clustering sees (estimated over the training users
    /// when training ends; see `whitening`). Scoring items keeps the raw vectors.
    pub whiten: bool,
    /// How the user vector is pooled.
    pub pooling: Pooling,
    /// Scale user vectors to unit length.
    pub normalize: bool,
}

impl Default for EncoderConfig {
    fn default() -> Self {
        EncoderConfig {
            kind: EncoderKind::Transformer,
            dim: 64,
            layers: 2,
            heads: 2,
            ff_mult: 4,
            dropout: 0.2,
            max_len: 50,
            use_action: true,
            use_category: true,
            use_time_gap: true,
            time_buckets: 32,
            use_hour: false,
            event_heads: false,
            whiten: false,
            pooling: Pooling::Last,
            normalize: false,
        }
    }
}

/// Vocabulary sizes, taken from the dataset manifest (padding and OOV ids included).
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct Vocab {
    /// Item ids.
    pub items: usize,
    /// Action ids.
    pub actions: usize,
    /// Category ids.
    pub categories: usize,
}

impl EncoderConfig {
    /// Checks the settings.
    pub fn validate(&self) -> Result<()> {
        if self.dim == 0 {
            return Err(Error::config("encoder.dim", "must be at least 1"));
        }
        if self.layers == 0 {
            return Err(Error::config("encoder.layers", "must be at least 1"));
        }
        if self.max_len == 0 {
            return Err(Error::config("encoder.max_len", "must be at least 1"));
        }
        if matches!(
            self.kind,
            EncoderKind::Transformer | EncoderKind::BiTransformer
        ) {
            if self.heads == 0 || !self.dim.is_multiple_of(self.heads) {
                return Err(Error::config(
                    "encoder.heads",
                    format!(
                        "encoder.dim {} must be divisible by encoder.heads {}",
                        self.dim, self.heads
                    ),
                ));
            }
            if self.ff_mult == 0 {
                return Err(Error::config("encoder.ff_mult", "must be at least 1"));
            }
        }
        if !(0.0..1.0).contains(&self.dropout) {
            return Err(Error::config("encoder.dropout", "must be in [0, 1)"));
        }
        if self.use_time_gap && self.time_buckets < 2 {
            return Err(Error::config("encoder.time_buckets", "must be at least 2"));
        }
        Ok(())
    }
}

/// Next-item prediction loss.
#[derive(Debug, Clone, Copy, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", tag = "kind")]
pub enum NextItemLoss {
    /// Softmax over the whole item vocabulary.
    Full,
    /// Softmax over the positive and `negatives` shared samples drawn by popularity, with the
    /// log-Q correction of Yi et al. 2019.
    Sampled {
        /// Shared negatives per batch.
        negatives: usize,
    },
    /// Softmax over the batch's own next items (the most recent position of each sequence).
    InBatch,
}

/// Where next-item prediction is trained.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Positions {
    /// Every position predicts its next event (SASRec's training).
    #[default]
    All,
    /// Only the user vector predicts the next event (sequence-level; what the PyTorch reference
    /// peer trains).
    Last,
}

/// The self-supervised objectives and their weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ObjectiveConfig {
    /// Weight of next-item prediction (0 disables).
    pub next_item: f32,
    /// Its loss.
    pub next_item_loss: NextItemLoss,
    /// Which positions it is trained at (in-batch negatives always use the last).
    pub next_item_positions: Positions,
    /// Weight of the contrastive loss on augmented views (CL4SRec; 0 disables).
    pub contrastive: f32,
    /// InfoNCE temperature.
    pub temperature: f32,
    /// Fraction of a sequence kept by the crop augmentation.
    pub crop_ratio: f32,
    /// Fraction of items masked by the mask augmentation.
    pub mask_ratio: f32,
    /// Fraction of a sequence shuffled by the reorder augmentation.
    pub reorder_ratio: f32,
    /// Weight of masked-item prediction (Cloze; needs a bidirectional encoder; 0 disables).
    pub cloze: f32,
    /// Fraction of items masked for Cloze.
    pub cloze_prob: f32,
    /// Weight of next-event prediction: the next event's action, category and time-gap
    /// bucket from every state (needs `encoder.event_heads`; 0 disables). It makes the states
    /// carry *how* a user behaves, not only which item comes next.
    pub next_event: f32,
    /// Weight of the intent-contrastive loss (ICLRec): each user vector against the intent
    /// centroids, its own centroid the positive (0 disables).
    pub intent: f32,
    /// Weight of DEC's clustering loss: KL divergence from the sharpened target distribution
    /// to the Student-t soft assignment of each user vector to the centroids (0 disables).
    pub dec: f32,
    /// Number of intents: the centroids the clustering losses use, re-estimated by k-means
    /// over every training user's vector at the start of each epoch.
    pub intents: usize,
    /// Temperature of the intent-contrastive loss.
    pub intent_temperature: f32,
    /// Assign users to intents in the PCA-whitened space of their vectors (every direction
    /// of equal variance), so that a behaviour carried by a low-variance direction still gets
    /// its own intent; the losses then pull the vectors themselves toward those intents.
    pub intent_whiten: bool,
    /// Epochs trained before the clustering losses start (the first centroids come from a
    /// model that has learnt something).
    pub cluster_warmup_epochs: usize,
    /// Weight of knowledge distillation from a teacher model (`train.teacher`): the KL
    /// divergence from the teacher's softmax over the next item to the student's, both at
    /// `distill_temperature`, after each training sequence (0 disables). It trains a smaller
    /// encoder to rank as a larger one does.
    pub distill: f32,
    /// Temperature of both softmaxes of the distillation loss (the loss is scaled by its
    /// square, as in Hinton et al., so its gradients keep their size across temperatures).
    pub distill_temperature: f32,
}

impl Default for ObjectiveConfig {
    fn default() -> Self {
        ObjectiveConfig {
            next_item: 1.0,
            next_item_loss: NextItemLoss::Full,
            next_item_positions: Positions::All,
            contrastive: 0.0,
            temperature: 1.0,
            crop_ratio: 0.6,
            mask_ratio: 0.3,
            reorder_ratio: 0.2,
            cloze: 0.0,
            cloze_prob: 0.2,
            next_event: 0.0,
            intent: 0.0,
            dec: 0.0,
            intents: 8,
            intent_temperature: 1.0,
            intent_whiten: true,
            cluster_warmup_epochs: 1,
            distill: 0.0,
            distill_temperature: 2.0,
        }
    }
}

impl ObjectiveConfig {
    /// Whether a clustering loss (intent-contrastive or DEC) is on, so training needs
    /// centroids.
    pub fn clustering(&self) -> bool {
        self.intent > 0.0 || self.dec > 0.0
    }

    /// Checks the weights and parameters against the encoder.
    pub fn validate(&self, enc: &EncoderConfig) -> Result<()> {
        for (f, v) in [
            ("objective.next_item", self.next_item),
            ("objective.contrastive", self.contrastive),
            ("objective.cloze", self.cloze),
            ("objective.next_event", self.next_event),
            ("objective.intent", self.intent),
            ("objective.dec", self.dec),
            ("objective.distill", self.distill),
        ] {
            if !(v >= 0.0 && v.is_finite()) {
                return Err(Error::config(f, "must be a finite weight >= 0"));
            }
        }
        if self.next_event > 0.0 && !enc.event_heads {
            return Err(Error::config(
                "objective.next_event",
                "next-event prediction needs encoder.event_heads = true",
            ));
        }
        if self.next_event > 0.0 && enc.kind == EncoderKind::BiTransformer {
            return Err(Error::config(
                "objective.next_event",
                "next-event prediction needs a causal encoder (gru, lstm or transformer)",
            ));
        }
        if self.clustering() && self.intents < 2 {
            return Err(Error::config("objective.intents", "must be at least 2"));
        }
        if !(self.intent_temperature > 0.0 && self.intent_temperature.is_finite()) {
            return Err(Error::config(
                "objective.intent_temperature",
                "must be positive",
            ));
        }
        if !(self.distill_temperature > 0.0 && self.distill_temperature.is_finite()) {
            return Err(Error::config(
                "objective.distill_temperature",
                "must be positive",
            ));
        }
        if self.distill > 0.0 && enc.kind == EncoderKind::BiTransformer {
            return Err(Error::config(
                "objective.distill",
                "distillation of the next item needs a causal encoder (gru, lstm or transformer)",
            ));
        }
        if self.next_item + self.contrastive + self.cloze + self.next_event + self.distill <= 0.0 {
            return Err(Error::config(
                "objective",
                "every objective weight is 0: nothing to train",
            ));
        }
        if self.next_item > 0.0 && enc.kind == EncoderKind::BiTransformer {
            return Err(Error::config(
                "objective.next_item",
                "next-item prediction needs a causal encoder (gru, lstm or transformer)",
            ));
        }
        if self.cloze > 0.0 && enc.kind != EncoderKind::BiTransformer {
            return Err(Error::config(
                "objective.cloze",
                "masked-item prediction needs encoder.kind = \"bi_transformer\"",
            ));
        }
        if let NextItemLoss::Sampled { negatives } = self.next_item_loss
            && negatives == 0
        {
            return Err(Error::config(
                "objective.next_item_loss.negatives",
                "must be at least 1",
            ));
        }
        if !(self.temperature > 0.0 && self.temperature.is_finite()) {
            return Err(Error::config("objective.temperature", "must be positive"));
        }
        for (f, v) in [
            ("objective.crop_ratio", self.crop_ratio),
            ("objective.mask_ratio", self.mask_ratio),
            ("objective.reorder_ratio", self.reorder_ratio),
            ("objective.cloze_prob", self.cloze_prob),
        ] {
            if !(0.0..=1.0).contains(&v) {
                return Err(Error::config(f, "must be in [0, 1]"));
            }
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn validation_names_fields() {
        let e = EncoderConfig {
            dim: 63,
            heads: 2,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("encoder.heads"), "{e}");
        let e = EncoderConfig {
            max_len: 0,
            ..Default::default()
        }
        .validate()
        .unwrap_err();
        assert!(e.to_string().contains("encoder.max_len"));
        let enc = EncoderConfig::default();
        let e = ObjectiveConfig {
            cloze: 1.0,
            ..Default::default()
        }
        .validate(&enc)
        .unwrap_err();
        assert!(e.to_string().contains("objective.cloze"));
        let e = ObjectiveConfig {
            next_item: 0.0,
            ..Default::default()
        }
        .validate(&enc)
        .unwrap_err();
        assert!(e.to_string().contains("nothing to train"));
        let gru = EncoderConfig {
            kind: EncoderKind::Gru,
            dim: 63,
            heads: 2,
            ..Default::default()
        };
        gru.validate().unwrap();
    }

    #[test]
    fn toml_round_trip() {
        let c: ObjectiveConfig = serde_json::from_str(
            r#"{"next_item_loss": {"kind": "sampled", "negatives": 1024}, "contrastive": 0.1}"#,
        )
        .unwrap();
        assert_eq!(c.next_item_loss, NextItemLoss::Sampled { negatives: 1024 });
        assert_eq!(c.contrastive, 0.1);
    }
}
