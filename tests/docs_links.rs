//! The README and docs/ stand alone: every relative link and every repository path they name in
//! code spans exists in the repository, and nothing points outside it (a clone has no
//! `../shared`).

mod common;

use common::root;
use std::path::{Path, PathBuf};

/// README.md, docs/*.md and the READMEs of the top-level folders.
fn documents() -> Vec<PathBuf> {
    let r = root();
    let mut out = vec![r.join("README.md")];
    for dir in ["docs", "kernels", "tools", "models"] {
        let Ok(entries) = std::fs::read_dir(r.join(dir)) else {
            continue;
        };
        for e in entries.flatten() {
            let p = e.path();
            if p.extension().is_some_and(|x| x == "md") {
                out.push(p);
            }
        }
    }
    out.sort();
    out
}

/// Targets of `[text](target)` and `![alt](target)` links.
fn link_targets(text: &str) -> Vec<String> {
    let mut out = Vec::new();
    let mut rest = text;
    while let Some(i) = rest.find("](") {
        let after = &rest[i + 2..];
        let Some(end) = after.find(')') else { break };
        out.push(after[..end].trim().to_string());
        rest = &after[end..];
    }
    out
}

/// Code spans that name a path under one of the repository's top-level folders.
fn code_paths(text: &str) -> Vec<String> {
    const TOP: [&str; 7] = [
        "docs/",
        "tools/",
        "tests/",
        "kernels/",
        "benches/",
        "src/",
        "examples/",
    ];
    text.split('`')
        .skip(1)
        .step_by(2)
        .filter(|s| TOP.iter().any(|t| s.starts_with(t)))
        .filter(|s| !s.contains(' ') && !s.contains('*') && !s.contains('{'))
        .map(|s| s.trim_end_matches([',', '.', ':']).to_string())
        .collect()
}

fn is_external(t: &str) -> bool {
    t.starts_with("http://") || t.starts_with("https://") || t.starts_with("mailto:")
}

#[test]
fn every_relative_link_and_named_path_resolves() {
    let r = root();
    let mut broken = Vec::new();
    let mut checked = 0;
    for doc in documents() {
        let text = std::fs::read_to_string(&doc).unwrap();
        let dir = doc.parent().unwrap_or(Path::new("."));
        for t in link_targets(&text) {
            if is_external(&t) || t.starts_with('#') {
                continue;
            }
            let file = t.split('#').next().unwrap_or("");
            checked += 1;
            if !dir.join(file).exists() {
                broken.push(format!("{}: link {t}", doc.display()));
            }
        }
        for p in code_paths(&text) {
            checked += 1;
            if !r.join(&p).exists() {
                broken.push(format!("{}: path `{p}`", doc.display()));
            }
        }
        if text.contains("../shared") {
            broken.push(format!(
                "{}: points to ../shared, which a clone does not have",
                doc.display()
            ));
        }
    }
    assert!(checked >= 20, "only {checked} links and paths found");
    assert!(
        broken.is_empty(),
        "broken references:\n{}",
        broken.join("\n")
    );
}

#[test]
fn the_link_scanner_finds_what_it_must() {
    let t = "see [a](docs/x.md), ![p](results/p.svg) and [web](https://e.org) `src/lib.rs`.";
    assert_eq!(
        link_targets(t),
        vec!["docs/x.md", "results/p.svg", "https://e.org"]
    );
    assert_eq!(code_paths(t), vec!["src/lib.rs"]);
}
