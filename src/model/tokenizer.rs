//! The model's tokenizer (`tokenizer.json` through the `tokenizers` crate), checked against the
//! model's vocabulary, with an explicit policy for texts longer than the model accepts.

use super::chat::ChatTemplate;
use super::gguf::Gguf;
use crate::error::{Error, Result};
use std::path::{Path, PathBuf};
use tokenizers::{TruncationDirection, TruncationParams, TruncationStrategy};

/// What to do with a text longer than the model's maximum sequence length.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum LongText {
    /// Keep the first tokens (special tokens preserved) and report that it happened.
    Truncate,
    /// Refuse the text with an error.
    Error,
}

/// A tokenised text.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Encoded {
    /// Token ids, special tokens included.
    pub ids: Vec<u32>,
    /// Token-type (segment) ids.
    pub type_ids: Vec<u32>,
    /// Whether tokens were dropped to fit.
    pub truncated: bool,
}

/// A tokenizer bound to a model.
pub struct Tokenizer {
    inner: tokenizers::Tokenizer,
    path: PathBuf,
    eos: Option<u32>,
    chat: Option<ChatTemplate>,
}

impl Tokenizer {
    /// Loads `tokenizer.json` and checks that every id it can produce indexes the model's
    /// embedding table of `model_vocab` rows.
    pub fn from_file(path: &Path, model_vocab: usize) -> Result<Self> {
        if !path.exists() {
            return Err(Error::Tokenizer {
                path: path.into(),
                reason: "file not found".into(),
            });
        }
        let inner = tokenizers::Tokenizer::from_file(path).map_err(|e| Error::Tokenizer {
            path: path.into(),
            reason: format!("cannot parse: {e}"),
        })?;
        Self::bind(inner, path, model_vocab)
    }

    /// The tokenizer a GGUF file's metadata describes (see [`Gguf::tokenizer_json`]), checked
    /// against the model's vocabulary of `model_vocab` rows.
    pub fn from_gguf(g: &Gguf, model_vocab: usize) -> Result<Self> {
        let json = g.tokenizer_json()?;
        let eos = g.u64("tokenizer.ggml.eos_token_id")?.map(|v| v as u32);
        let chat = match g.str("tokenizer.chat_template")? {
            Some(source) => {
                let tokens = g.str_array("tokenizer.ggml.tokens")?.unwrap_or_default();
                let text = |key: &str| -> Result<String> {
                    Ok(g.u64(key)?
                        .and_then(|i| tokens.get(i as usize))
                        .map_or_else(String::new, |t| t.to_string()))
                };
                Some(ChatTemplate::new(
                    source,
                    &text("tokenizer.ggml.bos_token_id")?,
                    &text("tokenizer.ggml.eos_token_id")?,
                )?)
            }
            None => None,
        };
        let inner = json
            .parse::<tokenizers::Tokenizer>()
            .map_err(|e| Error::Tokenizer {
                path: g.path.clone(),
                reason: format!("the tokenizer in the GGUF metadata cannot be built: {e}"),
            })?;
        Ok(Self::bind(inner, &g.path, model_vocab)?
            .with_eos(eos)
            .with_chat_template(chat))
    }

    /// The same tokenizer with the model's chat template.
    pub fn with_chat_template(mut self, chat: Option<ChatTemplate>) -> Self {
        self.chat = chat;
        self
    }

    /// The model's chat template, where its files ship one.
    pub fn chat_template(&self) -> Option<&ChatTemplate> {
        self.chat.as_ref()
    }

    /// The same tokenizer with `eos` as the model's end-of-sequence token (what ends a
    /// generation and closes a causal-LM response). A checkpoint folder names it in config.json
    /// ([`crate::model::eos_of_config`]); a GGUF file in its metadata.
    pub fn with_eos(mut self, eos: Option<u32>) -> Self {
        self.eos = eos;
        self
    }

    /// The model's end-of-sequence token, where the checkpoint names one.
    pub fn eos(&self) -> Option<u32> {
        self.eos
    }

    fn bind(mut inner: tokenizers::Tokenizer, path: &Path, model_vocab: usize) -> Result<Self> {
        let n = inner.get_vocab_size(true);
        if n > model_vocab {
            return Err(Error::Tokenizer {
                path: path.into(),
                reason: format!(
                    "has {n} tokens but the model's vocabulary (config.json vocab_size) has {model_vocab}: \
                     this tokenizer does not belong to this model"
                ),
            });
        }
        // Padding is never needed (batches are packed); truncation is applied per call.
        inner.with_padding(None);
        inner.with_truncation(None).map_err(|e| Error::Tokenizer {
            path: path.into(),
            reason: e.to_string(),
        })?;
        Ok(Tokenizer {
            inner,
            path: path.into(),
            eos: None,
            chat: None,
        })
    }

    /// Number of tokens including added tokens.
    pub fn vocab_size(&self) -> usize {
        self.inner.get_vocab_size(true)
    }

    /// Tokenises `text` with the model's special tokens, at most `max_len` tokens.
    pub fn encode(&self, text: &str, max_len: usize, policy: LongText) -> Result<Encoded> {
        let err = |e: tokenizers::Error| Error::Tokenizer {
            path: self.path.clone(),
            reason: e.to_string(),
        };
        let full = self.inner.encode(text, true).map_err(err)?;
        if full.get_ids().len() <= max_len {
            return Ok(Encoded {
                ids: full.get_ids().to_vec(),
                type_ids: full.get_type_ids().to_vec(),
                truncated: false,
            });
        }
        if policy == LongText::Error {
            return Err(Error::Input(format!(
                "text of {} tokens exceeds the model's limit of {max_len} (use truncation to cut it): {:?}",
                full.get_ids().len(),
                preview(text)
            )));
        }
        // Let the tokenizer truncate so that special tokens are kept exactly as the reference
        // implementation keeps them.
        let mut t = self.inner.clone();
        t.with_truncation(Some(TruncationParams {
            max_length: max_len,
            strategy: TruncationStrategy::LongestFirst,
            stride: 0,
            direction: TruncationDirection::Right,
        }))
        .map_err(err)?;
        let enc = t.encode(text, true).map_err(err)?;
        Ok(Encoded {
            ids: enc.get_ids().to_vec(),
            type_ids: enc.get_type_ids().to_vec(),
            truncated: true,
        })
    }
}

impl Tokenizer {
    /// Token ids of `text` without the special tokens the model adds around a whole input: the
    /// continuation of an input already begun (a causal-LM response after its prompt).
    pub fn encode_continuation(&self, text: &str) -> Result<Vec<u32>> {
        let enc = self
            .inner
            .encode(text, false)
            .map_err(|e| Error::Tokenizer {
                path: self.path.clone(),
                reason: e.to_string(),
            })?;
        Ok(enc.get_ids().to_vec())
    }

    /// The text of `ids` (special tokens kept).
    pub fn decode(&self, ids: &[u32]) -> Result<String> {
        self.inner.decode(ids, false).map_err(|e| Error::Tokenizer {
            path: self.path.clone(),
            reason: e.to_string(),
        })
    }
}

/// The first characters of a text, for error messages.
pub fn preview(text: &str) -> String {
    let mut s: String = text.chars().take(60).collect();
    if text.chars().count() > 60 {
        s.push('…');
    }
    s
}
