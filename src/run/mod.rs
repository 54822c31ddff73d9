//! Experiments: configuration, the training loop with evaluation and accounting, checkpoints.
//! `flexp-run` is a thin front end over this module.

pub mod bench;
pub mod checkpoint;
pub mod config;
pub mod export;
pub(crate) mod ledger;
pub mod partition;
pub mod runner;
pub mod sweep;

pub use config::{RawConfig, RunConfig, SplitSpec, Task};
pub use runner::{run, LogProgress, Progress, RunOutcome};
