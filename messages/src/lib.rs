//! edgeclip's wire protocol: every byte that crosses MQTT is defined here, and nothing else is.
//!
//! # Layout
//! - [`topics`]: topic names and builders, device-id validation.
//! - [`wire`]: the rkyv messages between device and cloud (encode request, reply), framed with
//!   a magic and a protocol version, decoded only through validated access.
//! - [`dashboard`]: the JSON messages on the dashboard-facing topics (search, results, status).
//! - [`filter`]: which pictures a search may return, shared by searches, device and CLI.
//! - [`hit`]: one ranked picture, the result type of every search (JSON and rkyv).
//! - [`request_id`]: request ids that a restarted program never repeats.
//! - [`homeassistant`]: Home Assistant MQTT discovery configs and their validation.
//! - [`model_id`]: the embedding space a model folder is named by on the wire, so device and
//!   cloud agree on the space rather than on a file.
//! - [`error`]: the crate's one error enum.
//!
//! Architecture invariant: this crate does no IO and depends on no other edgeclip crate.
#![warn(missing_docs)]

pub mod dashboard;
pub mod error;
pub mod filter;
pub mod hit;
pub mod homeassistant;
pub mod model_id;
pub mod request_id;
pub mod topics;
pub mod wire;

pub use error::WireError;
pub use filter::Filter;
pub use hit::Hit;
