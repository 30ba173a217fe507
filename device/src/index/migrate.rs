//! Stores of formats 1 and 2, read and rewritten as format 3 when the store opens.
//!
//! Format 1 had no source id in its Upsert records (the record codec reads both), and in
//! formats 1 and 2 the snapshot held its pictures' vectors in Upsert records instead of a
//! vector file. Opening such a store reads it into the index and compacts it at once, so the
//! journal never mixes formats and every snapshot afterwards names its vector file.

use std::fs::File;
use std::io::Read;
use std::path::Path;

use super::record::{read_records, FORMAT_VERSION, SNAPSHOT_MAGIC};
use super::table::Index;
use crate::error::DeviceError;

/// Whether a file of format `version` must be rewritten.
pub(super) fn outdated(version: u32) -> bool {
    version < FORMAT_VERSION
}

/// Reads a snapshot of format 1 or 2 (each picture an Upsert with its vector) into `index`;
/// returns the length up to its last good record.
pub(super) fn read_snapshot(path: &Path, index: &mut Index) -> Result<u64, DeviceError> {
    let (_, _, good, _) = read_records(path, SNAPSHOT_MAGIC, |r| super::store::apply(index, r))?;
    Ok(good)
}

/// The format version in a file's header (0 if unreadable).
pub(super) fn file_version(path: &Path) -> u32 {
    let mut fixed = [0u8; 8];
    File::open(path)
        .and_then(|mut f| f.read_exact(&mut fixed))
        .map(|()| u32::from_le_bytes([fixed[4], fixed[5], fixed[6], fixed[7]]))
        .unwrap_or(0)
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;
    use crate::index::record::{encode_upsert, JOURNAL_MAGIC, UPSERT};
    use crate::index::store::Store;
    use crate::index::table::Entry;

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

    fn vector_files(dir: &Path) -> Vec<String> {
        let mut names: Vec<String> = std::fs::read_dir(dir)
            .unwrap()
            .filter_map(|e| Some(e.ok()?.file_name().to_string_lossy().into_owned()))
            .filter(|n| n.starts_with("vectors-"))
            .collect();
        names.sort();
        names
    }

    fn vectors_by_path(index: &Index) -> Vec<(PathBuf, Vec<f32>)> {
        let mut out: Vec<_> = index
            .iter()
            .map(|(e, v)| (e.path.clone(), v.into_owned()))
            .collect();
        out.sort_by(|a, b| a.0.cmp(&b.0));
        out
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
    fn a_version_1_journal_is_read_and_rewritten_as_version_2() {
        let dir = tempfile::tempdir().unwrap();
        let mut file = Vec::new();
        file.extend_from_slice(JOURNAL_MAGIC);
        file.extend_from_slice(&1u32.to_le_bytes());
        file.extend_from_slice(&3u32.to_le_bytes());
        file.extend_from_slice(&1u32.to_le_bytes());
        file.extend_from_slice(b"m");
        let mut body = vec![UPSERT];
        body.extend_from_slice(&1u32.to_le_bytes());
        body.extend_from_slice(b"a");
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
}
