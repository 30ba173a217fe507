//! [`ImageEncoderActor`]: decodes, preprocesses and encodes pictures, `workers` batches at a
//! time (of the tower's batch, gathered from the pictures waiting), on its own threads at low
//! priority (`workers.rs`; never on the async threads), and hands the vectors to the index.

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tracing::debug;

use super::index::IndexMsg;
use crate::encode::ImageTower;
use crate::error::DeviceError;
use crate::index::Entry;
use crate::preprocess::{DecodeLimits, PreprocessCfg};
use crate::scan::FileSeen;
use crate::workers::{Priority, Workers};

/// Messages of the image encoder.
pub enum ImageEncoderMsg {
    /// Encode this picture and give the result to the index (reusing the vector of identical
    /// content if the index has one).
    Encode(FileSeen),
    /// Encode this picture again even if a vector of identical content exists (re-index).
    Reencode(FileSeen),
    /// Answer once every queued and running encoding has finished (or the timeout passed).
    Drain(Duration, RpcReplyPort<()>),
    /// Start on the pictures gathered so far, even if fewer than a batch. The actor sends it
    /// to itself behind the messages already queued, so a batch gathers what is waiting and
    /// a lone picture waits for nothing.
    Flush,
}

/// Arguments of the image encoder.
pub struct ImageEncoderArgs {
    /// The loaded image tower (its batch is the number of pictures encoded per run).
    pub tower: ImageTower,
    /// Preprocessing of the model.
    pub preprocess: PreprocessCfg,
    /// Decoder bounds.
    pub limits: DecodeLimits,
    /// Batches encoded at once.
    pub workers: usize,
    /// Scheduling of the encoding threads.
    pub priority: Priority,
    /// Larger files are skipped without being read.
    pub max_file_bytes: u64,
    /// Where results go.
    pub index: ActorRef<IndexMsg>,
}

/// State of the image encoder.
pub struct ImageEncoderState {
    args: ImageEncoderArgs,
    slots: Arc<Semaphore>,
    threads: Workers,
    /// Pictures gathered for the next batch, with whether a vector may be reused.
    pending: Vec<(FileSeen, bool)>,
    /// A [`ImageEncoderMsg::Flush`] is in the mailbox.
    flush_queued: bool,
}

/// The image encoder actor.
pub struct ImageEncoderActor;

impl Actor for ImageEncoderActor {
    type Msg = ImageEncoderMsg;
    type State = ImageEncoderState;
    type Arguments = ImageEncoderArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<ImageEncoderMsg>,
        args: ImageEncoderArgs,
    ) -> Result<ImageEncoderState, ActorProcessingErr> {
        let slots = Arc::new(Semaphore::new(args.workers.max(1)));
        let threads = Workers::start(args.workers, args.priority)?;
        Ok(ImageEncoderState {
            args,
            slots,
            threads,
            pending: Vec::new(),
            flush_queued: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<ImageEncoderMsg>,
        msg: ImageEncoderMsg,
        state: &mut ImageEncoderState,
    ) -> Result<(), ActorProcessingErr> {
        let (seen, reuse) = match msg {
            ImageEncoderMsg::Encode(seen) => (seen, true),
            ImageEncoderMsg::Reencode(seen) => (seen, false),
            ImageEncoderMsg::Flush => {
                state.flush_queued = false;
                return dispatch(state).await;
            }
            ImageEncoderMsg::Drain(timeout, reply) => {
                // Messages before this one are handled already; start what they gathered and
                // wait for the running ones.
                dispatch(state).await?;
                let all = state.args.workers.max(1) as u32;
                let _ = tokio::time::timeout(timeout, state.slots.acquire_many(all)).await;
                let _ = reply.send(());
                return Ok(());
            }
        };
        state.pending.push((seen, reuse));
        if state.pending.len() >= state.args.tower.batch() {
            dispatch(state).await?;
        } else if !state.flush_queued {
            // A mailbox that takes nothing more (the actor is stopping): start at once.
            state.flush_queued = myself.cast(ImageEncoderMsg::Flush).is_ok();
            if !state.flush_queued {
                dispatch(state).await?;
            }
        }
        Ok(())
    }
}

/// Encodes the gathered pictures as one batch on a free worker.
async fn dispatch(state: &mut ImageEncoderState) -> Result<(), ActorProcessingErr> {
    if state.pending.is_empty() {
        return Ok(());
    }
    // Waiting for a free worker here is the backpressure: further pictures stay in the
    // mailbox instead of piling up as decoded images in memory.
    let permit = state.slots.clone().acquire_owned().await?;
    let group = std::mem::take(&mut state.pending);
    let tower = state.args.tower.clone();
    let preprocess = state.args.preprocess.clone();
    let limits = state.args.limits;
    let max_file_bytes = state.args.max_file_bytes;
    let index = state.args.index.clone();
    let threads = state.threads.clone();
    tokio::spawn(async move {
        let mut to_encode = Vec::with_capacity(group.len());
        for (seen, reuse) in group {
            let path = seen.path.clone();
            match read_or_reuse(seen, reuse, max_file_bytes, &index).await {
                Ok(Read::Reused(entry, vector)) => {
                    let _ = index.cast(IndexMsg::Insert {
                        entry,
                        vector,
                        encoded: false,
                    });
                }
                Ok(Read::Bytes(picture)) => to_encode.push(picture),
                Err(e) => {
                    let _ = index.cast(IndexMsg::Failed {
                        path,
                        error: e.to_string(),
                    });
                }
            }
        }
        if !to_encode.is_empty() {
            let paths: Vec<PathBuf> = to_encode.iter().map(|p| p.seen.path.clone()).collect();
            // Decoding and inference on the encoder's own low-priority threads.
            match threads
                .run(move || encode_group(to_encode, &tower, &preprocess, limits))
                .await
            {
                Ok(results) => {
                    for (path, result) in results {
                        let msg = match result {
                            Ok((entry, vector)) => IndexMsg::Insert {
                                entry,
                                vector,
                                encoded: true,
                            },
                            Err(e) => IndexMsg::Failed {
                                path,
                                error: e.to_string(),
                            },
                        };
                        let _ = index.cast(msg);
                    }
                }
                Err(e) => {
                    for path in paths {
                        let error = DeviceError::Actor(format!("encoder crashed: {e}")).to_string();
                        let _ = index.cast(IndexMsg::Failed { path, error });
                    }
                }
            }
        }
        drop(permit);
    });
    Ok(())
}

/// A picture read into memory, to be encoded.
struct Picture {
    seen: FileSeen,
    bytes: Vec<u8>,
    hash: [u8; 32],
}

/// What reading a picture gave.
enum Read {
    /// The index has a vector for this content (renamed, moved, copied).
    Reused(Entry, Vec<f32>),
    /// The picture needs encoding.
    Bytes(Picture),
}

/// Reads and hashes the file (on a blocking thread) and reuses the vector of a picture with
/// the same content if the index has one.
async fn read_or_reuse(
    seen: FileSeen,
    reuse: bool,
    max_file_bytes: u64,
    index: &ActorRef<IndexMsg>,
) -> Result<Read, DeviceError> {
    if seen.size > max_file_bytes {
        return Err(DeviceError::Decode(format!(
            "file of {} bytes is larger than the limit of {max_file_bytes}",
            seen.size
        )));
    }
    let path = seen.path.clone();
    let (bytes, hash) = tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&path).map_err(|e| DeviceError::io(&path, e))?;
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        Ok::<_, DeviceError>((bytes, hash))
    })
    .await
    .map_err(|e| DeviceError::Actor(format!("reader crashed: {e}")))??;
    let reused = if reuse {
        ractor::call_t!(index, IndexMsg::Reuse, REUSE_TIMEOUT_MS, hash)
            .ok()
            .flatten()
    } else {
        None
    };
    if let Some((old, vector)) = reused {
        debug!(path = %seen.path.display(), from = %old.path.display(), "same content already encoded; vector reused");
        let entry = Entry {
            path: seen.path,
            size: bytes.len() as u64,
            mtime_ns: seen.mtime_ns,
            hash,
            ..old
        };
        return Ok(Read::Reused(entry, vector));
    }
    Ok(Read::Bytes(Picture { seen, bytes, hash }))
}

/// How long the index may take to look up a content hash (in memory; this only guards
/// against a stuck actor).
const REUSE_TIMEOUT_MS: u64 = 10_000;

/// A picture's index entry and vector, or why it has none.
type Encoded = Result<(Entry, Vec<f32>), DeviceError>;

/// Decodes and preprocesses each picture, then encodes those that decoded in batches of the
/// tower's batch (on an encoder thread). A picture that fails to decode is reported alone; if a
/// batch fails, its pictures are encoded one at a time so that the error is the right one's.
fn encode_group(
    group: Vec<Picture>,
    tower: &ImageTower,
    preprocess: &PreprocessCfg,
    limits: DecodeLimits,
) -> Vec<(PathBuf, Encoded)> {
    let started = std::time::Instant::now();
    let mut results = Vec::with_capacity(group.len());
    let mut decoded = Vec::with_capacity(group.len());
    for Picture { seen, bytes, hash } in group {
        // Large JPEGs are decoded at a reduced scale (DCT scaling); width and height are the full ones.
        match preprocess.picture(&bytes, limits) {
            Ok((tensor, (width, height))) => {
                let taken_s = crate::metadata::exif_capture_time(&bytes)
                    .unwrap_or(seen.mtime_ns / 1_000_000_000);
                let entry = Entry {
                    path: seen.path,
                    size: bytes.len() as u64,
                    mtime_ns: seen.mtime_ns,
                    hash,
                    width,
                    height,
                    taken_s,
                    source: Box::default(),
                };
                decoded.push((entry, tensor));
            }
            Err(e) => results.push((seen.path, Err(e))),
        }
    }
    let decoding = started.elapsed();
    let (entries, tensors): (Vec<Entry>, Vec<Vec<f32>>) = decoded.into_iter().unzip();
    let batched = if tensors.len() > 1 {
        tower.encode_batch(tensors.clone()).ok()
    } else {
        None
    };
    match batched {
        Some(vectors) => results.extend(
            entries
                .into_iter()
                .zip(vectors)
                .map(|(entry, v)| (entry.path.clone(), Ok((entry, v)))),
        ),
        None => {
            for (entry, tensor) in entries.into_iter().zip(tensors) {
                results.push((entry.path.clone(), tower.encode(tensor).map(|v| (entry, v))));
            }
        }
    }
    debug!(pictures = results.len(), ?decoding, total = ?started.elapsed(), "encoded");
    results
}
