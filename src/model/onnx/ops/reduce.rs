//! `ReduceMin` and `ReduceMax`: axes from the second input (opset 18 on;
//! it must be constant) or the `axes` attribute (before); no axes reduce
//! every axis, unless `noop_with_empty_axes = 1` makes the node an identity.

use std::sync::Arc;

use super::super::context::{Ctx, OnnxNode, Skip, Val};
use super::Build;
use crate::ops::reduce::{Reduce, ReduceKind};

pub(super) static OPS: &[(&str, Build)] = &[
    ("ReduceMin", |cx, n| reduce(cx, n, ReduceKind::Min)),
    ("ReduceMax", |cx, n| reduce(cx, n, ReduceKind::Max)),
];

fn reduce(cx: &mut Ctx<'_>, n: &OnnxNode<'_>, kind: ReduceKind) -> Result<(), Skip> {
    n.arity(1, 2)?;
    let axes = match n.ins.get(1) {
        Some(a) => cx.constant(a)?.to_i64_vec(),
        None => n.a.ints("axes").unwrap_or_default(),
    };
    if axes.is_empty() && n.a.i("noop_with_empty_axes", 0) != 0 {
        let (src, out) = (cx.resolve(&n.ins[0]), n.out0()?.clone());
        match cx.val(&src)?.clone() {
            Val::Const(t) => cx.set_const(&out, t),
            Val::Dyn(_) => {
                cx.alias.insert(out, src);
            }
        }
        return Ok(());
    }
    let op = Reduce {
        kind,
        axes: (!axes.is_empty()).then_some(axes),
        keepdims: n.a.i("keepdims", 1) != 0,
    };
    cx.emit(n.name, Arc::new(op), &n.ins[..1], &n.outs)
}
