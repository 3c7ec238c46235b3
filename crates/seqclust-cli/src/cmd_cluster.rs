//! `seqclust cluster`: k-means (or Ward / spectral) over an embeddings file.

use std::path::PathBuf;

use anyhow::{Context, Result, bail};
use clap::Args;
use comfy_table::Table;
use comfy_table::presets::UTF8_FULL_CONDENSED;
use seqclust_data::embeddings::{
    AssignmentColumns, read_embeddings, read_labels, write_assignments, write_npy_f32,
};
use seqclust_kmeans::{
    Algorithm, Assignment, Centroids, Init, KMeansConfig, Metric, Packed, Points,
    adjusted_rand_index, assign, choose_k, match_ids, normalized_mutual_info, purity, quality,
    ward,
};
use serde_json::json;

/// Cluster an embeddings file (.npy, Parquet, or the peers' PEERRAW1 .f32).
#[derive(Debug, Args)]
pub struct ClusterArgs {
    /// Embeddings file.
    input: PathBuf,
    /// Output directory for centroids.npy, assignments.parquet and model.json.
    #[arg(long, short)]
    out: PathBuf,
    /// Number of clusters (with --choose-k: the default when no k qualifies).
    #[arg(long, short, default_value_t = 8)]
    k: usize,
    /// kmeans, minibatch, ward (on a sample, then nearest centroid) or spectral (n ≤ 2000).
    #[arg(long, default_value = "kmeans", value_parser = ["kmeans", "minibatch", "ward", "spectral"])]
    algorithm: String,
    /// Initialisation: kmeans-parallel (k-means||), kmeans++ or random.
    #[arg(long, default_value = "kmeans-parallel", value_parser = ["kmeans-parallel", "kmeans++", "random"])]
    init: String,
    /// l2 or cosine.
    #[arg(long, default_value = "l2", value_parser = ["l2", "cosine"])]
    metric: String,
    /// Lloyd iterations at most.
    #[arg(long, default_value_t = 50)]
    max_iter: usize,
    /// Convergence tolerance on the centroid shift (relative to the data variance).
    #[arg(long, default_value_t = 1e-4)]
    tol: f64,
    /// Mini-batch size.
    #[arg(long, default_value_t = 4096)]
    batch_size: usize,
    /// Mini-batch epochs at most.
    #[arg(long, default_value_t = 10.0)]
    epochs: f64,
    /// Train on at most k × this many points (0: all).
    #[arg(long, default_value_t = 0)]
    max_points_per_centroid: usize,
    /// Seed.
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Threads (default: all cores).
    #[arg(long)]
    threads: Option<usize>,
    /// Parquet column holding the vectors (default: the first list-of-float column).
    #[arg(long)]
    column: Option<String>,
    /// True labels (.npy, PEERRAW1 .u32, or a truth CSV) to report ARI, NMI and purity.
    #[arg(long)]
    labels: Option<PathBuf>,
    /// Try these k (`2:20:2` or `5,10,20`) and use the chosen one.
    #[arg(long)]
    choose_k: Option<String>,
    /// Seeds per k for the stability estimate of --choose-k.
    #[arg(long, default_value_t = 3)]
    choose_k_seeds: usize,
    /// Points --choose-k looks at (a uniform sample).
    #[arg(long, default_value_t = 50_000)]
    choose_k_sample: usize,
    /// A previous run's centroids.npy: clusters keep the ids of their matches. When that
    /// run's assignments.parquet is beside it, the share of users (or rows) whose cluster
    /// changed is reported as the moved mass.
    #[arg(long)]
    previous: Option<PathBuf>,
    /// Also build a Ward hierarchy over the centroids (weighted by cluster size).
    #[arg(long)]
    hierarchy: bool,
    /// Print model.json instead of the summary.
    #[arg(long)]
    json: bool,
}

fn parse_ks(s: &str) -> Result<Vec<usize>> {
    if let Some((a, rest)) = s.split_once(':') {
        let (b, step) = rest.split_once(':').unwrap_or((rest, "1"));
        let (a, b, step): (usize, usize, usize) =
            (a.trim().parse()?, b.trim().parse()?, step.trim().parse()?);
        if step == 0 || a > b || a == 0 {
            bail!("--choose-k {s:?}: expected FROM:TO[:STEP] with 1 <= FROM <= TO and STEP >= 1");
        }
        return Ok((a..=b).step_by(step).collect());
    }
    s.split(',')
        .map(|v| {
            v.trim()
                .parse::<usize>()
                .with_context(|| format!("--choose-k {s:?}"))
        })
        .collect()
}

fn centroids_of(points: &Points<'_>, labels: &[u32], k: usize) -> Result<Centroids> {
    let d = points.d();
    let mut sums = vec![0f64; k * d];
    let mut counts = vec![0usize; k];
    for (i, &l) in labels.iter().enumerate() {
        counts[l as usize] += 1;
        for (j, v) in points.row(i).iter().enumerate() {
            sums[l as usize * d + j] += f64::from(*v);
        }
    }
    let data = (0..k * d)
        .map(|i| (sums[i] / counts[i / d].max(1) as f64) as f32)
        .collect();
    Ok(Centroids::new(data, d)?)
}

pub fn run(a: ClusterArgs) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads.unwrap_or(0))
        .build()?;
    pool.install(|| run_in_pool(a))
}

fn run_in_pool(a: ClusterArgs) -> Result<()> {
    let t0 = std::time::Instant::now();
    let emb = read_embeddings(&a.input, a.column.as_deref(), false)?;
    let points =
        Points::new(&emb.data, emb.d.max(1)).with_context(|| format!("{}", a.input.display()))?;
    let metric = if a.metric == "cosine" {
        Metric::Cosine
    } else {
        Metric::L2
    };
    let init = match a.init.as_str() {
        "random" => Init::Random,
        "kmeans++" => Init::KMeansPlusPlus,
        _ => Init::default(),
    };
    let mut cfg = KMeansConfig {
        k: a.k,
        metric,
        init,
        algorithm: if a.algorithm == "minibatch" {
            Algorithm::MiniBatch
        } else {
            Algorithm::Lloyd
        },
        max_iter: a.max_iter,
        tol: a.tol,
        batch_size: a.batch_size,
        epochs: a.epochs,
        max_points_per_centroid: a.max_points_per_centroid,
        seed: a.seed,
        ..KMeansConfig::default()
    };
    let mut report = json!({"input": a.input.display().to_string(), "n": points.n(), "d": points.d(), "isa": format!("{:?}", seqclust_kmeans::Isa::detect())});
    if let Some(spec) = &a.choose_k {
        let ks = parse_ks(spec)?;
        let sample_owned;
        let sample = if points.n() > a.choose_k_sample {
            let step = points.n() as f64 / a.choose_k_sample as f64;
            sample_owned = (0..a.choose_k_sample)
                .flat_map(|i| points.row((i as f64 * step) as usize).to_vec())
                .collect::<Vec<f32>>();
            Points::new(&sample_owned, points.d())?
        } else {
            points
        };
        let choice = choose_k(&sample, &ks, &cfg, a.choose_k_seeds, 0.8)?;
        cfg.k = choice.chosen;
        report["choose_k"] = serde_json::to_value(&choice)?;
    }
    let (centroids, history) = match a.algorithm.as_str() {
        "spectral" => {
            let labels = seqclust_kmeans::spectral(&points, cfg.k, None, cfg.seed)?;
            (centroids_of(&points, &labels, cfg.k)?, json!(null))
        }
        "ward" => {
            let m = points.n().min(10_000);
            let step = points.n() as f64 / m as f64;
            let rows: Vec<usize> = (0..m).map(|i| (i as f64 * step) as usize).collect();
            let sample = Centroids::from_rows(&points, &rows);
            let tree = ward(&sample.as_points(), &vec![1.0; m])?;
            let labels = tree.cut(cfg.k)?;
            (
                centroids_of(&sample.as_points(), &labels, cfg.k)?,
                json!({"sample": m}),
            )
        }
        _ => {
            let model = seqclust_kmeans::fit(&points, &cfg)?;
            let h = json!({
                "iterations": model.iterations, "converged": model.converged, "passes": model.passes,
                "init_seconds": model.init_seconds, "fit_seconds": model.fit_seconds,
                "reseeded": model.reseeded, "empty": model.empty, "history": model.history,
            });
            (model.centroids, h)
        }
    };
    let packed = Packed::new(&centroids, metric);
    let asg: Vec<Assignment> = assign(&points, &packed);
    let q = quality(&points, &centroids, &asg, metric, cfg.seed);
    report["config"] = serde_json::to_value(&cfg)?;
    report["algorithm"] = json!(a.algorithm);
    report["fit"] = history;
    report["quality"] = serde_json::to_value(&q)?;
    // stable ids
    let mut ids: Vec<u32> = (0..centroids.k() as u32).collect();
    if let Some(prev) = &a.previous {
        let p = read_embeddings(prev, None, false)?;
        let pc = Centroids::new(p.data, p.d.max(1))?;
        let m = match_ids(&pc, &centroids)?;
        ids = m.ids.clone();
        report["stable_ids"] = serde_json::to_value(&m)?;
    }
    let labels: Vec<u32> = asg.iter().map(|x| ids[x.cluster as usize]).collect();
    if let Some(prev) = &a.previous {
        let prev_asg = prev.with_file_name("assignments.parquet");
        if prev_asg.exists() {
            let (prev_ids, prev_labels) = seqclust_data::embeddings::read_assignments(&prev_asg)?;
            let current_ids: Vec<String> = match &emb.ids {
                Some(ids) => ids.clone(),
                None => (0..labels.len()).map(|i| i.to_string()).collect(),
            };
            let index: std::collections::HashMap<&str, u32> = prev_ids
                .iter()
                .map(String::as_str)
                .zip(prev_labels.iter().copied())
                .collect();
            let (mut both, mut moved) = (0usize, 0usize);
            for (id, &l) in current_ids.iter().zip(&labels) {
                if let Some(&p) = index.get(id.as_str()) {
                    both += 1;
                    moved += usize::from(p != l);
                }
            }
            report["stable_ids"]["moved_mass"] = json!(if both == 0 {
                0.0
            } else {
                moved as f64 / both as f64
            });
            report["stable_ids"]["compared"] = json!(both);
        }
    }
    if let Some(lp) = &a.labels {
        // a truth CSV names its users: join on them when the vectors have ids
        let truth = match &emb.ids {
            Some(ids) if seqclust_data::embeddings::labels_are_csv(lp)? => {
                seqclust_data::embeddings::labels_for(lp, ids)?
            }
            _ => read_labels(lp)?,
        };
        if truth.len() != labels.len() {
            bail!(
                "{}: {} labels for {} points",
                lp.display(),
                truth.len(),
                labels.len()
            );
        }
        let pred: Vec<u64> = labels.iter().map(|&l| u64::from(l)).collect();
        report["against_labels"] = json!({
            "ari": adjusted_rand_index(&truth, &pred), "nmi": normalized_mutual_info(&truth, &pred), "purity": purity(&pred, &truth),
        });
    }
    if a.hierarchy {
        let mut sizes = vec![0f64; centroids.k()];
        for x in &asg {
            sizes[x.cluster as usize] += 1.0;
        }
        let keep: Vec<usize> = (0..centroids.k()).filter(|&c| sizes[c] > 0.0).collect();
        let sub = Centroids::from_rows(&centroids.as_points(), &keep);
        let w: Vec<f64> = keep.iter().map(|&c| sizes[c]).collect();
        let tree = ward(&sub.as_points(), &w)?;
        report["hierarchy"] = json!({"leaves_cluster_ids": keep.iter().map(|&c| ids[c]).collect::<Vec<_>>(), "merges": tree.merges});
    }
    // outputs
    std::fs::create_dir_all(&a.out).with_context(|| format!("creating {}", a.out.display()))?;
    // rows of centroids.npy are in stable-id order when ids were remapped and contiguous
    let mut order: Vec<usize> = (0..centroids.k()).collect();
    order.sort_by_key(|&c| ids[c]);
    let ordered = Centroids::from_rows(&centroids.as_points(), &order);
    write_npy_f32(
        &a.out.join("centroids.npy"),
        ordered.as_slice(),
        ordered.k(),
        ordered.d(),
    )?;
    report["centroid_ids"] = json!(order.iter().map(|&c| ids[c]).collect::<Vec<_>>());
    write_assignments(
        &a.out.join("assignments.parquet"),
        &AssignmentColumns {
            ids: emb.ids.clone(),
            cluster: labels.clone(),
            distance: asg.iter().map(|x| x.distance).collect(),
            runner_up: asg
                .iter()
                .map(|x| (x.runner_up != u32::MAX).then(|| ids[x.runner_up as usize]))
                .collect(),
            runner_up_distance: asg.iter().map(|x| x.runner_up_distance).collect(),
        },
    )?;
    report["seconds"] = json!(t0.elapsed().as_secs_f64());
    std::fs::write(
        a.out.join("model.json"),
        serde_json::to_vec_pretty(&report)?,
    )?;
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED);
    t.set_header(vec![
        "clustering",
        &format!("{} (k = {})", a.algorithm, centroids.k()),
    ]);
    let rows = [
        ("points × dim", format!("{} × {}", points.n(), points.d())),
        ("non-empty clusters", q.non_empty.to_string()),
        ("inertia / point", format!("{:.4}", q.inertia_per_point)),
        (
            "silhouette",
            format!("{:.4} (on {} points)", q.silhouette, q.silhouette_points),
        ),
        ("Davies–Bouldin", format!("{:.4}", q.davies_bouldin)),
        ("Calinski–Harabasz", format!("{:.1}", q.calinski_harabasz)),
        (
            "largest / mean size",
            format!("{:.2} (cv {:.2})", q.size_max_over_mean, q.size_cv),
        ),
    ];
    for (k, v) in rows {
        t.add_row(vec![k.to_string(), v]);
    }
    if let Some(l) = report.get("against_labels") {
        t.add_row(vec![
            "ARI / NMI / purity".to_string(),
            format!(
                "{:.4} / {:.4} / {:.4}",
                l["ari"].as_f64().unwrap_or(0.0),
                l["nmi"].as_f64().unwrap_or(0.0),
                l["purity"].as_f64().unwrap_or(0.0)
            ),
        ]);
    }
    if let Some(c) = report.get("choose_k") {
        t.add_row(vec![
            "choose k".to_string(),
            format!(
                "chosen {} (elbow {}, best silhouette {})",
                c["chosen"], c["elbow"], c["best_silhouette"]
            ),
        ]);
    }
    t.add_row(vec![
        "time".to_string(),
        format!("{:.2} s", t0.elapsed().as_secs_f64()),
    ]);
    println!("{t}");
    println!(
        "wrote {}/{{centroids.npy, assignments.parquet, model.json}}",
        a.out.display()
    );
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn k_ranges() {
        assert_eq!(parse_ks("2:8:2").unwrap(), vec![2, 4, 6, 8]);
        assert_eq!(parse_ks("3:5").unwrap(), vec![3, 4, 5]);
        assert_eq!(parse_ks("5, 10,20").unwrap(), vec![5, 10, 20]);
        assert!(parse_ks("5:2").is_err());
        assert!(parse_ks("x").is_err());
    }
}
