//! wginfer ops → ONNX nodes. Most ops are ONNX ops already (the importer
//! made them from ONNX) and keep their attributes; `Linear`, `Silu`,
//! `Attention`, `MaskedMeanPool` and `L2Normalize` are spelled out in
//! standard ops, `QLinear` and `QConv` in `quant` and `qconv`.

use super::builder::{onnx_dtype, Attr, Builder};
use super::{quant, ExportError, OnnxExportOptions};
use crate::graph::Node;
use crate::model::Model;
use crate::ops::attention::Attention;
use crate::ops::Attrs;
use crate::tensor::{DType, Dim, Tensor};

/// ONNX's name of a wginfer dtype name in an attribute (`"f32"` → FLOAT).
fn dtype_code(node: &Node, name: &str) -> Result<i64, ExportError> {
    let d: DType = serde_json::from_value(serde_json::Value::String(name.to_string()))
        .map_err(|_| unsupported(node, format!("unknown dtype `{name}`")))?;
    onnx_dtype(d).map(i64::from).ok_or_else(|| ExportError::DType {
        what: format!("node `{}`", node.name),
        dtype: d,
    })
}

/// The "cannot be exported" error for `node`.
pub(super) fn unsupported(node: &Node, reason: impl Into<String>) -> ExportError {
    ExportError::Unsupported {
        node: node.name.clone(),
        op: node.op.op_type().to_string(),
        target: "ONNX",
        reason: reason.into(),
    }
}

/// Writes parameter `name` as an initializer of the same name (once).
pub(super) fn param(b: &mut Builder, model: &Model, name: &str) -> Result<(), ExportError> {
    if let Some(t) = model.param(name) {
        b.initializer(name, t)?;
    }
    Ok(())
}

/// Converts the listed wginfer attributes (JSON) to ONNX attributes under
/// the same names; absent ones and empty lists are left out.
fn copy_attrs(attrs: &Attrs, keys: &[&'static str]) -> Vec<(&'static str, Attr)> {
    let mut out = Vec::new();
    for &k in keys {
        let Some(v) = attrs.get(k) else { continue };
        let a = match v {
            serde_json::Value::Number(n) if n.is_f64() => Attr::Float(n.as_f64().unwrap_or(0.0) as f32),
            serde_json::Value::Number(n) => Attr::Int(n.as_i64().unwrap_or(0)),
            serde_json::Value::Bool(x) => Attr::Int(*x as i64),
            serde_json::Value::String(s) => Attr::Str(s.clone()),
            serde_json::Value::Array(xs) if !xs.is_empty() => {
                Attr::Ints(xs.iter().filter_map(|x| x.as_i64()).collect())
            }
            _ => continue,
        };
        out.push((k, a));
    }
    out
}

/// Ops that are the ONNX op of the same name, with the attributes copied.
static SAME: &[(&str, &[&str])] = &[
    ("Add", &[]),
    ("Sub", &[]),
    ("Mul", &[]),
    ("Div", &[]),
    ("Max", &[]),
    ("Min", &[]),
    ("MatMul", &[]),
    ("Relu", &[]),
    ("Sigmoid", &[]),
    ("Tanh", &[]),
    ("Erf", &[]),
    ("Neg", &[]),
    ("Abs", &[]),
    ("Exp", &[]),
    ("Log", &[]),
    ("Sqrt", &[]),
    ("Reciprocal", &[]),
    ("HardSwish", &[]),
    ("Floor", &[]),
    ("Sign", &[]),
    ("Round", &[]),
    ("MatMulInteger", &[]),
    ("DynamicQuantizeLinear", &[]),
    ("LeakyRelu", &["alpha"]),
    ("Gelu", &["approximate"]),
    ("GlobalAveragePool", &[]),
    ("Gather", &["axis"]),
    ("Concat", &["axis"]),
    ("Transpose", &["perm"]),
    ("Softmax", &["axis"]),
    ("LogSoftmax", &["axis"]),
    ("Flatten", &["axis"]),
    ("BatchNormalization", &["epsilon"]),
    ("LayerNormalization", &["axis", "epsilon"]),
    ("Gemm", &["alpha", "beta", "transA", "transB"]),
    (
        "Conv",
        &["kernel_shape", "strides", "dilations", "pads", "auto_pad", "group"],
    ),
    (
        "ConvInteger",
        &["kernel_shape", "strides", "dilations", "pads", "auto_pad", "group"],
    ),
    (
        "MaxPool",
        &[
            "kernel_shape",
            "strides",
            "dilations",
            "pads",
            "auto_pad",
            "ceil_mode",
            "storage_order",
        ],
    ),
    (
        "AveragePool",
        &[
            "kernel_shape",
            "strides",
            "dilations",
            "pads",
            "auto_pad",
            "ceil_mode",
            "count_include_pad",
        ],
    ),
];

/// Writes one node.
pub(super) fn export_node(
    b: &mut Builder,
    model: &Model,
    n: &Node,
    opts: &OnnxExportOptions,
) -> Result<(), ExportError> {
    let op = n.op.op_type();
    match op {
        "QLinear" => return quant::qlinear(b, model, n, opts),
        "QConv" => return super::qconv::qconv(b, model, n),
        "Linear" => return linear(b, model, n),
        _ => {}
    }
    for i in &n.inputs {
        if model.graph().is_param(i) {
            param(b, model, i)?;
        }
    }
    let ins: Vec<&str> = n.inputs.iter().map(String::as_str).collect();
    let outs: Vec<&str> = n.outputs.iter().map(String::as_str).collect();
    let a = n.op.attrs();
    if let Some((_, keys)) = SAME.iter().find(|(name, _)| *name == op) {
        b.node(&n.name, op, &ins, &outs, copy_attrs(&a, keys));
        return Ok(());
    }
    let ints = |key: &str| -> Vec<i64> {
        a.get(key)
            .and_then(|v| v.as_array())
            .map_or(Vec::new(), |v| v.iter().filter_map(|x| x.as_i64()).collect())
    };
    match op {
        "Silu" => {
            let s = b.op(&n.name, "Sigmoid", &ins, &format!("{}.sigmoid", n.outputs[0]), vec![]);
            b.node(&format!("{}.mul", n.name), "Mul", &[ins[0], &s], &outs, vec![]);
        }
        "Reshape" => {
            let s = b.ints(&format!("{}.shape", n.name), &ints("shape"))?;
            b.node(&n.name, op, &[ins[0], &s], &outs, copy_attrs(&a, &["allowzero"]));
        }
        "Squeeze" | "Unsqueeze" => {
            let s = b.ints(&format!("{}.axes", n.name), &ints("axes"))?;
            b.node(&n.name, op, &[ins[0], &s], &outs, vec![]);
        }
        // Axes as an input (opset 18 on); none: every axis; an empty list: none.
        "ReduceMin" | "ReduceMax" => {
            let mut inputs = vec![ins[0].to_string()];
            let mut attrs = copy_attrs(&a, &["keepdims"]);
            if a.contains_key("axes") {
                let axes = ints("axes");
                if axes.is_empty() {
                    attrs.push(("noop_with_empty_axes", Attr::Int(1)));
                }
                inputs.push(b.ints(&format!("{}.axes", n.name), &axes)?);
            }
            let inputs: Vec<&str> = inputs.iter().map(String::as_str).collect();
            b.node(&n.name, op, &inputs, &outs, attrs);
        }
        "Cast" | "CastUnsaturated" => {
            let to = dtype_code(n, a.get("to").and_then(|v| v.as_str()).unwrap_or(""))?;
            let mut attrs = vec![("to", Attr::Int(to))];
            if op == "CastUnsaturated" {
                attrs.push(("saturate", Attr::Int(0)));
            }
            b.node(&n.name, "Cast", &ins, &outs, attrs);
        }
        "DequantizeLinear" => {
            let mut attrs = copy_attrs(&a, &["axis", "block_size"]);
            if let Some(d) = a.get("output_dtype").and_then(|v| v.as_str()) {
                attrs.push(("output_dtype", Attr::Int(dtype_code(n, d)?)));
            }
            b.node(&n.name, op, &ins, &outs, attrs);
        }
        "L2Normalize" => {
            let mut attrs = copy_attrs(&a, &["axis"]);
            attrs.push(("p", Attr::Int(2)));
            b.node(&n.name, "LpNormalization", &ins, &outs, attrs);
        }
        "Attention" => attention(b, model, n)?,
        "MaskedMeanPool" => masked_mean_pool(b, n)?,
        _ => return Err(unsupported(n, "no ONNX mapping for this op")),
    }
    Ok(())
}

/// True when `name` has rank 2 in the graph.
pub(super) fn is_2d(model: &Model, name: &str) -> bool {
    model.graph().value_type(name).is_some_and(|t| t.rank() == 2)
}

/// `Linear(x, W[out, in], b)`: `Gemm(transB = 1)` for 2-D `x`, else
/// `MatMul(x, Wᵀ) + b`.
fn linear(b: &mut Builder, model: &Model, n: &Node) -> Result<(), ExportError> {
    let (x, w) = (n.inputs[0].as_str(), n.inputs[1].as_str());
    let bias = n.inputs.get(2).map(String::as_str);
    let out = n.outputs[0].as_str();
    if let Some(bias) = bias {
        param(b, model, bias)?;
    }
    if is_2d(model, x) {
        param(b, model, w)?;
        let mut ins = vec![x, w];
        ins.extend(bias);
        b.node(&n.name, "Gemm", &ins, &[out], vec![("transB", Attr::Int(1))]);
        return Ok(());
    }
    let wt = match model.param(w) {
        Some(t) => {
            let t = t.clone();
            b.derived(&format!("{w}.T"), || transpose2(&t))?
        }
        None => b.op(
            &format!("{}.transpose", n.name),
            "Transpose",
            &[w],
            &format!("{w}.T"),
            vec![("perm", Attr::Ints(vec![1, 0]))],
        ),
    };
    matmul_bias(b, n, x, &wt, bias, out);
    Ok(())
}

/// `MatMul(x, w)` into `out`, with `+ bias` when there is one.
pub(super) fn matmul_bias(b: &mut Builder, n: &Node, x: &str, w: &str, bias: Option<&str>, out: &str) {
    match bias {
        None => b.node(&n.name, "MatMul", &[x, w], &[out], vec![]),
        Some(bias) => {
            let y = b.op(&n.name, "MatMul", &[x, w], &format!("{out}.matmul"), vec![]);
            b.node(&format!("{}.bias", n.name), "Add", &[&y, bias], &[out], vec![]);
        }
    }
}

/// A 2-D tensor transposed (any element type).
pub(super) fn transpose2(t: &Tensor) -> Result<Tensor, ExportError> {
    let s = t.shape();
    let (r, c) = match s {
        [r, c] => (*r, *c),
        _ => {
            return Err(ExportError::Op(crate::error::OpError::Shape(format!(
                "a 2-D weight to transpose, got {s:?}"
            ))))
        }
    };
    let size = t.dtype().size_in_bytes();
    let bytes = t.to_le_bytes();
    let mut out = vec![0u8; bytes.len()];
    for i in 0..r {
        for j in 0..c {
            let (src, dst) = ((i * c + j) * size, (j * r + i) * size);
            out[dst..dst + size].copy_from_slice(&bytes[src..src + size]);
        }
    }
    Ok(Tensor::from_le_bytes(t.dtype(), vec![c, r], &out)?)
}

/// `Attention(q, k, v, mask?)`: heads split by `Reshape`/`Transpose`,
/// `softmax(q·kᵀ·scale + (1 - mask)·(-1e30))·v`, heads joined again. The
/// additive mask assumes 0/1 mask values (as tokenizers produce).
fn attention(b: &mut Builder, model: &Model, n: &Node) -> Result<(), ExportError> {
    let Some(att) = n.op.downcast_ref::<Attention>() else {
        return Err(unsupported(n, "not wginfer's Attention"));
    };
    let h = att.num_heads as i64;
    let width = match model.graph().value_type(&n.inputs[0]).and_then(|t| t.shape.last()) {
        Some(Dim::Known(w)) => *w as i64,
        _ => return Err(unsupported(n, "the width of q must be known")),
    };
    let d = width / h.max(1);
    let nm = n.name.as_str();
    let heads = b.ints(&format!("{nm}.heads_shape"), &[0, 0, h, d])?;
    let mut split = |v: &str, perm: Vec<i64>, tag: &str| {
        let r = b.step(nm, &format!("{tag}.heads"), "Reshape", &[v, &heads], vec![]);
        b.step(
            nm,
            &format!("{tag}.t"),
            "Transpose",
            &[&r],
            vec![("perm", Attr::Ints(perm))],
        )
    };
    let q = split(&n.inputs[0], vec![0, 2, 1, 3], "q");
    let k = split(&n.inputs[1], vec![0, 2, 3, 1], "k");
    let v = split(&n.inputs[2], vec![0, 2, 1, 3], "v");
    let s = b.step(nm, "scores", "MatMul", &[&q, &k], vec![]);
    let c = b.scalar(&format!("{nm}.scale"), att.scale_for(d as usize))?;
    let mut s = b.step(nm, "scaled", "Mul", &[&s, &c], vec![]);
    if let Some(mask) = n.inputs.get(3) {
        let one = b.scalar(&format!("{nm}.one"), 1.0)?;
        let big = b.scalar(&format!("{nm}.neg_big"), -1e30)?;
        let axes = b.ints(&format!("{nm}.mask_axes"), &[1, 2])?;
        let inv = b.step(nm, "mask_inv", "Sub", &[&one, mask], vec![]);
        let add = b.step(nm, "mask_bias", "Mul", &[&inv, &big], vec![]);
        let add = b.step(nm, "mask_4d", "Unsqueeze", &[&add, &axes], vec![]);
        s = b.step(nm, "masked", "Add", &[&s, &add], vec![]);
    }
    let p = b.step(nm, "probs", "Softmax", &[&s], vec![("axis", Attr::Int(-1))]);
    let o = b.step(nm, "context", "MatMul", &[&p, &v], vec![]);
    let o = b.step(
        nm,
        "merged",
        "Transpose",
        &[&o],
        vec![("perm", Attr::Ints(vec![0, 2, 1, 3]))],
    );
    let joined = b.ints(&format!("{nm}.out_shape"), &[0, 0, width])?;
    b.node(nm, "Reshape", &[&o, &joined], &[&n.outputs[0]], vec![]);
    Ok(())
}

/// `MaskedMeanPool(x [B, S, E], mask [B, S])`: `(mask · x) / (mask · 1)` as
/// two batched `MatMul`s over the mask as a `[B, 1, S]` row.
fn masked_mean_pool(b: &mut Builder, n: &Node) -> Result<(), ExportError> {
    let nm = n.name.as_str();
    let (x, mask) = (n.inputs[0].as_str(), n.inputs[1].as_str());
    let ax1 = b.ints(&format!("{nm}.axis1"), &[1])?;
    let ax2 = b.ints(&format!("{nm}.axis2"), &[2])?;
    let zero = b.scalar(&format!("{nm}.zero"), 0.0)?;
    let one = b.scalar(&format!("{nm}.one"), 1.0)?;
    let row = b.step(nm, "row", "Unsqueeze", &[mask, &ax1], vec![]);
    let sum = b.step(nm, "sum", "MatMul", &[&row, x], vec![]);
    let z = b.step(nm, "zeros", "Mul", &[mask, &zero], vec![]);
    let ones = b.step(nm, "ones", "Add", &[&z, &one], vec![]);
    let col = b.step(nm, "col", "Unsqueeze", &[&ones, &ax2], vec![]);
    let count = b.step(nm, "count", "MatMul", &[&row, &col], vec![]);
    let mean = b.step(nm, "mean", "Div", &[&sum, &count], vec![]);
    b.node(nm, "Squeeze", &[&mean, &ax1], &[&n.outputs[0]], vec![]);
    Ok(())
}
