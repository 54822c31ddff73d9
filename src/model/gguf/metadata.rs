//! GGUF metadata values and typed access to them.

use super::reader::Reader;

/// Arrays may nest (an array of arrays); deeper than this is refused as corrupt.
const MAX_DEPTH: usize = 4;

/// One metadata value, as typed in the file.
#[derive(Clone, Debug, PartialEq)]
pub enum Value {
    /// `UINT8`.
    U8(u8),
    /// `INT8`.
    I8(i8),
    /// `UINT16`.
    U16(u16),
    /// `INT16`.
    I16(i16),
    /// `UINT32`.
    U32(u32),
    /// `INT32`.
    I32(i32),
    /// `UINT64`.
    U64(u64),
    /// `INT64`.
    I64(i64),
    /// `FLOAT32`.
    F32(f32),
    /// `FLOAT64`.
    F64(f64),
    /// `BOOL`.
    Bool(bool),
    /// `STRING`.
    Str(String),
    /// `ARRAY` of values of one type.
    Array(Vec<Value>),
}

impl Value {
    /// The GGUF name of the value's type, for error messages.
    pub fn type_name(&self) -> &'static str {
        match self {
            Value::U8(_) => "UINT8",
            Value::I8(_) => "INT8",
            Value::U16(_) => "UINT16",
            Value::I16(_) => "INT16",
            Value::U32(_) => "UINT32",
            Value::I32(_) => "INT32",
            Value::U64(_) => "UINT64",
            Value::I64(_) => "INT64",
            Value::F32(_) => "FLOAT32",
            Value::F64(_) => "FLOAT64",
            Value::Bool(_) => "BOOL",
            Value::Str(_) => "STRING",
            Value::Array(_) => "ARRAY",
        }
    }

    /// The value as an unsigned integer, if it is an integer type holding one.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Value::U8(v) => Some(v.into()),
            Value::U16(v) => Some(v.into()),
            Value::U32(v) => Some(v.into()),
            Value::U64(v) => Some(v),
            Value::I8(v) => u64::try_from(v).ok(),
            Value::I16(v) => u64::try_from(v).ok(),
            Value::I32(v) => u64::try_from(v).ok(),
            Value::I64(v) => u64::try_from(v).ok(),
            _ => None,
        }
    }

    /// The value as a signed integer, if it is an integer type that fits one.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Value::I8(v) => Some(v.into()),
            Value::I16(v) => Some(v.into()),
            Value::I32(v) => Some(v.into()),
            Value::I64(v) => Some(v),
            _ => self.as_u64().and_then(|v| i64::try_from(v).ok()),
        }
    }

    /// The value as a float, if it is a float type.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Value::F32(v) => Some(v.into()),
            Value::F64(v) => Some(v),
            _ => None,
        }
    }

    /// Reads one value of GGUF type id `ty`.
    pub(super) fn read(r: &mut Reader<'_>, ty: u32, what: &str) -> Result<Value, String> {
        Self::read_nested(r, ty, what, 0)
    }

    fn read_nested(r: &mut Reader<'_>, ty: u32, what: &str, depth: usize) -> Result<Value, String> {
        Ok(match ty {
            0 => Value::U8(r.u8(what)?),
            1 => Value::I8(r.u8(what)? as i8),
            2 => Value::U16(r.u16(what)?),
            3 => Value::I16(r.u16(what)? as i16),
            4 => Value::U32(r.u32(what)?),
            5 => Value::I32(r.u32(what)? as i32),
            6 => Value::F32(f32::from_bits(r.u32(what)?)),
            7 => {
                let at = r.pos();
                match r.u8(what)? {
                    0 => Value::Bool(false),
                    1 => Value::Bool(true),
                    b => {
                        return Err(format!(
                            "{what} at offset {at}: BOOL byte {b} is not 0 or 1"
                        ))
                    }
                }
            }
            8 => Value::Str(r.string(what)?),
            9 => {
                if depth >= MAX_DEPTH {
                    return Err(format!("{what}: arrays nested deeper than {MAX_DEPTH}"));
                }
                let at = r.pos();
                let elem = r.u32(&format!("element type of {what}"))?;
                if elem > 12 {
                    return Err(format!(
                        "{what} at offset {at}: unknown element type {elem}"
                    ));
                }
                let n = r.count(min_bytes(elem), &format!("length of {what}"))?;
                let mut items = Vec::with_capacity(n);
                for _ in 0..n {
                    items.push(Self::read_nested(r, elem, what, depth + 1)?);
                }
                Value::Array(items)
            }
            10 => Value::U64(r.u64(what)?),
            11 => Value::I64(r.u64(what)? as i64),
            12 => Value::F64(f64::from_bits(r.u64(what)?)),
            t => {
                return Err(format!(
                    "{what} at offset {}: unknown value type {t}",
                    r.pos().saturating_sub(4)
                ))
            }
        })
    }
}

/// The fewest bytes a value of type id `ty` takes (its length field for strings and arrays).
fn min_bytes(ty: u32) -> usize {
    match ty {
        0 | 1 | 7 => 1,
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}
