//! Text encoding per family fixture, on this machine: each folder of
//! `tests/data/families/` loaded as a worker loads it ([`edgeclip_cloud::model::load`]), then
//! every text of its `reference.json` cleaned, tokenised and encoded on one thread, again and
//! again. Prints a Markdown table (load time, the first text after the load, median and 90th
//! percentile per text, texts per second) and the smallest cosine to the reference.
//!
//! `cargo run --release -p edgeclip-cloud --example text_families [ROUNDS]`

use std::path::Path;
use std::time::{Duration, Instant};

use edgeclip_cloud::model::{load, TowerSpec, Towers};

const FAMILIES: [&str; 8] = [
    "vit",
    "rn",
    "siglip",
    "siglip2",
    "mclip",
    "nllb",
    "mobileclip",
    "mobileclip2",
];

fn ms(d: Duration) -> f64 {
    d.as_secs_f64() * 1e3
}

fn main() -> anyhow::Result<()> {
    let rounds: usize = match std::env::args().nth(1) {
        Some(n) => n.parse()?,
        None => 50,
    };
    let root = Path::new(env!("CARGO_MANIFEST_DIR")).join("../tests/data/families");
    println!(
        "| family | text tower | load ms | first text ms | median ms/text | p90 ms/text | texts/s | min cosine |"
    );
    println!("| --- | --- | --- | --- | --- | --- | --- | --- |");
    for family in FAMILIES {
        let dir = root.join(family);
        let reference: serde_json::Value =
            serde_json::from_slice(&std::fs::read(dir.join("reference.json"))?)?;
        let started = Instant::now();
        let (tower, report) = load(&TowerSpec::folder(&dir))?;
        let loaded = started.elapsed();
        let towers = Towers::new(vec![tower])?;
        let space = towers.set.default_id().to_string();
        let tower = &towers.loaded[0];
        let texts: Vec<(String, Option<String>, Vec<f32>)> = reference["texts"]
            .as_array()
            .ok_or_else(|| anyhow::anyhow!("{family}: no texts"))?
            .iter()
            .map(|t| {
                let embedding = t["embedding"]
                    .as_array()
                    .map(|a| {
                        a.iter()
                            .filter_map(|x| x.as_f64())
                            .map(|x| x as f32)
                            .collect()
                    })
                    .unwrap_or_default();
                (
                    t["text"].as_str().unwrap_or_default().to_string(),
                    t["language"].as_str().map(str::to_string),
                    embedding,
                )
            })
            .collect();
        let prefixes: Vec<Option<String>> = texts
            .iter()
            .map(|(_, lang, _)| {
                towers
                    .set
                    .pick(&space, lang.as_deref())
                    .map(|c| c.prefix)
                    .map_err(anyhow::Error::msg)
            })
            .collect::<anyhow::Result<_>>()?;
        let started = Instant::now();
        tower.encode(&texts[0].0, prefixes[0].as_deref())?;
        let first = started.elapsed();
        let mut times = Vec::with_capacity(rounds * texts.len());
        let mut min_cosine = f32::INFINITY;
        let all = Instant::now();
        for _ in 0..rounds {
            for ((text, _, want), prefix) in texts.iter().zip(&prefixes) {
                let started = Instant::now();
                let v = tower.encode(text, prefix.as_deref())?;
                times.push(started.elapsed());
                let dot: f32 = v.iter().zip(want).map(|(a, b)| a * b).sum();
                let norm = want.iter().map(|x| x * x).sum::<f32>().sqrt();
                min_cosine = min_cosine.min(dot / norm);
            }
        }
        let total = all.elapsed();
        times.sort();
        let median = times[times.len() / 2];
        let p90 = times[times.len() * 9 / 10];
        println!(
            "| {family} | {} {} | {:.0} | {:.2} | {:.2} | {:.2} | {:.0} | {:.7} |",
            report.family,
            report.inputs.join(" + "),
            ms(loaded),
            ms(first),
            ms(median),
            ms(p90),
            times.len() as f64 / total.as_secs_f64(),
            min_cosine,
        );
    }
    Ok(())
}
