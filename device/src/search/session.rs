//! [`Session`]: the search coordinator's rules as a state machine, without IO, actors or clock
//! reads. Inputs (a search, a cloud reply, a fleet query, a timer, a result of the index side)
//! come in, with the current [`Instant`] where an answer's `took_ms` may count from or to it;
//! [`Effect`]s (publish, schedule a timer, hand work to the index side, answer) come out, for
//! the shell to carry out in order.
//!
//! A request the cloud has not answered after `cloud_retry` is sent once more, byte for byte
//! (same request id: encoding is idempotent, and whichever reply comes first is used; for a
//! server-ranked search only the chunks not yet answered). A cloud worker that dies holding
//! the request takes it with it: the broker does not hand a dead worker's in-flight messages
//! of a clean session to the other workers.
//!
//! Every search is answered exactly once ([`Effect::Answer`]): with its hits, or with an error
//! when the cloud refuses it or stays silent past `cloud_timeout`, or when the index side
//! refuses it or stays silent past its own timeout. Replies and results that come after the
//! answer are ignored.

use std::collections::{HashMap, HashSet};
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgeclip_messages::dashboard::{
    SearchError, SearchMode, SearchRequest, SearchResponse, SearchResults,
};
use edgeclip_messages::request_id::RequestIds;
use edgeclip_messages::topics;
use edgeclip_messages::wire::{
    self, ArchivedErrorCode, ArchivedRankBody, ArchivedReplyBody, ArchivedTextVector, EncodeReply,
    EncodeRequest, ErrorCode, FleetAnswer, FleetBody, FleetQuery, Kind, RankReply, RankRequest,
    Received,
};
use edgeclip_messages::{Filter, Hit, WireError};
use tracing::{info, warn};

use super::present;

/// How long the index side may take to rank, to find a picture's neighbours or to export
/// (it is in-process and fast; this only guards against a stuck index): a default for
/// [`SessionConfig::index_timeout`].
pub const INDEX_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the index side may take to group near-duplicates: O(n²) comparisons, bounded by
/// `search.max_duplicate_pictures` (5,000 pictures: ~12.5 million 512-d dot products, a few
/// seconds on a Raspberry Pi 4): a default for [`SessionConfig::duplicates_timeout`].
pub const DUPLICATES_TIMEOUT: Duration = Duration::from_secs(60);

/// What a [`Session`] is told once: the device, its limits and its timeouts.
#[derive(Debug, Clone)]
pub struct SessionConfig {
    /// Device id (names the reply, results and best-match topics).
    pub device_id: String,
    /// How long the cloud may take to answer a request.
    pub cloud_timeout: Duration,
    /// Send an unanswered request once more after this long (None: never).
    pub cloud_retry: Option<Duration>,
    /// How long the index side may take to rank, find neighbours or export.
    pub index_timeout: Duration,
    /// How long the index side may take to group near-duplicates.
    pub duplicates_timeout: Duration,
    /// Hits of a search that does not say.
    pub default_k: usize,
    /// Most hits of a search (and of a fleet query).
    pub max_k: usize,
    /// Longest search text.
    pub max_text_bytes: usize,
    /// Largest reply or fleet query accepted from the cloud.
    pub max_reply_bytes: usize,
    /// Who ranks when a search does not say.
    pub default_mode: SearchMode,
    /// Vectors per server-ranked chunk (each chunk must fit one MQTT message).
    pub server_chunk_vectors: usize,
    /// Most vectors one server-ranked search may send.
    pub max_server_vectors: usize,
    /// Most pictures a near-duplicate search may compare.
    pub max_duplicate_pictures: usize,
    /// Base URL of the device's HTTP endpoint (`http://host:port`), when it is on: hits get
    /// `<base>/thumb/<id>` as their thumbnail URL.
    pub thumb_base: Option<String>,
    /// Publish the best match's thumbnail bytes (`[homeassistant] image_bytes`): answers then
    /// come with an [`Effect::PublishThumbnail`].
    pub best_image: bool,
}

/// The models of the device's indexes, which the shell keeps up to date
/// ([`Session::set_models`]): the serving one is asked of the cloud; during a re-index, the
/// one being built is asked for when the cloud serves only that one.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct Models {
    /// Model of the complete index searches are answered from.
    pub serving: String,
    /// Model of the index being built, during a re-index.
    pub building: Option<String>,
}

/// One search (or fleet query) of a session, from its start to its answer; stable across the
/// new request id of a model fallback.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Hash, PartialOrd, Ord)]
pub struct SearchId(u64);

impl fmt::Display for SearchId {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        write!(f, "search {}", self.0)
    }
}

/// A timer the shell fires back through [`Session::fire`] after [`Effect::Schedule`]'s delay.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Timer {
    /// Send this request again if the cloud has not answered yet.
    Retry(u64),
    /// The cloud did not answer this request in time.
    Timeout(u64),
    /// The index side did not give this search's result in time.
    Index(SearchId),
}

/// A validated frame from the cloud that carries a text vector, ranked in place by the index
/// side (no copy, no deserialisation: see [`wire::vector_view`]): the reply to this device's
/// own encode request, or a fleet query (the vector of a fleet search, encoded once for every
/// device).
#[derive(Debug)]
pub enum Query {
    /// The cloud's reply to the device's encode request.
    Encoded(Received<EncodeReply>),
    /// A fleet search's vector.
    Fleet(Received<FleetQuery>),
}

impl Query {
    /// The text vector and its model, read in place (None if the reply holds an error).
    pub fn text_vector(&self) -> Option<&ArchivedTextVector> {
        match self {
            Query::Encoded(reply) => match &reply.get().body {
                ArchivedReplyBody::Vector(v) => Some(v),
                ArchivedReplyBody::Error(_) => None,
            },
            Query::Fleet(query) => Some(&query.get().vector),
        }
    }
}

/// The index side's ranking, for [`Effect::Rank`] and [`Effect::Like`].
#[derive(Debug, Clone, PartialEq)]
pub struct Ranking {
    /// Model id of the vectors compared.
    pub model: String,
    /// Best first, without thumbnail URLs (the session adds them).
    pub hits: Vec<Hit>,
    /// True when ranked by an index still being built (pictures may be missing).
    pub partial: bool,
}

/// The index side's near-duplicate groups, for [`Effect::Duplicates`].
#[derive(Debug, Clone, PartialEq)]
pub struct Groups {
    /// Model id of the vectors compared.
    pub model: String,
    /// The groups, largest first; each hit's score is its best cosine within its group.
    pub groups: Vec<Vec<Hit>>,
}

/// The index side's export for a server-ranked search ([`Effect::Export`]): ids are positions
/// in `pictures`.
#[derive(Debug, Clone, PartialEq)]
pub struct Exported {
    /// Model id of the vectors.
    pub model: String,
    /// Vector dimension.
    pub dim: usize,
    /// The picture of each id, as a hit without its score.
    pub pictures: Vec<Hit>,
    /// The vectors, int8-quantised, one chunk per rank request.
    pub chunks: Vec<ExportChunk>,
}

/// One chunk of an [`Exported`] index.
#[derive(Debug, Clone, PartialEq)]
pub struct ExportChunk {
    /// Ids of the chunk's vectors (positions in [`Exported::pictures`]).
    pub ids: Vec<u32>,
    /// Per-vector scale of the codes.
    pub scales: Vec<f32>,
    /// The vectors, `dim` int8 codes each.
    pub codes: Vec<i8>,
}

/// Why the index side gave no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexError {
    /// The index refused the work (no such picture, a vector of another model, too many
    /// pictures...); the reason is shown to the user as it is.
    Refused(String),
    /// The index side failed without an answer (its thread panicked, it is gone).
    NoAnswer(String),
    /// The index side did not answer within its timeout.
    TimedOut,
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexError::Refused(reason) => f.write_str(reason),
            IndexError::NoAnswer(e) => write!(f, "index did not answer: {e}"),
            IndexError::TimedOut => f.write_str("index did not answer: timeout"),
        }
    }
}

impl std::error::Error for IndexError {}

/// Why a search failed: its `Display` is the `error` of the answer, word for word what
/// dashboards and tests see.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The search payload could not be parsed.
    BadSearch(WireError),
    /// The cloud did not answer within this long.
    CloudTimeout(Duration),
    /// The cloud answered with an error.
    CloudRefused {
        /// The cloud's reason.
        code: ErrorCode,
        /// The cloud's message.
        message: String,
    },
    /// The cloud ranked a server-ranked chunk with another model than the exported vectors'.
    ForeignModel {
        /// The model the cloud used.
        cloud: String,
        /// The model of the device's vectors.
        device: String,
    },
    /// A server-ranked chunk's reply names a chunk or ids the search did not send, or its
    /// ids and scores differ in number.
    RankingDoesNotFit,
    /// The index side gave no result.
    Index(IndexError),
    /// A request could not be framed.
    Wire(WireError),
    /// A fleet query failed validation.
    BadFleetQuery(WireError),
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::BadSearch(e) => write!(f, "bad search: {e}"),
            Failure::CloudTimeout(timeout) => write!(
                f,
                "the cloud did not answer within {} ms (is edgeclip-cloud running and connected to the broker?)",
                timeout.as_millis()
            ),
            Failure::CloudRefused { code, message } => {
                write!(f, "the cloud refused the search ({code:?}): {message}")
            }
            Failure::ForeignModel { cloud, device } => write!(
                f,
                "the cloud ranked with model {cloud}, the device's index holds {device}"
            ),
            Failure::RankingDoesNotFit => {
                f.write_str("the cloud's ranking does not fit the search")
            }
            Failure::Index(e) => e.fmt(f),
            Failure::Wire(e) => e.fmt(f),
            Failure::BadFleetQuery(e) => write!(f, "bad fleet query: {e}"),
        }
    }
}

impl std::error::Error for Failure {}

/// What the shell must do, in the order given.
#[derive(Debug)]
pub enum Effect {
    /// Publish `frame` on `topic` (never blocking: a full queue drops it).
    Publish {
        /// The topic.
        topic: String,
        /// The payload: a wire frame, JSON or a URL.
        frame: Bytes,
        /// Retained.
        retain: bool,
    },
    /// Fire `timer` back through [`Session::fire`] after `after`.
    Schedule {
        /// The delay.
        after: Duration,
        /// What to fire.
        timer: Timer,
    },
    /// Rank the index against the text vector in `query` (by the index of the vector's model),
    /// off the actor's thread; the result comes back through [`Session::ranked`].
    Rank {
        /// The search the result belongs to.
        search: SearchId,
        /// The received frame holding the vector, ranked in place.
        query: Query,
        /// Hits wanted.
        k: usize,
        /// Which pictures may be returned.
        filter: Filter,
    },
    /// Rank the index against the vector of one of its pictures ("more like this"), off the
    /// actor's thread; the result comes back through [`Session::ranked`].
    Like {
        /// The search the result belongs to.
        search: SearchId,
        /// The indexed picture, by path or id.
        picture: String,
        /// Hits wanted.
        k: usize,
        /// Which pictures may be returned (the picture itself never is).
        filter: Filter,
    },
    /// Group near-duplicates among the pictures `filter` keeps, off the actor's thread; the
    /// result comes back through [`Session::grouped`].
    Duplicates {
        /// The search the result belongs to.
        search: SearchId,
        /// Least cosine between two pictures of a group.
        threshold: f32,
        /// Most groups.
        k: usize,
        /// Which pictures are compared.
        filter: Filter,
        /// Most pictures compared (refuse beyond).
        max: usize,
    },
    /// Export the pictures `filter` keeps, int8-quantised in chunks, for a server-ranked
    /// search, off the actor's thread; the result comes back through [`Session::exported`].
    Export {
        /// The search the result belongs to.
        search: SearchId,
        /// Which pictures.
        filter: Filter,
        /// Vectors per chunk.
        chunk_vectors: usize,
        /// Most vectors that may leave the device (refuse beyond).
        max_vectors: usize,
    },
    /// Read the picture at `path`, make its thumbnail and publish it retained on `topic`
    /// (the best match, with `best_image` on). A failure is only logged.
    PublishThumbnail {
        /// The picture.
        path: String,
        /// The topic (`edgeclip/<device>/best/image`).
        topic: String,
    },
    /// `search` is answered: hand `response` to its in-process caller, if it has one. It is
    /// already published on the results topic by the [`Effect::Publish`] before.
    Answer {
        /// The search answered.
        search: SearchId,
        /// The answer.
        response: SearchResponse,
    },
}

/// What an answer to a search needs, whatever it waits for.
#[derive(Debug)]
struct Answering {
    search: SearchId,
    /// The correlation id echoed in the answer.
    id: String,
    /// The text the answer names.
    text: String,
    /// What `took_ms` counts from.
    started: Instant,
}

/// A frame sent to the cloud, kept for the one retry.
#[derive(Debug)]
struct Sent {
    /// Chunk number (0 for an encode request).
    chunk: u32,
    topic: &'static str,
    frame: Bytes,
}

/// A search waiting for the cloud, by request id.
#[derive(Debug)]
struct Pending {
    answering: Answering,
    /// Model whose text vector was asked for.
    model: String,
    k: usize,
    filter: Filter,
    /// Set for a server-ranked search (method B).
    server: Option<ServerRanked>,
    /// The frames sent, kept until the retry (empty without `cloud_retry`).
    resend: Vec<Sent>,
}

/// A server-ranked search in flight: the chunks sent and the hits merged so far.
#[derive(Debug)]
struct ServerRanked {
    model: String,
    pictures: Vec<Hit>,
    chunks: u32,
    received: HashSet<u32>,
    hits: Vec<(u32, f32)>,
}

/// Work handed to the index side, by search.
#[derive(Debug)]
enum Work {
    /// A text search's vector or a "like" search: answered from the ranking.
    Rank(Answering),
    /// A duplicates search: answered from the groups.
    Group(Answering),
    /// A server-ranked search: its chunks go to the cloud once exported.
    Export {
        answering: Answering,
        request_id: u64,
        k: usize,
        filter: Filter,
    },
    /// A fleet query: the ranking goes back to the worker that asked.
    Fleet { request_id: u64, reply_to: String },
}

impl Work {
    fn name(&self) -> &'static str {
        match self {
            Work::Rank(_) => "ranking",
            Work::Group(_) => "duplicate groups",
            Work::Export { .. } => "export",
            Work::Fleet { .. } => "fleet ranking",
        }
    }
}

/// The searches of one device in flight, and the rules that move them on.
pub struct Session {
    config: SessionConfig,
    models: Models,
    ids: RequestIds,
    last_search: u64,
    /// Searches waiting for the cloud, by request id.
    cloud: HashMap<u64, Pending>,
    /// Searches and fleet queries waiting for the index side.
    index: HashMap<SearchId, Work>,
}

impl Session {
    /// A session without searches. `ids` hands out the request ids (start them from the clock,
    /// [`RequestIds::from_clock`], so a restarted device cannot take a stale reply for a new
    /// request).
    pub fn new(config: SessionConfig, models: Models, ids: RequestIds) -> Self {
        Session {
            config,
            models,
            ids,
            last_search: 0,
            cloud: HashMap::new(),
            index: HashMap::new(),
        }
    }

    /// The configuration.
    pub fn config(&self) -> &SessionConfig {
        &self.config
    }

    /// The indexes' models changed (a re-index began or switched).
    pub fn set_models(&mut self, models: Models) {
        self.models = models;
    }

    /// Searches and fleet queries not answered yet.
    pub fn in_flight(&self) -> usize {
        self.cloud.len() + self.index.len()
    }

    /// A payload of the device's search topic (text or JSON). One that does not parse is
    /// answered with an error under the JSON `id` it holds, if any.
    pub fn payload(&mut self, payload: &[u8], now: Instant) -> Vec<Effect> {
        match SearchRequest::parse(payload, self.config.max_text_bytes) {
            Ok(request) => self.search(request, now).1,
            Err(e) => {
                warn!(error = %e, "search refused");
                let mut out = Vec::new();
                let search = self.next_search();
                let id = json_id(payload).unwrap_or_default();
                self.answer(search, error(id, Failure::BadSearch(e)), &mut out);
                out
            }
        }
    }

    /// A search, already parsed (from a payload, the HTTP endpoint or the command line). The
    /// returned id is the one its [`Effect::Answer`] will carry.
    pub fn search(&mut self, request: SearchRequest, now: Instant) -> (SearchId, Vec<Effect>) {
        let search = self.next_search();
        let mut out = Vec::new();
        self.start(search, request, now, &mut out);
        (search, out)
    }

    /// A payload of the cloud reply topic: an [`EncodeReply`] or a [`RankReply`].
    pub fn cloud_reply(&mut self, payload: &[u8], now: Instant) -> Vec<Effect> {
        let mut out = Vec::new();
        if Kind::of(payload) == Some(Kind::RankReply) {
            self.on_rank_reply(payload, now, &mut out);
        } else {
            self.on_encode_reply(payload, &mut out);
        }
        out
    }

    /// A payload of the device's fleet query topic: a fleet search's text vector, ranked
    /// through the same index path as the vector of the device's own search and answered to
    /// the worker that asked. A query without a trustworthy reply topic is dropped.
    pub fn fleet_query(&mut self, payload: &[u8]) -> Vec<Effect> {
        let mut out = Vec::new();
        let query = match Received::<FleetQuery>::decode(payload, self.config.max_reply_bytes) {
            Ok(q) => q,
            Err(e) => {
                warn!(error = %e, "malformed fleet query ignored");
                return out;
            }
        };
        let q = query.get();
        let (request_id, reply_to) = (q.request_id.to_native(), q.reply_to.to_string());
        if let Err(e) = topics::validate_fleet_answer_topic(&reply_to) {
            warn!(error = %e, "fleet query with an unusable reply topic ignored");
            return out;
        }
        let k = (q.k.to_native() as usize).min(self.config.max_k);
        match q.validate() {
            Err(e) => {
                let body = FleetBody::Error(Failure::BadFleetQuery(e).to_string());
                self.fleet_answer(request_id, reply_to, body, &mut out);
            }
            Ok(()) => {
                let search = self.next_search();
                self.index.insert(
                    search,
                    Work::Fleet {
                        request_id,
                        reply_to,
                    },
                );
                out.push(Effect::Rank {
                    search,
                    query: Query::Fleet(query),
                    k,
                    filter: Filter::default(),
                });
                out.push(schedule(self.config.index_timeout, Timer::Index(search)));
            }
        }
        out
    }

    /// A timer scheduled by an [`Effect::Schedule`] fired.
    pub fn fire(&mut self, timer: Timer) -> Vec<Effect> {
        let mut out = Vec::new();
        match timer {
            Timer::Retry(request_id) => {
                if let Some(p) = self.cloud.get_mut(&request_id) {
                    let mut sent = 0;
                    for resend in std::mem::take(&mut p.resend) {
                        if p.server
                            .as_ref()
                            .is_none_or(|s| !s.received.contains(&resend.chunk))
                        {
                            out.push(Effect::Publish {
                                topic: resend.topic.to_string(),
                                frame: resend.frame,
                                retain: false,
                            });
                            sent += 1;
                        }
                    }
                    info!(
                        id = %p.answering.id,
                        frames = sent,
                        "no answer from the cloud yet; request sent again"
                    );
                }
            }
            Timer::Timeout(request_id) => {
                if let Some(p) = self.cloud.remove(&request_id) {
                    warn!(id = %p.answering.id, "search timed out");
                    let failure = Failure::CloudTimeout(self.config.cloud_timeout);
                    self.fail(p.answering, failure, &mut out);
                }
            }
            Timer::Index(search) => {
                if let Some(work) = self.index.remove(&search) {
                    warn!(%search, work = work.name(), "the index side did not answer in time");
                    match work {
                        Work::Rank(answering)
                        | Work::Group(answering)
                        | Work::Export { answering, .. } => {
                            self.fail(answering, Failure::Index(IndexError::TimedOut), &mut out)
                        }
                        Work::Fleet {
                            request_id,
                            reply_to,
                        } => {
                            let body = FleetBody::Error(IndexError::TimedOut.to_string());
                            self.fleet_answer(request_id, reply_to, body, &mut out);
                        }
                    }
                }
            }
        }
        out
    }

    /// The index side's result of an [`Effect::Rank`] or [`Effect::Like`].
    pub fn ranked(
        &mut self,
        search: SearchId,
        result: Result<Ranking, IndexError>,
        now: Instant,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        match self.take_work(search, |w| matches!(w, Work::Rank(_) | Work::Fleet { .. })) {
            Some(Work::Rank(answering)) => {
                let response = match result {
                    Ok(Ranking {
                        model,
                        hits,
                        partial,
                    }) => SearchResponse::Results(SearchResults {
                        id: answering.id,
                        text: answering.text,
                        model,
                        took_ms: present::took_ms(answering.started, now),
                        hits,
                        partial,
                        groups: Vec::new(),
                    }),
                    Err(e) => error(answering.id, Failure::Index(e)),
                };
                self.answer(answering.search, response, &mut out);
            }
            Some(Work::Fleet {
                request_id,
                reply_to,
            }) => {
                let body = match result {
                    Ok(Ranking { mut hits, .. }) => {
                        present::add_thumb_urls(self.config.thumb_base.as_deref(), &mut hits);
                        FleetBody::Hits(hits)
                    }
                    Err(e) => FleetBody::Error(e.to_string()),
                };
                self.fleet_answer(request_id, reply_to, body, &mut out);
            }
            _ => {}
        }
        out
    }

    /// The index side's result of an [`Effect::Duplicates`].
    pub fn grouped(
        &mut self,
        search: SearchId,
        result: Result<Groups, IndexError>,
        now: Instant,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        if let Some(Work::Group(answering)) =
            self.take_work(search, |w| matches!(w, Work::Group(_)))
        {
            let response = match result {
                Ok(Groups { model, groups }) => SearchResponse::Results(SearchResults {
                    id: answering.id,
                    text: answering.text,
                    model,
                    took_ms: present::took_ms(answering.started, now),
                    hits: Vec::new(),
                    partial: false,
                    groups,
                }),
                Err(e) => error(answering.id, Failure::Index(e)),
            };
            self.answer(answering.search, response, &mut out);
        }
        out
    }

    /// The index side's result of an [`Effect::Export`]: the chunks go to the cloud as
    /// independent rank requests under the search's request id (an empty export is answered
    /// at once).
    pub fn exported(
        &mut self,
        search: SearchId,
        result: Result<Exported, IndexError>,
        now: Instant,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        let Some(Work::Export {
            mut answering,
            request_id,
            k,
            filter,
        }) = self.take_work(search, |w| matches!(w, Work::Export { .. }))
        else {
            return out;
        };
        let export = match result {
            Ok(export) => export,
            Err(e) => {
                self.fail(answering, Failure::Index(e), &mut out);
                return out;
            }
        };
        if export.chunks.is_empty() {
            let empty = SearchResults {
                id: answering.id,
                text: answering.text,
                model: export.model,
                took_ms: 0,
                hits: Vec::new(),
                partial: false,
                groups: Vec::new(),
            };
            self.answer(search, SearchResponse::Results(empty), &mut out);
            return out;
        }
        let reply_to = topics::cloud_reply(&self.config.device_id);
        let chunks = export.chunks.len() as u32;
        let frames = export
            .chunks
            .into_iter()
            .enumerate()
            .map(|(chunk, c)| {
                let request = RankRequest {
                    request_id,
                    reply_to: reply_to.clone(),
                    model: export.model.clone(),
                    text: answering.text.clone(),
                    lang: None,
                    k: k as u32,
                    chunk: chunk as u32,
                    chunks,
                    dim: export.dim as u32,
                    ids: c.ids,
                    scales: c.scales,
                    codes: c.codes,
                };
                wire::encode(&request).map(|frame| Sent {
                    chunk: chunk as u32,
                    topic: topics::CLOUD_RANK,
                    frame: frame.into(),
                })
            })
            .collect::<Result<Vec<_>, _>>();
        match frames {
            Err(e) => self.fail(answering, Failure::Wire(e), &mut out),
            Ok(frames) => {
                // took_ms of a server-ranked search counts from here, after the export.
                answering.started = now;
                let pending = Pending {
                    answering,
                    model: self.models.serving.clone(),
                    k,
                    filter,
                    server: Some(ServerRanked {
                        model: export.model,
                        pictures: export.pictures,
                        chunks,
                        received: HashSet::new(),
                        hits: Vec::new(),
                    }),
                    resend: Vec::new(),
                };
                self.send(request_id, pending, frames, &mut out);
            }
        }
        out
    }

    fn next_search(&mut self) -> SearchId {
        self.last_search += 1;
        SearchId(self.last_search)
    }

    fn start(
        &mut self,
        search: SearchId,
        request: SearchRequest,
        now: Instant,
        out: &mut Vec<Effect>,
    ) {
        let request_id = self.ids.next_id();
        let SearchRequest {
            text,
            k,
            id,
            like,
            mode,
            duplicates,
            lang: _,
            filter,
        } = request;
        let id = id.unwrap_or_else(|| format!("{request_id:x}"));
        let k = k.unwrap_or(self.config.default_k).min(self.config.max_k);
        if let Some(threshold) = duplicates {
            // Near-duplicate groups: the device compares its own vectors; no cloud round trip.
            let text = present::duplicates_text(text, threshold);
            let answering = Answering {
                search,
                id,
                text,
                started: now,
            };
            self.index.insert(search, Work::Group(answering));
            out.push(Effect::Duplicates {
                search,
                threshold,
                k,
                filter,
                max: self.config.max_duplicate_pictures,
            });
            out.push(schedule(
                self.config.duplicates_timeout,
                Timer::Index(search),
            ));
            return;
        }
        if let Some(like) = like {
            // Image to image: the device has the vectors already; no cloud round trip.
            let text = present::like_text(text, &like);
            let answering = Answering {
                search,
                id,
                text,
                started: now,
            };
            self.index.insert(search, Work::Rank(answering));
            out.push(Effect::Like {
                search,
                picture: like,
                k,
                filter,
            });
            out.push(schedule(self.config.index_timeout, Timer::Index(search)));
            return;
        }
        let answering = Answering {
            search,
            id,
            text,
            started: now,
        };
        if mode.unwrap_or(self.config.default_mode) == SearchMode::Server {
            // Method B: the text and the (int8) vectors go to the cloud, which ranks.
            out.push(Effect::Export {
                search,
                filter: filter.clone(),
                chunk_vectors: self.config.server_chunk_vectors,
                max_vectors: self.config.max_server_vectors,
            });
            self.index.insert(
                search,
                Work::Export {
                    answering,
                    request_id,
                    k,
                    filter,
                },
            );
            out.push(schedule(self.config.index_timeout, Timer::Index(search)));
            return;
        }
        let model = self.models.serving.clone();
        let pending = Pending {
            answering,
            model: model.clone(),
            k,
            filter,
            server: None,
            resend: Vec::new(),
        };
        self.ask(request_id, pending, model, out);
    }

    /// Sends a device-ranked search's text to the cloud for `model`'s vector.
    fn ask(&mut self, request_id: u64, mut pending: Pending, model: String, out: &mut Vec<Effect>) {
        let request = EncodeRequest {
            request_id,
            reply_to: topics::cloud_reply(&self.config.device_id),
            model: model.clone(),
            text: pending.answering.text.clone(),
            lang: None,
        };
        match wire::encode(&request) {
            Ok(frame) => {
                pending.model = model;
                pending.resend.clear();
                let sent = Sent {
                    chunk: 0,
                    topic: topics::CLOUD_ENCODE,
                    frame: frame.into(),
                };
                self.send(request_id, pending, vec![sent], out);
            }
            Err(e) => self.fail(pending.answering, Failure::Wire(e), out),
        }
    }

    /// Publishes a search's frames, keeps them for the retry, and arms the retry and the
    /// timeout.
    fn send(
        &mut self,
        request_id: u64,
        mut pending: Pending,
        frames: Vec<Sent>,
        out: &mut Vec<Effect>,
    ) {
        let keep = self.config.cloud_retry.is_some();
        for sent in frames {
            let topic = sent.topic.to_string();
            let frame = if keep {
                let frame = sent.frame.clone();
                pending.resend.push(sent);
                frame
            } else {
                sent.frame
            };
            out.push(Effect::Publish {
                topic,
                frame,
                retain: false,
            });
        }
        self.cloud.insert(request_id, pending);
        if let Some(retry) = self.config.cloud_retry {
            out.push(schedule(retry, Timer::Retry(request_id)));
        }
        out.push(schedule(
            self.config.cloud_timeout,
            Timer::Timeout(request_id),
        ));
    }

    fn on_encode_reply(&mut self, payload: &[u8], out: &mut Vec<Effect>) {
        let reply = match Received::<EncodeReply>::decode(payload, self.config.max_reply_bytes) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "malformed reply from the cloud ignored");
                return;
            }
        };
        let request_id = reply.get().request_id.to_native();
        let Some(p) = self.cloud.remove(&request_id) else {
            info!(request_id, "reply to an unknown or expired request ignored");
            return;
        };
        let fallback = match &reply.get().body {
            ArchivedReplyBody::Error(f) if f.code == ArchivedErrorCode::ModelMismatch => self
                .models
                .building
                .as_ref()
                .filter(|building| **building != p.model)
                .cloned(),
            _ => None,
        };
        if let Some(model) = fallback {
            // The device re-indexes for a new model and the cloud no longer serves the
            // previous one: ask for the new model's vector (new request id, so a late reply
            // to the first request finds nothing), ranked by the index being built.
            info!(
                id = %p.answering.id,
                asked = %p.model,
                %model,
                "the cloud serves only the new model; answering from the index being built"
            );
            let request_id = self.ids.next_id();
            self.ask(request_id, p, model, out);
            return;
        }
        if let ArchivedReplyBody::Error(f) = &reply.get().body {
            let failure = Failure::CloudRefused {
                code: native_code(&f.code),
                message: f.message.to_string(),
            };
            self.fail(p.answering, failure, out);
            return;
        }
        let search = p.answering.search;
        self.index.insert(search, Work::Rank(p.answering));
        out.push(Effect::Rank {
            search,
            query: Query::Encoded(reply),
            k: p.k,
            filter: p.filter,
        });
        out.push(schedule(self.config.index_timeout, Timer::Index(search)));
    }

    /// Merges one chunk's ranking of a server-ranked search; answers once every chunk is in,
    /// or at the first chunk that fails.
    fn on_rank_reply(&mut self, payload: &[u8], now: Instant, out: &mut Vec<Effect>) {
        let reply = match Received::<RankReply>::decode(payload, self.config.max_reply_bytes) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "malformed rank reply from the cloud ignored");
                return;
            }
        };
        let r = reply.get();
        let request_id = r.request_id.to_native();
        let Some(p) = self.cloud.get_mut(&request_id) else {
            info!(
                request_id,
                "rank reply to an unknown or expired search ignored"
            );
            return;
        };
        let Some(server) = p.server.as_mut() else {
            warn!(request_id, "rank reply to a device-ranked search ignored");
            return;
        };
        let failure = match &r.body {
            ArchivedRankBody::Error(f) => Some(Failure::CloudRefused {
                code: native_code(&f.code),
                message: f.message.to_string(),
            }),
            ArchivedRankBody::Ranked(ranked) if ranked.model.as_str() != server.model => {
                Some(Failure::ForeignModel {
                    cloud: ranked.model.to_string(),
                    device: server.model.clone(),
                })
            }
            ArchivedRankBody::Ranked(ranked) => {
                let chunk = r.chunk.to_native();
                let fits = chunk < server.chunks
                    && ranked.ids.len() == ranked.scores.len()
                    && ranked
                        .ids
                        .iter()
                        .all(|id| (id.to_native() as usize) < server.pictures.len());
                if !fits {
                    Some(Failure::RankingDoesNotFit)
                } else {
                    // QoS 1 may deliver a chunk twice; count it once.
                    if server.received.insert(chunk) {
                        server.hits.extend(
                            ranked
                                .ids
                                .iter()
                                .zip(ranked.scores.iter())
                                .map(|(i, s)| (i.to_native(), s.to_native())),
                        );
                    }
                    None
                }
            }
        };
        if failure.is_none() && (server.received.len() as u32) < server.chunks {
            return;
        }
        let Some(p) = self.cloud.remove(&request_id) else {
            return;
        };
        match (failure, p.server) {
            (Some(failure), _) => self.fail(p.answering, failure, out),
            (None, Some(server)) => {
                let model = server.model.clone();
                let hits = merge(server, p.k, &p.filter);
                let answering = p.answering;
                let results = SearchResults {
                    id: answering.id,
                    text: answering.text,
                    model,
                    took_ms: present::took_ms(answering.started, now),
                    hits,
                    partial: false,
                    groups: Vec::new(),
                };
                self.answer(answering.search, SearchResponse::Results(results), out);
            }
            (None, None) => {}
        }
    }

    /// Removes a search's index work if it is of the kind `expected` accepts; a result for an
    /// unknown search (answered already, e.g. timed out) or of another kind is ignored.
    fn take_work(&mut self, search: SearchId, expected: impl Fn(&Work) -> bool) -> Option<Work> {
        match self.index.get(&search) {
            None => {
                info!(%search, "index result for an unknown or expired search ignored");
                None
            }
            Some(work) if !expected(work) => {
                warn!(%search, waiting_for = work.name(), "index result of another kind ignored");
                None
            }
            Some(_) => self.index.remove(&search),
        }
    }

    fn fail(&self, answering: Answering, failure: Failure, out: &mut Vec<Effect>) {
        self.answer(answering.search, error(answering.id, failure), out);
    }

    /// The answer of a search: thumbnail URLs on its hits, the best match for dashboards
    /// (retained), the answer on the results topic, then to its caller.
    fn answer(&self, search: SearchId, mut response: SearchResponse, out: &mut Vec<Effect>) {
        let device = &self.config.device_id;
        present::add_response_thumb_urls(self.config.thumb_base.as_deref(), &mut response);
        if let Some(best) = present::best_match(&response) {
            if let Some(url) = best.url {
                out.push(Effect::Publish {
                    topic: topics::best_url(device),
                    frame: url.into(),
                    retain: true,
                });
            }
            if self.config.best_image {
                out.push(Effect::PublishThumbnail {
                    path: best.path,
                    topic: topics::best_image(device),
                });
            }
        }
        match present::results_json(&response) {
            Ok(json) => out.push(Effect::Publish {
                topic: topics::results(device),
                frame: json.into(),
                retain: false,
            }),
            Err(e) => warn!(error = %e, "answer not serialisable"),
        }
        out.push(Effect::Answer { search, response });
    }

    /// Answers the worker that sent a fleet query.
    fn fleet_answer(
        &self,
        request_id: u64,
        reply_to: String,
        body: FleetBody,
        out: &mut Vec<Effect>,
    ) {
        let answer = FleetAnswer {
            request_id,
            device: self.config.device_id.clone(),
            body,
        };
        match wire::encode(&answer) {
            Ok(frame) => out.push(Effect::Publish {
                topic: reply_to,
                frame: frame.into(),
                retain: false,
            }),
            Err(e) => warn!(error = %e, "fleet answer not serialisable"),
        }
    }
}

/// The top `k` of a server-ranked search's merged chunks that pass `min_score`, best first
/// (ties by id), as the exported pictures with their scores.
fn merge(server: ServerRanked, k: usize, filter: &Filter) -> Vec<Hit> {
    let ServerRanked {
        pictures, mut hits, ..
    } = server;
    hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    hits.into_iter()
        .filter(|(_, score)| filter.scores(*score))
        .take(k)
        .map(|(i, score)| Hit {
            score,
            ..pictures[i as usize].clone()
        })
        .collect()
}

fn error(id: String, failure: Failure) -> SearchResponse {
    SearchResponse::Error(SearchError {
        id,
        error: failure.to_string(),
    })
}

fn schedule(after: Duration, timer: Timer) -> Effect {
    Effect::Schedule { after, timer }
}

fn native_code(code: &ArchivedErrorCode) -> ErrorCode {
    match code {
        ArchivedErrorCode::BadRequest => ErrorCode::BadRequest,
        ArchivedErrorCode::ModelMismatch => ErrorCode::ModelMismatch,
        ArchivedErrorCode::Internal => ErrorCode::Internal,
        ArchivedErrorCode::Busy => ErrorCode::Busy,
    }
}

/// The `id` of a JSON search that failed validation, so the error can still be correlated.
fn json_id(payload: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    value
        .get("id")?
        .as_str()
        .map(|s| s.chars().take(128).collect())
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use edgeclip_messages::wire::{
        vector_view, ArchivedFleetBody, CloudFailure, RankBody, RankedIds, ReplyBody, TextVector,
    };

    use super::*;

    const OLD: &str = "clip-old@000000000001";
    const NEW: &str = "clip-new@000000000002";
    const LIMIT: usize = 1 << 20;

    fn config() -> SessionConfig {
        SessionConfig {
            device_id: "cam".into(),
            cloud_timeout: Duration::from_secs(5),
            cloud_retry: Some(Duration::from_secs(2)),
            index_timeout: INDEX_TIMEOUT,
            duplicates_timeout: DUPLICATES_TIMEOUT,
            default_k: 10,
            max_k: 50,
            max_text_bytes: 1024,
            max_reply_bytes: LIMIT,
            default_mode: SearchMode::Device,
            server_chunk_vectors: 2,
            max_server_vectors: 100,
            max_duplicate_pictures: 1000,
            thumb_base: Some("http://cam.local:8080".into()),
            best_image: false,
        }
    }

    fn serving(model: &str) -> Models {
        Models {
            serving: model.into(),
            building: None,
        }
    }

    fn reindexing() -> Models {
        Models {
            serving: OLD.into(),
            building: Some(NEW.into()),
        }
    }

    fn session() -> Session {
        Session::new(config(), serving(OLD), RequestIds::from_clock())
    }

    fn ms(n: u64) -> Duration {
        Duration::from_millis(n)
    }

    fn hit(n: u32, score: f32) -> Hit {
        Hit {
            path: format!("/p/{n}.jpg"),
            score,
            taken_s: n as i64,
            id: format!("{n:016x}"),
            ..Hit::default()
        }
    }

    fn request(text: &str) -> SearchRequest {
        SearchRequest::text(text)
    }

    /// The shape of a batch of effects, one line each.
    fn describe(effects: &[Effect]) -> Vec<String> {
        effects
            .iter()
            .map(|e| match e {
                Effect::Publish {
                    topic,
                    retain: true,
                    ..
                } => format!("publish {topic} retained"),
                Effect::Publish { topic, .. } => format!("publish {topic}"),
                Effect::Schedule { after, timer } => {
                    let timer = match timer {
                        Timer::Retry(_) => "retry",
                        Timer::Timeout(_) => "timeout",
                        Timer::Index(_) => "index timeout",
                    };
                    format!("schedule {timer} after {} ms", after.as_millis())
                }
                Effect::Rank { .. } => "rank".into(),
                Effect::Like { .. } => "like".into(),
                Effect::Duplicates { .. } => "duplicates".into(),
                Effect::Export { .. } => "export".into(),
                Effect::PublishThumbnail { path, topic } => {
                    format!("thumbnail of {path} on {topic}")
                }
                Effect::Answer { .. } => "answer".into(),
            })
            .collect()
    }

    fn published<'a>(effects: &'a [Effect], on: &str) -> Vec<&'a Bytes> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Publish { topic, frame, .. } if topic == on => Some(frame),
                _ => None,
            })
            .collect()
    }

    fn timers(effects: &[Effect]) -> Vec<Timer> {
        effects
            .iter()
            .filter_map(|e| match e {
                Effect::Schedule { timer, .. } => Some(*timer),
                _ => None,
            })
            .collect()
    }

    /// The one answer of a batch, checked to be the one published on the results topic.
    fn the_answer(effects: &[Effect]) -> (SearchId, &SearchResponse) {
        let answers: Vec<_> = effects
            .iter()
            .filter_map(|e| match e {
                Effect::Answer { search, response } => Some((*search, response)),
                _ => None,
            })
            .collect();
        assert_eq!(answers.len(), 1, "{:?}", describe(effects));
        let json = published(effects, "edgeclip/cam/results");
        assert_eq!(
            json,
            [&Bytes::from(serde_json::to_vec(answers[0].1).unwrap())]
        );
        answers[0]
    }

    fn results(response: &SearchResponse) -> &SearchResults {
        match response {
            SearchResponse::Results(r) => r,
            SearchResponse::Error(e) => panic!("error answer: {}", e.error),
        }
    }

    fn failed(response: &SearchResponse) -> (&str, &str) {
        match response {
            SearchResponse::Error(e) => (&e.id, &e.error),
            SearchResponse::Results(r) => panic!("results answer: {r:?}"),
        }
    }

    fn take_rank(effects: Vec<Effect>) -> (SearchId, Query, usize, Filter) {
        effects
            .into_iter()
            .find_map(|e| match e {
                Effect::Rank {
                    search,
                    query,
                    k,
                    filter,
                } => Some((search, query, k, filter)),
                _ => None,
            })
            .expect("a rank effect")
    }

    /// (request id, model, text, reply topic) of an encode request frame.
    fn encode_request(frame: &[u8]) -> (u64, String, String, String) {
        let r = Received::<EncodeRequest>::decode(frame, LIMIT).unwrap();
        let r = r.get();
        (
            r.request_id.to_native(),
            r.model.to_string(),
            r.text.to_string(),
            r.reply_to.to_string(),
        )
    }

    /// The request id of the one encode request a batch publishes.
    fn asked(effects: &[Effect]) -> u64 {
        let frames = published(effects, topics::CLOUD_ENCODE);
        assert_eq!(frames.len(), 1, "{:?}", describe(effects));
        encode_request(frames[0]).0
    }

    fn vector_reply(request_id: u64, model: &str) -> Vec<u8> {
        wire::encode(&EncodeReply {
            request_id,
            body: ReplyBody::Vector(TextVector {
                model: model.into(),
                vector: vec![0.6, 0.8],
            }),
        })
        .unwrap()
    }

    fn refusal(request_id: u64, code: ErrorCode, message: &str) -> Vec<u8> {
        wire::encode(&EncodeReply {
            request_id,
            body: ReplyBody::Error(CloudFailure {
                code,
                message: message.into(),
            }),
        })
        .unwrap()
    }

    fn chunk_reply(
        request_id: u64,
        chunk: u32,
        model: &str,
        ids: &[u32],
        scores: &[f32],
    ) -> Vec<u8> {
        wire::encode(&RankReply {
            request_id,
            chunk,
            body: RankBody::Ranked(RankedIds {
                model: model.into(),
                ids: ids.to_vec(),
                scores: scores.to_vec(),
            }),
        })
        .unwrap()
    }

    fn fleet_query(reply_to: &str, k: u32, vector: Vec<f32>) -> Vec<u8> {
        wire::encode(&FleetQuery {
            request_id: 9,
            reply_to: reply_to.into(),
            k,
            vector: TextVector {
                model: OLD.into(),
                vector,
            },
        })
        .unwrap()
    }

    fn fleet_answer(frame: &[u8]) -> Received<FleetAnswer> {
        Received::<FleetAnswer>::decode(frame, LIMIT).unwrap()
    }

    /// Five pictures (ids 0..5) in chunks of two, as the index side exports them.
    fn export() -> Exported {
        let pictures: Vec<Hit> = (0..5).map(|n| hit(n, 0.0)).collect();
        let chunks = [&[0u32, 1][..], &[2, 3], &[4]]
            .iter()
            .map(|ids| ExportChunk {
                ids: ids.to_vec(),
                scales: vec![1.0 / 127.0; ids.len()],
                codes: vec![127; ids.len() * 2],
            })
            .collect();
        Exported {
            model: OLD.into(),
            dim: 2,
            pictures,
            chunks,
        }
    }

    /// Starts a server-ranked search and exports; returns the search, its request id and the
    /// rank request frames by chunk.
    fn server_search(
        s: &mut Session,
        k: usize,
        min_score: Option<f32>,
        t0: Instant,
    ) -> (SearchId, u64, Vec<Bytes>) {
        let mut request = request("a dog on a beach");
        request.mode = Some(SearchMode::Server);
        request.k = Some(k);
        request.filter.min_score = min_score;
        let (search, out) = s.search(request, t0);
        assert_eq!(
            describe(&out),
            ["export", "schedule index timeout after 10000 ms"]
        );
        assert!(matches!(
            &out[0],
            Effect::Export { search: id, filter, chunk_vectors: 2, max_vectors: 100 }
                if *id == search && filter.min_score == min_score
        ));
        let out = s.exported(search, Ok(export()), t0 + ms(30));
        assert_eq!(
            describe(&out),
            [
                "publish edgeclip/cloud/rank",
                "publish edgeclip/cloud/rank",
                "publish edgeclip/cloud/rank",
                "schedule retry after 2000 ms",
                "schedule timeout after 5000 ms",
            ]
        );
        let frames: Vec<Bytes> = published(&out, topics::CLOUD_RANK)
            .into_iter()
            .cloned()
            .collect();
        let mut request_ids = Vec::new();
        for (n, frame) in frames.iter().enumerate() {
            let r = Received::<RankRequest>::decode(frame, LIMIT).unwrap();
            let r = r.get();
            assert!(r.validate(1024, 100).is_ok());
            assert_eq!(
                (r.chunk.to_native(), r.chunks.to_native(), r.k.to_native()),
                (n as u32, 3, k as u32)
            );
            assert_eq!(r.text.as_str(), "a dog on a beach");
            assert_eq!(r.model.as_str(), OLD);
            request_ids.push(r.request_id.to_native());
        }
        assert!(request_ids.iter().all(|id| *id == request_ids[0]));
        (search, request_ids[0], frames)
    }

    #[test]
    fn a_text_search_asks_the_cloud_and_answers_once_ranked() {
        let mut s = session();
        let t0 = Instant::now();
        let (search, out) = s.search(request("a red circle"), t0);
        assert_eq!(
            describe(&out),
            [
                "publish edgeclip/cloud/encode",
                "schedule retry after 2000 ms",
                "schedule timeout after 5000 ms",
            ]
        );
        let (request_id, model, text, reply_to) =
            encode_request(published(&out, topics::CLOUD_ENCODE)[0]);
        assert_eq!(
            (model.as_str(), text.as_str(), reply_to.as_str()),
            (OLD, "a red circle", "edgeclip/cam/cloud/reply")
        );
        assert_eq!(
            timers(&out),
            [Timer::Retry(request_id), Timer::Timeout(request_id)]
        );

        let out = s.cloud_reply(&vector_reply(request_id, OLD), t0 + ms(80));
        assert_eq!(
            describe(&out),
            ["rank", "schedule index timeout after 10000 ms"]
        );
        assert_eq!(timers(&out), [Timer::Index(search)]);
        let (ranked, query, k, filter) = take_rank(out);
        assert_eq!((ranked, k, filter), (search, 10, Filter::default()));
        let vector = query.text_vector().expect("a vector");
        assert_eq!(vector.model.as_str(), OLD);
        let view = vector_view(&vector.vector);
        assert_eq!(&*view, &[0.6, 0.8]);
        assert!(
            matches!(view, Cow::Borrowed(_)),
            "ranked in place from the received frame"
        );

        let ranking = Ranking {
            model: OLD.into(),
            hits: vec![hit(1, 0.9), hit(2, 0.5)],
            partial: false,
        };
        let out = s.ranked(search, Ok(ranking), t0 + ms(120));
        assert_eq!(
            describe(&out),
            [
                "publish edgeclip/cam/best/url retained",
                "publish edgeclip/cam/results",
                "answer",
            ]
        );
        assert_eq!(
            published(&out, "edgeclip/cam/best/url"),
            [&Bytes::from_static(
                b"http://cam.local:8080/thumb/0000000000000001"
            )]
        );
        let (answered, response) = the_answer(&out);
        assert_eq!(answered, search);
        let r = results(response);
        assert_eq!(r.id, format!("{request_id:x}"));
        assert_eq!((r.text.as_str(), r.model.as_str()), ("a red circle", OLD));
        assert_eq!((r.took_ms, r.partial), (120, false));
        assert_eq!(r.hits.len(), 2);
        assert_eq!(
            r.hits[1].thumb_url.as_deref(),
            Some("http://cam.local:8080/thumb/0000000000000002")
        );
        assert_eq!(s.in_flight(), 0);

        // The timers armed for the request find nothing left to do.
        for timer in [
            Timer::Retry(request_id),
            Timer::Timeout(request_id),
            Timer::Index(search),
        ] {
            assert!(s.fire(timer).is_empty(), "{timer:?}");
        }
    }

    #[test]
    fn a_retry_resends_the_same_frame_byte_for_byte_and_a_late_duplicate_reply_is_ignored() {
        let mut s = session();
        let t0 = Instant::now();
        let (search, out) = s.search(request("sunset"), t0);
        let first = published(&out, topics::CLOUD_ENCODE)[0].clone();
        let request_id = asked(&out);

        let retry = s.fire(Timer::Retry(request_id));
        assert_eq!(describe(&retry), ["publish edgeclip/cloud/encode"]);
        assert_eq!(published(&retry, topics::CLOUD_ENCODE), [&first]);
        assert!(
            s.fire(Timer::Retry(request_id)).is_empty(),
            "a request is sent again once"
        );

        let out = s.cloud_reply(&vector_reply(request_id, OLD), t0 + ms(2100));
        assert_eq!(take_rank(out).0, search);
        assert!(
            s.cloud_reply(&vector_reply(request_id, OLD), t0 + ms(2200))
                .is_empty(),
            "the reply to the first sending comes late and is ignored"
        );
        assert_eq!(s.in_flight(), 1, "only the ranking is awaited");
    }

    #[test]
    fn without_a_retry_a_request_is_sent_once() {
        let mut s = Session::new(
            SessionConfig {
                cloud_retry: None,
                ..config()
            },
            serving(OLD),
            RequestIds::from_clock(),
        );
        let t0 = Instant::now();
        let (_, out) = s.search(request("sunset"), t0);
        let request_id = asked(&out);
        assert_eq!(timers(&out), [Timer::Timeout(request_id)]);
        assert!(s.fire(Timer::Retry(request_id)).is_empty());
    }

    #[test]
    fn a_search_the_cloud_does_not_answer_times_out_with_the_error() {
        let mut s = session();
        let t0 = Instant::now();
        let mut r = request("a cat");
        r.id = Some("q7".into());
        let (search, out) = s.search(r, t0);
        let request_id = asked(&out);
        let out = s.fire(Timer::Timeout(request_id));
        assert_eq!(describe(&out), ["publish edgeclip/cam/results", "answer"]);
        let (answered, response) = the_answer(&out);
        assert_eq!(answered, search);
        assert_eq!(
            failed(response),
            (
                "q7",
                "the cloud did not answer within 5000 ms (is edgeclip-cloud running and connected to the broker?)"
            )
        );
        assert!(s
            .cloud_reply(&vector_reply(request_id, OLD), t0 + ms(5001))
            .is_empty());
        assert!(s.fire(Timer::Retry(request_id)).is_empty());
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn a_reindex_mismatch_asks_again_for_the_building_model_and_ignores_the_late_first_reply() {
        let mut s = Session::new(config(), reindexing(), RequestIds::from_clock());
        let t0 = Instant::now();
        let (search, out) = s.search(request("a lighthouse"), t0);
        let first = asked(&out);
        assert_eq!(
            encode_request(published(&out, topics::CLOUD_ENCODE)[0]).1,
            OLD
        );

        let out = s.cloud_reply(
            &refusal(
                first,
                ErrorCode::ModelMismatch,
                "this worker serves clip-new",
            ),
            t0 + ms(50),
        );
        assert_eq!(
            describe(&out),
            [
                "publish edgeclip/cloud/encode",
                "schedule retry after 2000 ms",
                "schedule timeout after 5000 ms",
            ]
        );
        let again = published(&out, topics::CLOUD_ENCODE)[0].clone();
        let (second, model, text, _) = encode_request(&again);
        assert_ne!(second, first, "a new request id");
        assert_eq!((model.as_str(), text.as_str()), (NEW, "a lighthouse"));
        assert_eq!(timers(&out), [Timer::Retry(second), Timer::Timeout(second)]);

        // The first request is over: its late reply and its timers find nothing.
        assert!(s
            .cloud_reply(&vector_reply(first, OLD), t0 + ms(60))
            .is_empty());
        assert!(s.fire(Timer::Retry(first)).is_empty());
        assert!(s.fire(Timer::Timeout(first)).is_empty());
        // The second is retried byte for byte like any request.
        let retry = s.fire(Timer::Retry(second));
        assert_eq!(published(&retry, topics::CLOUD_ENCODE), [&again]);

        let out = s.cloud_reply(&vector_reply(second, NEW), t0 + ms(2100));
        let (ranked, query, _, _) = take_rank(out);
        assert_eq!(ranked, search);
        assert_eq!(query.text_vector().unwrap().model.as_str(), NEW);
        let ranking = Ranking {
            model: NEW.into(),
            hits: vec![hit(3, 0.7)],
            partial: true,
        };
        let out = s.ranked(search, Ok(ranking), t0 + ms(2150));
        let r = results(the_answer(&out).1);
        assert_eq!(r.id, format!("{first:x}"), "the search keeps its id");
        assert_eq!((r.model.as_str(), r.partial, r.took_ms), (NEW, true, 2150));
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn model_mismatch_outside_a_reindex_or_for_the_building_model_is_the_clouds_refusal() {
        let t0 = Instant::now();
        let mut s = session();
        let (_, out) = s.search(request("a lighthouse"), t0);
        let out = s.cloud_reply(
            &refusal(asked(&out), ErrorCode::ModelMismatch, "serves clip-new"),
            t0,
        );
        assert_eq!(
            failed(the_answer(&out).1).1,
            "the cloud refused the search (ModelMismatch): serves clip-new"
        );

        let mut s = Session::new(config(), reindexing(), RequestIds::from_clock());
        let (_, out) = s.search(request("a lighthouse"), t0);
        let out = s.cloud_reply(&refusal(asked(&out), ErrorCode::ModelMismatch, "new"), t0);
        let out = s.cloud_reply(
            &refusal(asked(&out), ErrorCode::ModelMismatch, "serves clip-other"),
            t0,
        );
        assert_eq!(
            failed(the_answer(&out).1).1,
            "the cloud refused the search (ModelMismatch): serves clip-other"
        );
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn a_cloud_refusal_is_answered_with_its_code_and_message() {
        let mut s = session();
        let t0 = Instant::now();
        let (_, out) = s.search(request("a cat"), t0);
        let out = s.cloud_reply(
            &refusal(asked(&out), ErrorCode::Internal, "tract failed"),
            t0,
        );
        assert_eq!(
            failed(the_answer(&out).1).1,
            "the cloud refused the search (Internal): tract failed"
        );
    }

    #[test]
    fn server_ranked_chunks_merge_to_the_top_k_with_min_score_and_a_repeated_chunk_counted_once() {
        let t0 = Instant::now();
        let cases = [
            (2, None, vec![(1, 0.8), (3, 0.6)]),
            (10, Some(0.3), vec![(1, 0.8), (3, 0.6), (2, 0.31)]),
        ];
        for (k, min_score, expected) in cases {
            let mut s = session();
            let (search, request_id, _) = server_search(&mut s, k, min_score, t0);
            let chunk0 = chunk_reply(request_id, 0, OLD, &[1, 0], &[0.8, 0.2]);
            assert!(s.cloud_reply(&chunk0, t0 + ms(40)).is_empty());
            assert!(
                s.cloud_reply(&chunk0, t0 + ms(45)).is_empty(),
                "QoS 1 delivers a chunk twice"
            );
            let chunk2 = chunk_reply(request_id, 2, OLD, &[4], &[0.25]);
            assert!(s.cloud_reply(&chunk2, t0 + ms(50)).is_empty());
            let chunk1 = chunk_reply(request_id, 1, OLD, &[3, 2], &[0.6, 0.31]);
            let out = s.cloud_reply(&chunk1, t0 + ms(100));
            let (answered, response) = the_answer(&out);
            assert_eq!(answered, search);
            let r = results(response);
            let got: Vec<(u32, f32)> = r.hits.iter().map(|h| (h.taken_s as u32, h.score)).collect();
            assert_eq!(got, expected, "k = {k}, min_score = {min_score:?}");
            assert_eq!(r.hits[0].path, "/p/1.jpg");
            assert_eq!(
                r.hits[0].thumb_url.as_deref(),
                Some("http://cam.local:8080/thumb/0000000000000001")
            );
            assert_eq!((r.model.as_str(), r.partial), (OLD, false));
            assert_eq!(r.took_ms, 70, "counted from the export");
            assert_eq!(s.in_flight(), 0);
            assert!(s.cloud_reply(&chunk1, t0 + ms(110)).is_empty());
        }
    }

    #[test]
    fn a_server_ranked_retry_resends_only_the_chunks_not_yet_answered_byte_for_byte() {
        let mut s = session();
        let t0 = Instant::now();
        let (_, request_id, frames) = server_search(&mut s, 5, None, t0);
        assert!(s
            .cloud_reply(&chunk_reply(request_id, 0, OLD, &[1], &[0.8]), t0 + ms(40))
            .is_empty());
        let retry = s.fire(Timer::Retry(request_id));
        assert_eq!(
            published(&retry, topics::CLOUD_RANK),
            [&frames[1], &frames[2]]
        );
        assert!(s.fire(Timer::Retry(request_id)).is_empty());
    }

    #[test]
    fn a_rank_reply_with_foreign_ids_another_model_or_an_error_is_refused() {
        let t0 = Instant::now();
        let fits = "the cloud's ranking does not fit the search";
        // Each case: the reply to the search's request id, and the error it is answered with.
        type Reply = fn(u64) -> Vec<u8>;
        let cases: Vec<(Reply, String)> = vec![
            ((|id| chunk_reply(id, 0, OLD, &[7], &[0.9])), fits.into()),
            ((|id| chunk_reply(id, 3, OLD, &[0], &[0.9])), fits.into()),
            ((|id| chunk_reply(id, 0, OLD, &[0, 1], &[0.9])), fits.into()),
            (
                (|id| chunk_reply(id, 0, NEW, &[0], &[0.9])),
                format!("the cloud ranked with model {NEW}, the device's index holds {OLD}"),
            ),
            (
                (|id| {
                    wire::encode(&RankReply {
                        request_id: id,
                        chunk: 0,
                        body: RankBody::Error(CloudFailure {
                            code: ErrorCode::Busy,
                            message: "over the rate".into(),
                        }),
                    })
                    .unwrap()
                }),
                "the cloud refused the search (Busy): over the rate".into(),
            ),
        ];
        for (reply, error) in cases {
            let mut s = session();
            let (search, request_id, _) = server_search(&mut s, 5, None, t0);
            let out = s.cloud_reply(&reply(request_id), t0 + ms(40));
            let (answered, response) = the_answer(&out);
            assert_eq!(answered, search);
            assert_eq!(failed(response).1, error);
            assert!(s
                .cloud_reply(&chunk_reply(request_id, 1, OLD, &[2], &[0.5]), t0 + ms(50))
                .is_empty());
            assert_eq!(s.in_flight(), 0);
        }
    }

    #[test]
    fn an_empty_or_refused_export_is_answered_without_the_cloud() {
        let t0 = Instant::now();
        let mut s = session();
        let mut r = request("a dog");
        r.mode = Some(SearchMode::Server);
        let (search, _) = s.search(r.clone(), t0);
        let empty = Exported {
            chunks: Vec::new(),
            pictures: Vec::new(),
            ..export()
        };
        let out = s.exported(search, Ok(empty), t0 + ms(20));
        assert_eq!(describe(&out), ["publish edgeclip/cam/results", "answer"]);
        let answer = results(the_answer(&out).1);
        assert_eq!((answer.model.as_str(), answer.took_ms), (OLD, 0));
        assert!(answer.hits.is_empty());

        let refused = "12 pictures match, more than search.max_server_vectors = 10 may leave \
                       the device; search in device mode or narrow the search";
        let (search, _) = s.search(r.clone(), t0);
        let out = s.exported(search, Err(IndexError::Refused(refused.into())), t0);
        assert_eq!(failed(the_answer(&out).1).1, refused);

        let (search, _) = s.search(r, t0);
        let out = s.exported(search, Err(IndexError::NoAnswer("it panicked".into())), t0);
        assert_eq!(
            failed(the_answer(&out).1).1,
            "index did not answer: it panicked"
        );
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn a_fleet_query_is_ranked_and_answered_to_its_worker_and_a_bad_reply_topic_is_dropped() {
        let t0 = Instant::now();
        let mut s = session();
        let out = s.fleet_query(&fleet_query(
            &topics::fleet_answers("w1"),
            500,
            vec![0.6, 0.8],
        ));
        assert_eq!(
            describe(&out),
            ["rank", "schedule index timeout after 10000 ms"]
        );
        let (search, query, k, filter) = take_rank(out);
        assert!(matches!(query, Query::Fleet(_)));
        assert_eq!(query.text_vector().unwrap().model.as_str(), OLD);
        assert_eq!((k, filter), (50, Filter::default()), "k is capped at max_k");
        let ranking = Ranking {
            model: OLD.into(),
            hits: vec![hit(1, 0.9)],
            partial: false,
        };
        let out = s.ranked(search, Ok(ranking), t0 + ms(10));
        assert_eq!(
            describe(&out),
            ["publish edgeclip/fleet/answers/w1"],
            "no answer on the device's results topic"
        );
        let answer = fleet_answer(published(&out, "edgeclip/fleet/answers/w1")[0]);
        let answer = answer.get();
        assert_eq!(
            (answer.request_id.to_native(), answer.device.as_str()),
            (9, "cam")
        );
        let ArchivedFleetBody::Hits(hits) = &answer.body else {
            panic!("{:?}", answer.body)
        };
        assert_eq!(hits.len(), 1);
        assert_eq!(
            hits[0].thumb_url.as_ref().map(|u| u.as_str()),
            Some("http://cam.local:8080/thumb/0000000000000001")
        );

        // A query that could make the device publish elsewhere is dropped unanswered.
        assert!(s
            .fleet_query(&fleet_query("edgeclip/cam/search", 5, vec![0.6, 0.8]))
            .is_empty());
        assert!(s.fleet_query(b"not a frame").is_empty());
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn a_bad_or_unrankable_fleet_query_is_answered_with_an_error_body() {
        let t0 = Instant::now();
        let mut s = session();
        let error = |out: &[Effect]| {
            let frames = published(out, "edgeclip/fleet/answers/w1");
            assert_eq!(frames.len(), 1, "{:?}", describe(out));
            match &fleet_answer(frames[0]).get().body {
                ArchivedFleetBody::Error(e) => e.to_string(),
                other => panic!("{other:?}"),
            }
        };
        let topic = topics::fleet_answers("w1");
        let out = s.fleet_query(&fleet_query(&topic, 5, vec![f32::NAN]));
        assert_eq!(
            error(&out),
            "bad fleet query: invalid field vector: value 0 is not finite"
        );

        let out = s.fleet_query(&fleet_query(&topic, 5, vec![0.6, 0.8]));
        let (search, ..) = take_rank(out);
        let refused = IndexError::Refused("no index of model clip-old@000000000001".into());
        let out = s.ranked(search, Err(refused), t0);
        assert_eq!(error(&out), "no index of model clip-old@000000000001");

        let out = s.fleet_query(&fleet_query(&topic, 5, vec![0.6, 0.8]));
        let (search, ..) = take_rank(out);
        let out = s.fire(Timer::Index(search));
        assert_eq!(error(&out), "index did not answer: timeout");
        assert!(s
            .ranked(
                search,
                Ok(Ranking {
                    model: OLD.into(),
                    hits: vec![],
                    partial: false
                }),
                t0
            )
            .is_empty());
    }

    #[test]
    fn like_and_duplicates_searches_hand_work_to_the_index_and_ask_no_cloud() {
        let t0 = Instant::now();
        let mut s = session();
        let mut like = request("");
        like.like = Some("/p/1.jpg".into());
        like.k = Some(3);
        like.filter.folder = Some("/p".into());
        let (search, out) = s.search(like, t0);
        assert_eq!(
            describe(&out),
            ["like", "schedule index timeout after 10000 ms"]
        );
        assert!(matches!(
            &out[0],
            Effect::Like { search: id, picture, k: 3, filter }
                if *id == search && picture == "/p/1.jpg" && filter.folder.as_deref() == Some("/p")
        ));
        let ranking = Ranking {
            model: OLD.into(),
            hits: vec![hit(2, 0.95)],
            partial: false,
        };
        let out = s.ranked(search, Ok(ranking), t0 + ms(7));
        let r = results(the_answer(&out).1);
        assert_eq!((r.text.as_str(), r.took_ms), ("like /p/1.jpg", 7));

        let mut duplicates = request("");
        duplicates.duplicates = Some(0.95);
        let (search, out) = s.search(duplicates, t0);
        assert_eq!(
            describe(&out),
            ["duplicates", "schedule index timeout after 60000 ms"]
        );
        assert!(matches!(
            &out[0],
            Effect::Duplicates { search: id, threshold, k: 10, max: 1000, .. }
                if *id == search && *threshold == 0.95
        ));
        let groups = Groups {
            model: OLD.into(),
            groups: vec![vec![hit(1, 0.97), hit(2, 0.97)]],
        };
        let out = s.grouped(search, Ok(groups), t0 + ms(900));
        assert_eq!(
            describe(&out),
            ["publish edgeclip/cam/results", "answer"],
            "no best match without hits"
        );
        let r = results(the_answer(&out).1);
        assert_eq!((r.text.as_str(), r.took_ms), ("duplicates at 0.95", 900));
        assert!(r.hits.is_empty());
        assert_eq!(r.groups[0].len(), 2);

        let mut named = request("my doubles");
        named.duplicates = Some(0.9);
        let (search, _) = s.search(named, t0);
        let out = s.grouped(search, Err(IndexError::Refused("too many".into())), t0);
        assert_eq!(failed(the_answer(&out).1).1, "too many");
        assert_eq!(s.in_flight(), 0);
    }

    #[test]
    fn k_takes_the_default_and_is_capped_at_the_maximum() {
        let t0 = Instant::now();
        let mut s = session();
        for (asked, used) in [(None, 10), (Some(3), 3), (Some(500), 50)] {
            let mut like = request("");
            like.like = Some("/p/1.jpg".into());
            like.k = asked;
            let (_, out) = s.search(like, t0);
            assert!(
                matches!(&out[0], Effect::Like { k, .. } if *k == used),
                "{asked:?}"
            );
        }
    }

    #[test]
    fn an_index_that_does_not_answer_in_time_fails_the_search_and_its_late_result_is_ignored() {
        let t0 = Instant::now();
        let mut s = session();
        let mut like = request("");
        like.like = Some("0000000000000001".into());
        let (search, _) = s.search(like, t0);
        let out = s.fire(Timer::Index(search));
        assert_eq!(
            failed(the_answer(&out).1).1,
            "index did not answer: timeout"
        );
        let late = Ranking {
            model: OLD.into(),
            hits: vec![hit(1, 0.9)],
            partial: false,
        };
        assert!(s.ranked(search, Ok(late), t0 + INDEX_TIMEOUT).is_empty());
    }

    #[test]
    fn malformed_payloads_are_answered_with_their_id() {
        let t0 = Instant::now();
        let mut s = session();
        let out = s.payload(br#"{"id":"q1","text":"cat","k":0}"#, t0);
        assert_eq!(describe(&out), ["publish edgeclip/cam/results", "answer"]);
        assert_eq!(
            failed(the_answer(&out).1),
            ("q1", "bad search: invalid field k: must be at least 1")
        );

        let out = s.payload(br#"{"id":"q2","text":"cat","colour":"red"}"#, t0);
        let (id, error) = failed(the_answer(&out).1);
        assert_eq!(id, "q2");
        assert!(
            error.starts_with("bad search: invalid JSON message: unknown field `colour`"),
            "{error}"
        );

        let out = s.payload(b"   ", t0);
        let (id, error) = failed(the_answer(&out).1);
        assert_eq!(id, "");
        assert!(
            error.starts_with("bad search: invalid field text: is empty"),
            "{error}"
        );

        let out = s.payload(b"a red circle", t0);
        assert_eq!(
            encode_request(published(&out, topics::CLOUD_ENCODE)[0]).2,
            "a red circle"
        );
    }

    #[test]
    fn replies_to_unknown_ids_malformed_replies_and_results_for_no_search_are_ignored() {
        let t0 = Instant::now();
        let mut s = session();
        let (search, out) = s.search(request("a cat"), t0);
        let request_id = asked(&out);
        let foreign = request_id.wrapping_add(1000);
        assert!(s.cloud_reply(&vector_reply(foreign, OLD), t0).is_empty());
        assert!(s.cloud_reply(b"garbage", t0).is_empty());
        assert!(s
            .cloud_reply(&chunk_reply(foreign, 0, OLD, &[0], &[0.5]), t0)
            .is_empty());
        assert!(
            s.cloud_reply(&chunk_reply(request_id, 0, OLD, &[0], &[0.5]), t0)
                .is_empty(),
            "a rank reply to a device-ranked search"
        );
        let stray = Ranking {
            model: OLD.into(),
            hits: vec![],
            partial: false,
        };
        assert!(
            s.ranked(search, Ok(stray), t0).is_empty(),
            "not ranking yet"
        );
        assert_eq!(s.in_flight(), 1);
        let out = s.cloud_reply(&vector_reply(request_id, OLD), t0);
        assert_eq!(take_rank(out).0, search, "the search goes on");
    }

    #[test]
    fn the_best_match_thumbnail_is_asked_for_when_configured_and_urls_need_the_http_endpoint() {
        let t0 = Instant::now();
        let config = SessionConfig {
            thumb_base: None,
            best_image: true,
            ..config()
        };
        let mut s = Session::new(config, serving(OLD), RequestIds::from_clock());
        let mut like = request("");
        like.like = Some("/p/9.jpg".into());
        let (search, _) = s.search(like, t0);
        let ranking = Ranking {
            model: OLD.into(),
            hits: vec![hit(1, 0.9), hit(2, 0.8)],
            partial: false,
        };
        let out = s.ranked(search, Ok(ranking), t0);
        assert_eq!(
            describe(&out),
            [
                "thumbnail of /p/1.jpg on edgeclip/cam/best/image",
                "publish edgeclip/cam/results",
                "answer",
            ]
        );
        assert!(results(the_answer(&out).1)
            .hits
            .iter()
            .all(|h| h.thumb_url.is_none()));
    }

    #[test]
    fn errors_keep_the_words_dashboards_and_tests_match_on() {
        let code = |code| Failure::CloudRefused {
            code,
            message: "m".into(),
        };
        assert_eq!(
            code(ErrorCode::BadRequest).to_string(),
            "the cloud refused the search (BadRequest): m"
        );
        assert_eq!(
            Failure::CloudTimeout(Duration::from_millis(3000)).to_string(),
            "the cloud did not answer within 3000 ms (is edgeclip-cloud running and connected to the broker?)"
        );
        assert_eq!(
            Failure::Index(IndexError::NoAnswer("gone".into())).to_string(),
            "index did not answer: gone"
        );
    }
}
