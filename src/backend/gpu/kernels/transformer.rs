//! Kernels for sentence-embedding transformers: the embedding
//! lookup `Gather`, fused multi-head `Attention` (`shaders/attention.wgsl`),
//! `MaskedMeanPool` and `L2Normalize` (`shaders/embedding.wgsl`). Mirrors
//! `src/ops/{movement,attention,pool,l2norm}.rs`.

use crate::error::Error;
use crate::ops::attention::Attention;
use crate::ops::l2norm::L2Normalize;
use crate::ops::movement::Gather;
use crate::ops::normalize_axis;
use crate::ops::pool::MaskedMeanPool;
use crate::tensor::{numel, DType};

use super::super::context::PipelineKey;
use super::super::shaders::ShaderId;
use super::params::{words, AttentionParams, EmbeddingParams};
use super::{constants, Bind, DispatchSpec, KernelDef, Node, NodeKernel};

/// The longest key sequence `attention.wgsl` takes (its scores live in shared memory).
pub(crate) const ATTENTION_MAX_SK: usize = 1024;
/// The widest head `attention.wgsl` takes.
pub(crate) const ATTENTION_MAX_HD: usize = 256;

/// This family's ops. `Gather` runs with f32 data and i64 or i32 indices.
pub(super) static KERNELS: &[KernelDef] = &[
    KernelDef::any_dtype("Gather", |a| a.is::<Gather>(), gather),
    KernelDef::f32("Attention", |a| a.is::<Attention>(), attention),
    KernelDef::f32("MaskedMeanPool", |a| a.is::<MaskedMeanPool>(), masked_mean_pool),
    KernelDef::f32("L2Normalize", |a| a.is::<L2Normalize>(), l2_normalize),
];

/// `embedding.wgsl`'s params: `n` invocations, `a`, `b`, `c` as the entry
/// point reads them, and an epsilon's bits.
fn embedding(n: usize, a: usize, b: usize, c: usize, eps_bits: u32) -> Vec<u32> {
    words(&EmbeddingParams {
        n: n as u32,
        a: a as u32,
        b: b as u32,
        c: c as u32,
        eps_bits,
        ..Default::default()
    })
}

/// An error unless the node has at least `n` inputs.
fn arity(node: &Node, n: usize) -> Result<(), Error> {
    if node.inputs.len() < n {
        return Err(node.unsupported(format!("{} inputs (needs {n})", node.inputs.len())));
    }
    Ok(())
}

fn dispatch(
    shader: ShaderId,
    entry: &'static str,
    consts: &[(&'static str, f64)],
    params: Vec<u32>,
    groups: [u32; 3],
    binds: Vec<Bind>,
) -> NodeKernel {
    NodeKernel::Dispatch(DispatchSpec {
        key: PipelineKey {
            shader,
            entry,
            constants: constants(consts),
            inputs: binds.len(),
        },
        params,
        groups,
        binds,
    })
}

/// An error unless input 0 (the data) is f32.
fn f32_first(node: &Node) -> Result<(), Error> {
    match node.inputs.first() {
        Some((dt, _)) if *dt != DType::F32 => Err(node.unsupported(format!("{dt} (input 0); this kernel takes f32"))),
        _ => Ok(()),
    }
}

fn gather(node: &Node) -> Result<NodeKernel, Error> {
    let g: &Gather = node.typed()?;
    arity(node, 2)?;
    f32_first(node)?;
    let (data, (idt, idx)) = (node.inputs[0].1, node.inputs[1]);
    let idx64 = match idt {
        DType::I64 => true,
        DType::I32 => false,
        other => return Err(node.unsupported(format!("{other} indices (the kernel takes i64 or i32)"))),
    };
    let a = normalize_axis(g.axis, data.len()).map_err(|e| node.unsupported(format!("f32 ({e})")))?;
    let (len, inner) = (data[a], data[a + 1..].iter().product::<usize>());
    let n = data[..a].iter().product::<usize>() * numel(idx) * inner;
    let params = embedding(n, inner, numel(idx), len, 0);
    Ok(dispatch(
        ShaderId::Embedding,
        "gather",
        &[("IDX64", if idx64 { 1.0 } else { 0.0 })],
        params,
        node.elements(n)?,
        vec![Bind::Input(0), Bind::Input(1)],
    ))
}

fn attention(node: &Node) -> Result<NodeKernel, Error> {
    let at: &Attention = node.typed()?;
    let shapes: Vec<&[usize]> = node.inputs.iter().map(|(_, s)| *s).collect();
    let d = at.dims(&shapes).map_err(|e| node.unsupported(format!("f32 ({e})")))?;
    if d.sk > ATTENTION_MAX_SK || d.head_dim > ATTENTION_MAX_HD {
        return Err(node.unsupported(format!(
            "f32 with {} keys of head width {} (the kernel takes <= {ATTENTION_MAX_SK} keys, width <= {ATTENTION_MAX_HD})",
            d.sk, d.head_dim
        )));
    }
    let rows = d.batch * d.heads * d.sq;
    let groups = node.grid(rows, "f32 (too many rows)")?;
    let params = words(&AttentionParams {
        batch: d.batch as u32,
        sq: d.sq as u32,
        sk: d.sk as u32,
        heads: d.heads as u32,
        head_dim: d.head_dim as u32,
        scale_bits: at.scale_for(d.head_dim).to_bits(),
        rows: rows as u32,
        pad0: 0,
    });
    let has_mask = node.inputs.len() == 4;
    Ok(dispatch(
        ShaderId::Attention,
        "attention",
        &[("HAS_MASK", if has_mask { 1.0 } else { 0.0 })],
        params,
        groups,
        vec![
            Bind::Input(0),
            Bind::Input(1),
            Bind::Input(2),
            if has_mask { Bind::Input(3) } else { Bind::Zeros },
        ],
    ))
}

fn masked_mean_pool(node: &Node) -> Result<NodeKernel, Error> {
    arity(node, 2)?;
    let (x, m) = (node.inputs[0].1, node.inputs[1].1);
    if x.len() != 3 || m != [x[0], x[1]] {
        return Err(node.unsupported("f32 with these shapes"));
    }
    let n = x[0] * x[2];
    let params = embedding(n, x[1], x[2], 0, 0);
    Ok(dispatch(
        ShaderId::Embedding,
        "masked_mean_pool",
        &[],
        params,
        node.elements(n)?,
        vec![Bind::Input(0), Bind::Input(1)],
    ))
}

fn l2_normalize(node: &Node) -> Result<NodeKernel, Error> {
    let l2: &L2Normalize = node.typed()?;
    arity(node, 1)?;
    let s = node.inputs[0].1;
    let (len, inner) = if s.is_empty() {
        (1, 1)
    } else {
        let a = normalize_axis(l2.axis, s.len()).map_err(|e| node.unsupported(format!("f32 ({e})")))?;
        (s[a], s[a + 1..].iter().product::<usize>())
    };
    let rows = numel(s).checked_div(len).unwrap_or(0);
    let params = embedding(rows, len, inner, 0, l2.epsilon.to_bits());
    Ok(dispatch(
        ShaderId::Embedding,
        "l2normalize",
        &[],
        params,
        node.elements(rows)?,
        vec![Bind::Input(0), Bind::Zeros],
    ))
}
