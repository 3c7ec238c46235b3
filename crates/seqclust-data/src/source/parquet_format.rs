//! Parquet input: columns by field name (or index); ids of any integer or string type.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Float64Type, Int64Type};
use arrow_array::{Array, ArrayRef, RecordBatch, StringArray};
use arrow_schema::{DataType, Schema, TimeUnit};

use super::sink::{EventSink, RawEvent, RowPos, check_key};
use super::{Chunk, ColumnMap, ColumnRef, ParseCtx};
use crate::error::{Error, Result};
use crate::event::{TimestampError, TimestampFormat, auto_unit_to_ms, parse_timestamp};
use crate::quarantine::BadReason;

/// The mapping before a file's schema is seen.
#[derive(Debug, Clone)]
pub(crate) struct ParquetSpec {
    columns: ColumnMap,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum TsKind {
    Timestamp,
    Int,
    Float,
    Text,
}

/// The mapping resolved against one file's schema; indices are into the projected batch.
#[derive(Debug, Clone)]
pub(crate) struct ParquetFile {
    /// Root column indices to read, in file order.
    pub projection: Vec<usize>,
    user: usize,
    item: usize,
    timestamp: usize,
    ts_kind: TsKind,
    action: Option<usize>,
    category: Option<usize>,
    dwell: Option<usize>,
    numeric: Vec<usize>,
    labels: Labels,
}

impl ParquetFile {
    /// (field, source column) actually used.
    pub fn mapping(&self) -> Vec<(String, String)> {
        let l = &self.labels;
        let mut m = vec![
            ("user".to_string(), l.user.clone()),
            ("item".to_string(), l.item.clone()),
            ("timestamp".to_string(), l.timestamp.clone()),
        ];
        for (f, v) in [
            ("action", &l.action),
            ("category", &l.category),
            ("dwell", &l.dwell),
        ] {
            if !v.is_empty() {
                m.push((f.to_string(), v.clone()));
            }
        }
        m
    }
}

#[derive(Debug, Clone, Default)]
struct Labels {
    user: String,
    item: String,
    timestamp: String,
    action: String,
    category: String,
    dwell: String,
    numeric: Vec<String>,
}

fn is_id_type(t: &DataType) -> bool {
    match t {
        DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => true,
        DataType::Dictionary(_, v) => is_id_type(v),
        t => t.is_integer(),
    }
}

fn is_number_type(t: &DataType) -> bool {
    t.is_numeric()
}

impl ParquetSpec {
    pub fn new(columns: ColumnMap) -> Result<Self> {
        Ok(ParquetSpec { columns })
    }

    /// Resolves the mapping against a file's Arrow schema.
    pub fn resolve(&self, schema: &Schema, display: &str) -> Result<ParquetFile> {
        let available = || {
            schema
                .fields()
                .iter()
                .map(|f| f.name().as_str())
                .collect::<Vec<_>>()
                .join(", ")
        };
        let find = |field: &'static str, col: &ColumnRef| -> Result<usize> {
            match col {
                ColumnRef::Index(i) if *i < schema.fields().len() => Ok(*i),
                ColumnRef::Name(n) => schema.index_of(n).map_err(|_| Error::MissingColumn {
                    path: display.to_string(),
                    column: n.clone(),
                    field,
                    available: available(),
                }),
                ColumnRef::Index(_) => Err(Error::MissingColumn {
                    path: display.to_string(),
                    column: col.label(),
                    field,
                    available: available(),
                }),
            }
        };
        let check = |field: &'static str,
                     idx: usize,
                     ok: fn(&DataType) -> bool,
                     expected: &'static str|
         -> Result<usize> {
            let f = schema.field(idx);
            if ok(f.data_type()) {
                Ok(idx)
            } else {
                Err(Error::ColumnType {
                    path: display.to_string(),
                    column: f.name().clone(),
                    field,
                    found: f.data_type().to_string(),
                    expected,
                })
            }
        };
        let c = &self.columns;
        let names: Vec<String> = schema.fields().iter().map(|f| f.name().clone()).collect();
        let req = |field: &'static str, col: &Option<ColumnRef>| -> Result<usize> {
            match col {
                Some(col) => find(field, col),
                None => super::guess_column(field, &names).ok_or_else(|| Error::UnmappedColumn {
                    path: display.to_string(),
                    field,
                    tried: super::guesses_for(field),
                    available: available(),
                }),
            }
        };
        const IDS: &str = "a string or integer column";
        let user = check("user", req("user", &c.user)?, is_id_type, IDS)?;
        let item = check("item", req("item", &c.item)?, is_id_type, IDS)?;
        let ts_idx = req("timestamp", &c.timestamp)?;
        let ts_kind = match schema.field(ts_idx).data_type() {
            DataType::Timestamp(_, _) | DataType::Date32 | DataType::Date64 => TsKind::Timestamp,
            t if t.is_integer() => TsKind::Int,
            t if t.is_floating() => TsKind::Float,
            DataType::Utf8 | DataType::LargeUtf8 | DataType::Utf8View => TsKind::Text,
            t => {
                return Err(Error::ColumnType {
                    path: display.to_string(),
                    column: schema.field(ts_idx).name().clone(),
                    field: "timestamp",
                    found: t.to_string(),
                    expected: "a timestamp, date, integer, float or string column",
                });
            }
        };
        let opt =
            |field: &'static str,
             col: &Option<ColumnRef>,
             ok: fn(&DataType) -> bool,
             e: &'static str| {
                match col {
                    Some(col) => find(field, col)
                        .and_then(|i| check(field, i, ok, e))
                        .map(Some),
                    // a guessed optional column is used only if its type fits
                    None => Ok(super::guess_column(field, &names)
                        .filter(|&i| ok(schema.field(i).data_type()))),
                }
            };
        let action = opt("action", &c.action, is_id_type, IDS)?;
        let category = opt("category", &c.category, is_id_type, IDS)?;
        let dwell = opt("dwell", &c.dwell, is_number_type, "a numeric column")?;
        let numeric = c
            .numeric
            .iter()
            .map(|col| {
                find("numeric", col)
                    .and_then(|i| check("numeric", i, is_number_type, "a numeric column"))
            })
            .collect::<Result<Vec<_>>>()?;
        let name = |i: usize| schema.field(i).name().clone();
        let labels = Labels {
            user: name(user),
            item: name(item),
            timestamp: name(ts_idx),
            action: action.map(name).unwrap_or_default(),
            category: category.map(name).unwrap_or_default(),
            dwell: dwell.map(name).unwrap_or_default(),
            numeric: numeric.iter().map(|&i| name(i)).collect(),
        };
        let mut projection: Vec<usize> = [
            Some(user),
            Some(item),
            Some(ts_idx),
            action,
            category,
            dwell,
        ]
        .into_iter()
        .flatten()
        .chain(numeric.iter().copied())
        .collect();
        projection.sort_unstable();
        projection.dedup();
        let at = |i: usize| projection.iter().position(|&p| p == i).unwrap_or(0);
        Ok(ParquetFile {
            user: at(user),
            item: at(item),
            timestamp: at(ts_idx),
            ts_kind,
            action: action.map(at),
            category: category.map(at),
            dwell: dwell.map(at),
            numeric: numeric.iter().map(|&i| at(i)).collect(),
            labels,
            projection,
        })
    }
}

fn cast(a: &ArrayRef, to: &DataType, context: &str) -> Result<ArrayRef> {
    arrow_cast::cast(a, to).map_err(|source| Error::Arrow {
        context: context.to_string(),
        source,
    })
}

impl ParquetFile {
    pub fn parse_batch(
        &self,
        batch: &RecordBatch,
        chunk: &Chunk,
        ctx: &ParseCtx,
        sink: &mut dyn EventSink,
    ) -> Result<()> {
        let text = |i: usize| -> Result<StringArray> {
            Ok(cast(
                batch.column(i),
                &DataType::Utf8,
                "casting an id column to text",
            )?
            .as_string::<i32>()
            .clone())
        };
        let floats = |i: usize| -> Result<Arc<dyn Array>> {
            cast(
                batch.column(i),
                &DataType::Float32,
                "casting a numeric column",
            )
        };
        let user = text(self.user)?;
        let item = text(self.item)?;
        let action = self.action.map(text).transpose()?;
        let category = self.category.map(text).transpose()?;
        let dwell = self.dwell.map(floats).transpose()?;
        let numeric_cols = self
            .numeric
            .iter()
            .map(|&i| floats(i))
            .collect::<Result<Vec<_>>>()?;
        let ts_col = batch.column(self.timestamp);
        let ts_ints = match self.ts_kind {
            TsKind::Timestamp => Some(cast(
                &cast(
                    ts_col,
                    &DataType::Timestamp(TimeUnit::Millisecond, None),
                    "casting the timestamp",
                )?,
                &DataType::Int64,
                "casting the timestamp",
            )?),
            TsKind::Int => Some(cast(ts_col, &DataType::Int64, "casting the timestamp")?),
            _ => None,
        };
        let ts_floats = match self.ts_kind {
            TsKind::Float => Some(cast(ts_col, &DataType::Float64, "casting the timestamp")?),
            _ => None,
        };
        let ts_text = match self.ts_kind {
            TsKind::Text => Some(text(self.timestamp)?),
            _ => None,
        };
        let mut numeric = vec![f32::NAN; numeric_cols.len()];
        for row in 0..batch.num_rows() {
            let pos = RowPos {
                file: chunk.file,
                line: chunk.first_line + row as u64,
                seq: chunk.seq(row as u64),
            };
            fn get(a: &StringArray, row: usize) -> Option<&[u8]> {
                if a.is_null(row) {
                    None
                } else {
                    Some(a.value(row).as_bytes())
                }
            }
            let Some(u) = get(&user, row) else {
                sink.bad(BadReason::MissingField, pos, &self.labels.user, b"null");
                continue;
            };
            let u = match check_key(u, BadReason::EmptyUser) {
                Ok(v) => v,
                Err(r) => {
                    sink.bad(r, pos, &self.labels.user, u);
                    continue;
                }
            };
            let Some(it) = get(&item, row) else {
                sink.bad(BadReason::MissingField, pos, &self.labels.item, b"null");
                continue;
            };
            let it = match check_key(it, BadReason::EmptyItem) {
                Ok(v) => v,
                Err(r) => {
                    sink.bad(r, pos, &self.labels.item, it);
                    continue;
                }
            };
            if ts_col.is_null(row) {
                sink.bad(
                    BadReason::MissingField,
                    pos,
                    &self.labels.timestamp,
                    b"null",
                );
                continue;
            }
            let ts = if let Some(a) = &ts_ints {
                let v = a.as_primitive::<Int64Type>().value(row);
                let ms = match (self.ts_kind, ctx.ts_format) {
                    (TsKind::Timestamp, _)
                    | (_, TimestampFormat::UnixMs)
                    | (_, TimestampFormat::Ordinal) => v,
                    (_, TimestampFormat::UnixS) => v.saturating_mul(1000),
                    _ => auto_unit_to_ms(v),
                };
                if ctx.ts_format != TimestampFormat::Ordinal
                    && (ms < ctx.bounds.min_ms || ms > ctx.bounds.max_ms)
                {
                    Err((TimestampError::Absurd, v.to_string()))
                } else {
                    Ok(ms)
                }
            } else if let Some(a) = &ts_floats {
                let v = a.as_primitive::<Float64Type>().value(row);
                let ms = if ctx.ts_format == TimestampFormat::UnixMs {
                    v
                } else {
                    v * 1000.0
                };
                if !ms.is_finite() {
                    Err((TimestampError::Unparsable, v.to_string()))
                } else if ctx.ts_format != TimestampFormat::Ordinal
                    && ((ms as i64) < ctx.bounds.min_ms || (ms as i64) > ctx.bounds.max_ms)
                {
                    Err((TimestampError::Absurd, v.to_string()))
                } else {
                    Ok(ms.round() as i64)
                }
            } else if let Some(a) = &ts_text {
                let raw = a.value(row).as_bytes();
                parse_timestamp(raw, ctx.ts_format, ctx.bounds)
                    .map_err(|e| (e, String::from_utf8_lossy(raw).into_owned()))
            } else {
                Err((TimestampError::Unparsable, String::new()))
            };
            let ts_ms = match ts {
                Ok(t) => t,
                Err((e, raw)) => {
                    let r = match e {
                        TimestampError::Unparsable => BadReason::BadTimestamp,
                        TimestampError::Absurd => BadReason::AbsurdTimestamp,
                    };
                    sink.bad(r, pos, &self.labels.timestamp, raw.as_bytes());
                    continue;
                }
            };
            let act: &[u8] = match &action {
                None => b"",
                Some(a) => match get(a, row).map(|v| check_key(v, BadReason::EmptyAction)) {
                    Some(Ok(v)) => v,
                    Some(Err(r)) => {
                        sink.bad(r, pos, &self.labels.action, get(a, row).unwrap_or_default());
                        continue;
                    }
                    None => {
                        sink.bad(BadReason::EmptyAction, pos, &self.labels.action, b"null");
                        continue;
                    }
                },
            };
            let cat = match &category {
                None => None,
                Some(a) => match get(a, row) {
                    None => None,
                    Some(v) if v.trim_ascii().is_empty() => None,
                    Some(v) => match check_key(v, BadReason::Malformed) {
                        Ok(v) => Some(v),
                        Err(r) => {
                            sink.bad(r, pos, &self.labels.category, v);
                            continue;
                        }
                    },
                },
            };
            let number = |a: &Arc<dyn Array>| -> std::result::Result<Option<f32>, f32> {
                if a.is_null(row) {
                    return Ok(None);
                }
                let v = a.as_primitive::<Float32Type>().value(row);
                if v.is_finite() { Ok(Some(v)) } else { Err(v) }
            };
            let dw = match dwell.as_ref().map(number) {
                None => None,
                Some(Ok(v)) => v,
                Some(Err(v)) => {
                    sink.bad(
                        BadReason::BadNumber,
                        pos,
                        &self.labels.dwell,
                        v.to_string().as_bytes(),
                    );
                    continue;
                }
            };
            let mut bad = None;
            for (k, a) in numeric_cols.iter().enumerate() {
                match number(a) {
                    Ok(v) => numeric[k] = v.unwrap_or(f32::NAN),
                    Err(v) => {
                        bad = Some((k, v));
                        break;
                    }
                }
            }
            if let Some((k, v)) = bad {
                sink.bad(
                    BadReason::BadNumber,
                    pos,
                    &self.labels.numeric[k],
                    v.to_string().as_bytes(),
                );
                continue;
            }
            sink.event(
                &RawEvent {
                    user: u,
                    item: it,
                    ts_ms,
                    action: act,
                    category: cat,
                    dwell: dw,
                    numeric: &numeric,
                },
                pos,
            );
        }
        Ok(())
    }
}

/// Random access to an object-store file for the Parquet reader: each range is one GET.
struct StoreChunks {
    loc: crate::store::Location,
    path: object_store::path::Path,
    size: u64,
    rt: tokio::runtime::Handle,
}

impl parquet::file::reader::Length for StoreChunks {
    fn len(&self) -> u64 {
        self.size
    }
}

impl parquet::file::reader::ChunkReader for StoreChunks {
    type T = std::io::Cursor<bytes::Bytes>;

    fn get_read(&self, start: u64) -> parquet::errors::Result<Self::T> {
        Ok(std::io::Cursor::new(self.get_bytes(
            start,
            (self.size - start.min(self.size)) as usize,
        )?))
    }

    fn get_bytes(&self, start: u64, length: usize) -> parquet::errors::Result<bytes::Bytes> {
        use object_store::ObjectStoreExt;
        self.rt
            .block_on(
                self.loc
                    .store()
                    .get_range(&self.path, start..start + length as u64),
            )
            .map_err(|e| parquet::errors::ParquetError::External(Box::new(e)))
    }
}

/// Reads a Parquet file's projected columns in batches of 64k rows. `emit` gets the resolved
/// parser, the 1-based first row of the batch and the batch.
pub(crate) fn read_batches(
    spec: &ParquetSpec,
    file: &super::input::InputFile,
    rt: &tokio::runtime::Handle,
    on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
    emit: impl FnMut(Arc<super::FileParser>, u64, RecordBatch) -> Result<()>,
) -> Result<()> {
    match &file.place {
        super::input::Place::Local(p) => {
            let f = std::fs::File::open(p).map_err(|e| Error::ReadInput {
                path: file.display.clone(),
                source: e,
            })?;
            read_from(spec, f, file, on_bytes, emit)
        }
        super::input::Place::Store(loc, path) => {
            let chunks = StoreChunks {
                loc: loc.clone(),
                path: path.clone(),
                size: file.size,
                rt: rt.clone(),
            };
            read_from(spec, chunks, file, on_bytes, emit)
        }
    }
}

fn read_from<R: parquet::file::reader::ChunkReader + 'static>(
    spec: &ParquetSpec,
    reader: R,
    file: &super::input::InputFile,
    on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
    mut emit: impl FnMut(Arc<super::FileParser>, u64, RecordBatch) -> Result<()>,
) -> Result<()> {
    use parquet::arrow::ProjectionMask;
    use parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder;

    let perr = |source| Error::Parquet {
        path: file.display.clone(),
        source,
    };
    let builder = ParquetRecordBatchReaderBuilder::try_new(reader).map_err(perr)?;
    let total = builder.metadata().file_metadata().num_rows().max(1);
    let resolved = spec.resolve(builder.schema(), &file.display)?;
    let mask = ProjectionMask::roots(builder.parquet_schema(), resolved.projection.clone());
    let batches = builder
        .with_projection(mask)
        .with_batch_size(65_536)
        .build()
        .map_err(perr)?;
    let parser = Arc::new(super::FileParser::Parquet(resolved));
    let mut first_row = 1u64;
    for batch in batches {
        let batch = batch.map_err(|source| Error::Arrow {
            context: file.display.clone(),
            source,
        })?;
        let n = batch.num_rows();
        on_bytes((file.size as f64 * n as f64 / total as f64) as u64);
        emit(Arc::clone(&parser), first_row, batch)?;
        first_row += n as u64;
    }
    Ok(())
}
