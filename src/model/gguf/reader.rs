//! The GGUF parser: a bounds-checked cursor over the file's bytes.

use std::collections::HashMap;

use super::{GgmlType, GgufFile, MetaValue, TensorInfo, DEFAULT_ALIGNMENT};
use crate::error::GgufError;
use crate::tensor::{check_alloc, checked_numel};

/// How deep arrays of arrays may nest.
const MAX_NESTING: usize = 16;

/// The smallest encoding of a metadata entry: key length, type, one byte.
const MIN_KV_BYTES: usize = 8 + 4 + 1;

/// The smallest encoding of a tensor table entry: name length, n_dims, type, offset.
const MIN_TENSOR_BYTES: usize = 8 + 4 + 4 + 8;

/// Parses a whole file.
pub(super) fn parse(bytes: Vec<u8>) -> Result<GgufFile, GgufError> {
    let mut cur = Cursor { bytes: &bytes, pos: 0 };
    let version = header(&mut cur)?;
    let n_tensors = cur.count("tensor count", MIN_TENSOR_BYTES)?;
    let n_kv = cur.count("metadata count", MIN_KV_BYTES)?;
    let (metadata, meta_index) = read_metadata(&mut cur, n_kv)?;
    let alignment = alignment(meta_index.get("general.alignment").and_then(|&i| metadata.get(i)))?;
    let mut tensors = read_tensor_table(&mut cur, n_tensors)?;
    let data_offset = align_up(cur.pos, alignment)?;
    for t in &mut tensors {
        t.range = tensor_range(t, data_offset, alignment, bytes.len())?;
    }
    let tensor_index = index(&tensors, |t| &t.name, "tensor name")?;
    Ok(GgufFile {
        version,
        alignment,
        data_offset,
        metadata,
        meta_index,
        tensors,
        tensor_index,
        bytes,
    })
}

/// Magic and version.
fn header(cur: &mut Cursor) -> Result<u32, GgufError> {
    let magic = cur.take(4, "the magic")?;
    if magic != b"GGUF" {
        return Err(GgufError::Magic { found: magic.to_vec() });
    }
    match cur.u32("the version")? {
        v @ (2 | 3) => Ok(v),
        v => Err(GgufError::Version(v)),
    }
}

type Metadata = (Vec<(String, MetaValue)>, HashMap<String, usize>);

fn read_metadata(cur: &mut Cursor, n_kv: usize) -> Result<Metadata, GgufError> {
    let mut entries = Vec::with_capacity(n_kv);
    for _ in 0..n_kv {
        let key = cur.string("a metadata key")?;
        let code = cur.u32("a metadata value type")?;
        let value = cur.value(code, &key, 0)?;
        entries.push((key, value));
    }
    let index = index(&entries, |e| &e.0, "metadata key")?;
    Ok((entries, index))
}

/// Name → position, refusing duplicates.
fn index<T>(
    items: &[T],
    name: impl Fn(&T) -> &String,
    what: &'static str,
) -> Result<HashMap<String, usize>, GgufError> {
    let mut map = HashMap::with_capacity(items.len());
    for (i, item) in items.iter().enumerate() {
        if map.insert(name(item).clone(), i).is_some() {
            return Err(GgufError::Duplicate {
                what,
                name: name(item).clone(),
            });
        }
    }
    Ok(map)
}

/// `general.alignment`: a u32 power of two, or the default when absent.
fn alignment(entry: Option<&(String, MetaValue)>) -> Result<u64, GgufError> {
    match entry.map(|e| &e.1) {
        None => Ok(DEFAULT_ALIGNMENT),
        Some(MetaValue::U32(a)) if a.is_power_of_two() => Ok(u64::from(*a)),
        Some(other) => Err(GgufError::Alignment(other.as_u64().unwrap_or(0))),
    }
}

fn align_up(pos: usize, alignment: u64) -> Result<usize, GgufError> {
    let a = usize::try_from(alignment).map_err(|_| GgufError::Alignment(alignment))?;
    pos.checked_next_multiple_of(a).ok_or(GgufError::Alignment(alignment))
}

fn read_tensor_table(cur: &mut Cursor, n: usize) -> Result<Vec<TensorInfo>, GgufError> {
    let mut tensors = Vec::with_capacity(n);
    for _ in 0..n {
        tensors.push(tensor_info(cur)?);
    }
    Ok(tensors)
}

fn tensor_info(cur: &mut Cursor) -> Result<TensorInfo, GgufError> {
    let name = cur.string("a tensor name")?;
    let n_dims = cur.u32("a tensor's dimension count")?;
    if n_dims > 4 {
        return Err(GgufError::Dims { tensor: name, n_dims });
    }
    let dims = (0..n_dims)
        .map(|_| cur.u64("a tensor dimension"))
        .collect::<Result<Vec<_>, _>>()?;
    let code = cur.u32("a tensor type")?;
    let ggml_type = GgmlType::from_code(code).ok_or_else(|| GgufError::TensorType {
        tensor: name.clone(),
        code,
    })?;
    let offset = cur.u64("a tensor offset")?;
    Ok(TensorInfo {
        name,
        dims,
        ggml_type,
        offset,
        range: 0..0,
    })
}

/// The tensor's bytes in the file: checked size, aligned offset, inside the file.
fn tensor_range(
    t: &TensorInfo,
    data_offset: usize,
    alignment: u64,
    len: usize,
) -> Result<std::ops::Range<usize>, GgufError> {
    let bad = |message: String| GgufError::Tensor {
        tensor: t.name.clone(),
        message,
    };
    let n_bytes = tensor_bytes(t).map_err(bad)?;
    if !t.offset.is_multiple_of(alignment) {
        return Err(bad(format!(
            "offset {} is not a multiple of the alignment {alignment}",
            t.offset
        )));
    }
    let start = u64::try_from(data_offset).ok().and_then(|d| d.checked_add(t.offset));
    let end = start.and_then(|s| s.checked_add(n_bytes));
    match (start, end) {
        (Some(s), Some(e)) if e <= len as u64 => Ok(s as usize..e as usize),
        _ => Err(bad(format!(
            "its {n_bytes} bytes at data offset {} (file offset {data_offset} + {}) run past the end of the file ({len} bytes)",
            t.offset, t.offset
        ))),
    }
}

/// Bytes a tensor's shape and type need: elements / block size × bytes per block.
fn tensor_bytes(t: &TensorInfo) -> Result<u64, String> {
    let dims = t
        .dims
        .iter()
        .map(|&d| usize::try_from(d).map_err(|_| format!("dimension {d} does not fit in memory")))
        .collect::<Result<Vec<_>, _>>()?;
    let numel = checked_numel(&dims).map_err(|e| e.to_string())? as u64;
    let block = t.ggml_type.block_size();
    let row = t.dims.first().copied().unwrap_or(1);
    if !row.is_multiple_of(block) {
        return Err(format!(
            "its first dimension {row} is not a multiple of the {} block size {block}",
            t.ggml_type
        ));
    }
    (numel / block)
        .checked_mul(t.ggml_type.block_bytes())
        .ok_or_else(|| format!("the byte count of shape {:?} overflows", t.dims))
}

/// A bounds-checked reader over the file's bytes.
struct Cursor<'a> {
    bytes: &'a [u8],
    pos: usize,
}

impl<'a> Cursor<'a> {
    fn remaining(&self) -> usize {
        self.bytes.len() - self.pos
    }

    fn take(&mut self, n: usize, what: &str) -> Result<&'a [u8], GgufError> {
        let end = self.pos.checked_add(n).filter(|&e| e <= self.bytes.len());
        let Some(end) = end else {
            return Err(GgufError::Truncated {
                what: what.to_string(),
                needed: n as u64,
                offset: self.pos,
                len: self.bytes.len(),
            });
        };
        let out = &self.bytes[self.pos..end];
        self.pos = end;
        Ok(out)
    }

    fn array<const N: usize>(&mut self, what: &str) -> Result<[u8; N], GgufError> {
        let mut a = [0u8; N];
        a.copy_from_slice(self.take(N, what)?);
        Ok(a)
    }

    fn u32(&mut self, what: &str) -> Result<u32, GgufError> {
        self.array(what).map(u32::from_le_bytes)
    }

    fn u64(&mut self, what: &str) -> Result<u64, GgufError> {
        self.array(what).map(u64::from_le_bytes)
    }

    /// A u64 count of items of at least `min_bytes` each, checked against the
    /// bytes that remain so that no corrupt count leads to an allocation.
    fn count(&mut self, what: &str, min_bytes: usize) -> Result<usize, GgufError> {
        let offset = self.pos;
        let count = self.u64(what)?;
        let fits = usize::try_from(count)
            .ok()
            .and_then(|c| c.checked_mul(min_bytes))
            .is_some_and(|b| b <= self.remaining());
        if !fits {
            return Err(GgufError::Count {
                what: what.to_string(),
                count,
                remaining: self.remaining(),
                offset,
            });
        }
        Ok(count as usize)
    }

    fn string(&mut self, what: &str) -> Result<String, GgufError> {
        let len = self.count(&format!("the length of {what}"), 1)?;
        let raw = self.take(len, what)?;
        std::str::from_utf8(raw)
            .map(str::to_owned)
            .map_err(|_| GgufError::Utf8 { what: what.to_string() })
    }

    /// One metadata value of type `code`.
    fn value(&mut self, code: u32, key: &str, depth: usize) -> Result<MetaValue, GgufError> {
        let v = match code {
            0 => MetaValue::U8(u8::from_le_bytes(self.array(key)?)),
            1 => MetaValue::I8(i8::from_le_bytes(self.array(key)?)),
            2 => MetaValue::U16(u16::from_le_bytes(self.array(key)?)),
            3 => MetaValue::I16(i16::from_le_bytes(self.array(key)?)),
            4 => MetaValue::U32(u32::from_le_bytes(self.array(key)?)),
            5 => MetaValue::I32(i32::from_le_bytes(self.array(key)?)),
            6 => MetaValue::F32(f32::from_le_bytes(self.array(key)?)),
            7 => MetaValue::Bool(self.bool(key)?),
            8 => MetaValue::String(self.string(&format!("the string value of `{key}`"))?),
            9 => self.array_value(key, depth)?,
            10 => MetaValue::U64(u64::from_le_bytes(self.array(key)?)),
            11 => MetaValue::I64(i64::from_le_bytes(self.array(key)?)),
            12 => MetaValue::F64(f64::from_le_bytes(self.array(key)?)),
            code => {
                return Err(GgufError::ValueType {
                    key: key.to_string(),
                    code,
                })
            }
        };
        Ok(v)
    }

    fn bool(&mut self, key: &str) -> Result<bool, GgufError> {
        match self.array::<1>(key)?[0] {
            0 => Ok(false),
            1 => Ok(true),
            byte => Err(GgufError::Bool {
                key: key.to_string(),
                byte,
            }),
        }
    }

    /// An array: element type, count, elements.
    fn array_value(&mut self, key: &str, depth: usize) -> Result<MetaValue, GgufError> {
        if depth >= MAX_NESTING {
            return Err(GgufError::Nesting {
                key: key.to_string(),
                limit: MAX_NESTING,
            });
        }
        let code = self.u32(key)?;
        let n = self.count(&format!("the array count of `{key}`"), min_value_bytes(code))?;
        let bytes = (n as u64).saturating_mul(std::mem::size_of::<MetaValue>() as u64);
        check_alloc(|| format!("the metadata array `{key}`"), bytes)?;
        let mut items = Vec::with_capacity(n);
        for _ in 0..n {
            items.push(self.value(code, key, depth + 1)?);
        }
        Ok(MetaValue::Array(items))
    }
}

/// The fewest bytes a value of type `code` takes (1 for an unknown type,
/// which fails when the first element is read).
fn min_value_bytes(code: u32) -> usize {
    match code {
        2 | 3 => 2,
        4..=6 => 4,
        8 | 10..=12 => 8,
        9 => 12,
        _ => 1,
    }
}
