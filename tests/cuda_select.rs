//! Backend selection never panics: `--backend cuda` on a machine without a GPU is a clear error
//! (exit 2), `auto` falls back to the CPU and says why, and `emulator` runs the CUDA backend.

use flexp::backend::cuda::driver::CudaDriver;
use flexp::backend::cuda::{select, BackendChoice, Selected};
use std::process::Command;

/// Whether this machine has a usable GPU, observed independently of the code under test:
/// `FLEXP_EXPECT_GPU=1|0` where the runner knows (tools and CI set it), else whether the NVIDIA
/// device node exists.
fn machine_has_gpu() -> bool {
    match std::env::var("FLEXP_EXPECT_GPU").as_deref() {
        Ok("1") => true,
        Ok("0") => false,
        _ => std::path::Path::new("/dev/nvidia0").exists(),
    }
}

#[test]
fn cuda_choice_matches_what_the_machine_has() {
    let chosen = select(BackendChoice::Cuda);
    if machine_has_gpu() {
        let (sel, line) = chosen.expect("a GPU is present: --backend cuda must open it");
        assert!(matches!(sel, Selected::Cuda(_)), "{line}");
        assert!(line.contains("cuda on"), "{line}");
        assert!(CudaDriver::probe().expect("probe on a GPU machine") > 0);
    } else {
        let msg = match chosen {
            Ok((_, line)) => panic!("no GPU here, yet --backend cuda gave: {line}"),
            Err(e) => e.to_string(),
        };
        assert!(
            msg.contains("CUDA"),
            "the error must say CUDA is missing: {msg}"
        );
        assert!(CudaDriver::probe().is_err(), "the probe must agree: no GPU");
    }
}

#[test]
fn auto_falls_back_to_cpu_with_a_reason_when_no_gpu() {
    let (sel, line) = select(BackendChoice::Auto).expect("auto never fails");
    if machine_has_gpu() {
        assert!(matches!(sel, Selected::Cuda(_)), "{line}");
        assert!(
            line.contains("cuda on") && line.contains("(auto)"),
            "{line}"
        );
    } else {
        assert!(matches!(sel, Selected::Cpu(_)), "{line}");
        assert!(
            line.contains("no usable GPU") && line.contains("CUDA"),
            "{line}"
        );
    }
}

#[cfg(feature = "emulator")]
#[test]
fn emulator_choice_gives_the_cuda_backend() {
    let (sel, line) = select(BackendChoice::Emulator).unwrap();
    assert!(matches!(sel, Selected::Cuda(_)));
    assert!(line.contains("emulator"));
}

#[test]
fn cli_backend_cuda_without_gpu_exits_2_with_message() {
    if machine_has_gpu() {
        // With a GPU the same command must succeed instead.
        let out = Command::new(env!("CARGO_BIN_EXE_flexp-run"))
            .args(["--backend", "cuda", "plan", "--config"])
            .arg(concat!(
                env!("CARGO_MANIFEST_DIR"),
                "/examples/rotten_tomatoes.toml"
            ))
            .output()
            .unwrap();
        assert!(out.status.success());
        return;
    }
    let dir = std::env::temp_dir().join(format!("flexp-select-{}", std::process::id()));
    std::fs::create_dir_all(&dir).unwrap();
    let input = dir.join("in.txt");
    std::fs::write(&input, "a text\n").unwrap();
    let output = dir.join("out.jsonl");
    let out = Command::new(env!("CARGO_BIN_EXE_flexp-run"))
        .args(["--backend", "cuda", "embed", "--model"])
        .arg(concat!(env!("CARGO_MANIFEST_DIR"), "/tests/fixtures/bert"))
        .arg("--input")
        .arg(&input)
        .arg("--output")
        .arg(&output)
        .output()
        .unwrap();
    let stderr = String::from_utf8_lossy(&out.stderr);
    assert_eq!(out.status.code(), Some(2), "{stderr}");
    assert!(
        stderr.contains("error:") && stderr.contains("CUDA"),
        "{stderr}"
    );
    assert!(!stderr.contains("panicked"), "{stderr}");
    assert!(!output.exists(), "no output file on failure");
}
