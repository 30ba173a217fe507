//! The cloud's view of a CLIP model folder: `config.json` and `textual/` (model.onnx,
//! tokenizer.json). It never looks at `visual/`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::CloudError;

#[derive(Debug, Deserialize)]
struct OpenClipConfig {
    embed_dim: usize,
    text_cfg: TextCfg,
}

#[derive(Debug, Deserialize)]
struct TextCfg {
    #[serde(default = "default_context")]
    context_length: usize,
}

fn default_context() -> usize {
    77
}

/// A model folder as the cloud uses it.
#[derive(Debug, Clone)]
pub struct TextModelFolder {
    /// The folder.
    pub dir: PathBuf,
    /// Model id on the wire.
    pub id: String,
    /// Output dimension.
    pub dim: usize,
    /// Tokens per text, special tokens and padding included.
    pub context_length: usize,
}

impl TextModelFolder {
    /// Reads the folder's configuration; `id_override` replaces the derived model id.
    pub fn open(dir: &Path, id_override: Option<&str>) -> Result<Self, CloudError> {
        let config_path = dir.join("config.json");
        let bytes = std::fs::read(&config_path).map_err(|e| CloudError::Model {
            path: config_path.clone(),
            reason: e.to_string(),
        })?;
        let config: OpenClipConfig =
            serde_json::from_slice(&bytes).map_err(|e| CloudError::Model {
                path: config_path.clone(),
                reason: e.to_string(),
            })?;
        if config.embed_dim == 0 || config.embed_dim > edgeclip_messages::wire::MAX_DIM {
            return Err(CloudError::Model {
                path: config_path,
                reason: format!("embed_dim {} is out of range", config.embed_dim),
            });
        }
        if !(3..=1024).contains(&config.text_cfg.context_length) {
            return Err(CloudError::Model {
                path: config_path,
                reason: "text_cfg.context_length must be in 3..=1024".into(),
            });
        }
        for needed in ["model.onnx", "tokenizer.json"] {
            let p = dir.join("textual").join(needed);
            if !p.is_file() {
                return Err(CloudError::Model {
                    path: p,
                    reason: "missing (the cloud needs textual/)".into(),
                });
            }
        }
        let sums = std::fs::read(dir.join("SHA256SUMS")).ok();
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
        let id = edgeclip_messages::model_id::folder_model_id(
            id_override,
            name.as_deref(),
            &bytes,
            sums.as_deref(),
        );
        Ok(Self {
            dir: dir.to_path_buf(),
            id,
            dim: config.embed_dim,
            context_length: config.text_cfg.context_length,
        })
    }

    /// Path of the text tower.
    pub fn textual_onnx(&self) -> PathBuf {
        self.dir.join("textual").join("model.onnx")
    }

    /// Path of the tokenizer.
    pub fn tokenizer_json(&self) -> PathBuf {
        self.dir.join("textual").join("tokenizer.json")
    }
}
