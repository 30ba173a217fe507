//! [`Session`]: the searches of one device in flight, as a state machine without IO, actors or
//! clock reads. Inputs (a search, a cloud reply, a fleet query, a timer, a result of the index
//! side) come in, with the current [`Instant`] where an answer's `took_ms` may count to it;
//! [`Effect`]s (publish, schedule a timer, hand work to the index side, answer) come out, for
//! the shell to carry out in order.
//!
//! This file holds what every search goes through: request ids, the one retry, the timeouts,
//! the model fallback during a re-index, the work handed to the index side and the answer.
//! A server-ranked search's chunks are `server_rank`'s, fleet queries `fleet`'s.
//!
//! A request the cloud has not answered after `cloud_retry` is sent once more, byte for byte
//! (same request id: encoding is idempotent, and whichever reply comes first is used; for a
//! server-ranked search only the chunks not yet answered). A cloud worker that dies holding
//! the request takes it with it: the broker does not hand a dead worker's in-flight messages
//! of a clean session to the other workers.
//!
//! Every search is answered exactly once ([`Effect::Answer`]): with its hits, or with an error
//! when it is malformed, when the cloud refuses it or stays silent past `cloud_timeout`, or
//! when the index side refuses it or stays silent past its own timeout. Replies and results
//! that come after the answer are ignored. `took_ms` counts from receiving the search.

use std::collections::HashMap;
use std::fmt;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgeclip_messages::dashboard::{
    SearchError, SearchMode, SearchRequest, SearchResponse, SearchResults,
};
use edgeclip_messages::request_id::RequestIds;
use edgeclip_messages::topics;
use edgeclip_messages::wire::{
    self, ArchivedErrorCode, ArchivedReplyBody, EncodeReply, EncodeRequest, Kind, RankReply,
    Received,
};
use edgeclip_messages::{Filter, Hit};
use tracing::{info, warn};

use super::failure::{Failure, IndexError};
use super::fleet::{self, Worker};
use super::present;
use super::query::Query;
use super::server_rank::ServerRanked;
use crate::index::{Duplicates, Export, Models, Ranking};

/// How long the index side may take to rank, to find a picture's neighbours or to export
/// (it is in-process and fast; this only guards against a stuck index): a default for
/// [`SessionConfig::index_timeout`].
pub const INDEX_TIMEOUT: Duration = Duration::from_secs(10);

/// How long the index side may take to group near-duplicates: O(n²) comparisons, bounded by
/// `search.max_duplicate_pictures`, so on a large index far slower than one ranking: a
/// default for [`SessionConfig::duplicates_timeout`].
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
    /// Whether a search may ask the cloud to rank ([`SearchMode::Server`]) when the device's
    /// default is to rank itself: that sends every picture vector to the broker and cloud.
    pub allow_server_mode: bool,
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
    /// Rank the index against the text vector in `query` ([`Query::rank`]), off the actor's
    /// thread; the result comes back through [`Session::ranked`].
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
    /// Rank the index against the vector of one of its pictures ("more like this",
    /// [`crate::index::CatalogReader::like`]), off the actor's thread; the result comes back
    /// through [`Session::ranked`].
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
    /// Group near-duplicates among the pictures `filter` keeps
    /// ([`crate::index::CatalogReader::duplicates`]), off the actor's thread; the result
    /// comes back through [`Session::grouped`].
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
    /// search ([`crate::index::CatalogReader::export`]), off the actor's thread; the result
    /// comes back through [`Session::exported`].
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
    /// The text's language, passed on to the cloud (`None`: the cloud's default tower).
    lang: Option<String>,
    /// When the search was received: what `took_ms` counts from.
    started: Instant,
}

impl Answering {
    /// The answer with what was found at `now`: ranked `hits` (`partial` when ranked by the
    /// index being built), or the `groups` of a duplicates search.
    fn results(
        self,
        now: Instant,
        model: String,
        hits: Vec<Hit>,
        partial: bool,
        groups: Vec<Vec<Hit>>,
    ) -> Answer {
        let results = SearchResults {
            id: self.id,
            text: self.text,
            model,
            took_ms: present::took_ms(self.started, now),
            hits,
            partial,
            groups,
        };
        (self.search, SearchResponse::Results(results))
    }

    /// The answer naming why the search failed.
    fn failed(self, failure: Failure) -> Answer {
        (self.search, error(self.id, failure))
    }
}

/// A search and its answer.
type Answer = (SearchId, SearchResponse);

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
    Fleet(Worker),
}

impl Work {
    fn name(&self) -> &'static str {
        match self {
            Work::Rank(_) => "ranking",
            Work::Group(_) => "duplicate groups",
            Work::Export { .. } => "export",
            Work::Fleet(_) => "fleet ranking",
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

    /// The indexes' models changed (a re-index began or switched).
    pub fn set_models(&mut self, models: Models) {
        self.models = models;
    }

    /// Searches and fleet queries not answered yet.
    pub fn in_flight(&self) -> usize {
        self.cloud.len() + self.index.len()
    }

    /// A payload of the device's search topic (text or JSON), received at `now`. One that does
    /// not parse is answered with an error under the JSON `id` it holds, if any.
    pub fn payload(&mut self, payload: &[u8], now: Instant) -> Vec<Effect> {
        let search = self.next_search();
        let mut out = Vec::new();
        match SearchRequest::parse(payload, self.config.max_text_bytes) {
            Ok(request) => self.start(search, request, now, &mut out),
            Err(e) => {
                warn!(error = %e, "search refused");
                let id = json_id(payload).unwrap_or_default();
                let answer = (search, error(id, Failure::BadSearch(e)));
                self.answer(answer, &mut out);
            }
        }
        out
    }

    /// A search from inside the process (the HTTP endpoint, the command line), received at
    /// `now`. It is checked as a payload is ([`SearchRequest::validated`]) and answered with
    /// the same error if it fails. The returned id is the one its [`Effect::Answer`] carries.
    pub fn search(&mut self, request: SearchRequest, now: Instant) -> (SearchId, Vec<Effect>) {
        let search = self.next_search();
        let mut out = Vec::new();
        let id = request.id.as_deref().map(bounded_id).unwrap_or_default();
        match request.validated(self.config.max_text_bytes) {
            Ok(request) => self.start(search, request, now, &mut out),
            Err(e) => {
                warn!(error = %e, "search refused");
                self.answer((search, error(id, Failure::BadSearch(e))), &mut out);
            }
        }
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
    /// the worker that asked.
    pub fn fleet_query(&mut self, payload: &[u8]) -> Vec<Effect> {
        let mut out = Vec::new();
        let config = &self.config;
        match fleet::receive(payload, config.max_reply_bytes, config.max_k) {
            fleet::Asked::Dropped => {}
            fleet::Asked::Refused { worker, failure } => {
                out.extend(worker.refused(&config.device_id, failure));
            }
            fleet::Asked::Rank { worker, query, k } => {
                let search = self.next_search();
                self.index.insert(search, Work::Fleet(worker));
                out.push(Effect::Rank {
                    search,
                    query,
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
                        if p.server.as_ref().is_none_or(|s| !s.answered(resend.chunk)) {
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
                    self.answer(p.answering.failed(failure), &mut out);
                }
            }
            Timer::Index(search) => {
                if let Some(work) = self.index.remove(&search) {
                    warn!(%search, work = work.name(), "the index side did not answer in time");
                    match work {
                        Work::Rank(answering)
                        | Work::Group(answering)
                        | Work::Export { answering, .. } => {
                            let answer = answering.failed(Failure::Index(IndexError::TimedOut));
                            self.answer(answer, &mut out);
                        }
                        Work::Fleet(worker) => {
                            let device = &self.config.device_id;
                            out.extend(worker.refused(device, IndexError::TimedOut));
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
        match self.take_work(search, |w| matches!(w, Work::Rank(_) | Work::Fleet(_))) {
            Some(Work::Rank(answering)) => {
                let answer = match result {
                    Ok(Ranking {
                        model,
                        hits,
                        partial,
                    }) => answering.results(now, model, hits, partial, Vec::new()),
                    Err(e) => answering.failed(Failure::Index(e)),
                };
                self.answer(answer, &mut out);
            }
            Some(Work::Fleet(worker)) => {
                let (device, base) = (&self.config.device_id, self.config.thumb_base.as_deref());
                out.extend(worker.ranked(device, result, base));
            }
            _ => {}
        }
        out
    }

    /// The index side's result of an [`Effect::Duplicates`].
    pub fn grouped(
        &mut self,
        search: SearchId,
        result: Result<Duplicates, IndexError>,
        now: Instant,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        if let Some(Work::Group(answering)) =
            self.take_work(search, |w| matches!(w, Work::Group(_)))
        {
            let answer = match result {
                Ok(Duplicates { model, groups }) => {
                    answering.results(now, model, Vec::new(), false, groups)
                }
                Err(e) => answering.failed(Failure::Index(e)),
            };
            self.answer(answer, &mut out);
        }
        out
    }

    /// The index side's result of an [`Effect::Export`]: the chunks go to the cloud as
    /// independent rank requests under the search's request id (an empty export is answered
    /// at once).
    pub fn exported(
        &mut self,
        search: SearchId,
        result: Result<Export, IndexError>,
        now: Instant,
    ) -> Vec<Effect> {
        let mut out = Vec::new();
        let Some(Work::Export {
            answering,
            request_id,
            k,
            filter,
        }) = self.take_work(search, |w| matches!(w, Work::Export { .. }))
        else {
            return out;
        };
        let export = match result {
            Ok(export) if export.chunks.is_empty() => {
                let answer = answering.results(now, export.model, vec![], false, vec![]);
                self.answer(answer, &mut out);
                return out;
            }
            Ok(export) => export,
            Err(e) => {
                self.answer(answering.failed(Failure::Index(e)), &mut out);
                return out;
            }
        };
        let reply_to = topics::cloud_reply(&self.config.device_id);
        match ServerRanked::start(
            export,
            request_id,
            &reply_to,
            &answering.text,
            answering.lang.as_deref(),
            k,
        ) {
            Err(e) => self.answer(answering.failed(Failure::Wire(e)), &mut out),
            Ok((server, frames)) => {
                let frames = frames
                    .into_iter()
                    .zip(0..)
                    .map(|(frame, chunk)| Sent {
                        chunk,
                        topic: topics::CLOUD_RANK,
                        frame,
                    })
                    .collect();
                let pending = Pending {
                    answering,
                    model: self.models.serving.clone(),
                    k,
                    filter,
                    server: Some(server),
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

    /// Starts a valid search.
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
            lang,
            filter,
        } = request;
        let id = id.unwrap_or_else(|| format!("{request_id:x}"));
        let k = k.unwrap_or(self.config.default_k).min(self.config.max_k);
        let answering = |text| Answering {
            search,
            id,
            text,
            lang,
            started: now,
        };
        if let Some(threshold) = duplicates {
            // Near-duplicate groups: the device compares its own vectors; no cloud round trip.
            let text = present::duplicates_text(text, threshold);
            self.index.insert(search, Work::Group(answering(text)));
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
            self.index.insert(search, Work::Rank(answering(text)));
            out.push(Effect::Like {
                search,
                picture: like,
                k,
                filter,
            });
            out.push(schedule(self.config.index_timeout, Timer::Index(search)));
            return;
        }
        let answering = answering(text);
        let mode = mode.unwrap_or(self.config.default_mode);
        if mode == SearchMode::Server
            && self.config.default_mode != SearchMode::Server
            && !self.config.allow_server_mode
        {
            self.answer(answering.failed(Failure::ServerModeOff), out);
            return;
        }
        if mode == SearchMode::Server {
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
            lang: pending.answering.lang.clone(),
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
            Err(e) => self.answer(pending.answering.failed(Failure::Wire(e)), out),
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
        match Query::encoded(reply) {
            Err(failure) => self.answer(p.answering.failed(failure), out),
            Ok(query) => {
                let search = p.answering.search;
                self.index.insert(search, Work::Rank(p.answering));
                out.push(Effect::Rank {
                    search,
                    query,
                    k: p.k,
                    filter: p.filter,
                });
                out.push(schedule(self.config.index_timeout, Timer::Index(search)));
            }
        }
    }

    /// Takes one chunk's ranking of a server-ranked search; answers once every chunk is in,
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
        let taken = server.take(r.chunk.to_native(), &r.body);
        if taken == Ok(false) {
            return;
        }
        let Some(Pending {
            answering,
            k,
            filter,
            server: Some(server),
            ..
        }) = self.cloud.remove(&request_id)
        else {
            return;
        };
        let answer = match taken {
            Err(failure) => answering.failed(failure),
            Ok(_) => {
                let (model, hits) = server.merge(k, &filter);
                answering.results(now, model, hits, false, Vec::new())
            }
        };
        self.answer(answer, out);
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

    /// The answer of a search: thumbnail URLs on its hits, the best match for dashboards
    /// (retained), the answer on the results topic, then to its caller.
    fn answer(&self, (search, mut response): Answer, out: &mut Vec<Effect>) {
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

/// A correlation id as an error answer may echo it: at most 128 characters (a longer one is
/// what made the search fail).
fn bounded_id(id: &str) -> String {
    id.chars().take(128).collect()
}

/// The `id` of a JSON search that failed validation, so the error can still be correlated.
fn json_id(payload: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    value.get("id")?.as_str().map(bounded_id)
}

#[cfg(test)]
mod tests {
    use std::borrow::Cow;

    use edgeclip_messages::wire::{vector_view, ErrorCode, ReplyBody, TextVector};

    use super::*;
    use crate::search::test_support::*;

    #[test]
    fn a_searchs_language_goes_to_the_cloud_with_its_text_and_its_retry() {
        let t0 = Instant::now();
        let mut s = session();
        let mut asked_for = request("ein Hund am Strand");
        asked_for.lang = Some("de".into());
        let (_, out) = s.search(asked_for, t0);
        let lang_of = |frame: &[u8]| {
            let r =
                edgeclip_messages::wire::Received::<EncodeRequest>::decode(frame, LIMIT).unwrap();
            r.get().lang.as_ref().map(|l| l.to_string())
        };
        let sent = published(&out, topics::CLOUD_ENCODE);
        assert_eq!(lang_of(sent[0]).as_deref(), Some("de"));
        let retry = s.fire(Timer::Retry(asked(&out)));
        let again = published(&retry, topics::CLOUD_ENCODE);
        assert_eq!(again.len(), 1);
        assert_eq!(
            lang_of(again[0]).as_deref(),
            Some("de"),
            "the retry is the same bytes"
        );
        let (_, out) = s.search(request("a dog"), t0);
        assert_eq!(lang_of(published(&out, topics::CLOUD_ENCODE)[0]), None);
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
        let groups = Duplicates {
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
    fn an_in_process_search_is_checked_as_a_payload_is_and_answered_with_the_same_error() {
        let t0 = Instant::now();
        let mut s = session();
        let cases = [
            (
                r#"{"id":"q1","text":"cat","k":0}"#,
                request_with(Some("q1"), "cat", |r| r.k = Some(0)),
            ),
            (
                r#"{"id":"q2","text":"  "}"#,
                request_with(Some("q2"), "  ", |_| ()),
            ),
            (
                r#"{"id":"q3","text":"cat","duplicates":1.5}"#,
                request_with(Some("q3"), "cat", |r| r.duplicates = Some(1.5)),
            ),
        ];
        for (payload, request) in cases {
            let (search, out) = s.search(request, t0);
            assert_eq!(describe(&out), ["publish edgeclip/cam/results", "answer"]);
            let (answered, response) = the_answer(&out);
            assert_eq!(answered, search);
            let from_payload = s.payload(payload.as_bytes(), t0);
            assert_eq!(
                failed(response),
                failed(the_answer(&from_payload).1),
                "{payload}"
            );
        }
        // JSON has no NaN, so only an in-process search can carry one.
        let (_, out) = s.search(
            request_with(None, "cat", |r| r.filter.min_score = Some(f32::NAN)),
            t0,
        );
        assert_eq!(
            failed(the_answer(&out).1),
            ("", "bad search: invalid field min_score: must be a number")
        );
        let long = "x".repeat(1025);
        let (_, out) = s.search(request_with(Some(&long), "cat", |_| ()), t0);
        let (id, error) = failed(the_answer(&out).1);
        assert_eq!(
            (id.len(), error),
            (128, "bad search: invalid field id: longer than 128 bytes")
        );
        assert_eq!(s.in_flight(), 0);

        // A valid one is trimmed as a payload is, and goes on.
        let (_, out) = s.search(request("  a red circle \n"), t0);
        assert_eq!(
            encode_request(published(&out, topics::CLOUD_ENCODE)[0]).2,
            "a red circle"
        );
    }

    fn request_with(
        id: Option<&str>,
        text: &str,
        change: impl FnOnce(&mut SearchRequest),
    ) -> SearchRequest {
        let mut r = request(text);
        r.id = id.map(String::from);
        change(&mut r);
        r
    }

    #[test]
    fn a_cloud_vector_that_is_not_finite_fails_the_search_instead_of_being_ranked() {
        let t0 = Instant::now();
        let mut s = session();
        let (search, out) = s.search(request("a cat"), t0);
        let reply = wire::encode(&EncodeReply {
            request_id: asked(&out),
            body: ReplyBody::Vector(TextVector {
                model: OLD.into(),
                vector: vec![0.6, f32::NAN],
            }),
        })
        .unwrap();
        let out = s.cloud_reply(&reply, t0 + ms(40));
        assert_eq!(describe(&out), ["publish edgeclip/cam/results", "answer"]);
        let (answered, response) = the_answer(&out);
        assert_eq!(answered, search);
        assert_eq!(
            failed(response).1,
            "the cloud's vector is unusable: invalid field vector: value 1 is not finite"
        );
        assert_eq!(s.in_flight(), 0);
    }
}
