//! Unary elementwise ops: one ONNX op type each, every one built by
//! [`unary`] (the only place that constructs a unary op).

use std::sync::Arc;

use super::super::context::{skip, Ctx, OnnxNode, Skip};
use super::Build;
use crate::ops::unary::{Unary, UnaryKind};

pub(super) static OPS: &[(&str, Build)] = &[
    ("Relu", |cx, n| unary(cx, n, UnaryKind::Relu)),
    ("Sigmoid", |cx, n| unary(cx, n, UnaryKind::Sigmoid)),
    ("Tanh", |cx, n| unary(cx, n, UnaryKind::Tanh)),
    ("Gelu", gelu),
    ("Erf", |cx, n| unary(cx, n, UnaryKind::Erf)),
    ("LeakyRelu", |cx, n| {
        let alpha = n.a.f("alpha", 0.01);
        unary(cx, n, UnaryKind::LeakyRelu(alpha))
    }),
    ("Neg", |cx, n| unary(cx, n, UnaryKind::Neg)),
    ("Abs", |cx, n| unary(cx, n, UnaryKind::Abs)),
    ("Exp", |cx, n| unary(cx, n, UnaryKind::Exp)),
    ("Log", |cx, n| unary(cx, n, UnaryKind::Log)),
    ("Sqrt", |cx, n| unary(cx, n, UnaryKind::Sqrt)),
    ("Reciprocal", |cx, n| unary(cx, n, UnaryKind::Reciprocal)),
    ("HardSwish", |cx, n| unary(cx, n, UnaryKind::HardSwish)),
    ("Floor", |cx, n| unary(cx, n, UnaryKind::Floor)),
    ("Sign", |cx, n| unary(cx, n, UnaryKind::Sign)),
    ("Round", |cx, n| unary(cx, n, UnaryKind::Round)),
];

/// The unary op `kind` over the node's one input.
fn unary(cx: &mut Ctx<'_>, n: &OnnxNode<'_>, kind: UnaryKind) -> Result<(), Skip> {
    n.arity(1, 1)?;
    cx.emit_node(n, Arc::new(Unary { kind }))
}

/// `approximate = none` is the exact GELU, `tanh` its tanh approximation.
fn gelu(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    let kind = match n.a.s("approximate").as_deref() {
        None | Some("none") => UnaryKind::Gelu,
        Some("tanh") => UnaryKind::GeluTanh,
        Some(o) => return Err(skip(format!("approximate = `{o}` is not none or tanh"))),
    };
    unary(cx, n, kind)
}
