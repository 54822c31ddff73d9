//! Reports of training runs: plots, a human-readable page per run, and comparisons of runs.
//!
//! A run folder holds `config.toml`, `metrics.jsonl` (one JSON object per evaluation) and
//! `report.json` (settings, summary, per-client table); see [`schema`] for the fields, all of
//! which may be absent or null.
//!
//! - [`write_run_report`] writes into the run folder the plots `acc_vs_round.svg`,
//!   `acc_vs_time.svg`, `clients.svg` and the page `report.md` that embeds them.
//! - [`compare`] builds a table per run (and, for runs repeating an algorithm and partition with
//!   other seeds, a table of means ± standard deviations across seeds), a bar chart and a CSV;
//!   [`write_comparison`] writes them.
//! - [`sweep`] compares the runs of a `flexp-run sweep` over seeds: means with 95% confidence
//!   intervals and paired t-tests with Holm's correction ([`stats`]).
//! - [`svg`] is the small chart writer behind the plots (no plotting dependency).
//!
//! Figures are formatted for papers: accuracy in percent with one decimal ("87.5 ± 2.1"),
//! communication in MB (10^6 bytes), compute in GFLOP, memory in MiB, time in seconds. Every
//! accuracy table says whether it shows the last round or the best round.

mod compare;
mod fmt;
mod run_report;
pub mod schema;
pub mod stats;
pub mod svg;
pub mod sweep;

pub use compare::{compare, write_comparison, Comparison};
pub use run_report::{write_run_report, ACC_VS_ROUND_SVG, ACC_VS_TIME_SVG, CLIENTS_SVG, REPORT_MD};
pub use schema::{
    read_metrics, read_report, BestRound, BestSource, ClientRow, MetricsRow, RoundFigures, Run,
    RunReport, Summary, METRICS_FILE, REPORT_FILE,
};
pub use svg::{BarChart, LineChart, Series};
