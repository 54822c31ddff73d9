#![no_main]
//! Fuzz target: see flexp::fuzzing::safetensors.

libfuzzer_sys::fuzz_target!(|data: &[u8]| flexp::fuzzing::safetensors(data));
