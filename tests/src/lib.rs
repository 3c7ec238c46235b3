#![doc = include_str!("../README.md")]
#![allow(clippy::unwrap_used, clippy::expect_used, missing_docs)]

pub mod netns;
pub mod s3;
pub mod services;

use std::net::SocketAddr;
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::{Context, Result, bail};
use tokio::runtime::Runtime;
use tokio::sync::watch;
use tonic::transport::Channel;

use seqclust_coordinator::{CoordinatorConfig, Running};
use seqclust_data::generator::{GenConfig, GenFormat, gen_columns, generate_to_files};
use seqclust_data::ingest::NoProgress;
use seqclust_data::{Format, IngestConfig};
use seqclust_job::{JobSpec, Phase};
use seqclust_meta::{MemoryStore, MetaStore};
use seqclust_proto::convert::phase_of;
use seqclust_proto::v1;
use seqclust_proto::v1::job_service_client::JobServiceClient;
use seqclust_worker::WorkerConfig;

/// A worker of the cluster.
enum Worker {
    InProcess {
        stop: watch::Sender<bool>,
        task: tokio::task::JoinHandle<()>,
    },
    Process(Child),
}

/// A coordinator and its workers on loopback, with a storage root in a temporary directory.
pub struct TestCluster {
    pub rt: Runtime,
    pub root: tempfile::TempDir,
    pub meta: Arc<dyn MetaStore>,
    pub addr: SocketAddr,
    stop: watch::Sender<bool>,
    coordinator: Option<Running>,
    workers: Vec<Worker>,
}

/// The tests' tokio runtime: two worker threads, like the services.
pub fn runtime() -> Runtime {
    tokio::runtime::Builder::new_multi_thread()
        .worker_threads(2)
        .enable_all()
        .build()
        .unwrap()
}

/// Coordinator settings for tests: short leases.
pub fn test_config(listen: &str) -> CoordinatorConfig {
    CoordinatorConfig {
        listen: listen.into(),
        lease_ttl: Duration::from_secs(3),
        heartbeat_interval: Duration::from_millis(500),
        ..CoordinatorConfig::default()
    }
}

impl TestCluster {
    /// A coordinator with an in-memory metadata store and no workers.
    pub fn new() -> TestCluster {
        Self::with_meta(|_| Arc::new(MemoryStore::new("/test/")))
    }

    /// A coordinator on the metadata store `make` opens (on the cluster's runtime).
    pub fn with_meta(make: impl FnOnce(&Runtime) -> Arc<dyn MetaStore>) -> TestCluster {
        Self::listening("127.0.0.1:0", make)
    }

    /// A coordinator listening on `listen` (`0.0.0.0:0` to be reached from namespaced
    /// hosts), on the metadata store `make` opens.
    pub fn listening(
        listen: &str,
        make: impl FnOnce(&Runtime) -> Arc<dyn MetaStore>,
    ) -> TestCluster {
        let rt = runtime();
        let meta = make(&rt);
        let (stop, rx) = watch::channel(false);
        let running = rt
            .block_on(seqclust_coordinator::start(
                test_config(listen),
                meta.clone(),
                rx,
            ))
            .unwrap();
        TestCluster {
            rt,
            root: tempfile::tempdir().unwrap(),
            meta,
            addr: running.addr,
            stop,
            coordinator: Some(running),
            workers: Vec::new(),
        }
    }

    pub fn url(&self) -> String {
        if self.addr.ip().is_unspecified() {
            return format!("http://127.0.0.1:{}", self.addr.port());
        }
        format!("http://{}", self.addr)
    }

    /// Stops the coordinator (the workers stay and try to reconnect).
    pub fn stop_coordinator(&mut self) {
        let _ = self.stop.send(true);
        if let Some(r) = self.coordinator.take() {
            self.rt.block_on(r.join());
        }
    }

    /// Starts a new coordinator on the same address and metadata store.
    pub fn restart_coordinator(&mut self) {
        self.stop_coordinator();
        let (stop, rx) = watch::channel(false);
        let deadline = Instant::now() + Duration::from_secs(10);
        let running = loop {
            match self.rt.block_on(seqclust_coordinator::start(
                test_config(&self.addr.to_string()),
                self.meta.clone(),
                rx.clone(),
            )) {
                Ok(r) => break r,
                Err(e) if Instant::now() < deadline => {
                    eprintln!("restart: {e}; retrying");
                    std::thread::sleep(Duration::from_millis(200));
                }
                Err(e) => panic!("coordinator restart failed: {e}"),
            }
        };
        self.stop = stop;
        self.coordinator = Some(running);
    }

    /// Adds a worker running in this process.
    pub fn add_worker(&mut self) {
        let (stop, rx) = watch::channel(false);
        let cfg = WorkerConfig {
            coordinator: self.url(),
            name: format!("test-{}", self.workers.len()),
            collective_timeout: Duration::from_secs(10),
            connect_timeout: Duration::from_secs(30),
            ..WorkerConfig::default()
        };
        let task = self.rt.spawn(async move {
            if let Err(e) = seqclust_worker::run(cfg, rx).await {
                eprintln!("worker stopped: {e}");
            }
        });
        self.workers.push(Worker::InProcess { stop, task });
    }

    /// Adds a `seqclust worker` process (one compute thread); returns its index.
    pub fn add_process_worker(&mut self) -> usize {
        self.add_process_worker_with_env(&[])
    }

    /// Adds a `seqclust worker` process with extra environment (fault hooks); its index.
    pub fn add_process_worker_with_env(&mut self, env: &[(&str, &str)]) -> usize {
        let mut cmd = Command::new(seqclust_bin());
        cmd.args(["worker", "--coordinator", &self.url()]);
        self.spawn_worker(cmd, env)
    }

    /// Adds a `seqclust worker` process on host `host` of `net`: it reaches the coordinator
    /// (which must listen on `0.0.0.0`) through the bridge and its peers at its own address.
    pub fn add_process_worker_on(&mut self, net: &netns::Net, host: usize) -> usize {
        let mut cmd = net.command(host, &seqclust_bin());
        let coordinator = format!("http://{}:{}", net.gateway(), self.addr.port());
        cmd.args(["worker", "--coordinator", &coordinator])
            .args(["--collective-bind", &format!("{}:0", net.addr(host))])
            .args(["--name", &format!("host-{host}")]);
        self.spawn_worker(cmd, &[])
    }

    fn spawn_worker(&mut self, mut cmd: Command, env: &[(&str, &str)]) -> usize {
        let log = self
            .root
            .path()
            .join(format!("worker-{}.log", self.workers.len()));
        let child = cmd
            .args(["--threads", "1"])
            .args(["--collective-timeout", "10", "--connect-timeout", "30"])
            .env("SEQCLUST_LOG", "info")
            .envs(env.iter().copied())
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(std::fs::File::create(&log).unwrap())
            .spawn()
            .expect("start a seqclust worker");
        self.workers.push(Worker::Process(child));
        self.workers.len() - 1
    }

    /// SIGKILLs a process worker.
    pub fn kill_worker(&mut self, i: usize) {
        if let Worker::Process(c) = &mut self.workers[i] {
            c.kill().unwrap();
            c.wait().unwrap();
        } else {
            panic!("worker {i} is not a process");
        }
    }

    /// SIGTERMs a process worker (what Kubernetes sends) and waits for it to exit: its exit
    /// status and how long it took.
    pub fn terminate_worker(&mut self, i: usize) -> (std::process::ExitStatus, Duration) {
        let Worker::Process(c) = &mut self.workers[i] else {
            panic!("worker {i} is not a process");
        };
        let t = Instant::now();
        sigterm(c.id());
        let st = c.wait().unwrap();
        (st, t.elapsed())
    }

    /// Waits until `n` workers hold a lease.
    pub fn wait_workers(&self, n: usize) {
        self.wait_registered(
            |have| have >= n,
            &format!("fewer than {n} workers registered"),
        );
    }

    /// Waits until exactly `n` workers hold a lease (a dead one's lease has expired).
    pub fn wait_workers_exactly(&self, n: usize) {
        self.wait_registered(
            |have| have == n,
            &format!("not exactly {n} workers registered"),
        );
    }

    fn wait_registered(&self, done: impl Fn(usize) -> bool, what: &str) {
        let deadline = Instant::now() + Duration::from_secs(60);
        while !done(self.rt.block_on(self.meta.list("workers/")).unwrap().len()) {
            assert!(Instant::now() < deadline, "{what}");
            std::thread::sleep(Duration::from_millis(50));
        }
    }

    pub fn client(&self) -> JobServiceClient<Channel> {
        let url = self.url();
        self.rt.block_on(async {
            let ch = tonic::transport::Endpoint::from_shared(url)
                .unwrap()
                .connect()
                .await
                .unwrap();
            JobServiceClient::new(ch)
        })
    }

    /// The storage root.
    pub fn root_str(&self) -> String {
        self.root.path().display().to_string()
    }

    /// Generates `users` planted-persona users and ingests them as dataset `name` in 4 shards.
    pub fn dataset(&self, name: &str, users: u64) -> String {
        make_dataset(&self.rt, self.root.path(), name, users)
    }

    /// A small, fast job on `dataset` for `workers` workers.
    pub fn spec(&self, name: &str, dataset: &str, workers: usize) -> JobSpec {
        small_spec(&self.root_str(), name, dataset, workers)
    }

    /// Submits a job; returns its id.
    pub fn submit(&self, spec: &JobSpec) -> String {
        let mut c = self.client();
        self.rt
            .block_on(c.submit_job(v1::SubmitJobRequest {
                spec: Some(spec.into()),
                idempotency_key: String::new(),
            }))
            .unwrap()
            .into_inner()
            .job
            .unwrap()
            .id
    }

    pub fn get(&self, id: &str) -> v1::Job {
        let mut c = self.client();
        self.rt
            .block_on(c.get_job(v1::GetJobRequest { id: id.into() }))
            .unwrap()
            .into_inner()
    }

    /// Polls until `pred` holds for the job (or fails after `timeout`).
    pub fn wait_for(
        &self,
        id: &str,
        timeout: Duration,
        pred: impl Fn(&v1::Job) -> bool,
    ) -> Result<v1::Job> {
        let deadline = Instant::now() + timeout;
        loop {
            let j = self.get(id);
            if pred(&j) {
                return Ok(j);
            }
            if phase_of(&j).is_ok_and(Phase::is_terminal) {
                bail!("job ended {:?}: {}", phase_of(&j), j.error);
            }
            if Instant::now() > deadline {
                bail!("timed out; job is {:?}: {}", phase_of(&j), j.message);
            }
            std::thread::sleep(Duration::from_millis(100));
        }
    }

    /// Waits for the job to succeed.
    pub fn wait_done(&self, id: &str, timeout: Duration) -> Result<v1::Job> {
        self.wait_for(id, timeout, |j| phase_of(j).ok() == Some(Phase::Succeeded))
            .with_context(|| format!("job {id}"))
    }
}

impl Default for TestCluster {
    fn default() -> Self {
        Self::new()
    }
}

impl Drop for TestCluster {
    fn drop(&mut self) {
        for w in &mut self.workers {
            match w {
                Worker::InProcess { stop, task } => {
                    let _ = stop.send(true);
                    task.abort();
                }
                Worker::Process(c) => {
                    let _ = c.kill();
                    let _ = c.wait();
                }
            }
        }
        let _ = self.stop.send(true);
    }
}

/// Generates `users` planted-persona users under `root/raw` and ingests them as dataset `name`
/// (4 shards) under `root`.
pub fn make_dataset(rt: &Runtime, root: &Path, name: &str, users: u64) -> String {
    let raw = root.join("raw").join(format!("{name}.csv"));
    let g = GenConfig {
        users,
        items: 2_000,
        categories: 20,
        mean_events: 20.0,
        seed: 3,
        ..GenConfig::default()
    };
    generate_to_files(&g, &raw, None, GenFormat::Csv, &NoProgress).unwrap();
    let mut cfg = IngestConfig::default();
    cfg.source.paths = vec![raw.display().to_string()];
    cfg.source.format = Format::Csv;
    cfg.source.columns = gen_columns();
    cfg.output.root = root.display().to_string();
    cfg.output.name = name.into();
    cfg.output.shards = 4;
    seqclust_data::ingest(&cfg, rt.handle(), &NoProgress).unwrap();
    name.into()
}

/// A small, fast job on `dataset` (under `root`) for `workers` workers.
pub fn small_spec(root: &str, name: &str, dataset: &str, workers: usize) -> JobSpec {
    let mut s = JobSpec::from_toml_str(&format!(
        r#"
name = "{name}"
[dataset]
uri = "{dataset}"
root = "{root}"
[encoder]
kind = "gru"
dim = 16
layers = 1
max_len = 20
dropout = 0.0
[objective]
next_item_loss = {{ kind = "full" }}
next_item_positions = "last"
[train]
epochs = 1
batch_size = 64
eval_every = 0
log_every = 2
seed = 5
[kmeans]
k = 4
batch_size = 256
epochs = 3.0
seed = 9
"#,
        root = root
    ))
    .unwrap();
    s.resources.min_workers = workers;
    s.resources.max_workers = workers;
    s
}

/// Sends SIGTERM (what Kubernetes sends to stop a pod) to process `pid`.
pub fn sigterm(pid: u32) {
    let st = Command::new("kill")
        .args(["-TERM", &pid.to_string()])
        .status()
        .expect("run kill");
    assert!(st.success(), "kill -TERM {pid} failed");
}

/// A plain HTTP/1.1 request on loopback: (status, body).
pub fn http(addr: SocketAddr, method: &str, path: &str, body: &str) -> (u16, String) {
    use std::io::{Read, Write};
    let mut s = std::net::TcpStream::connect(addr).unwrap();
    write!(
        s,
        "{method} {path} HTTP/1.1\r\nhost: x\r\ncontent-type: application/json\r\ncontent-length: {}\r\nconnection: close\r\n\r\n{body}",
        body.len()
    )
    .unwrap();
    let mut out = String::new();
    s.read_to_string(&mut out).unwrap();
    let code = out[9..12].parse().unwrap();
    let body = out
        .split_once("\r\n\r\n")
        .map(|x| x.1.to_string())
        .unwrap_or_default();
    (code, body)
}

/// The `seqclust` binary the process tests run.
pub fn seqclust_bin() -> PathBuf {
    if let Ok(p) = std::env::var("SEQCLUST_BIN") {
        return PathBuf::from(p);
    }
    // target/<profile>/deps/<test> → target/<profile>/seqclust
    let exe = std::env::current_exe().unwrap();
    let dir = exe.parent().and_then(Path::parent).unwrap();
    let bin = dir.join("seqclust");
    assert!(
        bin.exists(),
        "{} does not exist: build it (cargo build -p seqclust-cli) or set SEQCLUST_BIN",
        bin.display()
    );
    bin
}

/// user → cluster over every assignment shard of a job's (local) run.
pub fn assignments(j: &v1::Job) -> std::collections::HashMap<String, u32> {
    let dir = PathBuf::from(&j.run_uri).join("clusters/assignments");
    let mut out = std::collections::HashMap::new();
    let mut files: Vec<_> = std::fs::read_dir(&dir)
        .unwrap()
        .map(|e| e.unwrap().path())
        .collect();
    files.sort();
    for f in files {
        let (ids, c) = seqclust_data::embeddings::read_assignments(&f).unwrap();
        out.extend(ids.into_iter().zip(c));
    }
    out
}

/// Adjusted Rand index of two assignments of the same users.
pub fn ari(
    a: &std::collections::HashMap<String, u32>,
    b: &std::collections::HashMap<String, u32>,
) -> f64 {
    assert_eq!(a.len(), b.len());
    let (mut ua, mut ub) = (Vec::new(), Vec::new());
    for (u, c) in a {
        ua.push(u64::from(*c));
        ub.push(u64::from(b[u]));
    }
    seqclust_kmeans::adjusted_rand_index(&ua, &ub)
}
