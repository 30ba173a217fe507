//! [`DiscoveryActor`]: announces the device to Home Assistant (MQTT discovery): publishes the
//! retained configs on every connection to the broker (a broker restarted without persistence
//! has lost them), again whenever Home Assistant says `online` on `<prefix>/status`, and
//! removes the configs of entities that are off. [`uninstall`] removes
//! them all (empty retained payloads) for `edgeclip-device --uninstall-discovery`.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use edgeclip_link::{LinkActor, LinkArgs, LinkMsg};
use edgeclip_messages::homeassistant::{
    all_config_topics, discovery_configs, DiscoveryOptions, HA_ONLINE,
};
use ractor::{Actor, ActorProcessingErr, ActorRef};
use tracing::{info, warn};

use crate::config::DeviceConfig;
use crate::error::DeviceError;

/// How long `--uninstall-discovery` waits for the broker.
const UNINSTALL_CONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often `--uninstall-discovery` asks the link whether it is connected yet: a local
/// question, so often enough not to make a person wait.
const UNINSTALL_POLL: Duration = Duration::from_millis(50);
/// How long `--uninstall-discovery` waits for its empty configs to be sent and the link to
/// disconnect: a few publishes and a round trip to the broker.
const UNINSTALL_DISCONNECT_TIMEOUT: Duration = Duration::from_secs(10);
/// How often the actor asks the link whether it is connected, to announce after each new
/// connection: an in-process message, and a second is well within Home Assistant's patience.
const CONNECTION_CHECK: Duration = Duration::from_secs(1);
/// How long the link may take to answer a question about its connection: it answers from
/// memory at once; this guards against a stuck link (the check is then skipped, and made
/// again at the next tick).
const LINK_ANSWER_TIMEOUT: Duration = Duration::from_secs(1);

/// Messages of the discovery actor.
pub enum DiscoveryMsg {
    /// A payload on Home Assistant's status topic (`online` after it restarts).
    HaStatus(Bytes),
    /// Timer: announce if the link made a new connection since the last announcement.
    CheckConnection,
}

/// Arguments of the discovery actor.
pub struct DiscoveryArgs {
    /// What to announce.
    pub options: DiscoveryOptions,
    /// The MQTT link.
    pub link: ActorRef<LinkMsg>,
}

/// State of the discovery actor.
pub struct DiscoveryState {
    args: DiscoveryArgs,
    /// The link's connection count at the last announcement.
    announced_for: u64,
}

/// The discovery actor.
pub struct DiscoveryActor;

impl Actor for DiscoveryActor {
    type Msg = DiscoveryMsg;
    type State = DiscoveryState;
    type Arguments = DiscoveryArgs;

    async fn pre_start(
        &self,
        myself: ActorRef<DiscoveryMsg>,
        args: DiscoveryArgs,
    ) -> Result<DiscoveryState, ActorProcessingErr> {
        myself.send_interval(CONNECTION_CHECK, || DiscoveryMsg::CheckConnection);
        let _ = myself.cast(DiscoveryMsg::CheckConnection);
        Ok(DiscoveryState {
            args,
            announced_for: 0,
        })
    }

    async fn handle(
        &self,
        _myself: ActorRef<DiscoveryMsg>,
        msg: DiscoveryMsg,
        state: &mut DiscoveryState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            DiscoveryMsg::HaStatus(payload) => {
                if payload.trim_ascii() == HA_ONLINE.as_bytes() {
                    info!("Home Assistant is online; discovery published again");
                    announce(&state.args);
                }
            }
            DiscoveryMsg::CheckConnection => {
                let connections = ractor::call_t!(
                    state.args.link,
                    LinkMsg::Connections,
                    LINK_ANSWER_TIMEOUT.as_millis() as u64
                )
                .unwrap_or(state.announced_for);
                if connections != state.announced_for {
                    announce(&state.args);
                    state.announced_for = connections;
                }
            }
        }
        Ok(())
    }
}

/// Publishes every config (retained), and empty retained payloads for entities that are off
/// (an option turned off since the last start must not leave a dead entity behind).
fn announce(args: &DiscoveryArgs) {
    let configs = discovery_configs(&args.options);
    for topic in all_config_topics(&args.options.prefix, &args.options.device_id) {
        if !configs.iter().any(|(t, _)| *t == topic) {
            edgeclip_link::publish(&args.link, topic, Vec::new(), true);
        }
    }
    for (topic, config) in configs {
        match serde_json::to_vec(&config) {
            Ok(json) => edgeclip_link::publish(&args.link, topic, json, true),
            Err(e) => warn!(%topic, error = %e, "discovery config not serialisable"),
        }
    }
}

/// Removes the device from Home Assistant: connects with its own client id, publishes an
/// empty retained payload on every config topic, disconnects. Returns how many topics.
pub async fn uninstall(config: &DeviceConfig) -> Result<usize, DeviceError> {
    let mut broker = config.broker.clone();
    broker.client_id = format!("{}-uninstall", broker.client_id);
    let options = broker.link_options(Vec::new(), None);
    let (link, handle) = Actor::spawn(None, LinkActor, LinkArgs { options })
        .await
        .map_err(|e| DeviceError::Actor(e.to_string()))?;
    link.cast(LinkMsg::Start(Arc::new(|_| {})))
        .map_err(|e| DeviceError::Actor(e.to_string()))?;
    let deadline = tokio::time::Instant::now() + UNINSTALL_CONNECT_TIMEOUT;
    loop {
        let asked = LINK_ANSWER_TIMEOUT.as_millis() as u64;
        if ractor::call_t!(link, LinkMsg::IsConnected, asked).unwrap_or(false) {
            break;
        }
        if tokio::time::Instant::now() > deadline {
            link.stop(None);
            return Err(DeviceError::Mqtt(format!(
                "broker {} unreachable",
                config.broker.url
            )));
        }
        tokio::time::sleep(UNINSTALL_POLL).await;
    }
    let topics = all_config_topics(&config.homeassistant.prefix, &config.device_id);
    for topic in &topics {
        edgeclip_link::publish(&link, topic.clone(), Vec::new(), true);
    }
    let _ = ractor::call_t!(
        link,
        LinkMsg::Disconnect,
        UNINSTALL_DISCONNECT_TIMEOUT.as_millis() as u64
    );
    link.stop(None);
    let _ = handle.await;
    Ok(topics.len())
}
