//! The sequence encoder: input embeddings (item + action + category + time gap + position),
//! a recurrent or self-attention body, and pooling into one user vector.

use candle_core::{DType, Device, Tensor, Var};
use candle_nn::{VarBuilder, VarMap};
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use rand_distr::{Distribution, Normal};
use rayon::prelude::*;

use crate::config::{EncoderConfig, EncoderKind, Pooling, Vocab};
use crate::error::{Ctx, Error, Result};
use crate::features::{BatchInput, HOURS};
use crate::item_table::ItemTable;
use crate::kernels::block::Mode;
use crate::layers::{Embedding, LayerNorm, Linear, dropout, l2_normalize, mask_tensor};
use crate::recurrent::{Cell, RecurrentLayer};
use crate::transformer::Block;
use crate::whitening::Whitening;

enum Body {
    Recurrent(Vec<RecurrentLayer>),
    Attention {
        blocks: Vec<Block>,
        norm: LayerNorm,
        causal: bool,
    },
}

/// The encoder's output for a batch.
#[derive(Debug, Clone)]
pub struct Encoded {
    /// Every position's state, `b × t × dim`.
    pub states: Tensor,
    /// One vector per sequence, `b × dim`.
    pub user: Tensor,
}

/// The next-event heads: logits of the next action, category and time-gap bucket.
#[derive(Debug, Clone)]
pub struct EventHeads {
    /// `dim → actions`.
    pub action: Linear,
    /// `dim → categories`.
    pub category: Linear,
    /// `dim → time_buckets`.
    pub gap: Linear,
}

/// A sequence encoder with its parameters.
pub struct SeqModel {
    cfg: EncoderConfig,
    vocab: Vocab,
    /// The item table (row-sparse, outside autograd). Row `vocab.items` is the mask token of
    /// the Cloze objective.
    pub items: ItemTable,
    varmap: VarMap,
    names: Vec<String>,
    action: Option<Embedding>,
    category: Option<Embedding>,
    gap: Option<Embedding>,
    hour: Option<Embedding>,
    position: Option<Embedding>,
    heads: Option<EventHeads>,
    body: Body,
    pool_query: Option<Tensor>,
    whitening: Option<Whitening>,
    device: Device,
    fused: bool,
}

impl std::fmt::Debug for SeqModel {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("SeqModel")
            .field("cfg", &self.cfg)
            .field("vocab", &self.vocab)
            .finish_non_exhaustive()
    }
}

/// Deterministic initial values for a parameter, by its name and shape.
fn init_values(name: &str, dims: &[usize], seed: u64) -> Vec<f32> {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for b in name.bytes() {
        h = (h ^ u64::from(b)).wrapping_mul(0x0100_0000_01b3);
    }
    let mut r = ChaCha8Rng::seed_from_u64(seed ^ h);
    let n: usize = dims.iter().product();
    let leaf = name.rsplit('.').next().unwrap_or(name);
    let is_norm = name.split('.').any(|p| p.starts_with("ln") || p == "norm");
    if leaf == "bias" {
        return vec![0.0; n];
    }
    if is_norm {
        return vec![1.0; n];
    }
    if name.starts_with("emb.") || leaf == "query" {
        let normal = Normal::new(0.0f32, 0.02).unwrap_or_else(|_| unreachable!("σ > 0"));
        return (0..n).map(|_| normal.sample(&mut r)).collect();
    }
    // Xavier uniform for weight matrices
    let (fan_out, fan_in) = match dims {
        [o, i] => (*o, *i),
        _ => (n, n),
    };
    let bound = (6.0 / (fan_in + fan_out) as f32).sqrt();
    (0..n)
        .map(|_| (r.random::<f32>() * 2.0 - 1.0) * bound)
        .collect()
}

impl SeqModel {
    /// A new model for a dataset's vocabularies, initialised deterministically from `seed`.
    pub fn new(cfg: &EncoderConfig, vocab: Vocab, seed: u64) -> Result<SeqModel> {
        cfg.validate()?;
        if vocab.items < 3 {
            return Err(Error::config("vocab.items", "the dataset has no items"));
        }
        let device = Device::Cpu;
        let varmap = VarMap::new();
        let vb = VarBuilder::from_varmap(&varmap, DType::F32, &device);
        let d = cfg.dim;
        let t = cfg.max_len + 1;
        let action = cfg
            .use_action
            .then(|| Embedding::new(vocab.actions.max(1), d, vb.pp("emb.action")))
            .transpose()?;
        let category = cfg
            .use_category
            .then(|| Embedding::new(vocab.categories.max(1), d, vb.pp("emb.category")))
            .transpose()?;
        let gap = cfg
            .use_time_gap
            .then(|| Embedding::new(cfg.time_buckets, d, vb.pp("emb.gap")))
            .transpose()?;
        let hour = cfg
            .use_hour
            .then(|| Embedding::new(HOURS, d, vb.pp("emb.hour")))
            .transpose()?;
        let heads = cfg
            .event_heads
            .then(|| -> Result<EventHeads> {
                Ok(EventHeads {
                    action: Linear::new(d, vocab.actions.max(1), true, vb.pp("head.action"))?,
                    category: Linear::new(
                        d,
                        vocab.categories.max(1),
                        true,
                        vb.pp("head.category"),
                    )?,
                    gap: Linear::new(d, cfg.time_buckets, true, vb.pp("head.gap"))?,
                })
            })
            .transpose()?;
        let (body, position) = match cfg.kind {
            EncoderKind::Gru | EncoderKind::Lstm => {
                let cell = if cfg.kind == EncoderKind::Gru {
                    Cell::Gru
                } else {
                    Cell::Lstm
                };
                let layers = (0..cfg.layers)
                    .map(|l| RecurrentLayer::new(cell, d, d, vb.pp(format!("rnn{l}"))))
                    .collect::<Result<Vec<_>>>()?;
                (Body::Recurrent(layers), None)
            }
            EncoderKind::Transformer | EncoderKind::BiTransformer => {
                let blocks = (0..cfg.layers)
                    .map(|l| Block::new(d, cfg.heads, d * cfg.ff_mult, vb.pp(format!("block{l}"))))
                    .collect::<Result<Vec<_>>>()?;
                let norm = LayerNorm::new(d, vb.pp("norm"))?;
                let causal = cfg.kind == EncoderKind::Transformer;
                (
                    Body::Attention {
                        blocks,
                        norm,
                        causal,
                    },
                    Some(Embedding::new(t, d, vb.pp("emb.position"))?),
                )
            }
        };
        let pool_query = (cfg.pooling == Pooling::Attention)
            .then(|| {
                vb.get_with_hints(d, "pool.query", candle_nn::Init::Const(0.0))
                    .ctx("pool query")
            })
            .transpose()?;
        // candle's initialisers use an unseedable generator: re-initialise by name
        let mut names: Vec<String> = varmap
            .data()
            .lock()
            .map_err(|_| Error::Shape("poisoned".into()))?
            .keys()
            .cloned()
            .collect();
        names.sort();
        {
            let data = varmap
                .data()
                .lock()
                .map_err(|_| Error::Shape("poisoned".into()))?;
            for name in &names {
                let var = &data[name];
                let dims = var.dims().to_vec();
                let vals = init_values(name, &dims, seed);
                var.set(&Tensor::from_vec(vals, dims.as_slice(), &device).ctx("init")?)
                    .ctx("init")?;
            }
        }
        let extra = usize::from(cfg.kind == EncoderKind::BiTransformer);
        Ok(SeqModel {
            cfg: cfg.clone(),
            vocab,
            items: ItemTable::new(vocab.items + extra, d, seed),
            varmap,
            names,
            action,
            category,
            gap,
            hour,
            position,
            heads,
            body,
            pool_query,
            whitening: None,
            fused: device.is_cpu(),
            device,
        })
    }

    /// Whether the fused CPU kernels are used (the default on CPU). The plain-candle path
    /// computes the same values and runs on any device.
    pub fn fused(&self) -> bool {
        self.fused
    }

    /// Chooses the fused kernels or the plain-candle path.
    pub fn set_fused(&mut self, fused: bool) {
        self.fused = fused && self.device.is_cpu();
    }

    /// The encoder settings.
    pub fn config(&self) -> &EncoderConfig {
        &self.cfg
    }

    /// The vocabulary sizes.
    pub fn vocab(&self) -> Vocab {
        self.vocab
    }

    /// The device tensors live on.
    pub fn device(&self) -> &Device {
        &self.device
    }

    /// The whitening of the vectors clustering sees (`encoder.whiten`), once estimated.
    pub fn whitening(&self) -> Option<&Whitening> {
        self.whitening.as_ref()
    }

    /// Sets (or clears) the whitening.
    pub fn set_whitening(&mut self, w: Option<Whitening>) {
        self.whitening = w;
    }

    /// The vectors clustering and assignment use for the user vectors `raw` (`n × dim`, from
    /// [`Self::embed`]): whitened when the model has a whitening, else `raw` unchanged.
    pub fn cluster_vectors(&self, raw: Vec<f32>) -> Vec<f32> {
        match &self.whitening {
            Some(w) => w.apply_rows(&raw),
            None => raw,
        }
    }

    /// The next-event heads, when the encoder has them.
    pub fn event_heads(&self) -> Option<&EventHeads> {
        self.heads.as_ref()
    }

    /// The id of the Cloze mask token (bidirectional encoders only).
    pub fn mask_token(&self) -> Option<u32> {
        (self.cfg.kind == EncoderKind::BiTransformer).then_some(self.vocab.items as u32)
    }

    /// The dense parameters, sorted by name (the order of flat gradients).
    pub fn vars(&self) -> Result<Vec<(String, Var)>> {
        let data = self
            .varmap
            .data()
            .lock()
            .map_err(|_| Error::Shape("poisoned".into()))?;
        Ok(self
            .names
            .iter()
            .map(|n| (n.clone(), data[n].clone()))
            .collect())
    }

    /// Number of dense parameters.
    pub fn dense_len(&self) -> Result<usize> {
        Ok(self.vars()?.iter().map(|(_, v)| v.elem_count()).sum())
    }

    /// Encodes a batch. `item_rows` are the item embeddings of `input.items` (`b × t × dim`,
    /// gathered from [`Self::items`] by the caller so that their gradient can be taken).
    /// Dropout is applied when `rng` is given.
    pub fn forward(
        &self,
        input: &BatchInput,
        item_rows: &Tensor,
        rng: Option<&mut ChaCha8Rng>,
    ) -> Result<Encoded> {
        self.run(input, item_rows, rng, true)
    }

    /// [`Self::forward`]; without `train` the fused kernels keep nothing for a backward, and
    /// with last-position pooling the final block computes only the last position (so
    /// `states` is then `b × 1 × dim`).
    fn run(
        &self,
        input: &BatchInput,
        item_rows: &Tensor,
        mut rng: Option<&mut ChaCha8Rng>,
        train: bool,
    ) -> Result<Encoded> {
        let (b, t) = (input.b, input.t);
        let dev = &self.device;
        let shape = [b, t];
        let mut x = match self.cfg.kind {
            // SASRec scales item embeddings by √d before adding positions
            EncoderKind::Transformer | EncoderKind::BiTransformer => {
                (item_rows * (self.cfg.dim as f64).sqrt()).ctx("scale")?
            }
            _ => item_rows.clone(),
        };
        if let Some(e) = &self.action {
            x = (x + e.forward(&input.actions, &shape, dev)?).ctx("action")?;
        }
        if let Some(e) = &self.category {
            let cats: Vec<u32> = input
                .categories
                .iter()
                .map(|&c| c.min(self.vocab.categories.saturating_sub(1) as u32))
                .collect();
            x = (x + e.forward(&cats, &shape, dev)?).ctx("category")?;
        }
        if let Some(e) = &self.gap {
            x = (x + e.forward(&input.gaps, &shape, dev)?).ctx("gap")?;
        }
        if let Some(e) = &self.hour {
            x = (x + e.forward(&input.hours, &shape, dev)?).ctx("hour")?;
        }
        if let Some(e) = &self.position {
            // positions count back from the most recent event
            let pos: Vec<u32> = (0..b * t)
                .map(|i| (i % t) as u32 + (self.cfg.max_len + 1 - t) as u32)
                .collect();
            x = (x + e.forward(&pos, &shape, dev)?).ctx("position")?;
        }
        let mask = mask_tensor(&input.mask, b, t, dev)?;
        x = dropout(&x, self.cfg.dropout, rng.as_deref_mut())?;
        x = x.broadcast_mul(&mask).ctx("mask input")?;
        self.body(input, x, &mask, rng, train)
    }

    /// The input embedding of [`Self::run`] without autograd or dropout, in one pass over
    /// the gathered item rows instead of one tensor op per feature (inference on the CPU).
    fn input_plain(&self, input: &BatchInput) -> Result<Tensor> {
        let (b, t, d) = (input.b, input.t, self.cfg.dim);
        let mut x = self.items.gather(&input.items);
        let scale = match self.cfg.kind {
            EncoderKind::Transformer | EncoderKind::BiTransformer => (d as f32).sqrt(),
            _ => 1.0,
        };
        let table = |e: &Option<Embedding>| -> Result<Option<Vec<f32>>> {
            e.as_ref()
                .map(|e| e.table().flatten_all()?.to_vec1::<f32>())
                .transpose()
                .ctx("embedding table")
        };
        let (act, cat, gap, hour, pos) = (
            table(&self.action)?,
            table(&self.category)?,
            table(&self.gap)?,
            table(&self.hour)?,
            table(&self.position)?,
        );
        let max_cat = self.vocab.categories.saturating_sub(1) as u32;
        let first_pos = self.cfg.max_len + 1 - t;
        fn row(tab: &Option<Vec<f32>>, id: usize, d: usize) -> Option<&[f32]> {
            tab.as_ref().map(|v| &v[id * d..(id + 1) * d])
        }
        x.par_chunks_mut(t * d).enumerate().for_each(|(s, seq)| {
            for (j, out) in seq.chunks_exact_mut(d).enumerate() {
                let i = s * t + j;
                // the same features in the same order as the autograd path
                let parts = [
                    row(&act, input.actions[i] as usize, d),
                    row(&cat, input.categories[i].min(max_cat) as usize, d),
                    row(&gap, input.gaps[i] as usize, d),
                    row(&hour, input.hours[i] as usize, d),
                    row(&pos, first_pos + j, d),
                ];
                out.iter_mut().for_each(|v| *v *= scale);
                for p in parts.into_iter().flatten() {
                    out.iter_mut().zip(p).for_each(|(v, a)| *v += a);
                }
                let m = input.mask[i];
                out.iter_mut().for_each(|v| *v *= m);
            }
        });
        Tensor::from_vec(x, (b, t, d), &self.device).ctx("input")
    }

    /// The body and pooling of [`Self::run`] over the masked input `x`.
    fn body(
        &self,
        input: &BatchInput,
        x: Tensor,
        mask: &Tensor,
        mut rng: Option<&mut ChaCha8Rng>,
        train: bool,
    ) -> Result<Encoded> {
        let states = match &self.body {
            Body::Recurrent(layers) => {
                let mut h = x;
                for (l, layer) in layers.iter().enumerate() {
                    if l > 0 {
                        h = dropout(&h, self.cfg.dropout, rng.as_deref_mut())?;
                    }
                    h = layer.forward(&h, mask, &input.mask, self.fused, train)?;
                }
                h
            }
            Body::Attention {
                blocks,
                norm,
                causal,
            } => {
                let mut h = x;
                let last_only = !train && self.cfg.pooling == Pooling::Last;
                for (i, block) in blocks.iter().enumerate() {
                    let mode = match () {
                        () if train => Mode::Train,
                        () if last_only && i + 1 == blocks.len() => Mode::InferLast,
                        () => Mode::Infer,
                    };
                    h = block.forward(
                        &h,
                        &input.mask,
                        *causal,
                        self.cfg.dropout,
                        rng.as_deref_mut(),
                        self.fused.then_some(mode),
                    )?;
                }
                norm.forward(&h, self.fused)?
            }
        };
        let user = self.pool(&states, mask)?;
        let user = if self.cfg.normalize {
            l2_normalize(&user)?
        } else {
            user
        };
        Ok(Encoded { states, user })
    }

    fn pool(&self, states: &Tensor, mask: &Tensor) -> Result<Tensor> {
        match self.cfg.pooling {
            // the final block may have computed the last position only
            Pooling::Last => states
                .narrow(1, states.dim(1).ctx("last")? - 1, 1)
                .ctx("last")?
                .squeeze(1)
                .ctx("last")?
                .contiguous()
                .ctx("last"),
            Pooling::Mean => {
                let sum = states.broadcast_mul(mask).ctx("mean")?.sum(1).ctx("mean")?;
                let n = (mask.sum(1).ctx("mean")? + 1e-9).ctx("mean")?;
                sum.broadcast_div(&n).ctx("mean")
            }
            Pooling::Attention => {
                let q = self
                    .pool_query
                    .as_ref()
                    .ok_or_else(|| Error::Shape("no pooling query".into()))?;
                let scores = states
                    .broadcast_matmul(&q.unsqueeze(1).ctx("q")?)
                    .ctx("pool scores")?; // b × t × 1
                let neg = ((mask - 1.0).ctx("pool")? * 1e9).ctx("pool")?;
                let w = candle_nn::ops::softmax(&(scores + neg).ctx("pool")?, 1).ctx("pool")?;
                states.broadcast_mul(&w).ctx("pool")?.sum(1).ctx("pool")
            }
        }
    }

    /// The item rows of a batch as a tensor `b × t × dim` (no gradient tracking).
    pub fn gather_items(&self, input: &BatchInput) -> Result<Tensor> {
        let rows = self.items.gather(&input.items);
        Tensor::from_vec(rows, (input.b, input.t, self.cfg.dim), &self.device).ctx("item rows")
    }

    /// Encodes a batch without dropout and returns the user vectors (`b × dim`, row-major).
    pub fn embed(&self, input: &BatchInput) -> Result<Vec<f32>> {
        let enc = if self.fused {
            let x = self.input_plain(input)?;
            let mask = mask_tensor(&input.mask, input.b, input.t, &self.device)?;
            self.body(input, x, &mask, None, false)?
        } else {
            self.run(input, &self.gather_items(input)?, None, false)?
        };
        enc.user
            .flatten_all()
            .ctx("embed")?
            .to_vec1::<f32>()
            .ctx("embed")
    }

    /// Every dense parameter, flattened in [`Self::vars`] order.
    pub fn dense_values(&self) -> Result<Vec<f32>> {
        let mut out = Vec::new();
        for (_, v) in self.vars()? {
            out.extend(
                v.flatten_all()
                    .ctx("params")?
                    .to_vec1::<f32>()
                    .ctx("params")?,
            );
        }
        Ok(out)
    }

    /// Sets every dense parameter from a flat vector in [`Self::vars`] order.
    pub fn set_dense_values(&self, values: &[f32]) -> Result<()> {
        let mut off = 0;
        for (name, v) in self.vars()? {
            let n = v.elem_count();
            let chunk = values
                .get(off..off + n)
                .ok_or_else(|| Error::Incompatible(format!("too few values for {name}")))?;
            v.set(&Tensor::from_slice(chunk, v.dims(), &self.device).ctx("set params")?)
                .ctx("set params")?;
            off += n;
        }
        if off != values.len() {
            return Err(Error::Incompatible(format!(
                "{} values for {off} parameters",
                values.len()
            )));
        }
        Ok(())
    }
}
