//! SentencePiece tokenizers from GGUF metadata (`tokenizer.ggml.model = "llama"`: pieces, scores
//! and types, no merges) give transformers' token ids and decoded text: Llama's form (Metaspace,
//! merges ranked by score) and Gemma's (spaces replaced, merges ranked by file order, pieces of
//! spaces respelled), with byte fallback, a control and a user-defined token, and BOS added.
//! Reference: tests/fixtures/gguf/sp_reference.json (tools/torch_reference/gguf_sentencepiece.py).

mod common;

use common::fixture;
use flexp::model::gguf::Gguf;
use flexp::model::tokenizer::LongText;
use flexp::model::Tokenizer;
use serde_json::Value;

fn check(arch: &str) {
    let r: Value =
        serde_json::from_slice(&std::fs::read(fixture("gguf/sp_reference.json")).unwrap()).unwrap();
    let g = Gguf::open(&fixture(&format!("gguf/sp_{arch}.gguf"))).unwrap();
    let tok = Tokenizer::from_gguf(&g, 326).unwrap();
    let cases = r[arch].as_array().unwrap();
    assert!(cases.len() >= 6);
    for c in cases {
        let text = c["text"].as_str().unwrap();
        let want: Vec<u32> = c["ids"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_u64().unwrap() as u32)
            .collect();
        let got = tok.encode(text, 512, LongText::Error).unwrap().ids;
        assert_eq!(got, want, "{arch}: {text:?}");
        assert_eq!(
            tok.decode(&got).unwrap(),
            c["decoded"].as_str().unwrap(),
            "{arch}: decode of {text:?}"
        );
    }
    assert_eq!(tok.eos(), Some(2));
}

#[test]
fn llama_sentencepiece_matches_transformers() {
    check("llama");
}

#[test]
fn gemma_sentencepiece_matches_transformers() {
    check("gemma3");
}

/// A SentencePiece vocabulary without scores cannot rank its merges: refused by name.
#[test]
fn sentencepiece_without_scores_is_refused_by_name() {
    let bytes = std::fs::read(fixture("gguf/sp_llama.gguf")).unwrap();
    // Rename the key so the scores are not found (same length: the file stays well formed).
    let key = b"tokenizer.ggml.scores";
    let at = bytes
        .windows(key.len())
        .position(|w| w == key)
        .expect("the fixture has scores");
    let mut renamed = bytes.clone();
    renamed[at..at + key.len()].copy_from_slice(b"tokenizer.ggml.scorez");
    let g = Gguf::parse(renamed, std::path::Path::new("renamed.gguf")).unwrap();
    let e = Tokenizer::from_gguf(&g, 326).err().unwrap().to_string();
    assert!(e.contains("tokenizer.ggml.scores"), "{e}");
}
