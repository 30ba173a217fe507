//! [`Indexes`]: the serving index and the one being built, in memory, as every reader sees
//! them (behind the catalog's lock), with the lookups readers need: which index ranks a
//! vector of a given model, a picture by id, what is indexed, a vector to reuse.

use std::path::Path;
use std::sync::{PoisonError, RwLock, RwLockReadGuard, RwLockWriteGuard};

use super::reuse::Reuse;
use super::table::{Entry, Index, Known};
use crate::error::DeviceError;

/// The models of the indexes: which model's text vector a search asks the cloud for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Models {
    /// Model of the complete index searches are answered from.
    pub serving: String,
    /// Model of the index being built, during a re-index.
    pub building: Option<String>,
}

/// One of the two indexes.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Which {
    /// The index searches are answered from.
    Serving,
    /// The index being built during a re-index.
    Building,
}

/// The indexes in memory, as the readers see them.
#[derive(Debug)]
pub struct Indexes {
    pub(super) serving: Index,
    pub(super) building: Option<Index>,
    /// Content lookups of the target index, and recently removed pictures.
    pub(super) reuse: Reuse,
}

impl Indexes {
    /// The complete index searches are answered from.
    pub fn serving(&self) -> &Index {
        &self.serving
    }

    /// The index being built, during a re-index.
    pub fn building(&self) -> Option<&Index> {
        self.building.as_ref()
    }

    /// The index new vectors go to.
    pub fn target(&self) -> &Index {
        self.building.as_ref().unwrap_or(&self.serving)
    }

    pub(super) fn target_which(&self) -> Which {
        match self.building {
            Some(_) => Which::Building,
            None => Which::Serving,
        }
    }

    pub(super) fn get(&self, which: Which) -> &Index {
        match which {
            Which::Serving => &self.serving,
            Which::Building => self.target(),
        }
    }

    pub(super) fn get_mut(&mut self, which: Which) -> &mut Index {
        match (which, &mut self.building) {
            (Which::Building, Some(b)) => b,
            _ => &mut self.serving,
        }
    }

    /// The models of the indexes.
    pub fn models(&self) -> Models {
        Models {
            serving: self.serving.model().to_string(),
            building: self.building.as_ref().map(|b| b.model().to_string()),
        }
    }

    /// The index a query vector of `model` is ranked by, and whether that index is still
    /// being built: the index being built if the vector is of its model (and not of the
    /// serving one's), else the serving index (which refuses a vector of another model).
    pub fn for_model(&self, model: &str) -> (&Index, bool) {
        match &self.building {
            Some(b) if self.serving.model() != model && b.model() == model => (b, true),
            _ => (&self.serving, false),
        }
    }

    /// The picture with this id, in either index.
    pub fn picture(&self, id: &str) -> Option<&Entry> {
        self.serving
            .by_id(id)
            .or_else(|| self.building.as_ref().and_then(|b| b.by_id(id)))
    }

    /// What is indexed, as the capture compares it with the disk: the target's pictures and,
    /// during a re-index, those only the serving index holds, with an impossible modification
    /// time (their vector for the new model is still to be made: the scan queues them if they
    /// exist, and reports them gone if not, which removes them from the serving index too).
    pub fn known(&self) -> Vec<Known> {
        let mut known: Vec<Known> = self.target().stamps().collect();
        if let Some(building) = &self.building {
            known.extend(
                self.serving
                    .stamps()
                    .filter(|k| building.path_of_key(k.key).is_none())
                    .map(|k| Known {
                        mtime_ns: i64::MIN,
                        ..k
                    }),
            );
        }
        known
    }

    /// A vector already computed for content `hash` (a copy in the target index, or a
    /// picture removed recently), with the picture it was computed for.
    pub fn reuse(&self, hash: &[u8; 32]) -> Option<(Entry, Vec<f32>)> {
        self.reuse.find(self.target(), hash)
    }

    /// The vector of the newest picture of source `source` in the target index (by capture
    /// time, then path): a camera's last kept frame.
    pub fn last_of_source(&self, source: &str) -> Option<Vec<f32>> {
        self.target()
            .iter()
            .filter(|(e, _)| *e.source == *source)
            .max_by(|(a, _), (b, _)| (a.taken_s, &a.path).cmp(&(b.taken_s, &b.path)))
            .map(|(_, v)| v.into_owned())
    }

    /// Adds or replaces a picture of the target index, keeping the content lookups right.
    pub(super) fn put_target(
        &mut self,
        key: u64,
        entry: Entry,
        vector: &[f32],
    ) -> Result<(), DeviceError> {
        let which = self.target_which();
        let hash = entry.hash;
        let old_hash = self
            .get(which)
            .entry_of(key, &entry.path)
            .map(|old| old.hash);
        self.get_mut(which).upsert_keyed(key, entry, vector)?;
        if let Some(old) = old_hash.filter(|old| *old != hash) {
            self.reuse.forget(key, &old);
        }
        self.reuse.added(key, &hash);
        Ok(())
    }

    /// Removes a picture from `which`; a picture of the target index stays reusable.
    pub(super) fn take(&mut self, which: Which, key: u64, path: &Path) -> bool {
        let kept = (which == self.target_which())
            .then(|| {
                let index = self.get(which);
                index
                    .entry_of(key, path)
                    .cloned()
                    .zip(index.vector_of_key(key).map(|v| v.into_owned()))
            })
            .flatten();
        let removed = self.get_mut(which).remove_keyed(key, path);
        if let Some((entry, vector)) = kept {
            self.reuse.removed(key, entry, vector);
        }
        removed
    }
}

/// Read access to shared indexes, recovering from a poisoned lock: only the writer can poison
/// it, and its changes are single calls on the index that leave it whole.
pub(super) fn read(shared: &RwLock<Indexes>) -> RwLockReadGuard<'_, Indexes> {
    shared.read().unwrap_or_else(PoisonError::into_inner)
}

pub(super) fn write(shared: &RwLock<Indexes>) -> RwLockWriteGuard<'_, Indexes> {
    shared.write().unwrap_or_else(PoisonError::into_inner)
}
