//! The tokenizer a GGUF file describes in its metadata (`tokenizer.ggml.*`), written out as a
//! Hugging Face `tokenizer.json` for the `tokenizers` crate: the same tokenizer transformers
//! builds from the file. Two kinds: byte-level BPE (`gpt2`: GPT-2, Llama 3, Qwen, SmolLM) and
//! SentencePiece (`llama`: Llama 2, Mistral, Gemma), which llama.cpp stores as pieces with
//! scores and no merges; the merges are recovered from the pieces as transformers recovers them.

use super::Gguf;
use crate::error::Result;
use serde_json::{json, Value as Json};

/// GGUF `token_type` of the unknown token (`<unk>`), added as a special token.
const UNKNOWN: f64 = 2.0;
/// GGUF `token_type` of control tokens (`<|im_start|>`), added as special tokens.
const CONTROL: f64 = 3.0;
/// GGUF `token_type` of user-defined tokens (`<think>`), added as plain whole tokens.
const USER_DEFINED: f64 = 4.0;

/// Pre-tokenizer splits of the byte-level vocabularies whose `tokenizer.ggml.pre` names one; any
/// other byte-level file splits with GPT-2's pattern (the `ByteLevel` pre-tokenizer's own).
const LLAMA3_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}{1,3}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";
const QWEN2_SPLIT: &str = r"(?i:'s|'t|'re|'ve|'m|'ll|'d)|[^\r\n\p{L}\p{N}]?\p{L}+|\p{N}| ?[^\s\p{L}\p{N}]+[\r\n]*|\s*[\r\n]+|\s+(?!\S)|\s+";

fn split_of(pre: &str) -> Option<&'static str> {
    match pre {
        "llama3" | "llama-v3" | "llama-bpe" | "falcon3" | "smaug-bpe" | "dbrx" => {
            Some(LLAMA3_SPLIT)
        }
        "qwen2" | "deepseek-r1-qwen" => Some(QWEN2_SPLIT),
        _ => None,
    }
}

/// GPT-2's map from bytes to printable characters: the alphabet byte-level tokens are spelled in.
fn byte_alphabet() -> [char; 256] {
    let mut map = ['\0'; 256];
    let mut extra = 0u32;
    for b in 0..256u32 {
        let printable =
            (33..=126).contains(&b) || (161..=172).contains(&b) || (174..=255).contains(&b);
        map[b as usize] = if printable {
            char::from_u32(b).unwrap_or('\0')
        } else {
            extra += 1;
            char::from_u32(255 + extra).unwrap_or('\0')
        };
    }
    map
}

/// The merges a SentencePiece vocabulary implies, as transformers' `generate_merges` recovers
/// them: every split of a piece into two pieces of the vocabulary, ranked by `score` of the whole
/// piece (higher first), then by the lengths of the two halves (longer first); ties keep the
/// pieces' order, and within one piece the splits are ordered by the ids of their halves.
/// Lengths count characters, as Python's do.
fn recover_merges(tokens: &[String], score: &dyn Fn(usize) -> f64) -> Vec<(String, String)> {
    let mut id = std::collections::HashMap::with_capacity(tokens.len());
    for (i, t) in tokens.iter().enumerate() {
        id.entry(t.as_str()).or_insert(i);
    }
    let mut merges: Vec<(usize, usize, f64, usize, usize)> = Vec::new();
    for (i, piece) in tokens.iter().enumerate() {
        if id.get(piece.as_str()) != Some(&i) {
            continue; // a repeated piece counts once, at its first place
        }
        let mut local: Vec<(usize, usize, usize, usize)> = Vec::new();
        for (cut, _) in piece.char_indices().skip(1) {
            let (l, r) = (&piece[..cut], &piece[cut..]);
            if let (Some(&a), Some(&b)) = (id.get(l), id.get(r)) {
                local.push((a, b, l.chars().count(), r.chars().count()));
            }
        }
        local.sort_by_key(|&(a, b, _, _)| (a, b));
        merges.extend(
            local
                .into_iter()
                .map(|(a, b, la, lb)| (a, b, score(i), la, lb)),
        );
    }
    // Stable, with the comparison reversed: equal keys keep their order, as Python's
    // `sorted(..., reverse=True)` keeps it.
    merges.sort_by(|x, y| {
        (y.2, y.3, y.4)
            .partial_cmp(&(x.2, x.3, x.4))
            .unwrap_or(std::cmp::Ordering::Equal)
    });
    merges
        .into_iter()
        .map(|(a, b, ..)| (tokens[a].clone(), tokens[b].clone()))
        .collect()
}

impl Gguf {
    /// The metadata's tokenizer as `tokenizer.json` text.
    pub fn tokenizer_json(&self) -> Result<String> {
        let model = self.str("tokenizer.ggml.model")?.ok_or_else(|| {
            self.err("no tokenizer in the metadata (`tokenizer.ggml.model`)".into())
        })?;
        let tokens = self
            .str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| self.err("no `tokenizer.ggml.tokens` in the metadata".into()))?;
        let types = self
            .num_array("tokenizer.ggml.token_type")?
            .unwrap_or_default();
        if !types.is_empty() && types.len() != tokens.len() {
            return Err(self.err(format!(
                "`tokenizer.ggml.token_type` has {} entries for {} tokens",
                types.len(),
                tokens.len()
            )));
        }
        match model {
            "gpt2" => self.byte_level_json(&tokens, &types),
            "llama" => self.sentencepiece_json(&tokens, &types),
            other => Err(self.err(format!(
                "tokenizer `{other}` is not supported; supported: `gpt2` (byte-level BPE) and \
                 `llama` (SentencePiece)"
            ))),
        }
    }

    /// A SentencePiece vocabulary as transformers' `LlamaTokenizer` builds it (Gemma
    /// architectures: `GemmaTokenizer`): a byte-fallback BPE over the pieces, the merges
    /// recovered from them (ranked by score; for Gemma by the pieces' order in the file, and
    /// with pieces made only of spaces spelled with U+2581 as Gemma looks them up), the space
    /// mark before the first word where `add_space_prefix` says so (Llama) or every space
    /// replaced by it (Gemma), BOS added unless `add_bos_token` is false.
    fn sentencepiece_json(&self, tokens: &[&str], types: &[f64]) -> Result<String> {
        let gemma = matches!(
            self.str("general.architecture")?,
            Some("gemma" | "gemma2" | "gemma3")
        );
        let tokens: Vec<String> = tokens
            .iter()
            .map(|t| {
                let spaces_only = t.contains(' ') && t.trim().is_empty();
                if gemma && spaces_only {
                    "\u{2581}".repeat(t.chars().count())
                } else {
                    t.to_string()
                }
            })
            .collect();
        let merges = if gemma {
            recover_merges(&tokens, &|i| -(i as f64))
        } else {
            let scores = self.num_array("tokenizer.ggml.scores")?.ok_or_else(|| {
                self.err(
                    "a SentencePiece tokenizer needs `tokenizer.ggml.scores` to rank its merges, \
                     which is missing"
                        .into(),
                )
            })?;
            if scores.len() != tokens.len() {
                return Err(self.err(format!(
                    "`tokenizer.ggml.scores` has {} entries for {} tokens",
                    scores.len(),
                    tokens.len()
                )));
            }
            recover_merges(&tokens, &|i| scores[i])
        };
        let mut vocab = serde_json::Map::with_capacity(tokens.len());
        for (id, t) in tokens.iter().enumerate() {
            vocab.entry(t.clone()).or_insert(json!(id));
        }
        let mut added = Vec::new();
        for (id, (t, &ty)) in tokens.iter().zip(types).enumerate() {
            if ty == CONTROL || ty == UNKNOWN || ty == USER_DEFINED {
                added.push(json!({
                    "id": id, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": ty != USER_DEFINED,
                }));
            }
        }
        let unk = self
            .u64("tokenizer.ggml.unknown_token_id")?
            .and_then(|i| tokens.get(i as usize).cloned());
        let (normalizer, pre_tokenizer, decoder, unk_token) = if gemma {
            (
                json!({"type": "Replace", "pattern": {"String": " "}, "content": "\u{2581}"}),
                json!({"type": "Split", "pattern": {"String": " "}, "behavior": "MergedWithPrevious", "invert": false}),
                json!({"type": "Sequence", "decoders": [
                    {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                    {"type": "ByteFallback"}, {"type": "Fuse"}]}),
                unk,
            )
        } else {
            let prefix = self
                .bool("tokenizer.ggml.add_space_prefix")?
                .unwrap_or(true);
            (
                Json::Null,
                json!({"type": "Metaspace", "replacement": "\u{2581}",
                       "prepend_scheme": if prefix { "first" } else { "never" }, "split": false}),
                json!({"type": "Sequence", "decoders": [
                    {"type": "Replace", "pattern": {"String": "\u{2581}"}, "content": " "},
                    {"type": "ByteFallback"}, {"type": "Fuse"},
                    {"type": "Strip", "content": " ", "start": 1, "stop": 0}]}),
                None,
            )
        };
        // llama.cpp adds BOS to a SentencePiece vocabulary that does not say otherwise.
        let post_processor = self.specials_template(&tokens, true)?;
        let merges: Vec<Json> = merges.into_iter().map(|(a, b)| json!([a, b])).collect();
        let tok = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": normalizer,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": decoder,
            "model": {
                "type": "BPE", "dropout": null, "unk_token": unk_token,
                "continuing_subword_prefix": null, "end_of_word_suffix": null, "fuse_unk": true,
                "byte_fallback": true, "ignore_merges": false, "vocab": vocab, "merges": merges,
            },
        });
        Ok(tok.to_string())
    }

    /// The template adding BOS (and EOS) where `tokenizer.ggml.add_bos_token`
    /// (`add_eos_token`) says so; `bos_default` when the file does not say.
    fn specials_template(&self, tokens: &[String], bos_default: bool) -> Result<Json> {
        let special_id = |flag: &str, id: &str, default: bool| -> Result<Option<(String, u64)>> {
            if !self.bool(flag)?.unwrap_or(default) {
                return Ok(None);
            }
            let i = self
                .u64(id)?
                .ok_or_else(|| self.err(format!("`{flag}` is set but `{id}` is missing")))?;
            let t = tokens
                .get(i as usize)
                .ok_or_else(|| self.err(format!("`{id}` = {i} is past the vocabulary")))?;
            Ok(Some((t.to_string(), i)))
        };
        let bos = special_id(
            "tokenizer.ggml.add_bos_token",
            "tokenizer.ggml.bos_token_id",
            bos_default,
        )?;
        let eos = special_id(
            "tokenizer.ggml.add_eos_token",
            "tokenizer.ggml.eos_token_id",
            false,
        )?;
        if bos.is_none() && eos.is_none() {
            return Ok(Json::Null);
        }
        let mut single = Vec::new();
        let mut specials = serde_json::Map::new();
        if let Some((t, i)) = &bos {
            single.push(json!({"SpecialToken": {"id": t, "type_id": 0}}));
            specials.insert(t.clone(), json!({"id": t, "ids": [i], "tokens": [t]}));
        }
        single.push(json!({"Sequence": {"id": "A", "type_id": 0}}));
        if let Some((t, i)) = &eos {
            single.push(json!({"SpecialToken": {"id": t, "type_id": 0}}));
            specials.insert(t.clone(), json!({"id": t, "ids": [i], "tokens": [t]}));
        }
        Ok(
            json!({"type": "TemplateProcessing", "single": single, "pair": single,
                  "special_tokens": specials}),
        )
    }

    /// A byte-level BPE vocabulary with its merges, as transformers' `GPT2Tokenizer` builds it
    /// (with the split of `tokenizer.ggml.pre` where it names one).
    fn byte_level_json(&self, tokens: &[&str], types: &[f64]) -> Result<String> {
        let merges = self.str_array("tokenizer.ggml.merges")?.ok_or_else(|| {
            self.err(
                "a byte-level BPE tokenizer needs `tokenizer.ggml.merges`, which is missing".into(),
            )
        })?;
        let alphabet = byte_alphabet();
        let in_alphabet = |t: &str| t.chars().all(|c| alphabet.contains(&c));
        // Tokens are stored in the byte alphabet; one that is not (a mislabelled special token)
        // is respelled from its UTF-8 bytes, as transformers does.
        let mut vocab = serde_json::Map::with_capacity(tokens.len());
        for (id, t) in tokens.iter().enumerate() {
            let spelled = if in_alphabet(t) {
                t.to_string()
            } else {
                t.bytes().map(|b| alphabet[b as usize]).collect()
            };
            vocab.insert(spelled, json!(id));
        }
        let merges: Vec<Json> = merges
            .iter()
            .map(|m| match m.split_once(' ') {
                Some((a, b)) => Ok(json!([a, b])),
                None => Err(self.err(format!(
                    "merge {m:?} is not two tokens separated by a space"
                ))),
            })
            .collect::<Result<_>>()?;
        let mut added = Vec::new();
        for (id, (t, &ty)) in tokens.iter().zip(types).enumerate() {
            let special = ty == CONTROL && in_alphabet(t);
            if special || ty == USER_DEFINED {
                added.push(json!({
                    "id": id, "content": t, "single_word": false, "lstrip": false,
                    "rstrip": false, "normalized": false, "special": special,
                }));
            }
        }
        let byte_level = json!({
            "type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": true
        });
        let pre = self.str("tokenizer.ggml.pre")?.unwrap_or("default");
        let pre_tokenizer = match split_of(pre) {
            None => byte_level,
            Some(re) => json!({"type": "Sequence", "pretokenizers": [
                {"type": "Split", "pattern": {"Regex": re}, "behavior": "Isolated", "invert": false},
                {"type": "ByteLevel", "add_prefix_space": false, "trim_offsets": true, "use_regex": false},
            ]}),
        };
        let owned: Vec<String> = tokens.iter().map(|t| t.to_string()).collect();
        let post_processor = self.specials_template(&owned, false)?;
        let tok = json!({
            "version": "1.0",
            "truncation": null,
            "padding": null,
            "added_tokens": added,
            "normalizer": null,
            "pre_tokenizer": pre_tokenizer,
            "post_processor": post_processor,
            "decoder": {"type": "ByteLevel", "add_prefix_space": true, "trim_offsets": true, "use_regex": true},
            "model": {
                "type": "BPE", "dropout": null, "unk_token": null, "continuing_subword_prefix": "",
                "end_of_word_suffix": "", "fuse_unk": false, "byte_fallback": false,
                "ignore_merges": false, "vocab": vocab, "merges": merges,
            },
        });
        Ok(tok.to_string())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_byte_alphabet_is_gpt2s() {
        let a = byte_alphabet();
        assert_eq!(a[b'A' as usize], 'A');
        assert_eq!(a[b' ' as usize], 'Ġ');
        assert_eq!(a[b'\n' as usize], 'Ċ');
        assert_eq!(a[0], 'Ā');
        assert_eq!(a[173], 'Ń');
        let mut sorted = a.to_vec();
        sorted.sort();
        sorted.dedup();
        assert_eq!(sorted.len(), 256, "the map is one to one");
    }
}
