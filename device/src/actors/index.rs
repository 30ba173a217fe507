//! [`IndexActor`]: owns the vector index; inserts what the encoder made, ranks query vectors
//! in place, counts progress and publishes the retained status (throttled).
//!
//! During a re-index for a new model (see [`crate::index::reindex`]) it holds two indexes: the
//! complete one of the previous model, which answers searches, and the one being built, which
//! receives every new vector. A query vector is ranked by the index of its model; the switch
//! happens the first time nothing is left to encode.

use std::collections::{HashMap, VecDeque};
use std::path::{Path, PathBuf};
use std::time::Duration;

use edgeclip_link::LinkMsg;
use edgeclip_messages::dashboard::{
    CameraStatus, DeviceState, DeviceStatus, Failure, Hit, Reindex,
};
use edgeclip_messages::topics;
use edgeclip_messages::wire::{
    validate_vector, vector_view, ArchivedReplyBody, ArchivedTextVector, EncodeReply, FleetQuery,
    Received,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use crate::error::DeviceError;
use crate::index::{picture_key, Entry, Filter, Index, Known, Ranked};
use crate::index::{Layout, Store};

/// The models of the indexes, for the search actor: which model's text vector to ask the
/// cloud for.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Models {
    /// Model of the complete index searches are answered from.
    pub serving: String,
    /// Model of the index being built, during a re-index.
    pub building: Option<String>,
}

/// A camera as the index sees it: whose frames are in which folder, and when a new frame is
/// a near-duplicate of the last kept one.
#[derive(Debug, Clone)]
pub struct CameraSpec {
    /// The camera's name: the source id of its frames.
    pub name: String,
    /// The folder its frames are saved in.
    pub folder: PathBuf,
    /// Cosine at or above which a new frame is a near-duplicate.
    pub duplicate_threshold: f32,
    /// Most frames kept (0: no limit); the oldest are deleted when a new one is kept.
    pub keep_frames: usize,
}

/// A ranking: the model of the vectors compared, the hits, and whether they come from an
/// index still being built.
#[derive(Debug, Clone)]
pub struct Ranking {
    /// Model id of the vectors compared.
    pub model: String,
    /// Best first.
    pub hits: Vec<Hit>,
    /// True when ranked by an index still being re-built (pictures may be missing).
    pub partial: bool,
}

/// Failures kept for the status message.
const RECENT_FAILURES: usize = 10;

/// Messages of the index actor.
pub enum IndexMsg {
    /// A scan of the folders finished: it queued `queued` pictures for encoding and left
    /// `settling` ones (still being written) for a later scan. The first one ends the
    /// `starting` state: before it, "nothing pending" does not mean "everything indexed".
    Scanned {
        /// Pictures queued for encoding.
        queued: u64,
        /// Pictures found but still being written.
        settling: u64,
    },
    /// Files in formats edgeclip cannot read (HEIC, RAW, video): reported as skipped.
    Unsupported(Vec<PathBuf>),
    /// A vector already computed for a file with this content hash (a renamed, moved or
    /// copied picture), with the picture's width, height and capture time.
    Reuse([u8; 32], RpcReplyPort<Option<(Entry, Vec<f32>)>>),
    /// A picture was encoded.
    Insert {
        /// The picture.
        entry: Entry,
        /// Its unit vector.
        vector: Vec<f32>,
        /// False when the vector was reused from a picture with the same content.
        encoded: bool,
    },
    /// A picture could not be encoded.
    Failed {
        /// The picture.
        path: PathBuf,
        /// Why.
        error: String,
    },
    /// The pictures with these keys ([`crate::index::picture_key`]) are gone from disk.
    Remove(Vec<u64>),
    /// What is indexed, as the capture actor compares it with the disk.
    Known(RpcReplyPort<Vec<Known>>),
    /// Rank the index against a text vector from the cloud, read in place.
    Rank {
        /// The cloud's reply or fleet query (must hold a vector).
        query: Query,
        /// Hits wanted.
        k: usize,
        /// Which pictures may be returned.
        filter: Filter,
        /// The answer, or why not.
        port: RpcReplyPort<Result<Ranking, String>>,
    },
    /// Rank the index against the vector of one of its pictures ("more like this").
    Like {
        /// The indexed picture.
        path: PathBuf,
        /// Hits wanted.
        k: usize,
        /// Which pictures may be returned (the picture itself never is).
        filter: Filter,
        /// The answer, or why not.
        port: RpcReplyPort<Result<Ranking, String>>,
    },
    /// Groups of near-duplicates among the pictures `filter` keeps (the complete index).
    Duplicates {
        /// Least cosine between two pictures of a group.
        threshold: f32,
        /// Most groups returned.
        k: usize,
        /// Which pictures are compared.
        filter: Filter,
        /// Most pictures compared (O(n²) work).
        max: usize,
        /// The model id and the groups, or why not.
        port: RpcReplyPort<Result<(String, Vec<Vec<Hit>>), String>>,
    },
    /// The entry of the picture with this id (for the HTTP endpoint's thumbnails).
    Picture(String, RpcReplyPort<Option<Entry>>),
    /// The pictures `filter` keeps, int8-quantised in chunks, for a server-ranked search.
    Export {
        /// Which pictures.
        filter: Filter,
        /// Vectors per chunk.
        chunk_vectors: usize,
        /// Most vectors that may leave the device for one search.
        max_vectors: usize,
        /// The export, or why not.
        port: RpcReplyPort<Result<Export, String>>,
    },
    /// The current status.
    Status(RpcReplyPort<DeviceStatus>),
    /// A camera was polled: the frame saved (to be kept or deleted once encoded), or why not.
    FramePolled {
        /// The camera's position in [`IndexArgs::cameras`].
        camera: usize,
        /// The saved frame, or the poll's error.
        result: Result<PathBuf, String>,
        /// Frames deleted after this poll for age or count.
        pruned: usize,
    },
    /// The device is shutting down.
    Stopping,
    /// Timer: publish the status if it changed.
    PublishStatus,
    /// Timer: try again to write the pictures that could not be written.
    RetryStorage,
}

/// A validated frame from the cloud that carries a text vector, ranked in place: the reply to
/// this device's own encode request, or a fleet query (the vector of a fleet search, encoded
/// once for every device).
pub enum Query {
    /// The answer to the device's encode request.
    Encoded(Received<EncodeReply>),
    /// A fleet search's vector.
    Fleet(Received<FleetQuery>),
}

impl Query {
    /// The text vector, if the frame holds one.
    fn text_vector(&self) -> Option<&ArchivedTextVector> {
        match self {
            Query::Encoded(reply) => match &reply.get().body {
                ArchivedReplyBody::Vector(v) => Some(v),
                ArchivedReplyBody::Error(_) => None,
            },
            Query::Fleet(query) => Some(&query.get().vector),
        }
    }
}

/// Arguments of the index actor.
pub struct IndexArgs {
    /// The index to serve, as opened from the store.
    pub index: Index,
    /// Where every change is made durable first.
    pub store: Store,
    /// Device id (for topics and status).
    pub device_id: String,
    /// Folders indexed (for status).
    pub folders: Vec<String>,
    /// Least time between status messages.
    pub status_interval: Duration,
    /// The MQTT link.
    pub link: ActorRef<LinkMsg>,
    /// During a re-index: the index of the device's model being built, and its store.
    pub building: Option<(Store, Index)>,
    /// Where the indexes live (for the switch).
    pub layout: Layout,
    /// Tells the search actor the models of the indexes.
    pub models: tokio::sync::watch::Sender<Models>,
    /// The cameras polled.
    pub cameras: Vec<CameraSpec>,
    /// Pictures per run of the image tower (for status).
    pub encoder_batch: usize,
}

/// State of the index actor.
pub struct IndexState {
    args: IndexArgs,
    pending: u64,
    settling: u64,
    /// Start of the current indexing run and pictures done in it, for rate and ETA.
    run: Option<(std::time::Instant, u64)>,
    failed: u64,
    encoded: u64,
    /// Vectors of recently removed pictures by content hash, so a renamed or moved picture
    /// keeps its vector instead of being encoded again.
    removed: HashMap<[u8; 32], (Entry, Vec<f32>)>,
    removed_order: VecDeque<[u8; 32]>,
    recent: VecDeque<Failure>,
    lifecycle: Option<DeviceState>,
    dirty: bool,
    timer_armed: bool,
    /// Encoded pictures the store could not write (disk full...), oldest first; at most one
    /// per path.
    unsaved: VecDeque<(Entry, Vec<f32>)>,
    /// The store's last write error, while pictures are unsaved.
    storage_error: Option<String>,
    retry_armed: bool,
    /// Frames saved by a camera and not yet encoded: the only pictures the near-duplicate
    /// rule applies to (never a frame already kept, e.g. during a re-index).
    fresh_frames: HashMap<PathBuf, usize>,
    /// Per camera: its counters.
    camera_counts: Vec<CameraStatus>,
    /// Per camera: the vector of its last kept frame (`None` inside: none yet), filled from
    /// the index at the camera's first new frame.
    last_kept: Vec<Option<Option<Vec<f32>>>>,
}

impl IndexState {
    fn status(&self) -> DeviceStatus {
        let index = &self.args.index;
        let waiting = self.pending + self.settling + self.unsaved.len() as u64;
        let state = self.lifecycle.unwrap_or(if waiting > 0 {
            DeviceState::Indexing
        } else {
            DeviceState::Idle
        });
        DeviceStatus {
            device_id: self.args.device_id.clone(),
            state,
            indexed: index.len() as u64,
            storage_error: self.storage_error.clone(),
            unsaved: self.unsaved.len() as u64,
            pending: waiting,
            failed: self.failed,
            encoded: self.encoded,
            rate_per_s: self.rate(),
            eta_s: (waiting > 0 && self.rate() > 0.0)
                .then(|| (waiting as f64 / self.rate()).ceil() as u64),
            model: index.model().to_string(),
            dim: index.dim(),
            folders: self.args.folders.clone(),
            recent_failures: self.recent.iter().cloned().collect(),
            version: env!("CARGO_PKG_VERSION").to_string(),
            cameras: self.camera_counts.clone(),
            encoder_batch: self.args.encoder_batch as u32,
            reindex: self.args.building.as_ref().map(|(_, b)| Reindex {
                model: b.model().to_string(),
                indexed: b.len() as u64,
                total: b.len() as u64 + waiting,
            }),
        }
    }

    /// The camera whose folder holds `path`.
    fn camera_of(&self, path: &std::path::Path) -> Option<usize> {
        self.args
            .cameras
            .iter()
            .position(|c| path.starts_with(&c.folder))
    }

    /// Whether a new frame of `camera` is a near-duplicate of its last kept frame; if not, it
    /// becomes the last kept frame.
    fn duplicate_frame(&mut self, camera: usize, vector: &[f32]) -> bool {
        if self.last_kept[camera].is_none() {
            let name = &self.args.cameras[camera].name;
            let latest = self
                .target_index()
                .iter()
                .filter(|(e, _)| *e.source == **name)
                .max_by(|(a, _), (b, _)| (a.taken_s, &a.path).cmp(&(b.taken_s, &b.path)));
            self.last_kept[camera] = Some(latest.map(|(_, v)| v.into_owned()));
        }
        let threshold = self.args.cameras[camera].duplicate_threshold;
        let last = self.last_kept[camera].as_mut().expect("filled above");
        if last
            .as_deref()
            .is_some_and(|l| crate::camera::near_duplicate(l, vector, threshold))
        {
            return true;
        }
        *last = Some(vector.to_vec());
        false
    }

    /// The index new vectors go to (the one being built during a re-index) and its store.
    fn target(&mut self) -> (&mut Store, &mut Index) {
        match &mut self.args.building {
            Some((store, index)) => (store, index),
            None => (&mut self.args.store, &mut self.args.index),
        }
    }

    /// The index new vectors go to.
    fn target_index(&self) -> &Index {
        self.args
            .building
            .as_ref()
            .map_or(&self.args.index, |(_, b)| b)
    }

    /// Makes a picture durable, then visible, in the target index. During a re-index, the
    /// serving index's vector of a picture whose content changed is removed (it describes
    /// content that is gone).
    fn insert(&mut self, entry: Entry, vector: &[f32]) -> Result<(), DeviceError> {
        let changed = self.args.building.is_some()
            && self
                .args
                .index
                .get(&entry.path)
                .is_some_and(|old| old.hash != entry.hash);
        let path = entry.path.clone();
        let (store, index) = self.target();
        persist_and_insert(store, index, entry, vector)?;
        if changed {
            if let Err(e) = remove_persisted(&mut self.args.store, &mut self.args.index, &path) {
                warn!(path = %path.display(), error = %e, "stale vector of the previous model not removed");
            }
        }
        Ok(())
    }

    /// Switches to the index being built once every picture found is in it.
    fn finish_reindex(&mut self) {
        if self.args.building.is_none()
            || self.lifecycle.is_some()
            || !self.unsaved.is_empty()
            || self.pending + self.settling > 0
        {
            return;
        }
        let layout = self.args.layout.clone();
        match blocking(|| crate::index::reindex::switch(&layout)) {
            Ok(()) => {
                let Some((mut store, index)) = self.args.building.take() else {
                    return;
                };
                store.moved_to(&layout.current);
                let previous = std::mem::replace(&mut self.args.index, index);
                self.args.store = store;
                info!(
                    from = previous.model(),
                    to = self.args.index.model(),
                    pictures = self.args.index.len(),
                    "re-index complete; searches now use the new index"
                );
                let _ = self.args.models.send(Models {
                    serving: self.args.index.model().to_string(),
                    building: None,
                });
                self.storage_error = None;
            }
            Err(e) => {
                warn!(error = %e, "switching to the new index failed; searches keep the previous one, retrying");
                self.storage_error = Some(format!("switch to the re-built index: {e}"));
            }
        }
    }

    /// Pictures per second in the current run.
    fn rate(&self) -> f64 {
        match self.run {
            Some((started, done)) if done > 0 => {
                done as f64 / started.elapsed().as_secs_f64().max(1e-3)
            }
            _ => 0.0,
        }
    }

    /// One queued picture was handled (indexed or failed).
    fn done_one(&mut self) {
        self.pending = self.pending.saturating_sub(1);
        if let Some((_, done)) = &mut self.run {
            *done += 1;
        }
    }

    fn publish(&mut self) {
        let status = self.status();
        match serde_json::to_vec(&status) {
            Ok(json) => edgeclip_link::publish(
                &self.args.link,
                topics::status(&self.args.device_id),
                json,
                true,
            ),
            Err(e) => warn!(error = %e, "status not serialisable"),
        }
        self.dirty = false;
    }

    /// Marks the status changed; publishes now if idle was reached, else at the next tick.
    fn changed(&mut self, myself: &ActorRef<IndexMsg>) {
        self.dirty = true;
        if self.pending + self.settling == 0 {
            self.run = None;
            if self.args.building.is_some() {
                self.finish_reindex();
                if self.args.building.is_some() && self.storage_error.is_some() && !self.retry_armed
                {
                    self.retry_armed = true;
                    myself.send_after(STORAGE_RETRY, || IndexMsg::RetryStorage);
                }
            }
            self.publish();
        } else if !self.timer_armed {
            self.timer_armed = true;
            myself.send_after(self.args.status_interval, || IndexMsg::PublishStatus);
        }
    }
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
        let camera_counts = args
            .cameras
            .iter()
            .map(|c| CameraStatus {
                name: c.name.clone(),
                polled: 0,
                failed: 0,
                kept: 0,
                skipped: 0,
                pruned: 0,
                last_error: None,
            })
            .collect();
        let last_kept = vec![None; args.cameras.len()];
        let mut state = IndexState {
            fresh_frames: HashMap::new(),
            camera_counts,
            last_kept,
            args,
            pending: 0,
            settling: 0,
            run: None,
            failed: 0,
            removed: HashMap::new(),
            removed_order: VecDeque::new(),
            encoded: 0,
            recent: VecDeque::new(),
            lifecycle: Some(DeviceState::Starting),
            dirty: true,
            timer_armed: false,
            unsaved: VecDeque::new(),
            storage_error: None,
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
        match msg {
            IndexMsg::Scanned { queued, settling } => {
                if state.pending == 0 && queued > 0 {
                    state.run = Some((std::time::Instant::now(), 0));
                }
                state.pending += queued;
                state.settling = settling;
                if state.lifecycle == Some(DeviceState::Starting) {
                    state.lifecycle = None;
                }
                state.changed(&myself);
            }
            IndexMsg::Insert {
                mut entry,
                vector,
                encoded,
            } => {
                state.done_one();
                state.encoded += u64::from(encoded);
                // A camera's frame: its source is the camera, its capture time the poll time
                // (the file's modification time), whatever its EXIF says.
                let camera = state.camera_of(&entry.path);
                entry.source = camera
                    .map(|c| state.args.cameras[c].name.clone())
                    .unwrap_or_default()
                    .into();
                if camera.is_some() {
                    entry.taken_s = entry.mtime_ns.div_euclid(1_000_000_000);
                }
                if let Some(cam) = state.fresh_frames.remove(&entry.path) {
                    if state.duplicate_frame(cam, &vector) {
                        let path = entry.path.clone();
                        if let Err(e) = blocking(|| std::fs::remove_file(&path)) {
                            warn!(frame = %path.display(), error = %e, "near-duplicate frame not deleted");
                        }
                        state.camera_counts[cam].skipped += 1;
                        state.changed(&myself);
                        return Ok(());
                    }
                    state.camera_counts[cam].kept += 1;
                    state.camera_counts[cam].pruned +=
                        keep_newest_frames(&state.args.cameras[cam], &entry.path) as u64;
                }
                if state.unsaved.is_empty() {
                    match state.insert(entry.clone(), &vector) {
                        Ok(()) => state.storage_error = None,
                        Err(e @ DeviceError::Io { .. }) => {
                            keep_unsaved(state, &myself, entry, vector, e.to_string())
                        }
                        Err(e) => record_failure(state, entry.path, e.to_string()),
                    }
                } else {
                    // Behind older unsaved pictures: in order, so a newer version of a path wins.
                    let error = state.storage_error.clone().unwrap_or_default();
                    keep_unsaved(state, &myself, entry, vector, error);
                }
                state.changed(&myself);
            }
            IndexMsg::Failed { path, error } => {
                state.done_one();
                // A camera frame that cannot be decoded stays on disk, listed as failed.
                state.fresh_frames.remove(&path);
                record_failure(state, path, error);
                state.changed(&myself);
            }
            IndexMsg::Remove(keys) => {
                let mut any = false;
                // A key nothing holds is a file that was never indexed (unsupported, failed,
                // or still being encoded): nothing to remove.
                let paths: Vec<PathBuf> = keys
                    .into_iter()
                    .filter_map(|k| path_of_key(state, k))
                    .collect();
                for p in &paths {
                    let before = state.unsaved.len();
                    state.unsaved.retain(|(e, _)| &e.path != p);
                    any |= state.unsaved.len() != before;
                    // The vector of the target index is kept for a rename's reuse; one of the
                    // previous model never is (it does not fit the index being built).
                    let target = state.target_index();
                    let kept = target
                        .get(p)
                        .cloned()
                        .zip(target.vector_of(p).map(|v| v.into_owned()));
                    let (store, index) = state.target();
                    let removed = remove_persisted(store, index, p);
                    let removed = match (removed, state.args.building.is_some()) {
                        (Ok(r), true) => {
                            remove_persisted(&mut state.args.store, &mut state.args.index, p)
                                .map(|s| r | s)
                        }
                        (other, _) => other,
                    };
                    match removed {
                        Ok(r) => {
                            any |= r;
                            if let Some((entry, vector)) = kept {
                                remember_removed(state, entry, vector);
                            }
                        }
                        Err(e) => {
                            warn!(path = %p.display(), error = %e, "removal not persisted; picture kept");
                            state.storage_error = Some(e.to_string());
                            any = true;
                        }
                    }
                }
                if any {
                    state.changed(&myself);
                }
            }
            IndexMsg::Unsupported(paths) => {
                for p in paths {
                    record_failure(state, p, "format not supported (HEIC, RAW and videos are skipped; convert to JPEG to index)".into());
                }
                state.changed(&myself);
            }
            IndexMsg::Reuse(hash, port) => {
                let found = state
                    .target_index()
                    .iter()
                    .find(|(e, _)| e.hash == hash)
                    .map(|(e, v)| (e.clone(), v.to_vec()))
                    .or_else(|| state.removed.get(&hash).cloned());
                let _ = port.send(found);
            }
            IndexMsg::Known(port) => {
                let mut known: Vec<Known> = state.target_index().stamps().collect();
                if let Some((_, building)) = &state.args.building {
                    // Pictures only the previous model's index holds: known paths whose vector
                    // for this model is still to be made. An impossible modification time
                    // makes the scan queue them if they exist, and report them gone if not
                    // (which removes them from the serving index too).
                    known.extend(
                        state
                            .args
                            .index
                            .stamps()
                            .filter(|k| building.path_of_key(k.key).is_none())
                            .map(|k| Known {
                                mtime_ns: i64::MIN,
                                ..k
                            }),
                    );
                }
                let _ = port.send(known);
            }
            IndexMsg::Rank {
                query,
                k,
                filter,
                port,
            } => {
                let _ = port.send(rank(
                    &state.args.index,
                    state.args.building.as_ref().map(|(_, b)| b),
                    &query,
                    k,
                    &filter,
                ));
            }
            IndexMsg::Picture(id, port) => {
                let building = state.args.building.as_ref().and_then(|(_, b)| b.by_id(&id));
                let _ = port.send(state.args.index.by_id(&id).or(building).cloned());
            }
            IndexMsg::Like {
                path,
                k,
                filter,
                port,
            } => {
                // The complete index answers; a picture only the index being built holds (new
                // since the re-index began) is answered from that one.
                let serving = (&state.args.index, false);
                let candidates = std::iter::once(serving)
                    .chain(state.args.building.as_ref().map(|(_, b)| (b, true)));
                let found = candidates.into_iter().find_map(|(index, partial)| {
                    resolve(index, &path).map(|p| (index, partial, p))
                });
                let answer = match found {
                    None => Err(format!(
                        "{} is not an indexed picture (give its path or id)",
                        path.display()
                    )),
                    Some((index, partial, path)) => {
                        let query = index
                            .vector_of(&path)
                            .map(|v| v.into_owned())
                            .unwrap_or_default();
                        index
                            .search_filtered(index.model(), &query, k, &filter, Some(&path))
                            .map(|hits| Ranking {
                                model: index.model().to_string(),
                                hits: to_hits(hits),
                                partial,
                            })
                            .map_err(|e| e.to_string())
                    }
                };
                let _ = port.send(answer);
            }
            IndexMsg::Duplicates {
                threshold,
                k,
                filter,
                max,
                port,
            } => {
                let _ = port.send(duplicates(&state.args.index, threshold, k, &filter, max));
            }
            IndexMsg::Export {
                filter,
                chunk_vectors,
                max_vectors,
                port,
            } => {
                let _ = port.send(export(
                    &state.args.index,
                    &filter,
                    chunk_vectors,
                    max_vectors,
                ));
            }
            IndexMsg::Status(port) => {
                let _ = port.send(state.status());
            }
            IndexMsg::FramePolled {
                camera,
                result,
                pruned,
            } => {
                if let Some(counts) = state.camera_counts.get_mut(camera) {
                    counts.pruned += pruned as u64;
                    match result {
                        Ok(path) => {
                            counts.polled += 1;
                            counts.last_error = None;
                            state.fresh_frames.insert(path, camera);
                        }
                        Err(e) => {
                            counts.failed += 1;
                            counts.last_error = Some(e);
                        }
                    }
                    state.changed(&myself);
                }
            }
            IndexMsg::Stopping => {
                state.lifecycle = Some(DeviceState::Stopping);
                state.publish();
            }
            IndexMsg::RetryStorage => {
                state.retry_armed = false;
                retry_unsaved(state, &myself);
                state.changed(&myself);
            }
            IndexMsg::PublishStatus => {
                state.timer_armed = false;
                if state.dirty {
                    state.publish();
                }
            }
        }
        Ok(())
    }
}

/// The indexed picture named by `path`: its path, or its id.
fn resolve(index: &Index, path: &std::path::Path) -> Option<PathBuf> {
    match index.get(path) {
        Some(e) => Some(e.path.clone()),
        None => path
            .to_str()
            .and_then(|id| index.by_id(id))
            .map(|e| e.path.clone()),
    }
}

/// Applies a camera's `keep_frames` once `kept` is known to stay: the frames polled before it
/// beyond the newest `keep_frames - 1` are deleted (the capture's next scan takes them out of
/// the index). Counting only frames older than a kept one means a frame still waiting for its
/// near-duplicate check never pushes a kept frame out. Returns how many were deleted.
fn keep_newest_frames(camera: &CameraSpec, kept: &Path) -> usize {
    let (Some(keep), Some(name)) = (
        (camera.keep_frames > 0).then(|| camera.keep_frames - 1),
        kept.file_name().and_then(|n| n.to_str()),
    ) else {
        return 0;
    };
    let (deleted, problems) =
        blocking(|| crate::camera::prune_frames(&camera.folder, Some(name), None, Some(keep)));
    for problem in problems {
        warn!(camera = %camera.name, %problem, "pruning frames beyond keep_frames");
    }
    deleted
}

/// The path of the picture with key `key` in the index being written to, the serving one, or
/// among the pictures not yet saved.
fn path_of_key(state: &IndexState, key: u64) -> Option<PathBuf> {
    let indexed = state
        .target_index()
        .path_of_key(key)
        .or_else(|| state.args.index.path_of_key(key));
    let unsaved = || {
        state
            .unsaved
            .iter()
            .map(|(e, _)| e.path.as_path())
            .find(|p| picture_key(p) == key)
    };
    indexed.or_else(unsaved).map(Path::to_path_buf)
}

/// Removes a picture from a store, then from its index; true if it was indexed.
fn remove_persisted(
    store: &mut Store,
    index: &mut Index,
    path: &std::path::Path,
) -> Result<bool, DeviceError> {
    if index.get(path).is_none() {
        return Ok(false);
    }
    blocking(|| store.remove(path))?;
    Ok(index.remove(path))
}

/// Makes the picture durable, then visible; compacts the store when its journal is large.
fn persist_and_insert(
    store: &mut Store,
    index: &mut Index,
    entry: Entry,
    vector: &[f32],
) -> Result<(), crate::error::DeviceError> {
    if vector.len() != index.dim() {
        return Err(crate::error::DeviceError::Mismatch(format!(
            "vector of dimension {} for an index of {}",
            vector.len(),
            index.dim()
        )));
    }
    // Refused before it is written: a journal record the index cannot take would be replayed.
    index.admits(&entry.path)?;
    blocking(|| store.upsert(&entry, vector))?;
    index.upsert(entry, vector)?;
    if store.should_compact() {
        if let Err(e) = blocking(|| store.compact(index)) {
            warn!(error = %e, "compaction failed; the journal keeps growing until it succeeds");
        }
    }
    Ok(())
}

/// Runs disk IO (fsync, compaction) without stalling the other tasks of a multi-threaded
/// runtime's worker.
fn blocking<T>(f: impl FnOnce() -> T) -> T {
    match tokio::runtime::Handle::try_current().map(|h| h.runtime_flavor()) {
        Ok(tokio::runtime::RuntimeFlavor::MultiThread) => tokio::task::block_in_place(f),
        _ => f(),
    }
}

/// Vectors of removed pictures kept for reuse (a rename shows up as a removal and a new file).
const REMOVED_KEPT: usize = 4096;

fn remember_removed(state: &mut IndexState, entry: Entry, vector: Vec<f32>) {
    let hash = entry.hash;
    if state.removed.insert(hash, (entry, vector)).is_none() {
        state.removed_order.push_back(hash);
    }
    while state.removed_order.len() > REMOVED_KEPT {
        if let Some(old) = state.removed_order.pop_front() {
            state.removed.remove(&old);
        }
    }
}

/// Most encoded pictures kept in memory while the store cannot write; beyond, pictures count
/// as failed and are found again by the next scan.
const MAX_UNSAVED: usize = 10_000;
/// How often writing is tried again while the store fails.
const STORAGE_RETRY: Duration = Duration::from_secs(2);

/// Keeps an encoded picture the store could not write, to write it once the store works.
fn keep_unsaved(
    state: &mut IndexState,
    myself: &ActorRef<IndexMsg>,
    entry: Entry,
    vector: Vec<f32>,
    error: String,
) {
    if state.storage_error.as_deref() != Some(error.as_str()) {
        warn!(%error, "the index cannot be written; encoded pictures wait in memory and are written once it can");
    }
    state.storage_error = Some(error.clone());
    state.unsaved.retain(|(e, _)| e.path != entry.path);
    if state.unsaved.len() >= MAX_UNSAVED {
        record_failure(
            state,
            entry.path,
            format!("not written to the index: {error}"),
        );
    } else {
        state.unsaved.push_back((entry, vector));
    }
    if !state.retry_armed {
        state.retry_armed = true;
        myself.send_after(STORAGE_RETRY, || IndexMsg::RetryStorage);
    }
}

/// Writes the unsaved pictures in order until the store fails again.
fn retry_unsaved(state: &mut IndexState, myself: &ActorRef<IndexMsg>) {
    while let Some((entry, vector)) = state.unsaved.pop_front() {
        match state.insert(entry.clone(), &vector) {
            Ok(()) => {}
            Err(e @ DeviceError::Io { .. }) => {
                state.unsaved.push_front((entry, vector));
                state.storage_error = Some(e.to_string());
                state.retry_armed = true;
                myself.send_after(STORAGE_RETRY, || IndexMsg::RetryStorage);
                return;
            }
            Err(e) => record_failure(state, entry.path, e.to_string()),
        }
    }
    if state.storage_error.take().is_some() {
        info!("the index can be written again; every waiting picture is written");
    }
}

fn record_failure(state: &mut IndexState, path: PathBuf, error: String) {
    warn!(path = %path.display(), %error, "picture skipped");
    state.failed += 1;
    if state.recent.len() == RECENT_FAILURES {
        state.recent.pop_front();
    }
    state.recent.push_back(Failure {
        path: path.display().to_string(),
        error,
    });
}

/// Ranks directly on the archived vector of the reply: no copy, no deserialisation. The
/// vector is ranked by the index of its model: the serving one, or during a re-index the one
/// being built (a partial answer).
fn rank(
    serving: &Index,
    building: Option<&Index>,
    query: &Query,
    k: usize,
    filter: &Filter,
) -> Result<Ranking, String> {
    let Some(text) = query.text_vector() else {
        return Err("the cloud's reply holds no vector".into());
    };
    let (model, query) = (&text.model, vector_view(&text.vector));
    validate_vector(&query).map_err(|e| format!("the cloud's vector is unusable: {e}"))?;
    let (index, partial) = match building {
        Some(b) if serving.model() != model.as_str() && b.model() == model.as_str() => (b, true),
        _ => (serving, false),
    };
    let hits = index
        .search_filtered(model.as_str(), &query, k, filter, None)
        .map_err(|e| e.to_string())?;
    Ok(Ranking {
        model: model.to_string(),
        hits: to_hits(hits),
        partial,
    })
}

/// Near-duplicate groups among the pictures `filter` keeps; the work runs off the async threads.
fn duplicates(
    index: &Index,
    threshold: f32,
    k: usize,
    filter: &Filter,
    max: usize,
) -> Result<(String, Vec<Vec<Hit>>), String> {
    // Counted before any vector is decoded: the bound is also what bounds the memory.
    let rows = kept_rows(index, filter);
    if rows.len() > max {
        return Err(format!(
            "{} pictures match, more than search.max_duplicate_pictures = {max} can be compared pairwise; narrow the search (folder, after, before, source)",
            rows.len()
        ));
    }
    let mut flat: Vec<f32> = Vec::with_capacity(rows.len() * index.dim());
    for &row in &rows {
        flat.extend_from_slice(&index.vectors().get(row));
    }
    let groups = blocking(|| crate::duplicates::groups(&flat, index.dim(), threshold));
    let entries = index.entries();
    let groups = groups
        .into_iter()
        .take(k)
        .map(|g| {
            g.members
                .into_iter()
                .map(|(i, score)| hit(&entries[rows[i]], score))
                .collect()
        })
        .collect();
    Ok((index.model().to_string(), groups))
}

/// Rows of the pictures `filter` keeps, in row order.
fn kept_rows(index: &Index, filter: &Filter) -> Vec<usize> {
    index
        .entries()
        .iter()
        .enumerate()
        .filter(|(_, e)| crate::index::keeps(filter, None, e))
        .map(|(row, _)| row)
        .collect()
}

/// A server-ranked search's view of the index: ids are positions in `paths`.
pub struct Export {
    /// Model id of the vectors.
    pub model: String,
    /// Vector dimension.
    pub dim: usize,
    /// Picture of each id, as a hit without its score.
    pub pictures: Vec<Hit>,
    /// Chunks: (ids, scales, int8 codes).
    pub chunks: Vec<(Vec<u32>, Vec<f32>, Vec<i8>)>,
}

fn export(
    index: &Index,
    filter: &Filter,
    chunk_vectors: usize,
    max_vectors: usize,
) -> Result<Export, String> {
    let rows = kept_rows(index, filter);
    if rows.len() > max_vectors {
        return Err(format!(
            "{} pictures match, more than search.max_server_vectors = {max_vectors} may leave the device; search in device mode or narrow the search",
            rows.len()
        ));
    }
    // One vector decoded at a time, straight into the chunk's int8 codes: the export holds
    // what it sends (~520 bytes a 512-d picture), not every vector in f32 (2 KiB) besides.
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
        out.chunks.push((ids, scales, codes));
    }
    Ok(out)
}

fn to_hits(ranked: Vec<Ranked<'_>>) -> Vec<Hit> {
    ranked.into_iter().map(|r| hit(r.entry, r.score)).collect()
}

/// A picture as a search result: what the index knows of it, without reading the file. The
/// thumbnail URL is added by the search actor, which knows the HTTP endpoint.
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
    use crate::index::Precision;

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

    #[test]
    fn duplicates_among_filtered_rows_name_the_right_pictures() {
        let index = interleaved();
        let only_a = Filter {
            folder: Some("a".into()),
            ..Filter::default()
        };
        let (_, groups) = duplicates(&index, 0.99, 10, &only_a, 10).unwrap();
        let names: Vec<Vec<&str>> = groups
            .iter()
            .map(|g| g.iter().map(|h| h.path.as_str()).collect())
            .collect();
        assert_eq!(names, vec![vec!["a/1", "a/2"]]);
        let refused = duplicates(&index, 0.99, 10, &only_a, 2).unwrap_err();
        assert!(refused.contains("3 pictures match"), "{refused}");
    }

    #[test]
    fn exports_hold_the_filtered_pictures_with_their_own_vectors() {
        let index = interleaved();
        let only_a = Filter {
            folder: Some("a".into()),
            ..Filter::default()
        };
        let exported = export(&index, &only_a, 2, 10).unwrap();
        let paths: Vec<&str> = exported.pictures.iter().map(|h| h.path.as_str()).collect();
        assert_eq!(paths, vec!["a/1", "a/2", "a/3"]);
        assert_eq!(
            exported
                .chunks
                .iter()
                .map(|c| c.0.clone())
                .collect::<Vec<_>>(),
            vec![vec![0, 1], vec![2]]
        );
        let (_, scales, codes) = &exported.chunks[1];
        let a3: Vec<f32> = codes.iter().map(|&c| c as f32 * scales[0]).collect();
        assert!(
            (a3[0] - 0.6).abs() < 0.01 && (a3[1] + 0.8).abs() < 0.01,
            "{a3:?}"
        );
        assert!(export(&index, &only_a, 2, 2)
            .err()
            .is_some_and(|e| e.contains("3 pictures match")));
    }
}
