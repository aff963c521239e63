//! Unary elementwise ops: one ONNX op type each, every one built by
//! [`unary`] (the only place that constructs a unary op).

use std::sync::Arc;

use super::super::context::{skip, Ctx, OnnxNode, Skip};
use super::Build;
use crate::ops::activation::{Activation, Unary};
use crate::ops::elementwise::{PointKind, Pointwise};
use crate::ops::Op;

pub(super) static OPS: &[(&str, Build)] = &[
    ("Relu", |cx, n| unary(cx, n, Kind::A(Activation::Relu))),
    ("Sigmoid", |cx, n| unary(cx, n, Kind::A(Activation::Sigmoid))),
    ("Tanh", |cx, n| unary(cx, n, Kind::A(Activation::Tanh))),
    ("Gelu", gelu),
    ("Erf", |cx, n| unary(cx, n, Kind::P(PointKind::Erf))),
    ("LeakyRelu", |cx, n| {
        let alpha = n.a.f("alpha", 0.01);
        unary(cx, n, Kind::P(PointKind::LeakyRelu(alpha)))
    }),
    ("Neg", |cx, n| unary(cx, n, Kind::P(PointKind::Neg))),
    ("Abs", |cx, n| unary(cx, n, Kind::P(PointKind::Abs))),
    ("Exp", |cx, n| unary(cx, n, Kind::P(PointKind::Exp))),
    ("Log", |cx, n| unary(cx, n, Kind::P(PointKind::Log))),
    ("Sqrt", |cx, n| unary(cx, n, Kind::P(PointKind::Sqrt))),
    ("Reciprocal", |cx, n| unary(cx, n, Kind::P(PointKind::Reciprocal))),
];

/// Which unary op: an activation or a pointwise function.
enum Kind {
    A(Activation),
    P(PointKind),
}

/// The unary op `kind` over the node's one input.
fn unary(cx: &mut Ctx<'_>, n: &OnnxNode<'_>, kind: Kind) -> Result<(), Skip> {
    n.arity(1, 1)?;
    let op: Arc<dyn Op> = match kind {
        Kind::A(kind) => Arc::new(Unary { kind }),
        Kind::P(kind) => Arc::new(Pointwise { kind }),
    };
    cx.emit_node(n, op)
}

/// `approximate = none` is the exact GELU, `tanh` its tanh approximation.
fn gelu(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    let kind = match n.a.s("approximate").as_deref() {
        None | Some("none") => Activation::Gelu,
        Some("tanh") => Activation::GeluTanh,
        Some(o) => return Err(skip(format!("approximate = `{o}` is not none or tanh"))),
    };
    unary(cx, n, Kind::A(kind))
}
