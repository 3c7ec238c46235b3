//! The shared item catalogue: items with categories and Zipf popularity.

use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;
use rand::{Rng, RngExt, SeedableRng};

/// Items grouped into categories; every persona draws from the same popularity.
#[derive(Debug, Clone)]
pub(crate) struct Catalog {
    /// Items of each category, most popular first.
    by_cat: Vec<Vec<u32>>,
    /// Cumulative popularity within each category (same order as `by_cat`).
    cum_in_cat: Vec<Vec<f64>>,
    /// Cumulative popularity of the categories.
    cum_cat: Vec<f64>,
    /// Category of each item.
    pub item_cat: Vec<u32>,
    /// Categories ordered by popularity (most popular first).
    pub popular_cats: Vec<u32>,
}

fn pick(cum: &[f64], u: f64) -> usize {
    let total = *cum.last().unwrap_or(&1.0);
    cum.partition_point(|&c| c < u * total)
        .min(cum.len().saturating_sub(1))
}

impl Catalog {
    pub fn new(items: u32, categories: u32, zipf_s: f64, seed: u64) -> Catalog {
        let mut rng = ChaCha8Rng::seed_from_u64(seed ^ 0xC47A_1060);
        // popularity by rank, ranks shuffled over item ids
        let mut ids: Vec<u32> = (0..items).collect();
        ids.shuffle(&mut rng);
        let mut weight = vec![0f64; items as usize];
        for (rank, &id) in ids.iter().enumerate() {
            weight[id as usize] = 1.0 / ((rank + 1) as f64).powf(zipf_s);
        }
        // category sizes are skewed too: item -> category by a Zipf(0.7) draw
        let cat_cum: Vec<f64> = (0..categories)
            .scan(0.0, |acc, c| {
                *acc += 1.0 / f64::from(c + 1).powf(0.7);
                Some(*acc)
            })
            .collect();
        let mut item_cat = vec![0u32; items as usize];
        for (i, c) in item_cat.iter_mut().enumerate() {
            // the first `categories` items seed every category so none is empty
            *c = if (i as u32) < categories {
                i as u32
            } else {
                pick(&cat_cum, rng.random::<f64>()) as u32
            };
        }
        let mut by_cat: Vec<Vec<u32>> = vec![Vec::new(); categories as usize];
        for (i, &c) in item_cat.iter().enumerate() {
            by_cat[c as usize].push(i as u32);
        }
        for list in &mut by_cat {
            list.sort_by(|a, b| {
                weight[*b as usize]
                    .total_cmp(&weight[*a as usize])
                    .then(a.cmp(b))
            });
        }
        let cum_in_cat: Vec<Vec<f64>> = by_cat
            .iter()
            .map(|l| {
                l.iter()
                    .scan(0.0, |acc, &i| {
                        *acc += weight[i as usize];
                        Some(*acc)
                    })
                    .collect()
            })
            .collect();
        let cat_weight: Vec<f64> = cum_in_cat
            .iter()
            .map(|c| *c.last().unwrap_or(&0.0))
            .collect();
        let cum_cat = cat_weight
            .iter()
            .scan(0.0, |acc, w| {
                *acc += w;
                Some(*acc)
            })
            .collect();
        let mut popular_cats: Vec<u32> = (0..categories).collect();
        popular_cats.sort_by(|a, b| {
            cat_weight[*b as usize]
                .total_cmp(&cat_weight[*a as usize])
                .then(a.cmp(b))
        });
        Catalog {
            by_cat,
            cum_in_cat,
            cum_cat,
            item_cat,
            popular_cats,
        }
    }

    /// A category by overall popularity.
    pub fn category(&self, rng: &mut impl Rng) -> u32 {
        pick(&self.cum_cat, rng.random::<f64>()) as u32
    }

    /// An item of category `c` by popularity.
    pub fn item_in(&self, c: u32, rng: &mut impl Rng) -> u32 {
        let c = c as usize;
        self.by_cat[c][pick(&self.cum_in_cat[c], rng.random::<f64>())]
    }

    /// An item by overall popularity.
    pub fn item(&self, rng: &mut impl Rng) -> u32 {
        let c = self.category(rng);
        self.item_in(c, rng)
    }
}
