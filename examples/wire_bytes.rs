//! Bytes on the wire per search, from real frames: device-ranked (method A), server-ranked
//! (method B, int8 chunks as the device sends them), a fleet search's share per device, and
//! uploading the pictures instead, for 1,000 and 100,000 pictures of a 512-d CLIP (ViT-B/32).
//!
//! `cargo run --release --example wire_bytes` prints a table and writes
//! target/bench/wire_bytes.json. Every edgeclip number is the size of a frame made by
//! `edgeclip_messages::wire::encode` plus its MQTT 3.1.1 framing (PUBLISH fixed header, topic,
//! packet id for QoS 1) and the PUBACK that acknowledges it; TCP/IP headers are left out. The
//! dashboard's own search and results messages are the same in every mode and left out too.

use edgeclip_messages::topics;
use edgeclip_messages::wire::{
    encode, quantise, EncodeReply, EncodeRequest, FleetAnswer, FleetBody, FleetQuery, RankBody,
    RankReply, RankRequest, RankedIds, ReplyBody, TextVector,
};
use edgeclip_messages::Hit;

const DIM: usize = 512;
const K: usize = 10;
const MODEL: &str = "ViT-B-32__openai@0123456789ab";
const TEXT: &str = "red car in the driveway";
const DEVICE: &str = "nas";
/// The device's default `search.server_chunk_vectors` (what fits a 1 MiB broker message).
const CHUNK: usize = 1024;
/// A 12-megapixel phone JPEG, typically 2.5 to 4 MB: the upload that edgeclip avoids.
const PHOTO_BYTES: u64 = 3_000_000;

/// Bytes of one QoS 1 PUBLISH of `payload` on `topic`, plus its PUBACK.
fn mqtt(topic: &str, payload: usize) -> u64 {
    let remaining = 2 + topic.len() + 2 + payload;
    let varint = match remaining {
        0..=127 => 1,
        128..=16_383 => 2,
        16_384..=2_097_151 => 3,
        _ => 4,
    };
    (1 + varint + remaining) as u64 + 4
}

/// A deterministic unit vector.
fn vector(seed: usize) -> Vec<f32> {
    let mut x = (seed as u64 + 1).wrapping_mul(0x9E37_79B9_7F4A_7C15);
    let mut v: Vec<f32> = (0..DIM)
        .map(|_| {
            x = x
                .wrapping_mul(6364136223846793005)
                .wrapping_add(1442695040888963407);
            ((x >> 40) as f32 / (1u64 << 24) as f32) - 0.5
        })
        .collect();
    let norm = v.iter().map(|a| a * a).sum::<f32>().sqrt();
    v.iter_mut().for_each(|a| *a /= norm);
    v
}

/// Method A: one encode request, one reply with the text vector; independent of the pictures.
fn device_ranked() -> anyhow::Result<u64> {
    let reply_to = topics::cloud_reply(DEVICE);
    let request = encode(&EncodeRequest {
        request_id: 1,
        reply_to: reply_to.clone(),
        model: MODEL.into(),
        text: TEXT.into(),
        lang: None,
    })?;
    let reply = encode(&EncodeReply {
        request_id: 1,
        body: ReplyBody::Vector(TextVector {
            model: MODEL.into(),
            vector: vector(0),
        }),
    })?;
    Ok(mqtt(topics::CLOUD_ENCODE, request.len()) + mqtt(&reply_to, reply.len()))
}

/// Method B: the vectors in int8 chunks, each answered with its top k.
fn server_ranked(pictures: usize) -> anyhow::Result<(u64, usize)> {
    let reply_to = topics::cloud_reply(DEVICE);
    let chunks = pictures.div_ceil(CHUNK);
    let mut total = 0;
    for chunk in 0..chunks {
        let ids: Vec<u32> = (chunk * CHUNK..((chunk + 1) * CHUNK).min(pictures))
            .map(|i| i as u32)
            .collect();
        let (mut codes, mut scales) = (
            Vec::with_capacity(ids.len() * DIM),
            Vec::with_capacity(ids.len()),
        );
        for &id in &ids {
            scales.push(quantise(&vector(id as usize + 1), &mut codes));
        }
        let request = encode(&RankRequest {
            request_id: 1,
            reply_to: reply_to.clone(),
            model: MODEL.into(),
            text: TEXT.into(),
            lang: None,
            k: K as u32,
            chunk: chunk as u32,
            chunks: chunks as u32,
            dim: DIM as u32,
            ids: ids.clone(),
            scales,
            codes,
        })?;
        let top = ids.len().min(K);
        let ranked = RankedIds {
            model: MODEL.into(),
            ids: ids[..top].to_vec(),
            scores: vec![0.3; top],
        };
        let reply = encode(&RankReply {
            request_id: 1,
            chunk: chunk as u32,
            body: RankBody::Ranked(ranked),
        })?;
        total += mqtt(topics::CLOUD_RANK, request.len()) + mqtt(&reply_to, reply.len());
    }
    Ok((total, chunks))
}

/// A fleet search, per device: the query with the text vector, the answer with k hits.
fn fleet_per_device() -> anyhow::Result<u64> {
    let reply_to = topics::fleet_answers("cloud-1");
    let query = encode(&FleetQuery {
        request_id: 1,
        reply_to: reply_to.clone(),
        k: K as u32,
        vector: TextVector {
            model: MODEL.into(),
            vector: vector(0),
        },
    })?;
    let hits = (0..K)
        .map(|i| Hit {
            path: format!("/srv/photos/2024/06/IMG_{:04}.jpg", 1000 + i),
            score: 0.3,
            taken_s: 1_717_000_000,
            id: format!("{:016x}", 0x5eed_0000_u64 + i as u64),
            bytes: 3_500_000,
            width: 4032,
            height: 3024,
            thumb_url: Some(format!(
                "http://192.168.1.20:8090/thumb/{:016x}",
                0x5eed_0000_u64 + i as u64
            )),
            ..Hit::default()
        })
        .collect();
    let answer = encode(&FleetAnswer {
        request_id: 1,
        device: DEVICE.into(),
        body: FleetBody::Hits(hits),
    })?;
    Ok(mqtt(&topics::fleet_query(DEVICE), query.len()) + mqtt(&reply_to, answer.len()))
}

fn main() -> anyhow::Result<()> {
    let samples = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("models/samples");
    let (mut n, mut bytes) = (0u64, 0u64);
    for entry in std::fs::read_dir(&samples)? {
        let path = entry?.path();
        if path.extension().is_some_and(|e| e == "jpg") {
            n += 1;
            bytes += std::fs::metadata(&path)?.len();
        }
    }
    let sample_mean = bytes / n.max(1);
    let a = device_ranked()?;
    let fleet = fleet_per_device()?;
    println!(
        "bytes on the wire per search (MQTT framing and acks included), {DIM}-d vectors, k = {K}"
    );
    println!(
        "{:>9}  {:>15}  {:>22}  {:>24}  {:>26}",
        "pictures",
        "device-ranked",
        "server-ranked (chunks)",
        "upload 3 MB photos",
        "upload bundled samples"
    );
    let mut rows = Vec::new();
    for pictures in [1_000usize, 100_000] {
        let (b, chunks) = server_ranked(pictures)?;
        let photos = pictures as u64 * PHOTO_BYTES;
        let thumbs = pictures as u64 * sample_mean;
        println!(
            "{pictures:>9}  {a:>15}  {:>22}  {photos:>24}  {thumbs:>26}",
            format!("{b} ({chunks})")
        );
        rows.push(serde_json::json!({
            "pictures": pictures,
            "device_ranked_bytes": a,
            "server_ranked_bytes": b,
            "server_ranked_chunks": chunks,
            "upload_photos_bytes": photos,
            "upload_bundled_samples_bytes": thumbs,
        }));
    }
    println!("fleet search: {fleet} bytes per device asked (query with the text vector + answer with {K} hits), plus one search and one merged answer");
    println!("photo size assumed: {PHOTO_BYTES} bytes; bundled samples (models/samples, {n} small JPEGs): {sample_mean} bytes on average");
    let report = serde_json::json!({
        "dim": DIM,
        "k": K,
        "chunk_vectors": CHUNK,
        "photo_bytes_assumed": PHOTO_BYTES,
        "bundled_sample_mean_bytes": sample_mean,
        "fleet_bytes_per_device": fleet,
        "rows": rows,
    });
    let dir = std::path::Path::new(env!("CARGO_MANIFEST_DIR")).join("target/bench");
    std::fs::create_dir_all(&dir)?;
    std::fs::write(
        dir.join("wire_bytes.json"),
        serde_json::to_string_pretty(&report)?,
    )?;
    println!("written to target/bench/wire_bytes.json");
    Ok(())
}
