//! `Conv` (2-D, and 1-D as 2-D over a height of 1), and the 1-D-as-2-D
//! rewrite it shares with the pooling ops.

use std::sync::Arc;

use super::super::context::{skip, Ctx, OnnxNode, Skip};
use super::Build;
use crate::ops::view::Axes;
use crate::ops::{self, Op};

pub(super) static OPS: &[(&str, Build)] = &[("Conv", conv)];

fn conv(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    n.arity(2, 3)?;
    if cx.type_of(&n.ins[0])?.rank() == 3 {
        return window_1d(cx, n, &ops::conv::CONV, std::slice::from_ref(n.out0()?), true);
    }
    cx.emit_node(n, (ops::conv::CONV.build)(&n.a.json())?)
}

/// The window attributes of a 1-D op for the 2-D op: `kernel_shape`,
/// `strides` and `dilations` gain a leading 1, pads `[b, e]` become
/// `[0, b, 0, e]`.
fn attrs_2d(n: &OnnxNode<'_>) -> Result<ops::Attrs, Skip> {
    let mut attrs = n.a.json();
    for key in ["kernel_shape", "strides", "dilations"] {
        if let Some(v) = n.a.ints(key) {
            if v.len() != 1 {
                return Err(skip(format!("{key} {v:?} does not match a 1-D input")));
            }
            attrs.insert(key.into(), vec![1, v[0]].into());
        }
    }
    if let Some(p) = n.a.ints("pads") {
        if p.len() != 2 {
            return Err(skip(format!("pads {p:?} does not match a 1-D input")));
        }
        attrs.insert("pads".into(), vec![0, p[0], 0, p[1]].into());
    }
    Ok(attrs)
}

/// A 1-D Conv or pool as the 2-D op over a height of 1: `x` (and a
/// Conv's weight, folded when constant) gain an axis 2, the window
/// attributes a leading 1, and the result loses axis 2 again.
pub(super) fn window_1d(
    cx: &mut Ctx<'_>,
    n: &OnnxNode<'_>,
    def: &ops::OpDef,
    outs: &[String],
    conv: bool,
) -> Result<(), Skip> {
    let op = (def.build)(&attrs_2d(n)?)?;
    let axes = |unsqueeze| -> Arc<dyn Op> {
        Arc::new(Axes {
            unsqueeze,
            axes: vec![2],
        })
    };
    let name = n.name;
    let mut ins2 = Vec::with_capacity(n.ins.len());
    for (i, v) in n.ins.iter().enumerate() {
        if i == 0 || (conv && i == 1) {
            let v2 = format!("{name}.{i}.as2d");
            let unsq = format!("{name}.unsqueeze{i}");
            cx.emit(&unsq, axes(true), std::slice::from_ref(v), std::slice::from_ref(&v2))?;
            ins2.push(v2);
        } else {
            ins2.push(v.clone());
        }
    }
    let y = outs.first().ok_or_else(|| skip("has no output"))?;
    let y2 = format!("{name}.as2d");
    cx.emit(name, op, &ins2, std::slice::from_ref(&y2))?;
    cx.emit(&format!("{name}.squeeze"), axes(false), &[y2], std::slice::from_ref(y))
}
