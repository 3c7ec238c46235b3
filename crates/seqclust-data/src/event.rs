//! The event model: one user action on one item at one time.
//!
//! Ids are kept as the strings the source wrote (integers are formatted in decimal), so that
//! `007` and `7` stay different users and nothing is lost by guessing. Timestamps are stored as
//! milliseconds; sources that have only an order (Amazon S3-Rec files) or only relative times
//! (JD sessions) mark the dataset's timestamps as [`TimeKind::Ordinal`].

use serde::{Deserialize, Serialize};

/// One behaviour event, owned. Readers work on borrowed fields; this type is for generators,
/// tests and library users who build events by hand.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct Event {
    /// User (or session) key.
    pub user: String,
    /// Item key.
    pub item: String,
    /// Milliseconds since the Unix epoch (or an ordinal, see [`TimeKind`]).
    pub ts_ms: i64,
    /// Canonical action name (see [`canonical_action`]).
    pub action: String,
    /// Optional category key.
    pub category: Option<String>,
    /// Optional dwell time in seconds.
    pub dwell_s: Option<f32>,
    /// Other numeric fields, in the order the source declares them.
    pub numeric: Vec<f32>,
}

/// Whether timestamps are absolute wall-clock times or only an order.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimeKind {
    /// Milliseconds since the Unix epoch.
    #[default]
    Absolute,
    /// Positions or relative offsets: usable for ordering and gaps, not for time of day.
    Ordinal,
}

/// The standard action names, in id order (id 0 is padding). Custom names get the next ids.
pub const STANDARD_ACTIONS: [&str; 5] = ["view", "click", "fav", "cart", "buy"];

/// Maps common spellings of the standard actions to their canonical name; other names are
/// lower-cased and kept as custom actions.
///
/// ```
/// use seqclust_data::canonical_action;
/// assert_eq!(canonical_action("pv"), "view");
/// assert_eq!(canonical_action("AddToCart"), "cart");
/// assert_eq!(canonical_action("Detail_Comments"), "detail_comments");
/// ```
pub fn canonical_action(name: &str) -> String {
    let lower = name.trim().to_ascii_lowercase();
    let canon = match lower.as_str() {
        "pv" | "view" | "views" | "page_view" | "pageview" | "impression" | "detail" => "view",
        "click" | "clk" | "clicks" => "click",
        "fav" | "favorite" | "favourite" | "like" | "wishlist" | "save" => "fav",
        "cart" | "addtocart" | "add_to_cart" | "add-to-cart" | "basket" => "cart",
        "buy" | "purchase" | "order" | "transaction" | "checkout" => "buy",
        _ => return lower,
    };
    canon.to_string()
}

/// How a timestamp field is written.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum TimestampFormat {
    /// Integers are read as seconds, milliseconds, microseconds or nanoseconds by magnitude;
    /// decimals as seconds; anything else as ISO-8601.
    #[default]
    Auto,
    /// Unix seconds (integer or decimal).
    UnixS,
    /// Unix milliseconds.
    UnixMs,
    /// ISO-8601 / RFC 3339 (`2017-11-25T10:00:00Z`, `2017-11-25 10:00:00`, `2017-11-25`);
    /// times without an offset are UTC.
    Iso8601,
    /// A plain integer used only for ordering (no plausibility check).
    Ordinal,
}

/// Why a timestamp was rejected.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum TimestampError {
    /// Not a number or date in the expected format.
    Unparsable,
    /// Parsed, but outside the plausible range.
    Absurd,
}

/// The range of plausible absolute timestamps, in milliseconds.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
pub struct TimeBounds {
    /// Earliest accepted time (default 1990-01-01T00:00:00Z).
    pub min_ms: i64,
    /// Latest accepted time (default 2100-01-01T00:00:00Z).
    pub max_ms: i64,
}

impl Default for TimeBounds {
    fn default() -> Self {
        TimeBounds {
            min_ms: 631_152_000_000,
            max_ms: 4_102_444_800_000,
        }
    }
}

/// Parses a timestamp field to milliseconds and checks that it is plausible.
///
/// ```
/// use seqclust_data::{parse_timestamp, TimestampFormat, TimeBounds};
/// let b = TimeBounds::default();
/// assert_eq!(parse_timestamp(b"1511544070", TimestampFormat::Auto, b), Ok(1_511_544_070_000));
/// assert_eq!(parse_timestamp(b"1511544070123", TimestampFormat::Auto, b), Ok(1_511_544_070_123));
/// assert_eq!(parse_timestamp(b"2017-11-24T17:21:10Z", TimestampFormat::Auto, b), Ok(1_511_544_070_000));
/// assert!(parse_timestamp(b"12", TimestampFormat::Auto, b).is_err());
/// ```
pub fn parse_timestamp(
    raw: &[u8],
    format: TimestampFormat,
    bounds: TimeBounds,
) -> Result<i64, TimestampError> {
    let raw = trim_ascii(raw);
    if raw.is_empty() {
        return Err(TimestampError::Unparsable);
    }
    let ms = match format {
        TimestampFormat::Ordinal => {
            return parse_i64(raw).ok_or(TimestampError::Unparsable);
        }
        TimestampFormat::UnixS => parse_seconds(raw).ok_or(TimestampError::Unparsable)?,
        TimestampFormat::UnixMs => parse_i64(raw).ok_or(TimestampError::Unparsable)?,
        TimestampFormat::Iso8601 => parse_iso(raw).ok_or(TimestampError::Unparsable)?,
        TimestampFormat::Auto => {
            if let Some(v) = parse_i64(raw) {
                auto_unit_to_ms(v)
            } else if let Some(ms) = parse_seconds(raw) {
                ms
            } else {
                parse_iso(raw).ok_or(TimestampError::Unparsable)?
            }
        }
    };
    if ms < bounds.min_ms || ms > bounds.max_ms {
        return Err(TimestampError::Absurd);
    }
    Ok(ms)
}

/// Interprets an integer timestamp of unknown unit by magnitude: below 1e11 seconds (year
/// 5138), below 1e14 milliseconds, below 1e17 microseconds, else nanoseconds.
pub fn auto_unit_to_ms(v: i64) -> i64 {
    let a = v.unsigned_abs();
    if a < 100_000_000_000 {
        v.saturating_mul(1000)
    } else if a < 100_000_000_000_000 {
        v
    } else if a < 100_000_000_000_000_000 {
        v / 1000
    } else {
        v / 1_000_000
    }
}

fn trim_ascii(mut s: &[u8]) -> &[u8] {
    while let [first, rest @ ..] = s {
        if first.is_ascii_whitespace() || *first == b'"' {
            s = rest;
        } else {
            break;
        }
    }
    while let [rest @ .., last] = s {
        if last.is_ascii_whitespace() || *last == b'"' {
            s = rest;
        } else {
            break;
        }
    }
    s
}

/// Parses an optionally signed decimal integer without allocation.
pub(crate) fn parse_i64(s: &[u8]) -> Option<i64> {
    let (neg, digits) = match s {
        [b'-', rest @ ..] => (true, rest),
        [b'+', rest @ ..] => (false, rest),
        _ => (false, s),
    };
    if digits.is_empty() || digits.len() > 19 {
        return None;
    }
    let mut v: i64 = 0;
    for &c in digits {
        if !c.is_ascii_digit() {
            return None;
        }
        v = v.checked_mul(10)?.checked_add(i64::from(c - b'0'))?;
    }
    Some(if neg { -v } else { v })
}

fn parse_seconds(s: &[u8]) -> Option<i64> {
    if let Some(v) = parse_i64(s) {
        return v.checked_mul(1000);
    }
    let text = std::str::from_utf8(s).ok()?;
    if !text
        .bytes()
        .all(|c| c.is_ascii_digit() || matches!(c, b'.' | b'-' | b'+'))
    {
        return None;
    }
    let f: f64 = text.parse().ok()?;
    if !f.is_finite() || f.abs() > 9.0e15 {
        return None;
    }
    Some((f * 1000.0).round() as i64)
}

fn parse_iso(s: &[u8]) -> Option<i64> {
    let text = std::str::from_utf8(s).ok()?;
    if let Ok(dt) = chrono::DateTime::parse_from_rfc3339(text) {
        return Some(dt.timestamp_millis());
    }
    for fmt in ["%Y-%m-%d %H:%M:%S%.f%#z", "%Y-%m-%dT%H:%M:%S%.f%#z"] {
        if let Ok(dt) = chrono::DateTime::parse_from_str(text, fmt) {
            return Some(dt.timestamp_millis());
        }
    }
    for fmt in [
        "%Y-%m-%dT%H:%M:%S%.f",
        "%Y-%m-%d %H:%M:%S%.f",
        "%Y-%m-%dT%H:%M",
        "%Y-%m-%d %H:%M",
    ] {
        if let Ok(dt) = chrono::NaiveDateTime::parse_from_str(text, fmt) {
            return Some(dt.and_utc().timestamp_millis());
        }
    }
    if let Ok(d) = chrono::NaiveDate::parse_from_str(text, "%Y-%m-%d") {
        return d
            .and_hms_opt(0, 0, 0)
            .map(|dt| dt.and_utc().timestamp_millis());
    }
    None
}

/// Parses an optional numeric field (dwell time, price …). Empty means absent.
pub(crate) fn parse_f32_field(s: &[u8]) -> Result<Option<f32>, ()> {
    let s = trim_ascii(s);
    if s.is_empty() || s.eq_ignore_ascii_case(b"na") || s.eq_ignore_ascii_case(b"null") {
        return Ok(None);
    }
    let text = std::str::from_utf8(s).map_err(|_| ())?;
    let v: f32 = text.parse().map_err(|_| ())?;
    if v.is_finite() { Ok(Some(v)) } else { Err(()) }
}

#[cfg(test)]
mod tests {
    use super::*;

    const B: TimeBounds = TimeBounds {
        min_ms: 631_152_000_000,
        max_ms: 4_102_444_800_000,
    };

    #[test]
    fn auto_units() {
        assert_eq!(
            parse_timestamp(b"1511544070", TimestampFormat::Auto, B),
            Ok(1_511_544_070_000)
        );
        assert_eq!(
            parse_timestamp(b"1511544070.5", TimestampFormat::Auto, B),
            Ok(1_511_544_070_500)
        );
        assert_eq!(
            parse_timestamp(b"1511544070123456", TimestampFormat::Auto, B),
            Ok(1_511_544_070_123)
        );
        assert_eq!(
            parse_timestamp(b"1511544070123456789", TimestampFormat::Auto, B),
            Ok(1_511_544_070_123)
        );
    }

    #[test]
    fn iso_variants() {
        let want = Ok(1_511_544_070_000);
        for s in [
            "2017-11-24T17:21:10Z",
            "2017-11-24T17:21:10",
            "2017-11-24 17:21:10",
            "2017-11-24T18:21:10+01:00",
            "2017-11-24 18:21:10+0100",
        ] {
            assert_eq!(
                parse_timestamp(s.as_bytes(), TimestampFormat::Auto, B),
                want,
                "{s}"
            );
        }
        assert_eq!(
            parse_timestamp(b"2016-05-09", TimestampFormat::Iso8601, B),
            Ok(1_462_752_000_000)
        );
    }

    #[test]
    fn rejects() {
        assert_eq!(
            parse_timestamp(b"", TimestampFormat::Auto, B),
            Err(TimestampError::Unparsable)
        );
        assert_eq!(
            parse_timestamp(b"yesterday", TimestampFormat::Auto, B),
            Err(TimestampError::Unparsable)
        );
        assert_eq!(
            parse_timestamp(b"-5", TimestampFormat::Auto, B),
            Err(TimestampError::Absurd)
        );
        assert_eq!(
            parse_timestamp(b"99999999999", TimestampFormat::UnixS, B),
            Err(TimestampError::Absurd)
        );
        assert_eq!(
            parse_timestamp(b"nan", TimestampFormat::UnixS, B),
            Err(TimestampError::Unparsable)
        );
        assert_eq!(parse_timestamp(b"7", TimestampFormat::Ordinal, B), Ok(7));
    }

    #[test]
    fn actions() {
        assert_eq!(canonical_action("PV"), "view");
        assert_eq!(canonical_action("transaction"), "buy");
        assert_eq!(canonical_action(" addtocart "), "cart");
        assert_eq!(canonical_action("Search"), "search");
    }

    #[test]
    fn numbers() {
        assert_eq!(parse_f32_field(b" 2.5 "), Ok(Some(2.5)));
        assert_eq!(parse_f32_field(b""), Ok(None));
        assert_eq!(parse_f32_field(b"NA"), Ok(None));
        assert!(parse_f32_field(b"abc").is_err());
        assert!(parse_f32_field(b"inf").is_err());
    }
}
