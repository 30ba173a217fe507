//! The device's view of a CLIP model folder: `config.json`, `visual/model.onnx`,
//! `visual/preprocess_cfg.json`. It never looks at `textual/`.

use std::path::{Path, PathBuf};

use serde::Deserialize;

use crate::error::DeviceError;
use crate::preprocess::PreprocessCfg;

/// The parts of open_clip's `config.json` the device needs.
#[derive(Debug, Clone, Deserialize)]
struct OpenClipConfig {
    embed_dim: usize,
}

/// A model folder as the device uses it.
#[derive(Debug, Clone)]
pub struct ModelFolder {
    /// The folder.
    pub dir: PathBuf,
    /// Model id on the wire (see `edgeclip_messages::model_id`).
    pub id: String,
    /// Output dimension of both towers.
    pub dim: usize,
    /// How pictures are prepared for the image tower.
    pub preprocess: PreprocessCfg,
}

impl ModelFolder {
    /// Reads the folder's configuration; `id_override` replaces the derived model id.
    pub fn open(dir: &Path, id_override: Option<&str>) -> Result<Self, DeviceError> {
        let read = |p: PathBuf| {
            std::fs::read(&p).map_err(|e| DeviceError::Model {
                path: p,
                reason: e.to_string(),
            })
        };
        let config_path = dir.join("config.json");
        let config_bytes = read(config_path.clone())?;
        let config: OpenClipConfig =
            serde_json::from_slice(&config_bytes).map_err(|e| DeviceError::Model {
                path: config_path.clone(),
                reason: e.to_string(),
            })?;
        if config.embed_dim == 0 || config.embed_dim > edgeclip_messages::wire::MAX_DIM {
            return Err(DeviceError::Model {
                path: config_path,
                reason: format!("embed_dim {} is out of range", config.embed_dim),
            });
        }
        let pre_path = dir.join("visual").join("preprocess_cfg.json");
        let preprocess =
            PreprocessCfg::from_json(&read(pre_path.clone())?).map_err(|e| DeviceError::Model {
                path: pre_path,
                reason: e.to_string(),
            })?;
        let onnx = dir.join("visual").join("model.onnx");
        if !onnx.is_file() {
            return Err(DeviceError::Model {
                path: onnx,
                reason: "missing (the device needs visual/model.onnx)".into(),
            });
        }
        let sums = std::fs::read(dir.join("SHA256SUMS")).ok();
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
        let id = edgeclip_messages::model_id::folder_model_id(
            id_override,
            name.as_deref(),
            &config_bytes,
            sums.as_deref(),
            std::fs::File::open(&onnx).ok(),
        )
        .map_err(|e| DeviceError::Model {
            path: onnx,
            reason: e.to_string(),
        })?;
        Ok(Self {
            dir: dir.to_path_buf(),
            id,
            dim: config.embed_dim,
            preprocess,
        })
    }

    /// Path of the image tower.
    pub fn visual_onnx(&self) -> PathBuf {
        self.dir.join("visual").join("model.onnx")
    }
}
