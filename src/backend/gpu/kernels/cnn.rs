//! Kernels for the ops ONNX CNNs (and transformers' LayerNorm) use:
//! normalisation (`shaders/norm.wgsl`). Mirrors `src/ops/norm.rs`.

use crate::error::Error;
use crate::ops::norm::{BatchNorm, LayerNorm};
use crate::ops::Op;
use crate::tensor::{numel, DType};

use super::super::context::PipelineKey;
use super::super::shaders::ShaderId;
use super::{grid, unsupported, Bind, Caps, DispatchSpec, NodeKernel};

/// Rows at most this long take `norm.wgsl::layernorm_rows` (one invocation
/// per row) instead of a workgroup per row.
const LAYERNORM_SHORT_ROW: usize = 32;

/// True when this family has a kernel for `op` (f32 values).
pub(crate) fn has_kernel(op: &dyn Op) -> bool {
    let any = op.as_any();
    any.downcast_ref::<LayerNorm>().is_some_and(|l| l.outputs == 1) || any.is::<BatchNorm>()
}

/// The kernel for `op`, `Ok(None)` when the op is not this family's.
pub(crate) fn select(op: &dyn Op, inputs: &[(DType, &[usize])], caps: &Caps) -> Result<Option<NodeKernel>, Error> {
    let any = op.as_any();
    let ours = any.is::<LayerNorm>() || any.is::<BatchNorm>();
    if !ours {
        return Ok(None);
    }
    if let Some((i, (dt, _))) = inputs.iter().enumerate().find(|(_, (dt, _))| *dt != DType::F32) {
        return Err(unsupported(op, format!("{dt} (input {i}); GPU kernels take f32"), caps));
    }
    if let Some(ln) = any.downcast_ref::<LayerNorm>() {
        return layer_norm(op, ln, inputs, caps).map(Some);
    }
    if let Some(bn) = any.downcast_ref::<BatchNorm>() {
        return batch_norm(op, bn, inputs, caps).map(Some);
    }
    Ok(None)
}

fn dispatch(shader: ShaderId, entry: &'static str, params: Vec<u32>, groups: [u32; 3], binds: Vec<Bind>) -> NodeKernel {
    NodeKernel::Dispatch(DispatchSpec {
        key: PipelineKey {
            shader,
            entry,
            constants: vec![],
            inputs: binds.len(),
        },
        params,
        groups,
        binds,
    })
}

fn layer_norm(op: &dyn Op, ln: &LayerNorm, inputs: &[(DType, &[usize])], caps: &Caps) -> Result<NodeKernel, Error> {
    if ln.outputs != 1 {
        return Err(unsupported(op, "f32 with 3 outputs (the kernel writes y only)", caps));
    }
    if inputs.len() < 2 {
        return Err(unsupported(op, "f32 without a scale", caps));
    }
    let x = inputs[0].1;
    let rank = x.len() as i64;
    let a = if ln.axis < 0 { ln.axis + rank } else { ln.axis };
    if a < 0 || a >= rank {
        return Err(unsupported(op, format!("f32 (axis {} for rank {rank})", ln.axis), caps));
    }
    let len: usize = x[a as usize..].iter().product();
    let rows = numel(x).checked_div(len).unwrap_or(0);
    // Scale and bias: one value per row element, or one value in all.
    let stride = |s: &[usize]| match numel(s) {
        n if n == len && s.iter().rev().zip(x.iter().rev()).all(|(p, q)| p == q || *p == 1) => Some(1u32),
        1 => Some(0u32),
        _ => None,
    };
    let sa = stride(inputs[1].1);
    let sb = match inputs.get(2) {
        Some((_, s)) => stride(s),
        None => Some(0),
    };
    let (Some(sa), Some(sb)) = (sa, sb) else {
        return Err(unsupported(
            op,
            "f32 (scale and bias must have one value per normalised element, or one in all)",
            caps,
        ));
    };
    let short = len <= LAYERNORM_SHORT_ROW;
    let (entry, workgroups) = if short {
        ("layernorm_rows", rows.div_ceil(64))
    } else {
        ("layernorm", rows)
    };
    let groups = grid(workgroups, caps.max_workgroups).ok_or_else(|| unsupported(op, "f32 (too many rows)", caps))?;
    let params = vec![rows as u32, len as u32, sa, sb, ln.epsilon.to_bits(), 0, 0, 0];
    let bias = if inputs.len() == 3 { Bind::Input(2) } else { Bind::Zeros };
    Ok(dispatch(
        ShaderId::Norm,
        entry,
        params,
        groups,
        vec![Bind::Input(0), Bind::Input(1), bias],
    ))
}

fn batch_norm(op: &dyn Op, bn: &BatchNorm, inputs: &[(DType, &[usize])], caps: &Caps) -> Result<NodeKernel, Error> {
    let x = inputs[0].1;
    if x.len() < 2 || inputs.len() != 5 || inputs[1..].iter().any(|(_, s)| numel(s) != x[1]) {
        return Err(unsupported(op, "f32 with these shapes", caps));
    }
    let n = numel(x);
    let plane: usize = x[2..].iter().product();
    let groups =
        grid(n.div_ceil(256), caps.max_workgroups).ok_or_else(|| unsupported(op, "f32 (too many elements)", caps))?;
    let params = vec![n as u32, x[1] as u32, plane as u32, 0, bn.epsilon.to_bits(), 0, 0, 0];
    Ok(dispatch(
        ShaderId::Norm,
        "batchnorm",
        params,
        groups,
        (0..5).map(Bind::Input).collect(),
    ))
}
