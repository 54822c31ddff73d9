//! Compile check of every GPU kernel without a GPU: NVRTC compiles each kernels/*.cu file for
//! compute_80 and compute_90, ptxas assembles the PTX for sm_80 and sm_90, and each kernel's
//! registers, static shared memory and spills must be within the budget table in
//! kernels/README.md. Every kernel must also be registered with the SIMT emulator, so nothing
//! ships to the GPU untested.
//!
//! The same cubins then go through nvdisasm for the SASS check (kernels/README.md, "SASS check"):
//! no kernel touches local memory (LDL/STL), and each tensor-core kernel shows the tensor-core
//! instructions its name promises (HMMA for mma.sync, LDSM for ldmatrix, LDGSTS for cp.async).
//!
//! Needs NVRTC, ptxas and nvdisasm: tools/fetch_cuda_tools.sh installs them (the README's test
//! command and .ci/run call it).

use flexp::backend::cuda::nvrtc::{self, KernelResources};
use flexp::backend::cuda::sass;
use flexp::backend::cuda::sources::{kernel_names, KERNEL_FILES};
use std::collections::BTreeMap;

struct Budget {
    registers: u32,
    shared_bytes: u32,
    spills: u32,
}

fn budgets() -> BTreeMap<String, Budget> {
    let text = std::fs::read_to_string(concat!(env!("CARGO_MANIFEST_DIR"), "/kernels/README.md"))
        .expect("kernels/README.md is part of the repository");
    let mut out = BTreeMap::new();
    for line in text.lines() {
        let cells: Vec<&str> = line
            .trim()
            .trim_matches('|')
            .split('|')
            .map(str::trim)
            .collect();
        if cells.len() != 4 {
            continue;
        }
        let nums: Vec<Option<u32>> = cells[1..].iter().map(|c| c.parse().ok()).collect();
        if let [Some(r), Some(s), Some(p)] = nums[..] {
            let name = cells[0].trim_matches('`').to_string();
            assert!(
                out.insert(
                    name.clone(),
                    Budget {
                        registers: r,
                        shared_bytes: s,
                        spills: p
                    }
                )
                .is_none(),
                "kernel {name} has two budget rows"
            );
        }
    }
    out
}

fn check(
    res: &[KernelResources],
    file: &str,
    gpu: &str,
    budgets: &BTreeMap<String, Budget>,
) -> Vec<String> {
    let mut bad = Vec::new();
    for k in res {
        let Some(b) = budgets.get(&k.name) else {
            bad.push(format!(
                "{file}: kernel {} has no budget row in kernels/README.md",
                k.name
            ));
            continue;
        };
        if k.registers > b.registers {
            bad.push(format!(
                "{gpu} {}: {} registers > budget {}",
                k.name, k.registers, b.registers
            ));
        }
        if k.shared_bytes > b.shared_bytes {
            bad.push(format!(
                "{gpu} {}: {} bytes static shared memory > budget {}",
                k.name, k.shared_bytes, b.shared_bytes
            ));
        }
        if k.spill_bytes > b.spills {
            bad.push(format!(
                "{gpu} {}: {} bytes of spills (budget {})",
                k.name, k.spill_bytes, b.spills
            ));
        }
        println!(
            "{gpu:6} {:32} regs {:4} (≤{:4})  smem {:6} (≤{:6})  spills {}  stack {}",
            k.name,
            k.registers,
            b.registers,
            k.shared_bytes,
            b.shared_bytes,
            k.spill_bytes,
            k.stack_bytes
        );
    }
    bad
}

/// The SASS opcodes (prefixes) a kernel must contain, by the family its name states: the probes
/// of each tensor-core instruction, and the tensor-core kernels (`*_tc_*`, `attn_flash_*`,
/// `lora_sgmv_*`), which must run on the tensor cores.
fn required_sass(kernel: &str) -> &'static [&'static str] {
    if kernel.starts_with("tc_probe_mma") {
        &["HMMA"]
    } else if kernel.starts_with("tc_probe_ldmatrix") {
        &["LDSM"]
    } else if kernel.starts_with("tc_probe_cp_async") {
        &["LDGSTS"]
    } else if kernel.contains("_tc_")
        || kernel.starts_with("attn_flash")
        || kernel.starts_with("lora_sgmv")
    {
        &["HMMA"]
    } else {
        &[]
    }
}

/// SASS opcodes (prefixes) a kernel must not contain: the GGUF decoders compute each value with
/// separately rounded multiplies and adds, as ggml's reference does, so a fused multiply-add
/// (which NVRTC forms from `a * b + c` unless told otherwise) would break bit-exactness.
fn forbidden_sass(kernel: &str) -> &'static [&'static str] {
    if kernel.starts_with("gguf_decode") {
        &["FFMA"]
    } else {
        &[]
    }
}

/// The SASS check of one cubin: what `required_sass` asks for, nothing `forbidden_sass` forbids,
/// and no local memory anywhere.
fn check_sass(
    sass: &BTreeMap<String, Vec<String>>,
    names: &[String],
    file: &str,
    gpu: &str,
) -> Vec<String> {
    let mut bad = Vec::new();
    for n in names {
        let Some(ops) = sass.get(n) else {
            bad.push(format!(
                "{file}: kernel {n} missing from nvdisasm's output for {gpu}"
            ));
            continue;
        };
        for want in required_sass(n) {
            if !ops.iter().any(|o| o.starts_with(want)) {
                bad.push(format!("{gpu} {n}: no {want} instruction in its SASS"));
            }
        }
        for never in forbidden_sass(n) {
            if let Some(o) = ops.iter().find(|o| o.starts_with(never)) {
                bad.push(format!("{gpu} {n}: {o} in its SASS, which it must not use"));
            }
        }
        let local: Vec<&String> = ops
            .iter()
            .filter(|o| o.starts_with("LDL") || o.starts_with("STL"))
            .collect();
        if !local.is_empty() {
            bad.push(format!("{gpu} {n}: local memory accesses {local:?}"));
        }
    }
    bad
}

#[test]
fn every_kernel_compiles_for_sm80_and_sm90_within_budget() {
    let where_from = nvrtc::ensure_nvrtc().unwrap_or_else(|e| panic!("{e}"));
    println!(
        "{where_from}, ptxas {}, nvdisasm {}",
        nvrtc::ptxas_path().display(),
        sass::nvdisasm_path().display()
    );
    let budgets = budgets();
    let mut bad = Vec::new();
    let mut seen = 0;
    for (file, text) in KERNEL_FILES {
        let names = kernel_names(text);
        for (arch, gpu) in [("compute_80", "sm_80"), ("compute_90", "sm_90")] {
            let ptx = nvrtc::compile(file, text, arch).unwrap_or_else(|e| panic!("{e}"));
            let asm = nvrtc::assemble(&ptx, gpu).unwrap_or_else(|e| panic!("{e}"));
            let res = nvrtc::parse_ptxas(&asm.report);
            let ops = sass::kernel_instructions(&asm.cubin).unwrap_or_else(|e| panic!("{e}"));
            bad.extend(check_sass(&ops, &names, file, gpu));
            for n in &names {
                if !res.iter().any(|r| &r.name == n) {
                    bad.push(format!(
                        "{file}: kernel {n} missing from the ptxas report for {gpu}"
                    ));
                }
            }
            seen += res.len();
            bad.extend(check(&res, file, gpu, &budgets));
        }
    }
    assert!(seen > 0, "no kernels were compiled");
    assert!(bad.is_empty(), "compile check failed:\n{}", bad.join("\n"));
}

#[cfg(feature = "emulator")]
#[test]
fn every_gpu_kernel_is_registered_with_the_emulator() {
    let registered = flexp::backend::cuda::emulator::Emulator::kernel_names();
    let missing: Vec<String> = KERNEL_FILES
        .iter()
        .flat_map(|(f, t)| {
            kernel_names(t)
                .into_iter()
                .map(move |n| format!("{f}: {n}"))
        })
        .filter(|n| !registered.iter().any(|r| n.ends_with(&format!(": {r}"))))
        .collect();
    assert!(
        missing.is_empty(),
        "kernels without EMU_REGISTER: {missing:?}"
    );
}

#[test]
fn ptxas_report_parser_reads_registers_shared_memory_and_spills() {
    // A verbatim ptxas 12.9 -v report (two kernels, one with spills).
    let report = "ptxas info    : 0 bytes gmem\n\
ptxas info    : Compiling entry function 'gemm_f32' for 'sm_80'\n\
ptxas info    : Function properties for gemm_f32\n\
    8 bytes stack frame, 12 bytes spill stores, 16 bytes spill loads\n\
ptxas info    : Used 96 registers, used 1 barriers, 16896 bytes smem, 400 bytes cmem[0]\n\
ptxas info    : Compiling entry function 'ew_add' for 'sm_80'\n\
ptxas info    : Function properties for ew_add\n\
    0 bytes stack frame, 0 bytes spill stores, 0 bytes spill loads\n\
ptxas info    : Used 10 registers, 380 bytes cmem[0]\n";
    let r = nvrtc::parse_ptxas(report);
    assert_eq!(r.len(), 2);
    assert_eq!(
        (
            r[0].name.as_str(),
            r[0].registers,
            r[0].shared_bytes,
            r[0].spill_bytes,
            r[0].stack_bytes
        ),
        ("gemm_f32", 96, 16896, 28, 8)
    );
    assert_eq!(
        (
            r[1].name.as_str(),
            r[1].registers,
            r[1].shared_bytes,
            r[1].spill_bytes
        ),
        ("ew_add", 10, 0, 0)
    );
}

#[test]
fn sass_parser_reads_each_kernels_opcodes() {
    // Verbatim nvdisasm 13.5 `-c` output for an sm_80 cubin (two kernels, one predicated op).
    let text = "\t.headerflags\t@\"EF_CUDA_SM80\"\n\
//--------------------- .text.k                   --------------------------\n\
\t.section\t.text.k,\"ax\",@progbits\n\
\t.sectioninfo\t@\"SHI_REGISTERS=16\"\n\
k:\n\
.text.k:\n\
        /*0040*/                   LDG.E R4, [R2.64] ;\n\
        /*00d0*/                   HMMA.16816.F32.BF16 R4, R4, R12, R8 ;\n\
//--------------------- .text.j                   --------------------------\n\
\t.section\t.text.j,\"ax\",@progbits\n\
        /*0000*/              @!P0 LDL R2, [R1] ;\n\
        /*0010*/                   EXIT ;\n";
    let ops = sass::parse_disassembly(text);
    assert_eq!(ops["k"], vec!["LDG.E", "HMMA.16816.F32.BF16"]);
    assert_eq!(ops["j"], vec!["LDL", "EXIT"]);
    let names = vec!["j".to_string(), "tc_probe_mma".to_string()];
    let bad = check_sass(&ops, &names, "x.cu", "sm_80");
    assert!(bad.iter().any(|b| b.contains("j: local memory")), "{bad:?}");
    assert!(
        bad.iter().any(|b| b.contains("tc_probe_mma missing")),
        "{bad:?}"
    );
}

#[test]
fn precompiled_ptx_loads_and_stale_ptx_is_refused() {
    // `flexp-run ptx` writes one stamped file per kernel file; a GPU machine without NVRTC loads
    // them through FLEXP_PTX_DIR (nvrtc::kernel_ptx calls load_ptx then).
    let dir = std::env::temp_dir().join(format!("flexp-ptx-test-{}", std::process::id()));
    let written = nvrtc::write_ptx(&dir, "compute_80").unwrap_or_else(|e| panic!("{e}"));
    assert_eq!(written.len(), KERNEL_FILES.len());
    let (file, text) = KERNEL_FILES[0];
    let loaded = nvrtc::load_ptx(&dir, file, text, "compute_80").unwrap();
    assert_eq!(loaded, nvrtc::compile(file, text, "compute_80").unwrap());
    // Another source (a kernel edited since) or another architecture: clear errors, never
    // the old code.
    let edited = format!("{text}\n// edited\n");
    let err = nvrtc::load_ptx(&dir, file, &edited, "compute_80")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("another version") && err.contains("flexp-run ptx"),
        "{err}"
    );
    let err = nvrtc::load_ptx(&dir, file, text, "compute_90")
        .unwrap_err()
        .to_string();
    assert!(
        err.contains("cannot read") && err.contains("compute_90"),
        "{err}"
    );
    std::fs::remove_dir_all(&dir).unwrap();
}
