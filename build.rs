//! Builds the SIMT emulator (kernels/emu) together with every kernel in kernels/*.cu compiled for
//! the host, so the CUDA backend can run, and be tested, on machines without a GPU.
//!
//! All kernels go into one translation unit, each file inside its own namespace: the emulator
//! finds kernels through static registration objects, and a static library would drop object
//! files that nothing references by symbol.

use std::path::Path;

fn main() {
    println!("cargo:rerun-if-changed=kernels");
    println!("cargo:rerun-if-changed=build.rs");
    compile_protocol();
    if std::env::var_os("CARGO_FEATURE_EMULATOR").is_none() {
        return;
    }
    build_emulator();
}

/// proto/flexp.proto to Rust (prost messages, tonic client and server) without a system protoc.
fn compile_protocol() {
    println!("cargo:rerun-if-changed=proto");
    let fds = protox::compile(["proto/flexp.proto"], ["proto"])
        .unwrap_or_else(|e| panic!("proto/flexp.proto: {e}"));
    tonic_prost_build::configure()
        .build_client(true)
        .build_server(true)
        .compile_fds(fds)
        .unwrap_or_else(|e| panic!("generating the protocol code: {e}"));
}

fn build_emulator() {
    let kernels = Path::new("kernels");
    let mut files: Vec<_> = std::fs::read_dir(kernels)
        .expect("kernels/ is part of the crate")
        .filter_map(|e| e.ok().map(|e| e.path()))
        .filter(|p| p.extension().is_some_and(|x| x == "cu"))
        .collect();
    files.sort();
    let abs = std::fs::canonicalize(kernels).expect("kernels/ is readable");
    let mut unit = String::new();
    // The shared headers at file scope, before the per-file namespaces: a header's functions
    // belong to whichever file includes it first (#pragma once), so they must not land in one
    // kernel file's namespace.
    unit.push_str(&format!(
        "#include \"{}\"\n#include \"{}\"\n#include \"{}\"\n#include \"{}\"\n",
        abs.join("emu/emu_runtime.cpp").display(),
        abs.join("common.cuh").display(),
        abs.join("tensor_core.cuh").display(),
        abs.join("tc_fragments.cuh").display()
    ));
    // Kernels that break the rules on purpose, to prove the emulator reports each violation.
    let faults = abs.join("emu/fault_kernels.cu");
    for (i, f) in files.iter().chain(std::iter::once(&faults)).enumerate() {
        let f = std::fs::canonicalize(f).expect("kernel file is readable");
        unit.push_str(&format!(
            "namespace flexp_kernels_{i} {{\n#include \"{}\"\n}}\n",
            f.display()
        ));
    }
    let out = std::path::PathBuf::from(std::env::var("OUT_DIR").expect("cargo sets OUT_DIR"));
    let tu = out.join("emu_all.cpp");
    std::fs::write(&tu, unit).expect("OUT_DIR is writable");
    cc::Build::new()
        .cpp(true)
        .file(&tu)
        .include(&abs)
        .define("FLEXP_EMU", None)
        .flag("-std=c++17")
        .flag_if_supported("-Wno-unknown-pragmas")
        .flag_if_supported("-Wno-unused-parameter")
        .opt_level(2)
        .warnings(true)
        .compile("flexp_emu");
}
