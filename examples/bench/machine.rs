//! The machine the suite runs on: its description (CPU, cores, memory, load) and its memory
//! bandwidth, measured in the same run as everything it is compared with.

use std::time::Instant;

use serde_json::{json, Value};

/// CPU model, cores, memory, load average and the kernel, read from /proc.
pub fn describe() -> Value {
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let model = cpuinfo
        .lines()
        .find(|l| l.starts_with("model name"))
        .and_then(|l| l.split(':').nth(1))
        .map(str::trim)
        .unwrap_or("unknown");
    let flags = cpuinfo
        .lines()
        .find(|l| l.starts_with("flags"))
        .and_then(|l| l.split(':').nth(1))
        .unwrap_or("");
    let simd: Vec<&str> = flags
        .split_whitespace()
        .filter(|f| {
            [
                "avx2",
                "fma",
                "f16c",
                "avx512f",
                "avx512_vnni",
                "avx512_bf16",
                "avx512_fp16",
                "asimd",
                "asimdhp",
                "sve",
            ]
            .contains(f)
        })
        .collect();
    let meminfo = std::fs::read_to_string("/proc/meminfo").unwrap_or_default();
    let mem_kib = |key: &str| -> Option<u64> {
        meminfo
            .lines()
            .find(|l| l.starts_with(key))?
            .split_whitespace()
            .nth(1)?
            .parse()
            .ok()
    };
    json!({
        "cpu": model,
        "simd": simd,
        "cores": std::thread::available_parallelism().map(|n| n.get()).unwrap_or(1),
        "memory_gib": mem_kib("MemTotal:").map(|k| k as f64 / 1048576.0),
        "memory_available_gib": mem_kib("MemAvailable:").map(|k| k as f64 / 1048576.0),
        "load_average_at_start": load_average(),
        "kernel": std::fs::read_to_string("/proc/sys/kernel/osrelease").map(|s| s.trim().to_string()).unwrap_or_default(),
        "arch": std::env::consts::ARCH,
    })
}

/// The 1, 5 and 15 minute load averages.
pub fn load_average() -> Vec<f64> {
    std::fs::read_to_string("/proc/loadavg")
        .unwrap_or_default()
        .split_whitespace()
        .take(3)
        .filter_map(|s| s.parse().ok())
        .collect()
}

/// Memory bandwidth with `threads` threads over a buffer of `bytes`: a read-only pass (what a
/// scan of vectors does) and a copy (counted as bytes read plus bytes written), best of a few.
pub fn bandwidth(bytes: usize, threads: usize) -> Value {
    let words = bytes / 8;
    let src: Vec<u64> = (0..words as u64)
        .map(|i| i.wrapping_mul(0x9E37_79B9_7F4A_7C15))
        .collect();
    let mut dst = vec![0u64; words];
    let chunk = words.div_ceil(threads);
    let mut read_best = f64::MAX;
    let mut copy_best = f64::MAX;
    let mut sink = 0u64;
    for _ in 0..5 {
        let started = Instant::now();
        let sums: Vec<u64> = std::thread::scope(|s| {
            let handles: Vec<_> = src
                .chunks(chunk)
                .map(|part| {
                    s.spawn(move || {
                        // Eight independent lanes so the adds vectorise and do not chain.
                        let mut lanes = [0u64; 8];
                        for block in part.chunks_exact(8) {
                            for (l, v) in lanes.iter_mut().zip(block) {
                                *l = l.wrapping_add(*v);
                            }
                        }
                        lanes.iter().fold(0u64, |a, b| a.wrapping_add(*b))
                    })
                })
                .collect();
            handles.into_iter().map(|h| h.join().unwrap_or(0)).collect()
        });
        read_best = read_best.min(started.elapsed().as_secs_f64());
        sink = sink.wrapping_add(sums.iter().fold(0, |a, b| a.wrapping_add(*b)));
        let started = Instant::now();
        std::thread::scope(|s| {
            for (d, from) in dst.chunks_mut(chunk).zip(src.chunks(chunk)) {
                s.spawn(move || d.copy_from_slice(from));
            }
        });
        copy_best = copy_best.min(started.elapsed().as_secs_f64());
    }
    std::hint::black_box((sink, &dst));
    let b = (words * 8) as f64;
    json!({
        "threads": threads,
        "buffer_mib": b / 1048576.0,
        "read_gb_s": b / read_best / 1e9,
        "copy_gb_s_read_plus_write": 2.0 * b / copy_best / 1e9,
    })
}
