//! Pass 1 of ingest: each parser thread appends its events to per-partition scratch files
//! (partition = hash of the user key) and counts item and category occurrences.
//!
//! A spilled record is
//! `u16 user_len, user, u16 item_len, item, u16 cat_len (0xFFFF = none), cat, i64 ts_ms,
//! u16 action, u64 seq, f32 dwell (NaN = none), f32 × n_numeric`, little-endian.

use std::fs::File;
use std::io::Write;
use std::sync::Mutex;

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

/// State shared by all parser threads.
pub(crate) struct SpillShared {
    pub files: Vec<Mutex<File>>,
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
        aliases: std::collections::BTreeMap<String, String>,
        default_action: String,
        n_numeric: usize,
        file_names: Vec<String>,
    ) -> Result<Self> {
        let files = (0..partitions)
            .map(|p| {
                let path = partition_path(dir, p);
                File::create(&path)
                    .map(Mutex::new)
                    .map_err(|e| Error::io(path.display(), e))
            })
            .collect::<Result<Vec<_>>>()?;
        Ok(SpillShared {
            files,
            actions: Mutex::new(ActionRegistry::default()),
            aliases,
            default_action,
            n_numeric,
            file_names,
        })
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
    pub items: FxHashMap<Box<[u8]>, u64>,
    pub categories: FxHashMap<Box<[u8]>, u64>,
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
    pub fn new(shared: &'a SpillShared, flush_at: usize) -> Self {
        SpillSink {
            shared,
            bufs: vec![Vec::new(); shared.files.len()],
            flush_at,
            items: FxHashMap::default(),
            categories: FxHashMap::default(),
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
        let res = match self.shared.files[p].lock() {
            Ok(mut f) => f.write_all(&self.bufs[p]),
            Err(_) => Err(std::io::Error::other("a parser thread panicked")),
        };
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

fn count(map: &mut FxHashMap<Box<[u8]>, u64>, key: &[u8]) {
    if let Some(c) = map.get_mut(key) {
        *c += 1;
    } else {
        map.insert(key.into(), 1);
    }
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
        count(&mut self.items, ev.item);
        if let Some(c) = ev.category {
            count(&mut self.categories, c);
        }
        let p = partition_of(ev.user, self.bufs.len());
        let b = &mut self.bufs[p];
        b.extend_from_slice(&(ev.user.len() as u16).to_le_bytes());
        b.extend_from_slice(ev.user);
        b.extend_from_slice(&(ev.item.len() as u16).to_le_bytes());
        b.extend_from_slice(ev.item);
        match ev.category {
            Some(c) => {
                b.extend_from_slice(&(c.len() as u16).to_le_bytes());
                b.extend_from_slice(c);
            }
            None => b.extend_from_slice(&u16::MAX.to_le_bytes()),
        }
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

/// A spilled record, decoded in place: byte ranges point into the partition buffer.
#[derive(Debug, Clone, Copy)]
pub(crate) struct Rec {
    pub user: (u32, u16),
    pub item: (u32, u16),
    /// `len == u16::MAX` means no category.
    pub cat: (u32, u16),
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

    pub fn category<'b>(&self, buf: &'b [u8]) -> Option<&'b [u8]> {
        (self.cat.1 != u16::MAX).then(|| Rec::bytes(buf, self.cat))
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
    let mut out = Vec::with_capacity(buf.len() / 40);
    let mut o = 0usize;
    let rd16 =
        |o: usize| -> Option<u16> { Some(u16::from_le_bytes(buf.get(o..o + 2)?.try_into().ok()?)) };
    let rd64 = |o: usize| -> Option<[u8; 8]> { buf.get(o..o + 8)?.try_into().ok() };
    while o < buf.len() {
        let ulen = rd16(o).ok_or_else(corrupt)?;
        let user = ((o + 2) as u32, ulen);
        o += 2 + ulen as usize;
        let ilen = rd16(o).ok_or_else(corrupt)?;
        let item = ((o + 2) as u32, ilen);
        o += 2 + ilen as usize;
        let clen = rd16(o).ok_or_else(corrupt)?;
        let cat = ((o + 2) as u32, clen);
        o += 2 + if clen == u16::MAX { 0 } else { clen as usize };
        let ts = i64::from_le_bytes(rd64(o).ok_or_else(corrupt)?);
        let action = rd16(o + 8).ok_or_else(corrupt)?;
        let seq = u64::from_le_bytes(rd64(o + 10).ok_or_else(corrupt)?);
        let dwell_b: [u8; 4] = buf
            .get(o + 18..o + 22)
            .ok_or_else(corrupt)?
            .try_into()
            .map_err(|_| corrupt())?;
        let num = (o + 22) as u32;
        o += 22 + 4 * n_numeric;
        if o > buf.len() {
            return Err(corrupt());
        }
        out.push(Rec {
            user,
            item,
            cat,
            ts,
            action,
            seq,
            dwell: f32::from_le_bytes(dwell_b),
            num,
        });
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

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
            Default::default(),
            "view".into(),
            1,
            vec!["f".into()],
        )
        .unwrap();
        let mut sink = SpillSink::new(&shared, 1 << 20);
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
        drop(sink);
        let p = partition_of(b"u1", 2);
        let buf = std::fs::read(partition_path(dir.path(), p)).unwrap();
        let recs = decode(&buf, 1, "t").unwrap();
        assert_eq!(recs.len(), 2);
        assert_eq!(Rec::bytes(&buf, recs[0].item), b"i1");
        assert_eq!(recs[0].category(&buf), Some(&b"c"[..]));
        assert_eq!(recs[1].category(&buf), None);
        assert_eq!(recs[0].numeric(&buf, 0), 2.0);
        assert!(recs[1].dwell.is_nan());
        let names = &shared.actions.lock().unwrap().names;
        assert_eq!(names, &vec!["view".to_string()]);
        assert!(decode(&buf[..buf.len() - 1], 1, "t").is_err());
    }
}
