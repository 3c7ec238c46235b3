//! Carrying out tasks: training as one rank of the group, embedding shards, and the k-means
//! work on the vectors the worker holds (seeding sample, partial statistics, assignments).

use std::collections::{BTreeMap, HashMap, HashSet};
use std::net::{SocketAddr, TcpListener, ToSocketAddrs};
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use bytes::Bytes;
use tokio::runtime::Handle;
use tonic::service::interceptor::InterceptedService;
use tonic::transport::Channel;

use seqclust_collective::{Local, Ring, RingAbort, RingConfig};
use seqclust_data::Location;
use seqclust_data::embeddings::{AssignmentColumns, assignments_parquet};
use seqclust_job::JobSpec;
use seqclust_kmeans::{Centroids, Packed, PartialStats, Points, accumulate, assign};
use seqclust_model::SeqModel;
use seqclust_proto::security::BearerToken;
use seqclust_proto::v1::worker_service_client::WorkerServiceClient;
use seqclust_proto::v1::{self, TaskKind};
use seqclust_proto::{Sample, chunk_offsets, f32s};
use seqclust_trainer::{
    EvalLog, Observer, StepLog, embed_for_clusters, load_model, open_dataset, train_with,
};

use crate::error::{Error, Result};
use crate::metrics::Metered;
use crate::select::unit;

/// The vectors of one dataset shard.
#[derive(Debug)]
struct ShardVectors {
    users: Vec<String>,
    vectors: Vec<f32>,
}

/// What a worker holds for one job.
#[derive(Debug, Default)]
struct JobData {
    model: Option<Arc<SeqModel>>,
    dim: usize,
    shards: BTreeMap<u32, ShardVectors>,
    centroids: Option<(u64, Arc<Centroids>)>,
}

/// The worker's state across tasks (and across re-registrations).
#[derive(Debug)]
pub(crate) struct WorkerState {
    /// The collective listener; each group formation takes a clone.
    pub listener: TcpListener,
    /// Deadline of collective calls.
    pub collective_timeout: Duration,
    /// The GPU an NCCL group runs on.
    pub gpu: usize,
    jobs: Mutex<HashMap<String, Arc<Mutex<JobData>>>>,
    cancelled: Mutex<HashSet<String>>,
    /// TRAIN tasks asked to stop at their next checkpoint (a worker joined the job).
    regroup: Mutex<HashSet<String>>,
    /// The running TRAIN task's ring, to end its calls when the group lost a member.
    aborts: Mutex<HashMap<String, RingAbort>>,
    stopping: AtomicBool,
}

/// What a finished task reports.
#[derive(Debug, Default)]
pub(crate) struct Output {
    pub users: u64,
    pub summary: serde_json::Value,
}

/// The coordinator's WorkerService, with the worker's bearer token on every call.
pub(crate) type Client = WorkerServiceClient<InterceptedService<Channel, BearerToken>>;

/// Everything a task needs to talk to the coordinator.
#[derive(Debug, Clone)]
pub(crate) struct Ctx {
    pub rt: Handle,
    pub client: Client,
    pub worker_id: String,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

impl WorkerState {
    pub fn new(listener: TcpListener, collective_timeout: Duration, gpu: usize) -> Self {
        WorkerState {
            listener,
            collective_timeout,
            gpu,
            jobs: Mutex::new(HashMap::new()),
            cancelled: Mutex::new(HashSet::new()),
            regroup: Mutex::new(HashSet::new()),
            aborts: Mutex::new(HashMap::new()),
            stopping: AtomicBool::new(false),
        }
    }

    /// Asks the TRAIN task `task_id` (running or still queued) to stop at its next
    /// checkpoint, so that the coordinator forms its group again with more workers.
    pub fn regroup(&self, task_id: &str) {
        lock(&self.regroup).insert(task_id.to_string());
    }

    /// Ends the collective calls of the TRAIN task `task_id` now (its group lost a member);
    /// the task then fails, retryable.
    pub fn abort(&self, task_id: &str) {
        if let Some(a) = lock(&self.aborts).remove(task_id) {
            a.abort();
        }
    }

    fn wants_regroup(&self, task_id: &str) -> bool {
        lock(&self.regroup).contains(task_id)
    }

    /// The process is shutting down (SIGTERM): the running task stops at its next step
    /// (training: the next optimiser step; the last checkpoint stays) and is reported as
    /// retryable, so the coordinator runs the round again without this worker.
    pub fn stop(&self) {
        self.stopping.store(true, Ordering::SeqCst);
    }

    /// Whether [`Self::stop`] was called.
    pub fn is_stopping(&self) -> bool {
        self.stopping.load(Ordering::SeqCst)
    }

    fn job(&self, id: &str) -> Arc<Mutex<JobData>> {
        lock(&self.jobs).entry(id.to_string()).or_default().clone()
    }

    /// Forgets a job and stops its running task at the next step.
    pub fn release(&self, id: &str, cancel: bool) {
        lock(&self.jobs).remove(id);
        if cancel {
            lock(&self.cancelled).insert(id.to_string());
        }
    }

    fn is_cancelled(&self, id: &str) -> bool {
        self.is_stopping() || lock(&self.cancelled).contains(id)
    }

    /// Carries out one task (blocking: call from a blocking thread).
    pub fn run(&self, cx: &Ctx, task: &v1::Task) -> Result<Output> {
        if self.is_cancelled(&task.job_id) {
            return Err(Error::Cancelled);
        }
        let kind = TaskKind::try_from(task.kind).unwrap_or(TaskKind::Unspecified);
        fault_before(kind);
        let spec: JobSpec = task
            .spec
            .clone()
            .ok_or_else(|| bad(task, "no job spec"))?
            .try_into()?;
        let run = Location::parse(&task.run_uri, true)?;
        match kind {
            TaskKind::Train => {
                let out = self.train(cx, task, &spec, &run);
                lock(&self.regroup).remove(&task.task_id);
                lock(&self.aborts).remove(&task.task_id);
                out
            }
            TaskKind::Embed => self.embed(cx, task, &spec, &run),
            TaskKind::Sample => self.sample(cx, task, &spec),
            TaskKind::Partials => self.partials(cx, task, &spec),
            TaskKind::Assign => self.assign(cx, task, &spec, &run),
            TaskKind::NcclId => nccl_id(task),
            TaskKind::Release | TaskKind::Regroup | TaskKind::Abort | TaskKind::Unspecified => {
                Err(bad(task, "not a runnable task"))
            }
        }
    }

    fn train(&self, cx: &Ctx, task: &v1::Task, spec: &JobSpec, run: &Location) -> Result<Output> {
        let job = spec.train_job();
        let users = cx.rt.block_on(open_dataset(&job))?.manifest().counts.users as usize;
        let obs = Progress {
            cx: cx.clone(),
            task_id: task.task_id.clone(),
            job_id: task.job_id.clone(),
            total_steps: users.div_ceil(spec.train.batch_size.max(1)).max(1) * spec.train.epochs,
            report: task.rank == 0,
            state: self,
        };
        let report = if !task.nccl_id.is_empty() {
            train_nccl(task, self.gpu, &job, run, cx, &obs)?
        } else if task.peers.len() <= 1 {
            train_with(&job, run, &cx.rt, &obs, &mut Metered(&mut Local))?
        } else {
            let addrs = task
                .peers
                .iter()
                .map(|p| resolve(p).ok_or_else(|| bad(task, format!("peer address {p:?}"))))
                .collect::<Result<Vec<SocketAddr>>>()?;
            let listener = self.listener.try_clone().map_err(|source| Error::Bind {
                addr: format!("{:?}", self.listener.local_addr().ok()),
                source,
            })?;
            let mut ring = Ring::connect(
                task.rank as usize,
                &addrs,
                listener,
                RingConfig {
                    timeout: self.collective_timeout,
                    epoch: task.membership_epoch,
                    ..RingConfig::default()
                },
            )?;
            lock(&self.aborts).insert(task.task_id.clone(), ring.abort_handle()?);
            train_with(&job, run, &cx.rt, &obs, &mut Metered(&mut ring))?
        };
        // a model trained again must be loaded again
        lock(&self.job(&task.job_id)).model = None;
        let test = report.evals.iter().rev().find(|e| e.split == "test");
        Ok(Output {
            users: 0,
            summary: serde_json::json!({
                "steps": report.steps,
                "epochs": report.epochs,
                "stopped_early": report.stopped_early,
                "train_seq_per_s": report.train_seq_per_s,
                "seconds": report.seconds,
                "final_loss": report.log.last().map(|l| l.loss),
                "test": test.map(|e| &e.metrics),
            }),
        })
    }

    fn embed(&self, cx: &Ctx, task: &v1::Task, spec: &JobSpec, run: &Location) -> Result<Output> {
        let jd = self.job(&task.job_id);
        let mut jd = lock(&jd);
        let model = match &jd.model {
            Some(m) => m.clone(),
            None => {
                let (m, _) = cx.rt.block_on(load_model(run))?;
                let m = Arc::new(m);
                jd.model = Some(m.clone());
                m
            }
        };
        jd.dim = model.config().dim;
        let wanted: HashSet<u32> = task.shards.iter().copied().collect();
        jd.shards.retain(|s, _| wanted.contains(s));
        let ds = cx.rt.block_on(open_dataset(&spec.train_job()))?;
        let total = task.shards.len().max(1);
        let mut embedded = Vec::new();
        for (i, &s) in task.shards.iter().enumerate() {
            if self.is_cancelled(&task.job_id) {
                return Err(Error::Cancelled);
            }
            if jd.shards.contains_key(&s) {
                continue;
            }
            embedded.push(s);
            if s as usize >= ds.num_shards() {
                return Err(bad(
                    task,
                    format!("shard {s} of a dataset of {}", ds.num_shards()),
                ));
            }
            let batch = cx.rt.block_on(ds.read_shard(s as usize))?;
            let users = seqclust_trainer::examples::users(&batch);
            let vectors = embed_for_clusters(&model, &users, 512)?;
            crate::metrics::USERS
                .with_label_values(&["embed"])
                .inc_by(users.len() as u64);
            jd.shards.insert(
                s,
                ShardVectors {
                    users: users.into_iter().map(|u| u.user).collect(),
                    vectors,
                },
            );
            report(
                cx,
                task,
                (i + 1) as f64 / total as f64,
                format!("embedded shard {s}"),
            );
        }
        let users = jd.shards.values().map(|v| v.users.len() as u64).sum();
        // shards embedded now (a membership change moves few; the rest are kept)
        tracing::info!(shards = ?embedded, kept = task.shards.len() - embedded.len(), users, "embedded");
        Ok(Output {
            users,
            summary: serde_json::json!({ "shards": jd.shards.len(), "users": users }),
        })
    }

    fn sample(&self, cx: &Ctx, task: &v1::Task, spec: &JobSpec) -> Result<Output> {
        let jd = self.job(&task.job_id);
        let jd = lock(&jd);
        let d = held_dim(task, &jd)?;
        let mut sample = Sample {
            d,
            keys: Vec::new(),
            rows: Vec::new(),
        };
        for (&s, v) in &jd.shards {
            for i in 0..v.users.len() {
                if unit(spec.kmeans.seed, u64::MAX, s, i as u32) < task.fraction {
                    sample.keys.push(u64::from(s) << 32 | i as u64);
                    sample
                        .rows
                        .extend_from_slice(&v.vectors[i * d..(i + 1) * d]);
                }
            }
        }
        let n = sample.keys.len() as u64;
        push(cx, task, sample.to_bytes())?;
        Ok(Output {
            users: n,
            summary: serde_json::json!({ "sampled": n }),
        })
    }

    fn partials(&self, cx: &Ctx, task: &v1::Task, spec: &JobSpec) -> Result<Output> {
        let jd = self.job(&task.job_id);
        let mut jd = lock(&jd);
        let d = held_dim(task, &jd)?;
        let c = centroids(cx, task, &mut jd, d)?;
        let packed = Packed::new(&c, spec.kmeans.metric);
        let mut buf = Vec::new();
        for (&s, v) in &jd.shards {
            if task.fraction >= 1.0 {
                buf.extend_from_slice(&v.vectors);
                continue;
            }
            for i in 0..v.users.len() {
                if unit(spec.kmeans.seed, task.iteration, s, i as u32) < task.fraction {
                    buf.extend_from_slice(&v.vectors[i * d..(i + 1) * d]);
                }
            }
        }
        let stats = if buf.is_empty() {
            PartialStats::new(c.k(), d)
        } else {
            accumulate(&Points::new(&buf, d)?, &packed, None)
        };
        let n = stats.points();
        push(cx, task, stats.to_bytes())?;
        Ok(Output {
            users: n,
            summary: serde_json::Value::Null,
        })
    }

    fn assign(&self, cx: &Ctx, task: &v1::Task, spec: &JobSpec, run: &Location) -> Result<Output> {
        let jd = self.job(&task.job_id);
        let mut jd = lock(&jd);
        let d = held_dim(task, &jd)?;
        let c = centroids(cx, task, &mut jd, d)?;
        let packed = Packed::new(&c, spec.kmeans.metric);
        let mut counts = vec![0u64; c.k()];
        let mut inertia = 0f64;
        let mut users = 0u64;
        let mut files = Vec::new();
        for &s in &task.shards {
            let v = jd
                .shards
                .get(&s)
                .ok_or_else(|| bad(task, format!("shard {s} was not embedded here")))?;
            let asg = assign(&Points::new(&v.vectors, d)?, &packed);
            for a in &asg {
                counts[a.cluster as usize] += 1;
                inertia += f64::from(a.distance);
            }
            users += asg.len() as u64;
            crate::metrics::USERS
                .with_label_values(&["assign"])
                .inc_by(asg.len() as u64);
            let cols = AssignmentColumns {
                ids: Some(v.users.clone()),
                cluster: asg.iter().map(|a| a.cluster).collect(),
                distance: asg.iter().map(|a| a.distance).collect(),
                runner_up: asg
                    .iter()
                    .map(|a| (a.runner_up != u32::MAX).then_some(a.runner_up))
                    .collect(),
                runner_up_distance: asg.iter().map(|a| a.runner_up_distance).collect(),
            };
            let rel = format!("clusters/assignments/part-{s:05}.parquet");
            let bytes = assignments_parquet(&cols, &run.display_of(&rel))?;
            cx.rt.block_on(run.put(&rel, Bytes::from(bytes)))?;
            files.push(rel);
        }
        Ok(Output {
            users,
            summary: serde_json::json!({ "counts": counts, "inertia": inertia, "files": files }),
        })
    }
}

/// Rank 0 of an NCCL group creates its id.
#[cfg(feature = "nccl")]
fn nccl_id(_task: &v1::Task) -> Result<Output> {
    let id = seqclust_collective::NcclId::new()?;
    let hex: String = id.as_bytes().iter().map(|b| format!("{b:02x}")).collect();
    Ok(Output {
        users: 0,
        summary: serde_json::json!({ "nccl_id": hex }),
    })
}

#[cfg(not(feature = "nccl"))]
fn nccl_id(task: &v1::Task) -> Result<Output> {
    Err(bad(task, NO_NCCL))
}

#[cfg(not(feature = "nccl"))]
const NO_NCCL: &str = "this worker was built without the nccl feature";

/// A fault hook for crash tests: `SEQCLUST_FAULT_TASK=KIND[:N]` (`train`, `embed`, `sample`,
/// `partials`, `assign`) aborts the worker process — as `kill -9` would, without unwinding or
/// saying goodbye — when its N-th task of that kind arrives (default the first), so a test
/// can lose a worker at a chosen point of EMBED, k-means or ASSIGN. Unset in production.
pub const FAULT_TASK_ENV: &str = "SEQCLUST_FAULT_TASK";

fn fault_before(kind: TaskKind) {
    static SEEN: std::sync::atomic::AtomicU64 = std::sync::atomic::AtomicU64::new(0);
    let Ok(armed) = std::env::var(FAULT_TASK_ENV) else {
        return;
    };
    let (name, at) = armed.split_once(':').unwrap_or((armed.as_str(), "1"));
    let this = kind.as_str_name().trim_start_matches("TASK_KIND_");
    if !this.eq_ignore_ascii_case(name.trim()) {
        return;
    }
    let n = SEEN.fetch_add(1, Ordering::SeqCst) + 1;
    if at.trim().parse::<u64>().is_ok_and(|at| at == n) {
        let ms = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map_or(0, |d| d.as_millis());
        eprintln!("{FAULT_TASK_ENV}={armed}: aborting at {this} task {n} (unix ms {ms})");
        std::process::abort();
    }
}

/// Trains as one rank of an NCCL group on GPU `gpu`.
#[cfg(feature = "nccl")]
fn train_nccl(
    task: &v1::Task,
    gpu: usize,
    job: &seqclust_trainer::TrainJob,
    run: &Location,
    cx: &Ctx,
    obs: &dyn Observer,
) -> Result<seqclust_trainer::TrainReport> {
    let id = seqclust_collective::NcclId::from_bytes(&task.nccl_id)?;
    let mut nccl =
        seqclust_collective::Nccl::connect(task.rank as usize, task.peers.len(), &id, gpu)?;
    Ok(train_with(job, run, &cx.rt, obs, &mut Metered(&mut nccl))?)
}

#[cfg(not(feature = "nccl"))]
fn train_nccl(
    task: &v1::Task,
    _gpu: usize,
    _job: &seqclust_trainer::TrainJob,
    _run: &Location,
    _cx: &Ctx,
    _obs: &dyn Observer,
) -> Result<seqclust_trainer::TrainReport> {
    Err(bad(task, NO_NCCL))
}

fn bad(task: &v1::Task, message: impl Into<String>) -> Error {
    Error::Task {
        task: task.task_id.clone(),
        message: message.into(),
    }
}

fn held_dim(task: &v1::Task, jd: &JobData) -> Result<usize> {
    if jd.dim == 0 {
        return Err(bad(task, "no vectors here: the embed task has not run"));
    }
    Ok(jd.dim)
}

fn resolve(addr: &str) -> Option<SocketAddr> {
    addr.to_socket_addrs().ok()?.next()
}

/// The centroids of the task's version, fetched once per version.
fn centroids(cx: &Ctx, task: &v1::Task, jd: &mut JobData, d: usize) -> Result<Arc<Centroids>> {
    if let Some((v, c)) = &jd.centroids
        && *v == task.centroids_version
    {
        return Ok(c.clone());
    }
    let mut client = cx.client.clone();
    let req = v1::FetchCentroidsRequest {
        job_id: task.job_id.clone(),
        version: task.centroids_version,
    };
    let (k, bytes) = cx.rt.block_on(async move {
        let mut stream = client
            .fetch_centroids(req)
            .await
            .map_err(|s| Error::rpc("FetchCentroids", s))?
            .into_inner();
        let mut data = Vec::new();
        let mut k = 0;
        while let Some(c) = stream
            .message()
            .await
            .map_err(|s| Error::rpc("FetchCentroids", s))?
        {
            if c.d as usize != d || c.offset as usize != data.len() / 4 {
                return Err(Error::rpc(
                    "FetchCentroids",
                    tonic::Status::data_loss("centroid chunks out of order or of another d"),
                ));
            }
            k = c.k as usize;
            data.extend_from_slice(&c.data);
        }
        Ok((k, data))
    })?;
    let values = f32s(&bytes).map_err(|m| bad(task, m))?;
    if values.len() != k * d || k == 0 {
        return Err(bad(
            task,
            format!("centroids of {} values for k={k} d={d}", values.len()),
        ));
    }
    let c = Arc::new(Centroids::new(values, d)?);
    jd.centroids = Some((task.centroids_version, c.clone()));
    Ok(c)
}

/// Sends a binary result in chunks.
fn push(cx: &Ctx, task: &v1::Task, payload: Vec<u8>) -> Result<()> {
    let total = payload.len() as u64;
    let payload = Bytes::from(payload);
    let chunks: Vec<v1::PartialChunk> = chunk_offsets(payload.len())
        .into_iter()
        .map(|(o, n)| v1::PartialChunk {
            worker_id: cx.worker_id.clone(),
            task_id: task.task_id.clone(),
            membership_epoch: task.membership_epoch,
            offset: o as u64,
            total,
            data: payload.slice(o..o + n).to_vec(),
        })
        .collect();
    let mut client = cx.client.clone();
    cx.rt
        .block_on(client.push_partials(tokio_stream::iter(chunks)))
        .map_err(|s| Error::rpc("PushPartials", s))?;
    Ok(())
}

/// Tells the coordinator how far a task is (best effort: a lost report is not an error).
fn report(cx: &Ctx, task: &v1::Task, fraction: f64, message: String) {
    let mut client = cx.client.clone();
    let p = v1::Progress {
        worker_id: cx.worker_id.clone(),
        task_id: task.task_id.clone(),
        fraction,
        message,
    };
    cx.rt.spawn(async move {
        let _ = client.report_progress(p).await;
    });
}

/// Training progress → the coordinator; cancellation ← the worker state.
struct Progress<'a> {
    cx: Ctx,
    task_id: String,
    job_id: String,
    total_steps: usize,
    report: bool,
    state: &'a WorkerState,
}

impl Observer for Progress<'_> {
    fn step_done(&self, seconds: f64, sequences: usize) {
        crate::metrics::TRAIN_STEPS.inc();
        crate::metrics::STEP_SECONDS.observe(seconds);
        crate::metrics::TRAIN_SEQUENCES.inc_by(sequences as u64);
    }

    fn step(&self, l: &StepLog) {
        let g = &crate::metrics::TRAIN_GAUGES;
        g.with_label_values(&["loss"]).set(f64::from(l.loss));
        g.with_label_values(&["sequences_per_second"])
            .set(l.seq_per_s);
        g.with_label_values(&["grad_norm"])
            .set(f64::from(l.grad_norm));
        g.with_label_values(&["lr"]).set(f64::from(l.lr));
        if self.report {
            let t = v1::Task {
                task_id: self.task_id.clone(),
                ..Default::default()
            };
            report(
                &self.cx,
                &t,
                (l.step as f64 / self.total_steps as f64).min(1.0),
                format!(
                    "epoch {} step {} loss {:.4} {:.0} seq/s",
                    l.epoch + 1,
                    l.step,
                    l.loss,
                    l.seq_per_s
                ),
            );
        }
    }

    fn eval(&self, e: &EvalLog) {
        tracing::info!(split = %e.split, epoch = e.epoch, "evaluated");
    }

    fn note(&self, text: &str) {
        tracing::info!("{text}");
    }

    fn cancelled(&self) -> bool {
        self.state.is_cancelled(&self.job_id)
    }

    fn regroup(&self) -> bool {
        self.state.wants_regroup(&self.task_id)
    }
}
