//! Tokenisation with the Hugging Face `tokenizers` crate on `textual/tokenizer.json`.
//!
//! [`TextTokenizer`] is what the cloud encodes searches with, for every family Immich ships
//! (CLIP BPE, SigLIP's T5 Unigram, SigLIP2's Gemma BPE, M-CLIP's XLM-R Unigram, NLLB's
//! SentencePiece BPE): exactly Immich's text pipeline, so the ids are Immich's id for id.
//! The text is cleaned as Immich cleans it ([`clean_text`]: whitespace runs collapsed, and for
//! towers whose `config.json` says `text_cfg.tokenizer_kwargs.clean = "canonicalize"` ASCII
//! punctuation removed and lower-cased), NLLB's FLORES-200 code is written in front of it with
//! no space, and the tokenizer file's own template (special tokens) applies, with truncation
//! to the context length (room left for the special tokens) and padding to it with
//! `tokenizer_config.json`'s `pad_token`. A special token typed in a search is read as that
//! token, as Immich reads it: it changes only the typist's own vector.
//!
//! [`ClipTokenizer`] is open_clip's own layout for CLIP BPE (`[SOT] + tokens[:ctx-2] + [EOT]`,
//! zero padding, typed special tokens kept as text), used to check tract against open_clip's
//! parity fixtures; for CLIP towers its rows encode to the same vectors (the tower pools at
//! the first end token under a causal mask, so the padding after it is never seen).

use std::path::Path;

use tokenizers::{
    PaddingDirection, PaddingParams, PaddingStrategy, Tokenizer, TruncationDirection,
    TruncationParams, TruncationStrategy,
};

use crate::error::CloudError;

/// How a text is cleaned before tokenisation, from `config.json`'s
/// `text_cfg.tokenizer_kwargs.clean` (as Immich reads it: only `canonicalize` changes anything
/// beyond the whitespace collapse).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Clean {
    /// Whitespace runs collapsed to one space, ends trimmed.
    Whitespace,
    /// As `Whitespace`, then ASCII punctuation removed and the text lower-cased (SigLIP,
    /// SigLIP2); spaces left around removed punctuation are not collapsed again.
    Canonicalize,
}

impl std::fmt::Display for Clean {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(match self {
            Clean::Whitespace => "whitespace",
            Clean::Canonicalize => "canonicalize",
        })
    }
}

/// Python's `str.isspace()`, which `text.split()` splits on: Unicode white space plus the four
/// ASCII information separators (U+001C..U+001F) that Rust's `char::is_whitespace` leaves out.
fn is_python_space(c: char) -> bool {
    c.is_whitespace() || ('\u{1c}'..='\u{1f}').contains(&c)
}

/// Immich's `clean_text`: `" ".join(text.split())`, then for `Canonicalize`
/// `text.translate(<remove string.punctuation>).lower()`.
pub fn clean_text(text: &str, clean: Clean) -> String {
    let mut out = String::with_capacity(text.len());
    for word in text.split(is_python_space).filter(|w| !w.is_empty()) {
        if !out.is_empty() {
            out.push(' ');
        }
        out.push_str(word);
    }
    match clean {
        Clean::Whitespace => out,
        Clean::Canonicalize => out
            .chars()
            .filter(|c| !c.is_ascii_punctuation())
            .collect::<String>()
            .to_lowercase(),
    }
}

/// One text as a tower takes it: exactly `context_length` ids and the attention mask (1 on the
/// text and its special tokens, 0 on padding).
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct Tokens {
    /// Token ids, padded.
    pub ids: Vec<i64>,
    /// 1 where `ids` holds the text or a special token, 0 on padding.
    pub attention_mask: Vec<i64>,
}

impl Tokens {
    /// Positions before the padding.
    pub fn length(&self) -> usize {
        self.attention_mask.iter().filter(|&&m| m != 0).count()
    }
}

/// A text tower's tokenizer as Immich runs it (see the module doc).
pub struct TextTokenizer {
    inner: Tokenizer,
    clean: Clean,
    context_length: usize,
    pad_token: String,
    pad_id: u32,
    end_id: u32,
    vocab_size: usize,
    model_kind: String,
}

impl std::fmt::Debug for TextTokenizer {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("TextTokenizer")
            .field("model", &self.model_kind)
            .field("context_length", &self.context_length)
            .field("pad", &(&self.pad_token, self.pad_id))
            .field("clean", &self.clean)
            .finish()
    }
}

impl TextTokenizer {
    /// Loads `tokenizer.json`, pads with `pad_token` (which its vocabulary must hold) to
    /// `context_length` and truncates to it.
    pub fn from_file(
        path: &Path,
        pad_token: &str,
        context_length: usize,
        clean: Clean,
    ) -> Result<Self, CloudError> {
        let bad = |reason: String| CloudError::Model {
            path: path.to_path_buf(),
            reason,
        };
        if context_length < 2 {
            return Err(bad("context length must be at least 2".into()));
        }
        let mut inner = Tokenizer::from_file(path).map_err(|e| bad(one_line(&e.to_string())))?;
        let pad_id = inner.token_to_id(pad_token).ok_or_else(|| {
            bad(format!(
                "the pad token {pad_token:?} (textual/tokenizer_config.json) is not in its vocabulary"
            ))
        })?;
        inner
            .with_truncation(Some(TruncationParams {
                direction: TruncationDirection::Right,
                max_length: context_length,
                strategy: TruncationStrategy::LongestFirst,
                stride: 0,
            }))
            .map_err(|e| bad(one_line(&e.to_string())))?;
        inner.with_padding(Some(PaddingParams {
            strategy: PaddingStrategy::Fixed(context_length),
            direction: PaddingDirection::Right,
            pad_to_multiple_of: None,
            pad_id,
            pad_type_id: 0,
            pad_token: pad_token.to_string(),
        }));
        let model_kind = match serde_json::from_slice::<serde_json::Value>(
            &std::fs::read(path).map_err(|e| bad(e.to_string()))?,
        ) {
            Ok(v) => v["model"]["type"].as_str().unwrap_or("?").to_string(),
            Err(_) => "?".into(),
        };
        let vocab_size = inner.get_vocab_size(true);
        let mut tokenizer = Self {
            inner,
            clean,
            context_length,
            pad_token: pad_token.to_string(),
            pad_id,
            end_id: 0,
            vocab_size,
            model_kind,
        };
        // The template's last token (the end token) is what the empty text ends with.
        let empty = tokenizer.encode("")?;
        let length = empty.length();
        if length == 0 || empty.ids.len() != context_length {
            return Err(bad(format!(
                "encodes the empty text to {length} tokens in a row of {}",
                empty.ids.len()
            )));
        }
        tokenizer.end_id = empty.ids[length - 1] as u32;
        Ok(tokenizer)
    }

    /// Tokens per row.
    pub fn context_length(&self) -> usize {
        self.context_length
    }

    /// The pad token and its id.
    pub fn pad(&self) -> (&str, u32) {
        (&self.pad_token, self.pad_id)
    }

    /// The tokenizer model (`BPE`, `Unigram`, ...) as tokenizer.json names it.
    pub fn kind(&self) -> &str {
        &self.model_kind
    }

    /// How texts are cleaned.
    pub fn clean(&self) -> Clean {
        self.clean
    }

    /// Whether the template's end token is the vocabulary's largest id, as in CLIP's BPE
    /// (49407): where a tower finds the end of a text with `ArgMax` over the ids, and a row
    /// may be cut just after it (see [`crate::encode::cut_length`]).
    pub fn end_is_largest_id(&self) -> bool {
        self.vocab_size > 0 && self.end_id as usize == self.vocab_size - 1
    }

    /// The text as the tower reads it: cleaned, and after `prefix` (NLLB's FLORES-200 code,
    /// written without a space as Immich writes it).
    pub fn model_text(&self, text: &str, prefix: Option<&str>) -> String {
        let cleaned = clean_text(text, self.clean);
        match prefix {
            Some(p) => format!("{p}{cleaned}"),
            None => cleaned,
        }
    }

    /// Tokenises a text already cleaned (a [`Self::model_text`]): the tokenizer's template,
    /// truncated and padded to exactly `context_length` ids.
    pub fn encode(&self, model_text: &str) -> Result<Tokens, CloudError> {
        let encoding = self
            .inner
            .encode_fast(model_text, true)
            .map_err(|e| CloudError::Tokenize(one_line(&e.to_string())))?;
        let ids: Vec<i64> = encoding.get_ids().iter().map(|&i| i64::from(i)).collect();
        let attention_mask: Vec<i64> = encoding
            .get_attention_mask()
            .iter()
            .map(|&m| i64::from(m))
            .collect();
        if ids.len() != self.context_length || attention_mask.len() != ids.len() {
            return Err(CloudError::Tokenize(format!(
                "{} ids for a context of {}",
                ids.len(),
                self.context_length
            )));
        }
        Ok(Tokens {
            ids,
            attention_mask,
        })
    }

    /// [`Self::model_text`], then [`Self::encode`].
    pub fn tokens(&self, text: &str, prefix: Option<&str>) -> Result<Tokens, CloudError> {
        self.encode(&self.model_text(text, prefix))
    }
}

/// An error message on one line (tokenizers' and tract's can span several).
pub(crate) fn one_line(message: &str) -> String {
    message.split_whitespace().collect::<Vec<_>>().join(" ")
}

/// Start-of-text token of CLIP's vocabulary.
pub const SOT: &str = "<|startoftext|>";
/// End-of-text token of CLIP's vocabulary.
pub const EOT: &str = "<|endoftext|>";

/// A CLIP tokenizer producing fixed-length id rows in open_clip's layout (see the module doc).
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn texts_are_cleaned_as_immich_cleans_them() {
        let w = |t| clean_text(t, Clean::Whitespace);
        let c = |t| clean_text(t, Clean::Canonicalize);
        assert_eq!(
            w("  Two   people\ton the BEACH, at sunset!  "),
            "Two people on the BEACH, at sunset!"
        );
        assert_eq!(
            c("  Two   people\ton the BEACH, at sunset!  "),
            "two people on the beach at sunset"
        );
        // punctuation goes after the whitespace collapse: the spaces around it stay
        assert_eq!(
            c("don’t worry & be happy — café ﬁne"),
            "don’t worry  be happy — café ﬁne"
        );
        assert_eq!(c("a , b"), "a  b");
        // Python's split() also splits on the information separators and Unicode spaces
        assert_eq!(w("a\u{1f}b\u{3000}c\u{a0}d"), "a b c d");
        assert_eq!(w(""), "");
        assert_eq!(c("ΟΔΟΣ"), "οδος");
    }
}
