//! The device's vector index: what it holds, how it is kept on disk, and the rules that keep
//! both right.
//!
//! - [`table`]: [`Index`], one model's pictures ([`Entry`]) and vectors, lookups by path, key
//!   and id, filtered ranking.
//! - [`precision`], [`vectors`]: the vector table in f32, f16 or int8, scored with simsimd.
//! - [`vector_file`]: the snapshot's vectors in one flat aligned file, ranked from a memory map.
//! - [`store`]: the persistent index (snapshot + journal + vector file), power-cut safe, with
//!   its record codec (`record`) and the reading of older formats (`migrate`).
//! - [`reindex`]: the index folders during a re-index for a new model, and the switch.
//! - [`catalog`]: [`Catalog`], the serving index and the one being built with their stores,
//!   the queue of changes not yet written, and the rules (save before visible, rank a vector
//!   by its model's index, remove from both, switch when nothing is left).
//! - [`indexes`]: [`Indexes`], both indexes in memory as readers see them.
//! - [`reader`]: [`CatalogReader`], what searches, the encoder, the capture and the HTTP
//!   endpoint read, on their own threads under a read lock.
//! - [`reuse`]: vectors to reuse for a file's content (copies, renames).

pub mod catalog;
pub mod indexes;
mod migrate;
pub mod precision;
pub mod reader;
mod record;
pub mod reindex;
pub mod reuse;
pub mod store;
pub mod table;
pub mod vector_file;
pub mod vectors;

pub use catalog::{Catalog, Compacted, Compaction, Inserted, Inventory, Switched};
pub use indexes::{Indexes, Models};
pub use precision::Precision;
pub use reader::{hit, CatalogReader, Duplicates, Export, ExportChunk, Ranking};
pub use reindex::Layout;
pub use store::{OpenReport, Store};
pub use table::{keeps, picture_id, picture_key, Entry, Filter, Index, Known, Ranked};
