//! `seqclust tune`: hyper-parameter search in which every trial is a job through the
//! coordinator — random search, or asynchronous successive halving whose promoted trials
//! continue their previous run. The results table and the best configuration are committed
//! as a run of their own (`latest/<tune name>`).

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result, bail};
use bytes::Bytes;
use clap::Args;
use serde::Serialize;

use seqclust_artifacts::{Commit, Run, RunInfo};
use seqclust_data::Location;
use seqclust_job::tune::{Asha, Next, Tune, run_metric};
use seqclust_job::{JobSpec, Phase};
use seqclust_proto::convert::phase_of;
use seqclust_proto::v1;

use crate::cmd_jobs::{self, CoordinatorAddr, JobClient};
use crate::cmd_run::{LocalArgs, against_truth, ensure_dataset, truth_path};

/// Search hyper-parameters: each trial is a job through the coordinator.
#[derive(Debug, Args)]
pub struct TuneArgs {
    /// The tune file (TOML with a [tune] table), e.g. examples/tune-personas.toml.
    spec: PathBuf,
    /// Submit the trials to the coordinator named by --coordinator (default: start one in
    /// this process with --workers local workers, as `seqclust run` does).
    #[arg(long)]
    remote: bool,
    #[command(flatten)]
    addr: CoordinatorAddr,
    /// --workers and --threads apply to the embedded coordinator only.
    #[command(flatten)]
    local: LocalArgs,
}

/// One rung of one trial.
#[derive(Debug, Clone, Serialize)]
struct RungOut {
    rung: usize,
    epochs: usize,
    job: String,
    run: String,
    metric: Option<f64>,
    seconds: f64,
    error: String,
}

/// One trial as committed in `tune.json`.
#[derive(Debug, Clone, Serialize)]
struct TrialOut {
    trial: usize,
    params: BTreeMap<String, serde_json::Value>,
    /// Why the sampled combination is not a valid job (it never ran).
    invalid: Option<String>,
    rungs: Vec<RungOut>,
}

pub fn run(a: TuneArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let mut tune = Tune::from_file(&a.spec)?;
    a.local.apply_root(&mut tune.base);
    if !a.remote {
        a.local.apply_workers(&mut tune.base)?;
    }
    let tune = Tune::new(tune.config, tune.base)
        .with_context(|| format!("invalid tune {}", a.spec.display()))?;
    let truth = truth_file(&tune, a.remote)?;
    let trials = tune.trials();
    let rungs = tune.rungs();
    println!(
        "tune {}: {} trials, {:?} scheduler, rungs of {:?} epochs, {} {:?}",
        tune.config.name,
        trials.len(),
        tune.config.scheduler,
        rungs,
        tune.config.metric,
        tune.config.mode
    );
    let cluster = if a.remote {
        None
    } else {
        ensure_dataset(&tune.base, rt)?;
        Some(a.local.start(&tune.base, rt)?)
    };
    let addr = match &cluster {
        Some(c) => CoordinatorAddr::plain(c.url.clone()),
        None => a.addr.clone(),
    };
    let t0 = Instant::now();
    let created = chrono::Utc::now().timestamp_millis();
    let outcome = rt.block_on(search(&tune, &trials, &addr, truth.as_deref()));
    let logs = cluster.map(|c| c.stop(rt));
    let (out, sched) = match outcome {
        Ok(x) => x,
        Err(e) => {
            return Err(match logs {
                Some(l) => e.context(format!("see the worker logs in {}", l.display())),
                None => e,
            });
        }
    };
    print_table(&tune, &out);
    let uri = rt.block_on(commit(&tune, &trials, &out, &sched, created, t0))?;
    println!("committed {uri}/_MANIFEST.json");
    if sched.best().is_none() {
        bail!(
            "no trial of tune {} succeeded (see {uri}/trials.csv)",
            tune.config.name
        );
    }
    Ok(())
}

/// The classes the `truth.*` metrics compare with, when the metric needs them.
fn truth_file(tune: &Tune, remote: bool) -> Result<Option<PathBuf>> {
    if !tune.config.metric.starts_with("truth.") {
        return Ok(None);
    }
    if !tune.config.truth.trim().is_empty() {
        return Ok(Some(PathBuf::from(&tune.config.truth)));
    }
    if !remote && tune.base.sample_data.is_some() {
        return Ok(Some(truth_path(&tune.base)));
    }
    bail!(
        "invalid job field tune.truth: metric {} needs the known classes (a user,class CSV)",
        tune.config.metric
    )
}

/// Runs the scheduler to the end, one job at a time (each uses every worker).
async fn search(
    tune: &Tune,
    trials: &[seqclust_job::tune::Trial],
    addr: &CoordinatorAddr,
    truth: Option<&Path>,
) -> Result<(Vec<TrialOut>, Asha)> {
    let mut client = cmd_jobs::connect(addr).await?;
    let rungs = tune.rungs();
    let mut sched = Asha::new(trials.len(), rungs.len(), tune.config.eta, tune.config.mode);
    let mut out: Vec<TrialOut> = trials
        .iter()
        .map(|t| TrialOut {
            trial: t.index,
            params: t
                .params
                .iter()
                .map(|(k, v)| (k.clone(), serde_json::to_value(v).unwrap_or_default()))
                .collect(),
            invalid: t.spec.as_ref().err().cloned(),
            rungs: Vec::new(),
        })
        .collect();
    loop {
        let (trial, rung) = match sched.decide() {
            Next::Start { trial } => (trial, 0),
            Next::Promote { trial, rung } => (trial, rung),
            Next::Done => break,
        };
        let spec = match &trials[trial].spec {
            Ok(s) => s,
            Err(e) => {
                println!("t{trial:02}: not run, {e}");
                sched.record(trial, rung, None);
                continue;
            }
        };
        let previous = out[trial].rungs.last().map(|r| r.run.clone());
        let job = tune.job(spec, rung, previous.as_deref());
        println!(
            "t{trial:02} → {} epochs{} {}",
            rungs[rung],
            if previous.is_some() {
                " (continuing its last run)"
            } else {
                ""
            },
            params_line(&trials[trial].params)
        );
        let r = run_trial(&mut client, &job, tune, truth, rung, rungs[rung]).await?;
        println!(
            "t{trial:02}    {} epochs: {} in {:.1} s ({})",
            rungs[rung],
            match (r.metric, r.error.is_empty()) {
                (Some(m), _) => format!("{} {m:.4}", tune.config.metric),
                (None, false) => format!("failed: {}", r.error),
                (None, true) => "no metric".into(),
            },
            r.seconds,
            r.job
        );
        sched.record(trial, rung, r.metric);
        out[trial].rungs.push(r);
    }
    Ok((out, sched))
}

/// Submits one job, waits for it and reads its metric. A job the coordinator refuses or
/// that fails is a failed trial; an unreachable coordinator ends the search.
async fn run_trial(
    client: &mut JobClient,
    job: &JobSpec,
    tune: &Tune,
    truth: Option<&Path>,
    rung: usize,
    epochs: usize,
) -> Result<RungOut> {
    let t = Instant::now();
    let mut r = RungOut {
        rung,
        epochs,
        job: String::new(),
        run: String::new(),
        metric: None,
        seconds: 0.0,
        error: String::new(),
    };
    let submitted = client
        .submit_job(v1::SubmitJobRequest {
            spec: Some(job.into()),
            idempotency_key: String::new(),
        })
        .await;
    let id = match submitted {
        Ok(resp) => {
            resp.into_inner()
                .job
                .context("the coordinator answered without a job")?
                .id
        }
        Err(s) if s.code() == tonic::Code::InvalidArgument => {
            r.error = s.message().to_string();
            return Ok(r);
        }
        Err(s) => bail!("submit refused ({:?}): {}", s.code(), s.message()),
    };
    let j = cmd_jobs::wait(client, &id, false).await?;
    r.job = j.id.clone();
    r.run = j.run_uri.clone();
    r.seconds = t.elapsed().as_secs_f64();
    match phase_of(&j) {
        Ok(Phase::Succeeded) => {}
        Ok(p) => {
            r.error = format!("job ended {p}: {}", j.error);
            return Ok(r);
        }
        Err(e) => bail!("job {}: {e}", j.id),
    }
    r.metric = match truth {
        Some(path) => {
            let (_, ari, nmi) = against_truth(&j.run_uri, path)?;
            Some(if tune.config.metric == "truth.ari" {
                ari
            } else {
                nmi
            })
        }
        None => {
            let run = Run::open_dir(Location::parse(&j.run_uri, false)?).await?;
            let metrics: serde_json::Value =
                serde_json::from_slice(&run.read("metrics.json").await?)
                    .with_context(|| format!("{}/metrics.json", j.run_uri))?;
            let summary = serde_json::Value::Object(run.manifest().info.summary.clone());
            let m = run_metric(&tune.config.metric, &metrics, &summary);
            if m.is_none() {
                r.error = format!("the run has no number at {}", tune.config.metric);
            }
            m
        }
    };
    Ok(r)
}

fn short(v: &serde_json::Value) -> String {
    match v.as_f64() {
        Some(x) if !v.is_i64() && !v.is_u64() => format!("{x:.4}"),
        _ => v.to_string().trim_matches('"').to_string(),
    }
}

fn params_line(p: &BTreeMap<String, toml::Value>) -> String {
    p.iter()
        .map(|(k, v)| {
            format!(
                "{k}={}",
                short(&serde_json::to_value(v).unwrap_or_default())
            )
        })
        .collect::<Vec<_>>()
        .join(" ")
}

fn print_table(tune: &Tune, out: &[TrialOut]) {
    let rungs = tune.rungs();
    let mut t = comfy_table::Table::new();
    t.load_preset(comfy_table::presets::NOTHING);
    let mut header = vec!["trial".to_string()];
    header.extend(tune.config.space.keys().cloned());
    header.extend(rungs.iter().map(|e| format!("@{e} ep")));
    t.set_header(header);
    for tr in out {
        let mut row = vec![format!("t{:02}", tr.trial)];
        row.extend(tr.params.values().map(short));
        for i in 0..rungs.len() {
            row.push(match tr.rungs.get(i) {
                Some(RungOut {
                    metric: Some(m), ..
                }) => format!("{m:.4}"),
                Some(_) => "failed".into(),
                None if i == 0 && tr.invalid.is_some() => "invalid".into(),
                None => String::new(),
            });
        }
        t.add_row(row);
    }
    println!("{t}");
}

/// Commits `tune.json`, `trials.csv` and `best.toml` as a run (manifest last).
async fn commit(
    tune: &Tune,
    trials: &[seqclust_job::tune::Trial],
    out: &[TrialOut],
    sched: &Asha,
    created: i64,
    t0: Instant,
) -> Result<String> {
    let rungs = tune.rungs();
    let root = Location::parse(tune.base.output_root(), true)?;
    let id = format!("{}-{:x}", tune.config.name, created);
    let commit = Commit::new(&root, &id);
    let best = sched.best();
    let epochs_trained: usize = out
        .iter()
        .filter_map(|t| t.rungs.iter().rfind(|r| !r.run.is_empty()))
        .map(|r| r.epochs)
        .sum();
    let jobs: usize = out
        .iter()
        .map(|t| t.rungs.iter().filter(|r| !r.job.is_empty()).count())
        .sum();
    let best_doc = best.map(|(t, rung, m)| {
        serde_json::json!({
            "trial": t, "rung": rung, "epochs": rungs[rung], "metric": m,
            "params": out[t].params, "run": out[t].rungs[rung].run,
        })
    });
    let summary = serde_json::json!({
        "metric": tune.config.metric,
        "mode": tune.config.mode,
        "scheduler": tune.config.scheduler,
        "rungs": rungs,
        "trials": out.len(),
        "jobs": jobs,
        "epochs_trained": epochs_trained,
        "epochs_full_budget": out.len() * tune.base.train.epochs,
        "seconds": t0.elapsed().as_secs_f64(),
        "best": best_doc,
    });
    let doc = serde_json::json!({ "tune": tune.config, "summary": summary, "trials": out });
    commit
        .put(
            "tune.json",
            Bytes::from(serde_json::to_vec_pretty(&doc).context("tune.json")?),
        )
        .await?;
    let mut csv = csv::Writer::from_writer(Vec::new());
    let mut header = vec!["trial".to_string()];
    header.extend(tune.config.space.keys().cloned());
    header.extend(rungs.iter().map(|e| format!("metric_at_{e}_epochs")));
    header.push("status".into());
    csv.write_record(&header)?;
    for tr in out {
        let mut row = vec![tr.trial.to_string()];
        row.extend(
            tr.params
                .values()
                .map(|v| v.to_string().trim_matches('"').to_string()),
        );
        for i in 0..rungs.len() {
            row.push(
                tr.rungs
                    .get(i)
                    .and_then(|r| r.metric)
                    .map(|m| m.to_string())
                    .unwrap_or_default(),
            );
        }
        row.push(match (&tr.invalid, tr.rungs.last()) {
            (Some(e), _) => format!("invalid: {e}"),
            (None, Some(r)) if !r.error.is_empty() => format!("failed: {}", r.error),
            _ => "ok".into(),
        });
        csv.write_record(&row)?;
    }
    commit
        .put("trials.csv", Bytes::from(csv.into_inner()?))
        .await?;
    if let Some((t, _, _)) = best
        && let Ok(spec) = &trials[t].spec
    {
        let mut s = spec.clone();
        s.name = tune.base.name.clone();
        s.train.stop_after_epochs = 0;
        s.train.resume_from.clear();
        let text = format!(
            "# The best configuration of tune {} (trial t{t:02}, {} {:.4}).\n{}",
            tune.config.name,
            tune.config.metric,
            best.map_or(0.0, |b| b.2),
            s.to_toml()
        );
        commit.put("best.toml", Bytes::from(text)).await?;
    }
    let summary = match summary {
        serde_json::Value::Object(m) => m,
        _ => serde_json::Map::new(),
    };
    commit
        .finish(RunInfo {
            job_id: id.clone(),
            name: tune.config.name.clone(),
            created_unix_ms: created,
            dataset: tune.base.dataset.uri.clone(),
            dataset_version: None,
            world_size: tune.base.resources.min_workers as u32,
            config: serde_json::to_value(&tune.config).context("tune config")?,
            summary,
        })
        .await?;
    match best {
        Some((t, rung, m)) => println!(
            "best: t{t:02} {} {m:.4} at {} epochs ({}); {} jobs, {} epochs trained ({} for every trial's full budget)",
            tune.config.metric,
            rungs[rung],
            params_line(&trials[t].params),
            jobs,
            epochs_trained,
            out.len() * tune.base.train.epochs
        ),
        None => println!("no trial succeeded"),
    }
    Ok(commit.run().to_string())
}
