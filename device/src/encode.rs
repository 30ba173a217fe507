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
//!
//! The file is read as a protobuf first ([`read_tower`]): what it declares about its input
//! and output is checked (one float32 input `image` of `[N, 3, S, S]`, one output of `D`
//! values), and a tower whose input fixes the batch (Immich's exports: `[1, 3, 224, 224]`)
//! runs one picture per run without measuring an any-batch plan it cannot have. Weights
//! stored in float16 (`visual/model.f16.onnx`, see models/README.md) are expanded to float32
//! there, before tract sees the graph, so the plan is the float32 tower's.

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
    facts: Arc<TowerFacts>,
}

/// The batch axis of an image tower's input, as its file declares it.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum BatchAxis {
    /// A number (Immich's exports: 1).
    Fixed(i64),
    /// A name (`batch_size`) or nothing: any batch.
    Free(String),
}

/// What an image tower's ONNX file declares, read before tract analyses it.
#[derive(Debug, Clone, PartialEq)]
pub struct TowerFacts {
    /// The input's name (`image` in Immich's layout).
    pub input: String,
    /// The input's element type (`float32`).
    pub input_type: String,
    /// The input's shape, a number or a name per axis (`[1, 3, 224, 224]`).
    pub input_shape: Vec<String>,
    /// The batch axis.
    pub batch: BatchAxis,
    /// The output's name (`embedding`).
    pub output: String,
    /// The output's shape (`[1, 512]`).
    pub output_shape: Vec<String>,
    /// The default domain's opset.
    pub opset: i64,
    /// Weights stored in float16 in the file and expanded to float32 at load.
    pub f16_weights: usize,
}

/// ONNX element types by number, as error messages name them.
fn elem_type_name(t: i32) -> String {
    match t {
        1 => "float32".into(),
        2 => "uint8".into(),
        3 => "int8".into(),
        6 => "int32".into(),
        7 => "int64".into(),
        9 => "bool".into(),
        10 => "float16".into(),
        11 => "float64".into(),
        other => format!("type {other}"),
    }
}

/// The shape of a graph input or output, a number or a name per axis (`?` when unnamed).
fn shape_of(value: &tract_onnx::pb::ValueInfoProto) -> (i32, Option<Vec<String>>) {
    use tract_onnx::pb::tensor_shape_proto::dimension::Value as D;
    use tract_onnx::pb::type_proto::Value as T;
    match value.r#type.as_ref().and_then(|t| t.value.as_ref()) {
        Some(T::TensorType(t)) => (
            t.elem_type,
            t.shape.as_ref().map(|s| {
                s.dim
                    .iter()
                    .map(|d| match &d.value {
                        Some(D::DimValue(v)) => v.to_string(),
                        Some(D::DimParam(p)) if !p.is_empty() => p.clone(),
                        _ => "?".to_string(),
                    })
                    .collect()
            }),
        ),
        None => (0, None),
    }
}

/// Reads an image tower's file: the protobuf, with float16 weights expanded to float32 (each
/// float16 initializer that feeds only `Cast(to = float)` nodes becomes the float32
/// initializer those nodes made, and the casts go), and what it declares about its input and
/// output, checked to be an image tower's. Errors name the file and say what is wrong.
pub fn read_tower(onnx: &Path) -> Result<(tract_onnx::pb::ModelProto, TowerFacts), DeviceError> {
    let bad = |reason: String| DeviceError::Model {
        path: onnx.to_path_buf(),
        reason,
    };
    let meta = std::fs::metadata(onnx).map_err(|e| bad(format!("cannot be read: {e}")))?;
    if meta.len() == 0 {
        return Err(bad("is empty".into()));
    }
    let mut proto = tract_onnx::onnx().proto_model_for_path(onnx).map_err(|e| {
        bad(format!(
            "is not a readable ONNX file (truncated or damaged?): {e:#}"
        ))
    })?;
    let f16_weights = expand_f16(&mut proto).map_err(bad)?;
    let opset = proto
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(0, |o| o.version);
    let graph = proto
        .graph
        .as_ref()
        .ok_or_else(|| bad("holds no graph (truncated?)".into()))?;
    if graph.node.is_empty() {
        return Err(bad("holds no operators (truncated?)".into()));
    }
    let initializers: std::collections::HashSet<&str> =
        graph.initializer.iter().map(|t| t.name.as_str()).collect();
    let inputs: Vec<_> = graph
        .input
        .iter()
        .filter(|i| !initializers.contains(i.name.as_str()))
        .collect();
    let [input] = inputs.as_slice() else {
        let names: Vec<&str> = inputs.iter().map(|i| i.name.as_str()).collect();
        return Err(bad(format!(
            "has {} inputs ({}); an image tower has one, \"image\" (is this a text tower?)",
            names.len(),
            names.join(", ")
        )));
    };
    if input.name != "image" {
        return Err(bad(format!(
            "its input is named {:?}; an image tower in Immich's layout takes \"image\" (is this a text tower, or another exporter's file?)",
            input.name
        )));
    }
    let (input_type, input_shape) = shape_of(input);
    if input_type != 1 {
        return Err(bad(format!(
            "its input \"image\" is {}; the device feeds float32 pictures",
            elem_type_name(input_type)
        )));
    }
    let input_shape = input_shape.unwrap_or_else(|| vec!["?".into(); 4]);
    if input_shape.len() != 4 || input_shape[1].parse::<i64>().is_ok_and(|c| c != 3) {
        return Err(bad(format!(
            "its input \"image\" is [{}]; the device feeds pictures as [N, 3, S, S]",
            input_shape.join(", ")
        )));
    }
    let batch = match input_shape[0].parse::<i64>() {
        Ok(n) => BatchAxis::Fixed(n),
        Err(_) => BatchAxis::Free(input_shape[0].clone()),
    };
    let Some(output) = graph.output.first() else {
        return Err(bad("has no output".into()));
    };
    let output_shape = shape_of(output).1.unwrap_or_default();
    let facts = TowerFacts {
        input: input.name.clone(),
        input_type: elem_type_name(input_type),
        input_shape,
        batch,
        output: output.name.clone(),
        output_shape,
        opset,
        f16_weights,
    };
    Ok((proto, facts))
}

/// Expands float16 weights: every float16 initializer whose every consumer is a
/// `Cast(to = float)` becomes one float32 initializer per cast, named as the cast's output,
/// and those casts are removed, so the graph is the float32 tower's. One initializer at a
/// time, its float16 bytes freed as it goes, so the peak is about the float32 weights.
/// Returns how many initializers were expanded.
fn expand_f16(proto: &mut tract_onnx::pb::ModelProto) -> Result<usize, String> {
    const FLOAT: i64 = 1;
    const FLOAT16: i32 = 10;
    let Some(graph) = proto.graph.as_mut() else {
        return Ok(0);
    };
    let halves: std::collections::HashSet<String> = graph
        .initializer
        .iter()
        .filter(|t| t.data_type == FLOAT16)
        .map(|t| t.name.clone())
        .collect();
    if halves.is_empty() {
        return Ok(0);
    }
    let is_cast_to_float = |n: &tract_onnx::pb::NodeProto| {
        n.op_type == "Cast"
            && n.input.len() == 1
            && n.output.len() == 1
            && n.attribute.iter().any(|a| a.name == "to" && a.i == FLOAT)
    };
    // Initializers every consumer of which is a cast to float (and not a graph output).
    let mut consumers: std::collections::HashMap<&str, (usize, Vec<String>)> =
        std::collections::HashMap::new();
    for n in &graph.node {
        for i in &n.input {
            if halves.contains(i) {
                let e = consumers.entry(i.as_str()).or_default();
                e.0 += 1;
                if is_cast_to_float(n) {
                    e.1.push(n.output[0].clone());
                }
            }
        }
    }
    let outputs: std::collections::HashSet<&str> =
        graph.output.iter().map(|o| o.name.as_str()).collect();
    let expand: std::collections::HashMap<String, Vec<String>> = consumers
        .into_iter()
        .filter(|(name, (all, casts))| *all == casts.len() && !outputs.contains(name))
        .map(|(name, (_, casts))| (name.to_string(), casts))
        .collect();
    if expand.is_empty() {
        return Ok(0);
    }
    let mut expanded = Vec::new();
    for t in graph.initializer.iter_mut() {
        let Some(casts) = expand.get(&t.name) else {
            continue;
        };
        let count: i64 = t.dims.iter().product();
        let bits: Vec<u16> = if !t.raw_data.is_empty() {
            t.raw_data
                .chunks_exact(2)
                .map(|b| u16::from_le_bytes([b[0], b[1]]))
                .collect()
        } else {
            // float16 values may also be stored one per int32.
            t.int32_data.iter().map(|&v| v as u16).collect()
        };
        if bits.len() as i64 != count || t.data_location == Some(1) {
            return Err(format!(
                "float16 weight {} holds {} values, its shape says {count}",
                t.name,
                bits.len()
            ));
        }
        let mut raw = Vec::with_capacity(bits.len() * 4);
        for b in bits {
            raw.extend_from_slice(&f16::from_bits(b).to_f32().to_le_bytes());
        }
        // The float16 bytes go now, before the next weight is expanded.
        t.raw_data = Vec::new();
        t.int32_data = Vec::new();
        for (k, cast_output) in casts.iter().enumerate() {
            let mut f = tract_onnx::pb::TensorProto {
                dims: t.dims.clone(),
                data_type: 1,
                name: cast_output.clone(),
                ..Default::default()
            };
            f.raw_data = if k + 1 == casts.len() {
                std::mem::take(&mut raw)
            } else {
                raw.clone()
            };
            expanded.push(f);
        }
    }
    let n = expand.len();
    graph.initializer.retain(|t| !expand.contains_key(&t.name));
    graph
        .node
        .retain(|node| !(is_cast_to_float(node) && expand.contains_key(&node.input[0])));
    graph.input.retain(|i| !expand.contains_key(&i.name));
    graph.initializer.extend(expanded);
    Ok(n)
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
    /// Why the tower runs one picture per run whatever was asked (a batch the file fixes, an
    /// any-batch plan that cannot be built or run), when that is so.
    pub batch_1_only: Option<String>,
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
/// its batch and every timing. An any-batch plan that cannot be built or run (a graph traced
/// with its batch written into reshapes, though its input names the axis) leaves the batch-1
/// plan, with the reason in [`BatchTimings::batch_1_only`].
fn measure<P, E: std::fmt::Display>(
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
    let mut any_batch = |timings: &mut BatchTimings| -> Result<(), E> {
        let any = build(None)?;
        timings.batched_ms.push((1, time(&any, 1)?));
        let mut best = single_ms(timings);
        for b in 2..=MAX_AUTO_BATCH {
            let ms = time(&any, b)?;
            timings.batched_ms.push((b, ms));
            if ms >= best {
                break;
            }
            best = ms;
        }
        dropped(any);
        Ok(())
    };
    if let Err(e) = any_batch(&mut timings) {
        timings.batched_ms.clear();
        timings.batch_1_only = Some(format!(
            "the tower cannot run several pictures at once: {e}"
        ));
        crate::heap::trim();
        return Ok((build(Some(1))?, 1, timings));
    }
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

/// Optimises a tower read by [`read_tower`] for batches of `batch` pictures, or of any size if
/// `None`. `dir` is the file's folder (where external weight files would be).
fn plan_from(
    proto: tract_onnx::pb::ModelProto,
    dir: Option<&str>,
    size: usize,
    batch: Option<usize>,
) -> TractResult<Arc<TypedRunnableModel>> {
    // The copies of the weights made while loading go back to the system as each is freed.
    let _mapped = crate::heap::LargeBlocksMapped::new();
    let parsed = tract_onnx::onnx()
        // Files that carry symbolic shapes in value_info (dynamo or quantised exports) would
        // otherwise fail to unify the fixed batch with the symbol.
        .with_ignore_value_info(true)
        .parse(&proto, dir)?;
    drop(proto);
    if !parsed.unresolved_inputs.is_empty() {
        return Err(anyhow::anyhow!(
            "inputs of operators found nowhere in the file (truncated?): {:?}",
            parsed.unresolved_inputs
        ));
    }
    let model = parsed.model;
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

/// [`plan_from`] of the file at `onnx`.
fn plan(
    onnx: &Path,
    size: usize,
    batch: Option<usize>,
) -> Result<Arc<TypedRunnableModel>, DeviceError> {
    let (proto, _) = read_tower(onnx)?;
    plan_from(proto, onnx.parent().and_then(Path::to_str), size, batch).map_err(|e| {
        DeviceError::Model {
            path: onnx.to_path_buf(),
            reason: format!("{e:#}"),
        }
    })
}

/// Checks what the file declares against what the model folder says: the picture size of
/// `preprocess_cfg.json` and the `embed_dim` of `config.json`.
fn check_facts(
    onnx: &Path,
    facts: &TowerFacts,
    size: usize,
    dim: usize,
) -> Result<(), DeviceError> {
    let bad = |reason: String| {
        Err(DeviceError::Model {
            path: onnx.to_path_buf(),
            reason,
        })
    };
    for side in &facts.input_shape[2..] {
        if side.parse::<usize>().is_ok_and(|s| s != size) {
            return bad(format!(
                "takes pictures of [{}], visual/preprocess_cfg.json says size {size}",
                facts.input_shape.join(", ")
            ));
        }
    }
    if let Some(d) = facts
        .output_shape
        .last()
        .and_then(|d| d.parse::<usize>().ok())
    {
        if d != dim {
            return bad(format!(
                "outputs {d} values (\"{}\" [{}]), config.json says embed_dim {dim}",
                facts.output,
                facts.output_shape.join(", ")
            ));
        }
    }
    match facts.batch {
        BatchAxis::Fixed(1) | BatchAxis::Free(_) => Ok(()),
        BatchAxis::Fixed(n) => bad(format!(
            "fixes the batch at {n}; the device runs 1 picture at a time or any number"
        )),
    }
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
    /// loading is about that of one plan. A tower whose file fixes the batch at 1 runs one
    /// picture per run whatever `batch` says, without measuring
    /// ([`BatchTimings::batch_1_only`] says so).
    pub fn load_batched(
        onnx: &Path,
        size: usize,
        dim: usize,
        batch: usize,
    ) -> Result<(Self, BatchTimings), DeviceError> {
        let (proto, facts) = read_tower(onnx)?;
        check_facts(onnx, &facts, size, dim)?;
        let facts = Arc::new(facts);
        let dir = onnx.parent().and_then(Path::to_str);
        let err = |e: TractError| DeviceError::Model {
            path: onnx.to_path_buf(),
            reason: format!("{e:#}"),
        };
        let tower = |plan, batch| Self {
            plan,
            size,
            dim,
            batch,
            facts: facts.clone(),
        };
        let fixed = matches!(facts.batch, BatchAxis::Fixed(_));
        if batch == 1 || fixed {
            let t = tower(plan_from(proto, dir, size, Some(1)).map_err(err)?, 1);
            t.check_dim(onnx)?;
            let batch_1_only = (fixed && batch != 1).then(|| {
                format!(
                    "{} fixes the batch at 1 (input \"{}\" [{}])",
                    onnx.display(),
                    facts.input,
                    facts.input_shape.join(", ")
                )
            });
            return Ok((
                t,
                BatchTimings {
                    batch_1_only,
                    ..BatchTimings::default()
                },
            ));
        }
        if batch != 0 {
            drop(proto);
            // A file that names its batch axis but was traced at one batch (its reshapes hold
            // the number) has no any-batch plan: it runs one picture per run, and says why.
            return match plan(onnx, size, None) {
                Ok(any) => {
                    let t = tower(any, batch);
                    t.check_dim(onnx)?;
                    Ok((t, BatchTimings::default()))
                }
                Err(e) => {
                    crate::heap::trim();
                    let t = tower(plan(onnx, size, Some(1))?, 1);
                    t.check_dim(onnx)?;
                    Ok((
                        t,
                        BatchTimings {
                            batch_1_only: Some(format!(
                                "the tower cannot run several pictures at once: {e}"
                            )),
                            ..BatchTimings::default()
                        },
                    ))
                }
            };
        }
        // The first plan built is checked; the later ones come from the same file. The first
        // is built from the protobuf already read.
        let first = std::cell::Cell::new(Some(proto));
        let built = |batch| {
            let plan = match first.take() {
                Some(proto) => plan_from(proto, dir, size, batch).map_err(err)?,
                None => plan(onnx, size, batch)?,
            };
            let t = tower(plan, 1);
            t.check_dim(onnx)?;
            Ok::<_, DeviceError>(t)
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

    /// What the file declares (input, output, batch axis, float16 weights).
    pub fn facts(&self) -> &TowerFacts {
        &self.facts
    }

    /// Refuses a model whose output is not `dim` values per picture (or not a vector at all),
    /// on a picture-like input.
    fn check_dim(&self, onnx: &Path) -> Result<(), DeviceError> {
        let probe = self
            .run(picture_like(self.size, 0), 1)
            .and_then(|mut rows| {
                let mut v = rows.pop().unwrap_or_default();
                normalise(&mut v)?;
                Ok(v)
            })
            .map_err(|e| DeviceError::Model {
                path: onnx.to_path_buf(),
                reason: format!("does not run on a picture: {e}"),
            })?;
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
        let picture = picture_like(self.size, 0);
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

/// A picture-like input of `size`x`size` (values spread over the normalised range), distinct
/// per `seed`.
fn picture_like(size: usize, seed: usize) -> Vec<f32> {
    (0..3 * size * size)
        .map(|i| ((i * 7919 + seed * 104_729) % 255) as f32 / 128.0 - 1.0)
        .collect()
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
        measured_failing(single, any, false)
    }

    /// [`measured`], with an any-batch plan that fails to build when `any_fails`, and that
    /// fails to run where its timing is NaN.
    fn measured_failing(
        single: &[f64],
        any: &[f64],
        any_fails: bool,
    ) -> (usize, Option<usize>, BatchTimings, Vec<Option<usize>>) {
        let live = std::rc::Rc::new(std::cell::Cell::new(0));
        let builds = std::cell::RefCell::new(Vec::new());
        let mut singles = single.iter().copied();
        let build = |batch: Option<usize>| {
            builds.borrow_mut().push(batch);
            if batch.is_none() && any_fails {
                return Err("Reshape volume mismatch".to_string());
            }
            live.set(live.get() + 1);
            assert_eq!(live.get(), 1, "two plans alive at once");
            Ok(Fake(batch, live.clone()))
        };
        let time = |plan: &Fake, b: usize| {
            if plan.0.is_some() {
                Ok(singles.next().expect("timed once too often"))
            } else if any[b - 1].is_nan() {
                Err(format!("batch {b} does not run"))
            } else {
                Ok(any[b - 1])
            }
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
    fn an_any_batch_plan_that_fails_leaves_the_batch_1_plan() {
        let (batch, kind, t, builds) = measured_failing(&[10.0], &[], true);
        assert_eq!((batch, kind), (1, Some(1)));
        assert_eq!(builds, vec![Some(1), None, Some(1)]);
        assert!(t.batched_ms.is_empty());
        assert!(
            t.batch_1_only
                .as_deref()
                .is_some_and(|why| why.contains("Reshape volume mismatch")),
            "{t:?}"
        );
        // One that builds but fails at batch 2.
        let (batch, kind, t, _) = measured_failing(&[10.0], &[9.0, f64::NAN], false);
        assert_eq!((batch, kind), (1, Some(1)));
        assert!(t.batch_1_only.is_some_and(|why| why.contains("batch 2")));
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
