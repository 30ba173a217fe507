//! [`IndexActor`]: owns the vector index; inserts what the encoder made, ranks query vectors
//! in place, counts progress and publishes the retained status (throttled).

use std::borrow::Cow;
use std::collections::{HashMap, VecDeque};
use std::path::PathBuf;
use std::time::Duration;

use edgeclip_link::LinkMsg;
use edgeclip_messages::dashboard::{DeviceState, DeviceStatus, Failure, Hit};
use edgeclip_messages::topics;
use edgeclip_messages::wire::{vector_view, validate_vector, ArchivedReplyBody, ArchivedTextVector, EncodeReply, FleetQuery, Received};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use crate::error::DeviceError;
use crate::index::{Entry, Filter, Index, Ranked};
use crate::scan::FileSeen;
use crate::store::Store;

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
    /// These pictures are gone from disk.
    Remove(Vec<PathBuf>),
    /// What is indexed, as the capture actor compares it with the disk.
    Known(RpcReplyPort<Vec<FileSeen>>),
    /// Rank the index against a text vector from the cloud, read in place.
    Rank {
        /// The cloud's reply or fleet query (must hold a vector).
        query: Query,
        /// Hits wanted.
        k: usize,
        /// Which pictures may be returned.
        filter: Filter,
        /// The answer: model id and hits, or why not.
        port: RpcReplyPort<Result<(String, Vec<Hit>), String>>,
    },
    /// Rank the index against the vector of one of its pictures ("more like this").
    Like {
        /// The indexed picture.
        path: PathBuf,
        /// Hits wanted.
        k: usize,
        /// Which pictures may be returned (the picture itself never is).
        filter: Filter,
        /// The answer: model id and hits, or why not.
        port: RpcReplyPort<Result<(String, Vec<Hit>), String>>,
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
}

impl IndexState {
    fn status(&self) -> DeviceStatus {
        let index = &self.args.index;
        let waiting = self.pending + self.settling + self.unsaved.len() as u64;
        let state = self.lifecycle.unwrap_or(if waiting > 0 { DeviceState::Indexing } else { DeviceState::Idle });
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
            eta_s: (waiting > 0 && self.rate() > 0.0).then(|| (waiting as f64 / self.rate()).ceil() as u64),
            model: index.model().to_string(),
            dim: index.dim(),
            folders: self.args.folders.clone(),
            recent_failures: self.recent.iter().cloned().collect(),
            version: env!("CARGO_PKG_VERSION").to_string(),
        }
    }

    /// Pictures per second in the current run.
    fn rate(&self) -> f64 {
        match self.run {
            Some((started, done)) if done > 0 => done as f64 / started.elapsed().as_secs_f64().max(1e-3),
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
            Ok(json) => edgeclip_link::publish(&self.args.link, topics::status(&self.args.device_id), json, true),
            Err(e) => warn!(error = %e, "status not serialisable"),
        }
        self.dirty = false;
    }

    /// Marks the status changed; publishes now if idle was reached, else at the next tick.
    fn changed(&mut self, myself: &ActorRef<IndexMsg>) {
        self.dirty = true;
        if self.pending + self.settling == 0 {
            self.run = None;
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

    async fn pre_start(&self, _myself: ActorRef<IndexMsg>, args: IndexArgs) -> Result<IndexState, ActorProcessingErr> {
        let mut state = IndexState {
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

    async fn handle(&self, myself: ActorRef<IndexMsg>, msg: IndexMsg, state: &mut IndexState) -> Result<(), ActorProcessingErr> {
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
            IndexMsg::Insert { entry, vector, encoded } => {
                state.done_one();
                state.encoded += u64::from(encoded);
                if state.unsaved.is_empty() {
                    match persist_and_insert(&mut state.args, entry.clone(), &vector) {
                        Ok(()) => state.storage_error = None,
                        Err(e @ DeviceError::Io { .. }) => keep_unsaved(state, &myself, entry, vector, e.to_string()),
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
                record_failure(state, path, error);
                state.changed(&myself);
            }
            IndexMsg::Remove(paths) => {
                let mut any = false;
                for p in &paths {
                    let before = state.unsaved.len();
                    state.unsaved.retain(|(e, _)| &e.path != p);
                    any |= state.unsaved.len() != before;
                    if state.args.index.get(p).is_none() {
                        continue;
                    }
                    let kept = state.args.index.get(p).cloned().zip(state.args.index.vector_of(p).map(|v| v.into_owned()));
                    match blocking(|| state.args.store.remove(p)) {
                        Ok(()) => {
                            any |= state.args.index.remove(p);
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
                    .args
                    .index
                    .iter()
                    .find(|(e, _)| e.hash == hash)
                    .map(|(e, v)| (e.clone(), v.to_vec()))
                    .or_else(|| state.removed.get(&hash).cloned());
                let _ = port.send(found);
            }
            IndexMsg::Known(port) => {
                let known = state
                    .args
                    .index
                    .iter()
                    .map(|(e, _)| FileSeen { path: e.path.clone(), size: e.size, mtime_ns: e.mtime_ns })
                    .collect();
                let _ = port.send(known);
            }
            IndexMsg::Rank { query, k, filter, port } => {
                let _ = port.send(rank(&state.args.index, &query, k, &filter));
            }
            IndexMsg::Picture(id, port) => {
                let _ = port.send(state.args.index.by_id(&id).cloned());
            }
            IndexMsg::Like { path, k, mut filter, port } => {
                let index = &state.args.index;
                // The picture is named by its path or by its id.
                let path = match index.get(&path) {
                    Some(_) => path,
                    None => path.to_str().and_then(|id| index.by_id(id)).map(|e| e.path.clone()).unwrap_or(path),
                };
                let answer = match index.vector_of(&path) {
                    None => Err(format!("{} is not an indexed picture (give its path or id)", path.display())),
                    Some(query) => {
                        filter.exclude = Some(path);
                        index.search_filtered(index.model(), &query, k, &filter).map(|hits| (index.model().to_string(), to_hits(hits))).map_err(|e| e.to_string())
                    }
                };
                let _ = port.send(answer);
            }
            IndexMsg::Export { filter, chunk_vectors, max_vectors, port } => {
                let _ = port.send(export(&state.args.index, &filter, chunk_vectors, max_vectors));
            }
            IndexMsg::Status(port) => {
                let _ = port.send(state.status());
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

/// Makes the picture durable, then visible; compacts the store when its journal is large.
fn persist_and_insert(args: &mut IndexArgs, entry: Entry, vector: &[f32]) -> Result<(), crate::error::DeviceError> {
    if vector.len() != args.index.dim() {
        return Err(crate::error::DeviceError::Mismatch(format!("vector of dimension {} for an index of {}", vector.len(), args.index.dim())));
    }
    blocking(|| args.store.upsert(&entry, vector))?;
    args.index.upsert(entry, vector)?;
    if args.store.should_compact() {
        let (store, index) = (&mut args.store, &args.index);
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
fn keep_unsaved(state: &mut IndexState, myself: &ActorRef<IndexMsg>, entry: Entry, vector: Vec<f32>, error: String) {
    if state.storage_error.as_deref() != Some(error.as_str()) {
        warn!(%error, "the index cannot be written; encoded pictures wait in memory and are written once it can");
    }
    state.storage_error = Some(error.clone());
    state.unsaved.retain(|(e, _)| e.path != entry.path);
    if state.unsaved.len() >= MAX_UNSAVED {
        record_failure(state, entry.path, format!("not written to the index: {error}"));
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
        match persist_and_insert(&mut state.args, entry.clone(), &vector) {
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
    state.recent.push_back(Failure { path: path.display().to_string(), error });
}

/// Ranks directly on the archived vector of the reply: no copy, no deserialisation.
fn rank(index: &Index, query: &Query, k: usize, filter: &Filter) -> Result<(String, Vec<Hit>), String> {
    let Some(text) = query.text_vector() else {
        return Err("the cloud's reply holds no vector".into());
    };
    let (model, query) = (&text.model, vector_view(&text.vector));
    validate_vector(&query).map_err(|e| format!("the cloud's vector is unusable: {e}"))?;
    let hits = index.search_filtered(model.as_str(), &query, k, filter).map_err(|e| e.to_string())?;
    Ok((model.to_string(), to_hits(hits)))
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

fn export(index: &Index, filter: &Filter, chunk_vectors: usize, max_vectors: usize) -> Result<Export, String> {
    let kept: Vec<(&Entry, Cow<'_, [f32]>)> = index.iter().filter(|(e, _)| filter.keeps(e)).collect();
    if kept.len() > max_vectors {
        return Err(format!(
            "{} pictures match, more than search.max_server_vectors = {max_vectors} may leave the device; search in device mode or narrow the search",
            kept.len()
        ));
    }
    let mut out = Export { model: index.model().to_string(), dim: index.dim(), pictures: Vec::new(), chunks: Vec::new() };
    for group in kept.chunks(chunk_vectors.max(1)) {
        let (mut ids, mut scales, mut codes) = (Vec::new(), Vec::new(), Vec::with_capacity(group.len() * index.dim()));
        for (entry, vector) in group {
            ids.push(out.pictures.len() as u32);
            out.pictures.push(hit(entry, 0.0));
            scales.push(edgeclip_messages::wire::quantise(vector, &mut codes));
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
        thumb_url: None,
    }
}
