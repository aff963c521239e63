//! The ONNX graph being written: nodes, initializers and value names, with
//! helpers to turn wginfer tensors, types and attributes into protobuf.

use std::collections::{HashMap, HashSet};

use super::super::proto::{
    attr_type, data_type, AttributeProto, Dimension, GraphProto, NodeProto, TensorProto, TensorShapeProto, TypeProto,
    TypeProtoTensor, ValueInfoProto,
};
use super::ExportError;
use crate::tensor::{DType, Dim, Tensor, ValueType};

/// An ONNX attribute value.
pub(super) enum Attr {
    /// `INT`.
    Int(i64),
    /// `FLOAT`.
    Float(f32),
    /// `STRING`.
    Str(String),
    /// `INTS`.
    Ints(Vec<i64>),
}

/// The graph under construction.
#[derive(Default)]
pub(super) struct Builder {
    /// Nodes in order.
    pub nodes: Vec<NodeProto>,
    /// Initializers in order.
    pub initializers: Vec<TensorProto>,
    /// Every value name used so far (graph inputs, initializers, node outputs).
    names: HashSet<String>,
    /// Node names used so far.
    node_names: HashSet<String>,
    /// Derived initializers by key (e.g. a parameter transposed), so a
    /// parameter read by several nodes is written once.
    derived: HashMap<String, String>,
    /// Opsets of domains other than the default one that nodes use.
    pub extra_domains: Vec<(String, i64)>,
}

impl Builder {
    /// Marks `name` taken (a graph input or a wginfer value name).
    pub fn reserve(&mut self, name: &str) {
        self.names.insert(name.to_string());
    }

    /// A value name not used yet, built from `base`.
    pub fn fresh(&mut self, base: &str) -> String {
        let mut name = base.to_string();
        let mut i = 1;
        while self.names.contains(&name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// Adds the parameter `t` as an initializer under exactly `name` (once;
    /// the graph's names are unique, so a second call is the same parameter).
    pub fn initializer(&mut self, name: &str, t: &Tensor) -> Result<(), ExportError> {
        self.names.insert(name.to_string());
        if self.initializers.iter().any(|i| i.name == name) {
            return Ok(());
        }
        self.initializers.push(tensor_proto(name, t)?);
        Ok(())
    }

    /// Adds an initializer under a fresh name built from `base`.
    pub fn constant(&mut self, base: &str, t: &Tensor) -> Result<String, ExportError> {
        let name = self.fresh(base);
        self.initializers.push(tensor_proto(&name, t)?);
        Ok(name)
    }

    /// An initializer derived once per `key` by `make`.
    pub fn derived(
        &mut self,
        key: &str,
        make: impl FnOnce() -> Result<Tensor, ExportError>,
    ) -> Result<String, ExportError> {
        if let Some(n) = self.derived.get(key) {
            return Ok(n.clone());
        }
        let name = self.constant(key, &make()?)?;
        self.derived.insert(key.to_string(), name.clone());
        Ok(name)
    }

    /// A 1-D int64 initializer.
    pub fn ints(&mut self, base: &str, v: &[i64]) -> Result<String, ExportError> {
        let t = Tensor::from_vec(vec![v.len()], v.to_vec())?;
        self.constant(base, &t)
    }

    /// Appends a node of the default domain; its name is made unique from
    /// `name`. Returns nothing: outputs are named by the caller.
    pub fn node(&mut self, name: &str, op: &str, inputs: &[&str], outputs: &[&str], attrs: Vec<(&str, Attr)>) {
        self.node_in("", name, op, inputs, outputs, attrs);
    }

    /// Appends a node of `domain`.
    pub fn node_in(
        &mut self,
        domain: &str,
        name: &str,
        op: &str,
        inputs: &[&str],
        outputs: &[&str],
        attrs: Vec<(&str, Attr)>,
    ) {
        let mut unique = name.to_string();
        let mut i = 1;
        while !self.node_names.insert(unique.clone()) {
            unique = format!("{name}_{i}");
            i += 1;
        }
        for o in outputs {
            self.names.insert(o.to_string());
        }
        self.nodes.push(NodeProto {
            input: inputs.iter().map(|s| s.to_string()).collect(),
            output: outputs.iter().map(|s| s.to_string()).collect(),
            name: unique,
            op_type: op.to_string(),
            domain: domain.to_string(),
            attribute: attrs.into_iter().map(|(n, a)| attribute(n, a)).collect(),
            doc_string: String::new(),
        });
    }

    /// A node with one fresh output named from `base`; returns that name.
    pub fn op(&mut self, name: &str, op: &str, inputs: &[&str], base: &str, attrs: Vec<(&str, Attr)>) -> String {
        let out = self.fresh(base);
        self.node(name, op, inputs, &[&out], attrs);
        out
    }

    /// A node `{prefix}.{tag}` with one fresh output of that name; returns it.
    pub fn step(&mut self, prefix: &str, tag: &str, op: &str, inputs: &[&str], attrs: Vec<(&str, Attr)>) -> String {
        let name = format!("{prefix}.{tag}");
        self.op(&name, op, inputs, &name, attrs)
    }

    /// A scalar f32 initializer under a fresh name from `base`.
    pub fn scalar(&mut self, base: &str, v: f32) -> Result<String, ExportError> {
        self.constant(base, &Tensor::from_vec(vec![], vec![v])?)
    }

    /// The finished graph.
    pub fn graph(self, name: &str, input: Vec<ValueInfoProto>, output: Vec<ValueInfoProto>) -> GraphProto {
        GraphProto {
            node: self.nodes,
            name: name.to_string(),
            initializer: self.initializers,
            doc_string: String::new(),
            input,
            output,
            value_info: Vec::new(),
        }
    }
}

fn attribute(name: &str, a: Attr) -> AttributeProto {
    let mut p = AttributeProto {
        name: name.to_string(),
        ..Default::default()
    };
    match a {
        Attr::Int(i) => {
            p.r#type = attr_type::INT;
            p.i = i;
        }
        Attr::Float(f) => {
            p.r#type = attr_type::FLOAT;
            p.f = f;
        }
        Attr::Str(s) => {
            p.r#type = attr_type::STRING;
            p.s = s.into_bytes();
        }
        Attr::Ints(v) => {
            p.r#type = attr_type::INTS;
            p.ints = v;
        }
    }
    p
}

/// The ONNX `TensorProto.DataType` of a wginfer dtype (`None`: ONNX has none).
pub(super) fn onnx_dtype(d: DType) -> Option<i32> {
    use data_type as t;
    Some(match d {
        DType::F32 => t::FLOAT,
        DType::F16 => t::FLOAT16,
        DType::BF16 => t::BFLOAT16,
        DType::F64 => t::DOUBLE,
        DType::I8 => t::INT8,
        DType::U8 => t::UINT8,
        DType::I16 => t::INT16,
        DType::U16 => t::UINT16,
        DType::I32 => t::INT32,
        DType::U32 => t::UINT32,
        DType::I64 => t::INT64,
        DType::U64 => t::UINT64,
        DType::Bool => t::BOOL,
        DType::F8E4M3FN => t::FLOAT8E4M3FN,
        DType::F8E4M3FNUZ => t::FLOAT8E4M3FNUZ,
        DType::F8E5M2 => t::FLOAT8E5M2,
        DType::F8E5M2FNUZ => t::FLOAT8E5M2FNUZ,
        DType::F4E2M1 => t::FLOAT4E2M1,
        DType::I4 => t::INT4,
        DType::U4 => t::UINT4,
        _ => return None,
    })
}

/// A tensor as a `TensorProto` with raw little-endian data (4-bit types
/// packed two per byte, low nibble first, as ONNX stores them).
pub(super) fn tensor_proto(name: &str, t: &Tensor) -> Result<TensorProto, ExportError> {
    let code = onnx_dtype(t.dtype()).ok_or_else(|| ExportError::DType {
        what: format!("tensor `{name}`"),
        dtype: t.dtype(),
    })?;
    let raw = match t.dtype() {
        DType::I4 | DType::U4 | DType::F4E2M1 => crate::quant::pack_nibbles(&t.to_le_bytes()),
        _ => t.to_le_bytes(),
    };
    Ok(TensorProto {
        dims: t.shape().iter().map(|&d| d as i64).collect(),
        data_type: code,
        name: name.to_string(),
        raw_data: raw,
        ..Default::default()
    })
}

/// A graph input or output declaration.
pub(super) fn value_info(name: &str, ty: &ValueType) -> Result<ValueInfoProto, ExportError> {
    let elem_type = onnx_dtype(ty.dtype).ok_or_else(|| ExportError::DType {
        what: format!("graph value `{name}`"),
        dtype: ty.dtype,
    })?;
    let dim = ty
        .shape
        .iter()
        .map(|d| match d {
            Dim::Known(n) => Dimension {
                dim_value: Some(*n as i64),
                ..Default::default()
            },
            Dim::Sym(s) => Dimension {
                dim_param: Some(s.clone()),
                ..Default::default()
            },
        })
        .collect();
    Ok(ValueInfoProto {
        name: name.to_string(),
        r#type: Some(TypeProto {
            tensor_type: Some(TypeProtoTensor {
                elem_type,
                shape: Some(TensorShapeProto { dim }),
            }),
            denotation: String::new(),
        }),
        doc_string: String::new(),
    })
}
