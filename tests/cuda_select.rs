//! Backend selection never panics: `--backend cuda` on a machine without a GPU is a clear error
//! (exit 2), `auto` falls back to the CPU and says why, and `emulator` runs the CUDA backend.

use flexp::backend::cuda::driver::CudaDriver;
use flexp::backend::cuda::{select, BackendChoice, Selected};
use std::process::Command;

#[test]
fn cuda_choice_matches_what_the_machine_has() {
    let probe = CudaDriver::probe();
    match (select(BackendChoice::Cuda), probe) {
        (Ok((Selected::Cuda(_), line)), Ok(_)) => assert!(line.contains("cuda on")),
        (Err(e), Err(_)) => {
            let msg = e.to_string();
            assert!(msg.contains("CUDA") || msg.contains("NVRTC"), "{msg}");
        }
        (Ok((Selected::Cpu(_), _)), _) => panic!("--backend cuda must never give the CPU"),
        (Ok(_), Err(e)) => panic!("cuda selected although the probe failed: {e}"),
        (Err(e), Ok(n)) => {
            // A GPU is present but unusable (e.g. NVRTC missing): the message must say why.
            assert!(n > 0 && !e.to_string().is_empty());
        }
    }
}

#[test]
fn auto_falls_back_to_cpu_with_a_reason_when_no_gpu() {
    let (sel, line) = select(BackendChoice::Auto).expect("auto never fails");
    match (sel, CudaDriver::probe()) {
        (Selected::Cpu(_), Err(_)) => assert!(line.contains("no usable GPU"), "{line}"),
        (Selected::Cuda(_), Ok(_)) => assert!(line.contains("cuda on"), "{line}"),
        (Selected::Cpu(_), Ok(_)) => assert!(line.contains("no usable GPU"), "{line}"),
        (Selected::Cuda(_), Err(e)) => panic!("auto chose cuda although the probe failed: {e}"),
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
    if CudaDriver::probe().is_ok() {
        // With a GPU the same command must succeed instead.
        let out = Command::new(env!("CARGO_BIN_EXE_flexp-run"))
            .args(["--backend", "cuda", "plan"])
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
