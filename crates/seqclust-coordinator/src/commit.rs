//! COMMIT: the coordinator writes the centroids, the k-means report and the job spec next to
//! what the workers wrote (model, metrics, assignment shards), then `_MANIFEST.json` —
//! every file with its size and sha256 — with a create-only put, and last the
//! `latest/<name>` pointer. A run without a manifest is not a result.

use bytes::Bytes;
use serde_json::json;

use seqclust_data::Location;
use seqclust_data::store::sha256_hex;

use crate::clustering::Clusters;
use crate::driver::Driver;
use crate::error::{Error, Result};
use crate::state::now_ms;

/// The manifest's file name.
pub const MANIFEST: &str = "_MANIFEST.json";

pub(crate) async fn commit(job: &mut Driver, c: &Clusters) -> Result<String> {
    let run = Location::parse(&job.rec.run_uri, true)?;
    let summary = format!(
        "{} clusters over {} users on {} workers; run {}",
        c.k, c.users, c.world_size, job.rec.run_uri
    );
    if run.exists(MANIFEST).await? {
        return Ok(summary);
    }
    let centroids = centroids_safetensors(c)?;
    run.put("clusters/centroids.safetensors", Bytes::from(centroids))
        .await?;
    let report = json!({
        "config": job.rec.spec.kmeans,
        "result": c,
    });
    run.put("clusters/kmeans.json", json_bytes(&report)?)
        .await?;
    run.put("job.toml", Bytes::from(job.rec.spec.to_toml()))
        .await?;

    let mut files = Vec::new();
    for (path, size) in run.list_files("").await? {
        if path == MANIFEST || path.starts_with("checkpoints/") {
            continue;
        }
        let bytes = run.get(&path).await?;
        files.push(json!({ "path": path, "size": size, "sha256": sha256_hex(&bytes) }));
    }
    let manifest = json!({
        "format": "seqclust-run/1",
        "job_id": job.rec.id,
        "name": job.rec.spec.name,
        "created_unix_ms": job.rec.created_unix_ms,
        "committed_unix_ms": now_ms(),
        "code_version": env!("CARGO_PKG_VERSION"),
        "dataset": job.rec.spec.dataset.uri,
        "world_size": c.world_size,
        "membership_epochs": job.rec.membership_epoch,
        "train": job.train_summary,
        "kmeans": {
            "k": c.k, "users": c.users, "iterations": c.iterations, "inertia": c.inertia,
            "converged": c.converged, "empty": c.empty,
        },
        "phase_times": job.rec.phase_times,
        "config": job.rec.spec,
        "files": files,
    });
    if !run.put_if_absent(MANIFEST, json_bytes(&manifest)?).await? {
        // another coordinator committed the same run first
        return Ok(summary);
    }
    let root = Location::parse(job.rec.spec.output_root(), true)?;
    root.put(
        &format!("latest/{}", job.rec.spec.name),
        Bytes::from(job.rec.id.clone()),
    )
    .await?;
    Ok(summary)
}

fn json_bytes(v: &serde_json::Value) -> Result<Bytes> {
    serde_json::to_vec_pretty(v)
        .map(Bytes::from)
        .map_err(|e| Error::Corrupt {
            key: "run report".into(),
            message: e.to_string(),
        })
}

fn centroids_safetensors(c: &Clusters) -> Result<Vec<u8>> {
    let bytes = seqclust_proto::f32_bytes(&c.centroids);
    let view =
        safetensors::tensor::TensorView::new(safetensors::Dtype::F32, vec![c.k, c.d], &bytes)
            .map_err(|e| Error::Corrupt {
                key: "centroids".into(),
                message: e.to_string(),
            })?;
    safetensors::serialize([("centroids", view)], None).map_err(|e| Error::Corrupt {
        key: "centroids".into(),
        message: e.to_string(),
    })
}
