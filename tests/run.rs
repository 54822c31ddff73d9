//! `flexp-run train / plan / compare` end to end on the real MiniLM checkpoint with a small
//! generated data set: the run folder's contents and interface keys, kill-and-resume giving the
//! same metrics as an uninterrupted run, determinism, and clear errors for bad settings.

mod common;

use common::{root, write_reviews as write_data};
use flexp::run::RawConfig;
use serde_json::Value;
use std::path::{Path, PathBuf};
use std::process::{Command, Output};

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flexp-run-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

fn model() -> PathBuf {
    let m = root().join("models/all-MiniLM-L6-v2");
    assert!(
        m.join("model.safetensors").exists(),
        "run `bash tools/fetch_minilm.sh` first"
    );
    m
}

fn base_args(data: &Path, out: &Path) -> Vec<String> {
    let sets = [
        format!("model={}", toml_str(&model())),
        format!("data.path={}", toml_str(data)),
        "data.text_column=\"review\"".into(),
        "data.label_column=\"label\"".into(),
        "partition=\"column:movie\"".into(),
        "clients=3".into(),
        "rounds=6".into(),
        "local_steps=1".into(),
        "batch_size=4".into(),
        "seq_len=16".into(),
        "lora.rank=2".into(),
        "eval_every=2".into(),
        "eval.global_max=12".into(),
        "split=[1, 2, 4]".into(),
        format!("out={}", toml_str(out)),
    ];
    let mut v = vec!["--quiet".to_string(), "train".to_string()];
    for s in sets {
        v.push("--set".into());
        v.push(s);
    }
    v
}

fn toml_str(p: &Path) -> String {
    format!("\"{}\"", p.display())
}

fn flexp(args: &[String]) -> Output {
    Command::new(env!("CARGO_BIN_EXE_flexp-run"))
        .args(args)
        .output()
        .unwrap()
}

fn ok(o: &Output) {
    assert!(
        o.status.success(),
        "flexp-run failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
}

fn json(path: &Path) -> Value {
    serde_json::from_str(&std::fs::read_to_string(path).unwrap()).unwrap()
}

/// metrics.jsonl without the wall-clock field.
fn metrics(dir: &Path) -> Vec<Value> {
    std::fs::read_to_string(dir.join("metrics.jsonl"))
        .unwrap()
        .lines()
        .map(|l| {
            let mut v: Value = serde_json::from_str(l).unwrap();
            v.as_object_mut().unwrap().remove("wall_seconds");
            v
        })
        .collect()
}

fn summary_without_wall(dir: &Path) -> Value {
    let mut r = json(&dir.join("report.json"));
    r["summary"].as_object_mut().unwrap().remove("wall_seconds");
    r
}

#[test]
fn train_writes_the_documented_run_folder() {
    let d = tmp("folder");
    let data = write_data(&d);
    let out = d.join("run");
    let o = flexp(&base_args(&data, &out));
    ok(&o);
    for f in [
        "config.toml",
        "metrics.jsonl",
        "report.json",
        "report.md",
        "plan.json",
        "acc_vs_round.svg",
        "acc_vs_time.svg",
        "clients.svg",
    ] {
        assert!(out.join(f).exists(), "{f} missing");
    }
    let r = json(&out.join("report.json"));
    assert_eq!(r["algorithm"], "flexp-sfl");
    assert_eq!(r["rounds"], 6);
    let s = &r["summary"];
    for k in [
        "personalized_acc_mean",
        "personalized_acc_std",
        "personalized_acc_min",
        "global_acc_mean",
        "global_model_acc",
        "bytes_up_per_client",
        "bytes_down_per_client",
        "client_flops_mean",
        "simulated_seconds",
        "wall_seconds",
    ] {
        assert!(s[k].is_number(), "summary.{k} = {}", s[k]);
    }
    let clients = r["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 3);
    assert_eq!(
        clients
            .iter()
            .map(|c| c["split"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![1, 2, 4]
    );
    for c in clients {
        assert!(c["train_examples"].as_u64().unwrap() > 0 && c["personalized_acc"].is_number());
        assert!(
            c["bytes_up"].as_f64().unwrap() > 0.0,
            "split clients send activations"
        );
    }
    // Deeper cuts cost the client more FLOPs.
    let f: Vec<f64> = clients
        .iter()
        .map(|c| c["flops"].as_f64().unwrap())
        .collect();
    assert!(f[0] < f[1] && f[1] < f[2], "{f:?}");
    let m = metrics(&out);
    assert_eq!(
        m.iter()
            .map(|l| l["round"].as_u64().unwrap())
            .collect::<Vec<_>>(),
        vec![2, 4, 6]
    );
    // Each client's personalized adapters in PEFT's format: every block of MiniLM adapted on
    // the default targets (flexp-sfl's client part and server part together), plus its head.
    for k in 0..3 {
        let a = out.join(format!("adapters/client-{k}"));
        let c = json(&a.join("adapter_config.json"));
        assert_eq!(c["peft_type"], "LORA");
        assert_eq!(c["r"], 2);
        assert_eq!(
            c["layers_to_transform"],
            serde_json::json!([0, 1, 2, 3, 4, 5])
        );
        let bytes = std::fs::read(a.join("adapter_model.safetensors")).unwrap();
        let st = safetensors::SafeTensors::deserialize(&bytes).unwrap();
        assert_eq!(st.names().len(), 6 * 6 * 2, "6 blocks x 6 targets x (A, B)");
        let q = st
            .tensor("base_model.model.encoder.layer.5.attention.self.query.lora_B.weight")
            .unwrap();
        assert_eq!(q.shape(), [384, 2]);
        assert!(a.join("classifier.safetensors").exists());
    }
    assert!(out.join("adapters/global/adapter_config.json").exists());
    // The resolved config reads back to the same configuration.
    let text = std::fs::read_to_string(out.join("config.toml")).unwrap();
    let cfg = RawConfig::from_toml(&text).unwrap().resolve().unwrap();
    assert_eq!(cfg.clients, 3);
    assert_eq!(cfg.out, out);
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("acc_vs_round.svg") && md.contains("flexp-sfl"),
        "{md}"
    );
    // Refuses to overwrite a finished run.
    let again = flexp(&base_args(&data, &out));
    assert_eq!(again.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&again.stderr).contains("already holds a run"));
}

#[test]
fn killed_run_resumes_to_the_same_metrics() {
    let d = tmp("resume");
    let data = write_data(&d);
    let full = d.join("full");
    ok(&flexp(&base_args(&data, &full)));

    // The run dies right after round 2's checkpoint, as a kill would (no unwinding, nothing
    // cleaned up): a fixed point, not a race against a polling timer.
    let cut = d.join("cut");
    let killed = Command::new(env!("CARGO_BIN_EXE_flexp-run"))
        .args(base_args(&data, &cut))
        .env("FLEXP_ABORT_AFTER_CHECKPOINT", "2")
        .output()
        .unwrap();
    assert!(!killed.status.success(), "the run should have been aborted");
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(cut.join("checkpoint/meta.json")).unwrap())
            .unwrap();
    assert_eq!(meta["round"], 2, "{meta}");
    assert_eq!(
        metrics(&cut),
        metrics(&full)[..1],
        "the killed run wrote round 2's evaluation"
    );
    assert!(!cut.join("report.json").exists(), "killed before the end");

    let o = flexp(&[
        "--quiet".into(),
        "train".into(),
        "--resume".into(),
        cut.display().to_string(),
    ]);
    ok(&o);
    assert!(String::from_utf8_lossy(&o.stderr).contains("resuming after round"));
    assert_eq!(
        metrics(&cut),
        metrics(&full),
        "resumed metrics differ from the uninterrupted run"
    );
    let (a, b) = (summary_without_wall(&cut), summary_without_wall(&full));
    assert_eq!(a["summary"], b["summary"]);
    assert_eq!(a["clients"], b["clients"]);
}

/// A run folder another process is writing is refused, not written by two processes at once
/// (their metrics lines and checkpoints would interleave).
#[test]
fn a_folder_in_use_by_another_process_is_refused() {
    let d = tmp("locked");
    let data = write_data(&d);
    let out = d.join("run");
    let mut args = base_args(&data, &out);
    args.extend(["--set".into(), "rounds=2".into()]);
    ok(&flexp(&args));
    std::fs::remove_file(out.join("report.json")).unwrap();
    // This test process plays the other writer.
    let held = flexp::fsutil::lock_dir(&out).unwrap();
    let o = flexp(&[
        "--quiet".into(),
        "train".into(),
        "--resume".into(),
        out.display().to_string(),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("in use by another flexp-run process"), "{e}");
    assert!(
        !out.join("report.json").exists(),
        "nothing written while locked"
    );
    drop(held);
    ok(&flexp(&[
        "--quiet".into(),
        "train".into(),
        "--resume".into(),
        out.display().to_string(),
    ]));
    assert!(out.join("report.json").exists());
}

#[test]
fn resume_without_checkpoint_is_refused() {
    let d = tmp("nockpt");
    let data = write_data(&d);
    let out = d.join("run");
    let mut args = base_args(&data, &out);
    args.extend(["--set".into(), "rounds=2".into()]);
    ok(&flexp(&args));
    std::fs::remove_dir_all(out.join("checkpoint")).unwrap();
    let o = flexp(&["train".into(), "--resume".into(), out.display().to_string()]);
    assert_eq!(o.status.code(), Some(2));
    assert!(String::from_utf8_lossy(&o.stderr).contains("no checkpoint to resume from"));
}

#[test]
fn same_seed_gives_identical_metrics_and_other_seed_differs() {
    let d = tmp("determinism");
    let data = write_data(&d);
    let mut runs = Vec::new();
    for (name, seed) in [("a", 1), ("b", 1), ("c", 2)] {
        let out = d.join(name);
        let mut args = base_args(&data, &out);
        args.extend([
            "--set".into(),
            format!("seed={seed}"),
            "--set".into(),
            "rounds=2".into(),
        ]);
        ok(&flexp(&args));
        runs.push(metrics(&out));
    }
    assert_eq!(
        runs[0], runs[1],
        "same config and seed must give bit-identical metrics"
    );
    assert_ne!(runs[0], runs[2], "a different seed should change something");
}

#[test]
fn every_algorithm_runs_end_to_end_and_compare_tabulates_them() {
    let d = tmp("algos");
    let data = write_data(&d);
    let mut dirs = Vec::new();
    for algo in [
        "flexp-sfl",
        "fedbip",
        "fedbip-l",
        "local",
        "fedavg",
        "sfl-v1",
        "sfl-v2",
        "pfedme",
        "ditto",
    ] {
        let out = d.join(algo);
        let mut args = base_args(&data, &out);
        args.extend([
            "--set".into(),
            format!("algorithm=\"{algo}\""),
            "--set".into(),
            "rounds=2".into(),
        ]);
        ok(&flexp(&args));
        assert_eq!(json(&out.join("report.json"))["algorithm"], algo);
        dirs.push(out.display().to_string());
    }
    let table = d.join("cmp.md");
    let mut args = vec!["compare".to_string()];
    args.extend(dirs);
    args.extend(["--output".into(), table.display().to_string()]);
    let o = flexp(&args);
    ok(&o);
    let md = std::fs::read_to_string(&table).unwrap();
    for algo in ["flexp-sfl", "fedbip-l", "sfl-v2", "ditto"] {
        assert!(md.contains(algo), "{algo} missing from the comparison");
    }
    assert!(d.join("cmp.svg").exists() && d.join("cmp.csv").exists());
}

#[test]
fn bad_settings_are_clear_errors() {
    let d = tmp("bad");
    let data = write_data(&d);
    let run = |extra: &[&str]| -> String {
        let mut args = base_args(&data, &d.join("never"));
        for e in extra {
            args.extend(["--set".into(), e.to_string()]);
        }
        let o = flexp(&args);
        assert_eq!(o.status.code(), Some(2), "should fail: {extra:?}");
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let e = run(&["algorithm=\"fedprox\""]);
    assert!(
        e.contains("unknown algorithm `fedprox`") && e.contains("sfl-v1"),
        "{e}"
    );
    let e = run(&["learning_rate=0.1"]);
    assert!(
        e.contains("unknown configuration key `learning_rate`") && e.contains("lr"),
        "{e}"
    );
    let e = run(&["round=3"]);
    assert!(e.contains("`round` (did you mean `rounds`?)"), "{e}");
    let e = run(&["data.label_colum=\"label\""]);
    assert!(e.contains("did you mean `data.label_column`?"), "{e}");
    let e = run(&["split=[1, 6, 2]"]);
    assert!(e.contains("client 1") && e.contains("valid splits"), "{e}");
    let e = run(&["align=\"cosine\""]);
    assert!(
        e.contains("unknown align `cosine`") && e.contains("proj"),
        "{e}"
    );
    let e = run(&[
        "split=\"auto\"",
        "profiles=[\"custom:compute=1e9,memory=1MiB,up=1MB/s,down=1MB/s\"]",
    ]);
    assert!(
        e.contains("cannot hold even one block") && e.contains("client 0"),
        "{e}"
    );
    let e = run(&["data.label_column=\"stars\""]);
    assert!(
        e.contains("stars") && e.contains("review"),
        "missing column must list the columns: {e}"
    );
    let e = run(&["clients=200", "partition=\"iid\""]);
    assert!(
        e.contains("90 examples cannot be split over 200 clients"),
        "{e}"
    );
    let e = run(&["partition=\"zipf:2\""]);
    assert!(e.contains("zipf") && e.contains("dirichlet"), "{e}");
}

#[test]
fn settings_that_would_mislead_are_refused_before_training() {
    let d = tmp("mislead");
    let data = write_data(&d);
    let run = |extra: &[&str]| -> String {
        let mut args = base_args(&data, &d.join("never"));
        for e in extra {
            args.extend(["--set".into(), e.to_string()]);
        }
        let o = flexp(&args);
        assert_eq!(o.status.code(), Some(2), "should fail: {extra:?}");
        String::from_utf8_lossy(&o.stderr).to_string()
    };
    let e = run(&["lora.alpha=0"]);
    assert!(e.contains("`lora.alpha` must be positive"), "{e}");
    let e = run(&["lora.alpha=-2.5"]);
    assert!(
        e.contains("`lora.alpha` must be positive") && e.contains("-2.5"),
        "{e}"
    );
    let e = run(&["lora.targets=[]"]);
    assert!(e.contains("`lora.targets` is empty"), "{e}");
    // u_tail is a FlexP-SFL setting: elsewhere it would only distort the cost accounting.
    let e = run(&["algorithm=\"fedavg\"", "u_tail=1"]);
    assert!(e.contains("`u_tail`") && e.contains("fedavg"), "{e}");
    // A client without test examples would make the personalized mean NaN.
    let e = run(&["test_fraction=0"]);
    assert!(
        e.contains("has no test examples") && e.contains("test_fraction"),
        "{e}"
    );
    let e = run(&["clients=50", "partition=\"iid\""]);
    assert!(e.contains("has no test examples"), "{e}");
    assert!(
        !d.join("never").exists(),
        "nothing may be written for a refused run"
    );
    // --threads 0 would silently mean "all cores" to the thread pool.
    let o = flexp(&["--threads".into(), "0".into(), "plan".into()]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("--threads") && e.contains("at least 1"), "{e}");
}

/// A user's own data set with nothing but its path and columns named: every label found is
/// used and nothing is capped (the bundled example's `data.labels` and `data.max_examples` live
/// in examples/rotten_tomatoes.toml, not in the keys' defaults), and the run's config.toml
/// records the classes trained on.
#[test]
fn own_data_set_needs_only_its_path_and_columns() {
    let d = tmp("own-data");
    // More rows than the example's cap of 3,000, in classes the example does not have.
    let animals = [
        ("cat", ["purrs", "naps", "meows"]),
        ("dog", ["barks", "fetches", "wags"]),
        ("bird", ["sings", "flies", "nests"]),
    ];
    let mut csv = String::from("sentence,animal\n");
    let rows = 3012;
    for i in 0..rows {
        let (label, verbs) = &animals[i % 3];
        csv.push_str(&format!(
            "it {} at {},{label}\n",
            verbs[(i / 3) % 3],
            i % 17
        ));
    }
    let data = d.join("animals.csv");
    std::fs::write(&data, csv).unwrap();
    let out = d.join("run");
    let mut args = vec!["--quiet".to_string(), "train".to_string()];
    for s in [
        format!("data.path={}", toml_str(&data)),
        "data.text_column=\"sentence\"".into(),
        "data.label_column=\"animal\"".into(),
        // Run size only: small enough for a test, nothing about the data.
        format!("model={}", toml_str(&model())),
        "clients=3".into(),
        "rounds=1".into(),
        "local_steps=1".into(),
        "batch_size=4".into(),
        "seq_len=12".into(),
        "lora.rank=2".into(),
        "split=[1]".into(),
        format!("out={}", toml_str(&out)),
    ] {
        args.extend(["--set".into(), s]);
    }
    let o = flexp(&args);
    ok(&o);
    let r = json(&out.join("report.json"));
    let clients = r["clients"].as_array().unwrap();
    let used: u64 = clients
        .iter()
        .map(|c| c["train_examples"].as_u64().unwrap() + c["test_examples"].as_u64().unwrap())
        .sum();
    assert_eq!(used, rows as u64, "every row is used, none capped");
    let text = std::fs::read_to_string(out.join("config.toml")).unwrap();
    let cfg = RawConfig::from_toml(&text).unwrap().resolve().unwrap();
    assert_eq!(cfg.labels, ["bird", "cat", "dog"], "{text}");
    assert_eq!(cfg.max_examples, 0, "{text}");
    assert_eq!(cfg.global_eval_max, 0, "{text}");
    assert_eq!(cfg.data_path, data);
}

/// U-shaped FlexP-SFL keeps the tail blocks and the head on the clients, so G is never trained
/// there: the run reports no global model (with the reason) instead of scoring an untrained head.
#[test]
fn u_shaped_run_reports_no_global_model_and_says_why() {
    let d = tmp("u-shaped");
    let data = write_data(&d);
    let out = d.join("run");
    let mut args = base_args(&data, &out);
    for s in ["u_tail=1", "rounds=2"] {
        args.extend(["--set".into(), s.into()]);
    }
    ok(&flexp(&args));
    let r = json(&out.join("report.json"));
    let s = &r["summary"];
    assert!(s["global_model_acc"].is_null(), "{s}");
    assert!(s["personalized_acc_mean"].is_number() && s["global_acc_mean"].is_number());
    let note = s["global_model_note"].as_str().unwrap_or_default();
    assert!(note.contains("U-shaped"), "{s}");
    for m in metrics(&out) {
        assert!(m["global_model_acc"].is_null(), "{m}");
    }
    let md = std::fs::read_to_string(out.join("report.md")).unwrap();
    assert!(
        md.contains("No global model: in the U-shaped split"),
        "{md}"
    );
}

/// Without `data.path` the run is refused with the key's name and the bundled example.
#[test]
fn missing_data_path_is_a_clear_error() {
    let d = tmp("no-data");
    let o = flexp(&[
        "--quiet".into(),
        "train".into(),
        "--set".into(),
        format!("out={}", toml_str(&d.join("never"))),
    ]);
    assert_eq!(o.status.code(), Some(2));
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(
        e.contains("`data.path` is not set") && e.contains("examples/rotten_tomatoes.toml"),
        "{e}"
    );
    assert!(!d.join("never").exists());
}

#[test]
fn plan_prints_the_split_table() {
    let o = flexp(&[
        "plan".into(),
        "--config".into(),
        root()
            .join("examples/rotten_tomatoes.toml")
            .display()
            .to_string(),
        "--set".into(),
        format!("model={}", toml_str(&model())),
        "--set".into(),
        "clients=4".into(),
    ]);
    ok(&o);
    let s = String::from_utf8_lossy(&o.stdout);
    assert!(s.contains("weak-phone") && s.contains("deadline"), "{s}");
    assert_eq!(
        s.lines()
            .filter(|l| l.trim_start().starts_with(char::is_numeric))
            .count(),
        4,
        "{s}"
    );
}

/// A GGUF decoder (tests/fixtures/gguf/tiny_llama.gguf: weights in 13 GGML types, a byte-level
/// BPE tokenizer in its metadata) trains with only `model` pointing at the file: the tokenizer
/// comes from the metadata, classification pools the last token, and the training loss falls on
/// a task its last token decides.
#[test]
fn a_gguf_decoder_trains_from_the_file_alone() {
    let d = tmp("gguf");
    let mut csv = String::from("text,label\n");
    let subjects = [
        "the film",
        "the plot",
        "the acting",
        "the story",
        "the script",
    ];
    for i in 0..240 {
        let (word, label) = if i % 2 == 0 {
            ("great", "good")
        } else {
            ("bad", "poor")
        };
        csv.push_str(&format!("{} is {word},{label}\n", subjects[i % 5]));
    }
    let data = d.join("reviews.csv");
    std::fs::write(&data, csv).unwrap();
    let out = d.join("run");
    let gguf = root().join("tests/fixtures/gguf/tiny_llama.gguf");
    let mut args = vec!["--quiet".to_string(), "train".to_string()];
    for s in [
        format!("model={}", toml_str(&gguf)),
        format!("data.path={}", toml_str(&data)),
        "data.text_column=\"text\"".into(),
        "data.label_column=\"label\"".into(),
        "clients=2".into(),
        "rounds=6".into(),
        "local_steps=2".into(),
        "batch_size=8".into(),
        "seq_len=16".into(),
        "lora.rank=2".into(),
        "eval_every=1".into(),
        "split=[1]".into(),
        format!("out={}", toml_str(&out)),
    ] {
        args.extend(["--set".into(), s]);
    }
    let o = flexp(&args);
    ok(&o);
    let m = metrics(&out);
    let loss = |r: &Value| r["train_loss"].as_f64().unwrap();
    let (first, last) = (loss(&m[0]), loss(&m[m.len() - 1]));
    assert!(
        last.is_finite() && last < 0.8 * first,
        "loss {first} -> {last}"
    );
    let acc = m[m.len() - 1]["personalized_acc_mean"].as_f64().unwrap();
    assert!(acc > 0.9, "personalized accuracy {acc}");
    let text = std::fs::read_to_string(out.join("config.toml")).unwrap();
    assert!(text.contains("tiny_llama.gguf"), "{text}");
}

/// Writes a prompt/response JSONL file: the response names the prompt's adjective.
fn write_lm_data(path: &Path) {
    let subjects = ["the film", "the plot", "the acting", "the story"];
    let mut s = String::new();
    for i in 0..160 {
        let (word, answer) = if i % 2 == 0 {
            ("great", "good")
        } else {
            ("dull", "poor")
        };
        s.push_str(&format!(
            "{{\"text\": \"{} is {word}\", \"answer\": \"{answer}\"}}\n",
            subjects[i % 4]
        ));
    }
    std::fs::write(path, s).unwrap();
}

fn lm_args(data: &Path, out: &Path, extra: &[&str]) -> Vec<String> {
    let gguf = root().join("tests/fixtures/gguf/tiny_llama.gguf");
    let mut args = vec!["--quiet".to_string(), "train".to_string()];
    let sets = [
        format!("model={}", toml_str(&gguf)),
        "task=\"causal_lm\"".into(),
        format!("data.path={}", toml_str(data)),
        "data.text_column=\"text\"".into(),
        "data.label_column=\"\"".into(),
        "data.response_column=\"answer\"".into(),
        "lm.prompt=\"{text} ->\"".into(),
        "lm.response=\" {response}\"".into(),
        "partition=\"iid\"".into(),
        "clients=2".into(),
        "rounds=24".into(),
        "local_steps=4".into(),
        "batch_size=8".into(),
        "seq_len=32".into(),
        "lora.rank=4".into(),
        "lr=0.005".into(),
        "eval_every=4".into(),
        "split=[1]".into(),
        format!("out={}", toml_str(out)),
    ];
    for s in sets.iter().map(String::as_str).chain(extra.iter().copied()) {
        args.extend(["--set".into(), s.to_string()]);
    }
    args
}

/// A causal-LM run on a GGUF decoder: prompt/response data without labels, the loss on the
/// response only; perplexity falls and greedy decoding learns to produce the answers (exact
/// match), per client and on the global test set, in metrics.jsonl and report.json.
#[test]
fn a_gguf_decoder_learns_a_causal_lm_task() {
    let d = tmp("causal-lm");
    let data = d.join("qa.jsonl");
    write_lm_data(&data);
    {
        let name = "vanilla";
        let out = d.join(name);
        let o = flexp(&lm_args(&data, &out, &[]));
        ok(&o);
        let m = metrics(&out);
        let f = |r: &Value, k: &str| {
            r[k].as_f64()
                .unwrap_or_else(|| panic!("{name}: {k} missing in {r}"))
        };
        let (first, last) = (&m[0], &m[m.len() - 1]);
        assert!(
            f(last, "personalized_ppl_mean") < 0.5 * f(first, "personalized_ppl_mean"),
            "{name}: perplexity {} -> {}",
            f(first, "personalized_ppl_mean"),
            f(last, "personalized_ppl_mean")
        );
        assert!(
            f(last, "personalized_ppl_max") >= f(last, "personalized_ppl_mean"),
            "{name}: the worst client's perplexity is the largest"
        );
        assert!(f(last, "global_ppl_mean") > 1.0);
        assert!(f(last, "personalized_ppl_mean") < 1.5);
        let em = f(last, "personalized_acc_mean");
        assert!(em > 0.9, "{name}: exact match {em}");
        assert!(
            f(last, "global_acc_mean") > 0.9,
            "{name}: on the global test set"
        );
        let report = json(&out.join("report.json"));
        assert_eq!(report["task"], "causal_lm");
        let s = &report["summary"];
        assert!(s["accuracy"].as_str().unwrap().contains("exact match"));
        for c in report["clients"].as_array().unwrap() {
            assert!(c["personalized_ppl"].as_f64().unwrap() >= 1.0, "{c}");
            assert!(c["global_ppl"].as_f64().unwrap() >= 1.0, "{c}");
        }
    }
}

/// A causal-LM configuration missing what it needs, or asking what cannot be done, is refused
/// before any training with the key named.
#[test]
fn causal_lm_settings_are_checked() {
    let d = tmp("causal-lm-bad");
    let data = d.join("qa.jsonl");
    write_lm_data(&data);
    let err = |extra: &[&str]| -> String {
        let o = flexp(&lm_args(&data, &d.join("run"), extra));
        assert!(!o.status.success(), "{extra:?} should be refused");
        assert!(!d.join("run").exists(), "a refused run leaves no folder");
        String::from_utf8_lossy(&o.stderr).into_owned()
    };
    let e = err(&["data.response_column=\"\""]);
    assert!(e.contains("data.response_column"), "{e}");
    let e = err(&["lm.prompt=\"{question}\""]);
    assert!(e.contains("lm.prompt") && e.contains("{question}"), "{e}");
    let e = err(&["lm.response=\"answer\""]);
    assert!(e.contains("{response}"), "{e}");
    let e = err(&["partition=\"dirichlet:0.5\""]);
    assert!(e.contains("no labels") && e.contains("iid"), "{e}");
    let e = err(&["task=\"classify\""]);
    assert!(e.contains("data.response_column"), "{e}");
    let e = err(&["task=\"translate\""]);
    assert!(e.contains("causal_lm"), "{e}");
    let e = err(&["lm.chat_template=true"]);
    assert!(e.contains("ships no chat template"), "{e}");
    let e = err(&["lm.chat_template=\"yes\""]);
    assert!(e.contains("lm.chat_template"), "{e}");
}

/// A progress that asks the run to stop after round `after` (as Ctrl-C in Python does).
struct StopAfter(usize, usize);

impl flexp::run::Progress for StopAfter {
    fn message(&mut self, _: &str) {}
    fn round(&mut self, round: usize, _: usize, _: f64, _: Option<&Value>) {
        self.1 = round;
    }
    fn stop_requested(&mut self) -> Option<String> {
        (self.1 >= self.0).then(|| "asked by the test".to_string())
    }
}

/// A stop request ends the run after a whole round with a checkpoint of it, and `--resume`
/// then finishes with the metrics of an uninterrupted run.
#[test]
fn a_stopped_run_resumes_to_the_same_metrics() {
    let d = tmp("stopped");
    let data = write_data(&d);
    let full = d.join("full");
    ok(&flexp(&base_args(&data, &full)));
    let cut = d.join("cut");
    let mut raw = RawConfig::default();
    for pair in base_args(&data, &cut)[2..].chunks(2) {
        raw.set(&pair[1]).unwrap();
    }
    let cfg = raw.resolve().unwrap();
    let e = flexp::run::run(
        &flexp::backend::cpu::Cpu,
        &cfg,
        &raw.resolved_toml(),
        false,
        &mut StopAfter(3, 0),
    )
    .err()
    .expect("the run should have stopped");
    assert!(
        matches!(e, flexp::Error::Interrupted { round: 3, .. }),
        "{e}"
    );
    let meta: Value =
        serde_json::from_str(&std::fs::read_to_string(cut.join("checkpoint/meta.json")).unwrap())
            .unwrap();
    assert_eq!(meta["round"], 3, "{meta}");
    assert!(!cut.join("report.json").exists());
    ok(&flexp(&[
        "--quiet".into(),
        "train".into(),
        "--resume".into(),
        cut.display().to_string(),
    ]));
    assert_eq!(metrics(&cut), metrics(&full));
}
