//! Entry points of the fuzz targets (`fuzz/`, run with cargo-fuzz on nightly) and of the test
//! that replays their corpus on stable (`tests/fuzz_corpus.rs`). Each takes untrusted bytes and
//! runs everything a user's file goes through; any outcome but a panic, a hang or an unbounded
//! allocation is a pass.

use crate::model::checkpoint::read_all_tensors;
use crate::model::gguf::Gguf;
use crate::model::Tokenizer;
use std::path::Path;

/// Tensors larger than this many values are not decoded (a fuzz input may declare huge ones that
/// fit its bytes only as zero-length rows; decoding stays bounded by the file either way).
const MAX_DECODE: usize = 1 << 20;

/// A GGUF file: parse, decode every (small enough) tensor, derive the model configuration.
pub fn gguf(bytes: &[u8]) {
    if let Ok(g) = Gguf::parse(bytes.to_vec(), Path::new("fuzz.gguf")) {
        for t in &g.tensors {
            if t.len() <= MAX_DECODE {
                let _ = g.dequantize(t);
            }
        }
        let _ = g.model_config();
        let _ = g.projection_bytes_per_block();
    }
}

/// A GGUF file's tokenizer metadata: build the tokenizer and encode and decode a text with it.
pub fn gguf_tokenizer(bytes: &[u8]) {
    if let Ok(g) = Gguf::parse(bytes.to_vec(), Path::new("fuzz.gguf")) {
        if let Ok(t) = Tokenizer::from_gguf(&g, usize::MAX) {
            if let Ok(e) = t.encode(
                "a film, the plot 123 <|endoftext|>",
                64,
                crate::model::tokenizer::LongText::Truncate,
            ) {
                let _ = t.decode(&e.ids);
            }
        }
    }
}

/// A safetensors file: validate the header and read every tensor as f32.
pub fn safetensors(bytes: &[u8]) {
    let _ = read_all_tensors(bytes.to_vec(), Path::new("fuzz.safetensors"));
}

/// A message from a peer of the deployment: the bytes as a protobuf `ClientMessage` and as a
/// `ServerMessage`, and any tensor frames they carry reassembled under a 1 MiB limit.
pub fn wire(bytes: &[u8]) {
    use crate::net::proto::{client_message, server_message, ClientMessage, ServerMessage};
    use crate::net::wire::{decode, Limits};
    use prost::Message;
    let limits = Limits {
        max_message_bytes: 1 << 20,
        ..Limits::default()
    };
    if let Ok(m) = ClientMessage::decode(bytes) {
        if let Some(client_message::Body::Activations(a)) = m.body {
            let _ = decode(&a.frames, &limits);
        }
    }
    if let Ok(m) = ServerMessage::decode(bytes) {
        if let Some(server_message::Body::Gradients(g)) = m.body {
            let _ = decode(&g.frames, &limits);
        }
    }
}
