//! Run reports and comparisons: files written, numbers formatted as specified (percent with one
//! decimal, MB, GFLOP), last vs best round, mean ± std across seeds, SVG sanity, clear errors.

use flexp::report::{
    compare, read_report, write_comparison, write_run_report, BarChart, LineChart, Series,
};
use serde_json::{json, Value};
use std::path::{Path, PathBuf};

/// A fresh, empty folder under the system temp dir.
fn temp_dir(tag: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flexp-report-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn write_metrics(dir: &Path, rows: &[Value]) {
    let text: String = rows.iter().map(|r| format!("{r}\n")).collect();
    std::fs::write(dir.join("metrics.jsonl"), text).unwrap();
}

fn write_report(dir: &Path, report: &Value) {
    std::fs::write(
        dir.join("report.json"),
        serde_json::to_string_pretty(report).unwrap(),
    )
    .unwrap();
}

fn metric(round: u64, pers: f64, min: f64, global_model: Option<f64>) -> Value {
    json!({
        "round": round,
        "simulated_seconds": 60.0 * round as f64,
        "wall_seconds": 2.0 * round as f64,
        "train_loss": 1.0 / round as f64,
        "personalized_acc_mean": pers,
        "personalized_acc_std": 0.02,
        "personalized_acc_min": min,
        "global_acc_mean": 0.6,
        "global_model_acc": global_model,
        "bytes_up_total": 1e6 * round as f64,
        "bytes_down_total": 2e6 * round as f64,
        "client_flops_total": 1e9 * round as f64,
        "rejected": 0
    })
}

/// A run whose best evaluation (round 2) beats its last one (round 3).
fn sample_run(dir: &Path) {
    write_metrics(
        dir,
        &[
            metric(1, 0.70, 0.50, Some(0.55)),
            metric(2, 0.875, 0.75, Some(0.65)),
            metric(3, 0.85, 0.70, None),
        ],
    );
    write_report(
        dir,
        &json!({
            "algorithm": "flexp_sfl",
            "rounds": 3,
            "clients": 2,
            "seed": 7,
            "partition": "dirichlet:0.5",
            "model": "bert-tiny",
            "summary": {
                "personalized_acc_mean": 0.85,
                "personalized_acc_std": 0.02,
                "personalized_acc_min": 0.70,
                "global_acc_mean": 0.6,
                "global_model_acc": null,
                "bytes_up_per_client": 12_345_678.0,
                "bytes_down_per_client": 3_000_000.0,
                "client_flops_mean": 2.5e9,
                "simulated_seconds": 180.0,
                "wall_seconds": 6.25,
                "best": {
                    "round": 2,
                    "personalized_acc_mean": 0.875,
                    "personalized_acc_std": 0.015,
                    "personalized_acc_min": 0.75,
                    "global_acc_mean": 0.6,
                    "global_model_acc": 0.65
                },
                "target_acc": 0.8,
                "simulated_seconds_to_target": 120.0
            },
            "clients": [
                {"client": 0, "profile": "phone", "split": 2, "train_examples": 100,
                 "test_examples": 25, "personalized_acc": 0.9, "global_acc": 0.7,
                 "bytes_up": 1_500_000.0, "bytes_down": 3_000_000.0, "flops": 2.5e9,
                 "memory_bytes": 67_108_864.0},
                {"client": 1, "profile": "laptop", "split": null, "train_examples": 80,
                 "test_examples": 20, "personalized_acc": 0.8, "global_acc": null,
                 "bytes_up": 1_000_000.0, "bytes_down": 2_000_000.0, "flops": 1.0e9,
                 "memory_bytes": null}
            ]
        }),
    );
}

/// Checks an SVG document is well-formed enough to render: one root element, balanced groups,
/// no non-finite numbers leaked into coordinates or labels.
fn assert_svg_sane(svg: &str) {
    assert!(
        svg.starts_with("<svg"),
        "does not start with <svg: {svg:.80}"
    );
    assert!(
        svg.trim_end().ends_with("</svg>"),
        "does not end with </svg>"
    );
    assert_eq!(svg.matches("<svg").count(), 1);
    let open = svg.matches("<g>").count() + svg.matches("<g ").count();
    assert_eq!(open, svg.matches("</g>").count(), "unbalanced <g>");
    assert_eq!(
        svg.matches("<text").count(),
        svg.matches("</text>").count(),
        "unbalanced <text>"
    );
    for bad in ["NaN", "inf"] {
        assert!(!svg.contains(bad), "SVG contains {bad}");
    }
    assert!(svg.contains(r#"width="720""#) && svg.contains(r#"height="420""#));
}

fn read(path: &Path) -> String {
    std::fs::read_to_string(path).unwrap_or_else(|e| panic!("{}: {e}", path.display()))
}

#[test]
fn run_report_writes_plots_and_markdown() {
    let dir = temp_dir("run");
    sample_run(&dir);
    std::fs::write(dir.join("config.toml"), "rounds = 3\n").unwrap();
    write_run_report(&dir).unwrap();

    for svg in ["acc_vs_round.svg", "acc_vs_time.svg", "clients.svg"] {
        assert_svg_sane(&read(&dir.join(svg)));
    }
    let round_svg = read(&dir.join("acc_vs_round.svg"));
    for name in [
        "personalized (mean)",
        "personalized (worst client)",
        "global test set (mean)",
        "global model",
    ] {
        assert!(round_svg.contains(name), "legend lacks {name}");
    }
    // Each series has one colour in both line plots: the same legend in the same order.
    let legend = |svg: &str| -> Vec<String> {
        svg.lines()
            .filter(|l| l.contains("stroke-width=\"2.5\""))
            .map(|l| l.split("stroke=\"").nth(1).unwrap_or("").to_string())
            .collect()
    };
    let time_svg = read(&dir.join("acc_vs_time.svg"));
    assert_eq!(legend(&round_svg), legend(&time_svg));
    assert_eq!(legend(&round_svg).len(), 4);
    assert!(read(&dir.join("clients.svg")).contains(">client</text>"));

    let md = read(&dir.join("report.md"));
    assert!(md.starts_with("# Run report: flexp_sfl on bert-tiny"));
    assert!(md.contains("[config.toml](config.toml)"));
    for setting in [
        "| Algorithm | flexp_sfl |",
        "| Model | bert-tiny |",
        "| Partition | dirichlet:0.5 |",
        "| Clients | 2 |",
        "| Rounds | 3 |",
        "| Seed | 7 |",
    ] {
        assert!(md.contains(setting), "missing {setting}");
    }
    // Last round and best round side by side, labelled with their rounds, and different.
    assert!(md.contains("| Metric | Last round (round 3) | Best round (round 2) |"));
    assert!(md.contains("| Personalized (mean ± std) | 85.0 ± 2.0 | 87.5 ± 1.5 |"));
    assert!(md.contains("| Personalized (worst client) | 70.0 | 75.0 |"));
    assert!(md.contains("| Global model | – | 65.0 |"));
    assert!(md.contains("Time to the target accuracy of 80.0 %: **120.0 s** simulated."));
    // Cost: MB with two decimals, GFLOP, seconds.
    assert!(md.contains("| Communication up, per client | 12.35 MB |"));
    assert!(md.contains("| Communication down, per client | 3.00 MB |"));
    assert!(md.contains("| Client compute, mean per client | 2.50 GFLOP |"));
    assert!(md.contains("| Simulated time | 180.0 s |"));
    assert!(md.contains("| Wall time | 6.2 s |") || md.contains("| Wall time | 6.3 s |"));
    // Per-client table, nulls as a dash.
    assert!(md.contains("| 0 | phone | 2 | 100 | 25 | 90.0 | 70.0 | 1.50 | 3.00 | 2.50 | 64.0 |"));
    assert!(md.contains("| 1 | laptop | – | 80 | 20 | 80.0 | – | 1.00 | 2.00 | 1.00 | – |"));
    for img in ["(acc_vs_round.svg)", "(acc_vs_time.svg)", "(clients.svg)"] {
        assert!(md.contains(&format!("]{img}")), "plot {img} not embedded");
    }
    assert!(!md.contains("NaN"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn best_round_is_computed_from_metrics_when_the_report_has_none() {
    let dir = temp_dir("best");
    write_metrics(
        &dir,
        &[
            metric(1, 0.60, 0.5, None),
            metric(2, 0.90, 0.8, None),
            metric(3, 0.90, 0.7, None),
            metric(4, 0.75, 0.6, None),
        ],
    );
    // No summary at all: last-round figures come from the last evaluation too.
    write_report(&dir, &json!({"algorithm": "fedavg", "rounds": 4}));
    write_run_report(&dir).unwrap();
    let md = read(&dir.join("report.md"));
    // Ties keep the earliest evaluation.
    assert!(md.contains("| Metric | Last round (round 4) | Best round (round 2) |"));
    assert!(md.contains("| Personalized (mean ± std) | 75.0 ± 2.0 | 90.0 ± 2.0 |"));
    assert!(md.contains("from `metrics.jsonl`"));
    // Costs fall back to the last evaluation / are missing, never NaN.
    assert!(md.contains("| Simulated time | 240.0 s |"));
    assert!(md.contains("| Communication up, per client | – |"));
    assert!(md.contains("No per-client results"));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn empty_metrics_still_give_a_report() {
    let dir = temp_dir("empty");
    std::fs::write(dir.join("metrics.jsonl"), "").unwrap();
    write_report(
        &dir,
        &json!({"algorithm": "local", "summary": {"best": null}}),
    );
    write_run_report(&dir).unwrap();
    for svg in ["acc_vs_round.svg", "acc_vs_time.svg", "clients.svg"] {
        let s = read(&dir.join(svg));
        assert_svg_sane(&s);
        assert!(s.contains("no data"), "{svg} should say no data");
    }
    let md = read(&dir.join("report.md"));
    assert!(md.contains("| Evaluations | 0 |"));
    assert!(md.contains("Best round: no evaluation recorded."));
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn missing_files_are_named() {
    let dir = temp_dir("missing");
    let err = write_run_report(&dir).unwrap_err().to_string();
    assert!(err.contains("report.json"), "{err}");

    write_report(&dir, &json!({"algorithm": "fedavg"}));
    let err = write_run_report(&dir).unwrap_err().to_string();
    assert!(err.contains("metrics.jsonl"), "{err}");

    let err = write_run_report(&dir.join("nope")).unwrap_err().to_string();
    assert!(err.contains("nope"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn bad_metrics_line_names_file_and_line() {
    let dir = temp_dir("badline");
    sample_run(&dir);
    let good = metric(1, 0.5, 0.4, None).to_string();
    std::fs::write(
        dir.join("metrics.jsonl"),
        format!("{good}\n\n{{\"round\": 2, \"personalized_acc_mean\": \n{good}\n"),
    )
    .unwrap();
    let err = write_run_report(&dir).unwrap_err().to_string();
    assert!(err.contains("metrics.jsonl"), "{err}");
    assert!(err.contains("line 3"), "{err}");

    std::fs::write(dir.join("report.json"), "{\"algorithm\": ").unwrap();
    let err = write_run_report(&dir).unwrap_err().to_string();
    assert!(err.contains("report.json"), "{err}");
    let _ = std::fs::remove_dir_all(&dir);
}

#[test]
fn report_json_accepts_clients_as_count_and_as_table() {
    let dir = temp_dir("clients-key");
    // The same key twice, as a raw JSON text (a JSON value cannot hold duplicates).
    let text = r#"{"algorithm": "ditto", "clients": 5, "seed": null,
        "clients": [{"client": 3, "personalized_acc": 0.5}], "summary": null}"#;
    std::fs::write(dir.join("report.json"), text).unwrap();
    let r = read_report(&dir.join("report.json")).unwrap();
    assert_eq!(r.num_clients, Some(5));
    assert_eq!(r.clients.len(), 1);
    assert_eq!(r.clients[0].client, Some(3));
    assert_eq!(r.seed, None);

    // Only the table: the count is its length.
    std::fs::write(
        dir.join("report.json"),
        r#"{"clients": [{"client": 0}, {"client": 1}]}"#,
    )
    .unwrap();
    assert_eq!(
        read_report(&dir.join("report.json")).unwrap().num_clients,
        Some(2)
    );
    let _ = std::fs::remove_dir_all(&dir);
}

/// A minimal run for comparisons.
#[allow(clippy::too_many_arguments)]
fn comparison_run(
    root: &Path,
    name: &str,
    algorithm: &str,
    partition: &str,
    seed: u64,
    pers: f64,
    min: f64,
    bytes_up: f64,
    to_target: Option<f64>,
) -> PathBuf {
    let dir = root.join(name);
    std::fs::create_dir_all(&dir).unwrap();
    write_metrics(&dir, &[metric(10, pers, min, Some(0.5))]);
    write_report(
        &dir,
        &json!({
            "algorithm": algorithm, "rounds": 10, "clients": 4, "seed": seed,
            "partition": partition, "model": "bert-tiny",
            "summary": {
                "personalized_acc_mean": pers, "personalized_acc_std": 0.05,
                "personalized_acc_min": min, "global_acc_mean": 0.6, "global_model_acc": 0.5,
                "bytes_up_per_client": bytes_up, "bytes_down_per_client": 2e6,
                "client_flops_mean": 4e9, "simulated_seconds": 600.0, "wall_seconds": 30.0,
                "best": null, "target_acc": 0.8, "simulated_seconds_to_target": to_target
            }
        }),
    );
    dir
}

#[test]
fn comparison_keeps_differently_named_settings_apart() {
    // Folders name the setting; a trailing -sN / -seedN names the seed. An ablation of one
    // algorithm therefore gets one aggregated row per setting.
    let root = temp_dir("variants");
    let runs = vec![
        comparison_run(
            &root,
            "align-none-s0",
            "flexp-sfl",
            "iid",
            0,
            0.8,
            0.6,
            1e6,
            None,
        ),
        comparison_run(
            &root,
            "align-none-s1",
            "flexp-sfl",
            "iid",
            1,
            0.9,
            0.6,
            1e6,
            None,
        ),
        comparison_run(
            &root,
            "align-kl-s0",
            "flexp-sfl",
            "iid",
            0,
            0.7,
            0.6,
            1e6,
            None,
        ),
    ];
    let md = compare(&runs).unwrap().markdown;
    assert!(
        md.contains("| flexp-sfl [align-none] | iid | 2 | 0, 1 | 85.0 ± 7.1 |"),
        "{md}"
    );
    assert!(
        md.contains("| flexp-sfl [align-kl] | iid | 1 | 0 | 70.0 |"),
        "{md}"
    );
}

#[test]
fn comparison_aggregates_seeds_with_mean_and_std() {
    let root = temp_dir("cmp");
    let runs = vec![
        comparison_run(
            &root,
            "fedavg-s1",
            "fedavg",
            "dirichlet:0.5",
            1,
            0.80,
            0.60,
            1e6,
            Some(100.0),
        ),
        comparison_run(
            &root,
            "fedavg-s2",
            "fedavg",
            "dirichlet:0.5",
            2,
            0.84,
            0.70,
            2e6,
            Some(200.0),
        ),
        comparison_run(
            &root,
            "fedavg-s3",
            "fedavg",
            "dirichlet:0.5",
            3,
            0.88,
            0.80,
            3e6,
            None,
        ),
        comparison_run(
            &root,
            "flexp_sfl-s1",
            "flexp_sfl",
            "iid",
            1,
            0.9,
            0.85,
            5e5,
            Some(50.0),
        ),
    ];
    let c = compare(&runs).unwrap();
    let md = &c.markdown;

    // Per-run rows, labelled by algorithm and folder.
    assert!(md.contains(
        "| fedavg (fedavg-s1) | dirichlet:0.5 | 1 | 80.0 ± 5.0 | 60.0 | 60.0 | 50.0 | 80.0 (r10) | 1.00 | 2.00 | 4.00 | 600.0 | 100.0 |"
    ), "{md}");
    assert!(md.contains("| fedavg (fedavg-s3) | dirichlet:0.5 | 3 | 88.0 ± 5.0 |"));
    assert!(md.contains("| not reached |"));
    assert!(md.contains("Target accuracy: 80.0 %."));

    // Aggregated: 0.80/0.84/0.88 → 84.0 ± 4.0 (sample std); 0.6/0.7/0.8 → 70.0 ± 10.0;
    // 1/2/3 MB → 2.00 ± 1.00; time to target over the 2 of 3 runs that reached it: 150 ± 70.7.
    assert!(md.contains("## Mean over seeds"));
    assert!(md.contains(
        "| fedavg | dirichlet:0.5 | 3 | 1, 2, 3 | 84.0 ± 4.0 | 70.0 ± 10.0 | 60.0 ± 0.0 | 50.0 ± 0.0 | 2.00 ± 1.00 | 2.00 ± 0.00 | 4.00 ± 0.00 | 600.0 ± 0.0 | 150.0 ± 70.7 (2/3 reached) |"
    ), "{md}");
    // A single run of its group: no spread to report.
    assert!(md.contains("| flexp_sfl | iid | 1 | 1 | 90.0 | 85.0 | 60.0 | 50.0 | 0.50 | 2.00 | 4.00 | 600.0 | 50.0 |"));

    // The chart is per (algorithm, partition) once aggregated.
    assert_svg_sane(&c.svg);
    assert!(c.svg.contains("fedavg (dirichlet:0.5)"));
    assert!(c.svg.contains("mean over seeds"));

    // CSV: header plus one raw row per run.
    let lines: Vec<&str> = c.csv.lines().collect();
    assert_eq!(lines.len(), 5);
    assert!(lines[0].starts_with("run,algorithm,partition,model,seed,"));
    assert!(lines[2].contains(",fedavg,dirichlet:0.5,bert-tiny,2,4,10,0.84,0.05,0.7,"));
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn comparison_without_repeats_has_only_the_run_table() {
    let root = temp_dir("cmp-single");
    let runs = vec![
        comparison_run(&root, "a", "fedavg", "iid", 1, 0.7, 0.6, 1e6, None),
        comparison_run(
            &root,
            "b",
            "fedavg",
            "dirichlet:0.1",
            1,
            0.6,
            0.5,
            1e6,
            None,
        ),
    ];
    let c = compare(&runs).unwrap();
    assert!(!c.markdown.contains("Mean over seeds"));
    assert!(c.markdown.contains("| fedavg (a) | iid | 1 | 70.0 ± 5.0 |"));
    assert!(c.svg.contains("fedavg (b)"));
    assert_svg_sane(&c.svg);
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn write_comparison_writes_markdown_svg_and_csv() {
    let root = temp_dir("cmp-write");
    let runs = vec![
        comparison_run(&root, "fedavg-s1", "fedavg", "iid", 1, 0.7, 0.6, 1e6, None),
        comparison_run(
            &root,
            "fedavg-seed2",
            "fedavg",
            "iid",
            2,
            0.8,
            0.6,
            1e6,
            None,
        ),
    ];
    let c = compare(&runs).unwrap();
    let out = root.join("results").join("cmp.md");
    write_comparison(&c, &out).unwrap();
    let md = read(&out);
    assert!(md.contains("![Accuracy comparison](cmp.svg)"));
    assert!(md.contains("[cmp.csv](cmp.csv)"));
    assert!(md.contains("| fedavg | iid | 2 | 1, 2 | 75.0 ± 7.1 |"));
    assert_svg_sane(&read(&root.join("results").join("cmp.svg")));
    assert_eq!(read(&root.join("results").join("cmp.csv")), c.csv);

    let err = write_comparison(&c, &root.join("cmp.svg"))
        .unwrap_err()
        .to_string();
    assert!(err.contains("cmp.svg"), "{err}");
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn comparison_errors() {
    assert!(compare(&[]).is_err());
    let root = temp_dir("cmp-err");
    let good = comparison_run(&root, "a", "fedavg", "iid", 1, 0.7, 0.6, 1e6, None);
    let bad = root.join("b");
    std::fs::create_dir_all(&bad).unwrap();
    std::fs::write(bad.join("report.json"), "{}").unwrap();
    std::fs::write(bad.join("metrics.jsonl"), "{}\nnot json\n").unwrap();
    let err = compare(&[good, bad]).unwrap_err().to_string();
    assert!(
        err.contains("metrics.jsonl") && err.contains("line 2"),
        "{err}"
    );
    let _ = std::fs::remove_dir_all(&root);
}

#[test]
fn charts_survive_degenerate_data() {
    let charts = [
        LineChart::new("empty", "x", "y").render(),
        LineChart::new("empty series", "x", "y")
            .series("a", vec![])
            .render(),
        LineChart::new("one point", "x", "y")
            .series("a", vec![(3.0, 0.5)])
            .render(),
        LineChart::new("all equal", "x", "y")
            .series("a", vec![(1.0, 2.0), (2.0, 2.0), (3.0, 2.0)])
            .series("zeros", vec![(1.0, 0.0), (2.0, 0.0)])
            .render(),
        LineChart::new("nan", "x", "y")
            .series(
                "a",
                vec![
                    (1.0, f64::NAN),
                    (2.0, 1.0),
                    (f64::INFINITY, 2.0),
                    (4.0, 3.0),
                    (5.0, 4.0),
                ],
            )
            .series("only nan", vec![(f64::NAN, f64::NAN)])
            .render(),
        LineChart::new("huge", "x", "y")
            .series("a", vec![(0.0, -1e300), (1.0, 1e300)])
            .render(),
        BarChart::new("no categories", "y").render(),
        BarChart {
            title: "bars".into(),
            y_label: "y".into(),
            x_label: "x".into(),
            categories: vec!["a".into(), "b".into(), "c".into()],
            groups: vec![
                ("g1".into(), vec![1.0, f64::NAN, -2.0]),
                ("short".into(), vec![0.5]),
                ("long".into(), vec![1.0, 2.0, 3.0, 4.0]),
            ],
        }
        .render(),
        BarChart {
            title: "all zero".into(),
            y_label: "y".into(),
            x_label: String::new(),
            categories: vec!["a".into()],
            groups: vec![("g".into(), vec![0.0])],
        }
        .render(),
    ];
    for svg in &charts {
        assert_svg_sane(svg);
    }
    // An isolated point still gets a mark.
    assert!(charts[2].contains("<circle"));
    // A NaN breaks the line in two instead of being drawn.
    assert_eq!(charts[4].matches("<polyline").count(), 1);
    assert_eq!(charts[4].matches("<circle").count(), 3);
}

#[test]
fn charts_escape_text_and_use_nice_ticks() {
    let mut chart = LineChart::new("a <b> & \"c\"", "x & y", "<y>");
    chart.series.push(Series::new(
        "s<1>",
        (0..=10).map(|i| (i as f64, 3.0 + 9.4 * i as f64)).collect(),
    ));
    let svg = chart.render();
    assert_svg_sane(&svg);
    assert!(svg.contains("a &lt;b&gt; &amp; &quot;c&quot;"));
    assert!(svg.contains("s&lt;1&gt;"));
    assert!(!svg.contains("<b>"));
    // y from 3 to 97 → ticks 0, 20, ..., 100; x from 0 to 10 → 0, 2, ..., 10.
    for tick in [">0<", ">20<", ">40<", ">100<", ">2<", ">10<"] {
        assert!(svg.contains(tick), "missing tick {tick}");
    }
    // Distinct colors for distinct series.
    let two = LineChart::new("t", "x", "y")
        .series("a", vec![(0.0, 1.0), (1.0, 2.0)])
        .series("b", vec![(0.0, 2.0), (1.0, 1.0)])
        .render();
    assert!(two.contains("#0072B2") && two.contains("#D55E00"));
}

#[test]
fn many_clients_and_long_runs_render() {
    let dir = temp_dir("large");
    let rows: Vec<Value> = (1..=200)
        .map(|r| {
            let acc = 0.5 + 0.4 * (1.0 - (-(r as f64) / 40.0).exp());
            metric(r, acc, acc - 0.2, (r % 7 != 0).then_some(acc - 0.1))
        })
        .collect();
    write_metrics(&dir, &rows);
    let clients: Vec<Value> = (0..100)
        .map(|k| {
            json!({"client": k, "profile": "phone", "personalized_acc": 0.5 + 0.004 * k as f64,
                   "global_acc": 0.6})
        })
        .collect();
    write_report(&dir, &json!({"algorithm": "fedavg", "clients": clients}));
    write_run_report(&dir).unwrap();
    let bars = read(&dir.join("clients.svg"));
    assert_svg_sane(&bars);
    assert_eq!(bars.matches("<rect").count(), 1 + 2 + 200); // background, legend, bars
                                                            // Crowded labels are thinned out rather than overlapping: 100 clients, fewer labels.
    let labels = bars.matches("text-anchor=\"middle\" fill").count();
    assert!(labels < 60, "{labels} category labels");
    let lines = read(&dir.join("acc_vs_round.svg"));
    assert_svg_sane(&lines);
    // Every 7th round has no global model accuracy: its series has a point per other round.
    assert!(lines.contains("global model"));
    let md = read(&dir.join("report.md"));
    assert!(md.contains("| Clients | 100 |"));
    assert!(md.contains("| 99 | phone |"));
    let _ = std::fs::remove_dir_all(&dir);
}
