//! Clients: resource profiles, the per-block cost model, and the split planner.
//!
//! - [`profile`]: what a client device offers ([`ResourceProfile`]: compute, memory, links),
//!   as named presets or custom specs, and the preset mix of the default experiment.
//! - [`cost`]: FLOPs, bytes and client memory of one training step as functions of the split
//!   ([`CostModel`]).
//! - [`planner`]: the resource-aware split planner of FlexP-SFL (`split = auto`) and the checked
//!   manual plan (`split = manual`), with the table `flexp-run plan` prints ([`Plan`]).

pub mod cost;
pub mod planner;
pub mod profile;

pub use cost::{CostModel, TaskHead};
pub use planner::{
    plan_auto, plan_manual, step_latency, Plan, PlanRow, DEFAULT_SERVER_FLOPS_PER_S,
};
pub use profile::{mixed_profiles, preset_names, ResourceProfile, MIX};
