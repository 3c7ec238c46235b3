#![doc = include_str!("../README.md")]

pub mod checkpoint;
pub mod config;
pub mod data_parallel;
pub mod error;
pub mod evaluate;
pub mod examples;
pub mod intents;
pub mod train;

pub use checkpoint::{
    INT8_MODEL_DIR, ModelInfo, Transfer, init_from, load_model, model_from_bytes,
    model_tensors_int8, save_model, save_model_int8,
};
pub use config::{DatasetRef, TrainConfig, TrainJob};
pub use data_parallel::{average_gradients, shard_of};
pub use error::{Error, Result};
pub use evaluate::{Evaluation, embed, embed_for_clusters, evaluate, evaluate_scored};
pub use examples::{Holdout, Owned};
pub use train::{
    EvalLog, Observer, StepLog, TrainReport, held_out_examples, open_dataset, train, train_with,
    vocab_of,
};
