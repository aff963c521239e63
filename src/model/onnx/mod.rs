//! ONNX import: parses an `.onnx` file (protobuf, with `prost` and the
//! hand-declared subset of `onnx.proto` in [`proto`]) and builds a [`Model`]
//! in wginfer's own IR.
//!
//! - Initializers become parameters; external-data tensors are read from
//!   side files relative to the model's directory.
//! - `Constant` nodes and shape arithmetic on constants (`Shape` of a
//!   statically shaped value, `Gather`, `Concat`, `Unsqueeze`, `Squeeze`,
//!   `Cast`, arithmetic) are folded at import, so `Reshape` gets a static
//!   target. A `dim_param` input dimension becomes a symbolic [`Dim`].
//! - `Gemm` with `alpha = beta = 1`, `transA = 0`, `transB = 1` and constant
//!   weights becomes [`Linear`](crate::ops::linear::Linear); a
//!   `BatchNormalization` right after a `Conv` with constant weights is folded
//!   into it; `Identity` and inference `Dropout` disappear.
//! - Each op family registers its builders in one table under `ops/`; those
//!   tables are the supported list ([`supported_ops`]). An import that meets
//!   unsupported ops fails once, listing every unsupported op type with the
//!   names of its nodes.

mod context;
pub mod export;
mod import;
mod ops;
pub mod proto;

use std::collections::HashMap;
use std::path::{Path, PathBuf};

use prost::Message;

pub use crate::error::OnnxError;
pub use import::ImportOptions;
pub use ops::supported_ops;

use crate::error::ModelError;
use crate::model::Model;
use crate::tensor::{checked_bytes, checked_numel, DType, Tensor};

/// Imports an `.onnx` file. External data is read relative to its directory.
pub fn import_file(path: &Path) -> Result<Model, ModelError> {
    let bytes = crate::tensor::read_regular_file(path).map_err(|source| ModelError::Io {
        action: "cannot read",
        path: path.to_path_buf(),
        source,
    })?;
    let dir = path.parent().unwrap_or_else(|| Path::new("."));
    Ok(import_bytes(&bytes, dir, &ImportOptions::default())?)
}

/// Imports ONNX bytes; `dir` is where external-data files are looked up.
pub fn import_bytes(bytes: &[u8], dir: &Path, options: &ImportOptions) -> Result<Model, OnnxError> {
    let model = proto::ModelProto::decode(bytes).map_err(|source| OnnxError::Decode {
        what: "ModelProto",
        source: Box::new(source),
    })?;
    import::import(&model, dir, options)
}

/// Reads one serialized `TensorProto` (as in ONNX test data `input_0.pb`):
/// its name and value. External data is read relative to `dir`.
pub fn read_tensor_proto(bytes: &[u8], dir: &Path) -> Result<(String, Tensor), OnnxError> {
    let t = proto::TensorProto::decode(bytes).map_err(|source| OnnxError::Decode {
        what: "TensorProto",
        source: Box::new(source),
    })?;
    Ok((t.name.clone(), tensor_from_proto(&t, dir)?))
}

/// The wginfer dtype of an ONNX `TensorProto.DataType`.
pub fn dtype_from_onnx(code: i32) -> Option<DType> {
    use proto::data_type as d;
    Some(match code {
        d::FLOAT => DType::F32,
        d::UINT8 => DType::U8,
        d::INT8 => DType::I8,
        d::INT32 => DType::I32,
        d::INT64 => DType::I64,
        d::BOOL => DType::Bool,
        d::FLOAT16 => DType::F16,
        d::BFLOAT16 => DType::BF16,
        d::DOUBLE => DType::F64,
        d::INT16 => DType::I16,
        d::UINT16 => DType::U16,
        d::UINT32 => DType::U32,
        d::UINT64 => DType::U64,
        d::FLOAT8E4M3FN => DType::F8E4M3FN,
        d::FLOAT8E4M3FNUZ => DType::F8E4M3FNUZ,
        d::FLOAT8E5M2 => DType::F8E5M2,
        d::FLOAT8E5M2FNUZ => DType::F8E5M2FNUZ,
        d::FLOAT4E2M1 => DType::F4E2M1,
        d::INT4 => DType::I4,
        d::UINT4 => DType::U4,
        d::INT2 => DType::I2,
        d::UINT2 => DType::U2,
        d::FLOAT8E8M0 => DType::F8E8M0,
        _ => return None,
    })
}

/// The ONNX name of a `TensorProto.DataType` (for messages).
pub fn onnx_type_name(code: i32) -> &'static str {
    use proto::data_type as d;
    match code {
        d::FLOAT => "float",
        d::UINT8 => "uint8",
        d::INT8 => "int8",
        d::UINT16 => "uint16",
        d::INT16 => "int16",
        d::INT32 => "int32",
        d::INT64 => "int64",
        d::STRING => "string",
        d::BOOL => "bool",
        d::FLOAT16 => "float16",
        d::DOUBLE => "double",
        d::UINT32 => "uint32",
        d::UINT64 => "uint64",
        d::BFLOAT16 => "bfloat16",
        d::FLOAT8E4M3FN => "float8e4m3fn",
        d::FLOAT8E4M3FNUZ => "float8e4m3fnuz",
        d::FLOAT8E5M2 => "float8e5m2",
        d::FLOAT8E5M2FNUZ => "float8e5m2fnuz",
        d::UINT4 => "uint4",
        d::INT4 => "int4",
        d::FLOAT4E2M1 => "float4e2m1",
        d::FLOAT8E8M0 => "float8e8m0",
        d::UINT2 => "uint2",
        d::INT2 => "int2",
        _ => "an unknown type",
    }
}

/// Bits per element of the types ONNX packs several to a byte.
fn packed_bits(dtype: DType) -> Option<usize> {
    match dtype {
        DType::I4 | DType::U4 | DType::F4E2M1 => Some(4),
        DType::I2 | DType::U2 => Some(2),
        _ => None,
    }
}

/// Unpacks `8 / bits` elements per byte, low bits first.
fn unpack(dtype: DType, bits: usize, shape: Vec<usize>, bytes: &[u8]) -> Result<Tensor, OnnxError> {
    let n = checked_numel(&shape)?;
    let per = 8 / bits;
    if bytes.len() != n.div_ceil(per) {
        return Err(OnnxError::TensorData(crate::error::TensorError::ByteLengthMismatch {
            dtype,
            shape,
            expected: n.div_ceil(per),
            got: bytes.len(),
        }));
    }
    let mask = (1u8 << bits) - 1;
    let one: Vec<u8> = (0..n).map(|i| (bytes[i / per] >> ((i % per) * bits)) & mask).collect();
    Ok(Tensor::from_le_bytes(dtype, shape, &one)?)
}

/// Little-endian data in ONNX's layout: as wginfer's, except that the 4- and
/// 2-bit types are packed.
fn from_onnx_bytes(dtype: DType, shape: Vec<usize>, bytes: &[u8]) -> Result<Tensor, OnnxError> {
    match packed_bits(dtype) {
        Some(bits) => unpack(dtype, bits, shape, bytes),
        None => Ok(Tensor::from_le_bytes(dtype, shape, bytes)?),
    }
}

/// Why external data could not be read.
enum External {
    /// The file system refused (the path tried, the error).
    Io(PathBuf, std::io::Error),
    /// The location or range is not allowed or does not fit the file.
    Refused(String),
}

/// Reads `length` bytes at `offset` of the external-data file `location`,
/// which must be a relative path to a regular file inside `dir` (no absolute
/// path, no `..`, no device or FIFO, no symbolic link out of `dir`). The range
/// is checked against the file's length and the allocation limit before
/// anything is read.
fn read_external(dir: &Path, location: &str, offset: usize, length: usize) -> Result<(PathBuf, Vec<u8>), External> {
    use std::io::{Read, Seek, SeekFrom};
    use std::path::Component;
    let rel = Path::new(location);
    if rel
        .components()
        .any(|c| !matches!(c, Component::Normal(_) | Component::CurDir))
    {
        return Err(External::Refused(format!(
            "external data location `{location}` must be a relative path inside the model's directory (no absolute path, no `..`)"
        )));
    }
    let path = dir.join(rel);
    let io = |e: std::io::Error| External::Io(path.clone(), e);
    let (real_dir, real) = (dir.canonicalize().map_err(io)?, path.canonicalize().map_err(io)?);
    if !real.starts_with(&real_dir) {
        return Err(External::Refused(format!(
            "external data location `{location}` leads out of the model's directory"
        )));
    }
    let mut file = std::fs::File::open(&real).map_err(io)?;
    let meta = file.metadata().map_err(io)?;
    if !meta.is_file() {
        return Err(External::Refused(format!(
            "external data location `{location}` is not a regular file"
        )));
    }
    let end = (offset as u64).checked_add(length as u64).filter(|&e| e <= meta.len());
    if end.is_none() {
        return Err(External::Refused(format!(
            "external data `{}` has {} bytes, but the tensor reads {length} bytes at offset {offset}",
            path.display(),
            meta.len()
        )));
    }
    crate::tensor::check_alloc(|| format!("external data `{location}`"), length as u64)
        .map_err(|e| External::Refused(e.to_string()))?;
    file.seek(SeekFrom::Start(offset as u64)).map_err(io)?;
    let mut data = vec![0u8; length];
    file.read_exact(&mut data).map_err(io)?;
    Ok((path, data))
}

/// Converts a `TensorProto` to a tensor (raw data, typed fields, or external data).
pub fn tensor_from_proto(t: &proto::TensorProto, dir: &Path) -> Result<Tensor, OnnxError> {
    let bad = |message: String| OnnxError::Tensor {
        name: t.name.clone(),
        message,
    };
    let dtype = dtype_from_onnx(t.data_type).ok_or_else(|| {
        bad(format!(
            "element type {} (code {}) is not supported; wginfer reads float, double, float16, bfloat16, float8 (e4m3fn, e4m3fnuz, e5m2, e5m2fnuz, e8m0), float4e2m1, 2- to 64-bit integers and bool",
            onnx_type_name(t.data_type),
            t.data_type
        ))
    })?;
    let mut shape = Vec::with_capacity(t.dims.len());
    for &d in &t.dims {
        shape.push(usize::try_from(d).map_err(|_| bad(format!("has the negative dimension {d}")))?);
    }
    let n = checked_numel(&shape).map_err(|e| bad(e.to_string()))?;
    if t.data_location == proto::DATA_LOCATION_EXTERNAL {
        let entries: HashMap<&str, &str> = t
            .external_data
            .iter()
            .map(|e| (e.key.as_str(), e.value.as_str()))
            .collect();
        let location = entries
            .get("location")
            .ok_or_else(|| bad("is stored externally but names no `location`".into()))?;
        let num = |key: &str| -> Result<Option<usize>, OnnxError> {
            entries
                .get(key)
                .map(|v| {
                    v.parse::<usize>()
                        .map_err(|_| bad(format!("external `{key}` is `{v}`, not a number")))
                })
                .transpose()
        };
        let offset = num("offset")?.unwrap_or(0);
        let want = match packed_bits(dtype) {
            Some(bits) => n.div_ceil(8 / bits),
            None => checked_bytes(dtype, &shape).map_err(|e| bad(e.to_string()))?,
        };
        let length = num("length")?.unwrap_or(want);
        let (path, data) = read_external(dir, location, offset, length).map_err(|e| match e {
            External::Io(path, source) => OnnxError::ExternalData {
                name: t.name.clone(),
                path,
                source,
            },
            External::Refused(message) => bad(message),
        })?;
        debug_assert_eq!(data.len(), length, "{}", path.display());
        return from_onnx_bytes(dtype, shape, &data).map_err(|e| bad(e.to_string()));
    }
    if !t.raw_data.is_empty() {
        return from_onnx_bytes(dtype, shape, &t.raw_data).map_err(|e| bad(e.to_string()));
    }
    if let Some(bits) = packed_bits(dtype) {
        // Typed field: one packed byte per int32.
        let bytes: Vec<u8> = t.int32_data.iter().map(|&v| v as u8).collect();
        return unpack(dtype, bits, shape, &bytes).map_err(|e| bad(e.to_string()));
    }
    let tensor = match dtype {
        DType::F32 => Tensor::from_vec(shape, t.float_data.clone()),
        DType::I64 => Tensor::from_vec(shape, t.int64_data.clone()),
        DType::I32 => Tensor::from_vec(shape, t.int32_data.clone()),
        DType::I8 => Tensor::from_vec(shape, t.int32_data.iter().map(|&v| v as i8).collect::<Vec<_>>()),
        DType::U8 => Tensor::from_vec(shape, t.int32_data.iter().map(|&v| v as u8).collect::<Vec<_>>()),
        DType::Bool => Tensor::from_vec(shape, t.int32_data.iter().map(|&v| v != 0).collect::<Vec<_>>()),
        DType::F16 => Tensor::from_vec(
            shape,
            t.int32_data
                .iter()
                .map(|&v| half::f16::from_bits(v as u16))
                .collect::<Vec<_>>(),
        ),
        DType::BF16 => Tensor::from_vec(
            shape,
            t.int32_data
                .iter()
                .map(|&v| half::bf16::from_bits(v as u16))
                .collect::<Vec<_>>(),
        ),
        DType::F64 => Tensor::from_vec(shape, t.double_data.clone()),
        DType::I16 => Tensor::from_vec(shape, t.int32_data.iter().map(|&v| v as i16).collect::<Vec<_>>()),
        DType::U16 => Tensor::from_vec(shape, t.int32_data.iter().map(|&v| v as u16).collect::<Vec<_>>()),
        DType::U32 => Tensor::from_vec(shape, t.uint64_data.iter().map(|&v| v as u32).collect::<Vec<_>>()),
        DType::U64 => Tensor::from_vec(shape, t.uint64_data.clone()),
        // Typed field: one bit pattern per int32 (the packed types returned above).
        _ => Tensor::from_le_bytes(dtype, shape, &t.int32_data.iter().map(|&v| v as u8).collect::<Vec<_>>()),
    };
    tensor.map_err(|e| bad(e.to_string()))
}
