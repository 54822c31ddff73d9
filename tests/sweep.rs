//! `flexp-run sweep` end to end on the real MiniLM checkpoint with a small generated data set:
//! a sweep killed inside its first run finishes when started again (resuming that run), a
//! finished sweep is not run twice, a run folder made with other settings is refused, and the
//! comparison's means, 95% intervals and paired tests agree with the same statistics computed
//! here from each run's report.json.

mod common;

use common::{root, write_reviews as write_data};
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flexp-sweep-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn sweep_file(dir: &Path, data: &Path, rounds: usize) -> PathBuf {
    let model = root().join("models/all-MiniLM-L6-v2");
    assert!(
        model.join("model.safetensors").exists(),
        "run `bash tools/fetch_minilm.sh` first"
    );
    let text = format!(
        r#"out = "{out}"
reference = "flexp-sfl"

[set]
model = "{model}"
partition = "column:movie"
clients = 3
rounds = {rounds}
local_steps = 1
batch_size = 4
seq_len = 16
"lora.rank" = 2
eval_every = 2
split = [1, 2, 3]

[set.data]
path = "{data}"
text_column = "review"
label_column = "label"

[grid]
algorithm = ["flexp-sfl", "local"]
seed = [0, 1, 2]
"#,
        out = dir.join("out").display(),
        model = model.display(),
        data = data.display(),
    );
    let p = dir.join("sweep.toml");
    std::fs::write(&p, text).unwrap();
    p
}

fn flexp(file: &Path, env: Option<(&str, &str)>) -> Output {
    let mut c = Command::new(env!("CARGO_BIN_EXE_flexp-run"));
    c.args(["--quiet", "--threads", "2", "sweep"]).arg(file);
    if let Some((k, v)) = env {
        c.env(k, v);
    }
    c.output().unwrap()
}

fn stderr(o: &Output) -> String {
    String::from_utf8_lossy(&o.stderr).into_owned()
}

fn report(dir: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(dir.join("report.json")).unwrap()).unwrap()
}

/// t(0.05, 2), from the closed form of Student's t with two degrees of freedom:
/// P(|T| ≥ t) = 1 − t / sqrt(2 + t²).
fn t95_df2() -> f64 {
    (1.805f64 / 0.0975).sqrt()
}

fn mean_sd(x: &[f64]) -> (f64, f64) {
    let m = x.iter().sum::<f64>() / x.len() as f64;
    let v = x.iter().map(|v| (v - m).powi(2)).sum::<f64>() / (x.len() - 1) as f64;
    (m, v.sqrt())
}

#[test]
fn sweep_resumes_skips_refuses_and_reports_intervals() {
    let d = tmp("main");
    let data = write_data(&d);
    let file = sweep_file(&d, &data, 2);
    let runs = d.join("out/runs");

    // Killed right after the first run's round-1 checkpoint, as a crash would stop it.
    let o = flexp(&file, Some(("FLEXP_ABORT_AFTER_CHECKPOINT", "1")));
    assert!(!o.status.success(), "the abort hook must stop the sweep");
    assert!(runs.join("flexp-sfl-s0/checkpoint/meta.json").exists());
    assert!(!runs.join("flexp-sfl-s0/report.json").exists());

    // Started again: that run resumes, the other five run, the report is written.
    let o = flexp(&file, None);
    assert!(o.status.success(), "{}", stderr(&o));
    let e = stderr(&o);
    assert!(
        e.contains("run 1/6 (algorithm=flexp-sfl, seed=0), resuming"),
        "{e}"
    );
    assert!(
        e.contains("6 runs finished now, 0 were already done"),
        "{e}"
    );
    let r0 = report(&runs.join("flexp-sfl-s0"));
    assert_eq!(r0["rounds"], 2);

    // Once more: nothing is run again and no run is rewritten.
    let before = std::fs::metadata(runs.join("local-s2/report.json"))
        .unwrap()
        .modified()
        .unwrap();
    let o = flexp(&file, None);
    assert!(o.status.success(), "{}", stderr(&o));
    assert!(
        stderr(&o).contains("0 runs finished now, 6 were already done"),
        "{}",
        stderr(&o)
    );
    let after = std::fs::metadata(runs.join("local-s2/report.json"))
        .unwrap()
        .modified()
        .unwrap();
    assert_eq!(before, after);

    // The comparison, recomputed here from the runs' own reports.
    let md = std::fs::read_to_string(d.join("out/sweep.md")).unwrap();
    let csv = std::fs::read_to_string(d.join("out/sweep.csv")).unwrap();
    let acc = |algo: &str| -> Vec<f64> {
        (0..3)
            .map(|s| {
                report(&runs.join(format!("{algo}-s{s}")))["summary"]["personalized_acc_mean"]
                    .as_f64()
                    .unwrap()
            })
            .collect()
    };
    for algo in ["flexp-sfl", "local"] {
        let (m, sd) = mean_sd(&acc(algo));
        let half = t95_df2() * sd / 3f64.sqrt();
        let row = csv
            .lines()
            .find(|l| l.contains(&format!(",{algo},")) && l.contains(",personalized,"))
            .unwrap_or_else(|| panic!("no csv row for {algo}: {csv}"));
        let f: Vec<&str> = row.split(',').collect();
        let got: Vec<f64> = f[f.len() - 3..]
            .iter()
            .map(|x| x.parse().unwrap())
            .collect();
        assert_eq!(f[2], "3", "{row}");
        for (g, w) in got.iter().zip([m, m - half, m + half]) {
            assert!((g - w).abs() < 1e-9, "{algo}: {got:?} vs {m} ± {half}");
        }
        assert!(
            md.contains(&format!(
                "{:.1} [{:.1}, {:.1}]",
                100.0 * m,
                100.0 * (m - half),
                100.0 * (m + half)
            )),
            "{md}"
        );
    }
    // The paired test of local against flexp-sfl on personalized accuracy.
    let diffs: Vec<f64> = acc("local")
        .iter()
        .zip(acc("flexp-sfl"))
        .map(|(a, b)| a - b)
        .collect();
    let (m, sd) = mean_sd(&diffs);
    let line = md
        .lines()
        .find(|l| l.starts_with("| local | personalized |"))
        .unwrap_or_else(|| panic!("no test row: {md}"));
    assert!(
        line.contains(&format!("| {:+.1} |", 100.0 * m)),
        "{line} (mean {m})"
    );
    if sd > 0.0 {
        let t = m / (sd / 3f64.sqrt());
        let p = 1.0 - t.abs() / (2.0 + t * t).sqrt();
        assert!(line.contains(&format!("| {p:.3} |")), "{line} (p {p})");
    }
    assert!(
        md.contains("Holm") && md.contains("**personalized**"),
        "{md}"
    );
    assert!(runs.join("comparison.md").exists());

    // A changed setting must not be mixed with the runs made before.
    let file = sweep_file(&d, &data, 3);
    let o = flexp(&file, None);
    assert_eq!(o.status.code(), Some(2));
    let e = stderr(&o);
    assert!(
        e.contains("made with other settings") && e.contains("rounds = 2"),
        "{e}"
    );
}

#[test]
fn report_before_any_run_counts_zero_seconds_not_minus_zero() {
    // The run time is a sum over no runs: 0, printed without a sign (a float sum of nothing is
    // -0.0 in Rust, which printed as "-0 s").
    let d = tmp("empty");
    let data = write_data(&d);
    let file = sweep_file(&d, &data, 2);
    let o = Command::new(env!("CARGO_BIN_EXE_flexp-run"))
        .args(["--quiet", "sweep", "--report-only"])
        .arg(&file)
        .output()
        .unwrap();
    assert!(o.status.success(), "{}", stderr(&o));
    let md = std::fs::read_to_string(d.join("out/sweep.md")).unwrap();
    assert!(
        md.contains("0 of 6 runs finished (6 missing") && md.contains("runs 0 s (0.0 h) in all"),
        "{md}"
    );
}
