//! The comparison of a sweep (`flexp-run sweep`): per setting and compared value, the mean over
//! seeds with its 95% confidence interval; per setting, paired t-tests of every compared value
//! against the reference (pairs share a seed, and with it the data partition and split), with
//! Holm-adjusted p-values; and a sentence saying which value leads and whether that is
//! significant. Writes `sweep.md` and `sweep.csv` into the sweep's folder, and the per-run
//! [`super::compare`] table and chart as `comparison.md` into each setting's folder.

use super::fmt::{cell, csv_field, table, Align, MISSING};
use super::schema::Run;
use super::stats::{holm, mean_ci95, paired_t, Interval};
use crate::error::Result;
use crate::fsutil::write_atomic;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};

/// One run of a sweep as the report sees it.
#[derive(Clone, Debug)]
pub struct SweepRun {
    /// The run folder (finished when it holds `report.json`).
    pub dir: PathBuf,
    /// The grid values other than the compared key and the seed, as (key, value).
    pub setting: Vec<(String, String)>,
    /// The compared key's value, when the sweep compares one.
    pub compared: Option<String>,
    /// The seed.
    pub seed: String,
}

/// A per-run figure the report aggregates, with its column name, scale and unit.
struct Metric {
    name: &'static str,
    /// Multiplier from the stored value to the printed one (fractions to percent, bytes to MB).
    scale: f64,
    decimals: usize,
    /// Tested for differences (accuracies); costs are only tabulated.
    tested: bool,
    get: fn(&Run) -> Option<f64>,
}

const METRICS: &[Metric] = &[
    Metric {
        name: "personalized",
        scale: 100.0,
        decimals: 1,
        tested: true,
        get: |r| r.last().personalized_acc_mean,
    },
    Metric {
        name: "worst client",
        scale: 100.0,
        decimals: 1,
        tested: false,
        get: |r| r.last().personalized_acc_min,
    },
    Metric {
        name: "global test",
        scale: 100.0,
        decimals: 1,
        tested: true,
        get: |r| r.last().global_acc_mean,
    },
    Metric {
        name: "global model",
        scale: 100.0,
        decimals: 1,
        tested: false,
        get: |r| r.last().global_model_acc,
    },
    Metric {
        name: "MB up",
        scale: 1e-6,
        decimals: 2,
        tested: false,
        get: Run::bytes_up_per_client,
    },
    Metric {
        name: "MB down",
        scale: 1e-6,
        decimals: 2,
        tested: false,
        get: Run::bytes_down_per_client,
    },
    Metric {
        name: "GFLOP",
        scale: 1e-9,
        decimals: 1,
        tested: false,
        get: Run::client_flops_mean,
    },
    Metric {
        name: "sim. time (s)",
        scale: 1.0,
        decimals: 1,
        tested: false,
        get: Run::simulated_seconds,
    },
];

/// A finished run with its place in the grid.
struct Loaded<'a> {
    run: Run,
    at: &'a SweepRun,
}

fn setting_label(setting: &[(String, String)]) -> String {
    if setting.is_empty() {
        "all runs".to_string()
    } else {
        setting
            .iter()
            .map(|(k, v)| format!("{k} = {v}"))
            .collect::<Vec<_>>()
            .join(", ")
    }
}

fn interval_text(ci: Option<Interval>, single: Option<f64>, m: &Metric) -> String {
    let f = |x: f64| format!("{:.*}", m.decimals, x * m.scale);
    match (ci, single) {
        (Some(ci), _) => format!("{} [{}, {}]", f(ci.mean), f(ci.lo), f(ci.hi)),
        (None, Some(x)) => format!("{} (1 seed)", f(x)),
        (None, None) => MISSING.to_string(),
    }
}

/// The values of metric `m` over the runs, by seed (runs without the figure left out).
fn by_seed(runs: &[&Loaded], m: &Metric) -> BTreeMap<String, f64> {
    runs.iter()
        .filter_map(|l| {
            (m.get)(&l.run)
                .filter(|v| v.is_finite())
                .map(|v| (l.at.seed.clone(), v))
        })
        .collect()
}

/// One paired comparison of a setting, before Holm's adjustment.
struct Test {
    value: String,
    metric: &'static Metric,
    diff: Interval,
    t: f64,
    df: usize,
    p: f64,
}

/// Writes `sweep.md` and `sweep.csv` into `out` (and `comparison.md` per setting); returns the
/// path of `sweep.md`. Runs without `report.json` are counted as missing, not compared.
pub fn write_sweep_report(
    out: &Path,
    name: &str,
    runs: &[SweepRun],
    compare: Option<&str>,
    reference: Option<&str>,
) -> Result<PathBuf> {
    let mut loaded = Vec::new();
    let mut missing = 0usize;
    for r in runs {
        if r.dir.join(super::REPORT_FILE).exists() {
            loaded.push(Loaded {
                run: Run::load(&r.dir)?,
                at: r,
            });
        } else {
            missing += 1;
        }
    }
    // Settings and compared values in the grid's order (first appearance).
    let mut settings: Vec<&Vec<(String, String)>> = Vec::new();
    for r in runs {
        if !settings.contains(&&r.setting) {
            settings.push(&r.setting);
        }
    }
    let mut values: Vec<Option<&str>> = Vec::new();
    for r in runs {
        if !values.contains(&r.compared.as_deref()) {
            values.push(r.compared.as_deref());
        }
    }
    // A fold from +0.0: `Sum` for floats starts from -0.0, which prints as "-0" with no runs.
    let wall: f64 = loaded
        .iter()
        .filter_map(|l| l.run.wall_seconds())
        .filter(|w| w.is_finite())
        .fold(0.0, |a, w| a + w);

    let mut md = format!("# Sweep: {}\n\n", cell(name));
    md.push_str(&format!(
        "{} of {} runs finished{}; run time of the finished runs {:.0} s ({:.1} h) in all. \
         Figures are last-round. Each cell is the mean over seeds with its 95% confidence \
         interval in brackets (Student's t, n − 1 degrees of freedom; not clipped to the \
         metric's range, so with few seeds an accuracy interval can pass 100); accuracy in percent, \
         communication in MB (10^6 bytes) per client, client compute in GFLOP per client, \
         simulated time in seconds.\n",
        loaded.len(),
        runs.len(),
        if missing > 0 {
            format!(" ({missing} missing: run the sweep again to finish them)")
        } else {
            String::new()
        },
        wall,
        wall / 3600.0
    ));
    let mut csv = String::from("setting,compared,n,seeds,metric,mean,ci_low,ci_high\n");
    for setting in &settings {
        let label = setting_label(setting);
        md.push_str(&format!("\n## {}\n\n", cell(&label)));
        let mut rows = Vec::new();
        let mut groups: Vec<(Option<&str>, Vec<&Loaded>)> = Vec::new();
        for v in &values {
            let g: Vec<&Loaded> = loaded
                .iter()
                .filter(|l| l.at.setting == **setting && l.at.compared.as_deref() == *v)
                .collect();
            if !g.is_empty() {
                groups.push((*v, g));
            }
        }
        for (v, g) in &groups {
            let seeds: Vec<&str> = g.iter().map(|l| l.at.seed.as_str()).collect();
            let mut row = vec![cell(v.unwrap_or("runs")), g.len().to_string()];
            for m in METRICS {
                let xs: Vec<f64> = by_seed(g, m).into_values().collect();
                let ci = mean_ci95(&xs);
                row.push(interval_text(ci, xs.first().copied(), m));
                let (mean, lo, hi) = match (ci, xs.first()) {
                    (Some(ci), _) => (ci.mean, ci.lo.to_string(), ci.hi.to_string()),
                    (None, Some(&x)) => (x, String::new(), String::new()),
                    (None, None) => continue,
                };
                csv.push_str(&format!(
                    "{},{},{},{},{},{},{},{}\n",
                    csv_field(&label),
                    csv_field(v.unwrap_or("")),
                    xs.len(),
                    csv_field(&seeds.join(" ")),
                    csv_field(m.name),
                    mean,
                    lo,
                    hi
                ));
            }
            rows.push(row);
        }
        let mut columns = vec![
            (compare.unwrap_or("runs"), Align::Left),
            ("seeds", Align::Right),
        ];
        columns.extend(METRICS.iter().map(|m| (m.name, Align::Right)));
        md.push_str(&table(&columns, &rows));
        if let (Some(key), Some(reference)) = (compare, reference) {
            md.push_str(&tests_section(key, reference, &groups));
        }
        // The per-run table and chart of this setting, as `flexp-run compare` writes them.
        let dirs: Vec<PathBuf> = groups
            .iter()
            .flat_map(|(_, g)| g.iter().map(|l| l.run.dir.clone()))
            .collect();
        if let Some(first) = runs.iter().find(|r| r.setting == **setting) {
            if let (false, Some(folder)) = (dirs.is_empty(), first.dir.parent()) {
                let c = super::compare(&dirs)?;
                let path = folder.join("comparison.md");
                super::write_comparison(&c, &path)?;
                let rel = path.strip_prefix(out).unwrap_or(&path);
                md.push_str(&format!(
                    "\nEvery run of this setting, with plots: [{}]({}).\n",
                    rel.display(),
                    rel.display()
                ));
            }
        }
    }
    std::fs::create_dir_all(out).map_err(|e| crate::Error::io(out, e))?;
    let md_path = out.join("sweep.md");
    write_atomic(&md_path, md.as_bytes())?;
    write_atomic(&out.join("sweep.csv"), csv.as_bytes())?;
    Ok(md_path)
}

/// The paired tests of one setting against `reference`, and the plain statement of the result.
fn tests_section(key: &str, reference: &str, groups: &[(Option<&str>, Vec<&Loaded>)]) -> String {
    let Some((_, base)) = groups.iter().find(|(v, _)| *v == Some(reference)) else {
        return format!("\nNo finished run of the reference `{key} = {reference}` here.\n");
    };
    let mut tests = Vec::new();
    for m in METRICS.iter().filter(|m| m.tested) {
        let b = by_seed(base, m);
        for (v, g) in groups {
            let Some(v) = v.filter(|v| *v != reference) else {
                continue;
            };
            let a = by_seed(g, m);
            // Pairs are the seeds both sides finished.
            let (xa, xb): (Vec<f64>, Vec<f64>) = a
                .iter()
                .filter_map(|(s, x)| b.get(s).map(|y| (*x, *y)))
                .unzip();
            if let Some(t) = paired_t(&xa, &xb) {
                tests.push(Test {
                    value: v.to_string(),
                    metric: m,
                    diff: t.diff,
                    t: t.t,
                    df: t.df,
                    p: t.p,
                });
            }
        }
    }
    let mut md = format!(
        "\nPaired differences against `{key} = {reference}` (the other value minus the \
         reference, in percentage points, over the seeds both finished; a seed fixes the data \
         partition and split, so the pairs share their data). *p*: two-sided paired t-test; \
         *Holm*: p adjusted for the {} tests of this setting; *significant*: Holm-adjusted p < \
         0.05.\n\n",
        tests.len()
    );
    if tests.is_empty() {
        md.push_str("Too few shared seeds for a test (at least two are needed).\n");
        return md;
    }
    let adjusted = holm(&tests.iter().map(|t| t.p).collect::<Vec<_>>());
    let rows: Vec<Vec<String>> = tests
        .iter()
        .zip(&adjusted)
        .map(|(t, adj)| {
            let pp = |x: f64| format!("{:+.1}", x * t.metric.scale);
            vec![
                cell(&t.value),
                t.metric.name.to_string(),
                pp(t.diff.mean),
                format!("[{}, {}]", pp(t.diff.lo), pp(t.diff.hi)),
                format!("{:.2} ({})", t.t, t.df),
                format!("{:.3}", t.p),
                format!("{:.3}", adj),
                if *adj < 0.05 { "yes" } else { "no" }.to_string(),
            ]
        })
        .collect();
    md.push_str(&table(
        &[
            (key, Align::Left),
            ("metric", Align::Left),
            ("difference", Align::Right),
            ("95% CI", Align::Right),
            ("t (df)", Align::Right),
            ("p", Align::Right),
            ("Holm", Align::Right),
            ("significant", Align::Left),
        ],
        &rows,
    ));
    md.push('\n');
    for m in METRICS.iter().filter(|m| m.tested) {
        md.push_str(&verdict(key, reference, m, groups, &tests, &adjusted));
    }
    md
}

/// One sentence per tested metric: which value has the highest mean, and whether the reference
/// differs significantly from the others.
fn verdict(
    key: &str,
    reference: &str,
    m: &Metric,
    groups: &[(Option<&str>, Vec<&Loaded>)],
    tests: &[Test],
    adjusted: &[f64],
) -> String {
    let mut means: Vec<(&str, f64)> = groups
        .iter()
        .filter_map(|(v, g)| {
            let xs: Vec<f64> = by_seed(g, m).into_values().collect();
            (!xs.is_empty()).then(|| {
                (
                    v.unwrap_or("runs"),
                    xs.iter().sum::<f64>() / xs.len() as f64,
                )
            })
        })
        .collect();
    means.sort_by(|a, b| b.1.total_cmp(&a.1));
    let Some(&(top, top_mean)) = means.first() else {
        return String::new();
    };
    let mut better = Vec::new();
    let mut worse = Vec::new();
    for (t, adj) in tests.iter().zip(adjusted) {
        if !std::ptr::eq(t.metric, m) || *adj >= 0.05 {
            continue;
        }
        // The difference is other − reference: positive means the other value is better.
        if t.diff.mean > 0.0 {
            better.push(t.value.as_str());
        } else {
            worse.push(t.value.as_str());
        }
    }
    let list = |v: &[&str]| {
        if v.is_empty() {
            "none".to_string()
        } else {
            v.join(", ")
        }
    };
    format!(
        "- **{}**: highest mean `{key} = {top}` ({:.1}). Significantly above `{reference}`: {}; \
         significantly below it: {}.\n",
        m.name,
        top_mean * m.scale,
        list(&better),
        list(&worse)
    )
}
