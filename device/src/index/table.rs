//! [`Index`], the table of one model: one row per picture, its vectors in one contiguous
//! [`VectorTable`] for the ranker.
//!
//! Vectors in f32, f16 or int8 ([`Precision`]), ranked from the mapped vector file and from
//! memory; rows are removed by swapping the last row in, so the table stays dense. Each path
//! is held once (by its entry); the map from picture key to row serves lookups by path and
//! by id. Callers that know a picture's key (computed once, when the scan found the file) pass
//! it along: the `_keyed` methods and [`Index::entry_of`] do not hash the path again.

use std::borrow::Cow;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

use sha2::{Digest, Sha256};

use super::precision::Precision;
use super::vectors::VectorTable;
use crate::error::DeviceError;
use crate::rank::{top_k_split, Scored};

/// What the index knows of a picture besides its vector.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Entry {
    /// Path of the picture.
    pub path: PathBuf,
    /// File size in bytes when it was encoded.
    pub size: u64,
    /// Modification time (nanoseconds since the epoch, which an `i64` holds until 2262) when
    /// it was encoded.
    pub mtime_ns: i64,
    /// SHA-256 of the file's bytes.
    pub hash: [u8; 32],
    /// Width in pixels, EXIF orientation applied.
    pub width: u32,
    /// Height in pixels, EXIF orientation applied.
    pub height: u32,
    /// Capture time, seconds since the epoch: EXIF DateTimeOriginal, else the modification time
    /// (for a camera's frame: the time it was polled).
    pub taken_s: i64,
    /// Source id: the name of the camera whose frame this is; empty for a library picture.
    /// (`Box<str>`, not `String`: 8 bytes less for each of a million pictures.)
    pub source: Box<str>,
}

impl Entry {
    /// The picture's stable id: see [`picture_id`].
    pub fn id(&self) -> String {
        format!("{:016x}", picture_key(&self.path))
    }
}

/// The stable id of the picture at `path`: the first 8 bytes of SHA-256 of the path, as 16
/// hex digits. Stable across restarts and re-encodings, different for two copies of one
/// picture, and it reveals nothing of the path.
pub fn picture_id(path: &Path) -> String {
    format!("{:016x}", picture_key(path))
}

/// The 64-bit key of a picture's path: the number [`picture_id`] writes in hexadecimal. What
/// the index and the capture actor key pictures by, so neither needs a second copy of the path.
pub fn picture_key(path: &Path) -> u64 {
    let digest = Sha256::digest(path.as_os_str().as_encoded_bytes());
    u64::from_be_bytes(digest[..8].try_into().unwrap_or_default())
}

/// An indexed picture as the capture actor compares it with the disk: its [`picture_key`],
/// size and modification time (nanoseconds since the epoch).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Known {
    /// [`picture_key`] of its path.
    pub key: u64,
    /// Size in bytes when indexed.
    pub size: u64,
    /// Modification time when indexed.
    pub mtime_ns: i64,
}

/// Two paths with one id (8 bytes of SHA-256: about one chance in 10^7 among a million
/// pictures): the second is refused, not silently merged.
fn collision(kept: &Path, refused: &Path) -> DeviceError {
    DeviceError::Mismatch(format!(
        "{} has the same picture id as {} ({}); it is not indexed",
        refused.display(),
        kept.display(),
        picture_id(refused)
    ))
}

pub use edgeclip_messages::Filter;

/// Whether the picture `e` passes `filter`'s folder, time and source conditions (not the
/// score) and is not `exclude` (the query picture of a "more like this" search). Folders
/// compare by path components.
pub fn keeps(filter: &Filter, exclude: Option<&Path>, e: &Entry) -> bool {
    exclude.is_none_or(|p| e.path != p)
        && filter.keeps(e.taken_s, &e.source, |folder| e.path.starts_with(folder))
}

/// A picture and its score for one query.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranked<'a> {
    /// The picture.
    pub entry: &'a Entry,
    /// Its cosine similarity with the query.
    pub score: f32,
}

/// Vectors of one model, with their pictures.
#[derive(Debug)]
pub struct Index {
    model: String,
    dim: usize,
    entries: Vec<Entry>,
    vectors: VectorTable,
    /// Picture key (see [`picture_id`]) -> row. The path itself is held once, by the entry:
    /// a lookup by path computes the key and checks the entry's path.
    keys: HashMap<u64, usize>,
    /// Most threads one search ranks on (see [`top_k_split`]).
    search_threads: usize,
}

impl Index {
    /// An empty index for vectors of `model`, of dimension `dim`, kept in f32.
    pub fn new(model: impl Into<String>, dim: usize) -> Self {
        Self::with_precision(model, dim, Precision::F32)
    }

    /// An empty index for vectors of `model`, of dimension `dim`, kept in `precision`.
    pub fn with_precision(model: impl Into<String>, dim: usize, precision: Precision) -> Self {
        Self {
            model: model.into(),
            dim,
            entries: Vec::new(),
            vectors: VectorTable::new(dim, precision),
            keys: HashMap::new(),
            search_threads: 1,
        }
    }

    /// An index of `entries` whose vectors are the rows of `vectors`, in order (a snapshot
    /// and its mapped vector file). Fails if the counts differ or a path appears twice.
    pub fn from_rows(
        model: impl Into<String>,
        mut entries: Vec<Entry>,
        vectors: VectorTable,
    ) -> Result<Self, DeviceError> {
        if entries.len() != vectors.len() {
            return Err(DeviceError::Mismatch(format!(
                "{} pictures for {} vectors",
                entries.len(),
                vectors.len()
            )));
        }
        let mut keys = HashMap::with_capacity(entries.len());
        for (row, e) in entries.iter().enumerate() {
            if let Some(other) = keys.insert(picture_key(&e.path), row) {
                return Err(collision(&entries[other].path, &e.path));
            }
        }
        // Rows read one record at a time grew by doubling: up to half their length again is
        // spare (~40 bytes a picture). Shrinking gives the tail back without copying the rows.
        entries.shrink_to_fit();
        Ok(Self {
            model: model.into(),
            dim: vectors.dim(),
            entries,
            vectors,
            keys,
            search_threads: 1,
        })
    }

    /// Replaces the vector table by `vectors`, which must hold the same rows in the same
    /// order (the vector file just written from this index, now mapped). Returns the previous
    /// table, for the caller to free where it suits it.
    pub fn adopt_vectors(&mut self, vectors: VectorTable) -> Result<VectorTable, DeviceError> {
        if vectors.len() != self.entries.len() || vectors.dim() != self.dim {
            return Err(DeviceError::Mismatch(format!(
                "{} vectors for {} pictures",
                vectors.len(),
                self.entries.len()
            )));
        }
        Ok(std::mem::replace(&mut self.vectors, vectors))
    }

    /// Lets one search rank on up to `threads` threads (at least 1; an index ranks on one until
    /// told otherwise). Large indexes only: see [`crate::rank::MIN_ROWS_PER_THREAD`].
    pub fn set_search_threads(&mut self, threads: usize) {
        self.search_threads = threads.max(1);
    }

    /// The pictures, in row order.
    pub fn entries(&self) -> &[Entry] {
        &self.entries
    }

    /// The vector table (its rows in the order of [`Index::iter`]).
    pub fn vectors(&self) -> &VectorTable {
        &self.vectors
    }

    /// Bytes of vectors ranked straight from the mapped vector file (the rest is in memory).
    pub fn mapped_vector_bytes(&self) -> usize {
        self.vectors.mapped_bytes()
    }

    /// How the vectors are kept in memory.
    pub fn precision(&self) -> Precision {
        self.vectors.precision()
    }

    /// Bytes the vectors take in memory.
    pub fn vector_bytes(&self) -> usize {
        self.vectors.bytes()
    }

    /// Model id of the vectors.
    pub fn model(&self) -> &str {
        &self.model
    }

    /// Vector dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Number of pictures.
    pub fn len(&self) -> usize {
        self.entries.len()
    }

    /// True when no picture is indexed.
    pub fn is_empty(&self) -> bool {
        self.entries.is_empty()
    }

    fn row(&self, path: &Path) -> Option<usize> {
        self.row_of(picture_key(path), path)
    }

    /// The row of the picture at `path`, whose key is `key`.
    fn row_of(&self, key: u64, path: &Path) -> Option<usize> {
        self.keys
            .get(&key)
            .copied()
            .filter(|&r| self.entries[r].path == path)
    }

    /// The entry of `path`, whose [`picture_key`] is `key`, if indexed.
    pub fn entry_of(&self, key: u64, path: &Path) -> Option<&Entry> {
        self.row_of(key, path).map(|r| &self.entries[r])
    }

    /// The vector of the picture whose key is `key` (as kept: decoded from f16 or int8).
    pub fn vector_of_key(&self, key: u64) -> Option<Cow<'_, [f32]>> {
        self.keys.get(&key).map(|&r| self.vectors.get(r))
    }

    /// The entry and vector of the picture whose key is `key`.
    pub fn entry_and_vector_of_key(&self, key: u64) -> Option<(&Entry, Cow<'_, [f32]>)> {
        self.keys
            .get(&key)
            .map(|&r| (&self.entries[r], self.vectors.get(r)))
    }

    /// Every picture with its key, in no particular order.
    pub fn keyed_entries(&self) -> impl Iterator<Item = (u64, &Entry)> + '_ {
        self.keys
            .iter()
            .map(|(&key, &row)| (key, &self.entries[row]))
    }

    /// The path of the picture whose [`picture_key`] is `key`, if indexed.
    pub fn path_of_key(&self, key: u64) -> Option<&Path> {
        self.keys.get(&key).map(|&r| self.entries[r].path.as_path())
    }

    /// Each picture's key with the size and modification time it was indexed at.
    pub fn stamps(&self) -> impl Iterator<Item = Known> + '_ {
        self.keys.iter().map(|(&key, &row)| Known {
            key,
            size: self.entries[row].size,
            mtime_ns: self.entries[row].mtime_ns,
        })
    }

    /// The entry of `path`, if indexed.
    pub fn get(&self, path: &Path) -> Option<&Entry> {
        self.row(path).map(|r| &self.entries[r])
    }

    /// The entry of the picture with this id (see [`picture_id`]), if indexed.
    pub fn by_id(&self, id: &str) -> Option<&Entry> {
        if id.len() != 16 {
            return None;
        }
        let key = u64::from_str_radix(id, 16).ok()?;
        self.keys.get(&key).map(|&r| &self.entries[r])
    }

    /// Every picture with its vector (as kept: decoded from f16 or int8).
    pub fn iter(&self) -> impl Iterator<Item = (&Entry, Cow<'_, [f32]>)> {
        self.entries
            .iter()
            .enumerate()
            .map(|(row, e)| (e, self.vectors.get(row)))
    }

    /// Whether a picture at `path` can be added or replaced: an error if another picture has
    /// its id (see [`picture_id`]).
    pub fn admits(&self, path: &Path) -> Result<(), DeviceError> {
        self.admits_keyed(picture_key(path), path)
    }

    /// [`Index::admits`] for a picture whose key is `key`.
    pub fn admits_keyed(&self, key: u64, path: &Path) -> Result<(), DeviceError> {
        match self.keys.get(&key) {
            Some(&row) if self.entries[row].path != path => {
                Err(collision(&self.entries[row].path, path))
            }
            _ => Ok(()),
        }
    }

    /// Adds or replaces the picture's vector.
    pub fn upsert(&mut self, entry: Entry, vector: &[f32]) -> Result<(), DeviceError> {
        self.upsert_keyed(picture_key(&entry.path), entry, vector)
    }

    /// [`Index::upsert`] of a picture whose key is `key`.
    pub fn upsert_keyed(
        &mut self,
        key: u64,
        entry: Entry,
        vector: &[f32],
    ) -> Result<(), DeviceError> {
        debug_assert_eq!(key, picture_key(&entry.path));
        if vector.len() != self.dim {
            return Err(DeviceError::Mismatch(format!(
                "vector of dimension {} does not fit an index of dimension {}",
                vector.len(),
                self.dim
            )));
        }
        self.admits_keyed(key, &entry.path)?;
        match self.keys.get(&key) {
            Some(&row) => {
                self.vectors.set(row, vector);
                self.entries[row] = entry;
            }
            None => {
                self.keys.insert(key, self.entries.len());
                self.entries.push(entry);
                self.vectors.push(vector);
            }
        }
        Ok(())
    }

    /// Removes a picture; true if it was indexed.
    pub fn remove(&mut self, path: &Path) -> bool {
        self.remove_keyed(picture_key(path), path)
    }

    /// [`Index::remove`] of a picture whose key is `key`.
    pub fn remove_keyed(&mut self, key: u64, path: &Path) -> bool {
        let Some(row) = self.row_of(key, path) else {
            return false;
        };
        self.keys.remove(&key);
        let last = self.entries.len() - 1;
        self.entries.swap_remove(row);
        self.vectors.swap_remove(row);
        if row != last {
            self.keys.insert(picture_key(&self.entries[row].path), row);
        }
        true
    }

    /// The `k` pictures most similar to `query` (a unit vector of `model`), best first.
    pub fn search(
        &self,
        model: &str,
        query: &[f32],
        k: usize,
    ) -> Result<Vec<Ranked<'_>>, DeviceError> {
        self.search_filtered(model, query, k, &Filter::default(), None)
    }

    /// The vector of an indexed picture (as kept: decoded from f16 or int8).
    pub fn vector_of(&self, path: &Path) -> Option<Cow<'_, [f32]>> {
        self.row(path).map(|r| self.vectors.get(r))
    }

    /// [`Index::search`] among the pictures `filter` keeps, never returning `exclude`.
    pub fn search_filtered(
        &self,
        model: &str,
        query: &[f32],
        k: usize,
        filter: &Filter,
        exclude: Option<&Path>,
    ) -> Result<Vec<Ranked<'_>>, DeviceError> {
        if model != self.model {
            return Err(DeviceError::Mismatch(format!(
                "query vector comes from model {model}, but the index holds vectors of {}",
                self.model
            )));
        }
        if query.len() != self.dim {
            return Err(DeviceError::Mismatch(format!(
                "query vector has dimension {}, the index {}",
                query.len(),
                self.dim
            )));
        }
        let unfiltered = filter.is_empty() && exclude.is_none();
        let prepared = self.vectors.query(query);
        Ok(top_k_split(
            self.entries.len(),
            k,
            self.search_threads,
            |row| unfiltered || keeps(filter, exclude, &self.entries[row]),
            self.vectors.scorer(&prepared),
        )
        .into_iter()
        .filter(|s| filter.scores(s.score))
        .map(|Scored { row, score }| Ranked {
            entry: &self.entries[row],
            score,
        })
        .collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn entry(p: &str) -> Entry {
        Entry {
            path: PathBuf::from(p),
            size: 1,
            mtime_ns: 0,
            hash: [0; 32],
            width: 1,
            height: 1,
            taken_s: 0,
            source: Box::default(),
        }
    }

    #[test]
    fn searches_split_over_threads_answer_like_one_thread() {
        let rows = crate::rank::MIN_ROWS_PER_THREAD * 2 + 77;
        let mut index = Index::with_precision("m", 4, Precision::I8);
        for i in 0..rows {
            let a = i as f32 * 0.001;
            let folder = if i % 2 == 0 { "even" } else { "odd" };
            index
                .upsert(
                    entry(&format!("{folder}/{i}.jpg")),
                    &[a.cos(), a.sin(), 0.3, 0.1],
                )
                .unwrap();
        }
        let query = [0.2f32.cos(), 0.2f32.sin(), 0.0, 0.0];
        let filter = Filter {
            folder: Some("odd".into()),
            ..Filter::default()
        };
        let answer = |index: &Index, filter: &Filter| -> Vec<(PathBuf, f32)> {
            index
                .search_filtered("m", &query, 25, filter, None)
                .unwrap()
                .into_iter()
                .map(|h| (h.entry.path.clone(), h.score))
                .collect()
        };
        let (one, one_filtered) = (answer(&index, &Filter::default()), answer(&index, &filter));
        assert_eq!(one.len(), 25);
        assert!(one_filtered.iter().all(|(p, _)| p.starts_with("odd")));
        index.set_search_threads(2);
        assert_eq!(answer(&index, &Filter::default()), one);
        assert_eq!(answer(&index, &filter), one_filtered);
    }

    #[test]
    fn upsert_remove_and_search_keep_rows_consistent() {
        let mut index = Index::new("m", 2);
        index.upsert(entry("a"), &[1.0, 0.0]).unwrap();
        index.upsert(entry("b"), &[0.0, 1.0]).unwrap();
        index.upsert(entry("c"), &[0.6, 0.8]).unwrap();
        assert_eq!(index.len(), 3);
        assert!(index.remove(Path::new("a")));
        assert!(!index.remove(Path::new("a")));
        let hits = index.search("m", &[0.0, 1.0], 5).unwrap();
        let paths: Vec<_> = hits
            .iter()
            .map(|h| h.entry.path.to_str().unwrap())
            .collect();
        assert_eq!(paths, vec!["b", "c"]);
        index.upsert(entry("b"), &[1.0, 0.0]).unwrap();
        assert_eq!(index.len(), 2);
        let hits = index.search("m", &[0.0, 1.0], 1).unwrap();
        assert_eq!(hits[0].entry.path, PathBuf::from("c"));
    }

    #[test]
    fn filters_restrict_by_folder_time_score_and_exclusion() {
        let mut index = Index::new("m", 2);
        let mut e = |p: &str, t: i64, v: [f32; 2]| {
            let mut en = entry(p);
            en.taken_s = t;
            index.upsert(en, &v).unwrap();
        };
        e("/a/1.jpg", 10, [1.0, 0.0]);
        e("/a/2.jpg", 20, [0.8, 0.6]);
        e("/b/3.jpg", 30, [0.6, 0.8]);
        let names_excluding = |f: Filter, exclude: Option<&Path>| -> Vec<String> {
            index
                .search_filtered("m", &[1.0, 0.0], 10, &f, exclude)
                .unwrap()
                .iter()
                .map(|r| r.entry.path.display().to_string())
                .collect()
        };
        let names = |f: Filter| names_excluding(f, None);
        assert_eq!(
            names(Filter {
                folder: Some("/a".into()),
                ..Filter::default()
            }),
            ["/a/1.jpg", "/a/2.jpg"]
        );
        assert_eq!(
            names(Filter {
                after: Some(20),
                ..Filter::default()
            }),
            ["/a/2.jpg", "/b/3.jpg"]
        );
        assert_eq!(
            names(Filter {
                before: Some(20),
                ..Filter::default()
            }),
            ["/a/1.jpg"]
        );
        assert_eq!(
            names(Filter {
                min_score: Some(0.7),
                ..Filter::default()
            }),
            ["/a/1.jpg", "/a/2.jpg"]
        );
        assert_eq!(
            names_excluding(Filter::default(), Some(Path::new("/a/1.jpg"))),
            ["/a/2.jpg", "/b/3.jpg"]
        );
        assert!(names(Filter {
            source: Some("door".into()),
            ..Filter::default()
        })
        .is_empty());
        assert_eq!(
            names(Filter {
                source: Some(String::new()),
                ..Filter::default()
            })
            .len(),
            3
        );
        assert_eq!(
            index.vector_of(Path::new("/b/3.jpg")).as_deref(),
            Some(&[0.6, 0.8][..])
        );
    }

    #[test]
    fn pictures_are_found_by_their_stable_id_until_removed() {
        let mut index = Index::new("m", 2);
        index.upsert(entry("/a/1.jpg"), &[1.0, 0.0]).unwrap();
        index.upsert(entry("/a/2.jpg"), &[0.0, 1.0]).unwrap();
        let id = picture_id(Path::new("/a/1.jpg"));
        assert_eq!(id.len(), 16);
        assert_eq!(id, index.get(Path::new("/a/1.jpg")).unwrap().id());
        assert_ne!(id, picture_id(Path::new("/a/2.jpg")));
        assert_eq!(index.by_id(&id).unwrap().path, PathBuf::from("/a/1.jpg"));
        assert!(index.by_id("not-an-id").is_none() && index.by_id("zzzzzzzzzzzzzzzz").is_none());
        index.remove(Path::new("/a/1.jpg"));
        assert!(index.by_id(&id).is_none());
        assert!(index.by_id(&picture_id(Path::new("/a/2.jpg"))).is_some());
    }

    #[test]
    fn lookups_by_path_and_id_stay_right_through_removals_that_move_rows() {
        let mut index = Index::new("m", 2);
        let names: Vec<String> = (0..40).map(|i| format!("/p/{i}.jpg")).collect();
        for (i, n) in names.iter().enumerate() {
            index.upsert(entry(n), &[i as f32, 1.0]).unwrap();
        }
        for n in names.iter().step_by(3) {
            assert!(index.remove(Path::new(n)));
        }
        for (i, n) in names.iter().enumerate() {
            let p = Path::new(n);
            if i % 3 == 0 {
                assert!(
                    index.get(p).is_none()
                        && index.by_id(&picture_id(p)).is_none()
                        && index.vector_of(p).is_none()
                );
            } else {
                assert_eq!(index.get(p).map(|e| &e.path), Some(&p.to_path_buf()));
                assert_eq!(
                    index.by_id(&picture_id(p)).map(|e| &e.path),
                    Some(&p.to_path_buf())
                );
                assert_eq!(index.vector_of(p).unwrap()[0], i as f32);
            }
        }
        assert_eq!(index.len(), 26);
        assert!(index.get(Path::new("/p/not-there.jpg")).is_none());
    }

    #[test]
    fn vectors_of_another_model_or_dimension_are_refused() {
        let mut index = Index::new("m", 2);
        assert!(index.upsert(entry("a"), &[1.0]).is_err());
        index.upsert(entry("a"), &[1.0, 0.0]).unwrap();
        let err = index
            .search("other", &[1.0, 0.0], 1)
            .unwrap_err()
            .to_string();
        assert!(err.contains("other") && err.contains('m'), "{err}");
        assert!(index.search("m", &[1.0, 0.0, 0.0], 1).is_err());
    }
}
