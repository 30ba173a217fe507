//! The text tower: `textual/model.onnx` loaded with tract for one row of token ids, its input
//! type (int32 or int64, exports differ) read from the model, optimised once. A tower exported
//! with a dynamic sequence axis runs each text cut just after its end-of-text token, once a
//! check at load has shown that the cut changes nothing.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::error::CloudError;

/// Token ids of two probe texts at load: `<start> <end>` and `<start> a photo of a dog <end>`.
const PROBES: [&[i64]; 2] = [&[49406, 49407], &[49406, 320, 1125, 539, 320, 1929, 49407]];

/// Largest difference, per value of the normalised vector, between a probe cut after its
/// end-of-text token and the same probe at the full length for the tower to run cut texts:
/// orders of magnitude above what reordered float sums change, orders of magnitude below what
/// a tower that looks past the token changes.
const CUT_TOLERANCE: f32 = 1e-4;

/// A loaded, optimised text tower for batches of one text.
#[derive(Clone)]
pub struct TextTower {
    plan: Arc<TypedRunnableModel>,
    input_type: DatumType,
    context_length: usize,
    dim: usize,
    cut: bool,
}

impl std::fmt::Debug for TextTower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTower")
            .field("input_type", &self.input_type)
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

/// `model` optimised once for one row of any length.
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

impl TextTower {
    /// Loads `model.onnx` for rows of `context_length` ids and checks it yields `dim` values.
    ///
    /// If the model declares its sequence axis dynamic, it is optimised once for any length and
    /// the two probe texts are encoded both cut and at full length; only if they agree does
    /// the tower cut texts (`cuts`). Otherwise, and for a model fixed at `context_length`
    /// tokens, every text runs at the full length.
    pub fn load(onnx: &Path, context_length: usize, dim: usize) -> Result<Self, CloudError> {
        let err = |e: TractError| CloudError::Model {
            path: onnx.to_path_buf(),
            reason: format!("{e:#}"),
        };
        let model = tract_onnx::onnx()
            .with_ignore_value_info(true)
            .model_for_path(onnx)
            .map_err(err)?;
        let fact = model.input_fact(0).map_err(err)?;
        let input_type = match fact.datum_type.concretize() {
            Some(DatumType::I32) => DatumType::I32,
            Some(DatumType::I64) | None => DatumType::I64,
            Some(other) => {
                return Err(CloudError::Model {
                    path: onnx.to_path_buf(),
                    reason: format!("text input of type {other:?} is not supported"),
                })
            }
        };
        // a dimension the model names (`sequence_length`) is a symbol, not a number
        let fixed_length = fact
            .shape
            .dims()
            .nth(1)
            .and_then(|d| d.concretize())
            .is_some_and(|d| d.to_i64().is_ok());
        if !fixed_length {
            match any_length_plan(&model, input_type) {
                Ok(plan) => {
                    let tower = Self {
                        plan,
                        input_type,
                        context_length,
                        dim,
                        cut: true,
                    };
                    match tower.check_cut() {
                        Ok(()) => return Ok(tower),
                        Err(reason) => {
                            tracing::warn!(model = %onnx.display(), %reason, "the text tower runs every text at full length")
                        }
                    }
                }
                Err(e) => {
                    tracing::warn!(model = %onnx.display(), error = %format!("{e:#}"), "the text tower's sequence axis is declared dynamic but does not optimise as such")
                }
            }
        }
        let plan = model
            .with_input_fact(0, InferenceFact::dt_shape(input_type, [1, context_length]))
            .map_err(err)?
            .into_optimized()
            .map_err(err)?
            .into_runnable()
            .map_err(err)?;
        let tower = Self {
            plan,
            input_type,
            context_length,
            dim,
            cut: false,
        };
        let out = tower.encode(&tower.padded(PROBES[0]))?;
        if out.len() != dim {
            return Err(CloudError::Model {
                path: onnx.to_path_buf(),
                reason: format!("outputs {} values, config.json says {dim}", out.len()),
            });
        }
        Ok(tower)
    }

    /// Whether texts run cut after their end-of-text token.
    pub fn cuts(&self) -> bool {
        self.cut
    }

    /// The probes, cut and at full length, give `dim` values that agree within `CUT_TOLERANCE`.
    fn check_cut(&self) -> Result<(), CloudError> {
        for probe in PROBES {
            let padded = self.padded(probe);
            let full = self.run(&padded)?;
            let cut = self.run(&padded[..cut_length(&padded)])?;
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

    fn padded(&self, probe: &[i64]) -> Vec<i64> {
        let mut ids = vec![0i64; self.context_length];
        let n = probe.len().min(self.context_length);
        ids[..n].copy_from_slice(&probe[..n]);
        ids
    }

    /// Encodes one row of token ids (`context_length` of them, padded) into an
    /// L2-normalised vector.
    pub fn encode(&self, ids: &[i64]) -> Result<Vec<f32>, CloudError> {
        if ids.len() != self.context_length {
            return Err(CloudError::Inference(format!(
                "{} ids given, the model takes {}",
                ids.len(),
                self.context_length
            )));
        }
        let ids = if self.cut {
            &ids[..cut_length(ids)]
        } else {
            ids
        };
        self.run(ids)
    }

    fn run(&self, ids: &[i64]) -> Result<Vec<f32>, CloudError> {
        let shape = [1, ids.len()];
        let tensor = match self.input_type {
            DatumType::I32 => {
                let ids32: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
                Tensor::from_shape(&shape, &ids32)
            }
            _ => Tensor::from_shape(&shape, ids),
        }
        .map_err(|e| CloudError::Inference(format!("{e:#}")))?;
        let outputs = self
            .plan
            .run(tvec!(tensor.into()))
            .map_err(|e| CloudError::Inference(format!("{e:#}")))?;
        let first = outputs
            .first()
            .ok_or_else(|| CloudError::Inference("model has no output".into()))?;
        let view = first
            .to_plain_array_view::<f32>()
            .map_err(|e| CloudError::Inference(format!("{e:#}")))?;
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
            input_type: DatumType::I64,
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
