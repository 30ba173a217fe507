//! The one error enum of the cloud crate.
use std::path::PathBuf;

use thiserror::Error;

/// Everything that can go wrong on the cloud side.
#[derive(Debug, Error)]
pub enum CloudError {
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
    /// Tokenising a text failed.
    #[error("tokenizer: {0}")]
    Tokenize(String),
    /// tract failed while encoding.
    #[error("inference failed: {0}")]
    Inference(String),
    /// An actor did not answer or is gone.
    #[error("actor: {0}")]
    Actor(String),
}
