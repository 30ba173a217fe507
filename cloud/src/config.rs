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

/// `[model]`: the worker's text towers. `dir` (with `id` and `languages`) is the first and
/// default one; each `[[model.text]]` adds one more.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct ModelConfig {
    /// Model folder of the first text tower (may be empty when `text` lists towers).
    pub dir: PathBuf,
    /// The first tower's space (model id), set; empty: derived from the folder.
    pub id: String,
    /// Languages the first tower serves; empty: from its family.
    #[serde(default)]
    pub languages: Vec<String>,
    /// More text towers.
    #[serde(default)]
    pub text: Vec<TextTowerConfig>,
}

/// `[[model.text]]`: one more text tower.
#[derive(Debug, Clone, Deserialize)]
#[serde(deny_unknown_fields)]
pub struct TextTowerConfig {
    /// Model folder.
    pub dir: PathBuf,
    /// The embedding space it was aligned to (a device's model id), set; empty: derived from
    /// the folder's `config.json` and image tower.
    #[serde(default)]
    pub space: String,
    /// Languages it serves (`de`, `zh-CN`, `deu_Latn`, or `"*"` for any); empty: from its
    /// family (M-CLIP and NLLB any language, the others English).
    #[serde(default)]
    pub languages: Vec<String>,
}

impl ModelConfig {
    /// The towers to load, the default first.
    pub fn towers(&self) -> Vec<crate::model::TowerSpec> {
        let first = (!self.dir.as_os_str().is_empty()).then(|| crate::model::TowerSpec {
            dir: self.dir.clone(),
            space: self.id.clone(),
            languages: self.languages.clone(),
        });
        first
            .into_iter()
            .chain(self.text.iter().map(|t| crate::model::TowerSpec {
                dir: t.dir.clone(),
                space: t.space.clone(),
                languages: t.languages.clone(),
            }))
            .collect()
    }
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
        if self.model.towers().is_empty() {
            return bad("no text tower: set model.dir, or add a [[model.text]] with its dir");
        }
        for spec in self.model.towers() {
            for lang in &spec.languages {
                if lang != "*" && edgeclip_messages::wire::validate_lang(lang).is_err() {
                    return Err(CloudError::Config(format!(
                        "languages of {}: {lang:?} is not a language code (de, zh-CN, deu_Latn) or \"*\"",
                        spec.dir.display()
                    )));
                }
            }
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
        // the single-folder configuration is one tower, as before
        assert_eq!(cfg.model.towers().len(), 1);
        assert!(cfg.model.towers()[0].dir.ends_with("models/clip-shapes"));
    }

    #[test]
    fn several_text_towers_are_configured_as_model_text_entries() {
        let dir = tempfile::tempdir().unwrap();
        let file = dir.path().join("cloud.toml");
        std::fs::write(
            &file,
            r#"
worker_id = "w"
[model]
dir = "families/vit"
[[model.text]]
dir = "families/mclip"
[[model.text]]
dir = "families/nllb"
space = "family-photos"
languages = ["de", "fra_Latn"]
"#,
        )
        .unwrap();
        let cfg = CloudConfig::load(Some(&file), &[]).unwrap();
        let towers = cfg.model.towers();
        assert_eq!(towers.len(), 3);
        assert!(towers[1].dir.ends_with("mclip") && towers[1].space.is_empty());
        assert_eq!(towers[2].space, "family-photos");
        assert_eq!(towers[2].languages, ["de", "fra_Latn"]);
        std::fs::write(
            &file,
            "[model]\ndir = \"\"\n[[model.text]]\ndir = \"x\"\nlanguages = [\"de CH\"]\n",
        )
        .unwrap();
        let err = CloudConfig::load(Some(&file), &[("worker_id", "w".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("de CH"), "{err}");
        let err = CloudConfig::load(None, &[("worker_id", "w".into()), ("model.dir", "".into())])
            .unwrap_err()
            .to_string();
        assert!(err.contains("no text tower"), "{err}");
    }
}
