//! The tokenizer a GGUF file describes in its metadata (`tokenizer.ggml.*`), written out as a
//! Hugging Face `tokenizer.json` for the `tokenizers` crate: the same tokenizer transformers
//! builds from the file.

use super::Gguf;
use crate::error::Result;
use serde_json::{json, Value as Json};

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

impl Gguf {
    /// The metadata's tokenizer as `tokenizer.json` text.
    pub fn tokenizer_json(&self) -> Result<String> {
        let model = self.str("tokenizer.ggml.model")?.ok_or_else(|| {
            self.err("no tokenizer in the metadata (`tokenizer.ggml.model`)".into())
        })?;
        if model != "gpt2" {
            return Err(self.err(format!(
                "tokenizer `{model}` is not supported yet (byte-level BPE, `gpt2`, is)"
            )));
        }
        let tokens = self
            .str_array("tokenizer.ggml.tokens")?
            .ok_or_else(|| self.err("no `tokenizer.ggml.tokens` in the metadata".into()))?;
        let merges = self.str_array("tokenizer.ggml.merges")?.ok_or_else(|| {
            self.err(
                "a byte-level BPE tokenizer needs `tokenizer.ggml.merges`, which is missing".into(),
            )
        })?;
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
        for (id, (t, &ty)) in tokens.iter().zip(&types).enumerate() {
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
        let special_id = |flag: &str, id: &str| -> Result<Option<(String, u64)>> {
            if !self.bool(flag)?.unwrap_or(false) {
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
        )?;
        let eos = special_id(
            "tokenizer.ggml.add_eos_token",
            "tokenizer.ggml.eos_token_id",
        )?;
        let post_processor = if bos.is_none() && eos.is_none() {
            Json::Null
        } else {
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
            json!({"type": "TemplateProcessing", "single": single, "pair": single,
                   "special_tokens": specials})
        };
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
