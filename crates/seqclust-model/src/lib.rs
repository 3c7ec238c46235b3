#![doc = include_str!("../README.md")]

pub mod config;
pub mod error;
pub mod eval;
pub mod features;
pub mod item_table;
pub mod kernels;
pub mod layers;
pub mod model;
pub mod objective;
pub mod optim;
pub mod quant;
pub mod recurrent;
pub mod scoring;
pub mod transformer;
pub mod whitening;

pub use config::{
    EncoderConfig, EncoderKind, NextItemLoss, ObjectiveConfig, Pooling, Positions, Vocab,
};
pub use error::{Error, Result};
pub use eval::{HistoryMask, RankMetrics, full_ranking, full_ranking_with, sampled_ranking};
pub use features::{BatchInput, SeqInput};
pub use item_table::{AdamParams, ItemTable, SparseGrad};
pub use model::{Encoded, SeqModel};
pub use objective::{Gradients, Intents, Popularity, StepCtx, Teacher, Whitened, step};
pub use optim::{Optimizer, Schedule, StepReport};
pub use scoring::{ItemScorer, Precision};
pub use whitening::{Moments, Whitening};
