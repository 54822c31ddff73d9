//! The books of a run: what each client spent (bytes, FLOPs), the simulated clock, the
//! `metrics.jsonl` lines with the best round and the time to target, and the `report.json` built
//! from them. The simulation (`train`) and the deployment (`serve`) keep the same books, so both
//! write the same run folder from the same round logs and evaluations.

use super::checkpoint::Meta;
use super::config::{RunConfig, Task};
use crate::algorithms::{EvalStats, RoundLog};
use crate::error::{Error, Result};
use crate::federated::ResourceProfile;
use crate::fsutil::write_atomic;
use serde_json::{json, Map, Value};
use std::io::Write;
use std::path::{Path, PathBuf};
use std::time::Instant;

/// Per-client accumulated cost.
#[derive(Clone, Copy, Debug, Default)]
struct Totals {
    up: f64,
    down: f64,
    flops: f64,
}

/// One evaluation of every client's personalized model and of the global model. A client
/// without figures (`None`: a deployment's client that did not answer) counts in no mean.
pub(crate) struct Eval {
    /// Each client's personalized model on its own test split.
    pub personal: Vec<Option<EvalStats>>,
    /// Each client's personalized model on the global test set.
    pub global_of_personal: Vec<Option<EvalStats>>,
    /// The global model on the global test set, for algorithms that have one.
    pub global_model: Option<EvalStats>,
    /// Why there is no global model, when there is none.
    pub global_model_note: Option<&'static str>,
}

impl Eval {
    fn each(v: &[Option<EvalStats>], f: fn(&EvalStats) -> f64) -> Vec<f64> {
        v.iter().map(|e| e.as_ref().map_or(f64::NAN, f)).collect()
    }

    fn answered(v: &[Option<EvalStats>], f: fn(&EvalStats) -> f64) -> Vec<f64> {
        v.iter().flatten().map(f).collect()
    }

    /// Mean, spread and worst personalized accuracy, and the mean global-test accuracy of the
    /// personalized models.
    fn accuracy_figures(&self) -> (f64, f64, f64, f64) {
        let (pm, ps, pmin) = mean_std_min(&Self::answered(&self.personal, EvalStats::accuracy));
        let (gm, _, _) = mean_std_min(&Self::answered(
            &self.global_of_personal,
            EvalStats::accuracy,
        ));
        (pm, ps, pmin, gm)
    }

    /// The metric fields of a causal-LM evaluation: perplexity of each client's personalized
    /// model on its own split (mean, spread, worst) and on the global test set, and the global
    /// model's. Lower is better, so the worst client is the maximum.
    fn perplexity_fields(&self) -> Map<String, Value> {
        let own = Self::answered(&self.personal, EvalStats::perplexity);
        let (m, s, _) = mean_std_min(&own);
        let worst = own.iter().copied().fold(f64::NEG_INFINITY, f64::max);
        let (g, _, _) = mean_std_min(&Self::answered(
            &self.global_of_personal,
            EvalStats::perplexity,
        ));
        let mut out = Map::new();
        out.insert("personalized_ppl_mean".into(), finite_or_null(m));
        out.insert("personalized_ppl_std".into(), finite_or_null(s));
        out.insert("personalized_ppl_max".into(), finite_or_null(worst));
        out.insert("global_ppl_mean".into(), finite_or_null(g));
        out.insert(
            "global_model_ppl".into(),
            self.global_model
                .map_or(Value::Null, |e| finite_or_null(e.perplexity())),
        );
        out
    }
}

/// What the report's per-client table states of a client besides its cost and accuracy.
pub(crate) struct ClientFacts {
    /// Device profile name.
    pub profile: String,
    /// Blocks on the client; `None` for algorithms without a split.
    pub split: Option<usize>,
    /// Training examples.
    pub train_examples: usize,
    /// Test examples.
    pub test_examples: usize,
    /// Predicted peak memory.
    pub memory_bytes: f64,
}

/// The books of one run, kept round by round.
pub(crate) struct Ledger {
    metrics_path: PathBuf,
    totals: Vec<Totals>,
    simulated: f64,
    wall_before: f64,
    t0: Instant,
    rejected: usize,
    metrics: Vec<Value>,
    best: Option<(usize, Value)>,
    time_to_target: Option<f64>,
    target_acc: f64,
    lm: bool,
}

impl Ledger {
    /// Opens the books in run folder `dir`: empty, or (`resumed`) as the checkpoint left them,
    /// with the metrics lines it counted. Rewrites `metrics.jsonl` to exactly those lines.
    pub fn open(dir: &Path, cfg: &RunConfig, resumed: Option<&Meta>) -> Result<Ledger> {
        let metrics_path = dir.join("metrics.jsonl");
        let mut l = Ledger {
            metrics_path,
            totals: vec![Totals::default(); cfg.clients],
            simulated: 0.0,
            wall_before: 0.0,
            t0: Instant::now(),
            rejected: 0,
            metrics: Vec::new(),
            best: None,
            time_to_target: None,
            target_acc: cfg.target_acc,
            lm: matches!(cfg.task, Task::CausalLm { .. }),
        };
        if let Some(meta) = resumed {
            l.simulated = meta.simulated_seconds;
            l.wall_before = meta.wall_seconds;
            l.rejected = meta.rejected;
            for (t, (u, d, f)) in l.totals.iter_mut().zip(&meta.client_totals) {
                *t = Totals {
                    up: *u,
                    down: *d,
                    flops: *f,
                };
            }
            let text = std::fs::read_to_string(&l.metrics_path).unwrap_or_default();
            l.metrics = text
                .lines()
                .take(meta.metrics_lines)
                .map(|line| {
                    serde_json::from_str(line)
                        .map_err(|e| Error::Input(format!("{}: {e}", l.metrics_path.display())))
                })
                .collect::<Result<_>>()?;
            // The first round with the highest accuracy, as `evaluated` picks it.
            for m in &l.metrics {
                let (Some(r), pm) = (m["round"].as_u64(), m["personalized_acc_mean"].as_f64())
                else {
                    continue;
                };
                if l.best.as_ref().is_none_or(|(_, b)| {
                    b["personalized_acc_mean"].as_f64().unwrap_or(-1.0) < pm.unwrap_or(f64::NAN)
                }) {
                    l.best = Some((r as usize, m.clone()));
                }
            }
            l.time_to_target = l
                .metrics
                .iter()
                .find(|m| {
                    m["personalized_acc_mean"]
                        .as_f64()
                        .is_some_and(|a| a >= l.target_acc)
                })
                .and_then(|m| m["simulated_seconds"].as_f64());
        }
        let text: String = l.metrics.iter().map(|m| format!("{m}\n")).collect();
        write_atomic(&l.metrics_path, text.as_bytes())?;
        Ok(l)
    }

    /// Books a finished round: each participant's bytes and FLOPs; the simulated clock moves by
    /// the slowest participant (its profile's compute and links) plus the server's work.
    pub fn charge(&mut self, log: &RoundLog, profiles: &[ResourceProfile], server_flops: f64) {
        self.rejected += log.rejected.len();
        let mut straggler = 0.0f64;
        for c in &log.clients {
            let p = &profiles[c.client];
            let t = c.flops / p.compute_flops
                + c.bytes_up / p.uplink_bps
                + c.bytes_down / p.downlink_bps;
            straggler = straggler.max(t);
            let tot = &mut self.totals[c.client];
            tot.up += c.bytes_up;
            tot.down += c.bytes_down;
            tot.flops += c.flops;
        }
        self.simulated += straggler + log.server_flops / server_flops;
    }

    /// Books an evaluation after round `r`: appends its line to `metrics.jsonl` (with `extra`
    /// fields after the common ones) and returns it.
    pub fn evaluated(
        &mut self,
        r: usize,
        train_loss: f64,
        ev: &Eval,
        extra: Map<String, Value>,
    ) -> Result<Value> {
        let (pm, ps, pmin, gm) = ev.accuracy_figures();
        let mut m = json!({
            "round": r,
            "simulated_seconds": self.simulated,
            "wall_seconds": self.wall_seconds(),
            "train_loss": finite_or_null(train_loss),
            "personalized_acc_mean": finite_or_null(pm),
            "personalized_acc_std": finite_or_null(ps),
            "personalized_acc_min": finite_or_null(pmin),
            "global_acc_mean": finite_or_null(gm),
            "global_model_acc": ev.global_model.map(|e| e.accuracy()),
            "bytes_up_total": self.totals.iter().map(|t| t.up).sum::<f64>(),
            "bytes_down_total": self.totals.iter().map(|t| t.down).sum::<f64>(),
            "client_flops_total": self.totals.iter().map(|t| t.flops).sum::<f64>(),
            "rejected": self.rejected,
        });
        if let Value::Object(o) = &mut m {
            if self.lm {
                o.extend(ev.perplexity_fields());
            }
            o.extend(extra);
        }
        if self.time_to_target.is_none() && pm >= self.target_acc {
            self.time_to_target = Some(self.simulated);
        }
        if self
            .best
            .as_ref()
            .is_none_or(|(_, b)| b["personalized_acc_mean"].as_f64().unwrap_or(-1.0) < pm)
        {
            self.best = Some((r, m.clone()));
        }
        append_line(&self.metrics_path, &m)?;
        self.metrics.push(m.clone());
        Ok(m)
    }

    /// Starts the wall clock again (a deployment's training starts once its clients joined).
    pub fn start_clock(&mut self) {
        self.t0 = Instant::now();
    }

    /// Wall seconds of the run so far, those before a resume included.
    pub fn wall_seconds(&self) -> f64 {
        self.wall_before + self.t0.elapsed().as_secs_f64()
    }

    /// The checkpoint record after round `r`, with the books as they stand.
    pub fn meta(&self, r: usize, rng_state: u64, counters: Vec<(String, u64)>) -> Meta {
        Meta {
            round: r,
            rng_state,
            counters,
            client_totals: self
                .totals
                .iter()
                .map(|t| (t.up, t.down, t.flops))
                .collect(),
            simulated_seconds: self.simulated,
            wall_seconds: self.wall_seconds(),
            metrics_lines: self.metrics.len(),
            rejected: self.rejected,
        }
    }

    /// `report.json`: the run's settings, the last evaluation `ev` with the run's cost, the best
    /// round, and a row per client.
    pub fn report(&self, cfg: &RunConfig, facts: &[ClientFacts], ev: &Eval) -> Value {
        let n = cfg.clients as f64;
        let lm = self.lm;
        let personal = Eval::each(&ev.personal, EvalStats::accuracy);
        let global_of_personal = Eval::each(&ev.global_of_personal, EvalStats::accuracy);
        let (pm, ps, pmin, gm) = ev.accuracy_figures();
        let clients: Vec<Value> = facts
            .iter()
            .enumerate()
            .map(|(k, f)| {
                let mut c = json!({
                    "client": k,
                    "profile": f.profile,
                    "split": f.split,
                    "train_examples": f.train_examples,
                    "test_examples": f.test_examples,
                    "personalized_acc": finite_or_null(personal[k]),
                    "global_acc": finite_or_null(global_of_personal[k]),
                    "bytes_up": self.totals[k].up,
                    "bytes_down": self.totals[k].down,
                    "flops": self.totals[k].flops,
                    "memory_bytes": f.memory_bytes,
                });
                if let (true, Value::Object(o)) = (lm, &mut c) {
                    let ppl = |e: &Option<EvalStats>| {
                        e.as_ref()
                            .map_or(Value::Null, |e| finite_or_null(e.perplexity()))
                    };
                    o.insert("personalized_ppl".into(), ppl(&ev.personal[k]));
                    o.insert("global_ppl".into(), ppl(&ev.global_of_personal[k]));
                }
                c
            })
            .collect();
        let best = self.best.as_ref().map(|(r, m)| {
            json!({
                "round": r,
                "personalized_acc_mean": m["personalized_acc_mean"],
                "personalized_acc_std": m["personalized_acc_std"],
                "personalized_acc_min": m["personalized_acc_min"],
                "global_acc_mean": m["global_acc_mean"],
                "global_model_acc": m["global_model_acc"],
            })
        });
        let mut report = json!({
            "algorithm": cfg.algorithm.name(),
            "task": if lm { "causal_lm" } else { "classify" },
            "rounds": cfg.rounds,
            "clients": cfg.clients,
            "seed": cfg.seed,
            "partition": cfg.partition.to_string(),
            "model": cfg.model.display().to_string(),
            "precision": cfg.precision.name(),
            "summary": {
                "personalized_acc_mean": finite_or_null(pm),
                "personalized_acc_std": finite_or_null(ps),
                "personalized_acc_min": finite_or_null(pmin),
                "global_acc_mean": finite_or_null(gm),
                "global_model_acc": ev.global_model.map(|e| e.accuracy()),
                "global_model_note": ev.global_model_note,
                "bytes_up_per_client": self.totals.iter().map(|t| t.up).sum::<f64>() / n,
                "bytes_down_per_client": self.totals.iter().map(|t| t.down).sum::<f64>() / n,
                "client_flops_mean": self.totals.iter().map(|t| t.flops).sum::<f64>() / n,
                "simulated_seconds": self.simulated,
                "wall_seconds": self.wall_seconds(),
                "best": best,
                "target_acc": cfg.target_acc,
                "simulated_seconds_to_target": self.time_to_target,
                "figures": "summary values are last-round; `best` is the best evaluated round by personalized_acc_mean",
            },
            "clients": clients,
        });
        if lm {
            if let Some(Value::Object(o)) = report.get_mut("summary") {
                o.extend(ev.perplexity_fields());
                o.insert(
                    "accuracy".into(),
                    json!("causal LM: the accuracy fields hold exact match (greedy decoding reproduces the whole response)"),
                );
            }
        }
        report
    }
}

/// Mean, population standard deviation and minimum; NaN for an empty slice.
pub(crate) fn mean_std_min(v: &[f64]) -> (f64, f64, f64) {
    if v.is_empty() {
        return (f64::NAN, f64::NAN, f64::NAN);
    }
    let m = v.iter().sum::<f64>() / v.len() as f64;
    let var = v.iter().map(|x| (x - m).powi(2)).sum::<f64>() / v.len() as f64;
    (
        m,
        var.sqrt(),
        v.iter().copied().fold(f64::INFINITY, f64::min),
    )
}

/// A number, or `null` where it is NaN or infinite (JSON has neither).
pub(crate) fn finite_or_null(v: f64) -> Value {
    if v.is_finite() {
        json!(v)
    } else {
        Value::Null
    }
}

/// Appends one line and syncs it, so a crash loses at most the line being written.
fn append_line(path: &Path, m: &Value) -> Result<()> {
    let mut f = std::fs::OpenOptions::new()
        .append(true)
        .create(true)
        .open(path)
        .map_err(|e| Error::io(path, e))?;
    writeln!(f, "{m}").map_err(|e| Error::io(path, e))?;
    f.sync_data().map_err(|e| Error::io(path, e))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_std_min_of_known_values() {
        let (m, s, lo) = mean_std_min(&[1.0, 2.0, 3.0, 6.0]);
        assert_eq!(m, 3.0);
        assert!((s - 3.5f64.sqrt()).abs() < 1e-12);
        assert_eq!(lo, 1.0);
        assert!(mean_std_min(&[]).0.is_nan());
    }
}
