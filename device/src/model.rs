//! The device's view of a CLIP model folder: `config.json`, the image tower
//! (`visual/model.onnx`, or `visual/model.f16.onnx`, the same tower with its weights stored in
//! float16) and `visual/preprocess_cfg.json`. It never looks at `textual/`.
//!
//! [`check`] is the image side's whole check of a folder, with timings: every file read as
//! the device reads it, the tower loaded, and one picture run through the device's own
//! decode, preprocessing and tower. The device runs the same steps at every start.

use std::path::{Path, PathBuf};
use std::time::Instant;

use serde::{Deserialize, Serialize};

use crate::encode::{BatchAxis, ImageTower};
use crate::error::DeviceError;
use crate::preprocess::{DecodeLimits, PreprocessCfg, ResizeMode};

/// The parts of open_clip's `config.json` the device needs.
#[derive(Debug, Clone, Deserialize)]
struct OpenClipConfig {
    embed_dim: usize,
    #[serde(default)]
    vision_cfg: Option<serde_json::Value>,
}

/// How the image tower's weights are stored on disk.
#[derive(Debug, Clone, Copy, PartialEq, Eq, Serialize)]
#[serde(rename_all = "lowercase")]
pub enum Weights {
    /// `visual/model.onnx`: float32, as exported.
    F32,
    /// `visual/model.f16.onnx`: float16 weights, expanded to float32 at load.
    F16,
}

impl Weights {
    /// The file name under `visual/`.
    pub fn file_name(self) -> &'static str {
        match self {
            Weights::F32 => "model.onnx",
            Weights::F16 => "model.f16.onnx",
        }
    }
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
    /// Which image tower file the folder holds (`model.onnx` when it holds both: the exact
    /// one).
    pub weights: Weights,
    /// What `config.json` says the image tower is (ViT, ResNet, SigLIP, MobileCLIP, ...).
    pub family: String,
    /// Things worth knowing that do not stop the device (one line each).
    pub notes: Vec<String>,
}

impl ModelFolder {
    /// Reads the folder's configuration; `id_override` replaces the derived model id. Every
    /// error names the file and what is wrong with it.
    pub fn open(dir: &Path, id_override: Option<&str>) -> Result<Self, DeviceError> {
        let read = |p: PathBuf| {
            std::fs::read(&p).map_err(|e| DeviceError::Model {
                path: p,
                reason: format!("cannot be read: {e}"),
            })
        };
        if !dir.is_dir() {
            return Err(DeviceError::Model {
                path: dir.to_path_buf(),
                reason: "is not a folder (model.dir must name a model folder in Immich's layout)"
                    .into(),
            });
        }
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
        let weights = [Weights::F32, Weights::F16]
            .into_iter()
            .find(|w| dir.join("visual").join(w.file_name()).is_file())
            .ok_or_else(|| DeviceError::Model {
                path: dir.join("visual").join("model.onnx"),
                reason: "missing (the device needs visual/model.onnx or visual/model.f16.onnx)"
                    .into(),
            })?;
        let (family, image_size) = family(config.vision_cfg.as_ref());
        let mut notes = Vec::new();
        if image_size.is_some_and(|s| s != u64::from(preprocess.size)) {
            notes.push(format!(
                "config.json says vision_cfg.image_size {}, visual/preprocess_cfg.json size {}: pictures are prepared at {} (as Immich does)",
                image_size.unwrap_or_default(),
                preprocess.size,
                preprocess.size
            ));
        }
        let sums = std::fs::read(dir.join("SHA256SUMS")).ok();
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()));
        // The embedding space's id covers the f32 image tower (its digest from SHA256SUMS
        // when listed there, else from the file itself).
        let onnx = dir.join("visual").join("model.onnx");
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
            weights,
            family,
            notes,
        })
    }

    /// Path of the image tower the device loads.
    pub fn visual_onnx(&self) -> PathBuf {
        self.dir.join("visual").join(self.weights.file_name())
    }
}

/// The image tower's family as `config.json`'s `vision_cfg` describes it (open_clip's
/// configs: a timm trunk by name, a list of layers for the ResNets, a patch size for the
/// ViTs), and its `image_size` when it is one number.
fn family(vision: Option<&serde_json::Value>) -> (String, Option<u64>) {
    let Some(v) = vision else {
        return ("unknown (config.json has no vision_cfg)".into(), None);
    };
    let image_size = v.get("image_size").and_then(serde_json::Value::as_u64);
    let family = if let Some(timm) = v.get("timm_model_name").and_then(|t| t.as_str()) {
        if timm.contains("siglip") {
            format!("SigLIP ViT (timm {timm})")
        } else if timm.starts_with("fastvit_mci") {
            format!("MobileCLIP FastViT (timm {timm})")
        } else {
            format!("timm {timm}")
        }
    } else if v.get("layers").is_some_and(serde_json::Value::is_array) {
        "ResNet (open_clip ModifiedResNet, attention pooling)".into()
    } else if let Some(p) = v.get("patch_size").and_then(serde_json::Value::as_u64) {
        format!("ViT-{p} (open_clip VisionTransformer)")
    } else {
        "unknown".into()
    };
    (family, image_size)
}

/// A picture made for checking a tower: a 320x240 PNG with gradients, edges and texture, so
/// that decoding, resizing, cropping and normalising all do real work.
pub fn probe_picture() -> Vec<u8> {
    let img = image::RgbImage::from_fn(320, 240, |x, y| {
        let disc = (x as i32 - 200).pow(2) + (y as i32 - 100).pow(2) < 60 * 60;
        let texture = ((x * 2_654_435_761u32.wrapping_mul(y + 1)) >> 27) as u8;
        if disc {
            image::Rgb([230, 40 + texture, 50])
        } else {
            image::Rgb([(x * 255 / 320) as u8, (y * 255 / 240) as u8, 90 + texture])
        }
    });
    let mut png = Vec::new();
    image::DynamicImage::ImageRgb8(img)
        .write_to(&mut std::io::Cursor::new(&mut png), image::ImageFormat::Png)
        .expect("a PNG in memory");
    png
}

/// Runs [`probe_picture`] through the device's path (decode, preprocess, tower) and checks
/// that the tower gives a unit vector of the folder's dimension.
pub fn probe(folder: &ModelFolder, tower: &ImageTower) -> Result<Vec<f32>, DeviceError> {
    let bad = |reason: String| DeviceError::Model {
        path: folder.visual_onnx(),
        reason,
    };
    let (tensor, _) = folder
        .preprocess
        .picture(&probe_picture(), DecodeLimits::default())
        .map_err(|e| bad(format!("a test picture could not be prepared: {e}")))?;
    let vector = tower
        .encode(tensor)
        .map_err(|e| bad(format!("a test picture did not encode: {e}")))?;
    if vector.len() != folder.dim {
        return Err(bad(format!(
            "gives {} values for a picture, config.json says embed_dim {}",
            vector.len(),
            folder.dim
        )));
    }
    Ok(vector)
}

/// What [`check`] found: the image side of a model folder, as the device sees it.
#[derive(Debug, Clone, Serialize)]
pub struct ImageTowerReport {
    /// The folder.
    pub dir: PathBuf,
    /// Model id on the wire.
    pub model: String,
    /// What `config.json` says the image tower is.
    pub family: String,
    /// `embed_dim`, equal to the tower's output.
    pub dim: usize,
    /// The tower file loaded.
    pub file: PathBuf,
    /// How its weights are stored.
    pub weights: Weights,
    /// Its size on disk.
    pub file_bytes: u64,
    /// The input's name, type and shape (`image`, `float32`, `[1, 3, 224, 224]`).
    pub input: String,
    /// The input's element type.
    pub input_type: String,
    /// The input's shape, a number or a name per axis.
    pub input_shape: Vec<String>,
    /// `fixed at 1` (Immich's exports: one picture per run) or `free (<name>)`.
    pub batch: String,
    /// The output's name and shape.
    pub output: String,
    /// The output's shape.
    pub output_shape: Vec<String>,
    /// The default domain's opset.
    pub opset: i64,
    /// Weights expanded from float16 at load.
    pub f16_weights: usize,
    /// Picture side.
    pub size: u32,
    /// `shortest`, `squash` or `longest`.
    pub resize_mode: String,
    /// The resampling filter.
    pub interpolation: String,
    /// Per-channel mean.
    pub mean: [f32; 3],
    /// Per-channel standard deviation.
    pub std: [f32; 3],
    /// Things worth knowing that do not stop the device.
    pub notes: Vec<String>,
    /// Reading config.json and preprocess_cfg.json, ms.
    pub open_ms: f64,
    /// Reading, expanding, analysing and optimising the tower (batch 1), ms.
    pub load_ms: f64,
    /// The first picture through decode, preprocessing and the tower, ms.
    pub first_picture_ms: f64,
    /// The same picture again (the plan warm), ms.
    pub picture_ms: f64,
}

/// Checks the image side of the model folder `dir` as the device uses it, with timings: the
/// configuration files, the tower file's declared input and output (name `image`, float32,
/// `[N, 3, S, S]` with S the preprocessing size, a fixed or free batch, `embed_dim` values
/// out), the tower loaded at batch 1, and a picture through the device's decode,
/// preprocessing and tower. Any problem is one error naming the file and what is wrong.
pub fn check(dir: &Path) -> Result<ImageTowerReport, DeviceError> {
    let started = Instant::now();
    let folder = ModelFolder::open(dir, None)?;
    let open_ms = ms(started);
    let file = folder.visual_onnx();
    let file_bytes = std::fs::metadata(&file)
        .map_err(|e| DeviceError::io(&file, e))?
        .len();
    let started = Instant::now();
    let tower = ImageTower::load(&file, folder.preprocess.size as usize, folder.dim)?;
    let load_ms = ms(started);
    let started = Instant::now();
    probe(&folder, &tower)?;
    let first_picture_ms = ms(started);
    let started = Instant::now();
    probe(&folder, &tower)?;
    let picture_ms = ms(started);
    let facts = tower.facts().clone();
    let pre = &folder.preprocess;
    Ok(ImageTowerReport {
        dir: dir.to_path_buf(),
        model: folder.id.clone(),
        family: folder.family.clone(),
        dim: folder.dim,
        weights: folder.weights,
        file,
        file_bytes,
        input: facts.input,
        input_type: facts.input_type,
        input_shape: facts.input_shape,
        batch: match facts.batch {
            BatchAxis::Fixed(n) => format!("fixed at {n}"),
            BatchAxis::Free(name) => format!("free ({name})"),
        },
        output: facts.output,
        output_shape: facts.output_shape,
        opset: facts.opset,
        f16_weights: facts.f16_weights,
        size: pre.size,
        resize_mode: match pre.resize_mode {
            ResizeMode::Shortest => "shortest",
            ResizeMode::Squash => "squash",
            ResizeMode::Longest => "longest",
        }
        .into(),
        interpolation: format!("{:?}", pre.interpolation).to_lowercase(),
        mean: pre.mean,
        std: pre.std,
        notes: folder.notes.clone(),
        open_ms,
        load_ms,
        first_picture_ms,
        picture_ms,
    })
}

fn ms(since: Instant) -> f64 {
    since.elapsed().as_secs_f64() * 1e3
}

#[cfg(test)]
mod tests {
    use super::*;

    fn bundled() -> PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/clip-shapes")
    }

    /// A copy of the bundled model's image side in a temporary folder, to break.
    fn copy_of_bundled() -> tempfile::TempDir {
        let dir = tempfile::tempdir().unwrap();
        std::fs::create_dir_all(dir.path().join("visual")).unwrap();
        for f in [
            "config.json",
            "visual/model.onnx",
            "visual/preprocess_cfg.json",
        ] {
            std::fs::copy(bundled().join(f), dir.path().join(f)).unwrap();
        }
        dir
    }

    #[test]
    fn the_bundled_model_checks_out() {
        let report = check(&bundled()).unwrap();
        assert_eq!(
            (report.dim, report.size, report.weights),
            (64, 224, Weights::F32)
        );
        assert_eq!(report.input, "image");
        assert!(report.family.starts_with("ResNet"), "{}", report.family);
        assert!(report.load_ms > 0.0 && report.picture_ms > 0.0);
    }

    /// The error `check` gives for a folder broken by `breaks`.
    fn broken(breaks: impl FnOnce(&Path)) -> String {
        let dir = copy_of_bundled();
        breaks(dir.path());
        check(dir.path()).unwrap_err().to_string()
    }

    /// How a case breaks a copy of the bundled folder.
    type Breaks = Box<dyn FnOnce(&Path)>;

    #[test]
    fn a_broken_folder_is_one_line_naming_the_file_and_the_fault() {
        let visual = |d: &Path| d.join("visual/model.onnx");
        let cases: Vec<(&str, Breaks, &[&str])> = vec![
            (
                "missing tower",
                Box::new(move |d: &Path| std::fs::remove_file(visual(d)).unwrap()),
                &["visual/model.onnx", "missing"],
            ),
            (
                "truncated tower",
                Box::new(move |d: &Path| {
                    let bytes = std::fs::read(visual(d)).unwrap();
                    std::fs::write(visual(d), &bytes[..bytes.len() / 3]).unwrap();
                }),
                &["visual/model.onnx"],
            ),
            (
                "empty tower",
                Box::new(move |d: &Path| std::fs::write(visual(d), b"").unwrap()),
                &["visual/model.onnx", "empty"],
            ),
            (
                "unknown resize mode",
                Box::new(|d: &Path| {
                    let p = d.join("visual/preprocess_cfg.json");
                    let s = std::fs::read_to_string(&p).unwrap();
                    std::fs::write(&p, s.replace("\"shortest\"", "\"fit\"")).unwrap();
                }),
                &["preprocess_cfg.json", "fit"],
            ),
            (
                "unknown interpolation",
                Box::new(|d: &Path| {
                    let p = d.join("visual/preprocess_cfg.json");
                    let s = std::fs::read_to_string(&p).unwrap();
                    std::fs::write(&p, s.replace("\"bicubic\"", "\"spline36\"")).unwrap();
                }),
                &["preprocess_cfg.json", "spline36"],
            ),
            (
                "embed_dim disagreeing with the tower",
                Box::new(|d: &Path| {
                    let p = d.join("config.json");
                    let s = std::fs::read_to_string(&p).unwrap();
                    std::fs::write(&p, s.replacen("\"embed_dim\": 64", "\"embed_dim\": 512", 1))
                        .unwrap();
                }),
                &["visual/model.onnx", "512"],
            ),
            (
                "no config.json",
                Box::new(|d: &Path| std::fs::remove_file(d.join("config.json")).unwrap()),
                &["config.json"],
            ),
        ];
        for (what, breaks, words) in cases {
            let err = broken(breaks);
            assert!(!err.contains('\n'), "{what}: more than one line: {err}");
            for w in words {
                assert!(err.contains(w), "{what}: {err:?} does not say {w:?}");
            }
        }
    }

    #[test]
    fn families_are_named_from_the_vision_config() {
        let f = |json: &str| family(Some(&serde_json::from_str(json).unwrap())).0;
        assert!(f(r#"{"layers": [3, 4, 6, 3]}"#).starts_with("ResNet"));
        assert!(f(r#"{"patch_size": 32, "layers": 12}"#).starts_with("ViT-32"));
        assert!(f(r#"{"timm_model_name": "vit_base_patch16_siglip_384"}"#).starts_with("SigLIP"));
        assert!(f(r#"{"timm_model_name": "fastvit_mci1"}"#).starts_with("MobileCLIP"));
    }
}
