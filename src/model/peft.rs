//! LoRA adapters in Hugging Face PEFT's format (`adapter_config.json` +
//! `adapter_model.safetensors`), loadable by `peft.PeftModel.from_pretrained` on top of the base
//! model, so adapters trained here can be used and merged with the usual tools.
//!
//! PEFT names a pair `base_model.model.<module path>.lora_A.weight` (`[r, in]`) and
//! `...lora_B.weight` (`[out, r]`) and scales the update by `lora_alpha / r`: the same layout and
//! scale as flexp's [`LoraPair`](super::LoraPair), so the values are written as they are.

use super::adapter::{AdapterSet, LoraConfig, Target};
use super::config::{Family, ModelConfig};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use serde_json::json;
use std::path::Path;

/// The module path of target `t` of block `l` inside the Hugging Face model class (for Llama the
/// decoder stack under `model.`; for BERT the encoder of `BertModel`), as PEFT names it: the
/// adapter files' own names ([`super::adapter::module_path`]) where PEFT can hold them.
pub fn module_path(family: Family, l: usize, t: Target) -> Result<String> {
    match (family, t) {
        // GPT-2 fuses q, k and v into one Conv1D (`c_attn`); flexp adapts them separately, which
        // PEFT's one-pair-per-module layout cannot hold.
        (Family::Gpt2, _) => Err(Error::Input(
            "PEFT export is not available for GPT-2 (its q, k, v share one module, c_attn)".into(),
        )),
        (Family::Bert, Target::Gate) => Err(Error::Input("BERT has no gate projection".into())),
        _ => Ok(super::adapter::module_path(family, l, t)),
    }
}

/// The PEFT name of a module's `lora_A` / `lora_B` weight.
fn tensor_name(module: &str, which: char) -> String {
    format!("base_model.model.{module}.lora_{which}.weight")
}

/// The module's short name as PEFT's `target_modules` lists it (`q_proj`, `query`, ...).
fn short_name(module: &str) -> &str {
    module.rsplit('.').next().unwrap_or(module)
}

/// One adapted module: block, target, `a: [r, in]`, `b: [out, r]` (host values).
pub type PeftPair = (usize, Target, Vec<f32>, Vec<f32>);

/// The pairs of `parts` (block ranges and the adapter set that holds each), downloaded.
pub fn collect_pairs<B: Backend>(
    backend: &B,
    parts: &[(std::ops::Range<usize>, &AdapterSet<B>)],
) -> Result<Vec<PeftPair>> {
    let mut out = Vec::new();
    for (range, set) in parts {
        for l in range.clone() {
            for t in Target::ALL {
                if let Some(p) = set.pair(l, t) {
                    out.push((l, t, backend.download(&p.a)?, backend.download(&p.b)?));
                }
            }
        }
    }
    Ok(out)
}

/// Writes `pairs` as a PEFT LoRA adapter into `dir` (created if needed; files written
/// atomically). `base` is recorded as `base_model_name_or_path`.
pub fn write_peft(
    dir: &Path,
    cfg: &ModelConfig,
    lora: &LoraConfig,
    pairs: &[PeftPair],
    base: &str,
) -> Result<()> {
    if pairs.is_empty() {
        return Err(Error::Input("no adapters to export".into()));
    }
    let mut layers: Vec<usize> = pairs.iter().map(|p| p.0).collect();
    layers.sort_unstable();
    layers.dedup();
    let mut targets: Vec<Target> = pairs.iter().map(|p| p.1).collect();
    targets.sort_by_key(|t| t.index());
    targets.dedup();
    // PEFT adapts every target module in every listed layer: a model whose layers are adapted
    // on different targets cannot be described by one config.
    if layers.len() * targets.len() != pairs.len() {
        return Err(Error::Input(format!(
            "PEFT export needs the same targets in every adapted block; got {} pairs over {} blocks and {} targets",
            pairs.len(),
            layers.len(),
            targets.len()
        )));
    }
    let mut tensors: Vec<(String, Vec<usize>, Vec<u8>)> = Vec::with_capacity(2 * pairs.len());
    let r = lora.rank;
    for (l, t, a, b) in pairs {
        let (d_in, d_out) = t.dims(cfg);
        if a.len() != r * d_in || b.len() != d_out * r {
            return Err(Error::Input(format!(
                "block {l} target {}: adapter sizes {} / {} do not match rank {r} and [{d_out}x{d_in}]",
                t.name(),
                a.len(),
                b.len()
            )));
        }
        let m = module_path(cfg.family, *l, *t)?;
        tensors.push((
            tensor_name(&m, 'A'),
            vec![r, d_in],
            bytemuck::cast_slice(a).to_vec(),
        ));
        tensors.push((
            tensor_name(&m, 'B'),
            vec![d_out, r],
            bytemuck::cast_slice(b).to_vec(),
        ));
    }
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = tensors
        .iter()
        .map(|(n, shape, bytes)| {
            safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                .map(|v| (n.clone(), v))
                .map_err(|e| Error::Backend(format!("{n}: {e}")))
        })
        .collect::<Result<_>>()?;
    let meta = std::collections::HashMap::from([("format".to_string(), "pt".to_string())]);
    let st = safetensors::serialize(views, Some(meta))
        .map_err(|e| Error::Backend(format!("PEFT export: {e}")))?;
    let target_modules: Vec<String> = targets
        .iter()
        .map(|&t| module_path(cfg.family, layers[0], t).map(|m| short_name(&m).to_string()))
        .collect::<Result<_>>()?;
    let (pattern, task) = match cfg.family {
        Family::Llama => ("layers", "CAUSAL_LM"),
        _ => ("layer", "FEATURE_EXTRACTION"),
    };
    let config = json!({
        "peft_type": "LORA",
        "base_model_name_or_path": base,
        "r": r,
        "lora_alpha": lora.alpha,
        "lora_dropout": 0.0,
        "target_modules": target_modules,
        "layers_to_transform": layers,
        "layers_pattern": pattern,
        "bias": "none",
        "fan_in_fan_out": false,
        "use_rslora": false,
        "use_dora": false,
        "init_lora_weights": true,
        "inference_mode": true,
        "task_type": task,
    });
    std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    write_atomic(&dir.join("adapter_model.safetensors"), &st)?;
    let text = serde_json::to_string_pretty(&config).map_err(|e| Error::Backend(e.to_string()))?;
    write_atomic(&dir.join("adapter_config.json"), text.as_bytes())
}

/// A PEFT LoRA adapter read back: its pairs, rank and scale (`lora_alpha / r`).
pub struct PeftAdapter {
    /// The adapted modules.
    pub pairs: Vec<PeftPair>,
    /// `r`.
    pub rank: usize,
    /// `lora_alpha / r`.
    pub scale: f32,
}

/// Reads a PEFT LoRA adapter folder written for a model of `cfg` (by [`write_peft`] or by
/// peft): every target module of every layer the config lists, by PEFT's names.
pub fn read_peft(dir: &Path, cfg: &ModelConfig) -> Result<PeftAdapter> {
    let bad = |reason: String| Error::Checkpoint {
        path: dir.into(),
        reason,
    };
    let cp = dir.join("adapter_config.json");
    let text = std::fs::read_to_string(&cp).map_err(|e| Error::io(&cp, e))?;
    let c: serde_json::Value =
        serde_json::from_str(&text).map_err(|e| bad(format!("adapter_config.json: {e}")))?;
    if c["peft_type"] != "LORA" {
        return Err(bad(format!("peft_type is {}, not LORA", c["peft_type"])));
    }
    if c["use_rslora"] == true || c["use_dora"] == true {
        return Err(bad("rsLoRA and DoRA adapters are not supported".into()));
    }
    let rank = c["r"]
        .as_u64()
        .filter(|&r| r > 0)
        .ok_or_else(|| bad("`r` must be a positive integer".into()))? as usize;
    let alpha = c["lora_alpha"]
        .as_f64()
        .ok_or_else(|| bad("`lora_alpha` must be a number".into()))?;
    let layers: Vec<usize> = match c["layers_to_transform"].as_array() {
        Some(a) => a
            .iter()
            .map(|x| x.as_u64().map(|v| v as usize))
            .collect::<Option<_>>()
            .ok_or_else(|| bad("`layers_to_transform` must list block indices".into()))?,
        None => (0..cfg.layers).collect(),
    };
    let modules: Vec<&str> = c["target_modules"]
        .as_array()
        .ok_or_else(|| bad("`target_modules` must be a list".into()))?
        .iter()
        .filter_map(|x| x.as_str())
        .collect();
    let bytes = std::fs::read(dir.join("adapter_model.safetensors"))
        .map_err(|e| Error::io(dir.join("adapter_model.safetensors"), e))?;
    let st = safetensors::SafeTensors::deserialize(&bytes)
        .map_err(|e| bad(format!("adapter_model.safetensors: {e}")))?;
    let mut pairs = Vec::new();
    for &l in &layers {
        if l >= cfg.layers {
            return Err(bad(format!(
                "layer {l} is past the model's {} blocks",
                cfg.layers
            )));
        }
        for t in Target::ALL.into_iter().filter(|t| t.exists_in(cfg)) {
            let m = module_path(cfg.family, l, t)?;
            if !modules.contains(&short_name(&m)) {
                continue;
            }
            let (d_in, d_out) = t.dims(cfg);
            let get = |w: char, shape: [usize; 2]| -> Result<Vec<f32>> {
                let name = tensor_name(&m, w);
                let v = st
                    .tensor(&name)
                    .map_err(|_| bad(format!("tensor `{name}` is missing")))?;
                if v.dtype() != safetensors::Dtype::F32 || v.shape() != shape {
                    return Err(bad(format!(
                        "`{name}` is {:?} {:?}; expected F32 {shape:?}",
                        v.dtype(),
                        v.shape()
                    )));
                }
                Ok(v.data()
                    .chunks_exact(4)
                    .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                    .collect())
            };
            pairs.push((l, t, get('A', [rank, d_in])?, get('B', [d_out, rank])?));
        }
    }
    if pairs.is_empty() {
        return Err(bad(
            "no LoRA pair of this model's modules in the adapter".into()
        ));
    }
    Ok(PeftAdapter {
        pairs,
        rank,
        scale: (alpha / rank as f64) as f32,
    })
}
