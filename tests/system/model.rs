//! Tests of the model path on the real files: both towers with tract, the tokenizer against
//! open_clip's ids, preprocessing against open_clip's tensors, tract against onnxruntime.

use std::path::Path;

use edgeclip_cloud::encode::TextTower;
use edgeclip_cloud::model::TextModelFolder;
use edgeclip_cloud::tokenize::ClipTokenizer;
use edgeclip_device::encode::ImageTower;
use edgeclip_device::model::ModelFolder;
use edgeclip_device::preprocess::{decode_file, DecodeLimits};
use edgeclip_device::rank::dot;
use serde::Deserialize;

use crate::util::*;

fn towers() -> (ModelFolder, ImageTower, ClipTokenizer, TextTower) {
    let dir = model_dir();
    let visual = ModelFolder::open(&dir, None).expect("visual side of the model folder");
    let textual = TextModelFolder::open(&dir, None).expect("textual side of the model folder");
    assert_eq!(
        visual.id, textual.id,
        "device and cloud must derive the same model id"
    );
    let image = ImageTower::load(
        &visual.visual_onnx(),
        visual.preprocess.size as usize,
        visual.dim,
    )
    .expect("image tower");
    let tokenizer = ClipTokenizer::from_file(&textual.tokenizer_json(), textual.context_length)
        .expect("tokenizer");
    let text = TextTower::load(&textual.textual_onnx(), textual.context_length, textual.dim)
        .expect("text tower");
    (visual, image, tokenizer, text)
}

fn encode_picture(model: &ModelFolder, tower: &ImageTower, path: &Path) -> Vec<f32> {
    let img = decode_file(path, DecodeLimits::default()).expect("decode");
    tower
        .encode(model.preprocess.tensor(&img).expect("preprocess"))
        .expect("encode picture")
}

#[test]
fn the_small_model_scores_a_red_circle_picture_above_a_blue_square_one() {
    let (model, image, tokenizer, text) = towers();
    let shapes = data("shapes");
    let labels = labels(&shapes);
    let only = |colour: &str, shape: &str| {
        labels
            .iter()
            .find(|(_, l)| {
                l.shapes.len() == 1 && l.shapes[0].colour == colour && l.shapes[0].shape == shape
            })
            .map(|(f, _)| shapes.join(f))
            .unwrap_or_else(|| panic!("tests/data/shapes has no lone {colour} {shape}"))
    };
    let red_circle = encode_picture(&model, &image, &only("red", "circle"));
    let blue_square = encode_picture(&model, &image, &only("blue", "square"));
    let query = text
        .encode(&tokenizer.encode("a red circle").expect("tokens"))
        .expect("text vector");
    assert_eq!(query.len(), model.dim);
    let (s_red, s_blue) = (dot(&query, &red_circle), dot(&query, &blue_square));
    assert!(
        s_red > s_blue,
        "a red circle: red-circle picture {s_red} vs blue-square picture {s_blue}"
    );
    let query = text
        .encode(&tokenizer.encode("a blue square").expect("tokens"))
        .expect("text vector");
    assert!(dot(&query, &blue_square) > dot(&query, &red_circle));
}

#[derive(Deserialize)]
struct ParityCase {
    text: String,
    category: String,
    ids: Vec<i64>,
    hf_ids: Vec<i64>,
    same: bool,
}

#[derive(Deserialize)]
struct ParityCorpus {
    cases: Vec<ParityCase>,
}

#[test]
fn the_tokenizer_gives_open_clips_ids_on_the_parity_corpus() {
    let textual = TextModelFolder::open(&model_dir(), None).expect("model");
    let tokenizer = ClipTokenizer::from_file(&textual.tokenizer_json(), textual.context_length)
        .expect("tokenizer");
    let corpus: ParityCorpus =
        serde_json::from_slice(&std::fs::read(data("tokenizer_parity.json")).expect("fixture"))
            .expect("fixture parses");
    assert!(
        corpus.cases.len() >= 200,
        "corpus has {} cases",
        corpus.cases.len()
    );
    // Where open_clip cleans text first (ftfy, HTML unescaping) or reads typed special-token
    // text as special tokens, the Hugging Face tokenizer differs by design.
    const KNOWN: &[&str] = &[
        "html_entity",
        "ftfy_mojibake",
        "ftfy_curly_quotes",
        "ftfy_ligature",
        "ftfy_fullwidth",
        "special_token_text",
        "lowercase_final_sigma",
    ];
    let mut known_differences = 0;
    for case in &corpus.cases {
        let ours = tokenizer.encode(&case.text).expect("tokenize");
        if case.same {
            assert_eq!(ours, case.ids, "{:?}", case.text);
        } else {
            // Known differences (open_clip's ftfy/HTML cleaning, literal special tokens): we
            // must still be the Hugging Face tokenizer's layout, byte for byte.
            known_differences += 1;
            assert!(
                KNOWN.contains(&case.category.as_str()),
                "unexpected difference on {:?} ({})",
                case.text,
                case.category
            );
            if case.category == "special_token_text" {
                // Typed special tokens stay text: the row holds exactly one start and one end.
                assert_eq!(
                    ours.iter().filter(|&&i| i == 49406).count(),
                    1,
                    "{:?}",
                    case.text
                );
                assert_eq!(
                    ours.iter().filter(|&&i| i == 49407).count(),
                    1,
                    "{:?}",
                    case.text
                );
            } else {
                assert_eq!(ours, case.hf_ids, "{:?}", case.text);
            }
        }
    }
    println!(
        "{} cases, {known_differences} known differences",
        corpus.cases.len()
    );
}

#[derive(Deserialize)]
struct PreprocessPicture {
    file: String,
    tensor: String,
    display_size: (u32, u32),
}

#[derive(Deserialize)]
struct PreprocessIndex {
    pictures: Vec<PreprocessPicture>,
}

#[test]
fn preprocessing_matches_open_clip_on_the_fixture_pictures() {
    let model = ModelFolder::open(&model_dir(), None).expect("model");
    let dir = data("preprocess");
    let index: PreprocessIndex =
        serde_json::from_slice(&std::fs::read(dir.join("index.json")).expect("index"))
            .expect("parses");
    assert!(index.pictures.len() >= 3);
    for p in &index.pictures {
        let img = decode_file(&dir.join(&p.file), DecodeLimits::default()).expect("decode");
        let ours = model.preprocess.tensor(&img).expect("preprocess");
        let raw = std::fs::read(dir.join(&p.tensor)).expect("tensor");
        let theirs: Vec<f32> = raw
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        assert_eq!(ours.len(), theirs.len(), "{}", p.file);
        // The reference crops at open_clip's round((side - 224) / 2), the device at Immich's
        // int(side / 2 - 112): where they differ (an odd excess), the same pixels are one row
        // or column apart, and the overlapping part is compared.
        let g = model.preprocess.geometry(p.display_size);
        let open_clip = |resized: u32| {
            let half = f64::from(resized - 224) / 2.0;
            let r = half.round();
            (if (half - half.floor() - 0.5).abs() < 1e-9 && r % 2.0 != 0.0 {
                r - 1.0
            } else {
                r
            }) as i64
        };
        let dx = open_clip(g.resized.0) - i64::from(g.window.x);
        let dy = open_clip(g.resized.1) - i64::from(g.window.y);
        let mut diffs = Vec::new();
        for c in 0..3i64 {
            for y in 0..224i64 {
                for x in 0..224i64 {
                    let (ty, tx) = (y - dy, x - dx);
                    if (0..224).contains(&ty) && (0..224).contains(&tx) {
                        let at = |c: i64, y: i64, x: i64| ((c * 224 + y) * 224 + x) as usize;
                        diffs.push((ours[at(c, y, x)] - theirs[at(c, ty, tx)]).abs());
                    }
                }
            }
        }
        let mean = diffs.iter().sum::<f32>() / diffs.len() as f32;
        let max = diffs.iter().copied().fold(0.0, f32::max);
        println!("{}: mean abs diff {mean:.5}, max {max:.4}", p.file);
        // One 8-bit level is 1/255/std ~ 0.015 after normalisation; resampling rounds differently
        // from PIL at a few pixels.
        assert!(mean < 0.01, "{}: mean abs diff {mean}", p.file);
        assert!(max < 0.25, "{}: max abs diff {max}", p.file);
    }
}

#[test]
fn tract_embeddings_equal_onnxruntimes_for_the_small_model() {
    let report = edgeclip::parity::check(&model_dir(), &data("parity/clip-shapes"))
        .expect("parity check runs");
    println!("{report:?}");
    assert!(report.images >= 2 && report.texts >= 3);
    assert!(report.image_min_cosine >= 0.9999, "{report:?}");
    assert!(report.text_min_cosine >= 0.9999, "{report:?}");
}
