//! Tokenizing a data set with the model's tokenizer: texts for classification, prompt/response
//! pairs with their next-token targets for causal-LM fine-tuning.

use super::dataset::Dataset;
use crate::error::{Error, Result};
use crate::model::tokenizer::{preview, LongText, Tokenizer};

/// Token ids (special tokens included) of every example of `ds`, at most `max_len` each; texts
/// longer than that are truncated ([`LongText::Truncate`]). Returns the ids and the number of
/// truncated texts, which a run should report: heavy truncation changes the task.
pub fn encode_dataset(
    ds: &Dataset,
    tok: &Tokenizer,
    max_len: usize,
) -> Result<(Vec<Vec<u32>>, usize)> {
    if max_len == 0 {
        return Err(Error::Input(
            "maximum sequence length must be at least 1".into(),
        ));
    }
    let mut ids = Vec::with_capacity(ds.len());
    let mut truncated = 0;
    for (i, text) in ds.texts.iter().enumerate() {
        let enc = tok
            .encode(text, max_len, LongText::Truncate)
            .map_err(|e| Error::Input(format!("example {i} ({:?}): {e}", preview(text))))?;
        truncated += usize::from(enc.truncated);
        ids.push(enc.ids);
    }
    Ok((ids, truncated))
}

/// How a causal-LM example is laid out: the prompt and the response, each a template over the
/// example's text (`{text}`) and response (`{response}`) columns.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LmTemplate {
    /// The prompt, e.g. `"Review: {text}\nVerdict:"`; empty for none (the model then learns the
    /// whole response, e.g. plain texts with the response column set to the text column).
    pub prompt: String,
    /// The response, e.g. `" {response}"`; must contain `{response}`.
    pub response: String,
}

impl LmTemplate {
    /// Checks that the templates name only `{text}` and `{response}` (the response must name
    /// `{response}`), with `{{` and `}}` for literal braces.
    pub fn validate(&self) -> Result<()> {
        fill(&self.prompt, "", "").map_err(|e| Error::Input(format!("lm.prompt: {e}")))?;
        fill(&self.response, "", "").map_err(|e| Error::Input(format!("lm.response: {e}")))?;
        if !self.response.contains("{response}") {
            return Err(Error::Input(format!(
                "lm.response = {:?} does not contain `{{response}}`: the response template must \
                 place the response column",
                self.response
            )));
        }
        Ok(())
    }

    /// The prompt and response texts of one example.
    pub fn apply(&self, text: &str, response: &str) -> Result<(String, String)> {
        Ok((
            fill(&self.prompt, text, response)?,
            fill(&self.response, text, response)?,
        ))
    }
}

/// `template` with `{text}` and `{response}` replaced, `{{`/`}}` unescaped.
fn fill(template: &str, text: &str, response: &str) -> Result<String> {
    let mut out = String::with_capacity(template.len() + text.len() + response.len());
    let mut rest = template;
    while let Some(i) = rest.find(['{', '}']) {
        out.push_str(&rest[..i]);
        let tail = &rest[i..];
        if let Some(t) = tail.strip_prefix("{{") {
            out.push('{');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("}}") {
            out.push('}');
            rest = t;
        } else if let Some(t) = tail.strip_prefix("{text}") {
            out.push_str(text);
            rest = t;
        } else if let Some(t) = tail.strip_prefix("{response}") {
            out.push_str(response);
            rest = t;
        } else {
            let name: String = tail.chars().take_while(|&c| c != '}').take(40).collect();
            return Err(Error::Input(format!(
                "{template:?}: unknown placeholder `{name}}}`: a template names `{{text}}` and \
                 `{{response}}` (write `{{{{` and `}}}}` for literal braces)"
            )));
        }
    }
    out.push_str(rest);
    Ok(out)
}

/// One causal-LM example: the tokens and, per position, the token to predict next (`-1` where
/// nothing is learned: the prompt and the last position).
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct LmEncoded {
    /// Prompt tokens (with the special tokens the tokenizer adds to an input), then the response
    /// tokens, then the end-of-sequence token.
    pub ids: Vec<u32>,
    /// `targets[t] = ids[t + 1]` where position `t + 1` belongs to the response (its tokens and
    /// the end-of-sequence token), else `-1`.
    pub targets: Vec<i64>,
}

/// Tokenises one causal-LM example: `prompt` as a whole input (the tokenizer's special tokens,
/// e.g. a BOS, included), `response` as its continuation, then `eos` (when the model names one):
/// the model learns to produce the response and to stop. Prompt and response are tokenised
/// apart, so the response's tokens are the same whatever precedes them.
///
/// At most `max_len` tokens: a longer example loses prompt tokens from the left (after the
/// tokenizer's leading special tokens), keeping the prompt's end next to the response; a
/// response that alone does not fit is cut at its end. Returns the example and whether anything
/// was cut. Errors when no response token can be learned (`max_len` below 2, or an empty
/// response without an end-of-sequence token).
pub fn encode_lm(
    tok: &Tokenizer,
    prompt: &str,
    response: &str,
    eos: Option<u32>,
    max_len: usize,
) -> Result<(LmEncoded, bool)> {
    check_len(max_len)?;
    // The special tokens the tokenizer puts before any input (a BOS): encoding the empty text
    // gives them, and a prompt's encoding starts with them.
    let lead = tok.encode("", usize::MAX, LongText::Error)?.ids;
    let p = if prompt.is_empty() {
        lead.clone()
    } else {
        tok.encode(prompt, usize::MAX, LongText::Error)?.ids
    };
    let lead_len = if p.starts_with(&lead) { lead.len() } else { 0 };
    layout(tok, p, lead_len, response, eos, max_len)
}

/// [`encode_lm`] for a prompt rendered by the model's chat template
/// ([`crate::model::chat::ChatTemplate`]): the template writes the special tokens the model
/// wants (a BOS, the turn markers), so the prompt is tokenised without the tokenizer's own, as
/// transformers' `apply_chat_template` tokenises it. A long example loses prompt tokens from the
/// left.
pub fn encode_lm_chat(
    tok: &Tokenizer,
    rendered_prompt: &str,
    response: &str,
    eos: Option<u32>,
    max_len: usize,
) -> Result<(LmEncoded, bool)> {
    check_len(max_len)?;
    let p = tok.encode_continuation(rendered_prompt)?;
    layout(tok, p, 0, response, eos, max_len)
}

fn check_len(max_len: usize) -> Result<()> {
    if max_len < 2 {
        return Err(Error::Input(
            "a causal-LM example needs a sequence length of at least 2".into(),
        ));
    }
    Ok(())
}

/// Prompt tokens `p` (of which the first `lead_len` are the tokenizer's leading special
/// tokens), then the response's and EOS, cut to `max_len` as [`encode_lm`] says.
fn layout(
    tok: &Tokenizer,
    mut p: Vec<u32>,
    lead_len: usize,
    response: &str,
    eos: Option<u32>,
    max_len: usize,
) -> Result<(LmEncoded, bool)> {
    let mut r = tok.encode_continuation(response)?;
    r.extend(eos);
    if r.is_empty() {
        return Err(Error::Input(format!(
            "response {:?} has no tokens and the model names no end-of-sequence token: there is \
             nothing to learn",
            preview(response)
        )));
    }
    // Leading special tokens are kept (at most max_len - 1 of them, leaving the response one),
    // and the response keeps at least one prompt position before it to be predicted from.
    let lead_kept = lead_len.min(max_len - 1);
    let reserved = lead_kept.max(p.len().min(1));
    let cut = p.len() + r.len() > max_len;
    if cut {
        r.truncate(max_len - reserved);
        let room = max_len - r.len();
        if p.len() > room {
            let tail = p.split_off(p.len() - (room - lead_kept));
            p.truncate(lead_kept);
            p.extend(tail);
        }
    }
    let np = p.len();
    let mut ids = p;
    ids.extend_from_slice(&r);
    let targets = (0..ids.len())
        .map(|t| {
            if t + 1 < ids.len() && t + 1 >= np {
                ids[t + 1] as i64
            } else {
                -1
            }
        })
        .collect();
    Ok((LmEncoded { ids, targets }, cut))
}
