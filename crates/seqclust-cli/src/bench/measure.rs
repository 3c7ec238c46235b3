//! Whole-process measurements of a child command: wall time, CPU time, peak RSS, and how busy
//! the rest of the machine was meanwhile (so noisy runs can be rejected).

use std::process::Command;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use serde::Serialize;

/// One measured run.
#[derive(Debug, Clone, Serialize)]
pub struct Measured {
    /// Wall seconds.
    pub seconds: f64,
    /// User + system CPU seconds of the child.
    pub cpu_s: f64,
    /// Peak resident set size of the child, MiB.
    pub peak_rss_mib: f64,
    /// Load figures in the peers' format.
    pub load: Load,
    /// The child's standard output.
    #[serde(skip)]
    pub stdout: String,
}

/// `loadavg_start` and `background_cpu_frac` as the peer scripts report them.
#[derive(Debug, Clone, Serialize)]
pub struct Load {
    /// 1, 5 and 15-minute load averages at the start.
    pub loadavg_start: [f64; 3],
    /// Share of the machine used by other processes during the run.
    pub background_cpu_frac: f64,
}

fn loadavg() -> [f64; 3] {
    let s = std::fs::read_to_string("/proc/loadavg").unwrap_or_default();
    let v: Vec<f64> = s
        .split_whitespace()
        .take(3)
        .filter_map(|x| x.parse().ok())
        .collect();
    [
        v.first().copied().unwrap_or(0.0),
        v.get(1).copied().unwrap_or(0.0),
        v.get(2).copied().unwrap_or(0.0),
    ]
}

/// (busy, total) CPU seconds of the whole machine since boot.
fn cpu_times() -> (f64, f64) {
    let s = std::fs::read_to_string("/proc/stat").unwrap_or_default();
    let Some(line) = s.lines().next() else {
        return (0.0, 0.0);
    };
    let v: Vec<f64> = line
        .split_whitespace()
        .skip(1)
        .filter_map(|x| x.parse().ok())
        .collect();
    if v.len() < 5 {
        return (0.0, 0.0);
    }
    let total: f64 = v.iter().take(8).sum();
    let idle = v[3] + v[4];
    // SAFETY: sysconf has no preconditions.
    let hz = unsafe { libc::sysconf(libc::_SC_CLK_TCK) }.max(1) as f64;
    ((total - idle) / hz, total / hz)
}

/// Runs `cmd` to completion and measures it. Fails if it exits unsuccessfully.
pub fn run(mut cmd: Command) -> Result<Measured> {
    let what = format!("{cmd:?}");
    let load_start = loadavg();
    let (busy0, total0) = cpu_times();
    let t = Instant::now();
    let mut child = cmd
        .stdout(std::process::Stdio::piped())
        .stderr(std::process::Stdio::piped())
        .spawn()
        .with_context(|| format!("starting {what}"))?;
    let mut out = child.stdout.take();
    let mut err = child.stderr.take();
    let out_thread = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(o) = out.as_mut() {
            let _ = std::io::Read::read_to_string(o, &mut s);
        }
        s
    });
    let err_thread = std::thread::spawn(move || {
        let mut s = String::new();
        if let Some(e) = err.as_mut() {
            let _ = std::io::Read::read_to_string(e, &mut s);
        }
        s
    });
    let mut status: libc::c_int = 0;
    // SAFETY: an all-zero rusage is a valid value for the kernel to overwrite.
    let mut usage: libc::rusage = unsafe { std::mem::zeroed() };
    // SAFETY: the pid is our own un-reaped child; status and usage are valid out-pointers.
    let rc = unsafe { libc::wait4(child.id() as libc::pid_t, &mut status, 0, &mut usage) };
    let seconds = t.elapsed().as_secs_f64();
    let (busy1, total1) = cpu_times();
    let stdout = out_thread.join().unwrap_or_default();
    let stderr = err_thread.join().unwrap_or_default();
    if rc < 0 {
        bail!("waiting for {what}: {}", std::io::Error::last_os_error());
    }
    if !(libc::WIFEXITED(status) && libc::WEXITSTATUS(status) == 0) {
        bail!("{what} failed (status {status}):\n{stderr}");
    }
    let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
    let cpu_s = tv(usage.ru_utime) + tv(usage.ru_stime);
    let ncpu = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1) as f64;
    let wall_cpu = (total1 - total0).max(1e-9);
    let background = ((busy1 - busy0) - cpu_s).max(0.0) / wall_cpu.max(seconds * ncpu);
    Ok(Measured {
        seconds,
        cpu_s,
        peak_rss_mib: usage.ru_maxrss as f64 / 1024.0,
        load: Load {
            loadavg_start: load_start,
            background_cpu_frac: (background * 1000.0).round() / 1000.0,
        },
        stdout,
    })
}

/// This process's resident memory now (`VmRSS`), MiB; 0 where `/proc` has no such figure.
pub fn resident_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .unwrap_or_default()
        .lines()
        .find_map(|l| l.strip_prefix("VmRSS:"))
        .and_then(|v| v.trim().trim_end_matches("kB").trim().parse::<f64>().ok())
        .map_or(0.0, |kb| kb / 1024.0)
}

/// Load figures for work done in this process: the background share is the machine's busy
/// time minus this process's own CPU time.
pub struct Probe {
    load: [f64; 3],
    busy: f64,
    total: f64,
    own: f64,
    t: Instant,
}

/// CPU seconds of this process and of its children that have been waited for (a benchmark
/// that runs ranks as child processes counts them as its own).
fn own_cpu() -> f64 {
    let of = |who| {
        // SAFETY: an all-zero rusage is a valid value for the kernel to overwrite.
        let mut u: libc::rusage = unsafe { std::mem::zeroed() };
        // SAFETY: u is a valid out-pointer.
        unsafe { libc::getrusage(who, &mut u) };
        let tv = |t: libc::timeval| t.tv_sec as f64 + t.tv_usec as f64 / 1e6;
        tv(u.ru_utime) + tv(u.ru_stime)
    };
    of(libc::RUSAGE_SELF) + of(libc::RUSAGE_CHILDREN)
}

/// Prints a JSON line and, with `out`, appends it to that file.
pub fn emit(line: serde_json::Value, out: Option<&std::path::Path>) -> Result<()> {
    let text = serde_json::to_string(&line)?;
    println!("{text}");
    if let Some(p) = out {
        use std::io::Write;
        let mut f = std::fs::OpenOptions::new()
            .create(true)
            .append(true)
            .open(p)
            .with_context(|| format!("failed to open {}", p.display()))?;
        writeln!(f, "{text}").with_context(|| format!("failed to write {}", p.display()))?;
    }
    Ok(())
}

/// The median (the mean of the middle two for an even count; NaN for none).
pub fn median(mut v: Vec<f64>) -> f64 {
    if v.is_empty() {
        return f64::NAN;
    }
    v.sort_by(f64::total_cmp);
    let n = v.len();
    if n % 2 == 1 {
        v[n / 2]
    } else {
        (v[n / 2 - 1] + v[n / 2]) / 2.0
    }
}

impl Probe {
    /// Starts measuring.
    pub fn start() -> Probe {
        let (busy, total) = cpu_times();
        Probe {
            load: loadavg(),
            busy,
            total,
            own: own_cpu(),
            t: Instant::now(),
        }
    }

    /// The load figures of the measured interval.
    pub fn finish(&self) -> Load {
        let (busy, total) = cpu_times();
        let own = own_cpu() - self.own;
        let ncpu = std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1) as f64;
        let wall = self.t.elapsed().as_secs_f64();
        let bg =
            ((busy - self.busy) - own).max(0.0) / (total - self.total).max(wall * ncpu).max(1e-9);
        Load {
            loadavg_start: self.load,
            background_cpu_frac: (bg * 1000.0).round() / 1000.0,
        }
    }
}
