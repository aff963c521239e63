//! Normalizations: `BatchNormalization` (inference: folded into the Conv
//! or Linear before it when their weights are constant; training mode: the
//! op with its running statistics), `LayerNormalization` and
//! `LpNormalization` (p = 2).

use std::sync::Arc;

use super::super::context::{skip, type_of, Ctx, OnnxNode, Skip, Val};
use super::Build;
use crate::ops::l2norm::L2Normalize;
use crate::ops::norm::{BatchNorm, BatchNormTraining, LayerNorm};
use crate::tensor::Tensor;

pub(super) static OPS: &[(&str, Build)] = &[
    ("BatchNormalization", batch_norm),
    ("LayerNormalization", layer_norm),
    ("LpNormalization", lp_norm),
];

fn batch_norm(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    n.arity(5, 5)?;
    let epsilon = n.a.f("epsilon", 1e-5);
    if n.a.i("training_mode", 0) != 0 {
        // y, running mean, running variance (unrequested ones named for the graph).
        let op = Arc::new(BatchNormTraining {
            epsilon,
            momentum: n.a.f("momentum", 0.9),
        });
        return cx.emit(n.name, op, &n.ins, &n.named_outputs(3));
    }
    if n.outs.iter().skip(1).any(|o| !o.is_empty()) {
        return Err(skip("running statistics outputs outside training mode"));
    }
    let bn = BatchNorm { epsilon };
    if fold_batchnorm(cx, &bn, &n.ins, n.out0()?)? {
        return Ok(());
    }
    cx.emit_node(n, Arc::new(bn))
}

fn layer_norm(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    n.arity(2, 3)?;
    // Mean and inverse standard deviation only when requested.
    let outputs = if n.outs.iter().skip(1).any(|o| !o.is_empty()) {
        3
    } else {
        1
    };
    let op = Arc::new(LayerNorm {
        axis: n.a.i("axis", -1),
        epsilon: n.a.f("epsilon", 1e-5),
        outputs,
    });
    cx.emit(n.name, op, &n.ins, &n.named_outputs(outputs))
}

fn lp_norm(cx: &mut Ctx<'_>, n: &OnnxNode<'_>) -> Result<(), Skip> {
    if n.a.i("p", 2) != 2 {
        return Err(skip("only p = 2 (L2) is supported"));
    }
    // ONNX divides by the plain norm; the epsilon only keeps a zero vector zero.
    let op = L2Normalize {
        axis: n.a.i("axis", -1),
        epsilon: 1e-12,
    };
    cx.emit_node(n, Arc::new(op))
}

/// Folds an inference BatchNormalization into the Conv that produces its
/// input, or the Linear (a `Gemm` with constant weights) when that input
/// is `[batch, features]`: the weight rows and bias absorb the per-channel
/// affine map, when the weights and statistics are constants and nothing
/// else reads the producer's output. `false` when it cannot (the node then stays).
fn fold_batchnorm(cx: &mut Ctx<'_>, bn: &BatchNorm, ins: &[String], out: &str) -> Result<bool, Skip> {
    let x = cx.resolve(&ins[0]);
    let Some(&pi) = cx.producer.get(&x) else {
        return Ok(false);
    };
    if cx.consumers.get(&ins[0]).copied().unwrap_or(0) != 1 || cx.graph_outputs.contains(&ins[0]) {
        return Ok(false);
    }
    let rank = type_of(cx.val(&x)?).rank();
    let node = &cx.nodes[pi];
    let foldable = match node.op.op_type() {
        "Conv" => true,
        "Linear" => rank == 2,
        _ => false,
    };
    if !foldable || node.outputs.len() != 1 {
        return Ok(false);
    }
    let stats: Result<Vec<Tensor>, Skip> = ins[1..].iter().map(|s| cx.constant(s).cloned()).collect();
    let Ok(stats) = stats else { return Ok(false) };
    let Some(Val::Const(w)) = cx.vals.get(&node.inputs[1]).cloned() else {
        return Ok(false);
    };
    let bias = match node.inputs.get(2) {
        Some(b) => match cx.vals.get(b) {
            Some(Val::Const(t)) => Some(t.clone()),
            _ => return Ok(false),
        },
        None => None,
    };
    let refs: Vec<&Tensor> = std::iter::once(&w).chain(stats.iter()).collect();
    let (scale, shift) = bn.affine(&refs)?;
    let Some((wt, bt)) = scaled(&w, bias, &scale, &shift)? else {
        return Ok(false);
    };
    rewire(cx, pi, &x, out, wt, bt);
    Ok(true)
}

/// `w` with row `i` times `scale[i]`, and the bias `b·scale + shift`;
/// `None` when the scales do not match w's rows.
fn scaled(w: &Tensor, bias: Option<Tensor>, scale: &[f32], shift: &[f32]) -> Result<Option<(Tensor, Tensor)>, Skip> {
    let Some(&m) = w.shape().first().filter(|&&m| m == scale.len()) else {
        return Ok(None);
    };
    let per = w.numel() / m.max(1);
    let wv: Vec<f32> = w
        .as_f32()?
        .iter()
        .enumerate()
        .map(|(i, &v)| v * scale[i / per.max(1)])
        .collect();
    let b0 = bias.map(|b| b.to_f32_vec()).unwrap_or_else(|| vec![0.0; m]);
    let bv: Vec<f32> = (0..m).map(|i| b0[i] * scale[i] + shift[i]).collect();
    Ok(Some((
        Tensor::from_vec(w.shape().to_vec(), wv)?,
        Tensor::from_vec(vec![m], bv)?,
    )))
}

/// Node `pi` reads the folded weight and bias and writes `out` (the
/// BatchNormalization's output) instead of `x`.
fn rewire(cx: &mut Ctx<'_>, pi: usize, x: &str, out: &str, w: Tensor, b: Tensor) {
    let node_name = cx.nodes[pi].name.clone();
    let (wn, bn) = (format!("{node_name}.bn_weight"), format!("{node_name}.bn_bias"));
    cx.set_const(&wn, w);
    cx.set_const(&bn, b);
    let ty = cx.vals.get(x).cloned();
    let node = &mut cx.nodes[pi];
    node.inputs = vec![node.inputs[0].clone(), wn, bn];
    node.outputs = vec![out.to_string()];
    cx.producer.insert(out.to_string(), pi);
    if let Some(ty) = ty {
        cx.vals.insert(out.to_string(), ty);
    }
}
