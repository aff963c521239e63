//! Kernels for sentence-embedding transformers (issue #9): the embedding
//! lookup `Gather`, fused multi-head `Attention` (`shaders/attention.wgsl`),
//! `MaskedMeanPool` and `L2Normalize` (`shaders/embedding.wgsl`). Mirrors
//! `src/ops/{gather,attention,pooling,l2norm}.rs`.

use crate::error::Error;
use crate::ops::attention::Attention;
use crate::ops::l2norm::L2Normalize;
use crate::ops::movement::Gather;
use crate::ops::pool::MaskedMeanPool;
use crate::ops::{normalize_axis, Op};
use crate::tensor::{numel, DType};

use super::super::context::PipelineKey;
use super::super::shaders::ShaderId;
use super::{constants, grid, unsupported, Bind, Caps, DispatchSpec, NodeKernel};

/// The longest key sequence `attention.wgsl` takes (its scores live in shared memory).
pub(crate) const ATTENTION_MAX_SK: usize = 1024;
/// The widest head `attention.wgsl` takes.
pub(crate) const ATTENTION_MAX_HD: usize = 256;

/// True when this family has a kernel for `op`. `Gather` runs on the GPU
/// with f32 data and i64 or i32 indices.
pub(crate) fn has_kernel(op: &dyn Op) -> bool {
    let any = op.as_any();
    any.is::<Gather>() || any.is::<Attention>() || any.is::<MaskedMeanPool>() || any.is::<L2Normalize>()
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

/// The kernel for `op`, `Ok(None)` when the op is not this family's.
pub(crate) fn select(op: &dyn Op, inputs: &[(DType, &[usize])], caps: &Caps) -> Result<Option<NodeKernel>, Error> {
    if !has_kernel(op) {
        return Ok(None);
    }
    let any = op.as_any();
    let arity = |n: usize| -> Result<(), Error> {
        if inputs.len() < n {
            return Err(unsupported(op, format!("{} inputs (needs {n})", inputs.len()), caps));
        }
        Ok(())
    };
    let f32_only = |range: std::ops::Range<usize>| -> Result<(), Error> {
        match inputs
            .iter()
            .enumerate()
            .skip(range.start)
            .take(range.len())
            .find(|(_, (dt, _))| *dt != DType::F32)
        {
            Some((i, (dt, _))) => Err(unsupported(
                op,
                format!("{dt} (input {i}); this kernel takes f32"),
                caps,
            )),
            None => Ok(()),
        }
    };
    let elements = |n: usize| {
        grid(n.div_ceil(256), caps.max_workgroups).ok_or_else(|| unsupported(op, "f32 (too many elements)", caps))
    };
    if let Some(g) = any.downcast_ref::<Gather>() {
        arity(2)?;
        f32_only(0..1)?;
        let (data, (idt, idx)) = (inputs[0].1, inputs[1]);
        let idx64 = match idt {
            DType::I64 => true,
            DType::I32 => false,
            other => {
                return Err(unsupported(
                    op,
                    format!("{other} indices (the kernel takes i64 or i32)"),
                    caps,
                ))
            }
        };
        let a = normalize_axis(g.axis, data.len()).map_err(|e| unsupported(op, format!("f32 ({e})"), caps))?;
        let (len, inner) = (data[a], data[a + 1..].iter().product::<usize>());
        let n = data[..a].iter().product::<usize>() * numel(idx) * inner;
        let params = vec![n as u32, inner as u32, numel(idx) as u32, len as u32, 0, 0, 0, 0];
        return Ok(Some(dispatch(
            ShaderId::Embedding,
            "gather",
            &[("IDX64", if idx64 { 1.0 } else { 0.0 })],
            params,
            elements(n)?,
            vec![Bind::Input(0), Bind::Input(1)],
        )));
    }
    f32_only(0..inputs.len())?;
    if let Some(at) = any.downcast_ref::<Attention>() {
        let shapes: Vec<&[usize]> = inputs.iter().map(|(_, s)| *s).collect();
        let d = at
            .dims(&shapes)
            .map_err(|e| unsupported(op, format!("f32 ({e})"), caps))?;
        if d.sk > ATTENTION_MAX_SK || d.head_dim > ATTENTION_MAX_HD {
            return Err(unsupported(
                op,
                format!(
                    "f32 with {} keys of head width {} (the kernel takes <= {ATTENTION_MAX_SK} keys, width <= {ATTENTION_MAX_HD})",
                    d.sk, d.head_dim
                ),
                caps,
            ));
        }
        let rows = d.batch * d.heads * d.sq;
        let groups = grid(rows, caps.max_workgroups).ok_or_else(|| unsupported(op, "f32 (too many rows)", caps))?;
        let params = vec![
            d.batch as u32,
            d.sq as u32,
            d.sk as u32,
            d.heads as u32,
            d.head_dim as u32,
            at.scale_for(d.head_dim).to_bits(),
            rows as u32,
            0,
        ];
        let has_mask = inputs.len() == 4;
        return Ok(Some(dispatch(
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
        )));
    }
    if any.is::<MaskedMeanPool>() {
        arity(2)?;
        let (x, m) = (inputs[0].1, inputs[1].1);
        if x.len() != 3 || m != [x[0], x[1]] {
            return Err(unsupported(op, "f32 with these shapes", caps));
        }
        let n = x[0] * x[2];
        let params = vec![n as u32, x[1] as u32, x[2] as u32, 0, 0, 0, 0, 0];
        return Ok(Some(dispatch(
            ShaderId::Embedding,
            "masked_mean_pool",
            &[],
            params,
            elements(n)?,
            vec![Bind::Input(0), Bind::Input(1)],
        )));
    }
    if let Some(l2) = any.downcast_ref::<L2Normalize>() {
        arity(1)?;
        let s = inputs[0].1;
        let (len, inner) = if s.is_empty() {
            (1, 1)
        } else {
            let a = normalize_axis(l2.axis, s.len()).map_err(|e| unsupported(op, format!("f32 ({e})"), caps))?;
            (s[a], s[a + 1..].iter().product::<usize>())
        };
        let rows = numel(s).checked_div(len).unwrap_or(0);
        let params = vec![rows as u32, len as u32, inner as u32, 0, l2.epsilon.to_bits(), 0, 0, 0];
        return Ok(Some(dispatch(
            ShaderId::Embedding,
            "l2normalize",
            &[],
            params,
            elements(rows)?,
            vec![Bind::Input(0), Bind::Zeros],
        )));
    }
    Ok(None)
}
