//! CLIP tokenisation with the Hugging Face `tokenizers` crate on `textual/tokenizer.json`,
//! laid out the way open_clip does: `[SOT] + tokens + [EOT]`, truncated to the context
//! length by keeping the first `context - 2` text tokens (the EOT always ends the text),
//! padded with 0.

use std::path::Path;

use tokenizers::Tokenizer;

use crate::error::CloudError;

/// Start-of-text token of CLIP's vocabulary.
pub const SOT: &str = "<|startoftext|>";
/// End-of-text token of CLIP's vocabulary.
pub const EOT: &str = "<|endoftext|>";

/// A CLIP tokenizer producing fixed-length id rows.
pub struct ClipTokenizer {
    inner: Tokenizer,
    sot: u32,
    eot: u32,
    context_length: usize,
}

impl std::fmt::Debug for ClipTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("ClipTokenizer")
            .field("context_length", &self.context_length)
            .finish()
    }
}

impl ClipTokenizer {
    /// Loads `tokenizer.json`; it must know CLIP's start and end tokens.
    pub fn from_file(path: &Path, context_length: usize) -> Result<Self, CloudError> {
        let bad = |reason: String| CloudError::Model {
            path: path.to_path_buf(),
            reason,
        };
        let inner = Tokenizer::from_file(path).map_err(|e| bad(e.to_string()))?;
        let sot = inner
            .token_to_id(SOT)
            .ok_or_else(|| bad(format!("tokenizer has no {SOT} token")))?;
        let eot = inner
            .token_to_id(EOT)
            .ok_or_else(|| bad(format!("tokenizer has no {EOT} token")))?;
        if context_length < 3 {
            return Err(bad("context length must be at least 3".into()));
        }
        Ok(Self {
            inner,
            sot,
            eot,
            context_length,
        })
    }

    /// Tokens per row.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The id row of `text`: exactly `context_length` ids. Special tokens typed by a user
    /// (`<|endoftext|>`) stay text: the text tower pools at the first end-of-text id, so an
    /// injected one would cut the search short.
    pub fn encode(&self, text: &str) -> Result<Vec<i64>, CloudError> {
        let cleaned = text
            .replace(SOT, "<| startoftext |>")
            .replace(EOT, "<| endoftext |>");
        let encoding = self
            .inner
            .encode(cleaned.as_str(), false)
            .map_err(|e| CloudError::Tokenize(e.to_string()))?;
        let body: Vec<u32> = encoding
            .get_ids()
            .iter()
            .copied()
            .filter(|&id| id != self.sot && id != self.eot)
            .collect();
        let keep = body.len().min(self.context_length - 2);
        let mut ids = Vec::with_capacity(self.context_length);
        ids.push(self.sot as i64);
        ids.extend(body[..keep].iter().map(|&i| i as i64));
        ids.push(self.eot as i64);
        ids.resize(self.context_length, 0);
        Ok(ids)
    }
}
