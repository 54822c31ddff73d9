//! Grouped LoRA kernels (kernels/lora.cu) on the SIMT emulator against the CPU backend: ragged
//! segments with gaps between them, ranks below, at and above the kernels' chunk sizes, feature
//! sizes that are not multiples of the tiles, accumulation into non-zero outputs and gradients,
//! and adapters shared by several segments.
#![cfg(feature = "emulator")]

use flexp::backend::cpu::Cpu;
use flexp::backend::cuda::{CudaBackend, DeviceMem, KArg, LaunchCfg};
use flexp::backend::{Backend, LoraGradSeg, LoraSeg, LoraShape, Span};
use flexp::rng::Rng;

struct Case {
    /// (first row, row count, adapter index) per segment.
    segs: Vec<(usize, usize, usize)>,
    adapters: usize,
    /// Rows of the packed buffers (may exceed the last segment's end).
    rows: usize,
    d_in: usize,
    d_out: usize,
    rank: usize,
    scale: f32,
}

struct Inputs {
    x: Vec<f32>,
    y: Vec<f32>,
    u: Vec<f32>,
    dy: Vec<f32>,
    dx: Vec<f32>,
    a: Vec<Vec<f32>>,
    b: Vec<Vec<f32>>,
    da: Vec<Vec<f32>>,
    db: Vec<Vec<f32>>,
}

#[derive(Debug)]
struct Outputs {
    y: Vec<f32>,
    u: Vec<f32>,
    dx: Vec<f32>,
    da: Vec<Vec<f32>>,
    db: Vec<Vec<f32>>,
}

impl Case {
    fn shape(&self) -> LoraShape {
        LoraShape {
            d_in: self.d_in,
            d_out: self.d_out,
            rank: self.rank,
            scale: self.scale,
        }
    }

    fn inputs(&self, seed: u64) -> Inputs {
        let mut r = Rng::new(seed);
        let (n, i, o, k) = (self.rows, self.d_in, self.d_out, self.rank);
        Inputs {
            x: r.vec_range(n * i, -1.0, 1.0),
            // Non-zero outputs and gradients: the ops accumulate, and rows outside every segment
            // must keep their values.
            y: r.vec_range(n * o, -1.0, 1.0),
            u: r.vec_range(n * k, -1.0, 1.0),
            dy: r.vec_range(n * o, -1.0, 1.0),
            dx: r.vec_range(n * i, -1.0, 1.0),
            a: (0..self.adapters)
                .map(|_| r.vec_range(k * i, -0.5, 0.5))
                .collect(),
            b: (0..self.adapters)
                .map(|_| r.vec_range(o * k, -0.5, 0.5))
                .collect(),
            da: self
                .segs
                .iter()
                .map(|_| r.vec_range(k * i, -1.0, 1.0))
                .collect(),
            db: self
                .segs
                .iter()
                .map(|_| r.vec_range(o * k, -1.0, 1.0))
                .collect(),
        }
    }

    fn span(&self, s: usize) -> Span {
        Span {
            start: self.segs[s].0,
            len: self.segs[s].1,
        }
    }
}

fn run<B: Backend>(be: &B, c: &Case, inp: &Inputs) -> flexp::error::Result<Outputs> {
    let x = be.upload(&inp.x)?;
    let mut y = be.upload(&inp.y)?;
    let mut u = be.upload(&inp.u)?;
    let dy = be.upload(&inp.dy)?;
    let mut dx = be.upload(&inp.dx)?;
    let a: Vec<_> = inp
        .a
        .iter()
        .map(|v| be.upload(v))
        .collect::<Result<_, _>>()?;
    let b: Vec<_> = inp
        .b
        .iter()
        .map(|v| be.upload(v))
        .collect::<Result<_, _>>()?;
    let mut da: Vec<_> = inp
        .da
        .iter()
        .map(|v| be.upload(v))
        .collect::<Result<_, _>>()?;
    let mut db: Vec<_> = inp
        .db
        .iter()
        .map(|v| be.upload(v))
        .collect::<Result<_, _>>()?;

    let segs: Vec<LoraSeg<'_, B>> = (0..c.segs.len())
        .map(|s| LoraSeg {
            rows: c.span(s),
            a: &a[c.segs[s].2],
            b: &b[c.segs[s].2],
        })
        .collect();
    be.lora_forward(&mut y, &x, &mut u, &segs, c.shape())?;

    let mut gsegs: Vec<LoraGradSeg<'_, B>> = da
        .iter_mut()
        .zip(db.iter_mut())
        .enumerate()
        .map(|(s, (da, db))| LoraGradSeg {
            rows: c.span(s),
            a: &a[c.segs[s].2],
            b: &b[c.segs[s].2],
            da,
            db,
        })
        .collect();
    be.lora_backward(&mut dx, &dy, &x, &u, &mut gsegs, c.shape())?;
    drop(gsegs);

    Ok(Outputs {
        y: be.download(&y)?,
        u: be.download(&u)?,
        dx: be.download(&dx)?,
        da: da
            .iter()
            .map(|v| be.download(v))
            .collect::<Result<_, _>>()?,
        db: db
            .iter()
            .map(|v| be.download(v))
            .collect::<Result<_, _>>()?,
    })
}

/// f32 agreement up to summation order: relative 1e-5 plus an absolute term for the
/// cancellation in sums of a few hundred terms of magnitude ~1.
fn assert_close(what: &str, got: &[f32], want: &[f32], abs: f32, rel: f32) {
    assert_eq!(got.len(), want.len(), "{what}: length");
    for (i, (&g, &w)) in got.iter().zip(want).enumerate() {
        assert!(
            (g - w).abs() <= abs + rel * w.abs(),
            "{what}[{i}]: cuda {g} vs cpu {w} (diff {})",
            (g - w).abs()
        );
    }
}

fn check_case(c: &Case, seed: u64) {
    let inp = c.inputs(seed);
    let want = run(&Cpu, c, &inp).expect("cpu lora");
    let got = run(&CudaBackend::for_tests().unwrap(), c, &inp).expect("cuda lora");
    let (abs, rel) = (2e-5, 1e-5);
    assert_close("y", &got.y, &want.y, abs, rel);
    assert_close("u", &got.u, &want.u, abs, rel);
    assert_close("dx", &got.dx, &want.dx, abs, rel);
    for s in 0..c.segs.len() {
        assert_close(&format!("da[{s}]"), &got.da[s], &want.da[s], abs, rel);
        assert_close(&format!("db[{s}]"), &got.db[s], &want.db[s], abs, rel);
    }
}

/// Ragged segments (1, 3, 17, 40 rows, an empty one) with uncovered rows between and after them.
fn ragged(adapters: [usize; 5]) -> Vec<(usize, usize, usize)> {
    vec![
        (0, 1, adapters[0]),
        (2, 3, adapters[1]),
        (5, 17, adapters[2]),
        (22, 0, adapters[3]),
        (23, 40, adapters[4]),
    ]
}

#[test]
fn rank4_ragged_segments() {
    check_case(
        &Case {
            segs: ragged([0, 1, 2, 3, 4]),
            adapters: 5,
            rows: 66,
            d_in: 37,
            d_out: 130,
            rank: 4,
            scale: 2.0,
        },
        1,
    );
}

#[test]
fn rank8_shared_adapters() {
    // Segments 0, 2 and 4 use the same A, B (read-only sharing); their gradients are separate.
    check_case(
        &Case {
            segs: ragged([0, 1, 0, 1, 0]),
            adapters: 2,
            rows: 63,
            d_in: 130,
            d_out: 96,
            rank: 8,
            scale: 0.5,
        },
        2,
    );
}

#[test]
fn rank16_wide() {
    check_case(
        &Case {
            segs: vec![(0, 40, 0), (40, 33, 1), (73, 1, 2)],
            adapters: 3,
            rows: 74,
            d_in: 96,
            d_out: 200,
            rank: 16,
            scale: 1.25,
        },
        3,
    );
}

#[test]
fn odd_ranks_split_and_chunked() {
    // Small ranks split each reduction over many thread groups, 12 leaves idle threads, 40 gives
    // one group with idle threads, 72 needs two rank chunks in every kernel.
    for (rank, seed) in [(1usize, 4u64), (3, 5), (5, 6), (12, 11), (40, 12), (72, 7)] {
        check_case(
            &Case {
                segs: vec![(1, 3, 0), (4, 35, 1)],
                adapters: 2,
                rows: 40,
                d_in: 70,
                d_out: 33,
                rank,
                scale: 0.75,
            },
            seed,
        );
    }
}

#[test]
fn degenerate_shapes_match_cpu() {
    // d_in = 0 (u becomes zeros, dB still accumulates), d_out = 0, and no segments at all.
    for (d_in, d_out, segs) in [
        (0usize, 9usize, vec![(0usize, 5usize, 0usize)]),
        (9, 0, vec![(0, 5, 0)]),
        (9, 9, vec![]),
    ] {
        check_case(
            &Case {
                segs,
                adapters: 1,
                rows: 6,
                d_in,
                d_out,
                rank: 4,
                scale: 1.5,
            },
            8,
        );
    }
}

#[test]
fn bad_segments_fail_like_cpu() {
    let cases = [
        // overlapping
        vec![(0usize, 5usize, 0usize), (3, 4, 0)],
        // past the end of the buffers
        vec![(0, 5, 0), (5, 20, 0)],
    ];
    for segs in cases {
        let c = Case {
            segs,
            adapters: 1,
            rows: 10,
            d_in: 8,
            d_out: 8,
            rank: 4,
            scale: 1.0,
        };
        let inp = c.inputs(9);
        let want = run(&Cpu, &c, &inp)
            .expect_err("cpu must refuse")
            .to_string();
        let got = run(&CudaBackend::for_tests().unwrap(), &c, &inp)
            .expect_err("cuda must refuse")
            .to_string();
        assert_eq!(got, want);
    }
}

// ---- bf16-activation kernels, launched directly (the Backend trait is f32) ----

fn to_bf16(v: f32) -> u16 {
    let u = v.to_bits();
    ((u + 0x7fff + ((u >> 16) & 1)) >> 16) as u16
}
fn from_bf16(h: u16) -> f32 {
    f32::from_bits((h as u32) << 16)
}

/// The segment table and row-tile list of kernels/lora.cu for forward segments (A and B given
/// as device addresses): `[table, tiles]` and the tile count.
fn tables(be: &CudaBackend, segs: &[(usize, usize, u64, u64)]) -> ([DeviceMem; 2], u32) {
    let mut table = Vec::new();
    let mut tiles: Vec<i32> = Vec::new();
    for (i, &(start, len, a, b)) in segs.iter().enumerate() {
        table.extend_from_slice(&[start as u64, len as u64, a, b, 0, 0]);
        for r0 in (start..start + len).step_by(32) {
            tiles.push(i as i32);
            tiles.push(r0 as i32);
        }
    }
    let t = be.upload_pod(&table).unwrap();
    let l = be.upload_pod(&tiles).unwrap();
    let n = (tiles.len() / 2) as u32;
    ([t, l], n)
}

#[test]
fn bf16_shrink_and_expand_match_cpu_on_rounded_inputs() {
    let c = Case {
        segs: vec![(0, 3, 0), (3, 37, 1)],
        adapters: 2,
        rows: 41,
        d_in: 70,
        d_out: 130,
        rank: 8,
        scale: 0.5,
    };
    let mut inp = c.inputs(10);
    let xh: Vec<u16> = inp.x.iter().map(|&v| to_bf16(v)).collect();
    let yh: Vec<u16> = inp.y.iter().map(|&v| to_bf16(v)).collect();
    inp.x = xh.iter().map(|&h| from_bf16(h)).collect();
    inp.y = yh.iter().map(|&h| from_bf16(h)).collect();
    let want = run(&Cpu, &c, &inp).unwrap();

    let be = CudaBackend::for_tests().unwrap();
    let x = be.upload_pod(&xh).unwrap();
    let y = be.upload_pod(&yh).unwrap();
    let u = be.upload(&inp.u).unwrap();
    let a: Vec<_> = inp.a.iter().map(|v| be.upload(v).unwrap()).collect();
    let b: Vec<_> = inp.b.iter().map(|v| be.upload(v).unwrap()).collect();
    let segs: Vec<_> = c
        .segs
        .iter()
        .map(|&(s, n, ad)| (s, n, a[ad].ptr().addr(), b[ad].ptr().addr()))
        .collect();
    let ([tab, til], ntiles) = tables(&be, &segs);
    let cfg = |gy: u32| LaunchCfg {
        grid: (ntiles, gy, 1),
        block: (256, 1, 1),
        shared_bytes: 0,
    };
    // SAFETY: the shapes of `c` size every buffer the kernels index: x and y (rows·d_in and
    // rows·d_out bf16), u (rows·rank) and the adapters the table names, which are live buffers
    // of this backend allocated on its stream; the tiles cover the segments.
    unsafe {
        be.launch(
            "lora_shrink_bf16",
            cfg(1),
            &[
                x.arg(),
                u.arg(),
                tab.arg(),
                til.arg(),
                KArg::I32(c.d_in as i32),
                KArg::I32(c.rank as i32),
            ],
        )
    }
    .unwrap();
    // SAFETY: as above.
    unsafe {
        be.launch(
            "lora_expand_bf16",
            cfg(c.d_out.div_ceil(128) as u32),
            &[
                u.arg(),
                y.arg(),
                tab.arg(),
                til.arg(),
                KArg::I32(c.d_out as i32),
                KArg::I32(c.rank as i32),
                KArg::F32(c.scale),
            ],
        )
    }
    .unwrap();
    // u is f32 from exactly converted inputs: f32 tolerance.
    assert_close("u (bf16 x)", &be.download(&u).unwrap(), &want.u, 2e-5, 1e-5);
    let yb: Vec<u16> = be.download_pod(&y).unwrap();
    let got_y: Vec<f32> = yb.iter().map(|&h| from_bf16(h)).collect();
    // One bf16 rounding of the sum: half an ulp of 8 mantissa bits.
    assert_close("y (bf16)", &got_y, &want.y, 1e-6, 1.0 / 256.0);
}

#[test]
fn table_address_outside_any_allocation_faults() {
    let be = CudaBackend::for_tests().unwrap();
    let x = be.upload(&[1.0; 8]).unwrap();
    let u = be.zeros(4).unwrap();
    let b = be.zeros(8).unwrap();
    // Below any allocation the emulator hands out (and not null, which reads as "no adapter").
    let bogus = 0x10;
    let ([tab, til], ntiles) = tables(&be, &[(0, 1, bogus, b.ptr().addr())]);
    // SAFETY: deliberately broken (a table address outside every allocation): the emulator
    // looks up every address a kernel reads from a table and reports this as an error.
    let err = unsafe {
        be.launch(
            "lora_shrink_f32",
            LaunchCfg {
                grid: (ntiles, 1, 1),
                block: (256, 1, 1),
                shared_bytes: 0,
            },
            &[
                x.arg(),
                u.arg(),
                tab.arg(),
                til.arg(),
                KArg::I32(8),
                KArg::I32(1),
            ],
        )
    }
    .expect_err("a bogus adapter address must fault");
    let err = err.to_string();
    assert!(err.contains("no live allocation"), "{err}");
    assert!(err.contains("lora_shrink_f32"), "{err}");
}
