//! A real etcd for the tests: the one named by `SEQCLUST_TEST_ETCD`, or a throwaway single
//! node started from the `etcd` binary on PATH (killed again on drop), or none — which fails
//! the test under `SEQCLUST_REQUIRE_ETCD=1` or `CI`, and skips it otherwise. Tests of member
//! loss spawn a cluster of several members ([`cluster_or_skip`]).

use std::net::{Ipv4Addr, TcpListener, TcpStream};
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::conformance;
use crate::{EtcdConfig, EtcdStore};

/// Where the tests' etcd is.
pub enum Etcd {
    /// Given by `SEQCLUST_TEST_ETCD`.
    External(String),
    /// Started by the test.
    Spawned(EtcdServer),
}

impl Etcd {
    /// The client URL.
    pub fn endpoint(&self) -> String {
        match self {
            Etcd::External(url) => url.clone(),
            Etcd::Spawned(server) => server.endpoint(),
        }
    }

    /// A store on this etcd under a prefix of its own.
    pub async fn store(&self, timeout: Duration, retries: u32) -> EtcdStore {
        store_at(self.endpoint(), timeout, retries).await
    }
}

/// A store on the etcd at `endpoint` under a prefix of its own.
pub async fn store_at(endpoint: String, timeout: Duration, retries: u32) -> EtcdStore {
    store_on(vec![endpoint], timeout, retries).await
}

/// A store on the members at `endpoints` under a prefix of its own.
async fn store_on(endpoints: Vec<String>, timeout: Duration, retries: u32) -> EtcdStore {
    let config = EtcdConfig {
        endpoints,
        prefix: format!("/seqclust-test/{}/", conformance::unique_name("run")),
        timeout,
        retries,
        ..EtcdConfig::default()
    };
    EtcdStore::connect(config)
        .await
        .expect("connect to the test etcd")
}

fn flag(name: &str) -> bool {
    std::env::var(name).is_ok_and(|v| !v.is_empty() && v != "0" && v != "false")
}

/// When there is no etcd: panics if one is required, else says the test is skipped.
fn no_etcd(test: &str, why: &str) -> Option<Etcd> {
    let required = flag("SEQCLUST_REQUIRE_ETCD") || flag("CI");
    let message = format!(
        "no etcd for {test}: {why}; install one (Debian: apt-get install etcd-server) \
         or set SEQCLUST_TEST_ETCD=http://host:port"
    );
    assert!(
        !required,
        "{message} (required because SEQCLUST_REQUIRE_ETCD or CI is set)"
    );
    eprintln!("skipped: {message}");
    None
}

/// An external etcd if one is configured, else a spawned one; `None` (after printing
/// "skipped") when neither is possible and etcd is not required.
pub fn etcd_or_skip(test: &str) -> Option<Etcd> {
    if let Ok(url) = std::env::var("SEQCLUST_TEST_ETCD")
        && !url.is_empty()
    {
        return Some(Etcd::External(url));
    }
    spawned_or_skip(test).map(Etcd::Spawned)
}

/// A spawned etcd (tests that freeze or kill it need their own).
pub fn spawned_or_skip(test: &str) -> Option<EtcdServer> {
    let Some(binary) = find_on_path("etcd") else {
        no_etcd(test, "no `etcd` binary on PATH")?;
        return None;
    };
    Some(EtcdServer::start(binary, None))
}

/// A spawned etcd serving clients over TLS only (`cert`/`key` signed by `ca`) and requiring
/// client certificates from `ca` (`--client-cert-auth`).
pub fn spawned_tls_or_skip(
    test: &str,
    cert: PathBuf,
    key: PathBuf,
    ca: PathBuf,
) -> Option<EtcdServer> {
    let Some(binary) = find_on_path("etcd") else {
        no_etcd(test, "no `etcd` binary on PATH")?;
        return None;
    };
    Some(EtcdServer::start(binary, Some([cert, key, ca])))
}

fn find_on_path(name: &str) -> Option<PathBuf> {
    let path = std::env::var_os("PATH")?;
    std::env::split_paths(&path)
        .map(|dir| dir.join(name))
        .find(|p| p.is_file())
}

fn free_port() -> u16 {
    let listener = TcpListener::bind((Ipv4Addr::LOCALHOST, 0)).expect("bind a free port");
    listener.local_addr().expect("local addr").port()
}

/// A single-member etcd on loopback ports, with its data in a temporary directory.
pub struct EtcdServer {
    binary: PathBuf,
    dir: tempfile::TempDir,
    client_port: u16,
    peer_port: u16,
    /// Certificate, key and client CA when clients talk TLS.
    tls: Option<[PathBuf; 3]>,
    child: Option<Child>,
}

impl EtcdServer {
    fn start(binary: PathBuf, tls: Option<[PathBuf; 3]>) -> Self {
        let mut server = EtcdServer {
            binary,
            dir: tempfile::tempdir().expect("temporary directory"),
            client_port: free_port(),
            peer_port: free_port(),
            tls,
            child: None,
        };
        server.run();
        server
    }

    /// The client URL.
    pub fn endpoint(&self) -> String {
        let scheme = if self.tls.is_some() { "https" } else { "http" };
        format!("{scheme}://127.0.0.1:{}", self.client_port)
    }

    /// The process id (0 when not running).
    pub fn pid(&self) -> u32 {
        self.child.as_ref().map_or(0, Child::id)
    }

    /// Starts the process (again, on the same ports and data) and waits until it listens.
    pub fn run(&mut self) {
        let client = self.endpoint();
        let peer = format!("http://127.0.0.1:{}", self.peer_port);
        let tls: Vec<std::ffi::OsString> = match &self.tls {
            None => Vec::new(),
            Some([cert, key, ca]) => vec![
                "--cert-file".into(),
                cert.into(),
                "--key-file".into(),
                key.into(),
                "--trusted-ca-file".into(),
                ca.into(),
                "--client-cert-auth".into(),
            ],
        };
        let log = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(self.dir.path().join("etcd.log"))
            .expect("etcd log file");
        let child = Command::new(&self.binary)
            .args(["--name", "t0", "--data-dir"])
            .arg(self.dir.path().join("data"))
            .args([
                "--listen-client-urls",
                &client,
                "--advertise-client-urls",
                &client,
            ])
            .args([
                "--listen-peer-urls",
                &peer,
                "--initial-advertise-peer-urls",
                &peer,
            ])
            .args(["--initial-cluster", &format!("t0={peer}")])
            .args([
                "--initial-cluster-state",
                "new",
                "--heartbeat-interval",
                "10",
            ])
            .args(["--election-timeout", "100", "--log-level", "error"])
            .args(&tls)
            .stdin(Stdio::null())
            .stdout(Stdio::null())
            .stderr(log)
            .spawn()
            .expect("spawn etcd");
        self.child = Some(child);
        let deadline = Instant::now() + Duration::from_secs(20);
        while TcpStream::connect((Ipv4Addr::LOCALHOST, self.client_port)).is_err() {
            if let Some(status) = self
                .child
                .as_mut()
                .and_then(|c| c.try_wait().ok().flatten())
            {
                panic!("etcd exited with {status}: {}", self.log());
            }
            assert!(
                Instant::now() < deadline,
                "etcd did not listen in time: {}",
                self.log()
            );
            std::thread::sleep(Duration::from_millis(20));
        }
    }

    fn log(&self) -> String {
        std::fs::read_to_string(self.dir.path().join("etcd.log")).unwrap_or_default()
    }

    fn signal(&self, signal: &str) {
        let status = Command::new("kill")
            .args([signal, &self.pid().to_string()])
            .status()
            .expect("run kill");
        assert!(status.success(), "kill {signal} failed");
    }

    /// Freezes the process (SIGSTOP): connections stay open but nothing answers.
    pub fn freeze(&self) {
        self.signal("-STOP");
    }

    /// Thaws a frozen process (SIGCONT).
    pub fn thaw(&self) {
        self.signal("-CONT");
    }

    /// Kills the process with SIGKILL and reaps it.
    pub fn kill(&mut self) {
        if let Some(mut child) = self.child.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdServer {
    fn drop(&mut self) {
        if self.child.is_some() {
            let _ = Command::new("kill")
                .args(["-CONT", &self.pid().to_string()])
                .status();
        }
        self.kill();
    }
}

/// A spawned cluster of `members` etcd members on loopback (tests that kill a member).
pub fn cluster_or_skip(test: &str, members: usize) -> Option<EtcdCluster> {
    let Some(binary) = find_on_path("etcd") else {
        no_etcd(test, "no `etcd` binary on PATH")?;
        return None;
    };
    Some(EtcdCluster::start(binary, members))
}

/// An etcd cluster of several members on loopback ports, each with its data in a temporary
/// directory; every member is killed on drop.
pub struct EtcdCluster {
    dir: tempfile::TempDir,
    /// `(client port, peer port, process)` per member.
    members: Vec<(u16, u16, Option<Child>)>,
}

impl EtcdCluster {
    fn start(binary: PathBuf, n: usize) -> Self {
        let dir = tempfile::tempdir().expect("temporary directory");
        let ports: Vec<(u16, u16)> = (0..n).map(|_| (free_port(), free_port())).collect();
        let initial = ports
            .iter()
            .enumerate()
            .map(|(i, (_, peer))| format!("m{i}=http://127.0.0.1:{peer}"))
            .collect::<Vec<_>>()
            .join(",");
        let mut members = Vec::new();
        for (i, &(client, peer)) in ports.iter().enumerate() {
            let client_url = format!("http://127.0.0.1:{client}");
            let peer_url = format!("http://127.0.0.1:{peer}");
            let log = std::fs::File::create(dir.path().join(format!("m{i}.log"))).expect("log");
            let child = Command::new(&binary)
                .args(["--name", &format!("m{i}"), "--data-dir"])
                .arg(dir.path().join(format!("m{i}")))
                .args(["--listen-client-urls", &client_url])
                .args(["--advertise-client-urls", &client_url])
                .args(["--listen-peer-urls", &peer_url])
                .args(["--initial-advertise-peer-urls", &peer_url])
                .args(["--initial-cluster", &initial])
                .args(["--initial-cluster-state", "new"])
                .args(["--initial-cluster-token", "seqclust-test"])
                .args(["--heartbeat-interval", "50", "--election-timeout", "500"])
                .args(["--log-level", "error"])
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(log)
                .spawn()
                .expect("spawn etcd");
            members.push((client, peer, Some(child)));
        }
        let cluster = EtcdCluster { dir, members };
        let deadline = Instant::now() + Duration::from_secs(30);
        for &(client, _, _) in &cluster.members {
            while TcpStream::connect((Ipv4Addr::LOCALHOST, client)).is_err() {
                assert!(
                    Instant::now() < deadline,
                    "etcd member on port {client} did not listen in time: {}",
                    cluster.logs()
                );
                std::thread::sleep(Duration::from_millis(20));
            }
        }
        cluster
    }

    fn logs(&self) -> String {
        (0..self.members.len())
            .map(|i| {
                std::fs::read_to_string(self.dir.path().join(format!("m{i}.log")))
                    .unwrap_or_default()
            })
            .collect::<Vec<_>>()
            .join("\n")
    }

    /// Every member's client URL.
    pub fn endpoints(&self) -> Vec<String> {
        self.members
            .iter()
            .map(|(c, _, _)| format!("http://127.0.0.1:{c}"))
            .collect()
    }

    /// A store on every member's endpoint under a prefix of its own.
    pub async fn store(&self, timeout: Duration, retries: u32) -> EtcdStore {
        store_on(self.endpoints(), timeout, retries).await
    }

    /// The index of the member that leads the cluster now: the running member whose own id
    /// is the leader id it reports (waits up to 5 s for an election).
    pub async fn leader(&self) -> usize {
        let deadline = Instant::now() + Duration::from_secs(5);
        loop {
            for (i, endpoint) in self.endpoints().into_iter().enumerate() {
                if self.members[i].2.is_none() {
                    continue;
                }
                let status = tokio::time::timeout(Duration::from_secs(1), async {
                    let mut c = etcd_client::Client::connect([endpoint], None).await?;
                    c.status().await
                })
                .await;
                if let Ok(Ok(s)) = status
                    && s.leader() != 0
                    && s.header().map(|h| h.member_id()) == Some(s.leader())
                {
                    return i;
                }
            }
            assert!(
                Instant::now() < deadline,
                "no etcd member leads: {}",
                self.logs()
            );
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    }

    /// Kills member `i` with SIGKILL and reaps it.
    pub fn kill(&mut self, i: usize) {
        if let Some(mut child) = self.members[i].2.take() {
            let _ = child.kill();
            let _ = child.wait();
        }
    }
}

impl Drop for EtcdCluster {
    fn drop(&mut self) {
        for i in 0..self.members.len() {
            self.kill(i);
        }
    }
}
