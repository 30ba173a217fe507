//! [`TextEncoderActor`]: turns encode requests into text vectors (method A), and rank
//! requests into the best ids of a chunk of the device's vectors (method B).
//!
//! Every request is validated (frame, protocol version, text, reply topic, model); a request
//! whose reply topic is known gets an error reply, anything else is logged and dropped. Which
//! texts to encode, and for whom, is [`Encodings`]' rule (cache, one encoding per text, at most
//! `workers` at once, the per-requester [`Limits`](crate::limits::Limits)); refusals are
//! answered with [`ErrorCode::Busy`]. The actor only turns messages into calls: an encoding
//! runs on a blocking thread and comes back as [`TextEncoderMsg::Encoded`], and the chunks of
//! server-ranked searches are ranked on a blocking thread too (one ranking at a time, as when
//! the handler ranked them), so the mailbox never waits.

use std::sync::Arc;
use std::time::Instant;

use bytes::Bytes;
use edgeclip_link::LinkMsg;
use edgeclip_messages::wire::{
    self, CloudFailure, EncodeReply, EncodeRequest, ErrorCode, Kind, RankBody, RankReply,
    RankRequest, RankedIds, Received, ReplyBody, TextVector,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tokio::sync::Semaphore;
use tracing::{debug, warn};

use crate::encode::TextTower;
use crate::encodings::{Encodings, Submitted};
use crate::error::CloudError;
use crate::limits::LimitsConfig;
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
    /// For another actor of this worker (a fleet search): hand it the vector or the failure.
    InProcess(Box<dyn FnOnce(Result<Vec<f32>, CloudFailure>) + Send>),
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
    Request(Bytes),
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
        result: Result<Vec<f32>, CloudError>,
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
    encodings: Encodings<Job>,
    /// One ranking of server-ranked chunks at a time: ranking takes at most one core beside
    /// the `workers` encodings.
    ranking: Arc<Semaphore>,
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
        let encodings = Encodings::new(args.workers, args.cache_entries, args.limits.clone());
        Ok(TextEncoderState {
            args,
            encodings,
            ranking: Arc::new(Semaphore::new(1)),
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
                    submit(&myself, state, text, job);
                }
            }
            TextEncoderMsg::Encode { text, job } => submit(&myself, state, text, job),
            TextEncoderMsg::Encoded { text, result } => {
                let done = state
                    .encodings
                    .finished(&text, result.as_ref().ok().map(Vec::as_slice));
                if let Some(next) = done.next {
                    start_encoding(&myself, state, next);
                }
                let result = result.map_err(|e| CloudFailure {
                    code: ErrorCode::Internal,
                    message: e.to_string(),
                });
                answer(state, done.jobs, result);
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
                    .encodings
                    .admit(requester_of(r.reply_to.as_str()), Instant::now())
                    .map_err(busy),
                _ => Ok(()),
            });
            let text = r.text.to_string();
            match checked {
                Ok(()) => Some((text, Job::Rank(Box::new(request)))),
                Err(failure) => {
                    reply_rank(
                        &state.args.link,
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
                    .encodings
                    .admit(requester_of(&reply_to), Instant::now())
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
                    reply(
                        &state.args.link,
                        request_id,
                        &reply_to,
                        ReplyBody::Error(failure),
                    );
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

/// Hands a job to the engine: answers it from the cache or with a refusal, starts an
/// encoding, or leaves it waiting.
fn submit(myself: &ActorRef<TextEncoderMsg>, state: &mut TextEncoderState, text: String, job: Job) {
    let requester = job.requester().to_string();
    match state
        .encodings
        .submit(text, &requester, job, Instant::now())
    {
        Submitted::Cached(job, vector) => {
            debug!("cache hit");
            answer(state, vec![job], Ok(vector));
        }
        Submitted::Refused(job, refusal) => answer(state, vec![job], Err(busy(refusal))),
        Submitted::Encode(text) => start_encoding(myself, state, text),
        Submitted::Waiting => {}
    }
}

/// Tokenises and encodes `text` on a blocking thread; the result comes back as `Encoded`.
fn start_encoding(myself: &ActorRef<TextEncoderMsg>, state: &TextEncoderState, text: String) {
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
        let result = work.unwrap_or_else(|join| Err(CloudError::EncoderCrashed(join)));
        let _ = me.cast(TextEncoderMsg::Encoded { text, result });
    });
}

/// Sends the answers of the jobs that waited for one text: the vector (method A), the
/// vector to another actor (fleet), the chunks' rankings (method B, on a blocking thread, one
/// ranking at a time).
fn answer(state: &TextEncoderState, jobs: Vec<Job>, result: Result<Vec<f32>, CloudFailure>) {
    let mut chunks = Vec::new();
    for job in jobs {
        match job {
            Job::Vector {
                request_id,
                reply_to,
            } => {
                let body = match &result {
                    Ok(vector) => ReplyBody::Vector(TextVector {
                        model: state.args.model.clone(),
                        vector: vector.clone(),
                    }),
                    Err(failure) => ReplyBody::Error(failure.clone()),
                };
                reply(&state.args.link, request_id, &reply_to, body);
            }
            Job::Rank(request) => chunks.push(*request),
            Job::InProcess(deliver) => deliver(result.clone()),
        }
    }
    if chunks.is_empty() {
        return;
    }
    let (link, model) = (state.args.link.clone(), state.args.model.clone());
    let ranking = state.ranking.clone();
    tokio::spawn(async move {
        let Ok(_turn) = ranking.acquire_owned().await else {
            return;
        };
        let ranked =
            tokio::task::spawn_blocking(move || rank_chunks(&link, &model, chunks, &result));
        if let Err(e) = ranked.await {
            warn!(error = %e, "ranking crashed; its chunks stay unanswered");
        }
    });
}

/// Ranks each chunk against the text vector (or answers the failure) and publishes the replies.
fn rank_chunks(
    link: &ActorRef<LinkMsg>,
    model: &str,
    chunks: Vec<Received<RankRequest>>,
    result: &Result<Vec<f32>, CloudFailure>,
) {
    for request in chunks {
        let r = request.get();
        let body = match result {
            Ok(query) if query.len() == r.dim.to_native() as usize => {
                let (ids, scores) = crate::rank::rank_chunk(query, r);
                RankBody::Ranked(RankedIds {
                    model: model.to_string(),
                    ids,
                    scores,
                })
            }
            Ok(query) => RankBody::Error(CloudFailure {
                code: ErrorCode::ModelMismatch,
                message: format!(
                    "vectors of dimension {} cannot be ranked against a text vector of {}",
                    r.dim,
                    query.len()
                ),
            }),
            Err(failure) => RankBody::Error(failure.clone()),
        };
        reply_rank(
            link,
            r.request_id.to_native(),
            r.chunk.to_native(),
            r.reply_to.as_str(),
            body,
        );
    }
}

fn reply_rank(
    link: &ActorRef<LinkMsg>,
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
        Ok(frame) => edgeclip_link::publish(link, reply_to.to_string(), frame, false),
        Err(e) => warn!(error = %e, "reply not serialisable"),
    }
}

fn reply(link: &ActorRef<LinkMsg>, request_id: u64, reply_to: &str, body: ReplyBody) {
    match wire::encode(&EncodeReply { request_id, body }) {
        Ok(frame) => edgeclip_link::publish(link, reply_to.to_string(), frame, false),
        Err(e) => warn!(error = %e, "reply not serialisable"),
    }
}
