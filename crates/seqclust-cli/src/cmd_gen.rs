//! `seqclust gen`: planted-persona events.

use std::path::PathBuf;

use anyhow::{Context, Result};
use clap::Args;
use seqclust_data::generator::{GenConfig, GenFormat, PERSONAS, generate_to_files};

use crate::progress::Bars;

/// Generate behaviour events of users with planted personas, and the true persona per user.
#[derive(Debug, Args)]
pub struct GenArgs {
    /// Events file to write (.csv, .csv.gz or .parquet).
    #[arg(long, short)]
    out: PathBuf,
    /// Persona of each user (`user_id,persona,persona_name`); default: next to the events file
    /// as `<name>.truth.csv`.
    #[arg(long)]
    truth: Option<PathBuf>,
    /// Do not write the truth file.
    #[arg(long, conflicts_with = "truth")]
    no_truth: bool,
    /// Number of users.
    #[arg(long, default_value_t = GenConfig::default().users)]
    users: u64,
    /// Number of personas (1-8).
    #[arg(long, default_value_t = GenConfig::default().personas)]
    personas: usize,
    /// Catalogue size.
    #[arg(long, default_value_t = GenConfig::default().items)]
    items: u32,
    /// Number of categories.
    #[arg(long, default_value_t = GenConfig::default().categories)]
    categories: u32,
    /// Mean events per user.
    #[arg(long, default_value_t = GenConfig::default().mean_events)]
    mean_events: f64,
    /// Random seed.
    #[arg(long, default_value_t = GenConfig::default().seed)]
    seed: u64,
    /// Output format (default: from the file name).
    #[arg(long, value_parser = ["csv", "parquet"])]
    format: Option<String>,
    /// No progress bar.
    #[arg(long, short)]
    quiet: bool,
}

fn default_truth(out: &std::path::Path) -> PathBuf {
    let name = out.file_name().and_then(|n| n.to_str()).unwrap_or("events");
    let stem = name.split('.').next().unwrap_or(name);
    out.with_file_name(format!("{stem}.truth.csv"))
}

pub fn run(a: GenArgs) -> Result<()> {
    let cfg = GenConfig {
        users: a.users,
        personas: a.personas,
        items: a.items,
        categories: a.categories,
        mean_events: a.mean_events,
        seed: a.seed,
        ..GenConfig::default()
    };
    let name = a.out.to_string_lossy().to_ascii_lowercase();
    let format = match a.format.as_deref() {
        Some("parquet") => GenFormat::Parquet,
        Some(_) => GenFormat::Csv,
        None if name.ends_with(".parquet") => GenFormat::Parquet,
        None => GenFormat::Csv,
    };
    let truth = if a.no_truth {
        None
    } else {
        Some(a.truth.clone().unwrap_or_else(|| default_truth(&a.out)))
    };
    let bars = Bars::new(a.quiet);
    let t = std::time::Instant::now();
    let summary = generate_to_files(&cfg, &a.out, truth.as_deref(), format, &bars)
        .with_context(|| format!("generating {}", a.out.display()))?;
    bars.finish();
    let secs = t.elapsed().as_secs_f64();
    eprintln!(
        "wrote {} events of {} users to {} in {:.1} s ({:.2} M events/s)",
        summary.events,
        summary.users,
        a.out.display(),
        secs,
        summary.events as f64 / secs / 1e6
    );
    if let Some(t) = &truth {
        let mix: Vec<String> = summary
            .per_persona
            .iter()
            .enumerate()
            .map(|(p, n)| format!("{}={n}", PERSONAS[p]))
            .collect();
        eprintln!("personas in {}: {}", t.display(), mix.join(" "));
    }
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn truth_name() {
        assert_eq!(
            default_truth(std::path::Path::new("/d/ev.csv.gz")),
            PathBuf::from("/d/ev.truth.csv")
        );
    }
}
