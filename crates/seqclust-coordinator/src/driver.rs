//! The job state machine. One job runs at a time, oldest first; its record is persisted in
//! the metadata store at every phase change (and with its progress), so a restarted
//! coordinator carries on: training resumes from the latest checkpoint, and the clustering
//! phases — deterministic given the model — run again from EMBED.

use std::sync::Arc;
use std::time::{Duration, Instant};

use futures::StreamExt;
use futures::stream::FuturesUnordered;
use tokio::sync::watch;
use tracing::{Instrument, info, info_span, warn};

use seqclust_job::{JobRecord, Phase, PhaseTime};
use seqclust_proto::convert::error_chain;
use seqclust_proto::v1;

use crate::error::{Error, Result};
use crate::state::{State, TaskDone};

/// How long a failed round waits for its other tasks to end before the retry (their peers
/// are gone, so they fail at once or at the collective deadline).
const DRAIN: Duration = Duration::from_secs(45);

/// Runs jobs until shutdown.
pub(crate) async fn run(state: Arc<State>, mut shutdown: watch::Receiver<bool>) {
    loop {
        if *shutdown.borrow() {
            return;
        }
        match next_job(&state).await {
            Ok(Some(rec)) => {
                let id = rec.id.clone();
                state.set_active(Some(id.clone()));
                let mut d = Driver::new(state.clone(), rec, shutdown.clone());
                let res = d.drive().instrument(info_span!("job", job = %id)).await;
                state.set_active(None);
                match res {
                    Ok(()) => {}
                    Err(Error::Shutdown) => return,
                    Err(e) => warn!(job = %id, error = %e, "job driver stopped"),
                }
            }
            Ok(None) => {
                tokio::select! {
                    _ = state.wait(Duration::from_secs(1)) => {}
                    _ = shutdown.changed() => {}
                }
            }
            Err(e) => {
                warn!(error = %e, "cannot list jobs; retrying");
                tokio::time::sleep(Duration::from_secs(1)).await;
            }
        }
    }
}

async fn next_job(state: &State) -> Result<Option<JobRecord>> {
    Ok(state
        .list_jobs()
        .await?
        .into_iter()
        .filter(|r| !r.phase.is_terminal())
        .min_by(|a, b| {
            a.created_unix_ms
                .cmp(&b.created_unix_ms)
                .then(a.id.cmp(&b.id))
        }))
}

/// Drives one job.
pub(crate) struct Driver {
    pub state: Arc<State>,
    pub rec: JobRecord,
    pub wire_spec: v1::JobSpec,
    shutdown: watch::Receiver<bool>,
    phase_started: Instant,
    last_saved: Instant,
    task_no: u64,
    /// The members of the last round, to tell a membership change.
    last_members: Vec<String>,
    /// While a TRAIN round runs: its `(worker, task id)`s, so that a worker joining with
    /// room under `max_workers` makes the group stop at its next checkpoint and re-form.
    growing: Vec<(String, String)>,
    /// The running TRAIN round was asked to regroup (its failure is not a lost worker).
    regrouping: bool,
    /// Rank 0's training summary.
    pub train_summary: serde_json::Value,
    /// The ANALYZE phase's summary.
    pub analysis_summary: serde_json::Value,
}

impl Driver {
    fn new(state: Arc<State>, rec: JobRecord, shutdown: watch::Receiver<bool>) -> Driver {
        Driver {
            wire_spec: (&rec.spec).into(),
            state,
            rec,
            shutdown,
            phase_started: Instant::now(),
            last_saved: Instant::now(),
            task_no: 0,
            last_members: Vec::new(),
            growing: Vec::new(),
            regrouping: false,
            train_summary: serde_json::Value::Null,
            analysis_summary: serde_json::Value::Null,
        }
    }

    async fn drive(&mut self) -> Result<()> {
        if matches!(
            self.rec.phase,
            Phase::KmeansInit | Phase::Kmeans | Phase::Assign | Phase::Analyze | Phase::Commit
        ) {
            info!(job = %self.rec.id, phase = %self.rec.phase, "resuming: clustering runs again from embed");
            self.rec.phase = Phase::Embed;
            self.rec.message = "resumed after a coordinator restart".into();
            self.save().await?;
        }
        let outcome = self.phases().await;
        let end = match outcome {
            Ok(()) => return Ok(()),
            Err(Error::Shutdown) => return Err(Error::Shutdown),
            Err(Error::Cancelled) => (Phase::Cancelled, "cancelled by request".to_string()),
            Err(e) => (Phase::Failed, error_chain(&e)),
        };
        self.state.release_everywhere(&self.rec.id, &self.wire_spec);
        self.state.drop_centroids(&self.rec.id);
        warn!(job = %self.rec.id, phase = %end.0, error = %end.1, "job ended");
        // a run that will never be committed leaves nothing behind
        match seqclust_data::Location::parse(self.rec.spec.output_root(), true) {
            Ok(root) => match seqclust_artifacts::discard(&root, &self.rec.id).await {
                Ok(n) => info!(job = %self.rec.id, objects = n, "staged files removed"),
                Err(e) => {
                    warn!(job = %self.rec.id, error = %e, "could not remove staged files; `seqclust runs gc` will")
                }
            },
            Err(e) => warn!(job = %self.rec.id, error = %e, "could not open the output root"),
        }
        self.finish_phase();
        crate::metrics::JOBS_ENDED
            .with_label_values(&[end.0.name()])
            .inc();
        self.rec.phase = end.0;
        self.rec.error = end.1;
        self.save().await
    }

    async fn phases(&mut self) -> Result<()> {
        loop {
            self.check().await?;
            match self.rec.phase {
                Phase::Pending => {
                    self.members().await?;
                    self.enter(Phase::Train).await?;
                }
                Phase::Train => {
                    self.train()
                        .instrument(info_span!("phase", phase = "train"))
                        .await?;
                    self.enter(Phase::Embed).await?;
                }
                Phase::Embed
                | Phase::KmeansInit
                | Phase::Kmeans
                | Phase::Assign
                | Phase::Analyze
                | Phase::Commit => {
                    let clusters = crate::clustering::run(self)
                        .instrument(info_span!("phase", phase = "clustering"))
                        .await?;
                    self.enter(Phase::Analyze).await?;
                    let staged = crate::analyze::run(self, &clusters)
                        .instrument(info_span!("phase", phase = "analyze"))
                        .await?;
                    self.enter(Phase::Commit).await?;
                    let summary = crate::commit::commit(self, &clusters, staged)
                        .instrument(info_span!("phase", phase = "commit"))
                        .await?;
                    self.state.release_everywhere(&self.rec.id, &self.wire_spec);
                    self.state.drop_centroids(&self.rec.id);
                    self.enter(Phase::Succeeded).await?;
                    crate::metrics::JOBS_ENDED
                        .with_label_values(&[Phase::Succeeded.name()])
                        .inc();
                    self.rec.message = summary;
                    self.rec.phase_progress = 1.0;
                    self.save().await?;
                    info!(job = %self.rec.id, run = %self.rec.run_uri, "job succeeded");
                    return Ok(());
                }
                Phase::Succeeded | Phase::Failed | Phase::Cancelled => return Ok(()),
            }
        }
    }

    fn finish_phase(&mut self) {
        if !self.rec.phase.is_terminal() {
            let seconds = self.phase_started.elapsed().as_secs_f64();
            crate::metrics::PHASE_SECONDS
                .with_label_values(&[self.rec.phase.name()])
                .observe(seconds);
            self.rec.phase_times.push(PhaseTime {
                phase: self.rec.phase,
                seconds,
            });
        }
        self.phase_started = Instant::now();
    }

    /// Moves to `phase` (recording the time of the one that ended) and persists.
    pub async fn enter(&mut self, phase: Phase) -> Result<()> {
        if phase == self.rec.phase {
            return Ok(());
        }
        self.finish_phase();
        info!(job = %self.rec.id, from = %self.rec.phase, to = %phase, "phase");
        self.rec.phase = phase;
        self.rec.phase_progress = 0.0;
        if !phase.is_terminal() {
            self.rec.message = String::new();
        }
        self.save().await
    }

    pub async fn save(&mut self) -> Result<()> {
        self.last_saved = Instant::now();
        self.state.save_job(&mut self.rec).await
    }

    /// Updates the progress line, persisting at most once a second.
    pub async fn progress(&mut self, fraction: f64, message: String) -> Result<()> {
        self.rec.phase_progress = fraction.clamp(0.0, 1.0);
        self.rec.message = message;
        if self.last_saved.elapsed() >= Duration::from_secs(1) {
            self.save().await?;
        }
        Ok(())
    }

    /// Fails with `Cancelled` or `Shutdown` when either was asked for.
    pub async fn check(&mut self) -> Result<()> {
        if *self.shutdown.borrow() {
            return Err(Error::Shutdown);
        }
        if self.state.is_cancelled(&self.rec.id).await? {
            return Err(Error::Cancelled);
        }
        Ok(())
    }

    /// The workers of the job now: waits until at least `min_workers` are ready, takes at
    /// most `max_workers` (in registration order), and records a membership change.
    pub async fn members(&mut self) -> Result<Vec<(String, String)>> {
        let res = self.rec.spec.resources.clone();
        loop {
            self.check().await?;
            let mut ws = self.state.ready_workers();
            if ws.len() >= res.min_workers {
                if res.max_workers > 0 {
                    ws.truncate(res.max_workers);
                }
                let ids: Vec<String> = ws.iter().map(|(w, _)| w.clone()).collect();
                if ids != self.last_members {
                    self.rec.membership_epoch += 1;
                    self.rec.world_size = ws.len();
                    self.last_members = ids;
                    self.save().await?;
                }
                return Ok(ws);
            }
            let msg = format!(
                "waiting for workers: {} of at least {} ready",
                ws.len(),
                res.min_workers
            );
            if msg != self.rec.message {
                self.rec.message = msg;
                self.save().await?;
            }
            tokio::select! {
                _ = self.state.wait(Duration::from_secs(1)) => {}
                _ = self.shutdown.changed() => {}
            }
        }
    }

    /// A task of this job for the current membership epoch.
    pub fn task(&mut self, kind: v1::TaskKind) -> v1::Task {
        self.task_no += 1;
        v1::Task {
            task_id: format!("{}-{}-{}", self.rec.id, kind.as_str_name(), self.task_no),
            job_id: self.rec.id.clone(),
            kind: kind as i32,
            membership_epoch: self.state.epoch(),
            spec: Some(self.wire_spec.clone()),
            run_uri: self.rec.run_uri.clone(),
            ..Default::default()
        }
    }

    /// Sends the tasks and waits for all of them, checking cancellation and persisting
    /// progress meanwhile. A failure fails the round: `Retry` when the worker or a peer was
    /// lost, otherwise a phase error; the round's other tasks are drained first.
    pub async fn round(
        &mut self,
        tasks: Vec<(String, v1::Task)>,
        timeout: Option<Duration>,
    ) -> Result<Vec<TaskDone>> {
        let ids: Vec<String> = tasks.iter().map(|(_, t)| t.task_id.clone()).collect();
        let result = self.round_inner(tasks, timeout).await;
        for id in &ids {
            self.state.forget_task(id);
        }
        result
    }

    async fn round_inner(
        &mut self,
        tasks: Vec<(String, v1::Task)>,
        timeout: Option<Duration>,
    ) -> Result<Vec<TaskDone>> {
        let n = tasks.len();
        let ids: Vec<String> = tasks.iter().map(|(_, t)| t.task_id.clone()).collect();
        let mut pending = FuturesUnordered::new();
        for (i, (worker, task)) in tasks.into_iter().enumerate() {
            let rx = self.state.dispatch(&worker, task)?;
            pending.push(async move { (i, rx.await) });
        }
        let deadline = timeout.map(|t| Instant::now() + t);
        let mut out: Vec<Option<TaskDone>> = (0..n).map(|_| None).collect();
        let mut failure: Option<Error> = None;
        let mut tick = tokio::time::interval(Duration::from_millis(500));
        while failure.is_none() {
            tokio::select! {
                next = pending.next() => match next {
                    None => break,
                    Some((i, Ok(done))) => {
                        if done.result.ok {
                            out[i] = Some(done);
                        } else {
                            let msg = format!("task {} on worker {}: {}", done.result.task_id, done.result.worker_id, done.result.error);
                            failure = Some(if done.result.retryable {
                                Error::Retry(msg)
                            } else {
                                Error::Phase { phase: self.rec.phase, message: msg }
                            });
                        }
                    }
                    Some((i, Err(_))) => failure = Some(Error::Retry(format!("task {} was abandoned", ids[i]))),
                },
                _ = tick.tick() => {
                    self.grow();
                    if let Err(e) = self.check().await {
                        failure = Some(e);
                    } else if deadline.is_some_and(|d| Instant::now() > d) {
                        failure = Some(Error::Retry(format!("round of {n} tasks timed out")));
                    } else if let Some((f, m)) = self.state.progress_of(&ids)
                        && m != self.rec.message
                    {
                        self.progress(f, m).await?;
                    }
                }
            }
        }
        if let Some(e) = failure {
            // a training group that lost a member: the others may be blocked in a collective
            // call on a peer that is cut off, not gone; end their calls now rather than at
            // the collective deadline (a group stopping for a regroup is already ending)
            if !self.growing.is_empty() && !self.regrouping && e.is_retryable() {
                self.state
                    .tell(&self.rec.id, &self.growing, v1::TaskKind::Abort);
            }
            if !matches!(e, Error::Shutdown | Error::Cancelled) {
                // let the others end (their peer is gone) so the retry starts on idle workers
                let _ =
                    tokio::time::timeout(DRAIN, async { while pending.next().await.is_some() {} })
                        .await;
            }
            return Err(e);
        }
        Ok(out.into_iter().flatten().collect())
    }

    /// How many ready workers are outside `group` while the group is below `max_workers`
    /// (0: no bound): workers the job could take.
    pub fn joined(&self, group: &[String]) -> usize {
        let max = self.rec.spec.resources.max_workers;
        if max != 0 && group.len() >= max {
            return 0;
        }
        self.state
            .ready_workers()
            .iter()
            .filter(|(w, _)| !group.contains(w))
            .count()
    }

    /// During a TRAIN round: when a worker outside the group is ready and the group is below
    /// `max_workers` (0: no bound), asks the group once to stop at its next checkpoint.
    fn grow(&mut self) {
        if self.growing.is_empty() || self.regrouping {
            return;
        }
        let group: Vec<String> = self.growing.iter().map(|(w, _)| w.clone()).collect();
        let joined = self.joined(&group);
        if joined == 0 {
            return;
        }
        info!(job = %self.rec.id, joined, group = group.len(), "workers joined: training stops at its next checkpoint to take them");
        crate::metrics::REGROUPS.with_label_values(&["train"]).inc();
        self.regrouping = true;
        self.state
            .tell(&self.rec.id, &self.growing, v1::TaskKind::Regroup);
    }

    /// TRAIN: the group of the current members trains; on a lost worker the group is
    /// formed again from the survivors (and newcomers) and resumes from the last checkpoint;
    /// a worker that joins is taken at the group's next checkpoint.
    async fn train(&mut self) -> Result<()> {
        let retries = self.state.cfg.phase_retries;
        let mut attempt = 0;
        loop {
            let members = self.members().await?;
            let peers: Vec<String> = members.iter().map(|(_, a)| a.clone()).collect();
            let outcome = match self.nccl_id(&members).await {
                Ok(nccl_id) => {
                    let tasks: Vec<(String, v1::Task)> = members
                        .iter()
                        .enumerate()
                        .map(|(rank, (w, _))| {
                            let mut t = self.task(v1::TaskKind::Train);
                            t.rank = rank as u32;
                            t.peers = peers.clone();
                            t.nccl_id = nccl_id.clone();
                            (w.clone(), t)
                        })
                        .collect();
                    self.rec.message = format!("training on {} workers", members.len());
                    self.save().await?;
                    self.growing = tasks
                        .iter()
                        .map(|(w, t)| (w.clone(), t.task_id.clone()))
                        .collect();
                    self.regrouping = false;
                    let done = self.round(tasks, None).await;
                    self.growing.clear();
                    done
                }
                Err(e) => Err(e),
            };
            match outcome {
                Err(e) if e.is_retryable() && std::mem::take(&mut self.regrouping) => {
                    info!(job = %self.rec.id, error = %e, "training group stopped at a checkpoint; forming it again with the workers that joined");
                    self.rec.message =
                        "forming the training group again with the workers that joined".into();
                    self.save().await?;
                }
                Ok(done) => {
                    // results come in task order: the first is rank 0's
                    self.train_summary = done
                        .first()
                        .and_then(|d| serde_json::from_str(&d.result.summary_json).ok())
                        .unwrap_or(serde_json::Value::Null);
                    return Ok(());
                }
                Err(e) if e.is_retryable() && attempt < retries => {
                    attempt += 1;
                    crate::metrics::ROUND_RETRIES.inc();
                    warn!(job = %self.rec.id, error = %e, attempt, "training group failed; forming it again");
                    self.rec.message =
                        format!("re-forming the training group (attempt {attempt}): {e}");
                    self.save().await?;
                }
                Err(e) => return Err(e),
            }
        }
    }
}

impl Driver {
    /// The NCCL group id for these members when they all train with NCCL (rank 0 creates
    /// it); empty when they use the ring. Members of both kinds cannot form one group.
    async fn nccl_id(&mut self, members: &[(String, String)]) -> Result<Vec<u8>> {
        let kinds: Vec<String> = members
            .iter()
            .map(|(w, _)| self.state.collective_of(w).unwrap_or_default())
            .collect();
        if kinds.iter().all(|k| k != "nccl") {
            return Ok(Vec::new());
        }
        if kinds.iter().any(|k| k != "nccl") {
            return Err(Error::Phase {
                phase: Phase::Train,
                message: format!(
                    "members disagree on the collective (ring and nccl): {:?}",
                    members.iter().map(|m| &m.0).zip(&kinds).collect::<Vec<_>>()
                ),
            });
        }
        let t = self.task(v1::TaskKind::NcclId);
        let done = self.round(vec![(members[0].0.clone(), t)], None).await?;
        let summary: serde_json::Value = done
            .first()
            .and_then(|d| serde_json::from_str(&d.result.summary_json).ok())
            .unwrap_or_default();
        let hex = summary["nccl_id"].as_str().unwrap_or_default();
        let bytes: Option<Vec<u8>> = (0..hex.len())
            .step_by(2)
            .map(|i| {
                hex.get(i..i + 2)
                    .and_then(|b| u8::from_str_radix(b, 16).ok())
            })
            .collect();
        match bytes {
            Some(b) if !b.is_empty() => Ok(b),
            _ => Err(Error::Phase {
                phase: Phase::Train,
                message: format!("rank 0 returned no NCCL id: {summary}"),
            }),
        }
    }
}
