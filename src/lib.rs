//! The `edgeclip` command: one program to try the whole system (`up`), and the dashboard-side
//! client (`search`, `status`) that talks to any device over MQTT.
//!
//! # Layout
//! - [`broker`]: an MQTT broker inside the process (rumqttd), for `up` and the tests.
//! - [`client`]: a short-lived MQTT client for dashboards and scripts: finds online devices,
//!   sends a search and waits for its answer, reads the retained status.
//! - [`output`]: how answers are printed.
//! - [`parity`]: the tract-versus-onnxruntime check of a model folder.
//! - [`error`]: the library's one error enum.
//! - `cli/` (in the binary): one file per subcommand.
#![warn(missing_docs)]

pub mod broker;
pub mod client;
pub mod error;
pub mod output;
pub mod parity;

pub use error::Error;
