//! Benchmark of the device's persistent index: for each precision (f32, f16, i8) write N
//! pictures (snapshot + vector file, as compaction leaves them), then open it in a fresh
//! process (time to open, resident memory: private, and the vector file's mapped pages) and
//! rank 50 queries (top-10 latency, overlap of the top 10 with f32's). Two kinds of vectors:
//! `random` (uniform unit vectors: scores crowd together, the worst case for quantisation)
//! and `clustered` (unit vectors around 500 centres, queries near a centre: closer to real
//! CLIP embeddings). Prints a table and writes target/bench/index.json.
//!
//! `cargo run --release --example index_bench -- [N ...]` (default: 100000 1000000)

use std::path::{Path, PathBuf};
use std::process::Command;
use std::time::Instant;

use edgeclip_device::index::Precision;
use edgeclip_device::index::Store;
use edgeclip_device::index::{Entry, Index};

const DIM: usize = 512;
const QUERIES: usize = 50;
const MODEL: &str = "bench@0";

/// A line of /proc/self/status in MiB (`VmRSS:`, `RssAnon:`, `RssFile:`).
fn status_mib(key: &str) -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| {
            s.lines()
                .find(|l| l.starts_with(key))
                .and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok())
        })
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn rss_mib() -> f64 {
    status_mib("VmRSS:")
}

/// Deterministic vectors of one kind.
struct Gen {
    state: u64,
    centres: Vec<Vec<f32>>,
}

impl Gen {
    fn new(kind: &str, seed: u64) -> Self {
        let mut g = Gen {
            state: seed | 1,
            centres: Vec::new(),
        };
        if kind == "clustered" {
            g.centres = (0..500).map(|_| g.unit()).collect();
        }
        g
    }
    fn next(&mut self) -> f32 {
        self.state ^= self.state << 13;
        self.state ^= self.state >> 7;
        self.state ^= self.state << 17;
        (self.state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
    fn unit(&mut self) -> Vec<f32> {
        let v: Vec<f32> = (0..DIM).map(|_| self.next()).collect();
        normalised(v)
    }
    /// A picture's vector (or a query): a random unit vector, or a centre plus noise.
    fn vector(&mut self, noise: f32) -> Vec<f32> {
        if self.centres.is_empty() {
            return self.unit();
        }
        let c = (self.next() + 0.5) * self.centres.len() as f32;
        let centre = self.centres[(c as usize).min(self.centres.len() - 1)].clone();
        let v: Vec<f32> = centre.iter().map(|x| x + noise * self.next()).collect();
        normalised(v)
    }
}

fn normalised(mut v: Vec<f32>) -> Vec<f32> {
    let n = v.iter().map(|x| x * x).sum::<f32>().sqrt();
    v.iter_mut().for_each(|x| *x /= n);
    v
}

fn entry(i: usize) -> Entry {
    Entry {
        path: PathBuf::from(format!("/photos/{:04}/IMG_{i:07}.jpg", i / 1000)),
        size: 3_000_000,
        mtime_ns: i as i64,
        hash: [(i % 251) as u8; 32],
        width: 4000,
        height: 3000,
        taken_s: i as i64,
        source: Box::default(),
    }
}

/// Child process: open the store in `precision`, rank the queries, print one JSON line.
fn measure(dir: &Path, kind: &str, precision: Precision) -> anyhow::Result<()> {
    let idle = rss_mib();
    let started = Instant::now();
    let (_, index, report) = Store::open_with(dir, MODEL, DIM, precision)?;
    let open_s = started.elapsed().as_secs_f64();
    let mut gen = Gen::new(kind, 0x5eed);
    let queries: Vec<Vec<f32>> = (0..QUERIES).map(|_| gen.vector(0.08)).collect();
    let mut tops = Vec::new();
    let started = Instant::now();
    for q in &queries {
        let hits = index.search(MODEL, q, 10)?;
        tops.push(hits.iter().map(|h| h.entry.taken_s).collect::<Vec<_>>());
    }
    let top10_ms = started.elapsed().as_secs_f64() * 1000.0 / QUERIES as f64;
    println!(
        "{}",
        serde_json::json!({
            "pictures": report.pictures, "open_s": open_s, "top10_ms": top10_ms, "rss_mib": rss_mib(),
            "rss_before_open_mib": idle, "vector_mib": index.vector_bytes() as f64 / 1048576.0, "tops": tops,
            "rss_anon_mib": status_mib("RssAnon:"), "rss_file_mib": status_mib("RssFile:"),
            "mapped_vector_mib": index.mapped_vector_bytes() as f64 / 1048576.0,
        })
    );
    Ok(())
}

fn main() -> anyhow::Result<()> {
    let args: Vec<String> = std::env::args().skip(1).collect();
    if args.first().map(String::as_str) == Some("--measure") {
        let precision = match args[3].as_str() {
            "f16" => Precision::F16,
            "i8" => Precision::I8,
            _ => Precision::F32,
        };
        return measure(Path::new(&args[1]), &args[2], precision);
    }
    let sizes: Vec<usize> = {
        let n: Vec<usize> = args.iter().filter_map(|a| a.parse().ok()).collect();
        if n.is_empty() {
            vec![100_000, 1_000_000]
        } else {
            n
        }
    };
    let me = std::env::current_exe()?;
    let mut results = Vec::new();
    println!(
        "{:>9}  {:>9}  {:>4}  {:>7}  {:>8}  {:>6}  {:>9}  {:>8}  {:>8}  {:>8}  {:>8}  {:>12}",
        "pictures",
        "vectors",
        "type",
        "write s",
        "disk MiB",
        "open s",
        "top-10 ms",
        "RSS MiB",
        "anon MiB",
        "file MiB",
        "vec MiB",
        "top-10 = f32"
    );
    for &n in &sizes {
        for kind in ["clustered", "random"] {
            let mut reference: Option<Vec<Vec<i64>>> = None;
            for (precision, p) in [
                ("f32", Precision::F32),
                ("f16", Precision::F16),
                ("i8", Precision::I8),
            ] {
                let dir = tempfile::tempdir()?;
                let started = Instant::now();
                {
                    let (mut store, _, _) = Store::open_with(dir.path(), MODEL, DIM, p)?;
                    let mut index = Index::with_precision(MODEL, DIM, p);
                    let mut gen = Gen::new(kind, 0x9e37_79b9_7f4a_7c15);
                    for i in 0..n {
                        index.upsert(entry(i), &gen.vector(0.08))?;
                    }
                    // One compaction writes the snapshot the way a running device ends up with it.
                    store.compact(&mut index)?;
                }
                let write_s = started.elapsed().as_secs_f64();
                let disk: u64 = std::fs::read_dir(dir.path())?
                    .filter_map(|e| e.ok()?.metadata().ok())
                    .map(|m| m.len())
                    .sum();
                let out = Command::new(&me)
                    .arg("--measure")
                    .arg(dir.path())
                    .arg(kind)
                    .arg(precision)
                    .output()?;
                anyhow::ensure!(
                    out.status.success(),
                    "measuring {precision}: {}",
                    String::from_utf8_lossy(&out.stderr)
                );
                let m: serde_json::Value = serde_json::from_slice(&out.stdout)?;
                let tops: Vec<Vec<i64>> = serde_json::from_value(m["tops"].clone())?;
                let reference = reference.get_or_insert_with(|| tops.clone());
                let overlap = tops
                    .iter()
                    .zip(reference.iter())
                    .map(|(a, b)| a.iter().filter(|x| b.contains(x)).count())
                    .sum::<usize>() as f64
                    / (10 * tops.len()) as f64;
                let f = |k: &str| m[k].as_f64().unwrap_or(f64::NAN);
                let (open_s, ms, rss, vec_mib, anon, file) = (
                    f("open_s"),
                    f("top10_ms"),
                    f("rss_mib"),
                    f("vector_mib"),
                    f("rss_anon_mib"),
                    f("rss_file_mib"),
                );
                println!(
                    "{n:>9}  {kind:>9}  {precision:>4}  {write_s:>7.1}  {:>8.1}  {open_s:>6.2}  {ms:>9.2}  {rss:>8.0}  {anon:>8.0}  {file:>8.0}  {vec_mib:>8.1}  {:>11.1}%",
                    disk as f64 / 1048576.0,
                    overlap * 100.0
                );
                results.push(serde_json::json!({
                    "pictures": n, "dim": DIM, "vectors": kind, "precision": precision, "write_and_compact_s": write_s,
                    "disk_bytes": disk, "open_s": open_s, "top10_ms": ms, "rss_mib": rss, "vector_mib": vec_mib,
                    "rss_before_open_mib": m["rss_before_open_mib"], "top10_overlap_with_f32": overlap, "queries": QUERIES,
                    "rss_anon_mib": anon, "rss_file_mib": file, "mapped_vector_mib": m["mapped_vector_mib"],
                }));
            }
        }
    }
    std::fs::create_dir_all("target/bench")?;
    let machine = format!(
        "{} cores, {}",
        std::thread::available_parallelism()
            .map(|n| n.get())
            .unwrap_or(1),
        std::env::consts::ARCH
    );
    std::fs::write(
        "target/bench/index.json",
        serde_json::to_string_pretty(&serde_json::json!({"machine": machine, "results": results}))?,
    )?;
    println!("written to target/bench/index.json");
    Ok(())
}
