//! `seqclust bench encoder`: training and inference throughput in the configuration of
//! `../shared/peers/encoder_peers.py` (vocabulary 50,000, dim 64, 50 events + 1 target, batch
//! 256, tied item table, AdamW, 2 threads), lines in its JSON schema (`script: encoder_rust`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use seqclust_collective::{Collective, RingConfig};
use seqclust_model::{
    AdamParams, BatchInput, EncoderConfig, EncoderKind, NextItemLoss, ObjectiveConfig, Optimizer,
    Popularity, Positions, SeqInput, SeqModel, StepCtx, Vocab, step,
};
use seqclust_trainer::{average_gradients, shard_of};
use serde_json::json;

use super::measure::{Probe, emit, median};
use super::ranks::{join_ring, run_ranks};

/// Encoder training and inference throughput.
#[derive(Debug, Args)]
pub struct EncoderBench {
    /// Fewer steps (3 warm-up, 5 measured).
    #[arg(long)]
    quick: bool,
    /// Item vocabulary.
    #[arg(long, default_value_t = 50_000)]
    vocab: usize,
    /// Hidden size.
    #[arg(long, default_value_t = 64)]
    dim: usize,
    /// Events per sequence (inputs; one more is the target).
    #[arg(long, default_value_t = 50)]
    seq_len: usize,
    /// Sequences per step.
    #[arg(long, default_value_t = 256)]
    batch: usize,
    /// Encoders (comma-separated): gru, lstm, transformer.
    #[arg(long, default_value = "gru,transformer")]
    encoders: String,
    /// Losses (comma-separated): inbatch, sampled.
    #[arg(long, default_value = "inbatch,sampled")]
    losses: String,
    /// Shared negatives of the sampled loss.
    #[arg(long, default_value_t = 1024)]
    negatives: usize,
    /// Threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Use the plain-candle path instead of the fused kernels.
    #[arg(long)]
    plain: bool,
    /// Item-table update: `lazy` (only the rows a batch touched) or `dense` (every row each
    /// step, as PyTorch's default AdamW does), to measure the row-sparse gain.
    #[arg(long, default_value = "lazy", value_parser = ["lazy", "dense"])]
    table: String,
    /// Tag of the JSON lines (make_table.py puts runs side by side by tag).
    #[arg(long, default_value = "round1")]
    tag: String,
    /// Also append the JSON lines to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Train data-parallel in this many rank processes (`--threads` split between them, the
    /// global `--batch` split between them, gradients averaged over the ring), like the
    /// peers' `--ddp-world`.
    #[arg(long, default_value_t = 1)]
    world: usize,
    /// Run as this rank of a data-parallel group (set by the parent process).
    #[arg(long, hide = true)]
    rank: Option<usize>,
}

pub fn run(a: EncoderBench) -> Result<()> {
    if a.world == 0 {
        anyhow::bail!("--world must be at least 1");
    }
    if a.world > 1 && a.rank.is_none() {
        return run_world(&a);
    }
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads)
        .build()?;
    pool.install(|| run_in_pool(&a))
}

/// The parent of a data-parallel run: starts the ranks and reports each step's slowest rank.
fn run_world(a: &EncoderBench) -> Result<()> {
    let threads = (a.threads / a.world).max(1);
    let mut args: Vec<String> = vec!["bench".into(), "encoder".into()];
    for (flag, v) in [
        ("--vocab", a.vocab.to_string()),
        ("--dim", a.dim.to_string()),
        ("--seq-len", a.seq_len.to_string()),
        ("--batch", a.batch.to_string()),
        ("--encoders", a.encoders.clone()),
        ("--losses", a.losses.clone()),
        ("--negatives", a.negatives.to_string()),
        ("--threads", threads.to_string()),
        ("--table", a.table.clone()),
    ] {
        args.extend([flag.to_string(), v]);
    }
    args.extend(a.quick.then(|| "--quick".to_string()));
    args.extend(a.plain.then(|| "--plain".to_string()));
    let probe = Probe::start();
    let reports: Vec<serde_json::Value> = run_ranks(a.world, threads, &args)?
        .iter()
        .map(|l| serde_json::from_str(l).with_context(|| format!("bad rank report {l:?}")))
        .collect::<Result<_>>()?;
    let load = probe.finish();
    let runs = reports[0]["runs"].as_array().cloned().unwrap_or_default();
    for (i, run) in runs.iter().enumerate() {
        // a data-parallel step lasts as long as its slowest rank
        let slowest = |field: &str| -> Vec<f64> {
            let v: Vec<Vec<f64>> = reports
                .iter()
                .map(|r| {
                    r["runs"][i][field]
                        .as_array()
                        .map(|v| v.iter().filter_map(serde_json::Value::as_f64).collect())
                        .unwrap_or_default()
                })
                .collect();
            (0..v[0].len())
                .map(|s| {
                    v.iter()
                        .map(|r| r.get(s).copied().unwrap_or(f64::NAN))
                        .fold(0.0, f64::max)
                })
                .collect()
        };
        let ms = median(slowest("step_ms"));
        let row = json!({
            "mode": "train", "encoder": run["encoder"], "loss": run["loss"],
            "adamw": format!("seqclust (dense + {} rows)", a.table), "world": a.world,
            "threads_per_rank": threads, "batch": a.batch, "seq_per_s": a.batch as f64 / (ms / 1e3),
            "step_ms": ms, "fwd_ms": median(slowest("fwd_ms")), "bwd_ms": median(slowest("bwd_ms")),
            "opt_ms": median(slowest("opt_ms")), "approx_gflops": null, "load": load,
            "exchange_mb_per_rank": median(slowest("exchange_mb")),
        });
        emit(
            json!({"script": "encoder_rust", "tag": a.tag, "args": reports[0]["args"], "results": [row]}),
            a.out.as_deref(),
        )?;
    }
    Ok(())
}

fn run_in_pool(a: &EncoderBench) -> Result<()> {
    let (warmup, steps) = if a.quick { (3, 5) } else { (5, 20) };
    let vocab = Vocab {
        items: a.vocab + 2,
        actions: 6,
        categories: 2,
    };
    // random sequences of seq_len + 1 items, like the peers' generator
    let mut r = ChaCha8Rng::seed_from_u64(7);
    let total = a.batch * (warmup + steps);
    let items: Vec<Vec<u32>> = (0..total)
        .map(|_| {
            (0..=a.seq_len)
                .map(|_| r.random_range(2..vocab.items as u32))
                .collect()
        })
        .collect();
    let actions = vec![1u16; a.seq_len + 1];
    let cats = vec![0u32; a.seq_len + 1];
    let ts: Vec<i64> = (0..=a.seq_len as i64).collect();
    let counts = vec![1u64; vocab.items];
    let popularity = Popularity::from_counts(&counts);
    // a rank of a data-parallel run trains on its share of every global batch
    let mut ring = match a.rank {
        Some(r) => Some(join_ring(r, a.world, RingConfig::default())?),
        None => None,
    };
    let shard = ring
        .as_ref()
        .map_or(0..a.batch, |g| shard_of(a.batch, g.rank(), g.world_size()));
    let mut runs = Vec::new();
    let args = json!({"vocab": a.vocab, "dim": a.dim, "seq_len": a.seq_len, "batch": a.batch, "negatives": a.negatives, "threads": a.threads, "fused": !a.plain, "table": a.table, "warmup": warmup, "steps": steps});
    for enc in a.encoders.split(',').map(str::trim) {
        let kind = match enc {
            "gru" => EncoderKind::Gru,
            "lstm" => EncoderKind::Lstm,
            "transformer" => EncoderKind::Transformer,
            other => anyhow::bail!("--encoders: unknown {other:?}"),
        };
        // the peers' models: 1-layer GRU; 2-layer, 2-head Transformer with ff 256; no dropout;
        // only item embeddings and positions
        let cfg = EncoderConfig {
            kind,
            dim: a.dim,
            layers: if kind == EncoderKind::Transformer {
                2
            } else {
                1
            },
            heads: 2,
            ff_mult: 4,
            dropout: 0.0,
            max_len: a.seq_len,
            use_action: false,
            use_category: false,
            use_time_gap: false,
            ..EncoderConfig::default()
        };
        for loss in a.losses.split(',').map(str::trim) {
            let next_item_loss = match loss {
                "inbatch" => NextItemLoss::InBatch,
                "sampled" => NextItemLoss::Sampled {
                    negatives: a.negatives,
                },
                other => anyhow::bail!("--losses: unknown {other:?}"),
            };
            // the peer trains on the pooled last position only
            let obj = ObjectiveConfig {
                next_item_loss,
                next_item_positions: Positions::Last,
                ..ObjectiveConfig::default()
            };
            let mut model = SeqModel::new(&cfg, vocab, 1)?;
            model.set_fused(!a.plain);
            let mut opt = Optimizer::new(&model, AdamParams::default())?;
            opt.dense_table = a.table == "dense";
            let probe = Probe::start();
            let (mut fwd, mut bwd, mut opt_ms, mut step_ms) =
                (Vec::new(), Vec::new(), Vec::new(), Vec::new());
            // what this rank puts into the exchange per step: dense values + its item rows
            let mut exchange_mb = Vec::new();
            for s in 0..warmup + steps {
                let batch: Vec<SeqInput<'_>> = items[s * a.batch..(s + 1) * a.batch][shard.clone()]
                    .iter()
                    .map(|it| SeqInput {
                        items: it,
                        actions: &actions,
                        categories: &cats,
                        timestamps: &ts,
                    })
                    .collect();
                let t = Instant::now();
                let mut g = step(
                    &model,
                    &batch,
                    &StepCtx {
                        objective: &obj,
                        popularity: Some(&popularity),
                        seed: 1,
                        step: s as u64 + 1,
                        train: true,
                        intents: None,
                        teacher: None,
                    },
                )?;
                if let Some(ring) = ring.as_mut() {
                    let items = &g.items;
                    let bytes = 4 * (g.dense.len() + items.ids.len() + items.rows.len()) + 16;
                    if s >= warmup {
                        exchange_mb.push(bytes as f64 / 1e6);
                    }
                    average_gradients(ring, &mut g)?;
                }
                let to = Instant::now();
                opt.apply(&mut model, &mut g, 1e-3, None)?;
                if s >= warmup {
                    opt_ms.push(to.elapsed().as_secs_f64() * 1e3);
                    step_ms.push(t.elapsed().as_secs_f64() * 1e3);
                    fwd.push(g.fwd_ms);
                    bwd.push(g.bwd_ms);
                }
            }
            if ring.is_some() {
                runs.push(json!({"encoder": enc, "loss": loss, "step_ms": step_ms, "fwd_ms": fwd, "bwd_ms": bwd, "opt_ms": opt_ms, "exchange_mb": exchange_mb}));
                continue;
            }
            let load = probe.finish();
            let ms = median(step_ms);
            let adamw_label = format!("seqclust (dense + {} rows)", a.table);
            emit(
                json!({"script": "encoder_rust", "tag": a.tag, "args": args, "results": [{
                    "mode": "train", "encoder": enc, "loss": loss, "adamw": adamw_label, "world": 1,
                    "threads_per_rank": a.threads, "batch": a.batch, "seq_per_s": a.batch as f64 / (ms / 1e3), "step_ms": ms,
                    "fwd_ms": median(fwd), "bwd_ms": median(bwd), "opt_ms": median(opt_ms), "approx_gflops": null, "load": load,
                }]}),
                a.out.as_deref(),
            )?;
        }
        if ring.is_some() {
            continue;
        }
        // inference: encode a batch, no gradient
        let model = {
            let mut m = SeqModel::new(&cfg, vocab, 1)?;
            m.set_fused(!a.plain);
            m
        };
        let probe = Probe::start();
        let mut times = Vec::new();
        for s in 0..warmup + steps {
            let batch: Vec<SeqInput<'_>> = items[s * a.batch..(s + 1) * a.batch]
                .iter()
                .map(|it| SeqInput {
                    items: &it[..a.seq_len],
                    actions: &actions[..a.seq_len],
                    categories: &cats[..a.seq_len],
                    timestamps: &ts[..a.seq_len],
                })
                .collect();
            let b = BatchInput::encode(&batch, a.seq_len, cfg.time_buckets);
            let t = Instant::now();
            let v = model.embed(&b)?;
            std::hint::black_box(v);
            if s >= warmup {
                times.push(t.elapsed().as_secs_f64() * 1e3);
            }
        }
        let ms = median(times);
        // make_table.py keys rows by the AdamW column: a label keeps ours apart from PyTorch's
        emit(
            json!({"script": "encoder_rust", "tag": a.tag, "args": args, "results": [{
                "mode": "infer", "encoder": enc, "loss": null, "adamw": "seqclust (no autograd)", "world": 1, "threads_per_rank": a.threads,
                "batch": a.batch, "seq_per_s": a.batch as f64 / (ms / 1e3), "step_ms": ms, "fwd_ms": ms, "bwd_ms": null,
                "opt_ms": null, "approx_gflops": null, "load": probe.finish(),
            }]}),
            a.out.as_deref(),
        )?;
    }
    if ring.is_some() {
        // the rank's report for the parent (one line)
        println!("{}", json!({"args": args, "runs": runs}));
    }
    Ok(())
}
