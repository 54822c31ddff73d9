#![no_main]
//! Fuzz target: see flexp::fuzzing::gguf.

libfuzzer_sys::fuzz_target!(|data: &[u8]| flexp::fuzzing::gguf(data));
