//! Service processes for the multi-process tests: `seqclust coordinator` / `worker` children,
//! their admin endpoints, and the Prometheus text they serve.

use std::net::{Ipv4Addr, SocketAddr, TcpListener};
use std::path::Path;
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use crate::{http, seqclust_bin, sigterm};

/// A free loopback port.
pub fn free_port() -> u16 {
    TcpListener::bind((Ipv4Addr::LOCALHOST, 0))
        .unwrap()
        .local_addr()
        .unwrap()
        .port()
}

/// 127.0.0.1:`port`.
pub fn local(port: u16) -> SocketAddr {
    SocketAddr::from((Ipv4Addr::LOCALHOST, port))
}

/// A `seqclust` service process, killed on drop.
pub struct Proc(pub Child);

impl Proc {
    /// Starts `seqclust ARGS` with its stderr in `log`.
    pub fn start(args: &[&str], log: &Path) -> Proc {
        Self::start_with_env(args, log, &[])
    }

    /// Starts `seqclust ARGS` with extra environment (object store credentials, fault hooks).
    pub fn start_with_env(args: &[&str], log: &Path, env: &[(&str, &str)]) -> Proc {
        Proc(
            Command::new(seqclust_bin())
                .args(args)
                .envs(env.iter().copied())
                .stdin(Stdio::null())
                .stdout(Stdio::null())
                .stderr(std::fs::File::create(log).unwrap())
                .spawn()
                .expect("start seqclust"),
        )
    }

    /// SIGTERM (what Kubernetes sends), then the exit status within `within`.
    pub fn terminate(&mut self, within: Duration) -> std::process::ExitStatus {
        let pid = self.0.id();
        sigterm(pid);
        let deadline = Instant::now() + within;
        loop {
            if let Some(st) = self.0.try_wait().unwrap() {
                return st;
            }
            assert!(Instant::now() < deadline, "process {pid} ignored SIGTERM");
            std::thread::sleep(Duration::from_millis(50));
        }
    }
}

impl Drop for Proc {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The values of the series `name{…}` whose labels include every pair in `labels`.
pub fn series<'a>(
    text: &'a str,
    name: &'a str,
    labels: &'a [(&str, &str)],
) -> impl Iterator<Item = f64> + 'a {
    text.lines()
        .filter(|l| !l.starts_with('#'))
        .filter_map(|l| l.rsplit_once(' '))
        .filter(move |(series, _)| {
            let (n, rest) = series.split_once('{').unwrap_or((series, ""));
            n == name
                && labels
                    .iter()
                    .all(|(k, v)| rest.contains(&format!("{k}=\"{v}\"")))
        })
        .filter_map(|(_, v)| v.parse().ok())
}

/// The first matching series' value.
pub fn sample(text: &str, name: &str, labels: &[(&str, &str)]) -> Option<f64> {
    series(text, name, labels).next()
}

/// The sum over every matching series.
pub fn total(text: &str, name: &str, labels: &[(&str, &str)]) -> f64 {
    series(text, name, labels).sum()
}

/// `GET /metrics` of the admin endpoint on `port`.
pub fn metrics(port: u16) -> String {
    let (code, body) = http(local(port), "GET", "/metrics", "");
    assert_eq!(code, 200);
    body
}

/// Polls `ok` every 100 ms; panics naming `what` after `timeout`.
pub fn wait_until(what: &str, timeout: Duration, mut ok: impl FnMut() -> bool) {
    let deadline = Instant::now() + timeout;
    while !ok() {
        assert!(Instant::now() < deadline, "timed out waiting for {what}");
        std::thread::sleep(Duration::from_millis(100));
    }
}

/// `GET /readyz` on `port`, or `None` while nothing listens there.
pub fn ready(port: u16) -> Option<(u16, String)> {
    std::net::TcpStream::connect(local(port)).ok()?;
    Some(http(local(port), "GET", "/readyz", ""))
}

impl Proc {
    /// SIGKILL, and wait for it.
    pub fn kill(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

/// The lease TTL of [`write_config`], in seconds.
pub const LEASE_TTL: f64 = 3.0;

/// Writes `dir/seqclust.toml`: coordinators listening on 127.0.0.1:`grpc` with a short lease,
/// etcd at `etcd` under a fresh prefix named after `test`, workers of one thread that never
/// give up reconnecting, JSON logs. Returns the file's path as a string.
pub fn write_config(dir: &Path, grpc: u16, etcd: &str, test: &str) -> String {
    let path = dir.join("seqclust.toml");
    let prefix = seqclust_meta::conformance::unique_prefix(test);
    std::fs::write(
        &path,
        format!(
            r#"
[coordinator]
listen = "127.0.0.1:{grpc}"
lease_ttl = {LEASE_TTL}
heartbeat_interval = 0.5

[meta]
store = "etcd"

[meta.etcd]
endpoints = ["{etcd}"]
prefix = "{prefix}"

[worker]
coordinator = "http://127.0.0.1:{grpc}"
threads = 1
collective_timeout = 10
connect_timeout = 0

[telemetry]
log_format = "json"
log_filter = "info"
"#
        ),
    )
    .unwrap();
    path.display().to_string()
}
