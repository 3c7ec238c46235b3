//! JSON Lines: one object per line; columns name keys (`a.b` reaches into nested objects).

use serde_json::Value;

use super::sink::{EventSink, RawEvent, RowPos, check_key};
use super::{Chunk, ColumnMap, ColumnRef, ParseCtx};
use crate::error::{Error, Result};
use crate::event::{TimestampError, auto_unit_to_ms, parse_timestamp};
use crate::quarantine::BadReason;

/// The keys of each field, as JSON pointers.
#[derive(Debug, Clone)]
pub(crate) struct JsonSpec {
    user: Key,
    item: Key,
    timestamp: Key,
    action: Option<Key>,
    category: Option<Key>,
    dwell: Option<Key>,
    numeric: Vec<Key>,
}

#[derive(Debug, Clone)]
struct Key {
    label: String,
    pointer: String,
}

impl Key {
    fn new(field: &str, col: &ColumnRef) -> Result<Key> {
        match col {
            ColumnRef::Name(n) => Ok(Key {
                label: n.clone(),
                pointer: format!("/{}", n.split('.').collect::<Vec<_>>().join("/")),
            }),
            ColumnRef::Index(i) => Err(Error::config(
                format!("source.columns.{field}"),
                format!("JSON Lines columns are key names, not indices (got {i})"),
            )),
        }
    }
}

impl JsonSpec {
    pub fn new(c: ColumnMap) -> Result<Self> {
        let req = |f: &str, col: &Option<ColumnRef>| -> Result<Key> {
            Key::new(
                f,
                col.as_ref().ok_or_else(|| {
                    Error::config(format!("source.columns.{f}"), "no column mapped")
                })?,
            )
        };
        let opt =
            |f: &str, col: &Option<ColumnRef>| col.as_ref().map(|c| Key::new(f, c)).transpose();
        Ok(JsonSpec {
            user: req("user", &c.user)?,
            item: req("item", &c.item)?,
            timestamp: req("timestamp", &c.timestamp)?,
            action: opt("action", &c.action)?,
            category: opt("category", &c.category)?,
            dwell: opt("dwell", &c.dwell)?,
            numeric: c
                .numeric
                .iter()
                .map(|k| Key::new("numeric", k))
                .collect::<Result<_>>()?,
        })
    }

    pub fn parse_chunk(
        &self,
        data: &[u8],
        chunk: &Chunk,
        ctx: &ParseCtx,
        sink: &mut dyn EventSink,
    ) {
        let mut numeric = vec![f32::NAN; self.numeric.len()];
        for (row, (i, line)) in data
            .split(|&b| b == b'\n')
            .enumerate()
            .filter(|(_, l)| !l.trim_ascii().is_empty())
            .enumerate()
        {
            let pos = RowPos {
                file: chunk.file,
                line: chunk.first_line + i as u64,
                seq: chunk.seq(row as u64),
            };
            let v: Value = match serde_json::from_slice(line) {
                Ok(v @ Value::Object(_)) => v,
                Ok(_) => {
                    sink.bad(BadReason::Malformed, pos, "row", line);
                    continue;
                }
                Err(_) => {
                    let reason = if std::str::from_utf8(line).is_err() {
                        BadReason::InvalidUtf8
                    } else {
                        BadReason::Malformed
                    };
                    sink.bad(reason, pos, "row", line);
                    continue;
                }
            };
            let mut key_buf = [
                itoa::Buffer::new(),
                itoa::Buffer::new(),
                itoa::Buffer::new(),
            ];
            let [ub, ib, cb] = &mut key_buf;
            let user = match key_text(v.pointer(&self.user.pointer), ub) {
                Some(t) => match check_key(t, BadReason::EmptyUser) {
                    Ok(t) => t,
                    Err(r) => {
                        sink.bad(r, pos, &self.user.label, t);
                        continue;
                    }
                },
                None => {
                    sink.bad(BadReason::MissingField, pos, &self.user.label, line);
                    continue;
                }
            };
            let item = match key_text(v.pointer(&self.item.pointer), ib) {
                Some(t) => match check_key(t, BadReason::EmptyItem) {
                    Ok(t) => t,
                    Err(r) => {
                        sink.bad(r, pos, &self.item.label, t);
                        continue;
                    }
                },
                None => {
                    sink.bad(BadReason::MissingField, pos, &self.item.label, line);
                    continue;
                }
            };
            let ts = match v.pointer(&self.timestamp.pointer) {
                Some(Value::String(s)) => parse_timestamp(s.as_bytes(), ctx.ts_format, ctx.bounds),
                Some(Value::Number(n)) => match (n.as_i64(), n.as_f64()) {
                    (Some(i), _) => parse_timestamp(
                        itoa::Buffer::new().format(i).as_bytes(),
                        ctx.ts_format,
                        ctx.bounds,
                    ),
                    (None, Some(f)) => {
                        let ms = if ctx.ts_format == crate::event::TimestampFormat::UnixMs {
                            f as i64
                        } else {
                            auto_unit_to_ms(f as i64).saturating_add(((f.fract()) * 1000.0) as i64)
                        };
                        if ms < ctx.bounds.min_ms || ms > ctx.bounds.max_ms {
                            Err(TimestampError::Absurd)
                        } else {
                            Ok(ms)
                        }
                    }
                    _ => Err(TimestampError::Unparsable),
                },
                None | Some(Value::Null) => {
                    sink.bad(BadReason::MissingField, pos, &self.timestamp.label, line);
                    continue;
                }
                Some(_) => Err(TimestampError::Unparsable),
            };
            let ts_ms = match ts {
                Ok(t) => t,
                Err(e) => {
                    let r = match e {
                        TimestampError::Unparsable => BadReason::BadTimestamp,
                        TimestampError::Absurd => BadReason::AbsurdTimestamp,
                    };
                    let text = v
                        .pointer(&self.timestamp.pointer)
                        .map(|x| x.to_string())
                        .unwrap_or_default();
                    sink.bad(r, pos, &self.timestamp.label, text.as_bytes());
                    continue;
                }
            };
            let action_text: String;
            let action: &[u8] = match &self.action {
                None => b"",
                Some(k) => match v.pointer(&k.pointer) {
                    Some(Value::String(s)) if !s.trim().is_empty() => s.as_bytes(),
                    Some(Value::Number(n)) => {
                        // numeric action codes are kept as their decimal text
                        action_text = n.to_string();
                        action_text.as_bytes()
                    }
                    other => {
                        let text = other.map(|x| x.to_string()).unwrap_or_default();
                        sink.bad(BadReason::EmptyAction, pos, &k.label, text.as_bytes());
                        continue;
                    }
                },
            };
            let category = match &self.category {
                None => None,
                Some(k) => match key_text(v.pointer(&k.pointer), cb) {
                    None => None,
                    Some(t) if t.trim_ascii().is_empty() => None,
                    Some(t) => match check_key(t, BadReason::Malformed) {
                        Ok(t) => Some(t),
                        Err(r) => {
                            sink.bad(r, pos, &k.label, t);
                            continue;
                        }
                    },
                },
            };
            let dwell = match &self.dwell {
                None => None,
                Some(k) => match number(v.pointer(&k.pointer)) {
                    Ok(x) => x,
                    Err(()) => {
                        sink.bad(BadReason::BadNumber, pos, &k.label, line);
                        continue;
                    }
                },
            };
            let mut bad = None;
            for (j, k) in self.numeric.iter().enumerate() {
                match number(v.pointer(&k.pointer)) {
                    Ok(x) => numeric[j] = x.unwrap_or(f32::NAN),
                    Err(()) => {
                        bad = Some(j);
                        break;
                    }
                }
            }
            if let Some(j) = bad {
                sink.bad(BadReason::BadNumber, pos, &self.numeric[j].label, line);
                continue;
            }
            sink.event(
                &RawEvent {
                    user,
                    item,
                    ts_ms,
                    action,
                    category,
                    dwell,
                    numeric: &numeric,
                },
                pos,
            );
        }
    }
}

/// The text of an id: strings as they are, integers in decimal; other types are absent.
fn key_text<'a>(v: Option<&'a Value>, buf: &'a mut itoa::Buffer) -> Option<&'a [u8]> {
    match v? {
        Value::String(s) => Some(s.as_bytes()),
        Value::Number(n) => {
            if let Some(i) = n.as_i64() {
                Some(buf.format(i).as_bytes())
            } else {
                n.as_u64().map(|u| buf.format(u).as_bytes())
            }
        }
        _ => None,
    }
}

fn number(v: Option<&Value>) -> std::result::Result<Option<f32>, ()> {
    match v {
        None | Some(Value::Null) => Ok(None),
        Some(Value::Number(n)) => n.as_f64().map(|f| Some(f as f32)).ok_or(()),
        Some(Value::String(s)) => crate::event::parse_f32_field(s.as_bytes()),
        Some(_) => Err(()),
    }
}
