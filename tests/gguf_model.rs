//! The real SmolLM2-135M-Instruct Q4_1 GGUF file, loaded directly with its weights kept in GGML
//! blocks, scores text as transformers does in float32 on the same file (weights dequantized by
//! the `gguf` package): the same token ids from the tokenizer in the metadata, the mean
//! log-likelihood within 2e-3 and the 10 largest last-position logits within 2e-2.
//! Reference: tests/fixtures/gguf/smollm2_reference.jsonl (tools/torch_reference/gguf_reference.py).

mod common;

use common::{fixture, root};
use flexp::backend::cpu::Cpu;
use flexp::backend::Backend;
use flexp::executor::{Executor, Output, SeqInput, SeqJob};
use flexp::model::gguf::Gguf;
use flexp::model::tokenizer::LongText;
use flexp::model::{load_model, AdapterSet, Family, LoraConfig, Tokenizer};
use serde_json::Value;
use std::path::PathBuf;

fn smollm2() -> PathBuf {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "the SmolLM2 GGUF file is missing: run `bash tools/fetch_smollm2.sh` first"
    );
    p
}

struct RefLine {
    text: String,
    tokens: Vec<u32>,
    mean_ll: f64,
    top_k: Vec<(usize, f64)>,
}

fn reference() -> Vec<RefLine> {
    let text = std::fs::read_to_string(fixture("gguf/smollm2_reference.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            RefLine {
                text: v["text"].as_str().unwrap().to_string(),
                tokens: v["tokens"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|t| t.as_u64().unwrap() as u32)
                    .collect(),
                mean_ll: v["mean_log_likelihood"].as_f64().unwrap(),
                top_k: v["top_k"]
                    .as_array()
                    .unwrap()
                    .iter()
                    .map(|p| (p[0].as_u64().unwrap() as usize, p[1].as_f64().unwrap()))
                    .collect(),
            }
        })
        .collect()
}

#[test]
fn smollm2_config_comes_from_the_metadata() {
    let g = Gguf::open(&smollm2()).unwrap();
    let c = g.model_config().unwrap();
    assert_eq!(c.family, Family::Llama);
    assert_eq!(
        (
            c.layers,
            c.hidden,
            c.heads,
            c.kv_heads,
            c.head_dim,
            c.intermediate
        ),
        (30, 576, 9, 3, 64, 1536)
    );
    assert_eq!(c.vocab_size, 49152);
    assert!(c.tie_embeddings);
    assert!((c.norm_eps - 1e-5).abs() < 1e-12);
}

#[test]
fn smollm2_tokenizer_from_the_metadata_gives_transformers_ids() {
    let g = Gguf::open(&smollm2()).unwrap();
    let tok = Tokenizer::from_gguf(&g, 49152).unwrap();
    for r in reference() {
        let enc = tok.encode(&r.text, 8192, LongText::Error).unwrap();
        assert_eq!(enc.ids, r.tokens, "{:?}", r.text);
    }
}

#[test]
fn smollm2_q4_1_scores_like_transformers_f32() {
    let be = Cpu;
    let m = load_model(&be, &smollm2()).unwrap();
    // The block weights stayed in their blocks: 7 projections of 30 blocks, Q4_1, 20 bytes per
    // 32 weights.
    let (d, ff, kv) = (576usize, 1536usize, 192usize);
    let per_block = (2 * d * d + 2 * d * kv + 3 * d * ff) / 32 * 20;
    assert_eq!(m.block_weight_bytes(&be), 30 * per_block);
    let exec = Executor::new(&be, &m);
    let none = AdapterSet::<Cpu>::empty(LoraConfig::default_for(&m.config), m.config.layers);
    let refs = reference();
    let jobs: Vec<SeqJob> = refs
        .iter()
        .map(|r| {
            SeqJob::new(
                SeqInput::tokens(r.tokens.clone()),
                0..m.config.layers,
                0,
                Output::Lm { labels: None },
            )
        })
        .collect();
    let (out, _) = exec.forward(&[&none], &jobs, false).unwrap();
    let v = m.config.vocab_size;
    for (r, o) in refs.iter().zip(&out) {
        let logits = o.logits.as_ref().unwrap();
        let n = r.tokens.len();
        assert_eq!(logits.len(), n * v);
        let row = |t: usize| &logits[t * v..(t + 1) * v];
        let mut ll = 0.0f64;
        for t in 0..n - 1 {
            let x = row(t);
            let max = x.iter().fold(f32::NEG_INFINITY, |a, &b| a.max(b)) as f64;
            let lse = max + x.iter().map(|&z| (z as f64 - max).exp()).sum::<f64>().ln();
            ll += x[r.tokens[t + 1] as usize] as f64 - lse;
        }
        let ll = ll / (n - 1) as f64;
        assert!(
            (ll - r.mean_ll).abs() < 2e-3,
            "{:?}: mean log-likelihood {ll:.5} vs transformers {:.5}",
            r.text,
            r.mean_ll
        );
        let last = row(n - 1);
        for &(id, want) in &r.top_k {
            let got = last[id] as f64;
            assert!(
                (got - want).abs() < 2e-2,
                "{:?}: last logit of token {id}: {got:.4} vs transformers {want:.4}",
                r.text
            );
        }
        // And they are the top 10 here too (ties aside, the order holds to the tolerance).
        let mut order: Vec<usize> = (0..v).collect();
        order.sort_by(|&a, &b| last[b].total_cmp(&last[a]));
        let top: Vec<usize> = r.top_k.iter().map(|p| p.0).collect();
        let tenth = r.top_k[9].1;
        for id in &order[..10] {
            assert!(
                top.contains(id) || (last[*id] as f64 - tenth).abs() < 2e-2,
                "{:?}: token {id} is in flexp's top 10 but not transformers'",
                r.text
            );
        }
    }
}

/// `flexp-run score` on the reference texts prints what transformers computed.
#[test]
fn score_command_prints_transformers_scores() {
    let dir = std::env::temp_dir().join(format!("flexp-score-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.jsonl");
    let refs = reference();
    let lines: Vec<String> = refs
        .iter()
        .map(|r| serde_json::json!({ "text": r.text }).to_string())
        .collect();
    std::fs::write(&input, lines.join("\n") + "\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flexp-run"))
        .args(["score", "--backend", "cpu", "--top-k", "10", "--model"])
        .arg(smollm2())
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(
        out.status.success(),
        "{}",
        String::from_utf8_lossy(&out.stderr)
    );
    let stdout = String::from_utf8(out.stdout).unwrap();
    let got: Vec<Value> = stdout
        .lines()
        .map(|l| serde_json::from_str(l).unwrap())
        .collect();
    assert_eq!(got.len(), refs.len());
    for (g, r) in got.iter().zip(&refs) {
        let tokens: Vec<u32> = g["tokens"]
            .as_array()
            .unwrap()
            .iter()
            .map(|t| t.as_u64().unwrap() as u32)
            .collect();
        assert_eq!(tokens, r.tokens);
        let ll = g["mean_log_likelihood"].as_f64().unwrap();
        assert!((ll - r.mean_ll).abs() < 2e-3, "{ll} vs {}", r.mean_ll);
        let top = g["top_k"].as_array().unwrap();
        assert_eq!(top.len(), 10);
        for (p, &(id, want)) in top.iter().zip(&r.top_k) {
            assert_eq!(p[0].as_u64().unwrap() as usize, id, "{:?}", r.text);
            assert!((p[1].as_f64().unwrap() - want).abs() < 2e-2);
        }
    }
    // A line without a text is named, with its line number, and nothing is printed for it.
    std::fs::write(&input, "{\"text\": \"fine\"}\n{\"txt\": \"typo\"}\n").unwrap();
    let out = std::process::Command::new(env!("CARGO_BIN_EXE_flexp-run"))
        .args(["score", "--backend", "cpu", "--model"])
        .arg(smollm2())
        .arg("--input")
        .arg(&input)
        .output()
        .unwrap();
    assert!(!out.status.success());
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(err.contains("line 2") && err.contains("`text`"), "{err}");
    assert!(out.stdout.is_empty());
    std::fs::remove_dir_all(&dir).ok();
}

/// A tiny Llama whose projections use 13 GGML types (tools/torch_reference/gguf_tiny_llama.py):
/// flexp's logits from the blocks as stored equal transformers' float32 logits from the weights
/// the `gguf` package dequantizes, and the tokenizer in its metadata gives transformers' ids.
#[test]
fn tiny_llama_in_every_type_matches_transformers() {
    tiny_matches_transformers("llama");
}

/// The same for Qwen2: q/k/v biases, no llama.cpp row reordering, the qwen2 pre-tokenizer split.
#[test]
fn tiny_qwen2_in_every_type_matches_transformers() {
    tiny_matches_transformers("qwen2");
    let g = Gguf::open(&fixture("gguf/tiny_qwen2.gguf")).unwrap();
    let c = g.model_config().unwrap();
    assert!(c.attn_bias && !c.o_bias);
}

/// The same for Qwen3: RMSNorm of each query and key head before RoPE, no biases, heads of 128
/// on a hidden size of 256 (a 512-wide query projection).
#[test]
fn tiny_qwen3_in_every_type_matches_transformers() {
    tiny_matches_transformers("qwen3");
    let g = Gguf::open(&fixture("gguf/tiny_qwen3.gguf")).unwrap();
    let c = g.model_config().unwrap();
    assert!(c.qk_norm && !c.attn_bias && !c.o_bias);
    assert_eq!((c.head_dim, c.q_dim(), c.hidden), (128, 512, 256));
}

/// The same for Gemma 3: heads of 256, query/key norms, post-attention and post-MLP norms stored
/// as llama.cpp stores Gemma's scales (1 + w; transformers subtracts 1 on reading), GeGLU,
/// embeddings scaled by sqrt(hidden), and a sliding window of 4 keys on the sequences of 9 and
/// 13 tokens.
#[test]
fn tiny_gemma3_in_every_type_matches_transformers() {
    tiny_matches_transformers("gemma3");
    let g = Gguf::open(&fixture("gguf/tiny_gemma3.gguf")).unwrap();
    let c = g.model_config().unwrap();
    assert!(c.qk_norm && c.post_norms);
    assert_eq!((c.layer_window(0), c.layer_window(1)), (Some(4), Some(4)));
    assert_eq!(c.embed_scale, Some(16.0));
}

fn tiny_matches_transformers(arch: &str) {
    tiny_matches_transformers_on(&Cpu, arch);
}

/// The tiny Llama, Qwen3 (q/k norms, heads of 128) and Gemma 3 (heads of 256, a sliding
/// window) with every projection kept in its blocks on the CUDA backend (kernels/gguf.cu decoding slabs for the f32 GEMM; the SIMT emulator here, the
/// GPU under `FLEXP_CUDA_TESTS=gpu`), against the same transformers logits. Small decode slabs
/// make every product run in several slabs.
#[cfg(feature = "emulator")]
#[test]
fn tiny_models_in_every_type_match_transformers_on_the_cuda_backend() {
    let be = flexp::backend::cuda::CudaBackend::for_tests()
        .unwrap()
        .with_decode_slab_values(4096);
    tiny_matches_transformers_on(&be, "llama");
    tiny_matches_transformers_on(&be, "qwen3");
    tiny_matches_transformers_on(&be, "gemma3");
}

fn tiny_matches_transformers_on<B: Backend>(be: &B, arch: &str) {
    let path = fixture(&format!("gguf/tiny_{arch}.gguf"));
    let r: Value = serde_json::from_slice(
        &std::fs::read(fixture(&format!("gguf/tiny_{arch}_reference.json"))).unwrap(),
    )
    .unwrap();
    let g = Gguf::open(&path).unwrap();
    let m = g.load_model(be).unwrap();
    // Every projection kept its type (an F32 one is stored as an ordinary f32 weight).
    let types: Vec<String> = m
        .blocks
        .iter()
        .flat_map(|b| {
            [
                &b.q,
                &b.k,
                &b.v,
                &b.o,
                b.gate.as_ref().unwrap(),
                &b.up,
                &b.down,
            ]
        })
        .map(|l| {
            be.weight_ggml_type(&l.w)
                .map_or("F32".to_string(), |t| t.to_string())
        })
        .collect();
    let want_types: Vec<String> = r["types"]
        .as_array()
        .unwrap()
        .iter()
        .flat_map(|b| {
            b.as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_str().unwrap().to_string())
        })
        .collect();
    assert_eq!(types, want_types);
    let exec = Executor::new(be, &m);
    let none = AdapterSet::<B>::empty(LoraConfig::default_for(&m.config), m.config.layers);
    let seqs: Vec<Vec<u32>> = r["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .map(|s| {
            s.as_array()
                .unwrap()
                .iter()
                .map(|t| t.as_u64().unwrap() as u32)
                .collect()
        })
        .collect();
    let jobs: Vec<SeqJob> = seqs
        .iter()
        .map(|s| {
            SeqJob::new(
                SeqInput::tokens(s.clone()),
                0..2,
                0,
                Output::Lm { labels: None },
            )
        })
        .collect();
    let (out, _) = exec.forward(&[&none], &jobs, false).unwrap();
    for (o, want) in out.iter().zip(r["logits"].as_array().unwrap()) {
        let got = o.logits.as_ref().unwrap();
        let want: Vec<f32> = want
            .as_array()
            .unwrap()
            .iter()
            .map(|v| v.as_f64().unwrap() as f32)
            .collect();
        assert_eq!(got.len(), want.len());
        let (err, scale) = common::max_err_and_scale(got, &want);
        assert!(
            err < 1e-4 * scale,
            "max |logit error| {err} (scale {scale})"
        );
    }
    let tok = Tokenizer::from_gguf(&g, m.config.vocab_size).unwrap();
    for t in r["texts"].as_array().unwrap() {
        let ids: Vec<u32> = t["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let text = t["text"].as_str().unwrap();
        assert_eq!(
            tok.encode(text, 128, LongText::Error).unwrap().ids,
            ids,
            "{text:?}"
        );
    }
}
