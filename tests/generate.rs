//! Generation with the KV cache against transformers and peft:
//! - SmolLM2-135M-Instruct Q4_1: greedy continuations of four prompts give transformers'
//!   float32 token ids and text (tests/fixtures/gguf/smollm2_generate.jsonl,
//!   tools/torch_reference/gguf_reference.py);
//! - the tiny Llama fixture with a peft LoRA adapter: feeding a sequence one token at a time
//!   through the cache gives peft's logits at every position (tests/fixtures/peft/llama).

mod common;

use common::{fixture, root};
use flexp::backend::cpu::Cpu;
use flexp::generate::{GenerateOptions, Generator};
use flexp::model::chat::Message;
use flexp::model::load_model;
use serde_json::Value;

fn ids(v: &Value) -> Vec<u32> {
    v.as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_u64().unwrap() as u32)
        .collect()
}

#[test]
fn smollm2_greedy_generation_is_transformers() {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "the SmolLM2 GGUF file is missing: run `bash tools/fetch_smollm2.sh` first"
    );
    let g = Generator::load(Cpu, &p).unwrap();
    let text = std::fs::read_to_string(fixture("gguf/smollm2_generate.jsonl")).unwrap();
    for line in text.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        let out = g
            .generate(
                r["prompt"].as_str().unwrap(),
                GenerateOptions {
                    max_new_tokens: 24,
                    temperature: 0.0,
                    seed: 0,
                },
            )
            .unwrap();
        assert_eq!(out.prompt_tokens, ids(&r["prompt_tokens"]));
        assert_eq!(out.tokens, ids(&r["tokens"]), "{:?}", r["prompt"]);
        assert_eq!(out.text, r["text"].as_str().unwrap());
    }
}

fn logits_rows(v: &Value, vocab: usize) -> Vec<Vec<f32>> {
    let flat: Vec<f32> = v
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap() as f32)
        .collect();
    flat.chunks(vocab).map(<[f32]>::to_vec).collect()
}

#[test]
fn the_cache_gives_peft_logits_at_every_position_with_adapters() {
    let m = load_model(&Cpu, &fixture("llama")).unwrap();
    let vocab = m.config.vocab_size;
    let g = Generator::new(Cpu, m, None, None)
        .unwrap()
        .with_peft_adapters(&fixture("peft/llama"))
        .unwrap();
    let r: Value =
        serde_json::from_slice(&std::fs::read(fixture("peft/llama/logits.json")).unwrap()).unwrap();
    for (s, want) in r["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r["logits"].as_array().unwrap())
    {
        let seq = ids(s);
        let want = logits_rows(want, vocab);
        // One token at a time: every position reads the cache of the ones before.
        let mut session = g.session();
        for (t, &tok) in seq.iter().enumerate() {
            let got = session.feed(&[tok]).unwrap();
            let (err, scale) = common::max_err_and_scale(&got, &want[t]);
            assert!(err < 1e-4 * scale.max(1.0), "position {t}: error {err}");
        }
        assert_eq!(session.len(), seq.len());
        // The whole prefix at once, then the last token: the same last row.
        let mut session = g.session();
        session.feed(&seq[..seq.len() - 1]).unwrap();
        let got = session.feed(&seq[seq.len() - 1..]).unwrap();
        let (err, scale) = common::max_err_and_scale(&got, &want[seq.len() - 1]);
        assert!(
            err < 1e-4 * scale.max(1.0),
            "prefill then step: error {err}"
        );
    }
}

#[test]
fn bad_feeds_are_refused_by_name() {
    let m = load_model(&Cpu, &fixture("llama")).unwrap();
    let (vocab, ctx) = (m.config.vocab_size, m.config.max_positions);
    let g = Generator::new(Cpu, m, None, None).unwrap();
    let mut s = g.session();
    let e = s.feed(&[vocab as u32]).unwrap_err().to_string();
    assert!(e.contains("outside the vocabulary"), "{e}");
    assert!(s.feed(&[]).is_err());
    let e = s.feed(&vec![1; ctx + 1]).unwrap_err().to_string();
    assert!(e.contains("context"), "{e}");
    assert!(s.is_empty(), "a refused feed leaves the cache as it was");
    let e = g
        .generate(
            "hi",
            GenerateOptions {
                max_new_tokens: 1,
                temperature: 0.0,
                seed: 0,
            },
        )
        .unwrap_err()
        .to_string();
    assert!(e.contains("no tokenizer"), "{e}");
}

/// Feeds each of transformers' reference sequences of a tiny GGUF model
/// (`tests/fixtures/gguf/tiny_<arch>.gguf`, tools/torch_reference/gguf_tiny_llama.py) through
/// the cache one token at a time: every position's logits must be transformers' float32 logits
/// of the whole sequence.
fn cache_matches_transformers(arch: &str) {
    let g = Generator::load(Cpu, &fixture(&format!("gguf/tiny_{arch}.gguf"))).unwrap();
    let vocab = g.model().config.vocab_size;
    let r: Value = serde_json::from_slice(
        &std::fs::read(fixture(&format!("gguf/tiny_{arch}_reference.json"))).unwrap(),
    )
    .unwrap();
    for (s, want) in r["sequences"]
        .as_array()
        .unwrap()
        .iter()
        .zip(r["logits"].as_array().unwrap())
    {
        let seq = ids(s);
        let want = logits_rows(want, vocab);
        let mut session = g.session();
        for (t, &tok) in seq.iter().enumerate() {
            let got = session.feed(&[tok]).unwrap();
            let (err, scale) = common::max_err_and_scale(&got, &want[t]);
            assert!(
                err < 1e-4 * scale.max(1.0),
                "{arch} position {t}: error {err}"
            );
        }
    }
}

/// Qwen3 through the cache: per-head query and key norms, 128-wide heads, 13 GGML types.
#[test]
fn the_cache_runs_qwen3_as_transformers() {
    cache_matches_transformers("qwen3");
}

/// Gemma 3 through the cache: a sliding window of 4 keys (the reference sequences of 9 and 13
/// tokens reach past it), post-attention and post-MLP norms, GeGLU, scaled embeddings.
#[test]
fn the_cache_runs_gemma3_as_transformers() {
    cache_matches_transformers("gemma3");
}

/// A conversation through SmolLM2's chat template (a user turn, and a system + user turn):
/// the rendered prompt's tokens and the greedy continuation are transformers'
/// (`apply_chat_template(..., add_generation_prompt=True)` then `generate`;
/// tests/fixtures/gguf/smollm2_chat.jsonl), and `flexp-run generate --chat` prints the same.
#[test]
fn chat_generation_is_transformers() {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    let g = Generator::load(Cpu, &p).unwrap();
    let text = std::fs::read_to_string(fixture("gguf/smollm2_chat.jsonl")).unwrap();
    let opts = GenerateOptions {
        max_new_tokens: 24,
        temperature: 0.0,
        seed: 0,
    };
    let mut first = None;
    for line in text.lines() {
        let r: Value = serde_json::from_str(line).unwrap();
        let messages: Vec<Message> = r["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let out = g.generate_chat(&messages, opts).unwrap();
        let ids_all = ids(&r["ids"]);
        // The fixture's ids are the rendered prompt, then " rotten" and EOS (two tokens).
        assert_eq!(out.prompt_tokens, ids_all[..ids_all.len() - 2]);
        assert_eq!(out.tokens, ids(&r["greedy"]), "{messages:?}");
        first.get_or_insert((messages, out));
    }
    let (messages, want) = first.unwrap();
    let cli = std::process::Command::new(env!("CARGO_BIN_EXE_flexp-run"))
        .args([
            "generate",
            "--backend",
            "cpu",
            "--chat",
            "--max-new-tokens",
            "24",
        ])
        .arg("--model")
        .arg(&p)
        .arg("--prompt")
        .arg(&messages[0].content)
        .output()
        .unwrap();
    assert!(
        cli.status.success(),
        "{}",
        String::from_utf8_lossy(&cli.stderr)
    );
    let v: Value = serde_json::from_slice(&cli.stdout).unwrap();
    assert_eq!(ids(&v["tokens"]), want.tokens);
    // A model without a chat template says so.
    let tiny = Generator::load(Cpu, &fixture("gguf/tiny_llama.gguf")).unwrap();
    let e = tiny
        .generate_chat(&[Message::new("user", "hi")], opts)
        .unwrap_err()
        .to_string();
    assert!(e.contains("no chat template"), "{e}");
}
