//! File-system watching: any change under a picture folder asks for a rescan.
//!
//! Events are only a trigger; the scan decides what changed (by size and modification
//! time), so lost, merged or reordered events cannot corrupt the index.

use std::path::PathBuf;

use notify::{RecursiveMode, Watcher};

use crate::error::DeviceError;

/// Keeps the watches alive; dropping it stops watching.
pub struct FolderWatcher {
    _watcher: notify::RecommendedWatcher,
}

impl std::fmt::Debug for FolderWatcher {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str("FolderWatcher")
    }
}

impl FolderWatcher {
    /// Watches `folders` recursively; `changed` runs on the watcher's thread for every event
    /// that may add, change or remove a file (it must not block).
    pub fn start(
        folders: &[PathBuf],
        changed: impl Fn() + Send + 'static,
    ) -> Result<Self, DeviceError> {
        let mut watcher =
            notify::recommended_watcher(move |event: notify::Result<notify::Event>| {
                if let Ok(event) = event {
                    if !matches!(event.kind, notify::EventKind::Access(_)) {
                        changed();
                    }
                }
            })
            .map_err(|e| DeviceError::Config(format!("cannot watch folders: {e}")))?;
        for folder in folders {
            watcher
                .watch(folder, RecursiveMode::Recursive)
                .map_err(|e| {
                    DeviceError::Config(format!("cannot watch {}: {e}", folder.display()))
                })?;
        }
        Ok(Self { _watcher: watcher })
    }
}
