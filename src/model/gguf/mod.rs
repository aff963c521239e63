//! GGUF files (llama.cpp's format, versions 2 and 3): the metadata, the
//! tensor table and each tensor's bytes, read whole into memory; and
//! [`GgufWriter`], which writes version 3 files the reader and llama.cpp read.
//!
//! Every count and length read from the file is checked against the bytes
//! that remain before anything is allocated, and every failure is a
//! [`GgufError`] that names the field.

mod reader;
mod writer;

use std::collections::HashMap;
use std::ops::Range;
use std::path::Path;

use crate::error::GgufError;

pub use writer::{check_target, GgufWriter, WRITE_VERSION};

/// The default `general.alignment` of the data section.
pub const DEFAULT_ALIGNMENT: u64 = 32;

/// A metadata value of any GGUF type.
#[derive(Clone, Debug, PartialEq)]
pub enum MetaValue {
    /// Type 0.
    U8(u8),
    /// Type 1.
    I8(i8),
    /// Type 2.
    U16(u16),
    /// Type 3.
    I16(i16),
    /// Type 4.
    U32(u32),
    /// Type 5.
    I32(i32),
    /// Type 6.
    F32(f32),
    /// Type 7.
    Bool(bool),
    /// Type 8: UTF-8 text.
    String(String),
    /// Type 9: values of one type (arrays may nest).
    Array(Vec<MetaValue>),
    /// Type 10.
    U64(u64),
    /// Type 11.
    I64(i64),
    /// Type 12.
    F64(f64),
}

impl MetaValue {
    /// The value as a u64 when it is an integer that fits.
    pub fn as_u64(&self) -> Option<u64> {
        match *self {
            Self::U8(v) => Some(v.into()),
            Self::U16(v) => Some(v.into()),
            Self::U32(v) => Some(v.into()),
            Self::U64(v) => Some(v),
            _ => self.as_i64().and_then(|v| u64::try_from(v).ok()),
        }
    }

    /// The value as an i64 when it is an integer that fits.
    pub fn as_i64(&self) -> Option<i64> {
        match *self {
            Self::I8(v) => Some(v.into()),
            Self::I16(v) => Some(v.into()),
            Self::I32(v) => Some(v.into()),
            Self::I64(v) => Some(v),
            Self::U8(_) | Self::U16(_) | Self::U32(_) | Self::U64(_) => {
                self.as_u64().and_then(|v| i64::try_from(v).ok())
            }
            _ => None,
        }
    }

    /// The value as an f64 when it is a float.
    pub fn as_f64(&self) -> Option<f64> {
        match *self {
            Self::F32(v) => Some(v.into()),
            Self::F64(v) => Some(v),
            _ => None,
        }
    }

    /// The text of a string value.
    pub fn as_str(&self) -> Option<&str> {
        match self {
            Self::String(s) => Some(s),
            _ => None,
        }
    }

    /// A bool value.
    pub fn as_bool(&self) -> Option<bool> {
        match *self {
            Self::Bool(b) => Some(b),
            _ => None,
        }
    }

    /// The elements of an array value.
    pub fn as_array(&self) -> Option<&[MetaValue]> {
        match self {
            Self::Array(a) => Some(a),
            _ => None,
        }
    }
}

/// Declares [`GgmlType`] from one table: variant, code, block size, bytes per block.
macro_rules! ggml_types {
    ($($name:ident = $code:literal, $block:literal, $bytes:literal;)*) => {
        /// A ggml tensor type: a plain element type or a block format.
        #[allow(non_camel_case_types)]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
        pub enum GgmlType {
            $(
                #[doc = concat!("ggml type ", stringify!($code), ": blocks of ", stringify!($block),
                    " elements in ", stringify!($bytes), " bytes.")]
                $name,
            )*
        }

        impl GgmlType {
            /// The type with this code, if known.
            pub fn from_code(code: u32) -> Option<Self> {
                match code {
                    $($code => Some(Self::$name),)*
                    _ => None,
                }
            }

            /// The type's code in GGUF files.
            pub fn code(self) -> u32 {
                match self {
                    $(Self::$name => $code,)*
                }
            }

            /// Elements per block (1 for plain types).
            pub fn block_size(self) -> u64 {
                match self {
                    $(Self::$name => $block,)*
                }
            }

            /// Bytes per block.
            pub fn block_bytes(self) -> u64 {
                match self {
                    $(Self::$name => $bytes,)*
                }
            }

            /// The name llama.cpp gives the type (`Q4_K`, `F16`).
            pub fn name(self) -> &'static str {
                match self {
                    $(Self::$name => stringify!($name),)*
                }
            }
        }
    };
}

ggml_types! {
    F32 = 0, 1, 4;
    F16 = 1, 1, 2;
    Q4_0 = 2, 32, 18;
    Q4_1 = 3, 32, 20;
    Q5_0 = 6, 32, 22;
    Q5_1 = 7, 32, 24;
    Q8_0 = 8, 32, 34;
    Q8_1 = 9, 32, 36;
    Q2_K = 10, 256, 84;
    Q3_K = 11, 256, 110;
    Q4_K = 12, 256, 144;
    Q5_K = 13, 256, 176;
    Q6_K = 14, 256, 210;
    Q8_K = 15, 256, 292;
    I8 = 24, 1, 1;
    I16 = 25, 1, 2;
    I32 = 26, 1, 4;
    I64 = 27, 1, 8;
    F64 = 28, 1, 8;
    BF16 = 30, 1, 2;
}

impl std::fmt::Display for GgmlType {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.write_str(self.name())
    }
}

/// One entry of the tensor table.
#[derive(Clone, Debug, PartialEq)]
pub struct TensorInfo {
    /// The tensor's name.
    pub name: String,
    /// Dimensions in GGUF order: `dims[0]` is the fastest-varying (a row's length).
    pub dims: Vec<u64>,
    /// The element or block type.
    pub ggml_type: GgmlType,
    /// Offset of the data from the start of the data section, as stored.
    pub offset: u64,
    /// The tensor's bytes within the file.
    pub range: Range<usize>,
}

impl TensorInfo {
    /// The element count (checked when the file was read).
    pub fn numel(&self) -> u64 {
        self.dims.iter().product()
    }
}

/// A GGUF file held in memory: metadata, tensor table and data.
#[derive(Debug)]
pub struct GgufFile {
    bytes: Vec<u8>,
    version: u32,
    alignment: u64,
    data_offset: usize,
    metadata: Vec<(String, MetaValue)>,
    meta_index: HashMap<String, usize>,
    tensors: Vec<TensorInfo>,
    tensor_index: HashMap<String, usize>,
}

impl GgufFile {
    /// Parses a GGUF file held in memory (the bytes are copied).
    pub fn read(bytes: &[u8]) -> Result<Self, GgufError> {
        Self::from_vec(bytes.to_vec())
    }

    /// Parses a GGUF file, taking ownership of its bytes.
    pub fn from_vec(bytes: Vec<u8>) -> Result<Self, GgufError> {
        reader::parse(bytes)
    }

    /// Reads and parses a GGUF file, which must be a regular file.
    pub fn open(path: impl AsRef<Path>) -> Result<Self, GgufError> {
        let path = path.as_ref();
        let bytes = crate::tensor::read_regular_file(path).map_err(|source| GgufError::Io {
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_vec(bytes)
    }

    /// The GGUF version (2 or 3).
    pub fn version(&self) -> u32 {
        self.version
    }

    /// The data section's alignment (`general.alignment`, default 32).
    pub fn alignment(&self) -> u64 {
        self.alignment
    }

    /// Where the data section starts in the file.
    pub fn data_offset(&self) -> usize {
        self.data_offset
    }

    /// A metadata value by key.
    pub fn metadata(&self, key: &str) -> Option<&MetaValue> {
        self.meta_index.get(key).map(|&i| &self.metadata[i].1)
    }

    /// All metadata, in file order.
    pub fn metadata_entries(&self) -> &[(String, MetaValue)] {
        &self.metadata
    }

    /// A string value by key.
    pub fn get_str(&self, key: &str) -> Option<&str> {
        self.metadata(key)?.as_str()
    }

    /// An integer value that fits in a u32.
    pub fn get_u32(&self, key: &str) -> Option<u32> {
        u32::try_from(self.metadata(key)?.as_u64()?).ok()
    }

    /// An integer value that fits in a u64.
    pub fn get_u64(&self, key: &str) -> Option<u64> {
        self.metadata(key)?.as_u64()
    }

    /// An integer value that fits in an i64.
    pub fn get_i64(&self, key: &str) -> Option<i64> {
        self.metadata(key)?.as_i64()
    }

    /// A float value (f32 or f64) as f64.
    pub fn get_f64(&self, key: &str) -> Option<f64> {
        self.metadata(key)?.as_f64()
    }

    /// A float value (f32 or f64) as f32.
    pub fn get_f32(&self, key: &str) -> Option<f32> {
        self.get_f64(key).map(|v| v as f32)
    }

    /// A bool value.
    pub fn get_bool(&self, key: &str) -> Option<bool> {
        self.metadata(key)?.as_bool()
    }

    /// An array value's elements.
    pub fn get_array(&self, key: &str) -> Option<&[MetaValue]> {
        self.metadata(key)?.as_array()
    }

    /// The tensor table, in file order.
    pub fn tensors(&self) -> &[TensorInfo] {
        &self.tensors
    }

    /// A tensor's table entry by name.
    pub fn tensor(&self, name: &str) -> Option<&TensorInfo> {
        self.tensor_index.get(name).map(|&i| &self.tensors[i])
    }

    /// A tensor's bytes by name (packed as its type stores them).
    pub fn tensor_bytes(&self, name: &str) -> Option<&[u8]> {
        self.bytes.get(self.tensor(name)?.range.clone())
    }
}
