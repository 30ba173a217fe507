//! [`TextEncoderActor`]: turns encode requests into text vectors (method A), and rank
//! requests into the best ids of a chunk of the device's vectors (method B).
//!
//! Every request is validated (frame, protocol version, text, reply topic, model, language); a
//! request whose reply topic is known gets an error reply, anything else is logged and dropped.
//! Which of the worker's text towers encodes it is [`crate::towers::TowerSet::pick`]'s rule
//! (the request's embedding space, then its language); a request of a space the worker does
//! not serve gets [`ErrorCode::ModelMismatch`]. The answer names the model the request named
//! (the device ranks a vector by the index of that id). Which texts to encode, and for whom,
//! is [`Encodings`]' rule, keyed by [`TextKey`] (tower, language prefix, text): cache, one
//! encoding per key, at most `workers` at once, the per-requester
//! [`Limits`](crate::limits::Limits); refusals are answered with [`ErrorCode::Busy`]. The
//! actor only turns messages into calls: an encoding runs on a blocking thread and comes back
//! as [`TextEncoderMsg::Encoded`], and the chunks of server-ranked searches are ranked on a
//! blocking thread too (one ranking at a time), so the mailbox never waits.

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

use crate::encodings::{Encodings, Submitted};
use crate::error::CloudError;
use crate::limits::LimitsConfig;
use crate::model::Towers;

/// What a text's vector depends on, the text encoder's cache key: the text tower, the
/// language as that tower uses it (NLLB's FLORES-200 prefix; `None` for towers that ignore
/// it), and the text.
#[derive(Debug, Clone, PartialEq, Eq, Hash)]
pub struct TextKey {
    /// Index of the tower among the worker's.
    pub tower: usize,
    /// The language prefix the tower writes before the text.
    pub prefix: Option<String>,
    /// The search text as received.
    pub text: String,
}

/// What a text is encoded for.
pub enum Job {
    /// Method A: reply with the text vector.
    Vector {
        /// Request being answered.
        request_id: u64,
        /// Where the reply goes.
        reply_to: String,
        /// The model id the request named, which the reply names.
        model: String,
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
        /// The embedding space (model id) the vector must be in.
        model: String,
        /// The text.
        text: String,
        /// Its language, if given.
        lang: Option<String>,
        /// What it is encoded for.
        job: Job,
    },
    /// A worker finished a text.
    Encoded {
        /// The text (cache key).
        key: TextKey,
        /// The vector, or why not.
        result: Result<Vec<f32>, CloudError>,
    },
}
/// Arguments of the text encoder.
pub struct TextEncoderArgs {
    /// The worker's text towers.
    pub towers: Arc<Towers>,
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
    encodings: Encodings<TextKey, Job>,
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
                if let Some((key, job)) = accept(state, &bytes) {
                    submit(&myself, state, key, job);
                }
            }
            TextEncoderMsg::Encode {
                model,
                text,
                lang,
                job,
            } => match state.args.towers.set.pick(&model, lang.as_deref()) {
                Ok(choice) => {
                    let key = TextKey {
                        tower: choice.tower,
                        prefix: choice.prefix,
                        text,
                    };
                    submit(&myself, state, key, job);
                }
                Err(message) => {
                    let failure = CloudFailure {
                        code: ErrorCode::ModelMismatch,
                        message,
                    };
                    answer(state, vec![job], Err(failure));
                }
            },
            TextEncoderMsg::Encoded { key, result } => {
                let done = state
                    .encodings
                    .finished(&key, result.as_ref().ok().map(Vec::as_slice));
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

/// The tower for a request of `model` in `lang`, as the cache key of `text`, or the failure.
fn choose(
    state: &TextEncoderState,
    model: &str,
    lang: Option<&str>,
    text: &str,
) -> Result<TextKey, CloudFailure> {
    let choice = state
        .args
        .towers
        .set
        .pick(model, lang)
        .map_err(|message| CloudFailure {
            code: ErrorCode::ModelMismatch,
            message,
        })?;
    Ok(TextKey {
        tower: choice.tower,
        prefix: choice.prefix,
        text: text.to_string(),
    })
}

/// Validates a request; answers the invalid ones it can, and returns the cache key and the job
/// of the valid ones.
fn accept(state: &mut TextEncoderState, bytes: &[u8]) -> Option<(TextKey, Job)> {
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
            let lang = r.lang.as_ref().map(|l| l.as_str());
            let checked = match r.validate(state.args.max_text_bytes, state.args.max_rank_vectors) {
                Err(e) => fail(ErrorCode::BadRequest, e.to_string()),
                Ok(()) => choose(state, r.model.as_str(), lang, r.text.as_str()),
            };
            let checked = checked.and_then(|key| match r.chunk.to_native() {
                // one search, however many chunks: only its first chunk counts
                0 => state
                    .encodings
                    .admit(requester_of(r.reply_to.as_str()), Instant::now())
                    .map(|()| key)
                    .map_err(busy),
                _ => Ok(key),
            });
            match checked {
                Ok(key) => Some((key, Job::Rank(Box::new(request)))),
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
            let lang = r.lang.as_ref().map(|l| l.as_str());
            let checked = match r.validate(state.args.max_text_bytes) {
                Err(e) => fail(ErrorCode::BadRequest, e.to_string()),
                Ok(()) => choose(state, r.model.as_str(), lang, r.text.as_str()),
            };
            let checked = checked.and_then(|key| {
                state
                    .encodings
                    .admit(requester_of(&reply_to), Instant::now())
                    .map(|()| key)
                    .map_err(busy)
            });
            match checked {
                Ok(key) => Some((
                    key,
                    Job::Vector {
                        request_id,
                        reply_to,
                        model: r.model.to_string(),
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

/// Hands a job to the engine: answers it from the cache or with a refusal, starts an
/// encoding, or leaves it waiting.
fn submit(myself: &ActorRef<TextEncoderMsg>, state: &mut TextEncoderState, key: TextKey, job: Job) {
    let requester = job.requester().to_string();
    match state.encodings.submit(key, &requester, job, Instant::now()) {
        Submitted::Cached(job, vector) => {
            debug!("cache hit");
            answer(state, vec![job], Ok(vector));
        }
        Submitted::Refused(job, refusal) => answer(state, vec![job], Err(busy(refusal))),
        Submitted::Encode(key) => start_encoding(myself, state, key),
        Submitted::Waiting => {}
    }
}

/// Cleans, tokenises and encodes a text with its tower on a blocking thread; the result comes
/// back as `Encoded`.
fn start_encoding(myself: &ActorRef<TextEncoderMsg>, state: &TextEncoderState, key: TextKey) {
    let (towers, me) = (state.args.towers.clone(), myself.clone());
    tokio::spawn(async move {
        let input = key.clone();
        let work = tokio::task::spawn_blocking(move || match towers.loaded.get(input.tower) {
            Some(tower) => tower.encode(&input.text, input.prefix.as_deref()),
            None => Err(CloudError::Inference(format!(
                "no text tower {}",
                input.tower
            ))),
        })
        .await;
        let result = work.unwrap_or_else(|join| Err(CloudError::EncoderCrashed(join)));
        let _ = me.cast(TextEncoderMsg::Encoded { key, result });
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
                model,
            } => {
                let body = match &result {
                    Ok(vector) => ReplyBody::Vector(TextVector {
                        model,
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
    let link = state.args.link.clone();
    let ranking = state.ranking.clone();
    tokio::spawn(async move {
        let Ok(_turn) = ranking.acquire_owned().await else {
            return;
        };
        let ranked = tokio::task::spawn_blocking(move || rank_chunks(&link, chunks, &result));
        if let Err(e) = ranked.await {
            warn!(error = %e, "ranking crashed; its chunks stay unanswered");
        }
    });
}

/// Ranks each chunk against the text vector (or answers the failure) and publishes the replies,
/// each naming the model its request named.
fn rank_chunks(
    link: &ActorRef<LinkMsg>,
    chunks: Vec<Received<RankRequest>>,
    result: &Result<Vec<f32>, CloudFailure>,
) {
    for request in chunks {
        let r = request.get();
        let body = match result {
            Ok(query) if query.len() == r.dim.to_native() as usize => {
                let (ids, scores) = crate::rank::rank_chunk(query, r);
                RankBody::Ranked(RankedIds {
                    model: r.model.to_string(),
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
