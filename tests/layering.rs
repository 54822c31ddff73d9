//! Dependencies run one way: binary -> run/report -> algorithms/embed/score/generate -> executor/data/federated
//! -> model -> backend, with the utilities (error, rng, fsutil) below them all. A module that
//! names a higher layer in code (comments and docs aside) fails this test.

mod common;

use std::path::Path;

/// The layer of a top-level module of the crate: a module may use its own and lower layers.
fn rank(module: &str) -> Option<u8> {
    Some(match module {
        "error" | "rng" | "fsutil" => 0,
        "backend" => 1,
        "model" => 2,
        "executor" | "data" | "federated" => 3,
        "algorithms" | "embed" | "score" | "generate" => 4,
        "run" | "report" => 5,
        "net" => 6,
        _ => return None,
    })
}

fn rust_files(dir: &Path, out: &mut Vec<std::path::PathBuf>) {
    for e in std::fs::read_dir(dir).unwrap().flatten() {
        let p = e.path();
        if p.is_dir() {
            rust_files(&p, out);
        } else if p.extension().is_some_and(|x| x == "rs") {
            out.push(p);
        }
    }
}

/// The top-level modules a line of code names as `crate::X`.
fn named_modules(line: &str) -> Vec<&str> {
    line.match_indices("crate::")
        .map(|(i, _)| {
            let rest = &line[i + "crate::".len()..];
            let end = rest
                .find(|c: char| !(c.is_ascii_alphanumeric() || c == '_'))
                .unwrap_or(rest.len());
            &rest[..end]
        })
        .collect()
}

#[test]
fn no_module_uses_a_layer_above_it() {
    let src = common::root().join("src");
    let mut files = Vec::new();
    rust_files(&src, &mut files);
    let mut wrong = Vec::new();
    let mut checked = 0;
    for f in &files {
        let rel = f.strip_prefix(&src).unwrap();
        let top = rel
            .components()
            .next()
            .unwrap()
            .as_os_str()
            .to_string_lossy();
        let top = top.trim_end_matches(".rs");
        let Some(own) = rank(top) else { continue };
        let text = std::fs::read_to_string(f).unwrap();
        for (n, line) in text.lines().enumerate() {
            let code = line.trim_start();
            if code.starts_with("//") {
                continue;
            }
            for m in named_modules(code) {
                checked += 1;
                if rank(m).is_some_and(|r| r > own) {
                    wrong.push(format!(
                        "{}:{}: {top} uses crate::{m}",
                        rel.display(),
                        n + 1
                    ));
                }
            }
        }
    }
    assert!(checked > 100, "only {checked} crate paths seen");
    assert!(
        wrong.is_empty(),
        "upward dependencies:\n{}",
        wrong.join("\n")
    );
}

#[test]
fn the_scanner_reads_module_names() {
    assert_eq!(
        named_modules("use crate::model::write_atomic; x(crate::fsutil::f)"),
        vec!["model", "fsutil"]
    );
}
