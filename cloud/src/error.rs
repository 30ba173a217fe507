//! The one error enum of the cloud crate.
use std::path::PathBuf;

use edgeclip_link::LinkError;
use thiserror::Error;

/// Everything that can go wrong on the cloud side.
#[derive(Debug, Error)]
pub enum CloudError {
    /// The configuration is invalid.
    #[error("invalid configuration: {0}")]
    Config(String),
    /// The configuration could not be loaded, or its `[broker]` section is invalid.
    #[error("invalid configuration: {0}")]
    Settings(LinkError),
    /// A model file is missing or malformed.
    #[error("model {path}: {reason}")]
    Model {
        /// The file concerned.
        path: PathBuf,
        /// What is wrong.
        reason: String,
    },
    /// Tokenising a text failed.
    #[error("tokenizer: {0}")]
    Tokenize(String),
    /// tract failed while encoding.
    #[error("inference failed: {0}")]
    Inference(String),
    /// The text tower encodes a text cut after its end-of-text token differently from the
    /// whole row (it looks past the token), so it must run every text at full length.
    #[error("a text cut after its end-of-text token encodes differently (max difference {0})")]
    CutChangesVector(f32),
    /// The thread encoding a text panicked.
    #[error("encoder crashed: {0}")]
    EncoderCrashed(tokio::task::JoinError),
    /// The worker's actors could not be started.
    #[error("cloud worker did not start: {0}")]
    Start(ractor::SpawnErr),
    /// The worker did not stop in order: its supervisor did not answer in time, or was gone.
    #[error("shutdown: {0}")]
    Shutdown(ractor::RactorErr<()>),
}
