//! The persistent index: a snapshot plus an append-only journal, power-cut safe.
//!
//! ```text
//! <state>/index/snapshot.bin      header (with generation G) + one Row record per picture
//! <state>/index/vectors-G.bin     their vectors, row by row (see vector_file), memory-mapped
//! <state>/index/journal.bin       header + Upsert / Remove records appended since the snapshot
//! record = [body length u32 LE][CRC-32 of body u32 LE][body]
//! ```
//! The snapshot's vectors are ranked straight from the mapped vector file (zero-copy, in the
//! precision the device is configured with); the journal's pictures are kept in memory until
//! the next compaction maps them too.
//! Every append is written and `fdatasync`ed before the index answers with the new picture,
//! so a power cut loses at most the pictures being encoded. On open, the journal is replayed
//! over the snapshot up to its last complete record; a torn tail is cut off. Compaction writes
//! the vector file of generation G+1 (temporary file, sync, rename, sync the folder), then the
//! snapshot naming G+1 the same way, then starts an empty journal, and only then deletes
//! generation G's vector file: at every moment the snapshot on disk names a complete vector
//! file. Vector files no snapshot names (a crash mid-compaction) are deleted on open. Replaying an old journal over a newer snapshot
//! is harmless (the journal's final state is the snapshot's), so a crash between the two
//! renames loses nothing. Records are upserts by path, so replays never duplicate a picture.
//!
//! An Upsert body: kind, path, size, mtime, SHA-256, width, height, capture time, source id
//! (version 2), f32 vector. A Row body (version 3 snapshots): the same without the vector.
//! Version 1 and 2 snapshots (vectors inside) are read and rewritten as version 3. A vector
//! file that does not match its snapshot (missing, wrong length, checksum) is set aside
//! with the reason in the open report: those pictures are encoded again. Both files name the model id and dimension; an index of another model is set aside
//! (renamed with a `.old` suffix) and the pictures are encoded again.

use std::fs::{File, OpenOptions};
use std::io::{BufReader, BufWriter, Read, Write};
use std::path::{Path, PathBuf};

use crate::error::DeviceError;
use crate::index::{Entry, Index};
use crate::vector_file::{self, Mapped};
use crate::vectors::{Precision, VectorTable};

const SNAPSHOT_MAGIC: &[u8; 4] = b"ECIX";
const JOURNAL_MAGIC: &[u8; 4] = b"ECJL";
/// Version 2 added the source id to Upsert records; version 3 moved the snapshot's vectors
/// to the mapped vector file. Older files are read and rewritten when the store opens.
const FORMAT_VERSION: u32 = 3;
const UPSERT: u8 = 1;
const REMOVE: u8 = 2;
const ROW: u8 = 3;
/// Records larger than this are corrupt (a path of 4 KiB and a 4096-dim vector fit easily).
const MAX_RECORD: usize = 64 << 10;

/// What opening the store found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Pictures in the index after opening.
    pub pictures: usize,
    /// Journal records replayed.
    pub replayed: usize,
    /// Bytes of a torn journal tail that were cut off.
    pub truncated_bytes: u64,
    /// Why an existing index was set aside, if it was.
    pub reset: Option<String>,
}

/// The open store.
#[derive(Debug)]
pub struct Store {
    dir: PathBuf,
    model: String,
    dim: usize,
    /// Generation of the snapshot's vector file (0: none written yet).
    generation: u64,
    journal: File,
    journal_bytes: u64,
    snapshot_bytes: u64,
}

impl Store {
    /// Opens (or creates) the store in `dir` for `model` vectors of dimension `dim`, and
    /// returns the index it holds, with its vectors in f32.
    pub fn open(
        dir: &Path,
        model: &str,
        dim: usize,
    ) -> Result<(Store, Index, OpenReport), DeviceError> {
        Self::open_with(dir, model, dim, Precision::F32)
    }

    /// [`Store::open`], keeping the index's vectors in `precision` in memory.
    pub fn open_with(
        dir: &Path,
        model: &str,
        dim: usize,
        precision: Precision,
    ) -> Result<(Store, Index, OpenReport), DeviceError> {
        std::fs::create_dir_all(dir).map_err(|e| DeviceError::io(dir, e))?;
        let snapshot_path = dir.join("snapshot.bin");
        let journal_path = dir.join("journal.bin");
        let mut report = OpenReport::default();
        let mut index = Index::with_precision(model, dim, precision);

        let mismatch = |path: &Path| -> Result<Option<String>, DeviceError> {
            match read_header(path, if path == snapshot_path { SNAPSHOT_MAGIC } else { JOURNAL_MAGIC }) {
                Ok(None) => Ok(None),
                Ok(Some(h)) if h.model == model && h.dim == dim => Ok(None),
                Ok(Some(h)) => Ok(Some(format!(
                    "index was built with model {} (dimension {}); this device runs {model} (dimension {dim})",
                    h.model, h.dim
                ))),
                Err(e) => Ok(Some(format!("index header unreadable: {e}"))),
            }
        };
        let reason = mismatch(&snapshot_path)?.or(mismatch(&journal_path)?);
        if let Some(reason) = reason {
            for p in [&snapshot_path, &journal_path] {
                if p.exists() {
                    let aside = p.with_extension("bin.old");
                    std::fs::rename(p, &aside).map_err(|e| DeviceError::io(p, e))?;
                }
            }
            report.reset = Some(reason);
        }

        let mut snapshot_bytes = 0;
        let mut outdated = false;
        let mut generation = 0;
        if snapshot_path.exists() {
            // Readable: an unreadable header was set aside above.
            let header = read_header(&snapshot_path, SNAPSHOT_MAGIC).ok().flatten();
            let version = header.as_ref().map_or(0, |h| h.version);
            outdated |= version < FORMAT_VERSION;
            if version >= 3 {
                generation = header.map_or(0, |h| h.generation);
                let mut entries = Vec::new();
                let mut stray = 0;
                let (_, _, good, _) = read_records(&snapshot_path, SNAPSHOT_MAGIC, |r| {
                    match r {
                        Record::Row(e) => entries.push(e),
                        _ => stray += 1,
                    }
                    Ok(())
                })?;
                snapshot_bytes = good;
                let vectors_path = vectors_file(dir, generation);
                let opened = if stray > 0 {
                    Err(format!(
                        "the snapshot holds {stray} records that are not rows"
                    ))
                } else {
                    Mapped::open(&vectors_path, dim, entries.len()).and_then(|m| {
                        Index::from_rows(model, entries, VectorTable::mapped(dim, m))
                            .map_err(|e| e.to_string())
                    })
                };
                match opened {
                    Ok(mapped) if mapped.precision() == precision => index = mapped,
                    Ok(mapped) => {
                        // Another precision was configured: convert (compaction writes it).
                        for (entry, vector) in mapped.iter() {
                            index.upsert(entry.clone(), &vector)?;
                        }
                        outdated = true;
                    }
                    Err(why) => {
                        report.reset = Some(format!(
                            "{} unusable ({why}); the snapshot's pictures will be encoded again",
                            vectors_path.display()
                        ));
                        outdated = true;
                    }
                }
            } else {
                let (_, _, good, _) =
                    read_records(&snapshot_path, SNAPSHOT_MAGIC, |r| apply(&mut index, r))?;
                snapshot_bytes = good;
            }
        }
        let journal_bytes = if journal_path.exists() {
            outdated |= file_version(&journal_path) < FORMAT_VERSION;
            let (replayed, _, good, total) =
                read_records(&journal_path, JOURNAL_MAGIC, |r| apply(&mut index, r))?;
            report.replayed = replayed;
            if good < total {
                report.truncated_bytes = total - good;
                let f = OpenOptions::new()
                    .write(true)
                    .open(&journal_path)
                    .map_err(|e| DeviceError::io(&journal_path, e))?;
                f.set_len(good)
                    .map_err(|e| DeviceError::io(&journal_path, e))?;
                f.sync_all()
                    .map_err(|e| DeviceError::io(&journal_path, e))?;
            }
            good
        } else {
            write_atomically(dir, &journal_path, |w| {
                write_header(w, JOURNAL_MAGIC, model, dim, None)
            })?
        };
        let journal = OpenOptions::new()
            .append(true)
            .open(&journal_path)
            .map_err(|e| DeviceError::io(&journal_path, e))?;
        report.pictures = index.len();
        let mut store = Store {
            dir: dir.to_path_buf(),
            model: model.to_string(),
            dim,
            generation,
            journal,
            journal_bytes,
            snapshot_bytes,
        };
        if outdated {
            // Appending version 3 records to an older journal would mix formats; a snapshot
            // without its vector file must not be kept.
            store.compact(&mut index)?;
        } else {
            store.remove_unnamed_vector_files();
        }
        Ok((store, index, report))
    }

    /// The model id and dimension an existing store in `dir` was built with (`None`: no store
    /// there), read from the snapshot's header, else the journal's. An unreadable header is
    /// an error with the reason.
    pub fn stored_model(dir: &Path) -> Result<Option<(String, usize)>, String> {
        for (file, magic) in [
            ("snapshot.bin", SNAPSHOT_MAGIC),
            ("journal.bin", JOURNAL_MAGIC),
        ] {
            if let Some(h) = read_header(&dir.join(file), magic)? {
                return Ok(Some((h.model, h.dim)));
            }
        }
        Ok(None)
    }

    /// The model id of the vectors this store holds.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// The store's folder was renamed to `dir` (the switch after a re-index): the open
    /// journal follows its inode; later compactions write in the new folder.
    pub fn moved_to(&mut self, dir: &Path) {
        self.dir = dir.to_path_buf();
    }

    /// Records a picture's vector durably.
    pub fn upsert(&mut self, entry: &Entry, vector: &[f32]) -> Result<(), DeviceError> {
        let mut body = Vec::with_capacity(96 + entry.path.as_os_str().len() + 4 * vector.len());
        encode_upsert(&mut body, entry, &vector);
        self.append(&body)
    }

    /// Records a picture's removal durably.
    pub fn remove(&mut self, path: &Path) -> Result<(), DeviceError> {
        let mut body = vec![REMOVE];
        put_path(&mut body, path);
        self.append(&body)
    }

    fn append(&mut self, body: &[u8]) -> Result<(), DeviceError> {
        let mut frame = Vec::with_capacity(8 + body.len());
        frame.extend_from_slice(&(body.len() as u32).to_le_bytes());
        frame.extend_from_slice(&crc32fast::hash(body).to_le_bytes());
        frame.extend_from_slice(body);
        let path = self.dir.join("journal.bin");
        let result = self
            .journal
            .write_all(&frame)
            .and_then(|()| self.journal.sync_data());
        if let Err(e) = result {
            // A partial write (disk full) must not leave garbage that later records follow:
            // cut the journal back to its last good length.
            let _ = self.journal.set_len(self.journal_bytes);
            return Err(DeviceError::io(path, e));
        }
        self.journal_bytes += frame.len() as u64;
        Ok(())
    }

    /// True when the journal has grown past the snapshot (and past 1 MiB): time to compact.
    pub fn should_compact(&self) -> bool {
        self.journal_bytes > (1 << 20) && self.journal_bytes > self.snapshot_bytes
    }

    /// Writes `index` as the new snapshot (its vectors as the next vector file) and starts an
    /// empty journal; the index then ranks every picture from the new file's memory map.
    pub fn compact(&mut self, index: &mut Index) -> Result<(), DeviceError> {
        let next = self.generation + 1;
        let vectors_path = vectors_file(&self.dir, next);
        let (rows, precision) = (index.len(), index.precision());
        let table = index.vectors();
        write_atomically(&self.dir, &vectors_path, |w| {
            vector_file::write(w, precision, self.dim, rows, &table.parts())
        })?;
        let snapshot_path = self.dir.join("snapshot.bin");
        let (model, dim) = (self.model.clone(), self.dim);
        self.snapshot_bytes = write_atomically(&self.dir, &snapshot_path, |w| {
            let mut n = write_header(w, SNAPSHOT_MAGIC, &model, dim, Some(next))?;
            let mut body = Vec::new();
            for entry in index.entries() {
                body.clear();
                encode_entry(&mut body, ROW, entry);
                w.write_all(&(body.len() as u32).to_le_bytes())?;
                w.write_all(&crc32fast::hash(&body).to_le_bytes())?;
                w.write_all(&body)?;
                n += 8 + body.len() as u64;
            }
            Ok(n)
        })?;
        self.generation = next;
        let journal_path = self.dir.join("journal.bin");
        self.journal_bytes = write_atomically(&self.dir, &journal_path, |w| {
            write_header(w, JOURNAL_MAGIC, &model, dim, None)
        })?;
        self.journal = OpenOptions::new()
            .append(true)
            .open(&journal_path)
            .map_err(|e| DeviceError::io(&journal_path, e))?;
        // Rank from the file just written: the rows in memory and the private copies of
        // changed pages are released.
        match Mapped::open(&vectors_path, dim, rows) {
            Ok(m) => index.adopt_vectors(VectorTable::mapped(dim, m))?,
            Err(why) => {
                tracing::warn!(file = %vectors_path.display(), %why, "vector file not mapped; vectors stay in memory")
            }
        }
        self.remove_unnamed_vector_files();
        Ok(())
    }

    /// Deletes vector files the snapshot does not name (older generations, a crash's leftovers).
    fn remove_unnamed_vector_files(&self) {
        let keep = vectors_file(&self.dir, self.generation);
        let Ok(list) = std::fs::read_dir(&self.dir) else {
            return;
        };
        for e in list.flatten() {
            let name = e.file_name();
            let name = name.to_string_lossy();
            if name.starts_with("vectors-")
                && (name.ends_with(".bin") || name.ends_with(".tmp"))
                && e.path() != keep
            {
                let _ = std::fs::remove_file(e.path());
            }
        }
    }
}

/// The vector file of snapshot generation `generation`.
fn vectors_file(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("vectors-{generation}.bin"))
}

enum Record {
    Upsert(Entry, Vec<f32>),
    Remove(PathBuf),
    /// A snapshot picture whose vector is the vector file's row of the same number.
    Row(Entry),
}

fn apply(index: &mut Index, record: Record) -> Result<(), DeviceError> {
    match record {
        // A record the index cannot take (an id collision, which the device refuses before
        // writing) is skipped rather than making the whole store unreadable.
        Record::Upsert(entry, _) if index.admits(&entry.path).is_err() => Ok(()),
        Record::Upsert(entry, vector) => index.upsert(entry, &vector),
        Record::Remove(path) => {
            index.remove(&path);
            Ok(())
        }
        Record::Row(entry) => Err(DeviceError::Mismatch(format!(
            "a snapshot row ({}) outside a snapshot",
            entry.path.display()
        ))),
    }
}

/// Writes a file next to `target`, syncs it, renames it over `target` and syncs the folder.
fn write_atomically(
    dir: &Path,
    target: &Path,
    fill: impl FnOnce(&mut BufWriter<&File>) -> std::io::Result<u64>,
) -> Result<u64, DeviceError> {
    let tmp = target.with_extension("tmp");
    let file = File::create(&tmp).map_err(|e| DeviceError::io(&tmp, e))?;
    let written = (|| {
        let mut w = BufWriter::new(&file);
        let n = fill(&mut w)?;
        w.flush()?;
        drop(w);
        file.sync_all()?;
        Ok(n)
    })();
    let n = match written {
        Ok(n) => n,
        Err(e) => {
            // A full disk must not also keep a half-written copy.
            let _ = std::fs::remove_file(&tmp);
            return Err(DeviceError::io(&tmp, e));
        }
    };
    std::fs::rename(&tmp, target).map_err(|e| DeviceError::io(target, e))?;
    File::open(dir)
        .and_then(|d| d.sync_all())
        .map_err(|e| DeviceError::io(dir, e))?;
    Ok(n)
}

fn write_header(
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
struct Header {
    /// Bytes up to the first record.
    len: u64,
    version: u32,
    model: String,
    dim: usize,
    /// The vector file's generation (snapshots of version 3 and later; else 0).
    generation: u64,
}

/// The header of `path`; `None` if the file does not exist.
fn read_header(path: &Path, magic: &[u8; 4]) -> Result<Option<Header>, String> {
    let mut f = match File::open(path) {
        Ok(f) => f,
        Err(e) if e.kind() == std::io::ErrorKind::NotFound => return Ok(None),
        Err(e) => return Err(e.to_string()),
    };
    let mut fixed = [0u8; 16];
    f.read_exact(&mut fixed).map_err(|e| e.to_string())?;
    if &fixed[..4] != magic {
        return Err("bad magic".into());
    }
    let version = u32::from_le_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]);
    if !(1..=FORMAT_VERSION).contains(&version) {
        return Err(format!(
            "format version {version}, this build reads {FORMAT_VERSION}"
        ));
    }
    let dim = u32::from_le_bytes([fixed[8], fixed[9], fixed[10], fixed[11]]) as usize;
    let len = u32::from_le_bytes([fixed[12], fixed[13], fixed[14], fixed[15]]) as usize;
    if len > 1024 {
        return Err("model id too long".into());
    }
    let mut model = vec![0u8; len];
    f.read_exact(&mut model).map_err(|e| e.to_string())?;
    let model = String::from_utf8(model).map_err(|e| e.to_string())?;
    let mut header = Header {
        len: 16 + len as u64,
        version,
        model,
        dim,
        generation: 0,
    };
    if magic == SNAPSHOT_MAGIC && version >= 3 {
        let mut g = [0u8; 8];
        f.read_exact(&mut g).map_err(|e| e.to_string())?;
        header.generation = u64::from_le_bytes(g);
        header.len += 8;
    }
    Ok(Some(header))
}

/// The format version in a file's header (0 if unreadable).
fn file_version(path: &Path) -> u32 {
    let mut fixed = [0u8; 8];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut fixed))
        .map(|()| u32::from_le_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]))
        .unwrap_or(0)
}

/// Reads every complete, checksummed record. Returns (records, header length, length up to
/// the last good record, file length).
/// Feeds every complete record of the file to `each`, in order, without holding them all
/// (an index of a million pictures would otherwise be in memory twice while it opens).
/// Returns (records read, header length, length up to the last good record, file length).
fn read_records(
    path: &Path,
    magic: &[u8; 4],
    mut each: impl FnMut(Record) -> Result<(), DeviceError>,
) -> Result<(usize, u64, u64, u64), DeviceError> {
    let corrupt = |reason: String| DeviceError::Mismatch(format!("{}: {reason}", path.display()));
    let Header {
        len: header,
        version,
        dim,
        ..
    } = read_header(path, magic)
        .map_err(corrupt)?
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

fn encode_upsert(out: &mut Vec<u8>, e: &Entry, vector: &[f32]) {
    encode_entry(out, UPSERT, e);
    for v in vector {
        out.extend_from_slice(&v.to_le_bytes());
    }
}

/// A record of `kind` with the picture's fields (an Upsert's vector follows them).
fn encode_entry(out: &mut Vec<u8>, kind: u8, e: &Entry) {
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

fn decode(body: &[u8], dim: usize, version: u32) -> Option<Record> {
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

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(name: &str, n: u8) -> Entry {
        Entry {
            path: PathBuf::from(name),
            size: n as u64,
            mtime_ns: -5,
            hash: [n; 32],
            width: 3,
            height: 2,
            taken_s: 1_700_000_000,
            source: if n % 2 == 0 {
                Box::default()
            } else {
                format!("cam{n}").into()
            },
        }
    }

    fn v(x: f32) -> Vec<f32> {
        vec![x, 1.0 - x, 0.5]
    }

    #[test]
    fn survives_reopen_with_upserts_removes_and_compaction() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, mut index, report) = Store::open(dir.path(), "m", 3).unwrap();
        assert_eq!(report, OpenReport::default());
        for (i, name) in ["a", "b", "c"].iter().enumerate() {
            let e = entry(name, i as u8);
            store.upsert(&e, &v(i as f32)).unwrap();
            index.upsert(e, &v(i as f32)).unwrap();
        }
        store.remove(Path::new("b")).unwrap();
        index.remove(Path::new("b"));
        drop(store);
        let (mut store, mut reopened, report) = Store::open(dir.path(), "m", 3).unwrap();
        assert_eq!((report.pictures, report.replayed), (2, 4));
        assert_eq!(reopened.get(Path::new("c")), Some(&entry("c", 2)));
        assert!(reopened.get(Path::new("b")).is_none());
        store.compact(&mut reopened).unwrap();
        store.upsert(&entry("d", 9), &v(0.25)).unwrap();
        drop(store);
        let (_, again, report) = Store::open(dir.path(), "m", 3).unwrap();
        assert_eq!((report.pictures, report.replayed), (3, 1));
        assert_eq!(again.get(Path::new("d")), Some(&entry("d", 9)));
        let (_, vector) = again
            .iter()
            .find(|(e, _)| e.path == Path::new("d"))
            .unwrap();
        assert_eq!(vector, v(0.25).as_slice());
    }

    fn vectors_by_path(index: &Index) -> Vec<(PathBuf, Vec<f32>)> {
        let mut out: Vec<_> = index
            .iter()
            .map(|(e, v)| (e.path.clone(), v.into_owned()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
    }

    fn vector_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.starts_with("vectors-"))
            .collect();
        names.sort();
        names
    }

    #[test]
    fn the_snapshot_vectors_are_ranked_from_the_mapped_file_in_every_precision() {
        for precision in [Precision::F32, Precision::F16, Precision::I8] {
            let dir = tempfile::tempdir().unwrap();
            let (mut store, mut index, _) =
                Store::open_with(dir.path(), "m", 3, precision).unwrap();
            for (i, name) in ["a", "b", "c", "d"].iter().enumerate() {
                let e = entry(name, i as u8);
                store.upsert(&e, &v(i as f32 / 4.0)).unwrap();
                index.upsert(e, &v(i as f32 / 4.0)).unwrap();
            }
            assert_eq!(index.mapped_vector_bytes(), 0);
            store.compact(&mut index).unwrap();
            // After compaction the index ranks from the file just written.
            assert_eq!(
                index.mapped_vector_bytes(),
                4 * precision.bytes_per_vector(3),
                "{precision:?}"
            );
            assert_eq!(vector_files(dir.path()), ["vectors-1.bin"]);
            let kept = vectors_by_path(&index);
            drop(store);

            // Reopened: mapped, the same vectors bit for bit.
            let (mut store, mut index, report) =
                Store::open_with(dir.path(), "m", 3, precision).unwrap();
            assert_eq!((report.pictures, report.reset.as_deref()), (4, None));
            assert_eq!(
                index.mapped_vector_bytes(),
                4 * precision.bytes_per_vector(3)
            );
            assert_eq!(vectors_by_path(&index), kept);
            // Journal changes over mapped rows: a replaced vector, a removal, a new picture.
            for (op, name, x) in [("set", "b", 0.9), ("remove", "a", 0.0), ("add", "e", 0.6)] {
                if op == "remove" {
                    store.remove(Path::new(name)).unwrap();
                    index.remove(Path::new(name));
                } else {
                    let e = entry(name, 7);
                    store.upsert(&e, &v(x)).unwrap();
                    index.upsert(e, &v(x)).unwrap();
                }
            }
            let changed = vectors_by_path(&index);
            let best = index.search("m", &v(0.9), 1).unwrap()[0].entry.path.clone();
            assert_eq!(best, PathBuf::from("b"), "{precision:?}");
            drop(store);
            let (mut store, mut index, report) =
                Store::open_with(dir.path(), "m", 3, precision).unwrap();
            assert_eq!((report.pictures, report.replayed), (4, 3));
            assert_eq!(
                vectors_by_path(&index),
                changed,
                "{precision:?}: journal replayed over the mapped rows"
            );
            // The next compaction writes generation 2 and deletes generation 1.
            store.compact(&mut index).unwrap();
            assert_eq!(vector_files(dir.path()), ["vectors-2.bin"]);
            drop(store);
            let (_, index, _) = Store::open_with(dir.path(), "m", 3, precision).unwrap();
            assert_eq!(vectors_by_path(&index), changed);
            assert_eq!(
                index.mapped_vector_bytes(),
                4 * precision.bytes_per_vector(3)
            );
        }
    }

    #[test]
    fn a_crash_mid_compaction_and_a_damaged_vector_file_lose_nothing_else() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, mut index, _) = Store::open(dir.path(), "m", 3).unwrap();
        for (i, name) in ["a", "b"].iter().enumerate() {
            let e = entry(name, i as u8);
            store.upsert(&e, &v(i as f32)).unwrap();
            index.upsert(e, &v(i as f32)).unwrap();
        }
        store.compact(&mut index).unwrap();
        store.upsert(&entry("c", 3), &v(0.5)).unwrap();
        drop(store);
        // A crash after the next vector file was renamed into place, before the snapshot
        // naming it: the snapshot still names generation 1, the stray file is deleted.
        std::fs::write(dir.path().join("vectors-2.bin"), b"half").unwrap();
        std::fs::write(dir.path().join("vectors-2.tmp"), b"half").unwrap();
        let (store, index, report) = Store::open(dir.path(), "m", 3).unwrap();
        assert_eq!((report.pictures, report.reset), (3, None));
        assert_eq!(vector_files(dir.path()), ["vectors-1.bin"]);
        drop((store, index));
        // A damaged vector file: the snapshot's pictures are dropped with the reason (the scan
        // encodes them again); the journal's picture is kept; the store is consistent after.
        let path = dir.path().join("vectors-1.bin");
        let mut bytes = std::fs::read(&path).unwrap();
        let n = bytes.len();
        bytes[n - 1] ^= 0x10;
        std::fs::write(&path, bytes).unwrap();
        let (_, index, report) = Store::open(dir.path(), "m", 3).unwrap();
        let reason = report.reset.unwrap();
        assert!(
            reason.contains("vectors-1.bin") && reason.contains("checksum"),
            "{reason}"
        );
        assert_eq!(
            index
                .entries()
                .iter()
                .map(|e| e.path.clone())
                .collect::<Vec<_>>(),
            [PathBuf::from("c")]
        );
        let (_, index, report) = Store::open(dir.path(), "m", 3).unwrap();
        assert_eq!((index.len(), report.reset), (1, None));
        // Deleted altogether: the same.
        for f in vector_files(dir.path()) {
            std::fs::remove_file(dir.path().join(f)).unwrap();
        }
        let (_, index, report) = Store::open(dir.path(), "m", 3).unwrap();
        assert!(report.reset.unwrap().contains("vectors-"));
        assert!(index.is_empty());
    }

    #[test]
    fn another_precision_converts_the_vector_file_once() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, mut index, _) = Store::open(dir.path(), "m", 3).unwrap();
        let e = entry("a", 1);
        store.upsert(&e, &v(0.3)).unwrap();
        index.upsert(e, &v(0.3)).unwrap();
        store.compact(&mut index).unwrap();
        drop(store);
        let (_, index, _) = Store::open_with(dir.path(), "m", 3, Precision::I8).unwrap();
        assert_eq!(
            (index.precision(), index.mapped_vector_bytes()),
            (Precision::I8, Precision::I8.bytes_per_vector(3))
        );
        assert_eq!(vector_files(dir.path()), ["vectors-2.bin"]);
        let got = index.vector_of(Path::new("a")).unwrap().into_owned();
        assert!(
            got.iter().zip(v(0.3)).all(|(a, b)| (a - b).abs() < 1e-2),
            "{got:?}"
        );
    }

    #[test]
    fn a_version_2_snapshot_with_vectors_inside_is_rewritten_with_a_vector_file() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = Vec::new();
        file.extend_from_slice(SNAPSHOT_MAGIC);
        file.extend_from_slice(&2u32.to_le_bytes());
        file.extend_from_slice(&3u32.to_le_bytes());
        file.extend_from_slice(&1u32.to_le_bytes());
        file.extend_from_slice(b"m");
        for (name, x) in [("a", 0.1), ("b", 0.7)] {
            let mut body = Vec::new();
            encode_upsert(&mut body, &entry(name, 3), &v(x));
            file.extend_from_slice(&(body.len() as u32).to_le_bytes());
            file.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
            file.extend_from_slice(&body);
        }
        std::fs::write(dir.path().join("snapshot.bin"), file).unwrap();
        let (_, index, report) = Store::open(dir.path(), "m", 3).unwrap();
        assert_eq!((report.pictures, report.reset), (2, None));
        assert_eq!(
            file_version(&dir.path().join("snapshot.bin")),
            FORMAT_VERSION
        );
        assert_eq!(vector_files(dir.path()), ["vectors-1.bin"]);
        assert_eq!(
            index.vector_of(Path::new("b")).unwrap().as_ref(),
            v(0.7).as_slice()
        );
        let (_, again, _) = Store::open(dir.path(), "m", 3).unwrap();
        assert_eq!(vectors_by_path(&again), vectors_by_path(&index));
        assert_eq!(again.get(Path::new("a")), Some(&entry("a", 3)));
    }

    #[test]
    fn a_torn_journal_tail_is_cut_and_earlier_records_kept() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _, _) = Store::open(dir.path(), "m", 3).unwrap();
        store.upsert(&entry("a", 1), &v(0.1)).unwrap();
        store.upsert(&entry("b", 2), &v(0.2)).unwrap();
        drop(store);
        let journal = dir.path().join("journal.bin");
        let len = std::fs::metadata(&journal).unwrap().len();
        for cut in 1..20 {
            let copy = tempfile::tempdir().unwrap();
            std::fs::copy(&journal, copy.path().join("journal.bin")).unwrap();
            let f = OpenOptions::new()
                .write(true)
                .open(copy.path().join("journal.bin"))
                .unwrap();
            f.set_len(len - cut).unwrap();
            let (mut store, index, report) = Store::open(copy.path(), "m", 3).unwrap();
            assert_eq!(index.len(), 1, "cut {cut}");
            assert!(report.truncated_bytes > 0);
            // Appends after the cut are readable again.
            store.upsert(&entry("c", 3), &v(0.3)).unwrap();
            drop(store);
            assert_eq!(Store::open(copy.path(), "m", 3).unwrap().1.len(), 2);
        }
        // A flipped byte in the last record also ends the replay there.
        let mut bytes = std::fs::read(&journal).unwrap();
        let n = bytes.len();
        bytes[n - 3] ^= 0x40;
        std::fs::write(&journal, bytes).unwrap();
        assert_eq!(Store::open(dir.path(), "m", 3).unwrap().1.len(), 1);
    }

    #[test]
    fn an_index_of_another_model_is_set_aside() {
        let dir = tempfile::tempdir().unwrap();
        let (mut store, _, _) = Store::open(dir.path(), "old-model", 3).unwrap();
        store.upsert(&entry("a", 1), &v(0.1)).unwrap();
        drop(store);
        let (_, index, report) = Store::open(dir.path(), "new-model", 3).unwrap();
        assert!(index.is_empty());
        assert!(report.reset.unwrap().contains("old-model"));
        assert!(dir.path().join("journal.bin.old").exists());
    }

    #[test]
    fn a_version_1_journal_is_read_and_rewritten_as_version_2() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = Vec::new();
        file.extend_from_slice(JOURNAL_MAGIC);
        file.extend_from_slice(&1u32.to_le_bytes());
        file.extend_from_slice(&3u32.to_le_bytes());
        file.extend_from_slice(&1u32.to_le_bytes());
        file.extend_from_slice(b"m");
        let mut body = vec![UPSERT];
        put_path(&mut body, Path::new("a"));
        body.extend_from_slice(&1u64.to_le_bytes());
        body.extend_from_slice(&(-5i128).to_le_bytes());
        body.extend_from_slice(&[1; 32]);
        body.extend_from_slice(&3u32.to_le_bytes());
        body.extend_from_slice(&2u32.to_le_bytes());
        body.extend_from_slice(&1_700_000_000i64.to_le_bytes());
        for x in v(0.1) {
            body.extend_from_slice(&x.to_le_bytes());
        }
        file.extend_from_slice(&(body.len() as u32).to_le_bytes());
        file.extend_from_slice(&crc32fast::hash(&body).to_le_bytes());
        file.extend_from_slice(&body);
        std::fs::write(dir.path().join("journal.bin"), file).unwrap();
        let (mut store, index, _) = Store::open(dir.path(), "m", 3).unwrap();
        assert_eq!(
            index.get(Path::new("a")),
            Some(&Entry {
                source: Box::default(),
                ..entry("a", 1)
            })
        );
        assert_eq!(
            file_version(&dir.path().join("journal.bin")),
            FORMAT_VERSION
        );
        store.upsert(&entry("b", 3), &v(0.2)).unwrap();
        drop(store);
        let (_, index, _) = Store::open(dir.path(), "m", 3).unwrap();
        assert_eq!(index.get(Path::new("b")).map(|e| &*e.source), Some("cam3"));
        assert_eq!(index.len(), 2);
    }

    #[test]
    fn modification_times_keep_their_16_bytes_and_clamp_to_an_i64() {
        let e = entry("a", 1);
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

    #[cfg(unix)]
    #[test]
    fn non_utf8_paths_round_trip() {
        use std::os::unix::ffi::OsStrExt;
        let dir = tempfile::tempdir().unwrap();
        let odd = PathBuf::from(std::ffi::OsStr::from_bytes(b"/photos/\xff\xfe.jpg"));
        let (mut store, _, _) = Store::open(dir.path(), "m", 3).unwrap();
        let mut e = entry("x", 1);
        e.path = odd.clone();
        store.upsert(&e, &v(0.1)).unwrap();
        drop(store);
        assert!(Store::open(dir.path(), "m", 3)
            .unwrap()
            .1
            .get(&odd)
            .is_some());
    }
}
