//! The store's record codec: file headers and records, as written to the snapshot and the
//! journal.
//!
//! ```text
//! header = magic (4) | format version u32 | dim u32 | model id length u32 | model id
//!          | vector file generation u64 (snapshots of version 3 and later)
//! record = [body length u32 LE][CRC-32 of body u32 LE][body]
//! Upsert body = 1 | path | size u64 | mtime i128 | SHA-256 | width u32 | height u32
//!               | capture time i64 | source id (u16 length, version 2 and later) | f32 vector
//! Row body    = 3 | the same without the vector (version 3 snapshots)
//! Remove body = 2 | path
//! path        = length u32 | bytes (the OS string's bytes on Unix)
//! ```
//! Every reader checks the length and checksum of each record. The snapshot is written whole
//! and renamed, so its reader stops at the first record that fails. The journal is appended
//! to: a bad record at its end is a torn write (cut off), while a bad stretch followed by good
//! records is damage (a bad sector): [`read_journal`] skips it and keeps the records after it.

use std::fs::File;
use std::io::{BufReader, Read, Write};
use std::path::{Path, PathBuf};

use super::table::Entry;
use crate::error::DeviceError;

pub(super) const SNAPSHOT_MAGIC: &[u8; 4] = b"ECIX";
pub(super) const JOURNAL_MAGIC: &[u8; 4] = b"ECJL";
/// Version 2 added the source id to Upsert records; version 3 moved the snapshot's vectors
/// to the mapped vector file. Older files are read and rewritten when the store opens.
pub(super) const FORMAT_VERSION: u32 = 3;
pub(super) const UPSERT: u8 = 1;
pub(super) const REMOVE: u8 = 2;
pub(super) const ROW: u8 = 3;
/// Records larger than this are corrupt (a path of 4 KiB and a 4096-dim vector fit easily).
pub(super) const MAX_RECORD: usize = 64 << 10;

/// A decoded record.
pub(super) enum Record {
    /// A picture and its vector (journal; snapshots of format 1 and 2).
    Upsert(Entry, Vec<f32>),
    /// A picture removed (journal).
    Remove(PathBuf),
    /// A snapshot picture whose vector is the vector file's row of the same number.
    Row(Entry),
}

/// Writes a file header; returns its length.
pub(super) fn write_header(
    w: &mut impl Write,
    magic: &[u8; 4],
    model: &str,
    dim: usize,
    generation: Option<u64>,
) -> std::io::Result<u64> {
    w.write_all(magic)?;
    w.write_all(&FORMAT_VERSION.to_le_bytes())?;
    w.write_all(&(dim as u32).to_le_bytes())?;
    w.write_all(&(model.len() as u32).to_le_bytes())?;
    w.write_all(model.as_bytes())?;
    let mut n = 16 + model.len() as u64;
    if let Some(g) = generation {
        w.write_all(&g.to_le_bytes())?;
        n += 8;
    }
    Ok(n)
}

/// A file's header.
pub(super) struct Header {
    /// Bytes up to the first record.
    pub(super) len: u64,
    pub(super) version: u32,
    pub(super) model: String,
    pub(super) dim: usize,
    /// The vector file's generation (snapshots of version 3 and later; else 0).
    pub(super) generation: u64,
}

/// The header of `path`; `None` if the file does not exist.
pub(super) fn read_header(path: &Path, magic: &[u8; 4]) -> Result<Option<Header>, DeviceError> {
    let bad = DeviceError::Corrupt;
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(bad(e.to_string())),
    };
    let mut fixed = [0u8; 16];
    f.read_exact(&mut fixed).map_err(|e| bad(e.to_string()))?;
    if &fixed[..4] != magic {
        return Err(bad("bad magic".into()));
    }
    let version = u32::from_le_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
    if !(1..=FORMAT_VERSION).contains(&version) {
        return Err(bad(format!(
            "format version {version}, this build reads {FORMAT_VERSION}"
        )));
    }
    let dim = u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]) as usize;
    let len = u32::from_le_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]) as usize;
    if len > 1024 {
        return Err(bad("model id too long".into()));
    }
    let mut model = vec![0u8; len];
    f.read_exact(&mut model).map_err(|e| bad(e.to_string()))?;
    let model = String::from_utf8(model).map_err(|e| bad(e.to_string()))?;
    let mut header = Header {
        len: 16 + len as u64,
        version,
        model,
        dim,
        generation: 0,
    };
    if magic == SNAPSHOT_MAGIC && version >= 3 {
        let mut g = [0u8; 8];
        f.read_exact(&mut g).map_err(|e| bad(e.to_string()))?;
        header.generation = u64::from_le_bytes(g);
        header.len += 8;
    }
    Ok(Some(header))
}

/// Feeds every complete record of the file to `each`, in order, without holding them all
/// (an index of a million pictures would otherwise be in memory twice while it opens).
/// Returns (records read, header length, length up to the last good record, file length).
pub(super) fn read_records(
    path: &Path,
    magic: &[u8; 4],
    mut each: impl FnMut(Record) -> Result<(), DeviceError>,
) -> Result<(usize, u64, u64, u64), DeviceError> {
    let corrupt = |reason: String| DeviceError::Corrupt(format!("{}: {reason}", path.display()));
    let Header {
        len: header,
        version,
        dim,
        ..
    } = read_header(path, magic)
        .map_err(|e| corrupt(e.to_string()))?
        .ok_or_else(|| corrupt("missing".into()))?;
    let file = File::open(path).map_err(|e| DeviceError::io(path, e))?;
    let total = file.metadata().map_err(|e| DeviceError::io(path, e))?.len();
    let mut r = BufReader::with_capacity(1 << 20, file);
    let mut skip = vec![0u8; header as usize];
    r.read_exact(&mut skip)
        .map_err(|e| DeviceError::io(path, e))?;
    let mut good = header;
    let mut records = 0;
    let mut body = Vec::new();
    loop {
        let mut head = [0u8; 8];
        if r.read_exact(&mut head).is_err() {
            break;
        }
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len == 0 || len > MAX_RECORD {
            break;
        }
        body.resize(len, 0);
        if r.read_exact(&mut body).is_err() || crc32fast::hash(&body) != crc {
            break;
        }
        match decode(&body, dim, version) {
            Some(rec) => {
                each(rec)?;
                records += 1;
            }
            None => break,
        }
        good += 8 + len as u64;
    }
    Ok((records, header, good, total))
}

/// What [`read_journal`] found.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub(super) struct JournalRead {
    /// Records read.
    pub records: usize,
    /// Length up to the end of the last good record.
    pub good: u64,
    /// The file's length.
    pub total: u64,
    /// Bytes skipped between good records (damage, not a torn tail).
    pub damaged: u64,
}

/// Feeds every good record of the journal to `each`, in order. After a record that fails its
/// length, checksum or decoding, the next offset where a good record starts is searched byte
/// by byte: records after a damaged stretch are kept, and what is left after the last good
/// record is the torn tail. A false resynchronisation needs a 32-bit checksum match and a
/// record that decodes; the search costs at most one checksum per byte of damage.
pub(super) fn read_journal(
    path: &Path,
    mut each: impl FnMut(Record) -> Result<(), DeviceError>,
) -> Result<JournalRead, DeviceError> {
    let corrupt = |reason: String| DeviceError::Corrupt(format!("{}: {reason}", path.display()));
    let Header {
        len: header,
        version,
        dim,
        ..
    } = read_header(path, JOURNAL_MAGIC)
        .map_err(|e| corrupt(e.to_string()))?
        .ok_or_else(|| corrupt("missing".into()))?;
    // The journal holds only the pictures since the last compaction, which the index keeps in
    // memory anyway: reading it whole costs no more than that.
    let bytes = std::fs::read(path).map_err(|e| DeviceError::io(path, e))?;
    let record_at = |at: usize| -> Option<(Record, usize)> {
        let head = bytes.get(at..at + 8)?;
        let len = u32::from_le_bytes([head[0], head[1], head[2], head[3]]) as usize;
        let crc = u32::from_le_bytes([head[4], head[5], head[6], head[7]]);
        if len == 0 || len > MAX_RECORD {
            return None;
        }
        let body = bytes.get(at + 8..at + 8 + len)?;
        if crc32fast::hash(body) != crc {
            return None;
        }
        Some((decode(body, dim, version)?, 8 + len))
    };
    let mut read = JournalRead {
        total: bytes.len() as u64,
        good: header,
        ..JournalRead::default()
    };
    let mut at = header as usize;
    while at < bytes.len() {
        let found = match record_at(at) {
            Some(found) => Some((at, found)),
            None => (at + 1..bytes.len()).find_map(|next| Some((next, record_at(next)?))),
        };
        let Some((start, (record, len))) = found else {
            break;
        };
        each(record)?;
        read.records += 1;
        read.damaged += (start - at) as u64;
        at = start + len;
        read.good = at as u64;
    }
    Ok(read)
}

fn put_path(out: &mut Vec<u8>, path: &Path) {
    let bytes = path_bytes(path);
    out.extend_from_slice(&(bytes.len() as u32).to_le_bytes());
    out.extend_from_slice(&bytes);
}

#[cfg(unix)]
fn path_bytes(path: &Path) -> Vec<u8> {
    use std::os::unix::ffi::OsStrExt;
    path.as_os_str().as_bytes().to_vec()
}
#[cfg(not(unix))]
fn path_bytes(path: &Path) -> Vec<u8> {
    path.to_string_lossy().as_bytes().to_vec()
}
#[cfg(unix)]
fn path_from(bytes: &[u8]) -> PathBuf {
    use std::os::unix::ffi::OsStrExt;
    PathBuf::from(std::ffi::OsStr::from_bytes(bytes))
}
#[cfg(not(unix))]
fn path_from(bytes: &[u8]) -> PathBuf {
    PathBuf::from(String::from_utf8_lossy(bytes).into_owned())
}

/// The body of an Upsert record.
pub(super) fn encode_upsert(out: &mut Vec<u8>, e: &Entry, vector: &[f32]) {
    encode_entry(out, UPSERT, e);
    for v in vector {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A record of `kind` with the picture's fields (an Upsert's vector follows them).
pub(super) fn encode_entry(out: &mut Vec<u8>, kind: u8, e: &Entry) {
    out.push(kind);
    put_path(out, &e.path);
    out.extend_from_slice(&e.size.to_le_bytes());
    out.extend_from_slice(&i128::from(e.mtime_ns).to_le_bytes());
    out.extend_from_slice(&e.hash);
    out.extend_from_slice(&e.width.to_le_bytes());
    out.extend_from_slice(&e.height.to_le_bytes());
    out.extend_from_slice(&e.taken_s.to_le_bytes());
    let source = &e.source.as_bytes()[..e.source.len().min(u16::MAX as usize)];
    out.extend_from_slice(&(source.len() as u16).to_le_bytes());
    out.extend_from_slice(source);
}

/// A cursor over a record body.
struct Body<'a>(&'a [u8]);
impl<'a> Body<'a> {
    fn take(&mut self, n: usize) -> Option<&'a [u8]> {
        if self.0.len() < n {
            return None;
        }
        let (head, rest) = self.0.split_at(n);
        self.0 = rest;
        Some(head)
    }
    fn array<const N: usize>(&mut self) -> Option<[u8; N]> {
        self.take(N)?.try_into().ok()
    }
    fn path(&mut self) -> Option<PathBuf> {
        let len = u32::from_le_bytes(self.array()?) as usize;
        Some(path_from(self.take(len)?))
    }
}

/// The record of `body` in a file of `version` holding vectors of `dim`; `None` if it is not
/// one.
pub(super) fn decode(body: &[u8], dim: usize, version: u32) -> Option<Record> {
    let mut b = Body(body);
    match b.take(1)?[0] {
        kind @ (UPSERT | ROW) => {
            let path = b.path()?;
            let size = u64::from_le_bytes(b.array()?);
            // Written as 16 bytes (the field was an i128); any time an i64 cannot hold is
            // clamped, which only makes the picture look changed at the next scan.
            let mtime_ns =
                i128::from_le_bytes(b.array()?).clamp(i64::MIN.into(), i64::MAX.into()) as i64;
            let hash = b.array::<32>()?;
            let width = u32::from_le_bytes(b.array()?);
            let height = u32::from_le_bytes(b.array()?);
            let taken_s = i64::from_le_bytes(b.array()?);
            let source = if version >= 2 {
                let len = u16::from_le_bytes(b.array()?) as usize;
                String::from_utf8(b.take(len)?.to_vec()).ok()?
            } else {
                String::new()
            };
            let entry = Entry {
                path,
                size,
                mtime_ns,
                hash,
                width,
                height,
                taken_s,
                source: source.into(),
            };
            if kind == ROW {
                return b.0.is_empty().then_some(Record::Row(entry));
            }
            let raw = b.take(dim * 4)?;
            if !b.0.is_empty() {
                return None;
            }
            let vector = raw
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            Some(Record::Upsert(entry, vector))
        }
        REMOVE => {
            let path = b.path()?;
            b.0.is_empty().then_some(Record::Remove(path))
        }
        _ => None,
    }
}

/// The body of a Remove record.
pub(super) fn encode_remove(out: &mut Vec<u8>, path: &Path) {
    out.push(REMOVE);
    put_path(out, path);
}

/// `body` framed as a record: length, checksum, body.
pub(super) fn frame(body: &[u8]) -> Vec<u8> {
    let mut frame = Vec::with_capacity(8 + body.len());
    frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
    frame.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
    frame.extend_from_slice(body);
    frame
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry() -> Entry {
        Entry {
            path: PathBuf::from("a"),
            size: 1,
            mtime_ns: -5,
            hash: [1; 32],
            width: 3,
            height: 2,
            taken_s: 1_700_000_000,
            source: "cam1".into(),
        }
    }

    fn v(x: f32) -> Vec<f32> {
        vec![x, 1.0 - x, 0.5]
    }

    #[test]
    fn modification_times_keep_their_16_bytes_and_clamp_to_an_i64() {
        let e = entry();
        let mut body = Vec::new();
        encode_upsert(&mut body, &e, &v(0.1));
        let at = 1 + 4 + 1 + 8;
        assert_eq!(body[at..at + 16], (-5i128).to_le_bytes());
        let Some(Record::Upsert(back, _)) = decode(&body, 3, FORMAT_VERSION) else {
            panic!("not an upsert")
        };
        assert_eq!(back, e);
        for (written, read) in [
            (i128::MAX, i64::MAX),
            (i128::MIN, i64::MIN),
            (1i128 << 70, i64::MAX),
        ] {
            body[at..at + 16].copy_from_slice(&written.to_le_bytes());
            let Some(Record::Upsert(back, _)) = decode(&body, 3, FORMAT_VERSION) else {
                panic!("not an upsert")
            };
            assert_eq!(back.mtime_ns, read);
        }
    }

    #[test]
    fn records_of_every_kind_round_trip_and_garbage_is_refused() {
        let mut body = Vec::new();
        encode_remove(&mut body, Path::new("/p/x.jpg"));
        assert!(
            matches!(decode(&body, 3, FORMAT_VERSION), Some(Record::Remove(p)) if p == Path::new("/p/x.jpg"))
        );
        body.clear();
        encode_entry(&mut body, ROW, &entry());
        assert!(matches!(decode(&body, 3, FORMAT_VERSION), Some(Record::Row(e)) if e == entry()));
        // A row with a vector after it, a truncated body, an unknown kind: not records.
        body.extend_from_slice(&[0; 12]);
        assert!(decode(&body, 3, FORMAT_VERSION).is_none());
        body.clear();
        encode_upsert(&mut body, &entry(), &v(0.1));
        assert!(decode(&body[..body.len() - 1], 3, FORMAT_VERSION).is_none());
        assert!(decode(&[9, 0, 0], 3, FORMAT_VERSION).is_none());
        let framed = frame(&body);
        assert_eq!(framed.len(), body.len() + 8);
        assert_eq!(&framed[4..8], &crc32fast::hash(&body).to_le_bytes());
    }
}
