//! TFLite (LiteRT) export: writes a [`Model`] as a `.tflite` flatbuffer
//! (schema version 3, file identifier `TFL3`) that LiteRT's interpreter
//! runs.
//!
//! - One subgraph; graph inputs and outputs keep their names, dtypes and
//!   layouts. A dynamic dimension (the batch) is 1 in a tensor's `shape`
//!   and -1 in its `shape_signature`, so the interpreter resizes it.
//! - Ops map to TFLite builtins ([`mapped_ops`] lists them): `Linear` is
//!   `FULLY_CONNECTED` (wginfer's `[out, in]` weight is TFLite's layout),
//!   `Conv` is `CONV_2D` over NHWC with OHWI weights, pools are
//!   `MAX_POOL_2D`/`AVERAGE_POOL_2D`. NCHW values are transposed to NHWC at
//!   the start of a conv stack and back where the model's layout is needed
//!   (`Flatten`, a graph output), so `Flatten` keeps NCHW order. Pads that
//!   TFLite's `SAME`/`VALID` cannot express become a `PAD` op. Encoder ops
//!   (`LayerNormalization`, `Attention`, `MaskedMeanPool`, `L2Normalize`)
//!   are spelled out in builtins (the `encoder` module).
//! - `QLinear` weights keep their quantized form as an int8 tensor with
//!   per-channel scales (`quantized_dimension = 0`) and a `DEQUANTIZE`
//!   feeding `FULLY_CONNECTED`, so LiteRT multiplies the same f32 weights
//!   wginfer does; W8A8 is TFLite's hybrid `FULLY_CONNECTED`, which
//!   quantizes each activation row at run time as wginfer does (see the
//!   `quant` module for every format). A `QConv` (W8A8, one group,
//!   undilated) is a hybrid `CONV_2D` over its int8 OHWI weight with
//!   per-channel scales, which quantizes each image at run time.
//! - What TFLite cannot express is an [`ExportError`] naming the node, op or
//!   dtype. The file is written beside the target and renamed over it; an
//!   existing file is replaced only with [`TfliteExportOptions::overwrite`].

mod builder;
mod encoder;
mod ops;
mod quant;
mod schema;
mod spatial;

use std::path::Path;

pub use crate::model::onnx::export::ExportError;
use crate::model::onnx::export::{check_target, write_atomic};
use crate::model::Model;
use builder::{Builder, Layout};
pub use ops::mapped_ops;

/// The TFLite schema version written.
pub const SCHEMA_VERSION: u32 = 3;

/// Flatbuffers address with 32-bit offsets: files stay under 2 GiB.
const MAX_BYTES: usize = (1 << 31) - 1;

/// Options for [`export_tflite`].
#[derive(Clone, Debug, Default)]
pub struct TfliteExportOptions {
    /// Replace an existing output file (else it is an error).
    pub overwrite: bool,
}

/// The bytes of the `.tflite` file of `model`.
pub fn to_tflite_bytes(model: &Model, _opts: &TfliteExportOptions) -> Result<Vec<u8>, ExportError> {
    let g = model.graph();
    let mut b = Builder::new(model);
    let mut inputs = Vec::new();
    for i in g.inputs() {
        inputs.push(b.output(&i.name, Layout::Own)?);
    }
    for n in g.nodes() {
        ops::export_node(&mut b, n)?;
    }
    let mut outputs = Vec::new();
    for o in g.outputs() {
        outputs.push(b.get(&o.name, Layout::Own)?);
    }
    b.finish(&inputs, &outputs)
}

/// Writes `model` as a `.tflite` file at `path`: refused when the file
/// exists unless `opts.overwrite`; written beside it and renamed over it.
pub fn export_tflite(model: &Model, path: &Path, opts: &TfliteExportOptions) -> Result<(), ExportError> {
    check_target(path, opts.overwrite)?;
    let bytes = to_tflite_bytes(model, opts)?;
    write_atomic(path, &bytes)
}
