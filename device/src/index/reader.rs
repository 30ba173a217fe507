//! [`CatalogReader`]: what readers ask of the indexes (rankings, "more like this", near-duplicate
//! groups, the export of a server-ranked search, a picture by id, what is indexed, a vector to
//! reuse), answered on the reader's own thread under a read lock, never through the index
//! actor. A ranking holds the lock while it reads every vector once; near-duplicate grouping
//! copies the vectors it compares and groups them after releasing it, so the O(n²) work never
//! keeps the catalog's writer waiting.

use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock, RwLockReadGuard};

use edgeclip_messages::dashboard::Hit;

use super::indexes::{read, Indexes, Models};
use super::table::{keeps, Entry, Filter, Index, Known, Ranked};
use crate::error::DeviceError;

/// A ranking: the model of the vectors compared, the hits, and whether they come from an
/// index still being built. The result of [`CatalogReader::rank`] and [`CatalogReader::like`],
/// handed to the search session as it is.
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// Model id of the vectors compared.
    pub model: String,
    /// Best first, without thumbnail URLs (the search session adds them: it knows the HTTP
    /// endpoint).
    pub hits: Vec<Hit>,
    /// True when ranked by an index still being re-built (pictures may be missing).
    pub partial: bool,
}

/// Near-duplicate groups among the pictures of the serving index ([`CatalogReader::duplicates`]).
#[derive(Debug, Clone, PartialEq)]
pub struct Duplicates {
    /// Model id of the vectors compared.
    pub model: String,
    /// Largest groups first; in a group, the most alike first; each hit's score is its best
    /// cosine within its group.
    pub groups: Vec<Vec<Hit>>,
}

/// A server-ranked search's view of the index ([`CatalogReader::export`]): ids are positions
/// in `pictures`.
#[derive(Debug, Clone, PartialEq)]
pub struct Export {
    /// Model id of the vectors.
    pub model: String,
    /// Vector dimension.
    pub dim: usize,
    /// Picture of each id, as a hit without its score.
    pub pictures: Vec<Hit>,
    /// The vectors, int8-quantised, one chunk per rank request.
    pub chunks: Vec<ExportChunk>,
}

/// One chunk of an [`Export`]: what one rank request carries.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportChunk {
    /// Ids of the chunk's vectors (positions in [`Export::pictures`]).
    pub ids: Vec<u32>,
    /// Per-vector scale of the codes.
    pub scales: Vec<f32>,
    /// The vectors, `dim` int8 codes each.
    pub codes: Vec<i8>,
}

/// Read access to the catalog's indexes from any thread. Cheap to clone. The methods block
/// while the catalog's writer holds the lock (an in-memory change) and take as long as their
/// work: call them where blocking is allowed.
#[derive(Debug, Clone)]
pub struct CatalogReader {
    shared: Arc<RwLock<Indexes>>,
}

impl CatalogReader {
    pub(super) fn new(shared: Arc<RwLock<Indexes>>) -> Self {
        CatalogReader { shared }
    }

    /// The indexes, under a read lock held until the guard is dropped.
    pub fn read(&self) -> RwLockReadGuard<'_, Indexes> {
        read(&self.shared)
    }

    /// The models of the indexes.
    pub fn models(&self) -> Models {
        self.read().models()
    }

    /// The `k` pictures most similar to `query` (a unit vector of `model`) that `filter`
    /// keeps, ranked by the index of that model.
    pub fn rank(
        &self,
        model: &str,
        query: &[f32],
        k: usize,
        filter: &Filter,
    ) -> Result<Ranking, DeviceError> {
        rank(&self.read(), model, query, k, filter)
    }

    /// "More like this": the pictures most similar to the indexed picture `picture` (a path
    /// or an id), never itself.
    pub fn like(&self, picture: &Path, k: usize, filter: &Filter) -> Result<Ranking, DeviceError> {
        like(&self.read(), picture, k, filter)
    }

    /// Near-duplicate groups among at most `max` pictures of the serving index that `filter`
    /// keeps; the grouping runs after the lock is released.
    pub fn duplicates(
        &self,
        threshold: f32,
        k: usize,
        filter: &Filter,
        max: usize,
    ) -> Result<Duplicates, DeviceError> {
        let candidates = Candidates::of(self.read().serving(), filter, max)?;
        Ok(candidates.group(threshold, k))
    }

    /// The pictures of the serving index `filter` keeps, int8-quantised in chunks of
    /// `chunk_vectors`, for a server-ranked search; at most `max_vectors` of them.
    pub fn export(
        &self,
        filter: &Filter,
        chunk_vectors: usize,
        max_vectors: usize,
    ) -> Result<Export, DeviceError> {
        export(self.read().serving(), filter, chunk_vectors, max_vectors)
    }

    /// The entry of the picture with this id, in either index.
    pub fn picture(&self, id: &str) -> Option<Entry> {
        self.read().picture(id).cloned()
    }

    /// What is indexed, as the capture compares it with the disk (see [`Indexes::known`]).
    pub fn known(&self) -> Vec<Known> {
        self.read().known()
    }

    /// A vector already computed for content `hash`, with the picture it was computed for.
    pub fn reuse(&self, hash: &[u8; 32]) -> Option<(Entry, Vec<f32>)> {
        self.read().reuse(hash)
    }

    /// The vector of the newest picture of source `source` (a camera's last kept frame).
    pub fn last_of_source(&self, source: &str) -> Option<Vec<f32>> {
        self.read().last_of_source(source)
    }
}

/// Ranks `query` by the index of `model` (see [`Indexes::for_model`]).
pub fn rank(
    indexes: &Indexes,
    model: &str,
    query: &[f32],
    k: usize,
    filter: &Filter,
) -> Result<Ranking, DeviceError> {
    let (index, partial) = indexes.for_model(model);
    let hits = index.search_filtered(model, query, k, filter, None)?;
    Ok(Ranking {
        model: model.to_string(),
        hits: to_hits(hits),
        partial,
    })
}

/// "More like this" from the complete index; a picture only the index being built holds (new
/// since the re-index began) is answered from that one.
pub fn like(
    indexes: &Indexes,
    picture: &Path,
    k: usize,
    filter: &Filter,
) -> Result<Ranking, DeviceError> {
    let candidates =
        std::iter::once((indexes.serving(), false)).chain(indexes.building().map(|b| (b, true)));
    let found = candidates
        .into_iter()
        .find_map(|(index, partial)| resolve(index, picture).map(|p| (index, partial, p)));
    let Some((index, partial, path)) = found else {
        return Err(DeviceError::Search(format!(
            "{} is not an indexed picture (give its path or id)",
            picture.display()
        )));
    };
    let query = index
        .vector_of(&path)
        .map(|v| v.into_owned())
        .unwrap_or_default();
    let hits = index.search_filtered(index.model(), &query, k, filter, Some(&path))?;
    Ok(Ranking {
        model: index.model().to_string(),
        hits: to_hits(hits),
        partial,
    })
}

/// The indexed picture named by `path`: its path, or its id.
fn resolve(index: &Index, path: &Path) -> Option<PathBuf> {
    match index.get(path) {
        Some(e) => Some(e.path.clone()),
        None => path
            .to_str()
            .and_then(|id| index.by_id(id))
            .map(|e| e.path.clone()),
    }
}

/// The pictures a near-duplicate search compares, copied out of the index.
#[derive(Debug)]
pub struct Candidates {
    model: String,
    dim: usize,
    entries: Vec<Entry>,
    /// Their vectors, row after row.
    flat: Vec<f32>,
}

impl Candidates {
    /// The pictures of `index` that `filter` keeps, refused if more than `max` (the pairwise
    /// work, and the copy, grow with their number).
    pub fn of(index: &Index, filter: &Filter, max: usize) -> Result<Candidates, DeviceError> {
        // Counted before any vector is decoded: the bound is also what bounds the memory.
        let rows = kept_rows(index, filter);
        if rows.len() > max {
            return Err(DeviceError::Search(format!(
                "{} pictures match, more than search.max_duplicate_pictures = {max} can be compared pairwise; narrow the search (folder, after, before, source)",
                rows.len()
            )));
        }
        let mut flat: Vec<f32> = Vec::with_capacity(rows.len() * index.dim());
        for &row in &rows {
            flat.extend_from_slice(&index.vectors().get(row));
        }
        Ok(Candidates {
            model: index.model().to_string(),
            dim: index.dim(),
            entries: rows.iter().map(|&r| index.entries()[r].clone()).collect(),
            flat,
        })
    }

    /// The `k` largest groups of pictures at least `threshold` alike (every pair compared).
    pub fn group(self, threshold: f32, k: usize) -> Duplicates {
        let groups = crate::duplicates::groups(&self.flat, self.dim, threshold)
            .into_iter()
            .take(k)
            .map(|g| {
                g.members
                    .into_iter()
                    .map(|(i, score)| hit(&self.entries[i], score))
                    .collect()
            })
            .collect();
        Duplicates {
            model: self.model,
            groups,
        }
    }
}

/// Rows of the pictures `filter` keeps, in row order.
fn kept_rows(index: &Index, filter: &Filter) -> Vec<usize> {
    index
        .entries()
        .iter()
        .enumerate()
        .filter(|(_, e)| keeps(filter, None, e))
        .map(|(row, _)| row)
        .collect()
}

/// The pictures of `index` that `filter` keeps, int8-quantised in chunks.
pub fn export(
    index: &Index,
    filter: &Filter,
    chunk_vectors: usize,
    max_vectors: usize,
) -> Result<Export, DeviceError> {
    let rows = kept_rows(index, filter);
    if rows.len() > max_vectors {
        return Err(DeviceError::Search(format!(
            "{} pictures match, more than search.max_server_vectors = {max_vectors} may leave the device; search in device mode or narrow the search",
            rows.len()
        )));
    }
    // One vector decoded at a time, straight into the chunk's int8 codes: the export holds
    // what it sends, not every vector in f32 besides.
    let mut out = Export {
        model: index.model().to_string(),
        dim: index.dim(),
        pictures: Vec::with_capacity(rows.len()),
        chunks: Vec::new(),
    };
    for group in rows.chunks(chunk_vectors.max(1)) {
        let (mut ids, mut scales, mut codes) = (
            Vec::with_capacity(group.len()),
            Vec::with_capacity(group.len()),
            Vec::with_capacity(group.len() * index.dim()),
        );
        for &row in group {
            ids.push(out.pictures.len() as u32);
            out.pictures.push(hit(&index.entries()[row], 0.0));
            scales.push(edgeclip_messages::wire::quantise(
                &index.vectors().get(row),
                &mut codes,
            ));
        }
        out.chunks.push(ExportChunk { ids, scales, codes });
    }
    Ok(out)
}

fn to_hits(ranked: Vec<Ranked<'_>>) -> Vec<Hit> {
    ranked.into_iter().map(|r| hit(r.entry, r.score)).collect()
}

/// A picture as a search result: what the index knows of it, without reading the file. The
/// thumbnail URL is added by the search session, which knows the HTTP endpoint.
pub fn hit(entry: &Entry, score: f32) -> Hit {
    Hit {
        path: entry.path.display().to_string(),
        score,
        taken_s: entry.taken_s,
        id: entry.id(),
        bytes: entry.size,
        width: entry.width,
        height: entry.height,
        source: entry.source.to_string(),
        thumb_url: None,
        device: None,
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::precision::Precision;

    fn entry(path: &str) -> Entry {
        Entry {
            path: PathBuf::from(path),
            size: 1,
            mtime_ns: 0,
            hash: [0; 32],
            width: 1,
            height: 1,
            taken_s: 0,
            source: Box::default(),
        }
    }

    /// Rows of folders a and b interleaved: what a filter keeps is not a prefix of the rows.
    fn interleaved() -> Index {
        let mut index = Index::with_precision("m", 2, Precision::I8);
        for (path, v) in [
            ("b/1", [1.0, 0.0]),
            ("a/1", [0.0, 1.0]),
            ("b/2", [1.0, 0.0]),
            ("a/2", [0.0, 1.0]),
            ("a/3", [0.6, -0.8]),
        ] {
            index.upsert(entry(path), &v).unwrap();
        }
        index
    }

    fn only_a() -> Filter {
        Filter {
            folder: Some("a".into()),
            ..Filter::default()
        }
    }

    #[test]
    fn duplicates_among_filtered_rows_name_the_right_pictures() {
        let index = interleaved();
        let found = Candidates::of(&index, &only_a(), 10)
            .unwrap()
            .group(0.99, 10);
        let names: Vec<Vec<&str>> = found
            .groups
            .iter()
            .map(|g| g.iter().map(|h| h.path.as_str()).collect())
            .collect();
        assert_eq!(names, vec![vec!["a/1", "a/2"]]);
        let refused = Candidates::of(&index, &only_a(), 2)
            .unwrap_err()
            .to_string();
        assert!(refused.contains("3 pictures match"), "{refused}");
    }

    #[test]
    fn exports_hold_the_filtered_pictures_with_their_own_vectors() {
        let index = interleaved();
        let exported = export(&index, &only_a(), 2, 10).unwrap();
        let paths: Vec<&str> = exported.pictures.iter().map(|h| h.path.as_str()).collect();
        assert_eq!(paths, vec!["a/1", "a/2", "a/3"]);
        assert_eq!(
            exported
                .chunks
                .iter()
                .map(|c| c.ids.clone())
                .collect::<Vec<_>>(),
            vec![vec![0, 1], vec![2]]
        );
        let ExportChunk { scales, codes, .. } = &exported.chunks[1];
        let a3: Vec<f32> = codes.iter().map(|&c| c as f32 * scales[0]).collect();
        assert!(
            (a3[0] - 0.6).abs() < 0.01 && (a3[1] + 0.8).abs() < 0.01,
            "{a3:?}"
        );
        assert!(export(&index, &only_a(), 2, 2)
            .err()
            .is_some_and(|e| e.to_string().contains("3 pictures match")));
    }

    /// A catalog whose serving index holds `old` (model "old") while "new" is built with
    /// `new`.
    fn reindexing(
        state: &Path,
        old: &[(&str, [f32; 2])],
        new: &[(&str, [f32; 2])],
    ) -> crate::index::Catalog {
        use crate::index::{reindex, Catalog, Layout, Store};
        let layout = Layout::new(state);
        {
            let (mut store, _, _) = Store::open(&layout.current, "old", 2).unwrap();
            for (p, v) in old {
                store.upsert(&entry(p), v).unwrap();
            }
        }
        let opened = reindex::open(&layout, "new", 2, Precision::F32).unwrap();
        let mut catalog = Catalog::new(opened.serving, opened.building, layout);
        for (p, v) in new {
            let key = crate::index::picture_key(Path::new(p));
            catalog.insert(key, entry(p), v.to_vec());
        }
        catalog
    }

    #[test]
    fn a_query_is_ranked_by_the_index_of_its_model_and_likes_find_either_index() {
        let state = tempfile::tempdir().unwrap();
        let catalog = reindexing(
            state.path(),
            &[("/x", [1.0, 0.0]), ("/y", [0.0, 1.0]), ("/z", [0.8, 0.6])],
            &[("/x", [0.0, 1.0]), ("/w", [0.6, 0.8])],
        );
        let reader = catalog.reader();
        let names = |r: &Ranking| r.hits.iter().map(|h| h.path.clone()).collect::<Vec<_>>();
        let old = reader
            .rank("old", &[1.0, 0.0], 2, &Filter::default())
            .unwrap();
        assert_eq!((old.model.as_str(), old.partial), ("old", false));
        assert_eq!(names(&old), ["/x", "/z"]);
        let new = reader
            .rank("new", &[0.0, 1.0], 5, &Filter::default())
            .unwrap();
        assert_eq!((new.model.as_str(), new.partial), ("new", true));
        assert_eq!(names(&new), ["/x", "/w"]);
        let other = reader
            .rank("third", &[1.0, 0.0], 2, &Filter::default())
            .unwrap_err();
        assert!(other.to_string().contains("third"), "{other}");
        // "More like this": the complete index answers, never with the picture itself...
        let like = reader.like(Path::new("/z"), 5, &Filter::default()).unwrap();
        assert_eq!(
            (names(&like), like.partial),
            (vec!["/x".to_string(), "/y".into()], false)
        );
        // ... by id too; a picture only the new index holds is answered from it.
        let id = crate::index::picture_id(Path::new("/w"));
        let like = reader.like(Path::new(&id), 5, &Filter::default()).unwrap();
        assert_eq!((names(&like), like.partial), (vec!["/x".to_string()], true));
        let unknown = reader
            .like(Path::new("/nowhere"), 5, &Filter::default())
            .unwrap_err();
        assert!(
            unknown.to_string().contains("not an indexed picture"),
            "{unknown}"
        );
        assert_eq!(
            reader.picture(&id).map(|e| e.path),
            Some(PathBuf::from("/w"))
        );
        assert!(reader.picture("0000000000000000").is_none());
        // Duplicates and exports come from the complete index.
        assert_eq!(
            reader
                .duplicates(0.5, 10, &Filter::default(), 10)
                .unwrap()
                .model,
            "old"
        );
        assert_eq!(
            reader
                .export(&Filter::default(), 10, 10)
                .unwrap()
                .pictures
                .len(),
            3
        );
    }
}
