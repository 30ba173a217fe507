//! [`SearchActor`]: the search coordinator. Takes a search (from the dashboard topic or a
//! caller), asks the cloud for the text vector with a timeout, has the index rank, answers.
//! It also answers fleet queries: a text vector the cloud encoded once for every device,
//! ranked through the same index path as the vector of the device's own search.
//!
//! A request the cloud has not answered after `cloud_retry` is sent once more, unchanged
//! (same request id: encoding is idempotent, and whichever reply comes first is used). A
//! cloud worker that dies holding the request takes it with it: the broker does not hand a
//! dead worker's in-flight messages of a clean session to the other workers.

use std::collections::HashMap;
use std::path::PathBuf;
use std::time::{Duration, Instant};

use edgeclip_link::LinkMsg;
use edgeclip_messages::dashboard::{
    Hit, SearchError, SearchMode, SearchRequest, SearchResponse, SearchResults,
};
use edgeclip_messages::request_id::RequestIds;
use edgeclip_messages::topics;
use edgeclip_messages::wire::{
    self, ArchivedErrorCode, ArchivedRankBody, ArchivedReplyBody, EncodeReply, EncodeRequest,
    FleetAnswer, FleetBody, FleetQuery, Kind, RankReply, RankRequest, Received,
};
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use tracing::{info, warn};

use super::index::{IndexMsg, Models, Query, Ranking};
use crate::index::Filter;

/// How long the index may take to rank (it is in-process and fast; this only guards
/// against a stuck actor).
const RANK_TIMEOUT: Duration = Duration::from_secs(10);
/// How long the index may take to group near-duplicates: O(n²) comparisons, bounded by
/// `search.max_duplicate_pictures` (5,000 pictures: ~12.5 million 512-d dot products, a few
/// seconds on a Raspberry Pi 4).
const DUPLICATES_TIMEOUT: Duration = Duration::from_secs(60);

/// Messages of the search actor.
pub enum SearchMsg {
    /// A payload from the device's search topic (text or JSON).
    Payload(Vec<u8>),
    /// A search from inside the process; the answer also goes to the results topic.
    Search(SearchRequest, Option<RpcReplyPort<SearchResponse>>),
    /// A payload from the cloud reply topic.
    CloudReply(Vec<u8>),
    /// A payload from the device's fleet query topic: a fleet search's text vector.
    FleetQuery(Vec<u8>),
    /// Timer: send the request again if the cloud has not answered yet.
    Retry(u64),
    /// Timer: the cloud did not answer this request in time.
    Timeout(u64),
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
    /// The index.
    pub index: ActorRef<IndexMsg>,
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
    /// The frames sent (chunk number, topic, frame), kept until the retry.
    resend: Vec<(u32, &'static str, Vec<u8>)>,
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
                    Ok(request) => start(&myself, state, request, None).await,
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
            SearchMsg::Search(request, port) => start(&myself, state, request, port).await,
            SearchMsg::CloudReply(bytes) => on_cloud_reply(&myself, state, bytes).await,
            SearchMsg::FleetQuery(bytes) => on_fleet_query(state, &bytes).await,
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

async fn start(
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
    if let Some(threshold) = request.duplicates {
        // Near-duplicate groups: the device compares its own vectors; no cloud round trip.
        let started = Instant::now();
        let max = state.args.max_duplicate_pictures;
        let grouped = ractor::call_t!(
            state.args.index,
            |port| IndexMsg::Duplicates {
                threshold,
                k,
                filter,
                max,
                port
            },
            DUPLICATES_TIMEOUT.as_millis() as u64
        );
        let text = if request.text.is_empty() {
            format!("duplicates at {threshold}")
        } else {
            request.text.clone()
        };
        let response = match grouped {
            Ok(Ok((model, groups))) => SearchResponse::Results(SearchResults {
                id,
                text,
                model,
                took_ms: started.elapsed().as_millis() as u64,
                hits: Vec::new(),
                partial: false,
                groups,
            }),
            Ok(Err(error)) => SearchResponse::Error(SearchError { id, error }),
            Err(e) => SearchResponse::Error(SearchError {
                id,
                error: format!("index did not answer: {e}"),
            }),
        };
        answer(state, port, response);
        return;
    }
    if let Some(like) = &request.like {
        // Image to image: the device has the vectors already; no cloud round trip.
        let started = Instant::now();
        let path = PathBuf::from(like);
        let ranked = ractor::call_t!(
            state.args.index,
            |port| IndexMsg::Like {
                path,
                k,
                filter,
                port
            },
            RANK_TIMEOUT.as_millis() as u64
        );
        let ranked: Result<Result<Ranking, String>, _> = ranked;
        let text = if request.text.is_empty() {
            format!("like {like}")
        } else {
            request.text.clone()
        };
        let response = respond(ranked, id, text, started);
        answer(state, port, response);
        return;
    }
    let reply_to = topics::cloud_reply(&state.args.device_id);
    let mut server = None;
    let model = state.args.models.borrow().serving.clone();
    let sent = if request.mode.unwrap_or(state.args.default_mode) == SearchMode::Server {
        // Method B: the text and the (int8) vectors go to the cloud, which ranks.
        let (chunk_vectors, max_vectors) = (
            state.args.server_chunk_vectors,
            state.args.max_server_vectors,
        );
        let f = filter.clone();
        let export = ractor::call_t!(
            state.args.index,
            |port| IndexMsg::Export {
                filter: f,
                chunk_vectors,
                max_vectors,
                port
            },
            RANK_TIMEOUT.as_millis() as u64
        );
        match export {
            Ok(Ok(export)) if export.chunks.is_empty() => {
                let empty = SearchResults {
                    id,
                    text: request.text,
                    model: export.model,
                    took_ms: 0,
                    hits: Vec::new(),
                    partial: false,
                    groups: Vec::new(),
                };
                answer(state, port, SearchResponse::Results(empty));
                return;
            }
            Ok(Ok(export)) => {
                let chunks = export.chunks.len() as u32;
                let mut frames = Vec::new();
                for (chunk, (ids, scales, codes)) in export.chunks.into_iter().enumerate() {
                    frames.push(wire::encode(&RankRequest {
                        request_id,
                        reply_to: reply_to.clone(),
                        model: export.model.clone(),
                        text: request.text.clone(),
                        k: k as u32,
                        chunk: chunk as u32,
                        chunks,
                        dim: export.dim as u32,
                        ids,
                        scales,
                        codes,
                    }));
                }
                server = Some(ServerRanked {
                    model: export.model,
                    pictures: export.pictures,
                    chunks,
                    received: Default::default(),
                    hits: Vec::new(),
                });
                frames
                    .into_iter()
                    .enumerate()
                    .map(|(chunk, f)| f.map(|f| (chunk as u32, topics::CLOUD_RANK, f)))
                    .collect::<Result<Vec<_>, _>>()
                    .map_err(|e| e.to_string())
            }
            Ok(Err(e)) => Err(e),
            Err(e) => Err(format!("index did not answer: {e}")),
        }
    } else {
        let request = EncodeRequest {
            request_id,
            reply_to,
            model: model.clone(),
            text: request.text.clone(),
        };
        wire::encode(&request)
            .map(|f| vec![(0, topics::CLOUD_ENCODE, f)])
            .map_err(|e| e.to_string())
    };
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
        Err(error) => {
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

async fn on_cloud_reply(myself: &ActorRef<SearchMsg>, state: &mut SearchState, bytes: Vec<u8>) {
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
    let response = match &reply.get().body {
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
        ArchivedReplyBody::Error(f) => SearchResponse::Error(SearchError {
            id: p.id.clone(),
            error: format!("the cloud refused the search ({:?}): {}", f.code, f.message),
        }),
        ArchivedReplyBody::Vector(_) => {
            let filter = p.filter.clone();
            let query = Query::Encoded(reply);
            let ranked = ractor::call_t!(
                state.args.index,
                |port| IndexMsg::Rank {
                    query,
                    k: p.k,
                    filter,
                    port
                },
                RANK_TIMEOUT.as_millis() as u64
            );
            respond(ranked, p.id.clone(), p.text.clone(), p.started)
        }
    };
    answer(state, p.port, response);
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

/// Ranks a fleet search's vector through the same index path as the device's own searches
/// and answers the worker that asked. A query without a trustworthy reply topic is dropped.
async fn on_fleet_query(state: &mut SearchState, bytes: &[u8]) {
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
    let checked = q.validate();
    let k = (q.k.to_native() as usize).min(state.args.max_k);
    let body = match checked {
        Err(e) => FleetBody::Error(format!("bad fleet query: {e}")),
        Ok(()) => {
            let query = Query::Fleet(query);
            let ranked = ractor::call_t!(
                state.args.index,
                |port| IndexMsg::Rank {
                    query,
                    k,
                    filter: Filter::default(),
                    port
                },
                RANK_TIMEOUT.as_millis() as u64
            );
            match ranked {
                Ok(Ok(Ranking { mut hits, .. })) => {
                    add_thumb_urls(state, &mut hits);
                    FleetBody::Hits(hits)
                }
                Ok(Err(error)) => FleetBody::Error(error),
                Err(e) => FleetBody::Error(format!("index did not answer: {e}")),
            }
        }
    };
    match wire::encode(&FleetAnswer {
        request_id,
        device: state.args.device_id.clone(),
        body,
    }) {
        Ok(frame) => edgeclip_link::publish(&state.args.link, reply_to, frame, false),
        Err(e) => warn!(error = %e, "fleet answer not serialisable"),
    }
}

/// The answer to a search from the index's ranking.
fn respond<E: std::fmt::Display>(
    ranked: Result<Result<Ranking, String>, E>,
    id: String,
    text: String,
    started: Instant,
) -> SearchResponse {
    match ranked {
        Ok(Ok(Ranking {
            model,
            hits,
            partial,
        })) => SearchResponse::Results(SearchResults {
            id,
            text,
            model,
            took_ms: started.elapsed().as_millis() as u64,
            hits,
            partial,
            groups: Vec::new(),
        }),
        Ok(Err(error)) => SearchResponse::Error(SearchError { id, error }),
        Err(e) => SearchResponse::Error(SearchError {
            id,
            error: format!("index did not answer: {e}"),
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
