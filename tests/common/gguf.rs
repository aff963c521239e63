//! A GGUF writer for tests: hand-made files with any metadata and tensors.

use wginfer::model::gguf::{GgmlType, MetaValue};

/// A tensor to write: name, dims, type, data.
pub type TensorSpec = (&'static str, Vec<u64>, GgmlType, Vec<u8>);

fn type_code(v: &MetaValue) -> u32 {
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

pub fn put_str(buf: &mut Vec<u8>, s: &str) {
    buf.extend((s.len() as u64).to_le_bytes());
    buf.extend(s.as_bytes());
}

/// A value's payload (without its type code); an empty array is of u8.
pub fn put_value(buf: &mut Vec<u8>, v: &MetaValue) {
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
            buf.extend(items.first().map_or(0, type_code).to_le_bytes());
            buf.extend((items.len() as u64).to_le_bytes());
            items.iter().for_each(|i| put_value(buf, i));
        }
        MetaValue::U64(x) => buf.extend(x.to_le_bytes()),
        MetaValue::I64(x) => buf.extend(x.to_le_bytes()),
        MetaValue::F64(x) => buf.extend(x.to_le_bytes()),
    }
}

pub fn pad_to(buf: &mut Vec<u8>, align: usize) {
    buf.resize(buf.len().next_multiple_of(align), 0);
}

/// A GGUF file: header, metadata, tensor table, aligned data (no padding
/// after the last tensor, so that every truncation cuts something).
pub fn write_gguf(version: u32, kvs: &[(&str, MetaValue)], tensors: &[TensorSpec], align: usize) -> Vec<u8> {
    let mut buf = b"GGUF".to_vec();
    buf.extend(version.to_le_bytes());
    buf.extend((tensors.len() as u64).to_le_bytes());
    buf.extend((kvs.len() as u64).to_le_bytes());
    for (key, value) in kvs {
        put_str(&mut buf, key);
        buf.extend(type_code(value).to_le_bytes());
        put_value(&mut buf, value);
    }
    let mut offset = 0usize;
    for (name, dims, ty, data) in tensors {
        put_str(&mut buf, name);
        buf.extend((dims.len() as u32).to_le_bytes());
        dims.iter().for_each(|d| buf.extend(d.to_le_bytes()));
        buf.extend(ty.code().to_le_bytes());
        buf.extend((offset as u64).to_le_bytes());
        offset = (offset + data.len()).next_multiple_of(align);
    }
    for (_, _, _, data) in tensors {
        pad_to(&mut buf, align);
        buf.extend(data);
    }
    buf
}
