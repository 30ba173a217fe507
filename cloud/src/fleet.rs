//! [`Fleet`]: the rules of fleet searches, without a runtime. Which devices are asked (those
//! whose retained availability says online), what a search may ask for (its deadline and `k`,
//! bounded by the configuration), which answers count (one per device asked, before the
//! deadline), and the merged answer: every device's hits best first, the `k` best, with the
//! devices that stayed silent as missing, those that answered an error as failed and those
//! known but offline as offline.
//!
//! The fleet actor turns messages into calls of this engine and publishes what it returns; the
//! engine is handed the time (`now`) instead of reading a clock.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use edgeclip_messages::dashboard::{
    validate_fleet_id, DeviceFailure, FleetResponse, FleetResults, FleetSearchRequest, Hit,
    SearchError,
};
use edgeclip_messages::request_id::RequestIds;
use edgeclip_messages::topics;
use edgeclip_messages::wire::{
    self, ArchivedFleetBody, CloudFailure, FleetAnswer, FleetQuery, Received, TextVector,
};
use tracing::{debug, info, warn};

/// Fleet searches one worker runs at once; more are refused with an error (each holds the
/// devices' hits until its deadline).
pub const MAX_IN_FLIGHT: usize = 1024;

/// What the fleet searches of one worker may do.
#[derive(Debug, Clone)]
pub struct FleetSettings {
    /// This worker's id (names the topic devices answer on).
    pub worker_id: String,
    /// Model id (embedding space) of fleet queries: the worker's default tower's.
    pub model: String,
    /// Deadline when a search does not say.
    pub deadline: Duration,
    /// Longest deadline a search may ask for.
    pub max_deadline: Duration,
    /// Hits when a search does not say.
    pub default_k: usize,
    /// Most hits.
    pub max_k: usize,
    /// Longest text.
    pub max_text_bytes: usize,
    /// Largest answer accepted from a device.
    pub max_answer_bytes: usize,
}

/// An answer to a fleet search, for its requester.
#[derive(Debug, Clone, PartialEq)]
pub struct Answer {
    /// Where the requester listens.
    pub topic: String,
    /// The merged hits, or why the search failed.
    pub response: FleetResponse,
}

impl Answer {
    fn error(topic: &str, id: String, error: String) -> Self {
        Answer {
            topic: topic.to_string(),
            response: FleetResponse::Error(SearchError { id, error }),
        }
    }
}

/// What became of a fleet search payload handed to [`Fleet::start`].
#[derive(Debug, PartialEq)]
pub enum Started {
    /// Have `text` encoded (in the worker's default space, [`Fleet::model`], with a text
    /// tower for `lang`) and give the vector to [`Fleet::encoded`]; call [`Fleet::deadline`]
    /// once `deadline` has passed.
    Encode {
        /// The search, as the engine names it.
        search: u64,
        /// Its text.
        text: String,
        /// Its language, if it gives one.
        lang: Option<String>,
        /// How long its devices have to answer.
        deadline: Duration,
    },
    /// Refused at once (unreadable, no device online, too many searches): publish this.
    Refused(Answer),
    /// Unreadable, and it does not say where its requester listens: nothing to answer.
    Dropped,
}

/// What to publish once a search's text is encoded.
#[derive(Debug, PartialEq)]
pub enum Outgoing {
    /// The fleet query (the text vector, framed), for each of these devices.
    Query {
        /// The devices asked.
        devices: Vec<String>,
        /// The frame, the same for every device.
        frame: Vec<u8>,
    },
    /// The search failed: publish this.
    Answer(Answer),
}

/// A fleet search in flight.
#[derive(Debug)]
struct Search {
    id: String,
    text: String,
    k: usize,
    reply_to: String,
    started: Instant,
    encoded: bool,
    asked: BTreeSet<String>,
    answered: BTreeSet<String>,
    failed: Vec<DeviceFailure>,
    offline: Vec<String>,
    hits: Vec<Hit>,
}

/// The devices known on the broker and the fleet searches in flight of one worker.
#[derive(Debug)]
pub struct Fleet {
    settings: FleetSettings,
    /// Every device seen on the availability topics: online or not.
    devices: BTreeMap<String, bool>,
    ids: RequestIds,
    searches: HashMap<u64, Search>,
}

impl Fleet {
    /// No device known, no search in flight.
    pub fn new(settings: FleetSettings) -> Self {
        Fleet {
            settings,
            devices: BTreeMap::new(),
            ids: RequestIds::from_clock(),
            searches: HashMap::new(),
        }
    }

    /// A device's retained availability changed (or was read at subscription).
    pub fn availability(&mut self, device: String, online: bool) {
        debug!(%device, online, "device availability");
        self.devices.insert(device, online);
    }

    /// The model id (embedding space) fleet queries are encoded in and named by.
    pub fn model(&self) -> &str {
        &self.settings.model
    }

    /// Searches in flight.
    pub fn in_flight(&self) -> usize {
        self.searches.len()
    }

    /// A payload of the fleet search topic, received at `now`.
    pub fn start(&mut self, payload: &[u8], now: Instant) -> Started {
        let request = match FleetSearchRequest::parse(payload, self.settings.max_text_bytes) {
            Ok(r) => r,
            Err(e) => {
                warn!(error = %e, "fleet search refused");
                return match unreadable_reply_topic(payload) {
                    Some((topic, id)) => Started::Refused(Answer::error(
                        &topic,
                        id,
                        format!("bad fleet search: {e}"),
                    )),
                    None => Started::Dropped,
                };
            }
        };
        let search = self.ids.next_id();
        let id = request.id.unwrap_or_else(|| format!("{search:x}"));
        let reply_to = request
            .reply_to
            .unwrap_or_else(|| topics::fleet_results(&id));
        let asked: BTreeSet<String> = self.devices_that_are(true).collect();
        if asked.is_empty() {
            let error = "no edgeclip device is online on this broker".to_string();
            return Started::Refused(Answer::error(&reply_to, id, error));
        }
        if self.searches.len() >= MAX_IN_FLIGHT {
            let error =
                format!("this cloud worker already runs {MAX_IN_FLIGHT} fleet searches; try again");
            return Started::Refused(Answer::error(&reply_to, id, error));
        }
        let deadline = request
            .deadline_ms
            .map(Duration::from_millis)
            .unwrap_or(self.settings.deadline)
            .min(self.settings.max_deadline);
        let k = request
            .k
            .unwrap_or(self.settings.default_k)
            .min(self.settings.max_k);
        let offline = self.devices_that_are(false).collect();
        info!(%id, devices = asked.len(), ?deadline, "fleet search");
        self.searches.insert(
            search,
            Search {
                id,
                text: request.text.clone(),
                k,
                reply_to,
                started: now,
                encoded: false,
                asked,
                answered: BTreeSet::new(),
                failed: Vec::new(),
                offline,
                hits: Vec::new(),
            },
        );
        Started::Encode {
            search,
            text: request.text,
            lang: request.lang,
            deadline,
        }
    }

    /// The text of `search` cannot be encoded at all (the text encoder is gone).
    pub fn encoder_gone(&mut self, search: u64) -> Option<Answer> {
        let s = self.searches.remove(&search)?;
        Some(Answer::error(
            &s.reply_to,
            s.id,
            "the text encoder is gone".into(),
        ))
    }

    /// The text of `search` is encoded (or failed to be): the query for every device asked,
    /// or the search's error. `None` for a search already finished.
    pub fn encoded(
        &mut self,
        search: u64,
        result: Result<Vec<f32>, CloudFailure>,
    ) -> Option<Outgoing> {
        let s = self.searches.get_mut(&search)?;
        let query = result.map_err(|f| f.message).and_then(|vector| {
            let query = FleetQuery {
                request_id: search,
                reply_to: topics::fleet_answers(&self.settings.worker_id),
                k: s.k as u32,
                vector: TextVector {
                    model: self.settings.model.clone(),
                    vector,
                },
            };
            wire::encode(&query).map_err(|e| e.to_string())
        });
        match query {
            Ok(frame) => {
                s.encoded = true;
                Some(Outgoing::Query {
                    devices: s.asked.iter().cloned().collect(),
                    frame,
                })
            }
            Err(error) => {
                let s = self.searches.remove(&search)?;
                let error = format!("the text could not be encoded: {error}");
                Some(Outgoing::Answer(Answer::error(&s.reply_to, s.id, error)))
            }
        }
    }

    /// A payload of this worker's fleet answers topic, received at `now`: the merged answer
    /// once every device asked has answered.
    pub fn answer(&mut self, payload: &[u8], now: Instant) -> Option<Answer> {
        let answer = match Received::<FleetAnswer>::decode(payload, self.settings.max_answer_bytes)
        {
            Ok(a) => a,
            Err(e) => {
                warn!(error = %e, "malformed fleet answer ignored");
                return None;
            }
        };
        let a = answer.get();
        let search = a.request_id.to_native();
        let Some(s) = self.searches.get_mut(&search) else {
            debug!(
                search,
                "fleet answer to an unknown or finished search ignored"
            );
            return None;
        };
        let device = a.device.as_str();
        let already = s.answered.contains(device) || s.failed.iter().any(|f| f.device == device);
        if !s.asked.contains(device) || already {
            debug!(
                device,
                "fleet answer from a device not asked, or a second one, ignored"
            );
            return None;
        }
        match &a.body {
            ArchivedFleetBody::Hits(hits) => {
                s.answered.insert(device.to_string());
                let valid = hits
                    .iter()
                    .filter(|h| h.score.to_native().is_finite())
                    .take(s.k);
                s.hits.extend(valid.filter_map(|h| {
                    let mut hit = rkyv::deserialize::<Hit, rkyv::rancor::Error>(h).ok()?;
                    hit.device = Some(device.to_string());
                    Some(hit)
                }));
            }
            ArchivedFleetBody::Error(error) => s.failed.push(DeviceFailure {
                device: device.to_string(),
                error: error.to_string(),
            }),
        }
        if s.answered.len() + s.failed.len() < s.asked.len() {
            return None;
        }
        let s = self.searches.remove(&search)?;
        Some(self.finish(s, now))
    }

    /// The deadline of `search` has come, at `now`: its answer with what it has, unless it
    /// was answered already.
    pub fn deadline(&mut self, search: u64, now: Instant) -> Option<Answer> {
        let s = self.searches.remove(&search)?;
        Some(self.finish(s, now))
    }

    fn devices_that_are(&self, online: bool) -> impl Iterator<Item = String> + '_ {
        self.devices
            .iter()
            .filter(move |(_, o)| **o == online)
            .map(|(d, _)| d.clone())
    }

    /// Merges: best first, ties by device then path; the silent devices as missing.
    fn finish(&self, mut s: Search, now: Instant) -> Answer {
        if !s.encoded {
            let error = "the text was not encoded before the deadline".to_string();
            return Answer::error(&s.reply_to, s.id, error);
        }
        s.hits.sort_by(Hit::best_first);
        s.hits.truncate(s.k);
        let failed: BTreeSet<&str> = s.failed.iter().map(|f| f.device.as_str()).collect();
        let missing: Vec<String> = s
            .asked
            .iter()
            .filter(|d| !s.answered.contains(*d) && !failed.contains(d.as_str()))
            .cloned()
            .collect();
        if !missing.is_empty() {
            info!(id = %s.id, ?missing, "fleet search: devices did not answer before the deadline");
        }
        let results = FleetResults {
            id: s.id,
            text: s.text,
            model: self.settings.model.clone(),
            took_ms: now.saturating_duration_since(s.started).as_millis() as u64,
            asked: s.asked.into_iter().collect(),
            answered: s.answered.into_iter().collect(),
            missing,
            failed: s.failed,
            offline: s.offline,
            hits: s.hits,
        };
        Answer {
            topic: s.reply_to,
            response: FleetResponse::Results(results),
        }
    }
}

/// Where the requester of an unreadable fleet search listens, if its payload says (a valid
/// `reply_to`, or a valid `id` naming the default results topic), and its id.
fn unreadable_reply_topic(payload: &[u8]) -> Option<(String, String)> {
    let value: serde_json::Value = serde_json::from_slice(payload).ok()?;
    let field = |name: &str| value.get(name).and_then(|v| v.as_str()).map(str::to_string);
    let id = field("id").filter(|id| validate_fleet_id(id).is_ok());
    let topic = field("reply_to")
        .filter(|t| topics::validate_fleet_reply_topic(t).is_ok())
        .or_else(|| id.as_deref().map(topics::fleet_results))?;
    Some((topic, id.unwrap_or_default()))
}

#[cfg(test)]
mod tests {
    use edgeclip_messages::wire::{ErrorCode, FleetBody};

    use super::*;

    fn settings() -> FleetSettings {
        FleetSettings {
            worker_id: "w1".into(),
            model: "m".into(),
            deadline: Duration::from_secs(3),
            max_deadline: Duration::from_secs(30),
            default_k: 10,
            max_k: 100,
            max_text_bytes: 100,
            max_answer_bytes: 1 << 20,
        }
    }

    /// A fleet with these devices online and `off` offline.
    fn fleet(online: &[&str], off: &[&str]) -> Fleet {
        let mut f = Fleet::new(settings());
        for d in online {
            f.availability(d.to_string(), true);
        }
        for d in off {
            f.availability(d.to_string(), false);
        }
        f
    }

    /// Starts a search and expects it to go to the encoder.
    fn start(f: &mut Fleet, payload: &str, now: Instant) -> (u64, Duration) {
        match f.start(payload.as_bytes(), now) {
            Started::Encode {
                search, deadline, ..
            } => (search, deadline),
            other => panic!("not started: {other:?}"),
        }
    }

    fn hit(path: &str, score: f32) -> Hit {
        Hit {
            path: path.into(),
            score,
            taken_s: 1,
            ..Hit::default()
        }
    }

    fn answer_frame(search: u64, device: &str, body: FleetBody) -> Vec<u8> {
        wire::encode(&FleetAnswer {
            request_id: search,
            device: device.into(),
            body,
        })
        .unwrap()
    }

    fn results(answer: Answer) -> (String, FleetResults) {
        match answer.response {
            FleetResponse::Results(r) => (answer.topic, r),
            FleetResponse::Error(e) => panic!("error: {}", e.error),
        }
    }

    fn error(answer: Answer) -> (String, SearchError) {
        match answer.response {
            FleetResponse::Error(e) => (answer.topic, e),
            FleetResponse::Results(r) => panic!("results: {r:?}"),
        }
    }

    #[test]
    fn a_search_asks_every_online_device_once_its_text_is_encoded() {
        let mut f = fleet(&["b", "a"], &["c"]);
        let now = Instant::now();
        let (search, deadline) = start(&mut f, "a red circle", now);
        assert_eq!(deadline, Duration::from_secs(3));
        let Some(Outgoing::Query { devices, frame }) = f.encoded(search, Ok(vec![0.6, 0.8])) else {
            panic!("no query");
        };
        assert_eq!(devices, ["a", "b"]);
        let query = Received::<FleetQuery>::decode(&frame, 1 << 20).unwrap();
        let q = query.get();
        assert!(q.validate().is_ok());
        assert_eq!(
            (q.request_id.to_native(), q.k.to_native()),
            (search, 10),
            "the default k"
        );
        assert_eq!(q.reply_to.as_str(), topics::fleet_answers("w1"));
        assert_eq!(q.vector.model.as_str(), "m");
    }

    #[test]
    fn the_answer_comes_once_every_device_asked_has_answered_best_first_within_k() {
        let mut f = fleet(&["a", "b", "c"], &["z"]);
        let t0 = Instant::now();
        let (search, _) = start(&mut f, r#"{"text": "dog", "k": 3, "id": "q1"}"#, t0);
        f.encoded(search, Ok(vec![1.0]));
        let a = FleetBody::Hits(vec![
            hit("/a/1", 0.9),
            hit("/a/2", 0.5),
            hit("/a/nan", f32::NAN),
        ]);
        assert_eq!(f.answer(&answer_frame(search, "a", a), t0), None);
        let b = FleetBody::Hits(vec![hit("/b/1", 0.7), hit("/b/2", 0.5)]);
        assert_eq!(f.answer(&answer_frame(search, "b", b), t0), None);
        let c = FleetBody::Error("index of another model".into());
        let done = f.answer(
            &answer_frame(search, "c", c),
            t0 + Duration::from_millis(40),
        );
        let (topic, r) = results(done.expect("every device answered"));
        assert_eq!(topic, topics::fleet_results("q1"));
        assert_eq!(
            (r.id.as_str(), r.text.as_str(), r.model.as_str()),
            ("q1", "dog", "m")
        );
        assert_eq!(r.took_ms, 40);
        let hits: Vec<(&str, Option<&str>)> = r
            .hits
            .iter()
            .map(|h| (h.path.as_str(), h.device.as_deref()))
            .collect();
        assert_eq!(
            hits,
            [
                ("/a/1", Some("a")),
                ("/b/1", Some("b")),
                ("/a/2", Some("a"))
            ],
            "best first, ties by device, the k best, NaN scores dropped"
        );
        assert_eq!(
            (r.asked.len(), r.answered, r.offline),
            (3, vec!["a".to_string(), "b".into()], vec!["z".to_string()])
        );
        assert_eq!(r.failed[0].device, "c");
        assert!(r.missing.is_empty());
        assert_eq!(f.in_flight(), 0);
        assert_eq!(f.deadline(search, t0), None, "answered once");
    }

    #[test]
    fn at_the_deadline_the_silent_devices_are_listed_as_missing() {
        let mut f = fleet(&["a", "b"], &[]);
        let t0 = Instant::now();
        let (search, deadline) = start(&mut f, r#"{"text": "dog", "deadline_ms": 500}"#, t0);
        assert_eq!(deadline, Duration::from_millis(500));
        f.encoded(search, Ok(vec![1.0]));
        let hits = FleetBody::Hits(vec![hit("/a/1", 0.9)]);
        assert_eq!(f.answer(&answer_frame(search, "a", hits), t0), None);
        let (_, r) = results(f.deadline(search, t0 + deadline).expect("answer"));
        assert_eq!(
            (r.answered, r.missing),
            (vec!["a".to_string()], vec!["b".to_string()])
        );
        assert_eq!(r.hits.len(), 1);
        let late = FleetBody::Hits(vec![hit("/b/1", 1.0)]);
        assert_eq!(
            f.answer(&answer_frame(search, "b", late), t0),
            None,
            "too late"
        );
    }

    #[test]
    fn answers_from_devices_not_asked_or_a_second_time_do_not_count() {
        let mut f = fleet(&["a", "b"], &[]);
        let t0 = Instant::now();
        let (search, _) = start(&mut f, "dog", t0);
        f.encoded(search, Ok(vec![1.0]));
        let hits = || FleetBody::Hits(vec![hit("/x", 0.9)]);
        assert_eq!(f.answer(&answer_frame(search, "a", hits()), t0), None);
        assert_eq!(f.answer(&answer_frame(search, "a", hits()), t0), None);
        assert_eq!(
            f.answer(&answer_frame(search, "intruder", hits()), t0),
            None
        );
        assert_eq!(f.answer(&answer_frame(search + 1, "b", hits()), t0), None);
        assert_eq!(f.answer(b"not a frame", t0), None);
        let (_, r) = results(f.deadline(search, t0).expect("answer"));
        assert_eq!(r.hits.len(), 1, "one answer of a counted once");
        assert_eq!(r.missing, ["b"]);
    }

    #[test]
    fn a_search_with_no_device_online_or_too_many_searches_is_refused() {
        let mut f = fleet(&[], &["a"]);
        let Started::Refused(answer) = f.start(br#"{"text": "dog", "id": "q2"}"#, Instant::now())
        else {
            panic!("started");
        };
        let (topic, e) = error(answer);
        assert_eq!(topic, topics::fleet_results("q2"));
        assert_eq!(e.id, "q2");
        assert!(
            e.error.contains("no edgeclip device is online"),
            "{}",
            e.error
        );

        let mut f = fleet(&["a"], &[]);
        for _ in 0..MAX_IN_FLIGHT {
            start(&mut f, "dog", Instant::now());
        }
        let Started::Refused(answer) = f.start(b"dog", Instant::now()) else {
            panic!("started");
        };
        assert!(error(answer).1.error.contains("try again"));
    }

    #[test]
    fn an_unreadable_search_is_answered_where_its_payload_says_if_it_says() {
        let mut f = fleet(&["a"], &[]);
        let now = Instant::now();
        let Started::Refused(answer) = f.start(br#"{"text": "dog", "k": 0, "id": "q3"}"#, now)
        else {
            panic!("not refused");
        };
        let (topic, e) = error(answer);
        assert_eq!((topic, e.id.as_str()), (topics::fleet_results("q3"), "q3"));
        assert!(e.error.starts_with("bad fleet search: "), "{}", e.error);
        let reply_to = topics::fleet_results("mine");
        let payload = format!(r#"{{"text": "", "reply_to": "{reply_to}"}}"#);
        let Started::Refused(answer) = f.start(payload.as_bytes(), now) else {
            panic!("not refused");
        };
        let (topic, e) = error(answer);
        assert_eq!((topic, e.id), (reply_to, String::new()));
        assert_eq!(f.start(b"", now), Started::Dropped);
        assert_eq!(
            f.start(br#"{"text": "", "id": "a/b"}"#, now),
            Started::Dropped
        );
    }

    #[test]
    fn deadline_and_k_are_bounded_by_the_configuration() {
        let mut f = fleet(&["a"], &[]);
        let (search, deadline) = start(
            &mut f,
            r#"{"text": "dog", "k": 5000, "deadline_ms": 999999}"#,
            Instant::now(),
        );
        assert_eq!(deadline, Duration::from_secs(30));
        let Some(Outgoing::Query { frame, .. }) = f.encoded(search, Ok(vec![1.0])) else {
            panic!("no query");
        };
        let query = Received::<FleetQuery>::decode(&frame, 1 << 20).unwrap();
        assert_eq!(query.get().k.to_native(), 100);
    }

    #[test]
    fn a_text_that_fails_or_is_not_encoded_in_time_fails_the_search() {
        let mut f = fleet(&["a"], &[]);
        let now = Instant::now();
        let (search, _) = start(&mut f, "dog", now);
        let failure = CloudFailure {
            code: ErrorCode::Busy,
            message: "too many".into(),
        };
        let Some(Outgoing::Answer(answer)) = f.encoded(search, Err(failure)) else {
            panic!("no error");
        };
        assert_eq!(
            error(answer).1.error,
            "the text could not be encoded: too many"
        );
        assert_eq!(f.deadline(search, now), None);

        let (search, _) = start(&mut f, "dog", now);
        let (_, e) = error(f.deadline(search, now).expect("answer"));
        assert_eq!(e.error, "the text was not encoded before the deadline");
        assert_eq!(f.encoded(search, Ok(vec![1.0])), None, "finished already");

        let (search, _) = start(&mut f, "dog", now);
        let (_, e) = error(f.encoder_gone(search).expect("answer"));
        assert_eq!(e.error, "the text encoder is gone");
        assert_eq!(f.in_flight(), 0);
    }
}
