//! Models: configuration, checkpoint loading, the frozen base weights, tokenizers, adapters.

pub mod adapter;
pub mod checkpoint;
pub mod config;
pub mod gguf;
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
/// f32).
pub fn load_model<B: Backend>(backend: &B, dir: &Path) -> Result<Model<B>> {
    load_model_with(backend, dir, WeightPrecision::F32)
}

/// Loads a checkpoint folder with the blocks' projection weights stored in `precision`.
pub fn load_model_with<B: Backend>(
    backend: &B,
    dir: &Path,
    precision: WeightPrecision,
) -> Result<Model<B>> {
    if !dir.is_dir() {
        return Err(Error::Checkpoint {
            path: dir.into(),
            reason:
                "not a folder (expected a checkpoint folder with config.json and *.safetensors)"
                    .into(),
        });
    }
    let config = ModelConfig::from_file(&dir.join("config.json"))?;
    let ckpt = Checkpoint::open(dir)?;
    Model::load_with(backend, config, &ckpt, precision)
}
