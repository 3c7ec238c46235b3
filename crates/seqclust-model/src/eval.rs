//! Ranking evaluation of next-item prediction: HR@K, NDCG@K and MRR, over the full item set
//! (the S3-Rec / ICLRec protocol) or against sampled negatives.

use std::collections::{BTreeMap, HashSet};

use rand::RngExt;
use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use serde::{Deserialize, Serialize};

use crate::error::Result;
use crate::features::FIRST_ITEM;
use crate::scoring::{ItemScorer, Precision};

/// How items the user already interacted with are treated in full ranking.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum HistoryMask {
    /// Removed from the ranking (the target itself is never removed).
    #[default]
    Exclude,
    /// Their score set to 0, as the S3-Rec / ICLRec evaluation code does.
    Zero,
    /// Kept.
    None,
}

/// Ranking metrics over users.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct RankMetrics {
    /// Users evaluated.
    pub users: usize,
    /// Hit rate at each K.
    pub hr: BTreeMap<usize, f64>,
    /// NDCG at each K.
    pub ndcg: BTreeMap<usize, f64>,
    /// Mean reciprocal rank.
    pub mrr: f64,
}

impl RankMetrics {
    fn from_ranks(ranks: &[usize], ks: &[usize]) -> RankMetrics {
        let n = ranks.len().max(1) as f64;
        let mut m = RankMetrics {
            users: ranks.len(),
            ..Default::default()
        };
        for &k in ks {
            m.hr.insert(k, ranks.iter().filter(|&&r| r < k).count() as f64 / n);
            m.ndcg.insert(
                k,
                ranks
                    .iter()
                    .filter(|&&r| r < k)
                    .map(|&r| 1.0 / ((r + 2) as f64).log2())
                    .sum::<f64>()
                    / n,
            );
        }
        m.mrr = ranks.iter().map(|&r| 1.0 / (r + 1) as f64).sum::<f64>() / n;
        m
    }
}

/// Rank of the target among all items (0 = first): the number of candidate items that score
/// strictly higher.
fn rank_of(scores: &[f32], target: usize, history: &HashSet<u32>, mask: HistoryMask) -> usize {
    let ts = scores[target];
    let mut rank = 0;
    for (i, &s) in scores.iter().enumerate().skip(FIRST_ITEM as usize) {
        if i == target {
            continue;
        }
        let s = if history.contains(&(i as u32)) {
            match mask {
                HistoryMask::Exclude => continue,
                HistoryMask::Zero => 0.0,
                HistoryMask::None => s,
            }
        } else {
            s
        };
        if s > ts {
            rank += 1;
        }
    }
    rank
}

/// What ranking evaluation looks at: `users` is `n × d` user vectors, `items` the `v × d`
/// item table, `targets[i]` user i's held-out item, `histories[i]` the items it saw before.
#[derive(Debug, Clone, Copy)]
pub struct Candidates<'a> {
    /// User vectors, row-major.
    pub users: &'a [f32],
    /// Item table, row-major.
    pub items: &'a [f32],
    /// Vector width.
    pub d: usize,
    /// Held-out item per user.
    pub targets: &'a [u32],
    /// Earlier items per user.
    pub histories: &'a [Vec<u32>],
}

/// Full-ranking metrics (see [`Candidates`]), with f32 scores.
pub fn full_ranking(c: Candidates<'_>, ks: &[usize], mask: HistoryMask) -> Result<RankMetrics> {
    let scorer = ItemScorer::new(c.items, c.items.len() / c.d.max(1), c.d, Precision::F32)?;
    full_ranking_with(c, &scorer, ks, mask)
}

/// Full-ranking metrics with the scores of `scorer`, which holds `c.items` (in f32 or int8:
/// what serving with that precision ranks).
pub fn full_ranking_with(
    c: Candidates<'_>,
    scorer: &ItemScorer,
    ks: &[usize],
    mask: HistoryMask,
) -> Result<RankMetrics> {
    let Candidates {
        users,
        d,
        targets,
        histories,
        ..
    } = c;
    let n = targets.len();
    let v = scorer.rows();
    let mut ranks = Vec::with_capacity(n);
    const BLOCK: usize = 512;
    for a in (0..n).step_by(BLOCK) {
        let b = (a + BLOCK).min(n);
        let scores = scorer.scores(&users[a * d..b * d])?;
        for (k, row) in scores.chunks_exact(v).enumerate() {
            let i = a + k;
            let h: HashSet<u32> = histories[i]
                .iter()
                .copied()
                .filter(|&x| x != targets[i])
                .collect();
            ranks.push(rank_of(row, targets[i] as usize, &h, mask));
        }
    }
    Ok(RankMetrics::from_ranks(&ranks, ks))
}

/// Metrics against `negatives` items drawn uniformly from those the user never interacted
/// with (deterministic for `seed`, like S3-Rec's `np.random.seed(12345)` protocol).
pub fn sampled_ranking(
    c: Candidates<'_>,
    negatives: usize,
    ks: &[usize],
    seed: u64,
) -> RankMetrics {
    let Candidates {
        users,
        items,
        d,
        targets,
        histories,
    } = c;
    let v = items.len() / d;
    let mut r = ChaCha8Rng::seed_from_u64(seed);
    let dot = |u: &[f32], i: usize| -> f32 {
        u.iter()
            .zip(&items[i * d..(i + 1) * d])
            .map(|(a, b)| a * b)
            .sum()
    };
    let mut ranks = Vec::with_capacity(targets.len());
    for (i, &t) in targets.iter().enumerate() {
        let u = &users[i * d..(i + 1) * d];
        let seen: HashSet<u32> = histories[i].iter().copied().chain([t]).collect();
        let ts = dot(u, t as usize);
        let mut rank = 0;
        let mut drawn = 0;
        while drawn < negatives && seen.len() + drawn < v - FIRST_ITEM as usize {
            let c = r.random_range(FIRST_ITEM..v as u32);
            if seen.contains(&c) {
                continue;
            }
            drawn += 1;
            if dot(u, c as usize) > ts {
                rank += 1;
            }
        }
        ranks.push(rank);
    }
    RankMetrics::from_ranks(&ranks, ks)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ranks_and_metrics() {
        // 1-d items with scores equal to their value
        let items = [0.0f32, 0.0, 5.0, 4.0, 3.0, 2.0];
        let c = |users, targets, histories| Candidates {
            users,
            items: &items,
            d: 1,
            targets,
            histories,
        };
        let two = [vec![2u32], vec![]];
        let m = full_ranking(c(&[1.0, 1.0], &[4, 2], &two), &[1, 2], HistoryMask::Exclude).unwrap();
        // user 0: item 4 (3.0) behind item 3 (4.0); item 2 is history → rank 1
        // user 1: item 2 is first → rank 0
        assert_eq!(m.hr[&1], 0.5);
        assert_eq!(m.hr[&2], 1.0);
        assert!((m.ndcg[&2] - (1.0 / 3f64.log2() + 1.0) / 2.0).abs() < 1e-12);
        assert!((m.mrr - 0.75).abs() < 1e-12);
        let one = [vec![2u32]];
        let none = full_ranking(c(&[1.0], &[4], &one), &[1], HistoryMask::None).unwrap();
        assert_eq!(none.hr[&1], 0.0);
        // scores negated: item 5 (−2) is best among unseen, history item 2 scored 0 > −2
        let zero = full_ranking(c(&[-1.0], &[5], &one), &[1], HistoryMask::Zero).unwrap();
        assert_eq!(zero.hr[&1], 0.0);
        let empty = [Vec::<u32>::new()];
        let s = sampled_ranking(c(&[1.0], &[2], &empty), 3, &[1], 7);
        assert_eq!(s.hr[&1], 1.0);
    }
}
