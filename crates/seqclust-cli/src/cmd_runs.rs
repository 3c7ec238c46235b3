//! `seqclust pull`, `seqclust runs list|show|gc` and `seqclust report`: committed runs from
//! the command line, through the verifying reader of seqclust-artifacts.

use std::path::PathBuf;
use std::time::Duration;

use anyhow::{Context, Result, bail};
use clap::{Args, Subcommand};
use comfy_table::Table;

use seqclust_artifacts::{Run, gc, list};
use seqclust_data::Location;

/// The storage root runs are committed under.
#[derive(Debug, Args, Clone)]
pub struct RootArg {
    /// Storage root (a directory or s3://bucket/prefix) holding `runs/` and `latest/`.
    #[arg(long, env = "SEQCLUST_ROOT", default_value = "./seqclust-data")]
    root: String,
}

impl RootArg {
    /// The root.
    pub fn root(&self) -> &str {
        &self.root
    }
}

/// Copy a committed run to a local directory, verifying every checksum.
#[derive(Debug, Args)]
pub struct PullArgs {
    /// `latest/<job name>`, `runs/<job id>` or a job id.
    run: String,
    /// Destination directory (created; its manifest is written last).
    dir: PathBuf,
    #[command(flatten)]
    root: RootArg,
}

/// Committed runs.
#[derive(Debug, Args)]
pub struct RunsArgs {
    #[command(subcommand)]
    cmd: RunsCmd,
}

#[derive(Debug, Subcommand)]
enum RunsCmd {
    /// Every run under the root: committed ones with their summary, and staged ones.
    List {
        #[command(flatten)]
        root: RootArg,
        /// Print JSON lines instead of a table.
        #[arg(long)]
        json: bool,
    },
    /// One run's manifest summary and files.
    Show {
        /// `latest/<job name>`, `runs/<job id>`, a job id, or a pulled directory.
        run: String,
        #[command(flatten)]
        root: RootArg,
        /// Read every file and check it against the manifest.
        #[arg(long)]
        verify: bool,
        /// Print the whole manifest as JSON.
        #[arg(long)]
        json: bool,
    },
    /// Delete runs that were never committed (and, optionally, committed runs' checkpoints).
    Gc {
        #[command(flatten)]
        root: RootArg,
        /// Leave runs with a file newer than this alone (a job may still be writing them).
        #[arg(long, default_value = "1h", value_parser = parse_duration)]
        min_age: Duration,
        /// Also delete the checkpoints of committed runs.
        #[arg(long)]
        checkpoints: bool,
        /// Only print what would be deleted.
        #[arg(long)]
        dry_run: bool,
    },
}

/// Write a run's report locally and print (or open) its index.html.
#[derive(Debug, Args)]
pub struct ReportArgs {
    /// `latest/<job name>`, `runs/<job id>`, a job id, or a pulled directory.
    run: String,
    #[command(flatten)]
    root: RootArg,
    /// Where to write the report (default: the run's own directory when it is local, else
    /// ./report-<job id>).
    #[arg(long)]
    out: Option<PathBuf>,
    /// Open it in the desktop's browser (xdg-open / open).
    #[arg(long)]
    open: bool,
}

fn parse_duration(s: &str) -> Result<Duration, String> {
    let (num, unit) = s.split_at(s.find(|c: char| !c.is_ascii_digit()).unwrap_or(s.len()));
    let n: u64 = num
        .parse()
        .map_err(|_| format!("{s:?}: expected e.g. 30s, 10m, 1h, 2d"))?;
    let secs = match unit {
        "" | "s" => n,
        "m" => n * 60,
        "h" => n * 3600,
        "d" => n * 86_400,
        _ => return Err(format!("{s:?}: unit must be s, m, h or d")),
    };
    Ok(Duration::from_secs(secs))
}

pub fn run_pull(a: PullArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    rt.block_on(async {
        let run = Run::open_any(&a.root.root, &a.run).await?;
        let bytes = run
            .pull(&a.dir)
            .await
            .with_context(|| format!("pulling {} into {}", run.id(), a.dir.display()))?;
        println!(
            "pulled run {} ({} files, {:.1} MB, every sha256 verified) into {}",
            run.id(),
            run.manifest().files.len(),
            bytes as f64 / 1e6,
            a.dir.display()
        );
        Ok(())
    })
}

pub fn run_runs(a: RunsArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    rt.block_on(async {
        match a.cmd {
            RunsCmd::List { root, json } => {
                let loc = Location::parse(&root.root, false)?;
                let runs = list(&loc).await?;
                if json {
                    for r in &runs {
                        let line = serde_json::json!({
                            "id": r.id,
                            "committed": r.manifest.is_some(),
                            "latest": r.latest,
                            "name": r.manifest.as_ref().map(|m| &m.info.name),
                            "committed_unix_ms": r.manifest.as_ref().map(|m| m.committed_unix_ms),
                            "bytes": r.manifest.as_ref().map(|m| m.total_bytes()),
                        });
                        println!("{line}");
                    }
                    return Ok(());
                }
                let mut t = Table::new();
                t.set_header(["run", "name", "state", "committed", "files", "MB", "latest"]);
                for r in &runs {
                    match &r.manifest {
                        Some(m) => t.add_row([
                            r.id.clone(),
                            m.info.name.clone(),
                            "committed".into(),
                            format_ms(m.committed_unix_ms),
                            m.files.len().to_string(),
                            format!("{:.1}", m.total_bytes() as f64 / 1e6),
                            if r.latest {
                                "✓".into()
                            } else {
                                String::new()
                            },
                        ]),
                        None => t.add_row([
                            r.id.clone(),
                            String::new(),
                            "staged (not a result)".into(),
                            String::new(),
                            String::new(),
                            String::new(),
                            String::new(),
                        ]),
                    };
                }
                println!("{t}");
                Ok(())
            }
            RunsCmd::Show {
                run,
                root,
                verify,
                json,
            } => {
                let r = Run::open_any(&root.root, &run).await?;
                if verify {
                    r.verify().await?;
                }
                let m = r.manifest();
                if json {
                    println!("{}", serde_json::to_string_pretty(m)?);
                    return Ok(());
                }
                println!("run        {}", m.info.job_id);
                println!("name       {}", m.info.name);
                println!("location   {}", r.location());
                println!("committed  {}", format_ms(m.committed_unix_ms));
                println!(
                    "dataset    {} ({})",
                    m.info.dataset,
                    m.info.dataset_version.as_deref().unwrap_or("?")
                );
                println!("workers    {}", m.info.world_size);
                println!("code       seqclust {}", m.code_version);
                for key in ["kmeans", "analysis"] {
                    if let Some(v) = m.info.summary.get(key) {
                        println!("{key:<10} {v}");
                    }
                }
                let mut t = Table::new();
                t.set_header(["file", "bytes", "sha256"]);
                for f in &m.files {
                    t.add_row([
                        f.path.clone(),
                        f.size.to_string(),
                        f.sha256[..16].to_string(),
                    ]);
                }
                println!("{t}");
                if verify {
                    println!("all {} files match the manifest", m.files.len());
                }
                Ok(())
            }
            RunsCmd::Gc {
                root,
                min_age,
                checkpoints,
                dry_run,
            } => {
                let loc = Location::parse(&root.root, false)?;
                let c = gc(&loc, min_age, checkpoints, dry_run).await?;
                let verb = if dry_run { "would delete" } else { "deleted" };
                for id in &c.uncommitted {
                    println!("{verb} uncommitted run {id}");
                }
                for id in &c.checkpoints {
                    println!("{verb} checkpoints of {id}");
                }
                println!("{verb} {} objects", c.objects);
                Ok(())
            }
        }
    })
}

pub fn run_report(a: ReportArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    rt.block_on(async {
        let run = Run::open_any(&a.root.root, &a.run).await?;
        let files = run.files_under("report/");
        if files.is_empty() {
            bail!(
                "run {} has no report (the job ran with analysis.enabled = false)",
                run.id()
            );
        }
        let local = std::path::Path::new(&run.location().to_string()).to_path_buf();
        let index = match (&a.out, local.join("report/index.html").exists()) {
            (None, true) => {
                // verify the page before pointing at it
                run.read("report/index.html").await?;
                local.join("report/index.html")
            }
            (out, _) => {
                let dir = out
                    .clone()
                    .unwrap_or_else(|| PathBuf::from(format!("report-{}", run.id())));
                std::fs::create_dir_all(&dir)
                    .with_context(|| format!("creating {}", dir.display()))?;
                for f in &files {
                    let bytes = run.read(f).await?;
                    let dest = dir.join(f.trim_start_matches("report/"));
                    std::fs::write(&dest, &bytes)
                        .with_context(|| format!("writing {}", dest.display()))?;
                }
                dir.join("index.html")
            }
        };
        println!("{}", index.display());
        if a.open {
            let opener = if cfg!(target_os = "macos") {
                "open"
            } else {
                "xdg-open"
            };
            std::process::Command::new(opener)
                .arg(&index)
                .status()
                .with_context(|| format!("running {opener} (print the path without --open)"))?;
        }
        Ok(())
    })
}

fn format_ms(ms: i64) -> String {
    chrono::DateTime::from_timestamp_millis(ms)
        .map(|t| t.format("%Y-%m-%d %H:%M:%S UTC").to_string())
        .unwrap_or_else(|| ms.to_string())
}
