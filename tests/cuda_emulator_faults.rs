//! The SIMT emulator reports the errors a GPU would hide: each kernel of
//! kernels/emu/fault_kernels.cu breaks one rule and the launch must fail naming it, while a
//! correct kernel doing the same work passes.
#![cfg(feature = "emulator")]

use flexp::backend::cuda::emulator::Emulator;
use flexp::backend::cuda::{DevPtr, Device, KArg, LaunchCfg, StreamId};

// The raw Device API is unsafe because a GPU would trust these addresses and kernels; the
// emulator checks every address against its allocation table and every kernel access against
// its allocation's bounds, so a broken contract, which these tests commit on purpose, is an
// error and never memory corruption. That is the SAFETY argument of every block below.

fn upload(dev: &Emulator, data: &[f32]) -> DevPtr {
    let p = dev.alloc(data.len() * 4, StreamId(0)).unwrap();
    // SAFETY: emulator-checked (see above); `p` holds data.len() floats.
    unsafe { dev.write(p, bytemuck::cast_slice(data), StreamId(0)) }.unwrap();
    p
}

fn download(dev: &Emulator, p: DevPtr, n: usize) -> Vec<f32> {
    let mut out = vec![0f32; n];
    // SAFETY: emulator-checked (see above).
    unsafe { dev.read(bytemuck::cast_slice_mut(&mut out), p, StreamId(0)) }.unwrap();
    out
}

fn launch_err(dev: &Emulator, name: &str, cfg: LaunchCfg, args: &[KArg]) -> String {
    // SAFETY: emulator-checked (see above); these launches fault on purpose.
    match unsafe { dev.launch(name, cfg, args, StreamId(0)) } {
        Ok(()) => panic!("{name} should have faulted"),
        Err(e) => e.to_string(),
    }
}

#[test]
fn out_of_bounds_global_read_is_reported() {
    let dev = Emulator::new();
    let x = upload(&dev, &[1.0; 100]);
    let y = dev.alloc(400, StreamId(0)).unwrap();
    let err = launch_err(
        &dev,
        "fault_oob_read",
        LaunchCfg::cover(100, 64),
        &[KArg::Ptr(x), KArg::Ptr(y), KArg::I32(100)],
    );
    assert!(err.contains("out-of-bounds global access"), "{err}");
    assert!(err.contains("fault_oob_read"), "{err}");
    // Thread 99 is the one that reads element 100.
    assert!(err.contains("block (1,0,0) thread (35,0,0)"), "{err}");
}

#[test]
fn divergent_syncthreads_is_reported() {
    let dev = Emulator::new();
    let y = dev.alloc(64 * 4, StreamId(0)).unwrap();
    let err = launch_err(
        &dev,
        "fault_divergent_barrier",
        LaunchCfg::linear(1, 64),
        &[KArg::Ptr(y)],
    );
    assert!(err.contains("divergent barrier"), "{err}");
}

#[test]
fn reading_unwritten_shared_memory_is_reported() {
    let dev = Emulator::new();
    let y = dev.alloc(64 * 4, StreamId(0)).unwrap();
    let err = launch_err(
        &dev,
        "fault_uninit_shared",
        LaunchCfg::linear(1, 64),
        &[KArg::Ptr(y)],
    );
    assert!(err.contains("no thread of this block has written"), "{err}");
}

#[test]
fn shuffle_waiting_for_an_exited_lane_is_reported() {
    let dev = Emulator::new();
    let y = dev.alloc(32 * 4, StreamId(0)).unwrap();
    let err = launch_err(
        &dev,
        "fault_shuffle_exited_lane",
        LaunchCfg::linear(1, 32),
        &[KArg::Ptr(y)],
    );
    assert!(err.contains("has exited"), "{err}");
}

#[test]
fn wrong_argument_type_and_count_are_reported() {
    let dev = Emulator::new();
    let x = upload(&dev, &[1.0; 10]);
    let y = dev.alloc(4, StreamId(0)).unwrap();
    let err = launch_err(
        &dev,
        "fault_control_block_sum",
        LaunchCfg::linear(1, 64),
        &[KArg::Ptr(x), KArg::Ptr(y), KArg::F32(10.0)],
    );
    assert!(err.contains("argument 2"), "{err}");
    let err = launch_err(
        &dev,
        "fault_control_block_sum",
        LaunchCfg::linear(1, 64),
        &[KArg::Ptr(x), KArg::Ptr(y)],
    );
    assert!(err.contains("takes 3 arguments"), "{err}");
    // SAFETY: emulator-checked (see above); `x` is used after this free on purpose.
    unsafe { dev.free(x, StreamId(0)) }.unwrap();
    let err = launch_err(
        &dev,
        "fault_control_block_sum",
        LaunchCfg::linear(1, 64),
        &[KArg::Ptr(x), KArg::Ptr(y), KArg::I32(10)],
    );
    assert!(err.contains("no live allocation"), "{err}");
}

#[test]
fn correct_block_reduction_runs_and_matches() {
    let dev = Emulator::new();
    // 1,000 values over 96 threads: three warps, a strided loop with a ragged tail.
    let data: Vec<f32> = (0..1000)
        .map(|i| ((i * 37) % 101) as f32 * 0.5 - 20.0)
        .collect();
    let want: f64 = data.iter().map(|&v| v as f64).sum();
    let x = upload(&dev, &data);
    let y = dev.alloc(4, StreamId(0)).unwrap();
    // SAFETY: emulator-checked (see above); x holds 1000 floats, y one.
    unsafe {
        dev.launch(
            "fault_control_block_sum",
            LaunchCfg::linear(1, 96),
            &[KArg::Ptr(x), KArg::Ptr(y), KArg::I32(1000)],
            StreamId(0),
        )
    }
    .unwrap();
    let got = download(&dev, y, 1)[0];
    assert!((got as f64 - want).abs() < 1e-2, "{got} vs {want}");
}

#[test]
fn fresh_device_memory_reads_as_nan_not_zero() {
    let dev = Emulator::new();
    let p = dev.alloc(16, StreamId(0)).unwrap();
    assert!(download(&dev, p, 4).iter().all(|v| v.is_nan()));
}
