//! [`TextEncoderActor`]: turns encode requests into text vectors.
//!
//! Every request is validated (frame, protocol version, text, reply topic, model); a request
//! whose reply topic is known gets an error reply, anything else is logged and dropped. Texts
//! are encoded `workers` at a time on blocking threads; recent texts come from an LRU cache.

use std::num::NonZeroUsize;
use std::sync::Arc;

use edgeclip_link::LinkMsg;
use edgeclip_messages::wire::{self, CloudFailure, EncodeReply, EncodeRequest, ErrorCode, Received, ReplyBody, TextVector};
use lru::LruCache;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::encode::TextTower;
use crate::tokenize::ClipTokenizer;

/// Messages of the text encoder.
pub enum TextEncoderMsg {
    /// A payload from the encode topic.
    Request(Vec<u8>),
    /// A worker finished a text.
    Encoded {
        /// Request being answered.
        request_id: u64,
        /// Where the reply goes.
        reply_to: String,
        /// The text (cache key).
        text: String,
        /// The vector, or why not.
        result: Result<Vec<f32>, String>,
    },
}

/// Arguments of the text encoder.
pub struct TextEncoderArgs {
    /// The text tower.
    pub tower: TextTower,
    /// The tokenizer.
    pub tokenizer: Arc<ClipTokenizer>,
    /// Model id served.
    pub model: String,
    /// Texts encoded at once.
    pub workers: usize,
    /// Cache size (0 disables).
    pub cache_entries: usize,
    /// Longest text.
    pub max_text_bytes: usize,
    /// Largest request payload.
    pub max_request_bytes: usize,
    /// The MQTT link.
    pub link: ActorRef<LinkMsg>,
}

/// State of the text encoder.
pub struct TextEncoderState {
    args: TextEncoderArgs,
    cache: Option<LruCache<String, Vec<f32>>>,
    slots: Arc<Semaphore>,
}

/// The text encoder actor.
pub struct TextEncoderActor;

impl Actor for TextEncoderActor {
    type Msg = TextEncoderMsg;
    type State = TextEncoderState;
    type Arguments = TextEncoderArgs;

    async fn pre_start(&self, _myself: ActorRef<TextEncoderMsg>, args: TextEncoderArgs) -> Result<TextEncoderState, ActorProcessingErr> {
        let cache = NonZeroUsize::new(args.cache_entries).map(LruCache::new);
        let slots = Arc::new(Semaphore::new(args.workers.max(1)));
        Ok(TextEncoderState { args, cache, slots })
    }

    async fn handle(&self, myself: ActorRef<TextEncoderMsg>, msg: TextEncoderMsg, state: &mut TextEncoderState) -> Result<(), ActorProcessingErr> {
        match msg {
            TextEncoderMsg::Request(bytes) => on_request(&myself, state, &bytes).await?,
            TextEncoderMsg::Encoded { request_id, reply_to, text, result } => {
                let body = match result {
                    Ok(vector) => {
                        if let Some(cache) = &mut state.cache {
                            cache.put(text, vector.clone());
                        }
                        ReplyBody::Vector(TextVector { model: state.args.model.clone(), vector })
                    }
                    Err(message) => ReplyBody::Error(CloudFailure { code: ErrorCode::Internal, message }),
                };
                reply(state, request_id, &reply_to, body);
            }
        }
        Ok(())
    }
}

async fn on_request(myself: &ActorRef<TextEncoderMsg>, state: &mut TextEncoderState, bytes: &[u8]) -> Result<(), ActorProcessingErr> {
    let request = match Received::<EncodeRequest>::decode(bytes, state.args.max_request_bytes) {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "malformed encode request dropped (no reply topic can be trusted)");
            return Ok(());
        }
    };
    let r = request.get();
    let request_id = r.request_id.to_native();
    if let Err(e) = edgeclip_messages::topics::validate_reply_topic(r.reply_to.as_str()) {
        warn!(error = %e, "encode request with an unusable reply topic dropped");
        return Ok(());
    }
    let reply_to = r.reply_to.to_string();
    if let Err(e) = r.validate(state.args.max_text_bytes) {
        reply(state, request_id, &reply_to, ReplyBody::Error(CloudFailure { code: ErrorCode::BadRequest, message: e.to_string() }));
        return Ok(());
    }
    if r.model.as_str() != state.args.model {
        let message = format!("this cloud serves model {}, the device's index was built with {}", state.args.model, r.model);
        reply(state, request_id, &reply_to, ReplyBody::Error(CloudFailure { code: ErrorCode::ModelMismatch, message }));
        return Ok(());
    }
    let text = r.text.to_string();
    if let Some(vector) = state.cache.as_mut().and_then(|c| c.get(&text)).cloned() {
        debug!(%text, "cache hit");
        reply(state, request_id, &reply_to, ReplyBody::Vector(TextVector { model: state.args.model.clone(), vector }));
        return Ok(());
    }
    let permit = state.slots.clone().acquire_owned().await?;
    let (tower, tokenizer, me) = (state.args.tower.clone(), state.args.tokenizer.clone(), myself.clone());
    tokio::spawn(async move {
        let input = text.clone();
        let work = tokio::task::spawn_blocking(move || {
            let ids = tokenizer.encode(&input)?;
            tower.encode(&ids)
        })
        .await;
        let result = match work {
            Ok(Ok(v)) => Ok(v),
            Ok(Err(e)) => Err(e.to_string()),
            Err(join) => Err(format!("encoder crashed: {join}")),
        };
        drop(permit);
        let _ = me.cast(TextEncoderMsg::Encoded { request_id, reply_to, text, result });
    });
    Ok(())
}

fn reply(state: &TextEncoderState, request_id: u64, reply_to: &str, body: ReplyBody) {
    match wire::encode(&EncodeReply { request_id, body }) {
        Ok(frame) => edgeclip_link::publish(&state.args.link, reply_to.to_string(), frame, false),
        Err(e) => warn!(error = %e, "reply not serialisable"),
    }
}
