//! Every CLIP family Immich ships, through the device: the fixture folders of
//! `tests/data/families/` (Immich's export layout, random weights; models/README.md "Family
//! fixtures") loaded as the device loads a model folder, with the default settings, and each
//! picture's input tensor and embedding compared with `reference.json`, which Immich's own
//! pipeline (PIL preprocessing, onnxruntime) wrote. Also a device started on a fixed-batch
//! tower with the default configuration, and the bundled samples indexed without one failed
//! picture.

use std::path::{Path, PathBuf};
use std::time::Instant;

use edgeclip::broker::EmbeddedBroker;
use edgeclip_device::encode::{BatchAxis, ImageTower};
use edgeclip_device::metadata::Exif;
use edgeclip_device::model::ModelFolder;
use edgeclip_device::preprocess::DecodeLimits;
use edgeclip_device::{Device, DeviceConfig};
use serde::Deserialize;

use crate::util::*;

/// Every family fixture: the folder under tests/data/families.
const FAMILIES: [&str; 8] = [
    "vit",
    "rn",
    "siglip",
    "siglip2",
    "mclip",
    "nllb",
    "mobileclip",
    "mobileclip2",
];

/// Least cosine between the device's embedding of a picture and the reference's (the issue's
/// bar for "the same vector").
const MIN_COSINE: f32 = 0.9999;

/// Largest difference at a sampled tensor value, in 8-bit levels of the picture (one level is
/// `1 / 255 / std` after normalisation). The resize is PIL's filter computed by
/// fast_image_resize, whose fixed-point rounding differs from PIL's by a level at some pixels.
const MAX_LEVELS: f32 = 2.0;

/// Largest difference of the tensor's mean and mean absolute value from the reference's, in
/// 8-bit levels: the resize's rounding differences are rare and of either sign, and a JPEG's
/// pixels differ from libjpeg's by a level here and there (jpeg-decoder's inverse DCT rounds
/// differently).
const MAX_MEAN_LEVELS: f32 = 0.1;

#[derive(Deserialize)]
struct Reference {
    embed_dim: usize,
    pictures_dir: String,
    pictures: Vec<RefPicture>,
}

#[derive(Deserialize)]
struct RefPicture {
    file: String,
    decoded_size: (u32, u32),
    resized: (u32, u32),
    tensor: RefTensor,
    embedding: Vec<f32>,
}

#[derive(Deserialize)]
struct RefTensor {
    shape: Vec<usize>,
    sum: f64,
    abs_sum: f64,
    /// `[[c, y, x], value]`.
    values: Vec<((usize, usize, usize), f32)>,
}

fn family_dir(family: &str) -> PathBuf {
    data("families").join(family)
}

fn reference(family: &str) -> Reference {
    let path = family_dir(family).join("reference.json");
    serde_json::from_slice(&std::fs::read(&path).expect("reference.json"))
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

/// The device's default `encoder.batch` (0: measured), read from its built-in defaults
/// without the environment (which [`DeviceConfig::load`] also reads).
fn default_batch() -> usize {
    config::Config::builder()
        .add_source(config::File::from_str(
            edgeclip_device::config::DEFAULTS,
            config::FileFormat::Toml,
        ))
        .build()
        .and_then(|c| c.get::<usize>("encoder.batch"))
        .expect("the device's defaults have encoder.batch")
}

/// A family's folder opened and its image tower loaded as the device does at start, with the
/// default batch.
fn load(family: &str) -> (ModelFolder, ImageTower) {
    let folder = ModelFolder::open(&family_dir(family), None)
        .unwrap_or_else(|e| panic!("{family}: the folder does not open: {e}"));
    let (tower, timings) = ImageTower::load_batched(
        &folder.visual_onnx(),
        folder.preprocess.size as usize,
        folder.dim,
        default_batch(),
    )
    .unwrap_or_else(|e| panic!("{family}: the image tower does not load: {e}"));
    // Immich's exports fix the batch at 1: the tower runs one picture per run, and says why.
    assert_eq!(tower.facts().batch, BatchAxis::Fixed(1), "{family}");
    assert_eq!(tower.batch(), 1, "{family}");
    if default_batch() != 1 {
        assert!(
            timings
                .batch_1_only
                .as_deref()
                .is_some_and(|why| why.contains("fixes the batch at 1")),
            "{family}: {timings:?}"
        );
    }
    (folder, tower)
}

/// The device's path for one picture file: EXIF read once, decode, preprocessing.
fn prepared(folder: &ModelFolder, path: &Path) -> (Vec<f32>, (u32, u32)) {
    let bytes = std::fs::read(path).expect("picture");
    folder
        .preprocess
        .picture_oriented(
            &bytes,
            DecodeLimits::default(),
            Exif::read(&bytes).orientation,
        )
        .unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// What one family gave against its reference.
#[derive(Debug)]
struct Measured {
    min_cosine: f32,
    max_levels: f32,
    max_mean_levels: f32,
}

fn check_family(family: &str) -> Measured {
    let (folder, tower) = load(family);
    let reference = reference(family);
    assert_eq!(folder.dim, reference.embed_dim, "{family}");
    let pictures = family_dir(family).join(&reference.pictures_dir);
    let pre = &folder.preprocess;
    // One 8-bit level of each channel after normalisation.
    let level: [f32; 3] = pre.std.map(|s| 1.0 / 255.0 / s);
    let min_level = level.iter().copied().fold(f32::INFINITY, f32::min);
    let mut measured = Measured {
        min_cosine: 1.0,
        max_levels: 0.0,
        max_mean_levels: 0.0,
    };
    assert!(reference.pictures.len() >= 10, "{family}");
    // Every picture is measured and printed; the failures are listed together at the end.
    let mut failures = Vec::new();
    for p in &reference.pictures {
        let what = format!("{family}/{}", p.file);
        let (tensor, full) = prepared(&folder, &pictures.join(&p.file));
        assert_eq!(full, p.decoded_size, "{what}: oriented size");
        assert_eq!(
            pre.geometry(full).resized,
            p.resized,
            "{what}: size after the resize"
        );
        let s = pre.size as usize;
        assert_eq!(p.tensor.shape, [1, 3, s, s], "{what}");
        assert_eq!(tensor.len(), 3 * s * s, "{what}");
        let mut max_levels = 0.0f32;
        for &((c, y, x), want) in &p.tensor.values {
            let got = tensor[(c * s + y) * s + x];
            max_levels = max_levels.max((got - want).abs() / level[c]);
        }
        let n = tensor.len() as f64;
        let sum: f64 = tensor.iter().map(|&v| f64::from(v)).sum();
        let abs_sum: f64 = tensor.iter().map(|&v| f64::from(v).abs()).sum();
        let mean_levels = [(sum, p.tensor.sum), (abs_sum, p.tensor.abs_sum)]
            .iter()
            .map(|(ours, theirs)| ((ours - theirs).abs() / n) as f32 / min_level)
            .fold(0.0f32, f32::max);
        let vector = tower.encode(tensor).expect("encode");
        let cos = cosine(&vector, &p.embedding);
        println!(
            "{what}: cosine {cos:.7}, sampled values at most {max_levels:.2} levels apart, mean {mean_levels:.3} levels"
        );
        measured.min_cosine = measured.min_cosine.min(cos);
        measured.max_levels = measured.max_levels.max(max_levels);
        measured.max_mean_levels = measured.max_mean_levels.max(mean_levels);
        if cos < MIN_COSINE {
            failures.push(format!("{what}: cosine {cos} to Immich's embedding"));
        }
        if max_levels > MAX_LEVELS {
            failures.push(format!(
                "{what}: a sampled value is {max_levels:.2} levels from Immich's"
            ));
        }
        if mean_levels > MAX_MEAN_LEVELS {
            failures.push(format!(
                "{what}: the tensor's mean is {mean_levels:.3} levels from Immich's"
            ));
        }
    }
    assert!(failures.is_empty(), "{failures:#?}");
    println!("{family}: {measured:?}");
    measured
}

#[test]
fn the_vit_family_encodes_every_picture_as_immich_does() {
    check_family("vit");
}

#[test]
fn the_resnet_family_encodes_every_picture_as_immich_does() {
    check_family("rn");
}

#[test]
fn the_siglip_family_encodes_every_picture_as_immich_does() {
    check_family("siglip");
}

#[test]
fn the_siglip2_family_encodes_every_picture_as_immich_does() {
    check_family("siglip2");
}

#[test]
fn the_mclip_family_encodes_every_picture_as_immich_does_and_as_vit_does() {
    check_family("mclip");
    // M-CLIP's image tower is ViT-B-32's: a device indexed with one serves the other's text.
    let (vit, vit_tower) = load("vit");
    let (mclip, mclip_tower) = load("mclip");
    assert_eq!(vit.dim, mclip.dim);
    let picture = data("families/pictures/prime_211x307.jpg");
    let a = vit_tower.encode(prepared(&vit, &picture).0).expect("vit");
    let b = mclip_tower
        .encode(prepared(&mclip, &picture).0)
        .expect("mclip");
    assert_eq!(a, b);
}

#[test]
fn the_nllb_family_encodes_every_picture_as_immich_does() {
    check_family("nllb");
}

#[test]
fn the_mobileclip_family_encodes_every_picture_as_immich_does() {
    check_family("mobileclip");
}

#[test]
fn the_mobileclip2_family_encodes_every_picture_as_immich_does() {
    check_family("mobileclip2");
}

/// Encode time per family fixture through the device's path (decode, preprocessing, tower),
/// printed for BENCHMARKS-models.md, not asserted:
/// `cargo test --release --test system families::bench -- --ignored --nocapture`.
#[test]
#[ignore = "a benchmark: run it on purpose"]
fn bench_encode_time_per_family_fixture() {
    println!("| family | load ms | decode + preprocess ms | tower ms | pictures |");
    println!("| --- | --- | --- | --- | --- |");
    for family in FAMILIES {
        let started = Instant::now();
        let (folder, tower) = load(family);
        let load_ms = started.elapsed().as_secs_f64() * 1e3;
        let reference = reference(family);
        let pictures = family_dir(family).join(&reference.pictures_dir);
        let (mut prep_ms, mut tower_ms, mut n) = (f64::INFINITY, f64::INFINITY, 0);
        // Best of three rounds over the pictures, per picture.
        for _ in 0..3 {
            let (mut prep, mut run) = (0.0, 0.0);
            n = 0;
            for p in &reference.pictures {
                let started = Instant::now();
                let (tensor, _) = prepared(&folder, &pictures.join(&p.file));
                prep += started.elapsed().as_secs_f64() * 1e3;
                let started = Instant::now();
                tower.encode(tensor).expect("encode");
                run += started.elapsed().as_secs_f64() * 1e3;
                n += 1;
            }
            prep_ms = prep_ms.min(prep / n as f64);
            tower_ms = tower_ms.min(run / n as f64);
        }
        println!("| {family} | {load_ms:.0} | {prep_ms:.2} | {tower_ms:.2} | {n} |");
    }
}

/// A device with the default configuration on an Immich-layout folder whose image tower
/// fixes the batch at 1 (the default `encoder.batch = 0` measures batches, which such a
/// tower cannot run): it starts, runs one picture at a time and indexes every picture of the
/// families' set, odd sizes included.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_device_with_default_settings_indexes_with_an_immich_vit_folder() {
    let broker = EmbeddedBroker::start_on_free_port().expect("broker");
    let state = tempfile::tempdir().expect("state");
    let pictures = data("families/pictures");
    let config = defaults_with(&broker.url(), &family_dir("vit"), &pictures, state.path());
    assert_eq!(config.encoder.batch, default_batch());
    let device = bounded("device start", Device::start(config))
        .await
        .expect("the device starts with an Immich ViT folder and the default settings");
    let status = wait_idle(&device).await;
    let count = std::fs::read_dir(&pictures)
        .expect("pictures")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x != "json"))
        })
        .count() as u64;
    assert_eq!(
        (status.indexed, status.failed),
        (count, 0),
        "{:?}",
        status.recent_failures
    );
    assert_eq!(status.dim, 32);
    assert!(status.model.starts_with("vit@"), "{}", status.model);
    bounded("device shutdown", device.shutdown())
        .await
        .expect("shutdown");
}

/// The device's configuration as `edgeclip up` makes it: the defaults, with only what `up`
/// itself sets (broker, model, folders, state) and a free port for the search page.
fn defaults_with(url: &str, model: &Path, folders: &Path, state: &Path) -> DeviceConfig {
    DeviceConfig::load(
        None,
        &[
            ("broker.url", url.into()),
            ("model.dir", model.display().to_string().into()),
            ("folders", vec![folders.display().to_string()].into()),
            ("state_dir", state.display().to_string().into()),
            ("http.bind", "127.0.0.1".into()),
            ("http.port", 0.into()),
        ],
    )
    .expect("device config")
}

/// `edgeclip up`'s device on a fresh clone: the bundled model and every bundled sample, the
/// default configuration. Every picture gets its vector: none fails to be prepared.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn the_bundled_samples_index_without_one_failed_picture() {
    let broker = EmbeddedBroker::start_on_free_port().expect("broker");
    let state = tempfile::tempdir().expect("state");
    let samples = repo().join("models/samples");
    let count = std::fs::read_dir(&samples)
        .expect("samples")
        .filter(|e| {
            e.as_ref()
                .is_ok_and(|e| e.path().extension().is_some_and(|x| x == "jpg"))
        })
        .count() as u64;
    assert!(count >= 200, "models/samples holds {count} pictures");
    let config = defaults_with(&broker.url(), &model_dir(), &samples, state.path());
    let device = bounded("device start", Device::start(config))
        .await
        .expect("device");
    let status = wait_idle(&device).await;
    assert_eq!(
        (status.indexed, status.failed),
        (count, 0),
        "{:?}",
        status.recent_failures
    );
    bounded("device shutdown", device.shutdown())
        .await
        .expect("shutdown");
}
