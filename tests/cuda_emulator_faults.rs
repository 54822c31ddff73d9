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

/// A launch expected to succeed (or whose outcome the caller inspects).
fn launch(
    dev: &Emulator,
    name: &str,
    cfg: LaunchCfg,
    args: &[KArg],
    stream: StreamId,
) -> flexp::Result<()> {
    // SAFETY: emulator-checked (see above).
    unsafe { dev.launch(name, cfg, args, stream) }
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
    launch(
        &dev,
        "fault_control_block_sum",
        LaunchCfg::linear(1, 96),
        &[KArg::Ptr(x), KArg::Ptr(y), KArg::I32(1000)],
        StreamId(0),
    )
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

/// Seeds every order-dependent test runs under: index order (0) and several shuffled schedules.
const SEEDS: [u64; 6] = [0, 1, 2, 3, 0xdead_beef, u64::MAX];

fn seeded(seed: u64) -> Emulator {
    Emulator::new().with_schedule_seed(seed)
}

/// How many times `needle` occurs in `hay`.
fn count(hay: &str, needle: &str) -> usize {
    hay.matches(needle).count()
}

#[test]
fn missing_syncthreads_is_a_race_under_every_schedule() {
    let data: Vec<f32> = (0..512).map(|i| (i % 13) as f32 - 6.0).collect();
    for seed in SEEDS {
        let dev = seeded(seed);
        let x = upload(&dev, &data);
        let y = dev.alloc(8, StreamId(0)).unwrap();
        let err = launch_err(
            &dev,
            "fault_race_missing_sync",
            LaunchCfg::linear(2, 256),
            &[KArg::Ptr(x), KArg::Ptr(y)],
        );
        // Kernel, block, the two threads and the location.
        assert!(
            err.contains("kernel `fault_race_missing_sync`"),
            "{seed}: {err}"
        );
        assert!(
            err.contains("shared-memory race on `s` byte "),
            "{seed}: {err}"
        );
        assert!(err.contains("block ("), "{seed}: {err}");
        assert_eq!(count(&err, "thread ("), 2, "{seed}: {err}");
        assert!(err.contains("same barrier interval"), "{seed}: {err}");
        // The control, identical but for the barrier, passes under the same schedule.
        launch(
            &dev,
            "fault_control_tree_sum",
            LaunchCfg::linear(2, 256),
            &[KArg::Ptr(x), KArg::Ptr(y)],
            StreamId(0),
        )
        .unwrap();
        let got = download(&dev, y, 2);
        for b in 0..2 {
            let want: f32 = data[b * 256..(b + 1) * 256].iter().sum();
            assert_eq!(got[b], want, "seed {seed} block {b}");
        }
    }
}

#[test]
fn blocks_writing_one_global_location_race_under_every_schedule() {
    for seed in SEEDS {
        let dev = seeded(seed);
        let x = upload(&dev, &[1.0, 2.0, 3.0, 4.0]);
        let y = dev.alloc(4, StreamId(0)).unwrap();
        let err = launch_err(
            &dev,
            "fault_race_cross_block",
            LaunchCfg::linear(4, 32),
            &[KArg::Ptr(x), KArg::Ptr(y)],
        );
        assert!(
            err.contains("kernel `fault_race_cross_block`"),
            "{seed}: {err}"
        );
        assert!(
            err.contains("global-memory race at byte 0 of a 4-byte allocation"),
            "{seed}: {err}"
        );
        assert!(
            err.contains("blocks of one launch are not ordered"),
            "{seed}: {err}"
        );
        // This block and the other one, each with its thread.
        assert_eq!(count(&err, "block ("), 2, "{seed}: {err}");
        assert_eq!(count(&err, "thread (0,0,0)"), 2, "{seed}: {err}");
    }
}

#[test]
fn atomics_do_not_race_with_each_other() {
    let data: Vec<f32> = (0..4 * 64).map(|i| (i % 5) as f32).collect();
    let want: f32 = data.iter().sum();
    for seed in SEEDS {
        let dev = seeded(seed);
        let x = upload(&dev, &data);
        let y = upload(&dev, &[0.0]);
        launch(
            &dev,
            "fault_control_atomics",
            LaunchCfg::linear(4, 64),
            &[KArg::Ptr(x), KArg::Ptr(y)],
            StreamId(0),
        )
        .unwrap();
        assert_eq!(download(&dev, y, 1)[0], want, "seed {seed}");
    }
}

#[test]
fn syncwarp_orders_shared_memory_within_a_warp_and_its_absence_is_a_race() {
    for seed in SEEDS {
        let dev = seeded(seed);
        let y = dev.alloc(32 * 4, StreamId(0)).unwrap();
        launch(
            &dev,
            "fault_warp_exchange",
            LaunchCfg::linear(1, 32),
            &[KArg::Ptr(y), KArg::I32(1)],
            StreamId(0),
        )
        .unwrap();
        let want: Vec<f32> = (0..32).map(|l| ((l + 1) % 32) as f32).collect();
        assert_eq!(download(&dev, y, 32), want, "seed {seed}");
        let err = launch_err(
            &dev,
            "fault_warp_exchange",
            LaunchCfg::linear(1, 32),
            &[KArg::Ptr(y), KArg::I32(0)],
        );
        assert!(err.contains("shared-memory race on `s`"), "{seed}: {err}");
        assert_eq!(count(&err, "thread ("), 2, "{seed}: {err}");
    }
}

#[test]
fn misaligned_vector_load_is_reported() {
    let dev = Emulator::new();
    let x = upload(&dev, &[1.0; 16]);
    let y = dev.alloc(4, StreamId(0)).unwrap();
    let err = launch_err(
        &dev,
        "fault_misaligned_float4",
        LaunchCfg::linear(1, 1),
        &[KArg::Ptr(x), KArg::Ptr(y), KArg::I32(1)],
    );
    assert!(
        err.contains("misaligned 16-byte global access at byte 4 of a 64-byte allocation"),
        "{err}"
    );
    // The same load from a 16-byte boundary is fine.
    launch(
        &dev,
        "fault_misaligned_float4",
        LaunchCfg::linear(1, 1),
        &[KArg::Ptr(x), KArg::Ptr(y), KArg::I32(4)],
        StreamId(0),
    )
    .unwrap();
    assert_eq!(download(&dev, y, 1)[0], 4.0);
}

fn big_smem(dev: &Emulator, bytes: u32) -> flexp::error::Result<()> {
    let y = dev.alloc(4, StreamId(0)).unwrap();
    launch(
        dev,
        "fault_big_dynamic_smem",
        LaunchCfg {
            shared_bytes: bytes,
            ..LaunchCfg::linear(1, 128)
        },
        &[KArg::Ptr(y), KArg::I32((bytes / 4) as i32)],
        StreamId(0),
    )
}

#[test]
fn dynamic_shared_memory_is_limited_per_architecture() {
    // sm_80 by default: 163 KiB is the most one block may have.
    let sm80 = Emulator::new();
    assert_eq!(sm80.shared_memory_limit(), 163 * 1024);
    big_smem(&sm80, 163 * 1024).unwrap();
    let err = big_smem(&sm80, 163 * 1024 + 4).unwrap_err().to_string();
    assert!(
        err.contains("exceed the 163 KiB per block of sm_80"),
        "{err}"
    );
    // sm_90 allows 227 KiB.
    let sm90 = Emulator::new().with_arch(90).unwrap();
    big_smem(&sm90, 200 * 1024).unwrap();
    big_smem(&sm90, 227 * 1024).unwrap();
    let err = big_smem(&sm90, 227 * 1024 + 4).unwrap_err().to_string();
    assert!(
        err.contains("exceed the 227 KiB per block of sm_90"),
        "{err}"
    );
    let err = Emulator::new().with_arch(75).unwrap_err().to_string();
    assert!(err.contains("unknown target architecture sm_75"), "{err}");
}

/// Distance in units in the last place of `want` (as an f32) between `got` and `want`.
fn ulps(got: f32, want: f64) -> f64 {
    let w = want as f32;
    let ulp = (f32::from_bits(w.abs().to_bits() + 1) - w.abs()) as f64;
    (got as f64 - want).abs() / ulp
}

#[test]
fn fast_math_intrinsics_carry_the_gpus_documented_error() {
    let dev = Emulator::new();
    let xs: Vec<f32> = (0..4000)
        .map(|i| {
            let t = i as f32 / 4000.0;
            // -80..80 for __expf, spread over many binades for the others.
            (t * 160.0 - 80.0) + 0.013 * (i % 7) as f32
        })
        .filter(|x| *x != 0.0)
        .collect();
    let n = xs.len();
    let x = upload(&dev, &xs);
    let y = dev.alloc(n * 16, StreamId(0)).unwrap();
    launch(
        &dev,
        "fault_fast_math",
        LaunchCfg::cover(n, 128),
        &[KArg::Ptr(x), KArg::Ptr(y), KArg::I32(n as i32)],
        StreamId(0),
    )
    .unwrap();
    let got = download(&dev, y, n * 4);
    let (mut exp_inexact, mut log_inexact, mut div_inexact, mut rsqrt_inexact) = (0, 0, 0, 0);
    for (i, &v) in xs.iter().enumerate() {
        let vd = v as f64;
        // __expf: 2 + floor(|1.16 x|) ulp (CUDA C Programming Guide, intrinsic functions).
        let e = vd.exp();
        if e > f32::MIN_POSITIVE as f64 && e < f32::MAX as f64 {
            let err = ulps(got[4 * i], e);
            let bound = 2.0 + (1.16 * vd.abs()).floor();
            assert!(
                err <= bound,
                "__expf({v}) = {} is {err} ulp off",
                got[4 * i]
            );
            exp_inexact += usize::from(got[4 * i] != e as f32);
        }
        // __logf: 2^-21.41 absolute on [0.5, 2], 3 ulp elsewhere.
        let a = vd.abs();
        let l = a.ln();
        if (0.5..=2.0).contains(&a) {
            let err = (got[4 * i + 1] as f64 - l).abs();
            assert!(err <= 2f64.powf(-21.41), "__logf({a}) is {err} off");
        } else {
            let err = ulps(got[4 * i + 1], l);
            assert!(
                err <= 3.0,
                "__logf({a}) = {} is {err} ulp off",
                got[4 * i + 1]
            );
        }
        log_inexact += usize::from(got[4 * i + 1] != l as f32);
        // __fdividef: 2 ulp for divisors in [2^-126, 2^126].
        let d = 1.0 / vd;
        let err = ulps(got[4 * i + 2], d);
        assert!(
            err <= 2.0,
            "__fdividef(1, {v}) = {} is {err} ulp off",
            got[4 * i + 2]
        );
        div_inexact += usize::from(got[4 * i + 2] != d as f32);
        // rsqrtf: 2 ulp.
        let r = 1.0 / a.sqrt();
        let err = ulps(got[4 * i + 3], r);
        assert!(
            err <= 2.0,
            "rsqrtf({a}) = {} is {err} ulp off",
            got[4 * i + 3]
        );
        rsqrt_inexact += usize::from(got[4 * i + 3] != r as f32);
    }
    // Not more accurate than the GPU: a good share of results differ from the correctly
    // rounded value, so a kernel's tolerance is tested against the hardware's error.
    for (what, k) in [
        ("__expf", exp_inexact),
        ("__logf", log_inexact),
        ("__fdividef", div_inexact),
        ("rsqrtf", rsqrt_inexact),
    ] {
        assert!(
            k > n / 10,
            "{what}: only {k} of {n} results differ from libm"
        );
    }
}

#[test]
fn fdividef_by_a_huge_divisor_is_zero_as_on_the_gpu() {
    let dev = Emulator::new();
    // 1/x for x in (2^126, 2^128) is 0 under __fdividef.
    let x = upload(&dev, &[1.0e38, -2.0e38]);
    let y = dev.alloc(32, StreamId(0)).unwrap();
    launch(
        &dev,
        "fault_fast_math",
        LaunchCfg::linear(1, 2),
        &[KArg::Ptr(x), KArg::Ptr(y), KArg::I32(2)],
        StreamId(0),
    )
    .unwrap();
    let got = download(&dev, y, 8);
    assert_eq!(got[2], 0.0);
    assert_eq!(got[6], 0.0);
}

#[test]
fn a_cpp_exception_inside_a_kernel_is_an_error_not_an_unwind() {
    let dev = Emulator::new();
    let y = dev.alloc(32 * 4, StreamId(0)).unwrap();
    let err = launch_err(
        &dev,
        "fault_throws",
        LaunchCfg::linear(1, 32),
        &[KArg::Ptr(y)],
    );
    assert!(err.contains("std::bad_alloc"), "{err}");
    // The emulator is still usable afterwards.
    launch(
        &dev,
        "fault_warp_exchange",
        LaunchCfg::linear(1, 32),
        &[KArg::Ptr(y), KArg::I32(1)],
        StreamId(0),
    )
    .unwrap();
}

#[test]
fn an_impossible_allocation_is_an_error() {
    let dev = Emulator::new();
    let err = dev.alloc(usize::MAX, StreamId(0)).unwrap_err().to_string();
    assert!(err.contains("out of host memory"), "{err}");
}

#[test]
fn free_during_a_launch_waits_for_the_launch() {
    // A launch long enough to be running when the other thread frees its input. The input is
    // large enough that the host allocator returns it to the OS on free, so a use after free
    // would crash or read garbage.
    let blocks = 512u32;
    let data: Vec<f32> = (0..blocks as usize * 256).map(|i| (i % 3) as f32).collect();
    let dev = Emulator::new();
    let y = dev.alloc(blocks as usize * 4, StreamId(0)).unwrap();
    for attempt in 0..5 {
        let x = upload(&dev, &data);
        let started = std::sync::Barrier::new(2);
        let outcome = std::thread::scope(|s| {
            let launch = s.spawn(|| {
                started.wait();
                launch(
                    &dev,
                    "fault_control_tree_sum",
                    LaunchCfg::linear(blocks, 256),
                    &[KArg::Ptr(x), KArg::Ptr(y)],
                    StreamId(0),
                )
            });
            started.wait();
            std::thread::sleep(std::time::Duration::from_millis(20));
            // SAFETY: emulator-checked (see above); the emulator holds the free until the
            // launch that uses `x` has finished, which is what this test checks.
            unsafe { dev.free(x, StreamId(0)) }.unwrap();
            launch.join().unwrap()
        });
        match outcome {
            Ok(()) => {
                let got = download(&dev, y, blocks as usize);
                for (b, g) in got.iter().enumerate() {
                    let want: f32 = data[b * 256..(b + 1) * 256].iter().sum();
                    assert_eq!(*g, want, "block {b}");
                }
                return;
            }
            // On a loaded machine the free may come before the launch starts: try again.
            Err(e) if e.to_string().contains("no live allocation") => {
                eprintln!("attempt {attempt}: the free came first");
            }
            Err(e) => panic!("{e}"),
        }
    }
    panic!("the launch never started before the free");
}

#[test]
fn a_vector_load_races_with_a_scalar_store_to_one_of_its_words() {
    for seed in SEEDS {
        let dev = seeded(seed);
        let y = upload(&dev, &[0.0; 8]);
        let err = launch_err(
            &dev,
            "fault_race_vector_vs_scalar",
            LaunchCfg::linear(2, 1),
            &[KArg::Ptr(y)],
        );
        assert!(
            err.contains("global-memory race at byte 8 of a 32-byte allocation"),
            "{seed}: {err}"
        );
        assert!(
            err.contains("blocks of one launch are not ordered"),
            "{seed}: {err}"
        );
    }
}

#[test]
fn mma_with_part_of_the_warp_is_reported() {
    let dev = Emulator::new();
    let y = dev.alloc(32 * 4, StreamId(0)).unwrap();
    let err = launch_err(
        &dev,
        "fault_mma_partial_warp",
        LaunchCfg::linear(1, 32),
        &[KArg::Ptr(y), KArg::I32(16)],
    );
    assert!(err.contains("mma.sync"), "{err}");
    assert!(err.contains("has exited"), "{err}");
    // The whole warp: 16 products of 1 x 1 in every element.
    launch(
        &dev,
        "fault_mma_partial_warp",
        LaunchCfg::linear(1, 32),
        &[KArg::Ptr(y), KArg::I32(32)],
        StreamId(0),
    )
    .unwrap();
    assert_eq!(download(&dev, y, 32), vec![16.0; 32]);
}

#[test]
fn misaligned_ldmatrix_row_is_reported() {
    let dev = Emulator::new();
    let y = dev.alloc(32 * 4, StreamId(0)).unwrap();
    let err = launch_err(
        &dev,
        "fault_ldmatrix_misaligned",
        LaunchCfg::linear(1, 32),
        &[KArg::Ptr(y), KArg::I32(1)],
    );
    assert!(err.contains("ldmatrix"), "{err}");
    assert!(err.contains("not 16-byte aligned"), "{err}");
    launch(
        &dev,
        "fault_ldmatrix_misaligned",
        LaunchCfg::linear(1, 32),
        &[KArg::Ptr(y), KArg::I32(0)],
        StreamId(0),
    )
    .unwrap();
}

#[test]
fn reading_a_cp_async_group_still_in_flight_is_reported() {
    let dev = Emulator::new();
    let x = upload(&dev, &(0..128).map(|i| i as f32).collect::<Vec<_>>());
    let y = dev.alloc(32 * 4, StreamId(0)).unwrap();
    let err = launch_err(
        &dev,
        "fault_cp_async_unwaited",
        LaunchCfg::linear(1, 32),
        &[KArg::Ptr(x), KArg::Ptr(y), KArg::I32(1)],
    );
    assert!(err.contains("second_buf"), "{err}");
    assert!(err.contains("no thread"), "{err}");
    // The older group was retired by wait_group 1: its data is there.
    launch(
        &dev,
        "fault_cp_async_unwaited",
        LaunchCfg::linear(1, 32),
        &[KArg::Ptr(x), KArg::Ptr(y), KArg::I32(0)],
        StreamId(0),
    )
    .unwrap();
    let want: Vec<f32> = (0..32).map(|l| ((l * 4 + 5) % 128) as f32).collect();
    assert_eq!(download(&dev, y, 32), want);
}

#[test]
fn refilling_a_tile_others_still_read_is_a_race() {
    let dev = Emulator::new();
    let x = upload(&dev, &(0..256).map(|i| i as f32).collect::<Vec<_>>());
    let y = dev.alloc(64 * 4, StreamId(0)).unwrap();
    let err = launch_err(
        &dev,
        "fault_cp_async_refill",
        LaunchCfg::linear(1, 32),
        &[KArg::Ptr(x), KArg::Ptr(y), KArg::I32(0)],
    );
    assert!(err.contains("shared-memory race on `buf`"), "{err}");
    launch(
        &dev,
        "fault_cp_async_refill",
        LaunchCfg::linear(1, 32),
        &[KArg::Ptr(x), KArg::Ptr(y), KArg::I32(1)],
        StreamId(0),
    )
    .unwrap();
    let want: Vec<f32> = (0..64)
        .map(|j| ((j / 32) * 128 + ((j % 32 + 1) % 32) * 4) as f32)
        .collect();
    assert_eq!(download(&dev, y, 64), want);
}
