//! Delimited text (CSV/TSV and the Taobao / RetailRocket presets).

use csv::ByteRecord;

use super::sink::{EventSink, RawEvent, RowPos, check_key_in};
use super::{Chunk, ColumnMap, ColumnRef, ParseCtx};
use crate::error::{Error, Result};
use crate::event::{TimestampError, parse_f32_field, parse_timestamp};
use crate::quarantine::BadReason;

/// How to read delimited text, before a file's header is seen.
#[derive(Debug, Clone)]
pub(crate) struct CsvSpec {
    pub delimiter: u8,
    pub has_header: bool,
    pub quote: Option<u8>,
    pub columns: ColumnMap,
    /// Field count fixed by a preset.
    pub expected_fields: Option<usize>,
}

impl CsvSpec {
    pub fn new(
        delimiter: char,
        has_header: bool,
        quote: Option<&str>,
        columns: ColumnMap,
        expected_fields: Option<usize>,
    ) -> Result<Self> {
        if !delimiter.is_ascii() || delimiter == '\n' || delimiter == '\r' {
            return Err(Error::config(
                "source.delimiter",
                format!("{delimiter:?} is not a single ASCII character other than a newline"),
            ));
        }
        let quote = match quote {
            None => Some(b'"'),
            Some("") => None,
            Some(q) if q.len() == 1 && q.is_ascii() => Some(q.as_bytes()[0]),
            Some(q) => {
                return Err(Error::config(
                    "source.quote",
                    format!("{q:?} is not a single ASCII character (use \"\" to turn quoting off)"),
                ));
            }
        };
        if !has_header {
            let mapped = [
                ("user", &columns.user),
                ("item", &columns.item),
                ("timestamp", &columns.timestamp),
                ("action", &columns.action),
                ("category", &columns.category),
                ("dwell", &columns.dwell),
            ];
            for (field, col) in mapped {
                if let Some(ColumnRef::Name(n)) = col {
                    return Err(Error::config(
                        format!("source.columns.{field}"),
                        format!(
                            "column {n:?} is given by name but the files have no header (has_header = false); use a 0-based index"
                        ),
                    ));
                }
            }
        }
        Ok(CsvSpec {
            delimiter: delimiter as u8,
            has_header,
            quote,
            columns,
            expected_fields,
        })
    }

    pub fn reader_builder(&self) -> csv::ReaderBuilder {
        let mut b = csv::ReaderBuilder::new();
        b.has_headers(false)
            .delimiter(self.delimiter)
            .flexible(true);
        match self.quote {
            Some(q) => b.quote(q),
            None => b.quoting(false),
        };
        b
    }

    /// Resolves the mapping against a file's header line (or its absence).
    pub fn resolve(&self, header_line: Option<&[u8]>, display: &str) -> Result<CsvFile> {
        let header: Option<Vec<String>> = match header_line {
            Some(line) => {
                let line = line.strip_prefix(b"\xEF\xBB\xBF").unwrap_or(line);
                let mut rdr = self.reader_builder().from_reader(line);
                let mut rec = ByteRecord::new();
                let ok = rdr
                    .read_byte_record(&mut rec)
                    .map_err(|e| Error::ReadInput {
                        path: display.to_string(),
                        source: std::io::Error::other(e),
                    })?;
                if !ok {
                    return Err(Error::ReadInput {
                        path: display.to_string(),
                        source: std::io::Error::other("the file is empty (no header line)"),
                    });
                }
                Some(
                    rec.iter()
                        .map(|f| String::from_utf8_lossy(f).trim().to_string())
                        .collect(),
                )
            }
            None => None,
        };
        let find = |field: &'static str, col: &ColumnRef| -> Result<usize> {
            match (col, &header) {
                (ColumnRef::Index(i), Some(h)) if *i >= h.len() => Err(Error::MissingColumn {
                    path: display.to_string(),
                    column: col.label(),
                    field,
                    available: h.join(", "),
                }),
                (ColumnRef::Index(i), _) => Ok(*i),
                (ColumnRef::Name(n), Some(h)) => {
                    h.iter()
                        .position(|c| c == n)
                        .ok_or_else(|| Error::MissingColumn {
                            path: display.to_string(),
                            column: n.clone(),
                            field,
                            available: h.join(", "),
                        })
                }
                (ColumnRef::Name(n), None) => Err(Error::config(
                    format!("source.columns.{field}"),
                    format!("column {n:?} is given by name but {display} has no header"),
                )),
            }
        };
        let c = &self.columns;
        let guess = |field: &str| header.as_ref().and_then(|h| super::guess_column(field, h));
        let need = |field: &'static str, col: &Option<ColumnRef>| -> Result<usize> {
            match col {
                Some(col) => find(field, col),
                None => guess(field).ok_or_else(|| Error::UnmappedColumn {
                    path: display.to_string(),
                    field,
                    tried: super::guesses_for(field),
                    available: header.as_ref().map(|h| h.join(", ")).unwrap_or_default(),
                }),
            }
        };
        let opt = |field: &'static str, col: &Option<ColumnRef>| -> Result<Option<usize>> {
            match col {
                Some(col) => find(field, col).map(Some),
                None => Ok(guess(field)),
            }
        };
        let user = need("user", &c.user)?;
        let item = need("item", &c.item)?;
        let timestamp = need("timestamp", &c.timestamp)?;
        let action = opt("action", &c.action)?;
        let category = opt("category", &c.category)?;
        let dwell = opt("dwell", &c.dwell)?;
        let numeric = c
            .numeric
            .iter()
            .map(|col| find("numeric", col))
            .collect::<Result<Vec<_>>>()?;
        let numeric_labels = c.numeric.iter().map(ColumnRef::label).collect();
        let name = |i: usize| {
            header
                .as_ref()
                .and_then(|h| h.get(i).cloned())
                .unwrap_or_else(|| format!("#{i}"))
        };
        let mut mapping = vec![
            ("user".to_string(), name(user)),
            ("item".to_string(), name(item)),
            ("timestamp".to_string(), name(timestamp)),
        ];
        for (f, i) in [("action", action), ("category", category), ("dwell", dwell)] {
            if let Some(i) = i {
                mapping.push((f.to_string(), name(i)));
            }
        }
        let max_idx = [
            Some(user),
            Some(item),
            Some(timestamp),
            action,
            category,
            dwell,
        ]
        .into_iter()
        .flatten()
        .chain(numeric.iter().copied())
        .max()
        .unwrap_or(0);
        Ok(CsvFile {
            spec: self.clone(),
            user,
            item,
            timestamp,
            action,
            category,
            dwell,
            numeric,
            numeric_labels,
            expected_fields: header.as_ref().map(Vec::len).or(self.expected_fields),
            min_fields: max_idx + 1,
            mapping,
        })
    }
}

/// The mapping resolved for one file.
#[derive(Debug, Clone)]
pub(crate) struct CsvFile {
    spec: CsvSpec,
    user: usize,
    item: usize,
    timestamp: usize,
    action: Option<usize>,
    category: Option<usize>,
    dwell: Option<usize>,
    numeric: Vec<usize>,
    numeric_labels: Vec<String>,
    expected_fields: Option<usize>,
    min_fields: usize,
    /// (field, source column) actually used.
    pub mapping: Vec<(String, String)>,
}

impl CsvFile {
    pub fn parse_chunk(
        &self,
        data: &[u8],
        chunk: &Chunk,
        ctx: &ParseCtx,
        sink: &mut dyn EventSink,
    ) {
        // one validation of the whole chunk instead of one per field
        let utf8 = std::str::from_utf8(data).is_ok();
        let mut st = RowState {
            numeric: vec![f32::NAN; self.numeric.len()],
            ranges: Vec::with_capacity(16),
            utf8,
        };
        let quoted = self
            .spec
            .quote
            .is_some_and(|q| memchr::memchr(q, data).is_some());
        if quoted {
            self.parse_quoted(data, chunk, ctx, sink, &mut st);
        } else {
            self.parse_plain(data, chunk, ctx, sink, &mut st);
        }
    }

    /// No quote character in the chunk: split lines and fields with memchr.
    fn parse_plain(
        &self,
        data: &[u8],
        chunk: &Chunk,
        ctx: &ParseCtx,
        sink: &mut dyn EventSink,
        st: &mut RowState,
    ) {
        let d = self.spec.delimiter;
        let mut row: u64 = 0;
        let mut line_start = 0usize;
        let mut line_no = chunk.first_line;
        while line_start < data.len() {
            let end =
                memchr::memchr(b'\n', &data[line_start..]).map_or(data.len(), |i| line_start + i);
            let mut line = &data[line_start..end];
            if let [rest @ .., b'\r'] = line {
                line = rest;
            }
            if !line.is_empty() {
                st.ranges.clear();
                let mut f0 = 0usize;
                for i in memchr::memchr_iter(d, line) {
                    st.ranges.push((f0 as u32, i as u32));
                    f0 = i + 1;
                }
                st.ranges.push((f0 as u32, line.len() as u32));
                let pos = RowPos {
                    file: chunk.file,
                    line: line_no,
                    seq: chunk.seq(row),
                };
                row += 1;
                self.record(line, pos, ctx, sink, st);
            }
            line_start = end + 1;
            line_no += 1;
        }
    }

    /// Quoted fields possible: the csv crate's RFC 4180 parser.
    fn parse_quoted(
        &self,
        data: &[u8],
        chunk: &Chunk,
        ctx: &ParseCtx,
        sink: &mut dyn EventSink,
        st: &mut RowState,
    ) {
        let mut rdr = self.spec.reader_builder().from_reader(data);
        let mut rec = ByteRecord::new();
        let mut row: u64 = 0;
        loop {
            let line_in_chunk = rdr.position().line();
            match rdr.read_byte_record(&mut rec) {
                Ok(true) => {}
                Ok(false) => break,
                Err(e) => {
                    let pos = RowPos {
                        file: chunk.file,
                        line: chunk.first_line + line_in_chunk - 1,
                        seq: chunk.seq(row),
                    };
                    sink.bad(BadReason::Malformed, pos, "row", e.to_string().as_bytes());
                    row += 1;
                    continue;
                }
            }
            let line = rec.position().map_or(line_in_chunk, |p| p.line());
            let pos = RowPos {
                file: chunk.file,
                line: chunk.first_line + line - 1,
                seq: chunk.seq(row),
            };
            row += 1;
            st.ranges.clear();
            st.ranges.extend(
                (0..rec.len())
                    .filter_map(|i| rec.range(i))
                    .map(|r| (r.start as u32, r.end as u32)),
            );
            self.record(rec.as_slice(), pos, ctx, sink, st);
        }
    }

    /// Validates one record (fields are `st.ranges` into `raw`) and hands it to the sink.
    fn record(
        &self,
        raw: &[u8],
        pos: RowPos,
        ctx: &ParseCtx,
        sink: &mut dyn EventSink,
        st: &mut RowState,
    ) {
        let n = st.ranges.len();
        if n < self.min_fields || self.expected_fields.is_some_and(|e| e != n) {
            sink.bad(BadReason::WrongFieldCount, pos, "row", raw);
            return;
        }
        let ranges = &st.ranges;
        let field = |i: usize| {
            let (a, b) = ranges[i];
            &raw[a as usize..b as usize]
        };
        let utf8 = st.utf8;
        let user = match check_key_in(field(self.user), BadReason::EmptyUser, utf8) {
            Ok(v) => v,
            Err(r) => return sink.bad(r, pos, "user", field(self.user)),
        };
        let item = match check_key_in(field(self.item), BadReason::EmptyItem, utf8) {
            Ok(v) => v,
            Err(r) => return sink.bad(r, pos, "item", field(self.item)),
        };
        let ts_ms = match parse_timestamp(field(self.timestamp), ctx.ts_format, ctx.bounds) {
            Ok(t) => t,
            Err(e) => {
                let r = match e {
                    TimestampError::Unparsable => BadReason::BadTimestamp,
                    TimestampError::Absurd => BadReason::AbsurdTimestamp,
                };
                return sink.bad(r, pos, "timestamp", field(self.timestamp));
            }
        };
        let action: &[u8] = match self.action {
            Some(i) => match check_key_in(field(i), BadReason::EmptyAction, utf8) {
                Ok(v) => v,
                Err(r) => return sink.bad(r, pos, "action", field(i)),
            },
            None => b"",
        };
        let category = match self.category.map(field).map(<[u8]>::trim_ascii) {
            None | Some(b"") => None,
            Some(c) => match check_key_in(c, BadReason::Malformed, utf8) {
                Ok(v) => Some(v),
                Err(r) => return sink.bad(r, pos, "category", c),
            },
        };
        let dwell = match self.dwell {
            None => None,
            Some(i) => match parse_f32_field(field(i)) {
                Ok(v) => v,
                Err(()) => return sink.bad(BadReason::BadNumber, pos, "dwell", field(i)),
            },
        };
        for (k, &i) in self.numeric.iter().enumerate() {
            match parse_f32_field(field(i)) {
                Ok(v) => st.numeric[k] = v.unwrap_or(f32::NAN),
                Err(()) => {
                    return sink.bad(BadReason::BadNumber, pos, &self.numeric_labels[k], field(i));
                }
            }
        }
        sink.event(
            &RawEvent {
                user,
                item,
                ts_ms,
                action,
                category,
                dwell,
                numeric: &st.numeric,
            },
            pos,
        );
    }
}

/// Per-chunk scratch space.
struct RowState {
    numeric: Vec<f32>,
    ranges: Vec<(u32, u32)>,
    utf8: bool,
}
