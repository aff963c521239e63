//! `DequantizeLinear`: a constant int8/uint8 weight with f32 per-tensor or
//! per-axis scales is folded at import (and remembered, so a MatMul or Gemm
//! over it keeps the int8 weight as a [`QLinear`]); anything else is the
//! run-time op.

use std::sync::Arc;

use super::super::context::{skip, Ctx, Dequantized, OnnxNode, Skip, Val};
use super::super::{dtype_from_onnx, onnx_type_name};
use super::Build;
use crate::ops;
use crate::ops::qlinear::QLinear;
use crate::ops::quantize::DequantizeLinear;
use crate::quant::WeightFormat;
use crate::tensor::{DType, Storage, Tensor};

pub(super) static OPS: &[(&str, Build)] = &[("DequantizeLinear", dequantize_linear)];

fn dequantize_linear(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    n.arity(2, 3)?;
    let ins = &n.ins;
    let weight = n.a.i("block_size", 0) == 0
        && n.a.i("output_dtype", 0) == 0
        && cx
            .constant(&ins[0])
            .is_ok_and(|x| matches!(x.dtype(), DType::I8 | DType::U8))
        && cx
            .constant(&ins[1])
            .is_ok_and(|s| s.dtype() == DType::F32 && s.rank() <= 1)
        && ins[2..].iter().all(|z| cx.constant(z).is_ok());
    if !weight {
        return dequantize_op(cx, n);
    }
    let d = dequantized(cx, n)?;
    let o = n.out0()?;
    cx.set_const(o, d.to_f32()?);
    cx.dequantized.insert(o.clone(), d);
    Ok(())
}

/// The run-time `DequantizeLinear`.
fn dequantize_op(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    let output = match n.a.i("output_dtype", 0) {
        0 => None,
        code => Some(
            dtype_from_onnx(code as i32)
                .ok_or_else(|| skip(format!("output_dtype {} is not supported", onnx_type_name(code as i32))))?,
        ),
    };
    let block = n.a.i("block_size", 0);
    let block_size = usize::try_from(block).map_err(|_| skip(format!("block_size {block} is negative")))?;
    let op = DequantizeLinear {
        axis: n.a.i("axis", 1),
        block_size,
        output,
    };
    cx.emit_node(n, Arc::new(op))
}

/// The constant quantized tensor, scales and zero points of a foldable node.
fn dequantized(cx: &Ctx<'_>, n: &OnnxNode<'_>) -> Result<Dequantized, Skip> {
    let x = cx.constant(&n.ins[0])?;
    let scale = cx.constant(&n.ins[1])?;
    if scale.dtype() != DType::F32 || scale.rank() > 1 {
        return Err(skip(format!(
            "the scale must be an f32 scalar or 1-D; got {}{:?}",
            scale.dtype(),
            scale.shape()
        )));
    }
    let zero = match n.ins.get(2) {
        Some(z) => {
            let z = cx.constant(z)?;
            if z.dtype() != x.dtype() || z.numel() != scale.numel() {
                return Err(skip("the zero point must match the input's dtype and the scale's size"));
            }
            int_values(z)?
        }
        None => vec![0],
    };
    let axis = if scale.numel() > 1 || zero.len() > 1 {
        let ax = ops::normalize_axis(n.a.i("axis", 1), x.rank())?;
        if x.shape()[ax] != scale.numel() {
            return Err(skip(format!(
                "{} scales for axis {ax} of {:?}",
                scale.numel(),
                x.shape()
            )));
        }
        ax
    } else {
        0
    };
    Ok(Dequantized {
        q: x.clone(),
        scale: scale.to_f32_vec(),
        zero,
        axis,
    })
}

/// `x · W (+ bias)` with `W` the output of a constant `DequantizeLinear`
/// (`out_axis`: W's axis of output features) as a [`QLinear`] over the
/// int8 weight; `Ok(None)` when W is not one, or its scales do not run
/// along the output axis, or the bias is not a row of N (the caller then
/// uses the dequantized f32 weight).
pub(super) fn quantized_linear(
    cx: &mut Ctx<'_>,
    n: &OnnxNode<'_>,
    out_axis: usize,
    bias: Option<&str>,
) -> Result<Option<()>, Skip> {
    let (x, w) = (&n.ins[0], &n.ins[1]);
    let Some(d) = cx.dequantized.get(&cx.resolve(w)).cloned() else {
        return Ok(None);
    };
    if !matches!(cx.val(x)?, Val::Dyn(_)) {
        return Ok(None);
    }
    let Some((format, packed)) = d.pack(out_axis)? else {
        return Ok(None);
    };
    let (rows, cols) = (packed[0].shape()[0], packed[0].shape()[1]);
    let mut inputs = vec![x.to_string()];
    for (suffix, t) in format.tensor_names().iter().zip(packed) {
        let pname = format!("{}.{suffix}", cx.resolve(w));
        cx.formats.insert(pname.clone(), format.name());
        cx.set_const(&pname, t);
        inputs.push(pname);
    }
    if let Some(b) = bias {
        let bt = cx.constant(b)?.clone();
        if bt.dtype() != DType::F32 || bt.numel() != rows {
            return Ok(None);
        }
        let bname = format!("{}.bias", cx.resolve(b));
        cx.set_const(&bname, bt.reshape(vec![rows])?);
        inputs.push(bname);
    }
    let op = Arc::new(QLinear {
        format,
        in_features: cols,
        out_features: rows,
    });
    cx.emit(n.name, op, &inputs, std::slice::from_ref(n.out0()?))?;
    Ok(Some(()))
}

/// The values of an int8 or uint8 tensor.
fn int_values(t: &Tensor) -> Result<Vec<i32>, Skip> {
    match t.dtype() {
        DType::I8 => Ok(t.as_slice::<i8>()?.iter().map(|&v| v as i32).collect()),
        DType::U8 => Ok(t.as_slice::<u8>()?.iter().map(|&v| v as i32).collect()),
        other => Err(skip(format!("quantized values of dtype {other}: only int8 and uint8"))),
    }
}

impl Dequantized {
    /// `(q - zero) · scale` as an f32 tensor of q's shape.
    fn to_f32(&self) -> Result<Tensor, Skip> {
        let s = self.q.shape();
        let inner: usize = s[self.axis + 1..].iter().product();
        let q = int_values(&self.q)?;
        let at = |v: usize, i: usize| if v == 1 { 0 } else { (i / inner.max(1)) % s[self.axis] };
        let y = q
            .iter()
            .enumerate()
            .map(|(i, &v)| (v - self.zero[at(self.zero.len(), i)]) as f32 * self.scale[at(self.scale.len(), i)])
            .collect();
        Ok(Tensor::from_vec(s.to_vec(), y)?)
    }

    /// As [`QLinear`] packed tensors for a weight stored `[in, out]` (with
    /// `out_axis = 1`) or `[out, in]` (with `out_axis = 0`); `None` when the
    /// scales run along the input axis (no per-output-channel format holds that).
    fn pack(&self, out_axis: usize) -> Result<Option<(WeightFormat, Vec<Tensor>)>, Skip> {
        let s = self.q.shape();
        if s.len() != 2
            || (self.scale.len() > 1 && self.axis != out_axis)
            || (self.zero.len() > 1 && self.axis != out_axis)
        {
            return Ok(None);
        }
        let (n, k) = (s[out_axis], s[1 - out_axis]);
        let q = int_values(&self.q)?;
        // Row-major [out, in].
        let rows: Vec<i32> = if out_axis == 0 {
            q
        } else {
            (0..n * k).map(|i| q[(i % k) * n + i / k]).collect()
        };
        let per = |v: &[i32]| -> Vec<i32> { (0..n).map(|c| v[if v.len() == 1 { 0 } else { c }]).collect() };
        let scale: Vec<f32> = (0..n)
            .map(|c| self.scale[if self.scale.len() == 1 { 0 } else { c }])
            .collect();
        let zero = per(&self.zero);
        let scale_t = Tensor::from_vec(vec![n], scale)?;
        if self.q.dtype() == DType::I8 && zero.iter().all(|&z| z == 0) {
            let q8 = rows.iter().map(|&v| v as i8).collect();
            let q = Tensor::new(vec![n, k], Storage::I8(q8))?;
            return Ok(Some((WeightFormat::Int8 { affine: false }, vec![q, scale_t])));
        }
        // Affine: u8 values and zero points (int8 shifted by 128: q - z is unchanged).
        let shift = if self.q.dtype() == DType::I8 { 128 } else { 0 };
        let q8 = rows.iter().map(|&v| (v + shift) as u8).collect();
        let z8 = zero.iter().map(|&v| (v + shift) as u8).collect();
        Ok(Some((
            WeightFormat::Int8 { affine: true },
            vec![
                Tensor::new(vec![n, k], Storage::U8(q8))?,
                scale_t,
                Tensor::new(vec![n], Storage::U8(z8))?,
            ],
        )))
    }
}
