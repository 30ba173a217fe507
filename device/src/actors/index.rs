//! [`IndexActor`]: the one writer of the catalog ([`Catalog`]). Turns pictures, removals and
//! scan results into catalog and [`Progress`] calls, and publishes the retained status
//! (throttled). Readers never ask it anything: they read the catalog through a
//! [`CatalogReader`](crate::index::CatalogReader).
//!
//! Writing a journal record (an fsync) runs through [`blocking`], off the async threads; a
//! compaction runs on a blocking thread with its store, and its end comes back as
//! [`IndexMsg::Compacted`], so the mailbox keeps moving meanwhile.

use std::path::PathBuf;
use std::time::{Duration, Instant};

use edgeclip_link::LinkMsg;
use edgeclip_messages::dashboard::{CameraStatus, DeviceStatus};
use edgeclip_messages::topics;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::task::JoinHandle;
use tracing::{info, warn};

use super::image_encoder::Outcome;
use crate::index::{Catalog, Compacted, Inserted, Models};
use crate::progress::{Identity, Progress};

/// How often writing is tried again while the store fails: soon enough that a freed disk is
/// used within moments, rarely enough that a failing disk is not hammered.
const STORAGE_RETRY: Duration = Duration::from_secs(2);

/// Messages of the index actor.
pub enum IndexMsg {
    /// A scan of the folders finished: it queued `queued` pictures for encoding and left
    /// `settling` ones (still being written) for a later scan.
    Scanned {
        /// Pictures queued for encoding.
        queued: u64,
        /// Pictures found but still being written.
        settling: u64,
    },
    /// Files in formats edgeclip cannot read (HEIC, RAW, video): reported as skipped.
    Unsupported(Vec<PathBuf>),
    /// A queued picture was encoded (or its vector reused), or could not be.
    Picture(Outcome),
    /// A queued picture was a camera's near-duplicate frame, deleted instead of indexed.
    Discarded {
        /// False when its vector was reused from a picture with the same content.
        encoded: bool,
    },
    /// The pictures with these keys ([`crate::index::picture_key`]) are gone from disk.
    Remove(Vec<u64>),
    /// A camera's counters (by its position in the configuration).
    Camera(usize, CameraStatus),
    /// The current status.
    Status(RpcReplyPort<DeviceStatus>),
    /// The running compaction finished.
    Compacted,
    /// The device is shutting down.
    Stopping,
    /// Timer: publish the status if it changed.
    PublishStatus,
    /// Timer: try again to write the changes the store could not take.
    RetryStorage,
}

/// Arguments of the index actor.
pub struct IndexArgs {
    /// The indexes and their stores.
    pub catalog: Catalog,
    /// What the status says of the device itself.
    pub identity: Identity,
    /// The cameras' names, in configuration order.
    pub cameras: Vec<String>,
    /// Least time between status messages.
    pub status_interval: Duration,
    /// The MQTT link.
    pub link: ActorRef<LinkMsg>,
    /// Tells the search actor the models of the indexes (they change at the switch).
    pub models: tokio::sync::watch::Sender<Models>,
}

/// State of the index actor.
pub struct IndexState {
    args: IndexArgs,
    progress: Progress,
    cameras: Vec<CameraStatus>,
    compaction: Option<JoinHandle<Compacted>>,
    dirty: bool,
    timer_armed: bool,
    retry_armed: bool,
}

/// The index actor.
pub struct IndexActor;

impl Actor for IndexActor {
    type Msg = IndexMsg;
    type State = IndexState;
    type Arguments = IndexArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<IndexMsg>,
        args: IndexArgs,
    ) -> Result<IndexState, ActorProcessingErr> {
        let cameras = args
            .cameras
            .iter()
            .map(|name| crate::camera::frames::counts(name))
            .collect();
        let mut state = IndexState {
            args,
            progress: Progress::new(),
            cameras,
            compaction: None,
            dirty: true,
            timer_armed: false,
            retry_armed: false,
        };
        state.publish();
        Ok(state)
    }

    async fn handle(
        &self,
        myself: ActorRef<IndexMsg>,
        msg: IndexMsg,
        state: &mut IndexState,
    ) -> Result<(), ActorProcessingErr> {
        let catalog = &mut state.args.catalog;
        match msg {
            IndexMsg::Scanned { queued, settling } => {
                state.progress.scanned(queued, settling, Instant::now());
            }
            IndexMsg::Unsupported(paths) => {
                for p in paths {
                    state.progress.record_failure(&p, "format not supported (HEIC, RAW and videos are skipped; convert to JPEG to index)".into());
                }
            }
            IndexMsg::Picture(Outcome::Encoded {
                key,
                entry,
                vector,
                encoded,
            }) => {
                state.progress.handled(encoded);
                let path = entry.path.clone();
                match blocking(|| catalog.insert(key, entry, vector)) {
                    Inserted::Visible | Inserted::Waiting => {}
                    Inserted::Refused(e) => state.progress.record_failure(&path, e.to_string()),
                    Inserted::Dropped(why) => state.progress.record_failure(&path, why),
                }
                state.compact(&myself);
            }
            IndexMsg::Picture(Outcome::Failed { path, error }) => {
                state.progress.failed(&path, error.to_string());
            }
            IndexMsg::Discarded { encoded } => state.progress.handled(encoded),
            IndexMsg::Remove(keys) => {
                if !blocking(|| catalog.remove(&keys)) {
                    return Ok(());
                }
            }
            IndexMsg::Camera(number, counts) => {
                if let Some(c) = state.cameras.get_mut(number) {
                    *c = counts;
                }
            }
            IndexMsg::Status(port) => {
                let _ = port.send(state.status());
                return Ok(());
            }
            IndexMsg::Compacted => {
                if let Some(job) = state.compaction.take() {
                    state.compacted(job.await?);
                }
                state.compact(&myself);
            }
            IndexMsg::Stopping => {
                state.progress.stopping();
                state.publish();
                return Ok(());
            }
            IndexMsg::RetryStorage => {
                state.retry_armed = false;
                for (path, e) in blocking(|| catalog.write_waiting()) {
                    state.progress.record_failure(&path, e.to_string());
                }
                state.compact(&myself);
            }
            IndexMsg::PublishStatus => {
                state.timer_armed = false;
                if state.dirty {
                    state.publish();
                }
                return Ok(());
            }
        }
        state.changed(&myself);
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<IndexMsg>,
        state: &mut IndexState,
    ) -> Result<(), ActorProcessingErr> {
        // A compaction still running holds pictures that wait to be written: finish it.
        if let Some(job) = state.compaction.take() {
            state.compacted(job.await?);
        }
        Ok(())
    }
}

impl IndexState {
    fn status(&self) -> DeviceStatus {
        let inventory = self.args.catalog.inventory();
        self.progress.status(
            Instant::now(),
            &self.args.identity,
            &inventory,
            &self.cameras,
        )
    }

    fn publish(&mut self) {
        match serde_json::to_vec(&self.status()) {
            Ok(json) => edgeclip_link::publish(
                &self.args.link,
                topics::status(&self.args.identity.device_id),
                json,
                true,
            ),
            Err(e) => warn!(error = %e, "status not serialisable"),
        }
        self.dirty = false;
    }

    /// Marks the status changed: publishes now if everything found is handled (and switches
    /// to a re-built index then), else at the next tick. Arms the storage retry while the
    /// store fails.
    fn changed(&mut self, myself: &ActorRef<IndexMsg>) {
        self.dirty = true;
        if self.progress.caught_up() {
            if !self.progress.in_lifecycle() {
                self.switch_if_complete();
            }
            self.publish();
        } else if !self.timer_armed {
            self.timer_armed = true;
            myself.send_after(self.args.status_interval, || IndexMsg::PublishStatus);
        }
        if self.args.catalog.storage_error().is_some() && !self.retry_armed {
            self.retry_armed = true;
            myself.send_after(STORAGE_RETRY, || IndexMsg::RetryStorage);
        }
    }

    fn switch_if_complete(&mut self) {
        let catalog = &mut self.args.catalog;
        if let Some(Ok(switched)) = blocking(|| catalog.switch_if_complete()) {
            info!(from = %switched.from, to = %switched.to, pictures = switched.pictures, "re-index complete; searches now use the new index");
            let _ = self.args.models.send(catalog.models());
        }
    }

    /// Starts a compaction on a blocking thread if the catalog wants one.
    fn compact(&mut self, myself: &ActorRef<IndexMsg>) {
        if self.compaction.is_some() {
            return;
        }
        if let Some(job) = self.args.catalog.start_compaction() {
            let me = myself.clone();
            self.compaction = Some(tokio::task::spawn_blocking(move || {
                let done = job.run();
                let _ = me.cast(IndexMsg::Compacted);
                done
            }));
        }
    }

    fn compacted(&mut self, done: Compacted) {
        let catalog = &mut self.args.catalog;
        for (path, e) in blocking(|| catalog.compacted(done)) {
            self.progress.record_failure(&path, e.to_string());
        }
    }
}

/// Runs catalog calls that write files (an fsync) without stalling the other tasks of a
/// multi-threaded runtime's worker thread.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}
