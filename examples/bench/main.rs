//! edgeclip's benchmark suite: every comparison side by side in one run on one machine. Image
//! encoding (device path and model alone) and text encoding against onnxruntime on the same
//! ONNX files and inputs; ranking against NumPy and FAISS on the same vectors; end-to-end
//! search latency over loopback MQTT (embedded broker and Mosquitto) and the device's memory;
//! the machine's peak matmul rate and memory bandwidth as the physical limits. Prints tables
//! and writes target/bench/results.json. Run it with `bash bench/run` (see BENCHMARKS.md).
//!
//! `target/release/examples/bench [--seconds S] [--only image,text,rank,system] [--quick]`

mod alloc;
mod encoding;
mod kernels;
mod machine;
mod ranking;
mod system;

use std::path::{Path, PathBuf};
use std::process::Command;

use anyhow::Context;
use clap::Parser;
use serde_json::{json, Value};

#[global_allocator]
static ALLOCATOR: alloc::Counting = alloc::Counting;

#[derive(Parser, Debug)]
#[command(about = "edgeclip's benchmark suite against onnxruntime, NumPy, FAISS and the hardware")]
struct Args {
    /// Seconds spent on each timed measurement.
    #[arg(long, default_value_t = 4.0)]
    seconds: f64,
    /// Sections to run (comma-separated): image, text, rank, system. Default: all.
    #[arg(long, value_delimiter = ',')]
    only: Vec<String>,
    /// Smaller run: 100,000 vectors only, fewer searches.
    #[arg(long)]
    quick: bool,
    /// The real-size model (ViT-B-32 in the Immich layout; made by models/export_full.py).
    #[arg(long, default_value = "models/full/ViT-B-32")]
    full_model: PathBuf,
    /// MobileCLIP-S1 (image tower measured only; made by `models/export_full.py --model MobileCLIP-S1`).
    #[arg(long, default_value = "models/full/MobileCLIP-S1")]
    mobileclip: PathBuf,
    /// Python with onnxruntime, numpy and faiss-cpu.
    #[arg(long, env = "BENCH_PYTHON", default_value = "python3")]
    python: PathBuf,
    /// Where the numbers go.
    #[arg(long, default_value = "target/bench/results.json")]
    out: PathBuf,
    /// Only print the tables of an earlier run's results file.
    #[arg(long)]
    tables_from: Option<PathBuf>,
    /// Where the `edgeclip-device` and `edgeclip-cloud` programs measured end to end are
    /// (for example target/dist for the size-tuned build shipped to devices). Default: next to
    /// this program.
    #[arg(long)]
    bin_dir: Option<PathBuf>,
}

struct Model {
    name: &'static str,
    dir: PathBuf,
    /// Only the image tower is measured (no text, no end-to-end run).
    image_only: bool,
}

fn main() -> anyhow::Result<()> {
    let args = Args::parse();
    if let Some(path) = &args.tables_from {
        let results: Value = serde_json::from_slice(&std::fs::read(path)?)?;
        print_tables(
            &results,
            results["machine"]["cores"].as_u64().unwrap_or(1) as usize,
        );
        return Ok(());
    }
    let wants = |s: &str| args.only.is_empty() || args.only.iter().any(|o| o == s);
    let cores = std::thread::available_parallelism()
        .map(|n| n.get())
        .unwrap_or(1);
    let work = PathBuf::from("target/bench");
    let data_dir = work.join("data");
    std::fs::create_dir_all(&data_dir)?;
    // Counted before any other thread exists, so the counts are this code's alone.
    let zero_copy = alloc::zero_copy(512, 100_000)?;
    let machine = machine::describe();
    eprintln!("machine: {machine}");
    let mut results = json!({"machine": machine, "command": std::env::args().collect::<Vec<_>>(), "zero_copy": zero_copy});
    let started = std::time::Instant::now();

    eprintln!("memory bandwidth ...");
    results["bandwidth"] = json!([
        machine::bandwidth(1 << 30, 1),
        machine::bandwidth(1 << 30, cores)
    ]);

    let mut models = vec![Model {
        name: "clip-shapes",
        dir: PathBuf::from("models/clip-shapes"),
        image_only: false,
    }];
    if args.full_model.join("visual/model.onnx").is_file() {
        models.push(Model {
            name: "ViT-B-32",
            dir: args.full_model.clone(),
            image_only: false,
        });
    } else {
        let why = format!(
            "{} is missing: make it with `python3 models/export_full.py` (open_clip ViT-B-32, random weights, ~600 MB)",
            args.full_model.display()
        );
        eprintln!("skipping ViT-B-32: {why}");
        results["skipped"] = json!([{"model": "ViT-B-32", "why": why}]);
    }
    if args.mobileclip.join("visual/model.onnx").is_file() {
        models.push(Model {
            name: "MobileCLIP-S1",
            dir: args.mobileclip.clone(),
            image_only: true,
        });
    } else {
        eprintln!(
            "skipping MobileCLIP-S1: {} is missing (models/export_full.py --model MobileCLIP-S1)",
            args.mobileclip.display()
        );
    }

    // Python tasks, filled in as the Rust side writes the shared inputs.
    let mut py_tasks: Vec<Value> =
        vec![json!({"task": "peak_matmul", "n": 2048, "seconds": args.seconds})];
    let mut flops_tasks: Vec<Value> = Vec::new();

    let jpeg = encoding::photo_jpeg(4000, 3000)?;
    let photo = data_dir.join("photo_4000x3000.jpg");
    std::fs::write(&photo, &jpeg)?;
    for m in &models {
        if wants("image") {
            eprintln!("image encoding, {} ...", m.name);
            let input = data_dir.join(format!("image_input_{}.f32", m.name));
            let r = encoding::image(&m.dir, &jpeg, cores, args.seconds, &input)
                .with_context(|| format!("image encoding of {}", m.name))?;
            let size = r["input"].as_u64().unwrap_or(224);
            let onnx = m.dir.join("visual/model.onnx");
            py_tasks.push(json!({"task": "onnx", "name": format!("image/{}", m.name), "onnx": onnx, "input": input,
                                 "dtype": "float32", "shape": [1, 3, size, size], "rows": 1, "seconds": args.seconds}));
            if let Some(b) = r["auto_batch"]["batch"].as_u64().filter(|&b| b > 1) {
                py_tasks.push(json!({"task": "onnx", "name": format!("image-batch/{}", m.name), "onnx": onnx, "input": input,
                                     "dtype": "float32", "shape": [1, 3, size, size], "rows": 1, "batch": b, "seconds": args.seconds}));
            }
            flops_tasks.push(json!({"task": "flops", "name": format!("flops/image/{}", m.name), "onnx": onnx, "input_shape": [1, 3, size, size]}));
            flops_tasks.push(json!({"task": "preprocess", "name": format!("preprocess/{}", m.name), "jpeg": &photo,
                                    "cfg": m.dir.join("visual/preprocess_cfg.json"), "seconds": args.seconds}));
            results["image"][m.name] = r;
        }
        if wants("text") && !m.image_only {
            eprintln!("text encoding, {} ...", m.name);
            let ids = data_dir.join(format!("text_ids_{}.i64", m.name));
            let r = encoding::text(&m.dir, cores, args.seconds, &ids)
                .with_context(|| format!("text encoding of {}", m.name))?;
            let ctx = r["context_length"].as_u64().unwrap_or(77);
            let onnx = m.dir.join("textual/model.onnx");
            py_tasks.push(json!({"task": "onnx", "name": format!("text/{}", m.name), "onnx": onnx, "input": ids,
                                 "dtype": "int64", "shape": [1, ctx], "rows": 64, "seconds": args.seconds}));
            flops_tasks.push(json!({"task": "flops", "name": format!("flops/text/{}", m.name), "onnx": onnx, "input_shape": [1, ctx]}));
            if r["cuts"].as_bool() == Some(true) {
                // onnxruntime on the same rows cut as edgeclip cuts them: the engines compared
                // on equal work, next to the padded rows other deployments feed.
                py_tasks.push(json!({"task": "onnx", "name": format!("text-cut/{}", m.name), "onnx": onnx, "input": ids,
                                     "dtype": "int64", "shape": [1, ctx], "rows": 64, "seconds": args.seconds,
                                     "cut_after_argmax": true}));
                let mut lengths: Vec<u64> = r["cut_lengths"]
                    .as_array()
                    .map(|a| a.iter().filter_map(Value::as_u64).collect())
                    .unwrap_or_default();
                lengths.sort_unstable();
                lengths.dedup();
                for l in lengths {
                    flops_tasks.push(json!({"task": "flops", "name": format!("flops/text/{}/{l}", m.name), "onnx": onnx, "input_shape": [1, l]}));
                }
            }
            results["text"][m.name] = r;
        }
    }

    let sizes: Vec<usize> = if args.quick {
        vec![100_000]
    } else {
        vec![100_000, 1_000_000]
    };
    let threads: Vec<usize> = if cores > 1 { vec![1, cores] } else { vec![1] };
    if wants("rank") {
        eprintln!("ranking data ...");
        let biggest = *sizes.iter().max().unwrap_or(&100_000);
        let queries = if args.quick { 20 } else { 40 };
        let data = ranking::data(&data_dir, biggest, 512, queries)?;
        results["rank"]["edgeclip"] =
            json!(ranking::edgeclip(&data, &sizes, &threads, 10, queries)?);
        drop(data);
        py_tasks.push(json!({"task": "rank", "dir": data_dir, "n": sizes, "dim": 512, "k": 10, "queries": queries, "types": ["f32", "f16", "i8"]}));
    }

    for &t in &threads {
        eprintln!("python peers, {t} thread(s) ...");
        let mut tasks = py_tasks.clone();
        if t == 1 {
            tasks.extend(flops_tasks.iter().cloned());
        }
        results["python"][t.to_string()] = python(&args.python, t, &tasks, &work)?;
    }

    if wants("system") {
        let bin_dir = match &args.bin_dir {
            Some(dir) => dir.clone(),
            None => std::env::current_exe()?
                .parent()
                .and_then(Path::parent)
                .map(Path::to_path_buf)
                .context("binary folder")?,
        };
        anyhow::ensure!(
            bin_dir.join("edgeclip-device").is_file() && bin_dir.join("edgeclip-cloud").is_file(),
            "edgeclip-device and edgeclip-cloud are not in {}: build the workspace first (bash bench/run does), or name their folder with --bin-dir",
            bin_dir.display()
        );
        results["system_programs"] = json!(bin_dir);
        let runtime = tokio::runtime::Builder::new_multi_thread()
            .worker_threads(2)
            .enable_all()
            .build()?;
        let pictures = 100_000;
        for m in models.iter().filter(|m| !m.image_only) {
            eprintln!("end to end, {} ...", m.name);
            let (state, photos, rank) = system::prepare_state(&work, &m.dir, pictures)?;
            let setup = system::Setup {
                bin_dir: &bin_dir,
                work: &work,
                model: &m.dir,
                state: &state,
                photos: &photos,
                pictures: pictures as u64,
                warm: if args.quick { 50 } else { 200 },
                cold: if args.quick { 10 } else { 40 },
                memory: true,
            };
            let broker = edgeclip::broker::EmbeddedBroker::start_on_free_port()?;
            let mut runs = vec![runtime.block_on(system::run(
                &setup,
                "embedded (rumqttd)",
                broker.addr().port(),
            ))?];
            if let Some((port, _mosquitto)) = system::mosquitto(&work)? {
                let setup = system::Setup {
                    memory: false,
                    ..setup
                };
                runs.push(runtime.block_on(system::run(&setup, "mosquitto", port))?);
            }
            results["system"][m.name] = json!({"index": rank, "runs": runs});
            let _ = std::fs::remove_dir_all(&state);
        }
    }

    results["load_average_at_end"] = json!(machine::load_average());
    results["took_s"] = json!(started.elapsed().as_secs_f64());
    if let Some(dir) = args.out.parent() {
        std::fs::create_dir_all(dir)?;
    }
    std::fs::write(&args.out, serde_json::to_string_pretty(&results)?)?;
    print_tables(&results, cores);
    println!("\nwritten to {}", args.out.display());
    Ok(())
}

/// Runs bench/reference.py with `threads` threads on `tasks`; its JSON answer.
fn python(python: &Path, threads: usize, tasks: &[Value], work: &Path) -> anyhow::Result<Value> {
    let spec = work.join(format!("python-spec-{threads}.json"));
    std::fs::write(&spec, serde_json::to_string_pretty(tasks)?)?;
    let out = Command::new(python)
        .arg("bench/reference.py")
        .arg("--threads")
        .arg(threads.to_string())
        .arg(&spec)
        .stderr(std::process::Stdio::inherit())
        .output()
        .with_context(|| {
            format!(
                "running {} (set BENCH_PYTHON to a Python with onnxruntime, numpy, faiss-cpu)",
                python.display()
            )
        })?;
    anyhow::ensure!(
        out.status.success(),
        "bench/reference.py failed with {}",
        out.status
    );
    let tasks: Value =
        serde_json::from_slice(&out.stdout).context("bench/reference.py printed no JSON")?;
    Ok(tasks)
}

fn task<'a>(results: &'a Value, threads: usize, name: &str) -> Option<&'a Value> {
    results["python"][threads.to_string()]["tasks"]
        .as_array()?
        .iter()
        .find(|t| t["name"] == name)
}

fn f(v: &Value) -> f64 {
    v.as_f64().unwrap_or(f64::NAN)
}

fn print_tables(r: &Value, cores: usize) {
    let m = &r["machine"];
    println!(
        "\n{} | {} cores | {:.1} GiB | load at start {}",
        m["cpu"].as_str().unwrap_or("?"),
        m["cores"],
        f(&m["memory_gib"]),
        m["load_average_at_start"]
    );
    let peak = |t: usize| {
        task(r, t, "peak_matmul")
            .map(|p| f(&p["gflops_best"]))
            .unwrap_or(f64::NAN)
    };
    let bandwidth = |t: usize, key: &str| {
        r["bandwidth"]
            .as_array()
            .and_then(|a| a.iter().find(|b| b["threads"] == t))
            .map(|b| f(&b[key]))
            .unwrap_or(f64::NAN)
    };
    // The physical limit a scan is compared with: a large memory copy (bytes read + written).
    let bw = |t: usize| bandwidth(t, "copy_gb_s_read_plus_write");
    println!("peak matmul (NumPy/OpenBLAS sgemm 2048): 1 thread {:.1} GFLOP/s, {cores} threads {:.1} GFLOP/s", peak(1), peak(cores));
    println!(
        "memory bandwidth, 1 GiB copy (read + write): 1 thread {:.1} GB/s, {cores} threads {:.1} GB/s; read-only sum: {:.1} / {:.1} GB/s",
        bw(1),
        bw(cores),
        bandwidth(1, "read_gb_s"),
        bandwidth(cores, "read_gb_s")
    );

    if let Some(images) = r["image"].as_object() {
        println!("\nIMAGE ENCODING (4000x3000 JPEG; model input as each model says: 224 or 256)");
        println!(
            "{:<12} {:<44} {:>11} {:>11} {:>7} {:>8}",
            "model", "measure", "edgeclip", "onnxrt", "ratio", "of peak"
        );
        for (name, e) in images {
            let flops = task(r, 1, &format!("flops/image/{name}"))
                .map(|t| f(&t["flops"]))
                .unwrap_or(f64::NAN);
            let ort1 = task(r, 1, &format!("image/{name}"))
                .map(|t| f(&t["one_session"]["median_ms"]))
                .unwrap_or(f64::NAN);
            let ortn = task(r, cores, &format!("image/{name}"))
                .map(|t| f(&t["one_session"]["per_s"]).max(f(&t["parallel_sessions"]["per_s"])))
                .unwrap_or(f64::NAN);
            let t1 = f(&e["model_1_thread"]["median_ms"]);
            let tn = f(&e["model_all_cores_best_per_s"]);
            println!(
                "{name:<12} {:<44} {:>8.1} ms {:>8.1} ms {:>7.2} {:>7.0}%",
                "model alone, 1 thread (latency)",
                t1,
                ort1,
                ort1 / t1,
                100.0 * flops / (t1 / 1e3) / (peak(1) * 1e9)
            );
            println!(
                "{name:<12} {:<44} {:>7.1} /s  {:>7.1} /s  {:>7.2} {:>7.0}%",
                format!("model alone, {cores} cores (pictures/s)"),
                tn,
                ortn,
                tn / ortn,
                100.0 * flops * tn / (peak(cores) * 1e9)
            );
            println!(
                "{name:<12} {:<44} {:>8.1} ms",
                "  tract multithread executor, 1 picture",
                f(&e["model_tract_multithread"]["timing"]["median_ms"])
            );
            println!(
                "{name:<12} {:<44} {:>7.1} /s",
                format!("  {cores} plans in parallel"),
                f(&e["model_parallel_plans"]["per_s"])
            );
            println!(
                "{name:<12} {:<44} {:>7.1} /s",
                format!("  batch {} with tract threads", e["model_batch"]["batch"]),
                f(&e["model_batch"]["multithread_per_s"])
            );
            let kc = &e["kernel_choice"];
            if kc.is_object() {
                println!(
                    "{name:<12} {:<44} {:>8.1} ms  best forced {} {:.1} ms: {:.2}x tract's time",
                    "  tract's kernel choice (products forced)",
                    f(&kc["tract_choice"]["timing"]["median_ms"]),
                    kc["best_forced"].as_str().unwrap_or("?"),
                    f(&kc["best_forced_ms"]),
                    f(&kc["tract_choice_vs_best_forced"])
                );
            }
            let ab = &e["auto_batch"];
            let b = ab["batch"].as_u64().unwrap_or(1);
            if b > 1 {
                let per_picture = |t: &Value| f(&t["one_session"]["median_ms"]) / b as f64;
                let ortb1 = task(r, 1, &format!("image-batch/{name}"))
                    .map(per_picture)
                    .unwrap_or(f64::NAN);
                let ortbn = task(r, cores, &format!("image-batch/{name}"))
                    .map(|t| {
                        b as f64
                            * f(&t["one_session"]["per_s"]).max(f(&t["parallel_sessions"]["per_s"]))
                    })
                    .unwrap_or(f64::NAN);
                let tb1 = f(&ab["model_1_thread_ms_per_picture"]);
                let tbn = f(&ab["model_parallel_per_s"]);
                println!(
                    "{name:<12} {:<44} {:>8.1} ms {:>8.1} ms {:>7.2} {:>7.0}%",
                    format!("batch {b} (measured at load), 1 thread, /picture"),
                    tb1,
                    ortb1,
                    ortb1 / tb1,
                    100.0 * flops / (tb1 / 1e3) / (peak(1) * 1e9)
                );
                println!(
                    "{name:<12} {:<44} {:>8.1} ms {:>11} {:>7.2}",
                    "  against onnxruntime at batch 1",
                    tb1,
                    "",
                    ort1 / tb1
                );
                println!(
                    "{name:<12} {:<44} {:>7.1} /s  {:>7.1} /s  {:>7.2} {:>7.0}%",
                    format!("batch {b}, {cores} cores (pictures/s)"),
                    tbn,
                    ortbn,
                    tbn / ortbn,
                    100.0 * flops * tbn / (peak(cores) * 1e9)
                );
                println!(
                    "{name:<12} {:<44} {:>7.1} /s  {:>10} {:>7.2}",
                    "  against onnxruntime at batch 1",
                    tbn,
                    "",
                    tbn / ortn
                );
            } else {
                println!(
                    "{name:<12} {:<44} {:>8}",
                    "batch measured at load",
                    format!("1 ({:.1} ms; {})", f(&ab["single_ms"]), ab["batched_ms"])
                );
            }
            println!(
                "{name:<12} {:<44} {:>8.1} ms",
                "decode+preprocess, full decode",
                f(&e["decode_preprocess_full"]["median_ms"])
            );
            println!(
                "{name:<12} {:<44} {:>8.1} ms",
                "decode+preprocess, DCT-scaled decode",
                f(&e["decode_preprocess_scaled"]["median_ms"])
            );
            if let Some(p) =
                task(r, 1, &format!("preprocess/{name}")).filter(|p| p["skipped"].is_null())
            {
                let pillow = format!(
                    "Pillow {} (libjpeg-turbo {})",
                    p["pillow"].as_str().unwrap_or("?"),
                    p["libjpeg_turbo"].as_str().unwrap_or("?")
                );
                for (label, key) in [
                    ("full decode", "decode_preprocess_full"),
                    ("DCT-scaled decode", "decode_preprocess_scaled"),
                ] {
                    let theirs = f(&p[key]["median_ms"]);
                    println!(
                        "{name:<12} {:<44} {:>8.1} ms  edgeclip {:.2}x its speed",
                        format!("  {pillow}, {label}"),
                        theirs,
                        theirs / f(&e[key]["median_ms"])
                    );
                }
                println!(
                    "{name:<12} {:<44} {:>8.1} ms  (full {:.1} ms)",
                    "  of which libjpeg-turbo's scaled decode alone",
                    f(&p["decode_scaled"]["median_ms"]),
                    f(&p["decode_full"]["median_ms"])
                );
            }
            println!(
                "{name:<12} {:<44} {:>8.1} ms  share {:.0}% (full decode: {:.0}%)",
                "device path, 1 thread",
                f(&e["device_path_scaled_1_thread"]["median_ms"]),
                100.0 * f(&e["decode_preprocess_share_scaled"]),
                100.0 * f(&e["decode_preprocess_share_full"])
            );
            println!(
                "{name:<12} {:<44} {:>7.1} /s  (full decode: {:.1} /s)",
                format!("device path, {cores} workers"),
                f(&e["device_path_scaled_parallel"]["per_s"]),
                f(&e["device_path_full_parallel"]["per_s"])
            );
            if b > 1 {
                println!(
                    "{name:<12} {:<44} {:>8.1} ms  share {:.0}%",
                    format!("device path, batch {b}, 1 thread, /picture"),
                    f(&ab["device_path_1_thread_ms_per_picture"]),
                    100.0 * f(&ab["decode_preprocess_share"])
                );
                println!(
                    "{name:<12} {:<44} {:>7.1} /s",
                    format!("device path, batch {b}, {cores} workers"),
                    f(&ab["device_path_parallel_per_s"])
                );
            }
            println!(
                "{name:<12} {:<44} {:>11.6}",
                "embedding cosine, scaled vs full decode",
                f(&e["early_downscale"]["cosine_full_vs_scaled_embedding"])
            );
        }
    }
    if let Some(texts) = r["text"].as_object() {
        println!("\nTEXT ENCODING (cloud; one query at a time)");
        println!(
            "{:<12} {:<44} {:>11} {:>11} {:>7} {:>8}",
            "model", "measure", "edgeclip", "onnxrt", "ratio", "of peak"
        );
        for (name, e) in texts {
            let flops = task(r, 1, &format!("flops/text/{name}"))
                .map(|t| f(&t["flops"]))
                .unwrap_or(f64::NAN);
            let ort1 = task(r, 1, &format!("text/{name}"))
                .map(|t| f(&t["one_session"]["median_ms"]))
                .unwrap_or(f64::NAN);
            let ortn = task(r, cores, &format!("text/{name}"))
                .map(|t| f(&t["one_session"]["per_s"]).max(f(&t["parallel_sessions"]["per_s"])))
                .unwrap_or(f64::NAN);
            let m1 = f(&e["model_1_thread"]["median_ms"]);
            let cut_lengths: Vec<u64> = e["cut_lengths"]
                .as_array()
                .map(|a| a.iter().filter_map(Value::as_u64).collect())
                .unwrap_or_default();
            // the FLOPs of the work actually done: the mean over the queries at their cut lengths
            let query_flops = if e["cuts"].as_bool() == Some(true) && !cut_lengths.is_empty() {
                cut_lengths
                    .iter()
                    .map(|l| {
                        task(r, 1, &format!("flops/text/{name}/{l}"))
                            .map(|t| f(&t["flops"]))
                            .unwrap_or(f64::NAN)
                    })
                    .sum::<f64>()
                    / cut_lengths.len() as f64
            } else {
                flops
            };
            let of_peak = |ms: f64, fl: f64| 100.0 * fl / (ms / 1e3) / (peak(1) * 1e9);
            println!(
                "{name:<12} {:<44} {:>7.1} /s  {:>7.1} /s  {:>7.2} {:>7.0}%",
                "model alone, queries/s per core",
                1000.0 / m1,
                1000.0 / ort1,
                ort1 / m1,
                of_peak(m1, query_flops)
            );
            if e["cuts"].as_bool() == Some(true) {
                let mean_len =
                    cut_lengths.iter().sum::<u64>() as f64 / cut_lengths.len().max(1) as f64;
                let ort_cut = task(r, 1, &format!("text-cut/{name}"))
                    .map(|t| f(&t["one_session"]["median_ms"]))
                    .unwrap_or(f64::NAN);
                println!(
                    "{name:<12} {:<44} {:>7.1} /s  {:>7.1} /s  {:>7.2}",
                    format!("  same, both cut ({mean_len:.1} tokens on average)"),
                    1000.0 / m1,
                    1000.0 / ort_cut,
                    ort_cut / m1
                );
                let ml = f(&e["model_1_thread_full_context"]["median_ms"]);
                println!(
                    "{name:<12} {:<44} {:>7.1} /s  {:>7.1} /s  {:>7.2} {:>7.0}%",
                    "  a text of the full context length",
                    1000.0 / ml,
                    1000.0 / ort1,
                    ort1 / ml,
                    of_peak(ml, flops)
                );
            }
            println!(
                "{name:<12} {:<44} {:>7.1} /s",
                "tokenize + model, queries/s per core",
                f(&e["queries_per_s_per_core"])
            );
            if e["model_1_thread_cold_caches"].is_object() {
                println!(
                    "{name:<12} {:<44} {:>8.2} ms",
                    "model alone, caches evicted first",
                    f(&e["model_1_thread_cold_caches"]["median_ms"])
                );
            }
            let tn =
                f(&e["parallel_workers"]["per_s"]).max(f(&e["model_tract_multithread"]["per_s"]));
            println!(
                "{name:<12} {:<44} {:>7.1} /s  {:>7.1} /s  {:>7.2}",
                format!("{cores} cores, queries/s"),
                tn,
                ortn,
                tn / ortn
            );
            println!(
                "{name:<12} {:<44} {:>7.0} /s",
                "cache hit, queries/s per core",
                f(&e["cache_hit"]["per_s_per_core"])
            );
        }
    }
    if let Some(ours) = r["rank"]["edgeclip"].as_array() {
        println!("\nRANKING (top-10 of n vectors, dim 512; one query at a time; ratio = peer time / edgeclip time)");
        println!(
            "{:>8} {:>4} {:>3} {:>11} {:>11} {:>11} {:>8} {:>8} {:>8} {:>9}",
            "n",
            "type",
            "thr",
            "edgeclip",
            "numpy",
            "faiss",
            "vs np",
            "vs faiss",
            "GB/s",
            "of copy"
        );
        for e in ours {
            let (n, ty, t) = (
                &e["n"],
                &e["type"],
                e["threads"].as_u64().unwrap_or(1) as usize,
            );
            let peer = |engine: &str| {
                r["python"][t.to_string()]["tasks"]
                    .as_array()
                    .and_then(|ts| ts.iter().find(|x| x["task"] == "rank"))
                    .and_then(|x| x["results"].as_array())
                    .and_then(|rs| {
                        rs.iter()
                            .find(|x| x["engine"] == engine && &x["n"] == n && &x["type"] == ty)
                    })
                    .map(|x| f(&x["median_ms"]))
                    .unwrap_or(f64::NAN)
            };
            let ms = f(&e["median_ms"]);
            let (np, fa) = (peer("numpy"), peer("faiss"));
            println!(
                "{:>8} {:>4} {:>3} {:>8.2} ms {:>8.2} ms {:>8.2} ms {:>8.2} {:>8.2} {:>8.1} {:>8.0}%",
                n, ty.as_str().unwrap_or("?"), t, ms, np, fa, np / ms, fa / ms, f(&e["gb_s"]), 100.0 * f(&e["gb_s"]) / bw(t)
            );
        }
    }
    if let Some(systems) = r["system"].as_object() {
        println!("\nEND TO END (100,000 pictures, int8; send search -> results, ms)");
        println!(
            "{:<12} {:<20} {:<12} {:>7} {:>7} {:>9} {:>11} {:>9}",
            "model", "broker", "text", "p50", "p99", "ranking", "text enc.", "transport"
        );
        for (name, s) in systems {
            // Files before the ranking used every core name the one-thread figure.
            let rank = s["index"]
                .get("rank_i8_median_ms")
                .map(f)
                .unwrap_or_else(|| f(&s["index"]["rank_i8_1_thread_median_ms"]));
            // A new text meets the text tower with its weights out of the caches: the cold
            // figure where the file has it (the tokenizer's share, small beside the model's,
            // left out of both).
            let enc = r["text"][name]["model_1_thread_cold_caches"]["median_ms"]
                .as_f64()
                .or_else(|| r["text"][name]["tokenize_and_model_1_thread"]["median_ms"].as_f64())
                .unwrap_or(f64::NAN);
            for run in s["runs"].as_array().into_iter().flatten() {
                for (which, label, e) in [("cached_text", "cached", 0.0), ("new_text", "new", enc)]
                {
                    let p50 = f(&run[which]["p50_ms"]);
                    println!(
                        "{name:<12} {:<20} {:<12} {:>7.2} {:>7.2} {:>9.2} {:>11.2} {:>9.2}",
                        run["broker"].as_str().unwrap_or("?"),
                        label,
                        p50,
                        f(&run[which]["p99_ms"]),
                        rank,
                        e,
                        p50 - rank - e
                    );
                }
            }
            if let Some(mem) = s["runs"]
                .as_array()
                .and_then(|a| a.first())
                .map(|r| &r["memory"])
            {
                // The image tower's file, as this run's system section saw it (older files: the image section's).
                let weights = mem["image_weights_mib"]
                    .as_f64()
                    .unwrap_or_else(|| f(&r["image"][name]["weights_bytes"]) / 1048576.0);
                println!(
                    "{name:<12} memory: empty idle {:.1} MiB, 100k idle {:.1} MiB (peak {:.1}), after searches {:.1} MiB (private {:.1}, mapped files {:.1}); weights {:.1} MiB -> beyond weights {:.1} MiB",
                    f(&mem["empty_idle_rss_mib"]), f(&mem["indexed_idle_rss_mib"]), f(&mem["indexed_peak_rss_mib"]), f(&mem["indexed_after_searches_rss_mib"]),
                    f(&mem["indexed_after_searches_rss_anon_mib"]), f(&mem["indexed_after_searches_rss_file_mib"]), weights,
                    f(&mem["indexed_after_searches_rss_mib"]) - weights
                );
                for (when, by) in [
                    ("empty idle", &mem["empty_idle_by_mapping"]),
                    ("after searches", &mem["indexed_after_searches_by_mapping"]),
                ] {
                    println!(
                        "{name:<12} resident {when}: program file {:.1} MiB, index files {:.1}, libraries {:.1}, anonymous {:.1}",
                        f(&by["program_mib"]), f(&by["index_files_mib"]), f(&by["libraries_mib"]), f(&by["anonymous_mib"])
                    );
                }
            }
        }
    }
    let z = &r["zero_copy"];
    println!(
        "\nzero copy: decode {} allocation(s) ({} B, payload {} B); vector_view {} allocations, borrowed {}, in the received buffer {}; top-10 of {} rows {} allocations ({} B)",
        z["decode"]["allocations"], z["decode"]["bytes"], z["payload_bytes"], z["vector_view"]["allocations"], z["vector_view"]["borrowed"],
        z["vector_view"]["points_into_received_buffer"], z["rows"], z["rank_top10"]["allocations"], z["rank_top10"]["bytes"]
    );
}
