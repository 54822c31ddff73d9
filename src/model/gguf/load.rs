//! A [`Model`] from a GGUF file: block projection weights stay in their GGML blocks (decoded
//! inside each product), everything small (norms, biases) and the embedding table is decoded to
//! f32 once.

use super::{Gguf, TensorInfo};
use crate::backend::quant::GgmlType;
use crate::backend::{Backend, WeightPrecision};
use crate::error::{Error, Result};
use crate::model::config::{Family, ModelConfig};
use crate::model::weights::{Block, Linear, Model, Norm};

impl Gguf {
    /// Loads the model the file holds onto `backend`.
    pub fn load_model<B: Backend>(&self, backend: &B) -> Result<Model<B>> {
        let config = self.model_config()?;
        match config.family {
            Family::Llama => self.llama(backend, config),
            f => Err(self.err(format!("no GGUF loader for the {f:?} family"))),
        }
    }

    /// Tensor `name`, checked to have the PyTorch shape `shape`.
    fn checked(&self, name: &str, shape: &[usize]) -> Result<&TensorInfo> {
        let t = self.tensor(name).ok_or_else(|| Error::MissingTensor {
            name: name.into(),
            path: self.path.clone(),
            tried: name.into(),
        })?;
        if t.torch_shape() != shape {
            return Err(Error::BadTensor {
                name: name.into(),
                reason: format!(
                    "shape {:?} in {}, but the model configuration needs {shape:?}",
                    t.torch_shape(),
                    self.path.display()
                ),
            });
        }
        Ok(t)
    }

    fn buf<B: Backend>(&self, be: &B, name: &str, shape: &[usize]) -> Result<B::Buf> {
        be.upload(&self.dequantize(self.checked(name, shape)?)?)
    }

    /// The `[out, in]` projection `{base}.weight`, with `{base}.bias` when `bias`.
    /// `rope_heads` undoes llama.cpp's reordering of query and key rows (see
    /// [`unpermute_rows`]) for a projection with that many heads.
    fn linear<B: Backend>(
        &self,
        be: &B,
        base: &str,
        (d_in, d_out): (usize, usize),
        bias: bool,
        rope_heads: Option<usize>,
    ) -> Result<Linear<B>> {
        let name = format!("{base}.weight");
        let t = self.checked(&name, &[d_out, d_in])?;
        let mut blocks = self.data(t).to_vec();
        if let Some(h) = rope_heads {
            blocks = unpermute_rows(&blocks, d_out, h);
        }
        let w = if t.ty == GgmlType::F32 {
            let mut v = vec![0.0f32; d_out * d_in];
            crate::backend::quant::dequantize(GgmlType::F32, &blocks, &mut v)?;
            be.weight(&v, d_out, d_in, WeightPrecision::F32)?
        } else {
            be.weight_quantized(t.ty, blocks, d_out, d_in)?
        };
        let b = if bias {
            let mut v = self.dequantize(self.checked(&format!("{base}.bias"), &[d_out])?)?;
            if let Some(h) = rope_heads {
                // The bias follows its rows.
                let bytes = unpermute_rows(bytemuck::cast_slice(&v), d_out, h);
                v = bytemuck::cast_slice(&bytes).to_vec();
            }
            Some(be.upload(&v)?)
        } else {
            None
        };
        Ok(Linear { w, b, d_in, d_out })
    }

    fn rms_norm<B: Backend>(&self, be: &B, name: &str, dim: usize) -> Result<Norm<B>> {
        Ok(Norm {
            gamma: self.buf(be, name, &[dim])?,
            beta: None,
        })
    }

    fn llama<B: Backend>(&self, be: &B, c: ModelConfig) -> Result<Model<B>> {
        let (d, ff, qd, kvd) = (c.hidden, c.intermediate, c.q_dim(), c.kv_dim());
        // Only llama.cpp's `llama` converter reorders query/key rows (its RoPE pairs adjacent
        // values); `qwen2` and `qwen3` files keep Hugging Face's order (llama.cpp runs NeoX RoPE
        // on them).
        let reordered = self.str("general.architecture")? == Some("llama");
        let rope = |h: usize| reordered.then_some(h);
        let (ab, ob, mb) = (c.attn_bias, c.o_bias, c.mlp_bias);
        let mut blocks = Vec::with_capacity(c.layers);
        for i in 0..c.layers {
            let p = format!("blk.{i}");
            // llama.cpp names Gemma 3's norms by their place: `post_attention_norm` after the
            // attention, `ffn_norm` before the MLP, `post_ffw_norm` after it. The file stores
            // Gemma's scales as the factor itself (1 + w), so they load as they are.
            let post_norms = if c.post_norms {
                Some((
                    self.rms_norm(be, &format!("{p}.post_attention_norm.weight"), d)?,
                    self.rms_norm(be, &format!("{p}.post_ffw_norm.weight"), d)?,
                ))
            } else {
                None
            };
            blocks.push(Block {
                norm1: self.rms_norm(be, &format!("{p}.attn_norm.weight"), d)?,
                q: self.linear(be, &format!("{p}.attn_q"), (d, qd), ab, rope(c.heads))?,
                k: self.linear(be, &format!("{p}.attn_k"), (d, kvd), ab, rope(c.kv_heads))?,
                v: self.linear(be, &format!("{p}.attn_v"), (d, kvd), ab, None)?,
                o: self.linear(be, &format!("{p}.attn_output"), (qd, d), ob, None)?,
                qk_norm: if c.qk_norm {
                    Some((
                        self.rms_norm(be, &format!("{p}.attn_q_norm.weight"), c.head_dim)?,
                        self.rms_norm(be, &format!("{p}.attn_k_norm.weight"), c.head_dim)?,
                    ))
                } else {
                    None
                },
                norm2: self.rms_norm(be, &format!("{p}.ffn_norm.weight"), d)?,
                post_norms,
                gate: Some(self.linear(be, &format!("{p}.ffn_gate"), (d, ff), mb, None)?),
                up: self.linear(be, &format!("{p}.ffn_up"), (d, ff), mb, None)?,
                down: self.linear(be, &format!("{p}.ffn_down"), (ff, d), mb, None)?,
            });
        }
        let lm_head = if c.tie_embeddings {
            None
        } else {
            Some(self.buf(be, "output.weight", &[c.vocab_size, d])?)
        };
        Ok(Model {
            word_emb: self.buf(be, "token_embd.weight", &[c.vocab_size, d])?,
            pos_emb: None,
            type_emb: None,
            emb_norm: None,
            blocks,
            final_norm: Some(self.rms_norm(be, "output_norm.weight", d)?),
            lm_head,
            config: c,
            precision: WeightPrecision::F32,
        })
    }
}

/// llama.cpp's converter reorders the rows of each head of the query and key projections so
/// that its rotary kernel can rotate adjacent pairs: Hugging Face row `s·(hd/2) + i` of a head
/// (half `s`, index `i`) is stored as row `2i + s`. This puts the rows back, so the runtime's
/// rotate-half RoPE (Hugging Face's) applies. Rows are whole blocks, so quantized rows move as
/// they are.
fn unpermute_rows(bytes: &[u8], rows: usize, heads: usize) -> Vec<u8> {
    let row_bytes = bytes.len() / rows;
    let hd = rows / heads;
    let mut out = vec![0u8; bytes.len()];
    for h in 0..heads {
        for s in 0..2 {
            for i in 0..hd / 2 {
                let hf = h * hd + s * (hd / 2) + i;
                let gg = h * hd + 2 * i + s;
                out[hf * row_bytes..(hf + 1) * row_bytes]
                    .copy_from_slice(&bytes[gg * row_bytes..(gg + 1) * row_bytes]);
            }
        }
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unpermute_inverts_llama_cpp_row_order() {
        // Two heads of head_dim 4, one byte a row. llama.cpp's permute (reshape to
        // [heads, 2, hd/2], swap the last two axes) stores HF rows [0, 2, 1, 3 | 4, 6, 5, 7].
        let stored = [0u8, 2, 1, 3, 4, 6, 5, 7];
        assert_eq!(unpermute_rows(&stored, 8, 2), vec![0, 1, 2, 3, 4, 5, 6, 7]);
        // Two bytes a row move together.
        let stored2: Vec<u8> = stored.iter().flat_map(|&r| [r, 100 + r]).collect();
        let back = unpermute_rows(&stored2, 8, 2);
        assert_eq!(&back[2..4], &[1, 101]);
    }
}
