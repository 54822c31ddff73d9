//! The files a training run writes (`metrics.jsonl`, `report.json`) as read by the reports.
//!
//! Every field is optional: a field that is absent or `null` reads as `None`, and unknown fields
//! are ignored, so reports work on runs from older or newer writers and on partial runs.

use crate::error::{Error, Result};
use serde::de::{MapAccess, Visitor};
use serde::{Deserialize, Deserializer};
use serde_json::Value;
use std::path::{Path, PathBuf};

/// Name of the per-evaluation metrics file in a run folder.
pub const METRICS_FILE: &str = "metrics.jsonl";
/// Name of the final report file in a run folder.
pub const REPORT_FILE: &str = "report.json";

/// One line of `metrics.jsonl`: the state after one evaluation. Accuracies are fractions in
/// 0..1; totals are cumulative since the start of the run.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct MetricsRow {
    /// The round just finished.
    pub round: Option<u64>,
    /// Simulated time since the start (profiles, straggler per round).
    pub simulated_seconds: Option<f64>,
    /// Measured wall time since the start.
    pub wall_seconds: Option<f64>,
    /// Mean training loss of the round.
    pub train_loss: Option<f64>,
    /// Personalized accuracy (each client's model on its own test split): mean over clients.
    pub personalized_acc_mean: Option<f64>,
    /// Personalized accuracy: standard deviation over clients.
    pub personalized_acc_std: Option<f64>,
    /// Personalized accuracy: the worst client.
    pub personalized_acc_min: Option<f64>,
    /// The personalized models on the global test set, mean over clients.
    pub global_acc_mean: Option<f64>,
    /// The global model on the global test set (algorithms that have one).
    pub global_model_acc: Option<f64>,
    /// Bytes sent by all clients so far.
    pub bytes_up_total: Option<f64>,
    /// Bytes received by all clients so far.
    pub bytes_down_total: Option<f64>,
    /// FLOPs spent by all clients so far.
    pub client_flops_total: Option<f64>,
    /// Client updates rejected so far.
    pub rejected: Option<u64>,
}

/// The figures of the best evaluation, as recorded in `report.json`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct BestRound {
    /// The round of that evaluation.
    pub round: Option<u64>,
    /// See [`MetricsRow::personalized_acc_mean`].
    pub personalized_acc_mean: Option<f64>,
    /// See [`MetricsRow::personalized_acc_std`].
    pub personalized_acc_std: Option<f64>,
    /// See [`MetricsRow::personalized_acc_min`].
    pub personalized_acc_min: Option<f64>,
    /// See [`MetricsRow::global_acc_mean`].
    pub global_acc_mean: Option<f64>,
    /// See [`MetricsRow::global_model_acc`].
    pub global_model_acc: Option<f64>,
}

/// The `summary` object of `report.json`: last-round accuracy, whole-run cost, best round.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct Summary {
    /// Last-round personalized accuracy, mean over clients.
    pub personalized_acc_mean: Option<f64>,
    /// Last-round personalized accuracy, std over clients.
    pub personalized_acc_std: Option<f64>,
    /// Last-round personalized accuracy, worst client.
    pub personalized_acc_min: Option<f64>,
    /// Last-round global-test accuracy of the personalized models, mean over clients.
    pub global_acc_mean: Option<f64>,
    /// Last-round accuracy of the global model.
    pub global_model_acc: Option<f64>,
    /// Why the run has no global model, when it has none.
    pub global_model_note: Option<String>,
    /// Bytes sent per client over the run (mean over clients).
    pub bytes_up_per_client: Option<f64>,
    /// Bytes received per client over the run (mean over clients).
    pub bytes_down_per_client: Option<f64>,
    /// Client FLOPs over the run, mean over clients.
    pub client_flops_mean: Option<f64>,
    /// Simulated duration of the run.
    pub simulated_seconds: Option<f64>,
    /// Measured duration of the run.
    pub wall_seconds: Option<f64>,
    /// The best evaluation.
    pub best: Option<BestRound>,
    /// The accuracy target of the time-to-target figure (fraction).
    pub target_acc: Option<f64>,
    /// Simulated time until the target was first reached; `None` if it never was.
    pub simulated_seconds_to_target: Option<f64>,
}

/// One row of the per-client table of `report.json`.
#[derive(Debug, Clone, Default, PartialEq, Deserialize)]
pub struct ClientRow {
    /// Client index.
    pub client: Option<u64>,
    /// Device profile name.
    pub profile: Option<String>,
    /// Split point (blocks on the client); `None` for algorithms without a split.
    pub split: Option<u64>,
    /// Training examples of the client.
    pub train_examples: Option<u64>,
    /// Test examples of the client.
    pub test_examples: Option<u64>,
    /// The client's personalized model on its own test split.
    pub personalized_acc: Option<f64>,
    /// The client's personalized model on the global test set.
    pub global_acc: Option<f64>,
    /// Bytes the client sent over the run.
    pub bytes_up: Option<f64>,
    /// Bytes the client received over the run.
    pub bytes_down: Option<f64>,
    /// FLOPs the client spent over the run.
    pub flops: Option<f64>,
    /// Predicted peak memory of the client.
    pub memory_bytes: Option<f64>,
}

/// `report.json`: run settings, summary and per-client table.
///
/// The key `clients` is accepted both as the number of clients and as the per-client table, and
/// may appear twice in one object (once in each form).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RunReport {
    /// Algorithm name.
    pub algorithm: Option<String>,
    /// Rounds run.
    pub rounds: Option<u64>,
    /// Number of clients (from the numeric `clients`, else the length of the table).
    pub num_clients: Option<u64>,
    /// The run's seed.
    pub seed: Option<u64>,
    /// Partition spec, such as `dirichlet:0.5`.
    pub partition: Option<String>,
    /// Model name or path.
    pub model: Option<String>,
    /// Final figures.
    pub summary: Summary,
    /// Per-client table (the array form of `clients`).
    pub clients: Vec<ClientRow>,
}

/// The fields of `report.json` other than `clients`.
#[derive(Deserialize)]
struct ReportFields {
    algorithm: Option<String>,
    rounds: Option<u64>,
    seed: Option<u64>,
    partition: Option<String>,
    model: Option<String>,
    summary: Option<Summary>,
}

/// A JSON object read as its list of entries, so a repeated key is kept instead of rejected.
struct Entries(Vec<(String, Value)>);

impl<'de> Deserialize<'de> for Entries {
    fn deserialize<D: Deserializer<'de>>(d: D) -> std::result::Result<Self, D::Error> {
        struct V;
        impl<'de> Visitor<'de> for V {
            type Value = Entries;
            fn expecting(&self, f: &mut std::fmt::Formatter) -> std::fmt::Result {
                f.write_str("a JSON object")
            }
            fn visit_map<A: MapAccess<'de>>(
                self,
                mut map: A,
            ) -> std::result::Result<Entries, A::Error> {
                let mut v = Vec::new();
                while let Some(e) = map.next_entry::<String, Value>()? {
                    v.push(e);
                }
                Ok(Entries(v))
            }
        }
        d.deserialize_map(V)
    }
}

impl RunReport {
    /// Parses the text of a `report.json`.
    pub fn from_json(text: &str) -> std::result::Result<RunReport, serde_json::Error> {
        let Entries(entries) = serde_json::from_str(text)?;
        let mut rest = serde_json::Map::new();
        let (mut num_clients, mut clients) = (None, None);
        for (k, v) in entries {
            if k == "clients" {
                match v {
                    Value::Array(_) => clients = Some(serde_json::from_value::<Vec<_>>(v)?),
                    Value::Null => {}
                    v => num_clients = Some(serde_json::from_value::<u64>(v)?),
                }
            } else {
                rest.insert(k, v);
            }
        }
        let f: ReportFields = serde_json::from_value(Value::Object(rest))?;
        let clients: Vec<ClientRow> = clients.unwrap_or_default();
        Ok(RunReport {
            algorithm: f.algorithm,
            rounds: f.rounds,
            num_clients: num_clients.or((!clients.is_empty()).then_some(clients.len() as u64)),
            seed: f.seed,
            partition: f.partition,
            model: f.model,
            summary: f.summary.unwrap_or_default(),
            clients,
        })
    }
}

/// Reads a `report.json`. Errors name the file.
pub fn read_report(path: &Path) -> Result<RunReport> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    RunReport::from_json(&text)
        .map_err(|e| Error::Input(format!("{}: invalid report: {e}", path.display())))
}

/// Reads a `metrics.jsonl`: one JSON object per line; blank lines are skipped. Errors name the
/// file and the (1-based) line.
pub fn read_metrics(path: &Path) -> Result<Vec<MetricsRow>> {
    let text = std::fs::read_to_string(path).map_err(|e| Error::io(path, e))?;
    let mut rows = Vec::new();
    for (i, line) in text.lines().enumerate() {
        if line.trim().is_empty() {
            continue;
        }
        let row = serde_json::from_str(line).map_err(|e| {
            Error::Input(format!(
                "{}: line {}: invalid metrics record: {e}",
                path.display(),
                i + 1
            ))
        })?;
        rows.push(row);
    }
    Ok(rows)
}

/// Accuracy figures of one evaluation (last or best).
#[derive(Debug, Clone, Default, PartialEq)]
pub struct RoundFigures {
    /// The round, when known.
    pub round: Option<u64>,
    /// Personalized accuracy, mean over clients.
    pub personalized_acc_mean: Option<f64>,
    /// Personalized accuracy, std over clients.
    pub personalized_acc_std: Option<f64>,
    /// Personalized accuracy, worst client.
    pub personalized_acc_min: Option<f64>,
    /// Personalized models on the global test set, mean over clients.
    pub global_acc_mean: Option<f64>,
    /// The global model on the global test set.
    pub global_model_acc: Option<f64>,
}

impl From<&MetricsRow> for RoundFigures {
    fn from(m: &MetricsRow) -> Self {
        RoundFigures {
            round: m.round,
            personalized_acc_mean: m.personalized_acc_mean,
            personalized_acc_std: m.personalized_acc_std,
            personalized_acc_min: m.personalized_acc_min,
            global_acc_mean: m.global_acc_mean,
            global_model_acc: m.global_model_acc,
        }
    }
}

/// Where the best-round figures came from.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum BestSource {
    /// `summary.best` of `report.json`.
    Report,
    /// Computed from `metrics.jsonl`: highest mean personalized accuracy, earliest on ties.
    Metrics,
}

/// A run folder, loaded.
#[derive(Debug, Clone)]
pub struct Run {
    /// The folder.
    pub dir: PathBuf,
    /// `metrics.jsonl`, one row per evaluation (may be empty).
    pub metrics: Vec<MetricsRow>,
    /// `report.json`.
    pub report: RunReport,
}

impl Run {
    /// Reads `report.json` and `metrics.jsonl` from `dir`. Both must exist.
    pub fn load(dir: &Path) -> Result<Run> {
        if !dir.is_dir() {
            return Err(Error::Input(format!(
                "{}: not a run folder (no such directory)",
                dir.display()
            )));
        }
        let report = read_report(&dir.join(REPORT_FILE))?;
        let metrics = read_metrics(&dir.join(METRICS_FILE))?;
        Ok(Run {
            dir: dir.to_path_buf(),
            metrics,
            report,
        })
    }

    /// The folder's own name (for labels), or the whole path when it has none (such as `..`).
    pub fn name(&self) -> String {
        self.dir.file_name().map_or_else(
            || self.dir.display().to_string(),
            |n| n.to_string_lossy().into_owned(),
        )
    }

    /// Final figures: the summary of `report.json` when it has them, else the last evaluation.
    pub fn last(&self) -> RoundFigures {
        let s = &self.report.summary;
        let last_row = self.metrics.last();
        if s.personalized_acc_mean.is_some() {
            RoundFigures {
                round: self.report.rounds.or(last_row.and_then(|m| m.round)),
                personalized_acc_mean: s.personalized_acc_mean,
                personalized_acc_std: s.personalized_acc_std,
                personalized_acc_min: s.personalized_acc_min,
                global_acc_mean: s.global_acc_mean,
                global_model_acc: s.global_model_acc,
            }
        } else {
            last_row.map(RoundFigures::from).unwrap_or_default()
        }
    }

    /// Best-round figures and where they came from: `summary.best` of `report.json` when present,
    /// else the evaluation with the highest mean personalized accuracy. `None` if neither exists.
    pub fn best(&self) -> Option<(RoundFigures, BestSource)> {
        if let Some(b) = &self.report.summary.best {
            let f = RoundFigures {
                round: b.round,
                personalized_acc_mean: b.personalized_acc_mean,
                personalized_acc_std: b.personalized_acc_std,
                personalized_acc_min: b.personalized_acc_min,
                global_acc_mean: b.global_acc_mean,
                global_model_acc: b.global_model_acc,
            };
            return Some((f, BestSource::Report));
        }
        let mut best: Option<&MetricsRow> = None;
        for m in &self.metrics {
            let Some(acc) = m.personalized_acc_mean.filter(|a| a.is_finite()) else {
                continue;
            };
            // Strictly greater: ties keep the earliest evaluation.
            if best
                .and_then(|b| b.personalized_acc_mean)
                .is_none_or(|b| acc > b)
            {
                best = Some(m);
            }
        }
        best.map(|m| (RoundFigures::from(m), BestSource::Metrics))
    }

    /// A per-client cost from the summary, else the mean of the per-client table.
    pub(crate) fn per_client(
        &self,
        summary: Option<f64>,
        of_client: impl Fn(&ClientRow) -> Option<f64>,
    ) -> Option<f64> {
        summary.or_else(|| {
            super::fmt::mean_std(self.report.clients.iter().map(of_client)).map(|(m, _)| m)
        })
    }

    /// Bytes sent per client over the run.
    pub fn bytes_up_per_client(&self) -> Option<f64> {
        self.per_client(self.report.summary.bytes_up_per_client, |c| c.bytes_up)
    }

    /// Bytes received per client over the run.
    pub fn bytes_down_per_client(&self) -> Option<f64> {
        self.per_client(self.report.summary.bytes_down_per_client, |c| c.bytes_down)
    }

    /// Client FLOPs over the run, mean over clients.
    pub fn client_flops_mean(&self) -> Option<f64> {
        self.per_client(self.report.summary.client_flops_mean, |c| c.flops)
    }

    /// Simulated duration: the summary, else the last evaluation.
    pub fn simulated_seconds(&self) -> Option<f64> {
        self.report
            .summary
            .simulated_seconds
            .or_else(|| self.metrics.last().and_then(|m| m.simulated_seconds))
    }

    /// Wall-clock duration: the summary, else the last evaluation.
    pub fn wall_seconds(&self) -> Option<f64> {
        self.report
            .summary
            .wall_seconds
            .or_else(|| self.metrics.last().and_then(|m| m.wall_seconds))
    }
}
