//! [`ImageEncoderActor`]: decodes, preprocesses and encodes pictures, `workers` batches at a
//! time (of the tower's batch, gathered from the pictures waiting), on its own threads at low
//! priority (`workers.rs`; never on the async threads), and hands each result on once: to the
//! camera whose folder holds the picture, else to the index.
//!
//! A file is read and hashed first; a vector already computed for the same content (a copy, a
//! rename) is looked up in the catalog directly ([`CatalogReader::reuse`]) and reused instead
//! of encoding the picture again.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, MessagingErr, RpcReplyPort};
use sha2::{Digest, Sha256};
use tokio::sync::Semaphore;
use tracing::debug;

use super::camera::CameraMsg;
use super::index::IndexMsg;
use crate::encode::ImageTower;
use crate::error::DeviceError;
use crate::index::{CatalogReader, Entry};
use crate::metadata::Exif;
use crate::preprocess::{DecodeLimits, PreprocessCfg};
use crate::scan::FileSeen;
use crate::workers::{Priority, Workers};

/// Messages of the image encoder.
pub enum ImageEncoderMsg {
    /// Encode this picture (reusing the vector of identical content if there is one).
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

/// What became of a picture the encoder was given.
#[derive(Debug)]
pub enum Outcome {
    /// Its entry and unit vector.
    Encoded {
        /// [`crate::index::picture_key`] of its path, computed when the scan found it.
        key: u64,
        /// What the index keeps of it (no source: a camera labels its frames).
        entry: Entry,
        /// Its unit vector.
        vector: Vec<f32>,
        /// False when the vector was reused from a picture with the same content.
        encoded: bool,
    },
    /// It could not be encoded.
    Failed {
        /// The picture.
        path: PathBuf,
        /// Why.
        error: DeviceError,
    },
}

impl Outcome {
    fn path(&self) -> &Path {
        match self {
            Outcome::Encoded { entry, .. } => &entry.path,
            Outcome::Failed { path, .. } => path,
        }
    }
}

/// A camera whose folder's pictures go to its actor.
#[derive(Clone)]
pub struct CameraRoute {
    /// The camera's folder.
    pub folder: PathBuf,
    /// The camera's name.
    pub name: String,
    /// Its actor.
    pub actor: ActorRef<CameraMsg>,
}

/// Where results go: the camera whose folder holds the picture, else the index.
#[derive(Clone)]
pub struct Destinations {
    /// The index actor.
    pub index: ActorRef<IndexMsg>,
    /// The cameras.
    pub cameras: Vec<CameraRoute>,
}

impl Destinations {
    /// Hands one result on. A camera that has stopped (the device is shutting down) cannot
    /// judge its frame: the frame is then indexed as a frame of that camera.
    pub fn send(&self, outcome: Outcome) {
        let camera = self
            .cameras
            .iter()
            .find(|c| outcome.path().starts_with(&c.folder));
        let outcome = match camera {
            None => outcome,
            Some(camera) => match camera.actor.cast(CameraMsg::Picture(outcome)) {
                Ok(()) => return,
                Err(MessagingErr::SendErr(CameraMsg::Picture(mut outcome))) => {
                    if let Outcome::Encoded { entry, .. } = &mut outcome {
                        crate::camera::frames::label(entry, &camera.name);
                    }
                    outcome
                }
                Err(_) => return,
            },
        };
        let _ = self.index.cast(IndexMsg::Picture(outcome));
    }
}

/// Arguments of the image encoder.
pub struct ImageEncoderArgs {
    /// The loaded image tower (its batch is the number of pictures encoded per run) and the
    /// model's preprocessing; or why the model did not load, which every picture then fails
    /// with (the device still answers searches from the index it has).
    pub image: Result<(ImageTower, PreprocessCfg), String>,
    /// Decoder bounds.
    pub limits: DecodeLimits,
    /// Batches encoded at once.
    pub workers: usize,
    /// Scheduling of the encoding threads.
    pub priority: Priority,
    /// Larger files are skipped without being read.
    pub max_file_bytes: u64,
    /// Where vectors of identical content are looked up.
    pub catalog: CatalogReader,
    /// Where results go.
    pub destinations: Destinations,
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
        let batch = state
            .args
            .image
            .as_ref()
            .map_or(1, |(tower, _)| tower.batch());
        if state.pending.len() >= batch {
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
    let image = state.args.image.clone();
    let limits = state.args.limits;
    let max_file_bytes = state.args.max_file_bytes;
    let catalog = state.args.catalog.clone();
    let to = state.args.destinations.clone();
    let threads = state.threads.clone();
    tokio::spawn(async move {
        let read_paths: Vec<PathBuf> = group.iter().map(|(seen, _)| seen.path.clone()).collect();
        // Reading, hashing and the reuse lookup on a blocking thread.
        let read = tokio::task::spawn_blocking(move || {
            group
                .into_iter()
                .map(|(seen, reuse)| {
                    let path = seen.path.clone();
                    (path, read_or_reuse(seen, reuse, max_file_bytes, &catalog))
                })
                .collect::<Vec<_>>()
        })
        .await;
        let mut to_encode = Vec::new();
        match read {
            Ok(read) => {
                for (path, read) in read {
                    match read {
                        Ok(Read::Reused(outcome)) => to.send(outcome),
                        Ok(Read::Bytes(picture)) => to_encode.push(picture),
                        Err(error) => to.send(Outcome::Failed { path, error }),
                    }
                }
            }
            Err(e) => {
                for path in read_paths {
                    let error = DeviceError::Actor(format!("reader crashed: {e}"));
                    to.send(Outcome::Failed { path, error });
                }
            }
        }
        if !to_encode.is_empty() {
            let paths: Vec<PathBuf> = to_encode.iter().map(|p| p.seen.path.clone()).collect();
            let (tower, preprocess) = match image {
                Ok(image) => image,
                Err(reason) => {
                    for path in paths {
                        let error =
                            DeviceError::Invalid(format!("the image tower did not load: {reason}"));
                        to.send(Outcome::Failed { path, error });
                    }
                    drop(permit);
                    return;
                }
            };
            // Decoding and inference on the encoder's own low-priority threads.
            match threads
                .run(move || encode_group(to_encode, &tower, &preprocess, limits))
                .await
            {
                Ok(results) => results.into_iter().for_each(|r| to.send(r)),
                Err(e) => {
                    for path in paths {
                        let error = DeviceError::Actor(format!("encoder crashed: {e}"));
                        to.send(Outcome::Failed { path, error });
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
    /// A vector for this content exists already (renamed, moved, copied).
    Reused(Outcome),
    /// The picture needs encoding.
    Bytes(Picture),
}

/// Reads and hashes the file and reuses the vector of a picture with the same content if the
/// catalog has one. Blocking.
fn read_or_reuse(
    seen: FileSeen,
    reuse: bool,
    max_file_bytes: u64,
    catalog: &CatalogReader,
) -> Result<Read, DeviceError> {
    if seen.size > max_file_bytes {
        return Err(DeviceError::Decode(format!(
            "file of {} bytes is larger than the limit of {max_file_bytes}",
            seen.size
        )));
    }
    let bytes = std::fs::read(&seen.path).map_err(|e| DeviceError::io(&seen.path, e))?;
    let hash: [u8; 32] = Sha256::digest(&bytes).into();
    let reused = if reuse { catalog.reuse(&hash) } else { None };
    if let Some((old, vector)) = reused {
        debug!(path = %seen.path.display(), from = %old.path.display(), "same content already encoded; vector reused");
        let entry = Entry {
            path: seen.path,
            size: bytes.len() as u64,
            mtime_ns: seen.mtime_ns,
            hash,
            source: Box::default(),
            ..old
        };
        return Ok(Read::Reused(Outcome::Encoded {
            key: seen.key,
            entry,
            vector,
            encoded: false,
        }));
    }
    Ok(Read::Bytes(Picture { seen, bytes, hash }))
}

/// Decodes and preprocesses each picture, then encodes those that decoded in batches of the
/// tower's batch (on an encoder thread). A picture that fails to decode is reported alone; if a
/// batch fails, its pictures are encoded one at a time so that the error is the right one's.
fn encode_group(
    group: Vec<Picture>,
    tower: &ImageTower,
    preprocess: &PreprocessCfg,
    limits: DecodeLimits,
) -> Vec<Outcome> {
    let started = std::time::Instant::now();
    let mut results = Vec::with_capacity(group.len());
    let mut decoded = Vec::with_capacity(group.len());
    for Picture { seen, bytes, hash } in group {
        // One parse of the EXIF block: the orientation for the decoder, the capture time.
        let exif = Exif::read(&bytes);
        // Large JPEGs are decoded at a reduced scale (DCT scaling); width and height are the
        // full ones.
        match preprocess.picture_oriented(&bytes, limits, exif.orientation) {
            Ok((tensor, (width, height))) => {
                let entry = Entry {
                    path: seen.path,
                    size: bytes.len() as u64,
                    mtime_ns: seen.mtime_ns,
                    hash,
                    width,
                    height,
                    taken_s: exif.taken_s.unwrap_or(seen.mtime_ns / 1_000_000_000),
                    source: Box::default(),
                };
                decoded.push(((seen.key, entry), tensor));
            }
            Err(error) => results.push(Outcome::Failed {
                path: seen.path,
                error,
            }),
        }
    }
    let decoding = started.elapsed();
    let (pictures, tensors): (Vec<(u64, Entry)>, Vec<Vec<f32>>) = decoded.into_iter().unzip();
    let batched = if tensors.len() > 1 {
        tower.encode_batch(&tensors).ok()
    } else {
        None
    };
    let encoded = |(key, entry): (u64, Entry), vector: Result<Vec<f32>, DeviceError>| match vector {
        Ok(vector) => Outcome::Encoded {
            key,
            entry,
            vector,
            encoded: true,
        },
        Err(error) => Outcome::Failed {
            path: entry.path,
            error,
        },
    };
    match batched {
        Some(vectors) => results.extend(
            pictures
                .into_iter()
                .zip(vectors)
                .map(|(picture, v)| encoded(picture, Ok(v))),
        ),
        None => {
            for (picture, tensor) in pictures.into_iter().zip(tensors) {
                results.push(encoded(picture, tower.encode(tensor)));
            }
        }
    }
    debug!(pictures = results.len(), ?decoding, total = ?started.elapsed(), "encoded");
    results
}
