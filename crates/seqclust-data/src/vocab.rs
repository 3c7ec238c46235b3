//! Vocabularies: item and category keys to dense ids (by frequency), and action names.

use std::sync::Arc;

use arrow_array::cast::AsArray;
use arrow_array::types::{UInt32Type, UInt64Type};
use arrow_array::{ArrayRef, RecordBatch, StringArray, UInt32Array, UInt64Array};
use arrow_schema::{DataType, Field, Schema};
use rustc_hash::FxHashMap;

use crate::error::{Error, Result};

/// Keys to ids: 0 is padding, 1 the out-of-vocabulary bucket, then keys by count (descending),
/// ties by key, so that ids are the same for the same data.
#[derive(Debug, Clone, Default)]
pub struct KeyVocab {
    keys: Vec<String>,
    counts: Vec<u64>,
    index: FxHashMap<Box<[u8]>, u32>,
}

impl KeyVocab {
    /// The padding id.
    pub const PAD: u32 = 0;
    /// The out-of-vocabulary id.
    pub const OOV: u32 = 1;

    /// Builds a vocabulary from occurrence counts; keys seen fewer than `min_count` times go to
    /// [`Self::OOV`], whose count is their total.
    pub fn from_counts(counts: FxHashMap<Box<[u8]>, u64>, min_count: u64) -> KeyVocab {
        let (keys, counts): (Vec<_>, Vec<_>) = counts.into_iter().unzip();
        KeyVocab::from_keys(keys, counts, min_count).0
    }

    /// Like [`Self::from_counts`] for parallel key and count lists; also returns the id of
    /// each input key.
    pub fn from_keys(
        keys: Vec<Box<[u8]>>,
        counts: Vec<u64>,
        min_count: u64,
    ) -> (KeyVocab, Vec<u32>) {
        let mut to_id = vec![Self::OOV; keys.len()];
        let mut kept: Vec<(Box<[u8]>, u64, usize)> = Vec::with_capacity(keys.len());
        let mut oov = 0u64;
        for (i, (k, c)) in keys.into_iter().zip(counts).enumerate() {
            if c >= min_count {
                kept.push((k, c, i));
            } else {
                oov += c;
            }
        }
        kept.sort_unstable_by(|a, b| b.1.cmp(&a.1).then_with(|| a.0.cmp(&b.0)));
        let mut keys = Vec::with_capacity(kept.len() + 2);
        let mut cnts = Vec::with_capacity(kept.len() + 2);
        keys.push("<pad>".to_string());
        cnts.push(0);
        keys.push("<oov>".to_string());
        cnts.push(oov);
        let mut index = FxHashMap::default();
        index.reserve(kept.len());
        for (k, c, i) in kept {
            to_id[i] = keys.len() as u32;
            index.insert(k.clone(), keys.len() as u32);
            keys.push(String::from_utf8_lossy(&k).into_owned());
            cnts.push(c);
        }
        (
            KeyVocab {
                keys,
                counts: cnts,
                index,
            },
            to_id,
        )
    }

    /// The id of a key ([`Self::OOV`] when unknown).
    pub fn id(&self, key: &[u8]) -> u32 {
        self.index.get(key).copied().unwrap_or(Self::OOV)
    }

    /// The id of a key, if it is in the vocabulary.
    pub fn get(&self, key: &str) -> Option<u32> {
        self.index.get(key.as_bytes()).copied()
    }

    /// The key of an id.
    pub fn key(&self, id: u32) -> Option<&str> {
        self.keys.get(id as usize).map(String::as_str)
    }

    /// The count of an id.
    pub fn count(&self, id: u32) -> u64 {
        self.counts.get(id as usize).copied().unwrap_or(0)
    }

    /// Number of ids, padding and OOV included.
    pub fn len(&self) -> usize {
        self.keys.len()
    }

    /// Whether only padding and OOV exist.
    pub fn is_empty(&self) -> bool {
        self.keys.len() <= 2
    }

    /// Encodes as Parquet: `id: u32, key: utf8, count: u64`.
    pub fn to_parquet(&self) -> Result<Vec<u8>> {
        let schema = Arc::new(Schema::new(vec![
            Field::new("id", DataType::UInt32, false),
            Field::new("key", DataType::Utf8, false),
            Field::new("count", DataType::UInt64, false),
        ]));
        let cols: Vec<ArrayRef> = vec![
            Arc::new(UInt32Array::from_iter_values(0..self.keys.len() as u32)),
            Arc::new(StringArray::from_iter_values(self.keys.iter())),
            Arc::new(UInt64Array::from(self.counts.clone())),
        ];
        let batch = RecordBatch::try_new(schema.clone(), cols).map_err(|source| Error::Arrow {
            context: "building a vocabulary".into(),
            source,
        })?;
        let perr = |source| Error::Parquet {
            path: "(vocabulary being written)".into(),
            source,
        };
        let mut w = parquet::arrow::ArrowWriter::try_new(Vec::new(), schema, None).map_err(perr)?;
        w.write(&batch).map_err(perr)?;
        w.into_inner().map_err(perr)
    }

    /// Decodes a vocabulary file written by [`Self::to_parquet`].
    pub fn from_parquet(data: bytes::Bytes, location: &str) -> Result<KeyVocab> {
        let perr = |source| Error::Parquet {
            path: location.to_string(),
            source,
        };
        let bad = |m: &str| Error::Shard {
            location: location.to_string(),
            message: m.to_string(),
        };
        let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(data)
            .map_err(perr)?
            .build()
            .map_err(perr)?;
        let mut v = KeyVocab::default();
        for b in reader {
            let b = b.map_err(|source| Error::Arrow {
                context: location.to_string(),
                source,
            })?;
            let ids = b
                .column_by_name("id")
                .and_then(|c| c.as_primitive_opt::<UInt32Type>())
                .ok_or_else(|| bad("no u32 column id"))?;
            let keys = b
                .column_by_name("key")
                .and_then(|c| c.as_string_opt::<i32>())
                .ok_or_else(|| bad("no utf8 column key"))?;
            let counts = b
                .column_by_name("count")
                .and_then(|c| c.as_primitive_opt::<UInt64Type>())
                .ok_or_else(|| bad("no u64 column count"))?;
            for i in 0..b.num_rows() {
                if ids.value(i) as usize != v.keys.len() {
                    return Err(bad("ids are not consecutive from 0"));
                }
                let k = keys.value(i).to_string();
                if v.keys.len() >= 2 {
                    v.index.insert(k.as_bytes().into(), ids.value(i));
                }
                v.keys.push(k);
                v.counts.push(counts.value(i));
            }
        }
        if v.keys.len() < 2 {
            return Err(bad("fewer than the two reserved ids"));
        }
        Ok(v)
    }
}

/// Final action ids: 0 padding, then the five standard actions, then custom names sorted, so
/// that the same names always get the same ids.
pub(crate) fn action_order(seen: &[String]) -> (Vec<String>, Vec<u16>) {
    let mut names: Vec<String> = vec!["<pad>".to_string()];
    names.extend(crate::event::STANDARD_ACTIONS.iter().map(|s| s.to_string()));
    let mut custom: Vec<&String> = seen
        .iter()
        .filter(|s| !crate::event::STANDARD_ACTIONS.contains(&s.as_str()))
        .collect();
    custom.sort();
    custom.dedup();
    names.extend(custom.into_iter().cloned());
    let remap = seen
        .iter()
        .map(|s| names.iter().position(|n| n == s).unwrap_or(0) as u16)
        .collect();
    (names, remap)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_by_frequency_with_oov() {
        let mut c: FxHashMap<Box<[u8]>, u64> = FxHashMap::default();
        for (k, n) in [("a", 3u64), ("b", 5), ("c", 1), ("d", 3)] {
            c.insert(k.as_bytes().into(), n);
        }
        let v = KeyVocab::from_counts(c, 2);
        assert_eq!(v.id(b"b"), 2);
        assert_eq!(v.id(b"a"), 3);
        assert_eq!(v.id(b"d"), 4);
        assert_eq!(v.id(b"c"), KeyVocab::OOV);
        assert_eq!(v.count(KeyVocab::OOV), 1);
        let back = KeyVocab::from_parquet(v.to_parquet().unwrap().into(), "m").unwrap();
        assert_eq!(back.id(b"d"), 4);
        assert_eq!(back.key(3), Some("a"));
        assert_eq!(back.len(), 5);
    }

    #[test]
    fn action_ids_are_canonical() {
        let (names, remap) = action_order(&["zoom".into(), "buy".into(), "alpha".into()]);
        assert_eq!(
            names,
            [
                "<pad>", "view", "click", "fav", "cart", "buy", "alpha", "zoom"
            ]
        );
        assert_eq!(remap, vec![7, 5, 6]);
    }
}
