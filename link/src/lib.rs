//! edgeclip's MQTT link, shared by the device and the cloud.
//!
//! # Layout
//! - [`options`]: broker URL parsing into rumqttc options, last will, limits.
//! - [`backoff`]: reconnect delays, exponential with jitter (rumqttc itself retries at once).
//! - [`settings`]: layered configuration (defaults, file, environment, overrides).
//! - [`signal`]: Ctrl-C / SIGTERM, how every edgeclip program is asked to stop.
//! - [`actor`]: [`LinkActor`], the one place that owns a rumqttc event loop. Other actors
//!   publish by casting [`LinkMsg::Publish`]; incoming publishes go to a [`Router`] given at start.
//!
//! Architecture invariant: nothing here knows edgeclip's topics or messages; the device and
//! the cloud bring their subscriptions, their online/offline messages and their router.
#![warn(missing_docs)]

pub mod actor;
pub mod backoff;
pub mod options;
pub mod security;
pub mod settings;
pub mod signal;

pub use actor::{disconnect, publish, Incoming, LinkActor, LinkArgs, LinkMsg, Router};
pub use options::{BrokerConfig, LinkOptions, Presence};
pub use security::{Credentials, Security};
pub use signal::shutdown_signal;

/// Why the link could not be set up, or its settings not loaded.
#[derive(Debug, thiserror::Error)]
pub enum LinkError {
    /// The broker URL or an option is invalid.
    #[error("invalid broker option: {0}")]
    Options(String),
    /// The `--config` file named does not exist.
    #[error("config file {} does not exist", .0.display())]
    ConfigFile(std::path::PathBuf),
    /// The layered settings could not be read or do not fit the program's configuration.
    #[error(transparent)]
    Settings(#[from] config::ConfigError),
}
