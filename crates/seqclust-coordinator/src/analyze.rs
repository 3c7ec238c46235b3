//! ANALYZE: the coordinator reads the dataset, the assignment shards and the trained model
//! from storage and runs [`seqclust_analysis::analyze`] (profiles, surrogate tree,
//! recommendations, report). What it produces is staged by the commit. With
//! `analysis.pseudonymize`, the assignment shards are rewritten with keyed-hash user ids.

use std::collections::HashMap;

use bytes::Bytes;
use seqclust_analysis::{Pseudonym, RunData};
use seqclust_data::Location;
use seqclust_data::embeddings::parse_assignments;
use seqclust_data::event::TimeKind;
use seqclust_job::Phase;

use crate::clustering::Clusters;
use crate::commit::Staged;
use crate::driver::Driver;
use crate::error::{Error, Result};

pub(crate) async fn run(job: &mut Driver, c: &Clusters) -> Result<Staged> {
    let spec = job.rec.spec.clone();
    if !spec.analysis.enabled {
        return Ok(Vec::new());
    }
    let failed = |message: String| Error::Phase {
        phase: Phase::Analyze,
        message,
    };
    let pseudonym = Pseudonym::from_config(&spec.analysis)?;
    let run = Location::parse(&job.rec.run_uri, true)?;
    let ds = seqclust_trainer::open_dataset(&spec.train_job())
        .await
        .map_err(|e| failed(format!("opening the dataset: {e}")))?;
    job.progress(0.05, "reading the dataset".into()).await?;
    let mut batches = Vec::with_capacity(ds.num_shards());
    for i in 0..ds.num_shards() {
        batches.push(ds.read_shard(i).await?);
    }
    let items = ds.item_vocab().await?;
    let categories = ds.category_vocab().await?;
    let mut assignments = HashMap::new();
    let mut staged: Staged = Vec::new();
    for f in &c.assignment_files {
        let bytes = run.get(f).await?;
        let a = parse_assignments(bytes.clone(), &run.display_of(f))?;
        let dist = |i: usize| a.distances.get(i).copied().unwrap_or(0.0);
        for (i, (u, &cl)) in a.ids.iter().zip(&a.clusters).enumerate() {
            assignments.insert(u.clone(), (cl, dist(i)));
        }
        if pseudonym.is_keyed() {
            let hashed =
                seqclust_analysis::pseudonymize_assignments(bytes, &run.display_of(f), &pseudonym)?;
            staged.push((f.clone(), Bytes::from(hashed)));
        }
    }
    let (model, _) = seqclust_trainer::load_model(&run)
        .await
        .map_err(|e| failed(format!("loading the model: {e}")))?;
    let loss = match run.get("metrics.json").await {
        Ok(b) => serde_json::from_slice::<serde_json::Value>(&b)
            .ok()
            .and_then(|m| {
                m["steps"].as_array().map(|steps| {
                    steps
                        .iter()
                        .filter_map(|s| Some((s["step"].as_f64()?, s["loss"].as_f64()?)))
                        .collect()
                })
            })
            .unwrap_or_default(),
        Err(_) => Vec::new(),
    };
    let inertia: Vec<(f64, f64)> = c
        .history
        .iter()
        .map(|h| (h.iter as f64, h.inertia_per_point))
        .collect();
    job.progress(0.2, "profiling clusters and recommending".into())
        .await?;
    let manifest = ds.manifest().clone();
    let (run_id, name) = (job.rec.id.clone(), spec.name.clone());
    let centroids = c.centroids.clone();
    let (k, metric) = (c.k, c.metric);
    let summary = vec![
        (
            "dataset".to_string(),
            format!("{} ({})", spec.dataset.uri, manifest.version),
        ),
        ("users".to_string(), c.users.to_string()),
        (
            "clusters".to_string(),
            format!("{k} ({metric:?}, {:?})", c.algorithm),
        ),
        ("workers".to_string(), c.world_size.to_string()),
    ];
    let analysis = tokio::task::spawn_blocking(move || {
        seqclust_analysis::analyze(&RunData {
            run_id: &run_id,
            name: &name,
            batches: &batches,
            assignments: &assignments,
            model: &model,
            centroids: &centroids,
            k,
            metric,
            items: &items,
            categories: &categories,
            actions: &manifest.vocab.actions,
            absolute_time: manifest.time_kind == TimeKind::Absolute,
            loss,
            inertia,
            analysis: &spec.analysis,
            recommend: &spec.recommend,
            pseudonym: &pseudonym,
            summary,
        })
    })
    .await
    .map_err(|e| failed(format!("the analysis panicked: {e}")))??;
    job.analysis_summary = analysis.summary;
    staged.extend(
        analysis
            .files
            .into_iter()
            .map(|(rel, bytes)| (rel, Bytes::from(bytes))),
    );
    Ok(staged)
}
