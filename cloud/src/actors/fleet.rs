//! [`FleetActor`]: runs fleet searches. One worker takes a search from the fleet topic (shared
//! subscription), has its text encoded once, sends the vector to every device that is online,
//! merges the devices' hits best first and answers at the latest at the deadline, listing the
//! devices that did not answer as missing.
//!
//! Which devices exist is learned from the broker, not remembered: every worker subscribes to
//! the devices' retained availability topics, so a worker started a second ago knows the same
//! fleet as one running for a month. The only state is the searches in flight (their id, the
//! devices asked, the hits so far, the deadline); a worker that dies takes its searches with
//! it, and their requesters see their own timeout.

use std::collections::{BTreeMap, BTreeSet, HashMap};
use std::time::{Duration, Instant};

use edgeclip_link::LinkMsg;
use edgeclip_messages::dashboard::{
    validate_fleet_id, DeviceFailure, FleetResponse, FleetResults, FleetSearchRequest, Hit,
    SearchError,
};
use edgeclip_messages::request_id::RequestIds;
use edgeclip_messages::topics;
use edgeclip_messages::wire::{
    self, ArchivedFleetBody, FleetAnswer, FleetQuery, Received, TextVector,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{debug, info, warn};

use super::text_encoder::{Job, TextEncoderMsg};

/// Fleet searches one worker runs at once; more are refused with an error (each holds the
/// devices' hits until its deadline).
const MAX_IN_FLIGHT: usize = 1024;

/// Messages of the fleet actor.
pub enum FleetMsg {
    /// A device's retained availability changed (or was read at subscription).
    Availability {
        /// The device.
        device: String,
        /// Whether it says `online`.
        online: bool,
    },
    /// A payload from the fleet search topic.
    Search(Vec<u8>),
    /// The text encoder finished the text of a search.
    Encoded {
        /// The search.
        search: u64,
        /// The vector, or why not.
        result: Result<Vec<f32>, String>,
    },
    /// A payload from this worker's fleet answers topic.
    Answer(Vec<u8>),
    /// Timer: the search's deadline has come.
    Deadline(u64),
}

/// Arguments of the fleet actor.
pub struct FleetArgs {
    /// This worker's id (names the topic devices answer on).
    pub worker_id: String,
    /// Model id served.
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
    /// The text encoder of this worker.
    pub encoder: ActorRef<TextEncoderMsg>,
    /// The MQTT link.
    pub link: ActorRef<LinkMsg>,
}

/// A fleet search in flight.
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

/// State of the fleet actor.
pub struct FleetState {
    args: FleetArgs,
    /// Every device seen on the availability topics: online or not.
    devices: BTreeMap<String, bool>,
    ids: RequestIds,
    searches: HashMap<u64, Search>,
}

/// The fleet actor.
pub struct FleetActor;

impl Actor for FleetActor {
    type Msg = FleetMsg;
    type State = FleetState;
    type Arguments = FleetArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<FleetMsg>,
        args: FleetArgs,
    ) -> Result<FleetState, ActorProcessingErr> {
        Ok(FleetState {
            args,
            devices: BTreeMap::new(),
            ids: RequestIds::from_clock(),
            searches: HashMap::new(),
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<FleetMsg>,
        msg: FleetMsg,
        state: &mut FleetState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            FleetMsg::Availability { device, online } => {
                debug!(%device, online, "device availability");
                state.devices.insert(device, online);
            }
            FleetMsg::Search(bytes) => start(&myself, state, &bytes),
            FleetMsg::Encoded { search, result } => on_encoded(state, search, result),
            FleetMsg::Answer(bytes) => on_answer(state, &bytes),
            FleetMsg::Deadline(search) => {
                if let Some(s) = state.searches.remove(&search) {
                    finish(state, s);
                }
            }
        }
        Ok(())
    }
}

fn start(myself: &ActorRef<FleetMsg>, state: &mut FleetState, bytes: &[u8]) {
    let request = match FleetSearchRequest::parse(bytes, state.args.max_text_bytes) {
        Ok(r) => r,
        Err(e) => {
            warn!(error = %e, "fleet search refused");
            // Answer where the requester listens, if the payload says where that is.
            let value: Option<serde_json::Value> = serde_json::from_slice(bytes).ok();
            let field = |name: &str| {
                value
                    .as_ref()
                    .and_then(|v| v.get(name))
                    .and_then(|v| v.as_str())
                    .map(str::to_string)
            };
            let id = field("id").filter(|id| validate_fleet_id(id).is_ok());
            let reply_to = field("reply_to")
                .filter(|t| topics::validate_fleet_reply_topic(t).is_ok())
                .or_else(|| id.as_deref().map(topics::fleet_results));
            if let Some(topic) = reply_to {
                let error = SearchError {
                    id: id.unwrap_or_default(),
                    error: format!("bad fleet search: {e}"),
                };
                publish(state, &topic, &FleetResponse::Error(error));
            }
            return;
        }
    };
    let search = state.ids.next_id();
    let id = request.id.clone().unwrap_or_else(|| format!("{search:x}"));
    let reply_to = request
        .reply_to
        .clone()
        .unwrap_or_else(|| topics::fleet_results(&id));
    let asked: BTreeSet<String> = state
        .devices
        .iter()
        .filter(|(_, online)| **online)
        .map(|(d, _)| d.clone())
        .collect();
    let refuse = if asked.is_empty() {
        Some("no edgeclip device is online on this broker".to_string())
    } else if state.searches.len() >= MAX_IN_FLIGHT {
        Some(format!(
            "this cloud worker already runs {MAX_IN_FLIGHT} fleet searches; try again"
        ))
    } else {
        None
    };
    if let Some(error) = refuse {
        publish(
            state,
            &reply_to,
            &FleetResponse::Error(SearchError { id, error }),
        );
        return;
    }
    let deadline = request
        .deadline_ms
        .map(Duration::from_millis)
        .unwrap_or(state.args.deadline)
        .min(state.args.max_deadline);
    let k = request
        .k
        .unwrap_or(state.args.default_k)
        .min(state.args.max_k);
    let offline = state
        .devices
        .iter()
        .filter(|(_, online)| !**online)
        .map(|(d, _)| d.clone())
        .collect();
    info!(%id, devices = asked.len(), ?deadline, "fleet search");
    state.searches.insert(
        search,
        Search {
            id,
            text: request.text.clone(),
            k,
            reply_to,
            started: Instant::now(),
            encoded: false,
            asked,
            answered: BTreeSet::new(),
            failed: Vec::new(),
            offline,
            hits: Vec::new(),
        },
    );
    // The text is encoded once, by this worker's encoder (and its cache), for every device.
    let me = myself.clone();
    let deliver = move |result: Result<Vec<f32>, String>| {
        let _ = me.cast(FleetMsg::Encoded { search, result });
    };
    if state
        .args
        .encoder
        .cast(TextEncoderMsg::Encode {
            text: request.text,
            job: Job::InProcess(Box::new(deliver)),
        })
        .is_err()
    {
        if let Some(s) = state.searches.remove(&search) {
            publish(
                state,
                &s.reply_to,
                &FleetResponse::Error(SearchError {
                    id: s.id,
                    error: "the text encoder is gone".into(),
                }),
            );
        }
        return;
    }
    myself.send_after(deadline, move || FleetMsg::Deadline(search));
}

/// Sends the vector to every device asked.
fn on_encoded(state: &mut FleetState, search: u64, result: Result<Vec<f32>, String>) {
    let Some(s) = state.searches.get_mut(&search) else {
        return;
    };
    let query = result.and_then(|vector| {
        let query = FleetQuery {
            request_id: search,
            reply_to: topics::fleet_answers(&state.args.worker_id),
            k: s.k as u32,
            vector: TextVector {
                model: state.args.model.clone(),
                vector,
            },
        };
        wire::encode(&query).map_err(|e| e.to_string())
    });
    match query {
        Ok(frame) => {
            s.encoded = true;
            for device in &s.asked {
                edgeclip_link::publish(
                    &state.args.link,
                    topics::fleet_query(device),
                    frame.clone(),
                    false,
                );
            }
        }
        Err(error) => {
            if let Some(s) = state.searches.remove(&search) {
                let error = format!("the text could not be encoded: {error}");
                publish(
                    state,
                    &s.reply_to,
                    &FleetResponse::Error(SearchError { id: s.id, error }),
                );
            }
        }
    }
}

/// Takes one device's answer; finishes the search once every device asked has answered.
fn on_answer(state: &mut FleetState, bytes: &[u8]) {
    let answer = match Received::<FleetAnswer>::decode(bytes, state.args.max_answer_bytes) {
        Ok(a) => a,
        Err(e) => {
            warn!(error = %e, "malformed fleet answer ignored");
            return;
        }
    };
    let a = answer.get();
    let search = a.request_id.to_native();
    let Some(s) = state.searches.get_mut(&search) else {
        debug!(
            search,
            "fleet answer to an unknown or finished search ignored"
        );
        return;
    };
    let device = a.device.as_str();
    let already = s.answered.contains(device) || s.failed.iter().any(|f| f.device == device);
    if !s.asked.contains(device) || already {
        debug!(
            device,
            "fleet answer from a device not asked, or a second one, ignored"
        );
        return;
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
    if s.answered.len() + s.failed.len() == s.asked.len() {
        if let Some(s) = state.searches.remove(&search) {
            finish(state, s);
        }
    }
}

/// Merges and publishes: best first, ties by device then path; the silent devices as missing.
fn finish(state: &FleetState, mut s: Search) {
    if !s.encoded {
        let error = "the text was not encoded before the deadline".to_string();
        publish(
            state,
            &s.reply_to,
            &FleetResponse::Error(SearchError { id: s.id, error }),
        );
        return;
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
        model: state.args.model.clone(),
        took_ms: s.started.elapsed().as_millis() as u64,
        asked: s.asked.into_iter().collect(),
        answered: s.answered.into_iter().collect(),
        missing,
        failed: s.failed,
        offline: s.offline,
        hits: s.hits,
    };
    publish(state, &s.reply_to, &FleetResponse::Results(results));
}

fn publish(state: &FleetState, topic: &str, response: &FleetResponse) {
    match serde_json::to_vec(response) {
        Ok(json) => edgeclip_link::publish(&state.args.link, topic.to_string(), json, false),
        Err(e) => warn!(error = %e, "fleet answer not serialisable"),
    }
}
