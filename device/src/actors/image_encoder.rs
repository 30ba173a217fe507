//! [`ImageEncoderActor`]: decodes, preprocesses and encodes pictures, `workers` at a time,
//! on its own threads at low priority (`workers.rs`; never on the async threads), and hands the
//! vectors to the index.

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
}

/// Arguments of the image encoder.
pub struct ImageEncoderArgs {
    /// The loaded image tower.
    pub tower: ImageTower,
    /// Preprocessing of the model.
    pub preprocess: PreprocessCfg,
    /// Decoder bounds.
    pub limits: DecodeLimits,
    /// Pictures encoded at once.
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
}

/// The image encoder actor.
pub struct ImageEncoderActor;

impl Actor for ImageEncoderActor {
    type Msg = ImageEncoderMsg;
    type State = ImageEncoderState;
    type Arguments = ImageEncoderArgs;

    async fn pre_start(&self, _myself: ActorRef<ImageEncoderMsg>, args: ImageEncoderArgs) -> Result<ImageEncoderState, ActorProcessingErr> {
        let slots = Arc::new(Semaphore::new(args.workers.max(1)));
        let threads = Workers::start(args.workers, args.priority)?;
        Ok(ImageEncoderState { args, slots, threads })
    }

    async fn handle(&self, _myself: ActorRef<ImageEncoderMsg>, msg: ImageEncoderMsg, state: &mut ImageEncoderState) -> Result<(), ActorProcessingErr> {
        let (seen, reuse) = match msg {
            ImageEncoderMsg::Encode(seen) => (seen, true),
            ImageEncoderMsg::Reencode(seen) => (seen, false),
            ImageEncoderMsg::Drain(timeout, reply) => {
                // Messages before this one are handled already; wait for the running ones.
                let all = state.args.workers.max(1) as u32;
                let _ = tokio::time::timeout(timeout, state.slots.acquire_many(all)).await;
                let _ = reply.send(());
                return Ok(());
            }
        };
        // Waiting for a free worker here is the backpressure: further pictures stay in
        // the mailbox instead of piling up as decoded images in memory.
        let permit = state.slots.clone().acquire_owned().await?;
        let tower = state.args.tower.clone();
        let preprocess = state.args.preprocess.clone();
        let limits = state.args.limits;
        let max_file_bytes = state.args.max_file_bytes;
        let index = state.args.index.clone();
        let threads = state.threads.clone();
        tokio::spawn(async move {
            let path = seen.path.clone();
            let msg = match encode_or_reuse(seen, reuse, tower, preprocess, limits, max_file_bytes, &index, &threads).await {
                Ok((entry, vector, encoded)) => IndexMsg::Insert { entry, vector, encoded },
                Err(e) => IndexMsg::Failed { path, error: e.to_string() },
            };
            let _ = index.cast(msg);
            drop(permit);
        });
        Ok(())
    }
}

/// Reads and hashes the file; reuses the vector of a picture with the same content (renamed,
/// moved, copied) if the index has one, else decodes, preprocesses and encodes it. File and
/// model work run on blocking threads.
#[allow(clippy::too_many_arguments)]
async fn encode_or_reuse(
    seen: FileSeen,
    reuse: bool,
    tower: ImageTower,
    preprocess: PreprocessCfg,
    limits: DecodeLimits,
    max_file_bytes: u64,
    index: &ActorRef<IndexMsg>,
    threads: &Workers,
) -> Result<(Entry, Vec<f32>, bool), DeviceError> {
    if seen.size > max_file_bytes {
        return Err(DeviceError::Decode(format!("file of {} bytes is larger than the limit of {max_file_bytes}", seen.size)));
    }
    let path = seen.path.clone();
    let (bytes, hash) = tokio::task::spawn_blocking(move || {
        let bytes = std::fs::read(&path).map_err(|e| DeviceError::io(&path, e))?;
        let hash: [u8; 32] = Sha256::digest(&bytes).into();
        Ok::<_, DeviceError>((bytes, hash))
    })
    .await
    .map_err(|e| DeviceError::Actor(format!("reader crashed: {e}")))??;
    let reused = if reuse { ractor::call_t!(index, IndexMsg::Reuse, REUSE_TIMEOUT_MS, hash).ok().flatten() } else { None };
    if let Some((old, vector)) = reused {
        debug!(path = %seen.path.display(), from = %old.path.display(), "same content already encoded; vector reused");
        let entry = Entry { path: seen.path, size: bytes.len() as u64, mtime_ns: seen.mtime_ns, hash, ..old };
        return Ok((entry, vector, false));
    }
    // Decoding and inference on the encoder's own low-priority threads.
    let (entry, vector) = threads
        .run(move || encode_bytes(&seen, &bytes, hash, &tower, &preprocess, limits))
        .await
        .map_err(|e| DeviceError::Actor(format!("encoder crashed: {e}")))??;
    Ok((entry, vector, true))
}

/// How long the index may take to look up a content hash (in memory; this only guards
/// against a stuck actor).
const REUSE_TIMEOUT_MS: u64 = 10_000;

/// Decodes, preprocesses and encodes a picture read into memory (on a blocking thread).
fn encode_bytes(
    seen: &FileSeen,
    bytes: &[u8],
    hash: [u8; 32],
    tower: &ImageTower,
    preprocess: &PreprocessCfg,
    limits: DecodeLimits,
) -> Result<(Entry, Vec<f32>), DeviceError> {
    let started = std::time::Instant::now();
    // Large JPEGs are decoded at a reduced scale (DCT scaling); width and height are the full ones.
    let (tensor, (width, height)) = preprocess.picture(bytes, limits)?;
    let taken_s = crate::metadata::exif_capture_time(bytes).unwrap_or((seen.mtime_ns / 1_000_000_000) as i64);
    let decoded = started.elapsed();
    let vector = tower.encode(tensor)?;
    debug!(path = %seen.path.display(), ?decoded, total = ?started.elapsed(), "encoded");
    let entry = Entry {
        path: seen.path.clone(),
        size: bytes.len() as u64,
        mtime_ns: seen.mtime_ns,
        hash,
        width,
        height,
        taken_s,
        source: String::new(),
    };
    Ok((entry, vector))
}
