//! # flexp
//!
//! An engine for personalized split federated fine-tuning of transformer models.
//!
//! Layers, top to bottom (each depends only on the ones below it):
//! - [`executor`]: the multi-tenant segment executor. One packed batch holds sequences of many
//!   clients, each with its own adapter set and block range; forward and backward run as one
//!   sweep over the shared frozen model.
//! - [`model`]: model families (BERT, GPT-2, Llama-style) as configurations of one block
//!   structure, checkpoint loading (safetensors, config.json, tokenizer.json), LoRA adapters and
//!   task heads.
//! - [`backend`]: the tensor operations, with a CPU implementation.
//! - [`fsutil`]: atomic file writes, used by every layer above.
//!
//! [`embed`] is the sentence-embedding pipeline behind `flexp-run embed`.

pub mod algorithms;
pub mod backend;
pub mod data;
pub mod embed;
pub mod error;
pub mod executor;
pub mod federated;
pub mod fsutil;
#[doc(hidden)]
pub mod fuzzing;
pub mod generate;
pub mod model;
pub mod net;
pub mod report;
pub mod rng;
pub mod run;
pub mod score;

pub use error::{Error, Result};
