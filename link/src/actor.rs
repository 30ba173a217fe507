//! [`LinkActor`]: owns one rumqttc event loop, never blocks it, reconnects with backoff.
//!
//! The event loop runs in its own task (the poll loop); it only forwards: incoming publishes
//! to the [`Router`] (which casts to actors and must not block), connection changes to the
//! actor. The actor (re)subscribes and announces presence after every connection, and
//! publishes for everyone else. Publishing never waits: when the client's queue is full (the
//! broker has been away for a while) the publish is dropped with a warning, since queued
//! search answers would be stale by the time the broker returns.

use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use ractor::rpc::CallResult;
use ractor::{Actor, ActorProcessingErr, ActorRef, RpcReplyPort};
use rumqttc::{AsyncClient, Event, EventLoop, Outgoing, Packet, QoS};
use tokio::task::JoinHandle;
use tracing::{debug, info, warn};

use crate::backoff::Backoff;
use crate::options::{LinkOptions, REQUEST_QUEUE};

/// How long a clean disconnect may take before the event loop is dropped. The disconnect
/// waits for the publishes queued before it (the last answers, the offline presence), which
/// a live connection writes at once; a broker that has not taken them by then is treated as
/// gone, so that stopping a program never hangs on its broker.
pub const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(3);

/// How long [`disconnect`] waits for the link's answer: the link's own bound on the disconnect,
/// plus time for the messages ahead of it in the mailbox (publishes, which never wait).
pub const DISCONNECT_REPLY_TIMEOUT: Duration =
    DISCONNECT_TIMEOUT.saturating_add(Duration::from_secs(2));

/// A publish received from the broker.
#[derive(Debug, Clone)]
pub struct Incoming {
    /// Topic it was published on.
    pub topic: String,
    /// Its payload.
    pub payload: Bytes,
}

/// Receives every incoming publish, on the poll loop: must only cast, never block.
pub type Router = Arc<dyn Fn(Incoming) + Send + Sync>;

/// Messages of the link actor.
pub enum LinkMsg {
    /// Start polling, routing incoming publishes to this router.
    Start(Router),
    /// Publish at QoS 1 (dropped with a warning if the client queue is full).
    Publish {
        /// Topic.
        topic: String,
        /// Payload.
        payload: Vec<u8>,
        /// Retained on the broker.
        retain: bool,
    },
    /// From the poll loop: the broker accepted the connection.
    Connected,
    /// From the poll loop: the connection failed or was lost.
    ConnectionLost(String),
    /// Whether the link is connected right now.
    IsConnected(RpcReplyPort<bool>),
    /// How many times the broker has accepted the connection so far (a change means a new
    /// session: a restarted broker may have lost retained messages).
    Connections(RpcReplyPort<u64>),
    /// Announce offline, disconnect cleanly and stop polling.
    Disconnect(RpcReplyPort<()>),
}

/// Arguments of the link actor.
pub struct LinkArgs {
    /// Broker, identity, subscriptions, presence.
    pub options: LinkOptions,
}

/// State of the link actor.
pub struct LinkState {
    options: LinkOptions,
    client: AsyncClient,
    eventloop: Option<EventLoop>,
    poll: Option<JoinHandle<()>>,
    connected: bool,
    connections: u64,
}

/// The MQTT link actor.
pub struct LinkActor;

impl Actor for LinkActor {
    type Msg = LinkMsg;
    type State = LinkState;
    type Arguments = LinkArgs;

    async fn pre_start(
        &self,
        _myself: ActorRef<LinkMsg>,
        args: LinkArgs,
    ) -> Result<LinkState, ActorProcessingErr> {
        let mqtt = args.options.mqtt_options()?;
        let (client, mut eventloop) = AsyncClient::new(mqtt, REQUEST_QUEUE);
        // Searches are a few small packets each way; with Nagle's algorithm a small write
        // waits for the peer's delayed ACK whenever one is in flight, so every search would
        // wait on delayed ACKs (the effect is measured in BENCHMARKS.md).
        eventloop.network_options.set_tcp_nodelay(true);
        Ok(LinkState {
            options: args.options,
            client,
            eventloop: Some(eventloop),
            poll: None,
            connected: false,
            connections: 0,
        })
    }

    async fn handle(
        &self,
        myself: ActorRef<LinkMsg>,
        msg: LinkMsg,
        state: &mut LinkState,
    ) -> Result<(), ActorProcessingErr> {
        match msg {
            LinkMsg::Start(router) => {
                if let Some(eventloop) = state.eventloop.take() {
                    let backoff =
                        Backoff::new(state.options.reconnect_min, state.options.reconnect_max);
                    state.poll = Some(tokio::spawn(poll_loop(
                        eventloop,
                        myself.clone(),
                        router,
                        backoff,
                    )));
                }
            }
            LinkMsg::Publish {
                topic,
                payload,
                retain,
            } => {
                if let Err(e) = state
                    .client
                    .try_publish(&topic, QoS::AtLeastOnce, retain, payload)
                {
                    warn!(%topic, error = %e, "publish dropped");
                }
            }
            LinkMsg::Connected => {
                state.connected = true;
                state.connections += 1;
                info!(url = %state.options.url, client_id = %state.options.client_id, "connected to broker");
                for filter in &state.options.subscriptions {
                    if let Err(e) = state.client.try_subscribe(filter, QoS::AtLeastOnce) {
                        warn!(%filter, error = %e, "subscribe failed");
                    }
                }
                if let Some(p) = &state.options.presence {
                    if let Err(e) =
                        state
                            .client
                            .try_publish(&p.topic, QoS::AtLeastOnce, true, p.online.clone())
                    {
                        warn!(error = %e, "presence publish failed");
                    }
                }
            }
            LinkMsg::ConnectionLost(reason) => {
                if state.connected {
                    warn!(url = %state.options.url, %reason, "connection to broker lost; reconnecting with backoff");
                } else {
                    debug!(url = %state.options.url, %reason, "broker not reachable yet");
                }
                state.connected = false;
            }
            LinkMsg::IsConnected(reply) => {
                let _ = reply.send(state.connected);
            }
            LinkMsg::Connections(reply) => {
                let _ = reply.send(state.connections);
            }
            LinkMsg::Disconnect(reply) => {
                close(state).await;
                let _ = reply.send(());
            }
        }
        Ok(())
    }

    async fn post_stop(
        &self,
        _myself: ActorRef<LinkMsg>,
        state: &mut LinkState,
    ) -> Result<(), ActorProcessingErr> {
        if let Some(poll) = state.poll.take() {
            poll.abort();
        }
        Ok(())
    }
}

async fn close(state: &mut LinkState) {
    let Some(poll) = state.poll.take() else {
        return;
    };
    if state.connected {
        if let Some(p) = &state.options.presence {
            let _ = state
                .client
                .try_publish(&p.topic, QoS::AtLeastOnce, true, p.offline.clone());
        }
        let _ = state.client.try_disconnect();
        // The poll loop ends once the disconnect has been written, after the queued publishes.
        if tokio::time::timeout(DISCONNECT_TIMEOUT, poll)
            .await
            .is_err()
        {
            warn!("broker did not take the disconnect in time; dropping the connection");
        }
    } else {
        poll.abort();
    }
    state.connected = false;
}

async fn poll_loop(
    mut eventloop: EventLoop,
    link: ActorRef<LinkMsg>,
    router: Router,
    mut backoff: Backoff,
) {
    loop {
        match eventloop.poll().await {
            Ok(Event::Incoming(Packet::ConnAck(_))) => {
                backoff.reset();
                let _ = link.cast(LinkMsg::Connected);
            }
            Ok(Event::Incoming(Packet::Publish(p))) => {
                router(Incoming {
                    topic: p.topic,
                    payload: p.payload,
                });
            }
            Ok(Event::Outgoing(Outgoing::Disconnect)) => return,
            Ok(_) => {}
            Err(e) => {
                if link.cast(LinkMsg::ConnectionLost(e.to_string())).is_err() {
                    return;
                }
                tokio::time::sleep(backoff.next_delay()).await;
            }
        }
    }
}

/// Asks the link to announce offline, disconnect cleanly and stop polling, and waits for it
/// at most [`DISCONNECT_REPLY_TIMEOUT`]; a link that does not answer in time is logged, and the
/// caller goes on stopping.
pub async fn disconnect(link: &ActorRef<LinkMsg>) {
    match link
        .call(LinkMsg::Disconnect, Some(DISCONNECT_REPLY_TIMEOUT))
        .await
    {
        Ok(CallResult::Success(())) => {}
        Ok(CallResult::Timeout) => warn!("the link did not disconnect in time"),
        Ok(CallResult::SenderError) | Err(_) => debug!("the link is gone already"),
    }
}

/// Casts a publish to the link; a stopped link is logged, not an error for the caller.
pub fn publish(link: &ActorRef<LinkMsg>, topic: String, payload: Vec<u8>, retain: bool) {
    if let Err(e) = link.cast(LinkMsg::Publish {
        topic,
        payload,
        retain,
    }) {
        warn!(error = %e, "link is gone; publish dropped");
    }
}
