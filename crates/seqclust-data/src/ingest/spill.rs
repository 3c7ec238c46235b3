//! Pass 1 of ingest: each parser thread appends its events to per-partition scratch files
//! (partition = hash of the user key), interning item and category keys to thread-local ids
//! and counting them.
//!
//! A spilled record is
//! `u16 user_len, user, u8 thread, u32 item (thread-local id), u32 category (thread-local id,
//! u32::MAX = none), i64 ts_ms, u16 action, u64 seq, f32 dwell (NaN = none), f32 × n_numeric`,
//! little-endian. [`Interner::merge`] turns the thread-local ids into dataset-wide ones.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;
use std::sync::atomic::{AtomicUsize, Ordering};

use rustc_hash::FxHashMap;

use crate::error::{Error, Result};
use crate::quarantine::{BadReason, Quarantine};
use crate::source::sink::{EventSink, RawEvent, RowPos};

/// Most distinct action names a dataset may have.
pub(crate) const MAX_ACTIONS: usize = 1024;

/// The partition of a user key: FNV-1a 64 with a final avalanche, modulo the partition count.
/// Stable across runs and platforms, so a user always lands in the same shard.
pub fn partition_of(user: &[u8], partitions: usize) -> usize {
    let mut h: u64 = 0xcbf2_9ce4_8422_2325;
    for &b in user {
        h ^= u64::from(b);
        h = h.wrapping_mul(0x0100_0000_01b3);
    }
    h ^= h >> 33;
    h = h.wrapping_mul(0xff51_afd7_ed55_8ccd);
    h ^= h >> 33;
    (h % partitions as u64) as usize
}

/// Action names seen so far, shared by the parser threads; ids are provisional until
/// [`crate::ingest::vocab`] renumbers them deterministically.
#[derive(Debug, Default)]
pub(crate) struct ActionRegistry {
    pub names: Vec<String>,
    index: FxHashMap<String, u16>,
}

impl ActionRegistry {
    fn id(&mut self, canonical: String) -> Option<u16> {
        if let Some(&id) = self.index.get(&canonical) {
            return Some(id);
        }
        if self.names.len() >= MAX_ACTIONS {
            return None;
        }
        let id = self.names.len() as u16;
        self.names.push(canonical.clone());
        self.index.insert(canonical, id);
        Some(id)
    }
}

/// One partition's records: in memory while the budget lasts, then appended to a scratch
/// file. Record order does not matter (pass 2 sorts by user, time and input order).
#[derive(Debug, Default)]
pub(crate) struct PartStore {
    mem: Vec<u8>,
    file: Option<File>,
}

/// State shared by all parser threads.
pub(crate) struct SpillShared {
    parts: Vec<Mutex<PartStore>>,
    dir: std::path::PathBuf,
    mem_used: AtomicUsize,
    mem_budget: usize,
    pub actions: Mutex<ActionRegistry>,
    pub aliases: std::collections::BTreeMap<String, String>,
    pub default_action: String,
    pub n_numeric: usize,
    pub file_names: Vec<String>,
}

impl SpillShared {
    pub fn create(
        dir: &std::path::Path,
        partitions: usize,
        mem_budget: usize,
        aliases: std::collections::BTreeMap<String, String>,
        default_action: String,
        n_numeric: usize,
        file_names: Vec<String>,
    ) -> Result<Self> {
        Ok(SpillShared {
            parts: (0..partitions)
                .map(|_| Mutex::new(PartStore::default()))
                .collect(),
            dir: dir.to_path_buf(),
            mem_used: AtomicUsize::new(0),
            mem_budget,
            actions: Mutex::new(ActionRegistry::default()),
            aliases,
            default_action,
            n_numeric,
            file_names,
        })
    }

    /// Number of partitions.
    pub fn partitions(&self) -> usize {
        self.parts.len()
    }

    /// Appends a block of records to partition `p`.
    fn append(&self, p: usize, data: &[u8]) -> std::io::Result<()> {
        let mut part = self.parts[p]
            .lock()
            .map_err(|_| std::io::Error::other("a parser thread panicked"))?;
        let used = self.mem_used.fetch_add(data.len(), Ordering::Relaxed) + data.len();
        if used <= self.mem_budget {
            part.mem.extend_from_slice(data);
            return Ok(());
        }
        self.mem_used.fetch_sub(data.len(), Ordering::Relaxed);
        if part.file.is_none() {
            part.file = Some(File::create(partition_path(&self.dir, p))?);
        }
        match part.file.as_mut() {
            Some(f) => f.write_all(data),
            None => Ok(()),
        }
    }

    /// Takes all of partition `p`'s records (scratch file first, then memory).
    pub fn take(&self, p: usize) -> Result<Vec<u8>> {
        let path = partition_path(&self.dir, p);
        let mut part = self.parts[p]
            .lock()
            .map_err(|_| Error::Internal("a parser thread panicked"))?;
        let mem = std::mem::take(&mut part.mem);
        self.mem_used.fetch_sub(mem.len(), Ordering::Relaxed);
        let Some(file) = part.file.take() else {
            return Ok(mem);
        };
        drop(file);
        let mut buf = std::fs::read(&path).map_err(|e| Error::io(path.display(), e))?;
        let _ = std::fs::remove_file(&path);
        buf.extend_from_slice(&mem);
        Ok(buf)
    }

    fn canonical(&self, raw: &[u8]) -> String {
        if raw.is_empty() {
            return self.default_action.clone();
        }
        let lower = String::from_utf8_lossy(raw).trim().to_ascii_lowercase();
        match self.aliases.get(&lower) {
            Some(c) => c.clone(),
            None => crate::event::canonical_action(&lower),
        }
    }
}

/// The scratch file of partition `p`.
pub(crate) fn partition_path(dir: &std::path::Path, p: usize) -> std::path::PathBuf {
    dir.join(format!("p{p:05}.bin"))
}

/// One parser thread's sink.
pub(crate) struct SpillSink<'a> {
    shared: &'a SpillShared,
    bufs: Vec<Vec<u8>>,
    flush_at: usize,
    pub items: Interner,
    pub categories: Interner,
    thread: u8,
    action_cache: FxHashMap<Box<[u8]>, u16>,
    pub events: u64,
    pub min_ts: i64,
    pub max_ts: i64,
    pub quarantine: Quarantine,
    pub error: Option<Error>,
    pub too_many_actions: bool,
    /// Whether any event had a dwell time.
    pub dwell_seen: bool,
}

impl<'a> SpillSink<'a> {
    pub fn new(shared: &'a SpillShared, flush_at: usize, thread: u8) -> Self {
        SpillSink {
            shared,
            bufs: vec![Vec::new(); shared.partitions()],
            flush_at,
            items: Interner::default(),
            categories: Interner::default(),
            thread,
            action_cache: FxHashMap::default(),
            events: 0,
            min_ts: i64::MAX,
            max_ts: i64::MIN,
            quarantine: Quarantine::default(),
            error: None,
            too_many_actions: false,
            dwell_seen: false,
        }
    }

    fn flush(&mut self, p: usize) {
        if self.bufs[p].is_empty() {
            return;
        }
        let res = self.shared.append(p, &self.bufs[p]);
        if let Err(e) = res
            && self.error.is_none()
        {
            self.error = Some(Error::io("a partition scratch file", e));
        }
        self.bufs[p].clear();
    }

    /// Writes out every buffer; returns the first I/O error seen.
    pub fn finish(&mut self) -> Result<()> {
        for p in 0..self.bufs.len() {
            self.flush(p);
        }
        match self.error.take() {
            Some(e) => Err(e),
            None => Ok(()),
        }
    }

    fn action_id(&mut self, raw: &[u8]) -> Option<u16> {
        if let Some(&id) = self.action_cache.get(raw) {
            return Some(id);
        }
        let canonical = self.shared.canonical(raw);
        let id = self.shared.actions.lock().ok()?.id(canonical)?;
        self.action_cache.insert(raw.into(), id);
        Some(id)
    }
}

/// Keys to dense thread-local ids, with occurrence counts.
#[derive(Debug, Default)]
pub(crate) struct Interner {
    index: FxHashMap<Box<[u8]>, u32>,
    pub counts: Vec<u64>,
}

impl Interner {
    fn intern(&mut self, key: &[u8]) -> u32 {
        if let Some(&id) = self.index.get(key) {
            self.counts[id as usize] += 1;
            return id;
        }
        let id = self.counts.len() as u32;
        self.index.insert(key.into(), id);
        self.counts.push(1);
        id
    }

    /// Merges the threads' interners: returns every distinct key with its total count, and per
    /// thread the map from its local ids to indices into that list.
    pub fn merge(parts: Vec<Interner>) -> Merged {
        let mut global: FxHashMap<Box<[u8]>, u32> = FxHashMap::default();
        let mut keys = Vec::new();
        let mut counts: Vec<u64> = Vec::new();
        let mut remaps = Vec::with_capacity(parts.len());
        for part in parts {
            let mut remap = vec![0u32; part.counts.len()];
            for (key, local) in part.index {
                let c = part.counts[local as usize];
                let id = match global.get(&key) {
                    Some(&id) => id,
                    None => {
                        let id = keys.len() as u32;
                        global.insert(key.clone(), id);
                        keys.push(key);
                        counts.push(0);
                        id
                    }
                };
                counts[id as usize] += c;
                remap[local as usize] = id;
            }
            remaps.push(remap);
        }
        Merged {
            keys,
            counts,
            remaps,
        }
    }
}

/// The threads' interners merged.
pub(crate) struct Merged {
    /// Every distinct key.
    pub keys: Vec<Box<[u8]>>,
    /// Total count per key.
    pub counts: Vec<u64>,
    /// Per thread: local id → index into `keys`.
    pub remaps: Vec<Vec<u32>>,
}

impl EventSink for SpillSink<'_> {
    fn event(&mut self, ev: &RawEvent<'_>, pos: RowPos) {
        let Some(action) = self.action_id(ev.action) else {
            self.too_many_actions = true;
            self.quarantine.add(
                BadReason::Malformed,
                &self.shared.file_names[pos.file as usize],
                pos.line,
                "action",
                ev.action,
            );
            return;
        };
        self.events += 1;
        self.dwell_seen |= ev.dwell.is_some();
        self.min_ts = self.min_ts.min(ev.ts_ms);
        self.max_ts = self.max_ts.max(ev.ts_ms);
        let item = self.items.intern(ev.item);
        let cat = ev.category.map_or(u32::MAX, |c| self.categories.intern(c));
        let p = partition_of(ev.user, self.bufs.len());
        let b = &mut self.bufs[p];
        b.extend_from_slice(&(ev.user.len() as u16).to_le_bytes());
        b.extend_from_slice(ev.user);
        b.push(self.thread);
        b.extend_from_slice(&item.to_le_bytes());
        b.extend_from_slice(&cat.to_le_bytes());
        b.extend_from_slice(&ev.ts_ms.to_le_bytes());
        b.extend_from_slice(&action.to_le_bytes());
        b.extend_from_slice(&pos.seq.to_le_bytes());
        b.extend_from_slice(&ev.dwell.unwrap_or(f32::NAN).to_le_bytes());
        for k in 0..self.shared.n_numeric {
            b.extend_from_slice(&ev.numeric.get(k).copied().unwrap_or(f32::NAN).to_le_bytes());
        }
        if b.len() >= self.flush_at {
            self.flush(p);
        }
    }

    fn bad(&mut self, reason: BadReason, pos: RowPos, field: &str, text: &[u8]) {
        self.quarantine.add(
            reason,
            &self.shared.file_names[pos.file as usize],
            pos.line,
            field,
            text,
        );
    }
}

/// A spilled record, decoded; the user key points into the partition buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rec {
    pub user: (u32, u16),
    pub thread: u8,
    /// Thread-local item id.
    pub item: u32,
    /// Thread-local category id, `u32::MAX` for none.
    pub cat: u32,
    pub ts: i64,
    pub action: u16,
    pub seq: u64,
    pub dwell: f32,
    /// Offset of the first numeric value.
    pub num: u32,
}

impl Rec {
    pub fn bytes(buf: &[u8], r: (u32, u16)) -> &[u8] {
        &buf[r.0 as usize..r.0 as usize + r.1 as usize]
    }

    pub fn numeric(&self, buf: &[u8], k: usize) -> f32 {
        let o = self.num as usize + 4 * k;
        f32::from_le_bytes([buf[o], buf[o + 1], buf[o + 2], buf[o + 3]])
    }
}

/// Decodes a whole partition buffer.
pub(crate) fn decode(buf: &[u8], n_numeric: usize, what: &str) -> Result<Vec<Rec>> {
    if buf.len() > u32::MAX as usize {
        return Err(Error::config(
            "output.shards",
            format!(
                "{what} holds {} bytes, above 4 GiB: use more shards",
                buf.len()
            ),
        ));
    }
    let corrupt = || Error::Shard {
        location: what.to_string(),
        message: "truncated scratch record".into(),
    };
    let fixed = 1 + 4 + 4 + 8 + 2 + 8 + 4 + 4 * n_numeric;
    let mut out = Vec::with_capacity(buf.len() / (fixed + 8));
    let mut o = 0usize;
    while o < buf.len() {
        let ulen = u16::from_le_bytes(
            buf.get(o..o + 2)
                .ok_or_else(corrupt)?
                .try_into()
                .map_err(|_| corrupt())?,
        );
        let user = ((o + 2) as u32, ulen);
        o += 2 + ulen as usize;
        let r = buf.get(o..o + fixed).ok_or_else(corrupt)?;
        let u32_at = |k: usize| u32::from_le_bytes([r[k], r[k + 1], r[k + 2], r[k + 3]]);
        let mut b8 = [0u8; 8];
        b8.copy_from_slice(&r[9..17]);
        let ts = i64::from_le_bytes(b8);
        b8.copy_from_slice(&r[19..27]);
        let seq = u64::from_le_bytes(b8);
        out.push(Rec {
            user,
            thread: r[0],
            item: u32_at(1),
            cat: u32_at(5),
            ts,
            action: u16::from_le_bytes([r[17], r[18]]),
            seq,
            dwell: f32::from_bits(u32_at(27)),
            num: (o + 31) as u32,
        });
        o += fixed;
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn merge_sums_counts_across_threads() {
        let mut a = Interner::default();
        let mut b = Interner::default();
        for k in [b"x", b"y", b"x"] {
            a.intern(k);
        }
        for k in [b"y", b"z"] {
            b.intern(k);
        }
        let Merged {
            keys,
            counts,
            remaps,
        } = Interner::merge(vec![a, b]);
        let total = |k: &[u8]| counts[keys.iter().position(|x| x.as_ref() == k).unwrap()];
        assert_eq!((total(b"x"), total(b"y"), total(b"z")), (2, 2, 1));
        assert_eq!(keys[remaps[0][1] as usize], keys[remaps[1][0] as usize]);
    }

    #[test]
    fn partition_is_stable_and_spread() {
        assert_eq!(partition_of(b"user-1", 16), partition_of(b"user-1", 16));
        let mut hist = [0usize; 8];
        for i in 0..8000 {
            hist[partition_of(i.to_string().as_bytes(), 8)] += 1;
        }
        assert!(hist.iter().all(|&h| (800..1200).contains(&h)), "{hist:?}");
    }

    #[test]
    fn spill_round_trip() {
        let dir = tempfile::tempdir().unwrap();
        let shared = SpillShared::create(
            dir.path(),
            2,
            0,
            Default::default(),
            "view".into(),
            1,
            vec!["f".into()],
        )
        .unwrap();
        let mut sink = SpillSink::new(&shared, 1 << 20, 3);
        let evs = [
            RawEvent {
                user: b"u1",
                item: b"i1",
                ts_ms: 5,
                action: b"pv",
                category: Some(b"c"),
                dwell: Some(1.5),
                numeric: &[2.0],
            },
            RawEvent {
                user: b"u1",
                item: b"i2",
                ts_ms: 6,
                action: b"",
                category: None,
                dwell: None,
                numeric: &[f32::NAN],
            },
        ];
        for (k, e) in evs.iter().enumerate() {
            sink.event(
                e,
                RowPos {
                    file: 0,
                    line: k as u64 + 1,
                    seq: k as u64,
                },
            );
        }
        sink.finish().unwrap();
        let Merged {
            keys,
            counts,
            remaps,
        } = Interner::merge(vec![std::mem::take(&mut sink.items)]);
        assert_eq!(keys.len(), 2);
        assert_eq!(counts, vec![1, 1]);
        assert_eq!(keys[remaps[0][1] as usize].as_ref(), b"i2");
        drop(sink);
        let p = partition_of(b"u1", 2);
        let buf = shared.take(p).unwrap();
        assert!(
            !partition_path(dir.path(), p).exists(),
            "a zero budget spills to disk; take removes the file"
        );
        let recs = decode(&buf, 1, "t").unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(Rec::bytes(&buf, recs[0].user), b"u1");
        assert_eq!((recs[0].thread, recs[0].item, recs[1].item), (3, 0, 1));
        assert_eq!((recs[0].cat, recs[1].cat), (0, u32::MAX));
        assert_eq!((recs[0].ts, recs[1].seq, recs[0].dwell), (5, 1, 1.5));
        assert_eq!(recs[0].numeric(&buf, 0), 2.0);
        assert!(recs[1].dwell.is_nan());
        let names = &shared.actions.lock().unwrap().names;
        assert_eq!(names, &vec!["view".to_string()]);
        assert!(decode(&buf[..buf.len() - 1], 1, "t").is_err());
    }
}
