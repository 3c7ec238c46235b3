//! `seqclust serve`: online Embed / Assign / Recommend on a committed run.

use std::net::SocketAddr;
use std::time::Duration;

use anyhow::{Context, Result};
use clap::Args;

use seqclust_serve::{BatchConfig, ServeConfig};

use crate::cmd_runs::RootArg;

/// Serve a committed run over gRPC (InferenceService) and JSON HTTP.
#[derive(Debug, Args)]
pub struct ServeArgs {
    /// `latest/<job name>` (followed: a newly committed run is hot-reloaded), `runs/<job id>`,
    /// a job id, or a pulled directory.
    run: String,
    #[command(flatten)]
    root: RootArg,
    /// gRPC listen address.
    #[arg(long, default_value = "0.0.0.0:7080", env = "SEQCLUST_SERVE_GRPC")]
    grpc: SocketAddr,
    /// HTTP listen address (JSON API, /healthz, /metrics); "off" for none.
    #[arg(long, default_value = "0.0.0.0:7081", env = "SEQCLUST_SERVE_HTTP")]
    http: String,
    /// How often latest/<name> is checked, in seconds.
    #[arg(long, default_value_t = 5.0)]
    poll_s: f64,
    /// Most requests per forward pass.
    #[arg(long, default_value_t = 64)]
    max_batch: usize,
    /// Microseconds a batcher lingers for more requests (0: take what is queued).
    #[arg(long, default_value_t = 0)]
    max_wait_us: u64,
    /// Batcher threads (default: half the CPUs).
    #[arg(long)]
    batchers: Option<usize>,
    /// TLS certificate (PEM) of the gRPC listener.
    #[arg(long, env = "SEQCLUST_TLS_CERT", requires = "tls_key")]
    tls_cert: Option<std::path::PathBuf>,
    /// Its private key (PEM).
    #[arg(long, env = "SEQCLUST_TLS_KEY", requires = "tls_cert")]
    tls_key: Option<std::path::PathBuf>,
    /// Recommend's item scoring: f32, or int8 (the item table as int8 with per-row scales,
    /// int8 dot products; see docs/QUALITY.md for what it changes).
    #[arg(long, default_value = "f32", env = "SEQCLUST_SERVE_PRECISION")]
    precision: seqclust_serve::Precision,
}

pub fn run(a: ServeArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let http = match a.http.as_str() {
        "off" | "" => None,
        s => Some(
            s.parse::<SocketAddr>()
                .with_context(|| format!("--http {s:?}: expected HOST:PORT or off"))?,
        ),
    };
    if a.poll_s.is_nan() || a.poll_s <= 0.0 {
        anyhow::bail!("--poll-s must be > 0");
    }
    let mut batch = BatchConfig {
        max_batch: a.max_batch.max(1),
        max_wait: Duration::from_micros(a.max_wait_us),
        ..BatchConfig::default()
    };
    if let Some(n) = a.batchers {
        batch.threads = n.max(1);
    }
    let cfg = ServeConfig {
        root: a.root.root().to_string(),
        run: a.run,
        grpc: a.grpc,
        http,
        poll: Duration::from_secs_f64(a.poll_s),
        batch,
        precision: a.precision,
        tls: seqclust_proto::security::TlsConfig {
            cert: a.tls_cert,
            key: a.tls_key,
            ..Default::default()
        }
        .server()?,
    };
    let shutdown = crate::cmd_service::shutdown_on_signals(rt);
    rt.block_on(async {
        let running = seqclust_serve::serve(cfg, shutdown).await?;
        let info = running.server.info();
        eprintln!(
            "serving run {} ({}, k = {}) on grpc {}{}",
            info.run_id,
            info.name,
            info.k,
            running.grpc,
            running
                .http
                .map(|h| format!(", http {h}"))
                .unwrap_or_default()
        );
        running.done.await.context("server task")?;
        Ok(())
    })
}
