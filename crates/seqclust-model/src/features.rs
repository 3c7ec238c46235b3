//! From sequences to padded model inputs.
//!
//! Sequences are left-padded to a common length `T` (the most recent event is always at
//! position `T − 1`, as in SASRec), with id 0 as padding in every vocabulary. For next-item
//! training the inputs are events `0..n−1` and the targets events `1..n`.

/// One user's events (ids from the dataset's vocabularies), oldest first.
#[derive(Debug, Clone, Copy)]
pub struct SeqInput<'a> {
    /// Item ids.
    pub items: &'a [u32],
    /// Action ids.
    pub actions: &'a [u16],
    /// Category ids.
    pub categories: &'a [u32],
    /// Timestamps (ms).
    pub timestamps: &'a [i64],
}

impl SeqInput<'_> {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no events.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }

    /// The first `n` events.
    pub fn prefix(&self, n: usize) -> Self {
        let n = n.min(self.len());
        SeqInput {
            items: &self.items[..n],
            actions: &self.actions[..n],
            categories: &self.categories[..n],
            timestamps: &self.timestamps[..n],
        }
    }
}

/// One sequence's events, owned (augmented views, appended tokens).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SeqBuf {
    /// Item ids.
    pub items: Vec<u32>,
    /// Action ids.
    pub actions: Vec<u16>,
    /// Category ids.
    pub categories: Vec<u32>,
    /// Timestamps (ms).
    pub timestamps: Vec<i64>,
}

impl SeqBuf {
    /// A copy of a view.
    pub fn from_input(s: &SeqInput<'_>) -> SeqBuf {
        SeqBuf {
            items: s.items.to_vec(),
            actions: s.actions.to_vec(),
            categories: s.categories.to_vec(),
            timestamps: s.timestamps.to_vec(),
        }
    }

    /// A view for the model.
    pub fn input(&self) -> SeqInput<'_> {
        SeqInput {
            items: &self.items,
            actions: &self.actions,
            categories: &self.categories,
            timestamps: &self.timestamps,
        }
    }
}

/// Item ids below this are padding (0) and out-of-vocabulary (1); they are never targets.
pub const FIRST_ITEM: u32 = 2;

/// The bucket of the gap between two events: 0 for the first event, else
/// `1 + floor(log2(1 + seconds))`, capped at `buckets − 1`.
pub fn gap_bucket(prev_ms: Option<i64>, ms: i64, buckets: usize) -> u32 {
    match prev_ms {
        None => 0,
        Some(p) => {
            let secs = ((ms - p).max(0) as f64) / 1000.0;
            let b = 1 + (1.0 + secs).log2().floor() as usize;
            b.min(buckets - 1) as u32
        }
    }
}

/// A padded batch, row-major `b × t`.
#[derive(Debug, Clone, PartialEq)]
pub struct BatchInput {
    /// Sequences.
    pub b: usize,
    /// Positions per sequence.
    pub t: usize,
    /// Item ids (0 = padding).
    pub items: Vec<u32>,
    /// Action ids.
    pub actions: Vec<u32>,
    /// Category ids.
    pub categories: Vec<u32>,
    /// Time-gap buckets.
    pub gaps: Vec<u32>,
    /// Hour of the day (UTC) plus one; 0 for padding.
    pub hours: Vec<u32>,
    /// 1 for events, 0 for padding.
    pub mask: Vec<f32>,
    /// Next-item target at each position (0 = none: padding, out-of-vocabulary, or no next).
    pub targets: Vec<u32>,
    /// The next event's action, category and time-gap bucket at each position (0 = none),
    /// for the next-event objective; filled by [`BatchInput::next_item`].
    pub next: NextEvent,
}

/// The next event's fields at each position of a next-item batch (0 = no next event).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct NextEvent {
    /// Action ids.
    pub actions: Vec<u32>,
    /// Category ids.
    pub categories: Vec<u32>,
    /// Time-gap buckets (always at least 1 for a real next event).
    pub gaps: Vec<u32>,
}

/// The hour of the day (UTC) of a timestamp in ms, plus one (1..=24; 0 is padding).
pub fn hour_id(ms: i64) -> u32 {
    (ms.div_euclid(1000).rem_euclid(86_400) / 3600) as u32 + 1
}

/// Rows of the hour embedding: padding and 24 hours.
pub const HOURS: usize = 25;

impl BatchInput {
    fn with_shape(b: usize, t: usize) -> Self {
        BatchInput {
            b,
            t,
            items: vec![0; b * t],
            actions: vec![0; b * t],
            categories: vec![0; b * t],
            gaps: vec![0; b * t],
            hours: vec![0; b * t],
            mask: vec![0.0; b * t],
            targets: vec![0; b * t],
            next: NextEvent::default(),
        }
    }

    fn fill(&mut self, row: usize, s: &SeqInput<'_>, buckets: usize) {
        let n = s.len().min(self.t);
        let first = s.len() - n;
        let off = row * self.t + (self.t - n);
        for k in 0..n {
            let i = first + k;
            self.items[off + k] = s.items[i];
            self.actions[off + k] = u32::from(s.actions[i]);
            self.categories[off + k] = s.categories[i];
            let prev = (i > 0).then(|| s.timestamps[i - 1]);
            self.gaps[off + k] = gap_bucket(prev, s.timestamps[i], buckets);
            self.hours[off + k] = hour_id(s.timestamps[i]);
            self.mask[off + k] = 1.0;
        }
    }

    /// Next-item training batch: the inputs are each sequence's events but the last (at most
    /// `max_len`), the targets the events one step later.
    pub fn next_item(seqs: &[SeqInput<'_>], max_len: usize, buckets: usize) -> Self {
        let t = seqs
            .iter()
            .map(|s| s.len().saturating_sub(1))
            .max()
            .unwrap_or(0)
            .clamp(1, max_len);
        let mut out = BatchInput::with_shape(seqs.len(), t);
        let bt = seqs.len() * t;
        out.next = NextEvent {
            actions: vec![0; bt],
            categories: vec![0; bt],
            gaps: vec![0; bt],
        };
        for (row, s) in seqs.iter().enumerate() {
            if s.len() < 2 {
                continue;
            }
            let input = s.prefix(s.len() - 1);
            out.fill(row, &input, buckets);
            let n = input.len().min(t);
            let off = row * t + (t - n);
            for k in 0..n {
                let j = s.len() - n + k;
                let target = s.items[j];
                out.targets[off + k] = if target >= FIRST_ITEM { target } else { 0 };
                out.next.actions[off + k] = u32::from(s.actions[j]);
                out.next.categories[off + k] = s.categories[j];
                out.next.gaps[off + k] =
                    gap_bucket(Some(s.timestamps[j - 1]), s.timestamps[j], buckets);
            }
        }
        out
    }

    /// Batch for encoding whole sequences (the most recent `max_len` events), no targets.
    pub fn encode(seqs: &[SeqInput<'_>], max_len: usize, buckets: usize) -> Self {
        let t = seqs
            .iter()
            .map(|s| s.len())
            .max()
            .unwrap_or(0)
            .clamp(1, max_len);
        let mut out = BatchInput::with_shape(seqs.len(), t);
        for (row, s) in seqs.iter().enumerate() {
            out.fill(row, s, buckets);
        }
        out
    }

    /// Number of positions with a target.
    pub fn num_targets(&self) -> usize {
        self.targets.iter().filter(|&&t| t != 0).count()
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn left_padding_and_targets() {
        let items = [5u32, 6, 1, 8];
        let actions = [1u16, 1, 2, 3];
        let cats = [0u32; 4];
        let ts = [0i64, 1000, 1000, 9000];
        let long = SeqInput {
            items: &items,
            actions: &actions,
            categories: &cats,
            timestamps: &ts,
        };
        let short = long.prefix(2);
        let b = BatchInput::next_item(&[long, short], 10, 8);
        assert_eq!((b.b, b.t), (2, 3));
        assert_eq!(&b.items[..3], &[5, 6, 1]);
        assert_eq!(&b.targets[..3], &[6, 0, 8], "OOV target dropped");
        assert_eq!(&b.items[3..], &[0, 0, 5]);
        assert_eq!(&b.targets[3..], &[0, 0, 6]);
        assert_eq!(&b.mask[3..], &[0.0, 0.0, 1.0]);
        assert_eq!(
            &b.gaps[..3],
            &[0, 2, 1],
            "1 s: 1 + floor(log2 2) = 2; 0 s: 1"
        );
        assert_eq!(&b.next.actions[..3], &[1, 2, 3]);
        assert_eq!(&b.next.gaps[..3], &[2, 1, 4]);
        assert_eq!(&b.next.actions[3..], &[0, 0, 1]);
        let e = BatchInput::encode(&[long], 2, 8);
        assert_eq!((e.t, e.items.clone()), (2, vec![1, 8]));
        assert_eq!(e.gaps, vec![1, 4], "8 s gap: 1 + floor(log2 9) = 4");
    }

    #[test]
    fn hours_of_the_day() {
        assert_eq!(hour_id(0), 1);
        assert_eq!(hour_id(3_599_999), 1);
        assert_eq!(hour_id(23 * 3_600_000), 24);
        assert_eq!(hour_id(-1), 24, "before 1970 still maps into the day");
    }

    #[test]
    fn gap_buckets_are_capped() {
        assert_eq!(gap_bucket(None, 5, 8), 0);
        assert_eq!(gap_bucket(Some(0), 0, 8), 1);
        assert_eq!(gap_bucket(Some(0), 10_000_000_000, 8), 7);
    }
}
