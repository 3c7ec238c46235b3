//! Deterministic shard and user order for a (seed, epoch, rank, world).

use rand::SeedableRng;
use rand::rngs::ChaCha8Rng;
use rand::seq::SliceRandom;

/// Which shards a rank reads in an epoch, and in what order its users come.
///
/// Shards are permuted with a ChaCha8 stream seeded from `(seed, epoch)`, and rank `r` of `w`
/// takes the permuted positions `r, r + w, r + 2w, …`, so the ranks together read every shard
/// exactly once per epoch. Users within a shard are permuted from `(seed, epoch, shard)`, so the
/// order does not depend on which rank reads the shard.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct ShardSampler {
    /// Base seed.
    pub seed: u64,
    /// This rank.
    pub rank: usize,
    /// Number of ranks.
    pub world: usize,
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl ShardSampler {
    /// One rank of `world`.
    pub fn new(seed: u64, rank: usize, world: usize) -> Self {
        assert!(
            world > 0 && rank < world,
            "rank {rank} out of world {world}"
        );
        ShardSampler { seed, rank, world }
    }

    /// The shards this rank reads in `epoch`, in order.
    pub fn shards_for(&self, epoch: u64, num_shards: usize) -> Vec<usize> {
        let mut all: Vec<usize> = (0..num_shards).collect();
        let mut rng = ChaCha8Rng::seed_from_u64(mix(self.seed ^ mix(epoch)));
        all.shuffle(&mut rng);
        all.into_iter()
            .skip(self.rank)
            .step_by(self.world)
            .collect()
    }

    /// The order of the `n` users of `shard` in `epoch`.
    pub fn user_order(&self, epoch: u64, shard: usize, n: usize) -> Vec<u32> {
        let mut order: Vec<u32> = (0..n as u32).collect();
        let mut rng =
            ChaCha8Rng::seed_from_u64(mix(self.seed ^ mix(epoch ^ mix(shard as u64 + 1))));
        order.shuffle(&mut rng);
        order
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use proptest::prelude::*;

    proptest! {
        #[test]
        fn ranks_cover_every_shard_once(seed in any::<u64>(), epoch in 0u64..100, world in 1usize..9, shards in 0usize..200) {
            let mut seen = vec![0u32; shards];
            for rank in 0..world {
                for s in ShardSampler::new(seed, rank, world).shards_for(epoch, shards) {
                    seen[s] += 1;
                }
            }
            prop_assert!(seen.iter().all(|&c| c == 1));
        }
    }

    #[test]
    fn deterministic_and_epoch_dependent() {
        let s = ShardSampler::new(7, 0, 1);
        assert_eq!(s.shards_for(3, 50), s.shards_for(3, 50));
        assert_ne!(s.shards_for(3, 50), s.shards_for(4, 50));
        assert_eq!(
            s.user_order(1, 2, 100),
            ShardSampler::new(7, 1, 2).user_order(1, 2, 100)
        );
        let mut o = s.user_order(1, 2, 100);
        o.sort();
        assert_eq!(o, (0..100).collect::<Vec<_>>());
    }
}
