//! [`TextEncoderActor`]: turns encode requests into text vectors (method A), and rank
//! requests into the best ids of a chunk of the device's vectors (method B).
//!
//! Every request is validated (frame, protocol version, text, reply topic, model); a request
//! whose reply topic is known gets an error reply, anything else is logged and dropped. Texts
//! are encoded `workers` at a time on blocking threads; recent texts come from an LRU cache,
//! and a text already being encoded is not encoded twice (the chunks of a server-ranked search
//! all wait for one encoding). Each requester is bounded in rate and in texts being encoded
//! ([`Limits`]); refusals are answered with [`ErrorCode::Busy`].

use std::collections::HashMap;
use std::num::NonZeroUsize;
use std::sync::Arc;
use std::time::Instant;

use edgeclip_link::LinkMsg;
use edgeclip_messages::wire::{
    self, CloudFailure, EncodeReply, EncodeRequest, ErrorCode, Kind, RankBody, RankReply,
    RankRequest, RankedIds, Received, ReplyBody, TextVector,
};
use lru::LruCache;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::encode::TextTower;
use crate::limits::{Limits, LimitsConfig};
use crate::tokenize::ClipTokenizer;

/// What a text is encoded for.
pub enum Job {
    /// Method A: reply with the text vector.
    Vector {
        /// Request being answered.
        request_id: u64,
        /// Where the reply goes.
        reply_to: String,
    },
    /// Method B: rank this chunk of the device's vectors against the text.
    Rank(Box<Received<RankRequest>>),
    /// For another actor of this worker (a fleet search): hand it the vector or the error.
    InProcess(Box<dyn FnOnce(Result<Vec<f32>, String>) + Send>),
}

impl Job {
    /// Who the limits count this job against: the device of its reply topic, or "fleet" for
    /// a fleet search (bounded as one requester).
    fn requester(&self) -> &str {
        match self {
            Job::Vector { reply_to, .. } => requester_of(reply_to),
            Job::Rank(request) => requester_of(request.get().reply_to.as_str()),
            Job::InProcess(_) => "fleet",
        }
    }
}

/// Messages of the text encoder.
pub enum TextEncoderMsg {
    /// A payload from the encode or rank topic.
    Request(Vec<u8>),
    /// Encode a text already validated by another actor of this worker.
    Encode {
        /// The text.
        text: String,
        /// What it is encoded for.
        job: Job,
    },
    /// A worker finished a text.
    Encoded {
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
    /// Most vectors in one server-ranked chunk.
    pub max_rank_vectors: usize,
    /// Bounds per requester.
    pub limits: LimitsConfig,
    /// The MQTT link.
    pub link: ActorRef<LinkMsg>,
}

/// State of the text encoder.
pub struct TextEncoderState {
    args: TextEncoderArgs,
    cache: Option<LruCache<String, Vec<f32>>>,
    slots: Arc<Semaphore>,
    limits: Limits,
    /// Texts being encoded: who asked first (counted in flight) and every job waiting.
    pending: HashMap<String, (String, Vec<Job>)>,
}

/// The text encoder actor.
pub struct TextEncoderActor;

impl Actor for TextEncoderActor {
    type Msg = TextEncoderMsg;
    type State = TextEncoderState;
    type Arguments = TextEncoderArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<TextEncoderMsg>,
        args: TextEncoderArgs,
    ) -> Result<TextEncoderState, ActorProcessingErr> {
        let cache = NonZeroUsize::new(args.cache_entries).map(LruCache::new);
        let slots = Arc::new(Semaphore::new(args.workers.max(1)));
        let limits = Limits::new(args.limits.clone());
        Ok(TextEncoderState {
            args,
            cache,
            slots,
            limits,
            pending: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<TextEncoderMsg>,
        msg: TextEncoderMsg,
        state: &mut TextEncoderState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            TextEncoderMsg::Request(bytes) => {
                if let Some((text, job)) = accept(state, &bytes) {
                    encode(&myself, state, text, job).await?;
                }
            }
            TextEncoderMsg::Encode { text, job } => encode(&myself, state, text, job).await?,
            TextEncoderMsg::Encoded { text, result } => {
                let (requester, jobs) = state.pending.remove(&text).unwrap_or_default();
                state.limits.finish_encoding(&requester);
                if let (Ok(vector), Some(cache)) = (&result, &mut state.cache) {
                    cache.put(text, vector.clone());
                }
                let result = result.map_err(|message| CloudFailure {
                    code: ErrorCode::Internal,
                    message,
                });
                for job in jobs {
                    finish(state, job, result.clone());
                }
            }
        }
        Ok(())
    }
}

/// Validates a request; answers the invalid ones it can, and returns the text and the job of
/// the valid ones.
fn accept(state: &mut TextEncoderState, bytes: &[u8]) -> Option<(String, Job)> {
    let limit = state.args.max_request_bytes;
    let fail = |code, message: String| Err(CloudFailure { code, message });
    match Kind::of(bytes) {
        Some(Kind::RankRequest) => {
            let request = match Received::<RankRequest>::decode(bytes, limit) {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "malformed rank request dropped (no reply topic can be trusted)");
                    return None;
                }
            };
            let r = request.get();
            if edgeclip_messages::topics::validate_reply_topic(r.reply_to.as_str()).is_err() {
                warn!("rank request with an unusable reply topic dropped");
                return None;
            }
            let checked = match r.validate(state.args.max_text_bytes, state.args.max_rank_vectors) {
                Err(e) => fail(ErrorCode::BadRequest, e.to_string()),
                Ok(()) if r.model.as_str() != state.args.model => fail(
                    ErrorCode::ModelMismatch,
                    mismatch(&state.args.model, r.model.as_str()),
                ),
                Ok(()) => Ok(()),
            };
            let checked = checked.and_then(|()| match r.chunk.to_native() {
                // one search, however many chunks: only its first chunk counts
                0 => state
                    .limits
                    .admit_request(requester_of(r.reply_to.as_str()), Instant::now())
                    .map_err(busy),
                _ => Ok(()),
            });
            let text = r.text.to_string();
            match checked {
                Ok(()) => Some((text, Job::Rank(Box::new(request)))),
                Err(failure) => {
                    reply_rank(
                        state,
                        r.request_id.to_native(),
                        r.chunk.to_native(),
                        r.reply_to.as_str(),
                        RankBody::Error(failure),
                    );
                    None
                }
            }
        }
        _ => {
            let request = match Received::<EncodeRequest>::decode(bytes, limit) {
                Ok(r) => r,
                Err(e) => {
                    warn!(error = %e, "malformed encode request dropped (no reply topic can be trusted)");
                    return None;
                }
            };
            let r = request.get();
            let request_id = r.request_id.to_native();
            if let Err(e) = edgeclip_messages::topics::validate_reply_topic(r.reply_to.as_str()) {
                warn!(error = %e, "encode request with an unusable reply topic dropped");
                return None;
            }
            let reply_to = r.reply_to.to_string();
            let checked = match r.validate(state.args.max_text_bytes) {
                Err(e) => fail(ErrorCode::BadRequest, e.to_string()),
                Ok(()) if r.model.as_str() != state.args.model => fail(
                    ErrorCode::ModelMismatch,
                    mismatch(&state.args.model, r.model.as_str()),
                ),
                Ok(()) => state
                    .limits
                    .admit_request(requester_of(&reply_to), Instant::now())
                    .map_err(busy),
            };
            match checked {
                Ok(()) => Some((
                    r.text.to_string(),
                    Job::Vector {
                        request_id,
                        reply_to,
                    },
                )),
                Err(failure) => {
                    reply(state, request_id, &reply_to, ReplyBody::Error(failure));
                    None
                }
            }
        }
    }
}

/// The device a reply topic (`edgeclip/<device>/...`, validated) belongs to.
fn requester_of(reply_to: &str) -> &str {
    reply_to.split('/').nth(1).unwrap_or(reply_to)
}

fn busy(refusal: crate::limits::Refusal) -> CloudFailure {
    CloudFailure {
        code: ErrorCode::Busy,
        message: refusal.to_string(),
    }
}

fn mismatch(served: &str, asked: &str) -> String {
    format!("this cloud serves model {served}, the device's index was built with {asked}")
}

/// Answers from the cache, or encodes on a worker thread and comes back as `Encoded`.
async fn encode(
    myself: &ActorRef<TextEncoderMsg>,
    state: &mut TextEncoderState,
    text: String,
    job: Job,
) -> Result<(), ActorProcessingErr> {
    if let Some(vector) = state.cache.as_mut().and_then(|c| c.get(&text)).cloned() {
        debug!(%text, "cache hit");
        finish(state, job, Ok(vector));
        return Ok(());
    }
    if let Some((_, waiting)) = state.pending.get_mut(&text) {
        waiting.push(job);
        return Ok(());
    }
    let requester = job.requester().to_string();
    if let Err(refusal) = state.limits.start_encoding(&requester, Instant::now()) {
        finish(state, job, Err(busy(refusal)));
        return Ok(());
    }
    state.pending.insert(text.clone(), (requester, vec![job]));
    let permit = state.slots.clone().acquire_owned().await?;
    let (tower, tokenizer, me) = (
        state.args.tower.clone(),
        state.args.tokenizer.clone(),
        myself.clone(),
    );
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
        let _ = me.cast(TextEncoderMsg::Encoded { text, result });
    });
    Ok(())
}

/// Sends the answer of a job: the vector (method A) or the chunk's ranking (method B).
fn finish(state: &TextEncoderState, job: Job, result: Result<Vec<f32>, CloudFailure>) {
    let model = state.args.model.clone();
    match job {
        Job::Vector {
            request_id,
            reply_to,
        } => {
            let body = match result {
                Ok(vector) => ReplyBody::Vector(TextVector { model, vector }),
                Err(failure) => ReplyBody::Error(failure),
            };
            reply(state, request_id, &reply_to, body);
        }
        Job::Rank(request) => {
            let r = request.get();
            let body = match result {
                Ok(query) if query.len() == r.dim.to_native() as usize => {
                    let (ids, scores) = crate::rank::rank_chunk(&query, r);
                    RankBody::Ranked(RankedIds { model, ids, scores })
                }
                Ok(query) => RankBody::Error(CloudFailure {
                    code: ErrorCode::ModelMismatch,
                    message: format!(
                        "vectors of dimension {} cannot be ranked against a text vector of {}",
                        r.dim,
                        query.len()
                    ),
                }),
                Err(failure) => RankBody::Error(failure),
            };
            reply_rank(
                state,
                r.request_id.to_native(),
                r.chunk.to_native(),
                r.reply_to.as_str(),
                body,
            );
        }
        Job::InProcess(deliver) => deliver(result.map_err(|f| f.message)),
    }
}

fn reply_rank(
    state: &TextEncoderState,
    request_id: u64,
    chunk: u32,
    reply_to: &str,
    body: RankBody,
) {
    match wire::encode(&RankReply {
        request_id,
        chunk,
        body,
    }) {
        Ok(frame) => edgeclip_link::publish(&state.args.link, reply_to.to_string(), frame, false),
        Err(e) => warn!(error = %e, "reply not serialisable"),
    }
}

fn reply(state: &TextEncoderState, request_id: u64, reply_to: &str, body: ReplyBody) {
    match wire::encode(&EncodeReply { request_id, body }) {
        Ok(frame) => edgeclip_link::publish(&state.args.link, reply_to.to_string(), frame, false),
        Err(e) => warn!(error = %e, "reply not serialisable"),
    }
}
