//! Matrix products: Linear, MatMul and Gemm. Linear, MatMul and the Gemm
//! forms with alpha = beta = 1, transA = 0 and C a row of N (or absent) run
//! in `shaders/matmul.wgsl` (blocked, tiled, GEMV) or `matmul_vec4.wgsl`
//! (aligned shapes) with a bias and any unary op in the epilogue; every
//! other Gemm runs in `shaders/gemm.wgsl`. Mirrors
//! `src/ops/{linear,matmul,gemm}.rs`.

use crate::error::Error;
use crate::ops::binary::broadcast_shapes;
use crate::ops::gemm::Gemm;
use crate::ops::linear::Linear;
use crate::ops::matmul::MatMul;
use crate::ops::unary::UnaryKind;
use crate::tensor::{numel, strides};

use super::super::context::PipelineKey;
use super::super::shaders::ShaderId;
use super::params::{words, GemmParams, MatmulParams};
use super::{constants, unary_constants, Bind, DispatchSpec, KernelDef, MatmulKernel, Node, NodeKernel};

/// This family's ops.
pub(super) static KERNELS: &[KernelDef] = &[
    KernelDef::f32("Linear", |a| a.is::<Linear>(), linear).fusing(),
    KernelDef::f32("MatMul", |a| a.is::<MatMul>(), matmul).fusing(),
    KernelDef::f32("Gemm", |a| a.is::<Gemm>(), gemm),
];

/// Columns per workgroup of `matmul_vec4.wgsl` (8 invocations × 16).
const VEC4_TN: usize = 128;
/// Rows per workgroup of `matmul_vec4.wgsl` (8 invocations × 8).
const VEC4_ROWS: usize = 64;

/// One product as the matmul kernels see it: `[batch] [m, k] · [k, n]`
/// (B transposed when `trans_b`), a bias row, a unary op in the epilogue.
struct Product {
    m: usize,
    n: usize,
    k: usize,
    trans_b: bool,
    bias: bool,
    act: Option<UnaryKind>,
    batch: Vec<usize>,
    a_strides: Vec<u32>,
    b_strides: Vec<u32>,
}

impl Product {
    fn plain(m: usize, n: usize, k: usize, trans_b: bool, bias: bool, act: Option<UnaryKind>) -> Self {
        Product {
            m,
            n,
            k,
            trans_b,
            bias,
            act,
            batch: vec![],
            a_strides: vec![],
            b_strides: vec![],
        }
    }
}

fn linear(node: &Node) -> Result<NodeKernel, Error> {
    let (x, w) = (node.inputs[0].1, node.inputs[1].1);
    if x.is_empty() || w.len() != 2 {
        return Err(node.unsupported("f32 with these shapes"));
    }
    let k = x[x.len() - 1];
    let m = numel(x).checked_div(k).unwrap_or(0);
    let p = Product::plain(m, w[0], k, true, node.inputs.len() == 3, node.fused);
    product(node, &p)
}

fn gemm(node: &Node) -> Result<NodeKernel, Error> {
    let g: &Gemm = node.typed()?;
    let (a, b) = (node.inputs[0].1, node.inputs[1].1);
    if a.len() != 2 || b.len() != 2 {
        return Err(node.unsupported("f32 with these shapes"));
    }
    let n = if g.trans_b { b[0] } else { b[1] };
    let c = node.inputs.get(2).map(|(_, c)| *c);
    let c_is_row = c.is_none_or(|c| numel(c) == n && c.last().copied().unwrap_or(1) == n);
    if g.alpha == 1.0 && !g.trans_a && c_is_row && (c.is_none() || g.beta == 1.0) {
        let p = Product::plain(a[0], n, a[1], g.trans_b, c.is_some(), node.fused);
        return product(node, &p);
    }
    general_gemm(node, g)
}

fn matmul(node: &Node) -> Result<NodeKernel, Error> {
    let (a, b) = (node.inputs[0].1, node.inputs[1].1);
    if a.is_empty() || b.is_empty() {
        return Err(node.unsupported("f32 with these shapes"));
    }
    let a2: Vec<usize> = if a.len() == 1 { vec![1, a[0]] } else { a.to_vec() };
    let b2: Vec<usize> = if b.len() == 1 { vec![b[0], 1] } else { b.to_vec() };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let n = b2[b2.len() - 1];
    let (ab, bb) = (&a2[..a2.len() - 2], &b2[..b2.len() - 2]);
    let batch = broadcast_shapes(ab, bb).map_err(|e| node.unsupported(format!("f32 ({e})")))?;
    let mut p = Product::plain(m, n, k, false, false, node.fused);
    if numel(bb) == 1 {
        // One shared right-hand side: fold the batch into the rows.
        p.m = numel(&batch) * m;
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
        p.a_strides = bstrides(ab, m * k);
        p.b_strides = bstrides(bb, k * n);
        p.batch = batch;
    }
    product(node, &p)
}

/// The shader, entry point and grid for a product on this adapter.
fn pick(p: &Product, matmul: MatmulKernel, software: bool) -> (ShaderId, &'static str, [usize; 3]) {
    let batches = numel(&p.batch);
    let aligned = p.k.is_multiple_of(4) && (p.trans_b || p.n.is_multiple_of(4));
    if p.m < 4 {
        return (ShaderId::Matmul, "gemv", [p.n.div_ceil(64), p.m, batches]);
    }
    let tiled = match matmul {
        MatmulKernel::Auto => !software && p.m >= 64 && p.n >= 64,
        MatmulKernel::Blocked => false,
        MatmulKernel::Tiled => true,
    };
    if tiled {
        (ShaderId::Matmul, "tiled", [p.n.div_ceil(64), p.m.div_ceil(64), batches])
    } else if aligned {
        let entry = if p.trans_b { "nt" } else { "nn" };
        (
            ShaderId::MatmulVec4,
            entry,
            [p.n.div_ceil(VEC4_TN), p.m.div_ceil(VEC4_ROWS), batches],
        )
    } else {
        (
            ShaderId::Matmul,
            "blocked",
            [p.n.div_ceil(32), p.m.div_ceil(32), batches],
        )
    }
}

fn product(node: &Node, p: &Product) -> Result<NodeKernel, Error> {
    let caps = node.caps;
    if p.batch.len() > 4 {
        return Err(node.unsupported(format!("f32 with {} batch axes (the kernel takes <= 4)", p.batch.len())));
    }
    // Unused batch axes: size 1, stride 1.
    let quad = |v: &[u32]| {
        let mut q = [1u32; 4];
        q[..v.len()].copy_from_slice(v);
        q
    };
    let params = MatmulParams {
        m: p.m as u32,
        n: p.n as u32,
        k: p.k as u32,
        batch_rank: p.batch.len() as u32,
        batch_shape: quad(&p.batch.iter().map(|&d| d as u32).collect::<Vec<_>>()),
        a_batch_strides: quad(&p.a_strides),
        b_batch_strides: quad(&p.b_strides),
    };
    let (shader, entry, groups) = pick(p, caps.matmul, caps.software);
    if groups.iter().any(|&d| d > caps.max_workgroups as usize) {
        return Err(node.unsupported(format!(
            "f32 [{}x{}x{}, {} batches] (needs a {groups:?} grid; the adapter allows {} per dimension)",
            p.m,
            p.k,
            p.n,
            numel(&p.batch),
            caps.max_workgroups
        )));
    }
    let has_bias = if p.bias { 1.0 } else { 0.0 };
    let mut list = if shader == ShaderId::MatmulVec4 {
        vec![("HAS_BIAS", has_bias)]
    } else {
        vec![("TRANS_B", if p.trans_b { 1.0 } else { 0.0 }), ("HAS_BIAS", has_bias)]
    };
    list.extend(unary_constants(p.act));
    Ok(NodeKernel::Dispatch(DispatchSpec {
        key: PipelineKey {
            shader,
            entry,
            constants: constants(&list),
            inputs: 3,
        },
        params: words(&params),
        groups: [groups[0] as u32, groups[1] as u32, groups[2] as u32],
        binds: vec![
            Bind::Input(0),
            Bind::Input(1),
            if p.bias { Bind::Input(2) } else { Bind::Zeros },
        ],
    }))
}

/// Any other Gemm (alpha, beta, transA, C broadcast from `[M, N]`) in `gemm.wgsl`.
fn general_gemm(node: &Node, g: &Gemm) -> Result<NodeKernel, Error> {
    let (a, b) = (node.inputs[0].1, node.inputs[1].1);
    let (m, k) = if g.trans_a { (a[1], a[0]) } else { (a[0], a[1]) };
    let n = if g.trans_b { b[0] } else { b[1] };
    let c = node.inputs.get(2).map(|(_, c)| *c);
    // C's strides along (i, j): 0 along a broadcast axis.
    let (c_i, c_j) = match c {
        None => (0, 0),
        Some(c) => {
            let padded: Vec<usize> = std::iter::repeat_n(1, 2usize.saturating_sub(c.len()))
                .chain(c.iter().copied())
                .collect();
            if padded.len() != 2 || (padded[0] != 1 && padded[0] != m) || (padded[1] != 1 && padded[1] != n) {
                return Err(node.unsupported(format!("f32 (C {c:?} does not broadcast to [{m}, {n}])")));
            }
            (if padded[0] == 1 { 0 } else { padded[1] }, usize::from(padded[1] != 1))
        }
    };
    let (a_i, a_k) = if g.trans_a { (1, m) } else { (k, 1) };
    let (b_k, b_j) = if g.trans_b { (1, k) } else { (n, 1) };
    let groups = [n.div_ceil(32), m.div_ceil(32)];
    if groups.iter().any(|&d| d > node.caps.max_workgroups as usize) {
        return Err(node.unsupported(format!("f32 [{m}x{k}x{n}] (grid too large)")));
    }
    let params = GemmParams {
        m: m as u32,
        n: n as u32,
        k: k as u32,
        has_c: u32::from(c.is_some()),
        a_i: a_i as u32,
        a_k: a_k as u32,
        b_k: b_k as u32,
        b_j: b_j as u32,
        c_i: c_i as u32,
        c_j: c_j as u32,
        alpha_bits: g.alpha.to_bits(),
        beta_bits: g.beta.to_bits(),
    };
    let c_bind = if c.is_some() { Bind::Input(2) } else { Bind::Zeros };
    Ok(NodeKernel::Dispatch(DispatchSpec {
        key: PipelineKey {
            shader: ShaderId::Gemm,
            entry: "gemm",
            constants: vec![],
            inputs: 3,
        },
        params: words(&params),
        groups: [groups[0] as u32, groups[1] as u32, 1],
        binds: vec![Bind::Input(0), Bind::Input(1), c_bind],
    }))
}
