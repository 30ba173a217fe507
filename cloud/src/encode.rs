//! The text tower: `textual/model.onnx` loaded with tract for one row of token ids, its input
//! type (int32 or int64, exports differ) read from the model, optimised once.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;
use tract_onnx::tract_hir::infer::Factoid;

use crate::error::CloudError;

/// A loaded, optimised text tower for batches of one text.
#[derive(Clone)]
pub struct TextTower {
    plan: Arc<TypedRunnableModel>,
    input_type: DatumType,
    context_length: usize,
    dim: usize,
}

impl std::fmt::Debug for TextTower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTower").field("input_type", &self.input_type).field("dim", &self.dim).finish()
    }
}

impl TextTower {
    /// Loads `model.onnx` for rows of `context_length` ids and checks it yields `dim` values.
    pub fn load(onnx: &Path, context_length: usize, dim: usize) -> Result<Self, CloudError> {
        let err = |e: TractError| CloudError::Model { path: onnx.to_path_buf(), reason: format!("{e:#}") };
        let model = tract_onnx::onnx().with_ignore_value_info(true).model_for_path(onnx).map_err(err)?;
        let declared = model.input_fact(0).map_err(err)?.datum_type.concretize();
        let input_type = match declared {
            Some(DatumType::I32) => DatumType::I32,
            Some(DatumType::I64) | None => DatumType::I64,
            Some(other) => {
                return Err(CloudError::Model { path: onnx.to_path_buf(), reason: format!("text input of type {other:?} is not supported") })
            }
        };
        let plan = model
            .with_input_fact(0, InferenceFact::dt_shape(input_type, [1, context_length]))
            .map_err(err)?
            .into_optimized()
            .map_err(err)?
            .into_runnable()
            .map_err(err)?;
        let tower = Self { plan, input_type, context_length, dim };
        let mut probe = vec![0i64; context_length];
        probe[0] = 49406;
        probe[1] = 49407;
        let out = tower.encode(&probe)?;
        if out.len() != dim {
            return Err(CloudError::Model { path: onnx.to_path_buf(), reason: format!("outputs {} values, config.json says {dim}", out.len()) });
        }
        Ok(tower)
    }

    /// Encodes one row of token ids into an L2-normalised vector.
    pub fn encode(&self, ids: &[i64]) -> Result<Vec<f32>, CloudError> {
        if ids.len() != self.context_length {
            return Err(CloudError::Inference(format!("{} ids given, the model takes {}", ids.len(), self.context_length)));
        }
        let shape = [1, self.context_length];
        let tensor = match self.input_type {
            DatumType::I32 => {
                let ids32: Vec<i32> = ids.iter().map(|&i| i as i32).collect();
                Tensor::from_shape(&shape, &ids32)
            }
            _ => Tensor::from_shape(&shape, ids),
        }
        .map_err(|e| CloudError::Inference(format!("{e:#}")))?;
        let outputs = self.plan.run(tvec!(tensor.into())).map_err(|e| CloudError::Inference(format!("{e:#}")))?;
        let first = outputs.first().ok_or_else(|| CloudError::Inference("model has no output".into()))?;
        let view = first.to_plain_array_view::<f32>().map_err(|e| CloudError::Inference(format!("{e:#}")))?;
        let mut v: Vec<f32> = view.iter().copied().collect();
        let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
        if !norm.is_finite() || norm == 0.0 {
            return Err(CloudError::Inference(format!("model produced a vector of norm {norm}")));
        }
        v.iter_mut().for_each(|x| *x /= norm);
        Ok(v)
    }
}
