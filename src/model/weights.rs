//! The frozen base model: its weights on a backend, loaded from a checkpoint with each family's
//! Hugging Face tensor names (with or without the `bert.` / `transformer.` / `model.` prefix).

use super::checkpoint::Checkpoint;
use super::config::{Family, ModelConfig, NormKind, PositionKind};
use crate::backend::{Backend, WeightPrecision};
use crate::error::Result;

/// A frozen linear layer `y = x·Wᵀ + b` with `w: [d_out, d_in]`.
pub struct Linear<B: Backend> {
    /// Weight `[d_out, d_in]`, in the model's [`WeightPrecision`] (the bias stays f32).
    pub w: B::Weight,
    /// Optional bias `[d_out]`.
    pub b: Option<B::Buf>,
    /// Input features.
    pub d_in: usize,
    /// Output features.
    pub d_out: usize,
}

/// A frozen normalisation layer.
pub struct Norm<B: Backend> {
    /// Scale `[dim]`.
    pub gamma: B::Buf,
    /// Shift `[dim]` (LayerNorm only).
    pub beta: Option<B::Buf>,
}

/// The weights of one transformer block. `norm1` is the attention norm and `norm2` the MLP norm,
/// whether they sit before (pre-norm) or after (post-norm) their residual.
pub struct Block<B: Backend> {
    /// Norm of the attention sub-layer.
    pub norm1: Norm<B>,
    /// Query projection.
    pub q: Linear<B>,
    /// Key projection.
    pub k: Linear<B>,
    /// Value projection.
    pub v: Linear<B>,
    /// Attention output projection.
    pub o: Linear<B>,
    /// RMSNorm of each query head and of each key head (`[head_dim]` scales), before RoPE
    /// ([`crate::model::ModelConfig::qk_norm`]).
    pub qk_norm: Option<(Norm<B>, Norm<B>)>,
    /// Norm of the MLP sub-layer.
    pub norm2: Norm<B>,
    /// Norms of the attention output and of the MLP output, each before its residual sum
    /// ([`crate::model::ModelConfig::post_norms`]).
    pub post_norms: Option<(Norm<B>, Norm<B>)>,
    /// Gate projection (SwiGLU only).
    pub gate: Option<Linear<B>>,
    /// MLP up projection.
    pub up: Linear<B>,
    /// MLP down projection.
    pub down: Linear<B>,
}

/// A loaded base model. All of it is frozen; trainable state lives in adapter sets.
///
/// The projection weights of the blocks are stored in [`Model::precision`]; embeddings, norms,
/// biases and the LM head are f32 buffers in every precision (they are read by ops that take
/// f32 buffers; together they are a small part of a block stack's weights, except the
/// embedding table).
pub struct Model<B: Backend> {
    /// The configuration the weights were loaded for.
    pub config: ModelConfig,
    /// Storage precision of the blocks' projection weights.
    pub precision: WeightPrecision,
    /// Token embeddings `[vocab, hidden]`.
    pub word_emb: B::Buf,
    /// Learned position embeddings `[max_positions, hidden]`.
    pub pos_emb: Option<B::Buf>,
    /// Token-type embeddings `[type_vocab, hidden]`.
    pub type_emb: Option<B::Buf>,
    /// Norm right after the embeddings (BERT).
    pub emb_norm: Option<Norm<B>>,
    /// The blocks.
    pub blocks: Vec<Block<B>>,
    /// Norm after the last block (GPT-2, Llama).
    pub final_norm: Option<Norm<B>>,
    /// Untied LM head `[vocab, hidden]`; `None` means the head is `word_emb`.
    pub lm_head: Option<B::Buf>,
}

impl<B: Backend> Model<B> {
    /// Number of blocks.
    pub fn layers(&self) -> usize {
        self.blocks.len()
    }

    /// The LM head matrix `[vocab, hidden]` (the embedding table when tied).
    pub fn lm_head(&self) -> &B::Buf {
        self.lm_head.as_ref().unwrap_or(&self.word_emb)
    }

    /// Bytes the blocks' projection weights take on the backend (the part
    /// [`Model::precision`] governs).
    pub fn block_weight_bytes(&self, backend: &B) -> usize {
        self.blocks
            .iter()
            .flat_map(|b| {
                [&b.q, &b.k, &b.v, &b.o, &b.up, &b.down]
                    .into_iter()
                    .chain(&b.gate)
            })
            .map(|l| backend.weight_bytes(&l.w))
            .sum()
    }

    /// Loads the weights of `config` from `ckpt` onto `backend`, block weights in f32.
    pub fn load(backend: &B, config: ModelConfig, ckpt: &Checkpoint) -> Result<Self> {
        Self::load_with(backend, config, ckpt, WeightPrecision::F32)
    }

    /// Loads the weights of `config` from `ckpt` onto `backend`, block projection weights
    /// stored in `precision`.
    pub fn load_with(
        backend: &B,
        config: ModelConfig,
        ckpt: &Checkpoint,
        precision: WeightPrecision,
    ) -> Result<Self> {
        let loader = Loader {
            backend,
            ckpt,
            prefixes: prefixes(config.family),
            precision,
        };
        match config.family {
            Family::Bert => loader.bert(config),
            Family::Gpt2 => loader.gpt2(config),
            Family::Llama => loader.llama(config),
        }
    }
}

fn prefixes(f: Family) -> &'static [&'static str] {
    match f {
        Family::Bert => &["", "bert."],
        Family::Gpt2 => &["", "transformer."],
        Family::Llama => &["", "model."],
    }
}

struct Loader<'a, B: Backend> {
    backend: &'a B,
    ckpt: &'a Checkpoint,
    prefixes: &'static [&'static str],
    precision: WeightPrecision,
}

impl<B: Backend> Loader<'_, B> {
    fn candidates(&self, names: &[&str]) -> Vec<String> {
        let mut out = Vec::new();
        for p in self.prefixes {
            for n in names {
                out.push(format!("{p}{n}"));
            }
        }
        out
    }

    /// Reads a tensor by any of its aliases, with any of the family's prefixes.
    fn read(&self, names: &[&str], shape: &[usize]) -> Result<Vec<f32>> {
        self.ckpt
            .tensor_any(names[0], &self.candidates(names), shape)
    }

    fn buf(&self, names: &[&str], shape: &[usize]) -> Result<B::Buf> {
        self.backend.upload(&self.read(names, shape)?)
    }

    fn exists(&self, names: &[&str]) -> bool {
        self.ckpt.resolve(&self.candidates(names)).is_some()
    }

    fn weight(&self, data: &[f32], d_in: usize, d_out: usize) -> Result<B::Weight> {
        self.backend.weight(data, d_out, d_in, self.precision)
    }

    fn linear(&self, base: &str, d_in: usize, d_out: usize, bias: bool) -> Result<Linear<B>> {
        Ok(Linear {
            w: self.weight(
                &self.read(&[&format!("{base}.weight")], &[d_out, d_in])?,
                d_in,
                d_out,
            )?,
            b: if bias {
                Some(self.buf(&[&format!("{base}.bias")], &[d_out])?)
            } else {
                None
            },
            d_in,
            d_out,
        })
    }

    fn norm(&self, base: &str, dim: usize, kind: NormKind) -> Result<Norm<B>> {
        // Old BERT checkpoints call the LayerNorm parameters gamma/beta.
        let gamma = self.buf(
            &[&format!("{base}.weight"), &format!("{base}.gamma")],
            &[dim],
        )?;
        let beta = match kind {
            NormKind::LayerNorm => {
                Some(self.buf(&[&format!("{base}.bias"), &format!("{base}.beta")], &[dim])?)
            }
            NormKind::RmsNorm => None,
        };
        Ok(Norm { gamma, beta })
    }

    fn bert(&self, c: ModelConfig) -> Result<Model<B>> {
        let (d, ff) = (c.hidden, c.intermediate);
        let mut blocks = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let p = format!("encoder.layer.{i}");
            blocks.push(Block {
                q: self.linear(&format!("{p}.attention.self.query"), d, d, true)?,
                k: self.linear(&format!("{p}.attention.self.key"), d, d, true)?,
                v: self.linear(&format!("{p}.attention.self.value"), d, d, true)?,
                o: self.linear(&format!("{p}.attention.output.dense"), d, d, true)?,
                qk_norm: None,
                post_norms: None,
                norm1: self.norm(&format!("{p}.attention.output.LayerNorm"), d, c.norm)?,
                gate: None,
                up: self.linear(&format!("{p}.intermediate.dense"), d, ff, true)?,
                down: self.linear(&format!("{p}.output.dense"), ff, d, true)?,
                norm2: self.norm(&format!("{p}.output.LayerNorm"), d, c.norm)?,
            });
        }
        Ok(Model {
            word_emb: self.buf(&["embeddings.word_embeddings.weight"], &[c.vocab_size, d])?,
            pos_emb: Some(self.buf(
                &["embeddings.position_embeddings.weight"],
                &[c.max_positions, d],
            )?),
            type_emb: Some(self.buf(
                &["embeddings.token_type_embeddings.weight"],
                &[c.type_vocab_size, d],
            )?),
            emb_norm: Some(self.norm("embeddings.LayerNorm", d, c.norm)?),
            blocks,
            final_norm: None,
            lm_head: None,
            config: c,
            precision: self.precision,
        })
    }

    /// GPT-2 stores Conv1D weights as `[in, out]` and fuses q, k, v into `c_attn`: transpose to
    /// `[out, in]` and split, once, at load time.
    fn conv1d(&self, base: &str, d_in: usize, d_out: usize) -> Result<(Vec<f32>, Vec<f32>)> {
        let w = self.read(&[&format!("{base}.weight")], &[d_in, d_out])?;
        let b = self.read(&[&format!("{base}.bias")], &[d_out])?;
        let mut t = vec![0.0f32; d_in * d_out];
        for i in 0..d_in {
            for o in 0..d_out {
                t[o * d_in + i] = w[i * d_out + o];
            }
        }
        Ok((t, b))
    }

    fn conv1d_linear(&self, base: &str, d_in: usize, d_out: usize) -> Result<Linear<B>> {
        let (w, b) = self.conv1d(base, d_in, d_out)?;
        Ok(Linear {
            w: self.weight(&w, d_in, d_out)?,
            b: Some(self.backend.upload(&b)?),
            d_in,
            d_out,
        })
    }

    fn gpt2(&self, c: ModelConfig) -> Result<Model<B>> {
        let (d, ff) = (c.hidden, c.intermediate);
        let mut blocks = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let p = format!("h.{i}");
            let (qkv_w, qkv_b) = self.conv1d(&format!("{p}.attn.c_attn"), d, 3 * d)?;
            let part = |j: usize| -> Result<Linear<B>> {
                Ok(Linear {
                    w: self.weight(&qkv_w[j * d * d..(j + 1) * d * d], d, d)?,
                    b: Some(self.backend.upload(&qkv_b[j * d..(j + 1) * d])?),
                    d_in: d,
                    d_out: d,
                })
            };
            blocks.push(Block {
                norm1: self.norm(&format!("{p}.ln_1"), d, c.norm)?,
                q: part(0)?,
                k: part(1)?,
                v: part(2)?,
                o: self.conv1d_linear(&format!("{p}.attn.c_proj"), d, d)?,
                qk_norm: None,
                post_norms: None,
                norm2: self.norm(&format!("{p}.ln_2"), d, c.norm)?,
                gate: None,
                up: self.conv1d_linear(&format!("{p}.mlp.c_fc"), d, ff)?,
                down: self.conv1d_linear(&format!("{p}.mlp.c_proj"), ff, d)?,
            });
        }
        Ok(Model {
            word_emb: self.buf(&["wte.weight"], &[c.vocab_size, d])?,
            pos_emb: Some(self.buf(&["wpe.weight"], &[c.max_positions, d])?),
            type_emb: None,
            emb_norm: None,
            blocks,
            final_norm: Some(self.norm("ln_f", d, c.norm)?),
            lm_head: None,
            config: c,
            precision: self.precision,
        })
    }

    /// An RMSNorm with the checkpoint's scale convention: Gemma stores `w` for a norm that
    /// multiplies by `1 + w` ([`ModelConfig::norm_weight_offset`]).
    fn rms_norm(&self, base: &str, dim: usize, c: &ModelConfig) -> Result<Norm<B>> {
        let n = self.norm(base, dim, c.norm)?;
        if c.norm_weight_offset == 0.0 {
            return Ok(n);
        }
        let shifted: Vec<f32> = self
            .backend
            .download(&n.gamma)?
            .iter()
            .map(|w| w + c.norm_weight_offset)
            .collect();
        Ok(Norm {
            gamma: self.backend.upload(&shifted)?,
            beta: n.beta,
        })
    }

    fn llama(&self, c: ModelConfig) -> Result<Model<B>> {
        let (d, ff, qd, kvd) = (c.hidden, c.intermediate, c.q_dim(), c.kv_dim());
        let mut blocks = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let p = format!("layers.{i}");
            let ab = c.attn_bias;
            let mb = c.mlp_bias;
            // Gemma 3 calls its post-attention norm what Llama calls the MLP's input norm.
            let (norm2, post_norms) = if c.post_norms {
                (
                    self.rms_norm(&format!("{p}.pre_feedforward_layernorm"), d, &c)?,
                    Some((
                        self.rms_norm(&format!("{p}.post_attention_layernorm"), d, &c)?,
                        self.rms_norm(&format!("{p}.post_feedforward_layernorm"), d, &c)?,
                    )),
                )
            } else {
                (
                    self.rms_norm(&format!("{p}.post_attention_layernorm"), d, &c)?,
                    None,
                )
            };
            blocks.push(Block {
                norm1: self.rms_norm(&format!("{p}.input_layernorm"), d, &c)?,
                q: self.linear(&format!("{p}.self_attn.q_proj"), d, qd, ab)?,
                k: self.linear(&format!("{p}.self_attn.k_proj"), d, kvd, ab)?,
                v: self.linear(&format!("{p}.self_attn.v_proj"), d, kvd, ab)?,
                o: self.linear(&format!("{p}.self_attn.o_proj"), qd, d, c.o_bias)?,
                qk_norm: if c.qk_norm {
                    Some((
                        self.rms_norm(&format!("{p}.self_attn.q_norm"), c.head_dim, &c)?,
                        self.rms_norm(&format!("{p}.self_attn.k_norm"), c.head_dim, &c)?,
                    ))
                } else {
                    None
                },
                norm2,
                post_norms,
                gate: Some(self.linear(&format!("{p}.mlp.gate_proj"), d, ff, mb)?),
                up: self.linear(&format!("{p}.mlp.up_proj"), d, ff, mb)?,
                down: self.linear(&format!("{p}.mlp.down_proj"), ff, d, mb)?,
            });
        }
        debug_assert!(c.mlp.gated());
        debug_assert!(matches!(c.positions, PositionKind::Rotary { .. }));
        // `lm_head.weight` sits outside the `model.` prefix; a checkpoint that ships it uses it
        // even when the config says tied (they are then equal).
        let lm_head =
            if !c.tie_embeddings || self.exists(&["lm_head.weight"]) {
                let names = vec!["lm_head.weight".to_string()];
                Some(self.backend.upload(&self.ckpt.tensor_any(
                    "lm_head.weight",
                    &names,
                    &[c.vocab_size, d],
                )?)?)
            } else {
                None
            };
        Ok(Model {
            word_emb: self.buf(&["embed_tokens.weight"], &[c.vocab_size, d])?,
            pos_emb: None,
            type_emb: None,
            emb_norm: None,
            blocks,
            final_norm: Some(self.rms_norm("norm", d, &c)?),
            lm_head,
            config: c,
            precision: self.precision,
        })
    }
}

impl<B: Backend> Model<B> {
    /// A model of `config` with random weights (normal, std 0.02; norm scales 1): for benchmarks
    /// and tests that need a model's shape but not its knowledge. Block weights in f32.
    pub fn random(backend: &B, config: ModelConfig, rng: &mut crate::rng::Rng) -> Result<Self> {
        Self::random_with(backend, config, rng, WeightPrecision::F32)
    }

    /// [`Model::random`] with the block projection weights stored in `precision`. The random
    /// stream is drawn in the same order for every precision, so the f32 and bf16 models of one
    /// seed differ only by the rounding of their block weights.
    pub fn random_with(
        backend: &B,
        config: ModelConfig,
        rng: &mut crate::rng::Rng,
        precision: WeightPrecision,
    ) -> Result<Self> {
        let c = &config;
        let mut draw = |n: usize| -> Vec<f32> { (0..n).map(|_| 0.02 * rng.normal()).collect() };
        let (d, ff, qd, kvd) = (c.hidden, c.intermediate, c.q_dim(), c.kv_dim());
        let ln = c.norm == NormKind::LayerNorm;
        let mut blocks = Vec::with_capacity(c.layers);
        let lin = |draw: &mut dyn FnMut(usize) -> Vec<f32>,
                   i: usize,
                   o: usize,
                   bias: bool|
         -> Result<Linear<B>> {
            Ok(Linear {
                w: backend.weight(&draw(i * o), o, i, precision)?,
                b: if bias {
                    Some(backend.upload(&draw(o))?)
                } else {
                    None
                },
                d_in: i,
                d_out: o,
            })
        };
        let norm_of = |be: &B, d: usize| -> Result<Norm<B>> {
            Ok(Norm {
                gamma: be.upload(&vec![1.0; d])?,
                beta: if ln { Some(be.zeros(d)?) } else { None },
            })
        };
        let norm = |be: &B| norm_of(be, d);
        for _ in 0..c.layers {
            blocks.push(Block {
                norm1: norm(backend)?,
                q: lin(&mut draw, d, qd, c.attn_bias)?,
                k: lin(&mut draw, d, kvd, c.attn_bias)?,
                v: lin(&mut draw, d, kvd, c.attn_bias)?,
                o: lin(&mut draw, qd, d, c.o_bias)?,
                qk_norm: if c.qk_norm {
                    Some((norm_of(backend, c.head_dim)?, norm_of(backend, c.head_dim)?))
                } else {
                    None
                },
                norm2: norm(backend)?,
                post_norms: if c.post_norms {
                    Some((norm(backend)?, norm(backend)?))
                } else {
                    None
                },
                gate: if c.mlp.gated() {
                    Some(lin(&mut draw, d, ff, c.mlp_bias)?)
                } else {
                    None
                },
                up: lin(&mut draw, d, ff, c.mlp_bias)?,
                down: lin(&mut draw, ff, d, c.mlp_bias)?,
            });
        }
        let learned = matches!(c.positions, PositionKind::Learned);
        Ok(Model {
            word_emb: backend.upload(&draw(c.vocab_size * d))?,
            pos_emb: if learned {
                Some(backend.upload(&draw(c.max_positions * d))?)
            } else {
                None
            },
            type_emb: if c.type_vocab_size > 0 {
                Some(backend.upload(&draw(c.type_vocab_size * d))?)
            } else {
                None
            },
            emb_norm: if c.embedding_norm {
                Some(norm(backend)?)
            } else {
                None
            },
            blocks,
            final_norm: if c.final_norm {
                Some(norm(backend)?)
            } else {
                None
            },
            lm_head: if c.tie_embeddings {
                None
            } else {
                Some(backend.upload(&draw(c.vocab_size * d))?)
            },
            config,
            precision,
        })
    }
}
