//! What a reader hands to the ingest pipeline: borrowed events and rejected rows.

use crate::quarantine::BadReason;

/// One valid event, borrowed from the reader's buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RawEvent<'a> {
    pub user: &'a [u8],
    pub item: &'a [u8],
    pub ts_ms: i64,
    /// The raw action name; empty means the source's default action.
    pub action: &'a [u8],
    pub category: Option<&'a [u8]>,
    pub dwell: Option<f32>,
    /// Extra numeric fields (NaN when absent), one per declared name.
    pub numeric: &'a [f32],
}

/// Where a row came from.
#[derive(Debug, Clone, Copy)]
pub(crate) struct RowPos {
    /// Index into the input-file list.
    pub file: u32,
    /// 1-based line (or Parquet row) in the file.
    pub line: u64,
    /// Global input order, used to keep equal timestamps in input order.
    pub seq: u64,
}

/// Receives a reader's output. Implemented by the ingest pipeline (and by tests).
pub(crate) trait EventSink {
    fn event(&mut self, ev: &RawEvent<'_>, pos: RowPos);
    fn bad(&mut self, reason: BadReason, pos: RowPos, field: &str, text: &[u8]);
}

/// Longest id or name accepted.
pub(crate) const MAX_FIELD_BYTES: usize = u16::MAX as usize - 1;

/// Checks a key field: non-empty (after trimming), valid UTF-8, not too long.
pub(crate) fn check_key(raw: &[u8], empty: BadReason) -> Result<&[u8], BadReason> {
    check_key_in(raw, empty, false)
}

/// [`check_key`] for a field of a buffer already known to be valid UTF-8 (`utf8_ok`), which
/// skips the per-field validation. Trimming ASCII whitespace keeps a valid slice valid.
pub(crate) fn check_key_in(
    raw: &[u8],
    empty: BadReason,
    utf8_ok: bool,
) -> Result<&[u8], BadReason> {
    let v = raw.trim_ascii();
    if v.is_empty() {
        return Err(empty);
    }
    if v.len() > MAX_FIELD_BYTES {
        return Err(BadReason::FieldTooLong);
    }
    if !utf8_ok && std::str::from_utf8(v).is_err() {
        return Err(BadReason::InvalidUtf8);
    }
    Ok(v)
}
