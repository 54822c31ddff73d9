//! Text generation with a key/value cache: the pipeline behind `flexp-run generate`.
//!
//! The prompt runs through every block once (prefill), leaving each block's rotated keys and
//! values in the cache; every new token then runs one row through the blocks and attends to the
//! cache, so a token costs one pass over the weights instead of a pass over the whole text. The
//! projections, norms, RoPE and SwiGLU are the backend's ops (the same the training forward
//! uses); attention over the cache, a few rows against at most the context, runs on the host in
//! f64. Optional LoRA adapters (a run's PEFT export) are applied to every adapted projection.

use crate::backend::{Activation, AttnShape, Backend};
use crate::error::{Error, Result};
use crate::model::chat::Message;
use crate::model::config::{Family, MlpKind, NormKind, NormPlacement, PositionKind};
use crate::model::tokenizer::LongText;
use crate::model::weights::{Block, Linear};
use crate::model::{load_model_and_tokenizer, Model, Target, Tokenizer};
use crate::rng::Rng;
use std::path::Path;

/// How to pick the next token.
#[derive(Clone, Copy, Debug)]
pub struct GenerateOptions {
    /// Tokens to generate at most (fewer when the end-of-sequence token comes first).
    pub max_new_tokens: usize,
    /// 0 picks the most likely token (greedy); above 0 samples from `softmax(logits / T)`.
    pub temperature: f32,
    /// Seed of the sampler.
    pub seed: u64,
}

/// A generation's result.
#[derive(Clone, Debug, PartialEq)]
pub struct Generated {
    /// The prompt's token ids.
    pub prompt_tokens: Vec<u32>,
    /// The generated token ids (the end-of-sequence token included when it was generated).
    pub tokens: Vec<u32>,
    /// The generated tokens decoded to text.
    pub text: String,
}

/// One adapted projection: `y += (x Aᵀ) (scale · B)ᵀ` with `a: [r, in]`, `b: [out, r]` stored
/// already scaled, so a token costs two products and no host round trip.
struct Lora<B: Backend> {
    a: B::Buf,
    b: B::Buf,
    rank: usize,
}

/// A decoder, its tokenizer and optional adapters, ready to generate.
pub struct Generator<B: Backend> {
    backend: B,
    model: Model<B>,
    tokenizer: Option<Tokenizer>,
    eos: Option<u32>,
    /// Per block, per [`Target::ALL`] entry.
    lora: Vec<[Option<Lora<B>>; 7]>,
}

/// A generation in progress: the cache of the positions fed so far.
pub struct Session<'g, B: Backend> {
    gen: &'g Generator<B>,
    cache: KvCache,
}

impl<B: Backend> Session<'_, B> {
    /// Feeds `ids` after the positions fed so far; returns the logits of the last one.
    pub fn feed(&mut self, ids: &[u32]) -> Result<Vec<f32>> {
        self.gen.forward(&mut self.cache, ids)
    }

    /// Positions fed so far.
    pub fn len(&self) -> usize {
        self.cache.k[0].len() / self.gen.model.config.kv_dim()
    }

    /// Whether nothing was fed yet.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// The rotated keys and values of every position so far, per block: `[t, kv_dim]` each.
struct KvCache {
    k: Vec<Vec<f32>>,
    v: Vec<Vec<f32>>,
}

impl<B: Backend> Generator<B> {
    /// Loads a Llama-family decoder (Llama, Qwen2, Qwen3, Gemma 3) from a `.gguf` file or a
    /// checkpoint folder, with its end-of-sequence token (the GGUF metadata's or config.json's).
    pub fn load(backend: B, path: &Path) -> Result<Self> {
        let (model, tokenizer) = load_model_and_tokenizer(&backend, path)?;
        let eos = tokenizer.eos();
        let c = &model.config;
        let supported = c.family == Family::Llama
            && c.norm == NormKind::RmsNorm
            && c.placement == NormPlacement::Pre
            && matches!(c.positions, PositionKind::Rotary { .. })
            && c.mlp.gated();
        if !supported {
            return Err(Error::Config {
                path: path.into(),
                reason: format!(
                    "generate runs Llama-family decoders (RMSNorm, RoPE, a gated MLP: Llama, Qwen, Gemma 3); this is a {:?} model",
                    c.family
                ),
            });
        }
        Self::new(backend, model, Some(tokenizer), eos)
    }

    /// A generator over a loaded model. Without a tokenizer it runs token ids only
    /// ([`Generator::session`]); `eos` ends a generation early.
    pub fn new(
        backend: B,
        model: Model<B>,
        tokenizer: Option<Tokenizer>,
        eos: Option<u32>,
    ) -> Result<Self> {
        let layers = model.layers();
        Ok(Generator {
            backend,
            model,
            tokenizer,
            eos,
            lora: (0..layers).map(|_| Default::default()).collect(),
        })
    }

    /// An empty cache to feed tokens into.
    pub fn session(&self) -> Session<'_, B> {
        let l = self.model.layers();
        Session {
            gen: self,
            cache: KvCache {
                k: vec![Vec::new(); l],
                v: vec![Vec::new(); l],
            },
        }
    }

    /// Applies a PEFT LoRA adapter folder (`adapter_config.json` + `adapter_model.safetensors`,
    /// e.g. a run's `adapters/client-K`).
    pub fn with_peft_adapters(mut self, dir: &Path) -> Result<Self> {
        let pairs = crate::model::peft::read_peft(dir, &self.model.config)?;
        for p in pairs.pairs {
            let scaled_b: Vec<f32> = p.3.iter().map(|v| v * pairs.scale).collect();
            self.lora[p.0][p.1.index()] = Some(Lora {
                a: self.backend.upload(&p.2)?,
                b: self.backend.upload(&scaled_b)?,
                rank: pairs.rank,
            });
        }
        Ok(self)
    }

    /// The model.
    pub fn model(&self) -> &Model<B> {
        &self.model
    }

    /// Generates a continuation of `prompt`.
    pub fn generate(&self, prompt: &str, opts: GenerateOptions) -> Result<Generated> {
        let c = &self.model.config;
        let tok = self.tokenizer()?;
        let ids = tok.encode(prompt, c.max_positions, LongText::Error)?.ids;
        self.continue_prompt(tok, ids, opts)
    }

    /// Continues a conversation: `messages` rendered by the model's chat template with the
    /// assistant's cue (as transformers' `apply_chat_template(..., add_generation_prompt=True)`),
    /// tokenised without the tokenizer's added special tokens (the template writes them).
    /// Errors when the model ships no chat template.
    pub fn generate_chat(&self, messages: &[Message], opts: GenerateOptions) -> Result<Generated> {
        let tok = self.tokenizer()?;
        let chat = tok
            .chat_template()
            .ok_or_else(|| Error::Input("this model ships no chat template".into()))?;
        let ids = tok.encode_continuation(&chat.render(messages, true)?)?;
        if ids.len() > self.model.config.max_positions {
            return Err(Error::Input(format!(
                "the conversation has {} tokens, past the model's context of {}",
                ids.len(),
                self.model.config.max_positions
            )));
        }
        self.continue_prompt(tok, ids, opts)
    }

    fn tokenizer(&self) -> Result<&Tokenizer> {
        self.tokenizer
            .as_ref()
            .ok_or_else(|| Error::Input("this generator has no tokenizer".into()))
    }

    /// Greedy or sampled continuation of the prompt tokens `prompt`.
    fn continue_prompt(
        &self,
        tok: &Tokenizer,
        prompt: Vec<u32>,
        opts: GenerateOptions,
    ) -> Result<Generated> {
        let c = &self.model.config;
        if prompt.is_empty() {
            return Err(Error::Input("the prompt has no tokens".into()));
        }
        let budget = c.max_positions.saturating_sub(prompt.len());
        let steps = opts.max_new_tokens.min(budget);
        let mut session = self.session();
        let mut rng = Rng::new(opts.seed);
        let mut logits = session.feed(&prompt)?;
        let mut out = Vec::with_capacity(steps);
        for _ in 0..steps {
            let next = pick(&logits, opts.temperature, &mut rng);
            out.push(next);
            if Some(next) == self.eos || out.len() == steps {
                break;
            }
            logits = session.feed(&[next])?;
        }
        let text = tok.decode(&out)?;
        Ok(Generated {
            prompt_tokens: prompt,
            tokens: out,
            text,
        })
    }

    /// Runs `ids` (the next positions after the cache) through every block, extends the cache,
    /// and returns the logits of the last position.
    fn forward(&self, cache: &mut KvCache, ids: &[u32]) -> Result<Vec<f32>> {
        if ids.is_empty() {
            return Err(Error::Input("no tokens to feed".into()));
        }
        let c = &self.model.config;
        let past = cache.k[0].len() / c.kv_dim();
        if past + ids.len() > c.max_positions {
            return Err(Error::Input(format!(
                "{} tokens exceed the model's context of {}",
                past + ids.len(),
                c.max_positions
            )));
        }
        if let Some(&bad) = ids.iter().find(|&&t| t as usize >= c.vocab_size) {
            return Err(Error::Input(format!(
                "token id {bad} is outside the vocabulary of {}",
                c.vocab_size
            )));
        }
        let be = &self.backend;
        let m = &self.model;
        let c = &m.config;
        let (n, d) = (ids.len(), c.hidden);
        let start = cache.k[0].len() / c.kv_dim();
        let positions: Vec<u32> = (start..start + n).map(|p| p as u32).collect();
        let mut x = be.zeros(n * d)?;
        be.embedding(&mut x, &m.word_emb, ids, d, false)?;
        if let Some(s) = c.embed_scale {
            be.scale(&mut x, s, n * d)?;
        }
        for (l, w) in m.blocks.iter().enumerate() {
            x = self.block(l, w, x, &positions, cache)?;
        }
        let norm = m
            .final_norm
            .as_ref()
            .ok_or_else(|| Error::Backend("decoder without a final norm".into()))?;
        let h = self.rms_norm(&x, &norm.gamma, n)?;
        let mut last = be.zeros(d)?;
        be.gather_rows(&mut last, &h, &[(n - 1) as u32], d)?;
        let mut logits = be.zeros(c.vocab_size)?;
        be.matmul(
            &mut logits,
            &last,
            m.lm_head(),
            1,
            c.vocab_size,
            d,
            false,
            true,
            false,
        )?;
        be.download(&logits)
    }

    fn rms_norm(&self, x: &B::Buf, gamma: &B::Buf, n: usize) -> Result<B::Buf> {
        self.rms_norm_width(x, gamma, n, self.model.config.hidden)
    }

    /// RMSNorm of `n` rows of `d` values (a head's width for Qwen3's query and key norms).
    fn rms_norm_width(&self, x: &B::Buf, gamma: &B::Buf, n: usize, d: usize) -> Result<B::Buf> {
        let be = &self.backend;
        let mut y = be.zeros(n * d)?;
        let mut rstd = be.zeros(n)?;
        be.rms_norm_forward(
            &mut y,
            &mut rstd,
            x,
            gamma,
            n,
            d,
            self.model.config.norm_eps,
        )?;
        Ok(y)
    }

    /// `x · Wᵀ (+ b)`, plus block `l`'s LoRA update of target `t` when adapted.
    fn linear(&self, x: &B::Buf, w: &Linear<B>, n: usize, l: usize, t: Target) -> Result<B::Buf> {
        let be = &self.backend;
        let mut y = be.zeros(n * w.d_out)?;
        match &w.b {
            Some(b) => be.linear_bias(&mut y, x, &w.w, b, n)?,
            None => be.linear(&mut y, x, &w.w, n, false)?,
        }
        if let Some(p) = &self.lora[l][t.index()] {
            let mut u = be.zeros(n * p.rank)?;
            be.matmul(&mut u, x, &p.a, n, p.rank, w.d_in, false, true, false)?;
            be.matmul(&mut y, &u, &p.b, n, w.d_out, p.rank, false, true, true)?;
        }
        Ok(y)
    }

    fn block(
        &self,
        l: usize,
        w: &Block<B>,
        mut x: B::Buf,
        positions: &[u32],
        cache: &mut KvCache,
    ) -> Result<B::Buf> {
        let be = &self.backend;
        let c = &self.model.config;
        let (n, d) = (positions.len(), c.hidden);
        let theta = c
            .layer_rope_theta(l)
            .ok_or_else(|| Error::Backend("not a rotary model".into()))?;
        let h = self.rms_norm(&x, &w.norm1.gamma, n)?;
        let mut q = self.linear(&h, &w.q, n, l, Target::Q)?;
        let mut k = self.linear(&h, &w.k, n, l, Target::K)?;
        let v = self.linear(&h, &w.v, n, l, Target::V)?;
        if let Some((qn, kn)) = &w.qk_norm {
            q = self.rms_norm_width(&q, &qn.gamma, n * c.heads, c.head_dim)?;
            k = self.rms_norm_width(&k, &kn.gamma, n * c.kv_heads, c.head_dim)?;
        }
        be.rope(&mut q, positions, c.heads, c.head_dim, theta, false)?;
        be.rope(&mut k, positions, c.kv_heads, c.head_dim, theta, false)?;
        cache.k[l].extend(be.download(&k)?);
        cache.v[l].extend(be.download(&v)?);
        let attn = attend(
            &be.download(&q)?,
            &cache.k[l],
            &cache.v[l],
            AttnShape {
                heads: c.heads,
                kv_heads: c.kv_heads,
                head_dim: c.head_dim,
                causal: true,
                window: c.layer_window(l),
                scale: c.attn_scale(),
                bf16: false,
            },
        );
        let mut o = self.linear(&be.upload(&attn)?, &w.o, n, l, Target::O)?;
        if let Some((post_attn, _)) = &w.post_norms {
            o = self.rms_norm(&o, &post_attn.gamma, n)?;
        }
        be.add_assign(&mut x, &o, n * d)?;
        let h = self.rms_norm(&x, &w.norm2.gamma, n)?;
        let gate_w = w
            .gate
            .as_ref()
            .ok_or_else(|| Error::Backend("gated MLP block without a gate".into()))?;
        let gate = self.linear(&h, gate_w, n, l, Target::Gate)?;
        let up = self.linear(&h, &w.up, n, l, Target::Up)?;
        let mut act = be.zeros(n * c.intermediate)?;
        match c.mlp {
            MlpKind::GeGlu => be.gated_forward(
                &mut act,
                &gate,
                &up,
                Activation::GeluTanh,
                n * c.intermediate,
            )?,
            _ => be.swiglu_forward(&mut act, &gate, &up, n * c.intermediate)?,
        }
        let mut down = self.linear(&act, &w.down, n, l, Target::Down)?;
        if let Some((_, post_mlp)) = &w.post_norms {
            down = self.rms_norm(&down, &post_mlp.gamma, n)?;
        }
        be.add_assign(&mut x, &down, n * d)?;
        Ok(x)
    }
}

/// Causal attention of the last `q.len() / (heads·hd)` positions over all `t` cached positions
/// (the new ones are the cache's last rows): `softmax(scale · q kᵀ) v` per head, query head
/// `h` reading key/value head `h / (heads / kv_heads)`, over the last `window` keys where the
/// shape has one.
fn attend(q: &[f32], k: &[f32], v: &[f32], shape: AttnShape) -> Vec<f32> {
    let (heads, kv_heads, hd) = (shape.heads, shape.kv_heads, shape.head_dim);
    let (qd, kvd) = (heads * hd, kv_heads * hd);
    let n = q.len() / qd;
    let t = k.len() / kvd;
    let group = heads / kv_heads;
    let scale = shape.scale as f64;
    let mut out = vec![0.0f32; n * qd];
    let mut s = vec![0.0f64; t];
    for i in 0..n {
        // Row i is position t - n + i: it sees keys first..=t - n + i.
        let seen = t - n + i + 1;
        let first = shape.window.map_or(0, |w| seen.saturating_sub(w));
        for h in 0..heads {
            let kh = h / group;
            let qi = &q[i * qd + h * hd..i * qd + (h + 1) * hd];
            let mut max = f64::NEG_INFINITY;
            for (j, sj) in s.iter_mut().enumerate().take(seen).skip(first) {
                let kj = &k[j * kvd + kh * hd..j * kvd + (kh + 1) * hd];
                *sj = qi
                    .iter()
                    .zip(kj)
                    .map(|(a, b)| *a as f64 * *b as f64)
                    .sum::<f64>()
                    * scale;
                max = max.max(*sj);
            }
            let mut total = 0.0;
            for sj in s.iter_mut().take(seen).skip(first) {
                *sj = (*sj - max).exp();
                total += *sj;
            }
            let o = &mut out[i * qd + h * hd..i * qd + (h + 1) * hd];
            for e in 0..hd {
                let mut acc = 0.0f64;
                for (j, sj) in s.iter().enumerate().take(seen).skip(first) {
                    acc += sj * v[j * kvd + kh * hd + e] as f64;
                }
                o[e] = (acc / total) as f32;
            }
        }
    }
    out
}

/// The next token: the most likely one at temperature 0 (the lowest id among exact ties), else a
/// draw from `softmax(logits / temperature)`.
fn pick(logits: &[f32], temperature: f32, rng: &mut Rng) -> u32 {
    let argmax = logits
        .iter()
        .enumerate()
        .fold((0usize, f32::NEG_INFINITY), |best, (i, &v)| {
            if v > best.1 {
                (i, v)
            } else {
                best
            }
        })
        .0;
    if temperature <= 0.0 {
        return argmax as u32;
    }
    let max = logits[argmax] as f64;
    let w: Vec<f64> = logits
        .iter()
        .map(|&z| ((z as f64 - max) / temperature as f64).exp())
        .collect();
    let total: f64 = w.iter().sum();
    let mut r = rng.uniform() * total;
    for (i, wi) in w.iter().enumerate() {
        r -= wi;
        if r <= 0.0 {
            return i as u32;
        }
    }
    argmax as u32
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn attention_over_the_cache_is_causal_and_grouped() {
        // 2 query heads sharing 1 kv head of dim 1; 3 cached positions, the last 2 are new.
        let k = [0.0f32, 1.0, 2.0];
        let v = [1.0f32, 2.0, 4.0];
        let q = [1.0f32, 0.0, 1.0, 0.0];
        let shape = AttnShape {
            heads: 2,
            kv_heads: 1,
            head_dim: 1,
            causal: true,
            window: None,
            scale: 1.0,
            bf16: false,
        };
        let out = attend(&q, &k, &v, shape);
        // Row 0 (position 1) sees keys 0..=1 with scores [0, 1].
        let w = [1.0f64, 1f64.exp()];
        let want0 = (w[0] * 1.0 + w[1] * 2.0) / (w[0] + w[1]);
        assert!((out[0] as f64 - want0).abs() < 1e-6, "{out:?}");
        // Head 1 of row 0 has a zero query: uniform over the two keys.
        assert!((out[1] - 1.5).abs() < 1e-6);
        // Row 1 (position 2) sees all three.
        let w = [1.0f64, 1f64.exp(), 2f64.exp()];
        let want1 = (w[0] + 2.0 * w[1] + 4.0 * w[2]) / (w[0] + w[1] + w[2]);
        assert!((out[2] as f64 - want1).abs() < 1e-6);
        // A window of 2 keys: row 1 sees keys 1 and 2 only; row 0 its two, as before.
        let out = attend(
            &q,
            &k,
            &v,
            AttnShape {
                window: Some(2),
                ..shape
            },
        );
        let w = [1f64.exp(), 2f64.exp()];
        let want1 = (2.0 * w[0] + 4.0 * w[1]) / (w[0] + w[1]);
        assert!((out[2] as f64 - want1).abs() < 1e-6, "{out:?}");
        assert!((out[0] as f64 - want0).abs() < 1e-6);
    }

    #[test]
    fn greedy_picks_the_first_maximum_and_sampling_follows_the_weights() {
        let mut rng = Rng::new(1);
        assert_eq!(pick(&[0.0, 3.0, 3.0, 1.0], 0.0, &mut rng), 1);
        // Temperature sampling over [0, ln 3]: token 1 three times as likely as token 0.
        let logits = [0.0f32, 3f32.ln()];
        let ones = (0..4000)
            .filter(|_| pick(&logits, 1.0, &mut rng) == 1)
            .count();
        assert!((2850..3150).contains(&ones), "{ones} of 4000");
    }
}
