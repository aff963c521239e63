//! Data movement: `Transpose`, `Concat` and `Gather` (folded when data and
//! indices are constant, as in shape arithmetic).

use std::sync::Arc;

use super::super::context::{skip, Ctx, OnnxNode, Skip};
use super::Build;
use crate::ops::movement::{gather_flat, Concat, Gather, Transpose};
use crate::tensor::Tensor;

pub(super) static OPS: &[(&str, Build)] = &[("Transpose", transpose), ("Concat", concat), ("Gather", gather)];

fn transpose(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    let perm = n.a.ints("perm").unwrap_or_default();
    cx.emit_node(n, Arc::new(Transpose { perm }))
}

fn concat(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    cx.emit_node(n, Arc::new(Concat { axis: n.a.i("axis", 0) }))
}

fn gather(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    n.arity(2, 2)?;
    let axis = n.a.i("axis", 0);
    if let (Ok(data), Ok(idx)) = (cx.constant(&n.ins[0]), cx.constant(&n.ins[1])) {
        let t = gather_constant(data, idx, axis)?;
        cx.set_const(n.out0()?, t);
        return Ok(());
    }
    // Computed at run time (an embedding lookup of input ids): the op.
    cx.emit_node(n, Arc::new(Gather { axis }))
}

/// `Gather` on constants (shape arithmetic).
fn gather_constant(data: &Tensor, idx: &Tensor, axis: i64) -> Result<Tensor, Skip> {
    let s = data.shape();
    let r = s.len() as i64;
    let ax = if axis < 0 { axis + r } else { axis };
    if ax < 0 || ax >= r {
        return Err(skip(format!("axis {axis} is out of range for rank {r}")));
    }
    let ax = ax as usize;
    let (outer, len, inner) = (
        s[..ax].iter().product::<usize>(),
        s[ax],
        s[ax + 1..].iter().product::<usize>(),
    );
    let mut ids = Vec::with_capacity(idx.numel());
    for i in idx.to_i64_vec() {
        let j = if i < 0 { i + len as i64 } else { i };
        if j < 0 || j >= len as i64 {
            return Err(skip(format!("index {i} is out of range for a dimension of {len}")));
        }
        ids.push(j as usize);
    }
    let mut flat = Vec::with_capacity(outer * ids.len() * inner);
    for o in 0..outer {
        for &j in &ids {
            flat.extend((0..inner).map(|k| (o * len + j) * inner + k));
        }
    }
    let mut shape = s[..ax].to_vec();
    shape.extend_from_slice(idx.shape());
    shape.extend_from_slice(&s[ax + 1..]);
    Ok(gather_flat(data, &flat, shape)?)
}
