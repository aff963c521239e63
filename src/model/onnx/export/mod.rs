//! ONNX export: writes a [`Model`] as an `.onnx` file (opset 21, IR version
//! 10) that onnxruntime and other runtimes load, and that
//! [`import_file`](super::import_file) reads back.
//!
//! - Every wginfer op becomes standard ONNX ops of the default domain:
//!   `Linear` is `Gemm` (`transB = 1`) for 2-D inputs, else `MatMul` over the
//!   transposed weight and `Add`; `Attention`, `MaskedMeanPool` and
//!   `L2Normalize` are spelled out in `MatMul`, `Softmax`, `LpNormalization`
//!   and friends; the rest map one to one.
//! - Graph inputs, outputs and parameters keep their names, so an imported
//!   ONNX model exports with its own input and output names.
//! - `QLinear` weights ([`WeightFormat`](crate::quant::WeightFormat)): f16 is an f16 initializer and a
//!   `Cast`; int8 (symmetric or affine), pow2 and binary (signs as INT4) are
//!   `DequantizeLinear` per output channel feeding `Gemm`/`MatMul`; int4
//!   blocks are `MatMulNBits` of the `com.microsoft` domain (the default,
//!   [`Int4Export::MatMulNBits`]) or `DequantizeLinear` with `block_size`
//!   ([`Int4Export::DequantizeLinear`]); W8A8 quantizes each row at run time
//!   as wginfer does (`ReduceMin`/`ReduceMax`, rounding and clipping per
//!   row) and multiplies with `MatMulInteger`; N:M sparse weights are
//!   written dense.
//! - `QConv` (W8A8 convolutions) quantizes each image's group at run time
//!   the same way and convolves with `ConvInteger`, padding corrected
//!   exactly for wginfer's per-image zero point.
//! - What ONNX cannot express is an [`ExportError`] naming the node, op or
//!   dtype. The file is written beside the target and renamed over it; an
//!   existing file is replaced only with [`OnnxExportOptions::overwrite`].

mod builder;
mod ops;
mod qconv;
mod quant;

use std::path::{Path, PathBuf};

use prost::Message;

use super::proto::{ModelProto, OperatorSetIdProto};
use crate::error::TensorError;
use crate::model::Model;
use crate::tensor::DType;
use builder::{value_info, Builder};

/// The default-domain opset the exporter writes.
pub const OPSET: i64 = 21;

/// The ONNX IR version written (the one opset 21 belongs to).
pub const IR_VERSION: i64 = 10;

/// Protobuf messages cannot exceed 2 GiB.
const MAX_BYTES: usize = (1 << 31) - 1;

/// How int4 block weights are written.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum Int4Export {
    /// onnxruntime's `com.microsoft.MatMulNBits` (its fused int4 kernel on
    /// CPU and GPU; the weight bytes are wginfer's as they are).
    #[default]
    MatMulNBits,
    /// Standard `DequantizeLinear` with `block_size` (opset 21) feeding
    /// `Gemm`/`MatMul`: any opset-21 runtime loads it, and wginfer imports it.
    DequantizeLinear,
}

impl std::str::FromStr for Int4Export {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s {
            "matmulnbits" | "MatMulNBits" => Ok(Self::MatMulNBits),
            "dq" | "dequantizelinear" | "DequantizeLinear" => Ok(Self::DequantizeLinear),
            _ => Err(format!("int4 export `{s}`: use `matmulnbits` or `dq`")),
        }
    }
}

/// Options for [`export_onnx`].
#[derive(Clone, Debug, Default)]
pub struct OnnxExportOptions {
    /// How int4 block weights are written.
    pub int4: Int4Export,
    /// Replace an existing output file (else it is an error).
    pub overwrite: bool,
}

/// What can go wrong exporting a model.
#[derive(Debug, thiserror::Error)]
pub enum ExportError {
    /// An op with no ONNX form (or not in the form its attributes ask for).
    #[error("node `{node}` ({op}) cannot be exported to {target}: {reason}")]
    Unsupported {
        /// The node's name.
        node: String,
        /// Its op type.
        op: String,
        /// The target format.
        target: &'static str,
        /// Why.
        reason: String,
    },
    /// A weight format the target cannot hold.
    #[error("node `{node}`: weight format {format} cannot be exported to {target}: {reason}")]
    Format {
        /// The node's name.
        node: String,
        /// The format's name.
        format: String,
        /// The target format.
        target: &'static str,
        /// Why.
        reason: String,
    },
    /// A dtype the target has no type for.
    #[error("{what} has dtype {dtype}, which ONNX has no type for")]
    DType {
        /// The value or tensor.
        what: String,
        /// Its dtype.
        dtype: DType,
    },
    /// The output exists and overwriting was not asked for.
    #[error("`{}` exists; pass --force (OnnxExportOptions::overwrite) to replace it", path.display())]
    Exists {
        /// The output path.
        path: PathBuf,
    },
    /// The serialized model exceeds the format's size limit.
    #[error("the exported model is {bytes} bytes; {target} files are limited to {limit} bytes")]
    TooLarge {
        /// The size it would have.
        bytes: usize,
        /// The limit.
        limit: usize,
        /// The target format.
        target: &'static str,
    },
    /// Writing the file failed.
    #[error("cannot write `{}`: {source}", path.display())]
    Io {
        /// The file.
        path: PathBuf,
        /// The cause.
        source: std::io::Error,
    },
    /// A tensor could not be built or read.
    #[error(transparent)]
    Tensor(#[from] TensorError),
    /// A weight could not be unpacked.
    #[error(transparent)]
    Op(#[from] crate::error::OpError),
}

/// The ONNX `ModelProto` of `model`.
pub fn to_model_proto(model: &Model, opts: &OnnxExportOptions) -> Result<ModelProto, ExportError> {
    let g = model.graph();
    let mut b = Builder::default();
    let mut inputs = Vec::new();
    for i in g.inputs() {
        b.reserve(&i.name);
        inputs.push(value_info(&i.name, &i.ty)?);
    }
    for n in g.nodes() {
        for o in &n.outputs {
            b.reserve(o);
        }
    }
    for p in g.params() {
        b.reserve(&p.name);
    }
    for n in g.nodes() {
        ops::export_node(&mut b, model, n, opts)?;
    }
    let mut outputs = Vec::new();
    for o in g.outputs() {
        let ty = g.value_type(&o.name).unwrap_or(&o.ty);
        outputs.push(value_info(&o.name, ty)?);
        if g.is_param(&o.name) {
            ops::param(&mut b, model, &o.name)?;
        }
    }
    let mut opset_import = vec![OperatorSetIdProto {
        domain: String::new(),
        version: OPSET,
    }];
    for (domain, version) in std::mem::take(&mut b.extra_domains) {
        opset_import.push(OperatorSetIdProto { domain, version });
    }
    Ok(ModelProto {
        ir_version: IR_VERSION,
        opset_import,
        producer_name: "wginfer".into(),
        producer_version: env!("CARGO_PKG_VERSION").into(),
        graph: Some(b.graph(g.name(), inputs, outputs)),
        ..Default::default()
    })
}

/// The bytes of the `.onnx` file of `model`.
pub fn to_onnx_bytes(model: &Model, opts: &OnnxExportOptions) -> Result<Vec<u8>, ExportError> {
    let proto = to_model_proto(model, opts)?;
    let bytes = proto.encoded_len();
    if bytes > MAX_BYTES {
        return Err(ExportError::TooLarge {
            bytes,
            limit: MAX_BYTES,
            target: "ONNX (protobuf)",
        });
    }
    Ok(proto.encode_to_vec())
}

/// Writes `model` as an `.onnx` file at `path`: refused when the file exists
/// unless `opts.overwrite`; written beside it and renamed over it.
pub fn export_onnx(model: &Model, path: &Path, opts: &OnnxExportOptions) -> Result<(), ExportError> {
    check_target(path, opts.overwrite)?;
    let bytes = to_onnx_bytes(model, opts)?;
    write_atomic(path, &bytes)
}

/// Refuses an existing `path` unless `overwrite`.
pub fn check_target(path: &Path, overwrite: bool) -> Result<(), ExportError> {
    if !overwrite && path.symlink_metadata().is_ok() {
        return Err(ExportError::Exists {
            path: path.to_path_buf(),
        });
    }
    Ok(())
}

/// Writes `bytes` to a temporary file beside `path` and renames it over `path`.
pub fn write_atomic(path: &Path, bytes: &[u8]) -> Result<(), ExportError> {
    let mut tmp = path.as_os_str().to_owned();
    tmp.push(format!(".tmp{}", std::process::id()));
    let tmp = PathBuf::from(tmp);
    let io = |source| ExportError::Io {
        path: path.to_path_buf(),
        source,
    };
    std::fs::write(&tmp, bytes).map_err(io)?;
    std::fs::rename(&tmp, path).map_err(|e| {
        let _ = std::fs::remove_file(&tmp);
        io(e)
    })
}
