//! The report of one run: plots and a Markdown page, written into the run folder.

use super::fmt::{cell, gflop, int, mb, mib, pct, pct_pm, secs, table, text, Align, MISSING};
use super::schema::{BestSource, MetricsRow, RoundFigures, Run};
use super::svg::{BarChart, LineChart, Series};
use crate::error::Result;
use crate::fsutil::write_atomic;
use std::path::Path;

/// Accuracy vs round plot, written into the run folder.
pub const ACC_VS_ROUND_SVG: &str = "acc_vs_round.svg";
/// Accuracy vs simulated time plot, written into the run folder.
pub const ACC_VS_TIME_SVG: &str = "acc_vs_time.svg";
/// Per-client accuracy bars, written into the run folder.
pub const CLIENTS_SVG: &str = "clients.svg";
/// The Markdown report, written into the run folder.
pub const REPORT_MD: &str = "report.md";

/// Writes the plots ([`ACC_VS_ROUND_SVG`], [`ACC_VS_TIME_SVG`], [`CLIENTS_SVG`]) and the
/// Markdown report ([`REPORT_MD`]) of the run in `run_dir`, from its `metrics.jsonl` and
/// `report.json`.
///
/// Errors name the file when one is missing or malformed (with the line number for
/// `metrics.jsonl`). An empty `metrics.jsonl` is fine: the plots say "no data".
pub fn write_run_report(run_dir: &Path) -> Result<()> {
    let run = Run::load(run_dir)?;
    let files = [
        (ACC_VS_ROUND_SVG, acc_vs_round(&run.metrics).render()),
        (ACC_VS_TIME_SVG, acc_vs_time(&run.metrics).render()),
        (CLIENTS_SVG, clients_chart(&run).render()),
        (REPORT_MD, markdown(&run)),
    ];
    for (name, mut content) in files {
        if !content.ends_with('\n') {
            content.push('\n');
        }
        write_atomic(&run_dir.join(name), content.as_bytes())?;
    }
    Ok(())
}

/// The points `(x, 100 · accuracy)` of the evaluations that have both values.
fn acc_points(
    metrics: &[MetricsRow],
    x: impl Fn(&MetricsRow) -> Option<f64>,
    acc: impl Fn(&MetricsRow) -> Option<f64>,
) -> Vec<(f64, f64)> {
    metrics
        .iter()
        .filter_map(|m| Some((x(m)?, acc(m)? * 100.0)))
        .collect()
}

/// Adds the series that have at least one point: a metric the algorithm does not produce (no
/// global model, say) would only clutter the legend.
fn with_nonempty(mut chart: LineChart, series: Vec<Series>) -> LineChart {
    chart
        .series
        .extend(series.into_iter().filter(|s| !s.points.is_empty()));
    chart
}

fn acc_vs_round(metrics: &[MetricsRow]) -> LineChart {
    let round = |m: &MetricsRow| m.round.map(|r| r as f64);
    with_nonempty(
        LineChart::new("Accuracy vs round", "round", "accuracy (%)"),
        vec![
            Series::new(
                "personalized (mean)",
                acc_points(metrics, round, |m| m.personalized_acc_mean),
            ),
            Series::new(
                "personalized (worst client)",
                acc_points(metrics, round, |m| m.personalized_acc_min),
            ),
            Series::new(
                "global test set (mean)",
                acc_points(metrics, round, |m| m.global_acc_mean),
            ),
            Series::new(
                "global model",
                acc_points(metrics, round, |m| m.global_model_acc),
            ),
        ],
    )
}

fn acc_vs_time(metrics: &[MetricsRow]) -> LineChart {
    let t = |m: &MetricsRow| m.simulated_seconds;
    with_nonempty(
        LineChart::new(
            "Accuracy vs simulated time",
            "simulated time (s)",
            "accuracy (%)",
        ),
        // The same series as against rounds, so each keeps its colour across the two plots.
        vec![
            Series::new(
                "personalized (mean)",
                acc_points(metrics, t, |m| m.personalized_acc_mean),
            ),
            Series::new(
                "personalized (worst client)",
                acc_points(metrics, t, |m| m.personalized_acc_min),
            ),
            Series::new(
                "global test set (mean)",
                acc_points(metrics, t, |m| m.global_acc_mean),
            ),
            Series::new(
                "global model",
                acc_points(metrics, t, |m| m.global_model_acc),
            ),
        ],
    )
}

fn clients_chart(run: &Run) -> BarChart {
    let clients = &run.report.clients;
    let pct_or_nan = |v: Option<f64>| v.map_or(f64::NAN, |a| a * 100.0);
    let mut chart = BarChart::new("Per-client accuracy (last round)", "accuracy (%)");
    chart.x_label = "client".into();
    chart.categories = clients
        .iter()
        .enumerate()
        .map(|(i, c)| c.client.unwrap_or(i as u64).to_string())
        .collect();
    chart.groups.push((
        "personalized (own test split)".into(),
        clients
            .iter()
            .map(|c| pct_or_nan(c.personalized_acc))
            .collect(),
    ));
    if clients.iter().any(|c| c.global_acc.is_some()) {
        chart.groups.push((
            "global test set".into(),
            clients.iter().map(|c| pct_or_nan(c.global_acc)).collect(),
        ));
    }
    chart
}

/// `value unit`, or just the dash when the value is missing.
fn unit(value: String, unit: &str) -> String {
    if value == MISSING {
        value
    } else {
        format!("{value} {unit}")
    }
}

/// "Round N" for a column header, or a plain label when the round is unknown.
fn round_header(label: &str, f: Option<&RoundFigures>) -> String {
    match f.and_then(|f| f.round) {
        Some(r) => format!("{label} (round {r})"),
        None => label.to_string(),
    }
}

/// The sentence on time to target accuracy; `None` when the run set no target.
pub(crate) fn time_to_target(run: &Run) -> Option<String> {
    let s = &run.report.summary;
    let target = s.target_acc.filter(|t| t.is_finite())?;
    Some(
        match s.simulated_seconds_to_target.filter(|t| t.is_finite()) {
            Some(t) => format!(
                "Time to the target accuracy of {} %: **{} s** simulated.",
                pct(Some(target)),
                secs(Some(t))
            ),
            None => format!(
                "Time to the target accuracy of {} %: **not reached**{}.",
                pct(Some(target)),
                run.report
                    .rounds
                    .map_or(String::new(), |r| format!(" in {r} rounds"))
            ),
        },
    )
}

/// The Markdown report.
fn markdown(run: &Run) -> String {
    let r = &run.report;
    let mut md = String::new();
    let algorithm = r.algorithm.as_deref().unwrap_or("unknown algorithm");
    md.push_str(&format!("# Run report: {algorithm}"));
    if let Some(model) = &r.model {
        md.push_str(&format!(" on {model}"));
    }
    md.push_str("\n\n");
    md.push_str(&format!("Run folder: `{}`.", run.name()));
    if run.dir.join("config.toml").is_file() {
        md.push_str(" Resolved configuration: [config.toml](config.toml).");
    }
    md.push_str("\n\n## Settings\n\n");
    let settings = [
        ("Algorithm", text(r.algorithm.as_deref())),
        ("Model", text(r.model.as_deref())),
        ("Partition", text(r.partition.as_deref())),
        ("Clients", int(r.num_clients)),
        ("Rounds", int(r.rounds)),
        ("Seed", int(r.seed)),
        ("Evaluations", run.metrics.len().to_string()),
    ];
    let rows: Vec<Vec<String>> = settings
        .into_iter()
        .map(|(k, v)| vec![k.to_string(), cell(&v)])
        .collect();
    md.push_str(&table(
        &[("Setting", Align::Left), ("Value", Align::Left)],
        &rows,
    ));

    // Accuracy: last round and best round side by side, so neither can be mistaken for the other.
    md.push_str("\n## Accuracy\n\n");
    md.push_str(
        "Accuracy in percent. *Personalized*: each client's personalized model on its own test \
         split (mean ± standard deviation over clients, and the worst client). *Global test \
         set*: the personalized models on the global test set (mean over clients). *Global \
         model*: the aggregated global model on the global test set.\n\n",
    );
    let last = run.last();
    let best = run.best();
    let best_f = best.as_ref().map(|(f, _)| f);
    let row = |name: &str, get: &dyn Fn(&RoundFigures) -> String| {
        vec![
            name.to_string(),
            get(&last),
            best_f.map_or_else(|| MISSING.to_string(), get),
        ]
    };
    let rows = vec![
        row("Personalized (mean ± std)", &|f| {
            pct_pm(f.personalized_acc_mean, f.personalized_acc_std)
        }),
        row("Personalized (worst client)", &|f| {
            pct(f.personalized_acc_min)
        }),
        row("Global test set (mean)", &|f| pct(f.global_acc_mean)),
        row("Global model", &|f| pct(f.global_model_acc)),
    ];
    let last_h = round_header("Last round", Some(&last));
    let best_h = round_header("Best round", best_f);
    md.push_str(&table(
        &[
            ("Metric", Align::Left),
            (&last_h, Align::Right),
            (&best_h, Align::Right),
        ],
        &rows,
    ));
    md.push('\n');
    if let (None, Some(note)) = (last.global_model_acc, &r.summary.global_model_note) {
        md.push_str(&format!("No global model: {note}.\n\n"));
    }
    md.push_str(match best.as_ref().map(|(_, s)| s) {
        Some(BestSource::Report) => "Best round: as selected by the run (`report.json`).\n",
        Some(BestSource::Metrics) => {
            "Best round: the evaluation with the highest mean personalized accuracy \
             (from `metrics.jsonl`).\n"
        }
        None => "Best round: no evaluation recorded.\n",
    });
    if let Some(t) = time_to_target(run) {
        md.push_str(&format!("\n{t}\n"));
    }

    md.push_str("\n## Cost (whole run)\n\n");
    let rows = vec![
        vec![
            "Communication up, per client".to_string(),
            unit(mb(run.bytes_up_per_client()), "MB"),
        ],
        vec![
            "Communication down, per client".to_string(),
            unit(mb(run.bytes_down_per_client()), "MB"),
        ],
        vec![
            "Client compute, mean per client".to_string(),
            unit(gflop(run.client_flops_mean()), "GFLOP"),
        ],
        vec![
            "Simulated time".to_string(),
            unit(secs(run.simulated_seconds()), "s"),
        ],
        vec!["Wall time".to_string(), unit(secs(run.wall_seconds()), "s")],
    ];
    md.push_str(&table(
        &[("Cost", Align::Left), ("Value", Align::Right)],
        &rows,
    ));
    md.push_str("\nMB = 10^6 bytes, MiB = 2^20 bytes, GFLOP = 10^9 floating-point operations.\n");

    md.push_str("\n## Plots\n\n");
    md.push_str(&format!("![Accuracy vs round]({ACC_VS_ROUND_SVG})\n\n"));
    md.push_str(&format!(
        "![Accuracy vs simulated time]({ACC_VS_TIME_SVG})\n\n"
    ));
    md.push_str(&format!("![Per-client accuracy]({CLIENTS_SVG})\n"));

    md.push_str("\n## Per-client results (last round)\n\n");
    if r.clients.is_empty() {
        md.push_str("No per-client results in `report.json`.\n");
    } else {
        let rows: Vec<Vec<String>> = r
            .clients
            .iter()
            .enumerate()
            .map(|(i, c)| {
                vec![
                    c.client.unwrap_or(i as u64).to_string(),
                    cell(&text(c.profile.as_deref())),
                    int(c.split),
                    int(c.train_examples),
                    int(c.test_examples),
                    pct(c.personalized_acc),
                    pct(c.global_acc),
                    mb(c.bytes_up),
                    mb(c.bytes_down),
                    gflop(c.flops),
                    mib(c.memory_bytes),
                ]
            })
            .collect();
        md.push_str(&table(
            &[
                ("Client", Align::Right),
                ("Profile", Align::Left),
                ("Split", Align::Right),
                ("Train", Align::Right),
                ("Test", Align::Right),
                ("Personalized acc. (%)", Align::Right),
                ("Global acc. (%)", Align::Right),
                ("MB up", Align::Right),
                ("MB down", Align::Right),
                ("GFLOP", Align::Right),
                ("Memory (MiB)", Align::Right),
            ],
            &rows,
        ));
    }
    md
}
