//! Pooling: `MaxPool` (with its optional `Indices` output in 2-D),
//! `AveragePool` (2-D, and 1-D as 2-D over a height of 1) and
//! `GlobalAveragePool`.

use std::sync::Arc;

use super::super::context::{skip, Ctx, OnnxNode, Skip};
use super::conv::window_1d;
use super::Build;
use crate::ops::{self, OpDef};

pub(super) static OPS: &[(&str, Build)] = &[
    ("MaxPool", |cx, n| pool(cx, n, &ops::pool::MAX_POOL)),
    ("AveragePool", |cx, n| pool(cx, n, &ops::pool::AVERAGE_POOL)),
    ("GlobalAveragePool", |cx, n| {
        cx.emit_node(n, Arc::new(ops::pool::GlobalAveragePool))
    }),
];

fn pool(cx: &mut Ctx<'_>, n: &OnnxNode<'_>, def: &OpDef) -> Result<(), Skip> {
    let outs1 = vec![n.outs.first().cloned().unwrap_or_default()];
    n.arity(1, 1)?;
    let indices = n.outs.get(1).is_some_and(|m| !m.is_empty());
    if cx.type_of(&n.ins[0])?.rank() == 3 {
        if indices {
            return Err(skip("the Indices output of a 1-D MaxPool is not supported"));
        }
        return window_1d(cx, n, def, &outs1, false);
    }
    if indices {
        let mut attrs = n.a.json();
        attrs.insert("outputs".into(), 2.into());
        return cx.emit(n.name, (def.build)(&attrs)?, &n.ins, &n.outs[..2]);
    }
    cx.emit(n.name, (def.build)(&n.a.json())?, &n.ins, &outs1)
}
