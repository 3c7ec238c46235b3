//! `seqclust eval clustering`: cluster quality against ground truth, the deep encoder beside
//! the baselines (`seqclust_analysis::quality`).

use std::path::PathBuf;
use std::time::Instant;

use anyhow::{Context, Result, bail};
use clap::Args;
use comfy_table::Table;
use comfy_table::presets::UTF8_FULL_CONDENSED;

use seqclust_analysis::quality::{self, Item2VecConfig, Row};
use seqclust_data::Location;
use seqclust_model::{EncoderConfig, Moments, SeqModel};
use seqclust_trainer::Owned;

use crate::cmd_train::open_for;

/// Cluster quality against known classes: ARI, NMI, purity and silhouette of the deep encoder
/// and of the baselines, in one table.
#[derive(Debug, Args)]
pub struct ClusteringArgs {
    /// Dataset: a location, or NAME[/VERSION] under --root (default: the first model's).
    #[arg(long, short)]
    dataset: Option<String>,
    /// Storage root for dataset names.
    #[arg(long, env = "SEQCLUST_ROOT", default_value = "./seqclust-data")]
    root: String,
    /// The true class of every user: a CSV `user,label,…` with a header (`seqclust gen`'s
    /// `*.truth.csv`).
    #[arg(long)]
    truth: PathBuf,
    /// Trained encoders to score (training run directories or URLs holding model/);
    /// repeatable.
    #[arg(long, short)]
    model: Vec<String>,
    /// Clusters (default: the number of true classes).
    #[arg(long)]
    k: Option<usize>,
    /// Baselines: any of tfidf, item2vec, untrained (comma-separated; `none` for none).
    #[arg(long, default_value = "tfidf,item2vec,untrained")]
    baselines: String,
    /// item2vec passes over the sequences.
    #[arg(long, default_value_t = 2)]
    item2vec_epochs: usize,
    /// Seed (k-means restarts, item2vec, the untrained encoder).
    #[arg(long, default_value_t = 42)]
    seed: u64,
    /// Print one JSON object per method instead of the table.
    #[arg(long)]
    json: bool,
    /// Also write the rows as a JSON array to this file.
    #[arg(long)]
    out: Option<PathBuf>,
}

fn table(rows: &[Row], users: usize, k: usize) -> Table {
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        format!("method ({users} users, k = {k})"),
        "dim".into(),
        "ARI".into(),
        "NMI".into(),
        "purity".into(),
        "silhouette".into(),
        "seconds".into(),
    ]);
    for r in rows {
        t.add_row(vec![
            r.method.clone(),
            r.dim.to_string(),
            format!("{:.4}", r.ari),
            format!("{:.4}", r.nmi),
            format!("{:.4}", r.purity),
            format!("{:.4}", r.silhouette),
            format!("{:.1}", r.seconds),
        ]);
    }
    t
}

/// Runs `seqclust eval clustering`.
pub fn run(a: ClusteringArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    let baselines: Vec<&str> = a
        .baselines
        .split(',')
        .map(str::trim)
        .filter(|s| !s.is_empty() && *s != "none")
        .collect();
    if let Some(b) = baselines
        .iter()
        .find(|b| !["tfidf", "item2vec", "untrained"].contains(b))
    {
        bail!("--baselines: unknown baseline {b:?} (tfidf, item2vec, untrained)");
    }
    if a.model.is_empty() && baselines.is_empty() {
        bail!("nothing to evaluate: give --model and/or --baselines");
    }
    let mut models = Vec::new();
    for m in &a.model {
        let run = Location::parse(m, false)?;
        let loaded = rt
            .block_on(seqclust_trainer::load_model(&run))
            .with_context(|| format!("loading the model of {m}"))?;
        models.push((m.clone(), loaded));
    }
    let ds = match (&a.dataset, models.first()) {
        (Some(_), _) | (None, None) => {
            let Some(d) = &a.dataset else {
                bail!("--dataset is needed when no --model names one");
            };
            open_for(d, &None, &a.root, rt)?
        }
        (None, Some((_, (_, info)))) => open_for(&info.dataset, &None, &a.root, rt)?,
    };
    let vocab = seqclust_trainer::vocab_of(&ds);
    for (m, (_, info)) in &models {
        if info.vocab != vocab {
            bail!(
                "{m}: the model's vocabulary {:?} differs from {}'s {:?}",
                info.vocab,
                ds.location(),
                vocab
            );
        }
    }
    let mut seqs: Vec<Owned> = Vec::new();
    for s in 0..ds.num_shards() {
        let shard = rt.block_on(ds.read_shard(s))?;
        seqs.extend(seqclust_trainer::examples::users(&shard));
    }
    let ids: Vec<String> = seqs.iter().map(|u| u.user.clone()).collect();
    let truth = seqclust_data::embeddings::labels_for(&a.truth, &ids)?;
    let classes = {
        let mut c = truth.clone();
        c.sort_unstable();
        c.dedup();
        c.len()
    };
    let k = a.k.unwrap_or(classes);
    if k < 2 || k > seqs.len() {
        bail!("--k {k}: need 2 ≤ k ≤ {} users", seqs.len());
    }
    let items: Vec<&[u32]> = seqs.iter().map(|u| u.items.as_slice()).collect();
    let mut rows = Vec::new();
    let emit = |r: &Row, rows: &mut Vec<Row>| -> Result<()> {
        if a.json {
            println!("{}", serde_json::to_string(r)?);
        } else {
            eprintln!(
                "{}: ARI {:.4} NMI {:.4} ({:.1} s)",
                r.method, r.ari, r.nmi, r.seconds
            );
        }
        rows.push(r.clone());
        Ok(())
    };
    for (name, (model, _)) in &models {
        let t = Instant::now();
        let v = seqclust_trainer::embed_for_clusters(model, &seqs, 512)?;
        let r = quality::dense(
            &format!("encoder {name}"),
            &v,
            model.config().dim,
            &truth,
            k,
            a.seed,
            t,
        )?;
        emit(&r, &mut rows)?;
    }
    for b in &baselines {
        let t = Instant::now();
        let r = match *b {
            "tfidf" => quality::tfidf_kmeans(&items, vocab.items, &truth, k, a.seed)?,
            "item2vec" => {
                let cfg = Item2VecConfig {
                    epochs: a.item2vec_epochs,
                    ..Item2VecConfig::default()
                };
                let table = quality::item2vec(&items, vocab.items, &cfg, a.seed);
                let v = quality::mean_vectors(&items, &table, cfg.dim);
                quality::dense("item2vec+kmeans", &v, cfg.dim, &truth, k, a.seed, t)?
            }
            _ => {
                let cfg: EncoderConfig = models
                    .first()
                    .map(|(_, (m, _))| m.config().clone())
                    .unwrap_or_default();
                let model = SeqModel::new(&cfg, vocab, a.seed)?;
                let mut v = seqclust_trainer::embed(&model, &seqs, 512)?;
                if cfg.whiten {
                    // the same clustering space as the trained model's, fitted to these vectors
                    if let Some(w) = Moments::of(&v, cfg.dim).whitening() {
                        v = w.apply_rows(&v);
                    }
                }
                quality::dense("untrained encoder", &v, cfg.dim, &truth, k, a.seed, t)?
            }
        };
        emit(&r, &mut rows)?;
    }
    if !a.json {
        println!("{}", table(&rows, seqs.len(), k));
    }
    if let Some(out) = &a.out {
        std::fs::write(out, serde_json::to_vec_pretty(&rows)?)
            .with_context(|| format!("writing {}", out.display()))?;
    }
    Ok(())
}

/// Quantise a trained model to int8 for serving and report what it costs: sizes, HR@10 and
/// NDCG@10 on held-out users, and how many users change cluster.
#[derive(Debug, Args)]
pub struct QuantizeArgs {
    /// The training run (directory or URL holding model/).
    #[arg(long, short)]
    model: String,
    /// Where to write the int8 model (`OUT/model/{config.json, encoder.safetensors}`, which
    /// every command that takes `--model` reads).
    #[arg(long, short)]
    out: String,
    /// Dataset for the comparison (default: the model's).
    #[arg(long, short)]
    dataset: Option<String>,
    /// Storage root for dataset names.
    #[arg(long, env = "SEQCLUST_ROOT", default_value = "./seqclust-data")]
    root: String,
    /// Test users the HR/NDCG comparison uses (0 = all).
    #[arg(long, default_value_t = 5000)]
    users: usize,
    /// Clusters of the assignment comparison (k-means on the float model's vectors).
    #[arg(long, default_value_t = 8)]
    k: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// Runs `seqclust quantize`.
pub fn run_quantize(a: QuantizeArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    use seqclust_kmeans::{Points, adjusted_rand_index, assign, fit};
    let src = Location::parse(&a.model, false)?;
    let (float, info) = rt
        .block_on(seqclust_trainer::load_model(&src))
        .with_context(|| format!("loading the model of {}", a.model))?;
    let bytes = seqclust_trainer::model_tensors_int8(&float)?;
    let dst = Location::parse(&a.out, true)?;
    rt.block_on(seqclust_trainer::save_model_int8(
        &dst, "model", &float, &info,
    ))?;
    let (int8, _) = rt.block_on(seqclust_trainer::load_model(&dst))?;
    let float_bytes = rt.block_on(src.get("model/encoder.safetensors"))?.len();
    let (rows, d) = (float.items.rows(), float.items.dim());
    let table_f32 = rows * d * 4;
    let table_i8 = rows * d + rows * 4;

    let ds = open_for(&info.dataset, &a.dataset, &a.root, rt)?;
    let test = seqclust_trainer::held_out_examples(
        &ds,
        rt.handle(),
        seqclust_trainer::Holdout::Test,
        a.users,
    )?;
    let mf = seqclust_trainer::evaluate(&float, &test, 512)?;
    let mi = seqclust_trainer::evaluate(&int8, &test, 512)?;
    let at = |m: &seqclust_trainer::Evaluation, k| {
        (
            m.full.hr.get(&k).copied().unwrap_or(0.0),
            m.full.ndcg.get(&k).copied().unwrap_or(0.0),
        )
    };
    // and ranked as `seqclust serve --precision int8` ranks (int8 table and vectors)
    let ms = seqclust_trainer::evaluate_scored(&int8, &test, 512, seqclust_model::Precision::Int8)?;
    let ((hf, nf), (hi, ni), (hs, ns)) = (at(&mf, 10), at(&mi, 10), at(&ms, 10));

    let mut seqs: Vec<Owned> = Vec::new();
    for s in 0..ds.num_shards() {
        let shard = rt.block_on(ds.read_shard(s))?;
        seqs.extend(seqclust_trainer::examples::users(&shard));
    }
    let t = Instant::now();
    let vf = seqclust_trainer::embed_for_clusters(&float, &seqs, 512)?;
    let embed_f = t.elapsed().as_secs_f64();
    let t = Instant::now();
    let vi = seqclust_trainer::embed_for_clusters(&int8, &seqs, 512)?;
    let embed_i = t.elapsed().as_secs_f64();
    let cfg = assignment_kmeans(a.k);
    let pf = Points::new(&vf, d)?;
    let km = fit(&pf, &cfg)?;
    let packed = km.packed();
    let lf: Vec<u64> = assign(&pf, &packed)
        .iter()
        .map(|x| u64::from(x.cluster))
        .collect();
    let li: Vec<u64> = assign(&Points::new(&vi, d)?, &packed)
        .iter()
        .map(|x| u64::from(x.cluster))
        .collect();
    let moved = lf.iter().zip(&li).filter(|(a, b)| a != b).count();
    let report = serde_json::json!({
        "model": a.model, "out": a.out,
        "item_table_bytes": {"f32": table_f32, "int8": table_i8, "ratio": table_f32 as f64 / table_i8 as f64},
        "model_file_bytes": {"f32": float_bytes, "int8": bytes.len(), "ratio": float_bytes as f64 / bytes.len() as f64},
        "test_users": mf.full.users,
        "hr10": {"f32": hf, "int8": hi, "relative_change": (hi - hf) / hf.max(1e-12)},
        "ndcg10": {"f32": nf, "int8": ni, "relative_change": (ni - nf) / nf.max(1e-12)},
        "int8_scoring": {"hr10": hs, "ndcg10": ns,
                         "hr10_relative_change": (hs - hf) / hf.max(1e-12),
                         "ndcg10_relative_change": (ns - nf) / nf.max(1e-12)},
        "assignments": {"users": lf.len(), "k": a.k, "ari_vs_f32": adjusted_rand_index(&lf, &li), "moved": moved},
        "embed_users_per_s": {"f32": seqs.len() as f64 / embed_f, "int8": seqs.len() as f64 / embed_i},
    });
    if a.json {
        println!("{}", serde_json::to_string_pretty(&report)?);
    } else {
        println!(
            "int8 model in {}/model: item table {:.1} MB → {:.1} MB ({:.2}× smaller), model file {:.1} MB → {:.1} MB\n\
             HR@10 {hf:.4} → {hi:.4} ({:+.2} %), NDCG@10 {nf:.4} → {ni:.4} ({:+.2} %) on {} test users\n\
             with int8 scoring too (serve --precision int8): HR@10 {hs:.4} ({:+.2} %), NDCG@10 {ns:.4} ({:+.2} %)\n\
             assignments (k = {}, centroids of the f32 vectors): ARI {:.4} vs f32, {moved} of {} users moved",
            a.out,
            table_f32 as f64 / 1e6,
            table_i8 as f64 / 1e6,
            table_f32 as f64 / table_i8 as f64,
            float_bytes as f64 / 1e6,
            bytes.len() as f64 / 1e6,
            100.0 * (hi - hf) / hf.max(1e-12),
            100.0 * (ni - nf) / nf.max(1e-12),
            mf.full.users,
            100.0 * (hs - hf) / hf.max(1e-12),
            100.0 * (ns - nf) / nf.max(1e-12),
            a.k,
            adjusted_rand_index(&lf, &li),
            lf.len(),
        );
    }
    Ok(())
}

/// Compare trained models of one dataset — a distilled student and its teacher, or any
/// two encoders: size, ranking quality, throughput, and how much the clusters agree.
#[derive(Debug, Args)]
pub struct CompareArgs {
    /// The reference model first (training run directories or URLs holding model/), then
    /// the models compared with it; repeatable.
    #[arg(long, short, required = true, num_args = 1)]
    model: Vec<String>,
    /// Dataset (default: the first model's).
    #[arg(long, short)]
    dataset: Option<String>,
    /// Storage root for dataset names.
    #[arg(long, env = "SEQCLUST_ROOT", default_value = "./seqclust-data")]
    root: String,
    /// Test users of the HR/NDCG comparison (0 = all).
    #[arg(long, default_value_t = 5000)]
    users: usize,
    /// Clusters of the assignment comparison (k-means on each model's own vectors).
    #[arg(long, default_value_t = 8)]
    k: usize,
    /// Print the report as JSON.
    #[arg(long)]
    json: bool,
}

/// The clustering both quality commands compare assignments with.
fn assignment_kmeans(k: usize) -> seqclust_kmeans::KMeansConfig {
    use seqclust_kmeans::{Algorithm, Init, KMeansConfig, Metric};
    KMeansConfig {
        k,
        metric: Metric::Cosine,
        init: Init::KMeansPlusPlus,
        algorithm: Algorithm::Lloyd,
        max_iter: 100,
        ..KMeansConfig::default()
    }
}

/// Runs `seqclust eval compare`.
pub fn run_compare(a: CompareArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    use seqclust_kmeans::{Points, adjusted_rand_index, assign, fit};
    if a.model.len() < 2 {
        bail!("--model: give the reference model and at least one to compare with it");
    }
    let mut models = Vec::new();
    for m in &a.model {
        let run = Location::parse(m, false)?;
        let (model, info) = rt
            .block_on(seqclust_trainer::load_model(&run))
            .with_context(|| format!("loading the model of {m}"))?;
        let file = rt.block_on(run.get("model/encoder.safetensors"))?.len();
        models.push((m.clone(), model, info, file));
    }
    let ds = open_for(&models[0].2.dataset, &a.dataset, &a.root, rt)?;
    let vocab = seqclust_trainer::vocab_of(&ds);
    for (m, _, info, _) in &models {
        if info.vocab.items != vocab.items {
            bail!(
                "--model {m}: the model scores {} items and {} has {}: the models must be trained on this dataset",
                info.vocab.items,
                ds.location(),
                vocab.items
            );
        }
    }
    let test = seqclust_trainer::held_out_examples(
        &ds,
        rt.handle(),
        seqclust_trainer::Holdout::Test,
        a.users,
    )?;
    let mut seqs: Vec<Owned> = Vec::new();
    for s in 0..ds.num_shards() {
        let shard = rt.block_on(ds.read_shard(s))?;
        seqs.extend(seqclust_trainer::examples::users(&shard));
    }
    let mut rows = Vec::new();
    let mut reference: Option<(Vec<u64>, f64, f64)> = None;
    for (m, model, info, file) in &models {
        let t = Instant::now();
        let ev = seqclust_trainer::evaluate(model, &test, 512)?;
        let rank_s = t.elapsed().as_secs_f64();
        let t = Instant::now();
        let v = seqclust_trainer::embed_for_clusters(model, &seqs, 512)?;
        let embed_s = t.elapsed().as_secs_f64();
        let d = v.len() / seqs.len().max(1);
        let p = Points::new(&v, d)?;
        let km = fit(&p, &assignment_kmeans(a.k))?;
        let labels: Vec<u64> = assign(&p, &km.packed())
            .iter()
            .map(|x| u64::from(x.cluster))
            .collect();
        let hr = ev.full.hr.get(&10).copied().unwrap_or(0.0);
        let ndcg = ev.full.ndcg.get(&10).copied().unwrap_or(0.0);
        let (ari, hr_change, ndcg_change) = match &reference {
            None => {
                reference = Some((labels.clone(), hr, ndcg));
                (1.0, 0.0, 0.0)
            }
            Some((l0, h0, n0)) => (
                adjusted_rand_index(l0, &labels),
                (hr - h0) / h0.max(1e-12),
                (ndcg - n0) / n0.max(1e-12),
            ),
        };
        let e = &info.encoder;
        rows.push(serde_json::json!({
            "model": m,
            "encoder": format!("{:?} dim {} × {} layers", e.kind, e.dim, e.layers),
            "dense_parameters": model.dense_len()?,
            "item_table_bytes": model.items.rows() * model.items.dim() * 4,
            "model_file_bytes": file,
            "test_users": ev.full.users,
            "hr10": hr, "ndcg10": ndcg,
            "hr10_relative_change": hr_change, "ndcg10_relative_change": ndcg_change,
            "ranked_users_per_s": test.len() as f64 / rank_s,
            "embedded_users_per_s": seqs.len() as f64 / embed_s,
            "assignments": {"users": labels.len(), "k": a.k, "ari_vs_first": ari},
        }));
    }
    if a.json {
        println!("{}", serde_json::to_string_pretty(&rows)?);
        return Ok(());
    }
    let mut t = Table::new();
    t.load_preset(UTF8_FULL_CONDENSED).set_header(vec![
        "model".to_string(),
        "encoder".into(),
        "model file".into(),
        format!("HR@10 ({} users)", test.len()),
        "NDCG@10".into(),
        "ranked users/s".into(),
        "embedded users/s".into(),
        format!("ARI vs first (k = {})", a.k),
    ]);
    for r in &rows {
        let f = |k: &str| r[k].as_f64().unwrap_or(0.0);
        t.add_row(vec![
            r["model"].as_str().unwrap_or_default().to_string(),
            r["encoder"].as_str().unwrap_or_default().to_string(),
            format!("{:.2} MB", f("model_file_bytes") / 1e6),
            format!(
                "{:.4} ({:+.1} %)",
                f("hr10"),
                100.0 * f("hr10_relative_change")
            ),
            format!(
                "{:.4} ({:+.1} %)",
                f("ndcg10"),
                100.0 * f("ndcg10_relative_change")
            ),
            format!("{:.0}", f("ranked_users_per_s")),
            format!("{:.0}", f("embedded_users_per_s")),
            format!(
                "{:.4}",
                r["assignments"]["ari_vs_first"].as_f64().unwrap_or(0.0)
            ),
        ]);
    }
    println!("{t}");
    Ok(())
}
