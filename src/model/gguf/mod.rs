//! GGUF files (llama.cpp's checkpoint format, versions 2 and 3): header, metadata and tensor
//! table, parsed with every offset and count checked against the file.
//!
//! Layout: magic `GGUF`, version (u32), tensor count and metadata count (u64), the metadata
//! key/value pairs, the tensor table (name, dimensions, GGML type, offset), padding to
//! `general.alignment` (default 32), then the tensor data. Offsets in the table are relative to
//! the start of the data. Dimensions are in GGML order: `dims[0]` is the length of a row (the
//! contiguous, quantized axis), so a PyTorch weight `[out, in]` is stored with `dims = [in, out]`.

mod config;
mod load;
mod metadata;
mod reader;
mod tokenizer;

pub use metadata::Value;

use crate::backend::quant::{self, GgmlType};
use crate::error::{Error, Result};
use reader::Reader;
use std::collections::HashMap;
use std::path::{Path, PathBuf};

const MAGIC: &[u8; 4] = b"GGUF";
/// GGML's limit on tensor dimensions.
const MAX_DIMS: usize = 4;
const DEFAULT_ALIGNMENT: u64 = 32;

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name, e.g. `blk.0.attn_q.weight`.
    pub name: String,
    /// Dimensions in GGML order (`dims[0]` is the row length).
    pub dims: Vec<u64>,
    /// Storage type.
    pub ty: GgmlType,
    /// Offset of the first byte from the start of the file.
    pub offset: usize,
    /// Size in bytes.
    pub bytes: usize,
}

impl TensorInfo {
    /// Number of values.
    pub fn len(&self) -> usize {
        self.dims.iter().product::<u64>() as usize
    }

    /// Whether the tensor has no values.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }

    /// Values per row (`dims[0]`).
    pub fn row_len(&self) -> usize {
        self.dims.first().copied().unwrap_or(1) as usize
    }

    /// Number of rows (the product of the other dimensions).
    pub fn rows(&self) -> usize {
        self.dims.iter().skip(1).product::<u64>() as usize
    }

    /// The shape in PyTorch order (outermost first), e.g. `[out, in]` for a linear weight.
    pub fn torch_shape(&self) -> Vec<usize> {
        self.dims.iter().rev().map(|&d| d as usize).collect()
    }
}

/// A parsed GGUF file: its metadata, its tensor table, and its bytes.
pub struct Gguf {
    /// Where it was read from (named in errors).
    pub path: PathBuf,
    /// Format version (2 or 3).
    pub version: u32,
    /// Metadata key/value pairs, in file order.
    pub metadata: Vec<(String, Value)>,
    /// The tensor table, in file order.
    pub tensors: Vec<TensorInfo>,
    /// Alignment of tensor data (`general.alignment`).
    pub alignment: u64,
    /// Offset of the tensor data section.
    pub data_offset: usize,
    by_key: HashMap<String, usize>,
    by_name: HashMap<String, usize>,
    bytes: Vec<u8>,
}

impl std::fmt::Debug for Gguf {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Gguf")
            .field("path", &self.path)
            .field("version", &self.version)
            .field("metadata", &self.metadata.len())
            .field("tensors", &self.tensors.len())
            .finish()
    }
}

impl Gguf {
    /// Reads and parses the file at `path`.
    pub fn open(path: &Path) -> Result<Gguf> {
        let bytes = std::fs::read(path).map_err(|e| Error::io(path, e))?;
        Gguf::parse(bytes, path)
    }

    /// Parses `bytes`, the whole content of a GGUF file; `path` names it in errors.
    pub fn parse(bytes: Vec<u8>, path: &Path) -> Result<Gguf> {
        let bad = |reason: String| Error::Gguf {
            path: path.to_path_buf(),
            reason,
        };
        let mut r = Reader::new(&bytes);
        let magic = r.take(4, "magic").map_err(bad)?;
        if magic != MAGIC {
            return Err(bad(format!(
                "not a GGUF file: it starts with {magic:02x?}, not \"GGUF\""
            )));
        }
        let version = r.u32("version").map_err(bad)?;
        if !(2..=3).contains(&version) {
            return Err(bad(format!(
                "GGUF version {version} is not supported (versions 2 and 3 are)"
            )));
        }
        // A tensor entry takes at least 8 (name) + 4 (dims) + 4 (type) + 8 (offset) bytes, a
        // metadata entry at least 8 (key) + 4 (type) + 1.
        let n_tensors = r.count(24, "tensor count").map_err(bad)?;
        let n_kv = r.count(13, "metadata count").map_err(bad)?;
        let mut metadata = Vec::with_capacity(n_kv);
        let mut by_key = HashMap::with_capacity(n_kv);
        for i in 0..n_kv {
            let key = r.string(&format!("metadata key {i}")).map_err(bad)?;
            let ty = r.u32(&format!("type of `{key}`")).map_err(bad)?;
            let v = Value::read(&mut r, ty, &format!("value of `{key}`")).map_err(bad)?;
            if by_key.insert(key.clone(), metadata.len()).is_some() {
                return Err(bad(format!("metadata key `{key}` appears twice")));
            }
            metadata.push((key, v));
        }
        let alignment = match by_key.get("general.alignment").map(|&i| &metadata[i].1) {
            None => DEFAULT_ALIGNMENT,
            Some(Value::U32(a)) if a.is_power_of_two() => u64::from(*a),
            Some(v) => {
                return Err(bad(format!(
                    "general.alignment must be a UINT32 power of two, found {v:?}"
                )))
            }
        };
        let mut raw = Vec::with_capacity(n_tensors);
        for i in 0..n_tensors {
            let name = r.string(&format!("name of tensor {i}")).map_err(bad)?;
            let nd_at = r.pos();
            let nd = r
                .u32(&format!("dimension count of `{name}`"))
                .map_err(bad)? as usize;
            if nd == 0 || nd > MAX_DIMS {
                return Err(bad(format!(
                    "tensor `{name}` (offset {nd_at}) has {nd} dimensions; GGML allows 1 to {MAX_DIMS}"
                )));
            }
            let mut dims = Vec::with_capacity(nd);
            for _ in 0..nd {
                dims.push(r.u64(&format!("dimensions of `{name}`")).map_err(bad)?);
            }
            let ty_id = r.u32(&format!("type of `{name}`")).map_err(bad)?;
            let ty = GgmlType::from_id(ty_id).map_err(|e| bad(format!("tensor `{name}`: {e}")))?;
            let offset = r.u64(&format!("offset of `{name}`")).map_err(bad)?;
            raw.push((name, dims, ty, offset));
        }
        let data_offset = (r.pos() as u64).div_ceil(alignment) * alignment;
        let data_offset = usize::try_from(data_offset)
            .ok()
            .filter(|&o| o <= bytes.len())
            .ok_or_else(|| {
                bad(format!(
                    "truncated: the tensor data would start at offset {data_offset}, past the end ({})",
                    bytes.len()
                ))
            })?;
        let mut tensors = Vec::with_capacity(n_tensors);
        let mut by_name = HashMap::with_capacity(n_tensors);
        for (name, dims, ty, offset) in raw {
            let t = tensor_info(name, dims, ty, offset, alignment, data_offset, bytes.len())
                .map_err(bad)?;
            if by_name.insert(t.name.clone(), tensors.len()).is_some() {
                return Err(bad(format!("tensor `{}` appears twice", t.name)));
            }
            tensors.push(t);
        }
        Ok(Gguf {
            path: path.to_path_buf(),
            version,
            metadata,
            tensors,
            alignment,
            data_offset,
            by_key,
            by_name,
            bytes,
        })
    }

    pub(crate) fn err(&self, reason: String) -> Error {
        Error::Gguf {
            path: self.path.clone(),
            reason,
        }
    }

    /// The value of metadata key `key`.
    pub fn get(&self, key: &str) -> Option<&Value> {
        self.by_key.get(key).map(|&i| &self.metadata[i].1)
    }

    fn typed<T>(
        &self,
        key: &str,
        want: &str,
        conv: impl Fn(&Value) -> Option<T>,
    ) -> Result<Option<T>> {
        match self.get(key) {
            None => Ok(None),
            Some(v) => conv(v).map(Some).ok_or_else(|| {
                self.err(format!(
                    "metadata `{key}` should be {want}, but it is {} {}",
                    v.type_name(),
                    short(v)
                ))
            }),
        }
    }

    /// Key `key` as a non-negative integer (any integer type), `None` when absent.
    pub fn u64(&self, key: &str) -> Result<Option<u64>> {
        self.typed(key, "a non-negative integer", Value::as_u64)
    }

    /// Key `key` as a float (FLOAT32 or FLOAT64), `None` when absent.
    pub fn f64(&self, key: &str) -> Result<Option<f64>> {
        self.typed(key, "a float", Value::as_f64)
    }

    /// Key `key` as a boolean, `None` when absent.
    pub fn bool(&self, key: &str) -> Result<Option<bool>> {
        self.typed(key, "a BOOL", |v| match v {
            Value::Bool(b) => Some(*b),
            _ => None,
        })
    }

    /// Key `key` as a string, `None` when absent.
    pub fn str(&self, key: &str) -> Result<Option<&str>> {
        match self.get(key) {
            None => Ok(None),
            Some(Value::Str(s)) => Ok(Some(s)),
            Some(v) => Err(self.err(format!(
                "metadata `{key}` should be a STRING, but it is {} {}",
                v.type_name(),
                short(v)
            ))),
        }
    }

    /// Key `key` as an array of `want`, each item converted by `conv`, `None` when absent.
    fn array_of<'a, T>(
        &'a self,
        key: &str,
        want: &str,
        conv: impl Fn(&'a Value) -> Option<T>,
    ) -> Result<Option<Vec<T>>> {
        let wrong = |v: &Value| {
            self.err(format!(
                "metadata `{key}` should be an ARRAY of {want}, but it is {} {}",
                v.type_name(),
                short(v)
            ))
        };
        match self.get(key) {
            None => Ok(None),
            Some(v @ Value::Array(items)) => items
                .iter()
                .map(|x| conv(x).ok_or_else(|| wrong(v)))
                .collect::<Result<Vec<_>>>()
                .map(Some),
            Some(v) => Err(wrong(v)),
        }
    }

    /// Key `key` as an array of strings, `None` when absent.
    pub fn str_array(&self, key: &str) -> Result<Option<Vec<&str>>> {
        self.array_of(key, "STRING", |x| match x {
            Value::Str(s) => Some(s.as_str()),
            _ => None,
        })
    }

    /// Key `key` as an array of numbers (integers or floats, as f64), `None` when absent.
    pub fn num_array(&self, key: &str) -> Result<Option<Vec<f64>>> {
        self.array_of(key, "numbers", |x| {
            x.as_f64().or_else(|| x.as_i64().map(|i| i as f64))
        })
    }

    /// The tensor named `name`.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.by_name.get(name).map(|&i| &self.tensors[i])
    }

    /// The stored bytes of `t` (a tensor of this file).
    pub fn data(&self, t: &TensorInfo) -> &[u8] {
        &self.bytes[t.offset..t.offset + t.bytes]
    }

    /// Rows `rows` of tensor `t`, decoded to f32 (`rows.len() * t.row_len()` values).
    pub fn dequantize_rows(
        &self,
        t: &TensorInfo,
        rows: std::ops::Range<usize>,
    ) -> Result<Vec<f32>> {
        if rows.end > t.rows() || rows.start > rows.end {
            return Err(self.err(format!(
                "tensor `{}` has {} rows; rows {rows:?} were asked for",
                t.name,
                t.rows()
            )));
        }
        let rb = t.bytes / t.rows().max(1);
        let mut out = vec![0.0f32; rows.len() * t.row_len()];
        let data = &self.data(t)[rows.start * rb..rows.end * rb];
        quant::dequantize(t.ty, data, &mut out)?;
        Ok(out)
    }

    /// The whole tensor `t` decoded to f32 (for small tensors such as norms and biases; large
    /// weights are decoded tile by tile inside the product kernels instead).
    pub fn dequantize(&self, t: &TensorInfo) -> Result<Vec<f32>> {
        self.dequantize_rows(t, 0..t.rows())
    }
}

/// Checks one tensor table entry against the file and turns it into a [`TensorInfo`].
fn tensor_info(
    name: String,
    dims: Vec<u64>,
    ty: GgmlType,
    offset: u64,
    alignment: u64,
    data_offset: usize,
    file_len: usize,
) -> std::result::Result<TensorInfo, String> {
    let n = dims
        .iter()
        .try_fold(1u64, |a, &d| a.checked_mul(d))
        .and_then(|n| usize::try_from(n).ok())
        .ok_or_else(|| format!("tensor `{name}`: dimensions {dims:?} overflow"))?;
    let row = dims[0] as usize;
    let row_bytes = ty.row_bytes(row).ok_or_else(|| {
        format!(
            "tensor `{name}`: a row of {row} values is not a whole number of {ty} blocks ({} values)",
            ty.block_len()
        )
    })?;
    // A zero-length row means an empty tensor.
    let bytes = match n.checked_div(row) {
        None => 0,
        Some(rows) => rows
            .checked_mul(row_bytes)
            .ok_or_else(|| format!("tensor `{name}`: size overflows"))?,
    };
    if !offset.is_multiple_of(alignment) {
        return Err(format!(
            "tensor `{name}`: offset {offset} is not a multiple of the alignment {alignment}"
        ));
    }
    let start = usize::try_from(offset)
        .ok()
        .and_then(|o| o.checked_add(data_offset));
    match start.and_then(|s| s.checked_add(bytes).map(|e| (s, e))) {
        Some((s, e)) if e <= file_len => Ok(TensorInfo {
            name,
            dims,
            ty,
            offset: s,
            bytes,
        }),
        _ => Err(format!(
            "tensor `{name}`: its {bytes} bytes at data offset {offset} end past the end of the file \
             ({file_len} bytes, data from {data_offset}); the file is truncated or corrupt"
        )),
    }
}

/// A value shortened for an error message.
fn short(v: &Value) -> String {
    match v {
        Value::Array(items) => format!("of {} items", items.len()),
        Value::Str(s) if s.chars().count() > 40 => {
            format!("{:?}...", s.chars().take(40).collect::<String>())
        }
        v => format!("{v:?}"),
    }
}
