#![no_main]
//! Fuzz target: see flexp::fuzzing::wire.

libfuzzer_sys::fuzz_target!(|data: &[u8]| flexp::fuzzing::wire(data));
