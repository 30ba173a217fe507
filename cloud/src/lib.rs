//! edgeclip's cloud side: it holds only CLIP's text tower. Devices publish search texts; a
//! worker tokenises and encodes them and publishes the text vector back as an rkyv frame.
//! Several workers share the requests through an MQTT shared subscription and keep no
//! per-device state, so the service scales out by starting more of them.
//!
//! # Layout
//! Pure engines: [`model`] (a model folder read as Immich reads it, loading a text tower and
//! its report, [`model::check`]), [`tokenize`] (Immich's text pipeline via `tokenizers`, and
//! open_clip's CLIP layout), [`encode`] (the text tower on tract: inputs read from the model,
//! the cut after the end token where proven harmless), [`towers`] (which text tower encodes a
//! request: its space, its language), [`language`] (UI language codes to FLORES-200),
//! [`rank`] (server-side ranking of int8 vectors, method B), [`encodings`] (the text
//! encoder's cache, coalescing, workers and [`limits`]), [`fleet`] (fleet searches: who is
//! asked, which answers count, the merge and the deadline).
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
pub mod language;
pub mod limits;
pub mod model;
pub mod rank;
pub mod service;
pub mod tokenize;
pub mod towers;

pub use config::CloudConfig;
pub use error::CloudError;
pub use service::Cloud;
