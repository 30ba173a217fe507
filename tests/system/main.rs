//! Every integration test of edgeclip, in one test binary (one link of the tract-heavy
//! dependencies instead of one per file): the whole system on a real broker, the real cloud
//! and device on the real model files, driven as a dashboard, a user or a deployment would.
//!
//! # Layout
//!
//! - `util`: the one helper module: fixtures, a broker on a free port, device and cloud
//!   configurations, MQTT recorders, the model's own ranking, Mosquitto, and waits that always
//!   have a deadline.
//! - `search`: searches over MQTT, privacy, a missing or mismatched cloud, malformed messages,
//!   "more like this" and filters, near-duplicate groups.
//! - `cli`: the command line, as a user runs it.
//! - `deployment`: the separate programs against Mosquitto.
//! - `persistence`: the persistent index across restarts, on-disk changes and crashes.
//! - `reindex`: a model change, re-indexed in the background.
//! - `cameras`: polled cameras and their frames.
//! - `hostile`: hostile and broken pictures.
//! - `server_rank`: method B, the cloud ranks.
//! - `fleet`: fleet search over every device.
//! - `failover`: load on two cloud workers, one of them killed.
//! - `dashboards`: the HTTP endpoint, the search page in a real browser, Home Assistant
//!   discovery, the Node-RED flow.
//! - `web`: the HTTP endpoint through `edgeclip up`: its own origin only (Host, Origin,
//!   content type), and `/metrics` for Prometheus.
//! - `homeassistant`: a real Home Assistant on the device's discovery: entities, device
//!   grouping, search box, image proxy, buttons, availability.
//! - `node_red`: a real Node-RED running the example flow, its dashboard in a real browser.
//! - `clients`: what those two share: the installed clients (`tests/clients/install.sh`), their
//!   processes and logs, HTTP with headers, Mosquitto with a cloud and an unwatched device.
//! - `security`: TLS, passwords and access rules on a real Mosquitto; per-requester limits.
//! - `faults`: a full disk and a broker restart, through the real programs.
//! - `model`: the model files through tract, tokenizer and preprocessing parity.
//! - `families`: every model family Immich ships, from fixture folders in Immich's layout,
//!   through the device with its default settings, against Immich's own pipeline.
//! - `multilingual`: a device indexed once, searched in English, German and Chinese through
//!   a worker with an English and a multilingual text tower.
//!
//! Fixtures are in `tests/data/`. The fuzz harness replays in its own binary
//! (`tests/fuzz_regressions.rs`), the fuzz crate's documented bridge to stable Rust.

mod clients;
mod util;

mod cameras;
mod cli;
mod dashboards;
mod deployment;
mod failover;
mod families;
mod faults;
mod fleet;
mod homeassistant;
mod hostile;
mod model;
mod multilingual;
mod node_red;
mod persistence;
mod reindex;
mod search;
mod security;
mod server_rank;
mod web;
