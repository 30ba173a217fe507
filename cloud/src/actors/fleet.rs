//! [`FleetActor`]: runs fleet searches. One worker takes a search from the fleet topic (shared
//! subscription), has its text encoded once, sends the vector to every device that is online,
//! merges the devices' hits best first and answers at the latest at the deadline, listing the
//! devices that did not answer as missing. The rules are [`Fleet`]'s; the actor turns messages
//! into its calls and publishes what it returns.
//!
//! Which devices exist is learned from the broker, not remembered: every worker subscribes to
//! the devices' retained availability topics, so a worker started a second ago knows the same
//! fleet as one running for a month. The only state is the searches in flight (their id, the
//! devices asked, the hits so far, the deadline); a worker that dies takes its searches with
//! it, and their requesters see their own timeout.
//!
//! The text is encoded by this worker's text encoder, in the worker's default embedding space
//! with the text tower for the search's language: the fleet actor casts it the text with a job
//! that casts the vector back as [`FleetMsg::Encoded`], so no handler waits for the other
//! actor.

use std::time::Instant;

use bytes::Bytes;
use edgeclip_link::LinkMsg;
use edgeclip_messages::topics;
use edgeclip_messages::wire::CloudFailure;
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::warn;

use super::text_encoder::{Job, TextEncoderMsg};
use crate::fleet::{Answer, Fleet, FleetSettings, Outgoing, Started};

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
    Search(Bytes),
    /// The text encoder finished the text of a search.
    Encoded {
        /// The search.
        search: u64,
        /// The vector, or why not.
        result: Result<Vec<f32>, CloudFailure>,
    },
    /// A payload from this worker's fleet answers topic.
    Answer(Bytes),
    /// Timer: the search's deadline has come.
    Deadline(u64),
}

/// Arguments of the fleet actor.
pub struct FleetArgs {
    /// What fleet searches may do.
    pub settings: FleetSettings,
    /// The text encoder of this worker.
    pub encoder: ActorRef<TextEncoderMsg>,
    /// The MQTT link.
    pub link: ActorRef<LinkMsg>,
}

/// State of the fleet actor.
pub struct FleetState {
    fleet: Fleet,
    encoder: ActorRef<TextEncoderMsg>,
    link: ActorRef<LinkMsg>,
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
            fleet: Fleet::new(args.settings),
            encoder: args.encoder,
            link: args.link,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<FleetMsg>,
        msg: FleetMsg,
        state: &mut FleetState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            FleetMsg::Availability { device, online } => state.fleet.availability(device, online),
            FleetMsg::Search(payload) => start(&myself, state, &payload),
            FleetMsg::Encoded { search, result } => match state.fleet.encoded(search, result) {
                Some(Outgoing::Query { devices, frame }) => {
                    for device in devices {
                        let topic = topics::fleet_query(&device);
                        edgeclip_link::publish(&state.link, topic, frame.clone(), false);
                    }
                }
                Some(Outgoing::Answer(answer)) => publish(state, answer),
                None => {}
            },
            FleetMsg::Answer(payload) => {
                if let Some(answer) = state.fleet.answer(&payload, Instant::now()) {
                    publish(state, answer);
                }
            }
            FleetMsg::Deadline(search) => {
                if let Some(answer) = state.fleet.deadline(search, Instant::now()) {
                    publish(state, answer);
                }
            }
        }
        Ok(())
    }
}

/// Starts a search: its text to the encoder (the vector comes back as `Encoded`), and a timer
/// for its deadline.
fn start(myself: &ActorRef<FleetMsg>, state: &mut FleetState, payload: &[u8]) {
    let (search, text, lang, deadline) = match state.fleet.start(payload, Instant::now()) {
        Started::Encode {
            search,
            text,
            lang,
            deadline,
        } => (search, text, lang, deadline),
        Started::Refused(answer) => return publish(state, answer),
        Started::Dropped => return,
    };
    // The text is encoded once, by this worker's encoder (and its cache), for every device.
    let me = myself.clone();
    let deliver = move |result: Result<Vec<f32>, CloudFailure>| {
        let _ = me.cast(FleetMsg::Encoded { search, result });
    };
    let job = Job::InProcess(Box::new(deliver));
    let model = state.fleet.model().to_string();
    if state
        .encoder
        .cast(TextEncoderMsg::Encode {
            model,
            text,
            lang,
            job,
        })
        .is_err()
    {
        if let Some(answer) = state.fleet.encoder_gone(search) {
            publish(state, answer);
        }
        return;
    }
    myself.send_after(deadline, move || FleetMsg::Deadline(search));
}

fn publish(state: &FleetState, answer: Answer) {
    match serde_json::to_vec(&answer.response) {
        Ok(json) => edgeclip_link::publish(&state.link, answer.topic, json, false),
        Err(e) => warn!(error = %e, "fleet answer not serialisable"),
    }
}
