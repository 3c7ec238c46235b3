#![doc = include_str!("../README.md")]

pub mod assign;
pub mod choose_k;
pub mod error;
pub mod init;
pub mod kmeans;
pub mod labels;
pub mod matrix;
pub mod metrics;
pub mod partial;
mod rng;
pub mod spectral;
pub mod stable_ids;
pub mod ward;

pub use assign::{Assignment, Isa, Metric, Packed, assign, assign_into, distances_into};
pub use choose_k::{KChoice, KRow, choose_k};
pub use error::{Error, Result};
pub use init::Init;
pub use kmeans::{
    Algorithm, IterStat, KMeansConfig, KMeansModel, fit, fit_from, repair_empty, total_variance,
};
pub use labels::{adjusted_rand_index, normalized_mutual_info, purity};
pub use matrix::{Centroids, Points};
pub use metrics::{Quality, quality};
pub use partial::{PartialStats, accumulate};
pub use spectral::spectral;
pub use stable_ids::{IdMatch, match_ids, moved_mass};
pub use ward::{Dendrogram, ward};
