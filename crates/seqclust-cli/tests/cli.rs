//! The `seqclust` binary end to end: gen → ingest → dataset inspect/list, error messages and
//! exit codes, and every example config.
#![allow(clippy::unwrap_used)] // tests fail loudly on any error

use std::path::Path;
use std::process::{Command, Output};

fn seqclust(args: &[&str], cwd: &Path) -> Output {
    Command::new(env!("CARGO_BIN_EXE_seqclust"))
        .args(args)
        .current_dir(cwd)
        .output()
        .unwrap()
}

fn ok(o: &Output) -> String {
    assert!(
        o.status.success(),
        "failed: {}\n{}",
        String::from_utf8_lossy(&o.stdout),
        String::from_utf8_lossy(&o.stderr)
    );
    String::from_utf8_lossy(&o.stdout).into_owned()
}

#[test]
fn gen_ingest_inspect() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&seqclust(
        &[
            "gen",
            "--users",
            "3000",
            "--out",
            "raw/ev.csv.gz",
            "--seed",
            "7",
            "-q",
        ],
        d,
    ));
    let truth = std::fs::read_to_string(d.join("raw/ev.truth.csv")).unwrap();
    assert_eq!(truth.lines().count(), 3001);
    let out = ok(&seqclust(
        &[
            "ingest",
            "raw/ev.csv.gz",
            "--root",
            "store",
            "--name",
            "p",
            "--version",
            "v1",
            "--json",
        ],
        d,
    ));
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["counts"]["users"], 3000);
    assert_eq!(m["columns"]["dwell"], "dwell");
    let table = ok(&seqclust(
        &["dataset", "inspect", "p", "--root", "store", "--verify"],
        d,
    ));
    assert!(
        table.contains("p/v1") && table.contains("verified"),
        "{table}"
    );
    let list = ok(&seqclust(&["dataset", "list", "--root", "store"], d));
    assert_eq!(list.trim(), "p: v1");
    // re-ingesting into the same version is refused and changes nothing
    let again = seqclust(
        &[
            "ingest",
            "raw/ev.csv.gz",
            "--root",
            "store",
            "--name",
            "p",
            "--version",
            "v1",
            "-q",
        ],
        d,
    );
    assert!(!again.status.success());
    assert!(String::from_utf8_lossy(&again.stderr).contains("already committed"));
    ok(&seqclust(
        &[
            "dataset",
            "inspect",
            "store/datasets/p/v1",
            "--verify",
            "--users",
            "0",
        ],
        d,
    ));
}

#[test]
fn errors_are_one_clear_line() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let o = seqclust(&["ingest", "missing.csv", "--root", "store", "-q"], d);
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("missing.csv") && err.contains("does not exist"),
        "{err}"
    );
    std::fs::write(d.join("e.csv"), "who,what,when\na,b,1600000000\n").unwrap();
    let o = seqclust(
        &[
            "ingest",
            "e.csv",
            "--root",
            "store",
            "-q",
            "--col",
            "user=who",
            "--col",
            "item=wat",
            "--col",
            "timestamp=when",
        ],
        d,
    );
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("e.csv") && err.contains("\"wat\""),
        "{err}"
    );
    let o = seqclust(&["ingest", "e.csv", "--col", "usr=who"], d);
    assert!(String::from_utf8_lossy(&o.stderr).contains("unknown field \"usr\""));
    let o = seqclust(&["dataset", "inspect", "nothing", "--root", "store"], d);
    assert!(String::from_utf8_lossy(&o.stderr).contains("no committed dataset"));
}

#[test]
fn every_example_config_loads() {
    let examples = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples");
    let mut n = 0;
    for e in std::fs::read_dir(&examples).unwrap() {
        let p = e.unwrap().path();
        if p.extension().is_some_and(|x| x == "toml")
            && p.file_name()
                .unwrap()
                .to_string_lossy()
                .starts_with("ingest")
        {
            let cfg = seqclust_data::IngestConfig::from_file(&p)
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            cfg.validate()
                .unwrap_or_else(|e| panic!("{}: {e}", p.display()));
            n += 1;
        }
    }
    assert!(n >= 3);
}

/// `../shared/data` beside the repository, or `SEQCLUST_SHARED_DATA`.
fn shared_data() -> std::path::PathBuf {
    let p = std::env::var_os("SEQCLUST_SHARED_DATA")
        .map(std::path::PathBuf::from)
        .unwrap_or_else(|| Path::new(env!("CARGO_MANIFEST_DIR")).join("../../../shared/data"));
    assert!(
        p.is_dir(),
        "the shared datasets are missing at {} (set SEQCLUST_SHARED_DATA)",
        p.display()
    );
    p
}

#[test]
fn taobao_example_config_runs() {
    // the example names the data relative to a checkout beside ../shared; point it at
    // wherever the shared data is here
    let example = Path::new(env!("CARGO_MANIFEST_DIR")).join("../../examples/ingest-taobao.toml");
    let text = std::fs::read_to_string(example).unwrap();
    let dir = tempfile::tempdir().unwrap();
    let data = shared_data().display().to_string();
    let cfg = dir.path().join("taobao.toml");
    std::fs::write(&cfg, text.replace("../../shared/data", &data)).unwrap();
    let out = ok(&seqclust(
        &[
            "ingest",
            "--config",
            &cfg.display().to_string(),
            "--root",
            &dir.path().display().to_string(),
            "--json",
        ],
        dir.path(),
    ));
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["counts"]["rows_read"], 14_321);
}

#[test]
fn bench_ingest_smoke() {
    let dir = tempfile::tempdir().unwrap();
    let out = ok(&seqclust(
        &[
            "bench",
            "ingest",
            "--events",
            "20000",
            "--rounds",
            "1",
            "--work-dir",
            &dir.path().display().to_string(),
        ],
        dir.path(),
    ));
    let line: serde_json::Value = serde_json::from_str(out.lines().next().unwrap()).unwrap();
    assert_eq!(line["script"], "ingest_rust");
    assert!(line["results"][0]["events_per_s"].as_f64().unwrap() > 0.0);
    assert!(line["results"][0]["peak_rss_mib"].as_f64().unwrap() > 1.0);
}

fn write_blobs(path: &Path) -> Vec<u64> {
    // 32 dimensions: centres from N(0, I) are ~8 apart, σ ≈ 1, so the blobs are separable
    let (x, labels) = seqclust_data::embeddings::gaussian_mixture(3000, 32, 6, 5);
    seqclust_data::embeddings::write_npy_f32(path, &x, 3000, 32).unwrap();
    labels
}

#[test]
fn cluster_embeddings_end_to_end() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let labels = write_blobs(&d.join("e.npy"));
    let lab: Vec<u32> = labels.iter().map(|&v| v as u32).collect();
    seqclust_data::embeddings::write_npy_u32(&d.join("truth.npy"), &lab).unwrap();
    let out = ok(&seqclust(
        &[
            "cluster",
            "e.npy",
            "--k",
            "6",
            "--out",
            "run1",
            "--labels",
            "truth.npy",
            "--hierarchy",
            "--json",
        ],
        d,
    ));
    let m: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m["quality"]["non_empty"], 6);
    assert!(
        m["against_labels"]["ari"].as_f64().unwrap() > 0.9,
        "{}",
        m["against_labels"]
    );
    assert_eq!(m["hierarchy"]["merges"].as_array().unwrap().len(), 5);
    for f in ["centroids.npy", "assignments.parquet", "model.json"] {
        assert!(d.join("run1").join(f).exists(), "{f}");
    }
    let c = seqclust_data::embeddings::read_embeddings(&d.join("run1/centroids.npy"), None, false)
        .unwrap();
    assert_eq!((c.n, c.d), (6, 32));
    // a second run keeps the first run's ids
    let out = ok(&seqclust(
        &[
            "cluster",
            "e.npy",
            "--k",
            "6",
            "--seed",
            "9",
            "--out",
            "run2",
            "--previous",
            "run1/centroids.npy",
            "--json",
        ],
        d,
    ));
    let m2: serde_json::Value = serde_json::from_str(&out).unwrap();
    let ids: Vec<u64> = m2["stable_ids"]["ids"]
        .as_array()
        .unwrap()
        .iter()
        .map(|v| v.as_u64().unwrap())
        .collect();
    let mut sorted = ids.clone();
    sorted.sort();
    assert_eq!(sorted, vec![0, 1, 2, 3, 4, 5]);
    // the same clusters found again: almost no point changes its stable id
    assert_eq!(m2["stable_ids"]["compared"], 3000);
    assert!(
        m2["stable_ids"]["moved_mass"].as_f64().unwrap() < 0.05,
        "{}",
        m2["stable_ids"]
    );
    // k search, mini-batch, Ward and spectral
    let out = ok(&seqclust(
        &[
            "cluster",
            "e.npy",
            "--choose-k",
            "3:9:3",
            "--out",
            "run3",
            "--json",
        ],
        d,
    ));
    let m3: serde_json::Value = serde_json::from_str(&out).unwrap();
    assert_eq!(m3["choose_k"]["rows"].as_array().unwrap().len(), 3);
    // spectral clustering is for small n: a 600-point file
    let (x, small_labels) = seqclust_data::embeddings::gaussian_mixture(600, 32, 6, 5);
    seqclust_data::embeddings::write_npy_f32(&d.join("small.npy"), &x, 600, 32).unwrap();
    let sl: Vec<u32> = small_labels.iter().map(|&v| v as u32).collect();
    seqclust_data::embeddings::write_npy_u32(&d.join("small_truth.npy"), &sl).unwrap();
    for (algo, file, truth) in [
        ("minibatch", "e.npy", "truth.npy"),
        ("ward", "e.npy", "truth.npy"),
        ("spectral", "small.npy", "small_truth.npy"),
    ] {
        let out = ok(&seqclust(
            &[
                "cluster",
                file,
                "--k",
                "6",
                "--algorithm",
                algo,
                "--out",
                algo,
                "--labels",
                truth,
                "--json",
                // mini-batch with batches small next to n, as one would run it on 3000 points
                "--batch-size",
                "256",
                "--epochs",
                "20",
            ],
            d,
        ));
        let m: serde_json::Value = serde_json::from_str(&out).unwrap();
        assert!(
            m["against_labels"]["ari"].as_f64().unwrap() > 0.8,
            "{algo}: {}",
            m["against_labels"]
        );
    }
}

#[test]
fn cluster_bad_input_is_named() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    let mut x = vec![0.5f32; 40];
    x[13] = f32::NAN;
    seqclust_data::embeddings::write_npy_f32(&d.join("nan.npy"), &x, 10, 4).unwrap();
    let o = seqclust(&["cluster", "nan.npy", "--k", "2", "--out", "o"], d);
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        !o.status.success() && err.contains("row 3") && err.contains("nan.npy"),
        "{err}"
    );
    seqclust_data::embeddings::write_npy_f32(&d.join("few.npy"), &[1.0, 2.0, 3.0], 3, 1).unwrap();
    let o = seqclust(&["cluster", "few.npy", "--k", "5", "--out", "o"], d);
    assert!(String::from_utf8_lossy(&o.stderr).contains("need n >= k"));
    let o = seqclust(&["cluster", "missing.npy", "--k", "5", "--out", "o"], d);
    assert!(String::from_utf8_lossy(&o.stderr).contains("missing.npy"));
}

#[test]
fn bench_kmeans_smoke() {
    let dir = tempfile::tempdir().unwrap();
    // no peers' files in this directory: the bench falls back to its own mixture
    let out = ok(&seqclust(
        &[
            "bench",
            "kmeans",
            "--quick",
            "--only",
            "assign100,lloyd100_par",
            "--data-dir",
            &dir.path().display().to_string(),
        ],
        dir.path(),
    ));
    let lines: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(lines.len(), 2);
    assert_eq!(lines[0]["script"], "kmeans_rust");
    assert!(lines[1]["results"][0]["ari"].as_f64().unwrap() > 0.5);
}

/// The ```toml blocks of a Markdown file.
fn toml_blocks(md: &Path) -> Vec<String> {
    let text = std::fs::read_to_string(md).unwrap();
    let mut blocks = Vec::new();
    let mut cur: Option<String> = None;
    for line in text.lines() {
        match (&mut cur, line.trim_start()) {
            (None, l) if l.starts_with("```toml") => cur = Some(String::new()),
            (Some(b), l) if l.starts_with("```") => {
                blocks.push(std::mem::take(b));
                cur = None;
            }
            (Some(b), _) => {
                b.push_str(line);
                b.push('\n');
            }
            _ => {}
        }
    }
    blocks
}

#[test]
fn every_config_snippet_in_the_operator_docs_loads() {
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../..");
    let dir = tempfile::tempdir().unwrap();
    let (mut services, mut jobs) = (0, 0);
    for doc in [
        "docs/OPERATIONS.md",
        "docs/DEPLOY.md",
        "crates/seqclust-telemetry/README.md",
    ] {
        for (i, block) in toml_blocks(&root.join(doc)).iter().enumerate() {
            if block.lines().any(|l| l.starts_with("name =")) {
                seqclust_job::JobSpec::from_toml_str(block)
                    .unwrap_or_else(|e| panic!("{doc}, job spec block {i}: {e}"));
                jobs += 1;
            } else {
                let f = dir.path().join(format!("block-{services}.toml"));
                std::fs::write(&f, block).unwrap();
                let o = seqclust(&["config", "check", f.to_str().unwrap()], dir.path());
                assert!(
                    o.status.success(),
                    "{doc}, service config block {i}: {}",
                    String::from_utf8_lossy(&o.stderr)
                );
                services += 1;
            }
        }
    }
    assert!(
        services >= 2 && jobs >= 1,
        "{services} service configs, {jobs} job specs"
    );
}

#[test]
fn config_check_names_the_file_and_field() {
    let dir = tempfile::tempdir().unwrap();
    let f = dir.path().join("bad.toml");
    std::fs::write(&f, "[worker]\ncollective = \"mpi\"\n").unwrap();
    let o = seqclust(&["config", "check", f.to_str().unwrap()], dir.path());
    assert!(!o.status.success());
    let err = String::from_utf8_lossy(&o.stderr);
    assert!(
        err.contains("bad.toml") && err.contains("worker.collective"),
        "{err}"
    );
    std::fs::write(&f, "[telemetry]\ncolour = true\n").unwrap();
    let err = String::from_utf8_lossy(
        &seqclust(&["config", "check", f.to_str().unwrap()], dir.path()).stderr,
    )
    .into_owned();
    assert!(err.contains("bad.toml") && err.contains("colour"), "{err}");
    // the defaults print as a file that checks
    let defaults = ok(&seqclust(&["config", "defaults"], dir.path()));
    std::fs::write(&f, defaults).unwrap();
    ok(&seqclust(
        &["config", "check", f.to_str().unwrap()],
        dir.path(),
    ));
}

/// `seqclust eval clustering`: the trained encoder beside every baseline in one table, with
/// truth joined by user; bad truth files and arguments are named.
#[test]
fn eval_clustering_scores_encoder_and_baselines() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    ok(&seqclust(
        &["gen", "--users", "1500", "--out", "ev.csv.gz", "-q"],
        d,
    ));
    ok(&seqclust(
        &[
            "ingest",
            "ev.csv.gz",
            "--root",
            "store",
            "--name",
            "p",
            "-q",
        ],
        d,
    ));
    ok(&seqclust(
        &[
            "train",
            "--dataset",
            "p",
            "--root",
            "store",
            "--out",
            "run",
            "--encoder",
            "gru",
            "--dim",
            "16",
            "--layers",
            "1",
            "--pooling",
            "mean",
            "--loss",
            "sampled:64",
            "--next-event",
            "1",
            "--use-hour",
            "--whiten",
            "--epochs",
            "1",
            "--eval-users",
            "200",
            "-q",
        ],
        d,
    ));
    let out = ok(&seqclust(
        &[
            "eval",
            "clustering",
            "--model",
            "run",
            "--root",
            "store",
            "--truth",
            "ev.truth.csv",
            "--item2vec-epochs",
            "1",
            "--json",
            "--out",
            "rows.json",
        ],
        d,
    ));
    let rows: Vec<serde_json::Value> = out
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    let methods: Vec<&str> = rows.iter().map(|r| r["method"].as_str().unwrap()).collect();
    assert_eq!(
        methods,
        [
            "encoder run",
            "tfidf+kmeans",
            "item2vec+kmeans",
            "untrained encoder"
        ]
    );
    for r in &rows {
        for m in ["ari", "nmi", "purity", "silhouette"] {
            let v = r[m].as_f64().unwrap();
            assert!((-1.0..=1.0).contains(&v), "{r}");
        }
        assert!(r["purity"].as_f64().unwrap() >= 0.125, "{r}");
    }
    // items alone do not tell the personas apart (they share one catalogue)
    assert!(rows[1]["nmi"].as_f64().unwrap() < 0.6, "{}", rows[1]);
    let saved: Vec<serde_json::Value> =
        serde_json::from_slice(&std::fs::read(d.join("rows.json")).unwrap()).unwrap();
    assert_eq!(saved, rows);
    // a user without a label is named, with the file
    let truth = std::fs::read_to_string(d.join("ev.truth.csv")).unwrap();
    let cut: Vec<&str> = truth.lines().filter(|l| !l.starts_with("17,")).collect();
    std::fs::write(d.join("cut.csv"), cut.join("\n")).unwrap();
    let bad = seqclust(
        &[
            "eval",
            "clustering",
            "--model",
            "run",
            "--root",
            "store",
            "--truth",
            "cut.csv",
            "--baselines",
            "none",
        ],
        d,
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(
        !bad.status.success() && err.contains("cut.csv") && err.contains("\"17\""),
        "{err}"
    );
    let bad = seqclust(
        &[
            "eval",
            "clustering",
            "--dataset",
            "p",
            "--root",
            "store",
            "--truth",
            "ev.truth.csv",
            "--baselines",
            "bow",
        ],
        d,
    );
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(!bad.status.success() && err.contains("\"bow\""), "{err}");
    // `seqclust eval` without a subcommand still wants its model
    let bad = seqclust(&["eval"], d);
    assert!(String::from_utf8_lossy(&bad.stderr).contains("--model"));

    // int8: a smaller model that every --model command reads, and what it costs
    let out = ok(&seqclust(
        &[
            "quantize", "--model", "run", "--out", "run8", "--root", "store", "--users", "300",
            "--k", "4", "--json",
        ],
        d,
    ));
    let q: serde_json::Value = serde_json::from_str(&out).unwrap();
    let dim = 16.0;
    let ratio = q["item_table_bytes"]["ratio"].as_f64().unwrap();
    assert!((ratio - 4.0 * dim / (dim + 4.0)).abs() < 1e-3, "{q}");
    assert!(
        q["model_file_bytes"]["ratio"].as_f64().unwrap() > 2.5,
        "{q}"
    );
    assert!(
        q["hr10"]["relative_change"].as_f64().unwrap().abs() < 0.2,
        "{q}"
    );
    assert!(
        q["int8_scoring"]["hr10_relative_change"]
            .as_f64()
            .unwrap()
            .abs()
            < 0.25,
        "{q}"
    );
    assert!(
        q["assignments"]["ari_vs_f32"].as_f64().unwrap() > 0.8,
        "{q}"
    );
    let out = ok(&seqclust(
        &[
            "eval",
            "clustering",
            "--model",
            "run8",
            "--root",
            "store",
            "--truth",
            "ev.truth.csv",
            "--baselines",
            "none",
            "--json",
        ],
        d,
    ));
    let r: serde_json::Value = serde_json::from_str(out.trim()).unwrap();
    assert_eq!(r["method"], "encoder run8");
}

/// `seqclust tune` on the embedded coordinator: three trials of one epoch, the best
/// continued to three (its run starts at epoch 2), the search committed as a run with the
/// best configuration; a bad space is refused by name before anything is written.
#[test]
fn tune_runs_asha_trials_as_jobs_and_commits_the_search() {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path();
    std::fs::write(
        d.join("job.toml"),
        "name = \"tiny\"\n[sample_data]\nusers = 600\nseed = 3\n\
         [dataset]\nuri = \"tiny\"\nroot = \"data\"\n\
         [encoder]\nkind = \"gru\"\ndim = 16\nlayers = 1\nmax_len = 20\npooling = \"mean\"\n\
         [objective]\nnext_item_loss = { kind = \"sampled\", negatives = 32 }\n\
         [train]\nepochs = 3\nbatch_size = 64\nwarmup_steps = 2\neval_users = 200\n\
         [kmeans]\nk = 4\nalgorithm = \"lloyd\"\nmetric = \"cosine\"\n\
         [analysis]\ntree_depth = 3\n[recommend]\neval_users = 200\n",
    )
    .unwrap();
    let tune = "[tune]\nbase = \"job.toml\"\ntrials = 3\nmin_epochs = 1\neta = 3\n\
                metric = \"valid.full.ndcg.10\"\n[tune.space]\n";
    std::fs::write(
        d.join("bad.toml"),
        format!("{tune}\"encoder.dimm\" = {{ values = [8] }}\n"),
    )
    .unwrap();
    let bad = seqclust(&["tune", "bad.toml", "--workers", "1"], d);
    assert!(!bad.status.success());
    let err = String::from_utf8_lossy(&bad.stderr);
    assert!(err.contains("encoder.dimm"), "{err}");
    assert!(!d.join("data").exists(), "a refused tune wrote something");

    std::fs::write(
        d.join("tune.toml"),
        format!("{tune}\"train.lr\" = {{ log_uniform = [1e-3, 1e-2] }}\n\"encoder.dim\" = {{ values = [8, 16] }}\n"),
    )
    .unwrap();
    let out = ok(&seqclust(&["tune", "tune.toml", "--workers", "1"], d));
    assert!(out.contains("best: t0"), "{out}");
    let runs = d.join("data/runs");
    let tune_run = std::fs::read_dir(&runs)
        .unwrap()
        .map(|e| e.unwrap().path())
        .find(|p| {
            let n = p.file_name().unwrap().to_string_lossy().to_string();
            n.starts_with("tiny-tune-") && !n.starts_with("tiny-tune-t")
        })
        .unwrap();
    assert!(tune_run.join("_MANIFEST.json").exists());
    let doc: serde_json::Value =
        serde_json::from_slice(&std::fs::read(tune_run.join("tune.json")).unwrap()).unwrap();
    let s = &doc["summary"];
    assert_eq!(s["trials"], 3);
    assert_eq!(s["jobs"], 4, "three first rungs and one promotion: {s}");
    assert_eq!(s["epochs_trained"], 5, "{s}");
    assert_eq!(s["best"]["rung"], 1, "{s}");
    let best = &s["best"];
    let best_trial = best["trial"].as_u64().unwrap() as usize;
    let trial = &doc["trials"][best_trial];
    assert_eq!(trial["rungs"].as_array().unwrap().len(), 2, "{trial}");
    // the promoted run continued the first one: its validations are epochs 2 and 3
    let cont = std::path::PathBuf::from(best["run"].as_str().unwrap());
    let m: serde_json::Value =
        serde_json::from_slice(&std::fs::read(cont.join("metrics.json")).unwrap()).unwrap();
    let epochs: Vec<u64> = m["evals"]
        .as_array()
        .unwrap()
        .iter()
        .filter(|e| e["split"] == "valid")
        .map(|e| e["epoch"].as_u64().unwrap())
        .collect();
    assert_eq!(epochs, vec![2, 3]);
    let csv = std::fs::read_to_string(tune_run.join("trials.csv")).unwrap();
    assert_eq!(csv.lines().count(), 4, "{csv}");
    let best_toml = std::fs::read_to_string(tune_run.join("best.toml")).unwrap();
    let spec = seqclust_job::JobSpec::from_toml_str(&best_toml).unwrap();
    assert_eq!(spec.name, "tiny");
    assert_eq!(spec.train.stop_after_epochs, 0);
    assert!(spec.train.resume_from.is_empty());
    assert_eq!(
        serde_json::json!(spec.encoder.dim),
        trial["params"]["encoder.dim"]
    );
    assert!(d.join("data/latest/tiny-tune").exists());
}
