//! Pass 2 of ingest: one partition's events → sorted, de-duplicated, sessionised, truncated
//! user sequences → one Parquet shard.

use super::config::{Dedup, PreprocessConfig};
use super::spill::{Rec, decode, partition_path};
use crate::dataset::SequenceBatch;
use crate::error::{Error, Result};
use crate::vocab::KeyVocab;

/// What pass 2 needs besides the partition.
pub(crate) struct PartitionCtx<'a> {
    pub dir: &'a std::path::Path,
    pub n_numeric: usize,
    pub has_dwell: bool,
    pub numeric_names: &'a [String],
    pub items: &'a KeyVocab,
    pub categories: &'a KeyVocab,
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
    let path = partition_path(ctx.dir, p);
    let buf = std::fs::read(&path).map_err(|e| Error::io(path.display(), e))?;
    let mut recs = decode(&buf, ctx.n_numeric, &path.display().to_string())?;
    let b = &buf[..];
    recs.sort_unstable_by(|x, y| {
        Rec::bytes(b, x.user)
            .cmp(Rec::bytes(b, y.user))
            .then(x.ts.cmp(&y.ts))
            .then(x.seq.cmp(&y.seq))
    });
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
    let mut all_ts: Vec<i64> = Vec::new();
    let mut start = 0;
    while start < recs.len() {
        let user = Rec::bytes(b, recs[start].user);
        let mut end = start + 1;
        while end < recs.len() && Rec::bytes(b, recs[end].user) == user {
            end += 1;
        }
        kept.clear();
        for i in start..end {
            if let Some(&last) = kept.last() {
                let (x, y) = (&recs[last], &recs[i]);
                let dup = match pre.dedup {
                    Dedup::None => false,
                    Dedup::ItemAction => {
                        x.action == y.action && Rec::bytes(b, x.item) == Rec::bytes(b, y.item)
                    }
                    Dedup::Exact => {
                        x.ts == y.ts
                            && x.action == y.action
                            && x.dwell.to_bits() == y.dwell.to_bits()
                            && Rec::bytes(b, x.item) == Rec::bytes(b, y.item)
                            && x.category(b) == y.category(b)
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
            start = end;
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
            location: path.display().to_string(),
            message: "user key is not UTF-8".into(),
        })?;
        out.begin_user(user_str);
        for (k, &i) in kept.iter().enumerate().skip(cut) {
            let r = &recs[i];
            let item = ctx.items.id(Rec::bytes(b, r.item));
            if item == KeyVocab::OOV {
                st.oov_events += 1;
            }
            let cat = match r.category(b) {
                None => KeyVocab::PAD,
                Some(c) => ctx.categories.id(c),
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
            all_ts.push(r.ts);
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
        start = end;
    }
    all_ts.sort_unstable();
    let want = if ctx.total_events == 0 {
        0
    } else {
        ((all_ts.len() as u64 * TS_SAMPLE).div_ceil(ctx.total_events)).min(all_ts.len() as u64)
            as usize
    };
    if want > 0 {
        let step = all_ts.len() as f64 / want as f64;
        st.ts_sample = (0..want)
            .map(|k| all_ts[((k as f64 + 0.5) * step) as usize])
            .collect();
    }
    Ok((out, st))
}
