//! The tract-versus-onnxruntime check of a model folder: runs both towers with edgeclip's own
//! engines on the inputs `models/parity.py` saved, and compares with onnxruntime's outputs.

use std::path::Path;

use edgeclip_cloud::encode::TextTower;
use edgeclip_device::encode::ImageTower;
use serde::Deserialize;

use crate::error::Error;

#[derive(Deserialize)]
struct ParityFiles {
    dim: usize,
    image_input: String,
    image_input_shape: [usize; 4],
    image_output: String,
    text_input: String,
    text_input_shape: [usize; 2],
    text_output: String,
}

/// Lowest cosine similarity between tract's and onnxruntime's vectors, per tower.
#[derive(Debug, Clone, Copy)]
pub struct ParityReport {
    /// Pictures compared.
    pub images: usize,
    /// Lowest cosine over the pictures.
    pub image_min_cosine: f32,
    /// Largest absolute difference over the picture vectors.
    pub image_max_abs_diff: f32,
    /// Texts compared.
    pub texts: usize,
    /// Lowest cosine over the texts.
    pub text_min_cosine: f32,
    /// Largest absolute difference over the text vectors.
    pub text_max_abs_diff: f32,
}

fn read(path: &Path) -> Result<Vec<u8>, Error> {
    std::fs::read(path).map_err(|source| Error::Read {
        path: path.to_path_buf(),
        source,
    })
}

fn read_f32(path: &Path) -> Result<Vec<f32>, Error> {
    let bytes = read(path)?;
    Ok(bytes
        .chunks_exact(4)
        .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
        .collect())
}

fn read_i64(path: &Path) -> Result<Vec<i64>, Error> {
    let bytes = read(path)?;
    Ok(bytes
        .chunks_exact(8)
        .map(|c| i64::from_le_bytes([c[0], c[1], c[2], c[3], c[4], c[5], c[6], c[7]]))
        .collect())
}

fn compare(ours: &[f32], theirs: &[f32]) -> (f32, f32) {
    let dot: f32 = ours.iter().zip(theirs).map(|(a, b)| a * b).sum();
    let na = ours.iter().map(|a| a * a).sum::<f32>().sqrt();
    let nb = theirs.iter().map(|b| b * b).sum::<f32>().sqrt();
    let max_diff = ours
        .iter()
        .zip(theirs)
        .map(|(a, b)| (a - b).abs())
        .fold(0.0, f32::max);
    (dot / (na * nb), max_diff)
}

/// Runs the check of `model_dir` against the saved inputs and outputs in `parity_dir`.
pub fn check(model_dir: &Path, parity_dir: &Path) -> Result<ParityReport, Error> {
    let ensure = |ok: bool, what: &'static str| if ok { Ok(()) } else { Err(Error::Parity(what)) };
    let files: ParityFiles = serde_json::from_slice(&read(&parity_dir.join("parity.json"))?)?;
    let [n, c, h, w] = files.image_input_shape;
    ensure(c == 3 && h == w, "image input must be [N,3,S,S]")?;
    let image_tower = ImageTower::load(&model_dir.join("visual/model.onnx"), h, files.dim)?;
    let pixels = read_f32(&parity_dir.join(&files.image_input))?;
    let expected = read_f32(&parity_dir.join(&files.image_output))?;
    ensure(
        pixels.len() == n * 3 * h * w && expected.len() == n * files.dim,
        "image arrays have unexpected sizes",
    )?;
    let (mut image_min_cosine, mut image_max_abs_diff) = (1.0f32, 0.0f32);
    for i in 0..n {
        let ours = image_tower.encode(pixels[i * 3 * h * w..(i + 1) * 3 * h * w].to_vec())?;
        let (cos, diff) = compare(&ours, &expected[i * files.dim..(i + 1) * files.dim]);
        image_min_cosine = image_min_cosine.min(cos);
        image_max_abs_diff = image_max_abs_diff.max(diff);
    }
    let [t, ctx] = files.text_input_shape;
    let text_tower = TextTower::load(&model_dir.join("textual/model.onnx"), ctx, files.dim)?;
    let ids = read_i64(&parity_dir.join(&files.text_input))?;
    let expected = read_f32(&parity_dir.join(&files.text_output))?;
    ensure(
        ids.len() == t * ctx && expected.len() == t * files.dim,
        "text arrays have unexpected sizes",
    )?;
    let (mut text_min_cosine, mut text_max_abs_diff) = (1.0f32, 0.0f32);
    for i in 0..t {
        let ours = text_tower.encode(&ids[i * ctx..(i + 1) * ctx])?;
        let (cos, diff) = compare(&ours, &expected[i * files.dim..(i + 1) * files.dim]);
        text_min_cosine = text_min_cosine.min(cos);
        text_max_abs_diff = text_max_abs_diff.max(diff);
    }
    Ok(ParityReport {
        images: n,
        image_min_cosine,
        image_max_abs_diff,
        texts: t,
        text_min_cosine,
        text_max_abs_diff,
    })
}
