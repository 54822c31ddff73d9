//! Bad input gets a clear error that names the problem: corrupt, truncated or mismatched
//! checkpoints, unknown architectures, a foreign tokenizer, empty input, invalid jobs.

mod common;

use common::{fixture, root};
use flexp::backend::cpu::Cpu;
use flexp::executor::{Executor, Output, SeqInput, SeqJob};
use flexp::model::{load_model, AdapterSet, LoraConfig, Tokenizer};
use safetensors::{Dtype, SafeTensors};
use std::path::{Path, PathBuf};

/// A fresh copy of a fixture model folder under the system temp dir.
fn copy_fixture(name: &str, tag: &str) -> PathBuf {
    let dst = std::env::temp_dir().join(format!("flexp-bad-{tag}-{}", std::process::id()));
    let _ = std::fs::remove_dir_all(&dst);
    std::fs::create_dir_all(&dst).unwrap();
    for e in std::fs::read_dir(fixture(name)).unwrap() {
        let e = e.unwrap();
        std::fs::copy(e.path(), dst.join(e.file_name())).unwrap();
    }
    dst
}

type Tensors = Vec<(String, Dtype, Vec<usize>, Vec<u8>)>;

fn read_tensors(path: &Path) -> Tensors {
    let bytes = std::fs::read(path).unwrap();
    let st = SafeTensors::deserialize(&bytes).unwrap();
    let mut out: Tensors = st
        .tensors()
        .into_iter()
        .map(|(n, v)| (n, v.dtype(), v.shape().to_vec(), v.data().to_vec()))
        .collect();
    out.sort_by(|a, b| a.0.cmp(&b.0));
    out
}

fn write_tensors(path: &Path, t: &Tensors) {
    let views: Vec<(String, safetensors::tensor::TensorView<'_>)> = t
        .iter()
        .map(|(n, d, s, b)| {
            (
                n.clone(),
                safetensors::tensor::TensorView::new(*d, s.clone(), b).unwrap(),
            )
        })
        .collect();
    std::fs::write(path, safetensors::serialize(views, None).unwrap()).unwrap();
}

fn load_err(dir: &Path) -> String {
    match load_model(&Cpu, dir) {
        Ok(_) => panic!("loading {} should fail", dir.display()),
        Err(e) => e.to_string(),
    }
}

#[test]
fn truncated_checkpoint_is_reported_as_corrupt() {
    let dir = copy_fixture("bert", "trunc");
    let f = dir.join("model.safetensors");
    let bytes = std::fs::read(&f).unwrap();
    std::fs::write(&f, &bytes[..bytes.len() - 100]).unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("model.safetensors") && e.contains("corrupt"),
        "{e}"
    );
    // Says what happened and what to do, not the parser's variant name.
    assert!(
        e.contains("truncated") && e.contains("fetch it again") && !e.contains("Incomplete"),
        "{e}"
    );
}

#[test]
fn garbage_header_is_reported_as_corrupt() {
    let dir = copy_fixture("bert", "garbage");
    std::fs::write(
        dir.join("model.safetensors"),
        b"\xff\xff\xff\xff\xff\xff\xff\x7fnot a safetensors file",
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(e.contains("corrupt"), "{e}");
}

#[test]
fn missing_tensor_is_named() {
    let dir = copy_fixture("bert", "missing");
    let f = dir.join("model.safetensors");
    let mut t = read_tensors(&f);
    t.retain(|(n, ..)| n != "encoder.layer.1.output.dense.weight");
    write_tensors(&f, &t);
    let e = load_err(&dir);
    assert!(
        e.contains("missing tensor `encoder.layer.1.output.dense.weight`"),
        "{e}"
    );
}

#[test]
fn wrong_shape_for_config_is_named() {
    let dir = copy_fixture("bert", "shape");
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"intermediate_size\": 64", "\"intermediate_size\": 65"),
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("encoder.layer.0.intermediate.dense.weight")
            && e.contains("[64, 32]")
            && e.contains("[65, 32]"),
        "{e}"
    );
}

#[test]
fn non_float_dtype_is_named() {
    let dir = copy_fixture("bert", "dtype");
    let f = dir.join("model.safetensors");
    let mut t = read_tensors(&f);
    for (n, d, ..) in t.iter_mut() {
        if n == "embeddings.position_embeddings.weight" {
            *d = Dtype::I32; // same byte size as F32
        }
    }
    write_tensors(&f, &t);
    let e = load_err(&dir);
    assert!(
        e.contains("embeddings.position_embeddings.weight") && e.contains("I32"),
        "{e}"
    );
}

#[test]
fn half_precision_checkpoints_load() {
    // f16 and bf16 copies of the BERT fixture give the f32 model's hidden states to their precision.
    let base = load_model(&Cpu, &fixture("bert")).unwrap();
    let run = |m: &flexp::model::Model<Cpu>| {
        let none = AdapterSet::<Cpu>::empty(LoraConfig::default_for(&m.config), m.layers());
        let job = SeqJob::new(
            SeqInput::tokens(vec![1, 5, 7, 9]),
            0..m.layers(),
            0,
            Output::Hidden,
        );
        Executor::new(&Cpu, m)
            .forward(&[&none], &[job], false)
            .unwrap()
            .0[0]
            .hidden
            .clone()
            .unwrap()
    };
    let want = run(&base);
    for (tag, dtype, tol) in [("f16", Dtype::F16, 5e-3), ("bf16", Dtype::BF16, 4e-2)] {
        let dir = copy_fixture("bert", tag);
        let f = dir.join("model.safetensors");
        let mut t = read_tensors(&f);
        for (_, d, _, b) in t.iter_mut() {
            let vals: Vec<f32> = b
                .chunks_exact(4)
                .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
                .collect();
            *b = match dtype {
                Dtype::F16 => vals
                    .iter()
                    .flat_map(|v| half::f16::from_f32(*v).to_le_bytes())
                    .collect(),
                _ => vals
                    .iter()
                    .flat_map(|v| half::bf16::from_f32(*v).to_le_bytes())
                    .collect(),
            };
            *d = dtype;
        }
        write_tensors(&f, &t);
        let m = load_model(&Cpu, &dir).unwrap();
        let got = run(&m);
        let err = common::rel_err(&got, &want);
        assert!(err < tol, "{tag}: relative error {err:e}");
    }
}

#[test]
fn unknown_architecture_lists_supported() {
    let dir = copy_fixture("bert", "arch");
    let cfg = std::fs::read_to_string(dir.join("config.json")).unwrap();
    std::fs::write(
        dir.join("config.json"),
        cfg.replace("\"model_type\": \"bert\"", "\"model_type\": \"t5\""),
    )
    .unwrap();
    let e = load_err(&dir);
    assert!(
        e.contains("unknown architecture") && e.contains("t5") && e.contains("bert, gpt2, llama"),
        "{e}"
    );
    std::fs::write(dir.join("config.json"), "{ not json").unwrap();
    assert!(load_err(&dir).contains("not valid JSON"));
}

#[test]
fn missing_folder_and_files_are_named() {
    let e = load_err(Path::new("/nonexistent/model"));
    assert!(e.contains("not a folder"), "{e}");
    let dir = copy_fixture("bert", "nofile");
    std::fs::remove_file(dir.join("model.safetensors")).unwrap();
    assert!(load_err(&dir).contains("no model.safetensors"));
}

#[test]
fn sharded_index_naming_a_missing_shard_fails_cleanly() {
    let dir = copy_fixture("llama", "shard");
    std::fs::remove_file(dir.join("model-00002-of-00005.safetensors")).unwrap();
    let e = load_err(&dir);
    assert!(e.contains("model-00002-of-00005.safetensors"), "{e}");
}

#[test]
fn foreign_tokenizer_is_refused() {
    let tok = root().join("models/all-MiniLM-L6-v2/tokenizer.json");
    assert!(tok.exists(), "run `bash tools/fetch_minilm.sh` first");
    let e = Tokenizer::from_file(&tok, 120)
        .err()
        .expect("30522-token tokenizer on a 120-row model")
        .to_string();
    assert!(e.contains("30522") && e.contains("120"), "{e}");
    let bad = std::env::temp_dir().join(format!("flexp-bad-tok-{}.json", std::process::id()));
    std::fs::write(&bad, "{\"model\": 3}").unwrap();
    assert!(Tokenizer::from_file(&bad, 100)
        .err()
        .unwrap()
        .to_string()
        .contains("cannot parse"));
}

#[test]
fn cli_reports_empty_input_without_panicking() {
    let model = root().join("models/all-MiniLM-L6-v2");
    assert!(model.exists(), "run `bash tools/fetch_minilm.sh` first");
    let input = std::env::temp_dir().join(format!("flexp-empty-{}.txt", std::process::id()));
    std::fs::write(&input, "\n  \n").unwrap();
    let out = std::env::temp_dir().join(format!("flexp-empty-{}.jsonl", std::process::id()));
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_flexp-run"))
        .args(["embed", "--model"])
        .arg(&model)
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&out)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&r.stderr);
    assert_eq!(r.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("no texts") && !stderr.contains("panicked"),
        "{stderr}"
    );
    assert!(!out.exists(), "no output file on failure");
    let r = std::process::Command::new(env!("CARGO_BIN_EXE_flexp-run"))
        .args([
            "embed",
            "--model",
            "/nonexistent",
            "--input",
            "x",
            "--output",
            "y",
        ])
        .output()
        .unwrap();
    assert_eq!(r.status.code(), Some(2));
}

#[test]
fn invalid_jobs_are_refused_with_reasons() {
    let be = Cpu;
    let m = load_model(&be, &fixture("gpt2")).unwrap();
    let l = m.layers();
    let d = m.config.hidden;
    let set = AdapterSet::<Cpu>::empty(LoraConfig::default_for(&m.config), l);
    let exec = Executor::new(&be, &m);
    let err = |j: SeqJob| {
        exec.forward(&[&set], &[j], false)
            .err()
            .expect("must fail")
            .to_string()
    };
    let tok = |ids: Vec<u32>| SeqInput::tokens(ids);
    assert!(
        err(SeqJob::new(tok(vec![1, 2]), 0..l + 1, 0, Output::Hidden))
            .contains("outside the model")
    );
    assert!(err(SeqJob::new(tok(vec![1, 2]), 1..l, 0, Output::Hidden))
        .contains("must start at block 0"));
    assert!(err(SeqJob::new(tok(vec![1, 999]), 0..l, 0, Output::Hidden)).contains("token id 999"));
    assert!(err(SeqJob::new(tok(vec![]), 0..l, 0, Output::Hidden)).contains("empty"));
    assert!(err(SeqJob::new(tok(vec![1; 65]), 0..l, 0, Output::Hidden))
        .contains("exceed the model's 64 positions"));
    assert!(err(SeqJob::new(
        SeqInput::Hidden(vec![0.0; d + 1]),
        1..l,
        0,
        Output::Hidden
    ))
    .contains("not a multiple"));
    assert!(err(SeqJob::new(
        SeqInput::Hidden(vec![f32::NAN; d]),
        1..l,
        0,
        Output::Hidden
    ))
    .contains("non-finite"));
    assert!(err(SeqJob::new(
        tok(vec![1]),
        0..1,
        0,
        Output::Class { label: Some(0) }
    ))
    .contains("end at the last block"));
    assert!(err(SeqJob::new(
        tok(vec![1]),
        0..l,
        0,
        Output::Class { label: Some(0) }
    ))
    .contains("no classification head"));
    assert!(err(SeqJob::new(tok(vec![1]), 0..l, 3, Output::Hidden))
        .contains("adapter 3 does not exist"));
    assert!(err(SeqJob::new(
        tok(vec![1, 2]),
        0..l,
        0,
        Output::Lm {
            labels: Some(vec![1])
        }
    ))
    .contains("1 labels for 2 tokens"));
    assert!(exec.forward(&[&set], &[], false).is_err());
}
