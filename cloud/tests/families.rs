//! Every CLIP family Immich ships, through the cloud's own path: each fixture folder of
//! `tests/data/families/` (Immich's layout, random weights) is loaded by [`model::load`], as a
//! worker loads it at start, and every text of its `reference.json` (Immich's own pipeline run
//! by onnxruntime) is cleaned, prefixed, tokenised and encoded by the tower the worker's
//! selection picks for its language. The token ids (and M-CLIP's attention mask) must equal
//! the reference's exactly, the vectors be at cosine >= 0.9999 to its embeddings.
//!
//! `models/README.md` ("Family fixtures") lists what each folder stands for.

use std::path::{Path, PathBuf};

use edgeclip_cloud::model::{self, Family, LoadedTower, TextTowerReport, TowerSpec, Towers};
use edgeclip_cloud::tokenize::Clean;
use serde_json::Value;

/// The bar every text vector meets against the reference embedding.
const MIN_COSINE: f32 = 0.9999;

fn families() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/families")
}

fn reference(family: &str) -> Value {
    let path = families().join(family).join("reference.json");
    let bytes = std::fs::read(&path).unwrap_or_else(|e| panic!("{}: {e}", path.display()));
    serde_json::from_slice(&bytes).expect("reference.json")
}

fn load(family: &str) -> (LoadedTower, TextTowerReport) {
    model::load(&TowerSpec::folder(&families().join(family)))
        .unwrap_or_else(|e| panic!("{family}: {e}"))
}

fn ints(v: &Value) -> Vec<i64> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_i64().expect("integer"))
        .collect()
}

fn floats(v: &Value) -> Vec<f32> {
    v.as_array()
        .expect("array")
        .iter()
        .map(|x| x.as_f64().expect("number") as f32)
        .collect()
}

fn cosine(a: &[f32], b: &[f32]) -> f32 {
    assert_eq!(a.len(), b.len());
    let dot: f32 = a.iter().zip(b).map(|(x, y)| x * y).sum();
    let norm = |v: &[f32]| v.iter().map(|x| x * x).sum::<f32>().sqrt();
    dot / (norm(a) * norm(b))
}

/// Loads `family`, checks what its report says against `reference.json`, then every text:
/// the model text, the ids, the mask, the vector. Returns the smallest cosine.
fn check(family: &str, expected: Family) -> f32 {
    let reference = reference(family);
    let (tower, report) = load(family);
    let text = &reference["text"];
    assert_eq!(report.family, expected, "{family}: {report}");
    assert_eq!(report.dim as u64, reference["embed_dim"].as_u64().unwrap());
    assert_eq!(
        report.context_length as u64,
        text["context_length"].as_u64().unwrap()
    );
    assert_eq!(
        report.pad.0,
        text["pad_token"].as_str().unwrap(),
        "{family}"
    );
    assert_eq!(
        u64::from(report.pad.1),
        text["pad_id"].as_u64().unwrap(),
        "{family}"
    );
    let canonicalize = text["canonicalize"].as_bool().unwrap();
    assert_eq!(
        report.clean,
        if canonicalize {
            Clean::Canonicalize
        } else {
            Clean::Whitespace
        }
    );
    let declared: Vec<String> = reference["textual"]["inputs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|i| {
            let dtype = match i["dtype"].as_str().unwrap() {
                "int32" => "I32",
                "int64" => "I64",
                other => panic!("{other}"),
            };
            let shape = ints(&i["shape"]);
            format!(
                "{} {dtype}[{},{}]",
                i["name"].as_str().unwrap(),
                shape[0],
                shape[1]
            )
        })
        .collect();
    assert_eq!(report.inputs, declared, "{family}");
    assert!(
        !report.cuts,
        "{family}: Immich's towers are fixed at their length"
    );

    let towers = Towers::new(vec![tower]).expect("towers");
    let space = towers.set.default_id().to_string();
    let tower = &towers.loaded[0];
    let texts = reference["texts"].as_array().unwrap();
    assert!(!texts.is_empty());
    let mut worst = f32::INFINITY;
    for t in texts {
        let raw = t["text"].as_str().unwrap();
        let lang = t["language"].as_str();
        let choice = towers
            .set
            .pick(&space, lang)
            .expect("the tower's own space");
        assert_eq!(choice.tower, 0);
        let what = format!("{family} {raw:?} ({lang:?})");
        assert_eq!(
            tower.tokenizer.model_text(raw, choice.prefix.as_deref()),
            t["model_text"].as_str().unwrap(),
            "{what}"
        );
        let tokens = tower
            .tokenizer
            .tokens(raw, choice.prefix.as_deref())
            .expect("tokens");
        assert_eq!(tokens.ids, ints(&t["input_ids"]), "{what}");
        assert_eq!(
            tokens.length() as u64,
            t["length"].as_u64().unwrap(),
            "{what}"
        );
        if let Some(mask) = t.get("attention_mask") {
            assert_eq!(tokens.attention_mask, ints(mask), "{what}");
        }
        let vector = tower.encode(raw, choice.prefix.as_deref()).expect("vector");
        let c = cosine(&vector, &floats(&t["embedding"]));
        assert!(c >= MIN_COSINE, "{what}: cosine {c}");
        worst = worst.min(c);
    }
    eprintln!(
        "{family}: {} texts, ids equal, smallest cosine {worst:.7}",
        texts.len()
    );
    worst
}

#[test]
fn vit_clip_texts_equal_immichs() {
    check("vit", Family::Clip);
}

#[test]
fn rn_clip_texts_equal_immichs() {
    check("rn", Family::Clip);
}

#[test]
fn siglip_texts_are_canonicalized_and_padded_with_its_end_token() {
    check("siglip", Family::SigLip);
}

#[test]
fn siglip2_texts_are_canonicalized_and_padded_with_pad() {
    check("siglip2", Family::SigLip2);
}

#[test]
fn mclip_texts_carry_their_attention_mask() {
    check("mclip", Family::MClip);
}

#[test]
fn nllb_texts_start_with_their_flores_code() {
    check("nllb", Family::Nllb);
}

#[test]
fn mobileclip_texts_are_padded_with_the_end_token() {
    check("mobileclip", Family::MobileClip);
}

#[test]
fn mobileclip2_texts_are_padded_with_the_end_token() {
    check("mobileclip2", Family::MobileClip);
}

/// A worker serving ViT-B-32's English tower and M-CLIP for one space (M-CLIP's folder holds
/// ViT-B-32's `config.json` and image tower, so the space is shared without configuration):
/// a device indexed with `vit` gets English and language-less searches from `vit`'s tower and
/// German and Chinese ones from M-CLIP's, each equal to its reference.
#[test]
fn one_space_serves_english_and_multilingual_text_towers_by_language() {
    let (vit, _) = load("vit");
    let (mclip, _) = load("mclip");
    let device_model = vit.info.id.clone();
    let towers = Towers::new(vec![vit, mclip]).expect("towers");
    let vit_ref = reference("vit");
    let mclip_ref = reference("mclip");
    let embedding = |r: &Value, text: &str| {
        r["texts"]
            .as_array()
            .unwrap()
            .iter()
            .find(|t| t["text"].as_str() == Some(text))
            .map(|t| floats(&t["embedding"]))
            .unwrap_or_else(|| panic!("{text:?} in the reference"))
    };
    let search = |text: &str, lang: Option<&str>| {
        let choice = towers.set.pick(&device_model, lang).expect("served");
        let tower = &towers.loaded[choice.tower];
        (
            tower.info.name.clone(),
            tower
                .encode(text, choice.prefix.as_deref())
                .expect("vector"),
        )
    };
    for (text, lang, folder, r) in [
        ("a photo of a dog", None, "vit", &vit_ref),
        ("a photo of a dog", Some("en"), "vit", &vit_ref),
        (
            "ein Hund am Strand bei Sonnenuntergang",
            Some("de"),
            "mclip",
            &mclip_ref,
        ),
        ("海滩上的狗", Some("zh-CN"), "mclip", &mclip_ref),
    ] {
        let (name, vector) = search(text, lang);
        assert_eq!(name, folder, "{text:?} {lang:?}");
        let c = cosine(&vector, &embedding(r, text));
        assert!(c >= MIN_COSINE, "{text:?} {lang:?}: cosine {c}");
    }
    // another space is refused, naming both towers
    let (rn, _) = load("rn");
    let err = towers.set.pick(&rn.info.id, None).unwrap_err();
    assert!(err.contains("vit, mclip"), "{err}");
}

/// `model::check` reports a broken folder in one line naming the file, never a panic.
#[test]
fn a_broken_folder_is_one_line_naming_the_file() {
    let dir = tempfile::tempdir().expect("tempdir");
    let copy = |from: &Path, to: &Path| {
        std::fs::create_dir_all(to.join("textual")).unwrap();
        std::fs::create_dir_all(to.join("visual")).unwrap();
        for f in [
            "config.json",
            "visual/model.onnx",
            "textual/model.onnx",
            "textual/tokenizer.json",
            "textual/tokenizer_config.json",
        ] {
            std::fs::copy(from.join(f), to.join(f)).unwrap();
        }
    };
    let vit = families().join("vit");
    type Breaks = Box<dyn Fn(&Path)>;
    let mut cases: Vec<(&str, Breaks, &str)> = vec![
        (
            "no tokenizer",
            Box::new(|d| std::fs::remove_file(d.join("textual/tokenizer.json")).unwrap()),
            "tokenizer.json",
        ),
        (
            "truncated tower",
            Box::new(|d| {
                let p = d.join("textual/model.onnx");
                let bytes = std::fs::read(&p).unwrap();
                std::fs::write(&p, &bytes[..bytes.len() / 3]).unwrap();
            }),
            "textual/model.onnx",
        ),
        (
            "no pad token",
            Box::new(|d| {
                std::fs::write(d.join("textual/tokenizer_config.json"), "{}").unwrap();
            }),
            "tokenizer_config.json",
        ),
        (
            "another dimension",
            Box::new(|d| {
                let p = d.join("config.json");
                let text = std::fs::read_to_string(&p).unwrap();
                std::fs::write(&p, text.replace("\"embed_dim\": 32", "\"embed_dim\": 64")).unwrap();
            }),
            "embed_dim",
        ),
        (
            "another context length",
            Box::new(|d| {
                let p = d.join("config.json");
                let text = std::fs::read_to_string(&p).unwrap();
                std::fs::write(
                    &p,
                    text.replace("\"context_length\": 77", "\"context_length\": 64"),
                )
                .unwrap();
            }),
            "context_length",
        ),
    ];
    for (i, (what, breaks, names)) in cases.drain(..).enumerate() {
        let folder = dir.path().join(format!("case{i}"));
        copy(&vit, &folder);
        breaks(&folder);
        let err = model::check(&folder).expect_err(what).to_string();
        assert!(!err.contains('\n'), "{what}: {err}");
        assert!(err.contains(names), "{what}: {err}");
    }
}
