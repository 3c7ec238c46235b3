//! The gRPC edge: `JobService` and `WorkerService` on a thin server holding the state.
//! Errors become `tonic::Status` here and nowhere else.

use std::pin::Pin;
use std::sync::Arc;

use futures::Stream;
use tokio::sync::mpsc;
use tokio_stream::StreamExt;
use tokio_stream::wrappers::ReceiverStream;
use tonic::{Request, Response, Status, Streaming};
use tracing::info;

use seqclust_job::{JobRecord, JobSpec};
use seqclust_kmeans::PartialStats;
use seqclust_proto::v1::job_service_server::JobService;
use seqclust_proto::v1::worker_service_server::WorkerService;
use seqclust_proto::v1::{self, TaskKind};
use seqclust_proto::{CHUNK_BYTES, PROTOCOL_VERSION, Reassembly, Sample, f32_bytes};

use crate::limits::Limits;
use crate::state::{IDEMPOTENCY, State, now_ms};

type BoxStream<T> = Pin<Box<dyn Stream<Item = Result<T, Status>> + Send>>;

/// The longest progress message kept (it becomes the job's status line).
const MAX_PROGRESS_CHARS: usize = 512;

fn absolutize(path: &mut String) {
    if !seqclust_data::store::is_url(path)
        && let Ok(abs) = std::path::absolute(path.as_str())
    {
        *path = abs.display().to_string();
    }
}

fn internal(e: impl std::fmt::Display) -> Status {
    Status::internal(e.to_string())
}

/// `JobService`.
#[derive(Debug, Clone)]
pub(crate) struct JobApi {
    pub state: Arc<State>,
    pub limits: Arc<Limits>,
}

/// `WorkerService`.
#[derive(Debug, Clone)]
pub(crate) struct WorkerApi {
    pub state: Arc<State>,
}

impl JobApi {
    async fn create(
        &self,
        spec: JobSpec,
        key: Option<String>,
    ) -> Result<(JobRecord, bool), Status> {
        let st = &self.state;
        // counting the pending jobs and recording this one happen under one lock
        let _admission = self.limits.admission.lock().await;
        let known = match &key {
            Some(k) => st
                .meta
                .get(&format!("{IDEMPOTENCY}{k}"))
                .await
                .map_err(internal)?
                .is_some(),
            None => false,
        };
        if !known && self.limits.max_pending > 0 {
            let pending = st
                .list_jobs()
                .await?
                .iter()
                .filter(|j| !j.phase.is_terminal())
                .count();
            self.limits.check_pending(pending)?;
        }
        let id = st.new_id(&format!("{}-", spec.name));
        if let Some(k) = &key {
            let won = st
                .meta
                .compare_and_swap(
                    &format!("{IDEMPOTENCY}{k}"),
                    None,
                    id.clone().into_bytes(),
                    None,
                )
                .await
                .map_err(internal)?;
            if won.is_none() {
                let existing = st
                    .meta
                    .get(&format!("{IDEMPOTENCY}{k}"))
                    .await
                    .map_err(internal)?
                    .ok_or_else(|| Status::aborted("idempotency key vanished; submit again"))?;
                let other = String::from_utf8_lossy(&existing.value).to_string();
                // the first submit may still be writing its record
                for _ in 0..50 {
                    if let Ok(rec) = st.load_job(&other).await {
                        return Ok((rec, false));
                    }
                    tokio::time::sleep(std::time::Duration::from_millis(20)).await;
                }
                return Err(Status::unavailable(format!(
                    "job {other} of idempotency key {k:?} is not readable yet"
                )));
            }
        }
        let root = seqclust_data::Location::parse(spec.output_root(), true)
            .map_err(|e| Status::invalid_argument(format!("invalid job field output: {e}")))?;
        let run = root.join(&format!("runs/{id}"));
        let mut rec = JobRecord::new(id, spec, run.to_string(), now_ms());
        rec.idempotency_key = key;
        st.save_job(&mut rec).await.map_err(Status::from)?;
        st.wake.notify_waiters();
        info!(job = %rec.id, name = %rec.spec.name, "job submitted");
        Ok((rec, true))
    }
}

#[tonic::async_trait]
impl JobService for JobApi {
    async fn submit_job(
        &self,
        req: Request<v1::SubmitJobRequest>,
    ) -> Result<Response<v1::SubmitJobResponse>, Status> {
        self.limits.admit(&req)?;
        let req = req.into_inner();
        let mut spec: JobSpec = req
            .spec
            .ok_or_else(|| Status::invalid_argument("invalid job field spec: missing"))?
            .try_into()
            .map_err(|e: seqclust_job::Error| Status::invalid_argument(e.to_string()))?;
        // workers run elsewhere (other directories, other hosts): local paths become absolute
        absolutize(&mut spec.dataset.root);
        if !spec.output.trim().is_empty() {
            absolutize(&mut spec.output);
        }
        if std::path::Path::new(&spec.dataset.uri).exists() {
            absolutize(&mut spec.dataset.uri);
        }
        for run in [
            &mut spec.train.init_from,
            &mut spec.train.resume_from,
            &mut spec.train.teacher,
        ] {
            if !run.trim().is_empty() {
                absolutize(run);
            }
        }
        spec.validate()
            .map_err(|e| Status::invalid_argument(e.to_string()))?;
        let key = (!req.idempotency_key.trim().is_empty()).then_some(req.idempotency_key);
        // an unknown dataset is refused before anything is recorded
        match seqclust_trainer::open_dataset(&spec.train_job()).await {
            Ok(_) => {}
            Err(seqclust_trainer::Error::Data(
                e @ seqclust_data::Error::DatasetNotFound { .. },
            )) => {
                return Err(Status::not_found(e.to_string()));
            }
            Err(e) => {
                return Err(Status::failed_precondition(format!(
                    "dataset {}: {e}",
                    spec.dataset.uri
                )));
            }
        }
        let (rec, created) = self.create(spec, key).await?;
        Ok(Response::new(v1::SubmitJobResponse {
            job: Some((&rec).into()),
            created,
        }))
    }

    async fn get_job(&self, req: Request<v1::GetJobRequest>) -> Result<Response<v1::Job>, Status> {
        let rec = self.state.load_job(&req.into_inner().id).await?;
        Ok(Response::new((&rec).into()))
    }

    async fn list_jobs(
        &self,
        req: Request<v1::ListJobsRequest>,
    ) -> Result<Response<v1::ListJobsResponse>, Status> {
        let mut jobs = self.state.list_jobs().await?;
        jobs.sort_by(|a, b| {
            b.created_unix_ms
                .cmp(&a.created_unix_ms)
                .then(b.id.cmp(&a.id))
        });
        let limit = req.into_inner().limit as usize;
        if limit > 0 {
            jobs.truncate(limit);
        }
        Ok(Response::new(v1::ListJobsResponse {
            jobs: jobs.iter().map(Into::into).collect(),
        }))
    }

    async fn cancel_job(
        &self,
        req: Request<v1::CancelJobRequest>,
    ) -> Result<Response<v1::Job>, Status> {
        let id = req.into_inner().id;
        let mut rec = self.state.load_job(&id).await?;
        if !rec.phase.is_terminal() {
            self.state.request_cancel(&id).await?;
            info!(job = %id, "cancellation requested");
            if !self.state.is_active(&id) {
                // a queued job ends here; a running one ends at the driver's next check
                rec.phase = seqclust_job::Phase::Cancelled;
                rec.error = "cancelled by request".into();
                self.state.save_job(&mut rec).await?;
            }
        }
        Ok(Response::new((&self.state.load_job(&id).await?).into()))
    }

    type WatchJobStream = BoxStream<v1::Job>;

    async fn watch_job(
        &self,
        req: Request<v1::WatchJobRequest>,
    ) -> Result<Response<Self::WatchJobStream>, Status> {
        let id = req.into_inner().id;
        let state = self.state.clone();
        let mut events = state.job_events.subscribe();
        let first = state.load_job(&id).await?;
        let (tx, rx) = mpsc::channel(16);
        tokio::spawn(async move {
            let mut last = first;
            if tx.send(Ok(v1::Job::from(&last))).await.is_err() {
                return;
            }
            while !last.phase.is_terminal() && !*state.shutdown.borrow() && !tx.is_closed() {
                let changed =
                    match tokio::time::timeout(std::time::Duration::from_secs(5), events.recv())
                        .await
                    {
                        Ok(Ok(j)) => j == id,
                        Ok(Err(tokio::sync::broadcast::error::RecvError::Lagged(_))) | Err(_) => {
                            true
                        }
                        Ok(Err(_)) => return,
                    };
                if !changed {
                    continue;
                }
                match state.load_job(&id).await {
                    Ok(rec) if rec != last => {
                        last = rec;
                        if tx.send(Ok(v1::Job::from(&last))).await.is_err() {
                            return;
                        }
                    }
                    Ok(_) => {}
                    Err(e) => {
                        let _ = tx.send(Err(Status::from(e))).await;
                        return;
                    }
                }
            }
        });
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }
}

#[tonic::async_trait]
impl WorkerService for WorkerApi {
    async fn register_worker(
        &self,
        req: Request<v1::RegisterWorkerRequest>,
    ) -> Result<Response<v1::RegisterWorkerResponse>, Status> {
        let req = req.into_inner();
        if req.protocol_version != PROTOCOL_VERSION {
            return Err(Status::failed_precondition(format!(
                "worker speaks protocol version {}, this coordinator {PROTOCOL_VERSION}",
                req.protocol_version
            )));
        }
        if !req.collective_addr.contains(':') {
            return Err(Status::invalid_argument(format!(
                "collective_addr {:?} is not host:port",
                req.collective_addr
            )));
        }
        let collective = match req.collective.as_str() {
            "" | "ring" => "ring".to_string(),
            "nccl" => "nccl".to_string(),
            other => {
                return Err(Status::invalid_argument(format!(
                    "collective {other:?}: expected ring or nccl"
                )));
            }
        };
        let st = &self.state;
        let lease = st
            .meta
            .grant_lease(st.cfg.lease_ttl)
            .await
            .map_err(internal)?;
        let id = st
            .add_worker(req.name, req.collective_addr, collective, lease)
            .await?;
        Ok(Response::new(v1::RegisterWorkerResponse {
            worker_id: id,
            heartbeat_interval_ms: st.cfg.heartbeat_interval.as_millis() as u64,
            lease_ttl_ms: st.cfg.lease_ttl.as_millis() as u64,
        }))
    }

    async fn heartbeat(
        &self,
        req: Request<v1::HeartbeatRequest>,
    ) -> Result<Response<v1::HeartbeatResponse>, Status> {
        let id = req.into_inner().worker_id;
        let st = &self.state;
        let lease = st.lease_of(&id).ok_or_else(|| {
            Status::not_found(format!("worker {id} is not registered (lease expired?)"))
        })?;
        if let Err(e) = st.meta.keep_alive(lease).await {
            crate::metrics::LEASE_RENEWALS
                .with_label_values(&["failed"])
                .inc();
            st.worker_lost(&id, "its lease could not be renewed").await;
            return Err(Status::not_found(format!(
                "worker {id}'s lease is gone: {e}"
            )));
        }
        crate::metrics::LEASE_RENEWALS
            .with_label_values(&["ok"])
            .inc();
        Ok(Response::new(v1::HeartbeatResponse {
            membership_epoch: st.epoch(),
        }))
    }

    type ControlStream = BoxStream<v1::Task>;

    async fn control(
        &self,
        req: Request<v1::ControlRequest>,
    ) -> Result<Response<Self::ControlStream>, Status> {
        let id = req.into_inner().worker_id;
        let (tx, rx) = mpsc::channel(64);
        if !self.state.attach_control(&id, tx.clone()) {
            return Err(Status::not_found(format!("worker {id} is not registered")));
        }
        // a closed stream (the worker died or disconnected) loses the worker at once,
        // without waiting for its lease to expire
        let state = self.state.clone();
        let mut shutdown = self.state.shutdown.clone();
        tokio::spawn(async move {
            tokio::select! {
                _ = tx.closed() => state.worker_lost(&id, "its control stream closed").await,
                _ = crate::stopped(&mut shutdown) => {}
            }
        });
        self.state.wake.notify_waiters();
        Ok(Response::new(Box::pin(ReceiverStream::new(rx))))
    }

    async fn complete_task(
        &self,
        req: Request<v1::TaskResult>,
    ) -> Result<Response<v1::Ack>, Status> {
        let r = req.into_inner();
        self.state
            .check_task(&r.task_id, &r.worker_id, r.membership_epoch)?;
        self.state.complete(r);
        Ok(Response::new(v1::Ack {}))
    }

    async fn report_progress(
        &self,
        req: Request<v1::Progress>,
    ) -> Result<Response<v1::Ack>, Status> {
        let p = req.into_inner();
        if !p.fraction.is_finite() {
            return Err(Status::invalid_argument(format!(
                "fraction {} is not a finite number",
                p.fraction
            )));
        }
        // the message becomes the job's status line: keep it a line
        let message: String = p.message.chars().take(MAX_PROGRESS_CHARS).collect();
        self.state.note_progress(
            &p.task_id,
            &p.worker_id,
            p.fraction.clamp(0.0, 1.0),
            message,
        );
        Ok(Response::new(v1::Ack {}))
    }

    async fn push_partials(
        &self,
        req: Request<Streaming<v1::PartialChunk>>,
    ) -> Result<Response<v1::Ack>, Status> {
        let mut stream = req.into_inner();
        let mut re = Reassembly::new(self.state.cfg.max_payload_bytes);
        let mut head: Option<(String, String, u64, TaskKind)> = None;
        while let Some(chunk) = stream.next().await {
            let c = chunk?;
            match &head {
                None => {
                    let kind =
                        self.state
                            .check_task(&c.task_id, &c.worker_id, c.membership_epoch)?;
                    head = Some((
                        c.task_id.clone(),
                        c.worker_id.clone(),
                        c.membership_epoch,
                        kind,
                    ));
                }
                Some((t, w, e, _))
                    if (t, w, *e) != (&c.task_id, &c.worker_id, c.membership_epoch) =>
                {
                    return Err(Status::invalid_argument(
                        "chunks of different tasks in one upload",
                    ));
                }
                Some(_) => {}
            }
            re.push(c.offset, c.total, &c.data)
                .map_err(Status::invalid_argument)?;
        }
        let (task_id, _, _, kind) = head.ok_or_else(|| Status::invalid_argument("empty upload"))?;
        let payload = re.finish().map_err(Status::invalid_argument)?;
        // decode before accepting: a malformed payload never reaches the reduction
        match kind {
            TaskKind::Partials => {
                let p = PartialStats::from_bytes(&payload)
                    .map_err(|e| Status::invalid_argument(e.to_string()))?;
                let current = self
                    .state
                    .job_of_task(&task_id)
                    .and_then(|j| self.state.centroids(&j));
                if let Some(c) = current
                    && (c.k, c.d) != (p.k, p.d)
                {
                    return Err(Status::invalid_argument(format!(
                        "partial statistics of k={} d={} for centroids of k={} d={}",
                        p.k, p.d, c.k, c.d
                    )));
                }
            }
            TaskKind::Sample => {
                Sample::from_bytes(&payload).map_err(Status::invalid_argument)?;
            }
            other => {
                return Err(Status::invalid_argument(format!(
                    "task {task_id} ({other:?}) takes no payload"
                )));
            }
        }
        self.state.store_payload(&task_id, payload);
        Ok(Response::new(v1::Ack {}))
    }

    type FetchCentroidsStream = BoxStream<v1::CentroidChunk>;

    async fn fetch_centroids(
        &self,
        req: Request<v1::FetchCentroidsRequest>,
    ) -> Result<Response<Self::FetchCentroidsStream>, Status> {
        let req = req.into_inner();
        let c = self
            .state
            .centroids(&req.job_id)
            .filter(|c| c.version == req.version)
            .ok_or_else(|| {
                Status::not_found(format!(
                    "job {} has no centroids of version {}",
                    req.job_id, req.version
                ))
            })?;
        let per = (CHUNK_BYTES / 4).max(1);
        let chunks: Vec<Result<v1::CentroidChunk, Status>> = c
            .values
            .chunks(per)
            .enumerate()
            .map(|(i, part)| {
                Ok(v1::CentroidChunk {
                    k: c.k as u32,
                    d: c.d as u32,
                    offset: (i * per) as u64,
                    data: f32_bytes(part),
                })
            })
            .collect();
        Ok(Response::new(Box::pin(tokio_stream::iter(chunks))))
    }
}
