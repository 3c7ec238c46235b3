//! The coordinator's shared state: the worker registry (each worker's lease lives in the
//! metadata store), tasks in flight, the centroids workers fetch, and job records.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use tokio::sync::{Notify, broadcast, mpsc, oneshot, watch};
use tracing::{info, warn};

use seqclust_job::JobRecord;
use seqclust_meta::{LeaseId, MetaStore};
use seqclust_proto::v1;

use crate::config::CoordinatorConfig;
use crate::error::{Error, Result};

/// Sender half of a worker's control stream.
pub(crate) type ControlTx = mpsc::Sender<Result<v1::Task, tonic::Status>>;

/// A registered worker.
#[derive(Debug)]
pub(crate) struct WorkerEntry {
    pub name: String,
    pub collective_addr: String,
    /// "ring" or "nccl".
    pub collective: String,
    pub lease: LeaseId,
    pub control: Option<ControlTx>,
}

/// A task's outcome: the worker's result and the payload it pushed, if any.
#[derive(Debug)]
pub(crate) struct TaskDone {
    pub result: v1::TaskResult,
    pub payload: Option<Vec<u8>>,
}

#[derive(Debug)]
struct InFlight {
    worker_id: String,
    job_id: String,
    epoch: u64,
    kind: v1::TaskKind,
    payload: Option<Vec<u8>>,
    done: Option<oneshot::Sender<TaskDone>>,
}

/// Centroids of one version, as workers fetch them.
#[derive(Debug, Clone)]
pub(crate) struct CentroidVersion {
    pub version: u64,
    pub k: usize,
    pub d: usize,
    pub values: Arc<Vec<f32>>,
}

/// Everything the services and the job driver share.
#[derive(Debug)]
pub(crate) struct State {
    pub cfg: CoordinatorConfig,
    pub meta: Arc<dyn MetaStore>,
    workers: Mutex<BTreeMap<String, WorkerEntry>>,
    tasks: Mutex<HashMap<String, InFlight>>,
    centroids: Mutex<HashMap<String, CentroidVersion>>,
    cancelled: Mutex<HashSet<String>>,
    progress: Mutex<HashMap<String, (f64, String)>>,
    /// Every known job's phase, for the `seqclust_jobs` gauge.
    job_phases: Mutex<HashMap<String, seqclust_job::Phase>>,
    /// The job the driver is running.
    active: Mutex<Option<String>>,
    /// Ids of jobs whose record changed.
    pub job_events: broadcast::Sender<String>,
    /// Woken when workers join or leave, a job is submitted or cancelled.
    pub wake: Notify,
    membership_epoch: AtomicU64,
    next_id: AtomicU64,
    /// The process's shutdown signal: long-lived streams end when it turns true.
    pub shutdown: watch::Receiver<bool>,
}

fn lock<T>(m: &Mutex<T>) -> std::sync::MutexGuard<'_, T> {
    m.lock().unwrap_or_else(|p| p.into_inner())
}

/// Milliseconds since the Unix epoch.
pub(crate) fn now_ms() -> i64 {
    SystemTime::now()
        .duration_since(UNIX_EPOCH)
        .map(|d| d.as_millis() as i64)
        .unwrap_or(0)
}

pub(crate) const JOBS: &str = "jobs/";
pub(crate) const WORKERS: &str = "workers/";
pub(crate) const IDEMPOTENCY: &str = "idempotency/";
pub(crate) const CANCEL: &str = "cancel/";

impl State {
    pub fn new(
        cfg: CoordinatorConfig,
        meta: Arc<dyn MetaStore>,
        shutdown: watch::Receiver<bool>,
    ) -> State {
        let (job_events, _) = broadcast::channel(1024);
        State {
            cfg,
            meta,
            workers: Mutex::new(BTreeMap::new()),
            tasks: Mutex::new(HashMap::new()),
            centroids: Mutex::new(HashMap::new()),
            cancelled: Mutex::new(HashSet::new()),
            progress: Mutex::new(HashMap::new()),
            job_phases: Mutex::new(HashMap::new()),
            active: Mutex::new(None),
            job_events,
            wake: Notify::new(),
            membership_epoch: AtomicU64::new(1),
            next_id: AtomicU64::new(0),
            shutdown,
        }
    }

    /// A new id, sortable by creation: `<prefix><ms in hex>-<counter>`.
    pub fn new_id(&self, prefix: &str) -> String {
        let n = self.next_id.fetch_add(1, Ordering::Relaxed);
        format!("{prefix}{:011x}-{:02x}", now_ms(), n % 256)
    }

    /// The current membership epoch (bumped on every join and loss).
    pub fn epoch(&self) -> u64 {
        self.membership_epoch.load(Ordering::SeqCst)
    }

    // ---- workers

    /// Registers a worker whose lease the caller has granted; returns its id.
    pub async fn add_worker(
        &self,
        name: String,
        collective_addr: String,
        collective: String,
        lease: LeaseId,
    ) -> Result<String> {
        let id = self.new_id("w");
        let info = serde_json::json!({
            "name": name, "collective_addr": collective_addr, "collective": collective,
            "registered_unix_ms": now_ms(),
        });
        self.meta
            .put(
                &format!("{WORKERS}{id}"),
                info.to_string().into_bytes(),
                Some(lease),
            )
            .await?;
        lock(&self.workers).insert(
            id.clone(),
            WorkerEntry {
                name,
                collective_addr,
                collective,
                lease,
                control: None,
            },
        );
        self.membership_epoch.fetch_add(1, Ordering::SeqCst);
        self.count_workers();
        info!(worker = %id, "worker registered");
        self.wake.notify_waiters();
        Ok(id)
    }

    /// The lease of a worker, if it is registered.
    pub fn lease_of(&self, id: &str) -> Option<LeaseId> {
        lock(&self.workers).get(id).map(|w| w.lease)
    }

    /// Ends every control stream (at shutdown, so the server can stop; workers register
    /// again with whichever coordinator comes next).
    pub fn close_controls(&self) {
        for w in lock(&self.workers).values_mut() {
            w.control = None;
        }
    }

    /// Attaches the worker's control stream; false if the worker is unknown.
    pub fn attach_control(&self, id: &str, tx: ControlTx) -> bool {
        let mut workers = lock(&self.workers);
        match workers.get_mut(id) {
            Some(w) => {
                w.control = Some(tx);
                drop(workers);
                self.count_workers();
                true
            }
            None => false,
        }
    }

    /// Sets the worker gauges.
    pub fn count_workers(&self) {
        let (registered, ready) = {
            let ws = lock(&self.workers);
            let ready = ws
                .values()
                .filter(|w| w.control.as_ref().is_some_and(|c| !c.is_closed()))
                .count();
            (ws.len(), ready)
        };
        crate::metrics::WORKERS
            .with_label_values(&["registered"])
            .set(registered as i64);
        crate::metrics::WORKERS
            .with_label_values(&["ready"])
            .set(ready as i64);
    }

    /// Removes a worker (lease expired, stream closed) and fails its tasks as retryable.
    pub async fn worker_lost(&self, id: &str, why: &str) {
        let entry = lock(&self.workers).remove(id);
        let Some(entry) = entry else { return };
        self.membership_epoch.fetch_add(1, Ordering::SeqCst);
        self.count_workers();
        let _ = self.meta.revoke_lease(entry.lease).await;
        let lost: Vec<(String, oneshot::Sender<TaskDone>)> = {
            let mut tasks = lock(&self.tasks);
            tasks
                .iter_mut()
                .filter(|(_, t)| t.worker_id == id)
                .filter_map(|(tid, t)| t.done.take().map(|d| (tid.clone(), d)))
                .collect()
        };
        crate::metrics::WORKERS_GONE
            .with_label_values(&[if lost.is_empty() { "left" } else { "lost" }])
            .inc();
        if lost.is_empty() {
            info!(worker = %id, name = %entry.name, why, "worker left");
        } else {
            warn!(worker = %id, name = %entry.name, why, tasks = lost.len(), "worker lost");
        }
        for (task_id, done) in lost {
            let _ = done.send(TaskDone {
                result: v1::TaskResult {
                    worker_id: id.to_string(),
                    task_id,
                    ok: false,
                    retryable: true,
                    error: format!("worker {id} ({}) was lost: {why}", entry.name),
                    ..Default::default()
                },
                payload: None,
            });
        }
        self.wake.notify_waiters();
    }

    /// The collective backend of a registered worker.
    pub fn collective_of(&self, id: &str) -> Option<String> {
        lock(&self.workers).get(id).map(|w| w.collective.clone())
    }

    /// Workers with a control stream, in id (registration) order: `(id, collective address)`.
    pub fn ready_workers(&self) -> Vec<(String, String)> {
        lock(&self.workers)
            .iter()
            .filter(|(_, w)| w.control.as_ref().is_some_and(|c| !c.is_closed()))
            .map(|(id, w)| (id.clone(), w.collective_addr.clone()))
            .collect()
    }

    // ---- tasks

    /// Sends a task to a worker; the receiver yields its outcome (a lost worker's tasks
    /// end with a retryable failure).
    pub fn dispatch(&self, worker_id: &str, task: v1::Task) -> Result<oneshot::Receiver<TaskDone>> {
        let tx = lock(&self.workers)
            .get(worker_id)
            .and_then(|w| w.control.clone())
            .ok_or_else(|| Error::Retry(format!("worker {worker_id} is gone")))?;
        let (done_tx, done_rx) = oneshot::channel();
        lock(&self.tasks).insert(
            task.task_id.clone(),
            InFlight {
                worker_id: worker_id.to_string(),
                job_id: task.job_id.clone(),
                epoch: task.membership_epoch,
                kind: v1::TaskKind::try_from(task.kind).unwrap_or(v1::TaskKind::Unspecified),
                payload: None,
                done: Some(done_tx),
            },
        );
        if tx.try_send(Ok(task)).is_err() {
            return Err(Error::Retry(format!(
                "worker {worker_id}'s control stream is closed or full"
            )));
        }
        Ok(done_rx)
    }

    /// Forgets a task (its round ended).
    pub fn forget_task(&self, task_id: &str) {
        lock(&self.tasks).remove(task_id);
        lock(&self.progress).remove(task_id);
    }

    /// A running task's latest progress report (reports for tasks not in flight, or from
    /// another worker than the task's, are ignored).
    pub fn note_progress(&self, task_id: &str, worker_id: &str, fraction: f64, message: String) {
        if lock(&self.tasks)
            .get(task_id)
            .is_some_and(|t| t.worker_id == worker_id)
        {
            lock(&self.progress).insert(task_id.to_string(), (fraction, message));
        }
    }

    /// The latest progress of the first of these tasks that reported any.
    pub fn progress_of(&self, task_ids: &[String]) -> Option<(f64, String)> {
        let p = lock(&self.progress);
        task_ids.iter().find_map(|t| p.get(t).cloned())
    }

    /// Tells every connected worker to forget a job (and stop its running task).
    pub fn release_everywhere(&self, job_id: &str, spec: &v1::JobSpec) {
        let workers = lock(&self.workers);
        for w in workers.values() {
            if let Some(tx) = &w.control {
                let _ = tx.try_send(Ok(v1::Task {
                    task_id: format!("release-{job_id}"),
                    job_id: job_id.to_string(),
                    kind: v1::TaskKind::Release as i32,
                    spec: Some(spec.clone()),
                    ..Default::default()
                }));
            }
        }
    }

    /// Sends each of these tasks (`(worker, task id)`) a message about it: REGROUP (stop at
    /// the next checkpoint: workers joined) or ABORT (end the collective calls now: the group
    /// lost a member).
    pub fn tell(&self, job_id: &str, tasks: &[(String, String)], kind: v1::TaskKind) {
        let workers = lock(&self.workers);
        for (worker, task_id) in tasks {
            if let Some(tx) = workers.get(worker).and_then(|w| w.control.as_ref()) {
                let _ = tx.try_send(Ok(v1::Task {
                    task_id: task_id.clone(),
                    job_id: job_id.to_string(),
                    kind: kind as i32,
                    ..Default::default()
                }));
            }
        }
    }

    /// The job a task in flight belongs to.
    pub fn job_of_task(&self, task_id: &str) -> Option<String> {
        lock(&self.tasks).get(task_id).map(|t| t.job_id.clone())
    }

    /// Checks that a result or payload belongs to a task in flight from this worker and
    /// epoch; returns the task's kind.
    pub fn check_task(
        &self,
        task_id: &str,
        worker_id: &str,
        epoch: u64,
    ) -> Result<v1::TaskKind, tonic::Status> {
        let tasks = lock(&self.tasks);
        let t = tasks.get(task_id).ok_or_else(|| {
            tonic::Status::failed_precondition(format!("no task {task_id} in flight"))
        })?;
        if t.worker_id != worker_id || t.epoch != epoch {
            return Err(tonic::Status::failed_precondition(format!(
                "task {task_id} belongs to worker {} in epoch {}, not {worker_id} in epoch {epoch}",
                t.worker_id, t.epoch
            )));
        }
        Ok(t.kind)
    }

    /// Keeps a task's pushed payload until its result arrives.
    pub fn store_payload(&self, task_id: &str, payload: Vec<u8>) {
        crate::metrics::PAYLOAD_BYTES.inc_by(payload.len() as u64);
        if let Some(t) = lock(&self.tasks).get_mut(task_id) {
            t.payload = Some(payload);
        }
    }

    /// Delivers a task's result; false if nobody waits for it any more.
    pub fn complete(&self, result: v1::TaskResult) -> bool {
        let (done, payload) = {
            let mut tasks = lock(&self.tasks);
            match tasks.get_mut(&result.task_id) {
                Some(t) => (t.done.take(), t.payload.take()),
                None => (None, None),
            }
        };
        match done {
            Some(d) => d.send(TaskDone { result, payload }).is_ok(),
            None => false,
        }
    }

    // ---- centroids

    pub fn set_centroids(&self, job: &str, c: CentroidVersion) {
        lock(&self.centroids).insert(job.to_string(), c);
    }

    pub fn centroids(&self, job: &str) -> Option<CentroidVersion> {
        lock(&self.centroids).get(job).cloned()
    }

    pub fn drop_centroids(&self, job: &str) {
        lock(&self.centroids).remove(job);
    }

    // ---- jobs

    pub async fn load_job(&self, id: &str) -> Result<JobRecord> {
        let key = format!("{JOBS}{id}");
        let kv = self
            .meta
            .get(&key)
            .await?
            .ok_or_else(|| Error::NoJob(id.to_string()))?;
        serde_json::from_slice(&kv.value).map_err(|e| Error::Corrupt {
            key,
            message: e.to_string(),
        })
    }

    pub async fn save_job(&self, rec: &mut JobRecord) -> Result<()> {
        rec.updated_unix_ms = now_ms();
        let bytes = serde_json::to_vec(rec).map_err(|e| Error::Corrupt {
            key: format!("{JOBS}{}", rec.id),
            message: e.to_string(),
        })?;
        self.meta
            .put(&format!("{JOBS}{}", rec.id), bytes, None)
            .await?;
        {
            let mut phases = lock(&self.job_phases);
            crate::metrics::note_job(&mut phases, rec);
            crate::metrics::set_jobs(&phases);
        }
        let _ = self.job_events.send(rec.id.clone());
        Ok(())
    }

    pub async fn list_jobs(&self) -> Result<Vec<JobRecord>> {
        let mut out = Vec::new();
        for kv in self.meta.list(JOBS).await? {
            match serde_json::from_slice::<JobRecord>(&kv.value) {
                Ok(r) => out.push(r),
                Err(e) => warn!(key = %kv.key, error = %e, "skipping a corrupt job record"),
            }
        }
        {
            let mut phases = lock(&self.job_phases);
            phases.clear();
            for r in &out {
                crate::metrics::note_job(&mut phases, r);
            }
            crate::metrics::set_jobs(&phases);
        }
        Ok(out)
    }

    /// Records a cancellation request (persisted, so a standby coordinator sees it too).
    pub async fn request_cancel(&self, id: &str) -> Result<()> {
        self.meta
            .put(&format!("{CANCEL}{id}"), b"1".to_vec(), None)
            .await?;
        lock(&self.cancelled).insert(id.to_string());
        self.wake.notify_waiters();
        Ok(())
    }

    /// Marks the job the driver runs (None when idle).
    pub fn set_active(&self, id: Option<String>) {
        *lock(&self.active) = id;
    }

    /// Whether the driver is running this job now.
    pub fn is_active(&self, id: &str) -> bool {
        lock(&self.active).as_deref() == Some(id)
    }

    pub async fn is_cancelled(&self, id: &str) -> Result<bool> {
        if lock(&self.cancelled).contains(id) {
            return Ok(true);
        }
        Ok(self.meta.get(&format!("{CANCEL}{id}")).await?.is_some())
    }

    /// Waits until woken or `d` passes.
    pub async fn wait(&self, d: Duration) {
        let _ = tokio::time::timeout(d, self.wake.notified()).await;
    }
}
