//! What an ONNX op builder works with: the graph being built ([`Ctx`]:
//! values known so far, constants for folding, emitted nodes), the node
//! being imported ([`OnnxNode`]) and its attributes ([`NodeAttrs`]).

use std::collections::{HashMap, HashSet};
use std::path::Path;
use std::sync::Arc;

use super::proto::{attr_type, AttributeProto, NodeProto};
use super::OnnxError;
use crate::graph::Node;
use crate::ops::{Attrs, Op};
use crate::tensor::{Tensor, ValueType};

/// A value of the ONNX graph: folded to a constant, or computed at run time.
#[derive(Clone, Debug)]
pub(super) enum Val {
    Const(Tensor),
    Dyn(ValueType),
}

/// The type of a value.
pub(super) fn type_of(v: &Val) -> ValueType {
    match v {
        Val::Const(t) => ValueType::known(t.dtype(), t.shape()),
        Val::Dyn(t) => t.clone(),
    }
}

/// Why a node could not be imported (collected, reported together). An
/// empty reason means the op type has no builder.
pub(super) struct Skip(pub(super) String);

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

impl From<OnnxError> for Skip {
    fn from(e: OnnxError) -> Self {
        Skip(e.to_string())
    }
}

/// A [`Skip`] with the reason `m`.
pub(super) fn skip(m: impl Into<String>) -> Skip {
    Skip(m.into())
}

/// Attribute access for one node, with ONNX's defaults given by the caller.
pub(super) struct NodeAttrs<'a>(pub(super) &'a NodeProto);

impl NodeAttrs<'_> {
    /// The attribute `name`, if set.
    pub(super) fn get(&self, name: &str) -> Option<&AttributeProto> {
        self.0.attribute.iter().find(|a| a.name == name)
    }
    /// An int attribute.
    pub(super) fn i(&self, name: &str, default: i64) -> i64 {
        self.get(name).map_or(default, |a| a.i)
    }
    /// A float attribute.
    pub(super) fn f(&self, name: &str, default: f32) -> f32 {
        self.get(name).map_or(default, |a| a.f)
    }
    /// An ints attribute.
    pub(super) fn ints(&self, name: &str) -> Option<Vec<i64>> {
        self.get(name).map(|a| a.ints.clone())
    }
    /// A string attribute.
    pub(super) fn s(&self, name: &str) -> Option<String> {
        self.get(name).map(|a| String::from_utf8_lossy(&a.s).into_owned())
    }
    /// Every int, ints, float and string attribute as JSON (for registry builders).
    pub(super) fn json(&self) -> Attrs {
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

/// The ONNX node a builder imports.
pub(super) struct OnnxNode<'a> {
    /// Its op type.
    pub(super) op_type: &'a str,
    /// Its name (made up from the op type and index when the model gives none).
    pub(super) name: &'a str,
    /// Its inputs, with trailing absent optional inputs (`""`) removed.
    pub(super) ins: Vec<String>,
    /// Its outputs as the model names them (`""` for unrequested ones).
    pub(super) outs: Vec<String>,
    /// Its attributes.
    pub(super) a: NodeAttrs<'a>,
}

impl<'a> OnnxNode<'a> {
    /// The node `proto` under the name `name`.
    pub(super) fn new(proto: &'a NodeProto, name: &'a str) -> Self {
        let mut ins = proto.input.clone();
        while ins.last().is_some_and(|s| s.is_empty()) {
            ins.pop();
        }
        OnnxNode {
            op_type: &proto.op_type,
            name,
            ins,
            outs: proto.output.clone(),
            a: NodeAttrs(proto),
        }
    }

    /// Fails unless the node has `lo..=hi` inputs.
    pub(super) fn arity(&self, lo: usize, hi: usize) -> Result<(), Skip> {
        if self.ins.len() < lo || self.ins.len() > hi {
            return Err(skip(format!("has {} inputs; expected {lo}..={hi}", self.ins.len())));
        }
        Ok(())
    }

    /// The first output.
    pub(super) fn out0(&self) -> Result<&String, Skip> {
        self.outs.first().ok_or_else(|| skip("has no output"))
    }

    /// `outs` cut or padded to `n`, unrequested ones named `<node>.unused<i>`.
    pub(super) fn named_outputs(&self, n: usize) -> Vec<String> {
        let mut outs = self.outs.clone();
        outs.resize(n, String::new());
        for (i, o) in outs.iter_mut().enumerate() {
            if o.is_empty() {
                *o = format!("{}.unused{i}", self.name);
            }
        }
        outs
    }
}

/// A DequantizeLinear folded at import: a constant int8/uint8 tensor and its
/// dequantization parameters.
#[derive(Clone, Debug)]
pub(super) struct Dequantized {
    /// The quantized values.
    pub(super) q: Tensor,
    /// One scale, or one per index of `axis`.
    pub(super) scale: Vec<f32>,
    /// Zero points as integers (one, or one per index of `axis`).
    pub(super) zero: Vec<i32>,
    /// The axis the scales run along.
    pub(super) axis: usize,
}

/// The graph being built: every value known so far and the nodes emitted.
pub(super) struct Ctx<'a> {
    /// Where external-data files are read from.
    pub(super) dir: &'a Path,
    /// The model's default-domain opset.
    pub(super) opset: i64,
    /// Every value defined so far, by IR name.
    pub(super) vals: HashMap<String, Val>,
    /// IR value name of an ONNX value (Identity/Dropout outputs alias their input).
    pub(super) alias: HashMap<String, String>,
    /// The nodes emitted so far, in order.
    pub(super) nodes: Vec<Node>,
    /// Names given to emitted nodes.
    pub(super) node_names: HashSet<String>,
    /// Index in `nodes` of the node that computes a value.
    pub(super) producer: HashMap<String, usize>,
    /// How many ONNX nodes read each value.
    pub(super) consumers: HashMap<String, usize>,
    /// The ONNX graph's output names.
    pub(super) graph_outputs: HashSet<String>,
    /// Counter for unique node names.
    pub(super) fresh: usize,
    /// Constant outputs of `DequantizeLinear` (also folded to f32 in `vals`),
    /// so a MatMul or Gemm over one keeps the int8 weight as a QLinear.
    pub(super) dequantized: HashMap<String, Dequantized>,
    /// Weight format of packed parameters (others are plain).
    pub(super) formats: HashMap<String, String>,
}

impl Ctx<'_> {
    /// The IR name of an ONNX value.
    pub(super) fn resolve(&self, name: &str) -> String {
        self.alias.get(name).cloned().unwrap_or_else(|| name.to_string())
    }

    /// The value `name`.
    pub(super) fn val(&self, name: &str) -> Result<&Val, Skip> {
        self.vals
            .get(&self.resolve(name))
            .ok_or_else(|| skip(format!("input `{name}` is not defined before this node")))
    }

    /// The type of the value `name`.
    pub(super) fn type_of(&self, name: &str) -> Result<ValueType, Skip> {
        Ok(type_of(self.val(name)?))
    }

    /// The value `name`, which must be a constant.
    pub(super) fn constant(&self, name: &str) -> Result<&Tensor, Skip> {
        match self.val(name)? {
            Val::Const(t) => Ok(t),
            Val::Dyn(_) => Err(skip(format!(
                "input `{name}` must be a constant (an initializer or computable at import), but it is computed at run time"
            ))),
        }
    }

    /// Defines `name` as the constant `t`.
    pub(super) fn set_const(&mut self, name: &str, t: Tensor) {
        self.vals.insert(name.to_string(), Val::Const(t));
    }

    fn unique_name(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        while !self.node_names.insert(name.clone()) {
            self.fresh += 1;
            name = format!("{base}_{}", self.fresh);
        }
        name
    }

    /// `op` over the node's own inputs and outputs.
    pub(super) fn emit_node(&mut self, n: &OnnxNode<'_>, op: Arc<dyn Op>) -> Result<(), Skip> {
        self.emit(n.name, op, &n.ins, &n.outs)
    }

    /// Adds `op` over `inputs`, or folds it when every input is constant.
    pub(super) fn emit(
        &mut self,
        name: &str,
        op: Arc<dyn Op>,
        inputs: &[String],
        outputs: &[String],
    ) -> Result<(), Skip> {
        let resolved: Vec<String> = inputs.iter().map(|i| self.resolve(i)).collect();
        let mut vals = Vec::with_capacity(resolved.len());
        for i in &resolved {
            vals.push(self.val(i)?.clone());
        }
        let consts: Vec<&Tensor> = vals
            .iter()
            .filter_map(|v| match v {
                Val::Const(t) => Some(t),
                Val::Dyn(_) => None,
            })
            .collect();
        if consts.len() == vals.len() {
            let outs = op.reference(&consts)?;
            for (o, t) in outputs.iter().zip(outs) {
                self.set_const(o, t);
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
}
