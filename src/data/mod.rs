//! Data sets: loading, partitioning across clients, train/test splits, tokenization.
//!
//! The pipeline of a run:
//! 1. [`Dataset::load`] reads a CSV (header row) or JSON lines file with a text column, a label
//!    column and optionally a grouping column and a response column ([`DataSpec`]); labels
//!    become class ids in sorted order. [`Dataset::filter_labels`] keeps a subset of the classes.
//! 2. [`partition()`] distributes the examples over the clients ([`Partition`]: `iid`,
//!    `dirichlet:ALPHA`, `shards:K`, `column:NAME`).
//! 3. [`split_clients`] splits each client's examples into train and test, stratified by label;
//!    [`global_test`] is the union of the clients' test sets.
//! 4. [`encode_dataset`] tokenizes the texts with the model's tokenizer; for causal-LM
//!    fine-tuning, [`encode_lm`] tokenizes prompt/response pairs laid out by an [`LmTemplate`],
//!    with the response's tokens as the targets.
//!
//! Everything random takes a [`Rng`](crate::rng::Rng), so a seed fixes the whole pipeline.

pub mod dataset;
pub mod encode;
pub mod partition;
pub mod split;

pub use dataset::{DataSpec, Dataset};
pub use encode::{encode_dataset, encode_lm, encode_lm_chat, LmEncoded, LmTemplate};
pub use partition::{partition, sample_dirichlet, sample_gamma, shuffle, Partition};
pub use split::{
    global_test, split_clients, train_test_split, validate_test_fraction, ClientSplit,
};
