//! Replays the fuzz corpus (fuzz/corpus/<target>/: the seeds, what cargo-fuzz kept, and every
//! crash found, moved there once fixed) through the fuzz targets' entry points on stable, so a
//! fixed crash stays fixed. Plus the seeds themselves must be accepted: a corpus of files the
//! parsers refuse would fuzz only the error paths.

mod common;

use common::root;
use std::path::Path;

fn files(target: &str) -> Vec<(String, Vec<u8>)> {
    let dir = root().join("fuzz/corpus").join(target);
    let mut out: Vec<(String, Vec<u8>)> = std::fs::read_dir(&dir)
        .unwrap_or_else(|e| panic!("{}: {e}", dir.display()))
        .flatten()
        .filter(|e| e.path().is_file())
        .map(|e| {
            let name = e.file_name().to_string_lossy().into_owned();
            (name, std::fs::read(e.path()).unwrap())
        })
        .collect();
    out.sort();
    assert!(!out.is_empty(), "no corpus for {target}");
    out
}

#[test]
fn the_gguf_corpus_replays_without_a_panic() {
    for (name, bytes) in files("gguf") {
        eprintln!("gguf: {name}");
        flexp::fuzzing::gguf(&bytes);
    }
}

#[test]
fn the_gguf_tokenizer_corpus_replays_without_a_panic() {
    for (name, bytes) in files("gguf_tokenizer") {
        eprintln!("gguf_tokenizer: {name}");
        flexp::fuzzing::gguf_tokenizer(&bytes);
    }
}

#[test]
fn the_safetensors_corpus_replays_without_a_panic() {
    for (name, bytes) in files("safetensors") {
        eprintln!("safetensors: {name}");
        flexp::fuzzing::safetensors(&bytes);
    }
}

#[test]
fn the_wire_corpus_replays_without_a_panic() {
    for (name, bytes) in files("wire") {
        eprintln!("wire: {name}");
        flexp::fuzzing::wire(&bytes);
    }
}

#[test]
fn the_seeds_are_files_the_parsers_accept() {
    let p = Path::new("seed");
    let seed = std::fs::read(root().join("fuzz/corpus/gguf_tokenizer/bpe.gguf")).unwrap();
    let g = flexp::model::gguf::Gguf::parse(seed, p).unwrap();
    let tok = flexp::model::Tokenizer::from_gguf(&g, 261).unwrap();
    let ids = tok
        .encode("the", 16, flexp::model::tokenizer::LongText::Error)
        .unwrap()
        .ids;
    // add_bos_token: <|endoftext|> (259) first; "the" merges to one token (257).
    assert_eq!(ids, vec![259, 257]);
    let st =
        std::fs::read(root().join("fuzz/corpus/safetensors/peft_adapter.safetensors")).unwrap();
    let t = flexp::model::checkpoint::read_all_tensors(st, p).unwrap();
    assert_eq!(t.len(), 14);
    // The wire seeds are well-formed messages whose frames reassemble.
    use flexp::net::proto::{client_message, ClientMessage};
    use prost::Message;
    for (name, shapes) in [("activations_f32", 2), ("activations_bf16", 2)] {
        let bytes = std::fs::read(root().join(format!("fuzz/corpus/wire/{name}.bin"))).unwrap();
        let Some(client_message::Body::Activations(a)) =
            ClientMessage::decode(&bytes[..]).unwrap().body
        else {
            panic!("{name}: not an Activations message");
        };
        let t = flexp::net::wire::decode(&a.frames, &Default::default()).unwrap();
        assert_eq!(t.len(), shapes, "{name}");
        assert_eq!(t[0].shape, vec![2, 12]);
    }
}
