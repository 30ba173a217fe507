//! The one error enum of the device crate.
use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong on the device side.
#[derive(Debug, Error)]
pub enum DeviceError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// A model file is missing or malformed.
    #[error("model {path}: {reason}")]
    Model {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// tract failed to load or run the image tower.
    #[error("inference failed: {0}")]
    Inference(String),
    /// A picture could not be read or decoded.
    #[error("cannot decode picture: {0}")]
    Decode(String),
    /// Reading a file failed.
    #[error("io error on {path}: {source}")]
    Io {
        /// The file concerned.
        path: PathBuf,
        /// The underlying error.
        source: std::io::Error,
    },
    /// A vector does not fit the index (other model, other dimension).
    #[error("{0}")]
    Mismatch(String),
    /// A payload from the network was refused.
    #[error(transparent)]
    Wire(#[from] edgeclip_messages::WireError),
    /// The MQTT client refused a request.
    #[error("mqtt: {0}")]
    Mqtt(String),
    /// An actor did not answer or is gone.
    #[error("actor: {0}")]
    Actor(String),
    /// A file of the index store is damaged, of another kind, or does not match its snapshot.
    #[error("{0}")]
    Corrupt(String),
    /// A value the device was given is not usable (a preprocessing file, a camera URL).
    #[error("{0}")]
    Invalid(String),
    /// A camera could not be polled, or its frame not saved.
    #[error("{0}")]
    Camera(String),
    /// A search cannot be answered as asked (too many pictures, an unknown picture, a cloud
    /// reply without a vector); the message is the answer's error.
    #[error("{0}")]
    Search(String),
    /// Another device runs on the same state folder.
    #[error("the state folder {} is in use by {holder} (one device per state_dir)", dir.display())]
    StateLocked {
        /// The state folder.
        dir: PathBuf,
        /// Who holds it.
        holder: String,
    },
    /// The encoder's threads are gone or a job on them panicked.
    #[error("{0}")]
    Worker(String),
}

impl DeviceError {
    pub(crate) fn io(path: impl Into<PathBuf>, source: std::io::Error) -> Self {
        DeviceError::Io {
            path: path.into(),
            source,
        }
    }
}
