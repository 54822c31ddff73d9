//! Comparison of several runs: a Markdown table, a grouped bar chart and a CSV file.

use super::fmt::{
    cell, csv_field, fixed, gflop, int, mb, mean_std, pct, pct_pm, secs, table, text, Align,
    MISSING,
};
use super::run_report::time_to_target;
use super::schema::Run;
use super::svg::BarChart;
use crate::error::{Error, Result};
use crate::fsutil::write_atomic;
use std::collections::HashSet;
use std::path::{Path, PathBuf};

/// A comparison of runs, ready to be written with [`write_comparison`].
#[derive(Debug, Clone, PartialEq)]
pub struct Comparison {
    /// The tables, as Markdown. [`write_comparison`] appends the embedded chart and a link to the
    /// CSV, whose file names depend on the output path.
    pub markdown: String,
    /// Grouped bar chart of accuracies, per run or, when runs repeat an algorithm and partition,
    /// per (algorithm, partition) averaged over seeds.
    pub svg: String,
    /// One row per run with the raw numbers (accuracy as fractions, bytes, FLOPs, seconds).
    pub csv: String,
}

/// One loaded run with its label and figures, as compared.
struct Row {
    run: Run,
    label: String,
}

impl Row {
    fn algorithm(&self) -> String {
        text(self.run.report.algorithm.as_deref())
    }
    fn partition(&self) -> String {
        text(self.run.report.partition.as_deref())
    }
    /// The run folder's name without a trailing seed suffix (`-s3`, `-seed3`): runs of one
    /// algorithm with different settings (an ablation) stay apart, seeds of one setting group.
    fn variant(&self) -> String {
        let name = self.run.name();
        for suffix in ["-seed", "-s"] {
            if let Some(i) = name.rfind(suffix) {
                let digits = &name[i + suffix.len()..];
                if !digits.is_empty() && digits.bytes().all(|b| b.is_ascii_digit()) {
                    return name[..i].to_string();
                }
            }
        }
        name
    }
    fn time_to_target(&self) -> Option<f64> {
        self.run
            .report
            .summary
            .simulated_seconds_to_target
            .filter(|t| t.is_finite())
    }
    fn has_target(&self) -> bool {
        self.run
            .report
            .summary
            .target_acc
            .is_some_and(f64::is_finite)
    }
}

/// Runs of one (algorithm, partition, variant); they differ by seed (or by nothing).
struct Group<'a> {
    algorithm: String,
    partition: String,
    variant: String,
    rows: Vec<&'a Row>,
}

impl Group<'_> {
    /// The algorithm, with the variant in brackets when the folders name another setting.
    fn label(&self) -> String {
        if self.variant == self.algorithm {
            self.algorithm.clone()
        } else {
            format!("{} [{}]", self.algorithm, self.variant)
        }
    }

    /// Mean and sample std across the group's runs of `f`, over the runs that have it.
    fn stat(&self, f: impl Fn(&Row) -> Option<f64>) -> Option<(f64, Option<f64>)> {
        mean_std(self.rows.iter().map(|r| f(r)))
    }
}

/// Compares the runs in `run_dirs` (each holding `report.json` and `metrics.jsonl`).
///
/// The Markdown has one row per run (last-round accuracy, the best round, communication and
/// compute per client, simulated time and time to target). When several runs share an algorithm
/// and a partition (different seeds), a second table gives, per (algorithm, partition), the mean
/// over runs ± the sample standard deviation across runs, with the number of runs.
pub fn compare(run_dirs: &[PathBuf]) -> Result<Comparison> {
    if run_dirs.is_empty() {
        return Err(Error::Input("no runs to compare".into()));
    }
    let runs = run_dirs
        .iter()
        .map(|d| Run::load(d))
        .collect::<Result<Vec<_>>>()?;

    // Label runs by folder name, or by the path as given when two folders share a name.
    let names: Vec<String> = runs.iter().map(Run::name).collect();
    let mut seen = HashSet::new();
    let clash = names.iter().any(|n| !seen.insert(n));
    let rows: Vec<Row> = runs
        .into_iter()
        .zip(names)
        .map(|(run, name)| {
            let folder = if clash {
                run.dir.display().to_string()
            } else {
                name
            };
            let label = format!("{} ({folder})", text(run.report.algorithm.as_deref()));
            Row { run, label }
        })
        .collect();

    let mut groups: Vec<Group> = Vec::new();
    for r in &rows {
        let (a, p, v) = (r.algorithm(), r.partition(), r.variant());
        match groups
            .iter_mut()
            .find(|g| g.algorithm == a && g.partition == p && g.variant == v)
        {
            Some(g) => g.rows.push(r),
            None => groups.push(Group {
                algorithm: a,
                partition: p,
                variant: v,
                rows: vec![r],
            }),
        }
    }
    let aggregate = groups.iter().any(|g| g.rows.len() > 1);

    let mut md = String::from("# Run comparison\n\n");
    md.push_str(
        "Accuracy in percent, last round. *Personalized*: each client's model on its own test \
         split (mean ± std over clients); *worst*: the worst client; *global test*: the \
         personalized models on the global test set; *global model*: the aggregated model on \
         the global test set. Communication in MB (10^6 bytes) per client, client compute in \
         GFLOP (mean per client), times in simulated seconds.\n\n",
    );
    md.push_str("## Runs\n\n");
    md.push_str(&runs_table(&rows));
    md.push_str(&targets_note(&rows));
    if aggregate {
        md.push_str("\n## Mean over seeds\n\n");
        md.push_str(
            "Runs grouped by algorithm and partition: mean over the runs ± sample standard \
             deviation across them (n − 1 denominator); *n* is the number of runs.\n\n",
        );
        md.push_str(&groups_table(&groups));
    }

    Ok(Comparison {
        markdown: md,
        svg: chart(&rows, &groups, aggregate).render(),
        csv: csv(&rows),
    })
}

fn runs_table(rows: &[Row]) -> String {
    let cells: Vec<Vec<String>> = rows
        .iter()
        .map(|r| {
            let run = &r.run;
            let last = run.last();
            let best = run.best().map(|(f, _)| f);
            let best_cell = match &best {
                Some(b) => match b.round {
                    Some(round) => format!("{} (r{round})", pct(b.personalized_acc_mean)),
                    None => pct(b.personalized_acc_mean),
                },
                None => MISSING.to_string(),
            };
            vec![
                cell(&r.label),
                cell(&r.partition()),
                int(run.report.seed),
                pct_pm(last.personalized_acc_mean, last.personalized_acc_std),
                pct(last.personalized_acc_min),
                pct(last.global_acc_mean),
                pct(last.global_model_acc),
                best_cell,
                mb(run.bytes_up_per_client()),
                mb(run.bytes_down_per_client()),
                gflop(run.client_flops_mean()),
                secs(run.simulated_seconds()),
                target_cell(r),
            ]
        })
        .collect();
    table(
        &[
            ("Run", Align::Left),
            ("Partition", Align::Left),
            ("Seed", Align::Right),
            ("Personalized", Align::Right),
            ("Worst", Align::Right),
            ("Global test", Align::Right),
            ("Global model", Align::Right),
            ("Best personalized (round)", Align::Right),
            ("MB up", Align::Right),
            ("MB down", Align::Right),
            ("GFLOP", Align::Right),
            ("Sim. time (s)", Align::Right),
            ("Time to target (s)", Align::Right),
        ],
        &cells,
    )
}

fn target_cell(r: &Row) -> String {
    match (r.has_target(), r.time_to_target()) {
        (_, Some(t)) => secs(Some(t)),
        (true, None) => "not reached".to_string(),
        (false, None) => MISSING.to_string(),
    }
}

/// States the target accuracy once when all runs share it, else per run.
fn targets_note(rows: &[Row]) -> String {
    let targets: Vec<Option<f64>> = rows
        .iter()
        .map(|r| r.run.report.summary.target_acc)
        .collect();
    if targets.iter().all(Option::is_none) {
        return String::new();
    }
    if targets.iter().all(|t| *t == targets[0]) {
        return format!("\nTarget accuracy: {} %.\n", pct(targets[0]));
    }
    let mut s = String::from("\nTargets differ between runs:\n\n");
    for r in rows {
        if let Some(t) = time_to_target(&r.run) {
            s.push_str(&format!("- {}: {t}\n", cell(&r.label)));
        }
    }
    s
}

/// "mean ± std" in percent, "mean" for one run, or [`MISSING`].
fn pct_stat(s: Option<(f64, Option<f64>)>) -> String {
    match s {
        Some((m, sd)) => pct_pm(Some(m), sd),
        None => MISSING.to_string(),
    }
}

/// "mean ± std" with `decimals`, after dividing by `scale`.
fn num_stat(s: Option<(f64, Option<f64>)>, scale: f64, decimals: usize) -> String {
    match s {
        Some((m, Some(sd))) => format!(
            "{} ± {}",
            fixed(Some(m / scale), decimals),
            fixed(Some(sd / scale), decimals)
        ),
        Some((m, None)) => fixed(Some(m / scale), decimals),
        None => MISSING.to_string(),
    }
}

fn groups_table(groups: &[Group]) -> String {
    let cells: Vec<Vec<String>> = groups
        .iter()
        .map(|g| {
            let n = g.rows.len();
            let seeds: Vec<String> = g.rows.iter().map(|r| int(r.run.report.seed)).collect();
            let reached = g
                .rows
                .iter()
                .filter(|r| r.time_to_target().is_some())
                .count();
            let with_target = g.rows.iter().filter(|r| r.has_target()).count();
            let ttt = if reached == 0 {
                if with_target > 0 {
                    "not reached".to_string()
                } else {
                    MISSING.to_string()
                }
            } else {
                let s = num_stat(g.stat(Row::time_to_target), 1.0, 1);
                if reached < n {
                    format!("{s} ({reached}/{n} reached)")
                } else {
                    s
                }
            };
            vec![
                cell(&g.label()),
                cell(&g.partition),
                n.to_string(),
                seeds.join(", "),
                pct_stat(g.stat(|r| r.run.last().personalized_acc_mean)),
                pct_stat(g.stat(|r| r.run.last().personalized_acc_min)),
                pct_stat(g.stat(|r| r.run.last().global_acc_mean)),
                pct_stat(g.stat(|r| r.run.last().global_model_acc)),
                num_stat(g.stat(|r| r.run.bytes_up_per_client()), 1e6, 2),
                num_stat(g.stat(|r| r.run.bytes_down_per_client()), 1e6, 2),
                num_stat(g.stat(|r| r.run.client_flops_mean()), 1e9, 2),
                num_stat(g.stat(|r| r.run.simulated_seconds()), 1.0, 1),
                ttt,
            ]
        })
        .collect();
    table(
        &[
            ("Algorithm", Align::Left),
            ("Partition", Align::Left),
            ("n", Align::Right),
            ("Seeds", Align::Left),
            ("Personalized", Align::Right),
            ("Worst", Align::Right),
            ("Global test", Align::Right),
            ("Global model", Align::Right),
            ("MB up", Align::Right),
            ("MB down", Align::Right),
            ("GFLOP", Align::Right),
            ("Sim. time (s)", Align::Right),
            ("Time to target (s)", Align::Right),
        ],
        &cells,
    )
}

/// Accuracy bars per run, or per group (mean over its runs) when runs were aggregated.
fn chart(rows: &[Row], groups: &[Group], aggregate: bool) -> BarChart {
    type Get = fn(&Run) -> Option<f64>;
    let metrics: [(&str, Get); 4] = [
        ("personalized (mean)", |r| r.last().personalized_acc_mean),
        ("personalized (worst client)", |r| {
            r.last().personalized_acc_min
        }),
        ("global test set (mean)", |r| r.last().global_acc_mean),
        ("global model", |r| r.last().global_model_acc),
    ];
    let pct_or_nan = |v: Option<f64>| v.map_or(f64::NAN, |a| a * 100.0);
    let mut c = if aggregate {
        let mut c = BarChart::new("Accuracy, mean over seeds (last round)", "accuracy (%)");
        c.categories = groups
            .iter()
            .map(|g| format!("{} ({})", g.label(), g.partition))
            .collect();
        for (name, get) in metrics {
            let vals = groups
                .iter()
                .map(|g| pct_or_nan(g.stat(|r| get(&r.run)).map(|(m, _)| m)))
                .collect();
            c.groups.push((name.to_string(), vals));
        }
        c
    } else {
        let mut c = BarChart::new("Accuracy per run (last round)", "accuracy (%)");
        c.categories = rows.iter().map(|r| r.label.clone()).collect();
        for (name, get) in metrics {
            let vals = rows.iter().map(|r| pct_or_nan(get(&r.run))).collect();
            c.groups.push((name.to_string(), vals));
        }
        c
    };
    // A metric no run has (no global model anywhere) would only clutter the legend.
    c.groups.retain(|(_, v)| v.iter().any(|x| x.is_finite()));
    c
}

/// The comparison as CSV: a header, then one line per run (empty fields for missing values).
fn csv(rows: &[Row]) -> String {
    let header = [
        "run",
        "algorithm",
        "partition",
        "model",
        "seed",
        "clients",
        "rounds",
        "personalized_acc_mean",
        "personalized_acc_std",
        "personalized_acc_min",
        "global_acc_mean",
        "global_model_acc",
        "best_round",
        "best_personalized_acc_mean",
        "bytes_up_per_client",
        "bytes_down_per_client",
        "client_flops_mean",
        "simulated_seconds",
        "wall_seconds",
        "target_acc",
        "simulated_seconds_to_target",
    ];
    let mut out = header.join(",");
    out.push('\n');
    // Empty field for a missing value: what spreadsheet and dataframe readers take as NA.
    let f = |v: Option<f64>| {
        v.filter(|x| x.is_finite())
            .map_or(String::new(), |x| x.to_string())
    };
    let u = |v: Option<u64>| v.map_or(String::new(), |x| x.to_string());
    let s = |v: Option<&str>| v.map_or(String::new(), csv_field);
    for r in rows {
        let run = &r.run;
        let rep = &run.report;
        let last = run.last();
        let best = run.best().map(|(b, _)| b).unwrap_or_default();
        let fields = [
            csv_field(&r.run.dir.display().to_string()),
            s(rep.algorithm.as_deref()),
            s(rep.partition.as_deref()),
            s(rep.model.as_deref()),
            u(rep.seed),
            u(rep.num_clients),
            u(rep.rounds),
            f(last.personalized_acc_mean),
            f(last.personalized_acc_std),
            f(last.personalized_acc_min),
            f(last.global_acc_mean),
            f(last.global_model_acc),
            u(best.round),
            f(best.personalized_acc_mean),
            f(run.bytes_up_per_client()),
            f(run.bytes_down_per_client()),
            f(run.client_flops_mean()),
            f(run.simulated_seconds()),
            f(run.wall_seconds()),
            f(rep.summary.target_acc),
            f(rep.summary.simulated_seconds_to_target),
        ];
        out.push_str(&fields.join(","));
        out.push('\n');
    }
    out
}

/// A Markdown link target for a file name, in angle brackets when it has spaces or parentheses.
fn link_target(name: &str) -> String {
    if name.contains([' ', '(', ')', '<', '>']) {
        format!("<{}>", name.replace('<', "%3C").replace('>', "%3E"))
    } else {
        name.to_string()
    }
}

/// Writes the comparison: the Markdown to `out`, and next to it `<stem>.svg` and `<stem>.csv`
/// (for `out = results/cmp.md`: `results/cmp.svg`, `results/cmp.csv`). The Markdown embeds the
/// chart and links the CSV by relative file name. Creates `out`'s folder if needed.
pub fn write_comparison(c: &Comparison, out: &Path) -> Result<()> {
    let stem = out
        .file_stem()
        .filter(|s| !s.is_empty())
        .ok_or_else(|| Error::Input(format!("{}: not a file path", out.display())))?
        .to_string_lossy()
        .into_owned();
    let svg_path = out.with_file_name(format!("{stem}.svg"));
    let csv_path = out.with_file_name(format!("{stem}.csv"));
    if svg_path == out || csv_path == out {
        return Err(Error::Input(format!(
            "{}: the comparison Markdown needs a name other than .svg or .csv (use .md)",
            out.display()
        )));
    }
    if let Some(dir) = out.parent().filter(|d| !d.as_os_str().is_empty()) {
        std::fs::create_dir_all(dir).map_err(|e| Error::io(dir, e))?;
    }

    let mut md = c.markdown.clone();
    if !md.ends_with('\n') {
        md.push('\n');
    }
    md.push_str(&format!(
        "\n## Chart\n\n![Accuracy comparison]({})\n\nPer-run numbers: [{stem}.csv]({}).\n",
        link_target(&format!("{stem}.svg")),
        link_target(&format!("{stem}.csv")),
    ));
    let mut svg = c.svg.clone();
    if !svg.ends_with('\n') {
        svg.push('\n');
    }
    write_atomic(&svg_path, svg.as_bytes())?;
    write_atomic(&csv_path, c.csv.as_bytes())?;
    write_atomic(out, md.as_bytes())
}
