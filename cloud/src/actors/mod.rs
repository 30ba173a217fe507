//! The cloud's actors, one per file.
//!
//! - [`supervisor`]: loads the text tower and tokenizer, spawns the link and the encoder.
//! - [`text_encoder`]: validates requests, tokenises, encodes off the async threads, replies.
//! - [`fleet`]: fleet searches: the text encoded once, fanned out to every online device, the
//!   answers merged within a deadline.
//!
//! The MQTT link actor is `edgeclip_link::LinkActor`, shared with the device.

pub mod fleet;
pub mod supervisor;
pub mod text_encoder;
