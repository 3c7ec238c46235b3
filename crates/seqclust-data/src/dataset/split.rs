//! Evaluation splits of one user's sequence.

use std::ops::Range;

use super::manifest::TemporalCutoffs;

/// How a sequence is split into training, validation and test events.
#[derive(Debug, Clone, PartialEq)]
pub enum SplitPolicy {
    /// Last event test, second-to-last validation, the rest training (the S3-Rec / SASRec
    /// protocol).
    LeaveOneOut,
    /// By time: before `valid_from` training, before `test_from` validation, then test.
    Temporal(TemporalCutoffs),
}

/// Event index ranges of a split. A target at index `t` is predicted from events `0..t`.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct SplitRanges {
    /// Training events.
    pub train: Range<usize>,
    /// Validation targets.
    pub valid: Range<usize>,
    /// Test targets.
    pub test: Range<usize>,
}

impl SplitPolicy {
    /// Splits a sequence with these (sorted) timestamps.
    ///
    /// ```
    /// use seqclust_data::{SplitPolicy, SplitRanges};
    /// let r = SplitPolicy::LeaveOneOut.split(&[1, 2, 3, 4, 5]);
    /// assert_eq!(r, SplitRanges { train: 0..3, valid: 3..4, test: 4..5 });
    /// ```
    pub fn split(&self, timestamps: &[i64]) -> SplitRanges {
        let n = timestamps.len();
        match self {
            SplitPolicy::LeaveOneOut => match n {
                0 | 1 => SplitRanges {
                    train: 0..n,
                    valid: n..n,
                    test: n..n,
                },
                2 => SplitRanges {
                    train: 0..1,
                    valid: 1..1,
                    test: 1..2,
                },
                _ => SplitRanges {
                    train: 0..n - 2,
                    valid: n - 2..n - 1,
                    test: n - 1..n,
                },
            },
            SplitPolicy::Temporal(c) => {
                let a = timestamps.partition_point(|&t| t < c.valid_from_ms);
                let b = timestamps.partition_point(|&t| t < c.test_from_ms).max(a);
                SplitRanges {
                    train: 0..a,
                    valid: a..b,
                    test: b..n,
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn leave_one_out_small() {
        let p = SplitPolicy::LeaveOneOut;
        assert_eq!(
            p.split(&[]),
            SplitRanges {
                train: 0..0,
                valid: 0..0,
                test: 0..0
            }
        );
        assert_eq!(
            p.split(&[1, 2]),
            SplitRanges {
                train: 0..1,
                valid: 1..1,
                test: 1..2
            }
        );
        assert_eq!(
            p.split(&[1, 2, 3]),
            SplitRanges {
                train: 0..1,
                valid: 1..2,
                test: 2..3
            }
        );
    }

    #[test]
    fn temporal() {
        let p = SplitPolicy::Temporal(TemporalCutoffs {
            quantiles: [0.8, 0.9],
            valid_from_ms: 10,
            test_from_ms: 20,
        });
        assert_eq!(
            p.split(&[1, 5, 10, 15, 20, 30]),
            SplitRanges {
                train: 0..2,
                valid: 2..4,
                test: 4..6
            }
        );
        assert_eq!(
            p.split(&[25]),
            SplitRanges {
                train: 0..0,
                valid: 0..0,
                test: 0..1
            }
        );
    }
}
