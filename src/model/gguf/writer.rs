//! The GGUF writer (version 3): header, metadata of every [`MetaValue`]
//! type, the tensor table, and the data section with each tensor at a
//! multiple of `general.alignment`, as llama.cpp's `gguf` writer lays it out.
//!
//! Entries are checked as they are added (duplicate keys and names, mixed
//! arrays, a byte count that does not match a tensor's shape and type), so
//! [`GgufWriter::write`] only fails on I/O. Files are written beside the
//! target and renamed over it.

use std::collections::HashSet;
use std::io::{BufWriter, Write};
use std::path::{Path, PathBuf};

use super::{GgmlType, MetaValue, DEFAULT_ALIGNMENT};
use crate::error::GgufExportError;

/// The GGUF version written.
pub const WRITE_VERSION: u32 = 3;

/// One tensor to write.
#[derive(Clone, Debug)]
struct Entry {
    name: String,
    dims: Vec<u64>,
    ggml_type: GgmlType,
    data: Vec<u8>,
}

/// A GGUF file being assembled: metadata and tensors in the order added.
#[derive(Clone, Debug, Default)]
pub struct GgufWriter {
    metadata: Vec<(String, MetaValue)>,
    keys: HashSet<String>,
    tensors: Vec<Entry>,
    names: HashSet<String>,
}

/// The GGUF type code of a metadata value.
fn value_code(v: &MetaValue) -> u32 {
    match v {
        MetaValue::U8(_) => 0,
        MetaValue::I8(_) => 1,
        MetaValue::U16(_) => 2,
        MetaValue::I16(_) => 3,
        MetaValue::U32(_) => 4,
        MetaValue::I32(_) => 5,
        MetaValue::F32(_) => 6,
        MetaValue::Bool(_) => 7,
        MetaValue::String(_) => 8,
        MetaValue::Array(_) => 9,
        MetaValue::U64(_) => 10,
        MetaValue::I64(_) => 11,
        MetaValue::F64(_) => 12,
    }
}

/// Checks that every array (nested ones too) holds values of one type.
fn check_value(key: &str, v: &MetaValue) -> Result<(), GgufExportError> {
    if let MetaValue::Array(items) = v {
        if let Some(first) = items.first() {
            let code = value_code(first);
            if let Some(i) = items.iter().position(|x| value_code(x) != code) {
                return Err(GgufExportError::Metadata {
                    key: key.to_string(),
                    message: format!(
                        "array element {i} has type {}, element 0 type {code}",
                        value_code(&items[i])
                    ),
                });
            }
        }
        items.iter().try_for_each(|x| check_value(key, x))?;
    }
    Ok(())
}

/// Bytes a tensor of `dims` and `ggml_type` holds, checked.
fn tensor_bytes(name: &str, dims: &[u64], t: GgmlType) -> Result<u64, GgufExportError> {
    let bad = |message: String| GgufExportError::Tensor {
        name: name.to_string(),
        message,
    };
    if dims.is_empty() || dims.len() > 4 {
        return Err(bad(format!("{} dimensions; GGUF holds 1 to 4", dims.len())));
    }
    let numel = dims
        .iter()
        .try_fold(1u64, |n, &d| n.checked_mul(d))
        .ok_or_else(|| bad(format!("the element count of {dims:?} overflows")))?;
    if !dims[0].is_multiple_of(t.block_size()) {
        return Err(bad(format!(
            "its first dimension {} is not a multiple of the {t} block size {}",
            dims[0],
            t.block_size()
        )));
    }
    (numel / t.block_size())
        .checked_mul(t.block_bytes())
        .ok_or_else(|| bad(format!("the byte count of {dims:?} overflows")))
}

impl GgufWriter {
    /// An empty file.
    pub fn new() -> Self {
        Self::default()
    }

    /// Adds a metadata entry. `general.alignment` must be a u32 power of two;
    /// arrays must hold one type; keys are unique.
    pub fn add_metadata(&mut self, key: &str, value: MetaValue) -> Result<(), GgufExportError> {
        let bad = |message: &str| GgufExportError::Metadata {
            key: key.to_string(),
            message: message.to_string(),
        };
        if self.keys.contains(key) {
            return Err(bad("is already set"));
        }
        if key == "general.alignment" && !matches!(value, MetaValue::U32(a) if a.is_power_of_two()) {
            return Err(bad("must be a u32 power of two"));
        }
        check_value(key, &value)?;
        self.keys.insert(key.to_string());
        self.metadata.push((key.to_string(), value));
        Ok(())
    }

    /// Adds a tensor: `dims` in GGUF order (`dims[0]` is a row's length),
    /// `data` exactly the bytes its shape and type take.
    pub fn add_tensor(
        &mut self,
        name: &str,
        dims: Vec<u64>,
        ggml_type: GgmlType,
        data: Vec<u8>,
    ) -> Result<(), GgufExportError> {
        let bad = |message: String| GgufExportError::Tensor {
            name: name.to_string(),
            message,
        };
        if self.names.contains(name) {
            return Err(bad("is already in the file".to_string()));
        }
        let n = tensor_bytes(name, &dims, ggml_type)?;
        if n != data.len() as u64 {
            return Err(bad(format!(
                "a {ggml_type} tensor of dims {dims:?} takes {n} bytes, got {}",
                data.len()
            )));
        }
        self.names.insert(name.to_string());
        self.tensors.push(Entry {
            name: name.to_string(),
            dims,
            ggml_type,
            data,
        });
        Ok(())
    }

    /// The metadata added so far, in order.
    pub fn metadata(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    /// The data section's alignment: `general.alignment` or the default.
    pub fn alignment(&self) -> u64 {
        self.metadata
            .iter()
            .find(|(k, _)| k == "general.alignment")
            .and_then(|(_, v)| v.as_u64())
            .unwrap_or(DEFAULT_ALIGNMENT)
    }

    /// Tensors added so far.
    pub fn tensor_count(&self) -> usize {
        self.tensors.len()
    }

    /// The type of every 2-D tensor, in order.
    pub fn matrix_types(&self) -> Vec<GgmlType> {
        self.tensors
            .iter()
            .filter(|t| t.dims.len() == 2)
            .map(|t| t.ggml_type)
            .collect()
    }

    /// Moves `other`'s tensors after this file's (its metadata is dropped).
    /// Names `other` shares with this file are skipped.
    pub fn take_tensors(&mut self, other: GgufWriter) {
        for t in other.tensors {
            if self.names.insert(t.name.clone()) {
                self.tensors.push(t);
            }
        }
    }

    /// Bytes of tensor data (without padding).
    pub fn data_bytes(&self) -> usize {
        self.tensors.iter().map(|t| t.data.len()).sum()
    }

    /// Writes the whole file to `w`.
    pub fn write_to(&self, w: &mut impl Write) -> std::io::Result<()> {
        let align = self.alignment();
        let mut head = b"GGUF".to_vec();
        head.extend(WRITE_VERSION.to_le_bytes());
        head.extend((self.tensors.len() as u64).to_le_bytes());
        head.extend((self.metadata.len() as u64).to_le_bytes());
        for (key, value) in &self.metadata {
            put_str(&mut head, key);
            head.extend(value_code(value).to_le_bytes());
            put_value(&mut head, value);
        }
        let mut offset = 0u64;
        for t in &self.tensors {
            put_str(&mut head, &t.name);
            head.extend((t.dims.len() as u32).to_le_bytes());
            t.dims.iter().for_each(|d| head.extend(d.to_le_bytes()));
            head.extend(t.ggml_type.code().to_le_bytes());
            head.extend(offset.to_le_bytes());
            offset = (offset + t.data.len() as u64).next_multiple_of(align);
        }
        let zeros = vec![0u8; align as usize];
        let pad = |len: u64| (len.next_multiple_of(align) - len) as usize;
        w.write_all(&head)?;
        w.write_all(&zeros[..pad(head.len() as u64)])?;
        for t in &self.tensors {
            w.write_all(&t.data)?;
            w.write_all(&zeros[..pad(t.data.len() as u64)])?;
        }
        Ok(())
    }

    /// The whole file in memory.
    pub fn to_bytes(&self) -> Vec<u8> {
        let mut out = Vec::new();
        // Writing to a Vec cannot fail.
        let _ = self.write_to(&mut out);
        out
    }

    /// Writes the file to `path`: refused when it exists unless `overwrite`;
    /// written to a temporary file beside it and renamed over it.
    pub fn write(&self, path: &Path, overwrite: bool) -> Result<(), GgufExportError> {
        check_target(path, overwrite)?;
        let mut tmp = path.as_os_str().to_owned();
        tmp.push(format!(".tmp{}", std::process::id()));
        let tmp = PathBuf::from(tmp);
        let io = |source| GgufExportError::Io {
            path: path.to_path_buf(),
            source,
        };
        let written = std::fs::File::create(&tmp).and_then(|f| {
            let mut w = BufWriter::new(f);
            self.write_to(&mut w)?;
            w.into_inner().map_err(|e| e.into_error())?.sync_all()
        });
        if let Err(e) = written.and_then(|()| std::fs::rename(&tmp, path)) {
            let _ = std::fs::remove_file(&tmp);
            return Err(io(e));
        }
        Ok(())
    }
}

/// Refuses an existing `path` unless `overwrite`.
pub fn check_target(path: &Path, overwrite: bool) -> Result<(), GgufExportError> {
    if !overwrite && path.symlink_metadata().is_ok() {
        return Err(GgufExportError::Exists {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

/// A value's payload (without its own type code). An empty array is written
/// with element type u8.
fn put_value(buf: &mut Vec<u8>, v: &MetaValue) {
    match v {
        MetaValue::U8(x) => buf.extend(x.to_le_bytes()),
        MetaValue::I8(x) => buf.extend(x.to_le_bytes()),
        MetaValue::U16(x) => buf.extend(x.to_le_bytes()),
        MetaValue::I16(x) => buf.extend(x.to_le_bytes()),
        MetaValue::U32(x) => buf.extend(x.to_le_bytes()),
        MetaValue::I32(x) => buf.extend(x.to_le_bytes()),
        MetaValue::F32(x) => buf.extend(x.to_le_bytes()),
        MetaValue::Bool(x) => buf.push(u8::from(*x)),
        MetaValue::String(s) => put_str(buf, s),
        MetaValue::Array(items) => {
            buf.extend(items.first().map_or(0, value_code).to_le_bytes());
            buf.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|i| put_value(buf, i));
        }
        MetaValue::U64(x) => buf.extend(x.to_le_bytes()),
        MetaValue::I64(x) => buf.extend(x.to_le_bytes()),
        MetaValue::F64(x) => buf.extend(x.to_le_bytes()),
    }
}

#[cfg(test)]
mod tests {
    use super::super::GgufFile;
    use super::*;

    fn every_value() -> Vec<(String, MetaValue)> {
        let s = |t: &str| MetaValue::String(t.to_string());
        [
            ("u8", MetaValue::U8(200)),
            ("i8", MetaValue::I8(-100)),
            ("u16", MetaValue::U16(60_000)),
            ("i16", MetaValue::I16(-30_000)),
            ("u32", MetaValue::U32(4_000_000_000)),
            ("i32", MetaValue::I32(-2_000_000_000)),
            ("f32", MetaValue::F32(-1.5e-7)),
            ("bool", MetaValue::Bool(true)),
            ("string", s("héllo ✓")),
            ("empty", s("")),
            ("u64", MetaValue::U64(u64::MAX)),
            ("i64", MetaValue::I64(i64::MIN)),
            ("f64", MetaValue::F64(std::f64::consts::PI)),
            ("strings", MetaValue::Array(vec![s("a"), s(""), s("Ġthe")])),
            ("ints", MetaValue::Array((0..5).map(MetaValue::I32).collect())),
            (
                "nested",
                MetaValue::Array(vec![
                    MetaValue::Array(vec![MetaValue::F64(1.0)]),
                    MetaValue::Array(vec![]),
                ]),
            ),
            ("general.alignment", MetaValue::U32(64)),
        ]
        .into_iter()
        .map(|(k, v)| (k.to_string(), v))
        .collect()
    }

    #[test]
    fn the_reader_reads_back_what_was_written() {
        let mut w = GgufWriter::new();
        for (k, v) in every_value() {
            w.add_metadata(&k, v).expect("valid entry");
        }
        let f32s: Vec<u8> = (0..6).flat_map(|i| (i as f32 * 0.5).to_le_bytes()).collect();
        w.add_tensor("a", vec![3, 2], GgmlType::F32, f32s.clone()).expect("f32");
        w.add_tensor("b", vec![64, 1], GgmlType::Q8_0, vec![7; 68])
            .expect("q8_0");
        w.add_tensor("c", vec![1], GgmlType::I8, vec![9]).expect("i8");
        let file = GgufFile::from_vec(w.to_bytes()).expect("the reader parses the writer's file");
        assert_eq!(file.version(), WRITE_VERSION);
        assert_eq!(file.alignment(), 64);
        assert_eq!(file.metadata_entries(), &every_value()[..]);
        let infos: Vec<_> = file
            .tensors()
            .iter()
            .map(|t| (t.name.as_str(), t.dims.clone(), t.ggml_type))
            .collect();
        assert_eq!(
            infos,
            [
                ("a", vec![3, 2], GgmlType::F32),
                ("b", vec![64, 1], GgmlType::Q8_0),
                ("c", vec![1], GgmlType::I8)
            ]
        );
        assert_eq!(file.tensor_bytes("a"), Some(&f32s[..]));
        assert_eq!(file.tensor_bytes("b"), Some(&[7u8; 68][..]));
        assert_eq!(file.tensor_bytes("c"), Some(&[9u8][..]));
        assert!(file.tensors().iter().all(|t| t.range.start % 64 == 0));
    }

    #[test]
    fn bad_entries_are_typed_errors() {
        let mut w = GgufWriter::new();
        w.add_metadata("k", MetaValue::U8(1)).expect("first");
        let dup = w.add_metadata("k", MetaValue::U8(2));
        assert!(matches!(dup, Err(GgufExportError::Metadata { .. })), "{dup:?}");
        let mixed = w.add_metadata("m", MetaValue::Array(vec![MetaValue::U8(1), MetaValue::I8(1)]));
        assert!(matches!(mixed, Err(GgufExportError::Metadata { .. })), "{mixed:?}");
        let align = w.add_metadata("general.alignment", MetaValue::U32(48));
        assert!(matches!(align, Err(GgufExportError::Metadata { .. })), "{align:?}");
        let short = w.add_tensor("t", vec![32, 2], GgmlType::Q4_0, vec![0; 35]);
        assert!(matches!(short, Err(GgufExportError::Tensor { .. })), "{short:?}");
        let ragged = w.add_tensor("t", vec![40], GgmlType::Q4_0, vec![0; 18]);
        assert!(matches!(ragged, Err(GgufExportError::Tensor { .. })), "{ragged:?}");
        let five = w.add_tensor("t", vec![1; 5], GgmlType::F32, vec![0; 4]);
        assert!(matches!(five, Err(GgufExportError::Tensor { .. })), "{five:?}");
        w.add_tensor("t", vec![1], GgmlType::F32, vec![0; 4]).expect("valid");
        let again = w.add_tensor("t", vec![1], GgmlType::F32, vec![0; 4]);
        assert!(matches!(again, Err(GgufExportError::Tensor { .. })), "{again:?}");
    }

    #[test]
    fn an_existing_target_is_refused_unless_overwrite() {
        let dir = std::env::temp_dir().join(format!("wginfer-gguf-writer-{}", std::process::id()));
        std::fs::create_dir_all(&dir).expect("temp dir");
        let path = dir.join("out.gguf");
        let w = GgufWriter::new();
        w.write(&path, false).expect("a new file");
        let again = w.write(&path, false);
        assert!(matches!(again, Err(GgufExportError::Exists { .. })), "{again:?}");
        w.write(&path, true).expect("overwrite");
        GgufFile::open(&path).expect("readable");
        let _ = std::fs::remove_dir_all(&dir);
    }
}
