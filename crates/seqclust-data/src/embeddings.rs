//! Embedding matrices on disk: `.npy` (NumPy), the `PEERRAW1` container of the reference peers
//! (`../shared/peers/embdata.py`), and Parquet (a list or fixed-size-list float column, with an
//! optional id column). Also label files for evaluation.

use std::io::Write;
use std::path::Path;

use serde::Deserialize;

use crate::error::{Error, Result};

/// A row-major `n × d` f32 matrix with optional row ids.
#[derive(Debug, Clone, PartialEq)]
pub struct Embeddings {
    /// Rows.
    pub n: usize,
    /// Columns.
    pub d: usize,
    /// Row-major values.
    pub data: Vec<f32>,
    /// Row ids (user keys), when the file has them.
    pub ids: Option<Vec<String>>,
}

const PEERRAW_MAGIC: &[u8; 8] = b"PEERRAW1";

#[derive(Debug, Deserialize)]
struct RawHeader {
    dtype: String,
    shape: Vec<u64>,
    data_offset: u64,
    data_bytes: u64,
    sha256: Option<String>,
}

fn bad(path: &Path, message: impl Into<String>) -> Error {
    Error::ReadInput {
        path: path.display().to_string(),
        source: std::io::Error::other(message.into()),
    }
}

fn read_file(path: &Path) -> Result<Vec<u8>> {
    std::fs::read(path).map_err(|e| match e.kind() {
        std::io::ErrorKind::NotFound => Error::MissingInput {
            path: path.display().to_string(),
        },
        _ => Error::ReadInput {
            path: path.display().to_string(),
            source: e,
        },
    })
}

/// Reads the `PEERRAW1` header and returns it with the data bytes. With `verify`, checks the
/// data's sha256 against the header.
fn peerraw(path: &Path, bytes: &[u8], verify: bool) -> Result<(RawHeader, std::ops::Range<usize>)> {
    if bytes.len() < 16 || &bytes[..8] != PEERRAW_MAGIC {
        return Err(bad(path, "not a PEERRAW1 file (bad magic)"));
    }
    let h = u64::from_le_bytes(
        bytes[8..16]
            .try_into()
            .map_err(|_| bad(path, "truncated header"))?,
    ) as usize;
    let header_bytes = bytes
        .get(16..16 + h)
        .ok_or_else(|| bad(path, "truncated header"))?;
    let header: RawHeader = serde_json::from_slice(header_bytes.trim_ascii_end())
        .map_err(|e| bad(path, format!("bad PEERRAW1 header: {e}")))?;
    let start = header.data_offset as usize;
    let end = start + header.data_bytes as usize;
    if end > bytes.len() {
        return Err(bad(
            path,
            format!(
                "header says {} data bytes at {start}, file has {}",
                header.data_bytes,
                bytes.len()
            ),
        ));
    }
    if verify && let Some(want) = &header.sha256 {
        let got = crate::store::sha256_hex(&bytes[start..end]);
        if &got != want {
            return Err(Error::Checksum {
                location: path.display().to_string(),
                what: "sha256",
                expected: want.clone(),
                found: got,
            });
        }
    }
    Ok((header, start..end))
}

fn le_f32(bytes: &[u8]) -> Vec<f32> {
    bytes
        .chunks_exact(4)
        .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
        .collect()
}

/// Reads an embeddings file, recognised by content: `.npy`, `PEERRAW1` or Parquet. For
/// Parquet, `column` names the vector column (default: the first list-of-float column) and
/// a `user` or `id` string column, if present, gives the row ids.
pub fn read_embeddings(path: &Path, column: Option<&str>, verify: bool) -> Result<Embeddings> {
    let bytes = read_file(path)?;
    if bytes.starts_with(PEERRAW_MAGIC) {
        let (h, range) = peerraw(path, &bytes, verify)?;
        if h.dtype != "<f4" || h.shape.len() != 2 {
            return Err(bad(
                path,
                format!("expected a 2-d <f4 array, found {} {:?}", h.dtype, h.shape),
            ));
        }
        let (n, d) = (h.shape[0] as usize, h.shape[1] as usize);
        if range.len() != n * d * 4 {
            return Err(bad(path, "data size does not match the shape"));
        }
        return Ok(Embeddings {
            n,
            d,
            data: le_f32(&bytes[range]),
            ids: None,
        });
    }
    if bytes.starts_with(b"\x93NUMPY") {
        let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| bad(path, e.to_string()))?;
        let shape = npy.shape().to_vec();
        if shape.len() != 2 {
            return Err(bad(
                path,
                format!("expected a 2-d array, found shape {shape:?}"),
            ));
        }
        if npy.order() != npyz::Order::C {
            return Err(bad(
                path,
                "Fortran-ordered arrays are not supported; save with np.ascontiguousarray",
            ));
        }
        let (n, d) = (shape[0] as usize, shape[1] as usize);
        let dtype = npy.dtype().descr();
        let data: Vec<f32> = match dtype.as_str() {
            "'<f4'" => npy.into_vec::<f32>(),
            "'<f8'" => npy
                .into_vec::<f64>()
                .map(|v| v.into_iter().map(|x| x as f32).collect()),
            other => {
                return Err(bad(
                    path,
                    format!("unsupported dtype {other}; expected float32 or float64"),
                ));
            }
        }
        .map_err(|e| bad(path, e.to_string()))?;
        return Ok(Embeddings {
            n,
            d,
            data,
            ids: None,
        });
    }
    if bytes.starts_with(b"PAR1") {
        return read_parquet(path, bytes.into(), column);
    }
    Err(bad(
        path,
        "unrecognised embeddings format (expected .npy, PEERRAW1 or Parquet)",
    ))
}

fn read_parquet(path: &Path, bytes: bytes::Bytes, column: Option<&str>) -> Result<Embeddings> {
    use arrow_array::cast::AsArray;
    use arrow_array::types::Float32Type;
    use arrow_array::{Array, ArrayRef};
    use arrow_schema::DataType;

    let perr = |source| Error::Parquet {
        path: path.display().to_string(),
        source,
    };
    let builder = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(perr)?;
    let schema = builder.schema().clone();
    let is_vec = |t: &DataType| match t {
        DataType::List(f) | DataType::LargeList(f) | DataType::FixedSizeList(f, _) => {
            f.data_type().is_floating()
        }
        _ => false,
    };
    let col = match column {
        Some(c) => {
            let f = schema
                .field_with_name(c)
                .map_err(|_| Error::MissingColumn {
                    path: path.display().to_string(),
                    column: c.to_string(),
                    field: "embedding",
                    available: schema
                        .fields()
                        .iter()
                        .map(|f| f.name().as_str())
                        .collect::<Vec<_>>()
                        .join(", "),
                })?;
            if !is_vec(f.data_type()) {
                return Err(Error::ColumnType {
                    path: path.display().to_string(),
                    column: c.to_string(),
                    field: "embedding",
                    found: f.data_type().to_string(),
                    expected: "a list of floats",
                });
            }
            c.to_string()
        }
        None => schema
            .fields()
            .iter()
            .find(|f| is_vec(f.data_type()))
            .map(|f| f.name().clone())
            .ok_or_else(|| bad(path, "no list-of-float column; name one with --column"))?,
    };
    let id_col = ["user", "id", "user_id"].into_iter().find(|c| {
        schema
            .field_with_name(c)
            .is_ok_and(|f| matches!(f.data_type(), DataType::Utf8 | DataType::LargeUtf8))
    });
    let mut data = Vec::new();
    let mut ids: Option<Vec<String>> = id_col.map(|_| Vec::new());
    let mut d: Option<usize> = None;
    let mut n = 0usize;
    for batch in builder.build().map_err(perr)? {
        let batch = batch.map_err(|source| Error::Arrow {
            context: path.display().to_string(),
            source,
        })?;
        let arr: &ArrayRef = batch
            .column_by_name(&col)
            .ok_or_else(|| bad(path, "column vanished"))?;
        let arr = arrow_cast::cast(
            arr,
            &DataType::List(std::sync::Arc::new(arrow_schema::Field::new_list_field(
                DataType::Float32,
                true,
            ))),
        )
        .map_err(|source| Error::Arrow {
            context: path.display().to_string(),
            source,
        })?;
        let list = arr.as_list::<i32>();
        let values = list.values().as_primitive::<Float32Type>();
        for i in 0..list.len() {
            let row = n + i;
            if list.is_null(i) {
                return Err(bad(path, format!("row {row}: null embedding")));
            }
            let (a, b) = (
                list.value_offsets()[i] as usize,
                list.value_offsets()[i + 1] as usize,
            );
            let len = b - a;
            match d {
                None => d = Some(len),
                Some(d) if d != len => {
                    return Err(bad(
                        path,
                        format!("row {row}: {len} values, earlier rows have {d}"),
                    ));
                }
                _ => {}
            }
            data.extend_from_slice(&values.values()[a..b]);
        }
        if let (Some(ids), Some(c)) = (ids.as_mut(), id_col) {
            let a = arrow_cast::cast(
                batch
                    .column_by_name(c)
                    .ok_or_else(|| bad(path, "id column vanished"))?,
                &DataType::Utf8,
            )
            .map_err(|source| Error::Arrow {
                context: path.display().to_string(),
                source,
            })?;
            let s = a.as_string::<i32>();
            ids.extend((0..s.len()).map(|i| s.value(i).to_string()));
        }
        n += list.len();
    }
    Ok(Embeddings {
        n,
        d: d.unwrap_or(0),
        data,
        ids,
    })
}

/// Reads integer labels: `.npy` of any integer type, `PEERRAW1` `<u4`, or CSV where the last
/// column of a `user_id,persona,…` file (or the only column) holds the label.
pub fn read_labels(path: &Path) -> Result<Vec<u64>> {
    let bytes = read_file(path)?;
    if bytes.starts_with(PEERRAW_MAGIC) {
        let (h, range) = peerraw(path, &bytes, false)?;
        if h.dtype != "<u4" {
            return Err(bad(path, format!("expected <u4 labels, found {}", h.dtype)));
        }
        return Ok(bytes[range]
            .chunks_exact(4)
            .map(|b| u64::from(u32::from_le_bytes([b[0], b[1], b[2], b[3]])))
            .collect());
    }
    if bytes.starts_with(b"\x93NUMPY") {
        let npy = npyz::NpyFile::new(&bytes[..]).map_err(|e| bad(path, e.to_string()))?;
        let descr = npy.dtype().descr();
        let v: Vec<u64> = match descr.as_str() {
            "'<u4'" => npy
                .into_vec::<u32>()
                .map(|v| v.into_iter().map(u64::from).collect()),
            "'<i4'" => npy
                .into_vec::<i32>()
                .map(|v| v.into_iter().map(|x| x as u64).collect()),
            "'<i8'" => npy
                .into_vec::<i64>()
                .map(|v| v.into_iter().map(|x| x as u64).collect()),
            "'<u8'" => npy.into_vec::<u64>(),
            other => return Err(bad(path, format!("unsupported label dtype {other}"))),
        }
        .map_err(|e| bad(path, e.to_string()))?;
        return Ok(v);
    }
    // CSV: a header line, then rows; the label is the second column (truth files are
    // user_id,persona,persona_name) or the only one
    let text =
        std::str::from_utf8(&bytes).map_err(|_| bad(path, "labels file is not UTF-8 text"))?;
    let mut out = Vec::new();
    for (i, line) in text.lines().enumerate() {
        let fields: Vec<&str> = line.split(',').collect();
        let f = if fields.len() >= 2 {
            fields[1]
        } else {
            fields[0]
        };
        match f.trim().parse::<u64>() {
            Ok(v) => out.push(v),
            Err(_) if i == 0 => {} // header
            Err(_) => {
                return Err(bad(
                    path,
                    format!("line {}: label {f:?} is not an integer", i + 1),
                ));
            }
        }
    }
    Ok(out)
}

/// Labels keyed by user: a CSV whose header names the columns and whose first two columns are
/// the user key and an integer label (the generator's `*.truth.csv`:
/// `user_id,persona,persona_name`). Errors name the file and line; a user listed twice is
/// refused.
pub fn read_keyed_labels(path: &Path) -> Result<std::collections::HashMap<String, u64>> {
    let bytes = read_file(path)?;
    let text =
        std::str::from_utf8(&bytes).map_err(|_| bad(path, "labels file is not UTF-8 text"))?;
    let mut out = std::collections::HashMap::new();
    for (i, line) in text.lines().enumerate().skip(1) {
        if line.trim().is_empty() {
            continue;
        }
        let mut fields = line.split(',');
        let (Some(user), Some(label)) = (fields.next(), fields.next()) else {
            return Err(bad(path, format!("line {}: expected user,label", i + 1)));
        };
        let label = label.trim().parse::<u64>().map_err(|_| {
            bad(
                path,
                format!("line {}: label {label:?} is not an integer", i + 1),
            )
        })?;
        if out.insert(user.trim().to_string(), label).is_some() {
            return Err(bad(
                path,
                format!("line {}: user {user:?} is listed twice", i + 1),
            ));
        }
    }
    Ok(out)
}

/// Whether a labels file is a CSV (so [`read_keyed_labels`] applies), not `.npy` or
/// PEERRAW1.
pub fn labels_are_csv(path: &Path) -> Result<bool> {
    let bytes = read_file(path)?;
    Ok(!(bytes.starts_with(PEERRAW_MAGIC) || bytes.starts_with(b"\x93NUMPY")))
}

/// The labels of `ids` from a keyed labels file; errors name the first user without one.
pub fn labels_for(path: &Path, ids: &[String]) -> Result<Vec<u64>> {
    let map = read_keyed_labels(path)?;
    ids.iter()
        .map(|u| {
            map.get(u)
                .copied()
                .ok_or_else(|| bad(path, format!("no label for user {u:?}")))
        })
        .collect()
}

/// Writes a 2-d f32 `.npy` file.
pub fn write_npy_f32(path: &Path, data: &[f32], n: usize, d: usize) -> Result<()> {
    use npyz::WriterBuilder;
    let io = |e| Error::io(path.display(), e);
    let f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[n as u64, d as u64])
        .writer(f)
        .begin_nd()
        .map_err(io)?;
    w.extend(data.iter().copied()).map_err(io)?;
    w.finish().map_err(io)
}

/// Writes a 1-d u32 `.npy` file.
pub fn write_npy_u32(path: &Path, data: &[u32]) -> Result<()> {
    use npyz::WriterBuilder;
    let io = |e| Error::io(path.display(), e);
    let f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    let mut w = npyz::WriteOptions::new()
        .default_dtype()
        .shape(&[data.len() as u64])
        .writer(f)
        .begin_nd()
        .map_err(io)?;
    w.extend(data.iter().copied()).map_err(io)?;
    w.finish().map_err(io)?;
    Ok(())
}

/// Per-point cluster assignments, written as Parquet.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct AssignmentColumns {
    /// Row ids (user keys); row numbers are written when absent.
    pub ids: Option<Vec<String>>,
    /// Cluster of each row.
    pub cluster: Vec<u32>,
    /// Distance to it.
    pub distance: Vec<f32>,
    /// Runner-up cluster (`None` when there is only one cluster).
    pub runner_up: Vec<Option<u32>>,
    /// Distance to the runner-up.
    pub runner_up_distance: Vec<f32>,
}

/// Writes assignments as Parquet: `user` (or `row`), `cluster`, `distance`, `runner_up`,
/// `runner_up_distance`, `margin`.
pub fn write_assignments(path: &Path, a: &AssignmentColumns) -> Result<()> {
    let bytes = assignments_parquet(a, &path.display().to_string())?;
    std::fs::write(path, bytes).map_err(|e| Error::io(path.display(), e))
}

/// The Parquet file [`write_assignments`] writes, in memory (for object storage); `name`
/// appears in errors.
pub fn assignments_parquet(a: &AssignmentColumns, name: &str) -> Result<Vec<u8>> {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Float32Array, RecordBatch, StringArray, UInt32Array, UInt64Array};
    let n = a.cluster.len();
    if [
        a.distance.len(),
        a.runner_up.len(),
        a.runner_up_distance.len(),
    ]
    .iter()
    .any(|&l| l != n)
        || a.ids.as_ref().is_some_and(|i| i.len() != n)
    {
        return Err(Error::Internal("assignment columns of different lengths"));
    }
    let id: (&str, ArrayRef) = match &a.ids {
        Some(ids) => ("user", Arc::new(StringArray::from_iter_values(ids.iter()))),
        None => ("row", Arc::new(UInt64Array::from_iter_values(0..n as u64))),
    };
    let margin: Vec<f32> = a
        .runner_up_distance
        .iter()
        .zip(&a.distance)
        .map(|(r, d)| r - d)
        .collect();
    let batch = RecordBatch::try_from_iter(vec![
        id,
        (
            "cluster",
            Arc::new(UInt32Array::from(a.cluster.clone())) as ArrayRef,
        ),
        ("distance", Arc::new(Float32Array::from(a.distance.clone()))),
        (
            "runner_up",
            Arc::new(UInt32Array::from(a.runner_up.clone())),
        ),
        (
            "runner_up_distance",
            Arc::new(Float32Array::from(a.runner_up_distance.clone())),
        ),
        ("margin", Arc::new(Float32Array::from(margin))),
    ])
    .map_err(|source| Error::Arrow {
        context: "building assignments".into(),
        source,
    })?;
    let perr = |source| Error::Parquet {
        path: name.to_string(),
        source,
    };
    let mut out = Vec::new();
    let mut w =
        parquet::arrow::ArrowWriter::try_new(&mut out, batch.schema(), None).map_err(perr)?;
    w.write(&batch).map_err(perr)?;
    w.close().map_err(perr)?;
    Ok(out)
}

/// A Gaussian mixture with the recipe of the reference peers' `embdata.py` — centres from
/// N(0, I), cluster weights from Dirichlet(5), a per-cluster σ from U(0.6, 1.2) — drawn from
/// ChaCha8 (so not the same numbers as NumPy's). Returns the row-major points and the labels.
pub fn gaussian_mixture(n: usize, d: usize, centres: usize, seed: u64) -> (Vec<f32>, Vec<u64>) {
    use rand::{RngExt, SeedableRng};
    use rand_distr::{Distribution, Gamma, Normal};
    let mut r = rand::rngs::ChaCha8Rng::seed_from_u64(seed);
    let normal = Normal::new(0.0f64, 1.0).unwrap_or_else(|_| unreachable!("valid parameters"));
    let gamma = Gamma::new(5.0f64, 1.0).unwrap_or_else(|_| unreachable!("valid parameters"));
    let c: Vec<f64> = (0..centres * d).map(|_| normal.sample(&mut r)).collect();
    let w: Vec<f64> = (0..centres).map(|_| gamma.sample(&mut r)).collect();
    let total: f64 = w.iter().sum();
    let cum: Vec<f64> = w
        .iter()
        .scan(0.0, |a, v| {
            *a += v / total;
            Some(*a)
        })
        .collect();
    let sigma: Vec<f64> = (0..centres)
        .map(|_| 0.6 + 0.6 * r.random::<f64>())
        .collect();
    let mut x = Vec::with_capacity(n * d);
    let mut labels = Vec::with_capacity(n);
    for _ in 0..n {
        let u = r.random::<f64>();
        let k = cum.partition_point(|&v| v < u).min(centres - 1);
        labels.push(k as u64);
        for j in 0..d {
            x.push((c[k * d + j] + sigma[k] * normal.sample(&mut r)) as f32);
        }
    }
    (x, labels)
}

/// Reads the `user` (or `row`) and `cluster` columns of an assignments file written by
/// [`write_assignments`].
pub fn read_assignments(path: &Path) -> Result<(Vec<String>, Vec<u32>)> {
    let a = parse_assignments(
        bytes::Bytes::from(read_file(path)?),
        &path.display().to_string(),
    )?;
    Ok((a.ids, a.clusters))
}

/// The columns of an assignments file that readers use.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Assigned {
    /// User ids (or row numbers as text).
    pub ids: Vec<String>,
    /// Cluster per user.
    pub clusters: Vec<u32>,
    /// Distance to the cluster's centroid (empty when the file has no `distance` column).
    pub distances: Vec<f32>,
}

/// Parses an assignments Parquet file (as [`assignments_parquet`] writes it) read from `location`.
pub fn parse_assignments(bytes: bytes::Bytes, location: &str) -> Result<Assigned> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    use arrow_array::types::{Float32Type, UInt32Type};
    use arrow_schema::DataType;
    let path = Path::new(location);
    let perr = |source| Error::Parquet {
        path: location.to_string(),
        source,
    };
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(perr)?
        .build()
        .map_err(perr)?;
    let mut out = Assigned::default();
    for batch in reader {
        let batch = batch.map_err(|source| Error::Arrow {
            context: location.to_string(),
            source,
        })?;
        let key = batch
            .column_by_name("user")
            .or_else(|| batch.column_by_name("row"))
            .ok_or_else(|| bad(path, "no user or row column"))?;
        let key = arrow_cast::cast(key, &DataType::Utf8).map_err(|source| Error::Arrow {
            context: location.to_string(),
            source,
        })?;
        let c = batch
            .column_by_name("cluster")
            .and_then(|c| c.as_primitive_opt::<UInt32Type>())
            .ok_or_else(|| bad(path, "no u32 cluster column"))?;
        let k = key.as_string::<i32>();
        out.ids.extend((0..k.len()).map(|i| k.value(i).to_string()));
        out.clusters.extend(c.values().iter().copied());
        if let Some(d) = batch
            .column_by_name("distance")
            .and_then(|d| d.as_primitive_opt::<Float32Type>())
        {
            out.distances.extend(d.values().iter().copied());
        }
    }
    if !out.distances.is_empty() && out.distances.len() != out.ids.len() {
        return Err(bad(path, "distance column shorter than the user column"));
    }
    Ok(out)
}

/// Writes a 2-d f32 matrix in the `PEERRAW1` container of the reference peers (a JSON header
/// with dtype, shape and the data's sha256; data at a 64-byte aligned offset).
pub fn write_peerraw_f32(path: &Path, data: &[f32], n: usize, d: usize) -> Result<()> {
    let io = |e| Error::io(path.display(), e);
    let bytes: Vec<u8> = data.iter().flat_map(|v| v.to_le_bytes()).collect();
    let sha = crate::store::sha256_hex(&bytes);
    let mut header = String::new();
    let mut offset = 64usize;
    for _ in 0..4 {
        header = format!(
            r#"{{"magic": "PEERRAW1", "dtype": "<f4", "shape": [{n}, {d}], "order": "C", "data_offset": {offset}, "data_bytes": {}, "sha256": "{sha}", "generator": {{"writer": "seqclust"}}}}"#,
            bytes.len()
        );
        let h = header.len() + 1;
        offset = (16 + h).div_ceil(64) * 64;
    }
    let h = offset - 16;
    let mut out = Vec::with_capacity(offset + bytes.len());
    out.extend_from_slice(PEERRAW_MAGIC);
    out.extend_from_slice(&(h as u64).to_le_bytes());
    out.extend_from_slice(header.as_bytes());
    out.resize(offset - 1, b' ');
    out.push(b'\n');
    out.extend_from_slice(&bytes);
    std::fs::write(path, out).map_err(io)
}

/// Writes user vectors as Parquet: `user` (utf8) and `vector` (fixed-size list of f32).
pub fn write_embeddings_parquet(path: &Path, ids: &[String], data: &[f32], d: usize) -> Result<()> {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, FixedSizeListArray, Float32Array, RecordBatch, StringArray};
    use arrow_schema::{DataType, Field};
    if data.len() != ids.len() * d {
        return Err(Error::Internal("embedding rows do not match the ids"));
    }
    let values = Arc::new(Float32Array::from(data.to_vec()));
    let field = Arc::new(Field::new_list_field(DataType::Float32, false));
    let list = FixedSizeListArray::try_new(field, d as i32, values, None).map_err(|source| {
        Error::Arrow {
            context: "building embeddings".into(),
            source,
        }
    })?;
    let batch = RecordBatch::try_from_iter(vec![
        (
            "user",
            Arc::new(StringArray::from_iter_values(ids.iter())) as ArrayRef,
        ),
        ("vector", Arc::new(list) as ArrayRef),
    ])
    .map_err(|source| Error::Arrow {
        context: "building embeddings".into(),
        source,
    })?;
    let perr = |source| Error::Parquet {
        path: path.display().to_string(),
        source,
    };
    let file = std::fs::File::create(path).map_err(|e| Error::io(path.display(), e))?;
    let mut w = parquet::arrow::ArrowWriter::try_new(file, batch.schema(), None).map_err(perr)?;
    w.write(&batch).map_err(perr)?;
    w.close().map_err(perr)?;
    Ok(())
}

/// Writes a raw little-endian f32 matrix with no header (for tools that mmap it).
pub fn write_raw_f32(path: &Path, data: &[f32]) -> Result<()> {
    let io = |e| Error::io(path.display(), e);
    let mut f = std::io::BufWriter::new(std::fs::File::create(path).map_err(io)?);
    for v in data {
        f.write_all(&v.to_le_bytes()).map_err(io)?;
    }
    f.flush().map_err(io)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn npy_round_trip_and_errors() {
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("e.npy");
        let data: Vec<f32> = (0..12).map(|i| i as f32 * 0.5).collect();
        write_npy_f32(&p, &data, 3, 4).unwrap();
        let e = read_embeddings(&p, None, false).unwrap();
        assert_eq!((e.n, e.d, e.data.clone()), (3, 4, data));
        let l = dir.path().join("l.npy");
        write_npy_u32(&l, &[3, 1, 2]).unwrap();
        assert_eq!(read_labels(&l).unwrap(), vec![3, 1, 2]);
        let junk = dir.path().join("junk.bin");
        std::fs::write(&junk, b"hello").unwrap();
        assert!(
            read_embeddings(&junk, None, false)
                .unwrap_err()
                .to_string()
                .contains("junk.bin")
        );
        assert!(matches!(
            read_embeddings(&dir.path().join("missing.npy"), None, false),
            Err(Error::MissingInput { .. })
        ));
        let keyed = dir.path().join("keyed.csv");
        std::fs::write(&keyed, "user_id,persona\nb,2\na,1\n").unwrap();
        assert_eq!(
            labels_for(&keyed, &["a".to_string(), "b".to_string()]).unwrap(),
            vec![1, 2],
            "joined by user, not by row"
        );
        let chain = |e: Error| {
            let mut s = e.to_string();
            let mut cur = std::error::Error::source(&e);
            while let Some(c) = cur {
                s = format!("{s}: {c}");
                cur = c.source();
            }
            s
        };
        let e = chain(labels_for(&keyed, &["c".to_string()]).unwrap_err());
        assert!(e.contains("keyed.csv") && e.contains("\"c\""), "{e}");
        std::fs::write(&keyed, "user_id,persona\na,1\na,2\n").unwrap();
        let e = chain(read_keyed_labels(&keyed).unwrap_err());
        assert!(e.contains("line 3") && e.contains("twice"), "{e}");
        assert!(labels_are_csv(&keyed).unwrap() && !labels_are_csv(&l).unwrap());
        let csv = dir.path().join("truth.csv");
        std::fs::write(&csv, "user_id,persona,persona_name\n1,3,x\n2,0,y\n").unwrap();
        assert_eq!(read_labels(&csv).unwrap(), vec![3, 0]);
    }

    #[test]
    fn mixture_is_deterministic_and_labelled() {
        let (x, l) = gaussian_mixture(1000, 8, 5, 3);
        assert_eq!((x.len(), l.len()), (8000, 1000));
        assert_eq!(gaussian_mixture(1000, 8, 5, 3).0, x);
        assert!(l.iter().all(|&v| v < 5));
        assert!(x.iter().all(|v| v.is_finite()));
    }

    #[test]
    fn written_embeddings_read_back() {
        let dir = tempfile::tempdir().unwrap();
        let data: Vec<f32> = (0..12).map(|i| i as f32).collect();
        let raw = dir.path().join("e.f32");
        write_peerraw_f32(&raw, &data, 4, 3).unwrap();
        let e = read_embeddings(&raw, None, true).unwrap();
        assert_eq!((e.n, e.d, e.data.clone()), (4, 3, data.clone()));
        let pq = dir.path().join("e.parquet");
        let ids: Vec<String> = (0..4).map(|i| format!("u{i}")).collect();
        write_embeddings_parquet(&pq, &ids, &data, 3).unwrap();
        let e = read_embeddings(&pq, None, false).unwrap();
        assert_eq!((e.n, e.d, e.data), (4, 3, data));
        assert_eq!(e.ids.unwrap(), ids);
    }

    #[test]
    fn peerraw_layout() {
        // a PEERRAW1 file as embdata.write_raw lays it out
        let dir = tempfile::tempdir().unwrap();
        let p = dir.path().join("x.f32");
        let vals: Vec<f32> = vec![1.0, 2.0, 3.0, 4.0, 5.0, 6.0];
        let data: Vec<u8> = vals.iter().flat_map(|v| v.to_le_bytes()).collect();
        let sha = crate::store::sha256_hex(&data);
        let mut json = format!(
            r#"{{"magic": "PEERRAW1", "dtype": "<f4", "shape": [3, 2], "data_offset": 256, "data_bytes": 24, "sha256": "{sha}"}}"#
        );
        let h = 256 - 16;
        assert!(json.len() < h);
        while json.len() < h - 1 {
            json.push(' ');
        }
        json.push('\n');
        let mut f = Vec::new();
        f.extend_from_slice(PEERRAW_MAGIC);
        f.extend_from_slice(&(h as u64).to_le_bytes());
        f.extend_from_slice(json.as_bytes());
        f.extend_from_slice(&data);
        std::fs::write(&p, &f).unwrap();
        let e = read_embeddings(&p, None, true).unwrap();
        assert_eq!((e.n, e.d, e.data), (3, 2, vals));
        let mut corrupt = f.clone();
        *corrupt.last_mut().unwrap() ^= 1;
        std::fs::write(&p, &corrupt).unwrap();
        assert!(matches!(
            read_embeddings(&p, None, true),
            Err(Error::Checksum { .. })
        ));
    }
}
