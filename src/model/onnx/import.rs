//! ONNX graph → wginfer graph: reads initializers and inputs, imports each
//! node with the builder its op type registers ([`super::ops`]), and
//! collects the nodes it cannot import into one error.

use std::collections::{BTreeMap, HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use super::context::{type_of, Ctx, OnnxNode, Skip, Val};
use super::ops::{builder, ms_builder};
use super::proto::{GraphProto, ModelProto, NodeProto, ValueInfoProto};
use super::{dtype_from_onnx, onnx_type_name, tensor_from_proto, OnnxError};
use crate::graph::{Graph, ParamInfo, ValueInfo};
use crate::model::Model;
use crate::ops::view::Reshape;
use crate::tensor::{Dim, Tensor, ValueType};

/// Options for [`super::import_bytes`].
#[derive(Clone, Debug, Default)]
pub struct ImportOptions {
    /// Graph inputs to bind to constant values (folded into the model), e.g.
    /// a `shape` input that must be static for `Reshape`.
    pub constants: HashMap<String, Tensor>,
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
    let inputs = define_inputs(&mut cx, graph, options)?;
    for n in &graph.node {
        for i in &n.input {
            *cx.consumers.entry(i.clone()).or_default() += 1;
        }
    }
    let unsupported = import_nodes(&mut cx, graph);
    if !unsupported.is_empty() {
        return Err(OnnxError::Unsupported(unsupported.into_iter().collect()));
    }
    finish(cx, graph, inputs)
}

/// Defines initializers and bound constants, and returns the graph inputs
/// left to feed at run time.
fn define_inputs(cx: &mut Ctx<'_>, graph: &GraphProto, options: &ImportOptions) -> Result<Vec<ValueInfo>, OnnxError> {
    for t in &graph.initializer {
        cx.set_const(&t.name, tensor_from_proto(t, cx.dir)?);
    }
    for (name, t) in &options.constants {
        cx.set_const(name, t.clone());
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
    Ok(inputs)
}

/// Imports every node in order; returns the ones that failed, by op type
/// (with the reason after the node's name). Nodes downstream of a failed
/// one are not imported, but listed when their op type has no builder.
fn import_nodes(cx: &mut Ctx<'_>, graph: &GraphProto) -> BTreeMap<String, Vec<String>> {
    let mut unsupported: BTreeMap<String, Vec<String>> = BTreeMap::new();
    let mut poisoned: HashSet<String> = HashSet::new();
    for (index, n) in graph.node.iter().enumerate() {
        let name = if n.name.is_empty() {
            format!("{}_{index}", n.op_type)
        } else {
            n.name.clone()
        };
        if n.input.iter().any(|i| poisoned.contains(i)) {
            if builder(&n.op_type).is_none() {
                unsupported.entry(n.op_type.clone()).or_default().push(name);
            }
            poisoned.extend(n.output.iter().cloned());
            continue;
        }
        if let Err(Skip(reason)) = import_node(cx, n, &name) {
            let label = if reason.is_empty() {
                name
            } else {
                format!("{name}: {reason}")
            };
            unsupported.entry(n.op_type.clone()).or_default().push(label);
            poisoned.extend(n.output.iter().cloned());
        }
    }
    unsupported
}

/// Imports one node with its op type's builder.
fn import_node(cx: &mut Ctx<'_>, n: &NodeProto, name: &str) -> Result<(), Skip> {
    let build = match n.domain.as_str() {
        "" | "ai.onnx" => builder(&n.op_type),
        "com.microsoft" => ms_builder(&n.op_type),
        other => return Err(Skip(format!("domain `{other}` is not supported"))),
    };
    let build = build.ok_or(Skip(String::new()))?;
    build(cx, &OnnxNode::new(n, name))
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

/// The graph's outputs (an output that is another value, as after
/// `Identity`, gets a copy node), then the model with every constant that
/// a node or output reads as a parameter.
fn finish(mut cx: Ctx<'_>, graph: &GraphProto, inputs: Vec<ValueInfo>) -> Result<Model, OnnxError> {
    let mut outputs = Vec::new();
    for o in &graph.output {
        let ir = cx.resolve(&o.name);
        let is_input = inputs.iter().any(|i| i.name == ir);
        if ir != o.name || is_input {
            copy_output(&mut cx, ir, &o.name)?;
        }
        let ty = cx.vals.get(&o.name).map(type_of).ok_or_else(|| OnnxError::Node {
            node: o.name.clone(),
            op: "output".into(),
            message: "graph output is never computed".into(),
        })?;
        outputs.push(ValueInfo {
            name: o.name.clone(),
            ty,
        });
    }
    let (params, tensors) = parameters(&mut cx, &outputs);
    let g = Graph::new(graph.name.clone(), inputs, outputs, params, cx.nodes)?;
    Model::new(g, tensors).map_err(|e| OnnxError::Model(e.to_string()))
}

/// A copy node from the value `ir` to the graph output `output`.
fn copy_output(cx: &mut Ctx<'_>, ir: String, output: &str) -> Result<(), OnnxError> {
    let rank = cx.vals.get(&ir).map(|v| type_of(v).rank()).unwrap_or(0);
    let name = format!("{output}.identity");
    let op = Arc::new(Reshape {
        shape: vec![0; rank],
        allowzero: false,
    });
    cx.emit(&name, op, &[ir], &[output.to_string()])
        .map_err(|Skip(m)| OnnxError::Node {
            node: name.clone(),
            op: "Identity".into(),
            message: m,
        })
}

/// The constants that nodes and outputs read, in first-use order, as
/// parameters (with their weight format) and their tensors.
fn parameters(cx: &mut Ctx<'_>, outputs: &[ValueInfo]) -> (Vec<ParamInfo>, HashMap<String, Tensor>) {
    let mut wanted: Vec<String> = Vec::new();
    let mut seen = HashSet::new();
    let reads = cx.nodes.iter().flat_map(|n| n.inputs.iter());
    for i in reads.chain(outputs.iter().map(|o| &o.name)) {
        if matches!(cx.vals.get(i), Some(Val::Const(_))) && seen.insert(i.clone()) {
            wanted.push(i.clone());
        }
    }
    let mut params = Vec::new();
    let mut tensors = HashMap::new();
    for name in wanted {
        if let Some(Val::Const(t)) = cx.vals.remove(&name) {
            let mut info = ParamInfo::plain(name.clone(), t.dtype(), t.shape().to_vec());
            if let Some(f) = cx.formats.get(&name) {
                info.format = f.clone();
            }
            params.push(info);
            tensors.insert(name, t);
        }
    }
    (params, tensors)
}
