//! wginfer ops → TFLite operators. [`MAPPED`] is the list of ops that have
//! a form; each entry names the builtin it becomes. Elementwise ops run in
//! whichever layout their input has, so a conv stack stays NHWC until a
//! layout-dependent op (`Flatten`, `Reshape`, a graph output) asks for the
//! model's own layout.

use super::builder::{dims, Builder, Layout};
use super::schema::{BuiltinOp, Options};
use super::{encoder, quant, spatial, ExportError};
use crate::graph::Node;
use crate::ops::gemm::Gemm;
use crate::ops::movement::{Concat, Gather, Transpose};
use crate::ops::softmax::Softmax;
use crate::tensor::Tensor;

/// How a wginfer op is written.
#[derive(Clone, Copy, Debug)]
enum Form {
    /// One input, same shape out, any layout.
    Unary(BuiltinOp),
    /// Two inputs with broadcasting.
    Binary(BuiltinOp),
    /// A special form (the builtin is the main one it writes).
    Special(BuiltinOp),
}

/// Every op with a TFLite form.
static MAPPED: &[(&str, Form)] = &[
    ("Relu", Form::Unary(BuiltinOp::RELU)),
    ("Sigmoid", Form::Unary(BuiltinOp::LOGISTIC)),
    ("Tanh", Form::Unary(BuiltinOp::TANH)),
    ("Exp", Form::Unary(BuiltinOp::EXP)),
    ("Neg", Form::Unary(BuiltinOp::NEG)),
    ("Abs", Form::Unary(BuiltinOp::ABS)),
    ("Log", Form::Unary(BuiltinOp::LOG)),
    ("Sqrt", Form::Unary(BuiltinOp::SQRT)),
    ("HardSwish", Form::Unary(BuiltinOp::HARD_SWISH)),
    ("LeakyRelu", Form::Unary(BuiltinOp::LEAKY_RELU)),
    ("Gelu", Form::Unary(BuiltinOp::GELU)),
    ("Add", Form::Binary(BuiltinOp::ADD)),
    ("Sub", Form::Binary(BuiltinOp::SUB)),
    ("Mul", Form::Binary(BuiltinOp::MUL)),
    ("Div", Form::Binary(BuiltinOp::DIV)),
    ("Linear", Form::Special(BuiltinOp::FULLY_CONNECTED)),
    ("QLinear", Form::Special(BuiltinOp::FULLY_CONNECTED)),
    ("Gemm", Form::Special(BuiltinOp::FULLY_CONNECTED)),
    ("MatMul", Form::Special(BuiltinOp::BATCH_MATMUL)),
    ("Softmax", Form::Special(BuiltinOp::SOFTMAX)),
    ("LogSoftmax", Form::Special(BuiltinOp::LOG_SOFTMAX)),
    ("Flatten", Form::Special(BuiltinOp::RESHAPE)),
    ("Reshape", Form::Special(BuiltinOp::RESHAPE)),
    ("Transpose", Form::Special(BuiltinOp::TRANSPOSE)),
    ("Concat", Form::Special(BuiltinOp::CONCATENATION)),
    ("Gather", Form::Special(BuiltinOp::GATHER)),
    ("Conv", Form::Special(BuiltinOp::CONV_2D)),
    ("QConv", Form::Special(BuiltinOp::CONV_2D)),
    ("MaxPool", Form::Special(BuiltinOp::MAX_POOL_2D)),
    ("AveragePool", Form::Special(BuiltinOp::AVERAGE_POOL_2D)),
    ("GlobalAveragePool", Form::Special(BuiltinOp::MEAN)),
    ("Cast", Form::Special(BuiltinOp::CAST)),
    ("LayerNormalization", Form::Special(BuiltinOp::MEAN)),
    ("Attention", Form::Special(BuiltinOp::BATCH_MATMUL)),
    ("MaskedMeanPool", Form::Special(BuiltinOp::BATCH_MATMUL)),
    ("L2Normalize", Form::Special(BuiltinOp::SUM)),
];

/// The ops with a TFLite form and the builtin each becomes.
pub fn mapped_ops() -> Vec<(&'static str, String)> {
    MAPPED
        .iter()
        .map(|(name, f)| {
            let (Form::Unary(op) | Form::Binary(op) | Form::Special(op)) = *f;
            (*name, op.name())
        })
        .collect()
}

/// The "cannot be exported" error for `node`.
pub(super) fn unsupported(node: &Node, reason: impl Into<String>) -> ExportError {
    ExportError::Unsupported {
        node: node.name.clone(),
        op: node.op.op_type().to_string(),
        target: "TFLite",
        reason: reason.into(),
    }
}

/// Writes one node.
pub(super) fn export_node(b: &mut Builder<'_>, n: &Node) -> Result<(), ExportError> {
    let op = n.op.op_type();
    let Some((_, form)) = MAPPED.iter().find(|(name, _)| *name == op) else {
        return Err(unsupported(n, "no TFLite builtin op computes it"));
    };
    if n.outputs.len() != 1 {
        return Err(unsupported(n, "only the single-output form has a TFLite op"));
    }
    match *form {
        Form::Unary(code) => unary(b, n, code),
        Form::Binary(code) => binary(b, n, code),
        Form::Special(_) => match op {
            "Linear" => linear(b, n),
            "QLinear" => quant::qlinear(b, n),
            "Gemm" => gemm(b, n),
            "MatMul" => own_op(b, n, BuiltinOp::BATCH_MATMUL, Options::BatchMatMul { adj_y: false }),
            "Softmax" | "LogSoftmax" => softmax(b, n),
            "Flatten" | "Reshape" => reshape(b, n),
            "Transpose" => transpose(b, n),
            "Concat" => {
                let axis = n.op.downcast_ref::<Concat>().map_or(0, |c| c.axis) as i32;
                own_op(b, n, BuiltinOp::CONCATENATION, Options::Concatenation { axis })
            }
            "Gather" => {
                let axis = n.op.downcast_ref::<Gather>().map_or(0, |g| g.axis) as i32;
                own_op(b, n, BuiltinOp::GATHER, Options::Gather { axis })
            }
            "Conv" => spatial::conv(b, n),
            "QConv" => spatial::qconv(b, n),
            "MaxPool" | "AveragePool" => spatial::pool(b, n),
            "GlobalAveragePool" => spatial::global_average_pool(b, n),
            "Cast" => own_op(b, n, BuiltinOp::CAST, Options::Cast),
            "LayerNormalization" => encoder::layer_norm(b, n),
            "Attention" => encoder::attention(b, n),
            "MaskedMeanPool" => encoder::masked_mean_pool(b, n),
            _ => encoder::l2_normalize(b, n),
        },
    }
}

/// An elementwise op in its input's layout.
fn unary(b: &mut Builder<'_>, n: &Node, code: BuiltinOp) -> Result<(), ExportError> {
    let (x, layout) = b.get_any(&n.inputs[0])?;
    let a = n.op.attrs();
    let options = match code {
        BuiltinOp::LEAKY_RELU => Options::LeakyRelu {
            alpha: a.get("alpha").and_then(|v| v.as_f64()).unwrap_or(0.01) as f32,
        },
        BuiltinOp::GELU => Options::Gelu {
            approximate: a.get("approximate").and_then(|v| v.as_str()) == Some("tanh"),
        },
        BuiltinOp::HARD_SWISH => Options::HardSwish,
        _ => Options::None,
    };
    let y = b.output(&n.outputs[0], layout)?;
    b.op(code, &[x], &[y], options);
    Ok(())
}

/// A broadcasting binary op: NHWC when both inputs exist in NHWC with equal rank-4 shapes.
fn binary(b: &mut Builder<'_>, n: &Node, code: BuiltinOp) -> Result<(), ExportError> {
    let (l, r) = (&n.inputs[0], &n.inputs[1]);
    let same = b.value_type(l)?.shape == b.value_type(r)?.shape;
    let layout = if same && b.has_nhwc(l) && b.has_nhwc(r) {
        Layout::Nhwc
    } else {
        Layout::Own
    };
    let (x, y) = (b.get(l, layout)?, b.get(r, layout)?);
    let z = b.output(&n.outputs[0], layout)?;
    b.op(code, &[x, y], &[z], Options::Binary);
    Ok(())
}

/// An op over all inputs in the model's own layout.
pub(super) fn own_op(b: &mut Builder<'_>, n: &Node, code: BuiltinOp, options: Options) -> Result<(), ExportError> {
    let mut ins = Vec::with_capacity(n.inputs.len());
    for i in &n.inputs {
        ins.push(b.get(i, Layout::Own)?);
    }
    let y = b.output(&n.outputs[0], Layout::Own)?;
    b.op(code, &ins, &[y], options);
    Ok(())
}

/// `FULLY_CONNECTED(x, w [out, in], bias?)`: over the last axis of `x`.
pub(super) fn fully_connected(b: &mut Builder<'_>, n: &Node, w: i32, bias: Option<&str>) -> Result<(), ExportError> {
    let x = b.get(&n.inputs[0], Layout::Own)?;
    let bias = match bias {
        Some(v) => b.get(v, Layout::Own)?,
        None => -1,
    };
    let y = b.output(&n.outputs[0], Layout::Own)?;
    fc_op(b, x, w, bias, y, false);
    Ok(())
}

/// A `FULLY_CONNECTED` operator (`bias` -1: none); `hybrid` quantizes the
/// activations per row at run time (int8 weights).
pub(super) fn fc_op(b: &mut Builder<'_>, x: i32, w: i32, bias: i32, y: i32, hybrid: bool) {
    let options = Options::FullyConnected {
        keep_num_dims: b.dims_of(x).len() > 2,
        asymmetric_quantize_inputs: hybrid,
    };
    b.op(BuiltinOp::FULLY_CONNECTED, &[x, w, bias], &[y], options);
}

/// `Linear(x, W[out, in], b)`: TFLite's weight layout is wginfer's.
fn linear(b: &mut Builder<'_>, n: &Node) -> Result<(), ExportError> {
    let w = b.get(&n.inputs[1], Layout::Own)?;
    fully_connected(b, n, w, n.inputs.get(2).map(String::as_str))
}

/// `Gemm(A, B, C)` with `alpha = beta = 1`, `A` untransposed and `B` a
/// parameter: `FULLY_CONNECTED` with `B` as `[N, K]`.
fn gemm(b: &mut Builder<'_>, n: &Node) -> Result<(), ExportError> {
    let Some(g) = n.op.downcast_ref::<Gemm>() else {
        return Err(unsupported(n, "not wginfer's Gemm"));
    };
    if g.alpha != 1.0 || (g.beta != 1.0 && n.inputs.len() > 2) || g.trans_a {
        return Err(unsupported(
            n,
            "only alpha = beta = 1 with A untransposed is FULLY_CONNECTED",
        ));
    }
    let Some(wt) = b.model().param(&n.inputs[1]) else {
        return Err(unsupported(n, "B must be a parameter"));
    };
    let w = if g.trans_b {
        b.get(&n.inputs[1], Layout::Own)?
    } else {
        let t = transpose2(n, wt)?;
        b.constant(&format!("{}.T", n.inputs[1]), &t)?
    };
    let bias = n.inputs.get(2).map(String::as_str);
    if let Some(c) = bias {
        if b.value_type(c)?.shape.len() != 1 {
            return Err(unsupported(n, "C must be a vector of N"));
        }
    }
    fully_connected(b, n, w, bias)
}

/// A 2-D f32 tensor transposed.
fn transpose2(n: &Node, t: &Tensor) -> Result<Tensor, ExportError> {
    let [r, c] = *t.shape() else {
        return Err(unsupported(n, "B must be 2-D"));
    };
    let v = t.to_f32_vec();
    let out: Vec<f32> = (0..r * c).map(|i| v[(i % r) * c + i / r]).collect();
    Ok(Tensor::from_vec(vec![c, r], out)?)
}

/// `Softmax`/`LogSoftmax` over the last axis (TFLite's only axis).
fn softmax(b: &mut Builder<'_>, n: &Node) -> Result<(), ExportError> {
    let rank = b.value_type(&n.inputs[0])?.shape.len() as i64;
    let axis =
        n.op.downcast_ref::<Softmax>()
            .map(|s| s.axis)
            .or_else(|| n.op.attrs().get("axis").and_then(|v| v.as_i64()));
    let axis = axis.unwrap_or(-1);
    if axis != -1 && axis != rank - 1 {
        return Err(unsupported(
            n,
            format!("TFLite normalizes the last axis only, not axis {axis}"),
        ));
    }
    if n.op.op_type() == "Softmax" {
        own_op(b, n, BuiltinOp::SOFTMAX, Options::Softmax { beta: 1.0 })
    } else {
        own_op(b, n, BuiltinOp::LOG_SOFTMAX, Options::LogSoftmax)
    }
}

/// `Flatten`/`Reshape` to the output's type: known dims as they are, one
/// dynamic dim as -1.
fn reshape(b: &mut Builder<'_>, n: &Node) -> Result<(), ExportError> {
    let out = b.value_type(&n.outputs[0])?;
    let d = dims(&out);
    if d.iter().filter(|x| x.is_none()).count() > 1 {
        return Err(unsupported(n, "more than one dynamic dimension in the output shape"));
    }
    let shape: Vec<i32> = d.iter().map(|x| x.unwrap_or(-1)).collect();
    let x = b.get(&n.inputs[0], Layout::Own)?;
    let s = b.ints(&format!("{}.shape", n.name), vec![shape.len()], &shape)?;
    let y = b.output(&n.outputs[0], Layout::Own)?;
    b.op(BuiltinOp::RESHAPE, &[x, s], &[y], Options::Reshape { new_shape: shape });
    Ok(())
}

/// `Transpose` with its permutation (empty: reversed axes).
fn transpose(b: &mut Builder<'_>, n: &Node) -> Result<(), ExportError> {
    let rank = b.value_type(&n.inputs[0])?.shape.len();
    let perm: Vec<i32> = match n.op.downcast_ref::<Transpose>() {
        Some(t) if !t.perm.is_empty() => t.perm.iter().map(|&p| p as i32).collect(),
        _ => (0..rank as i32).rev().collect(),
    };
    let x = b.get(&n.inputs[0], Layout::Own)?;
    let p = b.ints(&format!("{}.perm", n.name), vec![perm.len()], &perm)?;
    let y = b.output(&n.outputs[0], Layout::Own)?;
    b.op(BuiltinOp::TRANSPOSE, &[x, p], &[y], Options::Transpose);
    Ok(())
}
