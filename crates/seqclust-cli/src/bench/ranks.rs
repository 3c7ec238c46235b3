//! Benchmarks that run as several rank processes on this machine: the parent starts copies of
//! this program with `--rank r --world W`, each binds a loopback listener and prints its
//! address, the parent hands every rank the full list, the ranks form a ring and print one
//! JSON report line, which the parent collects.

use std::io::{BufRead, BufReader, Write};
use std::net::{SocketAddr, TcpListener};
use std::process::{Child, Command, Stdio};

use anyhow::{Context, Result, bail};
use seqclust_collective::{Ring, RingConfig};

/// Runs `world` rank processes of `seqclust <args> --rank r --world W` and returns each rank's
/// report line, by rank. Each rank's thread pools — rayon's and candle's own, which candle
/// sizes from `RAYON_NUM_THREADS` / `CANDLE_NUM_THREADS`, not from `--threads` — get
/// `threads` threads, so the ranks do not oversubscribe the cores.
pub fn run_ranks(world: usize, threads: usize, args: &[String]) -> Result<Vec<String>> {
    let exe = std::env::current_exe().context("cannot find the seqclust executable")?;
    let mut children: Vec<Child> = Vec::with_capacity(world);
    for rank in 0..world {
        let child = Command::new(&exe)
            .args(args)
            .args(["--rank", &rank.to_string(), "--world", &world.to_string()])
            .env("RAYON_NUM_THREADS", threads.to_string())
            .env("CANDLE_NUM_THREADS", threads.to_string())
            .stdin(Stdio::piped())
            .stdout(Stdio::piped())
            .spawn()
            .context("failed to start a rank process")?;
        children.push(child);
    }
    let reports = (|| {
        let mut outs = Vec::with_capacity(world);
        let mut addrs = Vec::with_capacity(world);
        for c in &mut children {
            let mut out = BufReader::new(c.stdout.take().context("rank stdout")?);
            let mut line = String::new();
            out.read_line(&mut line)?;
            let addr = line
                .trim()
                .strip_prefix("ADDR ")
                .with_context(|| format!("a rank did not report its address: {line:?}"))?;
            addrs.push(addr.to_string());
            outs.push(out);
        }
        let list = addrs.join(",");
        for c in &mut children {
            let mut stdin = c.stdin.take().context("rank stdin")?;
            writeln!(stdin, "{list}")?;
        }
        outs.into_iter()
            .map(|mut o| {
                let mut line = String::new();
                o.read_line(&mut line)?;
                Ok(line)
            })
            .collect::<Result<Vec<_>>>()
    })();
    for c in &mut children {
        if reports.is_err() {
            let _ = c.kill();
        }
        let status = c.wait()?;
        if reports.is_ok() && !status.success() {
            bail!("a rank process failed: {status}");
        }
    }
    reports
}

/// In a rank process: binds, reports the address, reads the group's and forms the ring.
pub fn join_ring(rank: usize, world: usize, cfg: RingConfig) -> Result<Ring> {
    let listener = TcpListener::bind("127.0.0.1:0")?;
    println!("ADDR {}", listener.local_addr()?);
    std::io::stdout().flush()?;
    let mut line = String::new();
    std::io::stdin().read_line(&mut line)?;
    let addrs: Vec<SocketAddr> = line
        .trim()
        .split(',')
        .map(|s| s.parse().with_context(|| format!("bad address {s:?}")))
        .collect::<Result<_>>()?;
    if addrs.len() != world {
        bail!("{} addresses for a world of {world}", addrs.len());
    }
    Ok(Ring::connect(rank, &addrs, listener, cfg)?)
}
