//! [`CaptureActor`]: walks the configured folders and queues new or changed pictures.
//!
//! A picture is (re)queued when its size or modification time differs from what was queued
//! before; pictures that disappeared leave the index. Walking runs on a blocking thread.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{info, warn};

use super::image_encoder::ImageEncoderMsg;
use super::index::IndexMsg;
use crate::scan::{scan_folders, FileSeen};

/// Messages of the capture actor.
pub enum CaptureMsg {
    /// Walk the folders now.
    Scan,
}

/// Arguments of the capture actor.
pub struct CaptureArgs {
    /// Folders to walk.
    pub folders: Vec<PathBuf>,
    /// Picture extensions, lower case.
    pub extensions: Vec<String>,
    /// Time between scans; `None` scans once.
    pub rescan: Option<Duration>,
    /// Where pictures to encode go.
    pub encoder: ActorRef<ImageEncoderMsg>,
    /// The index (told about queued and vanished pictures).
    pub index: ActorRef<IndexMsg>,
}

/// State of the capture actor.
pub struct CaptureState {
    args: CaptureArgs,
    /// What was queued for each path, so an unchanged picture is never queued twice.
    queued: HashMap<PathBuf, FileSeen>,
    /// Whether `queued` was filled from the index yet.
    seeded: bool,
}

/// The capture actor.
pub struct CaptureActor;

impl Actor for CaptureActor {
    type Msg = CaptureMsg;
    type State = CaptureState;
    type Arguments = CaptureArgs;

    async fn pre_start(&self, _myself: ActorRef<CaptureMsg>, args: CaptureArgs) -> Result<CaptureState, ActorProcessingErr> {
        Ok(CaptureState { args, queued: HashMap::new(), seeded: false })
    }

    async fn handle(&self, myself: ActorRef<CaptureMsg>, msg: CaptureMsg, state: &mut CaptureState) -> Result<(), ActorProcessingErr> {
        match msg {
            CaptureMsg::Scan => {
                if !state.seeded {
                    // What the persistent index already holds counts as queued: an unchanged
                    // picture is never encoded again after a restart.
                    let known = ractor::call_t!(state.args.index, IndexMsg::Known, 60_000)?;
                    state.queued.extend(known.into_iter().map(|f| (f.path.clone(), f)));
                    state.seeded = true;
                }
                let folders = state.args.folders.clone();
                let extensions = state.args.extensions.clone();
                let scan = tokio::task::spawn_blocking(move || scan_folders(&folders, &extensions)).await?;
                for problem in &scan.problems {
                    warn!(%problem, "while scanning");
                }
                let mut fresh = Vec::new();
                for seen in &scan.files {
                    if state.queued.get(&seen.path) != Some(seen) {
                        fresh.push(seen.clone());
                    }
                }
                let present: std::collections::HashSet<&PathBuf> = scan.files.iter().map(|f| &f.path).collect();
                let gone: Vec<PathBuf> = state.queued.keys().filter(|p| !present.contains(p)).cloned().collect();
                for p in &gone {
                    state.queued.remove(p);
                }
                if !gone.is_empty() {
                    let _ = state.args.index.cast(IndexMsg::Remove(gone.clone()));
                }
                let _ = state.args.index.cast(IndexMsg::Scanned(fresh.len() as u64));
                info!(found = scan.files.len(), queued = fresh.len(), removed = gone.len(), "scanned folders");
                for seen in fresh {
                    state.queued.insert(seen.path.clone(), seen.clone());
                    if state.args.encoder.cast(ImageEncoderMsg::Encode(seen)).is_err() {
                        break;
                    }
                }
                if let Some(every) = state.args.rescan {
                    myself.send_after(every, || CaptureMsg::Scan);
                }
            }
        }
        Ok(())
    }
}
