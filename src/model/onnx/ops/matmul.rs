//! Matrix products: `MatMul` and `Gemm`. Over a constant dequantized int8
//! weight either becomes a [`QLinear`](crate::ops::qlinear::QLinear); a
//! `Gemm` with `alpha = beta = 1`, `transA = 0`, `transB = 1` and constant
//! weights becomes [`Linear`]; any other `Gemm` is the general op.

use std::sync::Arc;

use super::super::context::{Ctx, OnnxNode, Skip};
use super::quantize::quantized_linear;
use super::Build;
use crate::ops;
use crate::ops::linear::Linear;
use crate::ops::matmul::MatMul;
use crate::tensor::{DType, Tensor};

pub(super) static OPS: &[(&str, Build)] = &[("MatMul", matmul), ("Gemm", gemm)];

fn matmul(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    n.arity(2, 2)?;
    if quantized_linear(cx, n, 1, None)?.is_some() {
        return Ok(());
    }
    cx.emit_node(n, Arc::new(MatMul))
}

fn gemm(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    n.arity(2, 3)?;
    let a = &n.a;
    let unit = a.f("alpha", 1.0) == 1.0 && a.f("beta", 1.0) == 1.0 && a.i("transA", 0) == 0;
    let tb = a.i("transB", 0) != 0;
    let w = cx.constant(&n.ins[1]).ok().cloned();
    // `Some(None)`: no bias; `None`: a bias computed at run time.
    let bias = match n.ins.get(2) {
        Some(c) => cx.constant(c).ok().cloned().map(Some),
        None => Some(None),
    };
    let (Some(w), Some(bias), true) = (w, bias, unit) else {
        return general_gemm(cx, n);
    };
    let b = bias.as_ref().map(|_| n.ins[2].as_str());
    if quantized_linear(cx, n, if tb { 0 } else { 1 }, b)?.is_some() {
        return Ok(());
    }
    if !tb || w.rank() != 2 {
        return general_gemm(cx, n);
    }
    linear(cx, n, &w, bias)
}

/// The general `Gemm` op.
fn general_gemm(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    cx.emit_node(n, (ops::gemm::GEMM.build)(&n.a.json())?)
}

/// `x · Wᵀ + b` with a constant `[out, in]` weight as [`Linear`]; a bias that
/// is not `out` f32 values makes it the general `Gemm`.
fn linear(cx: &mut Ctx<'_>, n: &OnnxNode<'_>, w: &Tensor, bias: Option<Tensor>) -> Result<(), Skip> {
    let n_out = w.shape()[0];
    let mut inputs = vec![n.ins[0].clone(), n.ins[1].clone()];
    if let Some(b) = bias {
        if b.numel() != n_out || b.dtype() != DType::F32 || b.rank() > 2 {
            return general_gemm(cx, n);
        }
        let bname = if b.shape() == [n_out] {
            n.ins[2].clone()
        } else {
            let nm = format!("{}.bias", n.ins[2]);
            cx.set_const(&nm, b.reshape(vec![n_out])?);
            nm
        };
        inputs.push(bname);
    }
    cx.emit(n.name, Arc::new(Linear), &inputs, &n.outs)
}
