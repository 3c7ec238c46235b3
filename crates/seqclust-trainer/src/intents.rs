//! The intent centroids of the clustering objectives (ICLRec's intent-contrastive loss and
//! DEC's KL loss), re-estimated at the start of each epoch.
//!
//! Every rank embeds its share of the training users (the training prefix only: no held-out
//! event leaks into the centroids), and the group runs spherical Lloyd k-means with the same
//! partial statistics the distributed k-means phase uses ([`PartialStats`]): each rank
//! accumulates sums and counts on its users, the partials are all-gathered and merged in rank
//! order, and every rank derives the same new centroids. With `objective.intent_whiten` the
//! users are clustered in the PCA-whitened space of their vectors (mean and covariance summed
//! over the group the same way), where a behaviour carried by a low-variance direction
//! counts as much as one carried by a high-variance one. The initial centroids are k-means++
//! over a fixed sample (the first [`INIT_SAMPLE`] training users in shard order), which every
//! rank embeds itself, so the start does not depend on the number of ranks.

use rayon::prelude::*;

use seqclust_collective::Collective;
use seqclust_data::Dataset;
use seqclust_kmeans::{Centroids, Metric, Packed, PartialStats, Points, accumulate, init};
use seqclust_model::{Moments, SeqModel, Whitened, Whitening};

use crate::error::{Error, Result};
use crate::evaluate::embed;
use crate::examples::{Owned, training, users};

/// Users the initial centroids are drawn from.
pub const INIT_SAMPLE: usize = 20_000;

/// Lloyd iterations at most per re-estimation.
pub const MAX_ITERS: usize = 20;

/// What one re-estimation found.
#[derive(Debug, Clone, PartialEq)]
pub struct Intents {
    /// The intents, as the objective uses them.
    pub intents: seqclust_model::Intents,
    /// Mean cosine distance of a user to its intent (in the whitened space with whitening).
    pub inertia_per_user: f64,
    /// Users per intent.
    pub sizes: Vec<u64>,
    /// Lloyd iterations run.
    pub iterations: usize,
}

fn unit_rows(v: &mut [f32], d: usize) {
    v.par_chunks_mut(d).for_each(|r| {
        let n = r
            .iter()
            .map(|x| x * x)
            .sum::<f32>()
            .sqrt()
            .max(f32::MIN_POSITIVE);
        r.iter_mut().for_each(|x| *x /= n);
    });
}

fn embed_shards(
    model: &SeqModel,
    ds: &Dataset,
    rt: &tokio::runtime::Handle,
    shards: impl Iterator<Item = usize>,
    limit: usize,
) -> Result<Vec<f32>> {
    let d = model.config().dim;
    let mut out = Vec::new();
    for s in shards {
        let shard = rt.block_on(ds.read_shard(s))?;
        let mut seqs: Vec<Owned> = users(&shard).iter().filter_map(training).collect();
        let room = limit.saturating_sub(out.len() / d);
        seqs.truncate(room);
        out.extend(embed(model, &seqs, 512)?);
        if out.len() / d >= limit {
            break;
        }
    }
    unit_rows(&mut out, d);
    Ok(out)
}

fn kmeans_err(e: seqclust_kmeans::Error) -> Error {
    Error::config("objective.intents", e.to_string())
}

fn f64_bytes(v: &[f64]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Sums `values` (f64) over the group, in rank order (the same bits on every rank).
fn sum_f64(group: &mut dyn Collective, values: &[f64]) -> Result<Vec<f64>> {
    let all = group.all_gather(&f64_bytes(values))?;
    let mut out = vec![0.0; values.len()];
    for bytes in &all {
        if bytes.len() != values.len() * 8 {
            return Err(Error::config(
                "objective.intents",
                "a rank sent statistics of another shape",
            ));
        }
        for (o, b) in out.iter_mut().zip(bytes.chunks_exact(8)) {
            let mut a = [0u8; 8];
            a.copy_from_slice(b);
            *o += f64::from_le_bytes(a);
        }
    }
    Ok(out)
}

/// The vectors of every training user of the shards this rank owns (`shard % world == rank`).
fn embed_mine(
    model: &SeqModel,
    ds: &Dataset,
    rt: &tokio::runtime::Handle,
    rank: usize,
    world: usize,
) -> Result<Vec<f32>> {
    embed_shards(
        model,
        ds,
        rt,
        (0..ds.num_shards()).filter(|s| s % world == rank),
        usize::MAX,
    )
}

/// The PCA whitening of the group's vectors (`x` is this rank's, `n × d`), collectively.
pub fn whitening(group: &mut dyn Collective, x: &[f32], d: usize) -> Result<Whitening> {
    let sum = sum_f64(group, &Moments::of(x, d).to_flat())?;
    Moments::from_flat(&sum, d)
        .and_then(|m| m.whitening())
        .ok_or_else(|| Error::config("encoder.whiten", "no user vectors to whiten"))
}

/// Estimates the whitening of the model's user vectors over every training user, collectively
/// (each rank embeds its shards), and sets it on the model.
pub fn fit_whitening(
    model: &mut SeqModel,
    ds: &Dataset,
    rt: &tokio::runtime::Handle,
    group: &mut dyn Collective,
) -> Result<()> {
    let (rank, world) = (group.rank(), group.world_size());
    let d = model.config().dim;
    model.set_whitening(None);
    let mine = embed_mine(model, ds, rt, rank, world)?;
    let w = whitening(group, &mine, d)?;
    model.set_whitening(Some(w));
    Ok(())
}

/// Spherical Lloyd over the group from `centroids`; returns the centroids, the last pass's
/// merged statistics and the iterations run.
fn lloyd(
    group: &mut dyn Collective,
    points: &Points<'_>,
    mut centroids: Centroids,
) -> Result<(Centroids, PartialStats, usize)> {
    let (k, d) = (centroids.k(), centroids.d());
    let mut last = PartialStats::new(k, d);
    let mut iterations = 0;
    for _ in 0..MAX_ITERS {
        iterations += 1;
        let part = accumulate(points, &Packed::new(&centroids, Metric::Cosine), None);
        let all = group.all_gather(&part.to_bytes())?;
        let mut total = PartialStats::new(k, d);
        for bytes in &all {
            total
                .merge(&PartialStats::from_bytes(bytes).map_err(kmeans_err)?)
                .map_err(kmeans_err)?;
        }
        let next = total.means(&centroids, Metric::Cosine);
        let stable = total.counts == last.counts;
        centroids = next;
        last = total;
        if stable {
            break;
        }
    }
    Ok((centroids, last, iterations))
}

/// Re-estimates `k` intents from the model's current user vectors, collectively: every rank
/// of `group` must call it at the same point with the same arguments. With `whiten` the
/// users are clustered in the PCA-whitened space of their vectors, and the intents' centroids
/// in the vector space are the normalised means of their members.
pub fn estimate(
    model: &SeqModel,
    ds: &Dataset,
    rt: &tokio::runtime::Handle,
    group: &mut dyn Collective,
    k: usize,
    whiten: bool,
    seed: u64,
) -> Result<Intents> {
    let (rank, world) = (group.rank(), group.world_size());
    let d = model.config().dim;
    let sample = embed_shards(model, ds, rt, 0..ds.num_shards(), INIT_SAMPLE)?;
    if sample.len() / d < k {
        return Err(Error::config(
            "objective.intents",
            format!("{k} intents for {} training users", sample.len() / d),
        ));
    }
    let mine = embed_mine(model, ds, rt, rank, world)?;
    let white = if whiten {
        let transform = whitening(group, &mine, d)?;
        let (s, m) = (transform.apply_rows(&sample), transform.apply_rows(&mine));
        let w = Whitened {
            transform,
            centroids: Vec::new(),
        };
        Some((w, s, m))
    } else {
        None
    };
    let (white, space_sample, space_mine) = match white {
        Some((w, s, m)) => (Some(w), s, m),
        None => (None, sample, mine.clone()),
    };
    let sample_pts = Points::new(&space_sample, d).map_err(kmeans_err)?;
    let init = init::kmeans_plus_plus(&sample_pts, None, k, Metric::Cosine, seed ^ 0x1e7e_4701);
    let points = Points::new(&space_mine, d).map_err(kmeans_err)?;
    let (centroids, stats, iterations) = lloyd(group, &points, init)?;
    let users = stats.points().max(1);
    let inertia_per_user = stats.total_inertia() / users as f64;
    let sizes = stats.counts.clone();
    let intents = match white {
        None => seqclust_model::Intents {
            centroids: centroids.into_vec(),
            whitened: None,
        },
        Some(mut w) => {
            // the intents' centroids among the unit vectors themselves
            let asg = seqclust_kmeans::assign(&points, &Packed::new(&centroids, Metric::Cosine));
            let raw = Points::new(&mine, d).map_err(kmeans_err)?;
            let mut part = PartialStats::new(k, d);
            for (i, a) in asg.iter().enumerate() {
                part.add(raw.row(i), a, Metric::Cosine);
            }
            let sums = sum_f64(group, &part.sums)?;
            let counts = sum_f64(
                group,
                &part.counts.iter().map(|&c| c as f64).collect::<Vec<_>>(),
            )?;
            let mut raw_c = vec![0f32; k * d];
            for c in 0..k {
                for j in 0..d {
                    raw_c[c * d + j] = (sums[c * d + j] / counts[c].max(1.0)) as f32;
                }
            }
            unit_rows(&mut raw_c, d);
            w.centroids = centroids.into_vec();
            seqclust_model::Intents {
                centroids: raw_c,
                whitened: Some(w),
            }
        }
    };
    Ok(Intents {
        intents,
        inertia_per_user,
        sizes,
        iterations,
    })
}
