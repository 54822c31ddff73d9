//! The causal-LM task on the real SmolLM2-135M-Instruct Q4_1 GGUF file, against transformers in
//! float32 on the same file (tests/fixtures/gguf/smollm2_causal_lm.jsonl, written by
//! tools/torch_reference/causal_lm_reference.py):
//! - `encode_lm` lays prompt, response and end-of-sequence token out as transformers' tokenizer
//!   does, with each response token as the target of the position before it (transformers'
//!   labels, shifted as its loss shifts them);
//! - a training step's loss on such an example is transformers' loss with those labels;
//! - `evaluate` reports that loss as the negative log-likelihood of the targets, and exact match
//!   where, and only where, greedy decoding reproduces the response.
//!
//! Truncation, templates and the configuration's refusals are checked by hand-built cases.

mod common;

use common::{fixture, root};
use flexp::algorithms::{evaluate, whole, ClientData, Example, Federation, Hyper, Label};
use flexp::backend::cpu::Cpu;
use flexp::data::{encode_lm, encode_lm_chat, LmTemplate};
use flexp::federated::{CostModel, TaskHead};
use flexp::model::chat::{ChatTemplate, Message};
use flexp::model::{load_model_and_tokenizer, LoraConfig, Model, Pooling, Tokenizer};
use flexp::rng::Rng;
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

struct Case {
    prompt: String,
    response: String,
    ids: Vec<u32>,
    labels: Vec<i64>,
    eos: u32,
    loss: f64,
    exact_match: bool,
}

fn cases() -> Vec<Case> {
    let text = std::fs::read_to_string(fixture("gguf/smollm2_causal_lm.jsonl")).unwrap();
    text.lines()
        .map(|l| {
            let v: Value = serde_json::from_str(l).unwrap();
            let ints = |k: &str| -> Vec<i64> {
                v[k].as_array()
                    .unwrap()
                    .iter()
                    .map(|x| x.as_i64().unwrap())
                    .collect()
            };
            Case {
                prompt: v["prompt"].as_str().unwrap().into(),
                response: v["response"].as_str().unwrap().into(),
                ids: ints("ids").into_iter().map(|x| x as u32).collect(),
                labels: ints("labels"),
                eos: v["eos"].as_u64().unwrap() as u32,
                loss: v["loss"].as_f64().unwrap(),
                exact_match: v["exact_match"].as_bool().unwrap(),
            }
        })
        .collect()
}

/// transformers' labels (aligned with the ids, -100 ignored) as next-token targets.
fn shifted(labels: &[i64]) -> Vec<i64> {
    (0..labels.len())
        .map(|t| match labels.get(t + 1) {
            Some(&y) if y >= 0 => y,
            _ => -1,
        })
        .collect()
}

fn federation<'a>(model: &'a Model<Cpu>, clients: Vec<ClientData>) -> Federation<'a, Cpu> {
    let lora = LoraConfig {
        rank: 4,
        alpha: 8.0,
        ..LoraConfig::default_for(&model.config)
    };
    let cost = CostModel::new(&model.config, &lora, 32, 1)
        .unwrap()
        .with_head(TaskHead::LanguageModel)
        .unwrap();
    let n = clients.len();
    Federation {
        backend: &Cpu,
        model,
        lora,
        head: TaskHead::LanguageModel,
        pooling: Pooling::Last,
        clients,
        splits: vec![model.layers() / 2; n],
        hyper: Hyper::default(),
        cost,
        on_step: None,
    }
}

#[test]
fn encode_lm_lays_out_prompt_response_and_eos_as_transformers() {
    let (_, tok) = load_model_and_tokenizer(&Cpu, &smollm2()).unwrap();
    let cases = cases();
    assert!(cases.len() >= 6);
    for c in &cases {
        assert_eq!(tok.eos(), Some(c.eos), "the GGUF metadata's EOS");
        let (e, cut) = encode_lm(&tok, &c.prompt, &c.response, tok.eos(), 512).unwrap();
        assert!(!cut);
        assert_eq!(e.ids, c.ids, "{:?} + {:?}", c.prompt, c.response);
        assert_eq!(e.targets, shifted(&c.labels), "{:?}", c.prompt);
    }
}

#[test]
fn lm_loss_and_exact_match_are_transformers() {
    let (model, tok) = load_model_and_tokenizer(&Cpu, &smollm2()).unwrap();
    let cases = cases();
    assert!(
        cases.iter().any(|c| c.exact_match) && cases.iter().any(|c| !c.exact_match),
        "the fixture needs both outcomes"
    );
    let examples: Vec<Example> = cases
        .iter()
        .map(|c| {
            let (e, _) = encode_lm(&tok, &c.prompt, &c.response, tok.eos(), 512).unwrap();
            Example {
                ids: e.ids,
                label: Label::Tokens(e.targets),
            }
        })
        .collect();
    let clients = examples
        .iter()
        .map(|e| ClientData {
            train: vec![e.clone()],
            test: vec![e.clone()],
        })
        .collect();
    let fed = federation(&model, clients);
    // A fresh adapter set has B = 0: the model is the base model transformers ran.
    let mut rng = Rng::new(1);
    let set = fed.new_set(0..model.layers(), true, &mut rng).unwrap();
    assert!(set.head.is_none(), "a causal LM trains no class head");

    // One chain per case, each on its own example: the stats come back per case.
    let chains: Vec<_> = cases.iter().map(|_| whole(&set)).collect();
    let sets: Vec<&[Example]> = examples.iter().map(std::slice::from_ref).collect();
    let stats = evaluate(&fed, &chains, &sets).unwrap();
    assert_eq!(stats.len(), cases.len(), "one result per chain");
    for ((c, s), e) in cases.iter().zip(&stats).zip(&examples) {
        let targets = c.labels.iter().skip(1).filter(|&&y| y >= 0).count();
        assert_eq!((s.total, s.targets), (1, targets), "{:?}", c.response);
        assert_eq!(e.targets(), targets);
        let loss = s.nll / s.targets as f64;
        assert!(
            (loss - c.loss).abs() < 2e-3 * c.loss.max(1.0),
            "{:?}: loss {loss} vs transformers {}",
            c.response,
            c.loss
        );
        assert!((s.perplexity() - c.loss.exp()).abs() < 3e-3 * c.loss.exp());
        assert_eq!(s.correct == 1, c.exact_match, "{:?}", c.response);
    }

    // The training step's loss is the same mean over the response tokens.
    let items: Vec<_> = examples.iter().map(|e| (&set, vec![e])).collect();
    let out = fed.full_step(&items).unwrap();
    for (o, c) in out.iter().zip(&cases) {
        assert!(o.rejected.is_none());
        assert!(
            (o.loss - c.loss).abs() < 2e-3 * c.loss.max(1.0),
            "training loss {} vs transformers {}",
            o.loss,
            c.loss
        );
    }
}

fn tokenizer() -> Tokenizer {
    load_model_and_tokenizer(&Cpu, &smollm2()).unwrap().1
}

#[test]
fn long_examples_lose_prompt_tokens_from_the_left_and_keep_the_response() {
    let tok = tokenizer();
    let eos = tok.eos();
    let prompt = "one two three four five six seven eight nine ten eleven twelve";
    let response = " thirteen fourteen";
    let p = tok.encode_continuation(prompt).unwrap(); // SmolLM2 adds no BOS
    let r = tok.encode_continuation(response).unwrap();
    let (full, cut) = encode_lm(&tok, prompt, response, eos, 512).unwrap();
    assert!(!cut);
    assert_eq!(full.ids.len(), p.len() + r.len() + 1);

    let max = r.len() + 1 + 3;
    let (e, cut) = encode_lm(&tok, prompt, response, eos, max).unwrap();
    assert!(cut);
    assert_eq!(e.ids.len(), max);
    // The last three prompt tokens, then the whole response and EOS.
    let mut want = p[p.len() - 3..].to_vec();
    want.extend(&r);
    want.extend(eos);
    assert_eq!(e.ids, want);
    let learned: Vec<i64> = e.targets.iter().copied().filter(|&y| y >= 0).collect();
    let mut resp: Vec<i64> = r.iter().map(|&t| t as i64).collect();
    resp.push(eos.unwrap() as i64);
    assert_eq!(learned, resp, "every response token and EOS is learned");

    // Too long for the response itself: it is cut at its end, and one prompt token stays to
    // predict its first token from.
    let (e, cut) = encode_lm(&tok, prompt, response, eos, 2).unwrap();
    assert!(cut);
    assert_eq!(e.ids, vec![p[p.len() - 1], r[0]]);
    assert_eq!(e.targets, vec![r[0] as i64, -1]);

    let err = encode_lm(&tok, prompt, response, eos, 1)
        .unwrap_err()
        .to_string();
    assert!(err.contains("at least 2"), "{err}");
    let err = encode_lm(&tok, prompt, "", None, 16)
        .unwrap_err()
        .to_string();
    assert!(err.contains("nothing to learn"), "{err}");
}

#[test]
fn templates_place_text_and_response_and_refuse_unknown_names() {
    let t = LmTemplate {
        prompt: "Review: {text}\nVerdict {{fresh|rotten}}:".into(),
        response: " {response}".into(),
    };
    t.validate().unwrap();
    let (p, r) = t.apply("Great film.", "fresh").unwrap();
    assert_eq!(p, "Review: Great film.\nVerdict {fresh|rotten}:");
    assert_eq!(r, " fresh");

    let bad = LmTemplate {
        prompt: "{question}".into(),
        response: "{response}".into(),
    };
    let err = bad.validate().unwrap_err().to_string();
    assert!(
        err.contains("lm.prompt") && err.contains("{question}"),
        "{err}"
    );
    let no_response = LmTemplate {
        prompt: "{text}".into(),
        response: "answer".into(),
    };
    let err = no_response.validate().unwrap_err().to_string();
    assert!(err.contains("{response}"), "{err}");
}

/// The chat template in SmolLM2's GGUF metadata renders as transformers' `apply_chat_template`
/// renders it (the default system turn added before a lone user turn, a given system turn kept,
/// the assistant's cue), and a chat-formatted example's ids are the rendered prompt tokenised
/// without added special tokens, then the response and EOS
/// (tests/fixtures/gguf/smollm2_chat.jsonl).
#[test]
fn chat_template_renders_and_tokenises_as_transformers() {
    let tok = tokenizer();
    let chat = tok.chat_template().expect("SmolLM2 ships a chat template");
    let text = std::fs::read_to_string(fixture("gguf/smollm2_chat.jsonl")).unwrap();
    let mut n = 0;
    for line in text.lines() {
        let v: Value = serde_json::from_str(line).unwrap();
        let messages: Vec<Message> = v["messages"]
            .as_array()
            .unwrap()
            .iter()
            .map(|m| Message::new(m["role"].as_str().unwrap(), m["content"].as_str().unwrap()))
            .collect();
        let rendered = chat.render(&messages, true).unwrap();
        assert_eq!(rendered, v["rendered"].as_str().unwrap());
        let want: Vec<u32> = v["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let (e, _) = encode_lm_chat(
            &tok,
            &rendered,
            v["response"].as_str().unwrap(),
            tok.eos(),
            512,
        )
        .unwrap();
        assert_eq!(e.ids, want);
        n += 1;
    }
    assert_eq!(n, 2);
    // Without the generation prompt the text ends after the last turn.
    let plain = chat.render(&[Message::new("user", "hi")], false).unwrap();
    assert!(plain.ends_with("hi<|im_end|>\n"), "{plain:?}");
    // A template that does not parse, or raises, is an error that says so.
    let bad = ChatTemplate::new("{% for m in messages %}", "", "").unwrap_err();
    assert!(bad.to_string().contains("chat template"), "{bad}");
    let raising =
        ChatTemplate::new("{{ raise_exception('roles must alternate') }}", "", "").unwrap();
    let e = raising.render(&[], true).unwrap_err().to_string();
    assert!(e.contains("roles must alternate"), "{e}");
}
