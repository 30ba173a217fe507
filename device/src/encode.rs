//! The image tower: `visual/model.onnx` loaded with tract, input shape fixed, optimised once.
//!
//! The plan is shared (`Arc`) and `run` takes `&self`, so several worker threads encode
//! pictures at once with one copy of the weights. Inputs and outputs are taken by position,
//! not by name, since exports name them differently.

use std::path::Path;
use std::sync::Arc;

use tract_onnx::prelude::*;

use crate::error::DeviceError;

/// A loaded, optimised image tower for batches of one picture.
#[derive(Clone)]
pub struct ImageTower {
    plan: Arc<TypedRunnableModel>,
    size: usize,
    dim: usize,
}

impl std::fmt::Debug for ImageTower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageTower").field("size", &self.size).field("dim", &self.dim).finish()
    }
}

impl ImageTower {
    /// Loads `model.onnx` for `size`x`size` RGB input and checks that it yields `dim` values.
    pub fn load(onnx: &Path, size: usize, dim: usize) -> Result<Self, DeviceError> {
        let err = |e: TractError| DeviceError::Model { path: onnx.to_path_buf(), reason: format!("{e:#}") };
        let plan = tract_onnx::onnx()
            // Files that carry symbolic shapes in value_info (dynamo or quantised exports) would
            // otherwise fail to unify the fixed batch with the symbol.
            .with_ignore_value_info(true)
            .model_for_path(onnx)
            .map_err(err)?
            .with_input_fact(0, f32::fact([1, 3, size, size]).into())
            .map_err(err)?
            .into_optimized()
            .map_err(err)?
            .into_runnable()
            .map_err(err)?;
        let tower = Self { plan, size, dim };
        let probe = tower.encode(vec![0.0; 3 * size * size])?;
        if probe.len() != dim {
            return Err(DeviceError::Model {
                path: onnx.to_path_buf(),
                reason: format!("outputs {} values, config.json says embed_dim {dim}", probe.len()),
            });
        }
        Ok(tower)
    }

    /// Output dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Encodes one preprocessed picture (`3 * size * size` values, NCHW) into an L2-normalised
    /// vector. Exports normally normalise already; normalising again is harmless and protects
    /// the ranker's dot-product-equals-cosine invariant from exports that do not.
    pub fn encode(&self, pixels: Vec<f32>) -> Result<Vec<f32>, DeviceError> {
        let input = tract_ndarray::Array4::from_shape_vec((1, 3, self.size, self.size), pixels)
            .map_err(|e| DeviceError::Inference(e.to_string()))?;
        let outputs = self
            .plan
            .run(tvec!(Tensor::from(input).into()))
            .map_err(|e| DeviceError::Inference(format!("{e:#}")))?;
        let first = outputs.first().ok_or_else(|| DeviceError::Inference("model has no output".into()))?;
        let view = first.to_plain_array_view::<f32>().map_err(|e| DeviceError::Inference(format!("{e:#}")))?;
        let mut vector: Vec<f32> = view.iter().copied().collect();
        normalise(&mut vector)?;
        Ok(vector)
    }
}

/// Scales `v` to unit L2 norm; refuses zero or non-finite vectors.
pub fn normalise(v: &mut [f32]) -> Result<(), DeviceError> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return Err(DeviceError::Inference(format!("model produced a vector of norm {norm}")));
    }
    v.iter_mut().for_each(|x| *x /= norm);
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn normalise_makes_unit_vectors_and_refuses_zero() {
        let mut v = vec![3.0, 4.0];
        normalise(&mut v).unwrap();
        assert_eq!(v, vec![0.6, 0.8]);
        assert!(normalise(&mut [0.0, 0.0]).is_err());
        assert!(normalise(&mut [f32::NAN, 1.0]).is_err());
    }
}
