//! Weights kept in GGML blocks on the CUDA backend (kernels/gguf.cu), on the SIMT emulator (or a
//! GPU under `FLEXP_CUDA_TESTS=gpu`):
//! - every type decodes on the device bit for bit as llama.cpp's `gguf` Python package decodes
//!   the same blocks (tests/fixtures/gguf/blocks, written by tools/torch_reference/gguf_fixtures.py),
//!   and every f16 bit pattern (NaNs included) widens as the `half` crate widens it;
//! - both products (`linear`, `linear_backward_input`) over every type, with one slab and with
//!   many (a partial last one included), equal the CPU backend's products of the same blocks,
//!   which tests/gguf_model.rs and the CPU's own tests hold to float64 references.
#![cfg(feature = "emulator")]

mod common;

use common::fixture;
use flexp::backend::cpu::Cpu;
use flexp::backend::cuda::CudaBackend;
use flexp::backend::quant::{GgmlType, SUPPORTED};
use flexp::backend::Backend;
use flexp::rng::Rng;

fn cuda() -> CudaBackend {
    CudaBackend::for_tests().unwrap()
}

fn read(name: &str) -> Vec<u8> {
    let p = fixture(&format!("gguf/blocks/{name}"));
    std::fs::read(&p).unwrap_or_else(|e| panic!("{}: {e}", p.display()))
}

/// A `[rows, cols]` shape for `n` values of `ty` with a few blocks a row, so rows and slabs are
/// exercised.
fn shape_of(ty: GgmlType, n: usize) -> (usize, usize) {
    let blocks = n / ty.block_len();
    let per_row = (1..=4).rev().find(|d| blocks.is_multiple_of(*d)).unwrap();
    (blocks / per_row, per_row * ty.block_len())
}

#[test]
fn every_type_decodes_on_the_device_bit_exactly_as_gguf_py() {
    for ty in SUPPORTED {
        let raw = read(&format!("{}.bin", ty.name()));
        let want: Vec<f32> = read(&format!("{}.f32", ty.name()))
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect();
        let (rows, cols) = shape_of(ty, want.len());
        assert!(rows >= 2, "{ty}: the fixture should span rows");
        // One row a slab: every row is its own launch with its own row offset.
        for slab in [cols, usize::MAX] {
            let be = cuda().with_decode_slab_values(slab);
            let w = be.weight_quantized(ty, raw.clone(), rows, cols).unwrap();
            assert_eq!(
                be.weight_bytes(&w),
                raw.len(),
                "{ty}: blocks kept as they are"
            );
            let got = be.weight_to_host(&w).unwrap();
            let bad = got
                .iter()
                .zip(&want)
                .position(|(g, w)| g.to_bits() != w.to_bits());
            assert_eq!(
                bad.map(|i| (i, got[i], want[i])),
                None,
                "{ty}, slab {slab}: first value that differs (index, device, gguf-py)"
            );
        }
    }
}

#[test]
fn every_f16_bit_pattern_widens_exactly() {
    let bits: Vec<u16> = (0..=u16::MAX).collect();
    let blocks: Vec<u8> = bits.iter().flat_map(|b| b.to_le_bytes()).collect();
    let be = cuda();
    let w = be
        .weight_quantized(GgmlType::F16, blocks, 256, 256)
        .unwrap();
    let got = be.weight_to_host(&w).unwrap();
    for (&b, g) in bits.iter().zip(&got) {
        // NaNs too: payload kept, quiet bit set, as the CPU (F16C) widens them.
        let want = half::f16::from_bits(b).to_f32();
        assert_eq!(g.to_bits(), want.to_bits(), "{b:#06x}: {g} vs {want}");
    }
}

/// Random valid blocks: random codes, with small finite f16 values at the type's scale fields.
fn random_blocks(ty: GgmlType, rows: usize, cols: usize, rng: &mut Rng) -> Vec<u8> {
    let n = ty.row_bytes(cols).unwrap() * rows;
    if !ty.is_quantized() {
        let v = rng.vec_range(rows * cols, -1.0, 1.0);
        return match ty {
            GgmlType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
            GgmlType::F16 => v
                .iter()
                .flat_map(|x| half::f16::from_f32(*x).to_le_bytes())
                .collect(),
            _ => v
                .iter()
                .flat_map(|x| half::bf16::from_f32(*x).to_le_bytes())
                .collect(),
        };
    }
    let mut b: Vec<u8> = (0..n).map(|_| rng.below(256) as u8).collect();
    for blk in b.chunks_exact_mut(ty.block_bytes()) {
        for &at in ty.f16_fields() {
            let s = half::f16::from_f32(0.05 * rng.normal());
            blk[at..at + 2].copy_from_slice(&s.to_le_bytes());
        }
    }
    b
}

fn assert_close(what: &str, got: &[f32], want: &[f32], k: usize) {
    assert_eq!(got.len(), want.len(), "{what}: lengths");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        let tol = 1e-5 * w.abs() + 2e-6 * (k as f32 + 4.0);
        assert!((g - w).abs() <= tol, "{what}[{i}]: {g} vs {w}");
    }
}

#[test]
fn both_products_over_every_type_equal_the_cpu_backend_in_one_slab_and_in_many() {
    let cpu = Cpu;
    let mut rng = Rng::new(41);
    for ty in SUPPORTED {
        let cols = ty.block_len().max(32) * 2;
        for &(m, rows) in &[(1, 3), (9, 7), (130, 5)] {
            let blocks = random_blocks(ty, rows, cols, &mut rng);
            let wc = cpu
                .weight_quantized(ty, blocks.clone(), rows, cols)
                .unwrap();
            let x = rng.vec_range(m * cols, -1.0, 1.0);
            let dy = rng.vec_range(m * rows, -1.0, 1.0);
            let y0 = rng.vec_range(m * rows, -1.0, 1.0);
            let dx0 = rng.vec_range(m * cols, -1.0, 1.0);
            // One slab; two rows a slab (a partial last slab when rows is odd); one row a slab.
            for slab in [usize::MAX, 2 * cols, cols] {
                let be = cuda().with_decode_slab_values(slab);
                let wg = be.weight_quantized(ty, blocks.clone(), rows, cols).unwrap();
                for acc in [false, true] {
                    let what = format!("{ty} m={m} rows={rows} slab={slab} acc={acc}");
                    let mut y = y0.clone();
                    cpu.linear(&mut y, &x, &wc, m, acc).unwrap();
                    let mut yg = be.upload(&y0).unwrap();
                    be.linear(&mut yg, &be.upload(&x).unwrap(), &wg, m, acc)
                        .unwrap();
                    assert_close(
                        &format!("linear {what}"),
                        &be.download(&yg).unwrap(),
                        &y,
                        cols,
                    );

                    let mut dx = dx0.clone();
                    cpu.linear_backward_input(&mut dx, &dy, &wc, m, acc)
                        .unwrap();
                    let mut dxg = be.upload(&dx0).unwrap();
                    be.linear_backward_input(&mut dxg, &be.upload(&dy).unwrap(), &wg, m, acc)
                        .unwrap();
                    assert_close(
                        &format!("dx {what}"),
                        &be.download(&dxg).unwrap(),
                        &dx,
                        rows,
                    );
                }
            }
        }
    }
}

#[test]
fn blocks_that_do_not_match_the_shape_are_refused_by_name() {
    let be = cuda();
    let e = be
        .weight_quantized(GgmlType::Q4_0, vec![0; 18], 1, 16)
        .unwrap_err()
        .to_string();
    assert!(e.contains("16 values") && e.contains("Q4_0"), "{e}");
    let e = be
        .weight_quantized(GgmlType::Q4K, vec![0; 143], 1, 256)
        .unwrap_err()
        .to_string();
    assert!(e.contains("143 bytes") && e.contains("Q4_K"), "{e}");
    let w = be
        .weight_quantized(GgmlType::Q8_0, vec![0; 68], 2, 32)
        .unwrap();
    let mut y = be.zeros(3).unwrap();
    let e = be
        .linear(&mut y, &be.zeros(64).unwrap(), &w, 2, false)
        .unwrap_err()
        .to_string();
    assert!(e.contains("linear output"), "{e}");
}
