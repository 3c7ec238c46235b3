//! Micro-batching: requests queue on one channel; each batcher thread takes what is waiting
//! (up to `max_batch`, optionally lingering `max_wait` for more), encodes the batch in one
//! forward pass against the run each request was parsed with (so that a reload never mixes
//! one run's vocabulary with another's model), and answers every request. Under
//! load, batches form while the previous one runs; when idle, a request waits for nothing.

use std::sync::Arc;
use std::time::{Duration, Instant};

use crossbeam_channel::{Receiver, Sender, TrySendError};
use tokio::sync::oneshot;

use seqclust_analysis::recommend::{Trend, blend_top};
use seqclust_kmeans::{Points, assign};
use seqclust_trainer::Owned;

use crate::error::{Error, Result};
use crate::loaded::Loaded;
use crate::metrics::Metrics;

/// What a request wants.
#[derive(Debug, Clone, Copy)]
pub enum Want {
    /// The user vector.
    Embed,
    /// The cluster.
    Assign,
    /// The top-n items.
    Recommend(usize),
}

/// The answer to one request.
#[derive(Debug, Clone)]
pub struct Answer {
    /// The run that answered.
    pub run_id: Arc<str>,
    /// The user vector (Embed).
    pub vector: Vec<f32>,
    /// Cluster, distance, runner-up and its distance (Assign, Recommend).
    pub cluster: u32,
    /// Distance to the cluster's centroid.
    pub distance: f32,
    /// The runner-up cluster.
    pub runner_up: Option<u32>,
    /// Distance to the runner-up.
    pub runner_up_distance: f32,
    /// Recommended (item key, score), best first.
    pub items: Vec<(String, f32)>,
}

struct Job {
    /// The run the request was parsed against; it is answered by the same run.
    run: Arc<Loaded>,
    seq: Owned,
    want: Want,
    reply: oneshot::Sender<Result<Answer>>,
}

/// The queue in front of the batcher threads.
#[derive(Clone)]
pub struct Batcher {
    tx: Sender<Job>,
}

/// Batching settings.
#[derive(Debug, Clone, Copy)]
pub struct BatchConfig {
    /// Most requests per forward pass.
    pub max_batch: usize,
    /// How long a batcher lingers for more requests once it has one (0: not at all).
    pub max_wait: Duration,
    /// Batcher threads (default: half the CPUs).
    pub threads: usize,
    /// Requests that may wait; more are refused with Unavailable.
    pub queue: usize,
}

impl Default for BatchConfig {
    fn default() -> Self {
        BatchConfig {
            max_batch: 64,
            max_wait: Duration::ZERO,
            // half the CPUs: the other half decodes and answers the RPCs
            threads: (std::thread::available_parallelism().map_or(1, |n| n.get()) / 2).max(1),
            queue: 4096,
        }
    }
}

impl Batcher {
    /// Starts the batcher threads.
    pub fn start(cfg: BatchConfig, metrics: Arc<Metrics>) -> Batcher {
        let (tx, rx) = crossbeam_channel::bounded::<Job>(cfg.queue.max(1));
        for i in 0..cfg.threads.max(1) {
            let rx = rx.clone();
            let metrics = metrics.clone();
            std::thread::Builder::new()
                .name(format!("serve-batch-{i}"))
                .spawn(move || run(rx, cfg, metrics))
                .map(|_| ())
                .unwrap_or_else(|e| tracing::error!(error = %e, "cannot start a batcher thread"));
        }
        Batcher { tx }
    }

    /// Queues a request parsed against `run` and waits for its answer (from the same run).
    pub async fn submit(&self, run: Arc<Loaded>, seq: Owned, want: Want) -> Result<Answer> {
        let (reply, rx) = oneshot::channel();
        match self.tx.try_send(Job {
            run,
            seq,
            want,
            reply,
        }) {
            Ok(()) => {}
            Err(TrySendError::Full(_)) => {
                return Err(Error::Unavailable(
                    "the request queue is full; retry".into(),
                ));
            }
            Err(TrySendError::Disconnected(_)) => {
                return Err(Error::Unavailable("the server is shutting down".into()));
            }
        }
        rx.await
            .map_err(|_| Error::Unavailable("the batcher stopped".into()))?
    }
}

fn run(rx: Receiver<Job>, cfg: BatchConfig, metrics: Arc<Metrics>) {
    while let Ok(first) = rx.recv() {
        let mut jobs = vec![first];
        let deadline = Instant::now() + cfg.max_wait;
        while jobs.len() < cfg.max_batch {
            match rx.try_recv() {
                Ok(j) => jobs.push(j),
                Err(_) if cfg.max_wait.is_zero() => break,
                Err(_) => match rx.recv_deadline(deadline) {
                    Ok(j) => jobs.push(j),
                    Err(_) => break,
                },
            }
        }
        metrics.batch_size.observe(jobs.len() as f64);
        // one forward pass per run: during a reload a batch may hold requests of both
        while !jobs.is_empty() {
            let run = jobs[0].run.clone();
            let (mine, rest): (Vec<Job>, Vec<Job>) =
                jobs.into_iter().partition(|j| Arc::ptr_eq(&j.run, &run));
            jobs = rest;
            let (mut seqs, mut wants, mut replies) = (Vec::new(), Vec::new(), Vec::new());
            for j in mine {
                seqs.push(j.seq);
                wants.push(j.want);
                replies.push(j.reply);
            }
            match answer(&run, &seqs, &wants) {
                Ok(answers) => {
                    for (r, a) in replies.into_iter().zip(answers) {
                        let _ = r.send(Ok(a));
                    }
                }
                Err(e) => {
                    let msg = e.to_string();
                    for r in replies {
                        let _ = r.send(Err(Error::Run {
                            run: run.run_id.clone(),
                            message: msg.clone(),
                        }));
                    }
                }
            }
        }
    }
}

fn answer(m: &Loaded, seqs: &[Owned], wants: &[Want]) -> Result<Vec<Answer>> {
    let d = m.model.config().dim;
    // items are scored with the raw vectors; clusters live in the model's clustering space
    let vectors = seqclust_trainer::embed(&m.model, seqs, seqs.len())?;
    let space = m.model.cluster_vectors(vectors.clone());
    let asg = assign(&Points::new(&space, d)?, &m.packed);
    let run_id: Arc<str> = Arc::from(m.run_id.as_str());
    // every Recommend of the batch against the item table in one product
    let wanted: Vec<f32> = wants
        .iter()
        .enumerate()
        .filter(|(_, w)| matches!(w, Want::Recommend(_)))
        .flat_map(|(i, _)| vectors[i * d..(i + 1) * d].iter().copied())
        .collect();
    let all_scores = m.scorer.scores(&wanted)?;
    let table_rows = m.scorer.rows();
    let mut scored = all_scores.chunks_exact(table_rows.max(1));
    let mut out = Vec::with_capacity(seqs.len());
    for (i, (seq, want)) in seqs.iter().zip(wants).enumerate() {
        let a = asg[i];
        let mut ans = Answer {
            run_id: run_id.clone(),
            vector: Vec::new(),
            cluster: a.cluster,
            distance: a.distance,
            runner_up: (a.runner_up != u32::MAX).then_some(a.runner_up),
            runner_up_distance: a.runner_up_distance,
            items: Vec::new(),
        };
        match *want {
            Want::Embed => ans.vector = space[i * d..(i + 1) * d].to_vec(),
            Want::Assign => {}
            Want::Recommend(n) => {
                let scores = scored.next().ok_or_else(|| {
                    Error::Unavailable("the item scores of a batch are missing".into())
                })?;
                let cfg = seqclust_analysis::RecommendConfig {
                    n,
                    ..m.recommend.clone()
                };
                let trend = m
                    .trending
                    .get(a.cluster as usize)
                    .map_or(Trend::None, |t| Trend::Sparse(t));
                ans.items = blend_top(scores, &seq.items, trend, &cfg)
                    .into_iter()
                    .map(|(i, s)| (m.item_key(i), s))
                    .collect();
            }
        }
        out.push(ans);
    }
    Ok(out)
}
