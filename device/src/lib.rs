//! edgeclip's device side: it holds only CLIP's image tower. It finds pictures, encodes them
//! with tract on its own CPU, keeps the vectors, and ranks them against text vectors that the
//! cloud computes. No picture ever leaves the device.
//!
//! # Layout
//! Pure engines (no actors, no runtime; unit-tested in place):
//! - [`model`]: the model folder (config.json, visual/).
//! - [`preprocess`]: bounded decoding with EXIF orientation, CLIP preprocessing.
//! - [`metadata`]: one parse of the EXIF block: orientation and capture time.
//! - [`encode`]: the image tower on tract, one picture or a measured batch per run.
//! - [`rank`]: simsimd dot products and bounded top-k.
//! - [`duplicates`]: near-duplicate groups (single linkage over pairwise cosines).
//! - [`index`]: the vector index: tables, the persistent store, re-indexing, and the
//!   [`index::Catalog`] that holds the rules, read by others through an
//!   [`index::CatalogReader`].
//! - [`progress`]: status counters, rate and ETA.
//! - [`scan`]: walking picture folders.
//! - [`watch`]: file-system watching (a trigger for rescans).
//! - [`workers`]: the encoder's thread pool at low priority.
//! - [`batch_memo`]: the measured batch kept in the state folder per model and machine.
//! - [`heap`]: freed heap back to the system after a scan.
//! - [`state_lock`]: one device per state folder.
//! - [`thumb`]: thumbnails (picture bytes in, small EXIF-oriented JPEG out).
//! - [`camera`]: snapshot URLs, one HTTP GET, frame names, which frames to keep and prune.
//! - [`search`]: a search's rules as a state machine (cloud, retry, fallback) and presentation.
//!
//! Shells: [`actors`] (one actor per file), [`http`] (thumbnails and the search page),
//! [`service`] (start, search, shutdown),
//! [`config`] (layered configuration), [`error`].
//!
//! Architecture invariant: this crate does not depend on a tokenizer or on the text tower;
//! the device binary cannot encode text.
#![warn(missing_docs)]

pub mod actors;
pub mod batch_memo;
pub mod camera;
pub mod config;
pub mod duplicates;
pub mod encode;
pub mod error;
pub mod heap;
pub mod http;
pub mod index;
pub mod metadata;
pub mod model;
pub mod preprocess;
pub mod progress;
pub mod rank;
pub mod scan;
pub mod search;
pub mod service;
pub mod state_lock;
pub mod thumb;
pub mod watch;
pub mod workers;

pub use config::DeviceConfig;
pub use error::DeviceError;
pub use service::Device;
