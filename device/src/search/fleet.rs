//! Fleet queries, pure: a fleet search's text vector, encoded once by a cloud worker for every
//! device, is ranked through the same index path as the vector of the device's own search
//! ([`Query`]) and answered to the worker that asked, never on the device's results topic. A
//! query whose reply topic is not a worker's answer topic is dropped unanswered (it could make
//! the device publish anywhere); a query with a bad field is answered with the error.

use edgeclip_messages::topics;
use edgeclip_messages::wire::{self, FleetAnswer, FleetBody, FleetQuery, Received};
use tracing::warn;

use super::failure::{Failure, IndexError};
use super::present;
use super::query::Query;
use super::session::Effect;
use crate::index::Ranking;

/// The worker a fleet query is answered to.
#[derive(Debug)]
pub(super) struct Worker {
    /// The fleet search's request id.
    request_id: u64,
    /// The worker's answer topic (checked: `edgeclip/fleet/answers/<worker>`).
    reply_to: String,
}

/// What a fleet query payload asks of the session.
#[derive(Debug)]
pub(super) enum Asked {
    /// Rank `query` for its `k` best (capped at the device's most hits) and answer `worker`.
    Rank {
        /// Whom to answer.
        worker: Worker,
        /// The received frame, ranked in place.
        query: Query,
        /// Hits wanted.
        k: usize,
    },
    /// Answer `worker` with this error.
    Refused {
        /// Whom to answer.
        worker: Worker,
        /// Why.
        failure: Failure,
    },
    /// Nothing to do: the payload is no fleet query, or has no trustworthy reply topic.
    Dropped,
}

/// Decodes and checks a payload of the device's fleet query topic.
pub(super) fn receive(payload: &[u8], max_reply_bytes: usize, max_k: usize) -> Asked {
    let query = match Received::<FleetQuery>::decode(payload, max_reply_bytes) {
        Ok(q) => q,
        Err(e) => {
            warn!(error = %e, "malformed fleet query ignored");
            return Asked::Dropped;
        }
    };
    let q = query.get();
    let (request_id, reply_to) = (q.request_id.to_native(), q.reply_to.to_string());
    if let Err(e) = topics::validate_fleet_answer_topic(&reply_to) {
        warn!(error = %e, "fleet query with an unusable reply topic ignored");
        return Asked::Dropped;
    }
    let worker = Worker {
        request_id,
        reply_to,
    };
    let k = (q.k.to_native() as usize).min(max_k);
    match q.validate() {
        Err(e) => Asked::Refused {
            worker,
            failure: Failure::BadFleetQuery(e),
        },
        Ok(()) => Asked::Rank {
            worker,
            query: Query::Fleet(query),
            k,
        },
    }
}

impl Worker {
    /// The answer to the worker: `device`'s hits (with thumbnail URLs when the HTTP endpoint
    /// at `thumb_base` is on), or why there are none.
    pub(super) fn ranked(
        self,
        device: &str,
        result: Result<Ranking, IndexError>,
        thumb_base: Option<&str>,
    ) -> Option<Effect> {
        let body = match result {
            Ok(Ranking { mut hits, .. }) => {
                present::add_thumb_urls(thumb_base, &mut hits);
                FleetBody::Hits(hits)
            }
            Err(e) => FleetBody::Error(e.to_string()),
        };
        self.answer(device, body)
    }

    /// The answer to the worker: an error.
    pub(super) fn refused(self, device: &str, error: impl ToString) -> Option<Effect> {
        self.answer(device, FleetBody::Error(error.to_string()))
    }

    fn answer(self, device: &str, body: FleetBody) -> Option<Effect> {
        let answer = FleetAnswer {
            request_id: self.request_id,
            device: device.to_string(),
            body,
        };
        match wire::encode(&answer) {
            Ok(frame) => Some(Effect::Publish {
                topic: self.reply_to,
                frame: frame.into(),
                retain: false,
            }),
            Err(e) => {
                warn!(error = %e, "fleet answer not serialisable");
                None
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use std::time::Instant;

    use edgeclip_messages::wire::ArchivedFleetBody;
    use edgeclip_messages::Filter;

    use super::*;
    use crate::search::test_support::*;
    use crate::search::Timer;

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
}
