//! edgeclip's cloud side: it holds only CLIP's text tower. Devices publish search texts; a
//! worker tokenises and encodes them and publishes the text vector back as an rkyv frame.
//! Several workers share the requests through an MQTT shared subscription and keep no
//! per-device state, so the service scales out by starting more of them.
//!
//! # Layout
//! Pure engines: [`model`] (config.json, textual/), [`tokenize`] (CLIP BPE via `tokenizers`),
//! [`rank`] (server-side ranking of int8 vectors, method B), [`encode`] (the text tower on
//! tract), [`encodings`] (the text encoder's cache, coalescing, workers and [`limits`]),
//! [`fleet`] (fleet searches: who is asked, which answers count, the merge and the deadline).
//! Shells: [`actors`], [`service`], [`config`], [`error`].
//!
//! Architecture invariant: the cloud never receives or reads a picture.
#![warn(missing_docs)]

pub mod actors;
pub mod config;
pub mod encode;
pub mod encodings;
pub mod error;
pub mod fleet;
pub mod limits;
pub mod model;
pub mod rank;
pub mod service;
pub mod tokenize;

pub use config::CloudConfig;
pub use error::CloudError;
pub use service::Cloud;
