//! The search engine: the rules of a search without IO or actors, driven by the search actor
//! ([`crate::actors::search`]), a shell that only carries out the [`Effect`]s.
//!
//! - [`session`]: [`Session`], the searches in flight as a state machine: request ids, the
//!   one retry, the timeouts, the model fallback during a re-index, the work handed to the
//!   index side, the answers; inputs in, [`Effect`]s out.
//! - `server_rank`: a server-ranked search (method B): its export out as rank requests,
//!   the chunks' rankings checked and merged.
//! - `fleet`: fleet queries: which are ranked, which refused or dropped, the answer to the
//!   worker.
//! - [`query`]: [`Query`], the received cloud frame that carries a text vector, ranked in
//!   place.
//! - [`failure`]: why a search failed, in the words its answer gives.
//! - [`present`]: thumbnail URLs, the best match for dashboards, answer texts, `took_ms`.
//!
//! The index side's work goes out as effects ([`Effect::Rank`], [`Effect::Like`],
//! [`Effect::Duplicates`], [`Effect::Export`]) and its results come back as the index's own
//! types, as the [`crate::index::CatalogReader`] returns them ([`crate::index::Ranking`],
//! [`crate::index::Duplicates`], [`crate::index::Export`]): the session never reads the
//! catalog itself.

pub mod failure;
mod fleet;
pub mod present;
pub mod query;
mod server_rank;
pub mod session;
#[cfg(test)]
mod test_support;

pub use failure::{Failure, IndexError};
pub use query::Query;
pub use session::{
    Effect, SearchId, Session, SessionConfig, Timer, DUPLICATES_TIMEOUT, INDEX_TIMEOUT,
};
