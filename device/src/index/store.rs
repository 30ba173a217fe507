//! The persistent index: a snapshot plus an append-only journal, power-cut safe.
//!
//! ```text
//! <state>/index/snapshot.bin      header (with generation G) + one Row record per picture
//! <state>/index/vectors-G.bin     their vectors, row by row (see vector_file), memory-mapped
//! <state>/index/journal.bin       header + Upsert / Remove records appended since the snapshot
//! ```
//! (Records: [`super::record`].) The snapshot's vectors are ranked straight from the mapped
//! vector file (zero-copy, in the precision the device is configured with); the journal's
//! pictures are kept in memory until the next compaction maps them too.
//!
//! Every append is written and `fdatasync`ed before the picture becomes visible, so a power
//! cut loses at most the pictures being encoded. On open, the journal is replayed over the
//! snapshot up to its last complete record; a torn tail is cut off. Compaction writes the
//! vector file of generation G+1 (temporary file, sync, rename, sync the folder), then the
//! snapshot naming G+1 the same way, then starts an empty journal, and only then deletes
//! generation G's vector file: at every moment the snapshot on disk names a complete vector
//! file. Vector files no snapshot names (a crash mid-compaction) are deleted on open.
//! Replaying an old journal over a newer snapshot is harmless (the journal's final state is
//! the snapshot's), so a crash between the two renames loses nothing. Records are upserts by
//! path, so replays never duplicate a picture.
//!
//! A vector file that does not match its snapshot (missing, wrong length, checksum) is set
//! aside with the reason in the open report: those pictures are encoded again. Both files name
//! the model id and dimension; an index of another model is set aside (renamed with a `.old`
//! suffix) and the pictures are encoded again. Older formats: [`super::migrate`].

use std::fs::{File, OpenOptions};
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::migrate;
use super::precision::Precision;
use super::record::{
    encode_entry, encode_remove, encode_upsert, frame, read_header, read_journal, read_records,
    write_header, Record, JOURNAL_MAGIC, ROW, SNAPSHOT_MAGIC,
};
use super::table::{Entry, Index};
use super::vector_file::{self, Mapped};
use super::vectors::VectorTable;
use crate::error::DeviceError;

/// A journal larger than this (and than the snapshot) is compacted: small journals replay in
/// moments, and compacting a large snapshot for a few new pictures would rewrite it often.
const COMPACT_AFTER_BYTES: u64 = 1 << 20;

/// What opening the store found.
#[derive(Debug, Default, Clone, PartialEq, Eq)]
pub struct OpenReport {
    /// Pictures in the index after opening.
    pub pictures: usize,
    /// Journal records replayed.
    pub replayed: usize,
    /// Bytes of a torn journal tail that were cut off.
    pub truncated_bytes: u64,
    /// Bytes of damage skipped inside the journal, with good records after them (kept; the
    /// store is compacted at once so the damage is gone from disk). The records in the damage
    /// are lost: their pictures are found again by the next scan.
    pub damaged_bytes: u64,
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
            outdated |= migrate::outdated(version);
            if !outdated {
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
                    Err(DeviceError::Corrupt(format!(
                        "the snapshot holds {stray} records that are not rows"
                    )))
                } else {
                    Mapped::open(&vectors_path, dim, entries.len())
                        .and_then(|m| Index::from_rows(model, entries, VectorTable::mapped(dim, m)))
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
                snapshot_bytes = migrate::read_snapshot(&snapshot_path, &mut index)?;
            }
        }
        let journal_bytes = if journal_path.exists() {
            outdated |= migrate::outdated(migrate::file_version(&journal_path));
            let read = read_journal(&journal_path, |r| apply(&mut index, r))?;
            let (good, total) = (read.good, read.total);
            report.replayed = read.records;
            report.damaged_bytes = read.damaged;
            outdated |= read.damaged > 0;
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
            // Appending records of this format to an older journal would mix formats; a
            // snapshot without its vector file must not be kept.
            store.compact(&mut index)?;
        } else {
            store.remove_unnamed_vector_files();
        }
        Ok((store, index, report))
    }

    /// The model id and dimension an existing store in `dir` was built with (`None`: no store
    /// there), read from the snapshot's header, else the journal's. An unreadable header is
    /// an error with the reason.
    pub fn stored_model(dir: &Path) -> Result<Option<(String, usize)>, DeviceError> {
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
        encode_upsert(&mut body, entry, vector);
        self.append(&body)
    }

    /// Records a picture's removal durably.
    pub fn remove(&mut self, path: &Path) -> Result<(), DeviceError> {
        let mut body = Vec::with_capacity(8 + path.as_os_str().len());
        encode_remove(&mut body, path);
        self.append(&body)
    }

    fn append(&mut self, body: &[u8]) -> Result<(), DeviceError> {
        let frame = frame(body);
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

    /// True when the journal has grown past the snapshot and past [`COMPACT_AFTER_BYTES`]:
    /// time to compact.
    pub fn should_compact(&self) -> bool {
        self.journal_bytes > COMPACT_AFTER_BYTES && self.journal_bytes > self.snapshot_bytes
    }

    /// Writes `index` as the new snapshot (its vectors as the next vector file) and starts an
    /// empty journal; the index then ranks every picture from the new file's memory map.
    pub fn compact(&mut self, index: &mut Index) -> Result<(), DeviceError> {
        if let Some(table) = self.write_compacted(index)? {
            index.adopt_vectors(table)?;
        }
        Ok(())
    }

    /// The writing part of [`Store::compact`], for an index that only needs to be read
    /// meanwhile: writes the snapshot of `index` and the next vector file, starts an empty
    /// journal, deletes the previous vector file, and returns the new file mapped, for
    /// [`Index::adopt_vectors`] (`None` if it cannot be mapped: the vectors stay in memory).
    /// `index` must not change until it has adopted the table.
    pub fn write_compacted(&mut self, index: &Index) -> Result<Option<VectorTable>, DeviceError> {
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
                let record = frame(&body);
                w.write_all(&record)?;
                n += record.len() as u64;
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
        // Ranking from the file just written releases the rows in memory and the private
        // copies of changed pages. The previous file may go at once: a mapping keeps its
        // inode until the index lets go of it.
        let mapped = match Mapped::open(&vectors_path, dim, rows) {
            Ok(m) => Some(VectorTable::mapped(dim, m)),
            Err(why) => {
                tracing::warn!(file = %vectors_path.display(), %why, "vector file not mapped; vectors stay in memory");
                None
            }
        };
        self.remove_unnamed_vector_files();
        Ok(mapped)
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

#[cfg(test)]
impl Store {
    /// Makes every append fail as on a full disk, until [`Store::repair_journal_for_test`].
    pub(crate) fn break_journal_for_test(&mut self) {
        let path = self.dir.join("journal.bin");
        self.journal = File::open(&path).expect("journal");
    }

    /// Lets appends succeed again.
    pub(crate) fn repair_journal_for_test(&mut self) {
        let path = self.dir.join("journal.bin");
        self.journal = OpenOptions::new()
            .append(true)
            .open(&path)
            .expect("journal");
    }
}

/// The vector file of snapshot generation `generation`.
fn vectors_file(dir: &Path, generation: u64) -> PathBuf {
    dir.join(format!("vectors-{generation}.bin"))
}

/// Applies a journal record (or an old snapshot's) to the index being opened.
pub(super) fn apply(index: &mut Index, record: Record) -> Result<(), DeviceError> {
    match record {
        // A record the index cannot take (an id collision, which the device refuses before
        // writing) is skipped rather than making the whole store unreadable.
        Record::Upsert(entry, _) if index.admits(&entry.path).is_err() => Ok(()),
        Record::Upsert(entry, vector) => index.upsert(entry, &vector),
        Record::Remove(path) => {
            index.remove(&path);
            Ok(())
        }
        Record::Row(entry) => Err(DeviceError::Corrupt(format!(
            "a snapshot row ({}) outside a snapshot",
            entry.path.display()
        ))),
    }
}

/// Writes a file next to `target`, syncs it, renames it over `target` and syncs the folder.
pub(super) fn write_atomically(
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
        let (_, index, report) = Store::open(dir.path(), "m", 3).unwrap();
        assert_eq!(index.len(), 1);
        assert_eq!(report.damaged_bytes, 0, "a bad last record is a torn tail");
    }

    #[test]
    fn damage_inside_the_journal_keeps_the_records_after_it_and_is_compacted_away() {
        let dir = tempfile::tempdir().unwrap();
        let journal = dir.path().join("journal.bin");
        let (mut store, _, _) = Store::open(dir.path(), "m", 3).unwrap();
        // Where each record starts.
        let mut starts = Vec::new();
        for (i, name) in ["a", "b", "c", "d", "e"].iter().enumerate() {
            starts.push(std::fs::metadata(&journal).unwrap().len() as usize);
            store
                .upsert(&entry(name, i as u8), &v(0.1 * i as f32))
                .unwrap();
        }
        store.remove(Path::new("e")).unwrap();
        drop(store);
        // A bad sector's worth of garbage from inside b's record into c's.
        let mut bytes = std::fs::read(&journal).unwrap();
        for b in &mut bytes[starts[1] + 3..starts[2] + 5] {
            *b = 0xA5;
        }
        std::fs::write(&journal, &bytes).unwrap();
        let (_, index, report) = Store::open(dir.path(), "m", 3).unwrap();
        let kept: Vec<String> = index
            .entries()
            .iter()
            .map(|e| e.path.display().to_string())
            .collect();
        assert_eq!(
            kept,
            ["a", "d"],
            "records after the damage kept, e's removal too"
        );
        assert_eq!(
            (report.damaged_bytes, report.truncated_bytes),
            ((starts[3] - starts[1]) as u64, 0),
            "{report:?}"
        );
        // Compacted at open: the damage is gone, the next open finds the same pictures.
        let (_, again, report) = Store::open(dir.path(), "m", 3).unwrap();
        assert_eq!((again.len(), report.damaged_bytes), (2, 0));
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
