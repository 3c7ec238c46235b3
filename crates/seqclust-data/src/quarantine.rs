//! Malformed rows: counted per reason, with the first examples and their file:line, written to
//! `_quarantine.json` inside the dataset.

use std::collections::BTreeMap;

use serde::{Deserialize, Serialize};

/// Why a row was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord, Hash, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum BadReason {
    /// The row has fewer or more fields than the header (or the format) says.
    WrongFieldCount,
    /// The row could not be parsed at all (broken quoting, not JSON, malformed token).
    Malformed,
    /// A required field (user, item, timestamp) is missing or null.
    MissingField,
    /// The user id is empty.
    EmptyUser,
    /// The item id is empty.
    EmptyItem,
    /// The action is empty.
    EmptyAction,
    /// The timestamp is not a number or date.
    BadTimestamp,
    /// The timestamp is outside the plausible range (`source.time_bounds`).
    AbsurdTimestamp,
    /// A text field is not valid UTF-8.
    InvalidUtf8,
    /// A numeric field (dwell, extra numbers) is not a finite number.
    BadNumber,
    /// A field is longer than 65,535 bytes.
    FieldTooLong,
}

impl BadReason {
    /// The name used in reports.
    pub fn as_str(self) -> &'static str {
        match self {
            BadReason::WrongFieldCount => "wrong_field_count",
            BadReason::Malformed => "malformed",
            BadReason::MissingField => "missing_field",
            BadReason::EmptyUser => "empty_user",
            BadReason::EmptyItem => "empty_item",
            BadReason::EmptyAction => "empty_action",
            BadReason::BadTimestamp => "bad_timestamp",
            BadReason::AbsurdTimestamp => "absurd_timestamp",
            BadReason::InvalidUtf8 => "invalid_utf8",
            BadReason::BadNumber => "bad_number",
            BadReason::FieldTooLong => "field_too_long",
        }
    }
}

/// One rejected row, as shown to the user.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
pub struct BadExample {
    /// The input file.
    pub file: String,
    /// 1-based line (text formats) or row (Parquet).
    pub line: u64,
    /// Why it was rejected.
    pub reason: BadReason,
    /// The field involved (`timestamp`, `user` …), or the whole row.
    pub field: String,
    /// The offending text, lossily decoded and cut to 200 characters.
    pub text: String,
}

impl std::fmt::Display for BadExample {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}:{}: {} in field {}: {:?}",
            self.file,
            self.line,
            self.reason.as_str(),
            self.field,
            self.text
        )
    }
}

/// Examples kept per reason.
pub const EXAMPLES_PER_REASON: usize = 5;

/// Counts and first examples of rejected rows; mergeable across threads.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Quarantine {
    /// Rows rejected per reason.
    pub counts: BTreeMap<BadReason, u64>,
    /// The first examples per reason (by file, then line).
    pub examples: Vec<BadExample>,
}

impl Quarantine {
    /// Total rejected rows.
    pub fn total(&self) -> u64 {
        self.counts.values().sum()
    }

    /// Records one rejected row.
    pub fn add(&mut self, reason: BadReason, file: &str, line: u64, field: &str, text: &[u8]) {
        let n = self.counts.entry(reason).or_insert(0);
        *n += 1;
        if *n as usize <= EXAMPLES_PER_REASON {
            let mut text = String::from_utf8_lossy(text).into_owned();
            if text.len() > 200 {
                let mut cut = 200;
                while !text.is_char_boundary(cut) {
                    cut -= 1;
                }
                text.truncate(cut);
                text.push('…');
            }
            self.examples.push(BadExample {
                file: file.to_string(),
                line,
                reason,
                field: field.to_string(),
                text,
            });
        }
    }

    /// Merges another thread's quarantine, keeping the earliest examples per reason.
    pub fn merge(&mut self, other: Quarantine) {
        for (r, n) in other.counts {
            *self.counts.entry(r).or_insert(0) += n;
        }
        self.examples.extend(other.examples);
        self.examples
            .sort_by(|a, b| (a.reason, &a.file, a.line).cmp(&(b.reason, &b.file, b.line)));
        let mut seen: BTreeMap<BadReason, usize> = BTreeMap::new();
        self.examples.retain(|e| {
            let n = seen.entry(e.reason).or_insert(0);
            *n += 1;
            *n <= EXAMPLES_PER_REASON
        });
        self.examples
            .sort_by(|a, b| (&a.file, a.line).cmp(&(&b.file, b.line)));
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_keeps_first_examples() {
        let mut a = Quarantine::default();
        let mut b = Quarantine::default();
        for line in 0..10 {
            a.add(BadReason::EmptyUser, "f", 100 + line, "user", b"");
            b.add(BadReason::EmptyUser, "f", line, "user", b"");
        }
        b.add(BadReason::BadTimestamp, "g", 3, "timestamp", &[0xff; 300]);
        a.merge(b);
        assert_eq!(a.total(), 21);
        let lines: Vec<u64> = a
            .examples
            .iter()
            .filter(|e| e.reason == BadReason::EmptyUser)
            .map(|e| e.line)
            .collect();
        assert_eq!(lines, vec![0, 1, 2, 3, 4]);
        let ts = a
            .examples
            .iter()
            .find(|e| e.reason == BadReason::BadTimestamp)
            .unwrap();
        assert!(ts.text.chars().count() <= 201);
    }
}
