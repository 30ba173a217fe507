//! [`CloudSupervisor`]: loads the text towers (each folder through [`crate::model::load`], the
//! same check `edgeclip_cloud::model::check` runs, one log line each), spawns the MQTT link (on
//! the shared subscription) and the text encoder, and shuts them down in order.

use std::sync::Arc;
use std::time::Duration;

use edgeclip_link::{Incoming, LinkActor, LinkArgs, LinkMsg, Presence};
use edgeclip_messages::topics;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort, SupervisionEvent};
use tracing::{error, info};

use super::fleet::{FleetActor, FleetArgs, FleetMsg};
use super::text_encoder::{TextEncoderActor, TextEncoderArgs, TextEncoderMsg};
use crate::config::CloudConfig;
use crate::error::CloudError;
use crate::fleet::FleetSettings;
use crate::model::Towers;

/// How long an actor may take to stop (the encoder finishes the texts it holds first): an
/// encoding takes milliseconds, so only a stuck actor reaches it.
const STOP_TIMEOUT: Duration = Duration::from_secs(5);

/// Messages of the cloud supervisor.
pub enum CloudSupervisorMsg {
    /// Stop in order, then answer.
    Shutdown(RpcReplyPort<()>),
}

/// State of the cloud supervisor.
pub struct CloudSupervisorState {
    link: ActorRef<LinkMsg>,
    encoder: ActorRef<TextEncoderMsg>,
    fleet: ActorRef<FleetMsg>,
    stopping: bool,
}

/// The cloud supervisor.
pub struct CloudSupervisor;

impl Actor for CloudSupervisor {
    type Msg = CloudSupervisorMsg;
    type State = CloudSupervisorState;
    type Arguments = CloudConfig;

    async fn pre_start(
        &self,
        myself: ActorRef<CloudSupervisorMsg>,
        config: CloudConfig,
    ) -> Result<CloudSupervisorState, ActorProcessingErr> {
        let specs = config.model.towers();
        let loaded = tokio::task::spawn_blocking(move || {
            let mut loaded = Vec::new();
            for spec in &specs {
                let (tower, report) = crate::model::load(spec)?;
                info!("{report}");
                loaded.push(tower);
            }
            Ok::<_, CloudError>(loaded)
        })
        .await??;
        let towers = Arc::new(Towers::new(loaded)?);
        let model = towers.set.default_id().to_string();

        let presence = Some(Presence {
            topic: topics::worker_presence(&config.worker_id),
            online: model.clone(),
            offline: String::new(),
        });
        let listener = topics::Listener::Worker {
            id: &config.worker_id,
        };
        let options = config
            .broker
            .link_options(topics::subscriptions(&listener), presence);
        let cell = myself.get_cell();
        let (link, _) =
            Actor::spawn_linked(None, LinkActor, LinkArgs { options }, cell.clone()).await?;
        let args = TextEncoderArgs {
            towers,
            workers: config.encoder.workers,
            cache_entries: config.encoder.cache_entries,
            max_text_bytes: config.encoder.max_text_bytes,
            max_request_bytes: config.broker.max_packet_bytes,
            max_rank_vectors: config.encoder.max_rank_vectors,
            limits: config.limits.clone(),
            link: link.clone(),
        };
        let (encoder, _) = Actor::spawn_linked(None, TextEncoderActor, args, cell.clone()).await?;
        let fleet_args = FleetArgs {
            settings: FleetSettings {
                worker_id: config.worker_id.clone(),
                model: model.clone(),
                deadline: Duration::from_millis(config.fleet.deadline_ms),
                max_deadline: Duration::from_millis(config.fleet.max_deadline_ms),
                default_k: config.fleet.default_k,
                max_k: config.fleet.max_k,
                max_text_bytes: config.encoder.max_text_bytes,
                max_answer_bytes: config.broker.max_packet_bytes,
            },
            encoder: encoder.clone(),
            link: link.clone(),
        };
        let (fleet, _) = Actor::spawn_linked(None, FleetActor, fleet_args, cell).await?;
        let (to_encoder, to_fleet) = (encoder.clone(), fleet.clone());
        let worker = config.worker_id.clone();
        let router = Arc::new(move |msg: Incoming| {
            let listener = topics::Listener::Worker { id: &worker };
            let routed = match topics::route(&msg.topic, &listener) {
                Some(topics::Route::Encode | topics::Route::Rank) => to_encoder
                    .cast(TextEncoderMsg::Request(msg.payload))
                    .map_err(|_| ()),
                Some(topics::Route::FleetSearch) => {
                    to_fleet.cast(FleetMsg::Search(msg.payload)).map_err(|_| ())
                }
                Some(topics::Route::FleetAnswer) => {
                    to_fleet.cast(FleetMsg::Answer(msg.payload)).map_err(|_| ())
                }
                Some(topics::Route::Availability { device }) => {
                    let online = msg.payload.as_ref() == topics::ONLINE.as_bytes();
                    to_fleet
                        .cast(FleetMsg::Availability {
                            device: device.to_string(),
                            online,
                        })
                        .map_err(|_| ())
                }
                _ => Ok(()),
            };
            if routed.is_err() {
                tracing::debug!("cloud actor gone; message dropped");
            }
        });
        link.cast(LinkMsg::Start(router))?;
        info!(worker = %config.worker_id, broker = %config.broker.url, %model, "cloud worker started");
        Ok(CloudSupervisorState {
            link,
            encoder,
            fleet,
            stopping: false,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<CloudSupervisorMsg>,
        msg: CloudSupervisorMsg,
        state: &mut CloudSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            CloudSupervisorMsg::Shutdown(port) => {
                state.stopping = true;
                info!("cloud worker shutting down");
                let _ = state.fleet.stop_and_wait(None, Some(STOP_TIMEOUT)).await;
                let _ = state.encoder.drain_and_wait(Some(STOP_TIMEOUT)).await;
                edgeclip_link::disconnect(&state.link).await;
                let _ = state.link.stop_and_wait(None, Some(STOP_TIMEOUT)).await;
                let _ = port.send(());
                myself.stop(Some("shutdown".into()));
            }
        }
        Ok(())
    }

    async fn handle_supervisor_evt(
        &self,
        myself: ActorRef<CloudSupervisorMsg>,
        event: SupervisionEvent,
        state: &mut CloudSupervisorState,
    ) -> Result<(), ActorProcessingErr> {
        if state.stopping {
            return Ok(());
        }
        match event {
            SupervisionEvent::ActorFailed(cell, err) => {
                error!(actor = ?cell.get_id(), error = %err, "cloud actor failed; stopping");
                myself.stop(Some(format!("actor failed: {err}")));
            }
            SupervisionEvent::ActorTerminated(cell, _, reason) => {
                error!(actor = ?cell.get_id(), ?reason, "cloud actor stopped unexpectedly; stopping");
                myself.stop(Some("actor stopped".into()));
            }
            _ => {}
        }
        Ok(())
    }
}
