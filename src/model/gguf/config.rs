//! A [`ModelConfig`] from a GGUF file's metadata (llama.cpp's `<arch>.*` keys).

use super::Gguf;
use crate::error::Result;
use crate::model::config::ModelConfig;
use serde_json::json;

/// Architectures whose blocks the runtime has.
const SUPPORTED: &[&str] = &["llama", "qwen2", "qwen3", "gemma3"];

impl Gguf {
    /// The model configuration the metadata describes, as the equivalent Hugging Face
    /// `config.json` would give it.
    pub fn model_config(&self) -> Result<ModelConfig> {
        let arch = self
            .str("general.architecture")?
            .ok_or_else(|| self.err("no `general.architecture` in the metadata".into()))?;
        if !SUPPORTED.contains(&arch) {
            return Err(self.err(format!(
                "architecture `{arch}` is not supported; supported: {}",
                SUPPORTED.join(", ")
            )));
        }
        let need = |key: &str| -> Result<u64> {
            self.u64(&format!("{arch}.{key}"))?
                .ok_or_else(|| self.err(format!("missing metadata `{arch}.{key}`")))
        };
        if let Some(kind) = self.str(&format!("{arch}.rope.scaling.type"))? {
            if kind != "none" {
                return Err(self.err(format!(
                    "`{arch}.rope.scaling.type = {kind}` is not supported (only plain RoPE)"
                )));
            }
        }
        let heads = need("attention.head_count")?;
        let hidden = need("embedding_length")?;
        let vocab = match self.u64(&format!("{arch}.vocab_size"))? {
            Some(v) => v,
            None => self
                .get("tokenizer.ggml.tokens")
                .and_then(|v| match v {
                    super::Value::Array(a) => Some(a.len() as u64),
                    _ => None,
                })
                .ok_or_else(|| {
                    self.err(format!(
                        "missing `{arch}.vocab_size` and no `tokenizer.ggml.tokens` to count"
                    ))
                })?,
        };
        let mut cfg = json!({
            "model_type": arch,
            "vocab_size": vocab,
            "hidden_size": hidden,
            "num_hidden_layers": need("block_count")?,
            "num_attention_heads": heads,
            "num_key_value_heads": self.u64(&format!("{arch}.attention.head_count_kv"))?.unwrap_or(heads),
            "intermediate_size": need("feed_forward_length")?,
            "max_position_embeddings": need("context_length")?,
            "rope_theta": self.f64(&format!("{arch}.rope.freq_base"))?.unwrap_or(10000.0),
            "rms_norm_eps": self.f64(&format!("{arch}.attention.layer_norm_rms_epsilon"))?.unwrap_or(1e-5),
            // llama.cpp writes an `output.weight` only when the head is not tied.
            "tie_word_embeddings": self.tensor("output.weight").is_none(),
        });
        let head_dim = match self.u64(&format!("{arch}.attention.key_length"))? {
            Some(d) => {
                cfg["head_dim"] = json!(d);
                d
            }
            None => hidden / heads.max(1),
        };
        // The runtime's attention and RoPE assume values as wide as keys and rotation of the
        // whole head: refuse files that say otherwise rather than compute something else.
        for (key, what) in [
            (
                "attention.value_length",
                "value heads narrower or wider than key heads",
            ),
            (
                "rope.dimension_count",
                "rotary embedding of part of each head",
            ),
        ] {
            if let Some(v) = self.u64(&format!("{arch}.{key}"))? {
                if v != head_dim {
                    return Err(self.err(format!(
                        "`{arch}.{key} = {v}` differs from the head size {head_dim}: {what} is not supported"
                    )));
                }
            }
        }
        if arch == "gemma3" {
            // Hugging Face names the text model `gemma3_text`. llama.cpp keeps what its
            // metadata does not say fixed, and so does this reader: the local blocks' RoPE base
            // (10000), every sixth block global, and scores scaled by 1/sqrt(head size).
            cfg["model_type"] = json!("gemma3_text");
            cfg["rope_local_base_freq"] = json!(10000.0);
            cfg["sliding_window_pattern"] = json!(6);
            cfg["query_pre_attn_scalar"] = json!(head_dim);
            cfg["head_dim"] = json!(head_dim);
            if let Some(w) = self.u64("gemma3.attention.sliding_window")? {
                cfg["sliding_window"] = json!(w);
            }
            if let Some(c) = self.f64("gemma3.final_logit_softcapping")? {
                cfg["final_logit_softcapping"] = json!(c);
            }
            if let Some(c) = self.f64("gemma3.attn_logit_softcapping")? {
                cfg["attn_logit_softcapping"] = json!(c);
            }
        }
        ModelConfig::from_json(&cfg).map_err(|e| self.err(format!("model configuration: {e}")))
    }

    /// Bytes one block's projection weights take as stored (the mean over blocks), for the
    /// planner's memory model.
    pub fn projection_bytes_per_block(&self) -> Result<f64> {
        let c = self.model_config()?;
        let names = [
            "attn_q",
            "attn_k",
            "attn_v",
            "attn_output",
            "ffn_gate",
            "ffn_up",
            "ffn_down",
        ];
        let mut total = 0usize;
        for l in 0..c.layers {
            for n in names {
                if let Some(t) = self.tensor(&format!("blk.{l}.{n}.weight")) {
                    total += t.bytes;
                }
            }
        }
        Ok(total as f64 / c.layers.max(1) as f64)
    }
}
