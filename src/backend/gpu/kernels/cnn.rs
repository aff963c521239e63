//! Kernels for the ops ONNX CNNs (and transformers' LayerNorm) use:
//! convolution (`shaders/conv.wgsl`), pooling (`pool.wgsl`), normalisation
//! (`norm.wgsl`) and Concat (`concat.wgsl`). Mirrors
//! `src/ops/{conv,pool,norm,layout}.rs`.

use crate::error::Error;
use crate::ops::conv::{Conv, Window};
use crate::ops::movement::Concat;
use crate::ops::norm::{BatchNorm, BatchNormTraining, LayerNorm};
use crate::ops::pool::{GlobalAveragePool, Pool};
use crate::ops::{normalize_axis, Op};
use crate::tensor::{numel, DType};

use super::super::context::PipelineKey;
use super::super::shaders::ShaderId;
use super::params::{words, ConcatParams, ConvParams, NormParams, PoolParams};
use super::{grid, unsupported, Bind, Caps, DispatchSpec, KernelDef, NodeKernel};

/// Rows at most this long take `norm.wgsl::layernorm_rows` (one invocation
/// per row) instead of a workgroup per row.
const LAYERNORM_SHORT_ROW: usize = 32;

/// This family's ops.
pub(super) static KERNELS: &[KernelDef] = &[
    KernelDef::f32(
        "LayerNorm",
        |a| a.is::<LayerNorm>(),
        |n| layer_norm(n.op, n.typed()?, n.inputs, n.caps),
    ),
    KernelDef::f32(
        "BatchNorm",
        |a| a.is::<BatchNorm>(),
        |n| batch_norm(n.op, n.typed()?, n.inputs, n.caps),
    ),
    KernelDef::f32(
        "BatchNormTraining",
        |a| a.is::<BatchNormTraining>(),
        |n| batch_norm_training(n.op, n.typed()?, n.inputs, n.caps),
    ),
    KernelDef::f32("Conv", |a| a.is::<Conv>(), |n| conv(n.op, n.typed()?, n.inputs, n.caps)),
    KernelDef::f32("Pool", |a| a.is::<Pool>(), |n| pool(n.op, n.typed()?, n.inputs, n.caps)),
    KernelDef::f32(
        "GlobalAveragePool",
        |a| a.is::<GlobalAveragePool>(),
        |n| global_average(n.op, n.inputs, n.caps),
    ),
    KernelDef::f32(
        "Concat",
        |a| a.is::<Concat>(),
        |n| concat(n.op, n.typed()?, n.inputs, n.caps),
    ),
];

/// Inputs Concat's kernel takes (bindings 2..7; 8 storage buffers with the output).
const CONCAT_MAX_INPUTS: usize = 6;

fn spec(shader: ShaderId, entry: &'static str, params: Vec<u32>, groups: [u32; 3], binds: Vec<Bind>) -> DispatchSpec {
    DispatchSpec {
        key: PipelineKey {
            shader,
            entry,
            constants: vec![],
            inputs: binds.len(),
        },
        params,
        groups,
        binds,
    }
}

fn dispatch(shader: ShaderId, entry: &'static str, params: Vec<u32>, groups: [u32; 3], binds: Vec<Bind>) -> NodeKernel {
    NodeKernel::Dispatch(spec(shader, entry, params, groups, binds))
}

fn layer_norm(op: &dyn Op, ln: &LayerNorm, inputs: &[(DType, &[usize])], caps: &Caps) -> Result<NodeKernel, Error> {
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
    let params = words(&NormParams {
        n: rows as u32,
        len: len as u32,
        a: sa,
        b: sb,
        eps_bits: ln.epsilon.to_bits(),
        ..Default::default()
    });
    let bias = if inputs.len() == 3 { Bind::Input(2) } else { Bind::Zeros };
    let binds = vec![Bind::Input(0), Bind::Input(1), bias];
    let y = spec(ShaderId::Norm, entry, params.clone(), groups, binds.clone());
    if ln.outputs == 1 {
        return Ok(NodeKernel::Dispatch(y));
    }
    // The mean and 1 / sqrt(var + epsilon) outputs: one more dispatch each.
    let stats_groups =
        grid(rows.div_ceil(64), caps.max_workgroups).ok_or_else(|| unsupported(op, "f32 (too many rows)", caps))?;
    let stat = |code: f64| {
        let mut s = spec(
            ShaderId::Norm,
            "layernorm_stats",
            params.clone(),
            stats_groups,
            binds.clone(),
        );
        s.key.constants = vec![("STAT", code.to_bits())];
        s
    };
    Ok(NodeKernel::Multi(vec![y, stat(0.0), stat(1.0)]))
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
    let params = words(&NormParams {
        n: n as u32,
        len: x[1] as u32,
        a: plane as u32,
        eps_bits: bn.epsilon.to_bits(),
        ..Default::default()
    });
    Ok(dispatch(
        ShaderId::Norm,
        "batchnorm",
        params,
        groups,
        (0..5).map(Bind::Input).collect(),
    ))
}

/// Three dispatches of `norm.wgsl::batchnorm_train` (a workgroup per
/// channel): y, the running mean, the running variance.
fn batch_norm_training(
    op: &dyn Op,
    bn: &BatchNormTraining,
    inputs: &[(DType, &[usize])],
    caps: &Caps,
) -> Result<NodeKernel, Error> {
    let x = inputs[0].1;
    if x.len() < 2 || inputs.len() != 5 || inputs[1..].iter().any(|(_, s)| numel(s) != x[1]) {
        return Err(unsupported(op, "f32 with these shapes", caps));
    }
    let plane: usize = x[2..].iter().product();
    let groups = grid(x[1], caps.max_workgroups).ok_or_else(|| unsupported(op, "f32 (too many channels)", caps))?;
    let params = words(&NormParams {
        n: numel(x) as u32,
        len: x[1] as u32,
        a: plane as u32,
        b: x[0] as u32,
        eps_bits: bn.epsilon.to_bits(),
        pad0: bn.momentum.to_bits(),
        ..Default::default()
    });
    let stat = |code: f64| {
        let mut s = spec(
            ShaderId::Norm,
            "batchnorm_train",
            params.clone(),
            groups,
            (0..5).map(Bind::Input).collect(),
        );
        s.key.constants = vec![("STAT", code.to_bits())];
        s
    };
    Ok(NodeKernel::Multi(vec![stat(0.0), stat(1.0), stat(2.0)]))
}

/// Padding before and output length along both spatial axes.
fn spatial(
    op: &dyn Op,
    window: &Window,
    h: usize,
    w: usize,
    k: [usize; 2],
    caps: &Caps,
) -> Result<[crate::ops::conv::Axis; 2], Error> {
    let ay = window
        .axis(0, h, k[0])
        .map_err(|e| unsupported(op, format!("f32 ({e})"), caps))?;
    let ax = window
        .axis(1, w, k[1])
        .map_err(|e| unsupported(op, format!("f32 ({e})"), caps))?;
    Ok([ay, ax])
}

fn conv(op: &dyn Op, c: &Conv, inputs: &[(DType, &[usize])], caps: &Caps) -> Result<NodeKernel, Error> {
    let (x, w) = (inputs[0].1, inputs[1].1);
    let g = c.group;
    if x.len() != 4 || w.len() != 4 || g == 0 || x[1] != w[1] * g || w[0] % g != 0 {
        return Err(unsupported(op, "f32 with these shapes", caps));
    }
    let (m, cg, kh, kw) = (w[0], w[1], w[2], w[3]);
    let [ay, ax] = spatial(op, &c.window, x[2], x[3], [kh, kw], caps)?;
    let (mg, npix) = (m / g, ay.out * ax.out);
    let (mblocks, pblocks) = (mg.div_ceil(4), npix.div_ceil(4));
    let groups = [(mblocks * pblocks).div_ceil(64), x[0] * g, 1];
    if groups.iter().any(|&d| d > caps.max_workgroups as usize) {
        return Err(unsupported(
            op,
            format!(
                "f32 (needs a {groups:?} grid; the adapter allows {} per dimension)",
                caps.max_workgroups
            ),
            caps,
        ));
    }
    let (s, d) = (&c.window.strides, &c.window.dilations);
    let params = words(&ConvParams {
        c: x[1] as u32,
        h: x[2] as u32,
        w: x[3] as u32,
        m: m as u32,
        cg: cg as u32,
        mg: mg as u32,
        kh: kh as u32,
        kw: kw as u32,
        oh: ay.out as u32,
        ow: ax.out as u32,
        stride_y: s[0] as u32,
        stride_x: s[1] as u32,
        dil_y: d[0] as u32,
        dil_x: d[1] as u32,
        pad_y: ay.begin as u32,
        pad_x: ax.begin as u32,
        groups: g as u32,
        pblocks: pblocks as u32,
        mblocks: mblocks as u32,
        has_bias: u32::from(inputs.len() == 3),
    });
    let bias = if inputs.len() == 3 { Bind::Input(2) } else { Bind::Zeros };
    Ok(dispatch(
        ShaderId::Conv,
        "conv",
        params,
        [groups[0] as u32, groups[1] as u32, 1],
        vec![Bind::Input(0), Bind::Input(1), bias],
    ))
}

fn pool(op: &dyn Op, p: &Pool, inputs: &[(DType, &[usize])], caps: &Caps) -> Result<NodeKernel, Error> {
    let x = inputs[0].1;
    if x.len() != 2 + p.window.rank() {
        return Err(unsupported(op, "f32 with these shapes", caps));
    }
    let g = p
        .geom(&x[2..])
        .map_err(|e| unsupported(op, format!("f32 ({e})"), caps))?;
    let out = g.out();
    let n = x[0] * x[1] * numel(&out);
    let groups =
        grid(n.div_ceil(256), caps.max_workgroups).ok_or_else(|| unsupported(op, "f32 (too many elements)", caps))?;
    // Axes in the shader's (y, x, z) order; Geom's are (z, y, x).
    let per_axis = |v: [usize; 3]| [v[1] as u32, v[2] as u32, v[0] as u32, 0];
    let [h, w, d, _] = per_axis(g.len);
    let [oh, ow, od, _] = per_axis(out);
    let params = words(&PoolParams {
        n: n as u32,
        h,
        w,
        d,
        oh,
        ow,
        od,
        neg_inf_bits: f32::NEG_INFINITY.to_bits(),
        k: per_axis(g.k),
        stride: per_axis(g.s),
        dil: per_axis(g.d),
        pad: per_axis(g.ax.map(|a| a.begin)),
        pad_end: per_axis([0, 1, 2].map(|a| g.len[a] + g.ax[a].end)),
        count_include_pad: u32::from(p.count_include_pad),
        ..Default::default()
    });
    let mut y = spec(ShaderId::Pool, "pool", params.clone(), groups, vec![Bind::Input(0)]);
    y.key.constants = vec![("MAX", if p.max { 1.0f64 } else { 0.0 }.to_bits())];
    if !p.indices {
        return Ok(NodeKernel::Dispatch(y));
    }
    // Indices (int64, as two u32 words each) from pool_index.wgsl.
    let mut idx = spec(ShaderId::PoolIndex, "argmax", params, groups, vec![Bind::Input(0)]);
    idx.key.constants = vec![("COLUMN_MAJOR", if p.column_major { 1.0f64 } else { 0.0 }.to_bits())];
    Ok(NodeKernel::Multi(vec![y, idx]))
}

fn global_average(op: &dyn Op, inputs: &[(DType, &[usize])], caps: &Caps) -> Result<NodeKernel, Error> {
    let x = inputs[0].1;
    if x.len() < 2 {
        return Err(unsupported(op, "f32 with these shapes", caps));
    }
    let planes = x[0] * x[1];
    let len: usize = x[2..].iter().product();
    let groups = grid(planes, caps.max_workgroups).ok_or_else(|| unsupported(op, "f32 (too many planes)", caps))?;
    let params = words(&PoolParams {
        n: planes as u32,
        h: len as u32,
        ..Default::default()
    });
    Ok(dispatch(
        ShaderId::Pool,
        "global_average",
        params,
        groups,
        vec![Bind::Input(0)],
    ))
}

fn concat(op: &dyn Op, c: &Concat, inputs: &[(DType, &[usize])], caps: &Caps) -> Result<NodeKernel, Error> {
    if inputs.is_empty() || inputs.len() > CONCAT_MAX_INPUTS {
        return Err(unsupported(
            op,
            format!(
                "f32 with {} inputs (the kernel takes 1 to {CONCAT_MAX_INPUTS})",
                inputs.len()
            ),
            caps,
        ));
    }
    let first = inputs[0].1;
    let a = normalize_axis(c.axis, first.len()).map_err(|e| unsupported(op, format!("f32 ({e})"), caps))?;
    let inner: usize = first[a + 1..].iter().product();
    let ok = inputs
        .iter()
        .all(|(_, s)| s.len() == first.len() && s.iter().zip(first).enumerate().all(|(d, (p, q))| d == a || p == q));
    if !ok || inputs.iter().any(|(_, s)| numel(s) == 0) {
        return Err(unsupported(op, "f32 with these shapes", caps));
    }
    let total: usize = inputs.iter().map(|(_, s)| s[a]).sum();
    let n = numel(first) / first[a] * total;
    let groups =
        grid(n.div_ceil(256), caps.max_workgroups).ok_or_else(|| unsupported(op, "f32 (too many elements)", caps))?;
    let mut lens = [0u32; 8];
    for (l, (_, s)) in lens.iter_mut().zip(inputs) {
        *l = s[a] as u32;
    }
    let params = words(&ConcatParams {
        n: n as u32,
        inner: inner as u32,
        total: total as u32,
        count: inputs.len() as u32,
        lens,
    });
    let binds = (0..CONCAT_MAX_INPUTS)
        .map(|t| if t < inputs.len() { Bind::Input(t) } else { Bind::Zeros })
        .collect();
    Ok(dispatch(ShaderId::Concat, "concat", params, groups, binds))
}
