//! The integer ops of dynamic quantization: `MatMulInteger` (an absent
//! `a_zero_point` before a given `b_zero_point` becomes a constant 0) and
//! `DynamicQuantizeLinear` (u8 codes, scale and zero point).

use std::sync::Arc;

use super::super::context::{Ctx, OnnxNode, Skip};
use super::Build;
use crate::ops::integer::{DynamicQuantizeLinear, MatMulInteger};
use crate::tensor::Tensor;

pub(super) static OPS: &[(&str, Build)] = &[
    ("MatMulInteger", matmul_integer),
    ("DynamicQuantizeLinear", dynamic_quantize_linear),
];

fn matmul_integer(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    n.arity(2, 4)?;
    let mut ins = n.ins.clone();
    if ins.len() == 4 && ins[2].is_empty() {
        let dtype = cx.type_of(&ins[0])?.dtype;
        let zero = format!("{}.a_zero_point", n.name);
        cx.set_const(&zero, Tensor::zeros(dtype, vec![]));
        ins[2] = zero;
    }
    cx.emit(n.name, Arc::new(MatMulInteger), &ins, &n.outs)
}

fn dynamic_quantize_linear(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    n.arity(1, 1)?;
    let outs = n.named_outputs(3);
    cx.emit(n.name, Arc::new(DynamicQuantizeLinear), &n.ins, &outs)
}
