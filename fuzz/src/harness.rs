//! What the fuzz targets feed their inputs to: the same decoders and checks that the device
//! and the cloud apply to bytes from the network and the disk. Shared, through `#[path]`, with
//! the workspace's `tests/fuzz_regressions.rs`, which replays the saved inputs on every
//! `cargo test`; each function panics only when an invariant of that path is broken.

use std::path::{Path, PathBuf};
use std::sync::OnceLock;

use edgeclip_cloud::rank::rank_chunk;
use edgeclip_cloud::tokenize::ClipTokenizer;
use edgeclip_device::index::Precision;
use edgeclip_device::index::Store;
use edgeclip_device::index::{Entry, Filter};
use edgeclip_device::preprocess::{decode_bytes, DecodeLimits, PreprocessCfg};
use edgeclip_messages::dashboard::{FleetSearchRequest, SearchRequest};
use edgeclip_messages::topics;
use edgeclip_messages::wire::{
    validate_vector, vector_view, ArchivedFleetBody, ArchivedRankBody, ArchivedReplyBody,
    EncodeReply, EncodeRequest, FleetAnswer, FleetQuery, RankReply, RankRequest, Received,
};

/// Limits as the programs configure them by default (large enough for every real message).
const MAX_PAYLOAD: usize = 4 << 20;
const MAX_TEXT: usize = 4096;

/// Every rkyv decoder of the protocol on one payload, followed by the checks the receiving
/// actor runs before it uses a field.
pub fn wire(data: &[u8]) {
    if let Ok(m) = Received::<EncodeRequest>::decode(data, MAX_PAYLOAD) {
        let r = m.get();
        if r.validate(MAX_TEXT).is_ok() {
            assert!(!r.text.is_empty() && r.text.len() <= MAX_TEXT);
            topics::validate_reply_topic(r.reply_to.as_str())
                .expect("validate() accepted the reply topic");
        }
    }
    if let Ok(m) = Received::<RankRequest>::decode(data, MAX_PAYLOAD) {
        let r = m.get();
        if r.validate(MAX_TEXT, 100_000).is_ok() {
            let dim = r.dim.to_native() as usize;
            let query: Vec<f32> = (0..dim)
                .map(|i| if i % 2 == 0 { 0.5 } else { -0.25 })
                .collect();
            let (ids, scores) = rank_chunk(&query, r);
            assert_eq!(ids.len(), scores.len());
            assert!(ids.len() <= r.k.to_native() as usize);
            assert!(
                scores.windows(2).all(|w| w[0] >= w[1]),
                "scores not best first"
            );
        }
    }
    if let Ok(m) = Received::<EncodeReply>::decode(data, MAX_PAYLOAD) {
        if let ArchivedReplyBody::Vector(v) = &m.get().body {
            rank_received(&vector_view(&v.vector));
        }
    }
    if let Ok(m) = Received::<RankReply>::decode(data, MAX_PAYLOAD) {
        if let ArchivedRankBody::Ranked(r) = &m.get().body {
            let _ = r
                .ids
                .iter()
                .zip(r.scores.iter())
                .map(|(i, s)| (i.to_native(), s.to_native()))
                .count();
        }
    }
    if let Ok(m) = Received::<FleetQuery>::decode(data, MAX_PAYLOAD) {
        let q = m.get();
        if q.validate().is_ok() {
            rank_received(&vector_view(&q.vector.vector));
        }
        let _ = topics::validate_fleet_answer_topic(q.reply_to.as_str());
    }
    if let Ok(m) = Received::<FleetAnswer>::decode(data, MAX_PAYLOAD) {
        // the fleet worker's merge: finite scores only, with the hit's path and time
        if let ArchivedFleetBody::Hits(hits) = &m.get().body {
            for h in hits.iter().filter(|h| h.score.to_native().is_finite()) {
                let _ = (
                    h.path.to_string(),
                    h.taken_s.to_native(),
                    m.get().device.as_str(),
                );
            }
        }
    }
}

/// A received text vector ranked the way the device's index actor does: checked first, then
/// scored against a small index of the same dimension (a wrong dimension is an error).
fn rank_received(vector: &[f32]) {
    if validate_vector(vector).is_err() {
        return;
    }
    let dim = vector.len();
    let mut index = edgeclip_device::index::Index::new("m", 4);
    for i in 0..3u8 {
        let entry = Entry {
            path: PathBuf::from(format!("p{i}")),
            size: 1,
            mtime_ns: 0,
            hash: [i; 32],
            width: 1,
            height: 1,
            taken_s: 0,
            source: Box::default(),
        };
        index
            .upsert(entry, &[1.0, 0.0, f32::from(i), 0.5])
            .expect("upsert");
    }
    match index.search_filtered("m", vector, 2, &Filter::default(), None) {
        Ok(hits) => {
            assert_eq!(dim, 4, "a vector of another dimension was ranked");
            assert!(hits.len() <= 2);
        }
        Err(_) => assert_ne!(
            dim, 4,
            "a valid vector of the index's dimension was refused"
        ),
    }
}

/// The JSON messages: searches from dashboards and the CLI, fleet searches, topic names.
pub fn json(data: &[u8]) {
    if let Ok(r) = SearchRequest::parse(data, MAX_TEXT) {
        assert!(r.text.len() <= MAX_TEXT);
    }
    let _ = FleetSearchRequest::parse(data, MAX_TEXT);
    if let Ok(s) = std::str::from_utf8(data) {
        let _ = topics::validate_reply_topic(s);
        let _ = topics::validate_device_id(s);
    }
}

fn clip_cfg() -> &'static PreprocessCfg {
    static CFG: OnceLock<PreprocessCfg> = OnceLock::new();
    CFG.get_or_init(|| {
        PreprocessCfg::from_json(
            br#"{"size": 224, "mode": "RGB", "mean": [0.48145466, 0.4578275, 0.40821073],
                "std": [0.26862954, 0.26130258, 0.27577711], "interpolation": "bicubic",
                "resize_mode": "shortest", "fill_color": 0}"#,
        )
        .expect("CLIP preprocessing config")
    })
}

/// A picture as the image encoder sees it: bounded decoding with EXIF orientation, CLIP
/// preprocessing, capture time; and as the HTTP endpoint sees it: a thumbnail.
pub fn picture(data: &[u8]) {
    // Smaller than the device's defaults so that each run stays fast; the code path is the same.
    let limits = DecodeLimits {
        max_side: 4096,
        max_alloc: 64 << 20,
    };
    if let Ok(img) = decode_bytes(data, limits) {
        assert!(img.width() > 0 && img.height() > 0);
        assert!(img.width() <= limits.max_side && img.height() <= limits.max_side);
        let cfg = clip_cfg();
        // A picture that cannot be prepared is an error, never a wrong input.
        if let Ok(t) = cfg.tensor(&img) {
            assert_eq!(t.len(), cfg.tensor_len());
            assert!(t.iter().all(|v| v.is_finite()), "non-finite model input");
        }
    }
    // The image encoder's path: large JPEGs decoded at a reduced scale, the rest as above.
    if let Ok((t, (w, h))) = clip_cfg().picture(data, limits) {
        assert_eq!(t.len(), clip_cfg().tensor_len());
        assert!(
            t.iter().all(|v| v.is_finite()),
            "non-finite model input (scaled decode)"
        );
        assert!(w > 0 && h > 0 && w <= limits.max_side && h <= limits.max_side);
    }
    let _ = edgeclip_device::metadata::Exif::read(data);
    let _ = edgeclip_device::thumb::make_thumbnail(data, 64, limits);
}

fn tokenizer() -> &'static ClipTokenizer {
    static TOK: OnceLock<ClipTokenizer> = OnceLock::new();
    TOK.get_or_init(|| {
        let path = Path::new(env!("CARGO_MANIFEST_DIR"))
            .join("../models/clip-shapes/textual/tokenizer.json");
        let path = if path.exists() {
            path
        } else {
            Path::new(env!("CARGO_MANIFEST_DIR")).join("models/clip-shapes/textual/tokenizer.json")
        };
        ClipTokenizer::from_file(&path, 77).expect("the shipped tokenizer")
    })
}

/// A search text as the cloud tokenizes it: always exactly one row of the context length,
/// starting with the start token and holding one end token.
pub fn tokenize(data: &[u8]) {
    let Ok(text) = std::str::from_utf8(data) else {
        return;
    };
    if text.len() > MAX_TEXT {
        return;
    }
    let tok = tokenizer();
    if let Ok(ids) = tok.encode(text) {
        assert_eq!(ids.len(), tok.context_length());
        assert!(
            ids.iter().all(|&i| (0..49_408).contains(&i)),
            "id out of the vocabulary"
        );
    }
}

const DIM: usize = 4;

/// The persistent index opened from damaged files (format 1 or 2, by the first byte). The input is cut into records, each
/// written with a correct length and checksum (so that the record decoder is reached) unless
/// its first byte says to break the checksum; the last part is appended raw, as a torn tail.
/// Opening must succeed or fail cleanly; an index that opened must survive compaction and
/// reopen to the same pictures. Returns the number of pictures of the index that opened.
pub fn store(data: &[u8]) -> Option<usize> {
    let (&mode, rest) = data.split_first()?;
    let precision = match mode % 3 {
        0 => Precision::F32,
        1 => Precision::F16,
        _ => Precision::I8,
    };
    let mut parts = rest.split(|&b| b == 0xA5).collect::<Vec<_>>();
    let tail = parts.pop().unwrap_or_default();
    // format 1 (no source id in upserts) or 2
    let version = 1 + u32::from(mode / 3 % 2);
    let mut journal = header(b"ECJL", version);
    for body in parts {
        let (crc_ok, body) = match body.split_first() {
            Some((&flag, b)) => (flag & 0x80 == 0, b),
            None => (true, body),
        };
        let crc = crc32fast::hash(body) ^ u32::from(!crc_ok);
        journal.extend_from_slice(&(body.len() as u32).to_le_bytes());
        journal.extend_from_slice(&crc.to_le_bytes());
        journal.extend_from_slice(body);
    }
    journal.extend_from_slice(tail);
    let dir = tempfile::tempdir().expect("temporary folder");
    let index_dir = dir.path().join("index");
    std::fs::create_dir_all(&index_dir).expect("index folder");
    std::fs::write(index_dir.join("journal.bin"), &journal).expect("journal written");
    let (mut store, mut index, _report) = Store::open_with(&index_dir, "m", DIM, precision).ok()?;
    let pictures = index.len();
    let mut paths: Vec<PathBuf> = index.iter().map(|(e, _)| e.path.clone()).collect();
    paths.sort();
    paths.dedup();
    assert_eq!(paths.len(), pictures, "a picture is in the index twice");
    store
        .compact(&mut index)
        .expect("compaction of an opened index");
    drop(store);
    let (_, again, report) =
        Store::open_with(&index_dir, "m", DIM, precision).expect("reopen after compaction");
    assert_eq!(again.len(), pictures, "compaction changed the pictures");
    assert_eq!(report.reset, None);
    Some(pictures)
}

fn header(magic: &[u8; 4], version: u32) -> Vec<u8> {
    let mut h = magic.to_vec();
    h.extend_from_slice(&version.to_le_bytes());
    h.extend_from_slice(&(DIM as u32).to_le_bytes());
    h.extend_from_slice(&1u32.to_le_bytes());
    h.extend_from_slice(b"m");
    h
}
