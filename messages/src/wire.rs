//! The rkyv messages between device and cloud, and their framing.
//!
//! Every payload is a frame: a 12-byte header (`b"EC"`, protocol version as u16 LE, message
//! kind, three zero bytes, archive length as u32 LE) followed by the rkyv archive. The header lets a receiver refuse a
//! foreign payload or another protocol version with a clear error before looking at the
//! archive. Archives are only ever read through [`Received`], which copies the archive once
//! into a 16-byte-aligned buffer (MQTT payloads sit at arbitrary offsets of the read buffer)
//! and validates it with bytecheck; after that, fields are read in place, without
//! deserialising — the device ranks directly on the received vector via [`vector_view`].

use std::borrow::Cow;
use std::marker::PhantomData;

use rkyv::api::high::HighValidator;
use rkyv::bytecheck::CheckBytes;
use rkyv::rancor;
use rkyv::util::AlignedVec;
use rkyv::{Archive, Deserialize, Portable, Serialize};

pub use crate::hit::Hit;
use crate::WireError;

/// Version of the device<->cloud protocol spoken by this build (encode and rank requests carry
/// the search's language, `lang`; a peer of another version is refused, not misread).
pub const PROTOCOL_VERSION: u16 = 3;
/// Magic at the start of every frame.
pub const MAGIC: [u8; 2] = *b"EC";
/// Size of the frame header.
pub const HEADER_LEN: usize = 12;
/// Largest vector dimension accepted from the wire (real CLIP models use 512..1024).
pub const MAX_DIM: usize = 4096;
/// Longest language code accepted (`zh-Hans-CN`, `deu_Latn`, ...).
pub const MAX_LANG_BYTES: usize = 32;

/// Kind byte of a frame: which message type its archive holds.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
#[repr(u8)]
pub enum Kind {
    /// [`EncodeRequest`].
    EncodeRequest = 1,
    /// [`EncodeReply`].
    EncodeReply = 2,
    /// [`RankRequest`].
    RankRequest = 3,
    /// [`RankReply`].
    RankReply = 4,
    /// [`FleetQuery`].
    FleetQuery = 5,
    /// [`FleetAnswer`].
    FleetAnswer = 6,
}

impl Kind {
    /// The kind of a frame, read from its header without validating the rest.
    pub fn of(payload: &[u8]) -> Option<Kind> {
        match payload.get(4)? {
            1 => Some(Kind::EncodeRequest),
            2 => Some(Kind::EncodeReply),
            3 => Some(Kind::RankRequest),
            4 => Some(Kind::RankReply),
            5 => Some(Kind::FleetQuery),
            6 => Some(Kind::FleetAnswer),
            _ => None,
        }
    }
}

/// A message type that travels in a frame.
pub trait WireMessage: Archive {
    /// Kind byte written in the header.
    const KIND: Kind;
}

/// Device -> cloud: encode this search text with a text tower of `model`'s embedding space.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct EncodeRequest {
    /// Correlates the reply with the request; unique per device.
    pub request_id: u64,
    /// Topic the reply must be published to (see [`crate::topics::cloud_reply`]).
    pub reply_to: String,
    /// Model id the device's index was built with: it names the embedding space the vector
    /// must be in (see [`crate::model_id`]); the cloud refuses other spaces.
    pub model: String,
    /// The search text, UTF-8.
    pub text: String,
    /// The search's language, when known: a FLORES-200 code (`deu_Latn`) or a UI language
    /// code (`de`, `zh-CN`, `pt-BR`) that the cloud maps. A cloud with a multilingual text
    /// tower for the space encodes with it; `None` (or a language no tower serves) gets the
    /// space's default (English) tower. See [`validate_lang`].
    pub lang: Option<String>,
}

impl WireMessage for EncodeRequest {
    const KIND: Kind = Kind::EncodeRequest;
}

/// Why the cloud could not answer with a vector.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, Copy, PartialEq, Eq)]
#[rkyv(derive(Debug, PartialEq, Eq))]
pub enum ErrorCode {
    /// The request was malformed (bad text, bad reply topic...).
    BadRequest,
    /// The cloud serves another model than the one the request names.
    ModelMismatch,
    /// The cloud failed while encoding.
    Internal,
    /// The requester is over one of the cloud's limits (rate, texts in flight); retry later.
    Busy,
}

/// A text vector computed by the cloud.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct TextVector {
    /// Model id whose text tower produced the vector.
    pub model: String,
    /// The L2-normalised vector.
    pub vector: Vec<f32>,
}

/// Why the cloud could not produce a vector.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct CloudFailure {
    /// Machine-readable reason.
    pub code: ErrorCode,
    /// Human-readable reason.
    pub message: String,
}

/// The body of a reply: a vector or an error.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum ReplyBody {
    /// The text vector.
    Vector(TextVector),
    /// The request failed.
    Error(CloudFailure),
}

/// Cloud -> device: the answer to one [`EncodeRequest`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct EncodeReply {
    /// The request this answers.
    pub request_id: u64,
    /// Vector or error.
    pub body: ReplyBody,
}

impl WireMessage for EncodeReply {
    const KIND: Kind = Kind::EncodeReply;
}

/// Device -> cloud, server-ranked mode (method B): encode `text` and rank these vectors
/// against it. A search sends one request per chunk of vectors; chunks are independent (any
/// worker can take any chunk), and the device merges the per-chunk top-k.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct RankRequest {
    /// Correlates the replies with the search.
    pub request_id: u64,
    /// Topic the reply must be published to.
    pub reply_to: String,
    /// Model id of the vectors (their embedding space).
    pub model: String,
    /// The search text.
    pub text: String,
    /// The search's language, as in [`EncodeRequest::lang`].
    pub lang: Option<String>,
    /// Hits wanted from this chunk.
    pub k: u32,
    /// Which chunk this is (0-based) of how many.
    pub chunk: u32,
    /// Number of chunks of the search.
    pub chunks: u32,
    /// Vector dimension.
    pub dim: u32,
    /// The device's ids of the vectors, one per vector.
    pub ids: Vec<u32>,
    /// Per-vector scale of the int8 codes: value = code * scale.
    pub scales: Vec<f32>,
    /// The vectors, int8-quantised, `dim` codes each.
    pub codes: Vec<i8>,
}

impl WireMessage for RankRequest {
    const KIND: Kind = Kind::RankRequest;
}

/// Ranked ids of one chunk.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct RankedIds {
    /// Model id whose text tower encoded the text.
    pub model: String,
    /// The device's ids, best first.
    pub ids: Vec<u32>,
    /// Their scores.
    pub scores: Vec<f32>,
}

/// The body of a rank reply.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum RankBody {
    /// The chunk's best ids.
    Ranked(RankedIds),
    /// The chunk could not be ranked.
    Error(CloudFailure),
}

/// Cloud -> device: the answer to one [`RankRequest`] chunk.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct RankReply {
    /// The search this answers.
    pub request_id: u64,
    /// The chunk this answers.
    pub chunk: u32,
    /// Ranked ids or error.
    pub body: RankBody,
}

impl WireMessage for RankReply {
    const KIND: Kind = Kind::RankReply;
}

/// Cloud -> device, fleet search: rank your pictures against this text vector (encoded once
/// by the worker running the fleet search) and answer on `reply_to`.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct FleetQuery {
    /// Correlates the answers with the fleet search.
    pub request_id: u64,
    /// Topic the answer must be published to (see [`crate::topics::fleet_answers`]).
    pub reply_to: String,
    /// Hits wanted.
    pub k: u32,
    /// The text vector and the model that made it.
    pub vector: TextVector,
}

impl WireMessage for FleetQuery {
    const KIND: Kind = Kind::FleetQuery;
}

impl ArchivedFleetQuery {
    /// Checks the reply topic, `k` and the vector.
    pub fn validate(&self) -> Result<(), WireError> {
        crate::topics::validate_fleet_answer_topic(self.reply_to.as_str())?;
        let k = self.k.to_native();
        if k == 0 || k > 10_000 {
            return Err(WireError::Field {
                field: "k",
                reason: format!("{k} out of 1..=10000"),
            });
        }
        if self.vector.model.is_empty() || self.vector.model.len() > 256 {
            return Err(WireError::Field {
                field: "model",
                reason: "must be 1 to 256 bytes".into(),
            });
        }
        validate_vector(&vector_view(&self.vector.vector))
    }
}

/// The body of a fleet answer.
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub enum FleetBody {
    /// The device's best pictures, best first, as it would answer its own search (with ids,
    /// and thumbnail URLs where its HTTP endpoint is on).
    Hits(Vec<Hit>),
    /// Why the device could not rank (e.g. its index holds another model).
    Error(String),
}

/// Device -> cloud: one device's answer to a [`FleetQuery`].
#[derive(Archive, Serialize, Deserialize, Debug, Clone, PartialEq)]
#[rkyv(derive(Debug))]
pub struct FleetAnswer {
    /// The fleet search this answers.
    pub request_id: u64,
    /// The answering device.
    pub device: String,
    /// Hits or error.
    pub body: FleetBody,
}

impl WireMessage for FleetAnswer {
    const KIND: Kind = Kind::FleetAnswer;
}

impl ArchivedRankRequest {
    /// Checks text, reply topic, model and that ids, scales and codes agree in size.
    pub fn validate(&self, max_text_bytes: usize, max_vectors: usize) -> Result<(), WireError> {
        let bad = |field: &'static str, reason: String| Err(WireError::Field { field, reason });
        if self.text.is_empty() || self.text.len() > max_text_bytes {
            return bad("text", format!("must be 1 to {max_text_bytes} bytes"));
        }
        if self.model.is_empty() || self.model.len() > 256 {
            return bad("model", "must be 1 to 256 bytes".into());
        }
        if let Some(lang) = self.lang.as_ref() {
            validate_lang(lang.as_str())?;
        }
        crate::topics::validate_reply_topic(self.reply_to.as_str())?;
        let (dim, n) = (self.dim.to_native() as usize, self.ids.len());
        if dim == 0 || dim > MAX_DIM {
            return bad("dim", format!("{dim} out of 1..={MAX_DIM}"));
        }
        if n > max_vectors {
            return bad(
                "ids",
                format!("{n} vectors in one chunk, the limit is {max_vectors}"),
            );
        }
        if self.scales.len() != n || self.codes.len() != n * dim {
            return bad(
                "codes",
                format!(
                    "{n} ids, {} scales and {} codes do not fit dimension {dim}",
                    self.scales.len(),
                    self.codes.len()
                ),
            );
        }
        if self.scales.iter().any(|s| !s.to_native().is_finite()) {
            return bad("scales", "not finite".into());
        }
        let k = self.k.to_native();
        if k == 0 || k > 10_000 {
            return bad("k", format!("{k} out of 1..=10000"));
        }
        if self.chunks.to_native() == 0 || self.chunk.to_native() >= self.chunks.to_native() {
            return bad("chunk", "chunk must be below chunks".into());
        }
        Ok(())
    }
}

/// int8 quantisation of unit vectors for server-ranked searches: each vector is scaled so its
/// largest magnitude maps to 127; a dot product with a float query is `scale * sum(q_i * x_i)`.
pub fn quantise(vector: &[f32], codes: &mut Vec<i8>) -> f32 {
    let max = vector.iter().fold(0.0f32, |m, v| m.max(v.abs()));
    let scale = if max > 0.0 { max / 127.0 } else { 1.0 };
    codes.extend(
        vector
            .iter()
            .map(|v| (v / scale).round().clamp(-127.0, 127.0) as i8),
    );
    scale
}

/// Dot product of a float query with an int8-quantised vector.
pub fn dot_quantised(query: &[f32], scale: f32, codes: &[i8]) -> f32 {
    scale
        * query
            .iter()
            .zip(codes)
            .map(|(q, &c)| q * c as f32)
            .sum::<f32>()
}

/// Serialises a message into a frame ready to publish.
pub fn encode<T>(message: &T) -> Result<Vec<u8>, WireError>
where
    T: WireMessage
        + for<'a> Serialize<
            rkyv::api::high::HighSerializer<
                AlignedVec,
                rkyv::ser::allocator::ArenaHandle<'a>,
                rancor::Error,
            >,
        >,
{
    let archive =
        rkyv::to_bytes::<rancor::Error>(message).map_err(|e| WireError::Invalid(e.to_string()))?;
    let mut frame = Vec::with_capacity(HEADER_LEN + archive.len());
    frame.extend_from_slice(&MAGIC);
    frame.extend_from_slice(&PROTOCOL_VERSION.to_le_bytes());
    frame.extend_from_slice(&[T::KIND as u8, 0, 0, 0]);
    frame.extend_from_slice(&(archive.len() as u32).to_le_bytes());
    frame.extend_from_slice(&archive);
    Ok(frame)
}

/// A validated frame whose archive is read in place.
pub struct Received<T> {
    archive: AlignedVec<16>,
    _message: PhantomData<T>,
}

impl<T> std::fmt::Debug for Received<T> {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Received")
            .field("archive_len", &self.archive.len())
            .finish()
    }
}

impl<T> Received<T>
where
    T: WireMessage,
    T::Archived: Portable + for<'a> CheckBytes<HighValidator<'a, rancor::Error>>,
{
    /// Checks the frame header, copies the archive into an aligned buffer and validates it.
    /// `limit` bounds the payload size before anything is copied.
    pub fn decode(payload: &[u8], limit: usize) -> Result<Self, WireError> {
        if payload.len() > limit {
            return Err(WireError::TooLarge {
                size: payload.len(),
                limit,
            });
        }
        if payload.len() < HEADER_LEN {
            return Err(WireError::TooShort(payload.len()));
        }
        if payload[..2] != MAGIC {
            return Err(WireError::BadMagic);
        }
        let version = u16::from_le_bytes([payload[2], payload[3]]);
        if version != PROTOCOL_VERSION {
            return Err(WireError::Version {
                got: version,
                expected: PROTOCOL_VERSION,
            });
        }
        if payload[4] != T::KIND as u8 {
            return Err(WireError::Kind {
                got: payload[4],
                expected: T::KIND as u8,
            });
        }
        let declared =
            u32::from_le_bytes([payload[8], payload[9], payload[10], payload[11]]) as usize;
        if declared != payload.len() - HEADER_LEN {
            return Err(WireError::Length {
                declared,
                got: payload.len() - HEADER_LEN,
            });
        }
        let mut archive = AlignedVec::<16>::with_capacity(payload.len() - HEADER_LEN);
        archive.extend_from_slice(&payload[HEADER_LEN..]);
        rkyv::access::<T::Archived, rancor::Error>(&archive)
            .map_err(|e| WireError::Invalid(e.to_string()))?;
        Ok(Self {
            archive,
            _message: PhantomData,
        })
    }

    /// The archived message, read in place.
    pub fn get(&self) -> &T::Archived {
        // SAFETY: `decode` validated these exact bytes with `rkyv::access` (bytecheck), and the
        // buffer is private and never mutated afterwards.
        unsafe { rkyv::access_unchecked::<T::Archived>(&self.archive) }
    }
}

impl ArchivedEncodeRequest {
    /// Checks the fields a cloud relies on: a non-empty text of at most `max_text_bytes`, a
    /// reply topic under a device, a model id.
    pub fn validate(&self, max_text_bytes: usize) -> Result<(), WireError> {
        if self.text.is_empty() {
            return Err(WireError::Field {
                field: "text",
                reason: "is empty".into(),
            });
        }
        if self.text.len() > max_text_bytes {
            return Err(WireError::Field {
                field: "text",
                reason: format!(
                    "{} bytes is over the limit of {max_text_bytes}",
                    self.text.len()
                ),
            });
        }
        if self.model.is_empty() || self.model.len() > 256 {
            return Err(WireError::Field {
                field: "model",
                reason: "must be 1 to 256 bytes".into(),
            });
        }
        if let Some(lang) = self.lang.as_ref() {
            validate_lang(lang.as_str())?;
        }
        crate::topics::validate_reply_topic(self.reply_to.as_str())
    }
}

/// Checks a search's language code: 1 to [`MAX_LANG_BYTES`] ASCII letters, digits, `-` or
/// `_` (UI codes such as `zh-CN` or `sr_Cyrl`, FLORES-200 codes such as `deu_Latn`). Whether a
/// text tower serves it is the cloud's business; this only keeps the field a plain code.
pub fn validate_lang(lang: &str) -> Result<(), WireError> {
    if lang.is_empty()
        || lang.len() > MAX_LANG_BYTES
        || !lang
            .bytes()
            .all(|b| b.is_ascii_alphanumeric() || b == b'-' || b == b'_')
    {
        return Err(WireError::Field {
            field: "lang",
            reason: format!(
                "must be 1 to {MAX_LANG_BYTES} letters, digits, '-' or '_' (a language code such as de, zh-CN or deu_Latn)"
            ),
        });
    }
    Ok(())
}

/// Checks a received vector: non-empty, at most [`MAX_DIM`] values, all finite.
pub fn validate_vector(vector: &[f32]) -> Result<(), WireError> {
    if vector.is_empty() || vector.len() > MAX_DIM {
        return Err(WireError::Field {
            field: "vector",
            reason: format!("dimension {} out of 1..={MAX_DIM}", vector.len()),
        });
    }
    if let Some(i) = vector.iter().position(|v| !v.is_finite()) {
        return Err(WireError::Field {
            field: "vector",
            reason: format!("value {i} is not finite"),
        });
    }
    Ok(())
}

/// The archived vector as `&[f32]`, without copying on little-endian targets (all of
/// edgeclip's: x86-64, aarch64, armv7); big-endian targets get a converted copy.
pub fn vector_view(vector: &rkyv::vec::ArchivedVec<rkyv::rend::f32_le>) -> Cow<'_, [f32]> {
    #[cfg(target_endian = "little")]
    {
        const _: () =
            assert!(std::mem::size_of::<rkyv::rend::f32_le>() == std::mem::size_of::<f32>());
        const _: () =
            assert!(std::mem::align_of::<rkyv::rend::f32_le>() == std::mem::align_of::<f32>());
        let slice = vector.as_slice();
        // SAFETY: on a little-endian target `f32_le` is a `repr(C)` wrapper over the native bytes
        // of an f32, with the same size and alignment (checked above); every bit pattern is a
        // valid f32.
        Cow::Borrowed(unsafe {
            std::slice::from_raw_parts(slice.as_ptr().cast::<f32>(), slice.len())
        })
    }
    #[cfg(not(target_endian = "little"))]
    {
        Cow::Owned(vector.iter().map(|v| v.to_native()).collect())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn request() -> EncodeRequest {
        EncodeRequest {
            request_id: 42,
            reply_to: "edgeclip/cam1/cloud/reply".into(),
            model: "clip-shapes@0123456789ab".into(),
            text: "a red circle".into(),
            lang: None,
        }
    }

    #[test]
    fn request_round_trips_through_a_frame() {
        let frame = encode(&request()).unwrap();
        let got = Received::<EncodeRequest>::decode(&frame, 1 << 20).unwrap();
        let r = got.get();
        assert_eq!(r.request_id, 42);
        assert_eq!(r.text.as_str(), "a red circle");
        assert!(r.lang.is_none());
        assert!(r.validate(1024).is_ok());
        let german = EncodeRequest {
            lang: Some("de".into()),
            text: "ein roter Kreis".into(),
            ..request()
        };
        let got = Received::<EncodeRequest>::decode(&encode(&german).unwrap(), 1 << 20).unwrap();
        assert_eq!(got.get().lang.as_ref().map(|l| l.as_str()), Some("de"));
        assert!(got.get().validate(1024).is_ok());
    }

    #[test]
    fn language_codes_are_plain_codes() {
        for good in ["de", "zh-CN", "pt_BR", "deu_Latn", "sr-Cyrl", "zh-Hans-CN"] {
            assert!(validate_lang(good).is_ok(), "{good}");
        }
        for bad in [
            "",
            "de CH",
            "de/",
            "x".repeat(MAX_LANG_BYTES + 1).as_str(),
            "ü",
        ] {
            assert!(validate_lang(bad).is_err(), "{bad:?}");
        }
        let r = EncodeRequest {
            lang: Some("de/../x".into()),
            ..request()
        };
        let f = Received::<EncodeRequest>::decode(&encode(&r).unwrap(), 1 << 20).unwrap();
        assert!(f.get().validate(1024).is_err());
    }

    #[test]
    fn reply_vector_is_read_in_place_even_from_a_misaligned_payload() {
        let reply = EncodeReply {
            request_id: 7,
            body: ReplyBody::Vector(TextVector {
                model: "m".into(),
                vector: vec![0.6, -0.8, 0.0],
            }),
        };
        let frame = encode(&reply).unwrap();
        let mut shifted = vec![0u8; 3];
        shifted.extend_from_slice(&frame);
        let got = Received::<EncodeReply>::decode(&shifted[3..], 1 << 20).unwrap();
        match &got.get().body {
            ArchivedReplyBody::Vector(v) => {
                assert_eq!(v.model.as_str(), "m");
                assert_eq!(&*vector_view(&v.vector), &[0.6, -0.8, 0.0]);
                assert!(matches!(vector_view(&v.vector), Cow::Borrowed(_)));
            }
            other => panic!("unexpected {other:?}"),
        }
    }

    #[test]
    fn refuses_foreign_and_future_frames() {
        let mut frame = encode(&request()).unwrap();
        assert_eq!(
            Received::<EncodeRequest>::decode(b"hello", 100).unwrap_err(),
            WireError::TooShort(5)
        );
        assert_eq!(
            Received::<EncodeRequest>::decode(b"XX\x01\x00\x01\0\0\0\x04\0\0\0abcd", 100)
                .unwrap_err(),
            WireError::BadMagic
        );
        assert!(matches!(
            Received::<EncodeReply>::decode(&frame, 1 << 20),
            Err(WireError::Kind {
                got: 1,
                expected: 2
            })
        ));
        assert!(matches!(
            Received::<EncodeRequest>::decode(&frame, 10),
            Err(WireError::TooLarge { .. })
        ));
        frame[2] = 9;
        assert_eq!(
            Received::<EncodeRequest>::decode(&frame, 1 << 20).unwrap_err(),
            WireError::Version {
                got: 9,
                expected: PROTOCOL_VERSION
            }
        );
    }

    #[test]
    fn truncated_and_bit_flipped_archives_are_rejected_not_trusted() {
        let frame = encode(&request()).unwrap();
        for cut in HEADER_LEN..frame.len() {
            assert!(
                Received::<EncodeRequest>::decode(&frame[..cut], 1 << 20).is_err(),
                "cut at {cut}"
            );
        }
        // Every single-bit flip either fails validation or yields a structurally valid message;
        // none may panic or read out of bounds.
        for byte in HEADER_LEN..frame.len() {
            for bit in 0..8 {
                let mut flipped = frame.clone();
                flipped[byte] ^= 1 << bit;
                if let Ok(msg) = Received::<EncodeRequest>::decode(&flipped, 1 << 20) {
                    let _ = msg.get().validate(1024);
                }
            }
        }
    }

    #[test]
    fn request_fields_are_checked() {
        let mut r = request();
        r.text = String::new();
        let f = Received::<EncodeRequest>::decode(&encode(&r).unwrap(), 1 << 20).unwrap();
        assert!(f.get().validate(1024).is_err());
        let mut r = request();
        r.text = "x".repeat(2000);
        let f = Received::<EncodeRequest>::decode(&encode(&r).unwrap(), 1 << 20).unwrap();
        assert!(f.get().validate(1024).is_err());
        let mut r = request();
        r.reply_to = "edgeclip/#".into();
        let f = Received::<EncodeRequest>::decode(&encode(&r).unwrap(), 1 << 20).unwrap();
        assert!(f.get().validate(1024).is_err());
    }

    #[test]
    fn quantised_dot_products_stay_close_to_float_ones() {
        let v: Vec<f32> = (0..64)
            .map(|i| ((i * 37 % 19) as f32 - 9.0) / 30.0)
            .collect();
        let q: Vec<f32> = (0..64)
            .map(|i| ((i * 11 % 13) as f32 - 6.0) / 20.0)
            .collect();
        let mut codes = Vec::new();
        let scale = quantise(&v, &mut codes);
        let exact: f32 = v.iter().zip(&q).map(|(a, b)| a * b).sum();
        assert!(
            (dot_quantised(&q, scale, &codes) - exact).abs() < 0.01,
            "{exact}"
        );
    }

    #[test]
    fn rank_requests_are_checked_for_consistent_sizes() {
        let mut codes = Vec::new();
        let scale = quantise(&[0.6, 0.8], &mut codes);
        let mut r = RankRequest {
            request_id: 1,
            reply_to: "edgeclip/cam/cloud/reply".into(),
            model: "m".into(),
            text: "a red circle".into(),
            lang: Some("fr".into()),
            k: 5,
            chunk: 0,
            chunks: 1,
            dim: 2,
            ids: vec![7],
            scales: vec![scale],
            codes,
        };
        let ok = Received::<RankRequest>::decode(&encode(&r).unwrap(), 1 << 20).unwrap();
        assert!(ok.get().validate(100, 10).is_ok());
        assert!(ok.get().validate(100, 0).is_err());
        let mut bad_lang = r.clone();
        bad_lang.lang = Some(String::new());
        let bad = Received::<RankRequest>::decode(&encode(&bad_lang).unwrap(), 1 << 20).unwrap();
        assert!(bad.get().validate(100, 10).is_err());
        r.ids.push(8);
        let bad = Received::<RankRequest>::decode(&encode(&r).unwrap(), 1 << 20).unwrap();
        assert!(bad.get().validate(100, 10).is_err());
        assert_eq!(Kind::of(&encode(&r).unwrap()), Some(Kind::RankRequest));
    }

    #[test]
    fn fleet_queries_and_answers_round_trip_and_are_checked() {
        let mut q = FleetQuery {
            request_id: 9,
            reply_to: crate::topics::fleet_answers("w1"),
            k: 5,
            vector: TextVector {
                model: "m".into(),
                vector: vec![0.6, 0.8],
            },
        };
        let got = Received::<FleetQuery>::decode(&encode(&q).unwrap(), 1 << 20).unwrap();
        assert!(got.get().validate().is_ok());
        assert_eq!(Kind::of(&encode(&q).unwrap()), Some(Kind::FleetQuery));
        q.reply_to = "edgeclip/cam/search".into();
        assert!(
            Received::<FleetQuery>::decode(&encode(&q).unwrap(), 1 << 20)
                .unwrap()
                .get()
                .validate()
                .is_err()
        );
        q.reply_to = crate::topics::fleet_answers("w1");
        q.vector.vector = vec![f32::NAN];
        assert!(
            Received::<FleetQuery>::decode(&encode(&q).unwrap(), 1 << 20)
                .unwrap()
                .get()
                .validate()
                .is_err()
        );
        let a = FleetAnswer {
            request_id: 9,
            device: "cam".into(),
            body: FleetBody::Hits(vec![Hit {
                path: "/p/a.jpg".into(),
                score: 0.5,
                taken_s: 3,
                id: "00000000000000aa".into(),
                thumb_url: Some("http://cam.local/thumb/00000000000000aa".into()),
                ..Hit::default()
            }]),
        };
        let got = Received::<FleetAnswer>::decode(&encode(&a).unwrap(), 1 << 20).unwrap();
        assert_eq!(got.get().device.as_str(), "cam");
        assert!(
            matches!(&got.get().body, ArchivedFleetBody::Hits(h) if h[0].path.as_str() == "/p/a.jpg"
                && h[0].id.as_str() == "00000000000000aa" && h[0].thumb_url.is_some())
        );
    }

    #[test]
    fn vectors_with_nan_or_bad_dimensions_are_rejected() {
        assert!(validate_vector(&[0.1, 0.2]).is_ok());
        assert!(validate_vector(&[]).is_err());
        assert!(validate_vector(&[0.1, f32::NAN]).is_err());
        assert!(validate_vector(&[f32::INFINITY]).is_err());
        assert!(validate_vector(&vec![0.0; MAX_DIM + 1]).is_err());
    }
}
