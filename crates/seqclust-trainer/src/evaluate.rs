//! Evaluation and embedding with a trained model.

use serde::{Deserialize, Serialize};

use seqclust_model::eval::Candidates;
use seqclust_model::features::SeqBuf;
use seqclust_model::{
    BatchInput, HistoryMask, ItemScorer, Precision, RankMetrics, SeqInput, SeqModel,
    full_ranking_with, sampled_ranking,
};

use crate::error::Result;
use crate::examples::Owned;

/// The cut-offs reported.
pub const KS: [usize; 3] = [5, 10, 20];

/// User vectors of the given sequences (`n × dim`, row-major), in batches.
pub fn embed(model: &SeqModel, seqs: &[Owned], batch: usize) -> Result<Vec<f32>> {
    let cfg = model.config();
    let mut out = Vec::with_capacity(seqs.len() * cfg.dim);
    for chunk in seqs.chunks(batch.max(1)) {
        let inputs: Vec<SeqInput<'_>> = chunk.iter().map(Owned::input).collect();
        let mut b = BatchInput::encode(&inputs, cfg.max_len, cfg.time_buckets);
        if let Some(mask) = model.mask_token() {
            // a bidirectional encoder predicts at an appended mask token, as BERT4Rec does
            b = with_mask_token(&inputs, cfg.max_len, cfg.time_buckets, mask);
        }
        out.extend(model.embed(&b)?);
    }
    Ok(out)
}

/// The vectors clustering uses for the given sequences: [`embed`], whitened when the model
/// has a whitening (`encoder.whiten`).
pub fn embed_for_clusters(model: &SeqModel, seqs: &[Owned], batch: usize) -> Result<Vec<f32>> {
    Ok(model.cluster_vectors(embed(model, seqs, batch)?))
}

/// The encode batch of sequences with a mask token appended to each (the position whose state
/// a bidirectional encoder uses as the user vector).
fn with_mask_token(seqs: &[SeqInput<'_>], max_len: usize, buckets: usize, mask: u32) -> BatchInput {
    let owned: Vec<SeqBuf> = seqs
        .iter()
        .map(|s| {
            let mut b = SeqBuf::from_input(s);
            b.items.push(mask);
            b.actions.push(0);
            b.categories.push(0);
            b.timestamps.push(*b.timestamps.last().unwrap_or(&0));
            b
        })
        .collect();
    let inputs: Vec<SeqInput<'_>> = owned.iter().map(SeqBuf::input).collect();
    BatchInput::encode(&inputs, max_len, buckets)
}

/// Ranking metrics of next-item prediction on held-out examples.
#[derive(Debug, Clone, Default, PartialEq, Serialize, Deserialize)]
pub struct Evaluation {
    /// Full ranking, the user's earlier items excluded.
    pub full: RankMetrics,
    /// Full ranking with earlier items scored 0, as the S3-Rec / ICLRec code does.
    pub full_zero_mask: RankMetrics,
    /// The target against 99 unseen items drawn uniformly (seed 12345).
    pub sampled_99: RankMetrics,
}

/// Evaluates on `(history, target)` examples.
pub fn evaluate(model: &SeqModel, examples: &[(Owned, u32)], batch: usize) -> Result<Evaluation> {
    evaluate_scored(model, examples, batch, Precision::F32)
}

/// [`evaluate`] with the full rankings scored in `precision` (int8: as `seqclust serve
/// --precision int8` ranks); the sampled ranking is always f32.
pub fn evaluate_scored(
    model: &SeqModel,
    examples: &[(Owned, u32)],
    batch: usize,
    precision: Precision,
) -> Result<Evaluation> {
    let hist: Vec<Owned> = examples.iter().map(|(h, _)| h.clone()).collect();
    let targets: Vec<u32> = examples.iter().map(|(_, t)| *t).collect();
    let histories: Vec<Vec<u32>> = hist.iter().map(|h| h.items.clone()).collect();
    let users = embed(model, &hist, batch)?;
    let d = model.config().dim;
    let items = model.items.values();
    // scoring uses the item table without the Cloze mask row
    let items = &items[..model.vocab().items * d];
    let c = Candidates {
        users: &users,
        items,
        d,
        targets: &targets,
        histories: &histories,
    };
    let scorer = ItemScorer::of_table(&model.items, model.vocab().items, precision)?;
    Ok(Evaluation {
        full: full_ranking_with(c, &scorer, &KS, HistoryMask::Exclude)?,
        full_zero_mask: full_ranking_with(c, &scorer, &KS, HistoryMask::Zero)?,
        sampled_99: sampled_ranking(c, 99, &KS, 12345),
    })
}
