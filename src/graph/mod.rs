//! The graph IR: named values, nodes in topological order, graph inputs,
//! outputs and parameters, with every value's type inferred.
//!
//! The IR owns no foreign types: ONNX and other formats are imported into it.
//! Its JSON form ([`GraphDoc`]) is what the model file stores.
#![forbid(unsafe_code)]

mod doc;

use std::collections::{BTreeSet, HashMap, HashSet};
use std::fmt;
use std::sync::Arc;

pub use doc::{GraphDoc, NodeDoc, ParamDoc, ValueDoc, GRAPH_FORMAT, GRAPH_VERSION};

use crate::error::GraphError;
use crate::ops::{self, Op};
use crate::tensor::{DType, ValueType};

/// A graph input or output: a name and a type.
#[derive(Clone, Debug, PartialEq)]
pub struct ValueInfo {
    /// Value name.
    pub name: String,
    /// Its type.
    pub ty: ValueType,
}

/// A parameter (weight): name, dtype, shape and storage format.
#[derive(Clone, Debug, PartialEq)]
pub struct ParamInfo {
    /// Tensor name in the model file.
    pub name: String,
    /// Element type as stored.
    pub dtype: DType,
    /// Shape as stored.
    pub shape: Vec<usize>,
    /// Weight format (`"f32"`, later packed formats); the dtype name for plain tensors.
    pub format: String,
}

impl ParamInfo {
    /// A plain (unpacked) parameter.
    pub fn plain(name: impl Into<String>, dtype: DType, shape: Vec<usize>) -> Self {
        Self {
            name: name.into(),
            dtype,
            shape,
            format: dtype.name().to_string(),
        }
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.shape.iter().product()
    }
}

/// One node: an op applied to named values, producing named values.
#[derive(Clone, Debug)]
pub struct Node {
    /// Unique node name (used in errors, labels and plans).
    pub name: String,
    /// The op with its attributes.
    pub op: Arc<dyn Op>,
    /// Input value names.
    pub inputs: Vec<String>,
    /// Output value names.
    pub outputs: Vec<String>,
}

/// A validated graph: nodes topologically sorted, every value typed.
#[derive(Clone, Debug)]
pub struct Graph {
    name: String,
    inputs: Vec<ValueInfo>,
    outputs: Vec<ValueInfo>,
    params: Vec<ParamInfo>,
    nodes: Vec<Node>,
    types: HashMap<String, ValueType>,
}

impl Graph {
    /// Builds a graph: checks names, sorts the nodes topologically (keeping
    /// the given order where it is free), and infers every value's type.
    pub fn new(
        name: impl Into<String>,
        inputs: Vec<ValueInfo>,
        outputs: Vec<ValueInfo>,
        params: Vec<ParamInfo>,
        nodes: Vec<Node>,
    ) -> Result<Self, GraphError> {
        let mut types: HashMap<String, ValueType> = HashMap::new();
        let mut defined = HashSet::new();
        for v in &inputs {
            if !defined.insert(v.name.clone()) {
                return Err(GraphError::DuplicateValue { value: v.name.clone() });
            }
            types.insert(v.name.clone(), v.ty.clone());
        }
        for p in &params {
            if !defined.insert(p.name.clone()) {
                return Err(GraphError::DuplicateValue { value: p.name.clone() });
            }
            types.insert(p.name.clone(), ValueType::known(p.dtype, &p.shape));
        }
        let mut producer: HashMap<&str, usize> = HashMap::new();
        let mut node_names = HashSet::new();
        for (i, n) in nodes.iter().enumerate() {
            if !node_names.insert(n.name.as_str()) {
                return Err(GraphError::DuplicateNode { node: n.name.clone() });
            }
            for o in &n.outputs {
                if defined.contains(o) || producer.insert(o.as_str(), i).is_some() {
                    return Err(GraphError::DuplicateValue { value: o.clone() });
                }
            }
        }
        for n in &nodes {
            for v in &n.inputs {
                if !defined.contains(v) && !producer.contains_key(v.as_str()) {
                    return Err(GraphError::UndefinedValue {
                        node: n.name.clone(),
                        value: v.clone(),
                    });
                }
            }
        }
        for o in &outputs {
            if !defined.contains(&o.name) && !producer.contains_key(o.name.as_str()) {
                return Err(GraphError::UndefinedOutput { value: o.name.clone() });
            }
        }

        // Kahn's algorithm; the ready set is ordered by original position.
        let mut pending: Vec<usize> = vec![0; nodes.len()];
        let mut users: Vec<Vec<usize>> = vec![Vec::new(); nodes.len()];
        for (i, n) in nodes.iter().enumerate() {
            let deps: BTreeSet<usize> = n
                .inputs
                .iter()
                .filter_map(|v| producer.get(v.as_str()).copied())
                .collect();
            pending[i] = deps.len();
            for d in deps {
                users[d].push(i);
            }
        }
        let mut ready: BTreeSet<usize> = (0..nodes.len()).filter(|&i| pending[i] == 0).collect();
        let mut order = Vec::with_capacity(nodes.len());
        while let Some(i) = ready.pop_first() {
            order.push(i);
            for &u in &users[i] {
                pending[u] -= 1;
                if pending[u] == 0 {
                    ready.insert(u);
                }
            }
        }
        if order.len() < nodes.len() {
            let placed: HashSet<usize> = order.iter().copied().collect();
            let stuck = (0..nodes.len())
                .filter(|i| !placed.contains(i))
                .map(|i| nodes[i].name.clone())
                .collect();
            return Err(GraphError::Cycle { nodes: stuck });
        }
        let mut slots: Vec<Option<Node>> = nodes.into_iter().map(Some).collect();
        let nodes: Vec<Node> = order.iter().filter_map(|&i| slots[i].take()).collect();

        for n in &nodes {
            let in_types: Vec<ValueType> = n.inputs.iter().filter_map(|v| types.get(v).cloned()).collect();
            let out_types = n.op.infer(&in_types).map_err(|source| GraphError::Node {
                node: n.name.clone(),
                op: n.op.op_type().to_string(),
                source,
            })?;
            if out_types.len() != n.outputs.len() {
                return Err(GraphError::Node {
                    node: n.name.clone(),
                    op: n.op.op_type().to_string(),
                    source: crate::error::OpError::Shape(format!(
                        "produces {} outputs but the node names {}",
                        out_types.len(),
                        n.outputs.len()
                    )),
                });
            }
            for (name, t) in n.outputs.iter().zip(out_types) {
                types.insert(name.clone(), t);
            }
        }
        for o in &outputs {
            let inferred = &types[&o.name];
            let fits = inferred.dtype == o.ty.dtype
                && inferred.rank() == o.ty.rank()
                && inferred
                    .shape
                    .iter()
                    .zip(&o.ty.shape)
                    .all(|(a, b)| match (a.known(), b.known()) {
                        (Some(x), Some(y)) => x == y,
                        _ => true,
                    });
            if !fits {
                return Err(GraphError::OutputType {
                    name: o.name.clone(),
                    declared: o.ty.to_string(),
                    inferred: inferred.to_string(),
                });
            }
        }
        Ok(Self {
            name: name.into(),
            inputs,
            outputs,
            params,
            nodes,
            types,
        })
    }

    /// Builds a graph from its JSON document, looking ops up in the registry.
    pub fn from_doc(doc: &GraphDoc) -> Result<Self, GraphError> {
        let inputs = doc.inputs.iter().map(ValueDoc::to_info).collect();
        let outputs = doc.outputs.iter().map(ValueDoc::to_info).collect();
        let params = doc.params.iter().map(ParamDoc::to_info).collect();
        let mut nodes = Vec::with_capacity(doc.nodes.len());
        for n in &doc.nodes {
            let def = ops::lookup(&n.op).ok_or_else(|| GraphError::UnknownOp {
                node: n.name.clone(),
                op: n.op.clone(),
                known: ops::known_ops(),
            })?;
            let op = (def.build)(&n.attrs).map_err(|source| GraphError::Node {
                node: n.name.clone(),
                op: n.op.clone(),
                source,
            })?;
            nodes.push(Node {
                name: n.name.clone(),
                op,
                inputs: n.inputs.clone(),
                outputs: n.outputs.clone(),
            });
        }
        Self::new(doc.name.clone(), inputs, outputs, params, nodes)
    }

    /// The JSON document of this graph.
    pub fn to_doc(&self) -> GraphDoc {
        GraphDoc {
            format: GRAPH_FORMAT.to_string(),
            version: GRAPH_VERSION,
            name: self.name.clone(),
            inputs: self.inputs.iter().map(ValueDoc::from_info).collect(),
            outputs: self.outputs.iter().map(ValueDoc::from_info).collect(),
            params: self.params.iter().map(ParamDoc::from_info).collect(),
            nodes: self
                .nodes
                .iter()
                .map(|n| NodeDoc {
                    name: n.name.clone(),
                    op: n.op.op_type().to_string(),
                    inputs: n.inputs.clone(),
                    outputs: n.outputs.clone(),
                    attrs: n.op.attrs(),
                })
                .collect(),
        }
    }

    /// The graph's name.
    pub fn name(&self) -> &str {
        &self.name
    }

    /// Graph inputs.
    pub fn inputs(&self) -> &[ValueInfo] {
        &self.inputs
    }

    /// Graph outputs.
    pub fn outputs(&self) -> &[ValueInfo] {
        &self.outputs
    }

    /// Parameters.
    pub fn params(&self) -> &[ParamInfo] {
        &self.params
    }

    /// Nodes in topological order.
    pub fn nodes(&self) -> &[Node] {
        &self.nodes
    }

    /// The inferred type of any value.
    pub fn value_type(&self, name: &str) -> Option<&ValueType> {
        self.types.get(name)
    }

    /// True if `name` is a parameter.
    pub fn is_param(&self, name: &str) -> bool {
        self.params.iter().any(|p| p.name == name)
    }

    /// Total number of parameter elements.
    pub fn param_count(&self) -> usize {
        self.params.iter().map(ParamInfo::numel).sum()
    }
}

impl fmt::Display for Graph {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        writeln!(
            f,
            "graph {}",
            if self.name.is_empty() { "(unnamed)" } else { &self.name }
        )?;
        for i in &self.inputs {
            writeln!(f, "  input  {}: {}", i.name, i.ty)?;
        }
        for o in &self.outputs {
            writeln!(f, "  output {}: {}", o.name, o.ty)?;
        }
        for n in &self.nodes {
            let outs: Vec<String> = n
                .outputs
                .iter()
                .map(|o| format!("{o}: {}", self.types.get(o).map(|t| t.to_string()).unwrap_or_default()))
                .collect();
            writeln!(
                f,
                "  {:<12} {:<10} ({}) -> {}",
                n.name,
                n.op.op_type(),
                n.inputs.join(", "),
                outs.join(", ")
            )?;
        }
        Ok(())
    }
}
