//! Encoder ops spelled out in TFLite builtins (TFLite has no fused form of
//! them). Shapes with a dynamic batch and sequence are computed at run time
//! (`SHAPE`, `SLICE`, `CONCATENATION`) so one file takes any batch and length.
//! - `LayerNormalization` (last axis): `MEAN`, `SUB`, `MUL`, `MEAN`, `ADD` ε,
//!   `RSQRT`, `MUL`, `MUL` γ, `ADD` β.
//! - `Attention(q, k, v, mask?)`: heads split by `RESHAPE`/`TRANSPOSE`,
//!   `BATCH_MATMUL(q, k, adj_y)`, `MUL` by the scale, `ADD` of
//!   `(1 - mask)·(-1e30)` (0/1 masks, as tokenizers make), `SOFTMAX`,
//!   `BATCH_MATMUL` with v, heads joined.
//! - `MaskedMeanPool(x, mask)`: `BATCH_MATMUL` of the mask row with x, over
//!   `MAXIMUM(Σ mask, 1e-30)` (a row with no kept token gives zeros, as wginfer).
//! - `L2Normalize` (last axis): `x / MAXIMUM(SQRT(SUM(x·x)), ε)`.

use super::builder::{dims, Builder, Layout};
use super::ops::unsupported;
use super::schema::{tensor_type, BuiltinOp, Options};
use super::ExportError;
use crate::graph::Node;
use crate::ops::attention::Attention;
use crate::tensor::{DType, Dim};

/// The last axis of `n`'s first input when `axis` names it.
fn last_axis(b: &Builder<'_>, n: &Node, default: i64) -> Result<i32, ExportError> {
    let rank = b.value_type(&n.inputs[0])?.shape.len() as i64;
    let axis = n.op.attrs().get("axis").and_then(|v| v.as_i64()).unwrap_or(default);
    if axis != -1 && axis != rank - 1 {
        return Err(unsupported(
            n,
            format!("only the last axis maps to TFLite, not axis {axis}"),
        ));
    }
    Ok(rank as i32 - 1)
}

fn epsilon(n: &Node, default: f64) -> f32 {
    n.op.attrs().get("epsilon").and_then(|v| v.as_f64()).unwrap_or(default) as f32
}

/// `LayerNormalization(x, γ, β?)` over the last axis.
pub(super) fn layer_norm(b: &mut Builder<'_>, n: &Node) -> Result<(), ExportError> {
    let axis = last_axis(b, n, -1)?;
    let nm = n.name.as_str();
    let x = b.get(&n.inputs[0], Layout::Own)?;
    let d = b.dims_of(x);
    let mut kept = d.clone();
    kept[axis as usize] = Some(1);
    let ax = b.ints(&format!("{nm}.axis"), vec![1], &[axis])?;
    let keep = Options::Reducer { keep_dims: true };
    let f = DType::F32;
    let mean = b.step(&format!("{nm}.mean"), BuiltinOp::MEAN, &[x, ax], keep.clone(), f, &kept)?;
    let dev = b.step(&format!("{nm}.dev"), BuiltinOp::SUB, &[x, mean], Options::Binary, f, &d)?;
    let sq = b.step(&format!("{nm}.sq"), BuiltinOp::MUL, &[dev, dev], Options::Binary, f, &d)?;
    let var = b.step(&format!("{nm}.var"), BuiltinOp::MEAN, &[sq, ax], keep, f, &kept)?;
    let eps = b.scalar(&format!("{nm}.epsilon"), epsilon(n, 1e-5))?;
    let ve = b.step(
        &format!("{nm}.var_eps"),
        BuiltinOp::ADD,
        &[var, eps],
        Options::Binary,
        f,
        &kept,
    )?;
    let rs = b.step(&format!("{nm}.rstd"), BuiltinOp::RSQRT, &[ve], Options::None, f, &kept)?;
    let norm = b.step(
        &format!("{nm}.norm"),
        BuiltinOp::MUL,
        &[dev, rs],
        Options::Binary,
        f,
        &d,
    )?;
    let gamma = b.get(&n.inputs[1], Layout::Own)?;
    let beta = match n.inputs.get(2) {
        Some(v) => Some(b.get(v, Layout::Own)?),
        None => None,
    };
    let y = b.output(&n.outputs[0], Layout::Own)?;
    match beta {
        None => b.op(BuiltinOp::MUL, &[norm, gamma], &[y], Options::Binary),
        Some(beta) => {
            let s = b.step(
                &format!("{nm}.scaled"),
                BuiltinOp::MUL,
                &[norm, gamma],
                Options::Binary,
                f,
                &d,
            )?;
            b.op(BuiltinOp::ADD, &[s, beta], &[y], Options::Binary);
        }
    }
    Ok(())
}

/// The int32 shape of tensor `x` at run time.
fn shape_of(b: &mut Builder<'_>, name: &str, x: i32) -> Result<i32, ExportError> {
    let rank = b.dims_of(x).len() as i32;
    let options = Options::Shape {
        out_type: tensor_type::INT32,
    };
    b.step(name, BuiltinOp::SHAPE, &[x], options, DType::I32, &[Some(rank)])
}

/// `x [B, S, W]` as heads `[B, H, S, D]`.
fn split_heads(b: &mut Builder<'_>, nm: &str, tag: &str, x: i32, heads4: i32) -> Result<i32, ExportError> {
    let d = b.dims_of(x);
    let r = b.step(
        &format!("{nm}.{tag}.heads"),
        BuiltinOp::RESHAPE,
        &[x, heads4],
        Options::None,
        DType::F32,
        &[d[0], d[1], None, None],
    )?;
    let perm = b.ints(&format!("{nm}.{tag}.perm"), vec![4], &[0, 2, 1, 3])?;
    b.step(
        &format!("{nm}.{tag}.t"),
        BuiltinOp::TRANSPOSE,
        &[r, perm],
        Options::Transpose,
        DType::F32,
        &[d[0], None, d[1], None],
    )
}

/// The additive attention bias `(1 - mask)·(-1e30)` as `[B, 1, 1, S]`, made once per mask.
fn mask_bias(b: &mut Builder<'_>, mask: &str) -> Result<i32, ExportError> {
    let key = format!("{mask}.attention_bias");
    if let Some(t) = b.recall(&key) {
        return Ok(t);
    }
    let m = b.get(mask, Layout::Own)?;
    let d = b.dims_of(m);
    let f = DType::F32;
    let one = b.scalar(&format!("{mask}.one"), 1.0)?;
    let big = b.scalar(&format!("{mask}.neg_big"), -1e30)?;
    let inv = b.step(
        &format!("{mask}.inverted"),
        BuiltinOp::SUB,
        &[one, m],
        Options::Binary,
        f,
        &d,
    )?;
    let bias = b.step(
        &format!("{mask}.bias"),
        BuiltinOp::MUL,
        &[inv, big],
        Options::Binary,
        f,
        &d,
    )?;
    let ax = b.ints(&format!("{mask}.axis1"), vec![], &[1])?;
    let e1 = b.step(
        &format!("{mask}.bias3"),
        BuiltinOp::EXPAND_DIMS,
        &[bias, ax],
        Options::ExpandDims,
        f,
        &[d[0], Some(1), d[1]],
    )?;
    let e2 = b.step(
        &key,
        BuiltinOp::EXPAND_DIMS,
        &[e1, ax],
        Options::ExpandDims,
        f,
        &[d[0], Some(1), Some(1), d[1]],
    )?;
    b.remember(&key, e2);
    Ok(e2)
}

/// `Attention(q, k, v, mask?)` on `[B, S, W]` inputs.
pub(super) fn attention(b: &mut Builder<'_>, n: &Node) -> Result<(), ExportError> {
    let Some(att) = n.op.downcast_ref::<Attention>() else {
        return Err(unsupported(n, "not wginfer's Attention"));
    };
    let ty = b.value_type(&n.inputs[0])?;
    let width = match ty.shape.as_slice() {
        [_, _, Dim::Known(w)] => *w,
        _ => return Err(unsupported(n, "q must be [batch, seq, width] with a known width")),
    };
    let h = att.num_heads.max(1);
    let hd = width / h;
    let nm = n.name.as_str();
    let f = DType::F32;
    let q = b.get(&n.inputs[0], Layout::Own)?;
    let k = b.get(&n.inputs[1], Layout::Own)?;
    let v = b.get(&n.inputs[2], Layout::Own)?;
    let qd = b.dims_of(q);
    let q_shape = shape_of(b, &format!("{nm}.q_shape"), q)?;
    let begin = b.ints(&format!("{nm}.begin"), vec![1], &[0])?;
    let size = b.ints(&format!("{nm}.size"), vec![1], &[2])?;
    let bs = b.step(
        &format!("{nm}.bs"),
        BuiltinOp::SLICE,
        &[q_shape, begin, size],
        Options::Slice,
        DType::I32,
        &[Some(2)],
    )?;
    let hd_t = b.ints(&format!("{nm}.hd"), vec![2], &[h as i32, hd as i32])?;
    let heads4 = b.step(
        &format!("{nm}.heads_shape"),
        BuiltinOp::CONCATENATION,
        &[bs, hd_t],
        Options::Concatenation { axis: 0 },
        DType::I32,
        &[Some(4)],
    )?;
    let (qh, kh, vh) = (
        split_heads(b, nm, "q", q, heads4)?,
        split_heads(b, nm, "k", k, heads4)?,
        split_heads(b, nm, "v", v, heads4)?,
    );
    let sd = [qd[0], Some(h as i32), qd[1], None];
    let s = b.step(
        &format!("{nm}.scores"),
        BuiltinOp::BATCH_MATMUL,
        &[qh, kh],
        Options::BatchMatMul { adj_y: true },
        f,
        &sd,
    )?;
    let c = b.scalar(&format!("{nm}.scale"), att.scale_for(hd))?;
    let mut s = b.step(
        &format!("{nm}.scaled"),
        BuiltinOp::MUL,
        &[s, c],
        Options::Binary,
        f,
        &sd,
    )?;
    if let Some(mask) = n.inputs.get(3) {
        let bias = mask_bias(b, mask)?;
        s = b.step(
            &format!("{nm}.masked"),
            BuiltinOp::ADD,
            &[s, bias],
            Options::Binary,
            f,
            &sd,
        )?;
    }
    let p = b.step(
        &format!("{nm}.probs"),
        BuiltinOp::SOFTMAX,
        &[s],
        Options::Softmax { beta: 1.0 },
        f,
        &sd,
    )?;
    let hdims = [qd[0], Some(h as i32), qd[1], Some(hd as i32)];
    let o = b.step(
        &format!("{nm}.context"),
        BuiltinOp::BATCH_MATMUL,
        &[p, vh],
        Options::BatchMatMul { adj_y: false },
        f,
        &hdims,
    )?;
    let perm = b.ints(&format!("{nm}.merge_perm"), vec![4], &[0, 2, 1, 3])?;
    let md = [qd[0], qd[1], Some(h as i32), Some(hd as i32)];
    let o = b.step(
        &format!("{nm}.merged"),
        BuiltinOp::TRANSPOSE,
        &[o, perm],
        Options::Transpose,
        f,
        &md,
    )?;
    let y = b.output(&n.outputs[0], Layout::Own)?;
    b.op(BuiltinOp::RESHAPE, &[o, q_shape], &[y], Options::None);
    Ok(())
}

/// `MaskedMeanPool(x [B, S, E], mask [B, S])`.
pub(super) fn masked_mean_pool(b: &mut Builder<'_>, n: &Node) -> Result<(), ExportError> {
    let nm = n.name.as_str();
    let f = DType::F32;
    let x = b.get(&n.inputs[0], Layout::Own)?;
    let m = b.get(&n.inputs[1], Layout::Own)?;
    let (xd, md) = (b.dims_of(x), b.dims_of(m));
    if xd.len() != 3 || md.len() != 2 {
        return Err(unsupported(n, "needs x [batch, seq, width] and mask [batch, seq]"));
    }
    let ax1 = b.ints(&format!("{nm}.axis1"), vec![], &[1])?;
    let row = b.step(
        &format!("{nm}.row"),
        BuiltinOp::EXPAND_DIMS,
        &[m, ax1],
        Options::ExpandDims,
        f,
        &[md[0], Some(1), md[1]],
    )?;
    let sum = b.step(
        &format!("{nm}.sum"),
        BuiltinOp::BATCH_MATMUL,
        &[row, x],
        Options::BatchMatMul { adj_y: false },
        f,
        &[xd[0], Some(1), xd[2]],
    )?;
    let out = b.value_type(&n.outputs[0])?;
    let od = dims(&out);
    let shape: Vec<i32> = od.iter().map(|d| d.unwrap_or(-1)).collect();
    let st = b.ints(&format!("{nm}.shape"), vec![2], &shape)?;
    let sum2 = b.step(
        &format!("{nm}.sum2"),
        BuiltinOp::RESHAPE,
        &[sum, st],
        Options::None,
        f,
        &od,
    )?;
    let axes = b.ints(&format!("{nm}.count_axis"), vec![1], &[1])?;
    let count = b.step(
        &format!("{nm}.count"),
        BuiltinOp::SUM,
        &[m, axes],
        Options::Reducer { keep_dims: true },
        f,
        &[md[0], Some(1)],
    )?;
    let tiny = b.scalar(&format!("{nm}.tiny"), 1e-30)?;
    let count = b.step(
        &format!("{nm}.count_pos"),
        BuiltinOp::MAXIMUM,
        &[count, tiny],
        Options::Maximum,
        f,
        &[md[0], Some(1)],
    )?;
    let y = b.output(&n.outputs[0], Layout::Own)?;
    b.op(BuiltinOp::DIV, &[sum2, count], &[y], Options::Binary);
    Ok(())
}

/// `L2Normalize` over the last axis: `x / max(‖x‖₂, ε)`.
pub(super) fn l2_normalize(b: &mut Builder<'_>, n: &Node) -> Result<(), ExportError> {
    let axis = last_axis(b, n, -1)?;
    let nm = n.name.as_str();
    let f = DType::F32;
    let x = b.get(&n.inputs[0], Layout::Own)?;
    let d = b.dims_of(x);
    let mut kept = d.clone();
    kept[axis as usize] = Some(1);
    let sq = b.step(&format!("{nm}.sq"), BuiltinOp::MUL, &[x, x], Options::Binary, f, &d)?;
    let ax = b.ints(&format!("{nm}.axis"), vec![1], &[axis])?;
    let ss = b.step(
        &format!("{nm}.sumsq"),
        BuiltinOp::SUM,
        &[sq, ax],
        Options::Reducer { keep_dims: true },
        f,
        &kept,
    )?;
    let norm = b.step(&format!("{nm}.norm"), BuiltinOp::SQRT, &[ss], Options::None, f, &kept)?;
    let eps = b.scalar(&format!("{nm}.epsilon"), epsilon(n, 1e-12))?;
    let norm = b.step(
        &format!("{nm}.norm_eps"),
        BuiltinOp::MAXIMUM,
        &[norm, eps],
        Options::Maximum,
        f,
        &kept,
    )?;
    let y = b.output(&n.outputs[0], Layout::Own)?;
    b.op(BuiltinOp::DIV, &[x, norm], &[y], Options::Binary);
    Ok(())
}
