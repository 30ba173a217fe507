//! The device's vector index: what it holds and how it is kept on disk.
//!
//! - [`table`]: [`Index`], one model's pictures ([`Entry`]) and vectors, lookups by path, key
//!   and id, filtered ranking.
//! - [`precision`], [`vectors`]: the vector table in f32, f16 or int8, scored with simsimd.
//! - [`vector_file`]: the snapshot's vectors in one flat aligned file, ranked from a memory map.
//! - [`store`]: the persistent index (snapshot + journal + vector file), power-cut safe, with
//!   its record codec (`record`) and the reading of older formats (`migrate`).
//! - [`reindex`]: the index folders during a re-index for a new model, and the switch.

mod migrate;
pub mod precision;
mod record;
pub mod reindex;
pub mod store;
pub mod table;
pub mod vector_file;
pub mod vectors;

pub use precision::Precision;
pub use reindex::Layout;
pub use store::{OpenReport, Store};
pub use table::{keeps, picture_id, picture_key, Entry, Filter, Index, Known, Ranked};
