//! The device's actors, one per file; each is a thin shell around a pure engine.
//!
//! - [`supervisor`]: loads the model, opens the catalog, spawns and links the others, routes
//!   MQTT, orders shutdown.
//! - [`camera`]: polls a camera's snapshot URL, saves the frames in its folder, and applies
//!   [`crate::camera::Retention`] to them once encoded.
//! - [`capture`]: finds pictures in the configured folders and queues new or changed ones.
//! - [`image_encoder`]: decodes, preprocesses and encodes pictures on worker threads.
//! - [`index`]: the one writer of the [`crate::index::Catalog`]; publishes the retained
//!   status ([`crate::progress`]).
//! - [`search`]: takes searches, asks the cloud for the text vector, ranks on the
//!   [`crate::index::CatalogReader`], answers with hits.
//! - [`discovery`]: announces the device to Home Assistant (MQTT discovery).
//!
//! The MQTT link actor is `edgeclip_link::LinkActor`, shared with the cloud.
//!
//! Architecture invariant: no actor awaits another actor's answer inside a handler, except
//! for answers given from memory at once (the link's connection count) and the ordered
//! shutdown. Readers read the catalog directly; slow work (fsync, compaction, rankings,
//! near-duplicate grouping) runs on blocking threads and comes back as a message.

pub mod camera;
pub mod capture;
pub mod discovery;
pub mod image_encoder;
pub mod index;
pub mod search;
pub mod supervisor;
