//! Image and text encoding with edgeclip's own code paths: the device path (decode a
//! 4000x3000 JPEG, preprocess, tract image tower), the model alone on one thread, on all cores
//! (one shared plan run by N threads, as the device's workers do; tract's own multithreading;
//! a batched plan), a per-operator profile, tract's kernel choice against each kernel forced
//! (kernels.rs), and the cloud's text tower with and without its cache.

use std::collections::HashMap;
use std::io::Cursor;
use std::num::NonZeroUsize;
use std::path::Path;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use anyhow::Context;
use edgeclip_cloud::encode::TextTower;
use edgeclip_cloud::model::TextModelFolder;
use edgeclip_cloud::tokenize::ClipTokenizer;
use edgeclip_device::encode::ImageTower;
use edgeclip_device::model::ModelFolder;
use edgeclip_device::preprocess::{decode_bytes, DecodeLimits};
use serde_json::{json, Value};
use tract_linalg::multithread::{multithread_tract_scope, Executor};
use tract_onnx::prelude::*;

/// Timings of repeated runs.
#[derive(Debug, Clone)]
pub struct Timing {
    pub ms: Vec<f64>,
}

impl Timing {
    pub fn median(&self) -> f64 {
        percentile(&self.ms, 50.0)
    }
    pub fn json(&self) -> Value {
        json!({"runs": self.ms.len(), "median_ms": self.median(), "p10_ms": percentile(&self.ms, 10.0), "p90_ms": percentile(&self.ms, 90.0)})
    }
}

/// The `p`th percentile (nearest rank) of `values`.
pub fn percentile(values: &[f64], p: f64) -> f64 {
    if values.is_empty() {
        return f64::NAN;
    }
    let mut v = values.to_vec();
    v.sort_by(f64::total_cmp);
    let rank = ((p / 100.0) * v.len() as f64).ceil() as usize;
    v[rank.clamp(1, v.len()) - 1]
}

/// Runs `f` (after one warm-up) until `seconds` have passed and at least `min_runs` ran.
pub fn time<T>(
    seconds: f64,
    min_runs: usize,
    mut f: impl FnMut() -> anyhow::Result<T>,
) -> anyhow::Result<Timing> {
    f()?;
    let mut ms = Vec::new();
    let started = Instant::now();
    while ms.len() < min_runs || started.elapsed().as_secs_f64() < seconds {
        let t = Instant::now();
        std::hint::black_box(f()?);
        ms.push(t.elapsed().as_secs_f64() * 1e3);
    }
    Ok(Timing { ms })
}

/// Items per second when `threads` threads each run `f` in a loop for `seconds`.
pub fn throughput(
    threads: usize,
    seconds: f64,
    f: impl Fn(usize) -> anyhow::Result<()> + Sync,
) -> anyhow::Result<f64> {
    let stop = AtomicBool::new(false);
    let done = AtomicU64::new(0);
    let failed = AtomicBool::new(false);
    // Warm every thread's path once before the clock starts.
    std::thread::scope(|s| {
        for t in 0..threads {
            let f = &f;
            let failed = &failed;
            s.spawn(move || {
                if f(t).is_err() {
                    failed.store(true, Ordering::SeqCst);
                }
            });
        }
    });
    anyhow::ensure!(!failed.load(Ordering::SeqCst), "a worker failed");
    let started = Instant::now();
    std::thread::scope(|s| {
        for t in 0..threads {
            let (f, stop, done, failed) = (&f, &stop, &done, &failed);
            s.spawn(move || {
                while !stop.load(Ordering::Relaxed) {
                    if f(t).is_err() {
                        failed.store(true, Ordering::SeqCst);
                        return;
                    }
                    done.fetch_add(1, Ordering::Relaxed);
                }
            });
        }
        std::thread::sleep(Duration::from_secs_f64(seconds));
        stop.store(true, Ordering::Relaxed);
    });
    anyhow::ensure!(!failed.load(Ordering::SeqCst), "a worker failed");
    // Items finished after `stop` still count, over the time they actually took.
    Ok(done.load(Ordering::SeqCst) as f64 / started.elapsed().as_secs_f64())
}

/// A photo-like 4000x3000 JPEG (quality 90): smooth gradients, hard edges and fine texture,
/// so that its entropy-coded size and decoding cost are those of a 12-megapixel photo.
pub fn photo_jpeg(w: u32, h: u32) -> anyhow::Result<Vec<u8>> {
    let img = image::RgbImage::from_fn(w, h, |x, y| {
        let (fx, fy) = (x as f32 / w as f32, y as f32 / h as f32);
        let disc = ((fx - 0.3).powi(2) + (fy - 0.6).powi(2)) < 0.04;
        let stripe = (x / 37 + y / 53) % 5 == 0;
        let hash = (x.wrapping_mul(2_654_435_761) ^ y.wrapping_mul(40_503))
            .wrapping_mul(2_246_822_519)
            >> 24;
        let texture = (hash % 28) as f32;
        let r = if disc {
            210.0 + texture
        } else {
            40.0 + 150.0 * fx + texture
        };
        let g = if stripe {
            190.0 + texture
        } else {
            60.0 + 120.0 * fy + texture
        };
        let b = 90.0 + 80.0 * (fx * 9.0).sin() * (fy * 7.0).cos() + texture;
        image::Rgb([
            r.clamp(0.0, 255.0) as u8,
            g.clamp(0.0, 255.0) as u8,
            b.clamp(0.0, 255.0) as u8,
        ])
    });
    let mut jpeg = Vec::new();
    image::codecs::jpeg::JpegEncoder::new_with_quality(Cursor::new(&mut jpeg), 90)
        .encode_image(&img)?;
    Ok(jpeg)
}

/// The image tower loaded with tract exactly as `ImageTower::load` does, but for a batch of
/// `batch` pictures (batching is measured here; the device encodes one picture per run).
pub fn plan(onnx: &Path, batch: usize, size: usize) -> anyhow::Result<Arc<TypedRunnableModel>> {
    tract_onnx::onnx()
        .with_ignore_value_info(true)
        .model_for_path(onnx)?
        .with_input_fact(0, f32::fact([batch, 3, size, size]).into())?
        .into_optimized()?
        .into_runnable()
}

/// Time per operator kind over `runs` single-thread runs of `plan` on `input`, largest first.
fn profile(plan: &Arc<TypedRunnableModel>, input: &Tensor, runs: usize) -> anyhow::Result<Value> {
    let mut by_op: HashMap<String, (f64, usize)> = HashMap::new();
    let mut total = 0.0;
    for _ in 0..runs {
        let mut state = plan.spawn()?;
        let started = Instant::now();
        state.run_plan_with_eval(
            tvec!(input.clone().into_tvalue()),
            |ctx, st, node, inputs| {
                let t = Instant::now();
                let out = tract_onnx::tract_core::plan::eval(ctx, st, node, inputs);
                let e = by_op.entry(node.op().name().to_string()).or_default();
                e.0 += t.elapsed().as_secs_f64() * 1e3;
                e.1 += 1;
                out
            },
        )?;
        total += started.elapsed().as_secs_f64() * 1e3;
    }
    let mut ops: Vec<(String, (f64, usize))> = by_op.into_iter().collect();
    ops.sort_by(|a, b| b.1 .0.total_cmp(&a.1 .0));
    let per_run = total / runs as f64;
    Ok(json!({
        "ms_per_run": per_run,
        "ops": ops.iter().take(10).map(|(name, (ms, n))| json!({
            "op": name, "ms_per_run": ms / runs as f64, "share": ms / runs as f64 / per_run, "nodes": n / runs,
        })).collect::<Vec<_>>(),
    }))
}

fn cosine(a: &[f32], b: &[f32]) -> f64 {
    let dot: f64 = a.iter().zip(b).map(|(x, y)| *x as f64 * *y as f64).sum();
    let na: f64 = a.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    let nb: f64 = b.iter().map(|x| (*x as f64).powi(2)).sum::<f64>().sqrt();
    dot / (na * nb)
}

/// Everything about one model's image tower. Writes the model input to `input_out` for the
/// onnxruntime peer.
pub fn image(
    model_dir: &Path,
    jpeg: &[u8],
    cores: usize,
    seconds: f64,
    input_out: &Path,
) -> anyhow::Result<Value> {
    let folder = ModelFolder::open(model_dir, None)?;
    let cfg = folder.preprocess.clone();
    let size = cfg.size as usize;
    let started = Instant::now();
    let tower = ImageTower::load(&folder.visual_onnx(), size, folder.dim)?;
    let load_s = started.elapsed().as_secs_f64();
    let limits = DecodeLimits::default();

    // The two decode paths and their agreement.
    let full_img = decode_bytes(jpeg, limits)?;
    let full_tensor = cfg.tensor(&full_img)?;
    let (fast_tensor, fast_size) = cfg.picture(jpeg, limits)?;
    anyhow::ensure!(
        fast_size == (full_img.width(), full_img.height()),
        "the scaled decode reports another size"
    );
    let v_full = tower.encode(full_tensor.clone())?;
    let v_fast = tower.encode(fast_tensor.clone())?;
    let bytes: Vec<u8> = fast_tensor.iter().flat_map(|v| v.to_le_bytes()).collect();
    std::fs::write(input_out, bytes)?;

    let s = seconds;
    let decode_full = time(s, 3, || Ok(decode_bytes(jpeg, limits)?))?;
    let preprocess_full = time(s, 3, || Ok(cfg.tensor(&full_img)?))?;
    let decode_preprocess_full = time(s, 3, || Ok(cfg.tensor(&decode_bytes(jpeg, limits)?)?))?;
    let decode_preprocess_fast = time(s, 3, || Ok(cfg.picture(jpeg, limits)?))?;
    let model_1t = time(s, 3, || Ok(tower.encode(fast_tensor.clone())?))?;
    let device_path_fast = time(s, 3, || Ok(tower.encode(cfg.picture(jpeg, limits)?.0)?))?;
    let device_path_full = time(s, 3, || {
        Ok(tower.encode(cfg.tensor(&decode_bytes(jpeg, limits)?)?)?)
    })?;

    // All cores: N threads sharing one plan (the device's workers), tract's own threads.
    let model_parallel = throughput(cores, s, |_| {
        Ok(tower.encode(fast_tensor.clone()).map(|_| ())?)
    })?;
    let pool = Executor::multithread(cores);
    let model_tract_mt = time(s, 3, || {
        multithread_tract_scope(pool.clone(), || Ok(tower.encode(fast_tensor.clone())?))
    })?;
    let device_parallel_fast = throughput(cores, s, |_| {
        Ok(tower.encode(cfg.picture(jpeg, limits)?.0).map(|_| ())?)
    })?;
    let device_parallel_full = throughput(cores, s, |_| {
        Ok(tower
            .encode(cfg.tensor(&decode_bytes(jpeg, limits)?)?)
            .map(|_| ())?)
    })?;

    // Batching: a plan for `cores * 2` pictures, on one thread and on N threads.
    let batch = 2 * cores;
    let batched = plan(&folder.visual_onnx(), batch, size)?;
    let mut many = Vec::with_capacity(batch * fast_tensor.len());
    for _ in 0..batch {
        many.extend_from_slice(&fast_tensor);
    }
    let batch_input = Tensor::from_shape(&[batch, 3, size, size], &many)?;
    let batch_1t = time(s, 2, || {
        batched.run(tvec!(batch_input.clone().into_tvalue()))
    })?;
    let batch_mt = time(s, 2, || {
        multithread_tract_scope(pool.clone(), || {
            batched.run(tvec!(batch_input.clone().into_tvalue()))
        })
    })?;
    drop(batched);

    // The device's default: the batch measured at load (`encoder.batch = 0`), run as the
    // image encoder runs it (each worker decodes its batch, then one run of the model).
    let started = Instant::now();
    let (auto, measured) = ImageTower::load_batched(&folder.visual_onnx(), size, folder.dim, 0)?;
    let auto_load_s = started.elapsed().as_secs_f64();
    let b = auto.batch();
    let batch_of = |n: usize| vec![fast_tensor.clone(); n];
    let auto_batch = if b > 1 {
        let v_batch = auto.encode_batch(&batch_of(b))?;
        anyhow::ensure!(
            v_batch.iter().all(|v| cosine(v, &v_fast) > 0.99999),
            "a batch encodes differently"
        );
        let model_1t = time(s, 2, || Ok(auto.encode_batch(&batch_of(b))?))?;
        let model_parallel = b as f64
            * throughput(cores, s, |_| {
                Ok(auto.encode_batch(&batch_of(b)).map(|_| ())?)
            })?;
        // One batch through the whole device path: decode each picture, then one model run.
        let device_batch = || -> anyhow::Result<Vec<Vec<f32>>> {
            let pictures = (0..b)
                .map(|_| Ok(cfg.picture(jpeg, limits)?.0))
                .collect::<anyhow::Result<Vec<_>>>()?;
            Ok(auto.encode_batch(&pictures)?)
        };
        let device_1t = time(s, 2, device_batch)?;
        let device_parallel = b as f64 * throughput(cores, s, |_| device_batch().map(|_| ()))?;
        json!({"batch": b, "load_s": auto_load_s, "single_ms": measured.single_ms, "single_again_ms": measured.single_again_ms, "batched_ms": measured.batched_ms,
               "model_1_thread_ms_per_picture": model_1t.median() / b as f64, "model_parallel_per_s": model_parallel,
               "device_path_1_thread_ms_per_picture": device_1t.median() / b as f64, "device_path_parallel_per_s": device_parallel,
               "decode_preprocess_share": decode_preprocess_fast.median() / (device_1t.median() / b as f64)})
    } else {
        json!({"batch": b, "load_s": auto_load_s, "single_ms": measured.single_ms, "single_again_ms": measured.single_again_ms, "batched_ms": measured.batched_ms})
    };
    drop(auto);

    let single = plan(&folder.visual_onnx(), 1, size)?;
    let one_input = Tensor::from_shape(&[1, 3, size, size], &fast_tensor)?;
    let prof = profile(&single, &one_input, 3)?;
    drop(single);
    let kernels =
        crate::kernels::kernel_choice(&folder.visual_onnx(), size, seconds * 4.0, &one_input)?;

    let best_all_cores = [model_parallel, 1000.0 / model_tract_mt.median()]
        .into_iter()
        .fold(0.0, f64::max);
    Ok(json!({
        "model": folder.id, "dim": folder.dim, "input": size, "weights_bytes": std::fs::metadata(folder.visual_onnx())?.len(),
        "load_s": load_s,
        "jpeg": {"bytes": jpeg.len(), "width": full_img.width(), "height": full_img.height()},
        "early_downscale": {"cosine_full_vs_scaled_embedding": cosine(&v_full, &v_fast),
                            "mean_abs_input_diff": full_tensor.iter().zip(&fast_tensor).map(|(a, b)| (a - b).abs() as f64).sum::<f64>() / full_tensor.len() as f64},
        "decode_full": decode_full.json(),
        "preprocess_full": preprocess_full.json(),
        "decode_preprocess_full": decode_preprocess_full.json(),
        "decode_preprocess_scaled": decode_preprocess_fast.json(),
        "model_1_thread": model_1t.json(),
        "model_tract_multithread": {"threads": cores, "timing": model_tract_mt.json(), "per_s": 1000.0 / model_tract_mt.median()},
        "model_parallel_plans": {"threads": cores, "per_s": model_parallel},
        "model_all_cores_best_per_s": best_all_cores,
        "model_batch": {"batch": batch, "one_thread_ms_per_picture": batch_1t.median() / batch as f64,
                        "multithread_per_s": batch as f64 * 1000.0 / batch_mt.median()},
        "auto_batch": auto_batch,
        "device_path_scaled_1_thread": device_path_fast.json(),
        "device_path_full_1_thread": device_path_full.json(),
        "device_path_scaled_parallel": {"threads": cores, "per_s": device_parallel_fast},
        "device_path_full_parallel": {"threads": cores, "per_s": device_parallel_full},
        "decode_preprocess_share_scaled": decode_preprocess_fast.median() / device_path_fast.median(),
        "decode_preprocess_share_full": decode_preprocess_full.median() / device_path_full.median(),
        "output_first": v_fast.iter().take(8).collect::<Vec<_>>(),
        "profile_1_thread": prof,
        "kernel_choice": kernels,
    }))
}

/// The `i`th of the bench's search texts, short like typed searches (7-11 tokens): the text
/// tower's timings and the end-to-end searches with new texts use the same ones.
pub fn query_text(i: usize) -> String {
    let colours = [
        "red", "green", "blue", "yellow", "purple", "orange", "white", "black",
    ];
    let things = [
        "circle",
        "square",
        "triangle",
        "star",
        "car in the driveway",
        "dog on a beach",
        "birthday cake",
        "mountain lake",
    ];
    format!("a {} {} number {i}", colours[i % 8], things[(i / 8) % 8])
}

/// The cloud's text tower: tokenise + encode per query on one thread and on all cores; the
/// model alone on the queries, on a text of the full context length (which a tower that cuts
/// texts after their end token cannot shorten) and after evicting the caches (as a sporadic
/// search meets it); the cache as the text encoder keeps it. Writes the padded id rows for
/// onnxruntime.
pub fn text(model_dir: &Path, cores: usize, seconds: f64, ids_out: &Path) -> anyhow::Result<Value> {
    let folder = TextModelFolder::open(model_dir, None)?;
    let started = Instant::now();
    let tower = TextTower::load(&folder.textual_onnx(), folder.context_length, folder.dim)?;
    let load_s = started.elapsed().as_secs_f64();
    let tokenizer = ClipTokenizer::from_file(&folder.tokenizer_json(), folder.context_length)?;
    let texts: Vec<String> = (0..64).map(query_text).collect();
    let rows: Vec<Vec<i64>> = texts
        .iter()
        .map(|t| tokenizer.encode(t))
        .collect::<Result<_, _>>()?;
    let bytes: Vec<u8> = rows
        .iter()
        .flatten()
        .flat_map(|v| v.to_le_bytes())
        .collect();
    std::fs::write(ids_out, bytes)?;
    let i = AtomicU64::new(0);
    let next = || i.fetch_add(1, Ordering::Relaxed) as usize % texts.len();
    let tokenize = time(seconds / 2.0, 20, || Ok(tokenizer.encode(&texts[next()])?))?;
    let model_1t = time(seconds, 5, || Ok(tower.encode(&rows[next()])?))?;
    let mut longest = vec![320i64; folder.context_length];
    longest[0] = 49406;
    longest[folder.context_length - 1] = 49407;
    let model_longest = time(seconds / 2.0, 3, || Ok(tower.encode(&longest)?))?;
    // As a search meets it: the weights out of the caches (queries are sporadic, and the
    // device's scan of the vectors runs in between), read again from memory.
    let evict = vec![1u8; 256 << 20];
    let mut cold = Vec::new();
    for k in 0..12 {
        std::hint::black_box(evict.iter().step_by(64).map(|&b| u64::from(b)).sum::<u64>());
        let t = Instant::now();
        std::hint::black_box(tower.encode(&rows[k % rows.len()])?);
        cold.push(t.elapsed().as_secs_f64() * 1e3);
    }
    drop(evict);
    let model_cold = Timing { ms: cold };
    let cut_lengths: Vec<usize> = rows
        .iter()
        .map(|r| {
            if tower.cuts() {
                edgeclip_cloud::encode::cut_length(r)
            } else {
                r.len()
            }
        })
        .collect();
    let full_1t = time(seconds, 5, || {
        let ids = tokenizer.encode(&texts[next()])?;
        Ok(tower.encode(&ids)?)
    })?;
    let parallel = throughput(cores, seconds, |_| {
        let ids = tokenizer.encode(&texts[next()])?;
        tower.encode(&ids).map(|_| ()).context("encode")
    })?;
    let pool = Executor::multithread(cores);
    let tract_mt = time(seconds, 5, || {
        multithread_tract_scope(pool.clone(), || Ok(tower.encode(&rows[next()])?))
    })?;
    // The text encoder's cache: an LRU of text -> vector, looked up and cloned per request.
    let mut cache: lru::LruCache<String, Vec<f32>> =
        lru::LruCache::new(NonZeroUsize::new(1024).context("cache size")?);
    for (t, r) in texts.iter().zip(&rows) {
        cache.put(t.clone(), tower.encode(r)?);
    }
    let mut k = 0usize;
    let hits = time(0.5, 1000, || {
        k += 1;
        cache
            .get(&texts[k % texts.len()])
            .cloned()
            .context("cache miss")
    })?;
    Ok(json!({
        "model": folder.id, "dim": folder.dim, "context_length": folder.context_length,
        "weights_bytes": std::fs::metadata(folder.textual_onnx())?.len(), "load_s": load_s,
        "tokenize": tokenize.json(),
        "cuts": tower.cuts(), "cut_lengths": cut_lengths,
        "model_1_thread": model_1t.json(),
        "model_1_thread_full_context": model_longest.json(),
        "model_1_thread_cold_caches": model_cold.json(),
        "tokenize_and_model_1_thread": full_1t.json(),
        "queries_per_s_per_core": 1000.0 / full_1t.median(),
        "parallel_workers": {"threads": cores, "per_s": parallel},
        "model_tract_multithread": {"threads": cores, "timing": tract_mt.json(), "per_s": 1000.0 / tract_mt.median()},
        "cache_hit": {"median_us": hits.median() * 1000.0, "per_s_per_core": 1000.0 / hits.median(),
                       "note": "lru::LruCache<String, Vec<f32>> get + clone, as the cloud's text encoder answers a cached text"},
    }))
}
