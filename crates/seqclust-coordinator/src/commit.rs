//! COMMIT: the coordinator stages the centroids, the k-means report, the job spec, the item
//! vocabulary and the analysis next to what the workers wrote (model, metrics, assignment
//! shards), then [`seqclust_artifacts::Commit::finish`] writes `_MANIFEST.json` (create-only)
//! and moves `latest/<name>`. A run without a manifest is not a result.

use bytes::Bytes;
use serde_json::json;

use seqclust_artifacts::tensors::{CENTROIDS, Centroids};
use seqclust_artifacts::{Commit, RunInfo};
use seqclust_data::Location;

use crate::clustering::Clusters;
use crate::driver::Driver;
use crate::error::{Error, Result};

/// The action names by id, for serving.
pub const ACTIONS: &str = "model/vocab/actions.json";

/// What the ANALYZE phase adds to a run, staged before the manifest.
pub(crate) type Staged = Vec<(String, Bytes)>;

pub(crate) async fn commit(job: &mut Driver, c: &Clusters, analysis: Staged) -> Result<String> {
    let root = Location::parse(job.rec.spec.output_root(), true)?;
    let commit = Commit::new(&root, &job.rec.id);
    let ds = seqclust_trainer::open_dataset(&job.rec.spec.train_job())
        .await
        .map_err(|e| Error::Phase {
            phase: seqclust_job::Phase::Commit,
            message: format!("reopening the dataset: {e}"),
        })?;
    if commit.committed().await?.is_none() {
        let centroids = Centroids {
            k: c.k,
            d: c.d,
            values: c.centroids.clone(),
        };
        commit
            .put(CENTROIDS, Bytes::from(centroids.to_safetensors()?))
            .await?;
        let report = json!({ "config": job.rec.spec.kmeans, "result": c });
        commit
            .put("clusters/kmeans.json", json_bytes(&report)?)
            .await?;
        commit
            .put("job.toml", Bytes::from(job.rec.spec.to_toml()))
            .await?;
        for vocab in ["items", "categories"] {
            let rel = format!("vocab/{vocab}.parquet");
            if ds.manifest().file(&rel).is_some() {
                let bytes = ds.read_verified(&rel).await?;
                commit.put(&format!("model/{rel}"), bytes).await?;
            }
        }
        commit
            .put(
                ACTIONS,
                json_bytes(&json!({ "actions": ds.manifest().vocab.actions }))?,
            )
            .await?;
        for (rel, bytes) in analysis {
            commit.put(&rel, bytes).await?;
        }
    }
    let info = RunInfo {
        job_id: job.rec.id.clone(),
        name: job.rec.spec.name.clone(),
        created_unix_ms: job.rec.created_unix_ms,
        dataset: job.rec.spec.dataset.uri.clone(),
        dataset_version: Some(ds.manifest().version.clone()),
        world_size: c.world_size as u32,
        config: serde_json::to_value(&job.rec.spec).map_err(|e| Error::Corrupt {
            key: "job spec".into(),
            message: e.to_string(),
        })?,
        summary: summary(job, c),
    };
    let done = commit.finish(info).await?;
    Ok(format!(
        "{} clusters over {} users on {} workers; run {}{}",
        c.k,
        c.users,
        c.world_size,
        job.rec.run_uri,
        if done.latest {
            ""
        } else {
            " (latest/ names a newer run)"
        }
    ))
}

fn summary(job: &Driver, c: &Clusters) -> serde_json::Map<String, serde_json::Value> {
    let mut m = serde_json::Map::new();
    m.insert("membership_epochs".into(), json!(job.rec.membership_epoch));
    m.insert("train".into(), job.train_summary.clone());
    m.insert(
        "kmeans".into(),
        json!({
            "k": c.k, "users": c.users, "iterations": c.iterations, "inertia": c.inertia,
            "converged": c.converged, "empty": c.empty, "sizes": c.sizes,
        }),
    );
    if !job.analysis_summary.is_null() {
        m.insert("analysis".into(), job.analysis_summary.clone());
    }
    m.insert("phase_times".into(), json!(job.rec.phase_times));
    m
}

pub(crate) fn json_bytes(v: &serde_json::Value) -> Result<Bytes> {
    serde_json::to_vec_pretty(v)
        .map(Bytes::from)
        .map_err(|e| Error::Corrupt {
            key: "run report".into(),
            message: e.to_string(),
        })
}
