#![doc = include_str!("../README.md")]

pub mod config;
pub mod error;
pub mod profile;
pub mod quality;
pub mod recommend;
pub mod report;
pub mod tree;

use std::collections::HashMap;

use hmac::{Hmac, Mac};
use serde_json::json;

use seqclust_data::dataset::SequenceBatch;
use seqclust_data::vocab::KeyVocab;
use seqclust_kmeans::{Centroids, KMeansConfig, Metric, Packed, Points};
use seqclust_model::SeqModel;

pub use config::{AnalysisConfig, RecommendConfig};
pub use error::{Error, Result};
pub use profile::{ClusterProfile, UserView};
pub use recommend::RecEval;
pub use tree::Surrogate;

/// Users per recommendations file.
pub const RECS_PER_FILE: usize = 100_000;
/// The trending items per cluster that `seqclust serve` blends in (`{"clusters": [[[item, score], …], …]}`).
pub const TRENDING: &str = "clusters/trending.json";
/// Trending items kept per cluster in [`TRENDING`].
pub const TRENDING_TOP: usize = 500;
/// Each item's most frequent category (`item`, `category` keys), for serving requests that
/// give items only.
pub const ITEM_CATEGORIES: &str = "model/vocab/item_categories.parquet";

/// Parquet bytes of record batches with one schema; `what` names the output in errors.
pub(crate) fn parquet_bytes(batches: &[arrow_array::RecordBatch], what: &str) -> Result<Vec<u8>> {
    let enc = |e: String| Error::Encode {
        what: what.to_string(),
        message: e,
    };
    let first = batches.first().ok_or_else(|| enc("no rows".into()))?;
    let mut buf = Vec::new();
    let mut w = parquet::arrow::ArrowWriter::try_new(&mut buf, first.schema(), None)
        .map_err(|e| enc(e.to_string()))?;
    for b in batches {
        w.write(b).map_err(|e| enc(e.to_string()))?;
    }
    w.close().map_err(|e| enc(e.to_string()))?;
    Ok(buf)
}

fn trending_json(trend: &[Vec<f32>], item: &dyn Fn(u32) -> String) -> Result<Vec<u8>> {
    let clusters: Vec<Vec<(String, f32)>> = trend
        .iter()
        .map(|row| {
            let mut idx: Vec<usize> = (0..row.len()).filter(|&i| row[i] > 0.0).collect();
            idx.sort_by(|&a, &b| row[b].total_cmp(&row[a]).then(a.cmp(&b)));
            idx.truncate(TRENDING_TOP);
            idx.into_iter().map(|i| (item(i as u32), row[i])).collect()
        })
        .collect();
    serde_json::to_vec(&json!({ "clusters": clusters })).map_err(|e| Error::Encode {
        what: TRENDING.into(),
        message: e.to_string(),
    })
}

/// Each item's most frequent category, as Parquet (`item`, `category`).
pub fn item_categories(
    batches: &[SequenceBatch],
    items: &KeyVocab,
    categories: &KeyVocab,
) -> Result<Vec<u8>> {
    use arrow_array::{ArrayRef, RecordBatch, StringArray};
    use std::sync::Arc;
    let mut counts: rustc_hash::FxHashMap<(u32, u32), u64> = rustc_hash::FxHashMap::default();
    for b in batches {
        for (&i, &c) in b.items.iter().zip(&b.categories) {
            *counts.entry((i, c)).or_default() += 1;
        }
    }
    let mut best: rustc_hash::FxHashMap<u32, (u64, u32)> = rustc_hash::FxHashMap::default();
    for ((i, c), n) in counts {
        let e = best.entry(i).or_insert((0, c));
        if n > e.0 || (n == e.0 && c < e.1) {
            *e = (n, c);
        }
    }
    let mut rows: Vec<(u32, u32)> = best.into_iter().map(|(i, (_, c))| (i, c)).collect();
    rows.sort_unstable();
    let (ik, ck): (Vec<String>, Vec<String>) = rows
        .iter()
        .filter_map(|&(i, c)| Some((items.key(i)?.to_string(), categories.key(c)?.to_string())))
        .unzip();
    let enc = |e: String| Error::Encode {
        what: ITEM_CATEGORIES.into(),
        message: e,
    };
    let batch = RecordBatch::try_from_iter(vec![
        ("item", Arc::new(StringArray::from(ik)) as ArrayRef),
        ("category", Arc::new(StringArray::from(ck))),
    ])
    .map_err(|e| enc(e.to_string()))?;
    parquet_bytes(&[batch], ITEM_CATEGORIES)
}

/// The keyed hash published instead of a user id: HMAC-SHA256 of the id, first 16 bytes, hex.
#[derive(Clone)]
pub struct Pseudonym {
    key: Option<Vec<u8>>,
}

impl Pseudonym {
    /// Ids published as they are.
    pub fn identity() -> Self {
        Pseudonym { key: None }
    }

    /// Ids published as HMAC-SHA256 under `key`.
    pub fn keyed(key: &[u8]) -> Self {
        Pseudonym {
            key: Some(key.to_vec()),
        }
    }

    /// From the configuration: the key is read from the named environment variable.
    pub fn from_config(cfg: &AnalysisConfig) -> Result<Self> {
        if !cfg.pseudonymize {
            return Ok(Pseudonym::identity());
        }
        match std::env::var(&cfg.pseudonym_key_env) {
            Ok(k) if k.len() >= 16 => Ok(Pseudonym::keyed(k.as_bytes())),
            _ => Err(Error::Config {
                field: "analysis.pseudonym_key_env".into(),
                message: format!(
                    "analysis.pseudonymize is set but ${} is unset or shorter than 16 bytes",
                    cfg.pseudonym_key_env
                ),
            }),
        }
    }

    /// Whether ids are transformed.
    pub fn is_keyed(&self) -> bool {
        self.key.is_some()
    }

    /// The published form of `id`.
    pub fn apply(&self, id: &str) -> String {
        match &self.key {
            None => id.to_string(),
            Some(k) => {
                let Ok(mut mac) = Hmac::<sha2::Sha256>::new_from_slice(k) else {
                    return id.to_string();
                };
                mac.update(id.as_bytes());
                let out = mac.finalize().into_bytes();
                out[..16].iter().map(|b| format!("{b:02x}")).collect()
            }
        }
    }
}

/// Everything the analysis reads.
pub struct RunData<'a> {
    /// Run id.
    pub run_id: &'a str,
    /// Job name.
    pub name: &'a str,
    /// Every shard of the dataset.
    pub batches: &'a [SequenceBatch],
    /// User → (cluster, distance), from the assignment files.
    pub assignments: &'a HashMap<String, (u32, f32)>,
    /// The trained model.
    pub model: &'a SeqModel,
    /// The centroids (k × d).
    pub centroids: &'a [f32],
    /// k.
    pub k: usize,
    /// The clustering metric.
    pub metric: Metric,
    /// Item vocabulary.
    pub items: &'a KeyVocab,
    /// Category vocabulary.
    pub categories: &'a KeyVocab,
    /// Action names by id.
    pub actions: &'a [String],
    /// Whether timestamps are absolute.
    pub absolute_time: bool,
    /// Training loss per logged step.
    pub loss: Vec<(f64, f64)>,
    /// k-means inertia per iteration.
    pub inertia: Vec<(f64, f64)>,
    /// Analysis settings.
    pub analysis: &'a AnalysisConfig,
    /// Recommendation settings.
    pub recommend: &'a RecommendConfig,
    /// How user ids are published.
    pub pseudonym: &'a Pseudonym,
    /// Extra lines for the report's summary table.
    pub summary: Vec<(String, String)>,
}

/// What the analysis produced: files for the run (relative paths) and a summary.
pub struct Analysis {
    /// `(path in the run, bytes)`.
    pub files: Vec<(String, Vec<u8>)>,
    /// Fidelity, recommendation quality, counts — for the manifest.
    pub summary: serde_json::Value,
}

/// Profiles, explains, recommends and reports.
pub fn analyze(r: &RunData<'_>) -> Result<Analysis> {
    let t0 = std::time::Instant::now();
    let d = r.model.config().dim;
    if r.centroids.len() != r.k * d {
        return Err(Error::Input(format!(
            "{} centroid values for k = {} and model dim {d}",
            r.centroids.len(),
            r.k
        )));
    }
    let mut views = Vec::new();
    let mut missing = 0usize;
    for b in r.batches {
        for s in b.iter() {
            match r.assignments.get(s.user) {
                Some(&(cluster, distance)) => views.push(UserView {
                    seq: s,
                    cluster,
                    distance,
                }),
                None => missing += 1,
            }
        }
    }
    if views.is_empty() {
        return Err(Error::Input("no dataset user has an assignment".into()));
    }
    let item_key = |i: u32| r.items.key(i).unwrap_or("<oov>").to_string();
    let cat_key = |c: u32| r.categories.key(c).unwrap_or("<none>").to_string();
    let names = profile::Names {
        actions: r.actions,
        item: &item_key,
        category: &cat_key,
        absolute_time: r.absolute_time,
    };
    let publish = |u: &str| r.pseudonym.apply(u);
    let mut profiles = profile::profiles(&views, r.k, names, r.analysis, &publish);
    let feats = tree::features(&views, names, r.analysis);
    let surrogate = if r.k >= 2 && views.len() >= 10 {
        let s = tree::fit(&views, r.k, &feats, r.analysis)?;
        for (p, rules) in profiles.iter_mut().zip(&s.rules) {
            p.rules = rules.clone();
        }
        Some(s)
    } else {
        None
    };
    let t_profiles = t0.elapsed().as_secs_f64();

    // embeddings: every user when recommending, else a sample for the plots
    let owned: Vec<seqclust_trainer::Owned> = views
        .iter()
        .map(|v| seqclust_trainer::Owned {
            user: v.seq.user.to_string(),
            items: v.seq.items.to_vec(),
            actions: v.seq.actions.to_vec(),
            categories: v.seq.categories.to_vec(),
            timestamps: v.seq.timestamps.to_vec(),
        })
        .collect();
    let clusters: Vec<u32> = views.iter().map(|v| v.cluster).collect();
    let packed = Packed::new(&Centroids::new(r.centroids.to_vec(), d)?, r.metric);
    let assign = |v: &[f32]| -> u32 {
        Points::new(v, d)
            .ok()
            .and_then(|p| {
                seqclust_kmeans::assign(&p, &packed)
                    .first()
                    .map(|a| a.cluster)
            })
            .unwrap_or(0)
    };
    let sample_step = (owned.len() / 3000).max(1);
    let mut files: Vec<(String, Vec<u8>)> = vec![(
        ITEM_CATEGORIES.into(),
        item_categories(r.batches, r.items, r.categories)?,
    )];
    let mut rec_eval = None;
    let (sample_vectors, sample_clusters) = if r.recommend.enabled {
        let vectors = seqclust_trainer::embed(r.model, &owned, 512)?;
        let trend = recommend::trending(
            &owned,
            &clusters,
            r.k,
            r.model.vocab().items,
            r.recommend,
            r.absolute_time,
        );
        files.push((TRENDING.into(), trending_json(&trend, &item_key)?));
        for (part, lo) in (0..owned.len()).step_by(RECS_PER_FILE).enumerate() {
            let hi = (lo + RECS_PER_FILE).min(owned.len());
            let recs = recommend::recommend(
                r.model,
                &owned[lo..hi],
                &vectors[lo * d..hi * d],
                &clusters[lo..hi],
                &trend,
                r.recommend,
            )?;
            let ids: Vec<String> = owned[lo..hi].iter().map(|u| publish(&u.user)).collect();
            files.push((
                format!("recs/part-{part:05}.parquet"),
                recommend::recs_parquet(&ids, &recs, &item_key)?,
            ));
        }
        rec_eval = Some(recommend::evaluate(
            r.model,
            &owned,
            &clusters,
            r.k,
            &assign,
            r.recommend,
            r.absolute_time,
        )?);
        let v: Vec<f32> = vectors
            .chunks(d)
            .step_by(sample_step)
            .flatten()
            .copied()
            .collect();
        let c: Vec<u32> = clusters.iter().step_by(sample_step).copied().collect();
        // the projection and the k curve show the space the clusters live in
        (r.model.cluster_vectors(v), c)
    } else {
        let sample: Vec<seqclust_trainer::Owned> =
            owned.iter().step_by(sample_step).cloned().collect();
        let c: Vec<u32> = clusters.iter().step_by(sample_step).copied().collect();
        (
            seqclust_trainer::embed_for_clusters(r.model, &sample, 512)?,
            c,
        )
    };
    let t_recs = t0.elapsed().as_secs_f64() - t_profiles;

    let projection: Vec<(f64, f64, u32)> = report::pca2(&sample_vectors, d)
        .into_iter()
        .zip(&sample_clusters)
        .map(|((x, y), &c)| (x, y, c))
        .collect();
    let k_curve = k_curve(&sample_vectors, d, r.k, r.metric)?;
    let mut summary_rows = r.summary.clone();
    summary_rows.push(("users analysed".into(), views.len().to_string()));
    if let Some(s) = &surrogate {
        summary_rows.push((
            "surrogate tree fidelity".into(),
            format!("{:.3}", s.fidelity),
        ));
    }
    if let Some(e) = &rec_eval {
        summary_rows.push((
            format!("recommendations HR@{n} / NDCG@{n}", n = e.n),
            format!(
                "blend {:.4} / {:.4}; encoder alone {:.4} / {:.4}; cluster trend alone {:.4} / {:.4} ({} users)",
                e.blend.hr, e.blend.ndcg, e.model_only.hr, e.model_only.ndcg, e.cluster_only.hr, e.cluster_only.ndcg, e.users
            ),
        ));
    }
    let page = report::render(&report::ReportInput {
        run_id: r.run_id,
        name: r.name,
        loss: r.loss.clone(),
        inertia: r.inertia.clone(),
        profiles: &profiles,
        surrogate: surrogate.as_ref(),
        projection,
        k_curve: &k_curve,
        summary: summary_rows,
    })?;
    for (name, bytes) in page {
        files.push((format!("report/{name}"), bytes));
    }
    let profiles_json = json!({
        "k": r.k,
        "users": views.len(),
        "users_without_assignment": missing,
        "pseudonymized": r.pseudonym.is_keyed(),
        "surrogate": surrogate,
        "clusters": profiles,
        "recommendations": rec_eval,
        "k_selection": k_curve,
    });
    files.push((
        "clusters/profiles.json".into(),
        serde_json::to_vec_pretty(&profiles_json).map_err(|e| Error::Encode {
            what: "profiles".into(),
            message: e.to_string(),
        })?,
    ));
    Ok(Analysis {
        files,
        summary: json!({
            "users": views.len(),
            "surrogate_fidelity": surrogate.as_ref().map(|s| s.fidelity),
            "recommendations": rec_eval,
            "seconds": { "profiles_and_tree": t_profiles, "recommendations": t_recs,
                         "total": t0.elapsed().as_secs_f64() },
        }),
    })
}

/// Inertia and silhouette for a few k around the chosen one, on the plot sample.
fn k_curve(vectors: &[f32], d: usize, k: usize, metric: Metric) -> Result<Vec<report::KPoint>> {
    let n = vectors.len() / d.max(1);
    let mut ks: Vec<usize> = [
        k / 2,
        k * 3 / 4,
        k - 1,
        k,
        k + 1,
        k * 5 / 4,
        k * 3 / 2,
        k * 2,
    ]
    .into_iter()
    .filter(|&x| x >= 2 && x * 10 <= n)
    .collect();
    ks.sort_unstable();
    ks.dedup();
    if ks.len() < 2 {
        return Ok(Vec::new());
    }
    let base = KMeansConfig {
        metric,
        ..KMeansConfig::default()
    };
    let choice = seqclust_kmeans::choose_k(&Points::new(vectors, d)?, &ks, &base, 1, 0.0)?;
    Ok(choice
        .rows
        .iter()
        .map(|r| report::KPoint {
            k: r.k,
            inertia_per_point: r.inertia_per_point,
            silhouette: r.silhouette,
        })
        .collect())
}

/// The assignments file with its user ids replaced by their pseudonyms.
pub fn pseudonymize_assignments(
    bytes: bytes::Bytes,
    location: &str,
    p: &Pseudonym,
) -> Result<Vec<u8>> {
    use arrow_array::cast::AsArray;
    use arrow_array::{Array, RecordBatch, StringArray};
    use std::sync::Arc;
    let enc = |e: String| Error::Encode {
        what: location.to_string(),
        message: e,
    };
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| enc(e.to_string()))?
        .build()
        .map_err(|e| enc(e.to_string()))?;
    let mut batches = Vec::new();
    for batch in reader {
        let batch = batch.map_err(|e| enc(e.to_string()))?;
        let Some(i) = batch.schema().index_of("user").ok() else {
            return Err(enc("no user column".into()));
        };
        let users = batch
            .column(i)
            .as_string_opt::<i32>()
            .ok_or_else(|| enc("user is not a string column".into()))?;
        let mapped: StringArray = (0..users.len())
            .map(|j| Some(p.apply(users.value(j))))
            .collect();
        let mut cols = batch.columns().to_vec();
        cols[i] = Arc::new(mapped);
        batches.push(RecordBatch::try_new(batch.schema(), cols).map_err(|e| enc(e.to_string()))?);
    }
    parquet_bytes(&batches, location)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;
    use crate::profile::{Names, UserView};
    use crate::recommend::{Trend, blend_top};

    /// Two behaviours: cluster 0 views category 2 in the morning, cluster 1 buys category 3
    /// in the evening; 1 in 20 users of each is noisy.
    fn batch() -> SequenceBatch {
        let mut b = SequenceBatch::new(false, Vec::new());
        for u in 0..400u32 {
            let c = u % 2;
            b.begin_user(&format!("u{u}"));
            for e in 0..12u32 {
                let noisy = u % 20 == 0;
                let (action, cat, hour) = match (c, noisy) {
                    (0, false) | (1, true) => (1, 2, 8),
                    _ => (5, 3, 20),
                };
                let item = 10 + cat * 100 + (u * 7 + e) % 40;
                let ts = (i64::from(u) * 86_400 + hour * 3600 + i64::from(e) * 60) * 1000;
                b.push_event(item, action, cat, ts, e / 6, 0.0, std::iter::empty());
            }
            b.end_user();
        }
        b
    }

    fn cfg() -> AnalysisConfig {
        AnalysisConfig {
            tree_depth: 3,
            min_support: 3,
            ..AnalysisConfig::default()
        }
    }

    /// The batch's users, even ones in cluster 0 and odd ones in cluster 1.
    fn alternating(b: &SequenceBatch) -> Vec<UserView<'_>> {
        b.iter()
            .enumerate()
            .map(|(i, s)| UserView {
                seq: s,
                cluster: (i % 2) as u32,
                distance: (i % 7) as f32,
            })
            .collect()
    }

    #[test]
    fn profiles_lift_and_the_surrogate_tree_explain_planted_clusters() {
        let b = batch();
        let views = alternating(&b);
        let actions: Vec<String> = ["<pad>", "view", "click", "fav", "cart", "buy"]
            .map(String::from)
            .to_vec();
        let item = |i: u32| format!("i{i}");
        let cat = |c: u32| format!("c{c}");
        let names = Names {
            actions: &actions,
            item: &item,
            category: &cat,
            absolute_time: true,
        };
        let p = profile::profiles(&views, 2, names, &cfg(), &|u: &str| u.to_string());
        assert_eq!(p[0].size, 200);
        assert_eq!(p[0].top_categories[0].key, "c2");
        assert!(p[0].top_categories[0].lift > 1.8);
        assert_eq!(p[1].peak_hour, Some(20));
        assert_eq!(p[0].medoids.len(), 3);
        assert!(p[1].actions.iter().any(|a| a.key == "buy" && a.lift > 1.5));
        assert!(p[1].motifs.iter().any(|m| m.lifted.key.contains("buy")));
        let f = tree::features(&views, names, &cfg());
        let s = tree::fit(&views, 2, &f, &cfg()).unwrap();
        // 1 in 20 users behaves like the other cluster: the best a tree can do is 0.95
        assert!(s.fidelity >= 0.9, "fidelity {}", s.fidelity);
        assert!(!s.rules[0].is_empty() && !s.rules[1].is_empty());
        assert!(s.rules[1][0].precision > 0.8);
    }

    /// Two clusters that walk the same six categories with the same actions and times, one
    /// forwards and one backwards: only the category moves tell them apart.
    #[test]
    fn the_tree_sees_the_order_of_categories() {
        let mut b = SequenceBatch::new(false, Vec::new());
        for u in 0..400u32 {
            b.begin_user(&format!("u{u}"));
            for e in 0..12u32 {
                let step = if u % 2 == 0 { e } else { 6 * 12 - e };
                let cat = 1 + (u + step) % 6;
                let ts = (i64::from(u) * 86_400 + i64::from(e) * 60) * 1000;
                b.push_event(cat * 10 + e % 3, 1, cat, ts, 0, 0.0, std::iter::empty());
            }
            b.end_user();
        }
        let views = alternating(&b);
        let actions: Vec<String> = ["<pad>", "view"].map(String::from).to_vec();
        let (item, cat) = (|i: u32| format!("i{i}"), |c: u32| format!("c{c}"));
        let names = Names {
            actions: &actions,
            item: &item,
            category: &cat,
            absolute_time: true,
        };
        let fidelity = |tree_transitions: usize| {
            let c = AnalysisConfig {
                tree_transitions,
                ..cfg()
            };
            let f = tree::features(&views, names, &c);
            tree::fit(&views, 2, &f, &c).unwrap().fidelity
        };
        let (with, without) = (fidelity(12), fidelity(0));
        assert!(with >= 0.95, "with the moves: {with}");
        assert!(without < 0.8, "without the moves: {without}");
    }

    #[test]
    fn pseudonyms_are_keyed_and_stable() {
        let p = Pseudonym::keyed(b"0123456789abcdef");
        let q = Pseudonym::keyed(b"another key, 16+");
        assert_eq!(p.apply("user-1"), p.apply("user-1"));
        assert_ne!(p.apply("user-1"), p.apply("user-2"));
        assert_ne!(p.apply("user-1"), q.apply("user-1"));
        assert_eq!(p.apply("user-1").len(), 32);
        assert_eq!(Pseudonym::identity().apply("user-1"), "user-1");
        let cfg = AnalysisConfig {
            pseudonymize: true,
            pseudonym_key_env: "SEQCLUST_TEST_SURELY_UNSET_KEY".into(),
            ..AnalysisConfig::default()
        };
        let err = Pseudonym::from_config(&cfg).err().unwrap();
        assert!(err.to_string().contains("SEQCLUST_TEST_SURELY_UNSET_KEY"));
    }

    #[test]
    fn the_blend_excludes_seen_items_and_follows_the_weights() {
        // items 0, 1 are reserved; the model prefers 5, the cluster trend prefers 7
        let scores = [9.0, 9.0, 0.1, 0.2, 0.3, 1.0, 0.4, 0.0];
        let trend = [(7u32, 1.0f32)];
        let model_only = RecommendConfig {
            n: 2,
            model_weight: 1.0,
            cluster_weight: 0.0,
            ..RecommendConfig::default()
        };
        let top = blend_top(&scores, &[], Trend::Sparse(&trend), &model_only);
        assert_eq!(top.iter().map(|t| t.0).collect::<Vec<_>>(), [5, 6]);
        let top = blend_top(&scores, &[5], Trend::Sparse(&trend), &model_only);
        assert_eq!(top[0].0, 6, "seen items are left out");
        let cluster = RecommendConfig {
            cluster_weight: 2.0,
            ..model_only
        };
        assert_eq!(
            blend_top(&scores, &[], Trend::Sparse(&trend), &cluster)[0].0,
            7
        );
    }

    #[test]
    fn bad_settings_name_their_field() {
        let c = AnalysisConfig {
            tree_depth: 0,
            ..AnalysisConfig::default()
        };
        assert!(
            c.validate()
                .unwrap_err()
                .to_string()
                .starts_with("analysis.tree_depth")
        );
        let r = RecommendConfig {
            model_weight: 0.0,
            cluster_weight: 0.0,
            ..RecommendConfig::default()
        };
        assert!(
            r.validate()
                .unwrap_err()
                .to_string()
                .starts_with("recommend.model_weight")
        );
    }
}
