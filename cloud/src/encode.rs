//! The text tower: `textual/model.onnx` loaded with tract for one text at a time, its inputs
//! read from the model (one row of token ids, named `text` in open_clip exports, int32 or
//! int64; or M-CLIP's `input_ids` and `attention_mask`), every input fixed at `[1, L]` and the
//! plan optimised once. Immich's exports fix `L` (77, or 64 for SigLIP); edgeclip's own
//! exports leave it dynamic, and such a tower runs each text cut just after its end-of-text
//! token, but only where that is proven to change nothing (see [`TextTower::load_with`]).

use std::panic::AssertUnwindSafe;
use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::error::CloudError;
use crate::tokenize::{one_line, Tokens};

/// Token ids of two probe texts for [`TextTower::load`] (CLIP's vocabulary, zero padding):
/// `<start> <end>` and `<start> a photo of a dog <end>`.
const PROBES: [&[i64]; 2] = [&[49406, 49407], &[49406, 320, 1125, 539, 320, 1929, 49407]];

/// Largest difference, per value of the normalised vector, between a probe cut after its
/// end-of-text token and the same probe at the full length for the tower to run cut texts:
/// orders of magnitude above what reordered float sums change, orders of magnitude below what
/// a tower that looks past the token changes.
const CUT_TOLERANCE: f32 = 1e-4;

/// The inputs of a text tower, as its ONNX graph declares them.
#[derive(Debug, Clone, PartialEq)]
pub enum TextInputs {
    /// One row of token ids (open_clip's `text`).
    Ids {
        /// The input's name.
        name: String,
        /// Its element type: int32 (Immich's exports) or int64.
        dtype: DatumType,
    },
    /// Token ids and the attention mask, by input position (M-CLIP: `input_ids`,
    /// `attention_mask`; the tower mean-pools over the mask).
    IdsAndMask {
        /// Position and element type of `input_ids`.
        ids: (usize, DatumType),
        /// Position and element type of `attention_mask`.
        mask: (usize, DatumType),
    },
}

impl TextInputs {
    /// `name dtype[1,L]` of each input, in the model's order, for reports.
    pub fn describe(&self, context_length: usize) -> Vec<String> {
        let one = |name: &str, dt: &DatumType| format!("{name} {dt:?}[1,{context_length}]");
        match self {
            TextInputs::Ids { name, dtype } => vec![one(name, dtype)],
            TextInputs::IdsAndMask { ids, mask } => {
                let mut v = vec![
                    (ids.0, one("input_ids", &ids.1)),
                    (mask.0, one("attention_mask", &mask.1)),
                ];
                v.sort();
                v.into_iter().map(|(_, s)| s).collect()
            }
        }
    }
}

/// A loaded, optimised text tower for batches of one text.
#[derive(Clone)]
pub struct TextTower {
    plan: Arc<TypedRunnableModel>,
    inputs: TextInputs,
    context_length: usize,
    dim: usize,
    cut: bool,
}

impl std::fmt::Debug for TextTower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTower")
            .field("inputs", &self.inputs)
            .field("dim", &self.dim)
            .field("cut", &self.cut)
            .finish()
    }
}

/// Where `encode` cuts a row of ids: just after the first largest id, the end-of-text token
/// (49407, the largest id of the CLIP vocabulary) where the tower pools, as the exported
/// graph finds it with `ArgMax`.
pub fn cut_length(ids: &[i64]) -> usize {
    let mut end = 0;
    for (i, &id) in ids.iter().enumerate() {
        if id > ids[end] {
            end = i;
        }
    }
    (end + 1).min(ids.len())
}

/// `model` optimised once for one row of any length (a single-input tower).
fn any_length_plan(
    model: &InferenceModel,
    input_type: DatumType,
) -> TractResult<Arc<TypedRunnableModel>> {
    let length = model.symbols.sym("sequence_length");
    model
        .clone()
        .with_input_fact(
            0,
            InferenceFact::dt_shape(input_type, [1.to_dim(), length.to_dim()]),
        )?
        .into_optimized()?
        .into_runnable()
}

/// Runs `work`, turning a panic inside tract into an error (a malformed file must never take
/// the program down).
fn guarded<T>(work: impl FnOnce() -> TractResult<T>) -> TractResult<T> {
    match std::panic::catch_unwind(AssertUnwindSafe(work)) {
        Ok(r) => r,
        Err(panic) => {
            let what = panic
                .downcast_ref::<&str>()
                .map(|s| s.to_string())
                .or_else(|| panic.downcast_ref::<String>().cloned())
                .unwrap_or_else(|| "a panic".into());
            Err(anyhow::anyhow!("tract failed: {what}"))
        }
    }
}

/// The element type of a token input: int32 or int64 (int64 when the file does not say).
fn token_type(fact: &InferenceFact, name: &str, onnx: &Path) -> Result<DatumType, CloudError> {
    match fact.datum_type.concretize() {
        Some(DatumType::I32) => Ok(DatumType::I32),
        Some(DatumType::I64) | None => Ok(DatumType::I64),
        Some(other) => Err(CloudError::Model {
            path: onnx.to_path_buf(),
            reason: format!(
                "input {name} is {other:?}; a text tower takes int32 or int64 token ids"
            ),
        }),
    }
}

impl TextTower {
    /// Loads `model.onnx` for rows of `context_length` ids and checks it yields `dim` values,
    /// probing whether texts may be cut with two CLIP texts (open_clip's layout, zero padding).
    /// For CLIP towers; [`Self::load_with`] takes the probes of any tokenizer.
    pub fn load(onnx: &Path, context_length: usize, dim: usize) -> Result<Self, CloudError> {
        let probes: Vec<Tokens> = PROBES
            .iter()
            .map(|probe| {
                let mut ids = vec![0i64; context_length];
                let n = probe.len().min(context_length);
                ids[..n].copy_from_slice(&probe[..n]);
                let attention_mask = (0..context_length).map(|i| i64::from(i < n)).collect();
                Tokens {
                    ids,
                    attention_mask,
                }
            })
            .collect();
        Self::load_with(onnx, context_length, dim, &probes, true)
    }

    /// Loads `model.onnx` for rows of `context_length` ids and checks, on `probes` (texts as
    /// the tower's tokenizer makes them, at least one), that it yields `dim` values.
    ///
    /// The inputs are read from the model: one input of token ids (any name), or `input_ids`
    /// and `attention_mask`; each is fixed at `[1, context_length]`, and a model that declares
    /// another length is refused. Texts are cut after their end token only where all of this
    /// holds: `may_cut` (the caller's tokenizer ends texts with its largest id, where a CLIP
    /// tower pools), the tower has one input, it declares its sequence axis dynamic, and each
    /// probe encodes cut and at full length to the same vector. A tower that pools the last
    /// position, has no causal mask or takes a mask fails that check or is never offered it;
    /// such a tower, and every tower fixed at its length, runs each text at full length.
    pub fn load_with(
        onnx: &Path,
        context_length: usize,
        dim: usize,
        probes: &[Tokens],
        may_cut: bool,
    ) -> Result<Self, CloudError> {
        let err = |e: TractError| CloudError::Model {
            path: onnx.to_path_buf(),
            reason: one_line(&format!("{e:#}")),
        };
        let bad = |reason: String| CloudError::Model {
            path: onnx.to_path_buf(),
            reason,
        };
        let Some(first_probe) = probes.first() else {
            return Err(bad("no probe text to check the tower with".into()));
        };
        let model = guarded(|| {
            tract_onnx::onnx()
                .with_ignore_value_info(true)
                .model_for_path(onnx)
        })
        .map_err(err)?;
        let outlets = model.input_outlets().map_err(err)?.to_vec();
        let names: Vec<String> = outlets
            .iter()
            .map(|o| model.node(o.node).name.clone())
            .collect();
        let mut fixed_length = None;
        for (i, name) in names.iter().enumerate() {
            let fact = model.input_fact(i).map_err(err)?;
            // a dimension the model names (`sequence_length`) is a symbol, not a number
            let dims: Vec<Option<i64>> = fact
                .shape
                .dims()
                .map(|d| d.concretize().and_then(|d| d.to_i64().ok()))
                .collect();
            if fact.shape.rank().concretize().is_some_and(|r| r != 2) {
                return Err(bad(format!(
                    "input {name} has {} axes; a text tower takes [1, tokens]",
                    dims.len()
                )));
            }
            if let Some(Some(batch)) = dims.first() {
                if *batch != 1 {
                    return Err(bad(format!("input {name} takes batches of {batch}, not 1")));
                }
            }
            if let Some(Some(length)) = dims.get(1) {
                if *length as usize != context_length {
                    return Err(bad(format!(
                        "input {name} takes {length} tokens; config.json's text_cfg.context_length is {context_length}"
                    )));
                }
                fixed_length = Some(*length);
            }
        }
        let inputs = match names.as_slice() {
            [name] => TextInputs::Ids {
                name: name.clone(),
                dtype: token_type(model.input_fact(0).map_err(err)?, name, onnx)?,
            },
            [a, b] if (a == "input_ids" && b == "attention_mask")
                || (a == "attention_mask" && b == "input_ids") =>
            {
                let at = |n: &str| names.iter().position(|x| x == n).unwrap_or(0);
                let (i, m) = (at("input_ids"), at("attention_mask"));
                TextInputs::IdsAndMask {
                    ids: (i, token_type(model.input_fact(i).map_err(err)?, "input_ids", onnx)?),
                    mask: (m, token_type(model.input_fact(m).map_err(err)?, "attention_mask", onnx)?),
                }
            }
            _ => {
                return Err(bad(format!(
                    "inputs [{}]: a text tower takes one input of token ids (open_clip's text), or input_ids and attention_mask (M-CLIP)",
                    names.join(", ")
                )))
            }
        };
        if let (TextInputs::Ids { dtype, .. }, true, None) = (&inputs, may_cut, fixed_length) {
            match guarded(|| any_length_plan(&model, *dtype)) {
                Ok(plan) => {
                    let tower = Self {
                        plan,
                        inputs: inputs.clone(),
                        context_length,
                        dim,
                        cut: true,
                    };
                    match tower.check_cut(probes) {
                        Ok(()) => return Ok(tower),
                        Err(reason) => {
                            tracing::info!(model = %onnx.display(), %reason, "the text tower runs every text at full length")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(model = %onnx.display(), error = %one_line(&format!("{e:#}")), "the text tower's sequence axis is declared dynamic but does not optimise as such")
                }
            }
        }
        let plan = guarded(|| {
            let mut model = model;
            let types: Vec<DatumType> = match &inputs {
                TextInputs::Ids { dtype, .. } => vec![*dtype],
                TextInputs::IdsAndMask { ids, mask } => {
                    let mut t = vec![DatumType::I64; 2];
                    t[ids.0] = ids.1;
                    t[mask.0] = mask.1;
                    t
                }
            };
            for (i, dt) in types.into_iter().enumerate() {
                model =
                    model.with_input_fact(i, InferenceFact::dt_shape(dt, [1, context_length]))?;
            }
            model.into_optimized()?.into_runnable()
        })
        .map_err(err)?;
        let tower = Self {
            plan,
            inputs,
            context_length,
            dim,
            cut: false,
        };
        let out = tower
            .encode_tokens(first_probe)
            .map_err(|e| bad(e.to_string()))?;
        if out.len() != dim {
            return Err(bad(format!(
                "outputs {} values; config.json's embed_dim (the image tower's dimension) is {dim}",
                out.len()
            )));
        }
        Ok(tower)
    }

    /// Whether texts run cut after their end-of-text token.
    pub fn cuts(&self) -> bool {
        self.cut
    }

    /// The tower's inputs.
    pub fn inputs(&self) -> &TextInputs {
        &self.inputs
    }

    /// Output dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// The probes, cut and at full length, give `dim` values that agree within `CUT_TOLERANCE`.
    fn check_cut(&self, probes: &[Tokens]) -> Result<(), CloudError> {
        for probe in probes {
            let padded = &probe.ids;
            let full = self.run(padded)?;
            let cut = self.run(&padded[..cut_length(padded)])?;
            if full.len() != self.dim || cut.len() != self.dim {
                return Err(CloudError::Inference(format!(
                    "outputs {} values, config.json says {}",
                    full.len(),
                    self.dim
                )));
            }
            let diff = full
                .iter()
                .zip(&cut)
                .map(|(a, b)| (a - b).abs())
                .fold(0.0f32, f32::max);
            if diff.is_nan() || diff > CUT_TOLERANCE {
                return Err(CloudError::CutChangesVector(diff));
            }
        }
        Ok(())
    }

    /// Encodes one row of token ids (`context_length` of them, padded) into an
    /// L2-normalised vector. For towers of one input; [`Self::encode_tokens`] takes any.
    pub fn encode(&self, ids: &[i64]) -> Result<Vec<f32>, CloudError> {
        if ids.len() != self.context_length {
            return Err(CloudError::Inference(format!(
                "{} ids given, the model takes {}",
                ids.len(),
                self.context_length
            )));
        }
        if !matches!(self.inputs, TextInputs::Ids { .. }) {
            return Err(CloudError::Inference(
                "this tower takes an attention mask too (encode_tokens)".into(),
            ));
        }
        let ids = if self.cut {
            &ids[..cut_length(ids)]
        } else {
            ids
        };
        self.run(ids)
    }

    /// Encodes one tokenised text into an L2-normalised vector.
    pub fn encode_tokens(&self, tokens: &Tokens) -> Result<Vec<f32>, CloudError> {
        match &self.inputs {
            TextInputs::Ids { .. } => self.encode(&tokens.ids),
            TextInputs::IdsAndMask { ids, mask } => {
                if tokens.ids.len() != self.context_length
                    || tokens.attention_mask.len() != self.context_length
                {
                    return Err(CloudError::Inference(format!(
                        "{} ids and {} mask values given, the model takes {}",
                        tokens.ids.len(),
                        tokens.attention_mask.len(),
                        self.context_length
                    )));
                }
                let mut tensors = vec![Tensor::default(), Tensor::default()];
                tensors[ids.0] = row(&tokens.ids, ids.1)?;
                tensors[mask.0] = row(&tokens.attention_mask, mask.1)?;
                self.run_tensors(tensors)
            }
        }
    }

    fn run(&self, ids: &[i64]) -> Result<Vec<f32>, CloudError> {
        let dtype = match &self.inputs {
            TextInputs::Ids { dtype, .. } => *dtype,
            TextInputs::IdsAndMask { ids, .. } => ids.1,
        };
        self.run_tensors(vec![row(ids, dtype)?])
    }

    fn run_tensors(&self, tensors: Vec<Tensor>) -> Result<Vec<f32>, CloudError> {
        let inputs: TVec<TValue> = tensors.into_iter().map(|t| t.into()).collect();
        let outputs = guarded(|| self.plan.run(inputs))
            .map_err(|e| CloudError::Inference(one_line(&format!("{e:#}"))))?;
        let first = outputs
            .first()
            .ok_or_else(|| CloudError::Inference("model has no output".into()))?;
        let view = first
            .to_plain_array_view::<f32>()
            .map_err(|e| CloudError::Inference(one_line(&format!("{e:#}"))))?;
        let mut v: Vec<f32> = view.iter().copied().collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if !norm.is_finite() || norm == 0.0 {
            return Err(CloudError::Inference(format!(
                "model produced a vector of norm {norm}"
            )));
        }
        v.iter_mut().for_each(|x| *x /= norm);
        Ok(v)
    }
}

/// One row `[1, n]` of `values` as a tensor of `dtype` (int32 or int64).
fn row(values: &[i64], dtype: DatumType) -> Result<Tensor, CloudError> {
    let shape = [1, values.len()];
    match dtype {
        DatumType::I32 => {
            let v32: Vec<i32> = values.iter().map(|&i| i as i32).collect();
            Tensor::from_shape(&shape, &v32)
        }
        _ => Tensor::from_shape(&shape, values),
    }
    .map_err(|e| CloudError::Inference(format!("{e:#}")))
}

#[cfg(test)]
mod tests {
    use std::path::PathBuf;

    use super::*;

    fn data(path: &str) -> PathBuf {
        PathBuf::from(env!("CARGO_MANIFEST_DIR"))
            .join("..")
            .join(path)
    }

    fn row(tokens: &[i64]) -> Vec<i64> {
        let mut ids = vec![0i64; 77];
        ids[..tokens.len()].copy_from_slice(tokens);
        ids
    }

    fn max_diff(a: &[f32], b: &[f32]) -> f32 {
        assert_eq!(a.len(), b.len());
        a.iter()
            .zip(b)
            .map(|(x, y)| (x - y).abs())
            .fold(0.0, f32::max)
    }

    #[test]
    fn a_row_is_cut_just_after_its_first_largest_id() {
        assert_eq!(cut_length(&row(&[49406, 320, 1125, 49407])), 4);
        assert_eq!(cut_length(&row(&[49406, 49407, 320, 49407])), 2);
        let full: Vec<i64> = std::iter::once(49406)
            .chain(std::iter::repeat_n(320, 75))
            .chain([49407])
            .collect();
        assert_eq!(cut_length(&full), 77);
        assert_eq!(cut_length(&row(&[])), 1);
        assert_eq!(cut_length(&[]), 0);
    }

    #[test]
    fn the_bundled_tower_cuts_texts_and_encodes_them_as_at_full_length() {
        let tower = TextTower::load(&data("models/clip-shapes/textual/model.onnx"), 77, 64)
            .expect("bundled text tower");
        assert!(
            tower.cuts(),
            "the bundled tower is exported with a dynamic sequence axis"
        );
        let long: Vec<i64> = std::iter::once(49406)
            .chain((0..75).map(|i| 320 + i))
            .chain([49407])
            .collect();
        for tokens in [
            &[49406, 49407][..],
            &[49406, 320, 736, 2138, 49407],
            &[49406, 320, 736, 49407, 0, 5, 49407],
            &long[..40],
            &long,
        ] {
            let mut ids = row(&tokens[..tokens.len().min(77)]);
            if tokens.len() == 40 {
                ids[39] = 49407;
            }
            let cut = tower.encode(&ids).expect("cut");
            let full = tower.run(&ids).expect("full length");
            assert_eq!(cut.len(), 64);
            assert!(
                max_diff(&cut, &full) < 1e-5,
                "{tokens:?}: {}",
                max_diff(&cut, &full)
            );
        }
        // the cut is real: a different row after the end token is not looked at
        let a = tower.encode(&row(&[49406, 320, 49407, 0, 0])).expect("a");
        let b = tower.encode(&row(&[49406, 320, 49407, 7, 8])).expect("b");
        assert_eq!(a, b);
    }

    #[test]
    fn a_tower_fixed_at_77_tokens_runs_every_text_at_full_length() {
        let tower = TextTower::load(&data("tests/data/text-towers/fixed.onnx"), 77, 4)
            .expect("fixed tower");
        assert!(!tower.cuts());
        let v = tower
            .encode(&row(&[49406, 320, 1125, 49407]))
            .expect("encode");
        assert_eq!(v.len(), 4);
        assert!(
            tower.run(&row(&[49406, 49407])[..2]).is_err(),
            "a fixed tower takes 77 ids only"
        );
    }

    #[test]
    fn a_dynamic_tower_that_looks_past_the_end_token_is_not_cut() {
        let path = data("tests/data/text-towers/looks-ahead.onnx");
        let tower = TextTower::load(&path, 77, 4).expect("looks-ahead tower");
        assert!(
            !tower.cuts(),
            "the check at load must refuse to cut this tower"
        );
        // what cutting would have done: the same model at any length, asked for both
        let model = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .model_for_path(&path)
            .expect("model");
        let plan = any_length_plan(&model, DatumType::I64).expect("plan");
        let any = TextTower {
            plan,
            inputs: TextInputs::Ids {
                name: "text".into(),
                dtype: DatumType::I64,
            },
            context_length: 77,
            dim: 4,
            cut: false,
        };
        let ids = row(&[49406, 320, 1125, 49407]);
        let full = tower.encode(&ids).expect("full");
        assert!(max_diff(&full, &any.run(&ids).expect("any, full")) < 1e-5);
        assert!(
            max_diff(&full, &any.run(&ids[..4]).expect("any, cut")) > 1e-3,
            "the fixture must look past the end token"
        );
    }
}
