//! Kernel selection: for one node with concrete input shapes, which shader,
//! entry point, override constants, parameters and grid run it — or an
//! [`Error::Unsupported`] saying why the GPU cannot, so the planner places the
//! node on the CPU.

use crate::error::Error;
use crate::ops::activation::{Activation, Unary};
use crate::ops::binary::{broadcast_shapes, Binary, BinaryKind};
use crate::ops::elementwise::{LogSoftmax, PointKind, Pointwise};
use crate::ops::gemm::Gemm as GemmOp;
use crate::ops::linear::Linear;
use crate::ops::matmul::MatMul;
use crate::ops::movement::Transpose;
use crate::ops::softmax::Softmax;
use crate::ops::view::{Axes, Flatten, Reshape};
use crate::ops::{normalize_axis, Op};
use crate::tensor::{numel, strides, DType};

use super::context::PipelineKey;
use super::shaders::ShaderId;

mod cast;
mod cnn;
mod quant;
mod transformer;

pub(crate) use quant::packed_dot_available;

/// Which matmul kernel to use.
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum MatmulKernel {
    /// Register-blocked on software adapters, shared-memory tiles on hardware.
    #[default]
    Auto,
    /// Always a register-blocked kernel: `matmul_vec4.wgsl` (8x16 tiles,
    /// vec4 loads) where the shapes are aligned, else `matmul.wgsl::blocked`.
    Blocked,
    /// Always the shared-memory tiled kernel (`matmul.wgsl::tiled`).
    Tiled,
}

/// What the planner knows about the adapter.
#[derive(Clone, Debug)]
pub(crate) struct Caps {
    pub max_workgroups: u32,
    pub software: bool,
    pub matmul: MatmulKernel,
    pub backend: String,
    /// `SHADER_F16` is enabled on the device.
    pub f16: bool,
    /// `dot4I8Packed` exists (WGSL `packed_4x8_integer_dot_product`).
    pub packed_dot: bool,
    /// `SUBGROUP` is enabled and every subgroup has at least 8 invocations.
    pub subgroups: bool,
}

/// A buffer bound at binding `2 + i`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum Bind {
    /// The node's input `i`.
    Input(usize),
    /// A zero buffer standing in for an absent optional input.
    Zeros,
}

/// One dispatch of one pipeline.
#[derive(Clone, Debug)]
pub(crate) struct DispatchSpec {
    pub key: PipelineKey,
    pub params: Vec<u32>,
    pub groups: [u32; 3],
    pub binds: Vec<Bind>,
}

/// How a node runs on the GPU.
#[derive(Clone, Debug)]
pub(crate) enum NodeKernel {
    /// No work: the output is the input's buffer with another shape.
    Alias,
    /// One compute dispatch.
    Dispatch(DispatchSpec),
    /// A node with several outputs: one dispatch per output, the `i`-th
    /// writing output `i` (each binds the node's inputs as a single-output
    /// dispatch does).
    Multi(Vec<DispatchSpec>),
}

/// The `ACT` override code of an activation (see `shaders/activation.wgsl`).
pub(crate) fn act_code(a: Activation) -> u32 {
    match a {
        Activation::Relu => 1,
        Activation::Sigmoid => 2,
        Activation::Tanh => 3,
        Activation::Gelu => 4,
        Activation::GeluTanh => 5,
        Activation::Silu => 6,
    }
}

fn unsupported(op: &dyn Op, format: impl Into<String>, caps: &Caps) -> Error {
    Error::Unsupported {
        op: op.op_type().to_string(),
        format: format.into(),
        backend: caps.backend.clone(),
    }
}

fn constants(list: &[(&'static str, f64)]) -> Vec<(&'static str, u64)> {
    list.iter().map(|&(n, v)| (n, v.to_bits())).collect()
}

/// A 1-D count of workgroups laid out in x (and y when x would exceed the limit).
fn grid(groups: usize, max: u32) -> Option<[u32; 3]> {
    let max = max.max(1) as usize;
    if groups <= max {
        return Some([groups.max(1) as u32, 1, 1]);
    }
    let y = groups.div_ceil(max);
    (y <= max).then_some([max as u32, y as u32, 1])
}

/// True when the GPU backend has a kernel for this op (for f32 values; other
/// dtypes and formats fall back to the CPU). Reshape, Flatten, Squeeze and
/// Unsqueeze count: they need no kernel.
///
/// `Gemm` takes the matmul kernels for `alpha = beta = 1`, `transA = 0` (a
/// bias row `C` of N values, or none) and `gemm.wgsl` otherwise (see
/// `kernels/cnn.rs`, with Conv, pooling, normalisation and Concat).
///
/// `Div` runs in `elementwise.wgsl::binary` like Add; WGSL only promises
/// division to 2.5 ULP, so Div is validated to rounding, not bit-exact.
pub fn has_kernel(op: &dyn Op) -> bool {
    let any = op.as_any();
    any.is::<Reshape>()
        || any.is::<Flatten>()
        || any.is::<Axes>()
        || any.is::<Unary>()
        || any.is::<Pointwise>()
        || any.is::<Binary>()
        || any.is::<Softmax>()
        || any.is::<LogSoftmax>()
        || any.is::<Transpose>()
        || any
            .downcast_ref::<GemmOp>()
            .is_some_and(|g| g.alpha == 1.0 && g.beta == 1.0 && !g.trans_a)
        || any.is::<Linear>()
        || any.is::<MatMul>()
        || cnn::has_kernel(op)
        || cast::has_kernel(op)
        || transformer::has_kernel(op)
        || quant::has_kernel(op)
}

/// Picks the kernel for `op` on inputs of these dtypes and shapes. `fused`
/// is an activation to apply in the epilogue (only Linear and MatMul take one).
pub(crate) fn select(
    op: &dyn Op,
    inputs: &[(DType, &[usize])],
    fused: Option<Activation>,
    caps: &Caps,
) -> Result<NodeKernel, Error> {
    let any = op.as_any();
    if any.is::<Reshape>() || any.is::<Flatten>() || any.is::<Axes>() {
        return Ok(NodeKernel::Alias);
    }
    // Kernel families in their own files (`kernels/<family>.rs`) hook in
    // here, one line each, before the f32-only check below: they may take
    // packed weights (u8/i8/f16) or integer indices. Each returns
    // `Ok(None)` for ops that are not theirs.
    if let Some(k) = cnn::select(op, inputs, caps)? {
        return Ok(k);
    }
    if let Some(k) = cast::select(op, inputs, caps)? {
        return Ok(k);
    }
    if let Some(k) = transformer::select(op, inputs, caps)? {
        return Ok(k);
    }
    if let Some(k) = quant::select(op, inputs, fused, caps)? {
        return Ok(k);
    }
    if let Some((i, (dt, _))) = inputs.iter().enumerate().find(|(_, (dt, _))| *dt != DType::F32) {
        return Err(unsupported(op, format!("{dt} (input {i}); GPU kernels take f32"), caps));
    }
    if fused.is_some() && !(any.is::<Linear>() || any.is::<MatMul>()) {
        return Err(unsupported(op, "f32 with a fused activation", caps));
    }
    let max = caps.max_workgroups;
    let pointwise = any.downcast_ref::<Pointwise>().map(|p| match p.kind {
        PointKind::LeakyRelu(alpha) => (7.0, alpha as f64),
        PointKind::Erf => (8.0, 0.01),
        PointKind::Neg => (9.0, 0.01),
        PointKind::Abs => (10.0, 0.01),
        PointKind::Exp => (11.0, 0.01),
        PointKind::Log => (12.0, 0.01),
        PointKind::Sqrt => (13.0, 0.01),
        PointKind::Reciprocal => (14.0, 0.01),
    });
    let unary = any.downcast_ref::<Unary>().map(|u| (act_code(u.kind) as f64, 0.01));
    if let Some((act, alpha)) = unary.or(pointwise) {
        let n = numel(inputs[0].1);
        let groups = grid(n.div_ceil(256), max).ok_or_else(|| unsupported(op, "f32 (too many elements)", caps))?;
        let mut params = vec![0u32; 28];
        params[0] = n as u32;
        return Ok(NodeKernel::Dispatch(DispatchSpec {
            key: PipelineKey {
                shader: ShaderId::Elementwise,
                entry: "unary",
                constants: constants(&[("ACT", act), ("ALPHA", alpha)]),
                inputs: 1,
            },
            params,
            groups,
            binds: vec![Bind::Input(0)],
        }));
    }
    if let Some(t) = any.downcast_ref::<Transpose>() {
        let shape = inputs[0].1;
        let rank = shape.len();
        let perm: Vec<usize> = if t.perm.is_empty() {
            (0..rank).rev().collect()
        } else {
            t.perm.iter().map(|&p| usize::try_from(p).unwrap_or(rank)).collect()
        };
        let mut sorted = perm.clone();
        sorted.sort_unstable();
        if sorted != (0..rank).collect::<Vec<_>>() {
            return Err(unsupported(
                op,
                format!("f32 (perm {:?} for rank {rank})", t.perm),
                caps,
            ));
        }
        if rank > 8 {
            return Err(unsupported(
                op,
                format!("f32 of rank {rank} (the kernel takes rank <= 8)"),
                caps,
            ));
        }
        let n = numel(shape);
        let groups = grid(n.div_ceil(256), max).ok_or_else(|| unsupported(op, "f32 (too many elements)", caps))?;
        let st = strides(shape);
        let mut params = vec![0u32; 28];
        params[0] = n as u32;
        params[1] = rank as u32;
        for (d, &p) in perm.iter().enumerate() {
            params[4 + d] = shape[p] as u32;
            params[12 + d] = st[p] as u32;
        }
        return Ok(NodeKernel::Dispatch(DispatchSpec {
            key: PipelineKey {
                shader: ShaderId::Elementwise,
                entry: "gather",
                constants: vec![],
                inputs: 1,
            },
            params,
            groups,
            binds: vec![Bind::Input(0)],
        }));
    }
    let binary_op = any.downcast_ref::<Binary>().map(|b| match b.kind {
        BinaryKind::Add => 0.0,
        BinaryKind::Mul => 1.0,
        BinaryKind::Sub => 2.0,
        BinaryKind::Div => 3.0,
    });
    if let Some(op_code) = binary_op {
        let (sa, sb) = (inputs[0].1, inputs[1].1);
        let out = broadcast_shapes(sa, sb).map_err(|e| unsupported(op, format!("f32 ({e})"), caps))?;
        let rank = out.len();
        if rank > 8 {
            return Err(unsupported(
                op,
                format!("f32 of rank {rank} (the kernel takes rank <= 8)"),
                caps,
            ));
        }
        let n = numel(&out);
        let groups = grid(n.div_ceil(256), max).ok_or_else(|| unsupported(op, "f32 (too many elements)", caps))?;
        let mut params = vec![0u32; 28];
        params[0] = n as u32;
        params[1] = rank as u32;
        let bstrides = |s: &[usize]| -> Vec<u32> {
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
        };
        let (ast, bst) = (bstrides(sa), bstrides(sb));
        for d in 0..rank {
            params[4 + d] = out[d] as u32;
            params[12 + d] = ast[d];
            params[20 + d] = bst[d];
        }
        let same = sa == sb;
        return Ok(NodeKernel::Dispatch(DispatchSpec {
            key: PipelineKey {
                shader: ShaderId::Elementwise,
                entry: "binary",
                constants: constants(&[("OP", op_code), ("SAME_SHAPE", if same { 1.0 } else { 0.0 })]),
                inputs: 2,
            },
            params,
            groups,
            binds: vec![Bind::Input(0), Bind::Input(1)],
        }));
    }
    let softmax = any
        .downcast_ref::<Softmax>()
        .map(|s| (s.axis, false))
        .or_else(|| any.downcast_ref::<LogSoftmax>().map(|s| (s.axis, true)));
    if let Some((axis, log)) = softmax {
        let shape = inputs[0].1;
        let (outer, len, inner) = if shape.is_empty() {
            (1, 1, 1)
        } else {
            let a = normalize_axis(axis, shape.len()).map_err(|e| unsupported(op, format!("f32 ({e})"), caps))?;
            (
                shape[..a].iter().product::<usize>(),
                shape[a],
                shape[a + 1..].iter().product::<usize>(),
            )
        };
        let rows = outer * inner;
        // Short rows: one invocation per row, no barriers; long rows: one
        // workgroup per row with a shared-memory reduction.
        let short = len <= SOFTMAX_SHORT_ROW;
        let (entry, workgroups) = if short {
            ("softmax_rows", rows.div_ceil(64))
        } else {
            ("softmax", rows)
        };
        let groups = grid(workgroups, max).ok_or_else(|| unsupported(op, "f32 (too many rows)", caps))?;
        return Ok(NodeKernel::Dispatch(DispatchSpec {
            key: PipelineKey {
                shader: ShaderId::Softmax,
                entry,
                constants: constants(&[("LOG", if log { 1.0 } else { 0.0 })]),
                inputs: 1,
            },
            params: vec![outer as u32, len as u32, inner as u32, rows as u32],
            groups,
            binds: vec![Bind::Input(0)],
        }));
    }
    if any.is::<Linear>() {
        let (x, w) = (inputs[0].1, inputs[1].1);
        if x.is_empty() || w.len() != 2 {
            return Err(unsupported(op, "f32 with these shapes", caps));
        }
        let k = x[x.len() - 1];
        let m = numel(x).checked_div(k).unwrap_or(0);
        let n = w[0];
        let g = Gemm {
            m,
            n,
            k,
            trans_b: true,
            bias: inputs.len() == 3,
            act: fused,
            batch: vec![],
            a_strides: vec![],
            b_strides: vec![],
        };
        return gemm(op, &g, caps);
    }
    if let Some(op_g) = any.downcast_ref::<GemmOp>() {
        // The forms a fused bias covers: alpha = 1, A not transposed, and C
        // absent or a row of N added with beta = 1. Others fall back.
        let (a, b) = (inputs[0].1, inputs[1].1);
        if a.len() != 2 || b.len() != 2 {
            return Err(unsupported(op, "f32 with these shapes", caps));
        }
        let (m, k) = (a[0], a[1]);
        let n = if op_g.trans_b { b[0] } else { b[1] };
        let c_is_row = inputs
            .get(2)
            .is_none_or(|(_, c)| numel(c) == n && c.last().copied().unwrap_or(1) == n);
        if op_g.alpha != 1.0 || op_g.trans_a || !c_is_row || (inputs.len() == 3 && op_g.beta != 1.0) {
            return Err(unsupported(
                op,
                "f32 (only alpha = 1, transA = 0 and C a row of N with beta = 1 run on the GPU)",
                caps,
            ));
        }
        let g = Gemm {
            m,
            n,
            k,
            trans_b: op_g.trans_b,
            bias: inputs.len() == 3,
            act: fused,
            batch: vec![],
            a_strides: vec![],
            b_strides: vec![],
        };
        return gemm(op, &g, caps);
    }
    if any.is::<MatMul>() {
        let (a, b) = (inputs[0].1, inputs[1].1);
        if a.is_empty() || b.is_empty() {
            return Err(unsupported(op, "f32 with these shapes", caps));
        }
        let a2: Vec<usize> = if a.len() == 1 { vec![1, a[0]] } else { a.to_vec() };
        let b2: Vec<usize> = if b.len() == 1 { vec![b[0], 1] } else { b.to_vec() };
        let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
        let n = b2[b2.len() - 1];
        let (ab, bb) = (&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
        let batch = broadcast_shapes(ab, bb).map_err(|e| unsupported(op, format!("f32 ({e})"), caps))?;
        let mut g = Gemm {
            m,
            n,
            k,
            trans_b: false,
            bias: false,
            act: fused,
            batch: vec![],
            a_strides: vec![],
            b_strides: vec![],
        };
        if numel(bb) == 1 {
            // One shared right-hand side: fold the batch into the rows.
            g.m = numel(&batch) * m;
        } else {
            let rank = batch.len();
            let bstrides = |s: &[usize], mat: usize| -> Vec<u32> {
                let st = strides(s);
                let lead = rank - s.len();
                (0..rank)
                    .map(|d| {
                        if d < lead || s[d - lead] == 1 {
                            0
                        } else {
                            (st[d - lead] * mat) as u32
                        }
                    })
                    .collect()
            };
            g.a_strides = bstrides(ab, m * k);
            g.b_strides = bstrides(bb, k * n);
            g.batch = batch;
        }
        return gemm(op, &g, caps);
    }
    Err(unsupported(op, "f32 (no GPU kernel for this op)", caps))
}

/// Rows at most this long take `softmax.wgsl::softmax_rows`.
const SOFTMAX_SHORT_ROW: usize = 32;

/// Columns per workgroup of `matmul_vec4.wgsl` (8 invocations × 16).
const VEC4_TN: usize = 128;
/// Rows per workgroup of `matmul_vec4.wgsl` (8 invocations × 8).
const VEC4_ROWS: usize = 64;

struct Gemm {
    m: usize,
    n: usize,
    k: usize,
    trans_b: bool,
    bias: bool,
    act: Option<Activation>,
    batch: Vec<usize>,
    a_strides: Vec<u32>,
    b_strides: Vec<u32>,
}

fn gemm(op: &dyn Op, g: &Gemm, caps: &Caps) -> Result<NodeKernel, Error> {
    if g.batch.len() > 4 {
        return Err(unsupported(
            op,
            format!("f32 with {} batch axes (the kernel takes <= 4)", g.batch.len()),
            caps,
        ));
    }
    let batches = numel(&g.batch);
    let mut params = vec![g.m as u32, g.n as u32, g.k as u32, g.batch.len() as u32];
    let mut quad = |v: &[u32]| {
        let mut q = [1u32, 1, 1, 1];
        q[..v.len()].copy_from_slice(v);
        params.extend_from_slice(&q);
    };
    quad(&g.batch.iter().map(|&d| d as u32).collect::<Vec<_>>());
    quad(&g.a_strides);
    quad(&g.b_strides);
    let aligned = g.k.is_multiple_of(4) && (g.trans_b || g.n.is_multiple_of(4));
    let (shader, entry, groups) = if g.m < 4 {
        (ShaderId::Matmul, "gemv", [g.n.div_ceil(64), g.m, batches])
    } else {
        let tiled = match caps.matmul {
            MatmulKernel::Auto => !caps.software && g.m >= 64 && g.n >= 64,
            MatmulKernel::Blocked => false,
            MatmulKernel::Tiled => true,
        };
        if tiled {
            (ShaderId::Matmul, "tiled", [g.n.div_ceil(64), g.m.div_ceil(64), batches])
        } else if aligned {
            let entry = if g.trans_b { "nt" } else { "nn" };
            (
                ShaderId::MatmulVec4,
                entry,
                [g.n.div_ceil(VEC4_TN), g.m.div_ceil(VEC4_ROWS), batches],
            )
        } else {
            (
                ShaderId::Matmul,
                "blocked",
                [g.n.div_ceil(32), g.m.div_ceil(32), batches],
            )
        }
    };
    if groups.iter().any(|&d| d > caps.max_workgroups as usize) {
        return Err(unsupported(
            op,
            format!(
                "f32 [{}x{}x{}, {} batches] (needs a {groups:?} grid; the adapter allows {} per dimension)",
                g.m, g.k, g.n, batches, caps.max_workgroups
            ),
            caps,
        ));
    }
    let act = g.act.map(act_code).unwrap_or(0) as f64;
    let has_bias = if g.bias { 1.0 } else { 0.0 };
    let constants = if shader == ShaderId::MatmulVec4 {
        constants(&[("HAS_BIAS", has_bias), ("ACT", act)])
    } else {
        constants(&[
            ("TRANS_B", if g.trans_b { 1.0 } else { 0.0 }),
            ("HAS_BIAS", has_bias),
            ("ACT", act),
        ])
    };
    Ok(NodeKernel::Dispatch(DispatchSpec {
        key: PipelineKey {
            shader,
            entry,
            constants,
            inputs: 3,
        },
        params,
        groups: [groups[0] as u32, groups[1] as u32, groups[2] as u32],
        binds: vec![
            Bind::Input(0),
            Bind::Input(1),
            if g.bias { Bind::Input(2) } else { Bind::Zeros },
        ],
    }))
}
