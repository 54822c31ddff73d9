//! Models: configuration, checkpoint loading, the frozen base weights, tokenizers, adapters.

pub mod adapter;
pub mod chat;
pub mod checkpoint;
pub mod config;
pub mod gguf;
pub mod peft;
pub mod tokenizer;
pub mod weights;

pub use adapter::{AdapterSet, ClassHead, LoraConfig, LoraPair, Pooling, Target};
pub use checkpoint::Checkpoint;
pub use config::{Family, ModelConfig};
pub use tokenizer::Tokenizer;
pub use weights::Model;

use crate::backend::{Backend, WeightPrecision};
use crate::error::{Error, Result};
use std::path::Path;

/// Loads `config.json` and the safetensors weights from a checkpoint folder (block weights in
/// f32), or a `.gguf` file (block weights kept in the file's GGML types).
pub fn load_model<B: Backend>(backend: &B, dir: &Path) -> Result<Model<B>> {
    load_model_with(backend, dir, WeightPrecision::F32)
}

/// Loads a checkpoint folder with the blocks' projection weights stored in `precision`.
pub fn load_model_with<B: Backend>(
    backend: &B,
    dir: &Path,
    precision: WeightPrecision,
) -> Result<Model<B>> {
    if is_gguf(dir) {
        gguf_precision(dir, precision)?;
        return gguf::Gguf::open(dir)?.load_model(backend);
    }
    if !dir.is_dir() {
        return Err(Error::Checkpoint {
            path: dir.into(),
            reason: "not a folder (expected a checkpoint folder with config.json and *.safetensors, or a .gguf file)"
                .into(),
        });
    }
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let ckpt = Checkpoint::open(dir)?;
    Model::load_with(backend, config, &ckpt, precision)
}

/// Whether `path` is a GGUF file (an existing file named `*.gguf`) rather than a checkpoint
/// folder.
pub fn is_gguf(path: &Path) -> bool {
    path.is_file()
        && path
            .extension()
            .is_some_and(|e| e.eq_ignore_ascii_case("gguf"))
}

/// The configuration of a checkpoint folder (`config.json`) or a `.gguf` file (its metadata),
/// with, for a GGUF file, the bytes one block's projection weights take as stored.
pub fn describe(path: &Path) -> Result<(ModelConfig, Option<f64>)> {
    if is_gguf(path) {
        let g = gguf::Gguf::open(path)?;
        return Ok((g.model_config()?, Some(g.projection_bytes_per_block()?)));
    }
    Ok((ModelConfig::from_file(&path.join("config.json"))?, None))
}

/// A GGUF file's weights keep the types it stores them in: only the default precision applies.
fn gguf_precision(path: &Path, precision: WeightPrecision) -> Result<()> {
    if precision == WeightPrecision::F32 {
        return Ok(());
    }
    Err(Error::Config {
        path: path.into(),
        reason: format!(
            "precision {precision} applies to safetensors checkpoints; a GGUF file's weights keep the types it stores them in"
        ),
    })
}

/// Loads a model and its tokenizer from a checkpoint folder (`tokenizer.json`) or a `.gguf` file
/// (the tokenizer in its metadata), reading the file once.
pub fn load_model_and_tokenizer<B: Backend>(
    backend: &B,
    path: &Path,
) -> Result<(Model<B>, Tokenizer)> {
    load_model_and_tokenizer_with(backend, path, WeightPrecision::F32)
}

/// [`load_model_and_tokenizer`] with a checkpoint folder's block weights stored in `precision`.
pub fn load_model_and_tokenizer_with<B: Backend>(
    backend: &B,
    path: &Path,
    precision: WeightPrecision,
) -> Result<(Model<B>, Tokenizer)> {
    if is_gguf(path) {
        gguf_precision(path, precision)?;
        let g = gguf::Gguf::open(path)?;
        let model = g.load_model(backend)?;
        let tokenizer = Tokenizer::from_gguf(&g, model.config.vocab_size)?;
        return Ok((model, tokenizer));
    }
    let model = load_model_with(backend, path, precision)?;
    let tokenizer = Tokenizer::from_file(&path.join("tokenizer.json"), model.config.vocab_size)?
        .with_eos(eos_of_config(path)?)
        .with_chat_template(chat_template_of_folder(path)?);
    Ok((model, tokenizer))
}

/// The chat template of a checkpoint folder: `chat_template` of its `tokenizer_config.json`
/// (the one named `default` where it lists several), or `chat_template.jinja`; `None` when the
/// folder has neither.
pub fn chat_template_of_folder(dir: &Path) -> Result<Option<chat::ChatTemplate>> {
    let p = dir.join("tokenizer_config.json");
    let cfg: serde_json::Value = match std::fs::read_to_string(&p) {
        Ok(text) => serde_json::from_str(&text).map_err(|e| Error::Config {
            path: p.clone(),
            reason: format!("not valid JSON: {e}"),
        })?,
        Err(_) => serde_json::Value::Null,
    };
    let token = |key: &str| -> String {
        match &cfg[key] {
            serde_json::Value::String(s) => s.clone(),
            v => v["content"].as_str().unwrap_or_default().to_string(),
        }
    };
    let source = match &cfg["chat_template"] {
        serde_json::Value::String(s) => Some(s.clone()),
        serde_json::Value::Array(named) => named
            .iter()
            .find(|t| t["name"] == "default")
            .and_then(|t| t["template"].as_str())
            .map(str::to_string),
        _ => std::fs::read_to_string(dir.join("chat_template.jinja")).ok(),
    };
    source
        .map(|s| chat::ChatTemplate::new(&s, &token("bos_token"), &token("eos_token")))
        .transpose()
}

/// The end-of-sequence token of a checkpoint folder: `eos_token_id` of its config.json (the
/// first when it lists several; `None` when it names none).
pub fn eos_of_config(dir: &Path) -> Result<Option<u32>> {
    let p = dir.join("config.json");
    let text = std::fs::read_to_string(&p).map_err(|e| Error::io(&p, e))?;
    let v: serde_json::Value = serde_json::from_str(&text).map_err(|e| Error::Config {
        path: p.clone(),
        reason: format!("not valid JSON: {e}"),
    })?;
    Ok(match &v["eos_token_id"] {
        serde_json::Value::Number(n) => n.as_u64().map(|x| x as u32),
        serde_json::Value::Array(a) => a.first().and_then(|x| x.as_u64()).map(|x| x as u32),
        _ => None,
    })
}
