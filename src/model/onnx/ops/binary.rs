//! Binary arithmetic: `Add`, `Sub`, `Mul`, `Div` (broadcasting); on two
//! int64 constants (shape arithmetic) folded here with integer semantics.

use std::sync::Arc;

use super::super::context::{skip, Ctx, OnnxNode, Skip};
use super::Build;
use crate::ops::binary::{broadcast_offset, broadcast_shapes, Binary, BinaryKind};
use crate::tensor::{numel, DType, Tensor};

pub(super) static OPS: &[(&str, Build)] = &[
    ("Add", |cx, n| binary(cx, n, BinaryKind::Add)),
    ("Sub", |cx, n| binary(cx, n, BinaryKind::Sub)),
    ("Mul", |cx, n| binary(cx, n, BinaryKind::Mul)),
    ("Div", |cx, n| binary(cx, n, BinaryKind::Div)),
];

fn binary(cx: &mut Ctx<'_>, n: &OnnxNode<'_>, kind: BinaryKind) -> Result<(), Skip> {
    n.arity(2, 2)?;
    if let (Ok(x), Ok(y)) = (cx.constant(&n.ins[0]), cx.constant(&n.ins[1])) {
        if x.dtype() == DType::I64 && y.dtype() == DType::I64 {
            let t = int_arith(kind, x, y)?;
            if let Some(o) = n.outs.first() {
                cx.set_const(o, t);
            }
            return Ok(());
        }
    }
    cx.emit_node(n, Arc::new(Binary { kind }))
}

/// Integer arithmetic on constant shapes (wrapping; division truncates).
fn int_arith(kind: BinaryKind, x: &Tensor, y: &Tensor) -> Result<Tensor, Skip> {
    let out = broadcast_shapes(x.shape(), y.shape())?;
    let (a, b) = (x.to_i64_vec(), y.to_i64_vec());
    let mut v = Vec::with_capacity(numel(&out));
    for i in 0..numel(&out) {
        let (p, q) = (
            a[broadcast_offset(i, &out, x.shape())],
            b[broadcast_offset(i, &out, y.shape())],
        );
        v.push(match kind {
            BinaryKind::Add => p.wrapping_add(q),
            BinaryKind::Sub => p.wrapping_sub(q),
            BinaryKind::Mul => p.wrapping_mul(q),
            // Truncating, as C and onnxruntime do.
            BinaryKind::Div => p
                .checked_div(q)
                .ok_or_else(|| skip("integer division by zero while folding constants"))?,
        });
    }
    Ok(Tensor::from_vec(out, v)?)
}
