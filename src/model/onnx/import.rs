//! ONNX graph → wginfer graph: constant folding, op mapping, BatchNorm folding.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use super::proto::{attr_type, AttributeProto, GraphProto, ModelProto, NodeProto, ValueInfoProto};
use super::{dtype_from_onnx, onnx_type_name, tensor_from_proto, OnnxError};
use crate::graph::{Graph, Node, ParamInfo, ValueInfo};
use crate::model::Model;
use crate::ops::binary::{broadcast_offset, broadcast_shapes, Binary, BinaryKind};
use crate::ops::cast::{Cast, CastUnsaturated};
use crate::ops::linear::Linear;
use crate::ops::matmul::MatMul;
use crate::ops::movement::{gather_flat, Concat, Gather, Transpose};
use crate::ops::norm::{BatchNorm, LayerNorm};
use crate::ops::qlinear::QLinear;
use crate::ops::quantize::DequantizeLinear;
use crate::ops::softmax::{LogSoftmax, Softmax};
use crate::ops::unary::{Unary, UnaryKind};
use crate::ops::view::{Axes, Flatten, Reshape};
use crate::ops::{self, Attrs, Op};
use crate::quant::WeightFormat;
use crate::tensor::{numel, DType, Dim, Storage, Tensor, ValueType};

/// The ONNX op types the importer maps (some only for constant inputs or
/// some attribute values; the error says which when it cannot).
pub const SUPPORTED: &[&str] = &[
    "Constant",
    "Identity",
    "Dropout",
    "Shape",
    "Gather",
    "Add",
    "Sub",
    "Mul",
    "Div",
    "Relu",
    "Sigmoid",
    "Tanh",
    "Gelu",
    "Erf",
    "LeakyRelu",
    "Softmax",
    "LogSoftmax",
    "MatMul",
    "Gemm",
    "Flatten",
    "Reshape",
    "Transpose",
    "Squeeze",
    "Unsqueeze",
    "Concat",
    "Cast",
    "CastLike",
    "Conv",
    "MaxPool",
    "AveragePool",
    "GlobalAveragePool",
    "BatchNormalization",
    "LayerNormalization",
    "DequantizeLinear",
    "Neg",
    "Abs",
    "Exp",
    "Log",
    "Sqrt",
    "Reciprocal",
    "LpNormalization",
];

/// Options for [`super::import_bytes`].
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Graph inputs to bind to constant values (folded into the model), e.g.
    /// a `shape` input that must be static for `Reshape`.
    pub constants: HashMap<String, Tensor>,
}

#[derive(Clone, Debug)]
enum Val {
    Const(Tensor),
    Dyn(ValueType),
}

/// Why a node could not be imported (collected, reported together).
struct Skip(String);

impl From<crate::error::OpError> for Skip {
    fn from(e: crate::error::OpError) -> Self {
        Skip(e.to_string())
    }
}

impl From<crate::error::TensorError> for Skip {
    fn from(e: crate::error::TensorError) -> Self {
        Skip(e.to_string())
    }
}

struct Ctx<'a> {
    dir: &'a Path,
    opset: i64,
    vals: HashMap<String, Val>,
    /// IR value name of an ONNX value (Identity/Dropout outputs alias their input).
    alias: HashMap<String, String>,
    nodes: Vec<Node>,
    node_names: HashSet<String>,
    producer: HashMap<String, usize>,
    consumers: HashMap<String, usize>,
    graph_outputs: HashSet<String>,
    fresh: usize,
    /// Constant outputs of `DequantizeLinear` (also folded to f32 in `vals`),
    /// so a MatMul or Gemm over one keeps the int8 weight as a QLinear.
    dequantized: HashMap<String, Dequantized>,
    /// Weight format of packed parameters (others are plain).
    formats: HashMap<String, String>,
}

/// A constant int8/uint8 tensor and its dequantization parameters.
#[derive(Clone, Debug)]
struct Dequantized {
    q: Tensor,
    /// One scale, or one per index of `axis`.
    scale: Vec<f32>,
    /// Zero points as integers (one, or one per index of `axis`).
    zero: Vec<i32>,
    axis: usize,
}

impl Dequantized {
    /// `(q - zero) · scale` as an f32 tensor of q's shape.
    fn to_f32(&self) -> Result<Tensor, Skip> {
        let s = self.q.shape();
        let inner: usize = s[self.axis + 1..].iter().product();
        let q = int_values(&self.q)?;
        let at = |v: usize, i: usize| if v == 1 { 0 } else { (i / inner.max(1)) % s[self.axis] };
        let y = q
            .iter()
            .enumerate()
            .map(|(i, &v)| (v - self.zero[at(self.zero.len(), i)]) as f32 * self.scale[at(self.scale.len(), i)])
            .collect();
        Ok(Tensor::from_vec(s.to_vec(), y)?)
    }

    /// As [`QLinear`] packed tensors for a weight stored `[in, out]` (with
    /// `out_axis = 1`) or `[out, in]` (with `out_axis = 0`); `None` when the
    /// scales run along the input axis (no per-output-channel format holds that).
    fn pack(&self, out_axis: usize) -> Result<Option<(WeightFormat, Vec<Tensor>)>, Skip> {
        let s = self.q.shape();
        if s.len() != 2
            || (self.scale.len() > 1 && self.axis != out_axis)
            || (self.zero.len() > 1 && self.axis != out_axis)
        {
            return Ok(None);
        }
        let (n, k) = (s[out_axis], s[1 - out_axis]);
        let q = int_values(&self.q)?;
        // Row-major [out, in].
        let rows: Vec<i32> = if out_axis == 0 {
            q
        } else {
            (0..n * k).map(|i| q[(i % k) * n + i / k]).collect()
        };
        let per = |v: &[i32]| -> Vec<i32> { (0..n).map(|c| v[if v.len() == 1 { 0 } else { c }]).collect() };
        let scale: Vec<f32> = (0..n)
            .map(|c| self.scale[if self.scale.len() == 1 { 0 } else { c }])
            .collect();
        let zero = per(&self.zero);
        let scale_t = Tensor::from_vec(vec![n], scale)?;
        if self.q.dtype() == DType::I8 && zero.iter().all(|&z| z == 0) {
            let q8 = rows.iter().map(|&v| v as i8).collect();
            let q = Tensor::new(vec![n, k], Storage::I8(q8))?;
            return Ok(Some((WeightFormat::Int8 { affine: false }, vec![q, scale_t])));
        }
        // Affine: u8 values and zero points (int8 shifted by 128: q - z is unchanged).
        let shift = if self.q.dtype() == DType::I8 { 128 } else { 0 };
        let q8 = rows.iter().map(|&v| (v + shift) as u8).collect();
        let z8 = zero.iter().map(|&v| (v + shift) as u8).collect();
        Ok(Some((
            WeightFormat::Int8 { affine: true },
            vec![
                Tensor::new(vec![n, k], Storage::U8(q8))?,
                scale_t,
                Tensor::new(vec![n], Storage::U8(z8))?,
            ],
        )))
    }
}

/// The values of an int8 or uint8 tensor.
fn int_values(t: &Tensor) -> Result<Vec<i32>, Skip> {
    match t.dtype() {
        DType::I8 => Ok(t.as_slice::<i8>()?.iter().map(|&v| v as i32).collect()),
        DType::U8 => Ok(t.as_slice::<u8>()?.iter().map(|&v| v as i32).collect()),
        other => Err(skip(format!("quantized values of dtype {other}: only int8 and uint8"))),
    }
}

fn type_of(v: &Val) -> ValueType {
    match v {
        Val::Const(t) => ValueType::known(t.dtype(), t.shape()),
        Val::Dyn(t) => t.clone(),
    }
}

/// Attribute access for one node.
struct A<'a>(&'a NodeProto);

impl A<'_> {
    fn get(&self, name: &str) -> Option<&AttributeProto> {
        self.0.attribute.iter().find(|a| a.name == name)
    }
    fn i(&self, name: &str, default: i64) -> i64 {
        self.get(name).map_or(default, |a| a.i)
    }
    fn f(&self, name: &str, default: f32) -> f32 {
        self.get(name).map_or(default, |a| a.f)
    }
    fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }
    fn s(&self, name: &str) -> Option<String> {
        self.get(name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
    /// Every int, ints, float and string attribute as JSON (for registry builders).
    fn json(&self) -> Attrs {
        let mut out = Attrs::new();
        for a in &self.0.attribute {
            let v: serde_json::Value = match a.r#type {
                attr_type::INT => a.i.into(),
                attr_type::INTS => a.ints.clone().into(),
                attr_type::FLOAT => (a.f as f64).into(),
                attr_type::FLOATS => a.floats.iter().map(|&x| x as f64).collect::<Vec<_>>().into(),
                attr_type::STRING => String::from_utf8_lossy(&a.s).into_owned().into(),
                _ => continue,
            };
            out.insert(a.name.clone(), v);
        }
        out
    }
}

pub(super) fn import(model: &ModelProto, dir: &Path, options: &ImportOptions) -> Result<Model, OnnxError> {
    let graph = model.graph.as_ref().ok_or(OnnxError::NoGraph)?;
    let opset = model
        .opset_import
        .iter()
        .find(|o| o.domain.is_empty() || o.domain == "ai.onnx")
        .map_or(21, |o| o.version);
    let mut cx = Ctx {
        dir,
        opset,
        vals: HashMap::new(),
        alias: HashMap::new(),
        nodes: Vec::new(),
        node_names: HashSet::new(),
        producer: HashMap::new(),
        consumers: HashMap::new(),
        graph_outputs: graph.output.iter().map(|o| o.name.clone()).collect(),
        fresh: 0,
        dequantized: HashMap::new(),
        formats: HashMap::new(),
    };
    for t in &graph.initializer {
        cx.vals.insert(t.name.clone(), Val::Const(tensor_from_proto(t, dir)?));
    }
    for (name, t) in &options.constants {
        cx.vals.insert(name.clone(), Val::Const(t.clone()));
    }
    let mut inputs = Vec::new();
    for i in &graph.input {
        if cx.vals.contains_key(&i.name) {
            continue;
        }
        let ty = value_type(i)?;
        cx.vals.insert(i.name.clone(), Val::Dyn(ty.clone()));
        inputs.push(ValueInfo {
            name: i.name.clone(),
            ty,
        });
    }
    for n in &graph.node {
        for i in &n.input {
            *cx.consumers.entry(i.clone()).or_default() += 1;
        }
    }
    let mut unsupported: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut poisoned: HashSet<String> = HashSet::new();
    for (index, n) in graph.node.iter().enumerate() {
        let name = if n.name.is_empty() {
            format!("{}_{index}", n.op_type)
        } else {
            n.name.clone()
        };
        if n.input.iter().any(|i| poisoned.contains(i)) {
            // Downstream of a node that failed: still list an unknown op type.
            if !SUPPORTED.contains(&n.op_type.as_str()) {
                unsupported.entry(n.op_type.clone()).or_default().push(name);
            }
            poisoned.extend(n.output.iter().cloned());
            continue;
        }
        let result = if !n.domain.is_empty() && n.domain != "ai.onnx" {
            Err(Skip(format!("domain `{}` is not supported", n.domain)))
        } else {
            cx.lower(n, &name)
        };
        if let Err(Skip(reason)) = result {
            let label = if reason.is_empty() {
                name
            } else {
                format!("{name}: {reason}")
            };
            unsupported.entry(n.op_type.clone()).or_default().push(label);
            poisoned.extend(n.output.iter().cloned());
        }
    }
    if !unsupported.is_empty() {
        return Err(OnnxError::Unsupported(unsupported.into_iter().collect()));
    }
    cx.finish(graph, inputs)
}

fn value_type(v: &ValueInfoProto) -> Result<ValueType, OnnxError> {
    let bad = |m: String| OnnxError::Tensor {
        name: v.name.clone(),
        message: m,
    };
    let tt = v
        .r#type
        .as_ref()
        .and_then(|t| t.tensor_type.as_ref())
        .ok_or_else(|| bad("graph input is not a tensor (sequences and maps are not supported)".into()))?;
    let dtype = dtype_from_onnx(tt.elem_type).ok_or_else(|| {
        bad(format!(
            "graph input has element type {}, which wginfer does not support",
            onnx_type_name(tt.elem_type)
        ))
    })?;
    let shape = tt
        .shape
        .as_ref()
        .ok_or_else(|| bad("graph input has no shape; wginfer needs at least its rank".into()))?;
    let dims = shape
        .dim
        .iter()
        .enumerate()
        .map(|(i, d)| match (d.dim_value, &d.dim_param) {
            (Some(n), _) if n >= 0 => Dim::Known(n as usize),
            (_, Some(p)) if !p.is_empty() => Dim::Sym(p.clone()),
            _ => Dim::Sym(format!("{}_dim{i}", v.name)),
        })
        .collect();
    Ok(ValueType { dtype, shape: dims })
}

fn skip(m: impl Into<String>) -> Skip {
    Skip(m.into())
}

impl Ctx<'_> {
    fn resolve(&self, name: &str) -> String {
        self.alias.get(name).cloned().unwrap_or_else(|| name.to_string())
    }

    fn val(&self, name: &str) -> Result<&Val, Skip> {
        self.vals
            .get(&self.resolve(name))
            .ok_or_else(|| skip(format!("input `{name}` is not defined before this node")))
    }

    fn constant(&self, name: &str) -> Result<&Tensor, Skip> {
        match self.val(name)? {
            Val::Const(t) => Ok(t),
            Val::Dyn(_) => Err(skip(format!(
                "input `{name}` must be a constant (an initializer or computable at import), but it is computed at run time"
            ))),
        }
    }

    fn unique_name(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        while !self.node_names.insert(name.clone()) {
            self.fresh += 1;
            name = format!("{base}_{}", self.fresh);
        }
        name
    }

    /// Adds `op` over `inputs`, or folds it when every input is constant.
    fn emit(&mut self, name: &str, op: Arc<dyn Op>, inputs: &[String], outputs: &[String]) -> Result<(), Skip> {
        let resolved: Vec<String> = inputs.iter().map(|i| self.resolve(i)).collect();
        let mut vals = Vec::with_capacity(resolved.len());
        for i in &resolved {
            vals.push(self.val(i)?.clone());
        }
        if vals.iter().all(|v| matches!(v, Val::Const(_))) {
            let ts: Vec<&Tensor> = vals
                .iter()
                .filter_map(|v| match v {
                    Val::Const(t) => Some(t),
                    Val::Dyn(_) => None,
                })
                .collect();
            let outs = op.reference(&ts)?;
            for (o, t) in outputs.iter().zip(outs) {
                self.vals.insert(o.clone(), Val::Const(t));
            }
            return Ok(());
        }
        let types: Vec<ValueType> = vals.iter().map(type_of).collect();
        let out_types = op.infer(&types)?;
        for (o, t) in outputs.iter().zip(out_types) {
            self.vals.insert(o.clone(), Val::Dyn(t));
        }
        let node_name = self.unique_name(name);
        for o in outputs {
            self.producer.insert(o.clone(), self.nodes.len());
        }
        self.nodes.push(Node {
            name: node_name,
            op,
            inputs: resolved,
            outputs: outputs.to_vec(),
        });
        Ok(())
    }

    fn lower(&mut self, n: &NodeProto, name: &str) -> Result<(), Skip> {
        let a = A(n);
        // Trailing optional inputs given as "" are absent.
        let mut ins: Vec<String> = n.input.clone();
        while ins.last().is_some_and(|s| s.is_empty()) {
            ins.pop();
        }
        let outs = n.output.clone();
        let one = |op: Arc<dyn Op>| (op, ins.clone());
        let arity = |lo: usize, hi: usize| -> Result<(), Skip> {
            if ins.len() < lo || ins.len() > hi {
                return Err(skip(format!("has {} inputs; expected {lo}..={hi}", ins.len())));
            }
            Ok(())
        };
        let (op, inputs): (Arc<dyn Op>, Vec<String>) = match n.op_type.as_str() {
            "Constant" => {
                let t = constant_value(&a, self.dir)?;
                let o = outs.first().ok_or_else(|| skip("has no output"))?;
                self.vals.insert(o.clone(), Val::Const(t));
                return Ok(());
            }
            "Identity" | "Dropout" => {
                arity(1, 3)?;
                if n.op_type == "Dropout" {
                    let training = match ins.get(2).filter(|t| !t.is_empty()) {
                        Some(tm) => self.constant(tm)?.to_i64_vec().first().copied().unwrap_or(0) != 0,
                        None => false,
                    };
                    if training {
                        // Identity (mask all true) only when nothing is dropped.
                        let ratio = match ins.get(1).filter(|r| !r.is_empty()) {
                            Some(r) => self.constant(r)?.to_f32_vec().first().copied(),
                            None => Some(0.5),
                        };
                        if ratio != Some(0.0) {
                            return Err(skip(
                                "training_mode = true with a ratio other than 0 drops at random (not supported)",
                            ));
                        }
                    }
                    // The mask keeps every element: a constant of trues.
                    if let Some(m) = outs.get(1).filter(|m| !m.is_empty()) {
                        let ty = type_of(self.val(&ins[0])?);
                        let shape: Option<Vec<usize>> = ty.shape.iter().map(|d| d.known()).collect();
                        let shape = shape.ok_or_else(|| {
                            skip(format!(
                                "the mask output of Dropout over {} (symbolic dimensions)",
                                ty.shape_string()
                            ))
                        })?;
                        let n = shape.iter().product();
                        self.vals
                            .insert(m.clone(), Val::Const(Tensor::from_vec(shape, vec![true; n])?));
                    }
                }
                let o = outs.first().ok_or_else(|| skip("has no output"))?;
                let src = self.resolve(&ins[0]);
                match self.val(&src)?.clone() {
                    Val::Const(t) => {
                        self.vals.insert(o.clone(), Val::Const(t));
                    }
                    Val::Dyn(_) => {
                        self.alias.insert(o.clone(), src);
                    }
                }
                return Ok(());
            }
            "Shape" => {
                arity(1, 1)?;
                let ty = type_of(self.val(&ins[0])?);
                let r = ty.rank() as i64;
                let clamp = |v: i64| (if v < 0 { v + r } else { v }).clamp(0, r) as usize;
                let (s, e) = (clamp(a.i("start", 0)), clamp(a.i("end", r)));
                let dims = ty.shape.get(s..e.max(s)).unwrap_or(&[]);
                let known: Option<Vec<i64>> = dims.iter().map(|d| d.known().map(|v| v as i64)).collect();
                let known = known.ok_or_else(|| {
                    skip(format!(
                        "Shape of {} has symbolic dimensions: it cannot be folded",
                        ty.shape_string()
                    ))
                })?;
                let o = outs.first().ok_or_else(|| skip("has no output"))?;
                let len = known.len();
                self.vals
                    .insert(o.clone(), Val::Const(Tensor::from_vec(vec![len], known)?));
                return Ok(());
            }
            "Gather" => {
                arity(2, 2)?;
                let axis = a.i("axis", 0);
                if let (Ok(data), Ok(idx)) = (self.constant(&ins[0]), self.constant(&ins[1])) {
                    let t = gather(data, idx, axis)?;
                    let o = outs.first().ok_or_else(|| skip("has no output"))?;
                    self.vals.insert(o.clone(), Val::Const(t));
                    return Ok(());
                }
                // Computed at run time (an embedding lookup of input ids): the op.
                one(Arc::new(Gather { axis }))
            }
            "Add" | "Sub" | "Mul" | "Div" => {
                arity(2, 2)?;
                if let (Ok(x), Ok(y)) = (self.constant(&ins[0]), self.constant(&ins[1])) {
                    if x.dtype() == DType::I64 && y.dtype() == DType::I64 {
                        let t = int_arith(&n.op_type, x, y)?;
                        if let Some(o) = outs.first() {
                            self.vals.insert(o.clone(), Val::Const(t));
                        }
                        return Ok(());
                    }
                }
                let op: Arc<dyn Op> = match n.op_type.as_str() {
                    "Add" => Arc::new(Binary { kind: BinaryKind::Add }),
                    "Mul" => Arc::new(Binary { kind: BinaryKind::Mul }),
                    "Sub" => Arc::new(Binary { kind: BinaryKind::Sub }),
                    _ => Arc::new(Binary { kind: BinaryKind::Div }),
                };
                one(op)
            }
            "Relu" => one(Arc::new(Unary { kind: UnaryKind::Relu })),
            "Sigmoid" => one(Arc::new(Unary {
                kind: UnaryKind::Sigmoid,
            })),
            "Tanh" => one(Arc::new(Unary { kind: UnaryKind::Tanh })),
            "Gelu" => {
                let kind = match a.s("approximate").as_deref() {
                    None | Some("none") => UnaryKind::Gelu,
                    Some("tanh") => UnaryKind::GeluTanh,
                    Some(o) => return Err(skip(format!("approximate = `{o}` is not none or tanh"))),
                };
                one(Arc::new(Unary { kind }))
            }
            "Erf" => one(Arc::new(Unary { kind: UnaryKind::Erf })),
            "Neg" | "Abs" | "Exp" | "Log" | "Sqrt" | "Reciprocal" => {
                arity(1, 1)?;
                let kind = match n.op_type.as_str() {
                    "Neg" => UnaryKind::Neg,
                    "Abs" => UnaryKind::Abs,
                    "Exp" => UnaryKind::Exp,
                    "Log" => UnaryKind::Log,
                    "Sqrt" => UnaryKind::Sqrt,
                    _ => UnaryKind::Reciprocal,
                };
                one(Arc::new(Unary { kind }))
            }
            "LpNormalization" => {
                if a.i("p", 2) != 2 {
                    return Err(skip("only p = 2 (L2) is supported"));
                }
                // ONNX divides by the plain norm; the epsilon only keeps a zero vector zero.
                one(Arc::new(ops::l2norm::L2Normalize {
                    axis: a.i("axis", -1),
                    epsilon: 1e-12,
                }))
            }
            "LeakyRelu" => one(Arc::new(Unary {
                kind: UnaryKind::LeakyRelu(a.f("alpha", 0.01)),
            })),
            "Softmax" | "LogSoftmax" => {
                arity(1, 1)?;
                let rank = type_of(self.val(&ins[0])?).rank() as i64;
                let axis = a.i("axis", if self.opset >= 13 { -1 } else { 1 });
                let last = axis == -1 || axis == rank - 1;
                if self.opset < 13 && !last {
                    return Err(skip(format!(
                        "opset {} {} over the flattened axes {axis}.. is not supported (only the last axis)",
                        self.opset, n.op_type
                    )));
                }
                if n.op_type == "Softmax" {
                    one(Arc::new(Softmax { axis }))
                } else {
                    one(Arc::new(LogSoftmax { axis }))
                }
            }
            "MatMul" => {
                arity(2, 2)?;
                if let Some(q) = self.quantized_linear(name, &ins[0], &ins[1], 1, None, &outs)? {
                    return Ok(q);
                }
                one(Arc::new(MatMul))
            }
            "DequantizeLinear" => {
                arity(2, 3)?;
                // A constant int8/uint8 weight with f32 per-tensor or per-axis
                // scales folds here (and may become a QLinear's packed weight);
                // anything else is the run-time op.
                let weight = a.i("block_size", 0) == 0
                    && a.i("output_dtype", 0) == 0
                    && self
                        .constant(&ins[0])
                        .is_ok_and(|x| matches!(x.dtype(), DType::I8 | DType::U8))
                    && self
                        .constant(&ins[1])
                        .is_ok_and(|s| s.dtype() == DType::F32 && s.rank() <= 1)
                    && ins[2..].iter().all(|z| self.constant(z).is_ok());
                if !weight {
                    let output = match a.i("output_dtype", 0) {
                        0 => None,
                        code => Some(dtype_from_onnx(code as i32).ok_or_else(|| {
                            skip(format!("output_dtype {} is not supported", onnx_type_name(code as i32)))
                        })?),
                    };
                    let block = a.i("block_size", 0);
                    let block_size =
                        usize::try_from(block).map_err(|_| skip(format!("block_size {block} is negative")))?;
                    return self.emit(
                        name,
                        Arc::new(DequantizeLinear {
                            axis: a.i("axis", 1),
                            block_size,
                            output,
                        }),
                        &ins,
                        &outs,
                    );
                }
                let x = self.constant(&ins[0])?;
                let scale = self.constant(&ins[1])?;
                if scale.dtype() != DType::F32 || scale.rank() > 1 {
                    return Err(skip(format!(
                        "the scale must be an f32 scalar or 1-D; got {}{:?}",
                        scale.dtype(),
                        scale.shape()
                    )));
                }
                let zero = match ins.get(2) {
                    Some(z) => {
                        let z = self.constant(z)?;
                        if z.dtype() != x.dtype() || z.numel() != scale.numel() {
                            return Err(skip("the zero point must match the input's dtype and the scale's size"));
                        }
                        int_values(z)?
                    }
                    None => vec![0],
                };
                let rank = x.rank();
                let axis = if scale.numel() > 1 || zero.len() > 1 {
                    let ax = ops::normalize_axis(a.i("axis", 1), rank)?;
                    if x.shape()[ax] != scale.numel() {
                        return Err(skip(format!(
                            "{} scales for axis {ax} of {:?}",
                            scale.numel(),
                            x.shape()
                        )));
                    }
                    ax
                } else {
                    0
                };
                let d = Dequantized {
                    q: x.clone(),
                    scale: scale.to_f32_vec(),
                    zero,
                    axis,
                };
                let f = d.to_f32()?;
                let o = outs.first().ok_or_else(|| skip("has no output"))?;
                self.vals.insert(o.clone(), Val::Const(f));
                self.dequantized.insert(o.clone(), d);
                return Ok(());
            }
            "Gemm" => {
                arity(2, 3)?;
                let (alpha, beta) = (a.f("alpha", 1.0), a.f("beta", 1.0));
                let (ta, tb) = (a.i("transA", 0) != 0, a.i("transB", 0) != 0);
                let w = self.constant(&ins[1]).ok().cloned();
                let bias = match ins.get(2) {
                    Some(c) => self.constant(c).ok().cloned().map(Some),
                    None => Some(None),
                };
                if let (Some(_), Some(bias)) = (&w, &bias) {
                    if alpha == 1.0 && beta == 1.0 && !ta {
                        let b = bias.as_ref().map(|_| ins[2].clone());
                        let out_axis = if tb { 0 } else { 1 };
                        if let Some(q) = self.quantized_linear(name, &ins[0], &ins[1], out_axis, b, &outs)? {
                            return Ok(q);
                        }
                    }
                }
                match (w, bias) {
                    (Some(w), Some(bias)) if alpha == 1.0 && beta == 1.0 && !ta && tb && w.rank() == 2 => {
                        let n_out = w.shape()[0];
                        let mut inputs = vec![ins[0].clone(), ins[1].clone()];
                        if let Some(b) = bias {
                            if b.numel() == n_out && b.dtype() == DType::F32 && b.rank() <= 2 {
                                let bname = if b.shape() == [n_out] {
                                    ins[2].clone()
                                } else {
                                    let nm = format!("{}.bias", ins[2]);
                                    self.vals.insert(nm.clone(), Val::Const(b.reshape(vec![n_out])?));
                                    nm
                                };
                                inputs.push(bname);
                            } else {
                                let op = ops::gemm::GEMM.build;
                                return self.emit(name, op(&a.json())?, &ins, &outs);
                            }
                        }
                        (Arc::new(Linear) as Arc<dyn Op>, inputs)
                    }
                    _ => one((ops::gemm::GEMM.build)(&a.json())?),
                }
            }
            "Flatten" => one(Arc::new(Flatten { axis: a.i("axis", 1) })),
            "Reshape" => {
                arity(2, 2)?;
                let shape = self.constant(&ins[1])?.to_i64_vec();
                let allowzero = a.i("allowzero", 0) != 0;
                (Arc::new(Reshape { shape, allowzero }), vec![ins[0].clone()])
            }
            "Transpose" => one(Arc::new(Transpose {
                perm: a.ints("perm").unwrap_or_default(),
            })),
            "Squeeze" | "Unsqueeze" => {
                arity(1, 2)?;
                let axes = match (ins.get(1), a.ints("axes")) {
                    (Some(x), _) => self.constant(x)?.to_i64_vec(),
                    (None, Some(v)) => v,
                    (None, None) => Vec::new(),
                };
                let unsqueeze = n.op_type == "Unsqueeze";
                if !unsqueeze && axes.is_empty() {
                    // Resolve "every size-1 axis" now, from the static shape.
                    let ty = type_of(self.val(&ins[0])?);
                    let mut list = Vec::new();
                    for (i, d) in ty.shape.iter().enumerate() {
                        match d {
                            Dim::Known(1) => list.push(i as i64),
                            Dim::Known(_) => {}
                            Dim::Sym(s) => {
                                return Err(skip(format!("Squeeze without axes over the symbolic dimension `{s}`")))
                            }
                        }
                    }
                    (Arc::new(Axes { unsqueeze, axes: list }), vec![ins[0].clone()])
                } else {
                    (Arc::new(Axes { unsqueeze, axes }), vec![ins[0].clone()])
                }
            }
            "Concat" => one(Arc::new(Concat { axis: a.i("axis", 0) })),
            "Cast" | "CastLike" => {
                let to = if n.op_type == "CastLike" {
                    arity(2, 2)?;
                    type_of(self.val(&ins[1])?).dtype
                } else {
                    let code = a.i("to", 0) as i32;
                    dtype_from_onnx(code)
                        .ok_or_else(|| skip(format!("cast to {} is not supported", onnx_type_name(code))))?
                };
                let float8 = matches!(
                    to,
                    DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ
                );
                if float8 && a.i("saturate", 1) == 0 {
                    return self.emit(name, Arc::new(CastUnsaturated { to }), &ins[..1], &outs);
                }
                if to == DType::F8E8M0 {
                    let mode = a.s("round_mode").unwrap_or_else(|| "up".into());
                    if mode != "up" || a.i("saturate", 1) == 0 {
                        return Err(skip(format!(
                            "cast to float8e8m0 with round_mode `{mode}`, saturate {} (only up, saturating)",
                            a.i("saturate", 1)
                        )));
                    }
                }
                (Arc::new(Cast { to }), vec![ins[0].clone()])
            }
            "Conv" => {
                arity(2, 3)?;
                if type_of(self.val(&ins[0])?).rank() == 3 {
                    return self.window_1d(name, &ops::conv::CONV, &a, &ins, &outs[..1], true);
                }
                one((ops::conv::CONV.build)(&a.json())?)
            }
            "MaxPool" | "AveragePool" => {
                let def = if n.op_type == "MaxPool" {
                    &ops::pool::MAX_POOL
                } else {
                    &ops::pool::AVERAGE_POOL
                };
                let outs1 = vec![outs.first().cloned().unwrap_or_default()];
                arity(1, 1)?;
                let indices = outs.get(1).is_some_and(|m| !m.is_empty());
                if type_of(self.val(&ins[0])?).rank() == 3 {
                    if indices {
                        return Err(skip("the Indices output of a 1-D MaxPool is not supported"));
                    }
                    return self.window_1d(name, def, &a, &ins, &outs1, false);
                }
                if indices {
                    let mut attrs = a.json();
                    attrs.insert("outputs".into(), 2.into());
                    return self.emit(name, (def.build)(&attrs)?, &ins, &outs[..2]);
                }
                return self.emit(name, (def.build)(&a.json())?, &ins, &outs1);
            }
            "GlobalAveragePool" => one(Arc::new(ops::pool::GlobalAveragePool)),
            "BatchNormalization" => {
                arity(5, 5)?;
                if a.i("training_mode", 0) != 0 {
                    // y, running mean, running variance (unrequested ones named for the graph).
                    let mut outs3 = outs.clone();
                    outs3.resize(3, String::new());
                    for (i, o) in outs3.iter_mut().enumerate() {
                        if o.is_empty() {
                            *o = format!("{name}.unused{i}");
                        }
                    }
                    let op = Arc::new(ops::norm::BatchNormTraining {
                        epsilon: a.f("epsilon", 1e-5),
                        momentum: a.f("momentum", 0.9),
                    });
                    return self.emit(name, op, &ins, &outs3);
                }
                if outs.iter().skip(1).any(|o| !o.is_empty()) {
                    return Err(skip("running statistics outputs outside training mode"));
                }
                let bn = BatchNorm {
                    epsilon: a.f("epsilon", 1e-5),
                };
                if self.fold_batchnorm(&bn, &ins, &outs[0])? {
                    return Ok(());
                }
                one(Arc::new(bn))
            }
            "LayerNormalization" => {
                arity(2, 3)?;
                let mut outs3 = outs.clone();
                let outputs = if outs.iter().skip(1).any(|o| !o.is_empty()) {
                    3
                } else {
                    1
                };
                outs3.truncate(outputs);
                while outs3.len() < outputs {
                    outs3.push(String::new());
                }
                for (i, o) in outs3.iter_mut().enumerate() {
                    if o.is_empty() {
                        *o = format!("{name}.unused{i}");
                    }
                }
                let op = Arc::new(LayerNorm {
                    axis: a.i("axis", -1),
                    epsilon: a.f("epsilon", 1e-5),
                    outputs,
                });
                return self.emit(name, op, &ins, &outs3);
            }
            _ => return Err(Skip(String::new())),
        };
        self.emit(name, op, &inputs, &outs)
    }

    /// A 1-D Conv or pool as the 2-D op over a height of 1: `x` (and a
    /// Conv's weight, folded when constant) gain an axis 2, the window
    /// attributes a leading 1 (pads `[b, e]` become `[0, b, 0, e]`), and the
    /// result loses axis 2 again.
    fn window_1d(
        &mut self,
        name: &str,
        def: &ops::OpDef,
        a: &A<'_>,
        ins: &[String],
        outs: &[String],
        conv: bool,
    ) -> Result<(), Skip> {
        let mut attrs = a.json();
        for key in ["kernel_shape", "strides", "dilations"] {
            if let Some(v) = a.ints(key) {
                if v.len() != 1 {
                    return Err(skip(format!("{key} {v:?} does not match a 1-D input")));
                }
                attrs.insert(key.into(), vec![1, v[0]].into());
            }
        }
        if let Some(p) = a.ints("pads") {
            if p.len() != 2 {
                return Err(skip(format!("pads {p:?} does not match a 1-D input")));
            }
            attrs.insert("pads".into(), vec![0, p[0], 0, p[1]].into());
        }
        let op = (def.build)(&attrs)?;
        let unsq = || -> Arc<dyn Op> {
            Arc::new(Axes {
                unsqueeze: true,
                axes: vec![2],
            })
        };
        let mut ins2 = Vec::with_capacity(ins.len());
        for (i, v) in ins.iter().enumerate() {
            if i == 0 || (conv && i == 1) {
                let v2 = format!("{name}.{i}.as2d");
                self.emit(
                    &format!("{name}.unsqueeze{i}"),
                    unsq(),
                    std::slice::from_ref(v),
                    std::slice::from_ref(&v2),
                )?;
                ins2.push(v2);
            } else {
                ins2.push(v.clone());
            }
        }
        let y = outs.first().ok_or_else(|| skip("has no output"))?;
        let y2 = format!("{name}.as2d");
        self.emit(name, op, &ins2, std::slice::from_ref(&y2))?;
        let sq: Arc<dyn Op> = Arc::new(Axes {
            unsqueeze: false,
            axes: vec![2],
        });
        self.emit(&format!("{name}.squeeze"), sq, &[y2], std::slice::from_ref(y))
    }

    /// Folds `BatchNormalization(Conv(x, w, b))` into the Conv when the Conv's
    /// weights and the statistics are constants and nothing else reads the
    /// Conv's output. Returns whether it folded.
    /// `x · W (+ bias)` with `W` the output of a constant `DequantizeLinear`
    /// (`out_axis`: W's axis of output features) as a [`QLinear`] over the
    /// int8 weight; `Ok(None)` when W is not one, or its scales do not run
    /// along the output axis, or the bias is not a row of N (the caller then
    /// uses the dequantized f32 weight).
    fn quantized_linear(
        &mut self,
        name: &str,
        x: &str,
        w: &str,
        out_axis: usize,
        bias: Option<String>,
        outs: &[String],
    ) -> Result<Option<()>, Skip> {
        let Some(d) = self.dequantized.get(&self.resolve(w)).cloned() else {
            return Ok(None);
        };
        if !matches!(self.val(x)?, Val::Dyn(_)) {
            return Ok(None);
        }
        let Some((format, packed)) = d.pack(out_axis)? else {
            return Ok(None);
        };
        let (n, k) = (packed[0].shape()[0], packed[0].shape()[1]);
        let mut inputs = vec![x.to_string()];
        for (suffix, t) in format.tensor_names().iter().zip(packed) {
            let pname = format!("{}.{suffix}", self.resolve(w));
            self.formats.insert(pname.clone(), format.name());
            self.vals.insert(pname.clone(), Val::Const(t));
            inputs.push(pname);
        }
        if let Some(b) = bias {
            let bt = self.constant(&b)?.clone();
            if bt.dtype() != DType::F32 || bt.numel() != n {
                return Ok(None);
            }
            let bname = format!("{}.bias", self.resolve(&b));
            self.vals.insert(bname.clone(), Val::Const(bt.reshape(vec![n])?));
            inputs.push(bname);
        }
        let op = Arc::new(QLinear {
            format,
            in_features: k,
            out_features: n,
        });
        self.emit(name, op, &inputs, &outs[..1])?;
        Ok(Some(()))
    }

    /// Folds an inference BatchNormalization into the Conv that produces its
    /// input, or the Linear (a `Gemm` with constant weights) when that input
    /// is `[batch, features]`: the weight rows and bias absorb the per-channel
    /// affine map. `false` when it cannot (the node then stays).
    fn fold_batchnorm(&mut self, bn: &BatchNorm, ins: &[String], out: &str) -> Result<bool, Skip> {
        let x = self.resolve(&ins[0]);
        let Some(&pi) = self.producer.get(&x) else {
            return Ok(false);
        };
        if self.consumers.get(&ins[0]).copied().unwrap_or(0) != 1 || self.graph_outputs.contains(&ins[0]) {
            return Ok(false);
        }
        let rank = type_of(self.val(&x)?).rank();
        let node = &self.nodes[pi];
        let foldable = match node.op.op_type() {
            "Conv" => true,
            "Linear" => rank == 2,
            _ => false,
        };
        if !foldable || node.outputs.len() != 1 {
            return Ok(false);
        }
        let stats: Result<Vec<Tensor>, Skip> = ins[1..].iter().map(|s| self.constant(s).cloned()).collect();
        let Ok(stats) = stats else { return Ok(false) };
        let Some(Val::Const(w)) = self.vals.get(&node.inputs[1]).cloned() else {
            return Ok(false);
        };
        let bias = match node.inputs.get(2) {
            Some(b) => match self.vals.get(b) {
                Some(Val::Const(t)) => Some(t.clone()),
                _ => return Ok(false),
            },
            None => None,
        };
        let refs: Vec<&Tensor> = std::iter::once(&w).chain(stats.iter()).collect();
        let (scale, shift) = bn.affine(&refs)?;
        let m = w.shape()[0];
        if scale.len() != m {
            return Ok(false);
        }
        let per = w.numel() / m.max(1);
        let wv: Vec<f32> = w
            .as_f32()?
            .iter()
            .enumerate()
            .map(|(i, &v)| v * scale[i / per.max(1)])
            .collect();
        let b0 = bias.map(|b| b.to_f32_vec()).unwrap_or_else(|| vec![0.0; m]);
        let bv: Vec<f32> = (0..m).map(|i| b0[i] * scale[i] + shift[i]).collect();
        let (wn, bnm) = (format!("{}.bn_weight", node.name), format!("{}.bn_bias", node.name));
        self.vals
            .insert(wn.clone(), Val::Const(Tensor::from_vec(w.shape().to_vec(), wv)?));
        self.vals
            .insert(bnm.clone(), Val::Const(Tensor::from_vec(vec![m], bv)?));
        let ty = self.vals.get(&x).cloned();
        let node = &mut self.nodes[pi];
        node.inputs = vec![node.inputs[0].clone(), wn, bnm];
        node.outputs = vec![out.to_string()];
        self.producer.insert(out.to_string(), pi);
        if let Some(ty) = ty {
            self.vals.insert(out.to_string(), ty);
        }
        Ok(true)
    }

    fn finish(mut self, graph: &GraphProto, inputs: Vec<ValueInfo>) -> Result<Model, OnnxError> {
        let mut outputs = Vec::new();
        for o in &graph.output {
            let ir = self.resolve(&o.name);
            let is_input = inputs.iter().any(|i| i.name == ir);
            if ir != o.name || is_input {
                // An output that is another value (Identity) gets a copy node.
                let rank = self.vals.get(&ir).map(|v| type_of(v).rank()).unwrap_or(0);
                let name = format!("{}.identity", o.name);
                self.emit(
                    &name,
                    Arc::new(Reshape {
                        shape: vec![0; rank],
                        allowzero: false,
                    }),
                    &[ir],
                    std::slice::from_ref(&o.name),
                )
                .map_err(|Skip(m)| OnnxError::Node {
                    node: name.clone(),
                    op: "Identity".into(),
                    message: m,
                })?;
            }
            let ty = self.vals.get(&o.name).map(type_of).ok_or_else(|| OnnxError::Node {
                node: o.name.clone(),
                op: "output".into(),
                message: "graph output is never computed".into(),
            })?;
            outputs.push(ValueInfo {
                name: o.name.clone(),
                ty,
            });
        }
        let mut wanted: Vec<String> = Vec::new();
        let mut seen = HashSet::new();
        for n in &self.nodes {
            for i in &n.inputs {
                if matches!(self.vals.get(i), Some(Val::Const(_))) && seen.insert(i.clone()) {
                    wanted.push(i.clone());
                }
            }
        }
        for o in &outputs {
            if matches!(self.vals.get(&o.name), Some(Val::Const(_))) && seen.insert(o.name.clone()) {
                wanted.push(o.name.clone());
            }
        }
        let mut params = Vec::new();
        let mut tensors = HashMap::new();
        for name in wanted {
            if let Some(Val::Const(t)) = self.vals.remove(&name) {
                let mut info = ParamInfo::plain(name.clone(), t.dtype(), t.shape().to_vec());
                if let Some(f) = self.formats.get(&name) {
                    info.format = f.clone();
                }
                params.push(info);
                tensors.insert(name, t);
            }
        }
        let g = Graph::new(graph.name.clone(), inputs, outputs, params, self.nodes)?;
        Model::new(g, tensors).map_err(|e| OnnxError::Model(e.to_string()))
    }
}

fn constant_value(a: &A<'_>, dir: &Path) -> Result<Tensor, Skip> {
    if let Some(t) = a.get("value").and_then(|x| x.t.as_ref()) {
        return tensor_from_proto(t, dir).map_err(|e| skip(e.to_string()));
    }
    if let Some(x) = a.get("value_float") {
        return Ok(Tensor::from_vec(vec![], vec![x.f])?);
    }
    if let Some(x) = a.get("value_floats") {
        return Ok(Tensor::from_vec(vec![x.floats.len()], x.floats.clone())?);
    }
    if let Some(x) = a.get("value_int") {
        return Ok(Tensor::from_vec(vec![], vec![x.i])?);
    }
    if let Some(x) = a.get("value_ints") {
        return Ok(Tensor::from_vec(vec![x.ints.len()], x.ints.clone())?);
    }
    Err(skip(
        "only value, value_float(s) and value_int(s) constants are supported",
    ))
}

/// `Gather` on constants (shape arithmetic).
fn gather(data: &Tensor, idx: &Tensor, axis: i64) -> Result<Tensor, Skip> {
    let s = data.shape();
    let r = s.len() as i64;
    let ax = if axis < 0 { axis + r } else { axis };
    if ax < 0 || ax >= r {
        return Err(skip(format!("axis {axis} is out of range for rank {r}")));
    }
    let ax = ax as usize;
    let (outer, len, inner) = (
        s[..ax].iter().product::<usize>(),
        s[ax],
        s[ax + 1..].iter().product::<usize>(),
    );
    let mut ids = Vec::with_capacity(idx.numel());
    for i in idx.to_i64_vec() {
        let j = if i < 0 { i + len as i64 } else { i };
        if j < 0 || j >= len as i64 {
            return Err(skip(format!("index {i} is out of range for a dimension of {len}")));
        }
        ids.push(j as usize);
    }
    let mut flat = Vec::with_capacity(outer * ids.len() * inner);
    for o in 0..outer {
        for &j in &ids {
            flat.extend((0..inner).map(|k| (o * len + j) * inner + k));
        }
    }
    let mut shape = s[..ax].to_vec();
    shape.extend_from_slice(idx.shape());
    shape.extend_from_slice(&s[ax + 1..]);
    Ok(gather_flat(data, &flat, shape)?)
}

/// Integer arithmetic on constant shapes.
fn int_arith(op: &str, x: &Tensor, y: &Tensor) -> Result<Tensor, Skip> {
    let out = broadcast_shapes(x.shape(), y.shape())?;
    let (a, b) = (x.to_i64_vec(), y.to_i64_vec());
    let mut v = Vec::with_capacity(numel(&out));
    for i in 0..numel(&out) {
        let (p, q) = (
            a[broadcast_offset(i, &out, x.shape())],
            b[broadcast_offset(i, &out, y.shape())],
        );
        v.push(match op {
            "Add" => p.wrapping_add(q),
            "Sub" => p.wrapping_sub(q),
            "Mul" => p.wrapping_mul(q),
            _ => {
                // Truncating, as C and onnxruntime do.
                p.checked_div(q)
                    .ok_or_else(|| skip("integer division by zero while folding constants"))?
            }
        });
    }
    Ok(Tensor::from_vec(out, v)?)
}
