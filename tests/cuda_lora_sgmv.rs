//! The tensor-core multi-LoRA forward (kernels/lora_sgmv.cu) against an f64 reference on the
//! bf16-rounded operands: ragged segments (1 to 130 rows, so row tiles of 64 that are not full)
//! with a gap of rows no segment covers, one adapter per segment, ranks 4 to 64 (every rank
//! bucket, padding included), feature sizes that are not multiples of the 32-deep K step or the
//! 128-wide column tile (odd ones too).
#![cfg(feature = "emulator")]

use flexp::backend::cuda::{CudaBackend, KArg, LaunchCfg};
use flexp::backend::Backend;
use flexp::rng::Rng;

const SENTINEL: f32 = 777.0;

fn r16(x: f32) -> f64 {
    f64::from(half::bf16::from_f32(x).to_f32())
}

/// (first row, rows) per segment: a gap at rows 6..9 that no segment covers.
const SEGS: &[(usize, usize)] = &[(0, 1), (1, 5), (9, 70), (79, 130)];

fn check(rank: usize, d_in: usize, d_out: usize, seed: u64) {
    let gpu = CudaBackend::for_tests().unwrap();
    let mut rng = Rng::new(seed);
    let rows = SEGS.iter().map(|s| s.0 + s.1).max().unwrap();
    let x = rng.vec_range(rows * d_in, -1.0, 1.0);
    let a: Vec<Vec<f32>> = SEGS
        .iter()
        .map(|_| rng.vec_range(rank * d_in, -1.0, 1.0))
        .collect();
    let b: Vec<Vec<f32>> = SEGS
        .iter()
        .map(|_| rng.vec_range(d_out * rank, -1.0, 1.0))
        .collect();
    let y0 = rng.vec_range(rows * d_out, -1.0, 1.0);
    let scale = 0.75f32;

    let dx = gpu.upload(&x).unwrap();
    let da: Vec<_> = a.iter().map(|m| gpu.upload(m).unwrap()).collect();
    let db: Vec<_> = b.iter().map(|m| gpu.upload(m).unwrap()).collect();
    let mut table: Vec<u64> = Vec::new();
    let mut tiles: Vec<i32> = Vec::new();
    for (i, &(start, count)) in SEGS.iter().enumerate() {
        table.extend([
            start as u64,
            count as u64,
            da[i].mem().ptr().addr(),
            db[i].mem().ptr().addr(),
            0,
            0,
        ]);
        for r0 in (0..count).step_by(64) {
            tiles.extend([i as i32, r0 as i32]);
        }
    }
    let dt = gpu.upload_pod(&table).unwrap();
    let dtiles = gpu.upload_pod(&tiles).unwrap();
    let u = gpu.upload(&vec![SENTINEL; rows * rank]).unwrap();
    let y = gpu.upload(&y0).unwrap();
    let bucket = [16, 32, 64].into_iter().find(|&p| rank <= p).unwrap();
    let ntiles = (tiles.len() / 2) as u32;
    // SAFETY: lora_sgmv_shrink_r*(u, x, segs, tiles, d_in, rank): x holds rows·d_in floats and
    // every segment's rows lie below `rows`; each table entry points at a live adapter upload of
    // rank·d_in (A) and d_out·rank (B) floats; u holds rows·rank; rank <= the bucket.
    unsafe {
        gpu.launch(
            &format!("lora_sgmv_shrink_r{bucket}"),
            LaunchCfg::linear(ntiles, 128),
            &[
                u.arg(),
                dx.arg(),
                dt.arg(),
                dtiles.arg(),
                KArg::I32(d_in as i32),
                KArg::I32(rank as i32),
            ],
        )
    }
    .unwrap();
    let u_got = gpu.download(&u).unwrap();
    // SAFETY: lora_sgmv_expand_r*(y, u, segs, tiles, d_out, rank, scale): y holds rows·d_out,
    // u rows·rank, the adapters as above; grid.y covers d_out in columns of 128.
    unsafe {
        gpu.launch(
            &format!("lora_sgmv_expand_r{bucket}"),
            LaunchCfg {
                grid: (ntiles, d_out.div_ceil(128) as u32, 1),
                block: (128, 1, 1),
                shared_bytes: 0,
            },
            &[
                y.arg(),
                u.arg(),
                dt.arg(),
                dtiles.arg(),
                KArg::I32(d_out as i32),
                KArg::I32(rank as i32),
                KArg::F32(scale),
            ],
        )
    }
    .unwrap();
    let y_got = gpu.download(&y).unwrap();

    let what = format!("rank {rank} d_in {d_in} d_out {d_out}");
    let mut covered = vec![None; rows];
    for (i, &(start, count)) in SEGS.iter().enumerate() {
        for c in covered.iter_mut().skip(start).take(count) {
            *c = Some(i);
        }
    }
    for (row, seg) in covered.iter().enumerate() {
        let Some(s) = *seg else {
            // Rows no segment covers: u keeps its sentinel, y its value.
            assert!(u_got[row * rank..(row + 1) * rank]
                .iter()
                .all(|&v| v == SENTINEL));
            assert_eq!(
                &y_got[row * d_out..(row + 1) * d_out],
                &y0[row * d_out..(row + 1) * d_out]
            );
            continue;
        };
        for r in 0..rank {
            // u = x · Aᵀ from bf16 operands: exact products, an f32 sum.
            let (mut want, mut mag) = (0f64, 0f64);
            for k in 0..d_in {
                let t = r16(x[row * d_in + k]) * r16(a[s][r * d_in + k]);
                want += t;
                mag += t.abs();
            }
            let got = f64::from(u_got[row * rank + r]);
            assert!(
                (got - want).abs() <= 1e-6 * (mag + 1.0),
                "{what}: u[{row}][{r}] = {got}, want {want}"
            );
        }
        for n in 0..d_out {
            // y += scale · u · Bᵀ with u as the shrink left it, rounded to bf16 like B.
            let (mut acc, mut mag) = (0f64, 0f64);
            for r in 0..rank {
                let t = r16(u_got[row * rank + r]) * r16(b[s][n * rank + r]);
                acc += t;
                mag += t.abs();
            }
            let want = f64::from(y0[row * d_out + n]) + f64::from(scale) * acc;
            let got = f64::from(y_got[row * d_out + n]);
            assert!(
                (got - want).abs() <= 1e-6 * (mag + 1.0),
                "{what}: y[{row}][{n}] = {got}, want {want}"
            );
        }
    }
}

#[test]
fn sgmv_forward_matches_reference_at_every_rank_bucket() {
    check(4, 40, 50, 1);
    check(16, 37, 130, 2);
    check(24, 100, 64, 3);
    check(64, 72, 200, 4);
}
