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
    /// `down(gelu_tanh(gate(x)) * up(x))` (Gemma).
    GeGlu,
}

impl MlpKind {
    /// Whether the MLP has a gate projection.
    pub fn gated(self) -> bool {
        matches!(self, MlpKind::SwiGlu | MlpKind::GeGlu)
    }
}

/// Gemma 3's interleaved attention: most blocks attend within a sliding window with their own
/// RoPE base; the others ("full attention") see every earlier key with the model's base.
#[derive(Clone, Debug, PartialEq)]
pub struct SlidingWindow {
    /// Keys a local block's query sees, its own position included.
    pub window: usize,
    /// RoPE base of the local blocks.
    pub rope_theta: f32,
    /// Per block: whether it is local (sliding window).
    pub local: Vec<bool>,
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
    /// A factor on the token embeddings (Gemma: `sqrt(hidden)`).
    pub embed_scale: Option<f32>,
    /// A norm on the attention output and one on the MLP output, each before its residual sum
    /// (Gemma 3's post-attention and post-feed-forward norms).
    pub post_norms: bool,
    /// Multiplier of the attention scores where it is not `1/sqrt(head_dim)` (Gemma 3:
    /// `query_pre_attn_scalar^-1/2`).
    pub query_scale: Option<f32>,
    /// Interleaved sliding-window attention (Gemma 3).
    pub sliding: Option<SlidingWindow>,
    /// Gemma's norm convention: a Hugging Face checkpoint stores each RMSNorm scale as `w` and
    /// the norm multiplies by `1 + w`; the loader adds this offset (1 for Gemma, else 0). A GGUF
    /// file stores `1 + w` already and is read as it is.
    pub norm_weight_offset: f32,
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
            "gemma3_text" => gemma3(v)?,
            "gemma3" => {
                return Err(
                    "`model_type: gemma3` is the multimodal Gemma 3 (vision tower and language model); \
                     point flexp at a text-only checkpoint (`model_type: gemma3_text`)"
                        .into(),
                )
            }
            other => {
                return Err(format!(
                "unknown architecture `model_type: {other}`; supported: bert, gpt2, llama, qwen2, qwen3, gemma3_text"
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

    /// The sliding window of block `l`, if it is a local block.
    pub fn layer_window(&self, l: usize) -> Option<usize> {
        let s = self.sliding.as_ref()?;
        s.local.get(l).copied().unwrap_or(false).then_some(s.window)
    }

    /// The RoPE base of block `l` (a local block's own under [`ModelConfig::sliding`]).
    pub fn layer_rope_theta(&self, l: usize) -> Option<f32> {
        match self.positions {
            PositionKind::Rotary { theta } => Some(match self.layer_window(l) {
                Some(_) => self.sliding.as_ref().map_or(theta, |s| s.rope_theta),
                None => theta,
            }),
            PositionKind::Learned => None,
        }
    }

    /// Multiplier of the attention scores.
    pub fn attn_scale(&self) -> f32 {
        self.query_scale
            .unwrap_or(1.0 / (self.head_dim as f32).sqrt())
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
        embed_scale: None,
        post_norms: false,
        query_scale: None,
        sliding: None,
        norm_weight_offset: 0.0,
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
        embed_scale: None,
        post_norms: false,
        query_scale: None,
        sliding: None,
        norm_weight_offset: 0.0,
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
        embed_scale: None,
        post_norms: false,
        query_scale: None,
        sliding: None,
        norm_weight_offset: 0.0,
    })
}

/// Gemma 3's text model (`model_type: gemma3_text`): the Llama block with an RMSNorm of each
/// query and key head, a norm after attention and one after the MLP (each before its residual
/// sum), GeGLU (`gelu_pytorch_tanh`), embeddings scaled by `sqrt(hidden)`, scores scaled by
/// `query_pre_attn_scalar^-1/2`, and interleaved attention: blocks of `layer_types`
/// `sliding_attention` (or, in older configs, all but every `sliding_window_pattern`-th) see
/// `sliding_window` keys with their own RoPE base (`rope_local_base_freq`, or
/// `rope_parameters.sliding_attention`). Logit soft-capping and RoPE scaling are refused.
fn gemma3(v: &Value) -> std::result::Result<ModelConfig, String> {
    for key in [
        "final_logit_softcapping",
        "attn_logit_softcapping",
        "rope_scaling",
    ] {
        if v.get(key).is_some_and(|x| !x.is_null()) {
            return Err(format!("Gemma 3 with `{key}` set is not supported"));
        }
    }
    let act = v
        .get("hidden_activation")
        .or_else(|| v.get("hidden_act"))
        .and_then(Value::as_str)
        .unwrap_or("gelu_pytorch_tanh");
    if activation(act)? != Activation::GeluTanh {
        return Err(format!(
            "Gemma 3 with activation `{act}` is not supported; supported: gelu_pytorch_tanh"
        ));
    }
    let hidden = get_usize(v, "hidden_size")?;
    let heads = get_usize(v, "num_attention_heads")?;
    let layers = get_usize(v, "num_hidden_layers")?;
    // RoPE bases: `rope_parameters` per layer type (transformers >= 5), else the older keys.
    let base = |kind: &str, old_key: &str, default: f32| -> std::result::Result<f32, String> {
        match v.get("rope_parameters").and_then(|p| p.get(kind)) {
            Some(p) if !p.is_null() => {
                let t = p
                    .get("rope_type")
                    .and_then(Value::as_str)
                    .unwrap_or("default");
                if t != "default" {
                    return Err(format!(
                        "rope_type `{t}` ({kind}) is not supported (only `default`)"
                    ));
                }
                Ok(get_f32(p, "rope_theta", get_f32(v, old_key, default)))
            }
            _ => Ok(get_f32(v, old_key, default)),
        }
    };
    let theta = base("full_attention", "rope_theta", 1_000_000.0)?;
    let local_theta = base("sliding_attention", "rope_local_base_freq", 10_000.0)?;
    let local: Vec<bool> = match v.get("layer_types").and_then(Value::as_array) {
        Some(types) => {
            if types.len() != layers {
                return Err(format!(
                    "`layer_types` lists {} blocks for {layers} layers",
                    types.len()
                ));
            }
            types
                .iter()
                .map(|t| match t.as_str() {
                    Some("sliding_attention") => Ok(true),
                    Some("full_attention") => Ok(false),
                    _ => Err(format!(
                        "`layer_types` entry {t} is not supported; supported: sliding_attention, full_attention"
                    )),
                })
                .collect::<std::result::Result<_, _>>()?
        }
        None => {
            let pattern = opt_usize(v, "sliding_window_pattern").unwrap_or(6).max(1);
            (0..layers).map(|i| (i + 1) % pattern != 0).collect()
        }
    };
    let head_dim = opt_usize(v, "head_dim").unwrap_or(256);
    let query_pre_attn_scalar = v
        .get("query_pre_attn_scalar")
        .and_then(Value::as_f64)
        .unwrap_or(256.0);
    if query_pre_attn_scalar <= 0.0 {
        return Err("`query_pre_attn_scalar` must be positive".into());
    }
    let bias = v
        .get("attention_bias")
        .and_then(Value::as_bool)
        .unwrap_or(false);
    Ok(ModelConfig {
        family: Family::Llama,
        vocab_size: get_usize(v, "vocab_size")?,
        hidden,
        layers,
        heads,
        kv_heads: opt_usize(v, "num_key_value_heads").unwrap_or(heads),
        head_dim,
        intermediate: get_usize(v, "intermediate_size")?,
        max_positions: get_usize(v, "max_position_embeddings")?,
        type_vocab_size: 0,
        norm: NormKind::RmsNorm,
        norm_eps: get_f32(v, "rms_norm_eps", 1e-6),
        placement: NormPlacement::Pre,
        positions: PositionKind::Rotary { theta },
        mlp: MlpKind::GeGlu,
        causal: true,
        attn_bias: bias,
        o_bias: bias,
        mlp_bias: false,
        qk_norm: true,
        embedding_norm: false,
        final_norm: true,
        tie_embeddings: v
            .get("tie_word_embeddings")
            .and_then(Value::as_bool)
            .unwrap_or(true),
        embed_scale: Some((hidden as f32).sqrt()),
        post_norms: true,
        query_scale: Some((1.0 / query_pre_attn_scalar.sqrt()) as f32),
        sliding: Some(SlidingWindow {
            window: opt_usize(v, "sliding_window").unwrap_or(4096),
            rope_theta: local_theta,
            local,
        }),
        norm_weight_offset: 1.0,
    })
}
