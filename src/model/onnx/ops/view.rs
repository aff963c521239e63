//! Shapes and views: `Shape` (folded to a constant from a static shape),
//! `Reshape` (with a constant target), `Flatten`, `Squeeze` and `Unsqueeze`.

use std::sync::Arc;

use super::super::context::{skip, Ctx, OnnxNode, Skip};
use super::Build;
use crate::ops::view::{Axes, Flatten, Reshape};
use crate::tensor::{Dim, Tensor};

pub(super) static OPS: &[(&str, Build)] = &[
    ("Shape", shape),
    ("Reshape", reshape),
    ("Flatten", flatten),
    ("Squeeze", squeeze_or_unsqueeze),
    ("Unsqueeze", squeeze_or_unsqueeze),
];

/// The (sliced) shape of the input, which must be static.
fn shape(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    n.arity(1, 1)?;
    let ty = cx.type_of(&n.ins[0])?;
    let r = ty.rank() as i64;
    let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
    let (s, e) = (clamp(n.a.i("start", 0)), clamp(n.a.i("end", r)));
    let dims = ty.shape.get(s..e.max(s)).unwrap_or(&[]);
    let known: Option<Vec<i64>> = dims.iter().map(|d| d.known().map(|v| v as i64)).collect();
    let known = known.ok_or_else(|| {
        skip(format!(
            "Shape of {} has symbolic dimensions: it cannot be folded",
            ty.shape_string()
        ))
    })?;
    let len = known.len();
    cx.set_const(n.out0()?, Tensor::from_vec(vec![len], known)?);
    Ok(())
}

fn reshape(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    n.arity(2, 2)?;
    let shape = cx.constant(&n.ins[1])?.to_i64_vec();
    let allowzero = n.a.i("allowzero", 0) != 0;
    cx.emit(n.name, Arc::new(Reshape { shape, allowzero }), &n.ins[..1], &n.outs)
}

fn flatten(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    cx.emit_node(n, Arc::new(Flatten { axis: n.a.i("axis", 1) }))
}

/// Axes from the second input (constant) or the `axes` attribute; a Squeeze
/// without axes drops every size-1 axis of the static shape.
fn squeeze_or_unsqueeze(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    n.arity(1, 2)?;
    let mut axes = match (n.ins.get(1), n.a.ints("axes")) {
        (Some(x), _) => cx.constant(x)?.to_i64_vec(),
        (None, Some(v)) => v,
        (None, None) => Vec::new(),
    };
    let unsqueeze = n.op_type == "Unsqueeze";
    if !unsqueeze && axes.is_empty() {
        // Resolve "every size-1 axis" now, from the static shape.
        for (i, d) in cx.type_of(&n.ins[0])?.shape.iter().enumerate() {
            match d {
                Dim::Known(1) => axes.push(i as i64),
                Dim::Known(_) => {}
                Dim::Sym(s) => return Err(skip(format!("Squeeze without axes over the symbolic dimension `{s}`"))),
            }
        }
    }
    cx.emit(n.name, Arc::new(Axes { unsqueeze, axes }), &n.ins[..1], &n.outs)
}
