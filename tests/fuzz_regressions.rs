//! Replays the fuzzers' saved inputs (fuzz/regressions/<target>/, crashes found and fixed,
//! kept forever) and a generated seed corpus through the fuzz harness, so that every
//! `cargo test` runs the exact checks the fuzzers ran. `EDGECLIP_WRITE_FUZZ_SEEDS=<dir>` also
//! writes the seeds to `<dir>/<target>/` as the starting corpus for `cargo fuzz run`.

// The harness is the fuzz crate's code, linted there; clippy 1.95 reads its
// "touch every element" `.map(..).count()` in the wire target as a mistake (suspicious_map).
#[path = "../fuzz/src/harness.rs"]
#[allow(dead_code, clippy::suspicious_map)]
mod harness;

use std::path::{Path, PathBuf};

use edgeclip_messages::wire::{
    encode, quantise, CloudFailure, EncodeReply, EncodeRequest, ErrorCode, FleetAnswer, FleetBody,
    FleetQuery, RankBody, RankReply, RankRequest, RankedIds, ReplyBody, TextVector,
};

const TARGETS: [&str; 5] = ["wire", "json", "picture", "tokenize", "store"];

fn run(target: &str, data: &[u8]) {
    match target {
        "wire" => harness::wire(data),
        "json" => harness::json(data),
        "picture" => harness::picture(data),
        "tokenize" => harness::tokenize(data),
        "store" => {
            harness::store(data);
        }
        other => panic!("unknown fuzz target {other}"),
    }
}

fn repo() -> PathBuf {
    Path::new(env!("CARGO_MANIFEST_DIR")).to_path_buf()
}

/// Valid frames of every wire message, each also bit-flipped and cut short.
fn wire_seeds() -> Vec<Vec<u8>> {
    let reply_to = "edgeclip/cam1/cloud/reply".to_string();
    let vector = vec![0.5f32, -0.5, 0.5, -0.5];
    let mut codes = Vec::new();
    let scales = vec![
        quantise(&vector, &mut codes),
        quantise(&[0.1, 0.2, 0.3, 0.9], &mut codes),
    ];
    let frames = vec![
        encode(&EncodeRequest {
            request_id: 1,
            reply_to: reply_to.clone(),
            model: "m".into(),
            text: "a red circle".into(),
            lang: None,
        }),
        encode(&EncodeReply {
            request_id: 1,
            body: ReplyBody::Vector(TextVector {
                model: "m".into(),
                vector: vector.clone(),
            }),
        }),
        encode(&EncodeReply {
            request_id: 2,
            body: ReplyBody::Error(CloudFailure {
                code: ErrorCode::Busy,
                message: "slow down".into(),
            }),
        }),
        encode(&RankRequest {
            request_id: 3,
            reply_to: reply_to.clone(),
            model: "m".into(),
            text: "a dog".into(),
            lang: Some("de".into()),
            k: 1,
            chunk: 0,
            chunks: 1,
            dim: 4,
            ids: vec![7, 9],
            scales,
            codes,
        }),
        encode(&RankReply {
            request_id: 3,
            chunk: 0,
            body: RankBody::Ranked(RankedIds {
                model: "m".into(),
                ids: vec![9],
                scores: vec![0.7],
            }),
        }),
        encode(&FleetQuery {
            request_id: 4,
            reply_to: "edgeclip/fleet/answers/w1".into(),
            k: 3,
            vector: TextVector {
                model: "m".into(),
                vector,
            },
        }),
        encode(&FleetAnswer {
            request_id: 4,
            device: "cam1".into(),
            body: FleetBody::Hits(vec![edgeclip_messages::Hit {
                path: "/p/a.jpg".into(),
                score: 0.3,
                id: "00000000000000aa".into(),
                ..edgeclip_messages::Hit::default()
            }]),
        }),
    ];
    let mut out = Vec::new();
    for frame in frames {
        let frame = frame.expect("frame encodes");
        for at in [5usize, 13, frame.len() / 2, frame.len() - 1] {
            let mut flipped = frame.clone();
            flipped[at.min(frame.len() - 1)] ^= 0x40;
            out.push(flipped);
        }
        out.push(frame[..frame.len() - 3].to_vec());
        out.push(frame);
    }
    out
}

fn json_seeds() -> Vec<Vec<u8>> {
    [
        r#"{"id":"1","text":"a red circle","k":5}"#,
        r#"{"id":"2","like":"0123456789abcdef","folder":"/photos/2024","after":0,"before":1900000000,"min_score":0.2}"#,
        r#"{"id":"3","text":"x","mode":"server"}"#,
        r#"{"id":"f","text":"a dog","k":3,"deadline_ms":2000,"reply_to":"edgeclip/cli/1/fleet"}"#,
        r#"a plain text search"#,
        r#"{"text": 5}"#,
        "edgeclip/cam1/cloud/reply",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

fn picture_seeds() -> Vec<Vec<u8>> {
    let mut out: Vec<Vec<u8>> = ["IMG_0001.jpg", "IMG_0002.jpg"]
        .iter()
        .map(|n| std::fs::read(repo().join("models/samples").join(n)).expect("sample picture"))
        .collect();
    let small = image::DynamicImage::ImageRgb8(image::RgbImage::from_fn(9, 5, |x, y| {
        image::Rgb([x as u8 * 20, y as u8 * 40, 128])
    }));
    for format in [
        image::ImageFormat::Png,
        image::ImageFormat::Gif,
        image::ImageFormat::WebP,
        image::ImageFormat::Bmp,
        image::ImageFormat::Tiff,
        image::ImageFormat::Jpeg,
    ] {
        let mut bytes = std::io::Cursor::new(Vec::new());
        small
            .write_to(&mut bytes, format)
            .expect("small picture encodes");
        out.push(bytes.into_inner());
    }
    out
}

fn tokenize_seeds() -> Vec<Vec<u8>> {
    [
        "a red circle",
        "a photo of a big blue star on the left",
        "<|endoftext|> &amp; ﬁsh 🐟 Ωmega",
        "   ",
        "don't stop",
    ]
    .iter()
    .map(|s| s.as_bytes().to_vec())
    .collect()
}

/// Journal records as the store writes them: an upsert and a remove, 0xA5-separated.
fn store_seeds() -> Vec<Vec<u8>> {
    let mut upsert = vec![1u8];
    upsert.extend_from_slice(&5u32.to_le_bytes());
    upsert.extend_from_slice(b"a.jpg");
    upsert.extend_from_slice(&10u64.to_le_bytes());
    upsert.extend_from_slice(&7i128.to_le_bytes());
    upsert.extend_from_slice(&[3; 32]);
    upsert.extend_from_slice(&2u32.to_le_bytes());
    upsert.extend_from_slice(&2u32.to_le_bytes());
    upsert.extend_from_slice(&0i64.to_le_bytes());
    for v in [0.5f32, 0.5, 0.5, 0.5] {
        upsert.extend_from_slice(&v.to_le_bytes());
    }
    let mut remove = vec![2u8];
    remove.extend_from_slice(&5u32.to_le_bytes());
    remove.extend_from_slice(b"a.jpg");
    let mut seed = vec![0u8, 0];
    seed.extend_from_slice(&upsert);
    seed.push(0xA5);
    seed.push(0);
    seed.extend_from_slice(&remove);
    seed.push(0xA5);
    // The harness writes each part with its length and checksum; a part's first byte is a
    // flag (bit 7: break the checksum), so the bodies above start after it.
    let mut both = vec![1u8, 0];
    both.extend_from_slice(&upsert);
    both.push(0xA5);
    both.extend_from_slice(&[0, 1, 2, 3]);
    // format 2 (mode 3: f32, version 2): the upsert carries a source id
    let mut v2 = upsert[..upsert.len() - 16].to_vec();
    v2.extend_from_slice(&4u16.to_le_bytes());
    v2.extend_from_slice(b"cam1");
    v2.extend_from_slice(&upsert[upsert.len() - 16..]);
    let mut third = vec![3u8, 0];
    third.extend_from_slice(&v2);
    third.push(0xA5);
    vec![seed, both, third]
}

fn seeds(target: &str) -> Vec<Vec<u8>> {
    match target {
        "wire" => wire_seeds(),
        "json" => json_seeds(),
        "picture" => picture_seeds(),
        "tokenize" => tokenize_seeds(),
        "store" => store_seeds(),
        other => panic!("unknown fuzz target {other}"),
    }
}

#[test]
fn seeds_pass_the_fuzz_checks() {
    let out = std::env::var_os("EDGECLIP_WRITE_FUZZ_SEEDS").map(PathBuf::from);
    for target in TARGETS {
        let seeds = seeds(target);
        assert!(!seeds.is_empty());
        for (i, seed) in seeds.iter().enumerate() {
            run(target, seed);
            if let Some(dir) = &out {
                let dir = dir.join(target);
                std::fs::create_dir_all(&dir).expect("seed folder");
                std::fs::write(dir.join(format!("seed-{i:02}")), seed).expect("seed written");
            }
        }
    }
}

#[test]
fn saved_fuzz_inputs_pass_the_fuzz_checks() {
    let mut replayed = Vec::new();
    for target in TARGETS {
        let dir = repo().join("fuzz/regressions").join(target);
        let entries = std::fs::read_dir(&dir).unwrap_or_else(|e| {
            panic!(
                "{}: {e}: every fuzz target keeps its saved inputs there",
                dir.display()
            )
        });
        let mut count = 0;
        for entry in entries {
            let path = entry.expect("regression entry").path();
            let data = std::fs::read(&path).expect("regression input");
            eprintln!("replaying {}", path.display());
            run(target, &data);
            count += 1;
        }
        replayed.push((target, count));
    }
    eprintln!("saved inputs replayed: {replayed:?}");
    // A folder gone missing or emptied would otherwise pass having checked nothing.
    for (target, count) in replayed {
        assert!(
            count >= 1,
            "no saved input replayed for the fuzz target {target}"
        );
    }
}

/// The targets replayed here are the fuzz crate's targets, every one of them.
#[test]
fn every_fuzz_target_is_replayed() {
    let dir = repo().join("fuzz/fuzz_targets");
    let mut targets: Vec<String> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .map(|e| e.expect("entry").path())
        .filter(|p| p.extension().is_some_and(|e| e == "rs"))
        .map(|p| p.file_stem().expect("name").to_string_lossy().into_owned())
        .collect();
    targets.sort();
    let mut ours = TARGETS.map(String::from).to_vec();
    ours.sort();
    assert_eq!(targets, ours);
}

/// The store seeds reach the record decoder: the second and third (format 2) open to one
/// picture, the first to none (its picture is removed again); a format-1 upsert read as
/// format 2 is refused.
#[test]
fn store_seeds_reach_the_record_decoder() {
    let seeds = store_seeds();
    assert_eq!(harness::store(&seeds[0]), Some(0));
    assert_eq!(harness::store(&seeds[1]), Some(1));
    assert_eq!(harness::store(&seeds[2]), Some(1));
    let mut v1_as_v2 = seeds[1].clone();
    v1_as_v2[0] = 4;
    assert_eq!(harness::store(&v1_as_v2), Some(0));
}
