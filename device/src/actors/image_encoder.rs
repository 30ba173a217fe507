//! [`ImageEncoderActor`]: decodes, preprocesses and encodes pictures, `workers` at a time,
//! on blocking threads (never on the async threads), and hands the vectors to the index.

use std::sync::Arc;
use std::time::Duration;

use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tokio::sync::Semaphore;
use tracing::debug;

use super::index::IndexMsg;
use crate::encode::ImageTower;
use crate::index::Entry;
use crate::preprocess::{decode_file, DecodeLimits, PreprocessCfg};

/// Messages of the image encoder.
pub enum ImageEncoderMsg {
    /// Encode this picture and give the result to the index.
    Encode(Entry),
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
    /// Where results go.
    pub index: ActorRef<IndexMsg>,
}

/// State of the image encoder.
pub struct ImageEncoderState {
    args: ImageEncoderArgs,
    slots: Arc<Semaphore>,
}

/// The image encoder actor.
pub struct ImageEncoderActor;

impl Actor for ImageEncoderActor {
    type Msg = ImageEncoderMsg;
    type State = ImageEncoderState;
    type Arguments = ImageEncoderArgs;

    async fn pre_start(&self, _myself: ActorRef<ImageEncoderMsg>, args: ImageEncoderArgs) -> Result<ImageEncoderState, ActorProcessingErr> {
        let slots = Arc::new(Semaphore::new(args.workers.max(1)));
        Ok(ImageEncoderState { args, slots })
    }

    async fn handle(&self, _myself: ActorRef<ImageEncoderMsg>, msg: ImageEncoderMsg, state: &mut ImageEncoderState) -> Result<(), ActorProcessingErr> {
        match msg {
            ImageEncoderMsg::Encode(entry) => {
                // Waiting for a free worker here is the backpressure: further pictures stay in
                // the mailbox instead of piling up as decoded images in memory.
                let permit = state.slots.clone().acquire_owned().await?;
                let tower = state.args.tower.clone();
                let preprocess = state.args.preprocess.clone();
                let limits = state.args.limits;
                let index = state.args.index.clone();
                tokio::spawn(async move {
                    let path = entry.path.clone();
                    let work = tokio::task::spawn_blocking(move || {
                        let started = std::time::Instant::now();
                        let img = decode_file(&path, limits)?;
                        let decoded = started.elapsed();
                        let vector = tower.encode(preprocess.tensor(&img))?;
                        debug!(path = %path.display(), ?decoded, total = ?started.elapsed(), "encoded");
                        Ok::<_, crate::error::DeviceError>(vector)
                    })
                    .await;
                    let msg = match work {
                        Ok(Ok(vector)) => IndexMsg::Insert { entry, vector },
                        Ok(Err(e)) => IndexMsg::Failed { path: entry.path, error: e.to_string() },
                        Err(join) => IndexMsg::Failed { path: entry.path, error: format!("encoder crashed: {join}") },
                    };
                    let _ = index.cast(msg);
                    drop(permit);
                });
            }
            ImageEncoderMsg::Drain(timeout, reply) => {
                // Messages before this one are handled already; wait for the running ones.
                let all = state.args.workers.max(1) as u32;
                let _ = tokio::time::timeout(timeout, state.slots.acquire_many(all)).await;
                let _ = reply.send(());
            }
        }
        Ok(())
    }
}
