//! What a file's content can reuse instead of being encoded again: the vector of a picture
//! with the same content (a copy) in the index new vectors go to, or of one removed recently
//! (a rename or a move shows up as a removal and a new file).
//!
//! Lookups by content are a map from the first 8 bytes of the content hash to the picture's
//! key, so the map costs 16 bytes a picture and follows rows that move; the full hash is
//! compared on lookup. One picture per content is enough: copies share their vector.

use std::collections::{HashMap, VecDeque};

use super::table::{Entry, Index};

/// Vectors of removed pictures kept for reuse: a folder of this many pictures can be moved
/// or renamed without encoding any of them again (at 2 KiB a 512-d vector: 8 MiB at most).
pub const REMOVED_KEPT: usize = 4096;

/// The map key of a content hash.
fn prefix(hash: &[u8; 32]) -> u64 {
    u64::from_le_bytes(hash[..8].try_into().unwrap_or_default())
}

/// Content hash lookups for one index, and the recently removed pictures.
#[derive(Debug, Default)]
pub struct Reuse {
    /// Content hash prefix -> key of a picture with that content.
    by_content: HashMap<u64, u64>,
    /// Removed pictures by content hash, with their vectors.
    removed: HashMap<[u8; 32], (Entry, Vec<f32>)>,
    /// Their hashes, oldest first (the first to be forgotten).
    removed_order: VecDeque<[u8; 32]>,
}

impl Reuse {
    /// The lookups of every picture of `index`.
    pub fn of(index: &Index) -> Reuse {
        let mut reuse = Reuse {
            by_content: HashMap::with_capacity(index.len()),
            ..Reuse::default()
        };
        for (key, entry) in index.keyed_entries() {
            reuse.added(key, &entry.hash);
        }
        reuse
    }

    /// A picture with key `key` and content `hash` was added.
    pub fn added(&mut self, key: u64, hash: &[u8; 32]) {
        self.by_content.entry(prefix(hash)).or_insert(key);
    }

    /// The picture with key `key` no longer has content `hash` (it was replaced or removed).
    pub fn forget(&mut self, key: u64, hash: &[u8; 32]) {
        if self.by_content.get(&prefix(hash)) == Some(&key) {
            self.by_content.remove(&prefix(hash));
        }
    }

    /// The picture with key `key` was removed: its vector stays reusable for a while.
    pub fn removed(&mut self, key: u64, entry: Entry, vector: Vec<f32>) {
        self.forget(key, &entry.hash);
        let hash = entry.hash;
        if self.removed.insert(hash, (entry, vector)).is_none() {
            self.removed_order.push_back(hash);
        }
        while self.removed_order.len() > REMOVED_KEPT {
            if let Some(old) = self.removed_order.pop_front() {
                self.removed.remove(&old);
            }
        }
    }

    /// A picture of `index` (the one these lookups follow) or a removed one with content
    /// `hash`, with its vector.
    pub fn find(&self, index: &Index, hash: &[u8; 32]) -> Option<(Entry, Vec<f32>)> {
        let indexed = self
            .by_content
            .get(&prefix(hash))
            .and_then(|&key| index.entry_and_vector_of_key(key))
            .filter(|(e, _)| e.hash == *hash)
            .map(|(e, v)| (e.clone(), v.into_owned()));
        indexed.or_else(|| self.removed.get(hash).cloned())
    }
}

#[cfg(test)]
mod tests {
    use std::path::{Path, PathBuf};

    use super::*;
    use crate::index::picture_key;

    fn entry(path: &str, content: u8) -> Entry {
        Entry {
            path: PathBuf::from(path),
            size: 1,
            mtime_ns: 0,
            hash: [content; 32],
            width: 2,
            height: 1,
            taken_s: 0,
            source: Box::default(),
        }
    }

    fn add(index: &mut Index, reuse: &mut Reuse, path: &str, content: u8, v: [f32; 2]) {
        let e = entry(path, content);
        reuse.added(picture_key(&e.path), &e.hash);
        index.upsert(e, &v).unwrap();
    }

    #[test]
    fn a_copy_finds_the_vector_of_its_content_until_the_last_holder_is_gone() {
        let mut index = Index::new("m", 2);
        add(&mut index, &mut Reuse::default(), "/pre", 9, [0.0, 1.0]);
        let mut reuse = Reuse::of(&index);
        add(&mut index, &mut reuse, "/a", 1, [1.0, 0.0]);
        add(&mut index, &mut reuse, "/b", 2, [0.6, 0.8]);
        let (found, vector) = reuse.find(&index, &[2; 32]).unwrap();
        assert_eq!(
            (found.path.as_path(), vector),
            (Path::new("/b"), vec![0.6, 0.8])
        );
        assert_eq!(
            reuse.find(&index, &[9; 32]).unwrap().0.path,
            Path::new("/pre")
        );
        assert!(reuse.find(&index, &[3; 32]).is_none());
        // Rows move when /a is removed; the lookup follows the key, not the row.
        let (a, av) = (index.get(Path::new("/a")).unwrap().clone(), vec![1.0, 0.0]);
        index.remove(Path::new("/a"));
        reuse.removed(picture_key(&a.path), a, av);
        assert_eq!(
            reuse.find(&index, &[2; 32]).unwrap().0.path,
            Path::new("/b")
        );
        // A removed picture stays reusable (a rename).
        let (gone, v) = reuse.find(&index, &[1; 32]).unwrap();
        assert_eq!((gone.path.as_path(), v), (Path::new("/a"), vec![1.0, 0.0]));
    }

    #[test]
    fn a_replaced_content_is_forgotten_and_a_prefix_alone_never_matches() {
        let mut index = Index::new("m", 2);
        let mut reuse = Reuse::default();
        add(&mut index, &mut reuse, "/a", 1, [1.0, 0.0]);
        let key = picture_key(Path::new("/a"));
        reuse.forget(key, &[1; 32]);
        add(&mut index, &mut reuse, "/a", 2, [0.0, 1.0]);
        assert!(reuse.find(&index, &[1; 32]).is_none());
        assert!(reuse.find(&index, &[2; 32]).is_some());
        // Same first 8 bytes, another content.
        let mut other = [2; 32];
        other[31] = 0;
        assert!(reuse.find(&index, &other).is_none());
    }

    #[test]
    fn only_the_most_recently_removed_are_kept() {
        let index = Index::new("m", 2);
        let mut reuse = Reuse::default();
        for i in 0..REMOVED_KEPT + 2 {
            let mut e = entry(&format!("/p/{i}"), 0);
            e.hash[..8].copy_from_slice(&(i as u64).to_le_bytes());
            reuse.removed(i as u64, e, vec![0.0, 1.0]);
        }
        let hash_of = |i: u64| {
            let mut h = [0; 32];
            h[..8].copy_from_slice(&i.to_le_bytes());
            h
        };
        assert!(reuse.find(&index, &hash_of(0)).is_none());
        assert!(reuse.find(&index, &hash_of(1)).is_none());
        assert!(reuse.find(&index, &hash_of(2)).is_some());
        assert!(reuse
            .find(&index, &hash_of(REMOVED_KEPT as u64 + 1))
            .is_some());
    }
}
