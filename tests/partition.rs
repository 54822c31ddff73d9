//! `flexp-run partition` writes exactly the split `flexp-run train` uses: every client's rows
//! (read back with an ordinary CSV reader, texts with quotes, commas, newlines and non-ASCII
//! intact), each row in exactly one client file, the global test set as the union of the test
//! rows, and per-client counts equal to those of a training run's report on the same config.

mod common;

use common::root;
use flexp::run::runner::split_data;
use flexp::run::{LogProgress, RawConfig};
use serde_json::Value;
use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::process::Command;

fn tmp(name: &str) -> PathBuf {
    let d = std::env::temp_dir().join(format!("flexp-partition-{name}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&d);
    std::fs::create_dir_all(&d).unwrap();
    d
}

/// 60 rows over three labels and six movies, with texts a careless CSV writer would break.
fn write_data(dir: &Path) -> PathBuf {
    let mut w = csv::Writer::from_path(dir.join("data.csv")).unwrap();
    w.write_record(["review", "label", "movie"]).unwrap();
    let labels = ["pos", "neg", "mid"];
    for i in 0..60 {
        let text = match i % 4 {
            0 => format!("plain review {i}"),
            1 => format!("says \"wow\", then {i}"),
            2 => format!("two\nlines {i}"),
            _ => format!("café ünïcode — {i}"),
        };
        w.write_record([text.as_str(), labels[i % 3], &format!("m{}", i % 6)])
            .unwrap();
    }
    w.flush().unwrap();
    dir.join("data.csv")
}

fn sets(data: &Path, partition: &str, seed: u64) -> Vec<String> {
    let m = root().join("models/all-MiniLM-L6-v2");
    [
        format!("model=\"{}\"", m.display()),
        format!("data.path=\"{}\"", data.display()),
        "data.text_column=\"review\"".into(),
        "data.label_column=\"label\"".into(),
        format!("partition=\"{partition}\""),
        "clients=4".into(),
        format!("seed={seed}"),
        "test_fraction=0.25".into(),
    ]
    .into_iter()
    .flat_map(|s| ["--set".to_string(), s])
    .collect()
}

fn flexp(args: &[String]) -> std::process::Output {
    let o = Command::new(env!("CARGO_BIN_EXE_flexp-run"))
        .args(args)
        .output()
        .unwrap();
    assert!(
        o.status.success(),
        "flexp-run {args:?} failed:\n{}",
        String::from_utf8_lossy(&o.stderr)
    );
    o
}

/// (text, label, split) rows of a written CSV.
fn rows(path: &Path) -> Vec<BTreeMap<String, String>> {
    let mut r = csv::Reader::from_path(path).unwrap();
    let header: Vec<String> = r.headers().unwrap().iter().map(str::to_string).collect();
    r.records()
        .map(|rec| {
            header
                .iter()
                .cloned()
                .zip(rec.unwrap().iter().map(str::to_string))
                .collect()
        })
        .collect()
}

fn partition(data: &Path, out: &Path, partition: &str, seed: u64) -> Value {
    let mut args = vec!["--quiet".to_string(), "partition".to_string()];
    args.extend(sets(data, partition, seed));
    args.extend(["--out".to_string(), out.display().to_string()]);
    flexp(&args);
    serde_json::from_str(&std::fs::read_to_string(out.join("partition.json")).unwrap()).unwrap()
}

#[test]
fn partition_files_hold_exactly_the_simulations_split() {
    let d = tmp("exact");
    let data = write_data(&d);
    for (scheme, seed) in [("dirichlet:0.5", 7), ("column:movie", 3), ("iid", 11)] {
        let out = d.join(scheme.replace(':', "_"));
        let manifest = partition(&data, &out, scheme, seed);
        assert_eq!(
            manifest["classes"],
            serde_json::json!(["mid", "neg", "pos"])
        );
        // The split the simulation computes for the same configuration.
        let mut raw = RawConfig::default();
        for kv in sets(&data, scheme, seed).chunks(2) {
            raw.set(&kv[1]).unwrap();
        }
        let cfg = raw.resolve().unwrap();
        let (ds, splits) = split_data(&cfg, &mut LogProgress).unwrap();
        let mut seen = vec![0usize; ds.len()];
        let mut global = Vec::new();
        for (k, s) in splits.iter().enumerate() {
            let got = rows(&out.join(format!("client-{k}.csv")));
            let want: Vec<(usize, &str)> = s
                .train
                .iter()
                .map(|&i| (i, "train"))
                .chain(s.test.iter().map(|&i| (i, "test")))
                .collect();
            assert_eq!(got.len(), want.len(), "{scheme}: client {k} rows");
            for (g, &(i, split)) in got.iter().zip(&want) {
                assert_eq!(g["review"], ds.texts[i], "{scheme}: client {k}");
                assert_eq!(g["label"], ds.label_names[ds.labels[i]]);
                assert_eq!(g["flexp_split"], split);
                seen[i] += 1;
                if split == "test" {
                    global.push(g["review"].clone());
                }
            }
            let f = &manifest["files"][k];
            assert_eq!(
                (f["train"].as_u64(), f["test"].as_u64()),
                (Some(s.train.len() as u64), Some(s.test.len() as u64))
            );
            if scheme == "column:movie" {
                // The group column travels too, and a movie belongs to one client.
                assert!(got.iter().all(|r| r.contains_key("movie")));
            }
        }
        assert!(
            seen.iter().all(|&n| n == 1),
            "{scheme}: every row in exactly one client file"
        );
        // The source rows themselves, read independently, are what the files hold.
        let source: Vec<String> = rows(&data)
            .into_iter()
            .map(|r| r["review"].clone())
            .collect();
        let mut written: Vec<String> = (0..4)
            .flat_map(|k| rows(&out.join(format!("client-{k}.csv"))))
            .map(|r| r["review"].clone())
            .collect();
        written.sort();
        let mut source_sorted = source.clone();
        source_sorted.sort();
        assert_eq!(
            written, source_sorted,
            "{scheme}: the files hold the data set's rows"
        );
        let mut g: Vec<String> = rows(&out.join("global_test.csv"))
            .into_iter()
            .map(|r| r["review"].clone())
            .collect();
        g.sort();
        global.sort();
        assert_eq!(
            g, global,
            "{scheme}: global test = union of client test rows"
        );
    }
    // Another seed, another split.
    let a = partition(&data, &d.join("s1"), "dirichlet:0.5", 1);
    let b = partition(&data, &d.join("s2"), "dirichlet:0.5", 2);
    assert_ne!(a["files"], b["files"]);
    std::fs::remove_dir_all(&d).ok();
}

/// A training run's report counts the same rows per client as the partition's manifest.
#[test]
fn a_training_run_uses_the_written_split() {
    let d = tmp("train");
    let data = write_data(&d);
    let manifest = partition(&data, &d.join("parts"), "dirichlet:0.5", 5);
    let mut args = vec!["--quiet".to_string(), "train".to_string()];
    args.extend(sets(&data, "dirichlet:0.5", 5));
    for s in [
        "rounds=1",
        "local_steps=1",
        "batch_size=2",
        "seq_len=8",
        "lora.rank=2",
        "split=[1]",
        "eval.global_max=4",
    ] {
        args.extend(["--set".to_string(), s.to_string()]);
    }
    args.extend([
        "--set".to_string(),
        format!("out=\"{}\"", d.join("run").display()),
    ]);
    flexp(&args);
    let report: Value =
        serde_json::from_str(&std::fs::read_to_string(d.join("run/report.json")).unwrap()).unwrap();
    let clients = report["clients"].as_array().unwrap();
    assert_eq!(clients.len(), 4);
    for (c, f) in clients.iter().zip(manifest["files"].as_array().unwrap()) {
        assert_eq!(c["train_examples"], f["train"]);
        assert_eq!(c["test_examples"], f["test"]);
    }
    std::fs::remove_dir_all(&d).ok();
}

#[test]
fn a_configuration_without_data_is_refused_by_key() {
    let o = Command::new(env!("CARGO_BIN_EXE_flexp-run"))
        .args(["partition", "--out", "/tmp/flexp-partition-none"])
        .output()
        .unwrap();
    assert!(!o.status.success());
    let e = String::from_utf8_lossy(&o.stderr);
    assert!(e.contains("data.path"), "{e}");
}
