//! Elementwise kernels (`shaders/elementwise.wgsl`): every unary kind, the
//! broadcasting binary ops, Transpose as a strided copy; Softmax and
//! LogSoftmax (`shaders/softmax.wgsl`); and the ops that need no kernel
//! (Reshape, Flatten, Squeeze, Unsqueeze: the output aliases the input).
//! Mirrors `src/ops/{unary,binary,softmax,layout,shape}.rs`.
//!
//! `Div` runs in `elementwise.wgsl::binary` like Add; WGSL only promises
//! division to 2.5 ULP, so Div is validated to rounding, not bit-exact.

use crate::error::Error;
use crate::ops::binary::{broadcast_shapes, Binary};
use crate::ops::movement::Transpose;
use crate::ops::normalize_axis;
use crate::ops::softmax::{LogSoftmax, Softmax};
use crate::ops::unary::Unary;
use crate::ops::view::Axes;
use crate::ops::view::{Flatten, Reshape};
use crate::tensor::{numel, strides};

use super::super::context::PipelineKey;
use super::super::shaders::ShaderId;
use super::params::{words, ElementwiseParams, SoftmaxParams};
use super::{codes, constants, unary_constants, Bind, DispatchSpec, KernelDef, Node, NodeKernel};

/// This family's ops.
pub(super) static KERNELS: &[KernelDef] = &[
    KernelDef::any_dtype("Reshape", |a| a.is::<Reshape>(), alias),
    KernelDef::any_dtype("Flatten", |a| a.is::<Flatten>(), alias),
    KernelDef::any_dtype("Squeeze/Unsqueeze", |a| a.is::<Axes>(), alias),
    KernelDef::f32("Unary", |a| a.is::<Unary>(), unary),
    KernelDef::f32("Binary", |a| a.is::<Binary>(), binary),
    KernelDef::f32("Transpose", |a| a.is::<Transpose>(), transpose),
    KernelDef::f32("Softmax", |a| a.is::<Softmax>(), softmax),
    KernelDef::f32("LogSoftmax", |a| a.is::<LogSoftmax>(), softmax),
];

/// Rows at most this long take `softmax.wgsl::softmax_rows`.
const SOFTMAX_SHORT_ROW: usize = 32;

fn alias(_: &Node) -> Result<NodeKernel, Error> {
    Ok(NodeKernel::Alias)
}

/// One dispatch of `elementwise.wgsl` over `params.n` outputs.
fn elementwise(
    node: &Node,
    entry: &'static str,
    consts: &[(&'static str, f64)],
    params: &ElementwiseParams,
    binds: Vec<Bind>,
) -> Result<NodeKernel, Error> {
    let groups = node.elements(params.n as usize)?;
    Ok(NodeKernel::Dispatch(DispatchSpec {
        key: PipelineKey {
            shader: ShaderId::Elementwise,
            entry,
            constants: constants(consts),
            inputs: binds.len(),
        },
        params: words(params),
        groups,
        binds,
    }))
}

fn unary(node: &Node) -> Result<NodeKernel, Error> {
    let u: &Unary = node.typed()?;
    let params = ElementwiseParams {
        n: numel(node.inputs[0].1) as u32,
        ..Default::default()
    };
    elementwise(
        node,
        "unary",
        &unary_constants(Some(u.kind)),
        &params,
        vec![Bind::Input(0)],
    )
}

fn rank_limit(node: &Node, rank: usize) -> Result<(), Error> {
    if rank > 8 {
        return Err(node.unsupported(format!("f32 of rank {rank} (the kernel takes rank <= 8)")));
    }
    Ok(())
}

fn transpose(node: &Node) -> Result<NodeKernel, Error> {
    let t: &Transpose = node.typed()?;
    let shape = node.inputs[0].1;
    let rank = shape.len();
    let perm: Vec<usize> = if t.perm.is_empty() {
        (0..rank).rev().collect()
    } else {
        t.perm.iter().map(|&p| usize::try_from(p).unwrap_or(rank)).collect()
    };
    let mut sorted = perm.clone();
    sorted.sort_unstable();
    if sorted != (0..rank).collect::<Vec<_>>() {
        return Err(node.unsupported(format!("f32 (perm {:?} for rank {rank})", t.perm)));
    }
    rank_limit(node, rank)?;
    let st = strides(shape);
    let mut params = ElementwiseParams {
        n: numel(shape) as u32,
        rank: rank as u32,
        ..Default::default()
    };
    for (d, &p) in perm.iter().enumerate() {
        params.shape[d] = shape[p] as u32;
        params.a_strides[d] = st[p] as u32;
    }
    elementwise(node, "gather", &[], &params, vec![Bind::Input(0)])
}

/// Element strides of an operand of shape `s` in output coordinates of
/// rank `rank` (0 along a broadcast axis).
fn broadcast_strides(s: &[usize], rank: usize) -> Vec<u32> {
    let st = strides(s);
    let lead = rank - s.len();
    (0..rank)
        .map(|d| {
            if d < lead || s[d - lead] == 1 {
                0
            } else {
                st[d - lead] as u32
            }
        })
        .collect()
}

fn binary(node: &Node) -> Result<NodeKernel, Error> {
    let b: &Binary = node.typed()?;
    let (sa, sb) = (node.inputs[0].1, node.inputs[1].1);
    let out = broadcast_shapes(sa, sb).map_err(|e| node.unsupported(format!("f32 ({e})")))?;
    let rank = out.len();
    rank_limit(node, rank)?;
    let mut params = ElementwiseParams {
        n: numel(&out) as u32,
        rank: rank as u32,
        ..Default::default()
    };
    let (ast, bst) = (broadcast_strides(sa, rank), broadcast_strides(sb, rank));
    for d in 0..rank {
        params.shape[d] = out[d] as u32;
        params.a_strides[d] = ast[d];
        params.b_strides[d] = bst[d];
    }
    let same = if sa == sb { 1.0 } else { 0.0 };
    let consts = [("OP", codes::binary(b.kind).0 as f64), ("SAME_SHAPE", same)];
    elementwise(node, "binary", &consts, &params, vec![Bind::Input(0), Bind::Input(1)])
}

fn softmax(node: &Node) -> Result<NodeKernel, Error> {
    let (axis, log) = match node.typed::<Softmax>() {
        Ok(s) => (s.axis, false),
        Err(_) => (node.typed::<LogSoftmax>()?.axis, true),
    };
    let shape = node.inputs[0].1;
    let (outer, len, inner) = if shape.is_empty() {
        (1, 1, 1)
    } else {
        let a = normalize_axis(axis, shape.len()).map_err(|e| node.unsupported(format!("f32 ({e})")))?;
        (
            shape[..a].iter().product::<usize>(),
            shape[a],
            shape[a + 1..].iter().product::<usize>(),
        )
    };
    let rows = outer * inner;
    // Short rows: one invocation per row, no barriers; long rows: one
    // workgroup per row with a shared-memory reduction.
    let (entry, workgroups) = if len <= SOFTMAX_SHORT_ROW {
        ("softmax_rows", rows.div_ceil(64))
    } else {
        ("softmax", rows)
    };
    let groups = node.grid(workgroups, "f32 (too many rows)")?;
    Ok(NodeKernel::Dispatch(DispatchSpec {
        key: PipelineKey {
            shader: ShaderId::Softmax,
            entry,
            constants: constants(&[("LOG", if log { 1.0 } else { 0.0 })]),
            inputs: 1,
        },
        params: words(&SoftmaxParams {
            outer: outer as u32,
            len: len as u32,
            inner: inner as u32,
            rows: rows as u32,
        }),
        groups,
        binds: vec![Bind::Input(0)],
    }))
}
