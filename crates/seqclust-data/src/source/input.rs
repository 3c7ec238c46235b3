//! Opening input files (local or object store, gzip detected by magic bytes) and cutting them
//! into record-aligned chunks for the parser threads.

use std::io::{BufRead, BufReader, Read};
use std::sync::Arc;

use futures::StreamExt;
use object_store::ObjectStoreExt;
use object_store::path::Path as StorePath;

use crate::error::{Error, Result};
use crate::store::{Location, is_url};

/// One input file.
#[derive(Debug, Clone)]
pub(crate) struct InputFile {
    /// The path or URL as the user would recognise it.
    pub display: String,
    /// Size in bytes (compressed, if compressed).
    pub size: u64,
    pub(crate) place: Place,
}

#[derive(Debug, Clone)]
pub(crate) enum Place {
    Local(std::path::PathBuf),
    Store(Location, StorePath),
}

/// Expands files, directories and object-store URLs (objects or prefixes) to a sorted file list.
pub(crate) fn expand_inputs(
    paths: &[String],
    rt: &tokio::runtime::Handle,
) -> Result<Vec<InputFile>> {
    let mut out = Vec::new();
    for p in paths {
        if is_url(p) && !p.starts_with("file://") {
            let loc = Location::parse(p, false)?;
            let store = Arc::clone(loc.store());
            let prefix = loc.prefix().clone();
            let head = rt.block_on(store.head(&prefix));
            match head {
                Ok(meta) => out.push(InputFile {
                    display: p.clone(),
                    size: meta.size,
                    place: Place::Store(loc.clone(), meta.location),
                }),
                Err(object_store::Error::NotFound { .. }) => {
                    let metas: Vec<_> =
                        rt.block_on(async { store.list(Some(&prefix)).collect::<Vec<_>>().await });
                    let mut files = Vec::new();
                    for m in metas {
                        let m = m.map_err(|e| Error::store(p, e))?;
                        let name = m.location.filename().unwrap_or_default();
                        if !name.starts_with('.') && !name.starts_with('_') {
                            files.push(m);
                        }
                    }
                    if files.is_empty() {
                        return Err(Error::MissingInput { path: p.clone() });
                    }
                    files.sort_by(|a, b| a.location.cmp(&b.location));
                    for m in files {
                        out.push(InputFile {
                            display: format!(
                                "{}/{}",
                                p.trim_end_matches('/'),
                                m.location.filename().unwrap_or_default()
                            ),
                            size: m.size,
                            place: Place::Store(loc.clone(), m.location),
                        });
                    }
                }
                Err(e) => return Err(Error::store(p, e)),
            }
            continue;
        }
        let local = std::path::PathBuf::from(p.strip_prefix("file://").unwrap_or(p));
        let meta = std::fs::metadata(&local).map_err(|e| match e.kind() {
            std::io::ErrorKind::NotFound => Error::MissingInput { path: p.clone() },
            _ => Error::ReadInput {
                path: p.clone(),
                source: e,
            },
        })?;
        if meta.is_dir() {
            let mut entries: Vec<_> = std::fs::read_dir(&local)
                .map_err(|e| Error::ReadInput {
                    path: p.clone(),
                    source: e,
                })?
                .filter_map(|e| e.ok())
                .map(|e| e.path())
                .filter(|path| {
                    path.is_file()
                        && path
                            .file_name()
                            .and_then(|n| n.to_str())
                            .is_some_and(|n| !n.starts_with('.') && !n.starts_with('_'))
                })
                .collect();
            entries.sort();
            if entries.is_empty() {
                return Err(Error::MissingInput {
                    path: format!("{p} (empty directory)"),
                });
            }
            for e in entries {
                let size = std::fs::metadata(&e).map(|m| m.len()).unwrap_or(0);
                out.push(InputFile {
                    display: e.display().to_string(),
                    size,
                    place: Place::Local(e),
                });
            }
        } else {
            out.push(InputFile {
                display: p.clone(),
                size: meta.len(),
                place: Place::Local(local),
            });
        }
    }
    Ok(out)
}

/// Counts bytes read from the underlying (compressed) file, for progress reporting.
pub(crate) struct Counting<R> {
    inner: R,
    counter: Arc<dyn Fn(u64) + Send + Sync>,
}

impl<R: Read> Read for Counting<R> {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        let n = self.inner.read(buf)?;
        (self.counter)(n as u64);
        Ok(n)
    }
}

/// A blocking reader over an object-store stream.
struct StoreRead {
    stream: futures::stream::BoxStream<'static, object_store::Result<bytes::Bytes>>,
    current: bytes::Bytes,
    rt: tokio::runtime::Handle,
}

impl Read for StoreRead {
    fn read(&mut self, buf: &mut [u8]) -> std::io::Result<usize> {
        while self.current.is_empty() {
            match self.rt.block_on(self.stream.next()) {
                Some(Ok(b)) => self.current = b,
                Some(Err(e)) => return Err(std::io::Error::other(e)),
                None => return Ok(0),
            }
        }
        let n = buf.len().min(self.current.len());
        buf[..n].copy_from_slice(&self.current[..n]);
        self.current = self.current.slice(n..);
        Ok(n)
    }
}

/// Opens a file for sequential reading, decompressing gzip transparently (by magic bytes, so a
/// misnamed file still works). `on_bytes` is called with the compressed bytes read.
pub(crate) fn open_read(
    file: &InputFile,
    rt: &tokio::runtime::Handle,
    on_bytes: Arc<dyn Fn(u64) + Send + Sync>,
) -> Result<Box<dyn Read + Send>> {
    let raw: Box<dyn Read + Send> = match &file.place {
        Place::Local(p) => Box::new(std::fs::File::open(p).map_err(|e| Error::ReadInput {
            path: file.display.clone(),
            source: e,
        })?),
        Place::Store(loc, path) => {
            let res = rt
                .block_on(loc.store().get(path))
                .map_err(|e| Error::store(&file.display, e))?;
            Box::new(StoreRead {
                stream: res.into_stream(),
                current: bytes::Bytes::new(),
                rt: rt.clone(),
            })
        }
    };
    let mut buffered = BufReader::with_capacity(
        1 << 20,
        Counting {
            inner: raw,
            counter: on_bytes,
        },
    );
    let head = buffered.fill_buf().map_err(|e| Error::ReadInput {
        path: file.display.clone(),
        source: e,
    })?;
    if head.len() >= 2 && head[0] == 0x1f && head[1] == 0x8b {
        Ok(Box::new(BufReader::with_capacity(
            1 << 20,
            flate2::bufread::MultiGzDecoder::new(buffered),
        )))
    } else {
        Ok(Box::new(buffered))
    }
}

/// Target size of a chunk handed to a parser thread.
pub(crate) const CHUNK_BYTES: usize = 4 << 20;

/// Where a chunk may end: after the last newline that is not inside a quoted field.
///
/// `quote` is the CSV quote byte, or `None` for formats without quoting. A doubled quote
/// (`""`) flips the parity twice, so it needs no special case.
pub(crate) fn record_boundary(buf: &[u8], quote: Option<u8>) -> Option<usize> {
    match quote {
        Some(q) if memchr::memchr(q, buf).is_some() => {
            let mut inside = false;
            let mut last = None;
            for i in memchr::memchr2_iter(q, b'\n', buf) {
                if buf[i] == q {
                    inside = !inside;
                } else if !inside {
                    last = Some(i + 1);
                }
            }
            last
        }
        _ => memchr::memrchr(b'\n', buf).map(|i| i + 1),
    }
}

/// Reads `reader` to the end, calling `emit` with record-aligned chunks of about
/// [`CHUNK_BYTES`]. The final chunk holds whatever follows the last newline.
pub(crate) fn chunk_stream(
    mut reader: impl Read,
    quote: Option<u8>,
    display: &str,
    mut emit: impl FnMut(Vec<u8>) -> Result<()>,
) -> Result<()> {
    let mut buf: Vec<u8> = Vec::with_capacity(CHUNK_BYTES + (64 << 10));
    let mut want = CHUNK_BYTES;
    loop {
        // fill up to `want` bytes
        let start = buf.len();
        buf.resize(want.max(start + (64 << 10)), 0);
        let mut filled = start;
        let mut eof = false;
        while filled < buf.len() {
            match reader.read(&mut buf[filled..]) {
                Ok(0) => {
                    eof = true;
                    break;
                }
                Ok(n) => filled += n,
                Err(e) if e.kind() == std::io::ErrorKind::Interrupted => {}
                Err(e) => {
                    return Err(Error::ReadInput {
                        path: display.to_string(),
                        source: e,
                    });
                }
            }
        }
        buf.truncate(filled);
        if eof {
            if !buf.is_empty() {
                emit(buf)?;
            }
            return Ok(());
        }
        match record_boundary(&buf, quote) {
            Some(cut) => {
                let rest = buf[cut..].to_vec();
                buf.truncate(cut);
                let mut next = Vec::with_capacity(CHUNK_BYTES + (64 << 10));
                next.extend_from_slice(&rest);
                emit(std::mem::replace(&mut buf, next))?;
                want = CHUNK_BYTES;
            }
            // a record longer than the buffer: read more before cutting
            None => want = buf.len() * 2,
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn boundary_respects_quotes() {
        let data = b"a,b\n\"x\ny\",z\n\"open\n";
        assert_eq!(record_boundary(data, Some(b'"')), Some(12));
        assert_eq!(record_boundary(data, None), Some(18));
        assert_eq!(record_boundary(b"no newline", None), None);
    }

    #[test]
    fn chunks_reassemble_exactly() {
        let mut text = Vec::new();
        for i in 0..300_000 {
            text.extend_from_slice(format!("{i},\"q\n{i}\",item{i}\n").as_bytes());
        }
        text.extend_from_slice(b"last,line,no-newline");
        let mut got = Vec::new();
        let mut n = 0;
        chunk_stream(&text[..], Some(b'"'), "t", |c| {
            assert!(c.ends_with(b"\n") || c.ends_with(b"no-newline"));
            got.extend_from_slice(&c);
            n += 1;
            Ok(())
        })
        .unwrap();
        assert!(n > 1);
        assert_eq!(got, text);
    }
}
