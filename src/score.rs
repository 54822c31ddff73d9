//! Scoring text with a causal language model: the pipeline behind `flexp-run score`.
//!
//! Each text is tokenised as the model's tokenizer says (special tokens included where the
//! model asks for them), run through every block with no adapters, and summarised by the mean
//! natural-log likelihood of tokens 1..n-1, each predicted from the previous position's logits,
//! and the largest logits at the last position.

use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::executor::{Executor, Output, SeqInput, SeqJob};
use crate::model::tokenizer::{preview, LongText};
use crate::model::{load_model_and_tokenizer, AdapterSet, LoraConfig, Model, Tokenizer};
use std::io::Write;
use std::path::Path;

/// Tokens per forward batch: the logits of a batch are `tokens · vocab` floats (about 200 MB
/// for 1,024 tokens of a 49k vocabulary).
const BATCH_TOKENS: usize = 1024;

/// The score of one text.
#[derive(Clone, Debug, PartialEq)]
pub struct Score {
    /// Token ids, special tokens included.
    pub tokens: Vec<u32>,
    /// Mean natural-log likelihood of tokens 1..n-1; `None` for a text of one token.
    pub mean_log_likelihood: Option<f64>,
    /// The `k` largest logits at the last position, largest first: `(token id, logit)`.
    pub top_k: Vec<(u32, f32)>,
}

/// A causal language model and its tokenizer, ready to score texts.
pub struct Scorer<B: Backend> {
    backend: B,
    model: Model<B>,
    tokenizer: Tokenizer,
}

impl<B: Backend> Scorer<B> {
    /// Loads a decoder from a checkpoint folder or a `.gguf` file.
    pub fn load(backend: B, path: &Path) -> Result<Self> {
        let (model, tokenizer) = load_model_and_tokenizer(&backend, path)?;
        if !model.config.causal {
            return Err(Error::Config {
                path: path.into(),
                reason: "scoring needs a causal language model (a decoder); this is an encoder"
                    .into(),
            });
        }
        Ok(Scorer {
            backend,
            model,
            tokenizer,
        })
    }

    /// The model.
    pub fn model(&self) -> &Model<B> {
        &self.model
    }

    /// Scores `texts`, keeping the `top_k` largest last-position logits of each.
    pub fn score(&self, texts: &[String], top_k: usize, long_text: LongText) -> Result<Vec<Score>> {
        let max_len = self.model.config.max_positions;
        let mut enc = Vec::with_capacity(texts.len());
        for (i, t) in texts.iter().enumerate() {
            let e = self
                .tokenizer
                .encode(t, max_len, long_text)
                .map_err(|e| match e {
                    Error::Input(m) => {
                        Error::Input(format!("text {} ({:?}): {m}", i + 1, preview(t)))
                    }
                    other => other,
                })?;
            if e.ids.is_empty() {
                return Err(Error::Input(format!(
                    "text {} ({:?}) has no tokens",
                    i + 1,
                    preview(t)
                )));
            }
            enc.push(e.ids);
        }
        let none = AdapterSet::<B>::empty(
            LoraConfig::default_for(&self.model.config),
            self.model.layers(),
        );
        let exec = Executor::new(&self.backend, &self.model);
        let layers = self.model.layers();
        let vocab = self.model.config.vocab_size;
        let mut scores = Vec::with_capacity(enc.len());
        let mut start = 0;
        while start < enc.len() {
            let mut end = start;
            let mut tokens = 0;
            while end < enc.len() && (end == start || tokens + enc[end].len() <= BATCH_TOKENS) {
                tokens += enc[end].len();
                end += 1;
            }
            let jobs: Vec<SeqJob> = enc[start..end]
                .iter()
                .map(|ids| {
                    SeqJob::new(
                        SeqInput::tokens(ids.clone()),
                        0..layers,
                        0,
                        Output::Lm { labels: None },
                    )
                })
                .collect();
            let (out, _) = exec.forward(&[&none], &jobs, false)?;
            for (ids, r) in enc[start..end].iter().zip(out) {
                let logits = r
                    .logits
                    .ok_or_else(|| Error::Backend("missing LM logits".into()))?;
                scores.push(summarise(ids, &logits, vocab, top_k));
            }
            start = end;
        }
        Ok(scores)
    }
}

/// Mean log-likelihood and last-position top-k of one sequence's `[n, vocab]` logits.
fn summarise(ids: &[u32], logits: &[f32], vocab: usize, k: usize) -> Score {
    let n = ids.len();
    let row = |t: usize| &logits[t * vocab..(t + 1) * vocab];
    let mean_log_likelihood = (n > 1).then(|| {
        let total: f64 = (0..n - 1)
            .map(|t| log_softmax_at(row(t), ids[t + 1] as usize))
            .sum();
        total / (n - 1) as f64
    });
    let last = row(n - 1);
    let mut order: Vec<u32> = (0..vocab as u32).collect();
    let k = k.min(vocab);
    if k > 0 {
        order.select_nth_unstable_by(k - 1, |&a, &b| {
            last[b as usize].total_cmp(&last[a as usize])
        });
    }
    let mut top: Vec<(u32, f32)> = order[..k].iter().map(|&i| (i, last[i as usize])).collect();
    top.sort_by(|a, b| b.1.total_cmp(&a.1).then(a.0.cmp(&b.0)));
    Score {
        tokens: ids.to_vec(),
        mean_log_likelihood,
        top_k: top,
    }
}

/// `log softmax(x)[i]`, in f64 with the maximum subtracted first.
fn log_softmax_at(x: &[f32], i: usize) -> f64 {
    let max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
    let sum: f64 = x.iter().map(|&z| (z as f64 - max).exp()).sum();
    x[i] as f64 - max - sum.ln()
}

/// Reads JSON lines `{"text": ...}` from `input`, scores them, and writes one JSON line
/// `{"tokens": [...], "mean_log_likelihood": ..., "top_k": [[id, logit], ...]}` per input line
/// to `out`. Returns how many texts were scored.
pub fn score_file<B: Backend>(
    scorer: &Scorer<B>,
    input: &Path,
    out: &mut dyn Write,
    top_k: usize,
    long_text: LongText,
) -> Result<usize> {
    let text = std::fs::read_to_string(input).map_err(|e| Error::io(input, e))?;
    let mut texts = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let bad = |why: String| Error::Input(format!("{} line {}: {why}", input.display(), i + 1));
        let v: serde_json::Value =
            serde_json::from_str(line).map_err(|e| bad(format!("not JSON: {e}")))?;
        let t = v
            .get("text")
            .and_then(|t| t.as_str())
            .ok_or_else(|| bad("expected an object with a string `text`".into()))?;
        texts.push(t.to_string());
    }
    if texts.is_empty() {
        return Err(Error::Input(format!(
            "{}: no texts (expected JSON lines {{\"text\": ...}})",
            input.display()
        )));
    }
    let scores = scorer.score(&texts, top_k, long_text)?;
    for s in &scores {
        let line = serde_json::json!({
            "tokens": s.tokens,
            "mean_log_likelihood": s.mean_log_likelihood,
            "top_k": s.top_k.iter().map(|&(i, v)| serde_json::json!([i, v])).collect::<Vec<_>>(),
        });
        writeln!(out, "{line}").map_err(|e| Error::io("<output>", e))?;
    }
    Ok(scores.len())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn summary_of_hand_made_logits() {
        // Vocabulary 3, tokens [0, 2, 1]: position 0 predicts 2, position 1 predicts 1.
        let logits = [0.0, 0.0, 0.0, 1.0, 3.0, 2.0, 5.0, -1.0, 4.0];
        let s = summarise(&[0, 2, 1], &logits, 3, 2);
        let lp0 = -(3.0f64).ln();
        let lp1 = 3.0 - (1f64.exp() + 3f64.exp() + 2f64.exp()).ln();
        assert!((s.mean_log_likelihood.unwrap() - (lp0 + lp1) / 2.0).abs() < 1e-12);
        assert_eq!(s.top_k, vec![(0, 5.0), (2, 4.0)]);
        let one = summarise(&[1], &[0.5, 0.25, 0.75], 3, 5);
        assert_eq!(one.mean_log_likelihood, None);
        assert_eq!(one.top_k, vec![(2, 0.75), (0, 0.5), (1, 0.25)]);
    }
}
