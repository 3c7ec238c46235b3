//! `seqclust gen`: a planted-persona event generator.
//!
//! Users belong to one of up to eight personas (see [`PERSONAS`]) that differ in *sequential*
//! behaviour — browse-many-then-leave vs. buy-at-once, back-and-forth comparison, category
//! cycles that are the same set of categories walked in opposite directions, weekly repeat
//! purchases, a night-time rhythm, cart abandonment — while all drawing items from one shared,
//! Zipf-popular catalogue. A bag-of-items model therefore cannot separate them fully (the two
//! cyclers have the same item distribution), while a sequence model can.
//!
//! Every user's events come from its own ChaCha8 stream seeded from `(seed, user)`, so output
//! is identical for a seed whatever the thread count, and users are generated in blocks that
//! are written as they finish: memory does not grow with the number of users.

mod catalog;
mod persona;

use std::io::Write;
use std::path::Path;

use rand::rngs::ChaCha8Rng;
use rand::{RngExt, SeedableRng};
use serde::{Deserialize, Serialize};

pub use persona::{GenEvent, PERSONAS};

use crate::error::{Error, Result};
use crate::event::STANDARD_ACTIONS;
use crate::ingest::Progress;

/// Generator settings.
#[derive(Debug, Clone, PartialEq, Serialize, Deserialize)]
#[serde(default, deny_unknown_fields)]
pub struct GenConfig {
    /// Number of users.
    pub users: u64,
    /// Number of personas (1..=8), taken from the start of [`PERSONAS`].
    pub personas: usize,
    /// Catalogue size.
    pub items: u32,
    /// Number of categories.
    pub categories: u32,
    /// Mean events per user (at least 5).
    pub mean_events: f64,
    /// Zipf exponent of item popularity.
    pub zipf_s: f64,
    /// Seed.
    pub seed: u64,
    /// Earliest user start, Unix seconds (default 2026-01-01T00:00:00Z).
    pub start_unix_s: i64,
    /// Users start uniformly within this many days.
    pub days: u32,
}

impl Default for GenConfig {
    fn default() -> Self {
        GenConfig {
            users: 10_000,
            personas: 8,
            items: 20_000,
            categories: 50,
            mean_events: 50.0,
            zipf_s: 1.05,
            seed: 42,
            start_unix_s: 1_767_225_600,
            days: 30,
        }
    }
}

impl GenConfig {
    /// Checks the settings; errors name the field.
    pub fn validate(&self) -> Result<()> {
        if self.users == 0 {
            return Err(Error::config("gen.users", "must be at least 1"));
        }
        if !(1..=PERSONAS.len()).contains(&self.personas) {
            return Err(Error::config(
                "gen.personas",
                format!("must be between 1 and {}", PERSONAS.len()),
            ));
        }
        if self.categories < 2 || self.items < self.categories {
            return Err(Error::config(
                "gen.items",
                "need at least 2 categories and as many items as categories",
            ));
        }
        if !(self.mean_events >= 5.0 && self.mean_events <= 100_000.0) {
            return Err(Error::config(
                "gen.mean_events",
                "must be between 5 and 100000",
            ));
        }
        if !(self.zipf_s > 0.0 && self.zipf_s < 5.0) {
            return Err(Error::config("gen.zipf_s", "must be in (0, 5)"));
        }
        if self.days == 0 {
            return Err(Error::config("gen.days", "must be at least 1"));
        }
        Ok(())
    }
}

/// Generates users one at a time.
pub struct Generator {
    cfg: GenConfig,
    catalog: catalog::Catalog,
}

fn mix(mut x: u64) -> u64 {
    x = x.wrapping_add(0x9e37_79b9_7f4a_7c15);
    x = (x ^ (x >> 30)).wrapping_mul(0xbf58_476d_1ce4_e5b9);
    x = (x ^ (x >> 27)).wrapping_mul(0x94d0_49bb_1331_11eb);
    x ^ (x >> 31)
}

impl Generator {
    /// Builds the catalogue.
    pub fn new(cfg: GenConfig) -> Result<Generator> {
        cfg.validate()?;
        let catalog = catalog::Catalog::new(cfg.items, cfg.categories, cfg.zipf_s, cfg.seed);
        Ok(Generator { cfg, catalog })
    }

    /// Appends user `idx`'s (0-based) events to `out`, in time order; returns its persona.
    pub fn user(&self, idx: u64, out: &mut Vec<GenEvent>) -> usize {
        let mut rng = ChaCha8Rng::seed_from_u64(mix(self.cfg.seed ^ mix(idx)));
        let persona = rng.random_range(0..self.cfg.personas);
        let extra = self.cfg.mean_events - 5.0;
        let e: f64 = -(1.0 - rng.random::<f64>()).ln();
        let target = (5.0 + (extra * e).round()).min(10.0 * self.cfg.mean_events) as usize;
        let t0 = self.cfg.start_unix_s + rng.random_range(0..i64::from(self.cfg.days) * 86_400);
        let mut g = persona::UserGen {
            catalog: &self.catalog,
            user: idx + 1,
            t: t0,
            out,
        };
        g.run(persona, target, &mut rng);
        persona
    }
}

/// Output file format of the generator.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "snake_case")]
pub enum GenFormat {
    /// `user_id,item_id,category_id,action,timestamp,dwell` with a header; gzip when the path
    /// ends in `.gz`.
    Csv,
    /// The same columns in Parquet.
    Parquet,
}

/// What was generated.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct GenSummary {
    /// Users written.
    pub users: u64,
    /// Events written.
    pub events: u64,
    /// Users per persona.
    pub per_persona: Vec<u64>,
}

const BLOCK: u64 = 4096;

struct Block {
    events: Vec<GenEvent>,
    truth: Vec<(u64, usize)>,
}

fn make_block(g: &Generator, b: u64) -> Block {
    let lo = b * BLOCK;
    let hi = ((b + 1) * BLOCK).min(g.cfg.users);
    let mut events = Vec::with_capacity(((hi - lo) as f64 * g.cfg.mean_events * 1.1) as usize);
    let mut truth = Vec::with_capacity((hi - lo) as usize);
    for u in lo..hi {
        let p = g.user(u, &mut events);
        truth.push((u + 1, p));
    }
    // interleave the block's users by time, as a log would
    events.sort_by_key(|e| (e.ts, e.user));
    Block { events, truth }
}

fn csv_bytes(events: &[GenEvent], out: &mut Vec<u8>) {
    let mut ib = itoa::Buffer::new();
    for e in events {
        out.extend_from_slice(ib.format(e.user).as_bytes());
        out.push(b',');
        out.extend_from_slice(ib.format(e.item).as_bytes());
        out.push(b',');
        out.extend_from_slice(ib.format(e.category).as_bytes());
        out.push(b',');
        out.extend_from_slice(STANDARD_ACTIONS[e.action as usize].as_bytes());
        out.push(b',');
        out.extend_from_slice(ib.format(e.ts).as_bytes());
        out.push(b',');
        let tenths = (e.dwell * 10.0).round() as i64;
        out.extend_from_slice(ib.format(tenths / 10).as_bytes());
        out.push(b'.');
        out.push(b'0' + (tenths % 10) as u8);
        out.push(b'\n');
    }
}

fn parquet_batch(events: &[GenEvent]) -> Result<arrow_array::RecordBatch> {
    use std::sync::Arc;

    use arrow_array::{ArrayRef, Float32Array, Int64Array, StringArray};
    let cols: Vec<ArrayRef> = vec![
        Arc::new(Int64Array::from_iter_values(
            events.iter().map(|e| e.user as i64),
        )),
        Arc::new(Int64Array::from_iter_values(
            events.iter().map(|e| i64::from(e.item)),
        )),
        Arc::new(Int64Array::from_iter_values(
            events.iter().map(|e| i64::from(e.category)),
        )),
        Arc::new(StringArray::from_iter_values(
            events.iter().map(|e| STANDARD_ACTIONS[e.action as usize]),
        )),
        Arc::new(Int64Array::from_iter_values(events.iter().map(|e| e.ts))),
        Arc::new(Float32Array::from_iter_values(
            events.iter().map(|e| e.dwell),
        )),
    ];
    arrow_array::RecordBatch::try_new(gen_schema(), cols).map_err(|source| Error::Arrow {
        context: "building generated events".into(),
        source,
    })
}

fn gen_schema() -> std::sync::Arc<arrow_schema::Schema> {
    use arrow_schema::{DataType, Field, Schema};
    std::sync::Arc::new(Schema::new(vec![
        Field::new("user_id", DataType::Int64, false),
        Field::new("item_id", DataType::Int64, false),
        Field::new("category_id", DataType::Int64, false),
        Field::new("action", DataType::Utf8, false),
        Field::new("timestamp", DataType::Int64, false),
        Field::new("dwell", DataType::Float32, false),
    ]))
}

/// The column mapping that reads generated files back (for `seqclust ingest`).
pub fn gen_columns() -> crate::source::ColumnMap {
    use crate::source::ColumnRef;
    crate::source::ColumnMap {
        user: Some(ColumnRef::Name("user_id".into())),
        item: Some(ColumnRef::Name("item_id".into())),
        timestamp: Some(ColumnRef::Name("timestamp".into())),
        action: Some(ColumnRef::Name("action".into())),
        category: Some(ColumnRef::Name("category_id".into())),
        dwell: Some(ColumnRef::Name("dwell".into())),
        numeric: vec![],
    }
}

enum Sink {
    Csv(Box<dyn Write>),
    Parquet(Box<parquet::arrow::ArrowWriter<std::fs::File>>),
}

/// Writes events (and, when `truth` is given, `user_id,persona,persona_name` per user).
pub fn generate_to_files(
    cfg: &GenConfig,
    events_path: &Path,
    truth_path: Option<&Path>,
    format: GenFormat,
    progress: &dyn Progress,
) -> Result<GenSummary> {
    let g = Generator::new(cfg.clone())?;
    if let Some(dir) = events_path.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir.display(), e))?;
    }
    let file =
        std::fs::File::create(events_path).map_err(|e| Error::io(events_path.display(), e))?;
    let mut sink = match format {
        GenFormat::Csv => {
            let buffered = std::io::BufWriter::with_capacity(1 << 20, file);
            let mut w: Box<dyn Write> = if events_path.extension().is_some_and(|e| e == "gz") {
                Box::new(flate2::write::GzEncoder::new(
                    buffered,
                    flate2::Compression::new(1),
                ))
            } else {
                Box::new(buffered)
            };
            w.write_all(b"user_id,item_id,category_id,action,timestamp,dwell\n")
                .map_err(|e| Error::io(events_path.display(), e))?;
            Sink::Csv(w)
        }
        GenFormat::Parquet => {
            let props = parquet::file::properties::WriterProperties::builder()
                .set_compression(parquet::basic::Compression::SNAPPY)
                .build();
            let w = parquet::arrow::ArrowWriter::try_new(file, gen_schema(), Some(props)).map_err(
                |source| Error::Parquet {
                    path: events_path.display().to_string(),
                    source,
                },
            )?;
            Sink::Parquet(Box::new(w))
        }
    };
    let mut truth = match truth_path {
        Some(p) => {
            let mut w = std::io::BufWriter::new(
                std::fs::File::create(p).map_err(|e| Error::io(p.display(), e))?,
            );
            w.write_all(b"user_id,persona,persona_name\n")
                .map_err(|e| Error::io(p.display(), e))?;
            Some((w, p))
        }
        None => None,
    };
    let blocks = cfg.users.div_ceil(BLOCK);
    let group = (rayon::current_num_threads() * 2) as u64;
    let mut summary = GenSummary {
        per_persona: vec![0; cfg.personas],
        ..Default::default()
    };
    progress.phase("generate", Some(cfg.users));
    let mut text = Vec::new();
    let mut b0 = 0;
    while b0 < blocks {
        use rayon::prelude::*;
        let b1 = (b0 + group).min(blocks);
        let done: Vec<Block> = (b0..b1)
            .into_par_iter()
            .map(|b| make_block(&g, b))
            .collect();
        for blk in done {
            match &mut sink {
                Sink::Csv(w) => {
                    text.clear();
                    csv_bytes(&blk.events, &mut text);
                    w.write_all(&text)
                        .map_err(|e| Error::io(events_path.display(), e))?;
                }
                Sink::Parquet(w) => {
                    w.write(&parquet_batch(&blk.events)?)
                        .map_err(|source| Error::Parquet {
                            path: events_path.display().to_string(),
                            source,
                        })?;
                }
            }
            if let Some((w, p)) = &mut truth {
                let mut ib = itoa::Buffer::new();
                for (u, persona) in &blk.truth {
                    let line = format!("{},{},{}\n", ib.format(*u), persona, PERSONAS[*persona]);
                    w.write_all(line.as_bytes())
                        .map_err(|e| Error::io(p.display(), e))?;
                }
            }
            summary.users += blk.truth.len() as u64;
            summary.events += blk.events.len() as u64;
            for (_, p) in &blk.truth {
                summary.per_persona[*p] += 1;
            }
            progress.inc(blk.truth.len() as u64);
        }
        b0 = b1;
    }
    match sink {
        Sink::Csv(mut w) => w.flush().map_err(|e| Error::io(events_path.display(), e))?,
        Sink::Parquet(w) => {
            w.close().map_err(|source| Error::Parquet {
                path: events_path.display().to_string(),
                source,
            })?;
        }
    }
    if let Some((mut w, p)) = truth {
        w.flush().map_err(|e| Error::io(p.display(), e))?;
    }
    Ok(summary)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn deterministic_per_user() {
        let g = Generator::new(GenConfig {
            users: 100,
            ..Default::default()
        })
        .unwrap();
        let (mut a, mut b) = (Vec::new(), Vec::new());
        let pa = g.user(17, &mut a);
        let pb = g.user(17, &mut b);
        assert_eq!(pa, pb);
        assert_eq!(a, b);
        assert!(a.len() >= 5);
        assert!(a.windows(2).all(|w| w[0].ts <= w[1].ts), "time order");
    }

    #[test]
    fn personas_behave_differently() {
        let g = Generator::new(GenConfig {
            users: 4000,
            ..Default::default()
        })
        .unwrap();
        let mut buys = [(0u64, 0u64); 8];
        for u in 0..4000 {
            let mut ev = Vec::new();
            let p = g.user(u, &mut ev);
            buys[p].0 += ev.iter().filter(|e| e.action == persona::BUY).count() as u64;
            buys[p].1 += ev.len() as u64;
        }
        // window shoppers never buy, decisive and repeat buyers buy often
        assert_eq!(buys[0].0, 0);
        assert!(buys[1].0 * 5 > buys[1].1, "{:?}", buys[1]);
        assert!(buys[5].0 * 4 > buys[5].1, "{:?}", buys[5]);
    }

    #[test]
    fn cyclers_share_items_but_not_order() {
        let g = Generator::new(GenConfig {
            users: 3000,
            ..Default::default()
        })
        .unwrap();
        let mut fwd_next = 0usize;
        let mut rev_next = 0usize;
        let cat = &g.catalog;
        let rank = |c: u32| {
            cat.popular_cats
                .iter()
                .position(|&x| x + 1 == c)
                .unwrap_or(usize::MAX)
        };
        for u in 0..3000 {
            let mut ev = Vec::new();
            let p = g.user(u, &mut ev);
            if p == 3 || p == 4 {
                for w in ev.windows(2) {
                    if w[1].ts - w[0].ts < 3600
                        && rank(w[1].category) == (rank(w[0].category) + 1) % 12
                    {
                        if p == 3 { fwd_next += 1 } else { rev_next += 1 }
                    }
                }
            }
        }
        assert!(
            fwd_next > 10 * rev_next.max(1),
            "fwd {fwd_next} rev {rev_next}"
        );
    }
}
