//! Memory of a GGUF model after loading: the blocks stay quantized, so the process holds about
//! the file's size, not the f32 model's (SmolLM2-135M: 98 MB as Q4_1, 540 MB in f32). The bound
//! is the one docs/performance.md states: resident memory after loading at most 1.25 × the file
//! size + 100 MB. Alone in its test binary so no other test's memory is counted.

mod common;

use common::root;
use flexp::backend::cpu::Cpu;
use flexp::model::load_model;

/// Resident set size of this process, from /proc/self/status.
fn rss_bytes() -> u64 {
    let s = std::fs::read_to_string("/proc/self/status").unwrap();
    let line = s.lines().find(|l| l.starts_with("VmRSS:")).unwrap();
    let kb: u64 = line.split_whitespace().nth(1).unwrap().parse().unwrap();
    kb * 1024
}

#[test]
fn a_loaded_gguf_model_holds_about_its_file_size() {
    let p = root().join("models/SmolLM2-135M-Instruct.Q4_1.gguf");
    assert!(
        p.exists(),
        "the SmolLM2 GGUF file is missing: run `bash tools/fetch_smollm2.sh` first"
    );
    let file = std::fs::metadata(&p).unwrap().len();
    let before = rss_bytes();
    let m = load_model(&Cpu, &p).unwrap();
    let after = rss_bytes();
    let bound = file + file / 4 + 100_000_000;
    eprintln!(
        "file {} MB, RSS before {} MB, after {} MB (bound {} MB)",
        file / 1_000_000,
        before / 1_000_000,
        after / 1_000_000,
        bound / 1_000_000
    );
    assert!(after <= bound, "RSS {after} after loading exceeds {bound}");
    assert_eq!(m.config.layers, 30);
}
