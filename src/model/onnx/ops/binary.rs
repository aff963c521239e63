//! Binary arithmetic: `Add`, `Sub`, `Mul`, `Div` (broadcasting); on two
//! int64 constants (shape arithmetic) folded here with integer semantics.
//! `Max` and `Min` of any number of inputs are chains of the binary op;
//! `Clip` is `Min(Max(x, min), max)` (each side only where it is given), which
//! keeps NaN and gives `max` everywhere when `min > max`, as ONNX defines.

use std::sync::Arc;

use super::super::context::{skip, Ctx, OnnxNode, Skip, Val};
use super::Build;
use crate::ops::binary::{broadcast_offset, broadcast_shapes, Binary, BinaryKind};
use crate::tensor::{numel, DType, Tensor};

pub(super) static OPS: &[(&str, Build)] = &[
    ("Add", |cx, n| binary(cx, n, BinaryKind::Add)),
    ("Sub", |cx, n| binary(cx, n, BinaryKind::Sub)),
    ("Mul", |cx, n| binary(cx, n, BinaryKind::Mul)),
    ("Div", |cx, n| binary(cx, n, BinaryKind::Div)),
    ("Max", |cx, n| variadic(cx, n, BinaryKind::Max)),
    ("Min", |cx, n| variadic(cx, n, BinaryKind::Min)),
    ("Clip", clip),
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

/// `kind` folded over every input, left to right (one input: the identity).
fn variadic(cx: &mut Ctx<'_>, n: &OnnxNode<'_>, kind: BinaryKind) -> Result<(), Skip> {
    n.arity(1, usize::MAX)?;
    if n.ins.iter().any(|i| i.is_empty()) {
        return Err(skip("has an empty input name"));
    }
    chain(cx, n, kind, &n.ins[0], &n.ins[1..], n.out0()?)
}

/// `acc = kind(acc, rest[i])` for each `i`, the last step writing `out`.
fn chain(
    cx: &mut Ctx<'_>,
    n: &OnnxNode<'_>,
    kind: BinaryKind,
    first: &str,
    rest: &[String],
    out: &str,
) -> Result<(), Skip> {
    if rest.is_empty() {
        let src = cx.resolve(first);
        match cx.val(&src)?.clone() {
            Val::Const(t) => cx.set_const(out, t),
            Val::Dyn(_) => {
                cx.alias.insert(out.to_string(), src);
            }
        }
        return Ok(());
    }
    let mut acc = first.to_string();
    for (i, operand) in rest.iter().enumerate() {
        let step = if i + 1 == rest.len() {
            out.to_string()
        } else {
            format!("{out}.{kind:?}{i}")
        };
        cx.emit(
            n.name,
            Arc::new(Binary { kind }),
            &[acc, operand.clone()],
            std::slice::from_ref(&step),
        )?;
        acc = step;
    }
    Ok(())
}

/// `Clip`: bounds from inputs 1 and 2 (opset 11 on) or the `min`/`max`
/// attributes (before), each optional.
fn clip(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    n.arity(1, 3)?;
    let out = n.out0()?.clone();
    let mut bounds: Vec<(BinaryKind, String)> = Vec::new();
    if cx.opset < 11 {
        let dtype = cx.type_of(&n.ins[0])?.dtype;
        if dtype != DType::F32 {
            return Err(skip(format!("Clip before opset 11 on {dtype} (only f32)")));
        }
        for (kind, key) in [(BinaryKind::Max, "min"), (BinaryKind::Min, "max")] {
            if n.a.get(key).is_some() {
                let name = format!("{out}.{key}");
                cx.set_const(&name, Tensor::from_vec(vec![], vec![n.a.f(key, 0.0)])?);
                bounds.push((kind, name));
            }
        }
    } else {
        for (kind, i) in [(BinaryKind::Max, 1), (BinaryKind::Min, 2)] {
            if let Some(b) = n.ins.get(i).filter(|b| !b.is_empty()) {
                bounds.push((kind, b.clone()));
            }
        }
    }
    let mut acc = n.ins[0].clone();
    let last = bounds.len();
    for (i, (kind, bound)) in bounds.into_iter().enumerate() {
        let step = if i + 1 == last {
            out.clone()
        } else {
            format!("{out}.lower")
        };
        chain(cx, n, kind, &acc, &[bound], &step)?;
        acc = step;
    }
    if last == 0 {
        chain(cx, n, BinaryKind::Max, &acc, &[], &out)?;
    }
    Ok(())
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
            BinaryKind::Max => p.max(q),
            BinaryKind::Min => p.min(q),
        });
    }
    Ok(Tensor::from_vec(out, v)?)
}
