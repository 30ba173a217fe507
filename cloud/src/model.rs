//! The cloud's view of a CLIP model folder, read as Immich reads it: `config.json`
//! (`embed_dim`, `text_cfg.context_length`, `text_cfg.tokenizer_kwargs.clean`) and `textual/`
//! (`model.onnx`, `tokenizer.json`, `tokenizer_config.json`'s `pad_token`). Of `visual/` it
//! reads only `model.onnx`'s bytes, and only when `SHA256SUMS` does not list it, to tell the
//! embedding space the text tower belongs to (`edgeclip_messages::model_id`).
//!
//! [`load`] turns a folder into a ready tower ([`LoadedTower`]: tokenizer, tract plan, what the
//! tower selection needs) and a [`TextTowerReport`]; the worker loads every tower through it at
//! start, and [`check`] is the same load for a folder alone. Whatever is wrong with a folder
//! comes back as one [`CloudError::Model`] line naming the file and what is wrong.

use std::path::{Path, PathBuf};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::Value;

use crate::encode::{TextInputs, TextTower};
use crate::error::CloudError;
use crate::language::Languages;
use crate::tokenize::{Clean, TextTokenizer};
use crate::towers::{LangUse, TowerInfo, TowerSet};

/// The text every tower encodes once at load (and [`check`] times).
pub const PROBE_TEXT: &str = "a photo of a dog";

/// Which CLIP family a text tower is, as far as the cloud tells them apart.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Family {
    /// open_clip CLIP with the CLIP BPE (ViT, RN): causal mask, pools at the end token.
    Clip,
    /// MobileCLIP / MobileCLIP2: CLIP BPE without a causal mask (padding changes the vector).
    MobileClip,
    /// SigLIP: T5 Unigram tokenizer, pools the last position.
    SigLip,
    /// SigLIP2: Gemma BPE tokenizer, pools the last position.
    SigLip2,
    /// M-CLIP: XLM-R (or another BERT-like) encoder with an attention mask, mean-pooled.
    MClip,
    /// NLLB-CLIP: the text is prefixed with its FLORES-200 language code.
    Nllb,
    /// A tower the cloud does not recognise (run as its files say).
    Other,
}

impl Family {
    /// Languages the family serves unless configured: multilingual towers any.
    pub fn languages(self) -> Languages {
        match self {
            Family::MClip | Family::Nllb => Languages::Any,
            _ => Languages::English,
        }
    }

    /// What the family does with a search's language.
    pub fn lang_use(self) -> LangUse {
        match self {
            Family::Nllb => LangUse::FloresPrefix,
            _ => LangUse::Ignore,
        }
    }
}

impl std::fmt::Display for Family {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Family::Clip => "clip",
            Family::MobileClip => "mobileclip",
            Family::SigLip => "siglip",
            Family::SigLip2 => "siglip2",
            Family::MClip => "mclip",
            Family::Nllb => "nllb",
            Family::Other => "other",
        })
    }
}

/// A model folder as the cloud uses it.
#[derive(Debug, Clone)]
pub struct TextModelFolder {
    /// The folder.
    pub dir: PathBuf,
    /// Its name (the label of a derived id).
    pub name: String,
    /// Model id on the wire: the embedding space the text tower was aligned to.
    pub id: String,
    /// The folder's id under the legacy rule (`model_id::legacy_model_id`; `None` when the id
    /// is set).
    pub legacy_id: Option<String>,
    /// Output dimension (`embed_dim`, which the image side uses too).
    pub dim: usize,
    /// Tokens per text, special tokens and padding included (`text_cfg.context_length`, 77
    /// when absent).
    pub context_length: usize,
    /// How texts are cleaned (`text_cfg.tokenizer_kwargs.clean`).
    pub clean: Clean,
    /// `tokenizer_config.json`'s `pad_token`.
    pub pad_token: String,
    /// `tokenizer_config.json`'s `tokenizer_class`, if any.
    pub tokenizer_class: Option<String>,
    /// `config.json`'s `text_cfg.hf_tokenizer_name` (or `hf_model_name`), if any.
    pub hf_name: Option<String>,
    /// `config.json`'s `text_cfg.no_causal_mask`.
    pub no_causal_mask: bool,
}

fn read(path: &Path) -> Result<Vec<u8>, CloudError> {
    std::fs::read(path).map_err(|e| CloudError::Model {
        path: path.to_path_buf(),
        reason: e.to_string(),
    })
}

fn json(path: &Path) -> Result<(Vec<u8>, Value), CloudError> {
    let bytes = read(path)?;
    let value = serde_json::from_slice(&bytes).map_err(|e| CloudError::Model {
        path: path.to_path_buf(),
        reason: format!("not valid JSON: {e}"),
    })?;
    Ok((bytes, value))
}

impl TextModelFolder {
    /// Reads the folder's configuration; `id_override` replaces the derived model id.
    pub fn open(dir: &Path, id_override: Option<&str>) -> Result<Self, CloudError> {
        let config_path = dir.join("config.json");
        let (config_bytes, config) = json(&config_path)?;
        let bad = |path: &Path, reason: String| CloudError::Model {
            path: path.to_path_buf(),
            reason,
        };
        let dim = config["embed_dim"]
            .as_u64()
            .ok_or_else(|| bad(&config_path, "has no embed_dim".into()))?
            as usize;
        if dim == 0 || dim > edgeclip_messages::wire::MAX_DIM {
            return Err(bad(
                &config_path,
                format!("embed_dim {dim} is out of range"),
            ));
        }
        let text_cfg = &config["text_cfg"];
        let context_length = match &text_cfg["context_length"] {
            Value::Null => 77,
            v => v.as_u64().ok_or_else(|| {
                bad(
                    &config_path,
                    "text_cfg.context_length is not a number".into(),
                )
            })? as usize,
        };
        if !(3..=1024).contains(&context_length) {
            return Err(bad(
                &config_path,
                "text_cfg.context_length must be in 3..=1024".into(),
            ));
        }
        let clean = match text_cfg["tokenizer_kwargs"]["clean"].as_str() {
            Some("canonicalize") => Clean::Canonicalize,
            _ => Clean::Whitespace,
        };
        let hf_name = text_cfg["hf_tokenizer_name"]
            .as_str()
            .or_else(|| text_cfg["hf_model_name"].as_str())
            .map(str::to_string);
        let no_causal_mask = text_cfg["no_causal_mask"].as_bool().unwrap_or(false);
        let textual = dir.join("textual");
        for needed in ["model.onnx", "tokenizer.json"] {
            let p = textual.join(needed);
            if !p.is_file() {
                return Err(bad(&p, "missing (the cloud needs textual/)".into()));
            }
        }
        let tc_path = textual.join("tokenizer_config.json");
        let (_, tokenizer_config) = json(&tc_path)?;
        // a string, or (older transformers) an AddedToken object with its `content`
        let pad_token = match &tokenizer_config["pad_token"] {
            Value::String(s) => s.clone(),
            Value::Object(o) => o
                .get("content")
                .and_then(Value::as_str)
                .unwrap_or_default()
                .to_string(),
            _ => String::new(),
        };
        if pad_token.is_empty() {
            return Err(bad(
                &tc_path,
                "has no pad_token (texts are padded with it to the context length)".into(),
            ));
        }
        let tokenizer_class = tokenizer_config["tokenizer_class"]
            .as_str()
            .map(str::to_string);
        let sums = std::fs::read(dir.join("SHA256SUMS")).ok();
        let name = dir
            .canonicalize()
            .ok()
            .and_then(|d| d.file_name().map(|n| n.to_string_lossy().into_owned()))
            .unwrap_or_else(|| "model".into());
        let visual = dir.join("visual").join("model.onnx");
        let id = edgeclip_messages::model_id::folder_model_id(
            id_override,
            Some(&name),
            &config_bytes,
            sums.as_deref(),
            std::fs::File::open(&visual).ok(),
        )
        .map_err(|e| bad(&visual, e.to_string()))?;
        let legacy_id = match id_override {
            Some(set) if !set.is_empty() => None,
            _ => Some(edgeclip_messages::model_id::legacy_model_id(
                &name,
                &config_bytes,
                sums.as_deref(),
            )),
        };
        Ok(Self {
            dir: dir.to_path_buf(),
            name,
            id,
            legacy_id,
            dim,
            context_length,
            clean,
            pad_token,
            tokenizer_class,
            hf_name,
            no_causal_mask,
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

    /// The family of the folder's text tower, once its inputs are known.
    pub fn family(&self, inputs: &TextInputs) -> Family {
        let class = self.tokenizer_class.as_deref().unwrap_or("").to_lowercase();
        let hf = self.hf_name.as_deref().unwrap_or("").to_lowercase();
        if matches!(inputs, TextInputs::IdsAndMask { .. }) {
            Family::MClip
        } else if class.starts_with("nllb") || hf.contains("nllb") {
            Family::Nllb
        } else if class.starts_with("gemma") || hf.contains("siglip2") {
            Family::SigLip2
        } else if class.starts_with("t5") || hf.contains("siglip") {
            Family::SigLip
        } else if class.starts_with("clip") && self.no_causal_mask {
            Family::MobileClip
        } else if class.starts_with("clip") {
            Family::Clip
        } else {
            Family::Other
        }
    }
}

/// A text tower to load: its folder, and what the configuration says of it.
#[derive(Debug, Clone)]
pub struct TowerSpec {
    /// The model folder.
    pub dir: PathBuf,
    /// Its space, set (empty: derived from the folder).
    pub space: String,
    /// Languages it serves (empty: from its family; `["*"]`: any).
    pub languages: Vec<String>,
}

impl TowerSpec {
    /// A folder with nothing set.
    pub fn folder(dir: &Path) -> Self {
        Self {
            dir: dir.to_path_buf(),
            space: String::new(),
            languages: Vec::new(),
        }
    }
}

/// A text tower ready to encode: the tokenizer, the tract plan, and what the tower selection
/// needs.
#[derive(Debug, Clone)]
pub struct LoadedTower {
    /// Name, space, languages.
    pub info: TowerInfo,
    /// Its family.
    pub family: Family,
    /// The tokenizer, as Immich runs it.
    pub tokenizer: Arc<TextTokenizer>,
    /// The text tower.
    pub encoder: TextTower,
}

impl LoadedTower {
    /// Cleans, prefixes, tokenises and encodes one text (on the calling thread).
    pub fn encode(&self, text: &str, prefix: Option<&str>) -> Result<Vec<f32>, CloudError> {
        let tokens = self.tokenizer.tokens(text, prefix)?;
        self.encoder.encode_tokens(&tokens)
    }
}

/// The text towers of a worker, loaded, and the rule that picks one for a request.
#[derive(Debug)]
pub struct Towers {
    /// What the selection knows of each tower, in configuration order.
    pub set: TowerSet,
    /// The towers, in the same order.
    pub loaded: Vec<LoadedTower>,
}

impl Towers {
    /// At least one tower.
    pub fn new(loaded: Vec<LoadedTower>) -> Result<Self, CloudError> {
        let set = TowerSet::new(loaded.iter().map(|t| t.info.clone()).collect())
            .ok_or_else(|| CloudError::Config("no text tower".into()))?;
        Ok(Self { set, loaded })
    }
}

/// What [`check`] (and every start) found out about a text tower's folder.
#[derive(Debug, Clone)]
pub struct TextTowerReport {
    /// The folder.
    pub dir: PathBuf,
    /// The tower's family.
    pub family: Family,
    /// Its model id: the embedding space it serves.
    pub space: String,
    /// Output dimension.
    pub dim: usize,
    /// Its inputs: `name dtype[1,L]`.
    pub inputs: Vec<String>,
    /// Tokenizer model (`BPE`, `Unigram`) and class.
    pub tokenizer: String,
    /// Pad token and id.
    pub pad: (String, u32),
    /// Tokens per text.
    pub context_length: usize,
    /// Text cleaning.
    pub clean: Clean,
    /// Languages served.
    pub languages: Languages,
    /// Whether texts run cut after their end token.
    pub cuts: bool,
    /// Reading the folder, the tokenizer and the tower, optimising it and the load's probes.
    pub load: Duration,
    /// Tokens of [`PROBE_TEXT`] (before padding).
    pub probe_tokens: usize,
    /// One more encoding of [`PROBE_TEXT`], tokenizer included.
    pub probe: Duration,
}

impl std::fmt::Display for TextTowerReport {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        write!(
            f,
            "{}: {} text tower, space {}, dim {}, inputs {}, tokenizer {}, pad {:?} ({}), context {}, clean {}, languages {}, {}, loaded in {} ms, {PROBE_TEXT:?} ({} tokens) in {:.1} ms",
            self.dir.display(),
            self.family,
            self.space,
            self.dim,
            self.inputs.join(" + "),
            self.tokenizer,
            self.pad.0,
            self.pad.1,
            self.context_length,
            self.clean,
            self.languages,
            if self.cuts { "texts cut after the end token" } else { "texts at full length" },
            self.load.as_millis(),
            self.probe_tokens,
            self.probe.as_secs_f64() * 1e3,
        )
    }
}

/// Loads a text tower as a worker does at start: the folder, its tokenizer (Immich's pipeline)
/// and its tower (inputs read from the model, fixed at the context length, optimised, probed),
/// and reports what it found. Any problem is one error naming the file.
pub fn load(spec: &TowerSpec) -> Result<(LoadedTower, TextTowerReport), CloudError> {
    let started = Instant::now();
    let space = (!spec.space.is_empty()).then_some(spec.space.as_str());
    let folder = TextModelFolder::open(&spec.dir, space)?;
    let tokenizer = TextTokenizer::from_file(
        &folder.tokenizer_json(),
        &folder.pad_token,
        folder.context_length,
        folder.clean,
    )?;
    let probes = ["", PROBE_TEXT]
        .iter()
        .map(|t| tokenizer.tokens(t, None))
        .collect::<Result<Vec<_>, _>>()?;
    let may_cut = tokenizer.end_is_largest_id();
    let encoder = TextTower::load_with(
        &folder.textual_onnx(),
        folder.context_length,
        folder.dim,
        &probes,
        may_cut,
    )?;
    let load = started.elapsed();
    let family = folder.family(encoder.inputs());
    let languages = Languages::from_config(&spec.languages, family.languages());
    let started = Instant::now();
    let tokens = tokenizer.tokens(PROBE_TEXT, None)?;
    encoder
        .encode_tokens(&tokens)
        .map_err(|e| CloudError::Model {
            path: folder.textual_onnx(),
            reason: e.to_string(),
        })?;
    let probe = started.elapsed();
    let report = TextTowerReport {
        dir: folder.dir.clone(),
        family,
        space: folder.id.clone(),
        dim: folder.dim,
        inputs: encoder.inputs().describe(folder.context_length),
        tokenizer: format!(
            "{} ({})",
            tokenizer.kind(),
            folder
                .tokenizer_class
                .as_deref()
                .unwrap_or("no tokenizer_class")
        ),
        pad: (tokenizer.pad().0.to_string(), tokenizer.pad().1),
        context_length: folder.context_length,
        clean: folder.clean,
        languages: languages.clone(),
        cuts: encoder.cuts(),
        load,
        probe_tokens: tokens.length(),
        probe,
    };
    let tower = LoadedTower {
        info: TowerInfo {
            name: folder.name.clone(),
            id: folder.id.clone(),
            legacy_id: folder.legacy_id.clone(),
            languages,
            lang_use: family.lang_use(),
        },
        family,
        tokenizer: Arc::new(tokenizer),
        encoder,
    };
    Ok((tower, report))
}

/// Checks a model folder's text side as a worker's start would, without starting one: the
/// report, or the one-line reason the folder cannot serve (the file and what is wrong).
pub fn check(dir: &Path) -> Result<TextTowerReport, CloudError> {
    load(&TowerSpec::folder(dir)).map(|(_, report)| report)
}
