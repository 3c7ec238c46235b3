//! Conversions between the wire types (`v1::*`) and the domain types of `seqclust-job`.
//!
//! Wire → domain is `TryFrom` (an unset optional field takes the domain default; a bad
//! enum name is an error naming the field); domain → wire is `From` with every field set.

use serde::Serialize;
use serde::de::DeserializeOwned;

use seqclust_job::{Error, JobRecord, JobSpec, Phase};
use seqclust_kmeans::Init;
use seqclust_model::NextItemLoss;

use crate::v1;

/// The snake_case name serde gives a unit enum variant.
fn name_of<T: Serialize>(v: &T) -> String {
    match serde_json::to_value(v) {
        Ok(serde_json::Value::String(s)) => s,
        _ => String::new(),
    }
}

fn parse_name<T: DeserializeOwned>(field: &str, s: &str) -> Result<T, Error> {
    serde_json::from_value(serde_json::Value::String(s.to_string()))
        .map_err(|_| Error::field(field, format!("unknown value {s:?}")))
}

fn usize_of(v: u32) -> usize {
    v as usize
}

/// Sets `$dst` from `$src` when the optional wire field is present.
macro_rules! set {
    ($dst:expr, $src:expr) => {
        if let Some(v) = $src {
            $dst = v;
        }
    };
    ($dst:expr, $src:expr, $f:expr) => {
        if let Some(v) = $src {
            $dst = $f(v);
        }
    };
}

impl TryFrom<v1::JobSpec> for JobSpec {
    type Error = Error;

    fn try_from(p: v1::JobSpec) -> Result<JobSpec, Error> {
        let mut s = JobSpec {
            name: p.name,
            output: p.output_uri,
            ..JobSpec::default()
        };
        if let Some(d) = p.dataset {
            s.dataset.uri = d.uri;
            if !d.root.is_empty() {
                s.dataset.root = d.root;
            }
        }
        if let Some(e) = p.encoder {
            let c = &mut s.encoder;
            if let Some(k) = e.kind {
                c.kind = parse_name("encoder.kind", &k)?;
            }
            set!(c.dim, e.dim, usize_of);
            set!(c.layers, e.layers, usize_of);
            set!(c.heads, e.heads, usize_of);
            set!(c.ff_mult, e.ff_mult, usize_of);
            set!(c.dropout, e.dropout);
            set!(c.max_len, e.max_len, usize_of);
            set!(c.use_action, e.use_action);
            set!(c.use_category, e.use_category);
            set!(c.use_time_gap, e.use_time_gap);
            set!(c.time_buckets, e.time_buckets, usize_of);
            if let Some(k) = e.pooling {
                c.pooling = parse_name("encoder.pooling", &k)?;
            }
            set!(c.normalize, e.normalize);
            set!(c.use_hour, e.use_hour);
            set!(c.event_heads, e.event_heads);
            set!(c.whiten, e.whiten);
        }
        if let Some(o) = p.objective {
            let c = &mut s.objective;
            set!(c.next_item, o.next_item);
            match o.next_item_loss.as_deref() {
                None => {}
                Some("full") => c.next_item_loss = NextItemLoss::Full,
                Some("in_batch") => c.next_item_loss = NextItemLoss::InBatch,
                Some("sampled") => {
                    c.next_item_loss = NextItemLoss::Sampled {
                        negatives: o.negatives.map_or(1024, usize_of),
                    }
                }
                Some(other) => {
                    return Err(Error::field(
                        "objective.next_item_loss",
                        format!("unknown value {other:?} (full, sampled, in_batch)"),
                    ));
                }
            }
            if let Some(k) = o.next_item_positions {
                c.next_item_positions = parse_name("objective.next_item_positions", &k)?;
            }
            set!(c.contrastive, o.contrastive);
            set!(c.temperature, o.temperature);
            set!(c.crop_ratio, o.crop_ratio);
            set!(c.mask_ratio, o.mask_ratio);
            set!(c.reorder_ratio, o.reorder_ratio);
            set!(c.cloze, o.cloze);
            set!(c.cloze_prob, o.cloze_prob);
            set!(c.next_event, o.next_event);
            set!(c.intent, o.intent);
            set!(c.dec, o.dec);
            set!(c.intents, o.intents, usize_of);
            set!(c.intent_temperature, o.intent_temperature);
            set!(c.cluster_warmup_epochs, o.cluster_warmup_epochs, usize_of);
            set!(c.intent_whiten, o.intent_whiten);
            set!(c.distill, o.distill);
            set!(c.distill_temperature, o.distill_temperature);
        }
        if let Some(t) = p.train {
            let c = &mut s.train;
            set!(c.epochs, t.epochs, usize_of);
            set!(c.batch_size, t.batch_size, usize_of);
            set!(c.lr, t.lr);
            set!(c.weight_decay, t.weight_decay);
            set!(c.warmup_steps, t.warmup_steps);
            set!(c.min_lr_ratio, t.min_lr_ratio);
            set!(c.clip_norm, t.clip_norm);
            set!(c.seed, t.seed);
            set!(c.eval_every, t.eval_every, usize_of);
            set!(c.patience, t.patience, usize_of);
            set!(c.eval_users, t.eval_users, usize_of);
            set!(c.checkpoint_every, t.checkpoint_every);
            set!(c.log_every, t.log_every);
            set!(c.init_from, t.init_from);
            set!(c.resume_from, t.resume_from);
            set!(c.stop_after_epochs, t.stop_after_epochs, usize_of);
            set!(c.export_int8, t.export_int8);
            set!(c.teacher, t.teacher);
        }
        if let Some(k) = p.kmeans {
            let c = &mut s.kmeans;
            set!(c.k, k.k, usize_of);
            if let Some(m) = k.metric {
                c.metric = parse_name("kmeans.metric", &m)?;
            }
            if let Some(a) = k.algorithm {
                c.algorithm = parse_name("kmeans.algorithm", &a)?;
            }
            set!(c.batch_size, k.batch_size, usize_of);
            set!(c.epochs, k.epochs);
            set!(c.max_iter, k.max_iter, usize_of);
            set!(c.tol, k.tol);
            set!(c.init_sample, k.init_sample, usize_of);
            set!(c.seed, k.seed);
            set!(c.min_improvement, k.min_improvement);
            set!(c.max_no_improvement, k.max_no_improvement, usize_of);
            set!(c.reassignment_ratio, k.reassignment_ratio);
            set!(
                c.max_points_per_centroid,
                k.max_points_per_centroid,
                usize_of
            );
            let (mut rounds, mut oversampling) = match c.init {
                Init::KMeansParallel {
                    rounds,
                    oversampling,
                } => (rounds, oversampling),
                _ => (5, 2.0),
            };
            set!(rounds, k.init_rounds, usize_of);
            set!(oversampling, k.init_oversampling);
            c.init = match k.init.as_deref() {
                None | Some("k_means_parallel") => Init::KMeansParallel {
                    rounds,
                    oversampling,
                },
                Some("random") => Init::Random,
                Some("k_means_plus_plus") => Init::KMeansPlusPlus,
                Some(other) => {
                    return Err(Error::field(
                        "kmeans.init",
                        format!(
                            "unknown value {other:?} (random, k_means_plus_plus, k_means_parallel)"
                        ),
                    ));
                }
            };
        }
        if let Some(r) = p.resources {
            set!(s.resources.min_workers, r.min_workers, usize_of);
            set!(s.resources.max_workers, r.max_workers, usize_of);
        }
        if let Some(a) = p.analysis {
            let c = &mut s.analysis;
            set!(c.enabled, a.enabled);
            set!(c.top_items, a.top_items, usize_of);
            set!(c.min_support, a.min_support);
            set!(c.min_share, a.min_share);
            if !a.motif_lengths.is_empty() {
                c.motif_lengths = a.motif_lengths.into_iter().map(usize_of).collect();
            }
            set!(c.top_motifs, a.top_motifs, usize_of);
            set!(c.medoids, a.medoids, usize_of);
            set!(c.tree_depth, a.tree_depth, usize_of);
            set!(c.tree_users, a.tree_users, usize_of);
            set!(c.tree_categories, a.tree_categories, usize_of);
            set!(c.tree_transitions, a.tree_transitions, usize_of);
            set!(c.pseudonymize, a.pseudonymize);
            set!(c.pseudonym_key_env, a.pseudonym_key_env);
        }
        if let Some(r) = p.recommend {
            let c = &mut s.recommend;
            set!(c.enabled, r.enabled);
            set!(c.n, r.n, usize_of);
            set!(c.model_weight, r.model_weight);
            set!(c.cluster_weight, r.cluster_weight);
            set!(c.exclude_seen, r.exclude_seen);
            set!(c.trending_half_life_days, r.trending_half_life_days);
            set!(c.eval_users, r.eval_users, usize_of);
        }
        Ok(s)
    }
}

fn u32_of(v: usize) -> u32 {
    u32::try_from(v).unwrap_or(u32::MAX)
}

impl From<&JobSpec> for v1::JobSpec {
    fn from(s: &JobSpec) -> v1::JobSpec {
        let e = &s.encoder;
        let o = &s.objective;
        let t = &s.train;
        let k = &s.kmeans;
        let (loss, negatives) = match o.next_item_loss {
            NextItemLoss::Full => ("full", None),
            NextItemLoss::InBatch => ("in_batch", None),
            NextItemLoss::Sampled { negatives } => ("sampled", Some(u32_of(negatives))),
        };
        let (init, rounds, oversampling) = match k.init {
            Init::Random => ("random", None, None),
            Init::KMeansPlusPlus => ("k_means_plus_plus", None, None),
            Init::KMeansParallel {
                rounds,
                oversampling,
            } => ("k_means_parallel", Some(u32_of(rounds)), Some(oversampling)),
        };
        v1::JobSpec {
            name: s.name.clone(),
            dataset: Some(v1::DatasetSpec {
                uri: s.dataset.uri.clone(),
                root: s.dataset.root.clone(),
            }),
            output_uri: s.output.clone(),
            encoder: Some(v1::EncoderSpec {
                kind: Some(name_of(&e.kind)),
                dim: Some(u32_of(e.dim)),
                layers: Some(u32_of(e.layers)),
                heads: Some(u32_of(e.heads)),
                ff_mult: Some(u32_of(e.ff_mult)),
                dropout: Some(e.dropout),
                max_len: Some(u32_of(e.max_len)),
                use_action: Some(e.use_action),
                use_category: Some(e.use_category),
                use_time_gap: Some(e.use_time_gap),
                time_buckets: Some(u32_of(e.time_buckets)),
                pooling: Some(name_of(&e.pooling)),
                normalize: Some(e.normalize),
                use_hour: Some(e.use_hour),
                event_heads: Some(e.event_heads),
                whiten: Some(e.whiten),
            }),
            objective: Some(v1::ObjectiveSpec {
                next_item: Some(o.next_item),
                next_item_loss: Some(loss.into()),
                negatives,
                next_item_positions: Some(name_of(&o.next_item_positions)),
                contrastive: Some(o.contrastive),
                temperature: Some(o.temperature),
                crop_ratio: Some(o.crop_ratio),
                mask_ratio: Some(o.mask_ratio),
                reorder_ratio: Some(o.reorder_ratio),
                cloze: Some(o.cloze),
                cloze_prob: Some(o.cloze_prob),
                next_event: Some(o.next_event),
                intent: Some(o.intent),
                dec: Some(o.dec),
                intents: Some(u32_of(o.intents)),
                intent_temperature: Some(o.intent_temperature),
                cluster_warmup_epochs: Some(u32_of(o.cluster_warmup_epochs)),
                intent_whiten: Some(o.intent_whiten),
                distill: Some(o.distill),
                distill_temperature: Some(o.distill_temperature),
            }),
            train: Some(v1::TrainSpec {
                epochs: Some(u32_of(t.epochs)),
                batch_size: Some(u32_of(t.batch_size)),
                lr: Some(t.lr),
                weight_decay: Some(t.weight_decay),
                warmup_steps: Some(t.warmup_steps),
                min_lr_ratio: Some(t.min_lr_ratio),
                clip_norm: Some(t.clip_norm),
                seed: Some(t.seed),
                eval_every: Some(u32_of(t.eval_every)),
                patience: Some(u32_of(t.patience)),
                eval_users: Some(u32_of(t.eval_users)),
                checkpoint_every: Some(t.checkpoint_every),
                log_every: Some(t.log_every),
                init_from: Some(t.init_from.clone()),
                resume_from: Some(t.resume_from.clone()),
                stop_after_epochs: Some(u32_of(t.stop_after_epochs)),
                export_int8: Some(t.export_int8),
                teacher: Some(t.teacher.clone()),
            }),
            kmeans: Some(v1::KMeansSpec {
                k: Some(u32_of(k.k)),
                metric: Some(name_of(&k.metric)),
                algorithm: Some(name_of(&k.algorithm)),
                batch_size: Some(u32_of(k.batch_size)),
                epochs: Some(k.epochs),
                max_iter: Some(u32_of(k.max_iter)),
                tol: Some(k.tol),
                init_sample: Some(u32_of(k.init_sample)),
                init_rounds: rounds,
                init_oversampling: oversampling,
                seed: Some(k.seed),
                init: Some(init.into()),
                min_improvement: Some(k.min_improvement),
                max_no_improvement: Some(u32_of(k.max_no_improvement)),
                reassignment_ratio: Some(k.reassignment_ratio),
                max_points_per_centroid: Some(u32_of(k.max_points_per_centroid)),
            }),
            resources: Some(v1::Resources {
                min_workers: Some(u32_of(s.resources.min_workers)),
                max_workers: Some(u32_of(s.resources.max_workers)),
            }),
            analysis: Some(v1::AnalysisSpec {
                enabled: Some(s.analysis.enabled),
                top_items: Some(u32_of(s.analysis.top_items)),
                min_support: Some(s.analysis.min_support),
                min_share: Some(s.analysis.min_share),
                motif_lengths: s
                    .analysis
                    .motif_lengths
                    .iter()
                    .map(|&n| u32_of(n))
                    .collect(),
                top_motifs: Some(u32_of(s.analysis.top_motifs)),
                medoids: Some(u32_of(s.analysis.medoids)),
                tree_depth: Some(u32_of(s.analysis.tree_depth)),
                tree_users: Some(u32_of(s.analysis.tree_users)),
                tree_categories: Some(u32_of(s.analysis.tree_categories)),
                tree_transitions: Some(u32_of(s.analysis.tree_transitions)),
                pseudonymize: Some(s.analysis.pseudonymize),
                pseudonym_key_env: Some(s.analysis.pseudonym_key_env.clone()),
            }),
            recommend: Some(v1::RecommendSpec {
                enabled: Some(s.recommend.enabled),
                n: Some(u32_of(s.recommend.n)),
                model_weight: Some(s.recommend.model_weight),
                cluster_weight: Some(s.recommend.cluster_weight),
                exclude_seen: Some(s.recommend.exclude_seen),
                trending_half_life_days: Some(s.recommend.trending_half_life_days),
                eval_users: Some(u32_of(s.recommend.eval_users)),
            }),
        }
    }
}

impl From<Phase> for v1::Phase {
    fn from(p: Phase) -> v1::Phase {
        match p {
            Phase::Pending => v1::Phase::Pending,
            Phase::Train => v1::Phase::Train,
            Phase::Embed => v1::Phase::Embed,
            Phase::KmeansInit => v1::Phase::KmeansInit,
            Phase::Kmeans => v1::Phase::Kmeans,
            Phase::Assign => v1::Phase::Assign,
            Phase::Analyze => v1::Phase::Analyze,
            Phase::Commit => v1::Phase::Commit,
            Phase::Succeeded => v1::Phase::Succeeded,
            Phase::Failed => v1::Phase::Failed,
            Phase::Cancelled => v1::Phase::Cancelled,
        }
    }
}

impl TryFrom<v1::Phase> for Phase {
    type Error = Error;

    fn try_from(p: v1::Phase) -> Result<Phase, Error> {
        Ok(match p {
            v1::Phase::Unspecified => return Err(Error::field("phase", "unspecified")),
            v1::Phase::Pending => Phase::Pending,
            v1::Phase::Train => Phase::Train,
            v1::Phase::Embed => Phase::Embed,
            v1::Phase::KmeansInit => Phase::KmeansInit,
            v1::Phase::Kmeans => Phase::Kmeans,
            v1::Phase::Assign => Phase::Assign,
            v1::Phase::Analyze => Phase::Analyze,
            v1::Phase::Commit => Phase::Commit,
            v1::Phase::Succeeded => Phase::Succeeded,
            v1::Phase::Failed => Phase::Failed,
            v1::Phase::Cancelled => Phase::Cancelled,
        })
    }
}

impl From<&JobRecord> for v1::Job {
    fn from(r: &JobRecord) -> v1::Job {
        v1::Job {
            id: r.id.clone(),
            spec: Some((&r.spec).into()),
            phase: v1::Phase::from(r.phase) as i32,
            phase_progress: r.phase_progress,
            message: r.message.clone(),
            error: r.error.clone(),
            run_uri: r.run_uri.clone(),
            created_unix_ms: r.created_unix_ms,
            updated_unix_ms: r.updated_unix_ms,
            world_size: u32_of(r.world_size),
            membership_epoch: r.membership_epoch,
            phase_times: r
                .phase_times
                .iter()
                .map(|t| v1::PhaseTime {
                    phase: v1::Phase::from(t.phase) as i32,
                    seconds: t.seconds,
                })
                .collect(),
        }
    }
}

/// An error and its causes on one line, as `TaskResult.error` and `Job.error` carry it
/// (a cause whose text the line already holds is not repeated).
pub fn error_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        let m = c.to_string();
        if !s.contains(&m) {
            s.push_str(": ");
            s.push_str(&m);
        }
        cur = c.source();
    }
    s
}

/// The domain phase of a wire job (unknown numbers map to an error).
pub fn phase_of(job: &v1::Job) -> Result<Phase, Error> {
    let p = v1::Phase::try_from(job.phase)
        .map_err(|_| Error::field("phase", format!("unknown phase {}", job.phase)))?;
    Phase::try_from(p)
}

#[cfg(test)]
mod tests {
    #![allow(clippy::unwrap_used)]
    use super::*;

    #[test]
    fn a_spec_survives_the_wire() {
        let mut s = JobSpec::from_toml_str(
            "name = \"j\"\n[dataset]\nuri = \"d\"\n[encoder]\nkind = \"gru\"\n\
             use_hour = true\nevent_heads = true\nwhiten = true\n\
             [objective]\nnext_item_loss = { kind = \"sampled\", negatives = 77 }\n\
             next_event = 0.5\nintent = 0.1\ndec = 0.2\nintents = 12\n\
             intent_temperature = 0.3\ncluster_warmup_epochs = 3\nintent_whiten = false\n\
             distill = 0.7\ndistill_temperature = 3.0\n\
             [kmeans]\nk = 33\nmetric = \"cosine\"\n[train]\nepochs = 6\nresume_from = \"runs/a\"\nstop_after_epochs = 2\n\
             export_int8 = true\nteacher = \"runs/big\"\n\
             [analysis]\ntree_transitions = 5\n",
        )
        .unwrap();
        s.resources.min_workers = 2;
        let wire = v1::JobSpec::from(&s);
        let back = JobSpec::try_from(wire).unwrap();
        assert_eq!(back, s);
    }

    #[test]
    fn unset_fields_take_defaults_and_bad_names_are_named() {
        let s = JobSpec::try_from(v1::JobSpec {
            name: "j".into(),
            ..Default::default()
        })
        .unwrap();
        assert_eq!(s.kmeans, JobSpec::default().kmeans);
        let e = JobSpec::try_from(v1::JobSpec {
            encoder: Some(v1::EncoderSpec {
                kind: Some("cnn".into()),
                ..Default::default()
            }),
            ..Default::default()
        })
        .unwrap_err();
        assert_eq!(e.field_name(), Some("encoder.kind"));
    }
}
