//! [`SequenceBatch`]: many users' sequences in flat columns, and its Parquet form.
//!
//! A shard file has one row per user:
//!
//! | column | type | meaning |
//! |---|---|---|
//! | `user` | utf8 | the user key as in the source |
//! | `items` | list<u32> | item ids (0 padding, 1 out-of-vocabulary, 2.. by frequency) |
//! | `actions` | list<u16> | action ids (0 padding, then the manifest's `vocab.actions`) |
//! | `categories` | list<u32> | category ids (0 none, 1 out-of-vocabulary, 2.. by frequency) |
//! | `timestamps` | list<i64> | milliseconds since the epoch (or ordinal, see the manifest) |
//! | `sessions` | list<u32> | session index within the user, from 0 |
//! | `dwell` | list<f32> | dwell seconds, NaN when unknown (only when the source has dwell) |
//! | `num_<name>` | list<f32> | each extra numeric field, NaN when unknown |

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{Float32Type, Int64Type, UInt16Type, UInt32Type};
use arrow_array::{Array, ArrayRef, ListArray, PrimitiveArray, RecordBatch, StringArray};
use arrow_buffer::{OffsetBuffer, ScalarBuffer};
use arrow_schema::{DataType, Field, Schema};

use crate::error::{Error, Result};

/// Names of the shard columns.
pub mod columns {
    /// User key.
    pub const USER: &str = "user";
    /// Item ids.
    pub const ITEMS: &str = "items";
    /// Action ids.
    pub const ACTIONS: &str = "actions";
    /// Category ids.
    pub const CATEGORIES: &str = "categories";
    /// Timestamps in milliseconds.
    pub const TIMESTAMPS: &str = "timestamps";
    /// Session indices.
    pub const SESSIONS: &str = "sessions";
    /// Dwell seconds.
    pub const DWELL: &str = "dwell";
    /// Prefix of extra numeric columns.
    pub const NUMERIC_PREFIX: &str = "num_";
}

/// One user's sequence, borrowed from a [`SequenceBatch`].
#[derive(Debug, Clone, Copy, PartialEq)]
pub struct SeqRef<'a> {
    /// User key.
    pub user: &'a str,
    /// Item ids, oldest first.
    pub items: &'a [u32],
    /// Action ids.
    pub actions: &'a [u16],
    /// Category ids.
    pub categories: &'a [u32],
    /// Timestamps (ms).
    pub timestamps: &'a [i64],
    /// Session index per event.
    pub sessions: &'a [u32],
    /// Dwell seconds per event, when the dataset has them.
    pub dwell: Option<&'a [f32]>,
}

impl SeqRef<'_> {
    /// Number of events.
    pub fn len(&self) -> usize {
        self.items.len()
    }

    /// Whether there are no events.
    pub fn is_empty(&self) -> bool {
        self.items.is_empty()
    }
}

/// Sequences of many users in flat columns (`offsets[i]..offsets[i+1]` are user `i`'s events).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct SequenceBatch {
    user_offsets: Vec<i32>,
    user_bytes: Vec<u8>,
    offsets: Vec<i32>,
    /// Item ids of all users.
    pub items: Vec<u32>,
    /// Action ids.
    pub actions: Vec<u16>,
    /// Category ids.
    pub categories: Vec<u32>,
    /// Timestamps.
    pub timestamps: Vec<i64>,
    /// Session indices.
    pub sessions: Vec<u32>,
    /// Dwell seconds (empty when the dataset has none).
    pub dwell: Vec<f32>,
    has_dwell: bool,
    numeric_names: Vec<String>,
    /// Extra numeric columns, one flat vector per name.
    pub numeric: Vec<Vec<f32>>,
}

impl SequenceBatch {
    /// An empty batch with the given optional columns.
    pub fn new(has_dwell: bool, numeric_names: Vec<String>) -> Self {
        SequenceBatch {
            user_offsets: vec![0],
            offsets: vec![0],
            has_dwell,
            numeric: vec![Vec::new(); numeric_names.len()],
            numeric_names,
            ..Default::default()
        }
    }

    /// Number of users.
    pub fn len(&self) -> usize {
        self.offsets.len().saturating_sub(1)
    }

    /// Whether the batch holds no users.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Number of events of all users.
    pub fn num_events(&self) -> usize {
        self.items.len()
    }

    /// Whether the batch has a dwell column.
    pub fn has_dwell(&self) -> bool {
        self.has_dwell
    }

    /// Names of the extra numeric columns.
    pub fn numeric_names(&self) -> &[String] {
        &self.numeric_names
    }

    /// Starts a user; push its events with [`Self::push_event`], then call [`Self::end_user`].
    pub fn begin_user(&mut self, user: &str) {
        self.user_bytes.extend_from_slice(user.as_bytes());
        self.user_offsets.push(self.user_bytes.len() as i32);
    }

    /// Appends one event to the current user.
    #[allow(clippy::too_many_arguments)]
    pub fn push_event(
        &mut self,
        item: u32,
        action: u16,
        category: u32,
        ts: i64,
        session: u32,
        dwell: f32,
        numeric: impl Iterator<Item = f32>,
    ) {
        self.items.push(item);
        self.actions.push(action);
        self.categories.push(category);
        self.timestamps.push(ts);
        self.sessions.push(session);
        if self.has_dwell {
            self.dwell.push(dwell);
        }
        for (col, v) in self.numeric.iter_mut().zip(numeric) {
            col.push(v);
        }
    }

    /// Ends the current user.
    pub fn end_user(&mut self) {
        self.offsets.push(self.items.len() as i32);
    }

    /// User `i`'s sequence.
    pub fn get(&self, i: usize) -> SeqRef<'_> {
        let (a, b) = (self.offsets[i] as usize, self.offsets[i + 1] as usize);
        let (ua, ub) = (
            self.user_offsets[i] as usize,
            self.user_offsets[i + 1] as usize,
        );
        SeqRef {
            // the bytes were pushed from &str or validated as UTF-8 by Arrow
            user: std::str::from_utf8(&self.user_bytes[ua..ub]).unwrap_or(""),
            items: &self.items[a..b],
            actions: &self.actions[a..b],
            categories: &self.categories[a..b],
            timestamps: &self.timestamps[a..b],
            sessions: &self.sessions[a..b],
            dwell: self.has_dwell.then(|| &self.dwell[a..b]),
        }
    }

    /// Extra numeric values of user `i` for column `k`.
    pub fn numeric_of(&self, i: usize, k: usize) -> &[f32] {
        &self.numeric[k][self.offsets[i] as usize..self.offsets[i + 1] as usize]
    }

    /// Iterates over the users.
    pub fn iter(&self) -> impl Iterator<Item = SeqRef<'_>> {
        (0..self.len()).map(|i| self.get(i))
    }

    /// The Arrow schema of a shard with these optional columns.
    pub fn schema(has_dwell: bool, numeric_names: &[String]) -> Arc<Schema> {
        let list = |name: &str, t: DataType| {
            Field::new(
                name,
                DataType::List(Arc::new(Field::new_list_field(t, false))),
                false,
            )
        };
        let mut fields = vec![
            Field::new(columns::USER, DataType::Utf8, false),
            list(columns::ITEMS, DataType::UInt32),
            list(columns::ACTIONS, DataType::UInt16),
            list(columns::CATEGORIES, DataType::UInt32),
            list(columns::TIMESTAMPS, DataType::Int64),
            list(columns::SESSIONS, DataType::UInt32),
        ];
        if has_dwell {
            fields.push(list(columns::DWELL, DataType::Float32));
        }
        for n in numeric_names {
            fields.push(list(
                &format!("{}{n}", columns::NUMERIC_PREFIX),
                DataType::Float32,
            ));
        }
        Arc::new(Schema::new(fields))
    }

    /// Converts to an Arrow record batch (one row per user).
    pub fn to_record_batch(&self) -> Result<RecordBatch> {
        let schema = Self::schema(self.has_dwell, &self.numeric_names);
        let offsets = OffsetBuffer::new(ScalarBuffer::from(self.offsets.clone()));
        let list = |values: ArrayRef, t: DataType| -> ArrayRef {
            Arc::new(ListArray::new(
                Arc::new(Field::new_list_field(t, false)),
                offsets.clone(),
                values,
                None,
            ))
        };
        let users = StringArray::new(
            OffsetBuffer::new(ScalarBuffer::from(self.user_offsets.clone())),
            self.user_bytes.clone().into(),
            None,
        );
        let mut cols: Vec<ArrayRef> = vec![
            Arc::new(users),
            list(
                Arc::new(PrimitiveArray::<UInt32Type>::from(self.items.clone())),
                DataType::UInt32,
            ),
            list(
                Arc::new(PrimitiveArray::<UInt16Type>::from(self.actions.clone())),
                DataType::UInt16,
            ),
            list(
                Arc::new(PrimitiveArray::<UInt32Type>::from(self.categories.clone())),
                DataType::UInt32,
            ),
            list(
                Arc::new(PrimitiveArray::<Int64Type>::from(self.timestamps.clone())),
                DataType::Int64,
            ),
            list(
                Arc::new(PrimitiveArray::<UInt32Type>::from(self.sessions.clone())),
                DataType::UInt32,
            ),
        ];
        if self.has_dwell {
            cols.push(list(
                Arc::new(PrimitiveArray::<Float32Type>::from(self.dwell.clone())),
                DataType::Float32,
            ));
        }
        for v in &self.numeric {
            cols.push(list(
                Arc::new(PrimitiveArray::<Float32Type>::from(v.clone())),
                DataType::Float32,
            ));
        }
        RecordBatch::try_new(schema, cols).map_err(|source| Error::Arrow {
            context: "building a shard batch".into(),
            source,
        })
    }

    /// Appends the rows of a shard record batch. `location` names the file in errors.
    pub fn extend_from_record_batch(&mut self, batch: &RecordBatch, location: &str) -> Result<()> {
        let bad = |message: String| Error::Shard {
            location: location.to_string(),
            message,
        };
        let col = |name: &str| -> Result<&ArrayRef> {
            batch
                .column_by_name(name)
                .ok_or_else(|| bad(format!("missing column {name:?}")))
        };
        let users = col(columns::USER)?
            .as_string_opt::<i32>()
            .ok_or_else(|| bad("column \"user\" is not utf8".into()))?;
        let lists = |name: &str| -> Result<&ListArray> {
            col(name)?
                .as_list_opt::<i32>()
                .ok_or_else(|| bad(format!("column {name:?} is not a list")))
        };
        let items = lists(columns::ITEMS)?;
        let offsets = items.value_offsets();
        let (lo, hi) = (offsets[0] as usize, offsets[offsets.len() - 1] as usize);
        fn values<'a, T: arrow_array::ArrowPrimitiveType>(
            l: &'a ListArray,
            name: &str,
            lo: usize,
            hi: usize,
            n: usize,
            bad: &dyn Fn(String) -> Error,
        ) -> Result<&'a [T::Native]> {
            let v = l
                .values()
                .as_primitive_opt::<T>()
                .ok_or_else(|| bad(format!("column {name:?} has the wrong element type")))?;
            if l.len() != n
                || l.value_offsets()[0] as usize != lo
                || *l.value_offsets().last().unwrap_or(&0) as usize != hi
            {
                return Err(bad(format!(
                    "column {name:?} is not aligned with \"items\""
                )));
            }
            Ok(&v.values()[lo..hi])
        }
        let n = batch.num_rows();
        let it = values::<UInt32Type>(items, columns::ITEMS, lo, hi, n, &bad)?;
        let ac = values::<UInt16Type>(lists(columns::ACTIONS)?, columns::ACTIONS, lo, hi, n, &bad)?;
        let ca = values::<UInt32Type>(
            lists(columns::CATEGORIES)?,
            columns::CATEGORIES,
            lo,
            hi,
            n,
            &bad,
        )?;
        let ts = values::<Int64Type>(
            lists(columns::TIMESTAMPS)?,
            columns::TIMESTAMPS,
            lo,
            hi,
            n,
            &bad,
        )?;
        let se = values::<UInt32Type>(
            lists(columns::SESSIONS)?,
            columns::SESSIONS,
            lo,
            hi,
            n,
            &bad,
        )?;
        if self.has_dwell {
            let dw =
                values::<Float32Type>(lists(columns::DWELL)?, columns::DWELL, lo, hi, n, &bad)?;
            self.dwell.extend_from_slice(dw);
        }
        for (k, name) in self.numeric_names.clone().iter().enumerate() {
            let cname = format!("{}{name}", columns::NUMERIC_PREFIX);
            let v = values::<Float32Type>(lists(&cname)?, &cname, lo, hi, n, &bad)?;
            self.numeric[k].extend_from_slice(v);
        }
        let base = self.items.len() as i64;
        for w in offsets.windows(2) {
            if w[1] < w[0] {
                return Err(bad("decreasing list offsets".into()));
            }
        }
        for &o in &offsets[1..] {
            let off = base + (o as i64 - lo as i64);
            self.offsets.push(
                i32::try_from(off).map_err(|_| bad("more than 2^31 events in one batch".into()))?,
            );
        }
        self.items.extend_from_slice(it);
        self.actions.extend_from_slice(ac);
        self.categories.extend_from_slice(ca);
        self.timestamps.extend_from_slice(ts);
        self.sessions.extend_from_slice(se);
        for i in 0..n {
            if users.is_null(i) {
                return Err(bad(format!("null user in row {i}")));
            }
            self.user_bytes.extend_from_slice(users.value(i).as_bytes());
            self.user_offsets.push(self.user_bytes.len() as i32);
        }
        Ok(())
    }

    /// Encodes as a Parquet file (snappy, 16k users per row group).
    pub fn to_parquet(&self) -> Result<Vec<u8>> {
        let batch = self.to_record_batch()?;
        use parquet::schema::types::ColumnPath;
        let path = |p: &[&str]| ColumnPath::new(p.iter().map(|s| s.to_string()).collect());
        let mut props = parquet::file::properties::WriterProperties::builder()
            .set_compression(parquet::basic::Compression::SNAPPY)
            // near-unique values: a dictionary costs time and is abandoned anyway
            .set_column_dictionary_enabled(path(&[columns::USER]), false);
        for c in [columns::TIMESTAMPS, columns::DWELL] {
            props = props.set_column_dictionary_enabled(path(&[c, "list", "item"]), false);
        }
        let props = props
            .set_max_row_group_row_count(Some(16_384))
            .set_created_by(format!("seqclust {}", env!("CARGO_PKG_VERSION")))
            .build();
        let perr = |source| Error::Parquet {
            path: "(shard being written)".into(),
            source,
        };
        let mut w = parquet::arrow::ArrowWriter::try_new(Vec::new(), batch.schema(), Some(props))
            .map_err(perr)?;
        w.write(&batch).map_err(perr)?;
        w.into_inner().map_err(perr)
    }

    /// Decodes a shard file written by [`Self::to_parquet`].
    pub fn from_parquet(data: bytes::Bytes, location: &str) -> Result<Self> {
        let perr = |source| Error::Parquet {
            path: location.to_string(),
            source,
        };
        let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data)
            .map_err(perr)?;
        let schema = builder.schema().clone();
        let has_dwell = schema.index_of(columns::DWELL).is_ok();
        let numeric_names = schema
            .fields()
            .iter()
            .filter_map(|f| {
                f.name()
                    .strip_prefix(columns::NUMERIC_PREFIX)
                    .map(str::to_string)
            })
            .collect();
        let mut out = SequenceBatch::new(has_dwell, numeric_names);
        for b in builder.with_batch_size(16_384).build().map_err(perr)? {
            let b = b.map_err(|source| Error::Arrow {
                context: location.to_string(),
                source,
            })?;
            out.extend_from_record_batch(&b, location)?;
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn sample() -> SequenceBatch {
        let mut b = SequenceBatch::new(true, vec!["price".into()]);
        for (u, n) in [("alice", 3usize), ("bob", 0), ("carol", 2)] {
            b.begin_user(u);
            for k in 0..n {
                b.push_event(
                    k as u32 + 2,
                    1,
                    0,
                    1000 * k as i64,
                    0,
                    0.5,
                    [k as f32].into_iter(),
                );
            }
            b.end_user();
        }
        b
    }

    #[test]
    fn parquet_round_trip() {
        let b = sample();
        let bytes = b.to_parquet().unwrap();
        let back = SequenceBatch::from_parquet(bytes.into(), "mem").unwrap();
        assert_eq!(back, b);
        assert_eq!(back.get(2).user, "carol");
        assert_eq!(back.get(0).items, &[2, 3, 4]);
        assert!(back.get(1).is_empty());
        assert_eq!(back.numeric_of(2, 0), &[0.0, 1.0]);
    }

    #[test]
    fn missing_column_is_named() {
        let b = sample().to_record_batch().unwrap();
        let b = b.project(&[0, 1]).unwrap();
        let mut out = SequenceBatch::new(false, vec![]);
        let err = out
            .extend_from_record_batch(&b, "s.parquet")
            .unwrap_err()
            .to_string();
        assert!(
            err.contains("s.parquet") && err.contains("actions"),
            "{err}"
        );
    }
}
