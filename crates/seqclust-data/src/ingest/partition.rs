//! Pass 2 of ingest: one partition's events → sorted, de-duplicated, sessionised, truncated
//! user sequences → one Parquet shard.

use super::config::{Dedup, PreprocessConfig};
use super::spill::{Rec, SpillShared, decode};
use crate::dataset::SequenceBatch;
use crate::error::{Error, Result};
use crate::vocab::KeyVocab;

/// What pass 2 needs besides the partition.
pub(crate) struct PartitionCtx<'a> {
    pub spill: &'a SpillShared,
    pub n_numeric: usize,
    pub has_dwell: bool,
    pub numeric_names: &'a [String],
    /// Per parser thread: local item id → dataset-wide key index.
    pub item_remaps: &'a [Vec<u32>],
    /// Key index → item id.
    pub item_ids: &'a [u32],
    /// Per parser thread: local category id → dataset-wide key index.
    pub cat_remaps: &'a [Vec<u32>],
    /// Key index → category id.
    pub cat_ids: &'a [u32],
    pub action_remap: &'a [u16],
    pub pre: &'a PreprocessConfig,
    /// Valid events of the whole input, to size the timestamp sample.
    pub total_events: u64,
}

/// Per-shard statistics, merged into the manifest.
#[derive(Debug, Default, Clone)]
pub(crate) struct ShardStats {
    pub users: u64,
    pub events: u64,
    pub sessions: u64,
    pub duplicates: u64,
    pub truncated: u64,
    pub short_users: u64,
    pub short_events: u64,
    pub oov_events: u64,
    /// Histogram of sequence lengths (index = length).
    pub lengths: Vec<u64>,
    /// Events per final action id.
    pub actions: Vec<u64>,
    pub min_ts: i64,
    pub max_ts: i64,
    /// An evenly spaced sample of the shard's sorted timestamps, proportional to its size.
    pub ts_sample: Vec<i64>,
}

/// Timestamps kept for the quantile estimate over the whole dataset.
const TS_SAMPLE: u64 = 16_384;

pub(crate) fn process(p: usize, ctx: &PartitionCtx<'_>) -> Result<(SequenceBatch, ShardStats)> {
    let buf = ctx.spill.take(p)?;
    let what = format!("partition {p}");
    let mut recs = decode(&buf, ctx.n_numeric, &what)?;
    // thread-local ids → dataset-wide key indices (u32::MAX: no category)
    for r in &mut recs {
        let t = r.thread as usize;
        r.item = ctx.item_remaps[t][r.item as usize];
        if r.cat != u32::MAX {
            r.cat = ctx.cat_remaps[t][r.cat as usize];
        }
    }
    let b = &buf[..];
    let (order, bounds) = group_by_user(b, &recs);
    let pre = ctx.pre;
    let gap_ms = (pre.session_gap_s * 1000.0) as i64;
    let mut out = SequenceBatch::new(ctx.has_dwell, ctx.numeric_names.to_vec());
    let mut st = ShardStats {
        lengths: vec![0; pre.max_len + 1],
        min_ts: i64::MAX,
        max_ts: i64::MIN,
        ..Default::default()
    };
    let mut kept: Vec<usize> = Vec::new();
    for w in bounds.windows(2) {
        let (start, end) = (w[0] as usize, w[1] as usize);
        let user = Rec::bytes(b, recs[order[start] as usize].user);
        kept.clear();
        for i in order[start..end].iter().map(|&i| i as usize) {
            if let Some(&last) = kept.last() {
                let (x, y) = (&recs[last], &recs[i]);
                let dup = match pre.dedup {
                    Dedup::None => false,
                    Dedup::ItemAction => x.action == y.action && x.item == y.item,
                    Dedup::Exact => {
                        x.ts == y.ts
                            && x.action == y.action
                            && x.dwell.to_bits() == y.dwell.to_bits()
                            && x.item == y.item
                            && x.cat == y.cat
                            && b[x.num as usize..x.num as usize + 4 * ctx.n_numeric]
                                == b[y.num as usize..y.num as usize + 4 * ctx.n_numeric]
                    }
                };
                if dup {
                    st.duplicates += 1;
                    continue;
                }
            }
            kept.push(i);
        }
        if kept.len() < pre.min_len {
            st.short_users += 1;
            st.short_events += kept.len() as u64;
            continue;
        }
        // sessions over the whole history, then keep the most recent max_len
        let mut session = 0u32;
        let mut sessions: Vec<u32> = Vec::with_capacity(kept.len());
        for (k, &i) in kept.iter().enumerate() {
            if k > 0 && recs[i].ts - recs[kept[k - 1]].ts > gap_ms {
                session += 1;
            }
            sessions.push(session);
        }
        let cut = kept.len().saturating_sub(pre.max_len);
        st.truncated += cut as u64;
        let first_session = sessions[cut];
        let user_str = std::str::from_utf8(user).map_err(|_| Error::Shard {
            location: what.clone(),
            message: "user key is not UTF-8".into(),
        })?;
        out.begin_user(user_str);
        for (k, &i) in kept.iter().enumerate().skip(cut) {
            let r = &recs[i];
            let item = ctx.item_ids[r.item as usize];
            if item == KeyVocab::OOV {
                st.oov_events += 1;
            }
            let cat = if r.cat == u32::MAX {
                KeyVocab::PAD
            } else {
                ctx.cat_ids[r.cat as usize]
            };
            let action = ctx
                .action_remap
                .get(r.action as usize)
                .copied()
                .unwrap_or(0);
            if let Some(n) = st.actions.get_mut(action as usize) {
                *n += 1;
            } else {
                st.actions.resize(action as usize + 1, 0);
                st.actions[action as usize] += 1;
            }
            st.min_ts = st.min_ts.min(r.ts);
            st.max_ts = st.max_ts.max(r.ts);
            out.push_event(
                item,
                action,
                cat,
                r.ts,
                sessions[k] - first_session,
                r.dwell,
                (0..ctx.n_numeric).map(|j| r.numeric(b, j)),
            );
        }
        out.end_user();
        let len = kept.len() - cut;
        st.users += 1;
        st.events += len as u64;
        st.sessions += u64::from(session - first_session) + 1;
        st.lengths[len.min(pre.max_len)] += 1;
    }
    let want = if ctx.total_events == 0 {
        0
    } else {
        ((out.timestamps.len() as u64 * TS_SAMPLE).div_ceil(ctx.total_events))
            .min(out.timestamps.len() as u64) as usize
    };
    if want > 0 {
        let step = out.timestamps.len() as f64 / want as f64;
        st.ts_sample = (0..want)
            .map(|k| out.timestamps[((k as f64 + 0.5) * step) as usize])
            .collect();
    }
    Ok((out, st))
}

/// Record indices grouped by user (users in key order), each user's records sorted by
/// (time, input order), and the group boundaries. Users are interned first so that only the
/// distinct keys are compared as strings.
fn group_by_user(b: &[u8], recs: &[Rec]) -> (Vec<u32>, Vec<u32>) {
    let mut ids: rustc_hash::FxHashMap<&[u8], u32> = rustc_hash::FxHashMap::default();
    let mut keys: Vec<&[u8]> = Vec::new();
    let mut user_of: Vec<u32> = Vec::with_capacity(recs.len());
    for r in recs {
        let k = Rec::bytes(b, r.user);
        let id = *ids.entry(k).or_insert_with(|| {
            keys.push(k);
            keys.len() as u32 - 1
        });
        user_of.push(id);
    }
    let mut by_key: Vec<u32> = (0..keys.len() as u32).collect();
    by_key.sort_unstable_by(|&x, &y| keys[x as usize].cmp(keys[y as usize]));
    let mut rank = vec![0u32; keys.len()];
    for (r, &u) in by_key.iter().enumerate() {
        rank[u as usize] = r as u32;
    }
    // counting sort by user rank, then each user's few records by (time, input order)
    let mut start = vec![0u32; keys.len() + 1];
    for &u in &user_of {
        start[rank[u as usize] as usize + 1] += 1;
    }
    for i in 1..start.len() {
        start[i] += start[i - 1];
    }
    let mut next = start.clone();
    let mut order = vec![0u32; recs.len()];
    for (i, &u) in user_of.iter().enumerate() {
        let slot = &mut next[rank[u as usize] as usize];
        order[*slot as usize] = i as u32;
        *slot += 1;
    }
    for w in start.windows(2) {
        order[w[0] as usize..w[1] as usize]
            .sort_unstable_by_key(|&i| (recs[i as usize].ts, recs[i as usize].seq));
    }
    (order, start)
}
