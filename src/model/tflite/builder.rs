//! Collects the tensors, buffers and operators of the one subgraph, and
//! keeps up to two forms of every wginfer value: its own layout (NCHW for
//! images) and NHWC, the layout of TFLite's convolutions and pools. A form
//! that is asked for and missing is made with a `TRANSPOSE`, once.

use std::collections::{HashMap, HashSet};

use super::schema::{tensor_type, BuiltinOp, ModelDef, OperatorDef, Options, Quantization, TensorDef};
use super::ExportError;
use crate::model::Model;
use crate::tensor::{DType, Dim, Tensor, ValueType};

/// NCHW → NHWC.
pub(super) const TO_NHWC: [usize; 4] = [0, 2, 3, 1];
/// NHWC → NCHW.
pub(super) const TO_NCHW: [usize; 4] = [0, 3, 1, 2];

/// The two forms of a value (tensor indices).
#[derive(Clone, Copy, Debug, Default)]
struct Forms {
    own: Option<i32>,
    nhwc: Option<i32>,
}

/// The layout a value is read or written in.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(super) enum Layout {
    /// The model's own layout.
    Own,
    /// Channels last (a rank-4 NCHW value transposed).
    Nhwc,
}

/// The subgraph under construction.
pub(super) struct Builder<'m> {
    model: &'m Model,
    tensors: Vec<TensorDef>,
    buffers: Vec<Vec<u8>>,
    operators: Vec<OperatorDef>,
    opcodes: Vec<BuiltinOp>,
    names: HashSet<String>,
    /// The graph's value and parameter names: a tensor gets one only as
    /// that value's own-layout form, so derived tensors never take them.
    reserved: HashSet<String>,
    /// The next tensor is a value's own-layout form (may take a reserved name).
    claim: bool,
    values: HashMap<String, Forms>,
    /// Derived tensors shared between nodes, by key.
    derived: HashMap<String, i32>,
}

/// TFLite's type code for a dtype.
pub(super) fn tflite_type(d: DType) -> Option<i8> {
    Some(match d {
        DType::F32 => tensor_type::FLOAT32,
        DType::F16 => tensor_type::FLOAT16,
        DType::F64 => tensor_type::FLOAT64,
        DType::I32 => tensor_type::INT32,
        DType::I64 => tensor_type::INT64,
        DType::I16 => tensor_type::INT16,
        DType::I8 => tensor_type::INT8,
        DType::U8 => tensor_type::UINT8,
        DType::Bool => tensor_type::BOOL,
        _ => return None,
    })
}

fn type_code(what: &str, d: DType) -> Result<i8, ExportError> {
    tflite_type(d).ok_or_else(|| ExportError::DType {
        what: what.to_string(),
        dtype: d,
    })
}

/// A dimension as TFLite's shape (`None`: dynamic).
pub(super) fn dims(ty: &ValueType) -> Vec<Option<i32>> {
    ty.shape.iter().map(|d| d.known().map(|n| n as i32)).collect()
}

/// `dims` permuted by `perm` (output axis i is input axis perm[i]).
pub(super) fn permuted<T: Copy>(dims: &[T], perm: &[usize]) -> Vec<T> {
    perm.iter().map(|&p| dims[p]).collect()
}

/// Every name the graph gives a value or parameter.
fn reserved_names(model: &Model) -> HashSet<String> {
    let g = model.graph();
    let mut r: HashSet<String> = g.inputs().iter().map(|i| i.name.clone()).collect();
    r.extend(g.outputs().iter().map(|o| o.name.clone()));
    r.extend(g.params().iter().map(|p| p.name.clone()));
    r.extend(g.nodes().iter().flat_map(|n| n.outputs.iter().cloned()));
    r
}

impl<'m> Builder<'m> {
    pub(super) fn new(model: &'m Model) -> Self {
        Self {
            model,
            tensors: Vec::new(),
            buffers: vec![Vec::new()],
            operators: Vec::new(),
            opcodes: Vec::new(),
            names: HashSet::new(),
            reserved: reserved_names(model),
            claim: false,
            values: HashMap::new(),
            derived: HashMap::new(),
        }
    }

    pub(super) fn model(&self) -> &'m Model {
        self.model
    }

    /// A tensor name not used yet, `base` when free.
    fn fresh(&mut self, base: &str) -> String {
        let claim = std::mem::take(&mut self.claim);
        let taken = |s: &Self, n: &String| s.names.contains(n) || (!(claim && n == base) && s.reserved.contains(n));
        let mut name = base.to_string();
        let mut i = 1;
        while taken(self, &name) {
            name = format!("{base}_{i}");
            i += 1;
        }
        self.names.insert(name.clone());
        name
    }

    /// Adds a tensor; `dims` of `None` are dynamic.
    pub(super) fn tensor(&mut self, name: &str, ty: i8, dims: &[Option<i32>], buffer: u32) -> i32 {
        let name = self.fresh(name);
        self.tensors.push(TensorDef {
            name,
            shape: dims.iter().map(|d| d.unwrap_or(1)).collect(),
            signature: dims.iter().map(|d| d.unwrap_or(-1)).collect(),
            ty,
            buffer,
            quant: None,
        });
        self.tensors.len() as i32 - 1
    }

    /// An activation tensor of dtype `d`.
    pub(super) fn activation(&mut self, name: &str, d: DType, dims: &[Option<i32>]) -> Result<i32, ExportError> {
        let ty = type_code(name, d)?;
        Ok(self.tensor(name, ty, dims, 0))
    }

    /// A constant tensor holding `t`'s bytes.
    pub(super) fn constant(&mut self, name: &str, t: &Tensor) -> Result<i32, ExportError> {
        let ty = type_code(name, t.dtype())?;
        self.buffers.push(t.to_le_bytes());
        let dims: Vec<Option<i32>> = t.shape().iter().map(|&d| Some(d as i32)).collect();
        Ok(self.tensor(name, ty, &dims, self.buffers.len() as u32 - 1))
    }

    /// A constant int8 tensor quantized per slice along `dim`.
    pub(super) fn quantized(&mut self, name: &str, t: &Tensor, quant: Quantization) -> Result<i32, ExportError> {
        let i = self.constant(name, t)?;
        self.tensors[i as usize].quant = Some(quant);
        Ok(i)
    }

    /// Parameter `name` written as it is stored (keeping its name), with
    /// quantization parameters when given.
    pub(super) fn stored_param(
        &mut self,
        name: &str,
        t: &Tensor,
        quant: Option<Quantization>,
    ) -> Result<i32, ExportError> {
        self.claim = true;
        match quant {
            Some(q) => self.quantized(name, t, q),
            None => self.constant(name, t),
        }
    }

    /// A constant int32 vector (shapes, permutations, paddings).
    pub(super) fn ints(&mut self, name: &str, shape: Vec<usize>, v: &[i32]) -> Result<i32, ExportError> {
        let t = Tensor::from_vec(shape, v.to_vec())?;
        self.constant(name, &t)
    }

    /// Appends an operator.
    pub(super) fn op(&mut self, op: BuiltinOp, inputs: &[i32], outputs: &[i32], options: Options) {
        let opcode_index = match self.opcodes.iter().position(|&o| o == op) {
            Some(i) => i,
            None => {
                self.opcodes.push(op);
                self.opcodes.len() - 1
            }
        } as u32;
        self.operators.push(OperatorDef {
            opcode_index,
            inputs: inputs.to_vec(),
            outputs: outputs.to_vec(),
            op,
            options,
        });
    }

    /// An intermediate tensor `name` computed by `code` from `inputs`.
    pub(super) fn step(
        &mut self,
        name: &str,
        code: BuiltinOp,
        inputs: &[i32],
        options: Options,
        d: DType,
        dims: &[Option<i32>],
    ) -> Result<i32, ExportError> {
        let t = self.activation(name, d, dims)?;
        self.op(code, inputs, &[t], options);
        Ok(t)
    }

    /// A constant f32 scalar.
    pub(super) fn scalar(&mut self, name: &str, v: f32) -> Result<i32, ExportError> {
        self.constant(name, &Tensor::from_vec(vec![], vec![v])?)
    }

    /// A tensor made earlier under `key` (see [`Builder::remember`]).
    pub(super) fn recall(&self, key: &str) -> Option<i32> {
        self.derived.get(key).copied()
    }

    /// Keeps `t` under `key`, for tensors several nodes share.
    pub(super) fn remember(&mut self, key: &str, t: i32) {
        self.derived.insert(key.to_string(), t);
    }

    /// The shape of a tensor (`None`: dynamic).
    pub(super) fn dims_of(&self, t: i32) -> Vec<Option<i32>> {
        let t = &self.tensors[t as usize];
        t.signature.iter().map(|&d| (d >= 0).then_some(d)).collect()
    }

    /// Records `t` as value `v` in `layout`.
    pub(super) fn bind(&mut self, v: &str, layout: Layout, t: i32) {
        let f = self.values.entry(v.to_string()).or_default();
        match layout {
            Layout::Own => f.own = Some(t),
            Layout::Nhwc => f.nhwc = Some(t),
        }
    }

    /// The name a new tensor of value `v` in `layout` gets.
    pub(super) fn value_name(v: &str, layout: Layout) -> String {
        match layout {
            Layout::Own => v.to_string(),
            Layout::Nhwc => format!("{v}.nhwc"),
        }
    }

    /// A new activation tensor for value `v` in `layout`, typed from the graph, and bound.
    pub(super) fn output(&mut self, v: &str, layout: Layout) -> Result<i32, ExportError> {
        let ty = self.value_type(v)?;
        let mut d = dims(&ty);
        if layout == Layout::Nhwc {
            d = permuted(&d, &TO_NHWC);
        }
        self.claim = layout == Layout::Own;
        let t = self.activation(&Self::value_name(v, layout), ty.dtype, &d)?;
        self.bind(v, layout, t);
        Ok(t)
    }

    /// The graph's type of value `v`.
    pub(super) fn value_type(&self, v: &str) -> Result<ValueType, ExportError> {
        let g = self.model.graph();
        if let Some(t) = g.value_type(v) {
            return Ok(t.clone());
        }
        match self.model.param(v) {
            Some(t) => Ok(ValueType {
                dtype: t.dtype(),
                shape: t.shape().iter().map(|&d| Dim::Known(d)).collect(),
            }),
            None => Err(ExportError::Op(crate::error::OpError::Shape(format!(
                "value `{v}` has no type in the graph"
            )))),
        }
    }

    /// Value `v` in `layout`, transposing (or writing a parameter) when that form is missing.
    pub(super) fn get(&mut self, v: &str, layout: Layout) -> Result<i32, ExportError> {
        let f = self.values.get(v).copied().unwrap_or_default();
        match (layout, f.own, f.nhwc) {
            (Layout::Own, Some(t), _) | (Layout::Nhwc, _, Some(t)) => return Ok(t),
            _ => {}
        }
        let (other, perm) = match layout {
            Layout::Own => (f.nhwc, TO_NCHW),
            Layout::Nhwc => (f.own, TO_NHWC),
        };
        let src = match other {
            Some(t) => t,
            None => {
                let t = self.parameter(v)?;
                if layout == Layout::Own {
                    return Ok(t);
                }
                t
            }
        };
        if self.dims_of(src).len() != 4 {
            return Err(ExportError::Op(crate::error::OpError::Shape(format!(
                "value `{v}` must be rank 4 to change its layout"
            ))));
        }
        let out = self.output(v, layout)?;
        let p: Vec<i32> = perm.iter().map(|&x| x as i32).collect();
        let perm_t = self.ints(&format!("{}.perm", Self::value_name(v, layout)), vec![4], &p)?;
        self.op(BuiltinOp::TRANSPOSE, &[src, perm_t], &[out], Options::Transpose);
        Ok(out)
    }

    /// Value `v` in whichever form exists (NHWC preferred), with its layout.
    pub(super) fn get_any(&mut self, v: &str) -> Result<(i32, Layout), ExportError> {
        match self.values.get(v) {
            Some(Forms { nhwc: Some(t), .. }) => Ok((*t, Layout::Nhwc)),
            _ => Ok((self.get(v, Layout::Own)?, Layout::Own)),
        }
    }

    /// True when `v` exists in NHWC form.
    pub(super) fn has_nhwc(&self, v: &str) -> bool {
        self.values.get(v).is_some_and(|f| f.nhwc.is_some())
    }

    /// Parameter `v` as a constant tensor of the same name (bound in its own layout).
    fn parameter(&mut self, v: &str) -> Result<i32, ExportError> {
        let t = self.model.param(v).ok_or_else(|| {
            ExportError::Op(crate::error::OpError::Shape(format!(
                "value `{v}` is used before any node computes it"
            )))
        })?;
        self.claim = true;
        let i = self.constant(v, t)?;
        self.bind(v, Layout::Own, i);
        Ok(i)
    }

    /// The model's bytes with `inputs` and `outputs` (the graph's values) as
    /// the subgraph's inputs and outputs.
    pub(super) fn finish(mut self, inputs: &[i32], outputs: &[i32]) -> Result<Vec<u8>, ExportError> {
        let data: usize = self.buffers.iter().map(Vec::len).sum();
        let overhead = 64 * (self.tensors.len() + self.operators.len()) + (1 << 20);
        if data + overhead > super::MAX_BYTES {
            return Err(ExportError::TooLarge {
                bytes: data + overhead,
                limit: super::MAX_BYTES,
                target: "TFLite (flatbuffers)",
            });
        }
        let g = self.model.graph();
        let description = format!("wginfer {}", env!("CARGO_PKG_VERSION"));
        let buffers = std::mem::take(&mut self.buffers);
        Ok(super::schema::write_model(&ModelDef {
            description: &description,
            subgraph_name: g.name(),
            opcodes: &self.opcodes,
            tensors: &self.tensors,
            operators: &self.operators,
            inputs,
            outputs,
            buffers: &buffers,
        }))
    }
}
