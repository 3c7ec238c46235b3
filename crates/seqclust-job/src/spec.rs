//! The job spec: everything a job needs, in the TOML form the CLI reads.

use serde::{Deserialize, Serialize};

use seqclust_analysis::{AnalysisConfig, RecommendConfig};
use seqclust_kmeans::{Algorithm, KMeansConfig};
use seqclust_model::{EncoderConfig, ObjectiveConfig};
use seqclust_trainer::{DatasetRef, TrainConfig, TrainJob};

use crate::error::{Error, Result};

/// How many workers a job uses.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct Resources {
    /// The job waits in `pending` until this many workers are registered.
    pub min_workers: usize,
    /// It uses at most this many (0: every registered worker).
    pub max_workers: usize,
}

impl Default for Resources {
    fn default() -> Self {
        Resources {
            min_workers: 1,
            max_workers: 0,
        }
    }
}

/// Planted-persona data that `seqclust run` generates and ingests under `dataset.uri` when
/// no such dataset exists yet (the embedded quick start). Not part of the wire form: a
/// coordinator never generates data.
#[derive(Debug, Clone, PartialEq, Eq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct SampleData {
    /// Users to generate.
    pub users: u64,
    /// Generator seed.
    pub seed: u64,
}

impl Default for SampleData {
    fn default() -> Self {
        SampleData {
            users: 20_000,
            seed: 7,
        }
    }
}

/// A whole job.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct JobSpec {
    /// Name; the committed run is published as `latest/<name>`.
    pub name: String,
    /// Input dataset.
    pub dataset: DatasetRef,
    /// Storage root the run is committed under (`runs/<job id>/`); empty: the dataset's root.
    pub output: String,
    /// Encoder architecture.
    pub encoder: EncoderConfig,
    /// Self-supervised objectives.
    pub objective: ObjectiveConfig,
    /// Optimisation; `train.batch_size` is the global batch, split over the workers.
    pub train: TrainConfig,
    /// Clustering of the user vectors; mini-batch by default.
    pub kmeans: KMeansConfig,
    /// Workers.
    pub resources: Resources,
    /// Cluster profiles, surrogate tree and report (the ANALYZE phase).
    pub analysis: AnalysisConfig,
    /// Recommendations written with the run.
    pub recommend: RecommendConfig,
    /// Data to generate when the dataset is missing (`seqclust run` only).
    #[serde(skip_serializing_if = "Option::is_none")]
    pub sample_data: Option<SampleData>,
}

impl Default for JobSpec {
    fn default() -> Self {
        JobSpec {
            name: String::new(),
            dataset: DatasetRef::default(),
            output: String::new(),
            encoder: EncoderConfig::default(),
            objective: ObjectiveConfig::default(),
            train: TrainConfig::default(),
            kmeans: KMeansConfig {
                algorithm: Algorithm::MiniBatch,
                k: 20,
                batch_size: 4096,
                epochs: 5.0,
                ..KMeansConfig::default()
            },
            resources: Resources::default(),
            analysis: AnalysisConfig::default(),
            recommend: RecommendConfig::default(),
            sample_data: None,
        }
    }
}

impl JobSpec {
    /// Parses the TOML form; errors name line, column and key.
    pub fn from_toml_str(text: &str) -> Result<JobSpec> {
        Self::parse(text, "<string>")
    }

    /// Reads a TOML job file.
    pub fn from_file(path: &std::path::Path) -> Result<JobSpec> {
        let text = std::fs::read_to_string(path).map_err(|source| Error::Read {
            path: path.display().to_string(),
            source,
        })?;
        Self::parse(&text, &path.display().to_string())
    }

    fn parse(text: &str, source_name: &str) -> Result<JobSpec> {
        toml::from_str(text).map_err(|e| Error::Parse {
            source_name: source_name.to_string(),
            message: e.to_string().trim_end().to_string(),
        })
    }

    /// The TOML form.
    pub fn to_toml(&self) -> String {
        // every field is a plain table or value: serialisation cannot fail
        toml::to_string_pretty(self).unwrap_or_default()
    }

    /// The training part, as the trainer takes it.
    pub fn train_job(&self) -> TrainJob {
        TrainJob {
            dataset: self.dataset.clone(),
            encoder: self.encoder.clone(),
            objective: self.objective.clone(),
            train: self.train.clone(),
        }
    }

    /// The storage root the run is committed under.
    pub fn output_root(&self) -> &str {
        if self.output.trim().is_empty() {
            &self.dataset.root
        } else {
            &self.output
        }
    }

    /// Checks every table; the error names the field (`kmeans.k`, `train.batch_size`).
    pub fn validate(&self) -> Result<()> {
        if self.name.trim().is_empty() {
            return Err(Error::field("name", "a job needs a name"));
        }
        if !self
            .name
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '-' | '_' | '.'))
        {
            return Err(Error::field(
                "name",
                format!(
                    "{:?}: use letters, digits, '-', '_' and '.' (it names a storage path)",
                    self.name
                ),
            ));
        }
        self.train_job().validate().map_err(|e| match e {
            seqclust_trainer::Error::Config { field, message } => Error::field(field, message),
            seqclust_trainer::Error::Model(seqclust_model::Error::Config { field, message }) => {
                Error::field(field, message)
            }
            other => Error::field("train", other.to_string()),
        })?;
        self.kmeans.validate().map_err(|e| match e {
            seqclust_kmeans::Error::Config { field, message } => {
                Error::field(format!("kmeans.{field}"), message)
            }
            other => Error::field("kmeans", other.to_string()),
        })?;
        if self.kmeans.k < 2 {
            return Err(Error::field("kmeans.k", "must be at least 2"));
        }
        for r in [self.analysis.validate(), self.recommend.validate()] {
            r.map_err(|e| match e {
                seqclust_analysis::Error::Config { field, message } => Error::field(field, message),
                other => Error::field("analysis", other.to_string()),
            })?;
        }
        if let Some(sd) = &self.sample_data
            && sd.users < 100
        {
            return Err(Error::field("sample_data.users", "must be at least 100"));
        }
        if self.resources.min_workers == 0 {
            return Err(Error::field("resources.min_workers", "must be at least 1"));
        }
        if self.resources.max_workers != 0
            && self.resources.max_workers < self.resources.min_workers
        {
            return Err(Error::field(
                "resources.max_workers",
                format!(
                    "{} is below resources.min_workers {}",
                    self.resources.max_workers, self.resources.min_workers
                ),
            ));
        }
        if self.train.batch_size < 2 * self.resources.min_workers {
            return Err(Error::field(
                "train.batch_size",
                format!(
                    "the global batch {} cannot be split over {} workers (at least 2 sequences each)",
                    self.train.batch_size, self.resources.min_workers
                ),
            ));
        }
        Ok(())
    }
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    fn minimal() -> JobSpec {
        JobSpec::from_toml_str("name = \"j\"\n[dataset]\nuri = \"personas\"\n").unwrap()
    }

    #[test]
    fn defaults_validate_and_round_trip() {
        let s = minimal();
        s.validate().unwrap();
        assert_eq!(s.kmeans.algorithm, Algorithm::MiniBatch);
        let back = JobSpec::from_toml_str(&s.to_toml()).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn errors_name_the_field() {
        let mut s = minimal();
        s.kmeans.k = 0;
        assert_eq!(s.validate().unwrap_err().field_name(), Some("kmeans.k"));
        let mut s = minimal();
        s.train.batch_size = 1;
        assert_eq!(
            s.validate().unwrap_err().field_name(),
            Some("train.batch_size")
        );
        let mut s = minimal();
        s.encoder.heads = 3;
        assert_eq!(
            s.validate().unwrap_err().field_name(),
            Some("encoder.heads")
        );
        let mut s = minimal();
        s.name = "a/b".into();
        assert_eq!(s.validate().unwrap_err().field_name(), Some("name"));
        let mut s = minimal();
        s.dataset.uri.clear();
        assert_eq!(s.validate().unwrap_err().field_name(), Some("dataset.uri"));
        let mut s = minimal();
        s.resources.min_workers = 3;
        s.resources.max_workers = 2;
        assert_eq!(
            s.validate().unwrap_err().field_name(),
            Some("resources.max_workers")
        );
    }

    #[test]
    fn every_example_job_loads_and_validates() {
        let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
        let mut seen = 0;
        for e in std::fs::read_dir(&dir).unwrap() {
            let p = e.unwrap().path();
            let name = p.file_name().unwrap().to_string_lossy().to_string();
            if name.starts_with("job-") && name.ends_with(".toml") {
                let s = JobSpec::from_file(&p).unwrap();
                s.validate().unwrap_or_else(|e| panic!("{name}: {e}"));
                seen += 1;
            }
        }
        assert!(seen >= 1, "no examples/job-*.toml");
    }

    #[test]
    fn unknown_keys_are_refused_with_their_name() {
        let e = JobSpec::from_toml_str("name = \"j\"\n[train]\nbatchsize = 3\n").unwrap_err();
        assert!(e.to_string().contains("batchsize"), "{e}");
        assert!(e.to_string().contains("line 3"), "{e}");
    }
}
