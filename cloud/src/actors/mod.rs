//! The cloud's actors, one per file, each a thin shell around its engine.
//!
//! - [`supervisor`]: loads the text tower and tokenizer, spawns the link, the encoder and the
//!   fleet actor, routes incoming publishes to them, stops them in order.
//! - [`text_encoder`]: validates requests, replies; which texts to encode is
//!   [`crate::encodings`]' rule, the encoding itself runs off the async threads.
//! - [`fleet`]: fleet searches: the text encoded once, fanned out to every online device, the
//!   answers merged within a deadline, by the rules of [`crate::fleet`].
//!
//! The encoder's and the fleet actor's handlers never wait: work that takes time comes back as
//! a message. Only the supervisor's shutdown waits, for its children to stop in order.
//! The MQTT link actor is `edgeclip_link::LinkActor`, shared with the device.

pub mod fleet;
pub mod supervisor;
pub mod text_encoder;
