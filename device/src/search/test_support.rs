//! What the search engine's tests share: a session of device `cam` with models [`OLD`] and
//! [`NEW`], frames as the cloud sends them, and readers of effects.

use std::time::{Duration, Instant};

use bytes::Bytes;
use edgeclip_messages::dashboard::{SearchMode, SearchRequest, SearchResponse, SearchResults};
use edgeclip_messages::request_id::RequestIds;
use edgeclip_messages::topics;
use edgeclip_messages::wire::{
    self, CloudFailure, EncodeReply, EncodeRequest, ErrorCode, FleetAnswer, FleetQuery, RankBody,
    RankReply, RankRequest, RankedIds, Received, ReplyBody, TextVector,
};
use edgeclip_messages::{Filter, Hit};

use super::session::{DUPLICATES_TIMEOUT, INDEX_TIMEOUT};
use super::{Effect, Query, SearchId, Session, SessionConfig, Timer};
use crate::index::{Export, ExportChunk, Models};

pub(super) const OLD: &str = "clip-old@000000000001";
pub(super) const NEW: &str = "clip-new@000000000002";
pub(super) const LIMIT: usize = 1 << 20;

pub(super) fn config() -> SessionConfig {
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
        allow_server_mode: true,
        server_chunk_vectors: 2,
        max_server_vectors: 100,
        max_duplicate_pictures: 1000,
        thumb_base: Some("http://cam.local:8080".into()),
        best_image: false,
    }
}

pub(super) fn serving(model: &str) -> Models {
    Models {
        serving: model.into(),
        building: None,
    }
}

pub(super) fn reindexing() -> Models {
    Models {
        serving: OLD.into(),
        building: Some(NEW.into()),
    }
}

pub(super) fn session() -> Session {
    Session::new(config(), serving(OLD), RequestIds::from_clock())
}

pub(super) fn ms(n: u64) -> Duration {
    Duration::from_millis(n)
}

pub(super) fn hit(n: u32, score: f32) -> Hit {
    Hit {
        path: format!("/p/{n}.jpg"),
        score,
        taken_s: n as i64,
        id: format!("{n:016x}"),
        ..Hit::default()
    }
}

pub(super) fn request(text: &str) -> SearchRequest {
    SearchRequest::text(text)
}

/// The shape of a batch of effects, one line each.
pub(super) fn describe(effects: &[Effect]) -> Vec<String> {
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

pub(super) fn published<'a>(effects: &'a [Effect], on: &str) -> Vec<&'a Bytes> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Publish { topic, frame, .. } if topic == on => Some(frame),
            _ => None,
        })
        .collect()
}

pub(super) fn timers(effects: &[Effect]) -> Vec<Timer> {
    effects
        .iter()
        .filter_map(|e| match e {
            Effect::Schedule { timer, .. } => Some(*timer),
            _ => None,
        })
        .collect()
}

/// The one answer of a batch, checked to be the one published on the results topic.
pub(super) fn the_answer(effects: &[Effect]) -> (SearchId, &SearchResponse) {
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

pub(super) fn results(response: &SearchResponse) -> &SearchResults {
    match response {
        SearchResponse::Results(r) => r,
        SearchResponse::Error(e) => panic!("error answer: {}", e.error),
    }
}

pub(super) fn failed(response: &SearchResponse) -> (&str, &str) {
    match response {
        SearchResponse::Error(e) => (&e.id, &e.error),
        SearchResponse::Results(r) => panic!("results answer: {r:?}"),
    }
}

pub(super) fn take_rank(effects: Vec<Effect>) -> (SearchId, Query, usize, Filter) {
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
pub(super) fn encode_request(frame: &[u8]) -> (u64, String, String, String) {
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
pub(super) fn asked(effects: &[Effect]) -> u64 {
    let frames = published(effects, topics::CLOUD_ENCODE);
    assert_eq!(frames.len(), 1, "{:?}", describe(effects));
    encode_request(frames[0]).0
}

pub(super) fn vector_reply(request_id: u64, model: &str) -> Vec<u8> {
    wire::encode(&EncodeReply {
        request_id,
        body: ReplyBody::Vector(TextVector {
            model: model.into(),
            vector: vec![0.6, 0.8],
        }),
    })
    .unwrap()
}

pub(super) fn refusal(request_id: u64, code: ErrorCode, message: &str) -> Vec<u8> {
    wire::encode(&EncodeReply {
        request_id,
        body: ReplyBody::Error(CloudFailure {
            code,
            message: message.into(),
        }),
    })
    .unwrap()
}

pub(super) fn chunk_reply(
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

pub(super) fn fleet_query(reply_to: &str, k: u32, vector: Vec<f32>) -> Vec<u8> {
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

pub(super) fn fleet_answer(frame: &[u8]) -> Received<FleetAnswer> {
    Received::<FleetAnswer>::decode(frame, LIMIT).unwrap()
}

/// Five pictures (ids 0..5) in chunks of two, as the index side exports them.
pub(super) fn export() -> Export {
    let pictures: Vec<Hit> = (0..5).map(|n| hit(n, 0.0)).collect();
    let chunks = [&[0u32, 1][..], &[2, 3], &[4]]
        .iter()
        .map(|ids| ExportChunk {
            ids: ids.to_vec(),
            scales: vec![1.0 / 127.0; ids.len()],
            codes: vec![127; ids.len() * 2],
        })
        .collect();
    Export {
        model: OLD.into(),
        dim: 2,
        pictures,
        chunks,
    }
}

/// Starts a server-ranked search and exports; returns the search, its request id and the
/// rank request frames by chunk.
pub(super) fn server_search(
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
