//! The integer ops of dynamic quantization: `MatMulInteger` and
//! `ConvInteger` (an absent first zero point before a given second one
//! becomes a constant 0; `ConvInteger` 2-D) and `DynamicQuantizeLinear` (u8
//! codes, scale and zero point).

use std::sync::Arc;

use super::super::context::{Ctx, OnnxNode, Skip};
use super::Build;
use crate::ops::conv_integer::CONV_INTEGER;
use crate::ops::integer::{DynamicQuantizeLinear, MatMulInteger};
use crate::tensor::Tensor;

pub(super) static OPS: &[(&str, Build)] = &[
    ("MatMulInteger", matmul_integer),
    ("ConvInteger", conv_integer),
    ("DynamicQuantizeLinear", dynamic_quantize_linear),
];

/// The node's inputs with an empty third input (before a fourth) as a
/// constant zero point 0 of the first input's dtype.
fn zero_point_inputs(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<Vec<String>, Skip> {
    let mut ins = n.ins.clone();
    if ins.len() == 4 && ins[2].is_empty() {
        let dtype = cx.type_of(&ins[0])?.dtype;
        let zero = format!("{}.a_zero_point", n.name);
        cx.set_const(&zero, Tensor::zeros(dtype, vec![]));
        ins[2] = zero;
    }
    Ok(ins)
}

fn matmul_integer(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    n.arity(2, 4)?;
    let ins = zero_point_inputs(cx, n)?;
    cx.emit(n.name, Arc::new(MatMulInteger), &ins, &n.outs)
}

fn conv_integer(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    n.arity(2, 4)?;
    let ins = zero_point_inputs(cx, n)?;
    let op = (CONV_INTEGER.build)(&n.a.json())?;
    cx.emit(n.name, op, &ins, &n.outs)
}

fn dynamic_quantize_linear(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    n.arity(1, 1)?;
    let outs = n.named_outputs(3);
    cx.emit(n.name, Arc::new(DynamicQuantizeLinear), &n.ins, &outs)
}
