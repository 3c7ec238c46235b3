//! The `[analysis]` and `[recommend]` sections of a job.

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};

/// How clusters are profiled and explained.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct AnalysisConfig {
    /// Run the analysis (profiles, surrogate tree, report) before the commit.
    pub enabled: bool,
    /// Items and categories listed per cluster (by lift).
    pub top_items: usize,
    /// A listed item, category or motif must occur in at least this many of the cluster's users…
    pub min_support: u64,
    /// … and in at least this share of them (lift over rare keys is noise).
    pub min_share: f64,
    /// Lengths of the action/category n-grams mined as motifs.
    pub motif_lengths: Vec<usize>,
    /// Motifs listed per cluster.
    pub top_motifs: usize,
    /// Medoid users listed per cluster (the users nearest the centroid).
    pub medoids: usize,
    /// Depth of the surrogate decision tree.
    pub tree_depth: usize,
    /// Users the tree is fitted on (a deterministic sample; 20 % more are held out for fidelity).
    pub tree_users: usize,
    /// Categories that get their own feature (the most frequent ones).
    pub tree_categories: usize,
    /// Moves between two categories (consecutive events in different categories) that get
    /// their own feature, the most frequent ones: the order of a behaviour, which shares of
    /// categories do not see.
    pub tree_transitions: usize,
    /// Publish user ids as a keyed hash (HMAC-SHA256) instead of the raw id.
    pub pseudonymize: bool,
    /// Environment variable holding the pseudonymisation key (read by the coordinator and
    /// the workers; never written anywhere).
    pub pseudonym_key_env: String,
}

impl Default for AnalysisConfig {
    fn default() -> Self {
        AnalysisConfig {
            enabled: true,
            top_items: 10,
            min_support: 5,
            min_share: 0.01,
            motif_lengths: vec![2, 3],
            top_motifs: 5,
            medoids: 3,
            tree_depth: 8,
            tree_users: 40_000,
            tree_categories: 24,
            tree_transitions: 24,
            pseudonymize: false,
            pseudonym_key_env: "SEQCLUST_PSEUDONYM_KEY".into(),
        }
    }
}

impl AnalysisConfig {
    /// Checks ranges; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, message: &str| {
            Err(Error::Config {
                field: format!("analysis.{field}"),
                message: message.into(),
            })
        };
        if self.top_items == 0 || self.top_items > 1000 {
            return bad("top_items", "must be in 1..=1000");
        }
        if !(0.0..1.0).contains(&self.min_share) {
            return bad("min_share", "must be in [0, 1)");
        }
        if self.motif_lengths.iter().any(|&n| !(1..=5).contains(&n)) {
            return bad("motif_lengths", "each length must be in 1..=5");
        }
        if !(1..=20).contains(&self.tree_depth) {
            return bad("tree_depth", "must be in 1..=20");
        }
        if self.tree_users < 10 {
            return bad("tree_users", "must be at least 10");
        }
        if self.pseudonymize && self.pseudonym_key_env.is_empty() {
            return bad("pseudonym_key_env", "must name an environment variable");
        }
        Ok(())
    }
}

/// How recommendations are produced.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct RecommendConfig {
    /// Write `recs/part-NNNNN.parquet` for every user.
    pub enabled: bool,
    /// Items per user.
    pub n: usize,
    /// Weight of the encoder's next-item score (min-max scaled per user).
    pub model_weight: f32,
    /// Weight of the user's cluster's trending items (scaled by the cluster's top item).
    pub cluster_weight: f32,
    /// Leave out items the user has already interacted with.
    pub exclude_seen: bool,
    /// Half-life of the trending score in days (datasets with absolute time; otherwise all
    /// events count the same).
    pub trending_half_life_days: f64,
    /// Users evaluated with HR/NDCG against their held-out last item.
    pub eval_users: usize,
}

impl Default for RecommendConfig {
    fn default() -> Self {
        RecommendConfig {
            enabled: true,
            n: 10,
            model_weight: 0.7,
            cluster_weight: 0.3,
            exclude_seen: true,
            trending_half_life_days: 7.0,
            eval_users: 5000,
        }
    }
}

impl RecommendConfig {
    /// Checks ranges; errors name the field.
    pub fn validate(&self) -> Result<()> {
        let bad = |field: &str, message: &str| {
            Err(Error::Config {
                field: format!("recommend.{field}"),
                message: message.into(),
            })
        };
        if self.n == 0 || self.n > 1000 {
            return bad("n", "must be in 1..=1000");
        }
        if !(self.model_weight >= 0.0 && self.cluster_weight >= 0.0)
            || self.model_weight + self.cluster_weight <= 0.0
        {
            return bad(
                "model_weight",
                "model_weight and cluster_weight must be ≥ 0 and not both 0",
            );
        }
        if self.trending_half_life_days.is_nan() || self.trending_half_life_days <= 0.0 {
            return bad("trending_half_life_days", "must be > 0");
        }
        Ok(())
    }
}
