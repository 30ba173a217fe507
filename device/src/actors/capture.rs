//! [`CaptureActor`]: finds new, changed and vanished pictures in the configured folders.
//!
//! A scan (at start, on a timer, after file-system events, or on request) compares the disk
//! with what was queued before: a picture is queued when its size or modification time
//! differs, and leaves the index when its file is gone. Files modified within the last
//! `settle` are left for a later scan, so pictures still being written (a camera, a copy in
//! progress) are read once complete. Walking runs on a blocking thread.

use std::collections::{HashMap, HashSet};
use std::path::PathBuf;
use std::time::{Duration, SystemTime, UNIX_EPOCH};

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{info, warn};

use super::image_encoder::ImageEncoderMsg;
use super::index::IndexMsg;
use crate::index::CatalogReader;
use crate::scan::{scan_folders, FileSeen};
use crate::watch::FolderWatcher;

/// Messages of the capture actor.
pub enum CaptureMsg {
    /// Walk the folders now.
    Scan,
    /// Something changed on disk: scan after the debounce delay.
    Changed,
    /// Encode every picture found again, even unchanged ones (a dashboard's "re-index").
    Reindex,
}

/// Arguments of the capture actor.
pub struct CaptureArgs {
    /// Folders to walk.
    pub folders: Vec<PathBuf>,
    /// Picture extensions, lower case.
    pub extensions: Vec<String>,
    /// Time between periodic scans; `None`: no periodic scans.
    pub rescan: Option<Duration>,
    /// Watch the folders for changes.
    pub watch: bool,
    /// Delay between a file-system event and the scan it triggers (events come in bursts).
    pub debounce: Duration,
    /// Files modified more recently than this are not read yet.
    pub settle: Duration,
    /// Where pictures to encode go.
    pub encoder: ActorRef<ImageEncoderMsg>,
    /// The index (told about queued and vanished pictures).
    pub index: ActorRef<IndexMsg>,
    /// What is indexed already, read once at the first scan.
    pub catalog: CatalogReader,
}

/// Size and modification time: what tells a changed file (the map's key is the path's
/// [`crate::index::picture_key`]).
type Stamp = (u64, i64);

fn stamp(f: &FileSeen) -> Stamp {
    (f.size, f.mtime_ns)
}

/// State of the capture actor.
pub struct CaptureState {
    args: CaptureArgs,
    /// What was queued (or found unsupported) for each path, by its key, so an unchanged
    /// picture is never queued twice. Keys, not paths: the index holds every path already,
    /// and a key takes 8 bytes where a path takes ~100 (~10 MiB less at 100,000 pictures).
    queued: HashMap<u64, Stamp>,
    /// Whether `queued` was filled from the index yet.
    seeded: bool,
    /// Whether a scan is already scheduled by an event or a settling file.
    scan_scheduled: bool,
    _watcher: Option<FolderWatcher>,
}

/// The capture actor.
pub struct CaptureActor;

impl Actor for CaptureActor {
    type Msg = CaptureMsg;
    type State = CaptureState;
    type Arguments = CaptureArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<CaptureMsg>,
        args: CaptureArgs,
    ) -> Result<CaptureState, ActorProcessingErr> {
        let watcher = if args.watch {
            let me = myself.clone();
            let existing: Vec<PathBuf> = args
                .folders
                .iter()
                .filter(|f| f.is_dir())
                .cloned()
                .collect();
            match FolderWatcher::start(&existing, move || {
                let _ = me.cast(CaptureMsg::Changed);
            }) {
                Ok(w) => Some(w),
                Err(e) => {
                    warn!(error = %e, "file-system watching unavailable; relying on periodic scans");
                    None
                }
            }
        } else {
            None
        };
        if let Some(every) = args.rescan {
            myself.send_interval(every, || CaptureMsg::Scan);
        }
        Ok(CaptureState {
            args,
            queued: HashMap::new(),
            seeded: false,
            scan_scheduled: false,
            _watcher: watcher,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<CaptureMsg>,
        msg: CaptureMsg,
        state: &mut CaptureState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CaptureMsg::Changed => {
                if !state.scan_scheduled {
                    state.scan_scheduled = true;
                    myself.send_after(state.args.debounce, || CaptureMsg::Scan);
                }
            }
            CaptureMsg::Scan => {
                state.scan_scheduled = false;
                scan(&myself, state, false).await?;
            }
            CaptureMsg::Reindex => {
                info!("re-indexing every picture");
                scan(&myself, state, true).await?;
            }
        }
        Ok(())
    }
}

/// Compares the disk with what was queued and queues the differences; with `reencode`, every
/// picture found is queued and encoded again (no vector reused).
async fn scan(
    myself: &ActorRef<CaptureMsg>,
    state: &mut CaptureState,
    reencode: bool,
) -> Result<(), ActorProcessingErr> {
    if !state.seeded {
        // What the persistent index already holds counts as queued: an unchanged picture is
        // never encoded again after a restart.
        let catalog = state.args.catalog.clone();
        let known = tokio::task::spawn_blocking(move || catalog.known()).await?;
        state
            .queued
            .extend(known.into_iter().map(|k| (k.key, (k.size, k.mtime_ns))));
        state.seeded = true;
    }
    let folders = state.args.folders.clone();
    let extensions = state.args.extensions.clone();
    let found = tokio::task::spawn_blocking(move || scan_folders(&folders, &extensions)).await?;
    for problem in &found.problems {
        warn!(%problem, "while scanning");
    }
    let settle_before = SystemTime::now()
        .checked_sub(state.args.settle)
        .and_then(|t| t.duration_since(UNIX_EPOCH).ok())
        .map(|d| i64::try_from(d.as_nanos()).unwrap_or(i64::MAX))
        .unwrap_or(i64::MAX);
    let mut fresh = Vec::new();
    let mut settling = 0;
    let mut present = HashSet::with_capacity(found.files.len() + found.unsupported.len());
    for seen in &found.files {
        let key = seen.key;
        present.insert(key);
        if !reencode && state.queued.get(&key) == Some(&stamp(seen)) {
            continue;
        }
        if seen.mtime_ns > settle_before {
            settling += 1;
            continue;
        }
        fresh.push((key, seen.clone()));
    }
    let mut unsupported = Vec::new();
    for seen in &found.unsupported {
        let key = seen.key;
        present.insert(key);
        if state.queued.get(&key) != Some(&stamp(seen)) {
            state.queued.insert(key, stamp(seen));
            unsupported.push(seen.path.clone());
        }
    }
    let gone: Vec<u64> = state
        .queued
        .keys()
        .filter(|k| !present.contains(k))
        .copied()
        .collect();
    for k in &gone {
        state.queued.remove(k);
    }
    drop(present);
    // Removals first: a renamed picture's vector is then found by its content hash and reused.
    if !gone.is_empty() {
        let _ = state.args.index.cast(IndexMsg::Remove(gone.clone()));
    }
    if !unsupported.is_empty() {
        let _ = state
            .args
            .index
            .cast(IndexMsg::Unsupported(unsupported.clone()));
    }
    let _ = state.args.index.cast(IndexMsg::Scanned {
        queued: fresh.len() as u64,
        settling,
    });
    info!(
        found = found.files.len(),
        queued = fresh.len(),
        removed = gone.len(),
        settling,
        unsupported = unsupported.len(),
        "scanned folders"
    );
    for (key, seen) in fresh {
        state.queued.insert(key, stamp(&seen));
        let msg = if reencode {
            ImageEncoderMsg::Reencode(seen)
        } else {
            ImageEncoderMsg::Encode(seen)
        };
        if state.args.encoder.cast(msg).is_err() {
            break;
        }
    }
    if settling > 0 && !state.scan_scheduled {
        state.scan_scheduled = true;
        myself.send_after(state.args.settle, || CaptureMsg::Scan);
    }
    // The scan's lists (and, the first time, the index's listing) are freed now: give their
    // pages back rather than keeping them resident.
    drop(found);
    crate::heap::trim();
    Ok(())
}
