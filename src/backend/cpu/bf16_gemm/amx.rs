//! The AMX path of the bf16 products: `tdpbf16ps` on 16 x 16 f32 tiles.
//!
//! One `tdpbf16ps tC, tA, tB` adds a `[16 x 32] · [32 x 16]` bf16 product to a 16 x 16 f32
//! tile, where `tA` holds 16 rows of 16 pair words (32 consecutive `k` of one row of `A`) and
//! `tB` holds 16 pair rows of 16 columns: exactly a 16-column slice of 16 pair rows of a
//! [`PackedB`] panel (a row stride of `NB` words), and 16 rows of the activations packed
//! row-major (a row stride of `k2p` words). So the weights need no other packing, and the
//! activations only the f32 -> bf16 conversion the AVX-512 path does too.
//!
//! # Blocking
//! The eight tile registers hold a 2 x 2 block of `C` tiles (32 rows x 32 columns, `tmm0..3`),
//! two `A` tiles (`tmm4, 5`) and two `B` tiles (`tmm6, 7`): four loads per four products, each
//! product 16 cycles of the tile unit. A task owns [`MC`] rows and a range of 32-column pairs of
//! 16-column slices, converts its rows once (they stay in L1/L2 for every column pair), and walks
//! the whole `k` for each 32 x 32 block, so `C` is read (when accumulating) and written once.
//! Full tiles of `C` move with `tileloadd`/`tilestored` straight from and to `C`; tiles cut by
//! the `m` or `n` edge go through a 16 x 16 scratch tile. Padding rows of `A` are zero, pair rows
//! past `k` are zero in both operands, and slices past the last panel are never stored.
//!
//! # Permission
//! Linux hands out the tile data state only on request (`arch_prctl(ARCH_REQ_XCOMP_PERM)`); it
//! is asked once per process, and any failure (old kernel, seccomp, a VM that hides AMX) means
//! the AVX-512 path is used instead.

use super::super::packed::CPtr;
use super::super::packed::{for_each_task, Start};
use super::avx512::pack_a;
use super::{PackedB, KP_ALIGN, NB, NR};
use core::arch::asm;
use core::arch::x86_64::{__cpuid, __cpuid_count, _xgetbv};
use std::cell::RefCell;
use std::sync::OnceLock;

/// Rows (and f32 columns) of a tile.
const T: usize = 16;
/// Rows of `C` per task: a multiple of the 32-row block.
const MC: usize = 64;
/// Bytes of one tile row: 16 f32, or 16 pair words.
const ROW_BYTES: usize = 64;

/// Whether AMX-BF16 is usable by this process (see the module docs). Decided once.
pub(super) fn available() -> bool {
    static OK: OnceLock<bool> = OnceLock::new();
    *OK.get_or_init(|| {
        // SAFETY: `cpuid` exists on every x86_64 CPU; `xgetbv` is only executed after CPUID
        // reported OSXSAVE (the OS enabled XSAVE, so XCR0 is readable).
        let supported = unsafe {
            if __cpuid(0).eax < 7 {
                return false;
            }
            let leaf7 = __cpuid_count(7, 0);
            let amx_bf16 = (leaf7.edx >> 22) & 1 == 1;
            let amx_tile = (leaf7.edx >> 24) & 1 == 1;
            let osxsave = (__cpuid(1).ecx >> 27) & 1 == 1;
            // XCR0 bits 17 and 18: the OS saves TILECFG and TILEDATA.
            amx_bf16 && amx_tile && osxsave && (_xgetbv(0) >> 17) & 3 == 3
        };
        supported && request_permission()
    })
}

/// Asks Linux for the tile data state (process-wide, inherited by every thread).
fn request_permission() -> bool {
    const ARCH_REQ_XCOMP_PERM: libc::c_long = 0x1023;
    const XFEATURE_XTILEDATA: libc::c_long = 18;
    // SAFETY: arch_prctl with this request only changes the permission bitmap of the process;
    // the arguments are plain integers.
    unsafe {
        libc::syscall(
            libc::SYS_arch_prctl,
            ARCH_REQ_XCOMP_PERM,
            XFEATURE_XTILEDATA,
        ) == 0
    }
}

/// The `ldtilecfg` operand: palette 1, all eight tiles 16 rows x 64 bytes.
#[repr(C, align(64))]
struct TileConfig {
    palette: u8,
    start_row: u8,
    reserved: [u8; 14],
    colsb: [u16; 16],
    rows: [u8; 16],
}

impl TileConfig {
    fn all_full() -> TileConfig {
        let mut cfg = TileConfig {
            palette: 1,
            start_row: 0,
            reserved: [0; 14],
            colsb: [0; 16],
            rows: [0; 16],
        };
        for t in 0..8 {
            cfg.colsb[t] = ROW_BYTES as u16;
            cfg.rows[t] = T as u8;
        }
        cfg
    }
}

thread_local! {
    /// Packed activations of the current task, reused across calls on this thread.
    static APACK: RefCell<Vec<u32>> = const { RefCell::new(Vec::new()) };
}

/// `c[m,n] = start + a[m,k] · b` on AMX tiles, parallel over rayon.
///
/// # Safety
/// [`available`] and AVX-512 BF16 must hold; `c.len() == m·n`, `a.len() == m·k` with `(k, n)`
/// the shape of `b`, a bias has `n` values, and `m, n, k > 0`.
pub(super) unsafe fn gemm(c: &mut [f32], a: &[f32], b: &PackedB, m: usize, start: Start<'_>) {
    let (k, n) = (b.k, b.n);
    // Column units: 32-column pairs of 16-column slices.
    let pairs = n.div_ceil(T).div_ceil(2);
    let cp = CPtr(c.as_mut_ptr());
    for_each_task(m, MC, pairs, m * n * k, |r0, rows, q0, q1| {
        APACK.with(|ap| {
            let mut ap = ap.borrow_mut();
            // SAFETY: the caller guarantees the instruction sets and permission; rows
            // r0..r0+rows are inside `a`; this task alone writes rows r0..r0+rows and the
            // columns of pairs q0..q1 of `C` (clamped to n when stored).
            unsafe {
                pack_a(&mut ap, &a[r0 * k..(r0 + rows) * k], rows, k, b.k2p, 2 * T);
                task(cp, r0, rows, q0, q1, &ap, b, start);
            }
        });
    });
}

/// One asm instruction on C tile `$idx` (0..4): the template is `$pre`, the tile register's
/// number, `$post` (tile registers cannot be asm operands, so the number is spelled out).
macro_rules! with_c_tile {
    ($idx:expr, $pre:literal, $post:literal, $($args:tt)*) => {
        match $idx {
            0 => asm!(concat!($pre, "0", $post), $($args)*),
            1 => asm!(concat!($pre, "1", $post), $($args)*),
            2 => asm!(concat!($pre, "2", $post), $($args)*),
            _ => asm!(concat!($pre, "3", $post), $($args)*),
        }
    };
}

/// Where one C tile of a 32 x 32 block lives and how much of it is inside `C`.
struct CTile {
    /// Top-left element in `C`.
    at: *mut f32,
    /// Its first column.
    col: usize,
    rows: usize,
    cols: usize,
}

impl CTile {
    fn full(&self) -> bool {
        self.rows == T && self.cols == T
    }
}

/// One task: rows `r0..r0+rows` of `C` against column pairs `q0..q1`.
///
/// # Safety
/// AMX permission and AVX-512 BF16; `ap` packed by [`pack_a`] with stride `b.k2p` and rows
/// rounded to 32; `c` a row-major `[m, n]` matrix with `r0 + rows <= m` whose rows and pair
/// columns here no other thread writes.
#[allow(clippy::too_many_arguments)]
#[target_feature(enable = "avx512f,avx512bw,avx512vl,avx512bf16")]
unsafe fn task(
    c: CPtr,
    r0: usize,
    rows: usize,
    q0: usize,
    q1: usize,
    ap: &[u32],
    b: &PackedB,
    start: Start<'_>,
) {
    let n = b.n;
    let stored_slices = b.n.div_ceil(NB) * NR;
    let cfg = TileConfig::all_full();
    // SAFETY: a valid palette-1 configuration; the permission was granted.
    asm!("ldtilecfg [{0}]", in(reg) &cfg, options(nostack, readonly));
    let mut scratch = Scratch([[0.0; T * T]; 4]);
    let lda_bytes = b.k2p * 4;
    let mut i = 0;
    while i < rows {
        let a0 = ap.as_ptr().add(i * b.k2p);
        let a1 = a0.add(T * b.k2p);
        for q in q0..q1 {
            let s = [2 * q, 2 * q + 1];
            // A slice past the last stored panel borrows the previous one's address; its
            // products land in a tile that is never stored (its columns are >= n).
            let bptr = s.map(|sl| {
                let sl = sl.min(stored_slices - 1);
                b.panel_at(sl / NR, 0).add((sl % NR) * T)
            });
            let tiles: [CTile; 4] = std::array::from_fn(|t| {
                let (ri, si) = (t / 2, t % 2);
                let row0 = i + ri * T;
                let col0 = s[si] * T;
                CTile {
                    // Padding rows may lie past `C`: never dereferenced (`rows` is 0).
                    at: c.0.wrapping_add((r0 + row0) * n + col0.min(n)),
                    col: col0,
                    rows: rows.saturating_sub(row0).min(T),
                    cols: n.saturating_sub(col0).min(T),
                }
            });
            for (t, tile) in tiles.iter().enumerate() {
                init_tile(t, tile, &mut scratch.0[t], n, start);
            }
            let mut p = 0;
            while p < b.k2p {
                // SAFETY: A rows i..i+32 hold k2p words each (pack_a), pair rows p..p+16 of
                // each B slice are inside its panel (k2p is a multiple of 16).
                asm!(
                    "tileloadd tmm4, [{a0} + {sa}*1]",
                    "tileloadd tmm6, [{b0} + {sb}*1]",
                    "tdpbf16ps tmm0, tmm4, tmm6",
                    "tileloadd tmm7, [{b1} + {sb}*1]",
                    "tdpbf16ps tmm1, tmm4, tmm7",
                    "tileloadd tmm5, [{a1} + {sa}*1]",
                    "tdpbf16ps tmm2, tmm5, tmm6",
                    "tdpbf16ps tmm3, tmm5, tmm7",
                    a0 = in(reg) a0.add(p),
                    a1 = in(reg) a1.add(p),
                    b0 = in(reg) bptr[0].add(p * NB),
                    b1 = in(reg) bptr[1].add(p * NB),
                    sa = in(reg) lda_bytes,
                    sb = in(reg) NB * 4,
                    options(nostack, readonly, preserves_flags),
                );
                p += KP_ALIGN;
            }
            for (t, tile) in tiles.iter().enumerate() {
                finish_tile(t, tile, &mut scratch.0[t], n);
            }
        }
        i += 2 * T;
    }
    asm!("tilerelease", options(nostack, nomem, preserves_flags));
}

/// Four 16 x 16 f32 tiles for the C tiles cut by the edge of `C`.
#[repr(C, align(64))]
struct Scratch([[f32; T * T]; 4]);

/// Loads C tile `t` with what `start` says: zero, `C`'s values, or the bias row in every row;
/// through `scratch` when cut by the edge.
///
/// # Safety
/// The tile configuration is loaded; `tile.at` is valid for `tile.rows` rows of stride `n` and
/// `tile.cols` columns; a bias has `n` values.
unsafe fn init_tile(
    t: usize,
    tile: &CTile,
    scratch: &mut [f32; T * T],
    n: usize,
    start: Start<'_>,
) {
    if tile.full() {
        match start {
            Start::Zero => with_c_tile!(
                t,
                "tilezero tmm",
                "",
                options(nostack, nomem, preserves_flags)
            ),
            Start::Accumulate => {
                with_c_tile!(t, "tileloadd tmm", ", [{p} + {s}*1]", p = in(reg) tile.at,
                    s = in(reg) n * 4, options(nostack, readonly, preserves_flags))
            }
            // A row stride of 0 loads the same 16 bias values into all 16 rows (full tile:
            // columns col..col+16 are inside the bias).
            Start::Bias(bias) => {
                with_c_tile!(t, "tileloadd tmm", ", [{p} + {s}*1]",
                    p = in(reg) bias.as_ptr().add(tile.col), s = in(reg) 0usize,
                    options(nostack, readonly, preserves_flags))
            }
        }
        return;
    }
    scratch.fill(0.0);
    match start {
        Start::Zero => {}
        Start::Accumulate => {
            for r in 0..tile.rows {
                let src = std::slice::from_raw_parts(tile.at.add(r * n), tile.cols);
                scratch[r * T..r * T + tile.cols].copy_from_slice(src);
            }
        }
        // A tile wholly past the last column (`cols == 0`) may start past the bias's end.
        Start::Bias(bias) if tile.cols > 0 => {
            for r in 0..tile.rows {
                scratch[r * T..r * T + tile.cols]
                    .copy_from_slice(&bias[tile.col..tile.col + tile.cols]);
            }
        }
        Start::Bias(_) => {}
    }
    with_c_tile!(t, "tileloadd tmm", ", [{p} + {s}*1]", p = in(reg) scratch.as_ptr(),
        s = in(reg) ROW_BYTES, options(nostack, readonly, preserves_flags));
}

/// Stores C tile `t` back into `C` (through `scratch` when cut by the edge).
///
/// # Safety
/// As [`init_tile`], after the same tile was initialised.
unsafe fn finish_tile(t: usize, tile: &CTile, scratch: &mut [f32; T * T], n: usize) {
    if tile.full() {
        with_c_tile!(t, "tilestored [{p} + {s}*1], tmm", "", p = in(reg) tile.at,
            s = in(reg) n * 4, options(nostack, preserves_flags));
        return;
    }
    with_c_tile!(t, "tilestored [{p} + {s}*1], tmm", "", p = in(reg) scratch.as_mut_ptr(),
        s = in(reg) ROW_BYTES, options(nostack, preserves_flags));
    for r in 0..tile.rows {
        let dst = std::slice::from_raw_parts_mut(tile.at.add(r * n), tile.cols);
        dst.copy_from_slice(&scratch[r * T..r * T + tile.cols]);
    }
}
