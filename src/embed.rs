//! Sentence embeddings: the pipeline behind `flexp-run embed`.
//!
//! Tokenise each text with the checkpoint's `tokenizer.json`, run every block of the base model
//! (no adapters), pool the last hidden state as the checkpoint's sentence-transformers pooling
//! config says (attention-mask mean, or the first token), and L2-normalise where its
//! `modules.json` ends in a `Normalize` module (or where the caller asks).

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::executor::{Executor, Output, SeqInput, SeqJob};
use crate::model::tokenizer::{preview, LongText};
use crate::model::{load_model, AdapterSet, LoraConfig, Model, Tokenizer};
use std::path::Path;

/// How to pool token states into one vector.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum SentencePooling {
    /// Mean over the tokens.
    Mean,
    /// The first (`[CLS]`) token.
    Cls,
}

/// Options of [`Embedder::embed`].
#[derive(Clone, Copy, Debug)]
pub struct EmbedOptions {
    /// L2-normalise each embedding: `None` follows the checkpoint's `modules.json` (as
    /// sentence-transformers' `encode` does), `Some` overrides it.
    pub normalize: Option<bool>,
    /// What to do with texts longer than the model's limit.
    pub long_text: LongText,
    /// Tokens per forward batch (bounds memory).
    pub batch_tokens: usize,
}

impl Default for EmbedOptions {
    fn default() -> Self {
        EmbedOptions {
            normalize: None,
            long_text: LongText::Truncate,
            batch_tokens: 8192,
        }
    }
}

/// The embeddings of a list of texts.
#[derive(Clone, Debug, Default)]
pub struct Embeddings {
    /// One vector per text.
    pub vectors: Vec<Vec<f32>>,
    /// Indices of the texts that were truncated to fit.
    pub truncated: Vec<usize>,
}

/// A model and tokenizer ready to embed texts.
pub struct Embedder<B: Backend> {
    backend: B,
    model: Model<B>,
    tokenizer: Tokenizer,
    /// Longest tokenised text the model accepts.
    pub max_len: usize,
    /// Pooling from the checkpoint's `1_Pooling/config.json` (mean when absent).
    pub pooling: SentencePooling,
    /// Whether the checkpoint's `modules.json` has a `Normalize` module.
    pub normalizes: bool,
}

impl<B: Backend> Embedder<B> {
    /// Loads model, tokenizer and pooling settings from a checkpoint folder.
    pub fn load(backend: B, dir: &Path) -> Result<Self> {
        let model = load_model(&backend, dir)?;
        let tokenizer = Tokenizer::from_file(&dir.join("tokenizer.json"), model.config.vocab_size)?;
        let mut max_len = model.config.max_positions;
        // sentence-transformers caps the length below the position table (256 for MiniLM).
        let st = dir.join("sentence_bert_config.json");
        if st.exists() {
            let v = read_json(&st)?;
            if let Some(n) = v.get("max_seq_length").and_then(|x| x.as_u64()) {
                max_len = max_len.min(n as usize);
            }
        }
        let pooling = pooling_mode(dir)?;
        let normalizes = normalizes(dir)?;
        Ok(Embedder {
            backend,
            model,
            tokenizer,
            max_len,
            pooling,
            normalizes,
        })
    }

    /// The model.
    pub fn model(&self) -> &Model<B> {
        &self.model
    }

    /// Embeds `texts`.
    pub fn embed(&self, texts: &[String], opts: EmbedOptions) -> Result<Embeddings> {
        let mut enc = Vec::with_capacity(texts.len());
        let mut truncated = Vec::new();
        for (i, t) in texts.iter().enumerate() {
            let e = self
                .tokenizer
                .encode(t, self.max_len, opts.long_text)
                .map_err(|e| match e {
                    Error::Input(m) => {
                        Error::Input(format!("text {} ({:?}): {m}", i + 1, preview(t)))
                    }
                    other => other,
                })?;
            if e.truncated {
                truncated.push(i);
            }
            enc.push(e);
        }
        let none = AdapterSet::<B>::empty(
            LoraConfig::default_for(&self.model.config),
            self.model.layers(),
        );
        let exec = Executor::new(&self.backend, &self.model);
        let d = self.model.config.hidden;
        let layers = self.model.layers();
        let normalize = opts.normalize.unwrap_or(self.normalizes);
        let mut vectors = Vec::with_capacity(texts.len());
        let mut start = 0;
        while start < enc.len() {
            let mut end = start;
            let mut tokens = 0;
            while end < enc.len()
                && (end == start || tokens + enc[end].ids.len() <= opts.batch_tokens)
            {
                tokens += enc[end].ids.len();
                end += 1;
            }
            let jobs: Vec<SeqJob> = enc[start..end]
                .iter()
                .map(|e| {
                    SeqJob::new(
                        SeqInput::Tokens {
                            ids: e.ids.clone(),
                            type_ids: Some(e.type_ids.clone()),
                        },
                        0..layers,
                        0,
                        Output::Hidden,
                    )
                })
                .collect();
            let (out, _) = exec.forward(&[&none], &jobs, false)?;
            for r in out {
                let h = r
                    .hidden
                    .ok_or_else(|| Error::Backend("missing hidden output".into()))?;
                let mut v = pool(&h, d, self.pooling);
                if normalize {
                    let norm = v
                        .iter()
                        .map(|x| (*x as f64).powi(2))
                        .sum::<f64>()
                        .sqrt()
                        .max(1e-12);
                    v.iter_mut().for_each(|x| *x = (*x as f64 / norm) as f32);
                }
                vectors.push(v);
            }
            start = end;
        }
        Ok(Embeddings { vectors, truncated })
    }
}

fn pool(h: &[f32], d: usize, p: SentencePooling) -> Vec<f32> {
    let n = h.len() / d;
    match p {
        SentencePooling::Cls => h[..d].to_vec(),
        SentencePooling::Mean => {
            let mut acc = vec![0.0f64; d];
            for row in h.chunks(d) {
                acc.iter_mut().zip(row).for_each(|(a, &x)| *a += x as f64);
            }
            acc.into_iter().map(|a| (a / n as f64) as f32).collect()
        }
    }
}

fn read_json(path: &Path) -> Result<serde_json::Value> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    serde_json::from_str(&text).map_err(|e| Error::Config {
        path: path.into(),
        reason: format!("not valid JSON: {e}"),
    })
}

/// Reads the sentence-transformers pipeline (`modules.json`, absent: transformer and pooling
/// only) and says whether it ends in `Normalize`. A module this pipeline does not implement (a
/// `Dense` projection, say) is refused: its output would silently differ from the checkpoint's.
fn normalizes(dir: &Path) -> Result<bool> {
    let p = dir.join("modules.json");
    if !p.exists() {
        return Ok(false);
    }
    let v = read_json(&p)?;
    let modules = v.as_array().ok_or_else(|| Error::Config {
        path: p.clone(),
        reason: "expected a list of modules".into(),
    })?;
    let mut normalize = false;
    for m in modules {
        let ty = m.get("type").and_then(|t| t.as_str()).unwrap_or("");
        match ty.rsplit('.').next().unwrap_or("") {
            "Transformer" | "Pooling" => {}
            "Normalize" => normalize = true,
            other => {
                return Err(Error::Config {
                    path: p.clone(),
                    reason: format!(
                        "module `{}` is not supported (the embedding pipeline runs Transformer, \
                         Pooling and Normalize only)",
                        if other.is_empty() { ty } else { other }
                    ),
                })
            }
        }
    }
    Ok(normalize)
}

fn pooling_mode(dir: &Path) -> Result<SentencePooling> {
    let p = dir.join("1_Pooling").join("config.json");
    if !p.exists() {
        return Ok(SentencePooling::Mean);
    }
    let v = read_json(&p)?;
    let on = |k: &str| v.get(k).and_then(|x| x.as_bool()).unwrap_or(false);
    if on("pooling_mode_mean_tokens") {
        Ok(SentencePooling::Mean)
    } else if on("pooling_mode_cls_token") {
        Ok(SentencePooling::Cls)
    } else {
        Err(Error::Config {
            path: p,
            reason: "only mean-token and CLS-token pooling are supported".into(),
        })
    }
}

/// Reads one text per line from `input`, embeds them, and writes JSON lines
/// `{"text": ..., "embedding": [...]}` to `output` (atomically). Returns the embeddings.
pub fn embed_file<B: Backend>(
    embedder: &Embedder<B>,
    input: &Path,
    output: &Path,
    opts: EmbedOptions,
) -> Result<Embeddings> {
    let text = std::fs::read_to_string(input).map_err(|e| Error::io(input, e))?;
    let texts: Vec<String> = text
        .lines()
        .map(|l| l.trim_end_matches('\r').to_string())
        .collect();
    if texts.iter().all(|t| t.trim().is_empty()) {
        return Err(Error::Input(format!(
            "{}: no texts (the file is empty or blank; expected one text per line)",
            input.display()
        )));
    }
    let emb = embedder.embed(&texts, opts)?;
    let mut out = String::new();
    for (t, v) in texts.iter().zip(&emb.vectors) {
        let line = serde_json::json!({ "text": t, "embedding": v });
        out.push_str(&line.to_string());
        out.push('\n');
    }
    crate::fsutil::write_atomic(output, out.as_bytes())?;
    Ok(emb)
}
