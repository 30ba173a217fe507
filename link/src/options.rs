//! Broker options: `mqtt://` and `mqtts://` URLs into rumqttc options, with credentials, TLS,
//! last will and limits.

use std::time::Duration;

use rumqttc::{LastWill, MqttOptions, QoS};

use crate::security::{Credentials, Security};
use crate::LinkError;

/// Requests (publishes, subscriptions) the MQTT client queues for its event loop. Publishing
/// never waits for room: a full queue means the broker has been away for a while, and the
/// publish is dropped. It holds a fleet search's queries to a few hundred devices at once.
pub const REQUEST_QUEUE: usize = 256;

/// The shortest keep-alive used, whatever `broker.keep_alive_s` says: 0 would turn keep-alives
/// off (a dead connection never noticed) and rumqttc refuses less than a second; below a few
/// seconds pings would be much of an idle link's traffic, and a program busy for a moment would
/// be taken for dead by its broker (which drops a client after 1.5 keep-alives of silence).
pub const MIN_KEEP_ALIVE: Duration = Duration::from_secs(5);

/// A retained presence message: published on connect, and set as the last will.
#[derive(Debug, Clone)]
pub struct Presence {
    /// Topic of the presence message.
    pub topic: String,
    /// Payload while connected.
    pub online: String,
    /// Payload once gone (last will, and on clean disconnect).
    pub offline: String,
}

/// The `[broker]` section of the device's and the cloud's configuration files. Its `Debug`
/// never shows the password.
#[derive(Clone, serde::Deserialize)]
#[serde(deny_unknown_fields)]
pub struct BrokerConfig {
    /// `mqtt://host:port`, or `mqtts://host:port` for TLS.
    pub url: String,
    /// MQTT user name; empty: connect without one.
    pub username: String,
    /// MQTT password (prefer `password_file` or the environment).
    pub password: String,
    /// File whose first line is the password; empty: use `password`.
    pub password_file: String,
    /// PEM CA certificates for `mqtts://`; empty: the system's roots.
    pub ca_file: String,
    /// PEM client certificate chain, for brokers that require one; empty: none.
    pub client_cert_file: String,
    /// PEM private key of the client certificate.
    pub client_key_file: String,
    /// MQTT client id; empty means a default the program derives from its id.
    pub client_id: String,
    /// Keep-alive, seconds.
    pub keep_alive_s: u64,
    /// Shortest reconnect delay.
    pub reconnect_min_ms: u64,
    /// Longest reconnect delay.
    pub reconnect_max_ms: u64,
    /// Largest packet.
    pub max_packet_bytes: usize,
}

impl std::fmt::Debug for BrokerConfig {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("BrokerConfig")
            .field("url", &self.url)
            .field("username", &self.username)
            .field("password", &crate::security::redacted(&self.password))
            .field("password_file", &self.password_file)
            .field("ca_file", &self.ca_file)
            .field("client_cert_file", &self.client_cert_file)
            .field("client_key_file", &self.client_key_file)
            .field("client_id", &self.client_id)
            .field("keep_alive_s", &self.keep_alive_s)
            .field("reconnect_min_ms", &self.reconnect_min_ms)
            .field("reconnect_max_ms", &self.reconnect_max_ms)
            .field("max_packet_bytes", &self.max_packet_bytes)
            .finish()
    }
}

impl BrokerConfig {
    /// Fills the client id if empty and checks every value.
    pub fn validate(&mut self, default_client_id: String) -> Result<(), LinkError> {
        if self.client_id.is_empty() {
            self.client_id = default_client_id;
        }
        let (_, _, tls) = parse_broker(&self.url)?;
        // Read every file now, so a wrong path fails at start and not at the first connection.
        self.security()?
            .apply(&mut MqttOptions::new("check", "localhost", 1883), tls)?;
        if self.client_cert_file.is_empty() != self.client_key_file.is_empty() {
            return Err(LinkError::Options(
                "broker.client_cert_file and broker.client_key_file go together".into(),
            ));
        }
        if self.reconnect_min_ms == 0 || self.reconnect_min_ms > self.reconnect_max_ms {
            return Err(LinkError::Options(
                "broker.reconnect_min_ms must be >= 1 and <= reconnect_max_ms".into(),
            ));
        }
        if self.max_packet_bytes < 4096 {
            return Err(LinkError::Options(
                "broker.max_packet_bytes must be at least 4096".into(),
            ));
        }
        Ok(())
    }

    /// Credentials and TLS files, with the password read from its file if one is named.
    pub fn security(&self) -> Result<Security, LinkError> {
        Security::from_credentials(Credentials {
            username: &self.username,
            password: &self.password,
            password_file: &self.password_file,
            ca_file: &self.ca_file,
            client_cert_file: &self.client_cert_file,
            client_key_file: &self.client_key_file,
        })
    }

    /// The link options for this broker, with the program's subscriptions and presence.
    /// Call after [`BrokerConfig::validate`], which checks the security files.
    pub fn link_options(
        &self,
        subscriptions: Vec<String>,
        presence: Option<Presence>,
    ) -> LinkOptions {
        LinkOptions {
            security: self.security().unwrap_or_default(),
            url: self.url.clone(),
            client_id: self.client_id.clone(),
            keep_alive: Duration::from_secs(self.keep_alive_s),
            max_packet_bytes: self.max_packet_bytes,
            subscriptions,
            presence,
            reconnect_min: Duration::from_millis(self.reconnect_min_ms),
            reconnect_max: Duration::from_millis(self.reconnect_max_ms),
        }
    }
}

/// Everything the link needs to connect.
#[derive(Debug, Clone)]
pub struct LinkOptions {
    /// `mqtt://host:port` or `tcp://host:port` (port defaults to 1883), `mqtts://host:port`
    /// for TLS (port defaults to 8883).
    pub url: String,
    /// Credentials and TLS.
    pub security: Security,
    /// MQTT client id; must be unique on the broker.
    pub client_id: String,
    /// Keep-alive interval: a dead connection is noticed after ~1.5x this.
    pub keep_alive: Duration,
    /// Largest packet sent or accepted, in bytes.
    pub max_packet_bytes: usize,
    /// Topic filters subscribed (again) after every connection.
    pub subscriptions: Vec<String>,
    /// Presence topic, if any.
    pub presence: Option<Presence>,
    /// Shortest delay before reconnecting.
    pub reconnect_min: Duration,
    /// Longest delay before reconnecting.
    pub reconnect_max: Duration,
}

impl LinkOptions {
    /// Builds rumqttc options; refuses URLs other than `mqtt://`, `tcp://` or `mqtts://` with
    /// a host and a port.
    pub fn mqtt_options(&self) -> Result<MqttOptions, LinkError> {
        let (host, port, tls) = parse_broker(&self.url)?;
        if self.client_id.is_empty() || self.client_id.len() > 128 {
            return Err(LinkError::Options(
                "client id must be 1 to 128 bytes".into(),
            ));
        }
        let mut options = MqttOptions::new(self.client_id.clone(), host, port);
        options.set_keep_alive(self.keep_alive.max(MIN_KEEP_ALIVE));
        options.set_max_packet_size(self.max_packet_bytes, self.max_packet_bytes);
        // A clean session: subscriptions are made again on every connection, and replies that
        // arrive while disconnected are worthless anyway (searches time out on their own).
        options.set_clean_session(true);
        options.set_request_channel_capacity(REQUEST_QUEUE);
        if let Some(p) = &self.presence {
            options.set_last_will(LastWill::new(
                &p.topic,
                p.offline.clone(),
                QoS::AtLeastOnce,
                true,
            ));
        }
        self.security.apply(&mut options, tls)?;
        Ok(options)
    }
}

/// Splits `mqtt://host:port` into host and port.
pub fn parse_broker_url(url: &str) -> Result<(String, u16), LinkError> {
    parse_broker(url).map(|(host, port, _)| (host, port))
}

/// Splits a broker URL into host, port and whether it asks for TLS (`mqtts://`, `ssl://`).
pub fn parse_broker(url: &str) -> Result<(String, u16, bool), LinkError> {
    let (rest, tls) = if let Some(r) = url
        .strip_prefix("mqtts://")
        .or_else(|| url.strip_prefix("ssl://"))
    {
        (r, true)
    } else if let Some(r) = url
        .strip_prefix("mqtt://")
        .or_else(|| url.strip_prefix("tcp://"))
    {
        (r, false)
    } else {
        return Err(LinkError::Options(format!(
            "broker URL {url:?} must start with mqtt://, tcp:// or mqtts://"
        )));
    };
    let default_port = if tls { 8883 } else { 1883 };
    let rest = rest.trim_end_matches('/');
    if rest.is_empty() || rest.contains(['/', '?', '@']) {
        return Err(LinkError::Options(format!(
            "broker URL {url:?} must be mqtt://HOST[:PORT]"
        )));
    }
    let (host, port) = match rest.rsplit_once(':') {
        Some((h, p)) if !h.ends_with(']') || rest.starts_with('[') => {
            let port = p
                .parse::<u16>()
                .map_err(|_| LinkError::Options(format!("broker URL {url:?} has a bad port")))?;
            (
                h.trim_start_matches('[').trim_end_matches(']').to_string(),
                port,
            )
        }
        _ => (rest.to_string(), default_port),
    };
    if host.is_empty() || port == 0 {
        return Err(LinkError::Options(format!(
            "broker URL {url:?} must name a host and a non-zero port"
        )));
    }
    Ok((host, port, tls))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parses_broker_urls() {
        assert_eq!(
            parse_broker_url("mqtt://127.0.0.1:1883").unwrap(),
            ("127.0.0.1".into(), 1883)
        );
        assert_eq!(
            parse_broker_url("tcp://broker.lan").unwrap(),
            ("broker.lan".into(), 1883)
        );
        assert_eq!(
            parse_broker_url("mqtt://[::1]:1884").unwrap(),
            ("::1".into(), 1884)
        );
        assert_eq!(
            parse_broker("mqtts://broker.lan").unwrap(),
            ("broker.lan".into(), 8883, true)
        );
        assert_eq!(parse_broker("ssl://b:1").unwrap(), ("b".into(), 1, true));
        assert_eq!(parse_broker("mqtt://b").unwrap(), ("b".into(), 1883, false));
        for bad in [
            "127.0.0.1:1883",
            "http://x:1",
            "mqtt://",
            "mqtt://h:0",
            "mqtt://h:port",
            "mqtt://u@h:1",
            "mqtt://h:1/x",
        ] {
            assert!(parse_broker_url(bad).is_err(), "{bad}");
        }
    }
}
