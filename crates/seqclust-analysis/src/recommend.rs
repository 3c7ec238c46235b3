//! Recommendations: per user, the top-N items of a blend of the encoder's next-item scores
//! (min-max scaled over the catalogue) and the trending items of the user's cluster (a
//! recency-weighted count, scaled by the cluster's top item), seen items optionally left out.
//! Evaluated with HR@N / NDCG@N against each user's held-out last item.

use rayon::prelude::*;
use serde::Serialize;

use seqclust_model::SeqModel;
use seqclust_model::features::FIRST_ITEM;
use seqclust_trainer::examples::{Holdout, Owned, held_out};

use crate::config::RecommendConfig;
use crate::error::{Error, Result};

/// Trending score of every item per cluster (`k` rows of `items` values, each row's max 1).
pub fn trending(
    users: &[Owned],
    clusters: &[u32],
    k: usize,
    items: usize,
    cfg: &RecommendConfig,
    absolute_time: bool,
) -> Vec<Vec<f32>> {
    let t_max = users
        .iter()
        .filter_map(|u| u.timestamps.last().copied())
        .max()
        .unwrap_or(0);
    let half_life_ms = cfg.trending_half_life_days * 86_400_000.0;
    let mut out = vec![vec![0f32; items]; k];
    for (u, &c) in users.iter().zip(clusters) {
        let Some(row) = out.get_mut(c as usize) else {
            continue;
        };
        for (&i, &t) in u.items.iter().zip(&u.timestamps) {
            if (i as usize) < items && i >= FIRST_ITEM {
                let w = if absolute_time {
                    0.5f64.powf((t_max - t).max(0) as f64 / half_life_ms) as f32
                } else {
                    1.0
                };
                row[i as usize] += w;
            }
        }
    }
    for row in &mut out {
        let max = row.iter().copied().fold(0f32, f32::max);
        if max > 0.0 {
            row.iter_mut().for_each(|v| *v /= max);
        }
    }
    out
}

/// The top `cfg.n` (item, score) of each user, best first.
pub fn recommend(
    model: &SeqModel,
    users: &[Owned],
    vectors: &[f32],
    clusters: &[u32],
    trend: &[Vec<f32>],
    cfg: &RecommendConfig,
) -> Result<Vec<Vec<(u32, f32)>>> {
    let d = model.config().dim;
    let v = model.vocab().items;
    if vectors.len() != users.len() * d || clusters.len() != users.len() {
        return Err(Error::Input(format!(
            "{} users, {} vector values (dim {d}), {} clusters",
            users.len(),
            vectors.len(),
            clusters.len()
        )));
    }
    let table = &model.items.values()[..v * d];
    let dev = candle_core::Device::Cpu;
    let items_t = candle_core::Tensor::from_slice(table, (v, d), &dev)
        .and_then(|t| t.t())
        .map_err(enc("item table"))?;
    let mut out = Vec::with_capacity(users.len());
    const CHUNK: usize = 256;
    for (c, chunk) in users.chunks(CHUNK).enumerate() {
        let lo = c * CHUNK;
        let q = candle_core::Tensor::from_slice(
            &vectors[lo * d..(lo + chunk.len()) * d],
            (chunk.len(), d),
            &dev,
        )
        .map_err(enc("user vectors"))?;
        let scores: Vec<Vec<f32>> = q
            .matmul(&items_t)
            .and_then(|s| s.to_vec2())
            .map_err(enc("scores"))?;
        let rows: Vec<Vec<(u32, f32)>> = scores
            .into_par_iter()
            .zip(chunk.par_iter().zip(&clusters[lo..lo + chunk.len()]))
            .map(|(s, (u, &cl))| {
                let t = trend
                    .get(cl as usize)
                    .map_or(Trend::None, |t| Trend::Dense(t));
                blend_top(&s, &u.items, t, cfg)
            })
            .collect();
        out.extend(rows);
    }
    Ok(out)
}

fn enc(what: &'static str) -> impl Fn(candle_core::Error) -> Error {
    move |e| Error::Encode {
        what: what.into(),
        message: e.to_string(),
    }
}

/// A cluster's trending scores: one per item, or the top items only.
#[derive(Debug, Clone, Copy)]
pub enum Trend<'a> {
    /// No trend (or a cluster without one).
    None,
    /// A score per item id.
    Dense(&'a [f32]),
    /// (item id, score) pairs; other items score 0.
    Sparse(&'a [(u32, f32)]),
}

/// Blends one user's model scores with its cluster's trend and keeps the top n.
pub fn blend_top(
    scores: &[f32],
    seen: &[u32],
    trend: Trend<'_>,
    cfg: &RecommendConfig,
) -> Vec<(u32, f32)> {
    let first = FIRST_ITEM as usize;
    if scores.len() <= first {
        return Vec::new();
    }
    let (lo, hi) = scores[first..]
        .iter()
        .fold((f32::INFINITY, f32::NEG_INFINITY), |(a, b), &s| {
            (a.min(s), b.max(s))
        });
    let scale = cfg.model_weight / (hi - lo).max(1e-12);
    let cw = cfg.cluster_weight;
    let mut blended: Vec<f32> = match trend {
        Trend::Dense(t) if cw > 0.0 && t.len() == scores.len() => scores
            .iter()
            .zip(t)
            .map(|(&s, &t)| (s - lo) * scale + cw * t)
            .collect(),
        _ => scores.iter().map(|&s| (s - lo) * scale).collect(),
    };
    if let Trend::Sparse(t) = trend
        && cw > 0.0
    {
        for &(i, v) in t {
            if let Some(b) = blended.get_mut(i as usize) {
                *b += cw * v;
            }
        }
    }
    blended[..first].fill(f32::NEG_INFINITY);
    if cfg.exclude_seen {
        for &i in seen {
            if let Some(v) = blended.get_mut(i as usize) {
                *v = f32::NEG_INFINITY;
            }
        }
    }
    let mut idx: Vec<u32> = (0..blended.len() as u32)
        .filter(|&i| blended[i as usize] > f32::NEG_INFINITY)
        .collect();
    let n = cfg.n.min(idx.len());
    if n == 0 {
        return Vec::new();
    }
    let cmp = |a: &u32, b: &u32| {
        blended[*b as usize]
            .total_cmp(&blended[*a as usize])
            .then(a.cmp(b))
    };
    idx.select_nth_unstable_by(n - 1, cmp);
    idx.truncate(n);
    idx.sort_by(cmp);
    idx.into_iter().map(|i| (i, blended[i as usize])).collect()
}

/// HR@n and NDCG@n.
#[derive(Debug, Clone, Copy, Default, Serialize)]
pub struct HitRate {
    /// Hit rate.
    pub hr: f64,
    /// Normalised discounted cumulative gain.
    pub ndcg: f64,
}

/// Recommendation quality on held-out last items.
#[derive(Debug, Clone, Serialize)]
pub struct RecEval {
    /// Users evaluated.
    pub users: usize,
    /// The cut-off (`recommend.n`).
    pub n: usize,
    /// The configured blend.
    pub blend: HitRate,
    /// Encoder scores alone.
    pub model_only: HitRate,
    /// Cluster trend alone.
    pub cluster_only: HitRate,
}

/// Evaluates the blend (and each side alone) on up to `cfg.eval_users` users: each user's
/// last item is held out, the rest is embedded and assigned with `assign`, and the trend is
/// counted over the histories only (under each user's cluster, `user_clusters`).
pub fn evaluate(
    model: &SeqModel,
    users: &[Owned],
    user_clusters: &[u32],
    k: usize,
    assign: &(dyn Fn(&[f32]) -> u32 + Sync),
    cfg: &RecommendConfig,
    absolute_time: bool,
) -> Result<RecEval> {
    let step = (users.len() / cfg.eval_users.max(1)).max(1);
    let examples: Vec<(Owned, u32)> = users
        .iter()
        .step_by(step)
        .take(cfg.eval_users)
        .filter_map(|u| held_out(u, Holdout::Test))
        .collect();
    let hist: Vec<Owned> = examples.iter().map(|(h, _)| h.clone()).collect();
    let d = model.config().dim;
    let vectors = seqclust_trainer::embed(model, &hist, 512)?;
    let clusters: Vec<u32> = model
        .cluster_vectors(vectors.clone())
        .chunks(d)
        .map(assign)
        .collect();
    // the trend counts every user's history (its last item left out) under its cluster
    let (all_hist, all_clusters): (Vec<Owned>, Vec<u32>) = users
        .iter()
        .zip(user_clusters)
        .filter_map(|(u, &c)| held_out(u, Holdout::Test).map(|(h, _)| (h, c)))
        .unzip();
    let trend = trending(
        &all_hist,
        &all_clusters,
        k,
        model.vocab().items,
        cfg,
        absolute_time,
    );
    let score = |mw: f32, cw: f32| -> Result<HitRate> {
        let c = RecommendConfig {
            model_weight: mw,
            cluster_weight: cw,
            ..cfg.clone()
        };
        let recs = recommend(model, &hist, &vectors, &clusters, &trend, &c)?;
        let mut hr = 0.0;
        let mut ndcg = 0.0;
        for (r, (_, target)) in recs.iter().zip(&examples) {
            if let Some(pos) = r.iter().position(|(i, _)| i == target) {
                hr += 1.0;
                ndcg += 1.0 / ((pos + 2) as f64).log2();
            }
        }
        let n = examples.len().max(1) as f64;
        Ok(HitRate {
            hr: hr / n,
            ndcg: ndcg / n,
        })
    };
    Ok(RecEval {
        users: examples.len(),
        n: cfg.n,
        blend: score(cfg.model_weight, cfg.cluster_weight)?,
        model_only: score(1.0, 0.0)?,
        cluster_only: score(0.0, 1.0)?,
    })
}

/// The recommendations as Parquet in long form: `user`, `rank` (from 1), `item`, `score`.
pub fn recs_parquet(
    users: &[String],
    recs: &[Vec<(u32, f32)>],
    item: &dyn Fn(u32) -> String,
) -> Result<Vec<u8>> {
    use arrow_array::{ArrayRef, Float32Array, RecordBatch, StringArray, UInt32Array};
    use std::sync::Arc;
    let mut u = Vec::new();
    let mut rank = Vec::new();
    let mut it = Vec::new();
    let mut sc = Vec::new();
    for (id, r) in users.iter().zip(recs) {
        for (j, &(i, s)) in r.iter().enumerate() {
            u.push(id.as_str());
            rank.push(j as u32 + 1);
            it.push(item(i));
            sc.push(s);
        }
    }
    let batch = RecordBatch::try_from_iter(vec![
        ("user", Arc::new(StringArray::from(u)) as ArrayRef),
        ("rank", Arc::new(UInt32Array::from(rank))),
        ("item", Arc::new(StringArray::from(it))),
        ("score", Arc::new(Float32Array::from(sc))),
    ])
    .map_err(|e| Error::Encode {
        what: "recommendations".into(),
        message: e.to_string(),
    })?;
    crate::parquet_bytes(&[batch], "recommendations")
}
