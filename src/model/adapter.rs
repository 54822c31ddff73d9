//! Trainable state: LoRA adapters on the projections of each block and task heads.
//!
//! An [`AdapterSet`] holds one client's (or the server's) LoRA pairs for any subset of blocks and
//! optionally a classification head. The same structure doubles as the gradient store and as
//! the optimizer moments, so all of them line up tensor for tensor.

use super::config::{Family, ModelConfig};
use crate::backend::{Backend, LoraShape};
use crate::error::{Error, Result};
use crate::rng::Rng;
use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

/// A named host tensor: name, shape, values.
pub type NamedTensor = (String, Vec<usize>, Vec<f32>);

/// A projection of a block that can carry a LoRA adapter.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum Target {
    /// Attention query.
    Q,
    /// Attention key.
    K,
    /// Attention value.
    V,
    /// Attention output.
    O,
    /// MLP gate (SwiGLU models).
    Gate,
    /// MLP up.
    Up,
    /// MLP down.
    Down,
}

impl Target {
    /// Every target, in storage order.
    pub const ALL: [Target; 7] = [
        Target::Q,
        Target::K,
        Target::V,
        Target::O,
        Target::Gate,
        Target::Up,
        Target::Down,
    ];

    /// Index in [`Target::ALL`].
    pub fn index(self) -> usize {
        self as usize
    }

    /// The short name used in configs and files (`q`, `k`, `v`, `o`, `gate`, `up`, `down`).
    pub fn name(self) -> &'static str {
        match self {
            Target::Q => "q",
            Target::K => "k",
            Target::V => "v",
            Target::O => "o",
            Target::Gate => "gate",
            Target::Up => "up",
            Target::Down => "down",
        }
    }

    /// Parses a short name.
    pub fn parse(s: &str) -> Result<Target> {
        Target::ALL
            .into_iter()
            .find(|t| t.name() == s)
            .ok_or_else(|| {
                Error::Input(format!(
                    "unknown LoRA target `{s}`; valid: q, k, v, o, gate, up, down"
                ))
            })
    }

    /// `(d_in, d_out)` of this projection in a model.
    pub fn dims(self, c: &ModelConfig) -> (usize, usize) {
        match self {
            Target::Q => (c.hidden, c.q_dim()),
            Target::K | Target::V => (c.hidden, c.kv_dim()),
            Target::O => (c.q_dim(), c.hidden),
            Target::Gate | Target::Up => (c.hidden, c.intermediate),
            Target::Down => (c.intermediate, c.hidden),
        }
    }

    /// Whether the model has this projection.
    pub fn exists_in(self, c: &ModelConfig) -> bool {
        self != Target::Gate || c.family == Family::Llama
    }
}

/// LoRA hyper-parameters.
#[derive(Clone, Debug, PartialEq)]
pub struct LoraConfig {
    /// Rank r.
    pub rank: usize,
    /// Alpha; the delta is scaled by `alpha / rank`.
    pub alpha: f32,
    /// Adapted projections.
    pub targets: Vec<Target>,
}

impl LoraConfig {
    /// The default: rank 8, alpha 16, attention and MLP projections.
    pub fn default_for(c: &ModelConfig) -> Self {
        LoraConfig {
            rank: 8,
            alpha: 16.0,
            targets: Target::ALL.into_iter().filter(|t| t.exists_in(c)).collect(),
        }
    }

    /// `alpha / rank`.
    pub fn scale(&self) -> f32 {
        self.alpha / self.rank as f32
    }
}

/// How a classification head pools a sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Pooling {
    /// Mean over the sequence's tokens.
    Mean,
    /// The first token (BERT's `[CLS]`).
    First,
    /// The last token (decoders).
    Last,
}

/// A LoRA pair: `a: [rank, d_in]`, `b: [d_out, rank]`.
pub struct LoraPair<B: Backend> {
    /// Down projection.
    pub a: B::Buf,
    /// Up projection.
    pub b: B::Buf,
}

/// A linear classification head on a pooled representation.
pub struct ClassHead<B: Backend> {
    /// `[classes, hidden]`.
    pub weight: B::Buf,
    /// `[classes]`.
    pub bias: B::Buf,
    /// Number of classes.
    pub classes: usize,
    /// Pooling of the last hidden state.
    pub pooling: Pooling,
}

/// One party's trainable parameters (or gradients, or optimizer moments of the same shape).
pub struct AdapterSet<B: Backend> {
    /// LoRA hyper-parameters.
    pub lora: LoraConfig,
    /// Per model block, per [`Target::ALL`] entry.
    pub blocks: Vec<[Option<LoraPair<B>>; 7]>,
    /// Optional classification head.
    pub head: Option<ClassHead<B>>,
}

impl<B: Backend> AdapterSet<B> {
    /// An empty set (no adapted block, no head) for a model of `layers` blocks.
    pub fn empty(lora: LoraConfig, layers: usize) -> Self {
        AdapterSet {
            lora,
            blocks: (0..layers).map(|_| Default::default()).collect(),
            head: None,
        }
    }

    /// LoRA pairs on `blocks`, initialised as PEFT does: `a` uniform in ±1/sqrt(d_in)
    /// (Kaiming-uniform with a = sqrt(5)), `b` zero, so the initial delta is zero.
    pub fn init_lora(
        backend: &B,
        cfg: &ModelConfig,
        lora: LoraConfig,
        blocks: Range<usize>,
        rng: &mut Rng,
    ) -> Result<Self> {
        if lora.rank == 0 {
            return Err(Error::Input("LoRA rank must be at least 1".into()));
        }
        if blocks.end > cfg.layers {
            return Err(Error::Input(format!(
                "adapter blocks {blocks:?} exceed the model's {} blocks",
                cfg.layers
            )));
        }
        for t in &lora.targets {
            if !t.exists_in(cfg) {
                return Err(Error::Input(format!(
                    "LoRA target `{}` does not exist in a {:?} model",
                    t.name(),
                    cfg.family
                )));
            }
        }
        let mut set = Self::empty(lora.clone(), cfg.layers);
        for l in blocks {
            for &t in &lora.targets {
                let (d_in, d_out) = t.dims(cfg);
                let bound = 1.0 / (d_in as f32).sqrt();
                let a = rng.vec_range(lora.rank * d_in, -bound, bound);
                set.blocks[l][t.index()] = Some(LoraPair {
                    a: backend.upload(&a)?,
                    b: backend.zeros(d_out * lora.rank)?,
                });
            }
        }
        Ok(set)
    }

    /// Adds a classification head with small random weights and zero bias.
    pub fn with_head(
        mut self,
        backend: &B,
        hidden: usize,
        classes: usize,
        pooling: Pooling,
        rng: &mut Rng,
    ) -> Result<Self> {
        let bound = 1.0 / (hidden as f32).sqrt();
        self.head = Some(ClassHead {
            weight: backend.upload(&rng.vec_range(classes * hidden, -bound, bound))?,
            bias: backend.zeros(classes)?,
            classes,
            pooling,
        });
        Ok(self)
    }

    /// The LoRA pair of block `l`, target `t`, if adapted.
    pub fn pair(&self, l: usize, t: Target) -> Option<&LoraPair<B>> {
        self.blocks.get(l).and_then(|b| b[t.index()].as_ref())
    }

    /// Mutable access to the pair of block `l`, target `t`.
    pub fn pair_mut(&mut self, l: usize, t: Target) -> Option<&mut LoraPair<B>> {
        self.blocks.get_mut(l).and_then(|b| b[t.index()].as_mut())
    }

    /// The shape of target `t`'s adapters in a model.
    pub fn shape(&self, cfg: &ModelConfig, t: Target) -> LoraShape {
        let (d_in, d_out) = t.dims(cfg);
        LoraShape {
            d_in,
            d_out,
            rank: self.lora.rank,
            scale: self.lora.scale(),
        }
    }

    /// A set of the same structure filled with zeros (gradients, optimizer moments).
    pub fn zeros_like(&self, backend: &B) -> Result<Self> {
        let mut blocks = Vec::with_capacity(self.blocks.len());
        for b in &self.blocks {
            let mut nb: [Option<LoraPair<B>>; 7] = Default::default();
            for (i, p) in b.iter().enumerate() {
                if let Some(p) = p {
                    nb[i] = Some(LoraPair {
                        a: backend.zeros(backend.len(&p.a))?,
                        b: backend.zeros(backend.len(&p.b))?,
                    });
                }
            }
            blocks.push(nb);
        }
        let head = match &self.head {
            Some(h) => Some(ClassHead {
                weight: backend.zeros(backend.len(&h.weight))?,
                bias: backend.zeros(backend.len(&h.bias))?,
                classes: h.classes,
                pooling: h.pooling,
            }),
            None => None,
        };
        Ok(AdapterSet {
            lora: self.lora.clone(),
            blocks,
            head,
        })
    }

    /// Every tensor, in a fixed order (blocks, targets, a then b; then head weight, bias).
    pub fn tensors(&self) -> Vec<&B::Buf> {
        let mut out = Vec::new();
        for b in &self.blocks {
            for p in b.iter().flatten() {
                out.push(&p.a);
                out.push(&p.b);
            }
        }
        if let Some(h) = &self.head {
            out.push(&h.weight);
            out.push(&h.bias);
        }
        out
    }

    /// Every tensor, mutably, in the order of [`AdapterSet::tensors`].
    pub fn tensors_mut(&mut self) -> Vec<&mut B::Buf> {
        let mut out = Vec::new();
        for b in &mut self.blocks {
            for p in b.iter_mut().flatten() {
                out.push(&mut p.a);
                out.push(&mut p.b);
            }
        }
        if let Some(h) = &mut self.head {
            out.push(&mut h.weight);
            out.push(&mut h.bias);
        }
        out
    }

    /// Total number of scalars.
    pub fn num_params(&self, backend: &B) -> usize {
        self.tensors().iter().map(|t| backend.len(t)).sum()
    }

    /// Sets every tensor to zero.
    pub fn zero(&mut self, backend: &B) -> Result<()> {
        for t in self.tensors_mut() {
            backend.fill_zero(t)?;
        }
        Ok(())
    }

    /// Named host copies of every tensor, with PEFT-style names where the model has a PEFT
    /// module path (`base_model.model.<module>.lora_A.weight`), and `classifier.weight/bias` for
    /// the head.
    pub fn named_tensors(&self, backend: &B, cfg: &ModelConfig) -> Result<Vec<NamedTensor>> {
        let mut out = Vec::new();
        for (l, b) in self.blocks.iter().enumerate() {
            for t in Target::ALL {
                if let Some(p) = &b[t.index()] {
                    let (d_in, d_out) = t.dims(cfg);
                    let m = module_path(cfg.family, l, t);
                    out.push((
                        format!("base_model.model.{m}.lora_A.weight"),
                        vec![self.lora.rank, d_in],
                        backend.download(&p.a)?,
                    ));
                    out.push((
                        format!("base_model.model.{m}.lora_B.weight"),
                        vec![d_out, self.lora.rank],
                        backend.download(&p.b)?,
                    ));
                }
            }
        }
        if let Some(h) = &self.head {
            out.push((
                "classifier.weight".into(),
                vec![h.classes, cfg.hidden],
                backend.download(&h.weight)?,
            ));
            out.push((
                "classifier.bias".into(),
                vec![h.classes],
                backend.download(&h.bias)?,
            ));
        }
        Ok(out)
    }

    /// Saves the set as safetensors at `path`, atomically (written to a temporary file in the
    /// same folder, then renamed), with the LoRA settings in the file's metadata.
    pub fn save(&self, backend: &B, cfg: &ModelConfig, path: &Path) -> Result<()> {
        let named = self.named_tensors(backend, cfg)?;
        let bytes: Vec<(String, Vec<usize>, Vec<u8>)> = named
            .into_iter()
            .map(|(n, s, v)| (n, s, bytemuck::cast_slice::<f32, u8>(&v).to_vec()))
            .collect();
        let views = bytes
            .iter()
            .map(|(n, s, b)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, s.clone(), b)
                    .map(|v| (n.clone(), v))
            })
            .collect::<std::result::Result<Vec<_>, _>>()
            .map_err(|e| Error::Backend(format!("building adapter file: {e:?}")))?;
        let mut meta = HashMap::new();
        meta.insert("format".to_string(), "flexp-lora".to_string());
        meta.insert("rank".to_string(), self.lora.rank.to_string());
        meta.insert("alpha".to_string(), self.lora.alpha.to_string());
        let targets: Vec<&str> = self.lora.targets.iter().map(|t| t.name()).collect();
        meta.insert("targets".to_string(), targets.join(","));
        if let Some(h) = &self.head {
            meta.insert(
                "pooling".to_string(),
                format!("{:?}", h.pooling).to_lowercase(),
            );
        }
        let data = safetensors::serialize(views, Some(meta))
            .map_err(|e| Error::Backend(format!("serialising adapters: {e:?}")))?;
        crate::fsutil::write_atomic(path, &data)
    }

    /// Loads a set saved by [`AdapterSet::save`] for a model with configuration `cfg`.
    pub fn load(backend: &B, cfg: &ModelConfig, path: &Path) -> Result<Self> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        let corrupt = |reason: String| Error::Checkpoint {
            path: path.into(),
            reason,
        };
        let explain = |e: safetensors::SafeTensorError| {
            corrupt(super::checkpoint::explain_safetensors(&e, bytes.len()))
        };
        let st = safetensors::SafeTensors::deserialize(&bytes).map_err(explain)?;
        let (_, meta) = safetensors::SafeTensors::read_metadata(&bytes).map_err(explain)?;
        let md = meta.metadata().clone().unwrap_or_default();
        let get = |k: &str| {
            md.get(k)
                .cloned()
                .ok_or_else(|| corrupt(format!("metadata `{k}` missing")))
        };
        let rank: usize = get("rank")?
            .parse()
            .map_err(|_| corrupt("bad rank".into()))?;
        let alpha: f32 = get("alpha")?
            .parse()
            .map_err(|_| corrupt("bad alpha".into()))?;
        let targets = get("targets")?
            .split(',')
            .filter(|s| !s.is_empty())
            .map(Target::parse)
            .collect::<Result<Vec<_>>>()?;
        let mut set = Self::empty(
            LoraConfig {
                rank,
                alpha,
                targets,
            },
            cfg.layers,
        );
        let read = |name: &str, shape: &[usize]| -> Result<Vec<f32>> {
            let t = st
                .tensor(name)
                .map_err(|e| corrupt(format!("{name}: {e:?}")))?;
            if t.shape() != shape || t.dtype() != safetensors::Dtype::F32 {
                return Err(Error::BadTensor {
                    name: name.into(),
                    reason: format!(
                        "expected F32 {shape:?}, found {:?} {:?}",
                        t.dtype(),
                        t.shape()
                    ),
                });
            }
            Ok(t.data()
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect())
        };
        for l in 0..cfg.layers {
            for t in Target::ALL {
                let m = module_path(cfg.family, l, t);
                let an = format!("base_model.model.{m}.lora_A.weight");
                if st.names().iter().any(|n| **n == an) {
                    let (d_in, d_out) = t.dims(cfg);
                    let a = read(&an, &[rank, d_in])?;
                    let b = read(
                        &format!("base_model.model.{m}.lora_B.weight"),
                        &[d_out, rank],
                    )?;
                    set.blocks[l][t.index()] = Some(LoraPair {
                        a: backend.upload(&a)?,
                        b: backend.upload(&b)?,
                    });
                }
            }
        }
        if st.names().contains(&"classifier.weight") {
            let bias_shape = st
                .tensor("classifier.bias")
                .map_err(|e| corrupt(format!("classifier.bias: {e:?}")))?
                .shape()
                .to_vec();
            let classes = *bias_shape
                .first()
                .ok_or_else(|| corrupt("classifier.bias is a scalar".into()))?;
            let pooling = match md.get("pooling").map(String::as_str) {
                Some("first") => Pooling::First,
                Some("last") => Pooling::Last,
                _ => Pooling::Mean,
            };
            set.head = Some(ClassHead {
                weight: backend.upload(&read("classifier.weight", &[classes, cfg.hidden])?)?,
                bias: backend.upload(&read("classifier.bias", &[classes])?)?,
                classes,
                pooling,
            });
        }
        Ok(set)
    }
}

/// The Hugging Face module path of target `t` in block `l`. GPT-2 fuses q, k, v into `c_attn`;
/// we adapt them separately and name them `c_attn.q` etc. (not loadable by PEFT).
pub fn module_path(f: Family, l: usize, t: Target) -> String {
    match f {
        Family::Bert => {
            let m = match t {
                Target::Q => "attention.self.query",
                Target::K => "attention.self.key",
                Target::V => "attention.self.value",
                Target::O => "attention.output.dense",
                Target::Up | Target::Gate => "intermediate.dense",
                Target::Down => "output.dense",
            };
            format!("encoder.layer.{l}.{m}")
        }
        Family::Gpt2 => {
            let m = match t {
                Target::Q => "attn.c_attn.q",
                Target::K => "attn.c_attn.k",
                Target::V => "attn.c_attn.v",
                Target::O => "attn.c_proj",
                Target::Up | Target::Gate => "mlp.c_fc",
                Target::Down => "mlp.c_proj",
            };
            format!("h.{l}.{m}")
        }
        Family::Llama => {
            let m = match t {
                Target::Q => "self_attn.q_proj",
                Target::K => "self_attn.k_proj",
                Target::V => "self_attn.v_proj",
                Target::O => "self_attn.o_proj",
                Target::Gate => "mlp.gate_proj",
                Target::Up => "mlp.up_proj",
                Target::Down => "mlp.down_proj",
            };
            format!("model.layers.{l}.{m}")
        }
    }
}
