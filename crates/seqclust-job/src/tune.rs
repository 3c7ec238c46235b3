//! Hyper-parameter search over jobs (`seqclust tune`): the search space, the trials sampled
//! from it, and the scheduler that decides which trial trains next and for how long.
//!
//! A tune file has one `[tune]` table: a base job spec, a space of dotted job-spec fields
//! (`encoder.dim`, `train.lr`, `kmeans.k`, …) with a distribution each, a metric and a
//! scheduler. Two schedulers:
//!
//! - `random`: every trial trains the base job's full `train.epochs`.
//! - `asha`: asynchronous successive halving (Li et al., "A System for Massively Parallel
//!   Hyperparameter Tuning", MLSys 2020). Rung budgets are `min_epochs × eta^i` epochs, capped
//!   by `train.epochs`; whenever a trial ends, the best `1/eta` of the trials that reached a
//!   rung are promoted to the next one, and only when nothing can be promoted does a new
//!   trial start. A promoted trial *continues* its previous run (`train.resume_from` with
//!   `train.stop_after_epochs` as the new budget; the learning-rate schedule spans
//!   `train.epochs` throughout), so the epochs of the lower rungs are not trained twice.
//!
//! Everything here is deterministic given `tune.seed`; the CLI submits the jobs.

use std::collections::BTreeMap;
use std::path::Path;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

use crate::error::{Error, Result};
use crate::spec::JobSpec;

/// Whether a larger or a smaller metric is better.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Mode {
    /// Larger is better (HR, NDCG, NMI, fidelity).
    #[default]
    Max,
    /// Smaller is better (a loss).
    Min,
}

/// How trials get their budgets.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize, Default)]
#[serde(rename_all = "snake_case")]
pub enum Scheduler {
    /// Every trial trains the full budget.
    Random,
    /// Asynchronous successive halving.
    #[default]
    Asha,
}

/// The distribution of one searched field.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case", deny_unknown_fields)]
pub enum Param {
    /// One of these values, uniformly (`{ values = [32, 64, 128] }`).
    Values(Vec<toml::Value>),
    /// A float uniform in `[lo, hi]` (`{ uniform = [0.0, 1.0] }`).
    Uniform([f64; 2]),
    /// A float whose logarithm is uniform in `[ln lo, ln hi]` (`{ log_uniform = [1e-4, 1e-2] }`).
    LogUniform([f64; 2]),
    /// An integer uniform in `[lo, hi]`, both included (`{ int = [4, 16] }`).
    Int([i64; 2]),
}

impl Param {
    fn check(&self, field: &str) -> Result<()> {
        let bad = |m: &str| Err(Error::field(format!("tune.space.\"{field}\""), m));
        match self {
            Param::Values(v) if v.is_empty() => bad("values: give at least one"),
            Param::Uniform([lo, hi]) if !(lo.is_finite() && hi.is_finite() && lo <= hi) => {
                bad("uniform = [lo, hi] needs finite lo <= hi")
            }
            Param::LogUniform([lo, hi]) if !(*lo > 0.0 && hi.is_finite() && lo <= hi) => {
                bad("log_uniform = [lo, hi] needs 0 < lo <= hi")
            }
            Param::Int([lo, hi]) if lo > hi => bad("int = [lo, hi] needs lo <= hi"),
            _ => Ok(()),
        }
    }

    fn sample(&self, r: &mut ChaCha8Rng) -> toml::Value {
        match self {
            Param::Values(v) => v[r.random_range(0..v.len())].clone(),
            Param::Uniform([lo, hi]) => toml::Value::Float(lo + (hi - lo) * r.random::<f64>()),
            Param::LogUniform([lo, hi]) => {
                let (a, b) = (lo.ln(), hi.ln());
                toml::Value::Float((a + (b - a) * r.random::<f64>()).exp())
            }
            Param::Int([lo, hi]) => toml::Value::Integer(r.random_range(*lo..=*hi)),
        }
    }
}

/// Fields a tune may not search: the budget is the scheduler's, the data and the output are
/// the base job's.
const RESERVED: [&str; 8] = [
    "name",
    "dataset",
    "output",
    "resources",
    "sample_data",
    "train.epochs",
    "train.stop_after_epochs",
    "train.resume_from",
];

/// The `[tune]` table.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct TuneConfig {
    /// The tune's name: its result is committed as a run, `latest/<name>`; the trial jobs are
    /// `<name>-tNN`. Empty: `<base job name>-tune`.
    pub name: String,
    /// The base job spec (TOML), relative to the tune file. Its `train.epochs` is the largest
    /// budget a trial gets.
    pub base: String,
    /// Configurations sampled from the space.
    pub trials: usize,
    /// What is compared: `valid.<path>` (the last validation evaluation in the run's
    /// `metrics.json`, e.g. `valid.full.ndcg.10`), `test.<path>` (the held-out test
    /// evaluation: report it, do not select on it), `summary.<path>` (a number in the run
    /// manifest's summary, e.g. `summary.analysis.surrogate_fidelity`) or `truth.ari` /
    /// `truth.nmi` (the committed clusters against known classes, `truth`).
    pub metric: String,
    /// Whether larger or smaller is better.
    pub mode: Mode,
    /// `asha` (default) or `random`.
    pub scheduler: Scheduler,
    /// The first rung's budget in epochs (ASHA).
    pub min_epochs: usize,
    /// The reduction factor: the best `1/eta` of a rung are promoted, the next budget is
    /// `eta` times larger (ASHA).
    pub eta: usize,
    /// Seed of the sampling.
    pub seed: u64,
    /// Known classes for the `truth.*` metrics: a CSV whose rows are `user,class` after a
    /// header (what `seqclust gen --truth` writes), relative to the tune file. Empty with
    /// `seqclust tune` on the embedded default: the base job's `[sample_data]` personas.
    pub truth: String,
    /// Dotted job-spec fields and their distributions.
    pub space: BTreeMap<String, Param>,
}

impl Default for TuneConfig {
    fn default() -> Self {
        TuneConfig {
            name: String::new(),
            base: String::new(),
            trials: 9,
            metric: "valid.full.ndcg.10".into(),
            mode: Mode::Max,
            scheduler: Scheduler::Asha,
            min_epochs: 1,
            eta: 3,
            seed: 0,
            truth: String::new(),
            space: BTreeMap::new(),
        }
    }
}

#[derive(Debug, Deserialize)]
#[serde(deny_unknown_fields)]
struct TuneFile {
    tune: TuneConfig,
}

/// A tune as read from its file: the `[tune]` table and the base job.
#[derive(Debug, Clone, PartialEq)]
pub struct Tune {
    /// The `[tune]` table; `base` and `truth` resolved against the tune file's directory.
    pub config: TuneConfig,
    /// The base job.
    pub base: JobSpec,
}

impl Tune {
    /// Reads and checks a tune file and its base job; errors name the file and the key.
    pub fn from_file(path: &Path) -> Result<Tune> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        let file: TuneFile = toml::from_str(&text).map_err(|e| Error::Parse {
            source_name: path.display().to_string(),
            message: e.to_string().trim_end().to_string(),
        })?;
        let mut config = file.tune;
        let dir = path.parent().unwrap_or(Path::new("."));
        if config.base.trim().is_empty() {
            return Err(Error::field("tune.base", "name the base job spec (TOML)"));
        }
        config.base = dir.join(&config.base).display().to_string();
        if !config.truth.trim().is_empty() {
            config.truth = dir.join(&config.truth).display().to_string();
        }
        let base = JobSpec::from_file(Path::new(&config.base))?;
        Tune::new(config, base)
    }

    /// Checks a tune against its base job.
    pub fn new(mut config: TuneConfig, base: JobSpec) -> Result<Tune> {
        base.validate()?;
        if config.name.trim().is_empty() {
            config.name = format!("{}-tune", base.name);
        }
        if config.trials == 0 {
            return Err(Error::field("tune.trials", "must be at least 1"));
        }
        if config.eta < 2 {
            return Err(Error::field("tune.eta", "must be at least 2"));
        }
        if config.min_epochs == 0 || config.min_epochs > base.train.epochs {
            return Err(Error::field(
                "tune.min_epochs",
                format!(
                    "{} must be in 1..={} (the base job's train.epochs, the largest budget)",
                    config.min_epochs, base.train.epochs
                ),
            ));
        }
        let known = ["valid.", "test.", "summary."];
        if !(known.iter().any(|p| config.metric.starts_with(p))
            || matches!(config.metric.as_str(), "truth.ari" | "truth.nmi"))
        {
            return Err(Error::field(
                "tune.metric",
                format!(
                    "{:?}: use valid.<path>, test.<path>, summary.<path>, truth.ari or truth.nmi",
                    config.metric
                ),
            ));
        }
        if config.space.is_empty() {
            return Err(Error::field("tune.space", "nothing to search: add a field"));
        }
        let base_value = toml::Value::try_from(&base)
            .map_err(|e| Error::field("tune.base", format!("cannot represent the job: {e}")))?;
        for (field, p) in &config.space {
            p.check(field)?;
            if let Some(r) = RESERVED
                .iter()
                .find(|r| field == *r || field.starts_with(&format!("{r}.")))
            {
                return Err(Error::field(
                    format!("tune.space.\"{field}\""),
                    format!(
                        "{r} is not searched: it is the base job's (or the scheduler's budget)"
                    ),
                ));
            }
            lookup(&base_value, field)
                .map_err(|m| Error::field(format!("tune.space.\"{field}\""), m))?;
        }
        Ok(Tune { config, base })
    }

    /// The rung budgets in epochs, smallest first; the last is the base job's `train.epochs`.
    pub fn rungs(&self) -> Vec<usize> {
        let max = self.base.train.epochs;
        match self.config.scheduler {
            Scheduler::Random => vec![max],
            Scheduler::Asha => {
                let mut r = vec![];
                let mut b = self.config.min_epochs;
                while b < max {
                    r.push(b);
                    b = b.saturating_mul(self.config.eta);
                }
                r.push(max);
                r
            }
        }
    }

    /// The sampled trials, in order; one whose combination the job spec refuses carries the
    /// error instead of a spec (it is reported, never run).
    pub fn trials(&self) -> Vec<Trial> {
        let mut r = ChaCha8Rng::seed_from_u64(self.config.seed);
        (0..self.config.trials)
            .map(|i| {
                let params: BTreeMap<String, toml::Value> = self
                    .config
                    .space
                    .iter()
                    .map(|(k, p)| (k.clone(), p.sample(&mut r)))
                    .collect();
                let spec = apply(&self.base, &params).map(|mut s| {
                    s.name = format!("{}-t{i:02}", self.config.name);
                    s
                });
                Trial {
                    index: i,
                    params,
                    spec: spec.map_err(|e| e.to_string()),
                }
            })
            .collect()
    }

    /// The job that trains `trial` up to `rungs()[rung]` epochs, continuing `previous` (the
    /// run of its previous rung).
    pub fn job(&self, trial: &JobSpec, rung: usize, previous: Option<&str>) -> JobSpec {
        let rungs = self.rungs();
        let mut s = trial.clone();
        let budget = rungs[rung.min(rungs.len() - 1)];
        s.train.stop_after_epochs = if budget >= s.train.epochs { 0 } else { budget };
        s.train.resume_from = previous.unwrap_or_default().to_string();
        if !s.train.resume_from.is_empty() {
            // the continued run's own layers are the start, not another model's
            s.train.init_from.clear();
        }
        s
    }
}

/// One sampled configuration.
#[derive(Debug, Clone, PartialEq)]
pub struct Trial {
    /// Its number, from 0.
    pub index: usize,
    /// The sampled value of every searched field.
    pub params: BTreeMap<String, toml::Value>,
    /// The base job with the values applied, or why that is not a valid job.
    pub spec: std::result::Result<JobSpec, String>,
}

fn lookup<'a>(v: &'a toml::Value, field: &str) -> std::result::Result<&'a toml::Value, String> {
    let mut cur = v;
    for part in field.split('.') {
        cur = cur
            .as_table()
            .and_then(|t| t.get(part))
            .ok_or_else(|| format!("the job spec has no field {field:?} (no {part:?})"))?;
    }
    if cur.is_table() {
        return Err(format!("{field:?} is a table; name one of its fields"));
    }
    Ok(cur)
}

/// The base job with each dotted field set to its value; the result is checked as a job.
pub fn apply(base: &JobSpec, params: &BTreeMap<String, toml::Value>) -> Result<JobSpec> {
    let mut v = toml::Value::try_from(base)
        .map_err(|e| Error::field("tune.base", format!("cannot represent the job: {e}")))?;
    for (field, value) in params {
        let mut cur = &mut v;
        let parts: Vec<&str> = field.split('.').collect();
        for part in &parts[..parts.len() - 1] {
            cur = cur
                .as_table_mut()
                .and_then(|t| t.get_mut(*part))
                .ok_or_else(|| Error::field(field.clone(), "no such field in the job spec"))?;
        }
        let last = parts[parts.len() - 1];
        let slot = cur
            .as_table_mut()
            .and_then(|t| t.get_mut(last))
            .ok_or_else(|| Error::field(field.clone(), "no such field in the job spec"))?;
        *slot = value.clone();
    }
    let spec: JobSpec = v.try_into().map_err(|e: toml::de::Error| {
        Error::field(
            params.keys().cloned().collect::<Vec<_>>().join(", "),
            format!(
                "the sampled values do not fit the job spec: {}",
                e.message()
            ),
        )
    })?;
    spec.validate()?;
    Ok(spec)
}

/// What the scheduler wants next.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Next {
    /// Train a new trial's first rung.
    Start {
        /// The trial.
        trial: usize,
    },
    /// Continue a trial to a higher rung.
    Promote {
        /// The trial.
        trial: usize,
        /// The rung it trains to.
        rung: usize,
    },
    /// Every trial has started and none can be promoted.
    Done,
}

/// Successive halving over trials run one after another (with one rung it is random search).
#[derive(Debug, Clone)]
pub struct Asha {
    rungs: usize,
    eta: usize,
    mode: Mode,
    trials: usize,
    started: usize,
    /// Per trial, the metric at each rung it reached (`None`: the trial failed there).
    results: Vec<Vec<Option<f64>>>,
}

impl Asha {
    /// A scheduler over `trials` trials and `rungs` rungs.
    pub fn new(trials: usize, rungs: usize, eta: usize, mode: Mode) -> Asha {
        Asha {
            rungs: rungs.max(1),
            eta: eta.max(2),
            mode,
            trials,
            started: 0,
            results: vec![Vec::new(); trials],
        }
    }

    fn better(&self, a: f64, b: f64) -> bool {
        match self.mode {
            Mode::Max => a > b,
            Mode::Min => a < b,
        }
    }

    /// Trials that reached `rung` and succeeded there, best first (ties: lower index first).
    pub fn ranked(&self, rung: usize) -> Vec<(usize, f64)> {
        let mut v: Vec<(usize, f64)> = self
            .results
            .iter()
            .enumerate()
            .filter_map(|(t, r)| r.get(rung).copied().flatten().map(|x| (t, x)))
            .collect();
        v.sort_by(|a, b| {
            if self.better(a.1, b.1) {
                std::cmp::Ordering::Less
            } else if self.better(b.1, a.1) {
                std::cmp::Ordering::Greater
            } else {
                a.0.cmp(&b.0)
            }
        });
        v
    }

    /// The next thing to run: a promotion from the highest rung that has one, else a new
    /// trial, else done. A `Start` counts the trial as started.
    pub fn decide(&mut self) -> Next {
        for rung in (0..self.rungs - 1).rev() {
            let reached = self.results.iter().filter(|r| r.len() > rung).count();
            let top = reached / self.eta;
            for (t, _) in self.ranked(rung).into_iter().take(top) {
                if self.results[t].len() == rung + 1 {
                    return Next::Promote {
                        trial: t,
                        rung: rung + 1,
                    };
                }
            }
        }
        if self.started < self.trials {
            self.started += 1;
            return Next::Start {
                trial: self.started - 1,
            };
        }
        Next::Done
    }

    /// Records the outcome of `trial` at `rung` (`None`, or a NaN metric: it failed there).
    pub fn record(&mut self, trial: usize, rung: usize, value: Option<f64>) {
        let r = &mut self.results[trial];
        r.truncate(rung);
        r.resize(rung, None);
        r.push(value.filter(|x| !x.is_nan()));
    }

    /// The metric of every trial at each rung it reached.
    pub fn results(&self) -> &[Vec<Option<f64>>] {
        &self.results
    }

    /// The winner: the best trial among those that reached the highest rung any succeeded
    /// at, with that rung and its metric.
    pub fn best(&self) -> Option<(usize, usize, f64)> {
        (0..self.rungs)
            .rev()
            .find_map(|rung| self.ranked(rung).first().map(|&(t, x)| (t, rung, x)))
    }
}

/// Reads `metric` (`valid.…`, `test.…` or `summary.…`) from a run's `metrics.json` document
/// and its manifest summary; `None` when the run has no such number. `truth.*` metrics are the
/// caller's (they need the assignments).
pub fn run_metric(
    metric: &str,
    metrics_json: &serde_json::Value,
    summary: &serde_json::Value,
) -> Option<f64> {
    let walk = |mut v: &serde_json::Value, path: &str| {
        for part in path.split('.') {
            v = v.get(part)?;
        }
        v.as_f64()
    };
    let last_eval = |split: &str, path: &str| {
        metrics_json
            .get("evals")?
            .as_array()?
            .iter()
            .rev()
            .find(|e| e.get("split").and_then(|s| s.as_str()) == Some(split))
            .and_then(|e| walk(e.get("metrics")?, path))
    };
    if let Some(p) = metric.strip_prefix("valid.") {
        last_eval("valid", p)
    } else if let Some(p) = metric.strip_prefix("test.") {
        last_eval("test", p)
    } else if let Some(p) = metric.strip_prefix("summary.") {
        walk(summary, p)
    } else {
        None
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn base() -> JobSpec {
        let mut s = JobSpec::from_toml_str("name = \"j\"\n[dataset]\nuri = \"d\"\n").unwrap();
        s.train.epochs = 9;
        s
    }

    fn config(space: &str) -> TuneConfig {
        let f: TuneFile = toml::from_str(&format!("[tune]\nbase = \"x\"\n[tune.space]\n{space}"))
            .unwrap_or_else(|e| panic!("{e}"));
        f.tune
    }

    #[test]
    fn trials_are_sampled_within_the_space_and_applied() {
        let t = Tune::new(
            config(
                "\"encoder.dim\" = { values = [32, 48] }\n\"train.lr\" = { log_uniform = [1e-4, 1e-2] }\n\
                 \"kmeans.k\" = { int = [4, 6] }\n\"objective.intent\" = { uniform = [0.0, 0.5] }\n",
            ),
            base(),
        )
        .unwrap();
        assert_eq!(t.config.name, "j-tune");
        let trials = t.trials();
        assert_eq!(trials.len(), 9);
        assert_eq!(trials, t.trials(), "the same seed samples the same trials");
        let mut ks = std::collections::BTreeSet::new();
        for tr in &trials {
            let s = tr.spec.as_ref().unwrap();
            assert_eq!(s.name, format!("j-tune-t{:02}", tr.index));
            assert!([32, 48].contains(&s.encoder.dim));
            assert!((1e-4..=1e-2).contains(&s.train.lr), "{}", s.train.lr);
            assert!((4..=6).contains(&s.kmeans.k));
            assert!((0.0..=0.5).contains(&s.objective.intent));
            ks.insert(s.kmeans.k);
            assert_eq!(s.train.epochs, 9, "the budget is the base job's");
        }
        assert!(ks.len() > 1, "{ks:?}");
    }

    #[test]
    fn a_combination_the_job_refuses_is_a_failed_trial_not_a_crash() {
        // a Transformer with 2 heads cannot have dim 33
        let mut b = base();
        b.encoder.kind = seqclust_model::EncoderKind::Transformer;
        let t = Tune::new(config("\"encoder.dim\" = { values = [33] }\n"), b).unwrap();
        let e = t.trials()[0].spec.clone().unwrap_err();
        assert!(e.contains("encoder"), "{e}");
    }

    #[test]
    fn bad_tunes_name_the_field() {
        let name = |space: &str, base: JobSpec| {
            Tune::new(config(space), base)
                .unwrap_err()
                .field_name()
                .unwrap()
                .to_string()
        };
        assert_eq!(
            name("\"encoder.dimm\" = { values = [1] }\n", base()),
            "tune.space.\"encoder.dimm\""
        );
        assert_eq!(
            name("\"train.epochs\" = { int = [1, 3] }\n", base()),
            "tune.space.\"train.epochs\""
        );
        assert_eq!(
            name("\"train.lr\" = { log_uniform = [0.0, 1.0] }\n", base()),
            "tune.space.\"train.lr\""
        );
        assert_eq!(
            name("\"encoder\" = { values = [1] }\n", base()),
            "tune.space.\"encoder\""
        );
        let mut c = config("\"train.lr\" = { uniform = [0.1, 0.2] }\n");
        c.min_epochs = 10;
        assert_eq!(
            Tune::new(c, base()).unwrap_err().field_name(),
            Some("tune.min_epochs")
        );
        let mut c = config("\"train.lr\" = { uniform = [0.1, 0.2] }\n");
        c.metric = "loss".into();
        assert_eq!(
            Tune::new(c, base()).unwrap_err().field_name(),
            Some("tune.metric")
        );
        let e = toml::from_str::<TuneFile>("[tune]\nbase = \"x\"\ntrails = 3\n").unwrap_err();
        assert!(e.to_string().contains("trails"), "{e}");
    }

    #[test]
    fn a_sampled_value_of_the_wrong_type_is_named() {
        let mut p = BTreeMap::new();
        p.insert(
            "encoder.dim".to_string(),
            toml::Value::String("wide".into()),
        );
        let e = apply(&base(), &p).unwrap_err();
        assert_eq!(e.field_name(), Some("encoder.dim"), "{e}");
    }

    #[test]
    fn rungs_grow_by_eta_up_to_the_budget() {
        let mut c = config("\"train.lr\" = { uniform = [0.1, 0.2] }\n");
        let t = Tune::new(c.clone(), base()).unwrap();
        assert_eq!(t.rungs(), vec![1, 3, 9]);
        c.eta = 2;
        c.min_epochs = 2;
        let t = Tune::new(c.clone(), base()).unwrap();
        assert_eq!(t.rungs(), vec![2, 4, 8, 9]);
        c.scheduler = Scheduler::Random;
        let t = Tune::new(c, base()).unwrap();
        assert_eq!(t.rungs(), vec![9]);
        let spec = t.trials()[0].spec.clone().unwrap();
        let j = t.job(&spec, 0, None);
        assert_eq!(
            (j.train.stop_after_epochs, j.train.resume_from.as_str()),
            (0, "")
        );
        let t = Tune::new(config("\"train.lr\" = { uniform = [0.1, 0.2] }\n"), base()).unwrap();
        let j = t.job(&spec, 1, Some("/runs/a"));
        assert_eq!(j.train.stop_after_epochs, 3);
        assert_eq!(j.train.resume_from, "/runs/a");
        j.validate().unwrap();
    }

    /// Drives the scheduler; trial `t` scores `score[t]` at every rung (higher is better).
    fn drive(score: &[f64], rungs: usize, eta: usize) -> (Vec<Next>, Asha) {
        let mut a = Asha::new(score.len(), rungs, eta, Mode::Max);
        let mut seen = Vec::new();
        loop {
            let n = a.decide();
            seen.push(n);
            match n {
                Next::Start { trial } => a.record(trial, 0, Some(score[trial])),
                Next::Promote { trial, rung } => a.record(trial, rung, Some(score[trial])),
                Next::Done => break,
            }
            assert!(seen.len() < 100, "no end");
        }
        (seen, a)
    }

    #[test]
    fn asha_promotes_the_top_third_as_soon_as_a_rung_has_enough() {
        let (seen, a) = drive(&[5.0, 2.0, 8.0, 1.0, 7.0, 0.0, 3.0, 6.0, 4.0], 3, 3);
        use Next::*;
        let s = |trial| Start { trial };
        let p = |trial, rung| Promote { trial, rung };
        assert_eq!(
            seen,
            vec![
                s(0),
                s(1),
                s(2),
                p(2, 1),
                s(3),
                s(4),
                s(5),
                p(4, 1),
                s(6),
                s(7),
                s(8),
                p(7, 1),
                p(2, 2),
                Done,
            ]
        );
        let reached: Vec<usize> = a.results().iter().map(Vec::len).collect();
        assert_eq!(reached, vec![1, 1, 3, 1, 2, 1, 1, 2, 1]);
        assert_eq!(a.best(), Some((2, 2, 8.0)));
    }

    #[test]
    fn failed_trials_are_never_promoted_and_min_mode_prefers_small() {
        let mut a = Asha::new(3, 2, 3, Mode::Min);
        assert_eq!(a.decide(), Next::Start { trial: 0 });
        a.record(0, 0, None);
        assert_eq!(a.decide(), Next::Start { trial: 1 });
        a.record(1, 0, Some(f64::NAN));
        assert_eq!(a.decide(), Next::Start { trial: 2 });
        a.record(2, 0, Some(5.0));
        assert_eq!(a.decide(), Next::Promote { trial: 2, rung: 1 });
        a.record(2, 1, Some(4.0));
        assert_eq!(a.decide(), Next::Done);
        assert_eq!(a.best(), Some((2, 1, 4.0)));
        let mut m = Asha::new(3, 1, 3, Mode::Min);
        for t in 0..3 {
            assert_eq!(m.decide(), Next::Start { trial: t });
            m.record(t, 0, Some(10.0 - t as f64));
        }
        assert_eq!(m.decide(), Next::Done);
        assert_eq!(m.best(), Some((2, 0, 8.0)));
        assert_eq!(Asha::new(2, 2, 3, Mode::Max).best(), None);
    }

    #[test]
    fn metrics_are_read_from_the_run() {
        let metrics = serde_json::json!({ "evals": [
            { "split": "valid", "metrics": { "full": { "ndcg": { "10": 0.1 } } } },
            { "split": "valid", "metrics": { "full": { "ndcg": { "10": 0.2 } } } },
            { "split": "test", "metrics": { "full": { "ndcg": { "10": 0.3 } } } },
        ]});
        let summary = serde_json::json!({ "analysis": { "surrogate_fidelity": 0.9 } });
        assert_eq!(
            run_metric("valid.full.ndcg.10", &metrics, &summary),
            Some(0.2)
        );
        assert_eq!(
            run_metric("test.full.ndcg.10", &metrics, &summary),
            Some(0.3)
        );
        assert_eq!(
            run_metric("summary.analysis.surrogate_fidelity", &metrics, &summary),
            Some(0.9)
        );
        assert_eq!(run_metric("valid.full.hr.10", &metrics, &summary), None);
    }

    #[test]
    fn the_example_tune_loads() {
        let p = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/tune-personas.toml");
        let t = Tune::from_file(&p).unwrap_or_else(|e| panic!("{e}"));
        assert!(t.trials().iter().all(|t| t.spec.is_ok()));
        assert!(t.rungs().len() >= 2);
    }
}
