//! A per-block cost model of one training step: FLOPs, bytes on the wire and client memory as
//! functions of the split point `s` (the client runs the embeddings and blocks `1..=s`).
//!
//! # Notation
//!
//! For one step of one client with `B` sequences of `T` tokens:
//!
//! - `N = B·T` tokens; `d` hidden, `q = heads·head_dim`, `kv = kv_heads·head_dim`,
//!   `f` intermediate, `H` heads, `V` vocabulary, `r` LoRA rank, `L` blocks.
//! - `P = d·q + 2·d·kv + q·d + d·f + f·d (+ d·f for the SwiGLU gate)`: the weights of a block's
//!   projections (`Σ d_in·d_out`).
//! - `A = Σ_{t ∈ targets} r·(d_in_t + d_out_t)`: the LoRA parameters of one block.
//! - `pairs`: query–key pairs of one sequence, `T²`, or `T(T+1)/2` for causal attention (the
//!   products a causal kernel needs; the tiled CPU kernel does slightly more).
//!
//! # What is counted
//!
//! FLOPs are those of the matrix products (`2·m·n·k` for an `m×k` by `k×n` product), which
//! dominate a transformer step; norms, activations, softmax exponentials, residual adds, RoPE and
//! embedding lookups are elementwise (O(N·d)) and left out. Bytes are fp32 (4 bytes a value).

use crate::error::{Error, Result};
use crate::model::config::{ModelConfig, NormKind, PositionKind};
use crate::model::{LoraConfig, Target};

/// Bytes of one fp32 value.
const F32: f64 = 4.0;

/// The task head at the end of the model, for its FLOPs and weights.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum TaskHead {
    /// A new, trainable linear classification head on a pooled representation (one vector per
    /// sequence), with this many classes.
    Classes(usize),
    /// The frozen language-model head, applied to every token (causal LM fine-tuning).
    LanguageModel,
}

/// Costs of one training step as functions of the split (see the module docs for notation).
#[derive(Clone, Debug, PartialEq)]
pub struct CostModel {
    cfg: ModelConfig,
    lora: LoraConfig,
    seq_len: usize,
    batch: usize,
    head: TaskHead,
    tail: usize,
    /// Bytes one block's projection weights take as stored, when not 4 a weight (a GGUF model
    /// keeps them in GGML blocks).
    projection_bytes: Option<f64>,
}

impl CostModel {
    /// The cost model of `cfg` with adapters `lora`, for steps of `batch` sequences of `seq_len`
    /// tokens. The head defaults to a 2-class classification head and the form to vanilla (no
    /// U-shaped tail); see [`CostModel::with_head`] and [`CostModel::with_u_shaped_tail`].
    pub fn new(cfg: &ModelConfig, lora: &LoraConfig, seq_len: usize, batch: usize) -> Result<Self> {
        if seq_len == 0 || batch == 0 {
            return Err(Error::Input(format!(
                "cost model: sequence length ({seq_len}) and batch size ({batch}) must be positive"
            )));
        }
        if lora.rank == 0 {
            return Err(Error::Input("LoRA rank must be at least 1".into()));
        }
        for (i, t) in lora.targets.iter().enumerate() {
            if !t.exists_in(cfg) {
                return Err(Error::Input(format!(
                    "LoRA target `{}` does not exist in a {:?} model",
                    t.name(),
                    cfg.family
                )));
            }
            // A repeated target would be counted twice.
            if lora.targets[..i].contains(t) {
                return Err(Error::Input(format!(
                    "LoRA target `{}` listed twice",
                    t.name()
                )));
            }
        }
        Ok(CostModel {
            cfg: cfg.clone(),
            lora: lora.clone(),
            seq_len,
            batch,
            head: TaskHead::Classes(2),
            tail: 0,
            projection_bytes: None,
        })
    }

    /// The same model with each block's projection weights taking `bytes` as stored (e.g. a
    /// GGUF file's quantized blocks) instead of 4 bytes a weight. Norms, biases and the embedding
    /// table stay f32, as the runtime holds them.
    pub fn with_projection_bytes(mut self, bytes: f64) -> Result<Self> {
        if !(bytes.is_finite() && bytes > 0.0) {
            return Err(Error::Input(format!(
                "cost model: projection bytes per block must be positive, got {bytes}"
            )));
        }
        self.projection_bytes = Some(bytes);
        Ok(self)
    }

    /// Sets the task head.
    pub fn with_head(mut self, head: TaskHead) -> Result<Self> {
        if head == TaskHead::Classes(0) {
            return Err(Error::Input(
                "a classification head needs at least one class".into(),
            ));
        }
        self.head = head;
        Ok(self)
    }

    /// Uses the label-private U-shaped form: the client also runs the last `u` blocks and the
    /// head (`u = 0` is the vanilla form). The server must keep at least one block and the
    /// client at least one block before the cut, so `u <= L - 2`.
    pub fn with_u_shaped_tail(mut self, u: usize) -> Result<Self> {
        if u + 2 > self.cfg.layers {
            return Err(Error::Input(format!(
                "a U-shaped tail of {u} blocks leaves no valid split in a {}-block model \
                 (at most {} tail blocks)",
                self.cfg.layers,
                self.cfg.layers.saturating_sub(2)
            )));
        }
        self.tail = u;
        Ok(self)
    }

    /// The model's number of blocks `L`.
    pub fn layers(&self) -> usize {
        self.cfg.layers
    }

    /// The U-shaped tail length `u` (0: vanilla).
    pub fn u_shaped_tail(&self) -> usize {
        self.tail
    }

    /// The task head.
    pub fn head(&self) -> TaskHead {
        self.head
    }

    /// The largest valid split, `L - 1 - u` (the server runs at least one block). Valid splits
    /// are `1..=max_split()`; 0 when the model is too shallow to split.
    pub fn max_split(&self) -> usize {
        self.cfg.layers.saturating_sub(1 + self.tail)
    }

    fn tokens(&self) -> f64 {
        (self.batch * self.seq_len) as f64
    }

    fn has_gate(&self) -> bool {
        self.cfg.mlp.gated()
    }

    /// `P`: the weights of one block's projections, `Σ d_in·d_out`.
    fn projection_params(&self) -> f64 {
        Target::ALL
            .into_iter()
            .filter(|&t| t != Target::Gate || self.has_gate())
            .map(|t| {
                let (i, o) = t.dims(&self.cfg);
                (i * o) as f64
            })
            .sum()
    }

    /// `A`: LoRA parameters of one block, `Σ_targets r·(d_in + d_out)`.
    pub fn lora_params_per_block(&self) -> f64 {
        self.lora
            .targets
            .iter()
            .map(|t| {
                let (i, o) = t.dims(&self.cfg);
                (self.lora.rank * (i + o)) as f64
            })
            .sum()
    }

    /// Query–key pairs of one sequence: `T²`, or `T(T+1)/2` when causal.
    fn pairs(&self) -> f64 {
        let t = self.seq_len as f64;
        if self.cfg.causal {
            t * (t + 1.0) / 2.0
        } else {
            t * t
        }
    }

    /// FLOPs of the two attention products of a forward, `QKᵀ` and `PV`:
    /// `2 products · 2·pairs·head_dim · heads · B = 4·B·pairs·q`.
    fn attention_fwd_flops(&self) -> f64 {
        4.0 * self.batch as f64 * self.pairs() * self.cfg.q_dim() as f64
    }

    /// Forward FLOPs of one block: `2·N·P + 2·N·A + 4·B·pairs·q`.
    ///
    /// - base projections: `2·N·d_in·d_out` each, `2·N·P` in all;
    /// - LoRA: `u = x·Aᵀ` (`2·N·d_in·r`) and `u·Bᵀ` (`2·N·r·d_out`) per target, `2·N·A` in all;
    /// - attention: `QKᵀ` and `PV`, `4·B·pairs·q`.
    pub fn block_fwd_flops(&self) -> f64 {
        let n = self.tokens();
        2.0 * n * self.projection_params()
            + 2.0 * n * self.lora_params_per_block()
            + self.attention_fwd_flops()
    }

    /// Backward FLOPs of one block: `2·N·P + 4·N·A + 10·B·pairs·q`.
    ///
    /// - frozen base projections: only the input gradient `dx = dy·W`, one GEMM each, `2·N·P`
    ///   (no weight gradient);
    /// - LoRA, per target: `dB = dyᵀ·u`, `du = dy·B` (`2·N·r·d_out` each), `dA = duᵀ·x`,
    ///   `dx += du·A` (`2·N·r·d_in` each): `4·N·A` in all;
    /// - attention: 2.5× the forward products (recompute `S = QKᵀ`, then `dP = dO·Vᵀ`,
    ///   `dV = Pᵀ·dO`, `dQ = dS·K`, `dK = dSᵀ·Q`: five products against the forward's two),
    ///   `10·B·pairs·q`.
    pub fn block_bwd_flops(&self) -> f64 {
        let n = self.tokens();
        2.0 * n * self.projection_params()
            + 4.0 * n * self.lora_params_per_block()
            + 2.5 * self.attention_fwd_flops()
    }

    /// Forward plus backward FLOPs of one block.
    fn block_flops(&self) -> f64 {
        self.block_fwd_flops() + self.block_bwd_flops()
    }

    /// FLOPs the lowest block of a pass that starts from tokens skips in its backward: the
    /// input-gradient products of the projections that read the block's input, q, k and v,
    /// `2·N·d·(q + 2·kv)`. Their only use would be a gradient for the embeddings, which are
    /// frozen, so the executor does not run them (the LoRA gradients of those projections are
    /// still computed).
    pub fn first_block_skipped_flops(&self) -> f64 {
        [Target::Q, Target::K, Target::V]
            .into_iter()
            .map(|t| {
                let (i, o) = t.dims(&self.cfg);
                2.0 * self.tokens() * (i * o) as f64
            })
            .sum()
    }

    /// FLOPs of the embeddings: 0. They are table lookups and elementwise adds (and a norm for
    /// BERT), and being frozen and first they need no backward.
    pub fn embed_flops(&self) -> f64 {
        0.0
    }

    /// Forward plus backward FLOPs of a trainable classification head with `classes` outputs
    /// on one pooled vector per sequence: `2·B·d·c` forward, `2·B·d·c` for the weight gradient,
    /// `2·B·d·c` for the input gradient and `2·B·c` for the bias gradient (the column sums of
    /// the logit gradients, taken as a product with a ones vector): `6·B·d·c + 2·B·c` (pooling
    /// is elementwise).
    pub fn head_flops(&self, classes: usize) -> f64 {
        let (b, c) = (self.batch as f64, classes as f64);
        6.0 * b * self.cfg.hidden as f64 * c + 2.0 * b * c
    }

    /// Forward plus backward FLOPs of the frozen language-model head on every token:
    /// `2·N·d·V` forward and `2·N·d·V` for the input gradient, `4·N·d·V`.
    pub fn lm_head_flops(&self) -> f64 {
        4.0 * self.tokens() * self.cfg.hidden as f64 * self.cfg.vocab_size as f64
    }

    /// FLOPs of the configured [`TaskHead`].
    pub fn task_head_flops(&self) -> f64 {
        match self.head {
            TaskHead::Classes(c) => self.head_flops(c),
            TaskHead::LanguageModel => self.lm_head_flops(),
        }
    }

    /// Client FLOPs of one step at split `s` in the configured form:
    /// [`CostModel::client_flops_u`]`(s, u)` with the configured tail `u` (vanilla:
    /// `embed + s·(fwd + bwd) − first-block skip`).
    pub fn client_flops(&self, s: usize) -> f64 {
        self.client_flops_u(s, self.tail)
    }

    /// Client FLOPs of one step with split `s` and a U-shaped tail of `u` blocks:
    /// `embed + s·(fwd + bwd)` less [`CostModel::first_block_skipped_flops`] (block 0 needs no
    /// input gradient), plus `u·(fwd + bwd) + head` when `u > 0` (the tail's input gradient is
    /// sent to the server, so it is computed).
    pub fn client_flops_u(&self, s: usize, u: usize) -> f64 {
        let mut f = self.embed_flops() + s as f64 * self.block_flops();
        if s > 0 {
            f -= self.first_block_skipped_flops();
        }
        if u > 0 {
            f += u as f64 * self.block_flops() + self.task_head_flops();
        }
        f
    }

    /// Server FLOPs of one step at split `s` in the configured form:
    /// [`CostModel::server_flops_u`]`(s, u)`.
    pub fn server_flops(&self, s: usize) -> f64 {
        self.server_flops_u(s, self.tail)
    }

    /// Server FLOPs of one step with split `s` and tail `u`: `(L - s - u)·(fwd + bwd)`, plus the
    /// head in the vanilla form (`u = 0`). Saturates at zero blocks for out-of-range splits.
    pub fn server_flops_u(&self, s: usize, u: usize) -> f64 {
        let blocks = self.cfg.layers.saturating_sub(s + u);
        let mut f = blocks as f64 * self.block_flops();
        if u == 0 {
            f += self.task_head_flops();
        }
        f
    }

    /// Bytes of the smashed activations `h` of one step, `B·T·d·4`; the gradient `dh` sent back
    /// has the same size. (The attention mask and labels are a few bytes per token, ignored.)
    pub fn activation_bytes(&self) -> f64 {
        self.tokens() * self.cfg.hidden as f64 * F32
    }

    /// Bytes the client sends per step: `h`, plus in the U-shaped form the gradient of the
    /// server's output (same size): `activation_bytes · (1 + [u > 0])`.
    pub fn uplink_bytes(&self) -> f64 {
        self.activation_bytes() * if self.tail > 0 { 2.0 } else { 1.0 }
    }

    /// Bytes the client receives per step: `dh`, plus in the U-shaped form the server's output:
    /// `activation_bytes · (1 + [u > 0])`.
    pub fn downlink_bytes(&self) -> f64 {
        self.uplink_bytes()
    }

    /// Bytes of the LoRA parameters of `blocks` blocks: `blocks · A · 4`.
    pub fn adapter_bytes(&self, blocks: usize) -> f64 {
        blocks as f64 * self.lora_params_per_block() * F32
    }

    /// Bytes of the AdamW moments (first and second) of `blocks` blocks' adapters:
    /// `2 · adapter_bytes(blocks)`.
    pub fn optimizer_bytes(&self, blocks: usize) -> f64 {
        2.0 * self.adapter_bytes(blocks)
    }

    /// Parameters of one norm: `2d` (LayerNorm: weight and bias) or `d` (RMSNorm).
    fn norm_params(&self) -> f64 {
        let d = self.cfg.hidden as f64;
        match self.cfg.norm {
            NormKind::LayerNorm => 2.0 * d,
            NormKind::RmsNorm => d,
        }
    }

    /// Frozen parameters of the embeddings: `V·d` tokens, `max_positions·d` learned positions
    /// (none with rotary positions), `type_vocab·d` token types, and the embedding norm (BERT).
    pub fn embedding_params(&self) -> f64 {
        let c = &self.cfg;
        let d = c.hidden as f64;
        let mut p = c.vocab_size as f64 * d + c.type_vocab_size as f64 * d;
        if matches!(c.positions, PositionKind::Learned) {
            p += c.max_positions as f64 * d;
        }
        if c.embedding_norm {
            p += self.norm_params();
        }
        p
    }

    /// Frozen parameters of one block: the projections `P`, their biases (attention: `q + 2·kv`,
    /// and `d` for the output projection where it has one; MLP: `f` for up, `f` for the gate when SwiGLU, `d` for down), and two norms.
    pub fn block_params(&self) -> f64 {
        let c = &self.cfg;
        let (d, f) = (c.hidden as f64, c.intermediate as f64);
        let mut p = self.projection_params() + 2.0 * self.norm_params();
        if c.attn_bias {
            p += (c.q_dim() + 2 * c.kv_dim()) as f64;
        }
        if c.o_bias {
            p += d;
        }
        if c.mlp_bias {
            p += f + d;
            if self.has_gate() {
                p += f;
            }
        }
        p
    }

    /// Bytes of the frozen weights a vanilla client holds at split `s`: the embeddings and `s`
    /// blocks, `(embedding_params + s·block_params)·4`, with the projections at their stored
    /// size where [`CostModel::with_projection_bytes`] set one.
    pub fn frozen_bytes(&self, s: usize) -> f64 {
        let block = match self.projection_bytes {
            None => self.block_params() * F32,
            Some(p) => (self.block_params() - self.projection_params()) * F32 + p,
        };
        self.embedding_params() * F32 + s as f64 * block
    }

    /// Bytes of the frozen weights of a U-shaped client with split `s` and tail `u`:
    /// [`CostModel::frozen_bytes`]`(s + u)`, plus for `u > 0` the final norm (when the model has
    /// one) and an untied LM head (`V·d`, when the task head is the LM head).
    pub fn frozen_bytes_u(&self, s: usize, u: usize) -> f64 {
        let mut b = self.frozen_bytes(s + u);
        if u > 0 {
            if self.cfg.final_norm {
                b += self.norm_params() * F32;
            }
            if self.head == TaskHead::LanguageModel && !self.cfg.tie_embeddings {
                b += (self.cfg.vocab_size * self.cfg.hidden) as f64 * F32;
            }
        }
        b
    }

    /// Values one block keeps from its forward for its backward (the executor's block tape),
    /// per token:
    ///
    /// - `4·d`: the inputs of the attention and MLP projections and the inputs of the two norms
    ///   (pre-norm: block input, norm1 output, attention sum, norm2 output; post-norm: block
    ///   input, attention sum, norm1 output, MLP sum);
    /// - `2·stats`: the norms' statistics, `stats = 2` (mean, 1/σ) for LayerNorm, 1 for RMSNorm;
    /// - `2·q + 2·kv`: Q, K, V and the attention output;
    /// - `H`: the per-head log-sum-exp of the scores (the kernel never stores the `T×T` matrix);
    /// - `2·f` (`3·f` with SwiGLU): the up projection, the activation output (and the gate);
    /// - `r` per LoRA target: the intermediate `u = x·Aᵀ`.
    fn tape_values_per_token(&self) -> f64 {
        let c = &self.cfg;
        let stats = match c.norm {
            NormKind::LayerNorm => 2.0,
            NormKind::RmsNorm => 1.0,
        };
        let mlp = if self.has_gate() { 3.0 } else { 2.0 };
        4.0 * c.hidden as f64
            + 2.0 * stats
            + (2 * c.q_dim() + 2 * c.kv_dim()) as f64
            + c.heads as f64
            + mlp * c.intermediate as f64
            + (self.lora.rank * self.lora.targets.len()) as f64
    }

    /// Bytes of the activations `s` blocks keep for the backward:
    /// `s · N · (4d + 2·stats + 2q + 2kv + H + (2|3)·f + r·|targets|) · 4` (see the list of
    /// tensors on the private `tape_values_per_token`). Transient buffers of the backward
    /// (one block's gradients at a time) are not counted.
    pub fn activation_memory(&self, s: usize) -> f64 {
        s as f64 * self.tokens() * self.tape_values_per_token() * F32
    }

    /// Peak client memory of one step at split `s` in the configured form:
    /// [`CostModel::client_memory_u`]`(s, u)`; vanilla:
    /// `frozen_bytes(s) + adapter_bytes(s) + optimizer_bytes(s) + activation_memory(s)`.
    pub fn client_memory(&self, s: usize) -> f64 {
        self.client_memory_u(s, self.tail)
    }

    /// Client memory with split `s` and tail `u`: with `b = s + u` adapted blocks on the client,
    /// `frozen_bytes_u(s, u) + adapter_bytes(b) + optimizer_bytes(b) + activation_memory(b)`,
    /// plus for `u > 0` a classification head's weights and AdamW moments (`3·(c·d + c)·4`).
    pub fn client_memory_u(&self, s: usize, u: usize) -> f64 {
        let b = s + u;
        let mut m = self.frozen_bytes_u(s, u)
            + self.adapter_bytes(b)
            + self.optimizer_bytes(b)
            + self.activation_memory(b);
        if u > 0 {
            if let TaskHead::Classes(c) = self.head {
                m += 3.0 * ((c * self.cfg.hidden + c) as f64) * F32;
            }
        }
        m
    }
}
