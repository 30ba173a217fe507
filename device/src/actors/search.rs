//! [`SearchActor`]: the search coordinator. Takes a search (from the dashboard topic or a
//! caller), asks the cloud for the text vector with a timeout, ranks, answers. It also answers
//! fleet queries: a text vector the cloud encoded once for every device, ranked through the
//! same path as the vector of the device's own search.
//!
//! Rankings, "more like this", near-duplicate groups and exports read the catalog directly
//! ([`CatalogReader`]) on a blocking thread ([`off_actor`]) and come back to the actor as a
//! message: no search waits for the index actor, and a slow one never holds up the others.
//!
//! A request the cloud has not answered after `cloud_retry` is sent once more, unchanged
//! (same request id: encoding is idempotent, and whichever reply comes first is used). A
//! cloud worker that dies holding the request takes it with it: the broker does not hand a
//! dead worker's in-flight messages of a clean session to the other workers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgeclip_link::LinkMsg;
use edgeclip_messages::dashboard::{
    Hit, SearchError, SearchMode, SearchRequest, SearchResponse, SearchResults,
};
use edgeclip_messages::request_id::RequestIds;
use edgeclip_messages::topics;
use edgeclip_messages::wire::{
    self, validate_vector, vector_view, ArchivedErrorCode, ArchivedRankBody, ArchivedReplyBody,
    ArchivedTextVector, EncodeReply, EncodeRequest, FleetAnswer, FleetBody, FleetQuery, Kind,
    RankReply, RankRequest, Received,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use crate::error::DeviceError;
use crate::index::{CatalogReader, Export, Filter, Models, Ranking};

/// Messages of the search actor.
pub enum SearchMsg {
    /// A payload from the device's search topic (text or JSON).
    Payload(Bytes),
    /// A search from inside the process; the answer also goes to the results topic.
    Search(SearchRequest, Option<RpcReplyPort<SearchResponse>>),
    /// A payload from the cloud reply topic.
    CloudReply(Bytes),
    /// A payload from the device's fleet query topic: a fleet search's text vector.
    FleetQuery(Bytes),
    /// Timer: send the request again if the cloud has not answered yet.
    Retry(u64),
    /// Timer: the cloud did not answer this request in time.
    Timeout(u64),
    /// A search answered off the actor (a ranking, "more like this", duplicates).
    Answer(Option<RpcReplyPort<SearchResponse>>, SearchResponse),
    /// The export of a server-ranked search, made off the actor: send it to the cloud.
    Exported(Box<Asked>, Result<Export, DeviceError>),
    /// A fleet query ranked off the actor: answer the worker that asked.
    FleetRanked {
        /// The fleet search's request id.
        request_id: u64,
        /// The worker's answer topic.
        reply_to: String,
        /// The hits, or why not.
        ranked: Result<Ranking, DeviceError>,
    },
}

/// The frames of a request to the cloud: (chunk number, topic, frame).
type Frames = Vec<(u32, &'static str, Vec<u8>)>;

/// A search as asked, before its request is sent.
pub struct Asked {
    request_id: u64,
    id: String,
    request: SearchRequest,
    k: usize,
    filter: Filter,
    port: Option<RpcReplyPort<SearchResponse>>,
}

/// A validated frame from the cloud that carries a text vector, ranked in place: the reply to
/// this device's own encode request, or a fleet query (the vector of a fleet search, encoded
/// once for every device).
pub enum Query {
    /// The answer to the device's encode request.
    Encoded(Received<EncodeReply>),
    /// A fleet search's vector.
    Fleet(Received<FleetQuery>),
}

impl Query {
    /// The text vector, if the frame holds one.
    fn text_vector(&self) -> Option<&ArchivedTextVector> {
        match self {
            Query::Encoded(reply) => match &reply.get().body {
                ArchivedReplyBody::Vector(v) => Some(v),
                ArchivedReplyBody::Error(_) => None,
            },
            Query::Fleet(query) => Some(&query.get().vector),
        }
    }

    /// Ranks directly on the archived vector of the frame: no copy, no deserialisation. The
    /// vector is ranked by the index of its model (see [`crate::index::Indexes::for_model`]).
    fn rank(
        &self,
        catalog: &CatalogReader,
        k: usize,
        filter: &Filter,
    ) -> Result<Ranking, DeviceError> {
        let Some(text) = self.text_vector() else {
            return Err(DeviceError::Search(
                "the cloud's reply holds no vector".into(),
            ));
        };
        let query = vector_view(&text.vector);
        validate_vector(&query)
            .map_err(|e| DeviceError::Search(format!("the cloud's vector is unusable: {e}")))?;
        catalog.rank(text.model.as_str(), &query, k, filter)
    }
}

/// Arguments of the search actor.
pub struct SearchArgs {
    /// Device id.
    pub device_id: String,
    /// Model ids of the indexes (the serving one is named in requests to the cloud; during a
    /// re-index, the one being built is asked for when the cloud serves only that one).
    pub models: tokio::sync::watch::Receiver<Models>,
    /// Wait for the cloud.
    pub cloud_timeout: Duration,
    /// Send an unanswered request once more after this long (None: never).
    pub cloud_retry: Option<Duration>,
    /// Default hits.
    pub default_k: usize,
    /// Most hits.
    pub max_k: usize,
    /// Longest search text.
    pub max_text_bytes: usize,
    /// Largest reply accepted from the cloud.
    pub max_reply_bytes: usize,
    /// The MQTT link.
    pub link: ActorRef<LinkMsg>,
    /// The indexes, read directly.
    pub catalog: CatalogReader,
    /// Who ranks when a search does not say.
    pub default_mode: SearchMode,
    /// Vectors per server-ranked chunk.
    pub server_chunk_vectors: usize,
    /// Most vectors one server-ranked search may send.
    pub max_server_vectors: usize,
    /// Most pictures a near-duplicate search may compare.
    pub max_duplicate_pictures: usize,
    /// Base URL of the device's HTTP endpoint (`http://host:port`), when it is on: hits get
    /// `<base>/thumb/<id>` as their thumbnail URL.
    pub thumb_base: Option<String>,
    /// Publish the best match's thumbnail bytes (retained) with this longest side and these
    /// decoder bounds (`[homeassistant] image_bytes`).
    pub best_image: Option<(u32, crate::preprocess::DecodeLimits)>,
}

struct Pending {
    id: String,
    /// Model whose text vector was asked for.
    model: String,
    text: String,
    k: usize,
    filter: Filter,
    started: Instant,
    port: Option<RpcReplyPort<SearchResponse>>,
    /// Set for a server-ranked search (method B).
    server: Option<ServerRanked>,
    /// The frames sent, kept until the retry.
    resend: Frames,
}

/// A server-ranked search in flight: the chunks sent and the hits merged so far.
struct ServerRanked {
    model: String,
    pictures: Vec<Hit>,
    chunks: u32,
    received: std::collections::HashSet<u32>,
    hits: Vec<(u32, f32)>,
}

/// State of the search actor.
pub struct SearchState {
    args: SearchArgs,
    ids: RequestIds,
    pending: HashMap<u64, Pending>,
}

/// The search actor.
pub struct SearchActor;

impl Actor for SearchActor {
    type Msg = SearchMsg;
    type State = SearchState;
    type Arguments = SearchArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<SearchMsg>,
        args: SearchArgs,
    ) -> Result<SearchState, ActorProcessingErr> {
        Ok(SearchState {
            args,
            ids: RequestIds::from_clock(),
            pending: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<SearchMsg>,
        msg: SearchMsg,
        state: &mut SearchState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            SearchMsg::Payload(bytes) => {
                match SearchRequest::parse(&bytes, state.args.max_text_bytes) {
                    Ok(request) => start(&myself, state, request, None),
                    Err(e) => {
                        warn!(error = %e, "search refused");
                        let id = json_id(&bytes).unwrap_or_default();
                        answer(
                            state,
                            None,
                            SearchResponse::Error(SearchError {
                                id,
                                error: format!("bad search: {e}"),
                            }),
                        );
                    }
                }
            }
            SearchMsg::Search(request, port) => start(&myself, state, request, port),
            SearchMsg::CloudReply(bytes) => on_cloud_reply(&myself, state, bytes),
            SearchMsg::FleetQuery(bytes) => on_fleet_query(&myself, state, &bytes),
            SearchMsg::Answer(port, response) => answer(state, port, response),
            SearchMsg::Exported(asked, export) => on_export(&myself, state, *asked, export),
            SearchMsg::FleetRanked {
                request_id,
                reply_to,
                ranked,
            } => {
                let body = match ranked {
                    Ok(Ranking { mut hits, .. }) => {
                        add_thumb_urls(state, &mut hits);
                        FleetBody::Hits(hits)
                    }
                    Err(error) => FleetBody::Error(error.to_string()),
                };
                answer_fleet(state, request_id, reply_to, body);
            }
            SearchMsg::Retry(request_id) => {
                if let Some(p) = state.pending.get_mut(&request_id) {
                    let resend = std::mem::take(&mut p.resend);
                    let mut sent = 0;
                    for (chunk, topic, frame) in resend {
                        if p.server
                            .as_ref()
                            .is_none_or(|s| !s.received.contains(&chunk))
                        {
                            edgeclip_link::publish(
                                &state.args.link,
                                topic.to_string(),
                                frame,
                                false,
                            );
                            sent += 1;
                        }
                    }
                    info!(id = %p.id, frames = sent, "no answer from the cloud yet; request sent again");
                }
            }
            SearchMsg::Timeout(request_id) => {
                if let Some(p) = state.pending.remove(&request_id) {
                    let error = format!(
                        "the cloud did not answer within {} ms (is edgeclip-cloud running and connected to the broker?)",
                        state.args.cloud_timeout.as_millis()
                    );
                    warn!(id = %p.id, "search timed out");
                    answer(
                        state,
                        p.port,
                        SearchResponse::Error(SearchError { id: p.id, error }),
                    );
                }
            }
        }
        Ok(())
    }
}

fn start(
    myself: &ActorRef<SearchMsg>,
    state: &mut SearchState,
    request: SearchRequest,
    port: Option<RpcReplyPort<SearchResponse>>,
) {
    let request_id = state.ids.next_id();
    let id = request
        .id
        .clone()
        .unwrap_or_else(|| format!("{request_id:x}"));
    let k = request
        .k
        .unwrap_or(state.args.default_k)
        .min(state.args.max_k);
    let filter = request.filter.clone();
    let catalog = state.args.catalog.clone();
    if let Some(threshold) = request.duplicates {
        // Near-duplicate groups: the device compares its own vectors; no cloud round trip.
        let started = Instant::now();
        let max = state.args.max_duplicate_pictures;
        let text = if request.text.is_empty() {
            format!("duplicates at {threshold}")
        } else {
            request.text.clone()
        };
        off_actor(
            myself,
            move || catalog.duplicates(threshold, k, &filter, max),
            move |grouped| {
                let response = match grouped {
                    Ok(found) => SearchResponse::Results(SearchResults {
                        id,
                        text,
                        model: found.model,
                        took_ms: started.elapsed().as_millis() as u64,
                        hits: Vec::new(),
                        partial: false,
                        groups: found.groups,
                    }),
                    Err(e) => SearchResponse::Error(SearchError {
                        id,
                        error: e.to_string(),
                    }),
                };
                SearchMsg::Answer(port, response)
            },
        );
        return;
    }
    if let Some(like) = &request.like {
        // Image to image: the device has the vectors already; no cloud round trip.
        let started = Instant::now();
        let path = PathBuf::from(like);
        let text = if request.text.is_empty() {
            format!("like {like}")
        } else {
            request.text.clone()
        };
        off_actor(
            myself,
            move || catalog.like(&path, k, &filter),
            move |ranked| SearchMsg::Answer(port, respond(ranked, id, text, started)),
        );
        return;
    }
    let asked = Asked {
        request_id,
        id,
        request,
        k,
        filter,
        port,
    };
    if asked.request.mode.unwrap_or(state.args.default_mode) == SearchMode::Server {
        // Method B: the text and the (int8) vectors go to the cloud, which ranks.
        let (chunk_vectors, max_vectors) = (
            state.args.server_chunk_vectors,
            state.args.max_server_vectors,
        );
        let f = asked.filter.clone();
        off_actor(
            myself,
            move || catalog.export(&f, chunk_vectors, max_vectors),
            move |export| SearchMsg::Exported(Box::new(asked), export),
        );
        return;
    }
    let model = state.args.models.borrow().serving.clone();
    let request = EncodeRequest {
        request_id,
        reply_to: topics::cloud_reply(&state.args.device_id),
        model: model.clone(),
        text: asked.request.text.clone(),
        lang: None,
    };
    let sent = wire::encode(&request)
        .map(|f| vec![(0, topics::CLOUD_ENCODE, f)])
        .map_err(DeviceError::from);
    send(myself, state, asked, model, sent, None);
}

/// Sends a server-ranked search's chunks once its export is made.
fn on_export(
    myself: &ActorRef<SearchMsg>,
    state: &mut SearchState,
    asked: Asked,
    export: Result<Export, DeviceError>,
) {
    let model = state.args.models.borrow().serving.clone();
    let export = match export {
        Ok(export) => export,
        Err(e) => return send(myself, state, asked, model, Err(e), None),
    };
    if export.chunks.is_empty() {
        let empty = SearchResults {
            id: asked.id,
            text: asked.request.text,
            model: export.model,
            took_ms: 0,
            hits: Vec::new(),
            partial: false,
            groups: Vec::new(),
        };
        answer(state, asked.port, SearchResponse::Results(empty));
        return;
    }
    let reply_to = topics::cloud_reply(&state.args.device_id);
    let chunks = export.chunks.len() as u32;
    let mut frames = Vec::new();
    for (chunk, (ids, scales, codes)) in export.chunks.into_iter().enumerate() {
        frames.push(wire::encode(&RankRequest {
            request_id: asked.request_id,
            reply_to: reply_to.clone(),
            model: export.model.clone(),
            text: asked.request.text.clone(),
            lang: None,
            k: asked.k as u32,
            chunk: chunk as u32,
            chunks,
            dim: export.dim as u32,
            ids,
            scales,
            codes,
        }));
    }
    let server = ServerRanked {
        model: export.model,
        pictures: export.pictures,
        chunks,
        received: Default::default(),
        hits: Vec::new(),
    };
    let sent = frames
        .into_iter()
        .enumerate()
        .map(|(chunk, f)| f.map(|f| (chunk as u32, topics::CLOUD_RANK, f)))
        .collect::<Result<Vec<_>, _>>()
        .map_err(DeviceError::from);
    send(myself, state, asked, model, sent, Some(server));
}

/// Publishes a search's frames to the cloud (or answers its error), and waits for the reply
/// with a retry and a timeout.
fn send(
    myself: &ActorRef<SearchMsg>,
    state: &mut SearchState,
    asked: Asked,
    model: String,
    sent: Result<Frames, DeviceError>,
    server: Option<ServerRanked>,
) {
    let Asked {
        request_id,
        id,
        request,
        k,
        filter,
        port,
    } = asked;
    let mut resend = Vec::new();
    match sent {
        Ok(frames) => {
            let keep = state.args.cloud_retry.is_some();
            for (chunk, topic, frame) in frames {
                if keep {
                    resend.push((chunk, topic, frame.clone()));
                }
                edgeclip_link::publish(&state.args.link, topic.to_string(), frame, false);
            }
        }
        Err(e) => {
            let error = e.to_string();
            answer(
                state,
                port,
                SearchResponse::Error(SearchError { id, error }),
            );
            return;
        }
    }
    state.pending.insert(
        request_id,
        Pending {
            id,
            model,
            text: request.text,
            k,
            filter,
            started: Instant::now(),
            port,
            server,
            resend,
        },
    );
    if let Some(retry) = state.args.cloud_retry {
        myself.send_after(retry, move || SearchMsg::Retry(request_id));
    }
    myself.send_after(state.args.cloud_timeout, move || {
        SearchMsg::Timeout(request_id)
    });
}

/// Runs `work` (reads of the catalog, under its read lock) on a blocking thread and sends the
/// message `then` makes of its result back to the actor, which meanwhile handles others.
fn off_actor<T: Send + 'static>(
    myself: &ActorRef<SearchMsg>,
    work: impl FnOnce() -> Result<T, DeviceError> + Send + 'static,
    then: impl FnOnce(Result<T, DeviceError>) -> SearchMsg + Send + 'static,
) {
    let myself = myself.clone();
    tokio::spawn(async move {
        let result = tokio::task::spawn_blocking(work)
            .await
            .unwrap_or_else(|e| Err(DeviceError::Worker(format!("index did not answer: {e}"))));
        let _ = myself.cast(then(result));
    });
}

/// Merges one chunk's ranking of a server-ranked search; answers once every chunk is in.
fn on_rank_reply(state: &mut SearchState, bytes: &[u8]) {
    let reply = match Received::<RankReply>::decode(bytes, state.args.max_reply_bytes) {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "malformed rank reply from the cloud ignored");
            return;
        }
    };
    let r = reply.get();
    let request_id = r.request_id.to_native();
    let Some(p) = state.pending.get_mut(&request_id) else {
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
        ArchivedRankBody::Error(f) => Some(format!(
            "the cloud refused the search ({:?}): {}",
            f.code, f.message
        )),
        ArchivedRankBody::Ranked(ranked) if ranked.model.as_str() != server.model => Some(format!(
            "the cloud ranked with model {}, the device's index holds {}",
            ranked.model, server.model
        )),
        ArchivedRankBody::Ranked(ranked) => {
            let chunk = r.chunk.to_native();
            let valid = chunk < server.chunks
                && ranked.ids.len() == ranked.scores.len()
                && ranked
                    .ids
                    .iter()
                    .all(|id| (id.to_native() as usize) < server.pictures.len());
            if !valid {
                Some("the cloud's ranking does not fit the search".to_string())
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
    let done = failure.is_some() || server.received.len() as u32 == server.chunks;
    if !done {
        return;
    }
    let Some(p) = state.pending.remove(&request_id) else {
        return;
    };
    let response = match (failure, p.server) {
        (Some(error), _) => SearchResponse::Error(SearchError { id: p.id, error }),
        (None, Some(mut server)) => {
            server
                .hits
                .sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
            let hits = server
                .hits
                .into_iter()
                .filter(|(_, s)| p.filter.min_score.is_none_or(|m| *s >= m))
                .take(p.k)
                .map(|(i, score)| Hit {
                    score,
                    ..server.pictures[i as usize].clone()
                })
                .collect();
            let took_ms = p.started.elapsed().as_millis() as u64;
            SearchResponse::Results(SearchResults {
                id: p.id,
                text: p.text,
                model: server.model,
                took_ms,
                hits,
                partial: false,
                groups: Vec::new(),
            })
        }
        (None, None) => return,
    };
    answer(state, p.port, response);
}

fn on_cloud_reply(myself: &ActorRef<SearchMsg>, state: &mut SearchState, bytes: Bytes) {
    if Kind::of(&bytes) == Some(Kind::RankReply) {
        on_rank_reply(state, &bytes);
        return;
    }
    let reply = match Received::<EncodeReply>::decode(&bytes, state.args.max_reply_bytes) {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "malformed reply from the cloud ignored");
            return;
        }
    };
    let request_id = reply.get().request_id.to_native();
    let Some(p) = state.pending.remove(&request_id) else {
        info!(request_id, "reply to an unknown or expired request ignored");
        return;
    };
    let building = state.args.models.borrow().building.clone();
    let refused = match &reply.get().body {
        ArchivedReplyBody::Error(f)
            if f.code == ArchivedErrorCode::ModelMismatch
                && building.as_ref().is_some_and(|b| *b != p.model) =>
        {
            // The device re-indexes for a new model and the cloud no longer serves the
            // previous one: ask for the new model's vector, ranked by the index being built.
            let model = building.unwrap_or_default();
            info!(id = %p.id, asked = %p.model, %model, "the cloud serves only the new model; answering from the index being built");
            ask_again(myself, state, p, model);
            return;
        }
        ArchivedReplyBody::Error(f) => Some(format!(
            "the cloud refused the search ({:?}): {}",
            f.code, f.message
        )),
        ArchivedReplyBody::Vector(_) => None,
    };
    if let Some(error) = refused {
        let response = SearchResponse::Error(SearchError { id: p.id, error });
        answer(state, p.port, response);
        return;
    }
    let (catalog, query) = (state.args.catalog.clone(), Query::Encoded(reply));
    let Pending {
        id,
        text,
        k,
        filter,
        started,
        port,
        ..
    } = p;
    off_actor(
        myself,
        move || query.rank(&catalog, k, &filter),
        move |ranked| SearchMsg::Answer(port, respond(ranked, id, text, started)),
    );
}

/// Sends a pending search's text again under a new request id, asking for `model`'s vector
/// (a late reply to the first request then finds no pending search and is ignored).
fn ask_again(myself: &ActorRef<SearchMsg>, state: &mut SearchState, mut p: Pending, model: String) {
    let request_id = state.ids.next_id();
    let request = EncodeRequest {
        request_id,
        reply_to: topics::cloud_reply(&state.args.device_id),
        model: model.clone(),
        text: p.text.clone(),
        lang: None,
    };
    match wire::encode(&request) {
        Ok(frame) => {
            p.resend = if state.args.cloud_retry.is_some() {
                vec![(0, topics::CLOUD_ENCODE, frame.clone())]
            } else {
                Vec::new()
            };
            edgeclip_link::publish(
                &state.args.link,
                topics::CLOUD_ENCODE.to_string(),
                frame,
                false,
            );
        }
        Err(e) => {
            answer(
                state,
                p.port.take(),
                SearchResponse::Error(SearchError {
                    id: p.id.clone(),
                    error: e.to_string(),
                }),
            );
            return;
        }
    }
    p.model = model;
    state.pending.insert(request_id, p);
    if let Some(retry) = state.args.cloud_retry {
        myself.send_after(retry, move || SearchMsg::Retry(request_id));
    }
    myself.send_after(state.args.cloud_timeout, move || {
        SearchMsg::Timeout(request_id)
    });
}

/// Ranks a fleet search's vector through the same path as the device's own searches and
/// answers the worker that asked. A query without a trustworthy reply topic is dropped.
fn on_fleet_query(myself: &ActorRef<SearchMsg>, state: &mut SearchState, bytes: &[u8]) {
    let query = match Received::<FleetQuery>::decode(bytes, state.args.max_reply_bytes) {
        Ok(q) => q,
        Err(e) => {
            warn!(error = %e, "malformed fleet query ignored");
            return;
        }
    };
    let q = query.get();
    let (request_id, reply_to) = (q.request_id.to_native(), q.reply_to.to_string());
    if let Err(e) = edgeclip_messages::topics::validate_fleet_answer_topic(&reply_to) {
        warn!(error = %e, "fleet query with an unusable reply topic ignored");
        return;
    }
    let k = (q.k.to_native() as usize).min(state.args.max_k);
    if let Err(e) = q.validate() {
        let body = FleetBody::Error(format!("bad fleet query: {e}"));
        answer_fleet(state, request_id, reply_to, body);
        return;
    }
    let (catalog, query) = (state.args.catalog.clone(), Query::Fleet(query));
    off_actor(
        myself,
        move || query.rank(&catalog, k, &Filter::default()),
        move |ranked| SearchMsg::FleetRanked {
            request_id,
            reply_to,
            ranked,
        },
    );
}

/// Publishes a fleet answer to the worker that asked.
fn answer_fleet(state: &SearchState, request_id: u64, reply_to: String, body: FleetBody) {
    match wire::encode(&FleetAnswer {
        request_id,
        device: state.args.device_id.clone(),
        body,
    }) {
        Ok(frame) => edgeclip_link::publish(&state.args.link, reply_to, frame, false),
        Err(e) => warn!(error = %e, "fleet answer not serialisable"),
    }
}

/// The answer to a search from a ranking.
fn respond(
    ranked: Result<Ranking, DeviceError>,
    id: String,
    text: String,
    started: Instant,
) -> SearchResponse {
    match ranked {
        Ok(Ranking {
            model,
            hits,
            partial,
        }) => SearchResponse::Results(SearchResults {
            id,
            text,
            model,
            took_ms: started.elapsed().as_millis() as u64,
            hits,
            partial,
            groups: Vec::new(),
        }),
        Err(e) => SearchResponse::Error(SearchError {
            id,
            error: e.to_string(),
        }),
    }
}

/// Publishes the answer on the results topic and hands it to the in-process caller, if any.
fn answer(
    state: &SearchState,
    port: Option<RpcReplyPort<SearchResponse>>,
    mut response: SearchResponse,
) {
    if let SearchResponse::Results(results) = &mut response {
        add_thumb_urls(state, &mut results.hits);
    }
    if let SearchResponse::Results(SearchResults { hits, .. }) = &response {
        if let Some(best) = hits.first() {
            publish_best(state, best);
        }
    }
    match serde_json::to_vec(&response) {
        Ok(json) => edgeclip_link::publish(
            &state.args.link,
            topics::results(&state.args.device_id),
            json,
            false,
        ),
        Err(e) => warn!(error = %e, "answer not serialisable"),
    }
    if let Some(port) = port {
        let _ = port.send(response);
    }
}

/// Gives each hit the URL of its thumbnail on the device's HTTP endpoint, when it is on.
fn add_thumb_urls(state: &SearchState, hits: &mut [Hit]) {
    if let Some(base) = &state.args.thumb_base {
        for hit in hits {
            hit.thumb_url = Some(format!("{base}/thumb/{}", hit.id));
        }
    }
}

/// Publishes the best match for dashboards (retained): its thumbnail URL, and if enabled its
/// thumbnail bytes, made on a blocking thread.
fn publish_best(state: &SearchState, best: &Hit) {
    let device = &state.args.device_id;
    if let Some(url) = &best.thumb_url {
        edgeclip_link::publish(
            &state.args.link,
            topics::best_url(device),
            url.clone().into_bytes(),
            true,
        );
    }
    if let Some((side, limits)) = state.args.best_image {
        let (link, topic, path) = (
            state.args.link.clone(),
            topics::best_image(device),
            PathBuf::from(&best.path),
        );
        tokio::spawn(async move {
            let made = tokio::task::spawn_blocking(move || {
                let bytes = std::fs::read(&path).map_err(|e| format!("{}: {e}", path.display()))?;
                crate::thumb::make_thumbnail(&bytes, side, limits)
                    .map_err(|e| format!("{}: {e}", path.display()))
            })
            .await;
            match made {
                Ok(Ok(jpeg)) => edgeclip_link::publish(&link, topic, jpeg, true),
                Ok(Err(e)) => warn!(error = %e, "best match thumbnail not published"),
                Err(e) => warn!(error = %e, "best match thumbnail failed"),
            }
        });
    }
}

/// The `id` of a JSON search that failed validation, so the error can still be correlated.
fn json_id(bytes: &[u8]) -> Option<String> {
    let value: serde_json::Value = serde_json::from_slice(bytes).ok()?;
    value
        .get("id")?
        .as_str()
        .map(|s| s.chars().take(128).collect())
}
