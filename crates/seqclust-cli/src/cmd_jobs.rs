//! `seqclust submit`, `status` and `cancel`: the job API from the command line.

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use tonic::transport::Channel;

use seqclust_job::{JobSpec, Phase};
use seqclust_proto::convert::phase_of;
use seqclust_proto::security::{AuthConfig, BearerToken, TlsConfig};
use seqclust_proto::v1;
use seqclust_proto::v1::job_service_client::JobServiceClient;
use tonic::service::interceptor::InterceptedService;

/// Where the coordinator is, and how to talk to it.
#[derive(Debug, Args, Clone)]
pub struct CoordinatorAddr {
    /// The coordinator (`http://host:7070`, or `https://…` with --ca).
    #[arg(
        long,
        env = "SEQCLUST_COORDINATOR",
        default_value = "http://127.0.0.1:7070"
    )]
    coordinator: String,
    /// CA certificate (PEM) that signed the coordinator's TLS certificate.
    #[arg(long, env = "SEQCLUST_CA")]
    ca: Option<PathBuf>,
    /// The name in the coordinator's certificate, when it is not the URL's host.
    #[arg(long, env = "SEQCLUST_TLS_DOMAIN")]
    tls_domain: Option<String>,
    /// File whose first line is the bearer token (the coordinator's `[auth] tokens_file`).
    #[arg(long, env = "SEQCLUST_TOKEN_FILE")]
    token_file: Option<PathBuf>,
}

/// The job API with the caller's token on every call.
pub type JobClient = JobServiceClient<InterceptedService<Channel, BearerToken>>;

impl CoordinatorAddr {
    /// A plain local address (the embedded `seqclust run`).
    pub fn plain(url: String) -> CoordinatorAddr {
        CoordinatorAddr {
            coordinator: url,
            ca: None,
            tls_domain: None,
            token_file: None,
        }
    }
}

pub async fn connect(a: &CoordinatorAddr) -> Result<JobClient> {
    let addr = &a.coordinator;
    let tls = TlsConfig {
        ca: a.ca.clone(),
        domain: a.tls_domain.clone().unwrap_or_default(),
        ..TlsConfig::default()
    };
    let auth = AuthConfig {
        tokens_file: a.token_file.clone(),
    };
    let token = BearerToken::new(auth.own_token()?.as_deref())?;
    let ch = tls
        .endpoint(addr)?
        .connect()
        .await
        .with_context(|| format!("cannot reach the coordinator at {addr}"))?;
    Ok(JobServiceClient::with_interceptor(ch, token))
}

/// Submit a job (TOML job spec) to the coordinator.
#[derive(Debug, Args)]
pub struct SubmitArgs {
    /// The job spec (TOML: name, [dataset], [encoder], [objective], [train], [kmeans], [resources]).
    spec: PathBuf,
    #[command(flatten)]
    addr: CoordinatorAddr,
    /// A retry with the same key returns the job the first submit created.
    #[arg(long)]
    idempotency_key: Option<String>,
    /// Follow the job until it ends.
    #[arg(long)]
    watch: bool,
    /// The job waits until this many workers are ready, and goes on while this many
    /// remain (overrides resources.min_workers).
    #[arg(long)]
    min_workers: Option<usize>,
    /// The job takes at most this many workers; workers that join later are taken at the
    /// next checkpoint or phase up to this bound (0: no bound; overrides
    /// resources.max_workers).
    #[arg(long)]
    max_workers: Option<usize>,
}

pub fn run_submit(a: SubmitArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let mut spec = JobSpec::from_file(&a.spec)?;
    if let Some(n) = a.min_workers {
        spec.resources.min_workers = n;
    }
    if let Some(n) = a.max_workers {
        spec.resources.max_workers = n;
    }
    spec.validate()
        .with_context(|| format!("invalid job spec {}", a.spec.display()))?;
    rt.block_on(async {
        let mut client = connect(&a.addr).await?;
        let job = submit(&mut client, &spec, a.idempotency_key).await?;
        println!("{}", job.id);
        if a.watch {
            follow(&mut client, &job.id).await?;
        }
        Ok(())
    })
}

/// Submits; the coordinator's refusal (bad field, unknown dataset) is the error.
pub async fn submit(
    client: &mut JobClient,
    spec: &JobSpec,
    key: Option<String>,
) -> Result<v1::Job> {
    let resp = client
        .submit_job(v1::SubmitJobRequest {
            spec: Some(spec.into()),
            idempotency_key: key.unwrap_or_default(),
        })
        .await
        .map_err(|s| anyhow::anyhow!("submit refused ({:?}): {}", s.code(), s.message()))?
        .into_inner();
    resp.job.context("the coordinator answered without a job")
}

/// Show jobs: all of them, or one (optionally following it).
#[derive(Debug, Args)]
pub struct StatusArgs {
    /// A job id (default: list the jobs).
    job: Option<String>,
    #[command(flatten)]
    addr: CoordinatorAddr,
    /// Follow the job's phases and progress until it ends.
    #[arg(long)]
    watch: bool,
    /// Print the job as JSON.
    #[arg(long)]
    json: bool,
}

pub fn run_status(a: StatusArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    rt.block_on(async {
        let mut client = connect(&a.addr).await?;
        match a.job {
            None => {
                let jobs = client
                    .list_jobs(v1::ListJobsRequest { limit: 0 })
                    .await
                    .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                    .into_inner()
                    .jobs;
                let mut t = comfy_table::Table::new();
                t.load_preset(comfy_table::presets::NOTHING);
                t.set_header(["job", "name", "phase", "progress", "workers", "message"]);
                for j in &jobs {
                    t.add_row([
                        j.id.clone(),
                        j.spec.as_ref().map(|s| s.name.clone()).unwrap_or_default(),
                        phase_name(j),
                        format!("{:.0}%", j.phase_progress * 100.0),
                        j.world_size.to_string(),
                        if j.error.is_empty() {
                            j.message.clone()
                        } else {
                            j.error.clone()
                        },
                    ]);
                }
                println!("{t}");
            }
            Some(id) if a.watch => {
                follow(&mut client, &id).await?;
            }
            Some(id) => {
                let j = client
                    .get_job(v1::GetJobRequest { id })
                    .await
                    .map_err(|s| anyhow::anyhow!("{}", s.message()))?
                    .into_inner();
                if a.json {
                    println!("{}", job_json(&j));
                } else {
                    print_job(&j);
                }
            }
        }
        Ok(())
    })
}

/// Cancel a job.
#[derive(Debug, Args)]
pub struct CancelArgs {
    /// The job id.
    job: String,
    #[command(flatten)]
    addr: CoordinatorAddr,
}

pub fn run_cancel(a: CancelArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    rt.block_on(async {
        let mut client = connect(&a.addr).await?;
        let j = client
            .cancel_job(v1::CancelJobRequest { id: a.job })
            .await
            .map_err(|s| anyhow::anyhow!("{}", s.message()))?
            .into_inner();
        println!("{}: {} (cancellation requested)", j.id, phase_name(&j));
        Ok(())
    })
}

fn phase_name(j: &v1::Job) -> String {
    phase_of(j).map_or_else(|_| "?".into(), |p| p.to_string())
}

fn job_json(j: &v1::Job) -> String {
    let phases: Vec<serde_json::Value> = j
        .phase_times
        .iter()
        .map(|t| {
            let p = v1::Phase::try_from(t.phase).map_or("?", |p| p.as_str_name());
            serde_json::json!({ "phase": p, "seconds": t.seconds })
        })
        .collect();
    serde_json::json!({
        "id": j.id, "phase": phase_name(j), "progress": j.phase_progress,
        "message": j.message, "error": j.error, "run_uri": j.run_uri,
        "world_size": j.world_size, "membership_epoch": j.membership_epoch,
        "phase_times": phases,
    })
    .to_string()
}

pub fn print_job(j: &v1::Job) {
    println!("job       {}", j.id);
    println!(
        "phase     {} ({:.0}%)",
        phase_name(j),
        j.phase_progress * 100.0
    );
    if !j.message.is_empty() {
        println!("message   {}", j.message);
    }
    if !j.error.is_empty() {
        println!("error     {}", j.error);
    }
    println!(
        "workers   {} (membership epoch {})",
        j.world_size, j.membership_epoch
    );
    println!("run       {}", j.run_uri);
    for t in &j.phase_times {
        let p = v1::Phase::try_from(t.phase)
            .ok()
            .and_then(|p| Phase::try_from(p).ok());
        if let Some(p) = p {
            println!("  {:<12} {:>8.2} s", p.name(), t.seconds);
        }
    }
}

/// Prints the job's phases and progress as they change; fails if the job does not succeed.
pub async fn follow(client: &mut JobClient, id: &str) -> Result<v1::Job> {
    let j = wait(client, id, true).await?;
    match phase_of(&j) {
        Ok(Phase::Succeeded) => Ok(j),
        Ok(p) => bail!("job {} ended {p}: {}", j.id, j.error),
        Err(e) => bail!("job {}: {e}", j.id),
    }
}

/// Waits for the job to end (printing its phases and progress when `print`) and returns it,
/// whatever its end; fails only when the watch does.
pub async fn wait(client: &mut JobClient, id: &str, print: bool) -> Result<v1::Job> {
    let t0 = Instant::now();
    let mut stream = client
        .watch_job(v1::WatchJobRequest { id: id.to_string() })
        .await
        .map_err(|s| anyhow::anyhow!("{}", s.message()))?
        .into_inner();
    let mut last: Option<v1::Job> = None;
    let mut last_line = String::new();
    while let Some(j) = stream
        .message()
        .await
        .map_err(|s| anyhow::anyhow!("watch broke: {}", s.message()))?
    {
        let line = format!(
            "{:<12} {:>4.0}%  {}",
            phase_name(&j),
            j.phase_progress * 100.0,
            if j.error.is_empty() {
                &j.message
            } else {
                &j.error
            }
        );
        if line != last_line {
            if print {
                println!("[{:>7.1}s] {line}", t0.elapsed().as_secs_f64());
            }
            last_line = line;
        }
        last = Some(j);
    }
    last.context("the watch ended before any update")
}
