//! Re-indexing for a new model while the old index keeps answering.
//!
//! ```text
//! <state>/index        the index searches are answered from (complete)
//! <state>/index.next   the index of the device's model, while it is being built
//! <state>/index.old    the previous index, for a moment during the switch
//! ```
//! When the device starts with a model other than the one `index/` was built with, `index/`
//! stays open for searching (its vectors answer text vectors of *its* model, and "more like
//! this") and the pictures are encoded into `index.next/`. Once every picture found is in
//! `index.next/`, [`switch`] renames `index/` to `index.old/`, `index.next/` to `index/`
//! (syncing the folder after each rename) and removes `index.old/`.
//!
//! Every crash leaves a state [`open`] recovers from:
//! - before the switch: `index/` is the old model's, `index.next/` the partial new one, which
//!   is resumed (pictures in it are not encoded again);
//! - between the two renames (`index/` missing, `index.old/` present): the first rename is
//!   undone, and the re-index resumes with a complete `index.next/`, which switches as soon
//!   as the first scan finds nothing left to encode;
//! - after the second rename: `index.old/` is removed.

use std::path::{Path, PathBuf};

use super::precision::Precision;
use super::store::{OpenReport, Store};
use super::table::Index;
use crate::error::DeviceError;

/// Where the indexes live under the state folder.
#[derive(Debug, Clone)]
pub struct Layout {
    /// The folder holding the three below.
    pub parent: PathBuf,
    /// The index searches are answered from.
    pub current: PathBuf,
    /// The index being built for a new model.
    pub next: PathBuf,
    /// The previous index during a switch.
    pub old: PathBuf,
}

impl Layout {
    /// The layout under `state_dir`.
    pub fn new(state_dir: &Path) -> Self {
        Layout {
            parent: state_dir.to_path_buf(),
            current: state_dir.join("index"),
            next: state_dir.join("index.next"),
            old: state_dir.join("index.old"),
        }
    }
}

/// What [`open`] found and opened.
#[derive(Debug)]
pub struct Opened {
    /// The index searches are answered from, and its store.
    pub serving: (Store, Index),
    /// The index being built for the device's model, when `serving` holds another model.
    pub building: Option<(Store, Index)>,
    /// What opening the serving store found.
    pub report: OpenReport,
    /// What recovery did (an interrupted switch, a stale folder removed), one line each.
    pub recovered: Vec<String>,
}

/// Opens the index of `model` (dimension `dim`), finishing or undoing an interrupted switch
/// first. If `index/` holds pictures of another model, it is opened for searching with its
/// own model and dimension, and the index of `model` is opened (or resumed) in `index.next/`.
pub fn open(
    layout: &Layout,
    model: &str,
    dim: usize,
    precision: Precision,
) -> Result<Opened, DeviceError> {
    std::fs::create_dir_all(&layout.parent).map_err(|e| DeviceError::io(&layout.parent, e))?;
    let mut recovered = Vec::new();
    if layout.old.exists() {
        if layout.current.exists() {
            remove_dir(&layout.old)?;
            recovered.push(
                "removed the index of the previous model left by a finished switch".to_string(),
            );
        } else {
            rename_synced(&layout.old, &layout.current, &layout.parent)?;
            recovered.push("undid an interrupted switch; the re-index resumes".to_string());
        }
    }
    let stored = Store::stored_model(&layout.current);
    let other = match stored {
        Ok(Some((m, d))) if m != model || d != dim => Some((m, d)),
        // Same model, no index yet, or an unreadable one (the store sets it aside).
        _ => None,
    };
    if let Some((old_model, old_dim)) = other {
        let (store, index, report) =
            Store::open_with(&layout.current, &old_model, old_dim, precision)?;
        if index.is_empty() {
            // Nothing to answer from: no reason to keep it while re-indexing.
            drop(store);
            remove_dir(&layout.current)?;
            recovered.push(format!("removed the empty index of model {old_model}"));
        } else {
            match Store::stored_model(&layout.next) {
                Ok(Some((m, d))) if m == model && d == dim => {
                    recovered.push(format!("resuming the re-index for model {model}"))
                }
                Ok(None) if !layout.next.exists() => {}
                _ => {
                    remove_dir(&layout.next)?;
                    recovered.push("removed a partial index of yet another model".to_string());
                }
            }
            let (next_store, next_index, _) =
                Store::open_with(&layout.next, model, dim, precision)?;
            return Ok(Opened {
                serving: (store, index),
                building: Some((next_store, next_index)),
                report,
                recovered,
            });
        }
    }
    if layout.next.exists() {
        // A re-index that is no longer needed (the model was changed back).
        remove_dir(&layout.next)?;
        recovered.push("removed a partial index no longer needed".to_string());
    }
    let (store, index, report) = Store::open_with(&layout.current, model, dim, precision)?;
    Ok(Opened {
        serving: (store, index),
        building: None,
        report,
        recovered,
    })
}

/// Makes the complete `index.next/` the index searches are answered from and removes the
/// previous one. The stores may stay open (their files follow the renames). A failure of the
/// second rename undoes the first, so the re-index can be switched again later.
pub fn switch(layout: &Layout) -> Result<(), DeviceError> {
    if !layout.next.exists() {
        return Err(DeviceError::io(
            &layout.next,
            std::io::Error::new(std::io::ErrorKind::NotFound, "no index being built"),
        ));
    }
    if layout.current.exists() {
        rename_synced(&layout.current, &layout.old, &layout.parent)?;
    }
    if let Err(e) = rename_synced(&layout.next, &layout.current, &layout.parent) {
        if layout.old.exists() {
            let _ = rename_synced(&layout.old, &layout.current, &layout.parent);
        }
        return Err(e);
    }
    // A failure here leaves `index.old/` for the next start to remove.
    if layout.old.exists() {
        remove_dir(&layout.old)?;
    }
    Ok(())
}

fn rename_synced(from: &Path, to: &Path, parent: &Path) -> Result<(), DeviceError> {
    std::fs::rename(from, to).map_err(|e| DeviceError::io(from, e))?;
    std::fs::File::open(parent)
        .and_then(|d| d.sync_all())
        .map_err(|e| DeviceError::io(parent, e))
}

fn remove_dir(dir: &Path) -> Result<(), DeviceError> {
    match std::fs::remove_dir_all(dir) {
        Err(e) if e.kind() != std::io::ErrorKind::NotFound => Err(DeviceError::io(dir, e)),
        _ => Ok(()),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::index::Entry;

    fn entry(name: &str) -> Entry {
        Entry {
            path: PathBuf::from(name),
            size: 1,
            mtime_ns: 0,
            hash: [1; 32],
            width: 1,
            height: 1,
            taken_s: 0,
            source: Box::default(),
        }
    }

    /// A state folder whose `index/` holds `names` for model `model`.
    fn index_of(state: &Path, model: &str, names: &[&str]) {
        let (mut store, _, _) = Store::open(&state.join("index"), model, 2).unwrap();
        for n in names {
            store.upsert(&entry(n), &[1.0, 0.0]).unwrap();
        }
    }

    #[test]
    fn an_index_of_another_model_keeps_serving_while_the_new_one_is_built_and_resumed() {
        let state = tempfile::tempdir().unwrap();
        let layout = Layout::new(state.path());
        index_of(state.path(), "old", &["a", "b"]);
        let opened = open(&layout, "new", 2, Precision::F32).unwrap();
        assert_eq!(
            (opened.serving.1.model(), opened.serving.1.len()),
            ("old", 2)
        );
        let (mut store, index) = opened.building.unwrap();
        assert_eq!((index.model(), index.len()), ("new", 0));
        store.upsert(&entry("a"), &[0.0, 1.0]).unwrap();
        drop((store, opened.serving));
        // A restart resumes: the old index still serves, the new one keeps what it had.
        let opened = open(&layout, "new", 2, Precision::F32).unwrap();
        assert_eq!(opened.serving.1.model(), "old");
        assert_eq!(opened.building.as_ref().unwrap().1.len(), 1);
        assert!(
            opened.recovered.iter().any(|r| r.contains("resuming")),
            "{:?}",
            opened.recovered
        );
        drop(opened);
        switch(&layout).unwrap();
        assert!(!layout.next.exists() && !layout.old.exists());
        let opened = open(&layout, "new", 2, Precision::F32).unwrap();
        assert!(opened.building.is_none());
        assert_eq!(
            (opened.serving.1.model(), opened.serving.1.len()),
            ("new", 1)
        );
    }

    #[test]
    fn a_switch_interrupted_between_its_renames_is_undone_and_one_after_them_finished() {
        let state = tempfile::tempdir().unwrap();
        let layout = Layout::new(state.path());
        index_of(state.path(), "old", &["a"]);
        drop(open(&layout, "new", 2, Precision::F32).unwrap());
        // Power cut after the first rename.
        std::fs::rename(&layout.current, &layout.old).unwrap();
        let opened = open(&layout, "new", 2, Precision::F32).unwrap();
        assert_eq!(opened.serving.1.model(), "old");
        assert!(opened.building.is_some() && !layout.old.exists());
        drop(opened);
        // Power cut after the second rename, before the removal.
        std::fs::rename(&layout.current, &layout.old).unwrap();
        std::fs::rename(&layout.next, &layout.current).unwrap();
        let opened = open(&layout, "new", 2, Precision::F32).unwrap();
        assert!(opened.building.is_none() && !layout.old.exists());
        assert_eq!(opened.serving.1.model(), "new");
    }

    #[test]
    fn stale_or_useless_indexes_are_removed() {
        let state = tempfile::tempdir().unwrap();
        let layout = Layout::new(state.path());
        index_of(state.path(), "old", &["a"]);
        // A partial index of a third model is dropped; the new one starts empty.
        drop(Store::open(&layout.next, "third", 2).unwrap());
        let opened = open(&layout, "new", 2, Precision::F32).unwrap();
        assert_eq!(opened.building.as_ref().unwrap().1.model(), "new");
        drop(opened);
        // Back to the old model: the partial new index is no longer needed.
        let opened = open(&layout, "old", 2, Precision::F32).unwrap();
        assert!(opened.building.is_none() && !layout.next.exists());
        assert_eq!(opened.serving.1.len(), 1);
        drop(opened);
        // An empty index of another model is not kept for searching.
        let empty = tempfile::tempdir().unwrap();
        let layout = Layout::new(empty.path());
        index_of(empty.path(), "old", &[]);
        let opened = open(&layout, "new", 2, Precision::F32).unwrap();
        assert!(opened.building.is_none());
        assert_eq!(opened.serving.1.model(), "new");
        drop(opened);
        // A different dimension counts as another model: an empty index of dimension 2 is
        // removed, and the new one has dimension 3...
        let opened = open(&layout, "new", 3, Precision::F32).unwrap();
        assert!(opened.building.is_none());
        assert_eq!(
            (opened.serving.1.model(), opened.serving.1.dim()),
            ("new", 3)
        );
        assert!(
            opened.recovered.iter().any(|r| r.contains("empty index")),
            "{:?}",
            opened.recovered
        );
        drop(opened);
        // ... and one with pictures keeps answering while the index of dimension 3 is built.
        let kept = tempfile::tempdir().unwrap();
        let layout = Layout::new(kept.path());
        index_of(kept.path(), "new", &["a"]);
        let opened = open(&layout, "new", 3, Precision::F32).unwrap();
        let serving = &opened.serving.1;
        assert_eq!(
            (serving.model(), serving.dim(), serving.len()),
            ("new", 2, 1)
        );
        let building = &opened.building.as_ref().expect("a re-index").1;
        assert_eq!(
            (building.model(), building.dim(), building.len()),
            ("new", 3, 0)
        );
    }
}
