//! A committed run, loaded for serving: every file read through the verifying reader.

use rustc_hash::FxHashMap;

use seqclust_analysis::RecommendConfig;
use seqclust_artifacts::Run;
use seqclust_artifacts::tensors::{CENTROIDS, Centroids};
use seqclust_data::vocab::KeyVocab;
use seqclust_kmeans::{Metric, Packed};
use seqclust_model::{ItemScorer, Precision, SeqModel};
use seqclust_trainer::Owned;

use crate::error::{Error, Result};

/// The most events a request may carry (only the most recent `encoder.max_len` are used).
pub const MAX_EVENTS: usize = 10_000;

/// One event of a request, as raw keys.
#[derive(Debug, Clone, Default, serde::Deserialize, serde::Serialize)]
#[serde(deny_unknown_fields)]
pub struct EventIn {
    /// Item key.
    pub item: String,
    /// Action name; empty: the first action of the vocabulary.
    #[serde(default)]
    pub action: String,
    /// Category key; empty: the item's most frequent category.
    #[serde(default)]
    pub category: String,
    /// Milliseconds since the epoch; 0: unknown.
    #[serde(default)]
    pub timestamp_ms: i64,
}

/// What is served.
pub struct Loaded {
    /// Run id.
    pub run_id: String,
    /// Job name.
    pub name: String,
    /// Commit time.
    pub committed_unix_ms: i64,
    /// The encoder.
    pub model: SeqModel,
    /// Where it was read from: `model`, or `model-int8` (`train.export_int8`) when serving
    /// int8 from a run that has one.
    pub model_dir: &'static str,
    /// The item table for Recommend, in the serving precision.
    pub scorer: ItemScorer,
    /// The centroids, packed for assignment.
    pub packed: Packed,
    /// k.
    pub k: usize,
    /// Item vocabulary.
    pub items: KeyVocab,
    categories: KeyVocab,
    actions: FxHashMap<String, u16>,
    action_names: Vec<String>,
    item_category: FxHashMap<u32, u32>,
    /// Trending items per cluster (sparse).
    pub trending: Vec<Vec<(u32, f32)>>,
    /// The run's recommendation settings.
    pub recommend: RecommendConfig,
}

fn bad_run(run: &Run, message: impl Into<String>) -> Error {
    Error::Run {
        run: run.location().to_string(),
        message: message.into(),
    }
}

impl Loaded {
    /// Loads and checks everything serving needs from a committed run; Recommend scores the
    /// item table in `precision`. int8 serving reads the run's int8 model when it has one.
    pub async fn load(run: &Run, precision: Precision) -> Result<Loaded> {
        let int8 = seqclust_trainer::INT8_MODEL_DIR;
        let model_dir = if precision == Precision::Int8
            && run
                .manifest()
                .file(&format!("{int8}/encoder.safetensors"))
                .is_some()
        {
            int8
        } else {
            "model"
        };
        let (mut model, _) = seqclust_trainer::model_from_bytes(
            &run.read(&format!("{model_dir}/config.json")).await?,
            &run.read(&format!("{model_dir}/encoder.safetensors"))
                .await?,
            &run.location().display_of(model_dir),
        )?;
        let c = Centroids::from_safetensors(
            &run.read(CENTROIDS).await?,
            &run.location().display_of(CENTROIDS),
        )?;
        let d = model.config().dim;
        // int8 serving holds the item table as int8 alone, for the encoder's input rows and
        // the scoring; scoring leaves out the Cloze mask row and shares the table's buffer
        if precision == Precision::Int8 {
            model.items.quantize_in_place()?;
        }
        let scorer = ItemScorer::of_table(&model.items, model.vocab().items, precision)?;
        if c.d != d {
            return Err(bad_run(
                run,
                format!("centroids have dimension {}, the encoder {d}", c.d),
            ));
        }
        let config = &run.manifest().info.config;
        let metric: Metric = serde_json::from_value(config["kmeans"]["metric"].clone())
            .map_err(|e| bad_run(run, format!("config.kmeans.metric: {e}")))?;
        let recommend: RecommendConfig = match config.get("recommend") {
            Some(v) => serde_json::from_value(v.clone())
                .map_err(|e| bad_run(run, format!("config.recommend: {e}")))?,
            None => RecommendConfig::default(),
        };
        let k = c.k;
        let packed = Packed::new(&seqclust_kmeans::Centroids::new(c.values, d)?, metric);
        let vocab = |rel: &'static str| async move {
            let bytes = run.read(rel).await?;
            Ok::<_, Error>(KeyVocab::from_parquet(
                bytes,
                &run.location().display_of(rel),
            )?)
        };
        let items = vocab("model/vocab/items.parquet").await?;
        let categories = vocab("model/vocab/categories.parquet").await?;
        let action_names: Vec<String> = serde_json::from_slice::<serde_json::Value>(
            &run.read("model/vocab/actions.json").await?,
        )
        .ok()
        .and_then(|v| serde_json::from_value(v["actions"].clone()).ok())
        .ok_or_else(|| bad_run(run, "model/vocab/actions.json has no actions list"))?;
        let actions = action_names
            .iter()
            .enumerate()
            .skip(1)
            .map(|(i, a)| (a.clone(), i as u16))
            .collect();
        let mut item_category = FxHashMap::default();
        if run
            .manifest()
            .file(seqclust_analysis::ITEM_CATEGORIES)
            .is_some()
        {
            let bytes = run.read(seqclust_analysis::ITEM_CATEGORIES).await?;
            for (i, c) in key_pairs(
                bytes,
                &run.location()
                    .display_of(seqclust_analysis::ITEM_CATEGORIES),
            )? {
                if let (Some(i), Some(c)) = (items.get(&i), categories.get(&c)) {
                    item_category.insert(i, c);
                }
            }
        }
        let mut trending = vec![Vec::new(); k];
        if run.manifest().file(seqclust_analysis::TRENDING).is_some() {
            let v: serde_json::Value =
                serde_json::from_slice(&run.read(seqclust_analysis::TRENDING).await?)
                    .map_err(|e| bad_run(run, format!("{}: {e}", seqclust_analysis::TRENDING)))?;
            let clusters: Vec<Vec<(String, f32)>> =
                serde_json::from_value(v["clusters"].clone())
                    .map_err(|e| bad_run(run, format!("{}: {e}", seqclust_analysis::TRENDING)))?;
            for (row, list) in trending.iter_mut().zip(clusters) {
                *row = list
                    .into_iter()
                    .filter_map(|(key, s)| items.get(&key).map(|i| (i, s)))
                    .collect();
            }
        }
        Ok(Loaded {
            run_id: run.id().to_string(),
            name: run.manifest().info.name.clone(),
            committed_unix_ms: run.manifest().committed_unix_ms,
            model,
            model_dir,
            scorer,
            packed,
            k,
            items,
            categories,
            actions,
            action_names,
            item_category,
            trending,
            recommend,
        })
    }

    /// Turns request events into model input; unknown items become out-of-vocabulary, and the
    /// count of them is returned. Errors name the event and field.
    pub fn parse(&self, events: &[EventIn]) -> Result<(Owned, u32)> {
        if events.is_empty() {
            return Err(Error::BadRequest(
                "events: empty sequence (give at least one event)".into(),
            ));
        }
        if events.len() > MAX_EVENTS {
            return Err(Error::BadRequest(format!(
                "events: {} events, at most {MAX_EVENTS} are accepted (only the last {} are used)",
                events.len(),
                self.model.config().max_len
            )));
        }
        let keep = events.len().saturating_sub(self.model.config().max_len);
        let events = &events[keep..];
        let mut u = Owned {
            user: String::new(),
            items: Vec::with_capacity(events.len()),
            actions: Vec::with_capacity(events.len()),
            categories: Vec::with_capacity(events.len()),
            timestamps: Vec::with_capacity(events.len()),
        };
        let mut unknown = 0;
        for (i, e) in events.iter().enumerate() {
            let item = if e.item.is_empty() {
                return Err(Error::BadRequest(format!(
                    "events[{}].item: empty",
                    i + keep
                )));
            } else {
                self.items.get(&e.item).unwrap_or_else(|| {
                    unknown += 1;
                    KeyVocab::OOV
                })
            };
            let action = if e.action.is_empty() {
                1
            } else {
                *self.actions.get(&e.action).ok_or_else(|| {
                    Error::BadRequest(format!(
                        "events[{}].action: unknown action {:?} (this run knows {})",
                        i + keep,
                        e.action,
                        self.action_names[1..].join(", ")
                    ))
                })?
            };
            let category = if e.category.is_empty() {
                self.item_category
                    .get(&item)
                    .copied()
                    .unwrap_or(KeyVocab::OOV)
            } else {
                self.categories.get(&e.category).unwrap_or(KeyVocab::OOV)
            };
            u.items.push(item);
            u.actions.push(action);
            u.categories.push(category);
            u.timestamps.push(e.timestamp_ms);
        }
        Ok((u, unknown))
    }

    /// The key of item id `i`.
    pub fn item_key(&self, i: u32) -> String {
        self.items.key(i).unwrap_or("<oov>").to_string()
    }
}

/// The (item, category) rows of the item-categories file.
fn key_pairs(bytes: bytes::Bytes, location: &str) -> Result<Vec<(String, String)>> {
    use arrow_array::Array;
    use arrow_array::cast::AsArray;
    let bad = |m: String| Error::Run {
        run: location.to_string(),
        message: m,
    };
    let reader = parquet::arrow::arrow_reader::ParquetRecordBatchReaderBuilder::try_new(bytes)
        .map_err(|e| bad(e.to_string()))?
        .build()
        .map_err(|e| bad(e.to_string()))?;
    let mut out = Vec::new();
    for b in reader {
        let b = b.map_err(|e| bad(e.to_string()))?;
        let col = |name: &str| {
            b.column_by_name(name)
                .and_then(|c| c.as_string_opt::<i32>().cloned())
                .ok_or_else(|| bad(format!("no string column {name:?}")))
        };
        let (i, c) = (col("item")?, col("category")?);
        out.extend((0..i.len()).map(|r| (i.value(r).to_string(), c.value(r).to_string())));
    }
    Ok(out)
}
