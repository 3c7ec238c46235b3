//! Line-oriented presets whose rows are not one event each: Amazon S3-Rec sequence files
//! (one user per line), JD micro-behaviour sessions (one session per line) and DIGINETICA views.

use super::sink::{EventSink, RawEvent, RowPos, check_key_in};
use super::{Chunk, LineKind, ParseCtx};
use crate::event::{TimeBounds, TimestampFormat, parse_f32_field, parse_i64, parse_timestamp};
use crate::quarantine::BadReason;
use crate::source::JD_ACTIONS;

/// Splits a chunk into lines (without `\n` or `\r\n`), with their 0-based index in the chunk.
fn lines(data: &[u8]) -> impl Iterator<Item = (u64, &[u8])> {
    data.split(|&b| b == b'\n')
        .enumerate()
        .map(|(i, l)| (i as u64, l.strip_suffix(b"\r").unwrap_or(l)))
        .filter(|(_, l)| !l.trim_ascii().is_empty())
}

pub(crate) fn parse_chunk(
    kind: LineKind,
    stem: &str,
    data: &[u8],
    chunk: &Chunk,
    ctx: &ParseCtx,
    sink: &mut dyn EventSink,
) {
    let utf8 = std::str::from_utf8(data).is_ok();
    match kind {
        LineKind::Amazon => amazon(data, chunk, sink, utf8),
        LineKind::Jd => jd(stem, data, chunk, sink, utf8),
        LineKind::Diginetica => diginetica(data, chunk, ctx, sink, utf8),
    }
}

/// `user item item …`: items in chronological order; the position is the (ordinal) time.
fn amazon(data: &[u8], chunk: &Chunk, sink: &mut dyn EventSink, utf8: bool) {
    let mut seq_no: u64 = 0;
    for (i, line) in lines(data) {
        let line_no = chunk.first_line + i;
        let mut tokens = line
            .split(|&b| b == b' ' || b == b'\t')
            .filter(|t| !t.is_empty());
        let Some(user_raw) = tokens.next() else {
            continue;
        };
        let pos0 = RowPos {
            file: chunk.file,
            line: line_no,
            seq: chunk.seq(seq_no),
        };
        let user = match check_key_in(user_raw, BadReason::EmptyUser, utf8) {
            Ok(u) => u,
            Err(r) => {
                sink.bad(r, pos0, "user", user_raw);
                seq_no += 1;
                continue;
            }
        };
        let mut n = 0;
        for (k, item_raw) in tokens.enumerate() {
            let pos = RowPos {
                file: chunk.file,
                line: line_no,
                seq: chunk.seq(seq_no),
            };
            seq_no += 1;
            n += 1;
            match check_key_in(item_raw, BadReason::EmptyItem, utf8) {
                Ok(item) => sink.event(
                    &RawEvent {
                        user,
                        item,
                        ts_ms: k as i64,
                        action: b"review",
                        category: None,
                        dwell: None,
                        numeric: &[],
                    },
                    pos,
                ),
                Err(r) => sink.bad(r, pos, "item", item_raw),
            }
        }
        if n == 0 {
            sink.bad(BadReason::WrongFieldCount, pos0, "row", line);
            seq_no += 1;
        }
    }
}

/// `sku+type+category+interval+dwell …`: one session per line, keyed `<file stem>:<line>`.
/// Time starts at 0 and advances by each event's interval (seconds to the next event).
fn jd(stem: &str, data: &[u8], chunk: &Chunk, sink: &mut dyn EventSink, utf8: bool) {
    let mut seq_no: u64 = 0;
    let mut user = String::new();
    for (i, line) in lines(data) {
        let line_no = chunk.first_line + i;
        user.clear();
        user.push_str(stem);
        user.push(':');
        user.push_str(itoa::Buffer::new().format(line_no));
        let mut t_ms: i64 = 0;
        for token in line.split(|&b| b == b' ').filter(|t| !t.is_empty()) {
            let pos = RowPos {
                file: chunk.file,
                line: line_no,
                seq: chunk.seq(seq_no),
            };
            seq_no += 1;
            let parts: Vec<&[u8]> = token.split(|&b| b == b'+').collect();
            if parts.len() != 5 {
                sink.bad(BadReason::WrongFieldCount, pos, "event", token);
                continue;
            }
            let item = match check_key_in(parts[0], BadReason::EmptyItem, utf8) {
                Ok(v) => v,
                Err(r) => {
                    sink.bad(r, pos, "sku", token);
                    continue;
                }
            };
            let action = match parse_i64(parts[1]) {
                Some(t @ 1..=10) => JD_ACTIONS[(t - 1) as usize].as_bytes(),
                _ => {
                    sink.bad(BadReason::Malformed, pos, "behavior_type", token);
                    continue;
                }
            };
            let category = match check_key_in(parts[2], BadReason::Malformed, utf8) {
                Ok(v) => v,
                Err(r) => {
                    sink.bad(r, pos, "category", token);
                    continue;
                }
            };
            let (Ok(Some(interval)), Ok(dwell)) =
                (parse_f32_field(parts[3]), parse_f32_field(parts[4]))
            else {
                sink.bad(BadReason::BadNumber, pos, "time_interval/dwell_time", token);
                continue;
            };
            if interval < 0.0 {
                sink.bad(BadReason::BadNumber, pos, "time_interval", token);
                continue;
            }
            sink.event(
                &RawEvent {
                    user: user.as_bytes(),
                    item,
                    ts_ms: t_ms,
                    action,
                    category: Some(category),
                    dwell,
                    numeric: &[interval],
                },
                pos,
            );
            t_ms += (f64::from(interval) * 1000.0).round() as i64;
        }
    }
}

/// `session_id;user_id;item_id;timeframe;eventdate`. Anonymous sessions (`NA`) become users
/// `session:<id>`; the time is the event date plus the timeframe offset in milliseconds.
fn diginetica(data: &[u8], chunk: &Chunk, ctx: &ParseCtx, sink: &mut dyn EventSink, utf8: bool) {
    let day_bounds = TimeBounds {
        min_ms: i64::MIN,
        max_ms: i64::MAX,
    };
    let mut user_buf = Vec::new();
    for (row, (i, line)) in lines(data).enumerate() {
        let pos = RowPos {
            file: chunk.file,
            line: chunk.first_line + i,
            seq: chunk.seq(row as u64),
        };
        let f: Vec<&[u8]> = line.split(|&b| b == b';').collect();
        if f.len() != 5 {
            sink.bad(BadReason::WrongFieldCount, pos, "row", line);
            continue;
        }
        let user = match f[1].trim_ascii() {
            b"" | b"NA" => {
                let session = match check_key_in(f[0], BadReason::EmptyUser, utf8) {
                    Ok(s) => s,
                    Err(r) => {
                        sink.bad(r, pos, "session_id", f[0]);
                        continue;
                    }
                };
                user_buf.clear();
                user_buf.extend_from_slice(b"session:");
                user_buf.extend_from_slice(session);
                &user_buf[..]
            }
            u => match check_key_in(u, BadReason::EmptyUser, utf8) {
                Ok(u) => u,
                Err(r) => {
                    sink.bad(r, pos, "user_id", f[1]);
                    continue;
                }
            },
        };
        let item = match check_key_in(f[2], BadReason::EmptyItem, utf8) {
            Ok(v) => v,
            Err(r) => {
                sink.bad(r, pos, "item_id", f[2]);
                continue;
            }
        };
        let Ok(day) = parse_timestamp(f[4], TimestampFormat::Iso8601, day_bounds) else {
            sink.bad(BadReason::BadTimestamp, pos, "eventdate", f[4]);
            continue;
        };
        let Some(offset) = parse_i64(f[3].trim_ascii()).filter(|o| *o >= 0) else {
            sink.bad(BadReason::BadTimestamp, pos, "timeframe", f[3]);
            continue;
        };
        let ts_ms = day.saturating_add(offset);
        if ts_ms < ctx.bounds.min_ms || ts_ms > ctx.bounds.max_ms {
            sink.bad(BadReason::AbsurdTimestamp, pos, "eventdate", f[4]);
            continue;
        }
        sink.event(
            &RawEvent {
                user,
                item,
                ts_ms,
                action: b"view",
                category: None,
                dwell: None,
                numeric: &[],
            },
            pos,
        );
    }
}
