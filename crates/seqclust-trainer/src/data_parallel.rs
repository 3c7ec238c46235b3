//! Data-parallel training: every rank computes the gradients of its share of the global
//! batch, and between the backward pass and the optimiser step the ranks average them — the
//! dense ones by all-reduce, the item table's row-sparse ones by all-gather (the bytes grow
//! with the rows the step touched, not with the vocabulary). Every rank then holds the same
//! gradient, bit for bit, applies the same optimiser step, and the replicas stay identical.
//!
//! The average of the ranks' mean losses equals the mean over the global batch when the
//! shares hold equal numbers of targets (as with DistributedDataParallel); losses that
//! compare examples with each other (in-batch negatives, the contrastive loss) see only the
//! rank's share, as under DDP.

use seqclust_collective::{Collective, SparseRows, all_gather_rows};
use seqclust_model::{Gradients, SparseGrad};

use crate::Result;

/// Rank `rank`'s contiguous share of a global batch of `n` (shares differ by at most one).
pub fn shard_of(n: usize, rank: usize, world: usize) -> std::ops::Range<usize> {
    n * rank / world..n * (rank + 1) / world
}

/// Replaces this rank's gradients with the average over all ranks (the loss too, for
/// reporting; `sequences` becomes the global count).
pub fn average_gradients(c: &mut dyn Collective, g: &mut Gradients) -> Result<()> {
    let world = c.world_size();
    if world == 1 {
        return Ok(());
    }
    let scale = 1.0 / world as f32;
    c.all_reduce_sum(&mut g.dense)?;
    g.dense.iter_mut().for_each(|v| *v *= scale);
    let mine = SparseRows {
        dim: g.items.dim,
        ids: std::mem::take(&mut g.items.ids),
        rows: std::mem::take(&mut g.items.rows),
    };
    let summed = all_gather_rows(c, &mine)?;
    g.items = SparseGrad {
        dim: summed.dim,
        ids: summed.ids,
        rows: summed.rows.into_iter().map(|v| v * scale).collect(),
    };
    let mut totals = [g.loss, g.sequences as f32];
    c.all_reduce_sum(&mut totals)?;
    g.loss = totals[0] * scale;
    g.sequences = totals[1].round() as usize;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn shards_cover_the_batch_once() {
        for n in [0, 1, 5, 256, 257] {
            for world in 1..=5 {
                let mut next = 0;
                for r in 0..world {
                    let s = shard_of(n, r, world);
                    assert_eq!(s.start, next);
                    assert!(s.len() <= n.div_ceil(world));
                    next = s.end;
                }
                assert_eq!(next, n);
            }
        }
    }
}
