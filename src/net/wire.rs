//! Tensors on the wire: a message's tensors are cut into [`TensorFrame`] chunks of at most
//! `frame_bytes` bytes each, f32 or bf16 little-endian, each with a CRC-32 of its bytes; the
//! receiver reassembles them with [`decode`], which trusts nothing it is sent.
//!
//! Everything a peer sends is untrusted input. [`decode`] refuses, naming the tensor and the
//! problem: an unknown element type, a shape whose size overflows or disagrees with the
//! declared byte count, chunks out of order or with a changed shape, a checksum mismatch, more
//! tensors than [`Limits::max_tensors`], and above all a message larger than
//! [`Limits::max_message_bytes`], checked against the declared sizes before anything is
//! buffered, so a peer cannot make the receiver allocate more than the limit. Decoded values
//! must be finite: a NaN or an infinity is refused (the sender is then marked, and no other
//! client's state is touched).

use super::proto::{ElementType as DType, TensorFrame};
use half::bf16;
use thiserror::Error;

/// The element type of tensors on the wire.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum WireDType {
    /// IEEE f32: exact.
    F32,
    /// bfloat16, rounded to nearest even: half the bytes.
    Bf16,
}

impl WireDType {
    fn bytes(self) -> usize {
        match self {
            WireDType::F32 => 4,
            WireDType::Bf16 => 2,
        }
    }

    fn proto(self) -> DType {
        match self {
            WireDType::F32 => DType::F32,
            WireDType::Bf16 => DType::Bf16,
        }
    }

    /// `"f32"` or `"bf16"`, as configured (`net.wire`).
    pub fn parse(s: &str) -> Result<Self, WireError> {
        match s {
            "f32" => Ok(WireDType::F32),
            "bf16" => Ok(WireDType::Bf16),
            other => Err(WireError::Config(format!(
                "wire element type {other:?}: expected \"f32\" or \"bf16\""
            ))),
        }
    }
}

/// What a receiver accepts in one message.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Limits {
    /// Payload bytes of all the message's tensors together.
    pub max_message_bytes: usize,
    /// Tensors in one message.
    pub max_tensors: usize,
    /// Dimensions of one tensor.
    pub max_rank: usize,
}

impl Default for Limits {
    /// 256 MiB a message (a step of 64 sequences of 2,048 tokens at hidden size 512 in f32),
    /// 4,096 tensors, rank 4.
    fn default() -> Self {
        Limits {
            max_message_bytes: 256 << 20,
            max_tensors: 4096,
            max_rank: 4,
        }
    }
}

impl Limits {
    /// The default limits with at most `mb` MiB of tensor payload a message; refuses 0 and more
    /// than gRPC can carry (2 GiB).
    pub fn with_message_mb(mb: usize) -> Result<Limits, WireError> {
        if mb == 0 || mb > 2047 {
            return Err(WireError::Config(format!(
                "a message limit of {mb} MiB: expected 1..=2047 (gRPC carries at most 2 GiB a \
                 message)"
            )));
        }
        Ok(Limits {
            max_message_bytes: mb << 20,
            ..Limits::default()
        })
    }
}

/// A reassembled tensor.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    /// Its dimensions.
    pub shape: Vec<usize>,
    /// Its values, row-major.
    pub data: Vec<f32>,
}

/// Why a message's tensors were refused.
#[derive(Debug, Error, PartialEq)]
pub enum WireError {
    /// A tensor declares more bytes than the message may still hold.
    #[error("tensor {tensor}: {declared} bytes would exceed the message limit of {limit} bytes")]
    TooLarge {
        /// The tensor's index in the message.
        tensor: u32,
        /// Bytes declared so far in the message, this tensor included.
        declared: u128,
        /// The limit.
        limit: usize,
    },
    /// More tensors than the limit.
    #[error("more than {0} tensors in one message")]
    TooManyTensors(usize),
    /// A malformed frame.
    #[error("tensor {tensor}: {reason}")]
    Malformed {
        /// The tensor's index in the message.
        tensor: u32,
        /// What is wrong.
        reason: String,
    },
    /// A chunk's bytes do not match its checksum.
    #[error("tensor {tensor}: checksum mismatch in the chunk at byte {offset}")]
    Checksum {
        /// The tensor's index.
        tensor: u32,
        /// The chunk's offset.
        offset: u64,
    },
    /// The message ended inside a tensor.
    #[error("tensor {tensor}: truncated: {got} of {total} bytes arrived")]
    Truncated {
        /// The tensor's index.
        tensor: u32,
        /// Bytes received.
        got: u64,
        /// Bytes declared.
        total: u64,
    },
    /// A value is NaN or infinite.
    #[error("tensor {tensor}: element {index} is {value} (not finite)")]
    NonFinite {
        /// The tensor's index.
        tensor: u32,
        /// The element's index.
        index: usize,
        /// The value.
        value: f32,
    },
    /// A bad setting.
    #[error("{0}")]
    Config(String),
}

impl From<WireError> for crate::error::Error {
    fn from(e: WireError) -> Self {
        crate::error::Error::Input(format!("wire: {e}"))
    }
}

/// Cuts `tensors` (shape and values each) into frames of at most `frame_bytes` payload bytes
/// (at least one element), in `dtype`. A tensor whose shape does not hold its values is a
/// caller error, reported as [`WireError::Config`].
pub fn encode(
    tensors: &[(&[usize], &[f32])],
    dtype: WireDType,
    frame_bytes: usize,
) -> Result<Vec<TensorFrame>, WireError> {
    let elem = dtype.bytes();
    let per_frame = (frame_bytes / elem).max(1);
    let mut frames = Vec::new();
    for (t, (shape, data)) in tensors.iter().enumerate() {
        let n: usize = shape.iter().product();
        if n != data.len() {
            return Err(WireError::Config(format!(
                "tensor {t}: shape {shape:?} holds {n} values, {} given",
                data.len()
            )));
        }
        let tensor = u32::try_from(t).map_err(|_| WireError::TooManyTensors(u32::MAX as usize))?;
        let total = (n * elem) as u64;
        let shape: Vec<u64> = shape.iter().map(|&d| d as u64).collect();
        let mut start = 0;
        loop {
            let end = (start + per_frame).min(n);
            let bytes = to_bytes(&data[start..end], dtype);
            frames.push(TensorFrame {
                tensor,
                shape: shape.clone(),
                dtype: dtype.proto() as i32,
                offset: (start * elem) as u64,
                total_bytes: total,
                crc32: crc32fast::hash(&bytes),
                data: bytes,
            });
            start = end;
            if start >= n {
                break;
            }
        }
    }
    Ok(frames)
}

fn to_bytes(v: &[f32], dtype: WireDType) -> Vec<u8> {
    match dtype {
        WireDType::F32 => v.iter().flat_map(|x| x.to_le_bytes()).collect(),
        WireDType::Bf16 => v
            .iter()
            .flat_map(|x| bf16::from_f32(*x).to_le_bytes())
            .collect(),
    }
}

/// The tensor being reassembled.
struct Partial {
    index: u32,
    shape: Vec<u64>,
    dtype: WireDType,
    total: u64,
    bytes: Vec<u8>,
}

/// Reassembles the tensors of one message from its frames, refusing anything malformed (see the
/// module docs). Tensors must be numbered 0, 1, ... in order, each one's chunks contiguous.
pub fn decode(frames: &[TensorFrame], limits: &Limits) -> Result<Vec<Tensor>, WireError> {
    let mut out = Vec::new();
    let mut declared: u128 = 0;
    let mut cur: Option<Partial> = None;
    for f in frames {
        let bad = |reason: String| WireError::Malformed {
            tensor: f.tensor,
            reason,
        };
        let continues = cur.as_ref().is_some_and(|p| p.index == f.tensor);
        if !continues {
            if let Some(p) = cur.take() {
                out.push(finish(p)?);
            }
            if f.tensor as usize != out.len() {
                return Err(bad(format!("expected tensor {} next", out.len())));
            }
            if out.len() >= limits.max_tensors {
                return Err(WireError::TooManyTensors(limits.max_tensors));
            }
            let dtype = match DType::try_from(f.dtype) {
                Ok(DType::F32) => WireDType::F32,
                Ok(DType::Bf16) => WireDType::Bf16,
                _ => return Err(bad(format!("unknown element type {}", f.dtype))),
            };
            if f.shape.len() > limits.max_rank {
                return Err(bad(format!(
                    "{} dimensions (at most {})",
                    f.shape.len(),
                    limits.max_rank
                )));
            }
            let elems = f
                .shape
                .iter()
                .try_fold(1u128, |a, &d| a.checked_mul(d as u128))
                .filter(|&n| n <= u64::MAX as u128)
                .ok_or_else(|| bad(format!("shape {:?} overflows", f.shape)))?;
            let bytes = elems * dtype.bytes() as u128;
            if bytes != f.total_bytes as u128 {
                return Err(bad(format!(
                    "shape {:?} is {bytes} bytes of {dtype:?}, {} declared",
                    f.shape, f.total_bytes
                )));
            }
            declared += bytes;
            if declared > limits.max_message_bytes as u128 {
                return Err(WireError::TooLarge {
                    tensor: f.tensor,
                    declared,
                    limit: limits.max_message_bytes,
                });
            }
            cur = Some(Partial {
                index: f.tensor,
                shape: f.shape.clone(),
                dtype,
                total: f.total_bytes,
                // Within the limit checked just above.
                bytes: Vec::with_capacity(f.total_bytes as usize),
            });
        }
        let p = cur.as_mut().expect("set above");
        if f.shape != p.shape || f.total_bytes != p.total || f.dtype != p.dtype.proto() as i32 {
            return Err(bad("shape, size or type changed between chunks".into()));
        }
        if f.offset != p.bytes.len() as u64 {
            return Err(bad(format!(
                "chunk at byte {} where byte {} was expected",
                f.offset,
                p.bytes.len()
            )));
        }
        if f.data.is_empty() && p.total > 0 {
            return Err(bad("empty chunk".into()));
        }
        if f.data.len() as u64 > p.total - p.bytes.len() as u64 {
            return Err(bad(format!(
                "chunk of {} bytes at byte {} passes the end ({} bytes)",
                f.data.len(),
                f.offset,
                p.total
            )));
        }
        if crc32fast::hash(&f.data) != f.crc32 {
            return Err(WireError::Checksum {
                tensor: f.tensor,
                offset: f.offset,
            });
        }
        p.bytes.extend_from_slice(&f.data);
    }
    if let Some(p) = cur.take() {
        out.push(finish(p)?);
    }
    Ok(out)
}

/// A complete tensor's values, refusing a short one and non-finite values.
fn finish(p: Partial) -> Result<Tensor, WireError> {
    if (p.bytes.len() as u64) < p.total {
        return Err(WireError::Truncated {
            tensor: p.index,
            got: p.bytes.len() as u64,
            total: p.total,
        });
    }
    let data: Vec<f32> = match p.dtype {
        WireDType::F32 => p
            .bytes
            .chunks_exact(4)
            .map(|c| f32::from_le_bytes([c[0], c[1], c[2], c[3]]))
            .collect(),
        WireDType::Bf16 => p
            .bytes
            .chunks_exact(2)
            .map(|c| bf16::from_le_bytes([c[0], c[1]]).to_f32())
            .collect(),
    };
    if let Some(index) = data.iter().position(|v| !v.is_finite()) {
        return Err(WireError::NonFinite {
            tensor: p.index,
            index,
            value: data[index],
        });
    }
    Ok(Tensor {
        // Each dimension fits in usize: their product was checked against the byte limit.
        shape: p.shape.iter().map(|&d| d as usize).collect(),
        data,
    })
}
