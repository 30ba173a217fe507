//! The device's actors, one per file; each is a thin shell around a pure engine.
//!
//! - [`supervisor`]: loads the model, spawns and links the others, orders shutdown.
//! - [`camera`]: polls a camera's snapshot URL and saves the frames in its folder.
//! - [`capture`]: finds pictures in the configured folders and queues new or changed ones.
//! - [`image_encoder`]: decodes, preprocesses and encodes pictures on worker threads.
//! - [`index`]: owns the vector index, ranks, publishes the retained status.
//! - [`search`]: takes searches, asks the cloud for the text vector, answers with hits.
//! - [`discovery`]: announces the device to Home Assistant (MQTT discovery).
//!
//! The MQTT link actor is `edgeclip_link::LinkActor`, shared with the cloud.

pub mod camera;
pub mod capture;
pub mod discovery;
pub mod image_encoder;
pub mod index;
pub mod search;
pub mod supervisor;
