//! Ranking: the shared data set (seeded unit vectors written to files that the NumPy and
//! FAISS peers read too) and edgeclip's ranker on it (`VectorTable` scoring with simsimd,
//! `top_k_split`'s bounded heaps: exactly what `Index::search` runs), in f32, f16 and int8.

use std::io::Write;
use std::path::Path;
use std::time::Instant;

use edgeclip_device::index::vectors::VectorTable;
use edgeclip_device::index::Precision;
use edgeclip_device::rank::{top_k_split, Scored};
use edgeclip_messages::wire::quantise;
use serde_json::{json, Value};

use crate::encoding::percentile;

/// Seeded xorshift generator of unit vectors.
pub struct Gen(u64);

impl Gen {
    pub fn new(seed: u64) -> Self {
        Gen(seed | 1)
    }
    fn next(&mut self) -> f32 {
        self.0 ^= self.0 << 13;
        self.0 ^= self.0 >> 7;
        self.0 ^= self.0 << 17;
        (self.0 >> 40) as f32 / (1u64 << 24) as f32 - 0.5
    }
    pub fn unit(&mut self, dim: usize, out: &mut Vec<f32>) {
        let start = out.len();
        out.extend((0..dim).map(|_| self.next()));
        let n = out[start..].iter().map(|x| x * x).sum::<f32>().sqrt();
        out[start..].iter_mut().for_each(|x| *x /= n);
    }
}

/// The data files: `vectors_{n}x{dim}.f32` (and `.i8` codes, `.scales` as edgeclip quantises
/// them) and `queries_{dim}.f32`. Made once per seed and reused.
pub struct Data {
    pub dim: usize,
    pub vectors: Vec<f32>,
    pub queries: Vec<Vec<f32>>,
}

pub fn data(dir: &Path, n: usize, dim: usize, queries: usize) -> anyhow::Result<Data> {
    std::fs::create_dir_all(dir)?;
    let base = dir.join(format!("vectors_{n}x{dim}"));
    let f32_path = base.with_extension("f32");
    let mut gen = Gen::new(0x5eed_0000 + dim as u64);
    let vectors = match std::fs::read(&f32_path) {
        Ok(bytes) if bytes.len() == n * dim * 4 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        _ => {
            let mut v = Vec::with_capacity(n * dim);
            for _ in 0..n {
                gen.unit(dim, &mut v);
            }
            let mut codes = Vec::with_capacity(n * dim);
            let mut scales = Vec::with_capacity(n);
            for row in v.chunks_exact(dim) {
                scales.push(quantise(row, &mut codes));
            }
            write(&f32_path, v.iter().flat_map(|x| x.to_le_bytes()))?;
            write(&base.with_extension("i8"), codes.iter().map(|c| *c as u8))?;
            write(
                &base.with_extension("scales"),
                scales.iter().flat_map(|x| x.to_le_bytes()),
            )?;
            v
        }
    };
    let mut qgen = Gen::new(0x0051_ee75 + dim as u64);
    let mut flat = Vec::new();
    for _ in 0..queries {
        qgen.unit(dim, &mut flat);
    }
    write(
        &dir.join(format!("queries_{dim}.f32")),
        flat.iter().flat_map(|x| x.to_le_bytes()),
    )?;
    Ok(Data {
        dim,
        vectors,
        queries: flat.chunks_exact(dim).map(<[f32]>::to_vec).collect(),
    })
}

fn write(path: &Path, bytes: impl Iterator<Item = u8>) -> anyhow::Result<()> {
    let tmp = path.with_extension("tmp");
    let mut f = std::io::BufWriter::new(std::fs::File::create(&tmp)?);
    for b in bytes {
        f.write_all(&[b])?;
    }
    f.into_inner().map_err(|e| e.into_error())?.sync_all()?;
    std::fs::rename(tmp, path)?;
    Ok(())
}

/// Top-k of `table` against `query` on `threads` threads, as `Index::search` ranks: each
/// thread ranks a contiguous share of the rows, then the shares' winners are merged.
fn top_k(table: &VectorTable, query: &[f32], k: usize, threads: usize) -> Vec<Scored> {
    let prepared = table.query(query);
    top_k_split(table.len(), k, threads, |_| true, table.scorer(&prepared))
}

/// edgeclip's ranker over the first `n` rows of `data` for each size, type and thread count.
pub fn edgeclip(
    data: &Data,
    sizes: &[usize],
    threads: &[usize],
    k: usize,
    queries: usize,
) -> anyhow::Result<Vec<Value>> {
    let mut out = Vec::new();
    for &n in sizes {
        for (name, precision) in [
            ("f32", Precision::F32),
            ("f16", Precision::F16),
            ("i8", Precision::I8),
        ] {
            let mut table = VectorTable::new(data.dim, precision);
            for row in data.vectors[..n * data.dim].chunks_exact(data.dim) {
                table.push(row);
            }
            let scan_bytes = table.bytes();
            let budget = if n <= 200_000 {
                queries
            } else {
                (queries / 4).max(5)
            };
            for &t in threads {
                let mut ms = Vec::new();
                let mut tops = Vec::new();
                top_k(&table, &data.queries[0], k, t);
                for q in data.queries.iter().take(budget) {
                    let started = Instant::now();
                    let hits = top_k(&table, q, k, t);
                    ms.push(started.elapsed().as_secs_f64() * 1e3);
                    tops.push(hits.iter().map(|h| h.row).collect::<Vec<_>>());
                }
                let median = percentile(&ms, 50.0);
                out.push(json!({
                    "engine": "edgeclip", "n": n, "type": name, "threads": t, "scan_bytes": scan_bytes,
                    "runs": ms.len(), "median_ms": median, "p90_ms": percentile(&ms, 90.0),
                    "gb_s": scan_bytes as f64 / (median / 1e3) / 1e9,
                    "top": tops.iter().take(3).collect::<Vec<_>>(),
                }));
                eprintln!("  rank edgeclip n={n} {name} threads={t}: {median:.2} ms");
            }
        }
    }
    Ok(out)
}
