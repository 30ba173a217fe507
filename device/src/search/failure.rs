//! Why a search failed, and why the index side gave no result: each `Display` is the `error`
//! of the answer, word for word what dashboards and tests see.

use std::fmt;
use std::time::Duration;

use edgeclip_messages::wire::{ArchivedCloudFailure, ArchivedErrorCode, ErrorCode};
use edgeclip_messages::WireError;

use crate::error::DeviceError;

/// Why the index side gave no result.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum IndexError {
    /// The index refused the work (no such picture, a vector of another model, too many
    /// pictures...); the reason is shown to the user as it is.
    Refused(String),
    /// The index side failed without an answer (its thread panicked, it is gone).
    NoAnswer(String),
    /// The index side did not answer within its timeout.
    TimedOut,
}

impl fmt::Display for IndexError {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            IndexError::Refused(reason) => f.write_str(reason),
            IndexError::NoAnswer(e) => write!(f, "index did not answer: {e}"),
            IndexError::TimedOut => f.write_str("index did not answer: timeout"),
        }
    }
}

impl std::error::Error for IndexError {}

impl From<DeviceError> for IndexError {
    /// What the [`crate::index::CatalogReader`] refuses, in its own words.
    fn from(e: DeviceError) -> Self {
        IndexError::Refused(e.to_string())
    }
}

/// Why a search failed.
#[derive(Debug, Clone, PartialEq)]
pub enum Failure {
    /// The search could not be parsed, or asks for something no search may (an empty text, a
    /// `k` of 0...): the same checks for a payload and for an in-process search.
    BadSearch(WireError),
    /// The cloud did not answer within this long.
    CloudTimeout(Duration),
    /// The cloud answered with an error.
    CloudRefused {
        /// The cloud's reason.
        code: ErrorCode,
        /// The cloud's message.
        message: String,
    },
    /// The cloud's text vector cannot be ranked (empty, too long, a value that is not finite).
    UnusableVector(WireError),
    /// The cloud ranked a server-ranked chunk with another model than the exported vectors'.
    ForeignModel {
        /// The model the cloud used.
        cloud: String,
        /// The model of the device's vectors.
        device: String,
    },
    /// A server-ranked chunk's reply names a chunk or ids the search did not send, or its
    /// ids and scores differ in number.
    RankingDoesNotFit,
    /// A server-ranked chunk's reply holds a score that is not a finite number (it would sort
    /// above every real score).
    NonFiniteScore,
    /// The index side gave no result.
    Index(IndexError),
    /// A request could not be framed.
    Wire(WireError),
    /// A fleet query failed validation.
    BadFleetQuery(WireError),
    /// The search asks the cloud to rank, which sends every picture vector of the device to
    /// the broker and the cloud; only the device's owner may turn that on.
    ServerModeOff,
}

impl Failure {
    /// The cloud's refusal as it was received.
    pub fn cloud_refused(refusal: &ArchivedCloudFailure) -> Self {
        Failure::CloudRefused {
            code: native_code(&refusal.code),
            message: refusal.message.to_string(),
        }
    }
}

impl fmt::Display for Failure {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        match self {
            Failure::BadSearch(e) => write!(f, "bad search: {e}"),
            Failure::ServerModeOff => f.write_str(
                "server-ranked searches are off on this device: they send its picture vectors to \
                 the cloud (the owner turns them on with search.allow_server_mode = true)",
            ),
            Failure::CloudTimeout(timeout) => write!(
                f,
                "the cloud did not answer within {} ms (is edgeclip-cloud running and connected to the broker?)",
                timeout.as_millis()
            ),
            Failure::CloudRefused { code, message } => {
                write!(f, "the cloud refused the search ({code:?}): {message}")
            }
            Failure::UnusableVector(e) => write!(f, "the cloud's vector is unusable: {e}"),
            Failure::ForeignModel { cloud, device } => write!(
                f,
                "the cloud ranked with model {cloud}, the device's index holds {device}"
            ),
            Failure::RankingDoesNotFit => {
                f.write_str("the cloud's ranking does not fit the search")
            }
            Failure::NonFiniteScore => {
                f.write_str("the cloud's ranking holds a score that is not a finite number")
            }
            Failure::Index(e) => e.fmt(f),
            Failure::Wire(e) => e.fmt(f),
            Failure::BadFleetQuery(e) => write!(f, "bad fleet query: {e}"),
        }
    }
}

impl std::error::Error for Failure {}

fn native_code(code: &ArchivedErrorCode) -> ErrorCode {
    match code {
        ArchivedErrorCode::BadRequest => ErrorCode::BadRequest,
        ArchivedErrorCode::ModelMismatch => ErrorCode::ModelMismatch,
        ArchivedErrorCode::Internal => ErrorCode::Internal,
        ArchivedErrorCode::Busy => ErrorCode::Busy,
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn errors_keep_the_words_dashboards_and_tests_match_on() {
        let code = |code| Failure::CloudRefused {
            code,
            message: "m".into(),
        };
        assert_eq!(
            code(ErrorCode::BadRequest).to_string(),
            "the cloud refused the search (BadRequest): m"
        );
        assert_eq!(
            Failure::CloudTimeout(Duration::from_millis(3000)).to_string(),
            "the cloud did not answer within 3000 ms (is edgeclip-cloud running and connected to the broker?)"
        );
        assert_eq!(
            Failure::Index(IndexError::NoAnswer("gone".into())).to_string(),
            "index did not answer: gone"
        );
        assert_eq!(
            Failure::Index(DeviceError::Search("/x is not an indexed picture".into()).into())
                .to_string(),
            "/x is not an indexed picture",
            "the index's refusal in its own words"
        );
    }
}
