//! The one error enum of the `edgeclip` library: the MQTT client, the embedded broker and the
//! parity check. The binary adds context with anyhow.

use std::net::SocketAddr;
use std::path::PathBuf;

use edgeclip_link::LinkError;
use edgeclip_messages::WireError;
use thiserror::Error;

/// Everything the client, the embedded broker and the parity check can fail with.
#[derive(Debug, Error)]
pub enum Error {
    /// The broker URL, credentials or TLS files are unusable.
    #[error(transparent)]
    Link(#[from] LinkError),
    /// No connection to the broker within the time given.
    #[error("broker unreachable at {url}: {reason}")]
    Unreachable {
        /// The broker's URL.
        url: String,
        /// Why: the connection error, or the time waited.
        reason: String,
    },
    /// The connection to the broker ended while waiting.
    #[error("connection to the broker was lost")]
    ConnectionLost,
    /// Nothing arrived before the deadline.
    #[error("timed out")]
    TimedOut,
    /// The MQTT client refused a request (its event loop is gone).
    #[error("mqtt client: {0}")]
    Mqtt(#[from] rumqttc::ClientError),
    /// A device did not answer a search in time.
    #[error("device {device} did not answer within {ms} ms")]
    DeviceSilent {
        /// The device asked.
        device: String,
        /// The time waited.
        ms: u128,
        /// Why the wait ended.
        source: Box<Error>,
    },
    /// No fleet answer in time.
    #[error(
        "no fleet answer within {ms} ms (is edgeclip-cloud running and connected to the broker?)"
    )]
    FleetSilent {
        /// The time waited.
        ms: u128,
        /// Why the wait ended.
        source: Box<Error>,
    },
    /// The `--device` given is not a device id.
    #[error("--device {given:?}: {reason}")]
    BadDevice {
        /// The value given.
        given: String,
        /// Why it is not a device id.
        reason: WireError,
    },
    /// No device is online, so none can be chosen.
    #[error("no edgeclip device is online on this broker")]
    NoDevice,
    /// Several devices are online and none was chosen.
    #[error("{} devices are online ({}); choose one with --device", .0.len(), .0.join(", "))]
    ManyDevices(Vec<String>),
    /// The device has no retained status.
    #[error("device {0} has published no status")]
    NoStatus(String),
    /// The device's status is not one this version reads.
    #[error("device {device} published a status this version cannot read")]
    BadStatus {
        /// The device.
        device: String,
        /// What did not parse.
        source: serde_json::Error,
    },
    /// A JSON message could not be written or read.
    #[error(transparent)]
    Json(#[from] serde_json::Error),
    /// The embedded broker's address is taken.
    #[error(
        "cannot listen on {addr} (another MQTT broker running? choose another address with --listen)"
    )]
    Listen {
        /// The address asked for.
        addr: SocketAddr,
        /// The error of the attempt.
        source: std::io::Error,
    },
    /// The embedded broker's configuration was refused.
    #[error("embedded broker configuration")]
    BrokerConfig(#[source] config::ConfigError),
    /// The embedded broker did not listen in time.
    #[error("embedded broker did not start listening on {0}")]
    BrokerSilent(SocketAddr),
    /// A file could not be read.
    #[error("reading {}", .path.display())]
    Read {
        /// The file.
        path: PathBuf,
        /// The error.
        source: std::io::Error,
    },
    /// The parity files do not describe what the model takes or gives.
    #[error("{0}")]
    Parity(&'static str),
    /// The device's image tower failed.
    #[error(transparent)]
    Device(#[from] edgeclip_device::DeviceError),
    /// The cloud's text tower failed.
    #[error(transparent)]
    Cloud(#[from] edgeclip_cloud::CloudError),
    /// Another I/O error (a socket, a thread).
    #[error(transparent)]
    Io(#[from] std::io::Error),
}
