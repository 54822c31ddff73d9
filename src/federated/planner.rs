//! The split planner (`split = auto | manual`): which blocks each client runs.
//!
//! For client `k` with profile `R_k` and split `s` the predicted step latency is
//!
//! `T_k(s) = client_flops(s)/R_k.compute + bytes(h)/R_k.uplink + server_flops(s)/server
//!           + bytes(dh)/R_k.downlink`
//!
//! (in the U-shaped form the up and down byte counts double, see
//! [`CostModel::uplink_bytes`]). A split is feasible for `k` under a deadline `D` when
//! `client_memory(s) <= R_k.memory` and `T_k(s) <= D`, with `1 <= s <= L - 1`.
//!
//! [`plan_auto`] picks the smallest deadline `D` for which every client has a feasible split.
//! Each client's fastest memory-feasible split gives its smallest reachable latency, so
//! `D = max_k min_{s memory-feasible} T_k(s)`: that value is one of the candidates `T_k(s)` and no
//! smaller candidate can serve client `k`. Every client then gets its *largest* feasible split
//! under `D`, the most personal depth it can have without becoming the straggler.

use super::cost::CostModel;
use super::profile::ResourceProfile;
use crate::error::{Error, Result};
use serde::Serialize;
use std::fmt::Write as _;

/// A server that sustains 10 TFLOP/s fp32 for the clients' server-side blocks: an A100-class
/// GPU (19.5 TFLOP/s fp32 peak) at about half of its peak. A default for runs that do not say.
pub const DEFAULT_SERVER_FLOPS_PER_S: f64 = 10e12;

/// One client's line of a plan.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct PlanRow {
    /// Client index (0-based).
    pub client: usize,
    /// The client's profile name.
    pub profile: String,
    /// The split `s`: the client runs the embeddings and blocks `1..=s`.
    pub split: usize,
    /// Predicted client memory at this split, bytes.
    pub memory_bytes: f64,
    /// Predicted step latency `T_k(s)`, seconds.
    pub latency_s: f64,
    /// Splits that fit the client's memory and meet the plan's deadline, ascending.
    pub feasible_splits: Vec<usize>,
    /// The split needs more memory than the client has (only possible with a manual split).
    pub over_memory: bool,
}

/// Splits for all clients and what the cost model predicts for them.
#[derive(Clone, Debug, PartialEq, Serialize)]
pub struct Plan {
    /// `splits[k]` is client `k`'s split.
    pub splits: Vec<usize>,
    /// The step deadline: the chosen `D` for an automatic plan, the straggler's latency for a
    /// manual one. Seconds.
    pub deadline_s: f64,
    /// One row per client.
    pub rows: Vec<PlanRow>,
}

/// Validates the inputs shared by both planners; returns the largest valid split.
fn check_inputs(
    cost: &CostModel,
    profiles: &[ResourceProfile],
    server_flops_per_s: f64,
) -> Result<usize> {
    if profiles.is_empty() {
        return Err(Error::Input("split planner: no clients".into()));
    }
    if !(server_flops_per_s.is_finite() && server_flops_per_s > 0.0) {
        return Err(Error::Input(format!(
            "split planner: server compute must be a positive finite FLOP/s, got \
             {server_flops_per_s}"
        )));
    }
    for p in profiles {
        p.validate()?;
    }
    let max = cost.max_split();
    if max == 0 {
        return Err(Error::Input(format!(
            "split planner: a {}-block model{} cannot be split (the client and the server need \
             at least one block each)",
            cost.layers(),
            if cost.u_shaped_tail() > 0 {
                format!(" with a U-shaped tail of {}", cost.u_shaped_tail())
            } else {
                String::new()
            }
        )));
    }
    Ok(max)
}

/// The predicted step latency `T_k(s)` of a client with profile `p` (see the module docs).
/// The only place the latency is computed, so that equal inputs give bit-equal times and
/// `T_k(s) <= D` comparisons against a `D` taken from these values are exact.
pub fn step_latency(
    cost: &CostModel,
    p: &ResourceProfile,
    s: usize,
    server_flops_per_s: f64,
) -> f64 {
    cost.client_flops(s) / p.compute_flops
        + cost.uplink_bytes() / p.uplink_bps
        + cost.server_flops(s) / server_flops_per_s
        + cost.downlink_bytes() / p.downlink_bps
}

fn mib(bytes: f64) -> f64 {
    bytes / (1024.0 * 1024.0)
}

/// `bytes` in the largest binary unit that keeps it >= 1, with the exact count:
/// `9.5 KiB (9696 bytes)`.
fn human_bytes(bytes: f64) -> String {
    let units = [
        ("GiB", 1024f64.powi(3)),
        ("MiB", 1024f64.powi(2)),
        ("KiB", 1024.0),
    ];
    match units.iter().find(|u| bytes >= u.1) {
        Some((name, size)) => format!("{:.1} {name} ({bytes:.0} bytes)", bytes / size),
        None => format!("{bytes:.0} bytes"),
    }
}

/// The automatic plan (`split = auto`): the smallest deadline at which every client has a
/// split that fits its memory, then each client's largest split meeting it.
///
/// Errors when a client cannot hold even one block (naming the client, its profile, the memory
/// it has and the memory `s = 1` needs), on an empty client list, on a non-positive server
/// speed or profile quantity, and when the model is too shallow to split.
pub fn plan_auto(
    cost: &CostModel,
    profiles: &[ResourceProfile],
    server_flops_per_s: f64,
) -> Result<Plan> {
    let max = check_inputs(cost, profiles, server_flops_per_s)?;
    // Memory grows with s (more blocks on the client), but check each s rather than rely on
    // it: `fits[k]` lists client k's memory-feasible splits with their latencies.
    let mut fits: Vec<Vec<(usize, f64)>> = Vec::with_capacity(profiles.len());
    for (k, p) in profiles.iter().enumerate() {
        let f: Vec<(usize, f64)> = (1..=max)
            .filter(|&s| cost.client_memory(s) <= p.memory_bytes)
            .map(|s| (s, step_latency(cost, p, s, server_flops_per_s)))
            .collect();
        if f.is_empty() {
            return Err(Error::Input(format!(
                "client {k} (profile `{}`) cannot hold even one block: it has {} of memory, \
                 split 1 needs {}",
                p.name,
                human_bytes(p.memory_bytes),
                human_bytes(cost.client_memory(1))
            )));
        }
        fits.push(f);
    }
    // D = max over clients of their fastest memory-feasible latency (see the module docs).
    let deadline = fits
        .iter()
        .map(|f| f.iter().map(|x| x.1).fold(f64::INFINITY, f64::min))
        .fold(f64::NEG_INFINITY, f64::max);
    let mut rows = Vec::with_capacity(profiles.len());
    for (k, (p, f)) in profiles.iter().zip(&fits).enumerate() {
        let feasible: Vec<usize> = f.iter().filter(|x| x.1 <= deadline).map(|x| x.0).collect();
        // Non-empty: the client's fastest split has latency <= its own minimum <= deadline.
        let split = *feasible
            .last()
            .expect("the fastest split meets the deadline");
        rows.push(PlanRow {
            client: k,
            profile: p.name.clone(),
            split,
            memory_bytes: cost.client_memory(split),
            latency_s: step_latency(cost, p, split, server_flops_per_s),
            feasible_splits: feasible,
            over_memory: false,
        });
    }
    Ok(Plan {
        splits: rows.iter().map(|r| r.split).collect(),
        deadline_s: deadline,
        rows,
    })
}

/// A plan with given splits (`split = manual`): checks `1 <= s_k <= L - 1` and fills in the
/// predictions. A split that needs more memory than the client has is allowed (the run is a
/// simulation) but flagged with [`PlanRow::over_memory`]. The deadline is the straggler's
/// latency, and `feasible_splits` lists the memory-feasible splits meeting it.
pub fn plan_manual(
    cost: &CostModel,
    profiles: &[ResourceProfile],
    splits: &[usize],
    server_flops_per_s: f64,
) -> Result<Plan> {
    let max = check_inputs(cost, profiles, server_flops_per_s)?;
    if splits.len() != profiles.len() {
        return Err(Error::Input(format!(
            "manual split: {} splits given for {} clients",
            splits.len(),
            profiles.len()
        )));
    }
    for (k, &s) in splits.iter().enumerate() {
        if s < 1 || s > max {
            return Err(Error::Input(format!(
                "manual split: client {k} (profile `{}`) has split {s}; valid splits for this \
                 {}-block model are 1..={max}",
                profiles[k].name,
                cost.layers()
            )));
        }
    }
    let latencies: Vec<f64> = profiles
        .iter()
        .zip(splits)
        .map(|(p, &s)| step_latency(cost, p, s, server_flops_per_s))
        .collect();
    let deadline = latencies.iter().copied().fold(f64::NEG_INFINITY, f64::max);
    let rows = profiles
        .iter()
        .zip(splits)
        .zip(latencies)
        .enumerate()
        .map(|(k, ((p, &s), latency_s))| {
            let memory_bytes = cost.client_memory(s);
            PlanRow {
                client: k,
                profile: p.name.clone(),
                split: s,
                memory_bytes,
                latency_s,
                feasible_splits: (1..=max)
                    .filter(|&t| {
                        cost.client_memory(t) <= p.memory_bytes
                            && step_latency(cost, p, t, server_flops_per_s) <= deadline
                    })
                    .collect(),
                over_memory: memory_bytes > p.memory_bytes,
            }
        })
        .collect();
    Ok(Plan {
        splits: splits.to_vec(),
        deadline_s: deadline,
        rows,
    })
}

impl Plan {
    /// The plan as a fixed-width text table (client, profile, split, memory MiB, predicted
    /// latency ms), with the deadline below; over-memory rows are marked `!`.
    pub fn table(&self) -> String {
        let pw = self
            .rows
            .iter()
            .map(|r| r.profile.len())
            .max()
            .unwrap_or(0)
            .max("profile".len());
        let mut out = String::new();
        // `write!` into a String cannot fail.
        let _ = writeln!(
            out,
            "{:>6}  {:<pw$}  {:>5}  {:>12}  {:>12}",
            "client", "profile", "split", "memory MiB", "latency ms"
        );
        let _ = writeln!(out, "{}", "-".repeat(6 + 2 + pw + 2 + 5 + 2 + 12 + 2 + 12));
        for r in &self.rows {
            let _ = writeln!(
                out,
                "{:>6}  {:<pw$}  {:>5}  {:>12.1}  {:>12.2}{}",
                r.client,
                r.profile,
                r.split,
                mib(r.memory_bytes),
                r.latency_s * 1e3,
                if r.over_memory { "  ! over memory" } else { "" }
            );
        }
        let _ = writeln!(out, "deadline (straggler): {:.2} ms", self.deadline_s * 1e3);
        out
    }

    /// The plan as JSON: `{splits, deadline_s, rows: [{client, profile, split, memory_bytes,
    /// latency_s, feasible_splits, over_memory}]}`, for the run's record.
    pub fn to_json(&self) -> serde_json::Value {
        // All fields are plain numbers, strings and vectors, and every float is finite
        // (profiles are validated), so serialisation cannot fail.
        serde_json::to_value(self).expect("a plan serialises to JSON")
    }
}
