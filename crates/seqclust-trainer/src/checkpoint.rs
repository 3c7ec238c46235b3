//! Checkpoints and exported models: safetensors for tensors, JSON for the rest, written
//! through object_store (local or S3).
//!
//! ```text
//! <run>/checkpoints/step-000001234/{model.safetensors, optimizer.safetensors, state.json}
//! <run>/checkpoints/LATEST            → the newest complete checkpoint's directory name
//! <run>/model/{config.json, encoder.safetensors}
//! ```
//! A checkpoint's `state.json` is written last, and `LATEST` after it, so a crash while
//! writing leaves the previous checkpoint as the latest.

use std::collections::HashMap;

use bytes::Bytes;
use safetensors::tensor::{Dtype, SafeTensors, TensorView};
use serde::{Deserialize, Serialize};

use seqclust_data::Location;
use seqclust_model::{EncoderConfig, ItemTable, Optimizer, SeqModel, Vocab};

use crate::error::{Error, Result};

/// The description of a model, stored beside its weights.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct ModelInfo {
    /// Encoder settings.
    pub encoder: EncoderConfig,
    /// Vocabulary sizes.
    pub vocab: Vocab,
    /// The dataset the model was trained on.
    pub dataset: String,
    /// seqclust version.
    pub code_version: String,
}

/// Training progress stored with a checkpoint.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
pub struct TrainState {
    /// Optimiser steps taken.
    pub step: u64,
    /// Epoch in progress (from 0).
    pub epoch: usize,
    /// Batches of that epoch already taken.
    pub batches_in_epoch: usize,
    /// Best validation NDCG@10 so far.
    pub best_ndcg10: Option<f64>,
    /// Evaluations since it improved.
    pub since_best: usize,
    /// The model description (checked on resume).
    pub model: ModelInfo,
}

fn f32_bytes(v: &[f32]) -> Vec<u8> {
    v.iter().flat_map(|x| x.to_le_bytes()).collect()
}

/// Named f32 tensors: (name, shape, values).
pub type Named = Vec<(String, Vec<usize>, Vec<f32>)>;

fn serialize(tensors: &Named) -> Result<Vec<u8>> {
    let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = tensors
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), f32_bytes(v)))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, b)| TensorView::new(Dtype::F32, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::checkpoint("(being written)", e.to_string()))?;
    safetensors::tensor::serialize(views, None)
        .map_err(|e| Error::checkpoint("(being written)", e.to_string()))
}

/// Tensors by name: (shape, values).
type Tensors = HashMap<String, (Vec<usize>, Vec<f32>)>;

fn deserialize(bytes: &[u8], location: &str) -> Result<Tensors> {
    let st =
        SafeTensors::deserialize(bytes).map_err(|e| Error::checkpoint(location, e.to_string()))?;
    let mut out = HashMap::new();
    let mut int8 = Vec::new();
    for (name, view) in st.tensors() {
        match view.dtype() {
            Dtype::F32 => {
                let vals = view
                    .data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect();
                out.insert(name, (view.shape().to_vec(), vals));
            }
            // an int8 file (`seqclust quantize`): values with one scale per row in NAME.scale
            Dtype::I8 => int8.push((name, view.shape().to_vec(), view.data().to_vec())),
            other => {
                return Err(Error::checkpoint(
                    location,
                    format!("{name} is {other:?}, expected F32 or I8"),
                ));
            }
        }
    }
    for (name, shape, data) in int8 {
        let (ss, scales) = out
            .remove(&format!("{name}.scale"))
            .ok_or_else(|| Error::checkpoint(location, format!("int8 {name} has no scales")))?;
        let [rows, cols] = shape[..] else {
            return Err(Error::checkpoint(
                location,
                format!("int8 {name} is not 2-d"),
            ));
        };
        if ss != [rows] {
            return Err(Error::checkpoint(
                location,
                format!("{name}.scale has shape {ss:?} for {rows} rows"),
            ));
        }
        let q = seqclust_model::quant::Int8Rows {
            rows,
            cols,
            values: data.iter().map(|&b| b as i8).collect(),
            scales,
        };
        out.insert(name, (shape, q.dequantize()));
    }
    Ok(out)
}

/// An exported model with its item table and weight matrices quantised to int8
/// (`seqclust_model::quant`): every quantised tensor `NAME` is stored as I8 with its per-row
/// scales in `NAME.scale`; the rest is f32. [`load_model`] reads it like any model.
pub fn model_tensors_int8(model: &SeqModel) -> Result<Vec<u8>> {
    let q = seqclust_model::quant::Int8Model::of(model)?;
    let mut f32s: Named = model_tensors(model)?
        .into_iter()
        .filter(|(n, _, _)| n != "items" && !q.dense.iter().any(|(d, _)| d == n))
        .collect();
    let mut i8s: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::new();
    for (name, rows) in std::iter::once(("items".to_string(), &q.items))
        .chain(q.dense.iter().map(|(n, r)| (n.clone(), r)))
    {
        f32s.push((
            format!("{name}.scale"),
            vec![rows.rows],
            rows.scales.clone(),
        ));
        i8s.push((
            name,
            vec![rows.rows, rows.cols],
            rows.values.iter().map(|&v| v as u8).collect(),
        ));
    }
    let bytes: Vec<(String, Vec<usize>, Dtype, Vec<u8>)> = f32s
        .iter()
        .map(|(n, s, v)| (n.clone(), s.clone(), Dtype::F32, f32_bytes(v)))
        .chain(i8s.into_iter().map(|(n, s, v)| (n, s, Dtype::I8, v)))
        .collect();
    let views = bytes
        .iter()
        .map(|(n, s, t, b)| TensorView::new(*t, s.clone(), b).map(|v| (n.clone(), v)))
        .collect::<std::result::Result<Vec<_>, _>>()
        .map_err(|e| Error::checkpoint("(being written)", e.to_string()))?;
    safetensors::tensor::serialize(views, None)
        .map_err(|e| Error::checkpoint("(being written)", e.to_string()))
}

/// Where a run keeps the int8 serving model of `train.export_int8`.
pub const INT8_MODEL_DIR: &str = "model-int8";

/// Writes `DIR/{config.json, encoder.safetensors}` under `run` with the int8 weights of
/// [`model_tensors_int8`] (`dir`: `model` for a model of its own, [`INT8_MODEL_DIR`] beside
/// a run's f32 model).
pub async fn save_model_int8(
    run: &Location,
    dir: &str,
    model: &SeqModel,
    info: &ModelInfo,
) -> Result<()> {
    run.put(
        &format!("{dir}/encoder.safetensors"),
        Bytes::from(model_tensors_int8(model)?),
    )
    .await?;
    let json = serde_json::to_vec_pretty(info)
        .map_err(|e| Error::checkpoint(format!("{dir}/config.json"), e.to_string()))?;
    run.put(&format!("{dir}/config.json"), Bytes::from(json))
        .await?;
    Ok(())
}

/// The tensors of the whitening (`encoder.whiten`), when the model has one.
const WHITEN_MEAN: &str = "whiten.mean";
const WHITEN_MATRIX: &str = "whiten.matrix";

/// The model's weights as named tensors (dense parameters and `items`).
pub fn model_tensors(model: &SeqModel) -> Result<Named> {
    let mut out = Vec::new();
    let conv = seqclust_model::Error::from_candle("export");
    for (name, var) in model.vars()? {
        let vals = var
            .flatten_all()
            .map_err(&conv)?
            .to_vec1::<f32>()
            .map_err(&conv)?;
        out.push((name, var.dims().to_vec(), vals));
    }
    out.push((
        "items".to_string(),
        vec![model.items.rows(), model.items.dim()],
        model.items.values().to_vec(),
    ));
    if let Some(w) = model.whitening() {
        let d = w.dim();
        out.push((WHITEN_MEAN.into(), vec![d], w.mean.clone()));
        out.push((WHITEN_MATRIX.into(), vec![d, d], w.matrix.clone()));
    }
    Ok(out)
}

/// Loads weights saved by [`model_tensors`] into a model built from the same config.
pub fn load_weights(model: &mut SeqModel, bytes: &[u8], location: &str) -> Result<()> {
    let mut t = deserialize(bytes, location)?;
    let mut dense = Vec::new();
    for (name, var) in model.vars()? {
        let (shape, vals) = t
            .remove(&name)
            .ok_or_else(|| Error::checkpoint(location, format!("no tensor {name}")))?;
        if shape != var.dims() {
            return Err(Error::checkpoint(
                location,
                format!("{name} has shape {shape:?}, the model {:?}", var.dims()),
            ));
        }
        dense.extend(vals);
    }
    model.set_dense_values(&dense)?;
    let (shape, vals) = t
        .remove("items")
        .ok_or_else(|| Error::checkpoint(location, "no tensor items"))?;
    if shape != [model.items.rows(), model.items.dim()] {
        return Err(Error::checkpoint(
            location,
            format!(
                "item table {shape:?}, the model {}×{}",
                model.items.rows(),
                model.items.dim()
            ),
        ));
    }
    model.items = ItemTable::from_values(shape[0], shape[1], vals)?;
    let d = model.config().dim;
    let whitening = match (t.remove(WHITEN_MEAN), t.remove(WHITEN_MATRIX)) {
        (Some((ms, mean)), Some((xs, matrix))) => {
            if ms != [d] || xs != [d, d] {
                return Err(Error::checkpoint(
                    location,
                    format!("whitening of shape {ms:?} / {xs:?} for dimension {d}"),
                ));
            }
            Some(seqclust_model::Whitening { mean, matrix })
        }
        (None, None) => None,
        _ => {
            return Err(Error::checkpoint(
                location,
                "a whitening needs both whiten.mean and whiten.matrix",
            ));
        }
    };
    model.set_whitening(whitening);
    Ok(())
}

/// Saves a checkpoint and moves `LATEST` to it.
pub async fn save_checkpoint(
    run: &Location,
    model: &SeqModel,
    opt: &Optimizer,
    state: &TrainState,
) -> Result<String> {
    let dir = format!("checkpoints/step-{:09}", state.step);
    let (m, v) = opt.moments();
    let (im, iv) = model.items.moments();
    let optim = serialize(&vec![
        ("dense.m".into(), vec![m.len()], m.to_vec()),
        ("dense.v".into(), vec![v.len()], v.to_vec()),
        ("items.m".into(), vec![im.len()], im.to_vec()),
        ("items.v".into(), vec![iv.len()], iv.to_vec()),
    ])?;
    run.put(
        &format!("{dir}/model.safetensors"),
        Bytes::from(serialize(&model_tensors(model)?)?),
    )
    .await?;
    run.put(&format!("{dir}/optimizer.safetensors"), Bytes::from(optim))
        .await?;
    let json =
        serde_json::to_vec_pretty(state).map_err(|e| Error::checkpoint(&dir, e.to_string()))?;
    run.put(&format!("{dir}/state.json"), Bytes::from(json))
        .await?;
    run.put("checkpoints/LATEST", Bytes::from(dir.clone()))
        .await?;
    Ok(dir)
}

/// Restores the latest checkpoint into `model` and `opt`; `None` when there is none.
/// Fails when the checkpoint's encoder or vocabulary differ from the model's.
pub async fn load_latest(
    run: &Location,
    model: &mut SeqModel,
    opt: &mut Optimizer,
) -> Result<Option<TrainState>> {
    if !run.exists("checkpoints/LATEST").await? {
        return Ok(None);
    }
    let dir = String::from_utf8_lossy(&run.get("checkpoints/LATEST").await?)
        .trim()
        .to_string();
    let loc = run.display_of(&dir);
    let state: TrainState = serde_json::from_slice(&run.get(&format!("{dir}/state.json")).await?)
        .map_err(|e| Error::checkpoint(&loc, format!("state.json: {e}")))?;
    if state.model.encoder != *model.config() {
        return Err(Error::checkpoint(
            &loc,
            format!(
                "was trained with encoder {:?}, the config asks for {:?}; use a new output location or the same [encoder]",
                state.model.encoder,
                model.config()
            ),
        ));
    }
    if state.model.vocab != model.vocab() {
        return Err(Error::checkpoint(
            &loc,
            format!(
                "vocabulary {:?} differs from the dataset's {:?}",
                state.model.vocab,
                model.vocab()
            ),
        ));
    }
    load_weights(
        model,
        &run.get(&format!("{dir}/model.safetensors")).await?,
        &loc,
    )?;
    let mut o = deserialize(
        &run.get(&format!("{dir}/optimizer.safetensors")).await?,
        &loc,
    )?;
    let mut take = |n: &str| {
        o.remove(n)
            .map(|x| x.1)
            .ok_or_else(|| Error::checkpoint(&loc, format!("no tensor {n}")))
    };
    let (m, v, im, iv) = (
        take("dense.m")?,
        take("dense.v")?,
        take("items.m")?,
        take("items.v")?,
    );
    opt.restore(state.step, m, v)?;
    model.items.set_moments(im, iv)?;
    Ok(Some(state))
}

/// Writes the final model: `model/config.json` and `model/encoder.safetensors`.
pub async fn save_model(run: &Location, model: &SeqModel, info: &ModelInfo) -> Result<()> {
    run.put(
        "model/encoder.safetensors",
        Bytes::from(serialize(&model_tensors(model)?)?),
    )
    .await?;
    let json = serde_json::to_vec_pretty(info)
        .map_err(|e| Error::checkpoint("model/config.json", e.to_string()))?;
    run.put("model/config.json", Bytes::from(json)).await?;
    Ok(())
}

/// What [`init_from`] took from the source model.
#[derive(Debug, Clone, PartialEq)]
pub struct Transfer {
    /// The source's model directory.
    pub source: String,
    /// Dense tensors copied from it.
    pub copied: Vec<String>,
    /// Dense tensors left at their fresh initialisation.
    pub fresh: Vec<String>,
}

/// Tensors that mean something only on the dataset the model was trained on: the category
/// embedding and head (ids of another catalogue). The item table is not a dense tensor and is
/// never copied.
fn dataset_bound(name: &str) -> bool {
    name.starts_with("emb.category") || name.starts_with("head.category")
}

/// Initialises `model` from the model of another run at `source` (a run holding `model/`):
/// every dense tensor with the same name and shape that is not bound to the source's
/// catalogue is copied; the rest keep their values. It is an error when nothing fits (an
/// encoder of another kind, size or depth).
pub async fn init_from(model: &mut SeqModel, source: &Location) -> Result<Transfer> {
    let file = source.display_of("model/encoder.safetensors");
    let mut t = deserialize(&source.get("model/encoder.safetensors").await?, &file)?;
    let (mut dense, mut copied, mut fresh) = (Vec::new(), Vec::new(), Vec::new());
    let conv = seqclust_model::Error::from_candle("init_from");
    for (name, var) in model.vars()? {
        match t.remove(&name) {
            Some((shape, vals)) if shape == var.dims() && !dataset_bound(&name) => {
                dense.extend(vals);
                copied.push(name);
            }
            _ => {
                dense.extend(
                    var.flatten_all()
                        .map_err(&conv)?
                        .to_vec1::<f32>()
                        .map_err(&conv)?,
                );
                fresh.push(name);
            }
        }
    }
    if copied.is_empty() {
        return Err(Error::config(
            "train.init_from",
            format!("no tensor of {file} fits this encoder (another kind, dim or depth?)"),
        ));
    }
    model.set_dense_values(&dense)?;
    Ok(Transfer {
        source: source.display_of("model"),
        copied,
        fresh,
    })
}

/// Loads a model written by [`save_model`].
pub async fn load_model(run: &Location) -> Result<(SeqModel, ModelInfo)> {
    model_from_bytes(
        &run.get("model/config.json").await?,
        &run.get("model/encoder.safetensors").await?,
        &run.display_of("model"),
    )
}

/// Builds a model from the bytes of `model/config.json` and `model/encoder.safetensors`
/// (read by a caller that has verified them); `location` names the model in errors.
pub fn model_from_bytes(
    config: &[u8],
    weights: &[u8],
    location: &str,
) -> Result<(SeqModel, ModelInfo)> {
    let info: ModelInfo = serde_json::from_slice(config)
        .map_err(|e| Error::checkpoint(format!("{location}/config.json"), e.to_string()))?;
    let mut model = SeqModel::new(&info.encoder, info.vocab, 0)?;
    let file = format!("{location}/encoder.safetensors");
    load_weights(&mut model, weights, &file)?;
    if info.encoder.whiten && model.whitening().is_none() {
        return Err(Error::checkpoint(
            file,
            "encoder.whiten is set but the model has no whitening (training did not finish?)",
        ));
    }
    Ok((model, info))
}
