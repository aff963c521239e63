//! `Softmax` and `LogSoftmax` over one axis (before opset 13, ONNX
//! flattens the axes from `axis` on: only the last axis is supported there).

use std::sync::Arc;

use super::super::context::{skip, Ctx, OnnxNode, Skip};
use super::Build;
use crate::ops::softmax::{LogSoftmax, Softmax};
use crate::ops::Op;

pub(super) static OPS: &[(&str, Build)] = &[("Softmax", softmax), ("LogSoftmax", softmax)];

fn softmax(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    n.arity(1, 1)?;
    let rank = cx.type_of(&n.ins[0])?.rank() as i64;
    let axis = n.a.i("axis", if cx.opset >= 13 { -1 } else { 1 });
    let last = axis == -1 || axis == rank - 1;
    if cx.opset < 13 && !last {
        return Err(skip(format!(
            "opset {} {} over the flattened axes {axis}.. is not supported (only the last axis)",
            cx.opset, n.op_type
        )));
    }
    let op: Arc<dyn Op> = if n.op_type == "Softmax" {
        Arc::new(Softmax { axis })
    } else {
        Arc::new(LogSoftmax { axis })
    };
    cx.emit_node(n, op)
}
