//! [`Catalog`]: the device's indexes with their stores, and the rules that keep them right.
//!
//! The catalog holds the index searches are answered from (*serving*) and, during a re-index
//! for a new model (see [`super::reindex`]), the index being built; each with its store. New
//! vectors go to the *target*: the index being built during a re-index, else the serving one.
//! Its rules:
//! - a picture is written (its journal record synced) before it becomes visible;
//! - a picture whose content changed during a re-index leaves the serving index (its old vector
//!   describes content that is gone); removals go to both indexes;
//! - changes wait in a queue, in order and invisible, while their store cannot take them: a
//!   compaction has the store, or the disk refuses writes (then the pictures are *unsaved* and
//!   written again later, [`Catalog::write_waiting`]); at most one waiting insert per path;
//! - the switch to the index being built happens only when nothing waits and no compaction
//!   runs (the caller adds: nothing left to encode).
//!
//! Concurrency: the in-memory indexes are shared read-mostly ([`Indexes`], read through a
//! [`CatalogReader`]). The catalog is their one writer and takes the write lock only for
//! in-memory changes, never while it writes a file: a change is written first, then applied
//! under the lock. A [`Compaction`] runs on another thread with its store moved into it and
//! the index under a read lock; the catalog applies its result in [`Catalog::compacted`].
//! Every method that writes a file blocks: callers on an async runtime run it off the async
//! threads.

use std::collections::VecDeque;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};

use tracing::{info, warn};

use super::indexes::{read, write, Indexes, Models, Which};
use super::reader::CatalogReader;
use super::reindex::{self, Layout};
use super::reuse::Reuse;
use super::store::Store;
use super::table::{Entry, Index};
use super::vectors::VectorTable;
use crate::error::DeviceError;

/// Most encoded pictures kept waiting in memory (at a few KiB each, tens of MiB at most);
/// beyond, a picture counts as failed and the next scan finds it again.
pub const MAX_WAITING: usize = 10_000;

/// What the catalog holds, for the status.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct Inventory {
    /// Model id of the serving index.
    pub model: String,
    /// Its vector dimension.
    pub dim: usize,
    /// Pictures in it.
    pub indexed: u64,
    /// During a re-index: the model of the index being built and its pictures so far.
    pub building: Option<(String, u64)>,
    /// Encoded pictures waiting because the store cannot write them.
    pub unsaved: u64,
    /// Encoded pictures waiting for a compaction to finish.
    pub held: u64,
    /// Why the store cannot write, while that lasts.
    pub storage_error: Option<String>,
}

/// A store, or the mark that a compaction has it.
#[derive(Debug)]
enum Slot {
    Here(Store),
    Compacting,
}

/// A change not yet written.
#[derive(Debug)]
enum Change {
    Insert {
        key: u64,
        entry: Entry,
        vector: Vec<f32>,
    },
    Remove {
        key: u64,
        path: PathBuf,
    },
}

/// What became of an encoded picture handed to [`Catalog::insert`].
#[derive(Debug)]
pub enum Inserted {
    /// Written, then visible.
    Visible,
    /// Waiting, invisible, behind a compaction or pictures the store could not write yet.
    Waiting,
    /// Not taken: another picture has its id, or its vector does not fit the index.
    Refused(DeviceError),
    /// Too many pictures wait already: the reason to report it as failed.
    Dropped(String),
}

/// What applying one change gave.
enum Applied {
    /// Written and applied; whether an index changed.
    Done(bool),
    /// The store failed: the change, to wait for a later try.
    Io(DeviceError, Change),
    /// Refused for good (reported as the picture's failure).
    Refused(PathBuf, DeviceError),
}

/// The switch to the re-built index happened.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Switched {
    /// Model of the index that was serving.
    pub from: String,
    /// Model of the index now serving.
    pub to: String,
    /// Pictures in it.
    pub pictures: usize,
}

/// The device's indexes, their stores and the queue of changes not yet written.
#[derive(Debug)]
pub struct Catalog {
    shared: Arc<RwLock<Indexes>>,
    serving: Slot,
    building: Option<Slot>,
    layout: Layout,
    queue: VecDeque<Change>,
    storage_error: Option<String>,
}

impl Catalog {
    /// The catalog of the indexes [`reindex::open`] opened.
    pub fn new(
        serving: (Store, Index),
        building: Option<(Store, Index)>,
        layout: Layout,
    ) -> Catalog {
        let (serving_store, serving_index) = serving;
        let (building_store, building_index) = building.unzip();
        let reuse = Reuse::of(building_index.as_ref().unwrap_or(&serving_index));
        Catalog {
            shared: Arc::new(RwLock::new(Indexes {
                serving: serving_index,
                building: building_index,
                reuse,
            })),
            serving: Slot::Here(serving_store),
            building: building_store.map(Slot::Here),
            layout,
            queue: VecDeque::new(),
            storage_error: None,
        }
    }

    /// A handle for readers on other threads.
    pub fn reader(&self) -> CatalogReader {
        CatalogReader::new(self.shared.clone())
    }

    /// The models of the indexes.
    pub fn models(&self) -> Models {
        read(&self.shared).models()
    }

    /// True during a re-index.
    pub fn reindexing(&self) -> bool {
        self.building.is_some()
    }

    /// True while a compaction has a store.
    pub fn compacting(&self) -> bool {
        matches!(self.serving, Slot::Compacting) || matches!(self.building, Some(Slot::Compacting))
    }

    /// Why the store cannot write, while that lasts.
    pub fn storage_error(&self) -> Option<&str> {
        self.storage_error.as_deref()
    }

    /// What the catalog holds, for the status.
    pub fn inventory(&self) -> Inventory {
        let ix = read(&self.shared);
        let waiting = self
            .queue
            .iter()
            .filter(|c| matches!(c, Change::Insert { .. }))
            .count() as u64;
        let unsaved = if self.storage_error.is_some() {
            waiting
        } else {
            0
        };
        Inventory {
            model: ix.serving.model().to_string(),
            dim: ix.serving.dim(),
            indexed: ix.serving.len() as u64,
            building: ix
                .building
                .as_ref()
                .map(|b| (b.model().to_string(), b.len() as u64)),
            unsaved,
            held: waiting - unsaved,
            storage_error: self.storage_error.clone(),
        }
    }

    /// Writes an encoded picture (with its path's key), then makes it visible; or lets it
    /// wait behind changes not yet written.
    pub fn insert(&mut self, key: u64, entry: Entry, vector: Vec<f32>) -> Inserted {
        let change = Change::Insert { key, entry, vector };
        if !self.queue.is_empty() || self.compacting() {
            return self.enqueue(change);
        }
        match self.apply(change) {
            Applied::Done(_) => {
                self.storage_error = None;
                Inserted::Visible
            }
            Applied::Io(e, change) => {
                self.storage_failed(&e);
                self.enqueue(change)
            }
            Applied::Refused(_, e) => Inserted::Refused(e),
        }
    }

    /// The pictures with these keys are gone from disk: removes them from both indexes and
    /// from the queue. Returns whether anything changed. A key nothing holds is a file that
    /// was never indexed (unsupported, failed, or still being encoded).
    pub fn remove(&mut self, keys: &[u64]) -> bool {
        let mut changed = false;
        for &key in keys {
            let Some(path) = self.path_of_key(key) else {
                continue;
            };
            let before = self.queue.len();
            self.queue.retain(
                |c| !matches!(c, Change::Insert { key: k, entry, .. } if *k == key && entry.path == path),
            );
            changed |= self.queue.len() != before;
            let indexed = {
                let ix = read(&self.shared);
                ix.serving.entry_of(key, &path).is_some()
                    || ix
                        .building
                        .as_ref()
                        .is_some_and(|b| b.entry_of(key, &path).is_some())
            };
            if !indexed {
                continue;
            }
            let change = Change::Remove { key, path };
            if !self.queue.is_empty() || self.compacting() {
                self.queue.push_back(change);
                changed = true;
                continue;
            }
            match self.apply(change) {
                Applied::Done(r) => changed |= r,
                Applied::Io(e, change) => {
                    warn!(error = %e, "removal not written; the picture stays until writing works again");
                    self.storage_failed(&e);
                    self.queue.push_back(change);
                    changed = true;
                }
                Applied::Refused(..) => {}
            }
        }
        changed
    }

    /// Writes the waiting changes in order until the store fails again. Returns the pictures
    /// refused for good (to report as failed).
    pub fn write_waiting(&mut self) -> Vec<(PathBuf, DeviceError)> {
        let mut refused = Vec::new();
        if self.compacting() {
            return refused;
        }
        while let Some(change) = self.queue.pop_front() {
            match self.apply(change) {
                Applied::Done(_) => {}
                Applied::Io(e, change) => {
                    self.queue.push_front(change);
                    self.storage_failed(&e);
                    return refused;
                }
                Applied::Refused(path, e) => refused.push((path, e)),
            }
        }
        if self.storage_error.take().is_some() {
            info!("the index can be written again; every waiting picture is written");
        }
        refused
    }

    /// Moves the target's store into a compaction job if its journal has grown enough and
    /// nothing waits; the job runs elsewhere and its result comes back to
    /// [`Catalog::compacted`]. Changes wait until then.
    pub fn start_compaction(&mut self) -> Option<Compaction> {
        if self.compacting() || !self.queue.is_empty() {
            return None;
        }
        let which = read(&self.shared).target_which();
        let slot = self.slot_mut(which)?;
        if !matches!(slot, Slot::Here(store) if store.should_compact()) {
            return None;
        }
        let Slot::Here(store) = std::mem::replace(slot, Slot::Compacting) else {
            return None;
        };
        Some(Compaction {
            which,
            store,
            shared: self.shared.clone(),
        })
    }

    /// A compaction finished: its store is back, the index ranks from the new vector file,
    /// and the changes that waited are written. Returns the pictures refused for good.
    pub fn compacted(&mut self, done: Compacted) -> Vec<(PathBuf, DeviceError)> {
        let Compacted {
            which,
            store,
            written,
        } = done;
        if let Some(slot) = self.slot_mut(which) {
            *slot = Slot::Here(store);
        }
        match written {
            Ok(Some(table)) => {
                let adopted = write(&self.shared).get_mut(which).adopt_vectors(table);
                // The previous table (its mapping, its rows) is freed outside the lock.
                if let Err(e) = adopted {
                    warn!(error = %e, "compacted vectors not adopted; they stay as they were");
                }
            }
            Ok(None) => {}
            Err(e) => {
                warn!(error = %e, "compaction failed; the journal keeps growing until it succeeds")
            }
        }
        self.write_waiting()
    }

    /// Makes the re-built index the serving one, if nothing waits to be written and no
    /// compaction runs. `None`: not re-indexing, or not yet. The caller asks only when
    /// nothing is left to encode either.
    pub fn switch_if_complete(&mut self) -> Option<Result<Switched, DeviceError>> {
        if self.building.is_none() || self.compacting() || !self.queue.is_empty() {
            return None;
        }
        if let Err(e) = reindex::switch(&self.layout) {
            warn!(error = %e, "switching to the new index failed; searches keep the previous one, retrying");
            self.storage_error = Some(format!("switch to the re-built index: {e}"));
            return Some(Err(e));
        }
        let Some(Slot::Here(mut store)) = self.building.take() else {
            return None;
        };
        store.moved_to(&self.layout.current);
        self.serving = Slot::Here(store);
        let previous = {
            let mut ix = write(&self.shared);
            match ix.building.take() {
                Some(built) => Some(std::mem::replace(&mut ix.serving, built)),
                None => None,
            }
        };
        self.storage_error = None;
        let ix = read(&self.shared);
        Some(Ok(Switched {
            from: previous.map(|p| p.model().to_string()).unwrap_or_default(),
            to: ix.serving.model().to_string(),
            pictures: ix.serving.len(),
        }))
    }

    fn slot_mut(&mut self, which: Which) -> Option<&mut Slot> {
        match which {
            Which::Serving => Some(&mut self.serving),
            Which::Building => self.building.as_mut(),
        }
    }

    fn store(&mut self, which: Which) -> Option<&mut Store> {
        match self.slot_mut(which)? {
            Slot::Here(store) => Some(store),
            Slot::Compacting => None,
        }
    }

    fn storage_failed(&mut self, e: &DeviceError) {
        let error = e.to_string();
        if self.storage_error.as_deref() != Some(error.as_str()) {
            warn!(%error, "the index cannot be written; encoded pictures wait in memory and are written once it can");
        }
        self.storage_error = Some(error);
    }

    /// The path of the picture with key `key` in either index or among the waiting ones.
    fn path_of_key(&self, key: u64) -> Option<PathBuf> {
        let ix = read(&self.shared);
        let indexed = ix
            .target()
            .path_of_key(key)
            .or_else(|| ix.serving.path_of_key(key))
            .map(Path::to_path_buf);
        indexed.or_else(|| {
            self.queue.iter().find_map(|c| match c {
                Change::Insert { key: k, entry, .. } if *k == key => Some(entry.path.clone()),
                _ => None,
            })
        })
    }

    /// Queues a change behind the others; at most one waiting insert per path.
    fn enqueue(&mut self, change: Change) -> Inserted {
        if let Change::Insert { key, entry, .. } = &change {
            let (key, path) = (*key, entry.path.clone());
            self.queue.retain(
                |c| !matches!(c, Change::Insert { key: k, entry, .. } if *k == key && entry.path == path),
            );
            let inserts = self
                .queue
                .iter()
                .filter(|c| matches!(c, Change::Insert { .. }))
                .count();
            if inserts >= MAX_WAITING {
                let why = self
                    .storage_error
                    .clone()
                    .unwrap_or_else(|| "too many pictures wait for a compaction".into());
                return Inserted::Dropped(format!("not written to the index: {why}"));
            }
        }
        self.queue.push_back(change);
        Inserted::Waiting
    }

    /// Writes one change, then applies it in memory. The store must be here.
    fn apply(&mut self, change: Change) -> Applied {
        match change {
            Change::Insert { key, entry, vector } => self.apply_insert(key, entry, vector),
            Change::Remove { key, path } => self.apply_remove(key, path),
        }
    }

    fn apply_insert(&mut self, key: u64, entry: Entry, vector: Vec<f32>) -> Applied {
        let (target, stale) = {
            let ix = read(&self.shared);
            let which = ix.target_which();
            let index = ix.get(which);
            if vector.len() != index.dim() {
                let e = DeviceError::Mismatch(format!(
                    "vector of dimension {} for an index of {}",
                    vector.len(),
                    index.dim()
                ));
                return Applied::Refused(entry.path, e);
            }
            // Refused before it is written: a journal record the index cannot take would be
            // replayed at every start.
            if let Err(e) = index.admits_keyed(key, &entry.path) {
                return Applied::Refused(entry.path, e);
            }
            let stale = which == Which::Building
                && ix
                    .serving
                    .entry_of(key, &entry.path)
                    .is_some_and(|old| old.hash != entry.hash);
            (which, stale)
        };
        let Some(store) = self.store(target) else {
            return Applied::Io(busy(), Change::Insert { key, entry, vector });
        };
        if let Err(e) = store.upsert(&entry, &vector) {
            return Applied::Io(e, Change::Insert { key, entry, vector });
        }
        let path = stale.then(|| entry.path.clone());
        let put = write(&self.shared).put_target(key, entry, &vector);
        if let Err(e) = put {
            // Checked above; a store record the index cannot take is skipped on replay.
            warn!(error = %e, "a written picture was not taken by the index");
        }
        if let Some(path) = path {
            self.remove_stale(key, &path);
        }
        Applied::Done(true)
    }

    /// Removes the serving index's vector of a picture whose content changed during a
    /// re-index: it describes content that is gone.
    fn remove_stale(&mut self, key: u64, path: &Path) {
        let Some(store) = self.store(Which::Serving) else {
            return;
        };
        match store.remove(path) {
            Ok(()) => {
                write(&self.shared).take(Which::Serving, key, path);
            }
            Err(e) => {
                warn!(path = %path.display(), error = %e, "stale vector of the previous model not removed")
            }
        }
    }

    fn apply_remove(&mut self, key: u64, path: PathBuf) -> Applied {
        let (target, in_target, in_serving) = {
            let ix = read(&self.shared);
            let which = ix.target_which();
            (
                which,
                ix.get(which).entry_of(key, &path).is_some(),
                which == Which::Building && ix.serving.entry_of(key, &path).is_some(),
            )
        };
        let mut changed = false;
        for (which, indexed) in [(target, in_target), (Which::Serving, in_serving)] {
            if !indexed {
                continue;
            }
            let Some(store) = self.store(which) else {
                return Applied::Io(busy(), Change::Remove { key, path });
            };
            if let Err(e) = store.remove(&path) {
                return Applied::Io(e, Change::Remove { key, path });
            }
            changed |= write(&self.shared).take(which, key, &path);
        }
        Applied::Done(changed)
    }
}

/// The error of a change whose store a compaction has (never reached: changes wait while a
/// compaction runs).
fn busy() -> DeviceError {
    DeviceError::Io {
        path: PathBuf::new(),
        source: std::io::Error::new(std::io::ErrorKind::WouldBlock, "a compaction has the store"),
    }
}

/// A compaction: the target's store, moved out of the catalog, writes its snapshot and the
/// next vector file from the index under a read lock. Run it on a thread that may block.
#[derive(Debug)]
pub struct Compaction {
    which: Which,
    store: Store,
    shared: Arc<RwLock<Indexes>>,
}

impl Compaction {
    /// Writes the compacted store (blocking: seconds for a large index) and maps the new
    /// vector file. The read lock is released before it returns.
    pub fn run(mut self) -> Compacted {
        let written = {
            let ix = read(&self.shared);
            self.store.write_compacted(ix.get(self.which))
        };
        Compacted {
            which: self.which,
            store: self.store,
            written,
        }
    }
}

/// A finished compaction, for [`Catalog::compacted`].
#[derive(Debug)]
pub struct Compacted {
    which: Which,
    store: Store,
    /// The new vector file's table (`None`: written but not mappable), or why not written.
    written: Result<Option<VectorTable>, DeviceError>,
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::picture_key;
    use crate::index::precision::Precision;

    fn entry(path: &str, content: u8) -> Entry {
        Entry {
            path: PathBuf::from(path),
            size: 1,
            mtime_ns: 7,
            hash: [content; 32],
            width: 2,
            height: 1,
            taken_s: 0,
            source: Box::default(),
        }
    }

    fn insert(catalog: &mut Catalog, path: &str, content: u8, v: [f32; 2]) -> Inserted {
        catalog.insert(
            picture_key(Path::new(path)),
            entry(path, content),
            v.to_vec(),
        )
    }

    fn key(path: &str) -> u64 {
        picture_key(Path::new(path))
    }

    /// A catalog with `index/` of model `serving` (holding `old` pictures) and, when
    /// `building` is some, a re-index for that model.
    fn catalog(state: &Path, serving: &str, old: &[&str], building: Option<&str>) -> Catalog {
        let layout = Layout::new(state);
        {
            let (mut store, _, _) = Store::open(&layout.current, serving, 2).unwrap();
            for p in old {
                store.upsert(&entry(p, 1), &[1.0, 0.0]).unwrap();
            }
        }
        let model = building.unwrap_or(serving);
        let opened = reindex::open(&layout, model, 2, Precision::F32).unwrap();
        Catalog::new(opened.serving, opened.building, layout)
    }

    fn paths(index: &Index) -> Vec<String> {
        let mut p: Vec<String> = index
            .entries()
            .iter()
            .map(|e| e.path.display().to_string())
            .collect();
        p.sort();
        p
    }

    #[test]
    fn a_picture_is_written_before_it_is_visible_and_survives_a_restart() {
        let state = tempfile::tempdir().unwrap();
        let mut c = catalog(state.path(), "m", &[], None);
        let reader = c.reader();
        assert!(matches!(
            insert(&mut c, "/a", 1, [1.0, 0.0]),
            Inserted::Visible
        ));
        assert_eq!(paths(reader.read().serving()), ["/a"]);
        assert_eq!(c.inventory().indexed, 1);
        drop(c);
        let c = catalog(state.path(), "m", &[], None);
        assert_eq!(paths(c.reader().read().serving()), ["/a"]);
    }

    #[test]
    fn refused_pictures_are_never_written() {
        let state = tempfile::tempdir().unwrap();
        let mut c = catalog(state.path(), "m", &[], None);
        let wrong = c.insert(key("/a"), entry("/a", 1), vec![1.0, 0.0, 0.0]);
        assert!(
            matches!(wrong, Inserted::Refused(DeviceError::Mismatch(_))),
            "{wrong:?}"
        );
        drop(c);
        let c = catalog(state.path(), "m", &[], None);
        assert!(c.reader().read().serving().is_empty());
    }

    #[test]
    fn while_a_compaction_runs_changes_wait_in_order_and_are_invisible() {
        let state = tempfile::tempdir().unwrap();
        let mut c = catalog(state.path(), "m", &[], None);
        let reader = c.reader();
        // Enough pictures for the journal to pass the compaction threshold.
        let mut n = 0;
        let job = loop {
            let p = format!("/p/{n}-{}", "x".repeat(200));
            assert!(matches!(
                insert(&mut c, &p, 1, [1.0, 0.0]),
                Inserted::Visible
            ));
            n += 1;
            if let Some(job) = c.start_compaction() {
                break job;
            }
        };
        assert!(c.compacting() && c.start_compaction().is_none());
        assert!(matches!(
            insert(&mut c, "/new", 2, [0.0, 1.0]),
            Inserted::Waiting
        ));
        assert!(c.remove(&[key(&format!("/p/0-{}", "x".repeat(200)))]));
        assert_eq!((c.inventory().held, c.inventory().unsaved), (1, 0));
        assert_eq!(reader.read().serving().len(), n, "nothing applied yet");
        assert!(reader
            .read()
            .picture(&crate::index::picture_id(Path::new("/new")))
            .is_none());
        // The job runs on another thread while readers read.
        let done = std::thread::spawn(move || job.run()).join().unwrap();
        assert!(c.compacted(done).is_empty());
        assert!(!c.compacting());
        let ix = reader.read();
        assert_eq!(ix.serving().len(), n);
        assert!(ix.serving().get(Path::new("/new")).is_some());
        assert!(
            ix.serving().mapped_vector_bytes() > 0,
            "ranked from the new vector file"
        );
        drop(ix);
        assert_eq!(c.inventory().held, 0);
        drop(c);
        let c = catalog(state.path(), "m", &[], None);
        assert_eq!(c.reader().read().serving().len(), n);
    }

    #[test]
    fn pictures_the_store_cannot_write_wait_unsaved_in_order_and_are_written_later() {
        let state = tempfile::tempdir().unwrap();
        let mut c = catalog(state.path(), "m", &[], None);
        let reader = c.reader();
        assert!(matches!(
            insert(&mut c, "/a", 1, [1.0, 0.0]),
            Inserted::Visible
        ));
        c.store(Which::Serving).unwrap().break_journal_for_test();
        assert!(matches!(
            insert(&mut c, "/b", 2, [0.0, 1.0]),
            Inserted::Waiting
        ));
        assert!(matches!(
            insert(&mut c, "/c", 3, [0.6, 0.8]),
            Inserted::Waiting
        ));
        // A newer version of /b replaces the waiting one; a removal of /a waits behind them.
        assert!(matches!(
            insert(&mut c, "/b", 4, [0.8, 0.6]),
            Inserted::Waiting
        ));
        assert!(c.remove(&[key("/a")]));
        let inv = c.inventory();
        assert_eq!((inv.unsaved, inv.held), (2, 0));
        assert!(inv.storage_error.is_some());
        assert_eq!(paths(reader.read().serving()), ["/a"]);
        // Still failing: everything stays.
        assert!(c.write_waiting().is_empty());
        assert_eq!(c.inventory().unsaved, 2);
        c.store(Which::Serving).unwrap().repair_journal_for_test();
        assert!(c.write_waiting().is_empty());
        assert_eq!(
            c.inventory(),
            Inventory {
                model: "m".into(),
                dim: 2,
                indexed: 2,
                ..Inventory::default()
            }
        );
        assert_eq!(paths(reader.read().serving()), ["/b", "/c"]);
        assert_eq!(
            reader.read().reuse(&[4; 32]).unwrap().0.path,
            Path::new("/b")
        );
        drop(c);
        let c = catalog(state.path(), "m", &[], None);
        assert_eq!(paths(c.reader().read().serving()), ["/b", "/c"]);
    }

    #[test]
    fn a_waiting_picture_that_is_removed_is_never_written() {
        let state = tempfile::tempdir().unwrap();
        let mut c = catalog(state.path(), "m", &[], None);
        c.store(Which::Serving).unwrap().break_journal_for_test();
        assert!(matches!(
            insert(&mut c, "/a", 1, [1.0, 0.0]),
            Inserted::Waiting
        ));
        assert!(c.remove(&[key("/a")]));
        assert!(!c.remove(&[key("/never-seen")]));
        c.store(Which::Serving).unwrap().repair_journal_for_test();
        assert!(c.write_waiting().is_empty());
        assert_eq!(c.inventory().indexed, 0);
    }

    #[test]
    fn a_removed_picture_keeps_its_vector_for_a_rename() {
        let state = tempfile::tempdir().unwrap();
        let mut c = catalog(state.path(), "m", &[], None);
        insert(&mut c, "/a", 1, [1.0, 0.0]);
        insert(&mut c, "/copy", 1, [1.0, 0.0]);
        let reader = c.reader();
        assert!(reader.read().reuse(&[1; 32]).is_some());
        assert!(c.remove(&[key("/a"), key("/copy")]));
        let (was, vector) = reader.read().reuse(&[1; 32]).unwrap();
        assert_eq!(vector, vec![1.0, 0.0]);
        assert!(was.path == Path::new("/a") || was.path == Path::new("/copy"));
        assert!(reader.read().reuse(&[2; 32]).is_none());
    }

    #[test]
    fn during_a_reindex_vectors_go_to_the_new_index_removals_to_both_and_it_switches_when_done() {
        let state = tempfile::tempdir().unwrap();
        let mut c = catalog(state.path(), "old", &["/a", "/b", "/c"], Some("new"));
        let reader = c.reader();
        assert!(c.reindexing());
        assert_eq!(
            c.models(),
            Models {
                serving: "old".into(),
                building: Some("new".into())
            }
        );
        // Known: the new index's pictures, and the old-only ones with an impossible time.
        let known = reader.read().known();
        assert_eq!(known.len(), 3);
        assert!(known.iter().all(|k| k.mtime_ns == i64::MIN));
        // A new vector goes to the new index; the old one's vector of unchanged content stays.
        insert(&mut c, "/a", 1, [0.0, 1.0]);
        // Changed content: the old index's vector describes what is gone.
        insert(&mut c, "/b", 9, [0.0, 1.0]);
        {
            let ix = reader.read();
            assert_eq!(paths(ix.serving()), ["/a", "/c"]);
            assert_eq!(paths(ix.building().unwrap()), ["/a", "/b"]);
            // A vector is ranked by the index of its model.
            assert_eq!(ix.for_model("old").0.model(), "old");
            let (index, partial) = ix.for_model("new");
            assert_eq!((index.model(), partial), ("new", true));
            assert_eq!(ix.for_model("third").0.model(), "old");
            assert_eq!(
                ix.known().iter().filter(|k| k.mtime_ns == i64::MIN).count(),
                1
            );
        }
        // Removals go to both.
        assert!(c.remove(&[key("/a"), key("/c")]));
        {
            let ix = reader.read();
            assert!(ix.serving().is_empty());
            assert_eq!(paths(ix.building().unwrap()), ["/b"]);
        }
        // Nothing may wait for the switch.
        c.store(Which::Building).unwrap().break_journal_for_test();
        insert(&mut c, "/d", 4, [0.6, 0.8]);
        assert!(c.switch_if_complete().is_none());
        c.store(Which::Building).unwrap().repair_journal_for_test();
        c.write_waiting();
        let switched = c.switch_if_complete().unwrap().unwrap();
        assert_eq!(
            switched,
            Switched {
                from: "old".into(),
                to: "new".into(),
                pictures: 2
            }
        );
        assert!(!c.reindexing() && c.switch_if_complete().is_none());
        assert_eq!(paths(reader.read().serving()), ["/b", "/d"]);
        // The store followed the rename: later writes land in index/.
        insert(&mut c, "/e", 5, [1.0, 0.0]);
        drop(c);
        let c = catalog(state.path(), "new", &[], None);
        assert_eq!(paths(c.reader().read().serving()), ["/b", "/d", "/e"]);
    }
}
