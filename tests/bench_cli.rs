//! `flexp-run bench` on the real MiniLM checkpoint: one JSON line with the keys the PyTorch
//! reference prints and consistent arithmetic, the algorithm actually trains during the timed
//! round, and bad sizes are refused with a message (exit 2, nothing on stdout).

use flexp::backend::cpu::Cpu;
use flexp::model::load_model;
use flexp::run::bench::{bench_round, BenchSpec};
use std::path::PathBuf;
use std::process::Command;

fn model() -> PathBuf {
    let m = PathBuf::from(env!("CARGO_MANIFEST_DIR")).join("models/all-MiniLM-L6-v2");
    assert!(
        m.join("model.safetensors").exists(),
        "run `bash tools/fetch_minilm.sh` first"
    );
    m
}

fn bench(args: &[&str]) -> std::process::Output {
    Command::new(env!("CARGO_BIN_EXE_flexp-run"))
        .args(["--threads", "2", "--backend", "cpu", "bench", "--model"])
        .arg(model())
        .args(args)
        .output()
        .unwrap()
}

#[test]
fn prints_one_json_line_with_consistent_numbers() {
    let out = bench(&[
        "--clients",
        "3",
        "--batch",
        "2",
        "--seq",
        "8",
        "--steps",
        "2",
        "--rank",
        "4",
        "--split",
        "1,5",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let stdout = String::from_utf8(out.stdout).unwrap();
    let lines: Vec<&str> = stdout.lines().collect();
    assert_eq!(lines.len(), 1, "{stdout}");
    let v: serde_json::Value = serde_json::from_str(lines[0]).unwrap();
    for key in [
        "clients",
        "batch",
        "seq",
        "steps",
        "tokens",
        "seconds",
        "tokens_per_s",
    ] {
        assert!(v.get(key).is_some(), "missing {key}: {v}");
    }
    assert_eq!(v["tokens"], 3 * 2 * 2 * 8);
    let (t, s, r) = (
        v["tokens"].as_f64().unwrap(),
        v["seconds"].as_f64().unwrap(),
        v["tokens_per_s"].as_f64().unwrap(),
    );
    assert!(s > 0.0 && (r - t / s).abs() <= 1e-9 * r, "{v}");
    assert_eq!(v["backend"], "cpu");
    assert_eq!(v["threads"], 2);
    assert_eq!(v["precision"], "f32");
}

#[test]
fn bf16_precision_is_reported_and_trains() {
    let out = bench(&[
        "--clients",
        "2",
        "--batch",
        "2",
        "--seq",
        "8",
        "--steps",
        "1",
        "--split",
        "3",
        "--precision",
        "bf16",
    ]);
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert!(out.status.success(), "{stderr}");
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    assert_eq!(v["precision"], "bf16");
    let loss = v["loss"].as_f64().unwrap();
    assert!((loss - std::f64::consts::LN_2).abs() < 0.3, "{v}");
}

#[test]
fn the_timed_round_runs_real_training_steps() {
    // The bench must time real training, not a no-op: every client's steps produce a loss, and
    // with random binary labels the cross-entropy of a near-initial head is close to ln 2.
    let be = Cpu;
    let m = load_model(&be, &model()).unwrap();
    let spec = BenchSpec {
        clients: 2,
        batch: 2,
        seq: 6,
        steps: 1,
        rank: 2,
        split: vec![2, 3],
        seed: 1,
    };
    let r = bench_round(&be, &m, &spec).unwrap();
    assert_eq!(r.tokens, 2 * 2 * 6);
    assert!(r.seconds > 0.0);
    assert!(
        (r.loss - std::f64::consts::LN_2).abs() < 0.3,
        "loss {}",
        r.loss
    );
}

#[test]
fn bad_sizes_are_refused_with_a_message() {
    for (args, needle) in [
        (vec!["--split", "0"], "cut 0 is outside 1..5"),
        (vec!["--split", "6"], "cut 6 is outside 1..5"),
        (vec!["--seq", "600"], "exceeds the model's 512 positions"),
        (vec!["--clients", "0"], "--clients must be at least 1"),
        (vec!["--precision", "fp8"], "unknown precision `fp8`"),
    ] {
        let out = bench(&args);
        let stderr = String::from_utf8_lossy(&out.stderr);
        assert_eq!(out.status.code(), Some(2), "{args:?}: {stderr}");
        assert!(stderr.contains(needle), "{args:?}: {stderr}");
        assert!(out.stdout.is_empty());
    }
}

#[test]
fn help_names_exactly_the_keys_the_json_line_writes() {
    let help = Command::new(env!("CARGO_BIN_EXE_flexp-run"))
        .args(["bench", "--help"])
        .output()
        .unwrap();
    let help = String::from_utf8_lossy(&help.stdout).to_string();
    let named: Vec<&str> = help
        .split('`')
        .skip(1)
        .step_by(2)
        .filter(|w| w.chars().all(|c| c.is_ascii_lowercase() || c == '_'))
        .collect();
    assert!(
        named.len() >= 10,
        "help names too few keys: {named:?}\n{help}"
    );
    let out = bench(&[
        "--clients",
        "1",
        "--batch",
        "1",
        "--seq",
        "4",
        "--steps",
        "1",
        "--rank",
        "2",
    ]);
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let v: serde_json::Value = serde_json::from_slice(&out.stdout).unwrap();
    let keys: Vec<&String> = v.as_object().unwrap().keys().collect();
    for k in &named {
        assert!(
            v.get(*k).is_some(),
            "help names `{k}`, the JSON line has {keys:?}"
        );
    }
    for k in &keys {
        assert!(
            k.as_str() == "impl" || named.contains(&k.as_str()),
            "help does not name `{k}`"
        );
    }
    // The machine beside the numbers: the CPU model as /proc/cpuinfo has it, and the ISA list.
    let cpuinfo = std::fs::read_to_string("/proc/cpuinfo").unwrap_or_default();
    let cpu = v["cpu"].as_str().unwrap();
    assert!(
        !cpu.is_empty() && (cpuinfo.is_empty() || cpuinfo.contains(cpu)),
        "{cpu}"
    );
    assert!(v["isa"].is_array(), "{v}");
    assert!(v["kernel"].is_string(), "{v}");
}
