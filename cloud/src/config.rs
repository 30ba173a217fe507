//! Cloud configuration: built-in defaults, then a file, then `EDGECLIP_*` environment
//! variables, then command-line overrides; validated once at start.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::CloudError;

/// The built-in defaults, documented.
pub const DEFAULTS: &str = include_str!("../config/default.toml");

/// The whole cloud configuration.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct CloudConfig {
    /// Worker id; empty means `<host>-<pid>`.
    pub worker_id: String,
    /// Model folder.
    pub model: ModelConfig,
    /// Broker connection.
    pub broker: edgeclip_link::BrokerConfig,
    /// Text encoding.
    pub encoder: EncoderConfig,
    /// Bounds per requester.
    pub limits: crate::limits::LimitsConfig,
    /// Fleet searches.
    pub fleet: FleetConfig,
}

/// `[fleet]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct FleetConfig {
    /// How long devices may take to answer when a search does not say.
    pub deadline_ms: u64,
    /// Longest deadline a search may ask for.
    pub max_deadline_ms: u64,
    /// Hits when a search does not say.
    pub default_k: usize,
    /// Most hits.
    pub max_k: usize,
}

/// `[model]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model folder.
    pub dir: PathBuf,
    /// Model id override.
    pub id: String,
}

/// `[encoder]`.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct EncoderConfig {
    /// Concurrent encodings; 0 means one per core.
    pub workers: usize,
    /// LRU cache size.
    pub cache_entries: usize,
    /// Longest text.
    pub max_text_bytes: usize,
    /// Most vectors in one server-ranked chunk.
    pub max_rank_vectors: usize,
}

impl CloudConfig {
    /// Layers defaults, the optional file, the environment and `overrides`, then validates.
    pub fn load(
        file: Option<&Path>,
        overrides: &[(&str, config::Value)],
    ) -> Result<Self, CloudError> {
        let cfg: Self = edgeclip_link::settings::load(DEFAULTS, file, &[], overrides)
            .map_err(CloudError::Settings)?;
        cfg.validated()
    }

    /// Fills derived defaults and checks every value.
    pub fn validated(mut self) -> Result<Self, CloudError> {
        let bad = |m: &str| Err(CloudError::Config(m.to_string()));
        if self.worker_id.is_empty() {
            let host = std::fs::read_to_string("/proc/sys/kernel/hostname")
                .unwrap_or_else(|_| "cloud".into());
            let host: String = host
                .trim()
                .chars()
                .filter(|c| c.is_ascii_alphanumeric() || *c == '-')
                .take(48)
                .collect();
            self.worker_id = format!("{host}-{}", std::process::id());
        }
        if !self
            .worker_id
            .chars()
            .all(|c| c.is_ascii_alphanumeric() || matches!(c, '.' | '_' | '-'))
            || self.worker_id.len() > 64
        {
            return bad("worker_id may only hold up to 64 letters, digits, '.', '_' and '-'");
        }
        let client_id = format!("edgeclip-cloud-{}", self.worker_id);
        self.broker
            .validate(client_id)
            .map_err(CloudError::Settings)?;
        if self.encoder.workers == 0 {
            self.encoder.workers = std::thread::available_parallelism()
                .map(|n| n.get())
                .unwrap_or(1);
        }
        if self.encoder.workers > 64 {
            return bad("encoder.workers must be at most 64");
        }
        if self.encoder.max_text_bytes == 0 {
            return bad("encoder.max_text_bytes must be >= 1");
        }
        if !(self.limits.requests_per_s >= 0.0 && self.limits.requests_per_s.is_finite()) {
            return bad("limits.requests_per_s must be a number >= 0");
        }
        if self.limits.max_requesters == 0 {
            return bad("limits.max_requesters must be >= 1");
        }
        if self.fleet.deadline_ms == 0
            || self.fleet.deadline_ms > self.fleet.max_deadline_ms
            || self.fleet.max_deadline_ms > 600_000
        {
            return bad("fleet.deadline_ms must be >= 1 and <= fleet.max_deadline_ms <= 600000");
        }
        if self.fleet.default_k == 0
            || self.fleet.default_k > self.fleet.max_k
            || self.fleet.max_k > 10_000
        {
            return bad("fleet.default_k must be >= 1 and <= fleet.max_k <= 10000");
        }
        Ok(self)
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn defaults_parse_and_bad_values_are_named() {
        let cfg = CloudConfig::load(None, &[("worker_id", "w1".into())]).unwrap();
        assert_eq!(cfg.broker.client_id, "edgeclip-cloud-w1");
        assert!(cfg.encoder.workers >= 1);
        let err = CloudConfig::load(None, &[("broker.url", "localhost".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("mqtt://"), "{err}");
        let err = CloudConfig::load(None, &[("worker_id", "a b".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("worker_id"), "{err}");
    }
}
