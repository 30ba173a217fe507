//! The one error enum of the messages crate: why a payload was refused.
use thiserror::Error;

/// Why a payload could not be decoded or a value could not be put on the wire.
#[derive(Debug, Error, Clone, PartialEq, Eq)]
pub enum WireError {
    /// The payload is shorter than the frame header.
    #[error("payload of {0} bytes is too short for an edgeclip frame")]
    TooShort(usize),
    /// The payload does not start with the edgeclip magic.
    #[error("payload is not an edgeclip frame (bad magic)")]
    BadMagic,
    /// The frame was written by another protocol version.
    #[error("protocol version {got} is not supported (this build speaks {expected})")]
    Version {
        /// Version found in the frame.
        got: u16,
        /// Version this build speaks.
        expected: u16,
    },
    /// The frame holds another kind of message than the one expected.
    #[error("unexpected message kind {got} (expected {expected})")]
    Kind {
        /// Kind byte found in the frame.
        got: u8,
        /// Kind byte expected on this topic.
        expected: u8,
    },
    /// The archive is not as long as the header says (a truncated or padded payload).
    #[error("archive of {got} bytes, the header says {declared}")]
    Length {
        /// Length in the header.
        declared: usize,
        /// Length received.
        got: usize,
    },
    /// The payload is larger than the configured limit.
    #[error("payload of {size} bytes exceeds the limit of {limit} bytes")]
    TooLarge {
        /// Payload size.
        size: usize,
        /// Configured limit.
        limit: usize,
    },
    /// rkyv validation refused the archive (truncated, bit-flipped or hostile bytes).
    #[error("invalid archive: {0}")]
    Invalid(String),
    /// A field holds a value the protocol forbids (empty text, NaN in a vector, bad topic...).
    #[error("invalid field {field}: {reason}")]
    Field {
        /// Field name.
        field: &'static str,
        /// What is wrong with it.
        reason: String,
    },
    /// A JSON dashboard message could not be parsed.
    #[error("invalid JSON message: {0}")]
    Json(String),
    /// A Home Assistant discovery config lacks what Home Assistant requires.
    #[error("{component}: {reason}")]
    Discovery {
        /// The Home Assistant component (`text`, `sensor`, ...).
        component: String,
        /// What is missing or wrong.
        reason: String,
    },
}
