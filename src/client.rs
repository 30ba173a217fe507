//! A short-lived MQTT client for dashboards and scripts: finds online devices, sends a search
//! and waits for the answer with the same id, reads a device's retained status. Every wait
//! has a deadline.

use std::collections::BTreeMap;
use std::time::{Duration, Instant};

use bytes::Bytes;
use edgeclip_messages::dashboard::{
    DeviceStatus, FleetResponse, FleetSearchRequest, SearchRequest, SearchResponse,
};
use edgeclip_messages::topics;
use rumqttc::{AsyncClient, Event, MqttOptions, Packet, QoS};
use tokio::sync::mpsc;
use tokio::task::JoinHandle;

use crate::error::Error;

/// How long retained messages are awaited after a subscription is acknowledged. A broker sends
/// the retained messages of a filter right after its SUBACK, in one burst over a connection
/// that is already up; a quiet gap this long means the burst is over.
const RETAINED_GRACE: Duration = Duration::from_millis(400);

/// Keep-alive of the client's connection: it lives for one command, seconds long, so pings
/// matter only when a command waits long (a fleet search up to its deadline).
const KEEP_ALIVE: Duration = Duration::from_secs(30);

/// Requests the client queues for its event loop: one command publishes and subscribes a few
/// times.
const REQUEST_QUEUE: usize = 64;

/// How long a clean disconnect may take before the connection is dropped: the DISCONNECT is
/// one small packet, and the command's work is done by then.
const DISCONNECT_TIMEOUT: Duration = Duration::from_secs(1);

enum Note {
    Publish(String, Bytes),
    SubAck,
}

/// A connected client.
pub struct Client {
    client: AsyncClient,
    notes: mpsc::UnboundedReceiver<Note>,
    poll: JoinHandle<()>,
}

impl Client {
    /// Connects to `url` (`mqtt://host:port`) within `timeout`, without credentials.
    pub async fn connect(url: &str, timeout: Duration) -> Result<Self, Error> {
        Self::connect_with(url, &edgeclip_link::Security::default(), timeout).await
    }

    /// Connects to `url` (`mqtt://` or `mqtts://`) with `security` within `timeout`.
    pub async fn connect_with(
        url: &str,
        security: &edgeclip_link::Security,
        timeout: Duration,
    ) -> Result<Self, Error> {
        let (host, port, tls) = edgeclip_link::options::parse_broker(url)?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.subsec_nanos())
            .unwrap_or(0);
        let id = format!("edgeclip-cli-{}-{nanos:x}", std::process::id());
        let mut options = MqttOptions::new(id, host, port);
        options.set_keep_alive(KEEP_ALIVE);
        options.set_max_packet_size(
            crate::broker::MAX_PAYLOAD * 2,
            crate::broker::MAX_PAYLOAD * 2,
        );
        security.apply(&mut options, tls)?;
        let (client, mut eventloop) = AsyncClient::new(options, REQUEST_QUEUE);
        let connected = tokio::time::timeout(timeout, async {
            loop {
                match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::ConnAck(_))) => return Ok(()),
                    Ok(_) => {}
                    Err(e) => return Err(e),
                }
            }
        })
        .await;
        let unreachable = |reason: String| Error::Unreachable {
            url: url.to_string(),
            reason,
        };
        match connected {
            Ok(Ok(())) => {}
            Ok(Err(e)) => return Err(unreachable(e.to_string())),
            Err(_) => {
                let waited = format!("no answer within {} ms", timeout.as_millis());
                return Err(unreachable(waited));
            }
        }
        let (tx, notes) = mpsc::unbounded_channel();
        let poll = tokio::spawn(async move {
            loop {
                let note = match eventloop.poll().await {
                    Ok(Event::Incoming(Packet::Publish(p))) => Note::Publish(p.topic, p.payload),
                    Ok(Event::Incoming(Packet::SubAck(_))) => Note::SubAck,
                    Ok(_) => continue,
                    Err(_) => return,
                };
                if tx.send(note).is_err() {
                    return;
                }
            }
        });
        Ok(Self {
            client,
            notes,
            poll,
        })
    }

    /// Subscribes and waits for the acknowledgement.
    async fn subscribe(
        &mut self,
        filter: &str,
        deadline: Instant,
    ) -> Result<Vec<(String, Bytes)>, Error> {
        self.client.subscribe(filter, QoS::AtLeastOnce).await?;
        let mut early = Vec::new();
        loop {
            match self.next_note(deadline).await? {
                Note::SubAck => return Ok(early),
                Note::Publish(t, p) => early.push((t, p)),
            }
        }
    }

    async fn next_note(&mut self, deadline: Instant) -> Result<Note, Error> {
        let left = deadline.saturating_duration_since(Instant::now());
        match tokio::time::timeout(left, self.notes.recv()).await {
            Ok(Some(n)) => Ok(n),
            Ok(None) => Err(Error::ConnectionLost),
            Err(_) => Err(Error::TimedOut),
        }
    }

    /// Retained messages on `filter`, collected for a short while after subscribing.
    async fn retained(
        &mut self,
        filter: &str,
        deadline: Instant,
    ) -> Result<Vec<(String, Bytes)>, Error> {
        let mut got = self.subscribe(filter, deadline).await?;
        let until = (Instant::now() + RETAINED_GRACE).min(deadline);
        while let Ok(Note::Publish(t, p)) = self.next_note(until).await {
            got.push((t, p));
        }
        Ok(got)
    }

    /// Devices whose retained availability is `online`, sorted.
    pub async fn online_devices(&mut self, timeout: Duration) -> Result<Vec<String>, Error> {
        let deadline = Instant::now() + timeout;
        let mut state = BTreeMap::new();
        for (topic, payload) in self.retained(topics::ALL_AVAILABILITY, deadline).await? {
            if let Some(device) = topics::device_of_availability(&topic) {
                state.insert(
                    device.to_string(),
                    payload.as_ref() == topics::ONLINE.as_bytes(),
                );
            }
        }
        Ok(state
            .into_iter()
            .filter(|(_, online)| *online)
            .map(|(d, _)| d)
            .collect())
    }

    /// The device to address: the one given, or the only one online.
    pub async fn resolve_device(
        &mut self,
        given: Option<&str>,
        timeout: Duration,
    ) -> Result<String, Error> {
        if let Some(d) = given {
            topics::validate_device_id(d).map_err(|reason| Error::BadDevice {
                given: d.to_string(),
                reason,
            })?;
            return Ok(d.to_string());
        }
        let mut online = self.online_devices(timeout).await?;
        match online.len() {
            0 => Err(Error::NoDevice),
            1 => Ok(online.remove(0)),
            _ => Err(Error::ManyDevices(online)),
        }
    }

    /// Sends a search to `device` and waits for the answer with the same id.
    pub async fn search(
        &mut self,
        device: &str,
        text: &str,
        k: Option<usize>,
        timeout: Duration,
    ) -> Result<SearchResponse, Error> {
        self.request(
            device,
            SearchRequest {
                k,
                ..SearchRequest::text(text)
            },
            timeout,
        )
        .await
    }

    /// Sends any search (filters, "more like this") to `device` and waits for its answer.
    pub async fn request(
        &mut self,
        device: &str,
        mut request: SearchRequest,
        timeout: Duration,
    ) -> Result<SearchResponse, Error> {
        let deadline = Instant::now() + timeout;
        self.subscribe(&topics::results(device), deadline).await?;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let id = format!("cli-{}-{nanos:x}", std::process::id());
        request.id = Some(id.clone());
        self.client
            .publish(
                topics::search(device),
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&request)?,
            )
            .await?;
        loop {
            let note = self
                .next_note(deadline)
                .await
                .map_err(|e| Error::DeviceSilent {
                    device: device.to_string(),
                    ms: timeout.as_millis(),
                    source: Box::new(e),
                })?;
            if let Note::Publish(_, payload) = note {
                if let Ok(response) = serde_json::from_slice::<SearchResponse>(&payload) {
                    if response.id() == id {
                        return Ok(response);
                    }
                }
            }
        }
    }

    /// Sends a fleet search (every online device ranks; the cloud merges) and waits for the
    /// merged answer on `edgeclip/fleet/results/<id>`.
    pub async fn fleet_search(
        &mut self,
        mut request: FleetSearchRequest,
        timeout: Duration,
    ) -> Result<FleetResponse, Error> {
        let deadline = Instant::now() + timeout;
        let nanos = std::time::SystemTime::now()
            .duration_since(std::time::UNIX_EPOCH)
            .map(|d| d.as_nanos())
            .unwrap_or(0);
        let id = format!("cli-{}-{nanos:x}", std::process::id());
        request.id = Some(id.clone());
        request.reply_to = None;
        let topic = topics::fleet_results(&id);
        self.subscribe(&topic, deadline).await?;
        self.client
            .publish(
                topics::FLEET_SEARCH,
                QoS::AtLeastOnce,
                false,
                serde_json::to_vec(&request)?,
            )
            .await?;
        loop {
            let note = self
                .next_note(deadline)
                .await
                .map_err(|e| Error::FleetSilent {
                    ms: timeout.as_millis(),
                    source: Box::new(e),
                })?;
            if let Note::Publish(t, payload) = note {
                if t == topic {
                    if let Ok(response) = serde_json::from_slice::<FleetResponse>(&payload) {
                        if response.id() == id {
                            return Ok(response);
                        }
                    }
                }
            }
        }
    }

    /// The retained status of `device`, raw JSON and parsed.
    pub async fn status(
        &mut self,
        device: &str,
        timeout: Duration,
    ) -> Result<(Bytes, DeviceStatus), Error> {
        let deadline = Instant::now() + timeout;
        let topic = topics::status(device);
        let got = self.retained(&topic, deadline).await?;
        let (_, raw) = got
            .into_iter()
            .rev()
            .find(|(t, _)| *t == topic)
            .ok_or_else(|| Error::NoStatus(device.to_string()))?;
        let status = serde_json::from_slice(&raw).map_err(|source| Error::BadStatus {
            device: device.to_string(),
            source,
        })?;
        Ok((raw, status))
    }

    /// Disconnects cleanly.
    pub async fn disconnect(self) {
        let _ = self.client.disconnect().await;
        let _ = tokio::time::timeout(DISCONNECT_TIMEOUT, self.poll).await;
    }
}
