//! The image tower: `visual/model.onnx` loaded with tract, input shape fixed, optimised once.
//!
//! The plan is shared (`Arc`) and `run` takes `&self`, so several worker threads encode
//! pictures at once with one copy of the weights. Inputs and outputs are taken by position,
//! not by name, since exports name them differently.
//!
//! A tower either runs one picture at a time on a plan optimised for batch 1, or several
//! pictures per run on a plan optimised for any batch. Which is faster depends on the model
//! and the CPU (a transformer's skinny products gain from more rows until its activations
//! leave the cache; a small convolutional model loses its batch-1 optimisations), so by
//! default [`ImageTower::load_batched`] measures both on the machine and keeps the faster:
//! [`choose_batch`] decides from the timings.

use std::path::Path;
use std::sync::Arc;
use std::time::Instant;

use tract_onnx::prelude::*;

use crate::error::DeviceError;

/// Largest batch tried when the batch is measured (`encoder.batch = 0`).
pub const MAX_AUTO_BATCH: usize = 4;

/// A batch is kept only if it encodes a picture at least this much faster than batch 1.
const MIN_GAIN: f64 = 0.10;

/// ... and only if the any-batch plan runs a lone picture (a camera frame, most of the time)
/// at most this much slower than the batch-1 plan.
const MAX_LONE_LOSS: f64 = 0.10;

/// A loaded, optimised image tower.
#[derive(Clone)]
pub struct ImageTower {
    plan: Arc<TypedRunnableModel>,
    size: usize,
    dim: usize,
    batch: usize,
}

impl std::fmt::Debug for ImageTower {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ImageTower")
            .field("size", &self.size)
            .field("dim", &self.dim)
            .field("batch", &self.batch)
            .finish()
    }
}

/// What [`ImageTower::load_batched`] measured: milliseconds per picture of the batch-1 plan
/// and of each batch tried on the any-batch plan. Empty when the batch was configured.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct BatchTimings {
    /// Batch-1 plan, ms per picture.
    pub single_ms: Option<f64>,
    /// (batch, ms per picture) on the any-batch plan.
    pub batched_ms: Vec<(usize, f64)>,
    /// Batch-1 plan timed once more, after the any-batch plan, when a batch won against
    /// `single_ms`; the decision then takes the faster of the two.
    pub single_again_ms: Option<f64>,
}

/// The batch to run given the batch-1 plan's time per picture and the any-batch plan's per
/// batch tried (its batch 1 included): the fastest batch if it beats batch 1 by [`MIN_GAIN`]
/// and the any-batch plan's lone picture is at most [`MAX_LONE_LOSS`] slower, else 1 (which
/// keeps the batch-1 plan). Timings that are not finite are ignored.
pub fn choose_batch(single_ms: f64, batched_ms: &[(usize, f64)]) -> usize {
    let lone = batched_ms
        .iter()
        .find(|(b, ms)| *b == 1 && ms.is_finite())
        .map(|&(_, ms)| ms);
    if lone.is_some_and(|ms| single_ms.is_finite() && ms > single_ms * (1.0 + MAX_LONE_LOSS)) {
        return 1;
    }
    let best = batched_ms
        .iter()
        .filter(|(b, ms)| *b > 1 && ms.is_finite() && *ms > 0.0)
        .min_by(|a, b| a.1.total_cmp(&b.1));
    match best {
        Some(&(b, ms)) if !single_ms.is_finite() || ms < single_ms * (1.0 - MIN_GAIN) => b,
        _ => 1,
    }
}

/// The measurement behind `encoder.batch = 0`, over any kind of plan: `build(Some(1))` makes
/// the batch-1 plan, `build(None)` the any-batch plan, and `time(plan, b)` gives a plan's ms
/// per picture at batch `b`. Times the batch-1 plan, then the any-batch plan at 1, 2, ... up
/// to [`MAX_AUTO_BATCH`] while each batch is faster per picture than everything before it,
/// and decides with [`choose_batch`]. A batch that wins has won against one timing of the
/// batch-1 plan, and a busy moment during that timing (a noisy machine, another service)
/// would decide for good, since the answer is remembered: so the batch-1 plan is built and
/// timed once more, and the decision taken again with its faster timing. Only one plan is
/// alive at a time, and the heap is trimmed after each is dropped. Returns the plan to keep,
/// its batch and every timing.
fn measure<P, E>(
    mut build: impl FnMut(Option<usize>) -> Result<P, E>,
    mut time: impl FnMut(&P, usize) -> Result<f64, E>,
) -> Result<(P, usize, BatchTimings), E> {
    let dropped = |plan: P| {
        drop(plan);
        crate::heap::trim();
    };
    let single = build(Some(1))?;
    let mut timings = BatchTimings {
        single_ms: Some(time(&single, 1)?),
        ..BatchTimings::default()
    };
    let single_ms = |t: &BatchTimings| {
        t.single_ms
            .into_iter()
            .chain(t.single_again_ms)
            .fold(f64::INFINITY, f64::min)
    };
    // Freed load-time buffers back to the system before the next plan is built: glibc
    // reuses them poorly, and the peak of loading would be that of two plans.
    dropped(single);
    let any = build(None)?;
    timings.batched_ms.push((1, time(&any, 1)?));
    let mut best = single_ms(&timings);
    for b in 2..=MAX_AUTO_BATCH {
        let ms = time(&any, b)?;
        timings.batched_ms.push((b, ms));
        if ms >= best {
            break;
        }
        best = ms;
    }
    dropped(any);
    let single = build(Some(1))?;
    if choose_batch(single_ms(&timings), &timings.batched_ms) > 1 {
        timings.single_again_ms = Some(time(&single, 1)?);
    }
    let chosen = choose_batch(single_ms(&timings), &timings.batched_ms);
    if chosen == 1 {
        return Ok((single, 1, timings));
    }
    dropped(single);
    Ok((build(None)?, chosen, timings))
}

/// Parses `onnx` and optimises it for batches of `batch` pictures, or of any size if `None`.
fn plan(onnx: &Path, size: usize, batch: Option<usize>) -> TractResult<Arc<TypedRunnableModel>> {
    // The copies of the weights made while loading go back to the system as each is freed.
    let _mapped = crate::heap::LargeBlocksMapped::new();
    let model = tract_onnx::onnx()
        // Files that carry symbolic shapes in value_info (dynamo or quantised exports) would
        // otherwise fail to unify the fixed batch with the symbol.
        .with_ignore_value_info(true)
        .model_for_path(onnx)?;
    let n = match batch {
        Some(b) => b.to_dim(),
        None => model.symbols.sym("batch").to_dim(),
    };
    let plan = model
        .with_input_fact(
            0,
            InferenceFact::dt_shape(
                f32::datum_type(),
                [n, 3.to_dim(), size.to_dim(), size.to_dim()],
            ),
        )?
        .into_optimized()?
        .into_runnable()?;
    // The parsed and the unoptimised graphs (a copy of the weights each) are freed by now;
    // their pages go back to the system.
    crate::heap::trim();
    Ok(plan)
}

impl ImageTower {
    /// Loads `model.onnx` for `size`x`size` RGB input, one picture per run, and checks that it
    /// yields `dim` values.
    pub fn load(onnx: &Path, size: usize, dim: usize) -> Result<Self, DeviceError> {
        Ok(Self::load_batched(onnx, size, dim, 1)?.0)
    }

    /// Loads `model.onnx` to run `batch` pictures at once; `batch = 0` measures the batch-1
    /// plan against the any-batch plan at 1 and up to [`MAX_AUTO_BATCH`] pictures (the best of
    /// two runs each, on a picture-like input) and keeps the faster ([`measure`]). Only one
    /// plan is held at a time and the heap is trimmed between them, so the peak memory of
    /// loading is about that of one plan.
    pub fn load_batched(
        onnx: &Path,
        size: usize,
        dim: usize,
        batch: usize,
    ) -> Result<(Self, BatchTimings), DeviceError> {
        let err = |e: TractError| DeviceError::Model {
            path: onnx.to_path_buf(),
            reason: format!("{e:#}"),
        };
        let tower = |plan, batch| Self {
            plan,
            size,
            dim,
            batch,
        };
        if batch != 0 {
            let t = tower(
                plan(onnx, size, (batch == 1).then_some(1)).map_err(err)?,
                batch,
            );
            t.check_dim(onnx)?;
            return Ok((t, BatchTimings::default()));
        }
        // The first plan built is checked; the later ones come from the same file.
        let checked = std::cell::Cell::new(false);
        let built = |batch| {
            let t = tower(plan(onnx, size, batch).map_err(err)?, 1);
            if !checked.replace(true) {
                t.check_dim(onnx)?;
            }
            Ok(t)
        };
        let (tower, chosen, timings) = measure(built, |t: &Self, batch| t.ms_per_picture(batch))?;
        Ok((
            Self {
                batch: chosen,
                ..tower
            },
            timings,
        ))
    }

    /// Refuses a model whose output is not `dim` values per picture.
    fn check_dim(&self, onnx: &Path) -> Result<(), DeviceError> {
        let probe = self.encode(vec![0.0; 3 * self.size * self.size])?;
        if probe.len() != self.dim {
            return Err(DeviceError::Model {
                path: onnx.to_path_buf(),
                reason: format!(
                    "outputs {} values, config.json says embed_dim {}",
                    probe.len(),
                    self.dim
                ),
            });
        }
        Ok(())
    }

    /// Best of two runs of `batch` picture-like inputs, in ms per picture.
    fn ms_per_picture(&self, batch: usize) -> Result<f64, DeviceError> {
        let picture: Vec<f32> = (0..3 * self.size * self.size)
            .map(|i| ((i * 7919) % 255) as f32 / 128.0 - 1.0)
            .collect();
        let mut best = f64::INFINITY;
        for _ in 0..2 {
            let pictures = picture.repeat(batch);
            let started = Instant::now();
            self.run(pictures, batch)?;
            best = best.min(started.elapsed().as_secs_f64() * 1e3 / batch as f64);
        }
        Ok(best)
    }

    /// Output dimension.
    pub fn dim(&self) -> usize {
        self.dim
    }

    /// Pictures per run this tower was loaded for (1: a plan optimised for one picture).
    pub fn batch(&self) -> usize {
        self.batch
    }

    /// Encodes one preprocessed picture (`3 * size * size` values, NCHW) into an L2-normalised
    /// vector. Exports normally normalise already; normalising again is harmless and protects
    /// the ranker's dot-product-equals-cosine invariant from exports that do not.
    pub fn encode(&self, pixels: Vec<f32>) -> Result<Vec<f32>, DeviceError> {
        self.check_picture(&pixels)?;
        let mut vectors = self.run(pixels, 1)?;
        let mut vector = vectors
            .pop()
            .ok_or_else(|| DeviceError::Inference("model has no output".into()))?;
        normalise(&mut vector)?;
        Ok(vector)
    }

    /// Encodes several pictures, [`ImageTower::batch`] per run (the batch-1 plan runs them
    /// one after the other), into L2-normalised vectors in the same order. The pictures are
    /// borrowed: a caller can still encode them one at a time if the batch fails.
    pub fn encode_batch(&self, pictures: &[Vec<f32>]) -> Result<Vec<Vec<f32>>, DeviceError> {
        for p in pictures {
            self.check_picture(p)?;
        }
        let mut vectors = Vec::with_capacity(pictures.len());
        for run in pictures.chunks(self.batch.max(1)) {
            for mut v in self.run(run.concat(), run.len())? {
                normalise(&mut v)?;
                vectors.push(v);
            }
        }
        Ok(vectors)
    }

    /// Refuses a picture of the wrong number of values.
    fn check_picture(&self, picture: &[f32]) -> Result<(), DeviceError> {
        let per = 3 * self.size * self.size;
        if picture.len() != per {
            return Err(DeviceError::Inference(format!(
                "a picture of {} values, the model takes {per}",
                picture.len()
            )));
        }
        Ok(())
    }

    /// One run of the plan on `n` pictures laid out one after the other in `flat` (one, or
    /// any number on the any-batch plan): the raw output rows.
    fn run(&self, flat: Vec<f32>, n: usize) -> Result<Vec<Vec<f32>>, DeviceError> {
        let input = tract_ndarray::Array4::from_shape_vec((n, 3, self.size, self.size), flat)
            .map_err(|e| DeviceError::Inference(e.to_string()))?;
        let outputs = self
            .plan
            .run(tvec!(Tensor::from(input).into()))
            .map_err(|e| DeviceError::Inference(format!("{e:#}")))?;
        let first = outputs
            .first()
            .ok_or_else(|| DeviceError::Inference("model has no output".into()))?;
        let view = first
            .to_plain_array_view::<f32>()
            .map_err(|e| DeviceError::Inference(format!("{e:#}")))?;
        let values: Vec<f32> = view.iter().copied().collect();
        if n == 0 || values.len() % n != 0 {
            return Err(DeviceError::Inference(format!(
                "{} output values for {n} pictures",
                values.len()
            )));
        }
        Ok(values
            .chunks(values.len() / n)
            .map(<[f32]>::to_vec)
            .collect())
    }
}

/// Scales `v` to unit L2 norm; refuses zero or non-finite vectors.
pub fn normalise(v: &mut [f32]) -> Result<(), DeviceError> {
    let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    if !norm.is_finite() || norm == 0.0 {
        return Err(DeviceError::Inference(format!(
            "model produced a vector of norm {norm}"
        )));
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

    #[test]
    fn the_batch_is_the_fastest_one_only_if_clearly_faster() {
        assert_eq!(choose_batch(100.0, &[(2, 85.0), (3, 80.0), (4, 120.0)]), 3);
        // Under the 10% gain batch 1 is kept.
        assert_eq!(choose_batch(100.0, &[(2, 95.0), (3, 92.0)]), 1);
        // A convolutional model that loses its batch-1 optimisations.
        assert_eq!(choose_batch(6.0, &[(2, 11.0)]), 1);
        assert_eq!(choose_batch(100.0, &[]), 1);
        assert_eq!(choose_batch(100.0, &[(2, f64::NAN), (3, 0.0)]), 1);
        assert_eq!(choose_batch(f64::NAN, &[(2, 50.0)]), 2);
        // The any-batch plan's own batch 1 may be a little slower than the batch-1 plan...
        assert_eq!(choose_batch(100.0, &[(1, 108.0), (2, 85.0)]), 2);
        // ... but not much: lone pictures (camera frames) would pay for the batches.
        assert_eq!(choose_batch(100.0, &[(1, 125.0), (2, 85.0)]), 1);
        // Its batch 1 is never itself the chosen batch.
        assert_eq!(choose_batch(100.0, &[(1, 60.0)]), 1);
    }

    fn bundled() -> std::path::PathBuf {
        Path::new(env!("CARGO_MANIFEST_DIR")).join("../models/clip-shapes/visual/model.onnx")
    }

    /// Distinct picture-like inputs for the bundled model (224x224).
    fn pictures(n: usize) -> Vec<Vec<f32>> {
        (0..n)
            .map(|k| {
                (0..3 * 224 * 224)
                    .map(|i| {
                        (((i * 31 + k * 7919) % 251) as f32 / 125.0 - 1.0) * (1.0 + k as f32 / 4.0)
                    })
                    .collect()
            })
            .collect()
    }

    fn assert_close(a: &[Vec<f32>], b: &[Vec<f32>]) {
        assert_eq!(a.len(), b.len());
        for (x, y) in a.iter().zip(b) {
            let diff = x
                .iter()
                .zip(y)
                .map(|(p, q)| (p - q).abs())
                .fold(0.0f32, f32::max);
            assert!(diff < 1e-5, "max abs diff {diff}");
        }
    }

    #[test]
    fn a_batch_encodes_each_picture_as_batch_1_does() {
        let single = ImageTower::load(&bundled(), 224, 64).unwrap();
        assert_eq!(single.batch(), 1);
        let input = pictures(4);
        let one_by_one: Vec<Vec<f32>> = input
            .iter()
            .map(|p| single.encode(p.clone()).unwrap())
            .collect();
        assert_ne!(one_by_one[0], one_by_one[1]);
        assert_close(&single.encode_batch(&input).unwrap(), &one_by_one);
        let (three, timings) = ImageTower::load_batched(&bundled(), 224, 64, 3).unwrap();
        assert_eq!((three.batch(), timings), (3, BatchTimings::default()));
        // 4 pictures: a run of 3, then a run of 1.
        assert_close(&three.encode_batch(&input).unwrap(), &one_by_one);
        assert!(three.encode_batch(&[]).unwrap().is_empty());
        // A picture of the wrong size is an error, in either plan.
        let mut bad = input;
        bad[1].truncate(10);
        assert!(three.encode_batch(&bad).is_err());
        assert!(single.encode_batch(&bad).is_err());
    }

    /// A stand-in plan for [`measure`]: its batch (`None`: any), and a count of live plans.
    struct Fake(Option<usize>, std::rc::Rc<std::cell::Cell<usize>>);

    impl Drop for Fake {
        fn drop(&mut self) {
            self.1.set(self.1.get() - 1);
        }
    }

    /// Runs [`measure`] with the batch-1 plan timed `single` (in turn) and the any-batch plan
    /// `any[b - 1]` at batch b: the batch and kind of the plan kept, the timings, the builds.
    fn measured(
        single: &[f64],
        any: &[f64],
    ) -> (usize, Option<usize>, BatchTimings, Vec<Option<usize>>) {
        let live = std::rc::Rc::new(std::cell::Cell::new(0));
        let builds = std::cell::RefCell::new(Vec::new());
        let mut singles = single.iter().copied();
        let build = |batch| {
            live.set(live.get() + 1);
            assert_eq!(live.get(), 1, "two plans alive at once");
            builds.borrow_mut().push(batch);
            Ok::<_, ()>(Fake(batch, live.clone()))
        };
        let time = |plan: &Fake, b: usize| {
            Ok(if plan.0.is_some() {
                singles.next().expect("timed once too often")
            } else {
                any[b - 1]
            })
        };
        let (plan, batch, timings) = measure(build, time).unwrap();
        (batch, plan.0, timings, builds.into_inner())
    }

    #[test]
    fn a_batch_that_won_against_a_busy_moment_is_timed_again() {
        // Batch 3 beats the batch-1 plan's first timing (a busy moment), not its second.
        let (batch, kind, t, builds) = measured(&[200.0, 150.0], &[160.0, 150.0, 135.0, 170.0]);
        assert_eq!((batch, kind), (1, Some(1)));
        assert_eq!((t.single_ms, t.single_again_ms), (Some(200.0), Some(150.0)));
        assert_eq!(
            t.batched_ms,
            vec![(1, 160.0), (2, 150.0), (3, 135.0), (4, 170.0)]
        );
        assert_eq!(builds, vec![Some(1), None, Some(1)]);
        // A batch that wins both times is kept, on the any-batch plan built again.
        let (batch, kind, t, builds) = measured(&[150.0, 152.0], &[155.0, 125.0, 118.0, 160.0]);
        assert_eq!((batch, kind, t.single_again_ms), (3, None, Some(152.0)));
        assert_eq!(builds, vec![Some(1), None, Some(1), None]);
        // No batch wins: the batch-1 plan, timed once; larger batches stop at the first loss.
        let (batch, kind, t, builds) = measured(&[6.0], &[9.0, 11.0, 8.0, 7.0]);
        assert_eq!((batch, kind, t.single_again_ms), (1, Some(1), None));
        assert_eq!(t.batched_ms, vec![(1, 9.0), (2, 11.0)]);
        assert_eq!(builds, vec![Some(1), None, Some(1)]);
    }

    #[test]
    fn a_measured_batch_encodes_as_batch_1_does() {
        let (tower, timings) = ImageTower::load_batched(&bundled(), 224, 64, 0).unwrap();
        let single = timings.single_ms.unwrap();
        assert!(single.is_finite() && single > 0.0);
        // The any-batch plan's batch 1, then at least batch 2, at most up to MAX_AUTO_BATCH.
        assert_eq!(timings.batched_ms[0].0, 1);
        assert!(
            (2..=MAX_AUTO_BATCH).contains(&timings.batched_ms.len()),
            "{timings:?}"
        );
        let single = timings
            .single_again_ms
            .map_or(single, |again| again.min(single));
        assert_eq!(tower.batch(), choose_batch(single, &timings.batched_ms));
        let input = pictures(3);
        let reference = ImageTower::load(&bundled(), 224, 64)
            .unwrap()
            .encode_batch(&input)
            .unwrap();
        assert_close(&tower.encode_batch(&input).unwrap(), &reference);
    }
}
