//! Training, validation and test examples of a dataset under the leave-one-out split.

use seqclust_data::{SequenceBatch, SplitPolicy};
use seqclust_model::SeqInput;
use seqclust_model::features::FIRST_ITEM;

/// One user's events, owned.
#[derive(Debug, Clone, PartialEq)]
pub struct Owned {
    /// User key.
    pub user: String,
    /// Item ids.
    pub items: Vec<u32>,
    /// Action ids.
    pub actions: Vec<u16>,
    /// Category ids.
    pub categories: Vec<u32>,
    /// Timestamps (ms).
    pub timestamps: Vec<i64>,
}

impl Owned {
    /// A view for the model.
    pub fn input(&self) -> SeqInput<'_> {
        SeqInput {
            items: &self.items,
            actions: &self.actions,
            categories: &self.categories,
            timestamps: &self.timestamps,
        }
    }

    fn prefix(&self, n: usize) -> Owned {
        Owned {
            user: self.user.clone(),
            items: self.items[..n].to_vec(),
            actions: self.actions[..n].to_vec(),
            categories: self.categories[..n].to_vec(),
            timestamps: self.timestamps[..n].to_vec(),
        }
    }
}

/// Every user of a shard.
pub fn users(batch: &SequenceBatch) -> Vec<Owned> {
    batch
        .iter()
        .map(|s| Owned {
            user: s.user.to_string(),
            items: s.items.to_vec(),
            actions: s.actions.to_vec(),
            categories: s.categories.to_vec(),
            timestamps: s.timestamps.to_vec(),
        })
        .collect()
}

/// The training part of a user's sequence (everything before the validation target), if it
/// has at least two events to learn from.
pub fn training(u: &Owned) -> Option<Owned> {
    let r = SplitPolicy::LeaveOneOut.split(&u.timestamps);
    (r.train.end >= 2).then(|| u.prefix(r.train.end))
}

/// Which held-out event an example predicts.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Holdout {
    /// The second-to-last event.
    Valid,
    /// The last event.
    Test,
}

/// An evaluation example: the events before the target, and the target item.
pub fn held_out(u: &Owned, which: Holdout) -> Option<(Owned, u32)> {
    let r = SplitPolicy::LeaveOneOut.split(&u.timestamps);
    let range = match which {
        Holdout::Valid => r.valid,
        Holdout::Test => r.test,
    };
    let t = range.start;
    (range.len() == 1 && t >= 1 && u.items[t] >= FIRST_ITEM).then(|| (u.prefix(t), u.items[t]))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leave_one_out_examples() {
        let u = Owned {
            user: "u".into(),
            items: vec![2, 3, 4, 5, 6],
            actions: vec![1; 5],
            categories: vec![0; 5],
            timestamps: vec![1, 2, 3, 4, 5],
        };
        assert_eq!(training(&u).unwrap().items, vec![2, 3, 4]);
        let (vin, vt) = held_out(&u, Holdout::Valid).unwrap();
        assert_eq!((vin.items, vt), (vec![2, 3, 4], 5));
        let (tin, tt) = held_out(&u, Holdout::Test).unwrap();
        assert_eq!((tin.items, tt), (vec![2, 3, 4, 5], 6));
        let short = u.prefix(3);
        assert!(
            training(&short).is_none(),
            "one training event is nothing to learn from"
        );
        assert!(held_out(&short, Holdout::Test).is_some());
    }
}
