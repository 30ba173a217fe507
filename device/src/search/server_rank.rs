//! A server-ranked search (method B), pure: the device's export goes out as one rank request
//! per chunk (each fits one MQTT message and is independent: any worker can take it), each
//! chunk's reply is checked and its top-k ids and scores kept, and once every chunk is in they
//! merge to the search's top k, mapped back to the device's pictures. The session publishes the
//! frames, retries the chunks not yet answered and answers.

use std::collections::HashSet;

use bytes::Bytes;
use edgeclip_messages::wire::{self, ArchivedRankBody, RankRequest};
use edgeclip_messages::{Filter, Hit, WireError};

use super::failure::Failure;
use crate::index::Export;

/// A server-ranked search in flight: the chunks sent and the hits merged so far.
#[derive(Debug)]
pub(super) struct ServerRanked {
    /// Model of the exported vectors: every chunk must be ranked with it.
    model: String,
    /// The picture of each exported id.
    pictures: Vec<Hit>,
    chunks: u32,
    received: HashSet<u32>,
    /// (id, score) of every chunk received.
    hits: Vec<(u32, f32)>,
}

impl ServerRanked {
    /// The rank requests of `export` under `request_id`, one frame per chunk in chunk order,
    /// and the search's state. `export` holds at least one chunk.
    pub(super) fn start(
        export: Export,
        request_id: u64,
        reply_to: &str,
        text: &str,
        lang: Option<&str>,
        k: usize,
    ) -> Result<(ServerRanked, Vec<Bytes>), WireError> {
        let Export {
            model,
            dim,
            pictures,
            chunks,
        } = export;
        let count = chunks.len() as u32;
        let frames = chunks
            .into_iter()
            .enumerate()
            .map(|(chunk, c)| {
                let request = RankRequest {
                    request_id,
                    reply_to: reply_to.to_string(),
                    model: model.clone(),
                    text: text.to_string(),
                    lang: lang.map(str::to_string),
                    k: k as u32,
                    chunk: chunk as u32,
                    chunks: count,
                    dim: dim as u32,
                    ids: c.ids,
                    scales: c.scales,
                    codes: c.codes,
                };
                wire::encode(&request).map(Bytes::from)
            })
            .collect::<Result<Vec<_>, _>>()?;
        let server = ServerRanked {
            model,
            pictures,
            chunks: count,
            received: HashSet::new(),
            hits: Vec::new(),
        };
        Ok((server, frames))
    }

    /// True once the cloud's ranking of `chunk` is in (its rank request need not be sent again).
    pub(super) fn answered(&self, chunk: u32) -> bool {
        self.received.contains(&chunk)
    }

    /// Takes the cloud's reply for `chunk`: true once every chunk is in. A chunk delivered
    /// twice (QoS 1) counts once. A refusal, a ranking by another model, one that names a
    /// chunk or ids that were not sent, or one with a score that is not finite fails the search.
    pub(super) fn take(&mut self, chunk: u32, body: &ArchivedRankBody) -> Result<bool, Failure> {
        let ranked = match body {
            ArchivedRankBody::Error(refusal) => return Err(Failure::cloud_refused(refusal)),
            ArchivedRankBody::Ranked(ranked) if ranked.model.as_str() != self.model => {
                return Err(Failure::ForeignModel {
                    cloud: ranked.model.to_string(),
                    device: self.model.clone(),
                })
            }
            ArchivedRankBody::Ranked(ranked) => ranked,
        };
        let fits = chunk < self.chunks
            && ranked.ids.len() == ranked.scores.len()
            && ranked
                .ids
                .iter()
                .all(|id| (id.to_native() as usize) < self.pictures.len());
        if !fits {
            return Err(Failure::RankingDoesNotFit);
        }
        if !ranked.scores.iter().all(|s| s.to_native().is_finite()) {
            return Err(Failure::NonFiniteScore);
        }
        if self.received.insert(chunk) {
            self.hits.extend(
                ranked
                    .ids
                    .iter()
                    .zip(ranked.scores.iter())
                    .map(|(i, s)| (i.to_native(), s.to_native())),
            );
        }
        Ok(self.received.len() as u32 == self.chunks)
    }

    /// The model of the vectors and the top `k` of the merged chunks that pass `min_score`,
    /// best first (ties by id), as the exported pictures with their scores.
    pub(super) fn merge(self, k: usize, filter: &Filter) -> (String, Vec<Hit>) {
        let ServerRanked {
            model,
            pictures,
            mut hits,
            ..
        } = self;
        hits.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
        let hits = hits
            .into_iter()
            .filter(|(_, score)| filter.scores(*score))
            .take(k)
            .map(|(i, score)| Hit {
                score,
                ..pictures[i as usize].clone()
            })
            .collect();
        (model, hits)
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use edgeclip_messages::dashboard::SearchMode;
    use edgeclip_messages::topics;
    use edgeclip_messages::wire::{CloudFailure, ErrorCode, RankBody, RankReply, Received};

    use super::*;
    use crate::search::test_support::*;
    use crate::search::{Effect, IndexError, Session, Timer};

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
            assert_eq!(s.in_flight(), 0);
            assert!(s.cloud_reply(&chunk1, t0 + ms(110)).is_empty());
        }
    }

    #[test]
    fn a_server_ranked_search_is_refused_unless_the_owner_allows_it_and_nothing_is_exported() {
        let t0 = Instant::now();
        let mut config = config();
        config.allow_server_mode = false;
        let mut s = Session::new(
            config.clone(),
            serving(OLD),
            edgeclip_messages::request_id::RequestIds::from_clock(),
        );
        let mut asked = request("a dog");
        asked.mode = Some(SearchMode::Server);
        asked.id = Some("q1".into());
        let (_, out) = s.search(asked.clone(), t0);
        assert!(!out.iter().any(|e| matches!(e, Effect::Export { .. })));
        let (id, error) = failed(the_answer(&out).1);
        assert_eq!(id, "q1");
        assert!(error.contains("search.allow_server_mode"), "{error}");
        let payload = serde_json::to_vec(&asked).unwrap();
        let out = s.payload(&payload, t0);
        assert!(failed(the_answer(&out).1)
            .1
            .contains("server-ranked searches are off"));
        assert_eq!(s.in_flight(), 0);
        // A device whose own default is server ranking has chosen it.
        config.default_mode = SearchMode::Server;
        let mut s = Session::new(
            config,
            serving(OLD),
            edgeclip_messages::request_id::RequestIds::from_clock(),
        );
        let (_, out) = s.search(request("a dog"), t0);
        assert!(matches!(out[0], Effect::Export { .. }));
    }

    #[test]
    fn took_ms_of_a_server_ranked_search_counts_from_receiving_the_search_not_from_the_export() {
        let t0 = Instant::now();
        let mut s = session();
        // The export comes back 30 ms after the search (see server_search).
        let (_, request_id, _) = server_search(&mut s, 5, None, t0);
        for (chunk, id) in [(0, 1), (1, 2)] {
            let reply = chunk_reply(request_id, chunk, OLD, &[id], &[0.5]);
            assert!(s.cloud_reply(&reply, t0 + ms(60)).is_empty());
        }
        let out = s.cloud_reply(&chunk_reply(request_id, 2, OLD, &[4], &[0.5]), t0 + ms(100));
        assert_eq!(results(the_answer(&out).1).took_ms, 100);
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
    fn a_rank_reply_with_foreign_ids_another_model_a_non_finite_score_or_an_error_is_refused() {
        let t0 = Instant::now();
        let fits = "the cloud's ranking does not fit the search";
        let not_finite = "the cloud's ranking holds a score that is not a finite number";
        // Each case: the reply to the search's request id, and the error it is answered with.
        type Reply = fn(u64) -> Vec<u8>;
        let cases: Vec<(Reply, String)> = vec![
            ((|id| chunk_reply(id, 0, OLD, &[7], &[0.9])), fits.into()),
            ((|id| chunk_reply(id, 3, OLD, &[0], &[0.9])), fits.into()),
            ((|id| chunk_reply(id, 0, OLD, &[0, 1], &[0.9])), fits.into()),
            (
                (|id| chunk_reply(id, 0, OLD, &[0, 1], &[0.9, f32::NAN])),
                not_finite.into(),
            ),
            (
                (|id| chunk_reply(id, 0, OLD, &[1], &[f32::INFINITY])),
                not_finite.into(),
            ),
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
    fn a_non_finite_score_never_sorts_above_the_real_ones() {
        let (mut server, _) =
            ServerRanked::start(export(), 1, "edgeclip/cam/cloud/reply", "t", None, 5)
                .expect("frames");
        let reply = |chunk, ids: &[u32], scores: &[f32]| {
            let frame = chunk_reply(1, chunk, OLD, ids, scores);
            Received::<RankReply>::decode(&frame, LIMIT).unwrap()
        };
        let nan = reply(0, &[0], &[f32::NAN]);
        assert_eq!(
            server.take(0, &nan.get().body),
            Err(Failure::NonFiniteScore)
        );
        assert!(!server.answered(0), "a refused chunk is not counted");
        for (chunk, id) in [(0, 1), (1, 2), (2, 4)] {
            let ok = reply(chunk, &[id], &[0.1 * id as f32]);
            assert_eq!(server.take(chunk, &ok.get().body), Ok(chunk == 2));
        }
        let (model, hits) = server.merge(5, &Filter::default());
        let ids: Vec<i64> = hits.iter().map(|h| h.taken_s).collect();
        assert_eq!((model.as_str(), ids), (OLD, vec![4, 2, 1]));
    }

    #[test]
    fn an_empty_or_refused_export_is_answered_without_the_cloud() {
        let t0 = Instant::now();
        let mut s = session();
        let mut r = request("a dog");
        r.mode = Some(SearchMode::Server);
        let (search, _) = s.search(r.clone(), t0);
        let empty = Export {
            chunks: Vec::new(),
            pictures: Vec::new(),
            ..export()
        };
        let out = s.exported(search, Ok(empty), t0 + ms(20));
        assert_eq!(describe(&out), ["publish edgeclip/cam/results", "answer"]);
        let answer = results(the_answer(&out).1);
        assert_eq!((answer.model.as_str(), answer.took_ms), (OLD, 20));
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
        assert!(!out
            .iter()
            .any(|e| matches!(e, Effect::Publish { topic, .. } if topic == topics::CLOUD_RANK)));
    }
}
