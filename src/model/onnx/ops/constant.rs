//! `Constant`, and the ops that pass their input through: `Identity` and
//! inference `Dropout` (their output aliases the input; no node is emitted).

use super::super::context::{skip, Ctx, NodeAttrs, OnnxNode, Skip, Val};
use super::super::tensor_from_proto;
use super::Build;
use crate::tensor::Tensor;

pub(super) static OPS: &[(&str, Build)] = &[("Constant", constant), ("Identity", identity), ("Dropout", dropout)];

fn constant(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    let t = constant_value(&n.a, cx.dir)?;
    cx.set_const(n.out0()?, t);
    Ok(())
}

fn constant_value(a: &NodeAttrs<'_>, dir: &std::path::Path) -> Result<Tensor, Skip> {
    if let Some(t) = a.get("value").and_then(|x| x.t.as_ref()) {
        return Ok(tensor_from_proto(t, dir)?);
    }
    if let Some(x) = a.get("value_float") {
        return Ok(Tensor::from_vec(vec![], vec![x.f])?);
    }
    if let Some(x) = a.get("value_floats") {
        return Ok(Tensor::from_vec(vec![x.floats.len()], x.floats.clone())?);
    }
    if let Some(x) = a.get("value_int") {
        return Ok(Tensor::from_vec(vec![], vec![x.i])?);
    }
    if let Some(x) = a.get("value_ints") {
        return Ok(Tensor::from_vec(vec![x.ints.len()], x.ints.clone())?);
    }
    Err(skip(
        "only value, value_float(s) and value_int(s) constants are supported",
    ))
}

fn identity(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    n.arity(1, 3)?;
    pass_through(cx, n)
}

/// The output is the input (a constant stays one; a run-time value is aliased).
fn pass_through(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    let o = n.out0()?;
    let src = cx.resolve(&n.ins[0]);
    match cx.val(&src)?.clone() {
        Val::Const(t) => cx.set_const(o, t),
        Val::Dyn(_) => {
            cx.alias.insert(o.clone(), src);
        }
    }
    Ok(())
}

/// Inference Dropout (or training mode with ratio 0): the identity, with a
/// mask of trues when the mask output is requested.
fn dropout(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    n.arity(1, 3)?;
    let training = match n.ins.get(2).filter(|t| !t.is_empty()) {
        Some(tm) => cx.constant(tm)?.to_i64_vec().first().copied().unwrap_or(0) != 0,
        None => false,
    };
    if training {
        // Identity (mask all true) only when nothing is dropped.
        let ratio = match n.ins.get(1).filter(|r| !r.is_empty()) {
            Some(r) => cx.constant(r)?.to_f32_vec().first().copied(),
            None => Some(0.5),
        };
        if ratio != Some(0.0) {
            return Err(skip(
                "training_mode = true with a ratio other than 0 drops at random (not supported)",
            ));
        }
    }
    // The mask keeps every element: a constant of trues.
    if let Some(m) = n.outs.get(1).filter(|m| !m.is_empty()) {
        let ty = cx.type_of(&n.ins[0])?;
        let shape: Option<Vec<usize>> = ty.shape.iter().map(|d| d.known()).collect();
        let shape = shape.ok_or_else(|| {
            skip(format!(
                "the mask output of Dropout over {} (symbolic dimensions)",
                ty.shape_string()
            ))
        })?;
        let count = shape.iter().product();
        cx.set_const(m, Tensor::from_vec(shape, vec![true; count])?);
    }
    pass_through(cx, n)
}
