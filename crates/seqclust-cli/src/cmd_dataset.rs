//! `seqclust dataset`: inspect and list committed datasets.

use anyhow::{Context, Result};
use clap::{Args, Subcommand};
use seqclust_data::Dataset;
use seqclust_data::store::is_url;

use crate::summary;

/// Inspect committed datasets.
#[derive(Debug, Args)]
pub struct DatasetArgs {
    #[command(subcommand)]
    cmd: DatasetCmd,
}

#[derive(Debug, Subcommand)]
enum DatasetCmd {
    /// Summary, vocabulary and sample users of a dataset.
    Inspect {
        /// A dataset directory or URL, or NAME[/VERSION] under --root (newest version by default).
        dataset: String,
        /// Storage root for NAME lookups.
        #[arg(long, env = "SEQCLUST_ROOT", default_value = "./seqclust-data")]
        root: String,
        /// Show this many users of the first shard.
        #[arg(long, default_value_t = 3)]
        users: usize,
        /// Check every file's size and sha256 against the manifest.
        #[arg(long)]
        verify: bool,
        /// Print the manifest as JSON instead.
        #[arg(long)]
        json: bool,
    },
    /// Committed datasets and versions under a root.
    List {
        /// Storage root.
        #[arg(long, env = "SEQCLUST_ROOT", default_value = "./seqclust-data")]
        root: String,
    },
}

/// Opens a dataset given as a location or as NAME[/VERSION] under `root`.
pub async fn open(spec: &str, root: &str) -> Result<Dataset> {
    let local = std::path::Path::new(spec);
    let ds = if is_url(spec) || local.is_absolute() || local.exists() {
        Dataset::open(spec).await?
    } else {
        Dataset::open_in(root, spec).await?
    };
    Ok(ds)
}

pub fn run(a: DatasetArgs, rt: &tokio::runtime::Runtime) -> Result<()> {
    match a.cmd {
        DatasetCmd::Inspect {
            dataset,
            root,
            users,
            verify,
            json,
        } => rt.block_on(async {
            let ds = open(&dataset, &root).await?;
            if verify {
                ds.verify().await.context("verification failed")?;
            }
            if json {
                println!("{}", serde_json::to_string_pretty(ds.manifest())?);
                return Ok(());
            }
            summary::print_manifest(&ds.location().to_string(), ds.manifest(), None);
            if verify {
                println!(
                    "verified: {} files match their sha256",
                    ds.manifest().files.len()
                );
            }
            if users > 0 && ds.num_shards() > 0 {
                let items = ds.item_vocab().await?;
                let actions = &ds.manifest().vocab.actions;
                let shard = ds.read_shard(0).await?;
                for s in shard.iter().take(users) {
                    let shown: Vec<String> = (0..s.len().min(8))
                        .map(|k| {
                            format!(
                                "{}:{}",
                                actions
                                    .get(s.actions[k] as usize)
                                    .map_or("?", String::as_str),
                                items.key(s.items[k]).unwrap_or("?")
                            )
                        })
                        .collect();
                    let more = if s.len() > 8 {
                        format!(" … (+{})", s.len() - 8)
                    } else {
                        String::new()
                    };
                    println!(
                        "user {} ({} events, {} sessions): {}{more}",
                        s.user,
                        s.len(),
                        s.sessions.last().map_or(0, |x| x + 1),
                        shown.join(" ")
                    );
                }
            }
            Ok(())
        }),
        DatasetCmd::List { root } => rt.block_on(async {
            let all = seqclust_data::dataset::list_datasets(&root).await?;
            if all.is_empty() {
                println!("no committed datasets under {root}");
            }
            for (name, versions) in all {
                println!("{name}: {}", versions.join(", "));
            }
            Ok(())
        }),
    }
}
