//! Benchmark of the device's persistent index: write N pictures, reopen (time to open),
//! top-10 search latency, resident memory. Vectors are random unit vectors (ranking cost does
//! not depend on their meaning). Prints a table and writes target/bench/index.json.
//!
//! `cargo run --release --example index_bench -- [N ...]` (default: 100000 1000000)

use std::path::PathBuf;
use std::time::Instant;

use edgeclip_device::index::{Entry, Index};
use edgeclip_device::store::Store;

fn rss_mib() -> f64 {
    std::fs::read_to_string("/proc/self/status")
        .ok()
        .and_then(|s| s.lines().find(|l| l.starts_with("VmRSS:")).and_then(|l| l.split_whitespace().nth(1)?.parse::<f64>().ok()))
        .map(|kb| kb / 1024.0)
        .unwrap_or(f64::NAN)
}

fn main() -> anyhow::Result<()> {
    let sizes: Vec<usize> = {
        let args: Vec<usize> = std::env::args().skip(1).filter_map(|a| a.parse().ok()).collect();
        if args.is_empty() { vec![100_000, 1_000_000] } else { args }
    };
    let dim = 512;
    let mut state = 0x9e3779b97f4a7c15u64;
    let mut next = move || {
        state ^= state << 13;
        state ^= state >> 7;
        state ^= state << 17;
        (state >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    };
    let mut results = Vec::new();
    println!("{:>9}  {:>10}  {:>10}  {:>10}  {:>12}  {:>9}", "pictures", "write s", "open s", "disk MiB", "top-10 ms", "RSS MiB");
    for &n in &sizes {
        let dir = tempfile::tempdir()?;
        let started = Instant::now();
        {
            let (mut store, _, _) = Store::open(dir.path(), "bench@0", dim)?;
            let mut index = Index::new("bench@0", dim);
            for i in 0..n {
                let mut v: Vec<f32> = (0..dim).map(|_| next()).collect();
                let norm = v.iter().map(|x| x * x).sum::<f32>().sqrt();
                v.iter_mut().for_each(|x| *x /= norm);
                let entry = Entry {
                    path: PathBuf::from(format!("/photos/{:04}/IMG_{i:07}.jpg", i / 1000)),
                    size: 3_000_000,
                    mtime_ns: i as i128,
                    hash: [(i % 251) as u8; 32],
                    width: 4000,
                    height: 3000,
                    taken_s: i as i64,
                };
                index.upsert(entry, &v)?;
            }
            // One compaction writes the snapshot the way a running device ends up with it.
            store.compact(&index)?;
        }
        let write_s = started.elapsed().as_secs_f64();
        let disk: u64 = std::fs::read_dir(dir.path())?.filter_map(|e| e.ok()?.metadata().ok()).map(|m| m.len()).sum();
        let started = Instant::now();
        let (_, index, report) = Store::open(dir.path(), "bench@0", dim)?;
        let open_s = started.elapsed().as_secs_f64();
        assert_eq!(report.pictures, n);
        let queries: Vec<Vec<f32>> = (0..20).map(|_| (0..dim).map(|_| next()).collect()).collect();
        let started = Instant::now();
        for q in &queries {
            std::hint::black_box(index.search("bench@0", q, 10)?);
        }
        let search_ms = started.elapsed().as_secs_f64() * 1000.0 / queries.len() as f64;
        let rss = rss_mib();
        println!("{n:>9}  {write_s:>10.2}  {open_s:>10.2}  {:>10.1}  {search_ms:>12.2}  {rss:>9.0}", disk as f64 / 1048576.0);
        results.push(serde_json::json!({
            "pictures": n, "dim": dim, "write_and_compact_s": write_s, "open_s": open_s,
            "disk_bytes": disk, "top10_ms": search_ms, "rss_mib": rss,
        }));
        drop(index);
    }
    std::fs::create_dir_all("target/bench")?;
    let machine = format!("{} cores, {}", std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1), std::env::consts::ARCH);
    std::fs::write("target/bench/index.json", serde_json::to_string_pretty(&serde_json::json!({"machine": machine, "results": results}))?)?;
    println!("written to target/bench/index.json");
    Ok(())
}
