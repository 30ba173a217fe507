//! The search engine: the rules of a search without IO or actors, driven by the search actor.
//!
//! - [`session`]: the cloud session as a state machine (request ids, the one retry, the
//!   timeout, the model fallback during a re-index, merging server-ranked chunks, fleet
//!   answers); inputs in, [`Effect`]s out.
//! - [`present`]: thumbnail URLs, the best match for dashboards, answer texts, `took_ms`.
//!
//! It depends on the wire types alone, not on the index or the actors: the index side's work
//! goes out as effects ([`Effect::Rank`], [`Effect::Like`], [`Effect::Duplicates`],
//! [`Effect::Export`]) and its results come back as inputs ([`Ranking`], [`Groups`],
//! [`Exported`]).

pub mod present;
pub mod session;

pub use session::{
    Effect, ExportChunk, Exported, Failure, Groups, IndexError, Models, Query, Ranking, SearchId,
    Session, SessionConfig, Timer,
};
