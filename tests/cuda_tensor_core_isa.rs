//! The tensor-core instruction models of the SIMT emulator (kernels/tensor_core.cuh) against the
//! PTX ISA's fragment tables, stated here as data: each table below is transcribed from the ISA's
//! figure ("Matrix fragments for mma.m16n8k16 with floating point type", and "ldmatrix
//! fragment layout for one 8x8 matrix with 16-bit elements"), one text row per matrix row, each
//! cell `T<lane>:<element>` naming the lane that holds it and which of its elements it is. The
//! emulator's code computes placements from formulas instead, so the two cannot share a mistake.
//! The probes (kernels/tensor_core_probe.cu) move data through one instruction each; on a GPU,
//! tools/gpu_check.sh runs the same comparisons against the hardware.
#![cfg(feature = "emulator")]

use flexp::backend::cuda::{CudaBackend, KArg, LaunchCfg};
use flexp::rng::Rng;
use half::{bf16, f16};

/// mma.m16n8k16, matrix A (16 x 16, .f16/.bf16): row r lists columns 0..15.
const MMA_A: &str = "
T0:a0 T0:a1 T1:a0 T1:a1 T2:a0 T2:a1 T3:a0 T3:a1 T0:a4 T0:a5 T1:a4 T1:a5 T2:a4 T2:a5 T3:a4 T3:a5
T4:a0 T4:a1 T5:a0 T5:a1 T6:a0 T6:a1 T7:a0 T7:a1 T4:a4 T4:a5 T5:a4 T5:a5 T6:a4 T6:a5 T7:a4 T7:a5
T8:a0 T8:a1 T9:a0 T9:a1 T10:a0 T10:a1 T11:a0 T11:a1 T8:a4 T8:a5 T9:a4 T9:a5 T10:a4 T10:a5 T11:a4 T11:a5
T12:a0 T12:a1 T13:a0 T13:a1 T14:a0 T14:a1 T15:a0 T15:a1 T12:a4 T12:a5 T13:a4 T13:a5 T14:a4 T14:a5 T15:a4 T15:a5
T16:a0 T16:a1 T17:a0 T17:a1 T18:a0 T18:a1 T19:a0 T19:a1 T16:a4 T16:a5 T17:a4 T17:a5 T18:a4 T18:a5 T19:a4 T19:a5
T20:a0 T20:a1 T21:a0 T21:a1 T22:a0 T22:a1 T23:a0 T23:a1 T20:a4 T20:a5 T21:a4 T21:a5 T22:a4 T22:a5 T23:a4 T23:a5
T24:a0 T24:a1 T25:a0 T25:a1 T26:a0 T26:a1 T27:a0 T27:a1 T24:a4 T24:a5 T25:a4 T25:a5 T26:a4 T26:a5 T27:a4 T27:a5
T28:a0 T28:a1 T29:a0 T29:a1 T30:a0 T30:a1 T31:a0 T31:a1 T28:a4 T28:a5 T29:a4 T29:a5 T30:a4 T30:a5 T31:a4 T31:a5
T0:a2 T0:a3 T1:a2 T1:a3 T2:a2 T2:a3 T3:a2 T3:a3 T0:a6 T0:a7 T1:a6 T1:a7 T2:a6 T2:a7 T3:a6 T3:a7
T4:a2 T4:a3 T5:a2 T5:a3 T6:a2 T6:a3 T7:a2 T7:a3 T4:a6 T4:a7 T5:a6 T5:a7 T6:a6 T6:a7 T7:a6 T7:a7
T8:a2 T8:a3 T9:a2 T9:a3 T10:a2 T10:a3 T11:a2 T11:a3 T8:a6 T8:a7 T9:a6 T9:a7 T10:a6 T10:a7 T11:a6 T11:a7
T12:a2 T12:a3 T13:a2 T13:a3 T14:a2 T14:a3 T15:a2 T15:a3 T12:a6 T12:a7 T13:a6 T13:a7 T14:a6 T14:a7 T15:a6 T15:a7
T16:a2 T16:a3 T17:a2 T17:a3 T18:a2 T18:a3 T19:a2 T19:a3 T16:a6 T16:a7 T17:a6 T17:a7 T18:a6 T18:a7 T19:a6 T19:a7
T20:a2 T20:a3 T21:a2 T21:a3 T22:a2 T22:a3 T23:a2 T23:a3 T20:a6 T20:a7 T21:a6 T21:a7 T22:a6 T22:a7 T23:a6 T23:a7
T24:a2 T24:a3 T25:a2 T25:a3 T26:a2 T26:a3 T27:a2 T27:a3 T24:a6 T24:a7 T25:a6 T25:a7 T26:a6 T26:a7 T27:a6 T27:a7
T28:a2 T28:a3 T29:a2 T29:a3 T30:a2 T30:a3 T31:a2 T31:a3 T28:a6 T28:a7 T29:a6 T29:a7 T30:a6 T30:a7 T31:a6 T31:a7
";

/// mma.m16n8k16, matrix B (16 x 8, .f16/.bf16): row k lists columns 0..7.
const MMA_B: &str = "
T0:b0 T4:b0 T8:b0 T12:b0 T16:b0 T20:b0 T24:b0 T28:b0
T0:b1 T4:b1 T8:b1 T12:b1 T16:b1 T20:b1 T24:b1 T28:b1
T1:b0 T5:b0 T9:b0 T13:b0 T17:b0 T21:b0 T25:b0 T29:b0
T1:b1 T5:b1 T9:b1 T13:b1 T17:b1 T21:b1 T25:b1 T29:b1
T2:b0 T6:b0 T10:b0 T14:b0 T18:b0 T22:b0 T26:b0 T30:b0
T2:b1 T6:b1 T10:b1 T14:b1 T18:b1 T22:b1 T26:b1 T30:b1
T3:b0 T7:b0 T11:b0 T15:b0 T19:b0 T23:b0 T27:b0 T31:b0
T3:b1 T7:b1 T11:b1 T15:b1 T19:b1 T23:b1 T27:b1 T31:b1
T0:b2 T4:b2 T8:b2 T12:b2 T16:b2 T20:b2 T24:b2 T28:b2
T0:b3 T4:b3 T8:b3 T12:b3 T16:b3 T20:b3 T24:b3 T28:b3
T1:b2 T5:b2 T9:b2 T13:b2 T17:b2 T21:b2 T25:b2 T29:b2
T1:b3 T5:b3 T9:b3 T13:b3 T17:b3 T21:b3 T25:b3 T29:b3
T2:b2 T6:b2 T10:b2 T14:b2 T18:b2 T22:b2 T26:b2 T30:b2
T2:b3 T6:b3 T10:b3 T14:b3 T18:b3 T22:b3 T26:b3 T30:b3
T3:b2 T7:b2 T11:b2 T15:b2 T19:b2 T23:b2 T27:b2 T31:b2
T3:b3 T7:b3 T11:b3 T15:b3 T19:b3 T23:b3 T27:b3 T31:b3
";

/// mma.m16n8k16, accumulators C and D (16 x 8, .f32): row r lists columns 0..7.
const MMA_C: &str = "
T0:c0 T0:c1 T1:c0 T1:c1 T2:c0 T2:c1 T3:c0 T3:c1
T4:c0 T4:c1 T5:c0 T5:c1 T6:c0 T6:c1 T7:c0 T7:c1
T8:c0 T8:c1 T9:c0 T9:c1 T10:c0 T10:c1 T11:c0 T11:c1
T12:c0 T12:c1 T13:c0 T13:c1 T14:c0 T14:c1 T15:c0 T15:c1
T16:c0 T16:c1 T17:c0 T17:c1 T18:c0 T18:c1 T19:c0 T19:c1
T20:c0 T20:c1 T21:c0 T21:c1 T22:c0 T22:c1 T23:c0 T23:c1
T24:c0 T24:c1 T25:c0 T25:c1 T26:c0 T26:c1 T27:c0 T27:c1
T28:c0 T28:c1 T29:c0 T29:c1 T30:c0 T30:c1 T31:c0 T31:c1
T0:c2 T0:c3 T1:c2 T1:c3 T2:c2 T2:c3 T3:c2 T3:c3
T4:c2 T4:c3 T5:c2 T5:c3 T6:c2 T6:c3 T7:c2 T7:c3
T8:c2 T8:c3 T9:c2 T9:c3 T10:c2 T10:c3 T11:c2 T11:c3
T12:c2 T12:c3 T13:c2 T13:c3 T14:c2 T14:c3 T15:c2 T15:c3
T16:c2 T16:c3 T17:c2 T17:c3 T18:c2 T18:c3 T19:c2 T19:c3
T20:c2 T20:c3 T21:c2 T21:c3 T22:c2 T22:c3 T23:c2 T23:c3
T24:c2 T24:c3 T25:c2 T25:c3 T26:c2 T26:c3 T27:c2 T27:c3
T28:c2 T28:c3 T29:c2 T29:c3 T30:c2 T30:c3 T31:c2 T31:c3
";

/// ldmatrix, one 8 x 8 matrix of 16-bit elements: row r lists columns 0..7 (`e0`, `e1`: the low
/// and high half of the lane's destination register for this matrix).
const LDMATRIX: &str = "
T0:e0 T0:e1 T1:e0 T1:e1 T2:e0 T2:e1 T3:e0 T3:e1
T4:e0 T4:e1 T5:e0 T5:e1 T6:e0 T6:e1 T7:e0 T7:e1
T8:e0 T8:e1 T9:e0 T9:e1 T10:e0 T10:e1 T11:e0 T11:e1
T12:e0 T12:e1 T13:e0 T13:e1 T14:e0 T14:e1 T15:e0 T15:e1
T16:e0 T16:e1 T17:e0 T17:e1 T18:e0 T18:e1 T19:e0 T19:e1
T20:e0 T20:e1 T21:e0 T21:e1 T22:e0 T22:e1 T23:e0 T23:e1
T24:e0 T24:e1 T25:e0 T25:e1 T26:e0 T26:e1 T27:e0 T27:e1
T28:e0 T28:e1 T29:e0 T29:e1 T30:e0 T30:e1 T31:e0 T31:e1
";

/// A parsed table: `cells[row][col] = (lane, element index)`.
struct Layout {
    cells: Vec<Vec<(usize, usize)>>,
}

impl Layout {
    fn parse(table: &str, rows: usize, cols: usize) -> Layout {
        let cells: Vec<Vec<(usize, usize)>> = table
            .lines()
            .filter(|l| !l.trim().is_empty())
            .map(|l| {
                l.split_whitespace()
                    .map(|cell| {
                        let (lane, elem) = cell.split_once(':').expect("cell is T<lane>:<elem>");
                        let lane: usize = lane[1..].parse().expect("lane number");
                        let elem: usize = elem[1..].parse().expect("element number");
                        (lane, elem)
                    })
                    .collect()
            })
            .collect();
        assert_eq!(cells.len(), rows, "table rows");
        assert!(cells.iter().all(|r| r.len() == cols), "table columns");
        // Each (lane, element) appears exactly once: the table is a bijection.
        let mut seen = std::collections::HashSet::new();
        for r in &cells {
            for c in r {
                assert!(
                    c.0 < 32 && seen.insert(*c),
                    "cell {c:?} twice or lane out of range"
                );
            }
        }
        assert_eq!(seen.len(), rows * cols);
        Layout { cells }
    }

    /// Where (lane, element) of the figure sits: elements 2j and 2j+1 are the low and high
    /// halves of 32-bit register j (16-bit operands), or float j (f32 accumulators).
    fn place(&self, row: usize, col: usize) -> (usize, usize) {
        self.cells[row][col]
    }
}

fn rng_values(rng: &mut Rng, n: usize) -> Vec<f32> {
    rng.vec_range(n, -2.0, 2.0)
}

/// 16-bit operand registers of all 32 lanes (`regs` per lane) for `m` (rows x cols) placed by
/// `layout`; `bits` encodes one value.
fn pack16(
    m: &[f32],
    cols: usize,
    layout: &Layout,
    regs: usize,
    bits: impl Fn(f32) -> u16,
) -> Vec<u32> {
    let mut out = vec![0u32; 32 * regs];
    for (row, line) in layout.cells.iter().enumerate() {
        for (col, &(lane, elem)) in line.iter().enumerate() {
            let (reg, half) = (elem / 2, elem % 2);
            assert!(reg < regs);
            out[lane * regs + reg] |= (bits(m[row * cols + col]) as u32) << (16 * half);
        }
    }
    out
}

fn run_mma(be: &CudaBackend, a: &[u32], b: &[u32], c: &[f32], f16_inputs: bool) -> Vec<f32> {
    let (da, db, dc) = (
        be.upload_pod(a).unwrap(),
        be.upload_pod(b).unwrap(),
        be.upload_pod(c).unwrap(),
    );
    let dd = be.alloc_bytes(32 * 4 * 4).unwrap();
    // SAFETY: tc_probe_mma(a: 128 u32, b: 64 u32, c: 128 f32, d: 128 f32, f16: int) with one
    // warp; every buffer has the size the kernel indexes.
    unsafe {
        be.launch(
            "tc_probe_mma",
            LaunchCfg::linear(1, 32),
            &[
                da.arg(),
                db.arg(),
                dc.arg(),
                dd.arg(),
                KArg::I32(i32::from(f16_inputs)),
            ],
        )
    }
    .unwrap();
    be.download_pod(&dd).unwrap()
}

/// D = A B + C through the probe, with A, B, C placed and D read back by the ISA's tables, against
/// the product computed here in f64 from the same (rounded) inputs.
fn check_mma(f16_inputs: bool, seed: u64) {
    let be = CudaBackend::for_tests().unwrap();
    let (la, lb, lc) = (
        Layout::parse(MMA_A, 16, 16),
        Layout::parse(MMA_B, 16, 8),
        Layout::parse(MMA_C, 16, 8),
    );
    let mut rng = Rng::new(seed);
    let round = |v: f32| {
        if f16_inputs {
            f16::from_f32(v).to_f32()
        } else {
            bf16::from_f32(v).to_f32()
        }
    };
    let bits = |v: f32| {
        if f16_inputs {
            f16::from_f32(v).to_bits()
        } else {
            bf16::from_f32(v).to_bits()
        }
    };
    let a: Vec<f32> = rng_values(&mut rng, 16 * 16)
        .into_iter()
        .map(round)
        .collect();
    let b: Vec<f32> = rng_values(&mut rng, 16 * 8)
        .into_iter()
        .map(round)
        .collect();
    let c = rng_values(&mut rng, 16 * 8);
    let ra = pack16(&a, 16, &la, 4, bits);
    let rb = pack16(&b, 8, &lb, 2, bits);
    let mut rc = vec![0f32; 128];
    for (row, line) in lc.cells.iter().enumerate() {
        for (col, &(lane, elem)) in line.iter().enumerate() {
            rc[lane * 4 + elem] = c[row * 8 + col];
        }
    }
    let rd = run_mma(&be, &ra, &rb, &rc, f16_inputs);
    for row in 0..16 {
        for col in 0..8 {
            let (lane, elem) = lc.place(row, col);
            let got = rd[lane * 4 + elem] as f64;
            let mut want = c[row * 8 + col] as f64;
            let mut mag = want.abs();
            for k in 0..16 {
                let p = a[row * 16 + k] as f64 * b[k * 8 + col] as f64;
                want += p;
                mag += p.abs();
            }
            // The hardware's adder may differ from one rounding in the last bits of the sum.
            assert!(
                (got - want).abs() <= 1e-6 * mag,
                "D[{row}][{col}] (lane {lane} d{elem}) = {got}, want {want}"
            );
        }
    }
}

#[test]
fn mma_bf16_places_fragments_as_the_isa_tables_say() {
    check_mma(false, 1);
    check_mma(false, 2);
}

#[test]
fn mma_f16_places_fragments_as_the_isa_tables_say() {
    check_mma(true, 3);
}

/// ldmatrix through the probe: 32 rows of 8 distinct bf16 values staged in shared memory, lane l
/// addressing row `perm[l]`, so that matrix i's row r is the row lane 8i + r named.
fn check_ldmatrix(count: usize, trans: bool) {
    let be = CudaBackend::for_tests().unwrap();
    let layout = Layout::parse(LDMATRIX, 8, 8);
    // Distinct, exactly representable values: element (row, col) of the staged buffer.
    let value = |row: usize, col: usize| (row * 8 + col) as f32;
    let staged: Vec<u16> = (0..32 * 8)
        .map(|i| bf16::from_f32(value(i / 8, i % 8)).to_bits())
        .collect();
    let perm: Vec<i32> = (0..32).map(|l| (l * 7 + 3) % 32).collect();
    let drows = be.upload_pod(&staged).unwrap();
    let dperm = be.upload_pod(&perm).unwrap();
    let dout = be.alloc_bytes(32 * 4 * 4).unwrap();
    // SAFETY: tc_probe_ldmatrix(rows: 256 bf16, row_of_lane: 32 i32 in 0..32, out: 128 u32,
    // count, trans) with one warp.
    unsafe {
        be.launch(
            "tc_probe_ldmatrix",
            LaunchCfg::linear(1, 32),
            &[
                drows.arg(),
                dperm.arg(),
                dout.arg(),
                KArg::I32(count as i32),
                KArg::I32(i32::from(trans)),
            ],
        )
    }
    .unwrap();
    let out: Vec<u32> = be.download_pod(&dout).unwrap();
    for i in 0..count {
        for row in 0..8 {
            for col in 0..8 {
                // The figure is of the matrix as it arrives in registers: with .trans that is
                // the transpose of the matrix in memory.
                let (mr, mc) = if trans { (col, row) } else { (row, col) };
                let want = value(perm[8 * i + mr] as usize, mc);
                let (lane, elem) = layout.place(row, col);
                let reg = out[lane * 4 + i];
                let got = bf16::from_bits((reg >> (16 * elem)) as u16).to_f32();
                assert_eq!(
                    got, want,
                    "x{count} trans={trans}: matrix {i} ({row},{col}) in lane {lane} e{elem}"
                );
            }
        }
    }
}

#[test]
fn ldmatrix_places_rows_as_the_isa_table_says() {
    for count in [1, 2, 4] {
        check_ldmatrix(count, false);
    }
}

#[test]
fn ldmatrix_trans_delivers_the_transposed_tiles() {
    for count in [1, 2, 4] {
        check_ldmatrix(count, true);
    }
}

#[test]
fn cp_async_copies_and_zero_fills_past_the_source_size() {
    let be = CudaBackend::for_tests().unwrap();
    for bytes in [4usize, 8, 16] {
        let n = 32 * bytes / 4;
        let src: Vec<f32> = (0..n).map(|i| i as f32 + 0.5).collect();
        let dsrc = be.upload_pod(&src).unwrap();
        // Whole copies, a copy cut mid-way (zero fill), and nothing read at all.
        for valid in [n * 4, n * 4 - 4 * (bytes / 4) - 4, 37 * 4, 0] {
            let dout = be.alloc_bytes(n * 4).unwrap();
            // SAFETY: tc_probe_cp_async(src: n floats, out: n floats, bytes, valid) with one
            // warp, n = 32 * bytes / 4.
            unsafe {
                be.launch(
                    "tc_probe_cp_async",
                    LaunchCfg::linear(1, 32),
                    &[
                        dsrc.arg(),
                        dout.arg(),
                        KArg::I32(bytes as i32),
                        KArg::I32(valid as i32),
                    ],
                )
            }
            .unwrap();
            let out: Vec<f32> = be.download_pod(&dout).unwrap();
            for (j, &got) in out.iter().enumerate() {
                let k = (j + 1) % n;
                let want = if k * 4 < valid { src[k] } else { 0.0 };
                assert_eq!(got, want, "bytes {bytes}, valid {valid}: out[{j}]");
            }
        }
    }
}
