//! Model configuration: the three supported families as settings of one block structure,
//! parsed from a Hugging Face `config.json`.

use crate::backend::Activation;
use crate::error::{Error, Result};
use serde_json::Value;
use std::path::Path;

/// The architecture family a checkpoint belongs to.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Family {
    /// BERT-style encoder: post-norm, learned absolute positions, token types.
    Bert,
    /// GPT-2: pre-norm, learned positions, fused Conv1D attention weights.
    Gpt2,
    /// Llama-style decoder: RMSNorm, rotary positions, SwiGLU, grouped-query attention.
    Llama,
}

/// Which normalisation a block uses.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormKind {
    /// LayerNorm with weight and bias.
    LayerNorm,
    /// RMSNorm with weight only.
    RmsNorm,
}

/// Where the norms sit relative to the residual connections.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum NormPlacement {
    /// `x = norm(x + f(x))` (original Transformer, BERT).
    Post,
    /// `x = x + f(norm(x))` (GPT-2, Llama).
    Pre,
}

/// How token positions enter the model.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PositionKind {
    /// A learned table added to the token embeddings.
    Learned,
    /// Rotary embedding of queries and keys with base `theta`.
    Rotary {
        /// RoPE base frequency.
        theta: f32,
    },
}

/// The MLP structure.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum MlpKind {
    /// `down(act(up(x)))`.
    Plain(Activation),
    /// `down(silu(gate(x)) * up(x))`.
    SwiGlu,
}

/// A fully resolved model configuration.
#[derive(Clone, Debug, PartialEq)]
pub struct ModelConfig {
    /// The family.
    pub family: Family,
    /// Rows of the token embedding table.
    pub vocab_size: usize,
    /// Hidden (model) dimension.
    pub hidden: usize,
    /// Number of transformer blocks.
    pub layers: usize,
    /// Attention (query) heads.
    pub heads: usize,
    /// Key/value heads.
    pub kv_heads: usize,
    /// Dimension of one head.
    pub head_dim: usize,
    /// MLP inner dimension.
    pub intermediate: usize,
    /// Longest sequence the position scheme supports.
    pub max_positions: usize,
    /// Token-type vocabulary (0 when the family has none).
    pub type_vocab_size: usize,
    /// Norm kind of every norm in the model.
    pub norm: NormKind,
    /// Norm epsilon.
    pub norm_eps: f32,
    /// Norm placement.
    pub placement: NormPlacement,
    /// Position scheme.
    pub positions: PositionKind,
    /// MLP kind.
    pub mlp: MlpKind,
    /// Causal (decoder) attention.
    pub causal: bool,
    /// Whether the q/k/v projections have biases.
    pub attn_bias: bool,
    /// Whether the attention output projection has a bias (Qwen2 has q/k/v biases but none
    /// here).
    pub o_bias: bool,
    /// Whether the MLP projections have biases.
    pub mlp_bias: bool,
    /// An RMSNorm over each head of the queries and of the keys, after their projections and
    /// before RoPE (Qwen3's `q_norm` / `k_norm`).
    pub qk_norm: bool,
    /// A LayerNorm right after the embeddings (BERT).
    pub embedding_norm: bool,
    /// A norm after the last block (GPT-2 `ln_f`, Llama `norm`).
    pub final_norm: bool,
    /// The LM head reuses the token embedding table.
    pub tie_embeddings: bool,
}

impl ModelConfig {
    /// Parses `config.json` at `path`.
    pub fn from_file(path: &Path) -> Result<Self> {
        let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
        let v: Value = serde_json::from_str(&text).map_err(|e| Error::Config {
            path: path.into(),
            reason: format!("not valid JSON: {e}"),
        })?;
        Self::from_json(&v).map_err(|reason| Error::Config {
            path: path.into(),
            reason,
        })
    }

    /// Builds a configuration from parsed `config.json` contents.
    pub fn from_json(v: &Value) -> std::result::Result<Self, String> {
        let model_type = v
            .get("model_type")
            .and_then(Value::as_str)
            .ok_or("missing `model_type`")?;
        let cfg = match model_type {
            "bert" => bert(v)?,
            "gpt2" => gpt2(v)?,
            "llama" | "qwen2" | "qwen3" => llama(v)?,
            other => {
                return Err(format!(
                "unknown architecture `model_type: {other}`; supported: bert, gpt2, llama, qwen2, qwen3"
            ))
            }
        };
        cfg.validate()?;
        Ok(cfg)
    }

    fn validate(&self) -> std::result::Result<(), String> {
        let nonzero = [
            ("vocab_size", self.vocab_size),
            ("hidden size", self.hidden),
            ("layers", self.layers),
            ("heads", self.heads),
            ("kv heads", self.kv_heads),
            ("intermediate size", self.intermediate),
            ("max positions", self.max_positions),
        ];
        for (what, n) in nonzero {
            if n == 0 {
                return Err(format!("{what} must be positive"));
            }
        }
        if !self.heads.is_multiple_of(self.kv_heads) {
            return Err(format!(
                "{} attention heads are not a multiple of {} key/value heads",
                self.heads, self.kv_heads
            ));
        }
        if matches!(self.positions, PositionKind::Rotary { .. }) && !self.head_dim.is_multiple_of(2)
        {
            return Err(format!(
                "rotary positions need an even head_dim, got {}",
                self.head_dim
            ));
        }
        Ok(())
    }

    /// Width of the query projection (`heads · head_dim`).
    pub fn q_dim(&self) -> usize {
        self.heads * self.head_dim
    }

    /// Width of the key and value projections (`kv_heads · head_dim`).
    pub fn kv_dim(&self) -> usize {
        self.kv_heads * self.head_dim
    }
}

fn get_usize(v: &Value, key: &str) -> std::result::Result<usize, String> {
    v.get(key)
        .and_then(Value::as_u64)
        .map(|n| n as usize)
        .ok_or_else(|| format!("missing or non-integer `{key}`"))
}

fn opt_usize(v: &Value, key: &str) -> Option<usize> {
    v.get(key).and_then(Value::as_u64).map(|n| n as usize)
}

fn get_f32(v: &Value, key: &str, default: f32) -> f32 {
    v.get(key)
        .and_then(Value::as_f64)
        .map_or(default, |x| x as f32)
}

fn activation(name: &str) -> std::result::Result<Activation, String> {
    match name {
        "gelu" => Ok(Activation::GeluErf),
        "gelu_new" | "gelu_pytorch_tanh" | "gelu_fast" => Ok(Activation::GeluTanh),
        "silu" | "swish" => Ok(Activation::Silu),
        "relu" => Ok(Activation::Relu),
        other => Err(format!(
            "unsupported activation `{other}`; supported: gelu, gelu_new, gelu_pytorch_tanh, silu, relu"
        )),
    }
}

fn head_dim(hidden: usize, heads: usize) -> std::result::Result<usize, String> {
    if heads == 0 || !hidden.is_multiple_of(heads) {
        return Err(format!(
            "hidden size {hidden} is not divisible by {heads} heads"
        ));
    }
    Ok(hidden / heads)
}

fn bert(v: &Value) -> std::result::Result<ModelConfig, String> {
    let hidden = get_usize(v, "hidden_size")?;
    let heads = get_usize(v, "num_attention_heads")?;
    let act = v
        .get("hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("gelu");
    if let Some(p) = v.get("position_embedding_type").and_then(Value::as_str) {
        if p != "absolute" {
            return Err(format!(
                "unsupported position_embedding_type `{p}`; supported: absolute"
            ));
        }
    }
    Ok(ModelConfig {
        family: Family::Bert,
        vocab_size: get_usize(v, "vocab_size")?,
        hidden,
        layers: get_usize(v, "num_hidden_layers")?,
        heads,
        kv_heads: heads,
        head_dim: head_dim(hidden, heads)?,
        intermediate: get_usize(v, "intermediate_size")?,
        max_positions: get_usize(v, "max_position_embeddings")?,
        type_vocab_size: opt_usize(v, "type_vocab_size").unwrap_or(2),
        norm: NormKind::LayerNorm,
        norm_eps: get_f32(v, "layer_norm_eps", 1e-12),
        placement: NormPlacement::Post,
        positions: PositionKind::Learned,
        mlp: MlpKind::Plain(activation(act)?),
        causal: false,
        attn_bias: true,
        o_bias: true,
        mlp_bias: true,
        qk_norm: false,
        embedding_norm: true,
        final_norm: false,
        tie_embeddings: true,
    })
}

fn gpt2(v: &Value) -> std::result::Result<ModelConfig, String> {
    let hidden = get_usize(v, "n_embd")?;
    let heads = get_usize(v, "n_head")?;
    let act = v
        .get("activation_function")
        .and_then(Value::as_str)
        .unwrap_or("gelu_new");
    let inner = opt_usize(v, "n_inner").unwrap_or(4 * hidden);
    Ok(ModelConfig {
        family: Family::Gpt2,
        vocab_size: get_usize(v, "vocab_size")?,
        hidden,
        layers: get_usize(v, "n_layer")?,
        heads,
        kv_heads: heads,
        head_dim: head_dim(hidden, heads)?,
        intermediate: inner,
        max_positions: get_usize(v, "n_positions")?,
        type_vocab_size: 0,
        norm: NormKind::LayerNorm,
        norm_eps: get_f32(v, "layer_norm_epsilon", 1e-5),
        placement: NormPlacement::Pre,
        positions: PositionKind::Learned,
        mlp: MlpKind::Plain(activation(act)?),
        causal: true,
        attn_bias: true,
        o_bias: true,
        mlp_bias: true,
        qk_norm: false,
        embedding_norm: false,
        final_norm: true,
        tie_embeddings: true,
    })
}

/// Llama and the families that are Llama with small changes: Qwen2 (`model_type: qwen2`) adds
/// biases to the q, k and v projections (not to the output projection); Qwen3 (`qwen3`) has no
/// biases unless `attention_bias` says so, and normalises each query and key head (RMSNorm over
/// `head_dim`) before RoPE.
fn llama(v: &Value) -> std::result::Result<ModelConfig, String> {
    let model_type = v.get("model_type").and_then(Value::as_str);
    let qwen2 = model_type == Some("qwen2");
    let qwen3 = model_type == Some("qwen3");
    if (qwen2 || qwen3) && v.get("use_sliding_window").and_then(Value::as_bool) == Some(true) {
        return Err(format!(
            "{} with `use_sliding_window: true` is not supported",
            model_type.unwrap_or_default()
        ));
    }
    let hidden = get_usize(v, "hidden_size")?;
    let heads = get_usize(v, "num_attention_heads")?;
    let kv_heads = opt_usize(v, "num_key_value_heads").unwrap_or(heads);
    if let Some(s) = v.get("rope_scaling") {
        if !s.is_null() {
            return Err("`rope_scaling` is not supported (only plain RoPE)".into());
        }
    }
    // transformers >= 5 writes `rope_parameters: {rope_theta, rope_type}` instead of a
    // top-level `rope_theta`.
    let mut theta = get_f32(v, "rope_theta", 10000.0);
    if let Some(p) = v.get("rope_parameters").filter(|p| !p.is_null()) {
        let kind = p
            .get("rope_type")
            .and_then(Value::as_str)
            .unwrap_or("default");
        if kind != "default" {
            return Err(format!(
                "rope_type `{kind}` is not supported (only `default`)"
            ));
        }
        theta = get_f32(p, "rope_theta", theta);
    }
    let act = v
        .get("hidden_act")
        .and_then(Value::as_str)
        .unwrap_or("silu");
    if act != "silu" {
        return Err(format!(
            "llama MLP with activation `{act}` is not supported; supported: silu"
        ));
    }
    let head_dim = match opt_usize(v, "head_dim") {
        Some(d) => d,
        None => head_dim(hidden, heads)?,
    };
    let bias = qwen2
        || v.get("attention_bias")
            .and_then(Value::as_bool)
            .unwrap_or(false);
    Ok(ModelConfig {
        family: Family::Llama,
        vocab_size: get_usize(v, "vocab_size")?,
        hidden,
        layers: get_usize(v, "num_hidden_layers")?,
        heads,
        kv_heads,
        head_dim,
        intermediate: get_usize(v, "intermediate_size")?,
        max_positions: get_usize(v, "max_position_embeddings")?,
        type_vocab_size: 0,
        norm: NormKind::RmsNorm,
        norm_eps: get_f32(v, "rms_norm_eps", 1e-6),
        placement: NormPlacement::Pre,
        positions: PositionKind::Rotary { theta },
        mlp: MlpKind::SwiGlu,
        causal: true,
        attn_bias: bias,
        o_bias: bias && !qwen2,
        mlp_bias: v.get("mlp_bias").and_then(Value::as_bool).unwrap_or(false),
        qk_norm: qwen3,
        embedding_norm: false,
        final_norm: true,
        tie_embeddings: v
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(false),
    })
}
