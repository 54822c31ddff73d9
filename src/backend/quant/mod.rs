//! GGML's block formats for frozen weights: what a GGUF tensor's bytes mean.
//!
//! A quantized row of `n` values is `n / block_len` blocks laid end to end; each block holds its
//! own scale (and for some types a minimum) in f16, followed by packed integer codes. The K-quant
//! types (`Q2_K` .. `Q6_K`) group 256 values in super-blocks with 6- or 8-bit sub-block scales.
//! [`dequantize`] is the scalar reference every faster product kernel is tested against; it
//! computes each value with the same float operations, in the same order, as ggml's reference
//! (and the `gguf` Python package), so results are bit-identical.

mod dequant;

pub use dequant::dequantize;

/// Values per K-quant super-block.
pub const QK_K: usize = 256;

/// A GGML tensor type this runtime can decode.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum GgmlType {
    /// IEEE f32.
    F32,
    /// IEEE f16.
    F16,
    /// bfloat16.
    Bf16,
    /// 32 values: f16 scale, 4-bit codes, value = d·(q − 8).
    Q4_0,
    /// 32 values: f16 scale and minimum, 4-bit codes, value = d·q + m.
    Q4_1,
    /// 32 values: f16 scale, 5-bit codes, value = d·(q − 16).
    Q5_0,
    /// 32 values: f16 scale and minimum, 5-bit codes, value = d·q + m.
    Q5_1,
    /// 32 values: f16 scale, 8-bit signed codes, value = d·q.
    Q8_0,
    /// 256 values: 16 sub-blocks with 4-bit scales and minimums, 2-bit codes.
    Q2K,
    /// 256 values: 16 sub-blocks with 6-bit signed scales, 3-bit codes.
    Q3K,
    /// 256 values: 8 sub-blocks with 6-bit scales and minimums, 4-bit codes.
    Q4K,
    /// 256 values: 8 sub-blocks with 6-bit scales and minimums, 5-bit codes.
    Q5K,
    /// 256 values: 16 sub-blocks with 8-bit signed scales, 6-bit codes.
    Q6K,
}

/// Every decodable type, in GGML id order.
pub const SUPPORTED: [GgmlType; 13] = [
    GgmlType::F32,
    GgmlType::F16,
    GgmlType::Q4_0,
    GgmlType::Q4_1,
    GgmlType::Q5_0,
    GgmlType::Q5_1,
    GgmlType::Q8_0,
    GgmlType::Q2K,
    GgmlType::Q3K,
    GgmlType::Q4K,
    GgmlType::Q5K,
    GgmlType::Q6K,
    GgmlType::Bf16,
];

/// GGML ids of types that exist but that this runtime does not decode, with their names, so an
/// error can say what the file holds.
const KNOWN_UNSUPPORTED: [(u32, &str); 21] = [
    (4, "Q4_2 (removed from ggml)"),
    (5, "Q4_3 (removed from ggml)"),
    (9, "Q8_1"),
    (15, "Q8_K"),
    (16, "IQ2_XXS"),
    (17, "IQ2_XS"),
    (18, "IQ3_XXS"),
    (19, "IQ1_S"),
    (20, "IQ4_NL"),
    (21, "IQ3_S"),
    (22, "IQ2_S"),
    (23, "IQ4_XS"),
    (24, "I8"),
    (25, "I16"),
    (26, "I32"),
    (27, "I64"),
    (28, "F64"),
    (29, "IQ1_M"),
    (34, "TQ1_0"),
    (35, "TQ2_0"),
    (39, "MXFP4"),
];

impl GgmlType {
    /// The type with GGML id `id`, or an explanation naming what the id is and what is supported.
    pub fn from_id(id: u32) -> std::result::Result<Self, String> {
        if let Some(t) = SUPPORTED.iter().find(|t| t.id() == id) {
            return Ok(*t);
        }
        let what = KNOWN_UNSUPPORTED
            .iter()
            .find(|(i, _)| *i == id)
            .map_or_else(
                || format!("unknown GGML type id {id}"),
                |(_, n)| format!("GGML type {n} (id {id}), which flexp cannot decode"),
            );
        let names: Vec<&str> = SUPPORTED.iter().map(|t| t.name()).collect();
        Err(format!("{what}; supported: {}", names.join(", ")))
    }

    /// GGML's numeric id (the value stored in a GGUF tensor table).
    pub fn id(self) -> u32 {
        match self {
            GgmlType::F32 => 0,
            GgmlType::F16 => 1,
            GgmlType::Q4_0 => 2,
            GgmlType::Q4_1 => 3,
            GgmlType::Q5_0 => 6,
            GgmlType::Q5_1 => 7,
            GgmlType::Q8_0 => 8,
            GgmlType::Q2K => 10,
            GgmlType::Q3K => 11,
            GgmlType::Q4K => 12,
            GgmlType::Q5K => 13,
            GgmlType::Q6K => 14,
            GgmlType::Bf16 => 30,
        }
    }

    /// GGML's name of the type.
    pub fn name(self) -> &'static str {
        match self {
            GgmlType::F32 => "F32",
            GgmlType::F16 => "F16",
            GgmlType::Bf16 => "BF16",
            GgmlType::Q4_0 => "Q4_0",
            GgmlType::Q4_1 => "Q4_1",
            GgmlType::Q5_0 => "Q5_0",
            GgmlType::Q5_1 => "Q5_1",
            GgmlType::Q8_0 => "Q8_0",
            GgmlType::Q2K => "Q2_K",
            GgmlType::Q3K => "Q3_K",
            GgmlType::Q4K => "Q4_K",
            GgmlType::Q5K => "Q5_K",
            GgmlType::Q6K => "Q6_K",
        }
    }

    /// Values per block (1 for the float types).
    pub fn block_len(self) -> usize {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => 1,
            GgmlType::Q4_0 | GgmlType::Q4_1 | GgmlType::Q5_0 | GgmlType::Q5_1 | GgmlType::Q8_0 => {
                32
            }
            GgmlType::Q2K | GgmlType::Q3K | GgmlType::Q4K | GgmlType::Q5K | GgmlType::Q6K => QK_K,
        }
    }

    /// Bytes per block.
    pub fn block_bytes(self) -> usize {
        match self {
            GgmlType::F32 => 4,
            GgmlType::F16 | GgmlType::Bf16 => 2,
            GgmlType::Q4_0 => 18,
            GgmlType::Q4_1 => 20,
            GgmlType::Q5_0 => 22,
            GgmlType::Q5_1 => 24,
            GgmlType::Q8_0 => 34,
            GgmlType::Q2K => 84,
            GgmlType::Q3K => 110,
            GgmlType::Q4K => 144,
            GgmlType::Q5K => 176,
            GgmlType::Q6K => 210,
        }
    }

    /// Bytes of a row of `n` values, or `None` when `n` is not a whole number of blocks (or the
    /// size overflows).
    pub fn row_bytes(self, n: usize) -> Option<usize> {
        let b = self.block_len();
        if !n.is_multiple_of(b) {
            return None;
        }
        (n / b).checked_mul(self.block_bytes())
    }

    /// The bytes of a row of a `[rows x cols]` weight held in `len` bytes of this type; an error
    /// naming the mismatch when `cols` is not a whole number of blocks or `len` is not
    /// `rows` such rows.
    pub fn weight_row_bytes(self, len: usize, rows: usize, cols: usize) -> crate::Result<usize> {
        let row_bytes = self.row_bytes(cols).ok_or_else(|| {
            crate::Error::Backend(format!(
                "quantized weight: a row of {cols} values is not a whole number of {self} blocks ({} values)",
                self.block_len()
            ))
        })?;
        if Some(len) != row_bytes.checked_mul(rows) {
            return Err(crate::Error::Backend(format!(
                "quantized weight: {len} bytes given for [{rows}x{cols}] {self} ({row_bytes} bytes a row)"
            )));
        }
        Ok(row_bytes)
    }

    /// Byte offsets, within a block, of the f16 fields (the scale `d`, then the minimum or
    /// `dmin` where the type has one); empty for the float types. Everything else in a block is
    /// integer codes or integer sub-scales, valid at any value.
    pub fn f16_fields(self) -> &'static [usize] {
        match self {
            GgmlType::F32 | GgmlType::F16 | GgmlType::Bf16 => &[],
            GgmlType::Q4_0 | GgmlType::Q5_0 | GgmlType::Q8_0 => &[0],
            GgmlType::Q4_1 | GgmlType::Q5_1 | GgmlType::Q4K | GgmlType::Q5K => &[0, 2],
            GgmlType::Q2K => &[80, 82],
            GgmlType::Q3K => &[108],
            GgmlType::Q6K => &[208],
        }
    }

    /// Whether the type stores integer codes with per-block scales (as opposed to plain floats).
    pub fn is_quantized(self) -> bool {
        self.block_len() > 1
    }
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn ids_round_trip_and_unknown_ids_are_named() {
        for t in SUPPORTED {
            assert_eq!(GgmlType::from_id(t.id()), Ok(t));
        }
        let e = GgmlType::from_id(16).unwrap_err();
        assert!(e.contains("IQ2_XXS") && e.contains("Q4_K"), "{e}");
        let e = GgmlType::from_id(999).unwrap_err();
        assert!(e.contains("unknown GGML type id 999"), "{e}");
    }

    #[test]
    fn f16_fields_are_the_only_scales() {
        // Every decoded value is a product with one of the f16 fields: zero them in blocks of
        // otherwise random bytes and every value is zero; leave one nonzero and some are not.
        let mut rng = crate::rng::Rng::new(3);
        for ty in SUPPORTED.iter().filter(|t| t.is_quantized()) {
            let mut b: Vec<u8> = (0..ty.block_bytes())
                .map(|_| rng.below(256) as u8)
                .collect();
            for &at in ty.f16_fields() {
                b[at..at + 2].copy_from_slice(&[0, 0]);
            }
            let mut y = vec![1.0f32; ty.block_len()];
            dequantize(*ty, &b, &mut y).unwrap();
            assert!(y.iter().all(|v| *v == 0.0), "{ty}: {y:?}");
            let at = ty.f16_fields()[0];
            b[at..at + 2].copy_from_slice(&half::f16::from_f32(1.0).to_le_bytes());
            dequantize(*ty, &b, &mut y).unwrap();
            assert!(y.iter().any(|v| *v != 0.0), "{ty}");
        }
    }

    #[test]
    fn row_bytes_needs_whole_blocks() {
        assert_eq!(GgmlType::Q4_1.row_bytes(576), Some(18 * 20));
        assert_eq!(GgmlType::Q6K.row_bytes(512), Some(2 * 210));
        assert_eq!(GgmlType::Q6K.row_bytes(576), None);
        assert_eq!(GgmlType::F32.row_bytes(3), Some(12));
    }
}
