//! `seqclust bench kmeans`: the configurations of `../shared/peers/kmeans_peers.py` on the same
//! data file, with results in the peers' JSON schema (`script: kmeans_rust`).

use std::path::{Path, PathBuf};
use std::time::Instant;

use anyhow::{Context, Result};
use clap::Args;
use seqclust_data::embeddings::{read_embeddings, read_labels};
use seqclust_kmeans::{
    Algorithm, Centroids, Init, KMeansConfig, Metric, Packed, Points, adjusted_rand_index,
    assign_into, normalized_mutual_info,
};
use serde_json::json;

use super::measure::{Probe, emit};

/// k-means speed and quality on the peers' Gaussian-mixture file.
#[derive(Debug, Args)]
pub struct KMeansBench {
    /// The 50k-point file and fewer configurations; finishes in seconds.
    #[arg(long)]
    quick: bool,
    /// Where `embdata.py` wrote its files (`python3 ../shared/peers/embdata.py`).
    #[arg(long, default_value = "/tmp/seqclust-peers-data")]
    data_dir: PathBuf,
    /// Threads.
    #[arg(long, default_value_t = 2)]
    threads: usize,
    /// Rounds (each a full set of configurations, tagged round1, round2, …).
    #[arg(long, default_value_t = 1)]
    rounds: usize,
    /// Only these configurations (comma-separated): assign100, assign1000, lloyd100,
    /// lloyd100_par, lloyd1000, minibatch2, minibatch20, merge10k (the coordinator merging
    /// k = 10,000 × d = 128 partials from 8 workers), merge10k_grpc (the same step through the
    /// coordinator over loopback gRPC).
    #[arg(long)]
    only: Option<String>,
    /// Also append the JSON lines to this file.
    #[arg(long)]
    out: Option<PathBuf>,
    /// Number of the first round's tag (to interleave with peer runs: --rounds 1
    /// --first-round 2 tags round2).
    #[arg(long, default_value_t = 1)]
    first_round: usize,
    /// Initialisation seed (the peers use 1234).
    #[arg(long, default_value_t = 1234)]
    seed: u64,
}

struct Data {
    x: Vec<f32>,
    labels: Vec<u64>,
    n: usize,
    d: usize,
    source: String,
}

/// The peers' file when it exists (`python3 ../shared/peers/embdata.py [--n 50000]`), else a
/// mixture drawn with the same recipe.
fn load(dir: &Path, n: usize) -> Result<Data> {
    let stem = dir.join(format!("gmm_n{n}_d64_c100_s42"));
    let f32_path = stem.with_extension("f32");
    let lab_path = PathBuf::from(format!("{}.labels.u32", stem.display()));
    if !f32_path.exists() {
        eprintln!(
            "{} not found: using seqclust's own mixture with the same recipe (python3 ../shared/peers/embdata.py{} writes the peers' file)",
            f32_path.display(),
            if n == 50_000 { " --n 50000" } else { "" }
        );
        let (x, labels) = seqclust_data::embeddings::gaussian_mixture(n, 64, 100, 42);
        return Ok(Data {
            n,
            d: 64,
            x,
            labels,
            source: "seqclust gaussian_mixture, embdata.py recipe, seed 42".into(),
        });
    }
    let e = read_embeddings(&f32_path, None, false)
        .with_context(|| format!("reading {}", f32_path.display()))?;
    let labels = read_labels(&lab_path)?;
    Ok(Data {
        n: e.n,
        d: e.d,
        x: e.data,
        labels,
        source: f32_path.display().to_string(),
    })
}

/// Inertia per point, ARI and NMI of all points against the final centroids, as the peers
/// compute them (exact 1-NN of all n points).
fn evaluate(data: &Data, centroids: &Centroids) -> Result<(f64, f64, f64)> {
    let pts = Points::new(&data.x, data.d)?;
    let mut asg = vec![Default::default(); data.n];
    assign_into(&pts, &Packed::new(centroids, Metric::L2), &mut asg);
    let inertia: f64 = asg.iter().map(|a| f64::from(a.distance)).sum::<f64>() / data.n as f64;
    let pred: Vec<u64> = asg.iter().map(|a| u64::from(a.cluster)).collect();
    Ok((
        inertia,
        adjusted_rand_index(&data.labels, &pred),
        normalized_mutual_info(&data.labels, &pred),
    ))
}

pub fn run(a: KMeansBench) -> Result<()> {
    let pool = rayon::ThreadPoolBuilder::new()
        .num_threads(a.threads)
        .build()?;
    pool.install(|| run_in_pool(&a))
}

fn run_in_pool(a: &KMeansBench) -> Result<()> {
    let wanted = |name: &str| {
        a.only
            .as_deref()
            .is_none_or(|o| o.split(',').any(|x| x.trim() == name))
    };
    if wanted("merge10k") || wanted("merge10k_grpc") {
        for round in a.first_round..a.first_round + a.rounds {
            let tag = format!("round{round}");
            if wanted("merge10k") {
                super::merge::run(10_000, 128, 8, &tag, a.out.as_deref())?;
            }
            if wanted("merge10k_grpc") {
                super::merge::run_grpc(10_000, 128, 8, &tag, a.out.as_deref())?;
            }
        }
        if a.only
            .as_deref()
            .is_some_and(|o| o.split(',').all(|x| x.trim().starts_with("merge")))
        {
            return Ok(());
        }
    }
    let n = if a.quick { 50_000 } else { 1_000_000 };
    let data = load(&a.data_dir, n)?;
    let pts = Points::new(&data.x, data.d)?;
    let isa = format!("{:?}", seqclust_kmeans::Isa::detect()).to_lowercase();
    let args = json!({"n": data.n, "d": data.d, "centres": 100, "seed": 42, "threads": a.threads, "data": data.source});
    for round in a.first_round..a.first_round + a.rounds {
        let tag = format!("round{round}");
        // the kernel alone: one assignment pass over all points
        for k in [100usize, 1000] {
            if !wanted(&format!("assign{k}")) {
                continue;
            }
            let c = seqclust_kmeans::init::random(&pts, k, 1234);
            let packed = Packed::new(&c, Metric::L2);
            let mut asg = vec![Default::default(); data.n];
            let mut times = Vec::new();
            let probe = Probe::start();
            for _ in 0..5 {
                let t = Instant::now();
                assign_into(&pts, &packed, &mut asg);
                times.push(t.elapsed().as_secs_f64());
            }
            times.sort_by(f64::total_cmp);
            let per = times[2];
            let gflops = 2.0 * (data.n * k * data.d) as f64 / per / 1e9;
            emit(
                json!({"script": "kmeans_rust", "tag": tag, "args": args, "results": [{
                    "impl": "seqclust assign kernel", "k": k, "n_train": data.n, "passes": 1, "fit_s": per,
                    "per_iter_s": per, "assign_gflops": gflops, "inertia_per_point": null, "ari": null, "nmi": null,
                    "params": {"kernel": isa, "reps": 5, "stat": "median"}, "load": probe.finish(),
                }]}),
                a.out.as_deref(),
            )?;
        }
        let configs: Vec<(&str, usize, Algorithm, Init, f64)> = vec![
            ("lloyd100", 100, Algorithm::Lloyd, Init::Random, 20.0),
            ("lloyd100_par", 100, Algorithm::Lloyd, Init::default(), 20.0),
            ("lloyd1000", 1000, Algorithm::Lloyd, Init::Random, 20.0),
            ("minibatch2", 100, Algorithm::MiniBatch, Init::Random, 2.0),
            ("minibatch20", 100, Algorithm::MiniBatch, Init::Random, 20.0),
        ];
        for (name, k, algorithm, init, budget) in configs {
            if !wanted(name) || (a.quick && k == 1000) {
                continue;
            }
            let cfg = KMeansConfig {
                k,
                init,
                algorithm,
                max_iter: budget as usize,
                epochs: budget,
                tol: 0.0,
                max_no_improvement: 0,
                seed: a.seed,
                ..KMeansConfig::default()
            };
            let probe = Probe::start();
            let model = seqclust_kmeans::fit(&pts, &cfg)?;
            let load = probe.finish();
            let (inertia, ari, nmi) = evaluate(&data, &model.centroids)?;
            let pass_time = model.fit_seconds - model.init_seconds;
            let mut it_times: Vec<f64> = model
                .history
                .windows(2)
                .map(|w| w[1].seconds - w[0].seconds)
                .collect();
            it_times.sort_by(f64::total_cmp);
            let per_iter = match algorithm {
                Algorithm::Lloyd => it_times
                    .get(it_times.len() / 2)
                    .copied()
                    .unwrap_or(pass_time),
                Algorithm::MiniBatch => pass_time / model.passes.max(1e-9),
            };
            let init_name = match init {
                Init::Random => "random",
                Init::KMeansPlusPlus => "k-means++",
                Init::KMeansParallel { .. } => "k-means||",
            };
            // make_table.py keys rows by impl, not init: name the init in the impl
            let impl_name = match (algorithm, init) {
                (Algorithm::Lloyd, Init::Random) => "seqclust.KMeans(lloyd)",
                (Algorithm::Lloyd, _) => "seqclust.KMeans(lloyd, k-means||)",
                (Algorithm::MiniBatch, _) => "seqclust.MiniBatchKMeans",
            };
            emit(
                json!({"script": "kmeans_rust", "tag": tag, "args": args, "results": [{
                    "impl": impl_name, "k": k, "n_train": model.n_train, "passes": model.passes,
                    "fit_s": model.fit_seconds, "init_s": model.init_seconds, "per_iter_s": per_iter,
                    "assign_gflops": 2.0 * (model.n_train * k * data.d) as f64 * model.passes / pass_time / 1e9,
                    "inertia_per_point": inertia, "ari": ari, "nmi": nmi,
                    "params": {"init": init_name, "kernel": isa, "max_iter_epochs": budget, "batch": if algorithm == Algorithm::MiniBatch { json!(cfg.batch_size) } else { json!(null) }, "init_sample": cfg.init_sample},
                    "load": load,
                }]}),
                a.out.as_deref(),
            )?;
        }
    }
    Ok(())
}
