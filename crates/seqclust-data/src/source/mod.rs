//! Event sources: file formats, presets for public datasets, and the column mapping.
//!
//! A [`SourceConfig`] says where the events are and how to read them. It deserialises from the
//! `[source]` table of an ingest config:
//!
//! ```toml
//! [source]
//! format = "csv"                 # csv | tsv | jsonl | parquet | taobao | retailrocket | amazon | jd | diginetica
//! paths = ["events/"]            # files, directories, or s3://… URLs
//! timestamp_format = "auto"      # auto | unix_s | unix_ms | iso8601 | ordinal
//! [source.columns]
//! user = "user_id"               # a header name, or a 0-based column index
//! item = "item_id"
//! timestamp = "ts"
//! action = "event"               # optional; default_action when absent
//! category = "category_id"       # optional
//! dwell = "dwell"                # optional, seconds
//! numeric = ["price"]            # optional extra numeric fields
//! [source.actions]               # extra action aliases, raw name -> canonical name
//! detail = "view"
//! ```

pub(crate) mod csv_format;
pub(crate) mod input;
pub(crate) mod jsonl_format;
pub(crate) mod line_formats;
pub(crate) mod parquet_format;
pub(crate) mod sink;

use std::collections::BTreeMap;
use std::sync::Arc;

use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::event::{TimeBounds, TimeKind, TimestampFormat};

/// The format of the input files.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Format {
    /// Delimited text with a column mapping (`delimiter`, `has_header`, `quote`).
    #[default]
    Csv,
    /// Tab-separated text with a column mapping.
    Tsv,
    /// One JSON object per line; columns name the keys.
    Jsonl,
    /// Parquet; columns name the fields.
    Parquet,
    /// Taobao UserBehavior: `user_id,item_id,category_id,behavior_type,timestamp`, no header.
    Taobao,
    /// RetailRocket `events.csv`: `timestamp,visitorid,event,itemid,transactionid`.
    Retailrocket,
    /// Amazon S3-Rec sequence files: `user item item …` per line, oldest first.
    Amazon,
    /// JD micro-behaviour sessions: `sku+type+category+interval+dwell …` per line.
    Jd,
    /// DIGINETICA item views: `session_id;user_id;item_id;timeframe;eventdate`.
    Diginetica,
}

impl Format {
    /// All formats, for help texts.
    pub const ALL: [Format; 9] = [
        Format::Csv,
        Format::Tsv,
        Format::Jsonl,
        Format::Parquet,
        Format::Taobao,
        Format::Retailrocket,
        Format::Amazon,
        Format::Jd,
        Format::Diginetica,
    ];

    /// The name used in configs and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            Format::Csv => "csv",
            Format::Tsv => "tsv",
            Format::Jsonl => "jsonl",
            Format::Parquet => "parquet",
            Format::Taobao => "taobao",
            Format::Retailrocket => "retailrocket",
            Format::Amazon => "amazon",
            Format::Jd => "jd",
            Format::Diginetica => "diginetica",
        }
    }
}

impl std::str::FromStr for Format {
    type Err = String;
    fn from_str(s: &str) -> std::result::Result<Self, String> {
        Format::ALL
            .into_iter()
            .find(|f| f.name().eq_ignore_ascii_case(s))
            .ok_or_else(|| {
                let names: Vec<_> = Format::ALL.iter().map(|f| f.name()).collect();
                format!("unknown format {s:?}; expected one of {}", names.join(", "))
            })
    }
}

/// A column: by header name (or JSON key / Parquet field), or by 0-based index.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(untagged)]
pub enum ColumnRef {
    /// 0-based position.
    Index(usize),
    /// Header name, JSON key or Parquet field name.
    Name(String),
}

impl ColumnRef {
    /// Reads `user_id` as a name and `3` or `#3` as an index.
    pub fn parse(s: &str) -> ColumnRef {
        let t = s.strip_prefix('#').unwrap_or(s);
        match t.parse::<usize>() {
            Ok(i) => ColumnRef::Index(i),
            Err(_) => ColumnRef::Name(s.to_string()),
        }
    }

    /// A label for messages and the manifest.
    pub fn label(&self) -> String {
        match self {
            ColumnRef::Index(i) => format!("#{i}"),
            ColumnRef::Name(n) => n.clone(),
        }
    }
}

/// Which input column holds which event field.
#[derive(Debug, Clone, Default, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct ColumnMap {
    /// User or session key (required).
    pub user: Option<ColumnRef>,
    /// Item key (required).
    pub item: Option<ColumnRef>,
    /// Timestamp (required).
    pub timestamp: Option<ColumnRef>,
    /// Action type; when absent every event gets `default_action`.
    pub action: Option<ColumnRef>,
    /// Category key.
    pub category: Option<ColumnRef>,
    /// Dwell time in seconds.
    pub dwell: Option<ColumnRef>,
    /// Other numeric fields.
    pub numeric: Vec<ColumnRef>,
}

/// Where the events are and how to read them.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SourceConfig {
    /// File format or dataset preset.
    pub format: Format,
    /// Input files, directories (every file inside, sorted by name) or object-store URLs.
    pub paths: Vec<String>,
    /// Field delimiter for csv (default `,`; `\t` for tsv).
    pub delimiter: Option<char>,
    /// Whether the first line is a header (default true for csv/tsv).
    pub has_header: Option<bool>,
    /// Quote character; `""` turns quoting off (default `"`).
    pub quote: Option<String>,
    /// The column mapping (ignored by presets unless set).
    pub columns: ColumnMap,
    /// How timestamps are written.
    pub timestamp_format: TimestampFormat,
    /// The plausible range of absolute timestamps; rows outside are quarantined.
    pub time_bounds: TimeBounds,
    /// The action of events without an action column.
    pub default_action: String,
    /// Extra action aliases, raw (lower-case) name → canonical name.
    pub actions: BTreeMap<String, String>,
}

impl Default for SourceConfig {
    fn default() -> Self {
        SourceConfig {
            format: Format::Csv,
            paths: Vec::new(),
            delimiter: None,
            has_header: None,
            quote: None,
            columns: ColumnMap::default(),
            timestamp_format: TimestampFormat::Auto,
            time_bounds: TimeBounds::default(),
            default_action: "view".to_string(),
            actions: BTreeMap::new(),
        }
    }
}

/// How a line of a line-oriented preset is read.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum LineKind {
    Amazon,
    Jd,
    Diginetica,
}

/// The reader chosen for a source, with presets expanded.
#[derive(Debug, Clone)]
pub(crate) enum Reader {
    Csv(csv_format::CsvSpec),
    Jsonl(jsonl_format::JsonSpec),
    Parquet(parquet_format::ParquetSpec),
    Lines(LineKind),
}

/// A source with presets expanded and the mapping checked.
#[derive(Debug, Clone)]
pub struct ResolvedSource {
    pub(crate) reader: Reader,
    pub(crate) timestamp_format: TimestampFormat,
    pub(crate) time_bounds: TimeBounds,
    pub(crate) time_kind: TimeKind,
    pub(crate) default_action: String,
    pub(crate) aliases: BTreeMap<String, String>,
    pub(crate) has_dwell: bool,
    pub(crate) numeric_names: Vec<String>,
    pub(crate) paths: Vec<String>,
    pub(crate) format: Format,
}

/// Header names recognised for each field when the mapping leaves it out (case-insensitive).
pub const COLUMN_GUESSES: [(&str, &[&str]); 6] = [
    (
        "user",
        &[
            "user_id",
            "userid",
            "user",
            "visitorid",
            "visitor_id",
            "customer_id",
            "client_id",
            "uid",
        ],
    ),
    (
        "item",
        &[
            "item_id",
            "itemid",
            "item",
            "product_id",
            "productid",
            "sku",
            "iid",
        ],
    ),
    (
        "timestamp",
        &[
            "timestamp",
            "ts",
            "time",
            "event_time",
            "datetime",
            "date_time",
            "created_at",
        ],
    ),
    (
        "action",
        &[
            "action",
            "event",
            "event_type",
            "behavior_type",
            "behaviour_type",
            "behavior",
            "type",
        ],
    ),
    (
        "category",
        &["category_id", "categoryid", "category", "cat", "cat_id"],
    ),
    ("dwell", &["dwell", "dwell_time", "dwell_s", "duration"]),
];

/// The names tried for a field, for messages.
pub(crate) fn guesses_for(field: &str) -> String {
    COLUMN_GUESSES
        .iter()
        .find(|(f, _)| *f == field)
        .map(|(_, c)| c.join(", "))
        .unwrap_or_default()
}

/// The index of the column a field is guessed to be in, from common header names.
pub(crate) fn guess_column(field: &str, names: &[String]) -> Option<usize> {
    let (_, candidates) = COLUMN_GUESSES.iter().find(|(f, _)| *f == field)?;
    candidates
        .iter()
        .find_map(|c| names.iter().position(|n| n.trim().eq_ignore_ascii_case(c)))
}

/// The canonical action names of the JD micro-behaviour types 1..=10.
pub const JD_ACTIONS: [&str; 10] = [
    "home2product",
    "shoplist2product",
    "sale2product",
    "cart2product",
    "searchlist2product",
    "detail_comments",
    "detail_specification",
    "detail_bottom",
    "cart",
    "buy",
];

impl SourceConfig {
    /// Checks the config and expands presets. Errors name the offending field.
    pub fn resolve(&self) -> Result<ResolvedSource> {
        if self.paths.is_empty() {
            return Err(Error::config("source.paths", "no input files given"));
        }
        if self.default_action.trim().is_empty() {
            return Err(Error::config("source.default_action", "must not be empty"));
        }
        if self.time_bounds.min_ms >= self.time_bounds.max_ms {
            return Err(Error::config(
                "source.time_bounds",
                "min_ms must be below max_ms",
            ));
        }
        let mut aliases = BTreeMap::new();
        let mut time_kind = TimeKind::Absolute;
        let mut timestamp_format = self.timestamp_format;
        let mut has_dwell = self.columns.dwell.is_some();
        let mut numeric_names: Vec<String> =
            self.columns.numeric.iter().map(ColumnRef::label).collect();
        let reader = match self.format {
            Format::Csv | Format::Tsv => {
                let default_delim = if self.format == Format::Tsv {
                    '\t'
                } else {
                    ','
                };
                let has_header = self.has_header.unwrap_or(true);
                // with a header, unmapped columns are guessed from common names per file
                let columns = if has_header {
                    self.columns.clone()
                } else {
                    self.checked_columns()?
                };
                Reader::Csv(csv_format::CsvSpec::new(
                    self.delimiter.unwrap_or(default_delim),
                    has_header,
                    self.quote.as_deref(),
                    columns,
                    None,
                )?)
            }
            Format::Jsonl => Reader::Jsonl(jsonl_format::JsonSpec::new(self.checked_columns()?)?),
            Format::Parquet => {
                Reader::Parquet(parquet_format::ParquetSpec::new(self.columns.clone())?)
            }
            Format::Taobao => {
                aliases.insert("pv".into(), "view".into());
                if timestamp_format == TimestampFormat::Auto {
                    timestamp_format = TimestampFormat::UnixS;
                }
                let cols = self.preset_columns(ColumnMap {
                    user: Some(ColumnRef::Index(0)),
                    item: Some(ColumnRef::Index(1)),
                    category: Some(ColumnRef::Index(2)),
                    action: Some(ColumnRef::Index(3)),
                    timestamp: Some(ColumnRef::Index(4)),
                    dwell: None,
                    numeric: vec![],
                });
                Reader::Csv(csv_format::CsvSpec::new(
                    self.delimiter.unwrap_or(','),
                    self.has_header.unwrap_or(false),
                    self.quote.as_deref(),
                    cols,
                    Some(5),
                )?)
            }
            Format::Retailrocket => {
                aliases.insert("addtocart".into(), "cart".into());
                aliases.insert("transaction".into(), "buy".into());
                if timestamp_format == TimestampFormat::Auto {
                    timestamp_format = TimestampFormat::UnixMs;
                }
                let cols = self.preset_columns(ColumnMap {
                    user: Some(ColumnRef::Name("visitorid".into())),
                    item: Some(ColumnRef::Name("itemid".into())),
                    timestamp: Some(ColumnRef::Name("timestamp".into())),
                    action: Some(ColumnRef::Name("event".into())),
                    category: None,
                    dwell: None,
                    numeric: vec![],
                });
                Reader::Csv(csv_format::CsvSpec::new(
                    self.delimiter.unwrap_or(','),
                    self.has_header.unwrap_or(true),
                    self.quote.as_deref(),
                    cols,
                    None,
                )?)
            }
            Format::Amazon => {
                time_kind = TimeKind::Ordinal;
                timestamp_format = TimestampFormat::Ordinal;
                Reader::Lines(LineKind::Amazon)
            }
            Format::Jd => {
                time_kind = TimeKind::Ordinal;
                timestamp_format = TimestampFormat::Ordinal;
                has_dwell = true;
                numeric_names = vec!["time_interval".into()];
                Reader::Lines(LineKind::Jd)
            }
            Format::Diginetica => Reader::Lines(LineKind::Diginetica),
        };
        if timestamp_format == TimestampFormat::Ordinal {
            time_kind = TimeKind::Ordinal;
        }
        for (raw, canon) in &self.actions {
            if canon.trim().is_empty() {
                return Err(Error::config(
                    format!("source.actions.{raw}"),
                    "empty action name",
                ));
            }
            aliases.insert(
                raw.trim().to_ascii_lowercase(),
                canon.trim().to_ascii_lowercase(),
            );
        }
        Ok(ResolvedSource {
            reader,
            timestamp_format,
            time_bounds: self.time_bounds,
            time_kind,
            default_action: crate::event::canonical_action(&self.default_action),
            aliases,
            has_dwell,
            numeric_names,
            paths: self.paths.clone(),
            format: self.format,
        })
    }

    /// A preset's columns, overridden by whatever the user mapped explicitly.
    fn preset_columns(&self, preset: ColumnMap) -> ColumnMap {
        let c = &self.columns;
        ColumnMap {
            user: c.user.clone().or(preset.user),
            item: c.item.clone().or(preset.item),
            timestamp: c.timestamp.clone().or(preset.timestamp),
            action: c.action.clone().or(preset.action),
            category: c.category.clone().or(preset.category),
            dwell: c.dwell.clone().or(preset.dwell),
            numeric: if c.numeric.is_empty() {
                preset.numeric
            } else {
                c.numeric.clone()
            },
        }
    }

    fn checked_columns(&self) -> Result<ColumnMap> {
        let c = &self.columns;
        for (name, col) in [
            ("user", &c.user),
            ("item", &c.item),
            ("timestamp", &c.timestamp),
        ] {
            if col.is_none() {
                return Err(Error::config(
                    format!("source.columns.{name}"),
                    format!(
                        "the {} format needs a column for {name} (e.g. --col {name}=NAME)",
                        self.format.name()
                    ),
                ));
            }
        }
        Ok(c.clone())
    }
}

impl ResolvedSource {
    /// Whether timestamps are absolute.
    pub fn time_kind(&self) -> TimeKind {
        self.time_kind
    }

    /// Names of the extra numeric fields.
    pub fn numeric_names(&self) -> &[String] {
        &self.numeric_names
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn headerless_csv_needs_required_columns() {
        let cfg = SourceConfig {
            paths: vec!["x.csv".into()],
            has_header: Some(false),
            ..Default::default()
        };
        let err = cfg.resolve().unwrap_err().to_string();
        assert!(err.contains("source.columns.user"), "{err}");
        let cfg = SourceConfig {
            paths: vec!["x.jsonl".into()],
            format: Format::Jsonl,
            ..Default::default()
        };
        assert!(
            cfg.resolve()
                .unwrap_err()
                .to_string()
                .contains("source.columns.user")
        );
    }

    #[test]
    fn guesses_common_header_names() {
        let names: Vec<String> = ["ts", "VisitorId", "product_id", "event"]
            .iter()
            .map(|s| s.to_string())
            .collect();
        assert_eq!(guess_column("user", &names), Some(1));
        assert_eq!(guess_column("item", &names), Some(2));
        assert_eq!(guess_column("timestamp", &names), Some(0));
        assert_eq!(guess_column("action", &names), Some(3));
        assert_eq!(guess_column("category", &names), None);
    }

    #[test]
    fn config_parses_from_toml() {
        let cfg: SourceConfig = toml::from_str(
            r#"
            format = "csv"
            paths = ["a.csv"]
            [columns]
            user = "u"
            item = 1
            timestamp = "ts"
            numeric = ["price"]
            [actions]
            Detail = "view"
            "#,
        )
        .unwrap();
        assert_eq!(cfg.columns.item, Some(ColumnRef::Index(1)));
        let r = cfg.resolve().unwrap();
        assert_eq!(r.aliases.get("detail").map(String::as_str), Some("view"));
        assert_eq!(r.numeric_names, vec!["price".to_string()]);
    }

    #[test]
    fn unknown_key_is_rejected() {
        let err = toml::from_str::<SourceConfig>("formt = \"csv\"")
            .unwrap_err()
            .to_string();
        assert!(err.contains("formt"), "{err}");
    }

    #[test]
    fn format_names_round_trip() {
        for f in Format::ALL {
            assert_eq!(f.name().parse::<Format>().unwrap(), f);
        }
        assert!("xml".parse::<Format>().is_err());
    }
}

/// What every parser needs besides its own mapping.
#[derive(Debug, Clone, Copy)]
pub(crate) struct ParseCtx {
    pub ts_format: TimestampFormat,
    pub bounds: TimeBounds,
}

/// A piece of one input file, cut at a record boundary.
pub(crate) struct Chunk {
    /// Index into the input-file list.
    pub file: u32,
    /// Global chunk counter (input order).
    pub index: u64,
    /// 1-based line (or row) of the chunk's first record in its file.
    pub first_line: u64,
    pub parser: Arc<FileParser>,
    pub data: ChunkData,
}

impl Chunk {
    /// The global input-order number of the chunk's `row`-th record.
    pub fn seq(&self, row: u64) -> u64 {
        (self.index << 32) | (row & 0xFFFF_FFFF)
    }
}

pub(crate) enum ChunkData {
    Text(Vec<u8>),
    Batch(arrow_array::RecordBatch),
}

/// A source's reader with its mapping resolved for one file.
pub(crate) enum FileParser {
    Csv(csv_format::CsvFile),
    Jsonl(jsonl_format::JsonSpec),
    Lines(LineKind, String),
    Parquet(parquet_format::ParquetFile),
}

impl FileParser {
    /// Parses a chunk into the sink. Only Parquet can fail as a whole (a cast error).
    pub fn parse(
        &self,
        chunk: &Chunk,
        ctx: &ParseCtx,
        sink: &mut dyn sink::EventSink,
    ) -> Result<()> {
        match (self, &chunk.data) {
            (FileParser::Csv(f), ChunkData::Text(d)) => f.parse_chunk(d, chunk, ctx, sink),
            (FileParser::Jsonl(f), ChunkData::Text(d)) => f.parse_chunk(d, chunk, ctx, sink),
            (FileParser::Lines(kind, stem), ChunkData::Text(d)) => {
                line_formats::parse_chunk(*kind, stem, d, chunk, ctx, sink)
            }
            (FileParser::Parquet(f), ChunkData::Batch(b)) => f.parse_batch(b, chunk, ctx, sink)?,
            _ => return Err(Error::Internal("chunk kind does not match its parser")),
        }
        Ok(())
    }
}

impl ResolvedSource {
    pub(crate) fn parse_ctx(&self) -> ParseCtx {
        ParseCtx {
            ts_format: self.timestamp_format,
            bounds: self.time_bounds,
        }
    }

    /// Reads every file in order and hands record-aligned chunks to `emit`. Runs on the reader
    /// thread; mapping errors (a missing column, an unreadable file) stop it with an error.
    pub(crate) fn read_all(
        &self,
        files: &[input::InputFile],
        rt: &tokio::runtime::Handle,
        on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
        mut emit: impl FnMut(Chunk) -> Result<()>,
    ) -> Result<Vec<(String, String)>> {
        use std::io::BufRead;
        let mut index: u64 = 0;
        let mut first_mapping: Option<Vec<(String, String)>> = None;
        for (fi, file) in files.iter().enumerate() {
            let fi = fi as u32;
            if let Reader::Parquet(spec) = &self.reader {
                parquet_format::read_batches(
                    spec,
                    file,
                    rt,
                    Arc::clone(&on_bytes),
                    |parser, first_row, batch| {
                        if first_mapping.is_none()
                            && let FileParser::Parquet(p) = &*parser
                        {
                            first_mapping = Some(p.mapping());
                        }
                        let chunk = Chunk {
                            file: fi,
                            index,
                            first_line: first_row,
                            parser,
                            data: ChunkData::Batch(batch),
                        };
                        index += 1;
                        emit(chunk)
                    },
                )?;
                continue;
            }
            let reader = input::open_read(file, rt, Arc::clone(&on_bytes))?;
            let mut reader = std::io::BufReader::with_capacity(1 << 16, reader);
            let read_err = |e| Error::ReadInput {
                path: file.display.clone(),
                source: e,
            };
            let (parser, quote, header_lines) = match &self.reader {
                Reader::Csv(spec) => {
                    let header = if spec.has_header {
                        let mut line = Vec::new();
                        reader.read_until(b'\n', &mut line).map_err(read_err)?;
                        Some(line)
                    } else {
                        None
                    };
                    let parsed = spec.resolve(header.as_deref(), &file.display)?;
                    (
                        FileParser::Csv(parsed),
                        spec.quote,
                        u64::from(spec.has_header),
                    )
                }
                Reader::Jsonl(spec) => (FileParser::Jsonl(spec.clone()), None, 0),
                Reader::Lines(kind) => {
                    let mut skipped = 0;
                    if *kind == LineKind::Diginetica {
                        let mut line = Vec::new();
                        reader.read_until(b'\n', &mut line).map_err(read_err)?;
                        skipped = 1;
                    }
                    let stem = std::path::Path::new(&file.display)
                        .file_name()
                        .and_then(|n| n.to_str())
                        .map(|n| n.split('.').next().unwrap_or(n).to_string())
                        .unwrap_or_default();
                    (FileParser::Lines(*kind, stem), None, skipped)
                }
                Reader::Parquet(_) => unreachable!("handled above"),
            };
            if first_mapping.is_none() {
                first_mapping = Some(match &parser {
                    FileParser::Csv(c) => c.mapping.clone(),
                    _ => Vec::new(),
                });
            }
            let parser = Arc::new(parser);
            let mut next_line = header_lines + 1;
            input::chunk_stream(reader, quote, &file.display, |data| {
                let lines = bytecount::count(&data, b'\n') as u64;
                let chunk = Chunk {
                    file: fi,
                    index,
                    first_line: next_line,
                    parser: Arc::clone(&parser),
                    data: ChunkData::Text(data),
                };
                next_line += lines;
                index += 1;
                emit(chunk)
            })?;
        }
        Ok(first_mapping.unwrap_or_default())
    }
}
