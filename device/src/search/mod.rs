//! The search engine: the rules of a search without IO or actors, driven by the search actor.
//!
//! - [`present`]: thumbnail URLs, the best match for dashboards, answer texts, `took_ms`.

pub mod present;
