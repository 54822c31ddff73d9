//! The adapters of a finished run, in Hugging Face PEFT's format: `adapters/client-K/` holds
//! client K's personalized model and `adapters/global/` the global model where the algorithm has
//! one. Each folder has `adapter_config.json` + `adapter_model.safetensors` (load with
//! `PeftModel.from_pretrained(base, folder)`) and, for classification runs, `classifier.safetensors`
//! (`weight [classes, hidden]`, `bias [classes]`, applied to the pooled last hidden state).

use crate::algorithms::{Algorithm, Chain, Federation};
use crate::backend::Backend;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use crate::model::peft::{collect_pairs, module_path, write_peft};
use crate::model::Target;
use std::path::Path;

/// Writes every client's (and the global) adapters under `dir/adapters`. Returns why nothing was
/// written when the model family has no PEFT layout (GPT-2).
pub fn export_adapters<B: Backend>(
    dir: &Path,
    be: &B,
    algo: &dyn Algorithm<B>,
    fed: &Federation<'_, B>,
    base: &str,
) -> Result<Option<String>> {
    let cfg = &fed.model.config;
    if let Err(e) = module_path(cfg.family, 0, Target::Q) {
        return Ok(Some(e.to_string()));
    }
    let root = dir.join("adapters");
    for k in 0..fed.num_clients() {
        write_chain(
            &root.join(format!("client-{k}")),
            be,
            &algo.personal(k),
            fed,
            base,
        )?;
    }
    if let Some(g) = algo.global() {
        write_chain(&root.join("global"), be, &g, fed, base)?;
    }
    Ok(None)
}

fn write_chain<B: Backend>(
    dir: &Path,
    be: &B,
    chain: &Chain<'_, B>,
    fed: &Federation<'_, B>,
    base: &str,
) -> Result<()> {
    let pairs = collect_pairs(be, &chain.parts)?;
    write_peft(dir, &fed.model.config, &fed.lora, &pairs, base)?;
    if let Some(h) = chain.parts.iter().rev().find_map(|(_, s)| s.head.as_ref()) {
        let (w, b) = (be.download(&h.weight)?, be.download(&h.bias)?);
        let d = w.len() / h.classes.max(1);
        let tensors = [
            (
                "weight",
                vec![h.classes, d],
                bytemuck::cast_slice::<f32, u8>(&w),
            ),
            ("bias", vec![h.classes], bytemuck::cast_slice::<f32, u8>(&b)),
        ];
        let views = tensors
            .iter()
            .map(|(n, shape, bytes)| {
                safetensors::tensor::TensorView::new(safetensors::Dtype::F32, shape.clone(), bytes)
                    .map(|v| (n.to_string(), v))
                    .map_err(|e| Error::Backend(format!("classifier {n}: {e}")))
            })
            .collect::<Result<Vec<_>>>()?;
        let st = safetensors::serialize(views, None)
            .map_err(|e| Error::Backend(format!("classifier: {e}")))?;
        write_atomic(&dir.join("classifier.safetensors"), &st)?;
    }
    Ok(())
}
