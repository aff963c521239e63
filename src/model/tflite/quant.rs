//! `QLinear` → `DEQUANTIZE` of a quantized constant feeding
//! `FULLY_CONNECTED`, so the file holds the weight in its small form and
//! the product is computed on the same f32 weights wginfer dequantizes:
//! - int8 (symmetric), pow2 and binary: an INT8 `[out, in]` tensor with one
//!   scale per output channel (`quantized_dimension = 0`, zero points 0);
//!   pow2 scales are `2^-p`, binary weights are ±1 with scale α.
//! - int8 affine: the u8 codes and zero points moved to int8 (`q - 128`,
//!   `z - 128`), per channel.
//! - f16: a FLOAT16 tensor; N:M sparse: the dense f32 weight.
//! - W8A8: the int8 weight straight into a hybrid `FULLY_CONNECTED` (see
//!   `w8a8` below).
//! - int4 blocks and XNOR binary have no TFLite form: an
//!   [`ExportError::Format`] says so.

use super::builder::{Builder, Layout};
use super::ops::{fc_op, fully_connected, unsupported};
use super::schema::{BuiltinOp, Options, Quantization};
use super::ExportError;
use crate::graph::Node;
use crate::ops::qlinear::QLinear;
use crate::quant::{self, WeightFormat};
use crate::tensor::{DType, Tensor};

/// Writes a `QLinear` node.
pub(super) fn qlinear(b: &mut Builder<'_>, n: &Node) -> Result<(), ExportError> {
    let Some(op) = n.op.downcast_ref::<QLinear>() else {
        return Err(unsupported(n, "not wginfer's QLinear"));
    };
    let np = op.format.tensor_names().len();
    let mut packed = Vec::with_capacity(np);
    for name in n.inputs.iter().skip(1).take(np) {
        packed.push(
            b.model()
                .param(name)
                .ok_or_else(|| unsupported(n, format!("packed weight `{name}` must be a parameter")))?,
        );
    }
    let bias = n.inputs.get(1 + np).map(String::as_str);
    if let WeightFormat::W8A8 { outliers } = op.format {
        return w8a8(b, n, op, &packed, bias, outliers > 0);
    }
    let w = weight(b, n, op, &packed)?;
    fully_connected(b, n, w, bias)
}

/// W8A8: the int8 weight (per-channel scales) straight into
/// `FULLY_CONNECTED` with `asymmetric_quantize_inputs`, TFLite's hybrid
/// kernel, which quantizes each activation row at run time with its own
/// scale and zero point as wginfer does. Outlier input channels: zeroed in
/// the quantized product's input (`MUL` by a 0/1 mask, so the row's range
/// leaves them out, as in wginfer), and `GATHER` of those columns into an
/// f32 `FULLY_CONNECTED` with their weights, `ADD`.
fn w8a8(
    b: &mut Builder<'_>,
    n: &Node,
    op: &QLinear,
    packed: &[&Tensor],
    bias: Option<&str>,
    outliers: bool,
) -> Result<(), ExportError> {
    let m = op.out_features;
    let base = n.inputs[1].as_str();
    let quant = Quantization {
        scale: packed[1].to_f32_vec(),
        zero_point: vec![0; m],
        dim: 0,
    };
    let w = b.stored_param(base, packed[0], Some(quant))?;
    let x = b.get(&n.inputs[0], Layout::Own)?;
    let bias = match bias {
        Some(v) => b.get(v, Layout::Own)?,
        None => -1,
    };
    let y = b.output(&n.outputs[0], Layout::Own)?;
    if !outliers {
        fc_op(b, x, w, bias, y, true);
        return Ok(());
    }
    let xd = b.dims_of(x);
    let mut yd = xd.clone();
    if let Some(last) = yd.last_mut() {
        *last = Some(m as i32);
    }
    // wginfer quantizes each row with the outlier channels set to 0, so the
    // row's range (and scale) leaves them out: the same zeros go in here.
    let index = packed[3].to_f32_vec();
    let mut keep = vec![1f32; op.in_features];
    for &i in &index {
        if let Some(k) = keep.get_mut(i as usize) {
            *k = 0.0;
        }
    }
    let keep = b.constant(
        &format!("{}.inlier_mask", n.name),
        &Tensor::from_vec(vec![op.in_features], keep)?,
    )?;
    let xm = b.step(
        &format!("{}.inliers", n.name),
        BuiltinOp::MUL,
        &[x, keep],
        Options::Binary,
        DType::F32,
        &xd,
    )?;
    let main = b.activation(&format!("{}.int8", n.name), DType::F32, &yd)?;
    fc_op(b, xm, w, bias, main, true);
    let idx = b.stored_param(&n.inputs[4], packed[3], None)?;
    let c = index.len();
    let mut gd = xd.clone();
    if let Some(last) = gd.last_mut() {
        *last = Some(c as i32);
    }
    let axis = xd.len() as i32 - 1;
    let cols = b.step(
        &format!("{}.outlier_columns", n.name),
        BuiltinOp::GATHER,
        &[x, idx],
        Options::Gather { axis },
        DType::F32,
        &gd,
    )?;
    let ow = b.stored_param(&n.inputs[5], packed[4], None)?;
    let part = b.activation(&format!("{}.outliers", n.name), DType::F32, &yd)?;
    fc_op(b, cols, ow, -1, part, false);
    b.op(BuiltinOp::ADD, &[main, part], &[y], Options::Binary);
    Ok(())
}

fn format_error(n: &Node, op: &QLinear, reason: &str) -> ExportError {
    ExportError::Format {
        node: n.name.clone(),
        format: op.format.name(),
        target: "TFLite",
        reason: reason.into(),
    }
}

/// The f32 `[out, in]` weight tensor of the node.
fn weight(b: &mut Builder<'_>, n: &Node, op: &QLinear, packed: &[&Tensor]) -> Result<i32, ExportError> {
    let (k, m) = (op.in_features, op.out_features);
    let base = n.inputs[1].as_str();
    let per_channel = |scale: Vec<f32>, zero_point: Vec<i64>| Quantization {
        scale,
        zero_point,
        dim: 0,
    };
    let src = match op.format {
        WeightFormat::F16 => b.stored_param(base, packed[0], None)?,
        WeightFormat::Int8 { affine: false } => {
            b.stored_param(base, packed[0], Some(per_channel(packed[1].to_f32_vec(), vec![0; m])))?
        }
        WeightFormat::Int8 { affine: true } => {
            let q: Vec<i8> = packed[0]
                .as_slice::<u8>()?
                .iter()
                .map(|&v| (v as i16 - 128) as i8)
                .collect();
            let z: Vec<i64> = packed[2].as_slice::<u8>()?.iter().map(|&v| v as i64 - 128).collect();
            let t = Tensor::from_vec(vec![m, k], q)?;
            b.quantized(&format!("{base}.int8"), &t, per_channel(packed[1].to_f32_vec(), z))?
        }
        WeightFormat::Pow2 { per_channel: pc, .. } => {
            let shifts = packed[1].to_f32_vec();
            let scales: Vec<f32> = (0..m).map(|c| (-shifts[if pc { c } else { 0 }]).exp2()).collect();
            b.stored_param(base, packed[0], Some(per_channel(scales, vec![0; m])))?
        }
        WeightFormat::Binary { xnor: false } => {
            let w = quant::dequantize(&op.format, packed, m, k)?;
            let signs: Vec<i8> = w.iter().map(|&v| if v < 0.0 { -1 } else { 1 }).collect();
            let t = Tensor::from_vec(vec![m, k], signs)?;
            b.quantized(
                &format!("{base}.signs"),
                &t,
                per_channel(packed[1].to_f32_vec(), vec![0; m]),
            )?
        }
        WeightFormat::NM { .. } => {
            let dense = Tensor::from_vec(vec![m, k], quant::dequantize(&op.format, packed, m, k)?)?;
            return b.constant(&format!("{base}.dense"), &dense);
        }
        WeightFormat::Int4 { .. } => {
            return Err(format_error(
                n,
                op,
                "TFLite has no block-quantized weight form here; quantize as int8 for TFLite",
            ))
        }
        WeightFormat::W8A8 { .. } => {
            return Err(format_error(
                n,
                op,
                "activations quantized per row at run time have no TFLite form",
            ))
        }
        WeightFormat::Binary { xnor: true } => {
            return Err(format_error(
                n,
                op,
                "activations binarized at run time (XNOR) have no TFLite form",
            ))
        }
    };
    let out = b.activation(
        &format!("{}.weight", n.name),
        DType::F32,
        &[Some(m as i32), Some(k as i32)],
    )?;
    b.op(BuiltinOp::DEQUANTIZE, &[src], &[out], Options::Dequantize);
    Ok(out)
}
