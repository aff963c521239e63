//! Operators. One file per op family: attributes, shape inference, the CPU
//! reference (simple loops, the thing tests trust), a fast CPU path, and test
//! cases. Everything that needs "all the ops" (the model loader, the planner,
//! the parity tests, the benches) iterates [`REGISTRY`]; adding an op touches
//! its own file, its shader and one line there.
#![deny(unsafe_code)]

#[allow(unsafe_code)] // an in-place strided GEMM into the heads' output columns
pub mod attention;
pub mod binary;
mod cases;
pub mod cast;
pub mod conv;
pub mod conv_integer;
pub mod gemm;
pub mod integer;
pub mod l2norm;
pub mod linear;
pub mod matmul;
pub mod movement;
pub mod norm;
pub mod pool;
pub mod qconv;
pub mod qlinear;
pub mod quantize;
pub mod reduce;
pub mod softmax;
pub mod unary;
pub mod view;

use std::any::Any;
use std::fmt;
use std::sync::Arc;

pub use cases::{CaseRng, OpCase};

use crate::error::OpError;
use crate::tensor::{DType, Tensor, ValueType};

/// Op attributes, as stored in the model file's graph JSON.
pub type Attrs = serde_json::Map<String, serde_json::Value>;

/// How strictly an op's implementations are compared with its reference.
/// The tolerance per class and dtype is one table in `tests/common`.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Validation {
    /// Bit-for-bit equal (data movement, comparisons).
    Exact,
    /// Equal up to float rounding of a few operations per element.
    Rounding,
    /// Long accumulations or transcendental approximations (matmul, softmax, GELU).
    Approximate,
}

/// An operator instance: an op type with its attributes bound.
pub trait Op: fmt::Debug + Send + Sync + Any {
    /// The op type, e.g. `"Linear"`.
    fn op_type(&self) -> &'static str;

    /// The attributes, as saved in the model file (empty by default).
    fn attrs(&self) -> Attrs {
        Attrs::new()
    }

    /// Output types from input types. Symbolic dimensions pass through; a
    /// mismatch between known dimensions is an error.
    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError>;

    /// The CPU reference: straightforward loops, kept for tests to trust.
    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError>;

    /// The fast CPU path (multithreaded, `gemm`); defaults to the reference.
    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        self.reference(inputs)
    }

    /// Reverse-mode gradients: given the forward inputs and outputs and the
    /// gradient of a scalar loss with respect to each output, the gradient
    /// with respect to each input (`None` where the input is not
    /// differentiable, e.g. packed weights). Checked against finite
    /// differences in `tests/gradients.rs`.
    fn backward(
        &self,
        _inputs: &[&Tensor],
        _outputs: &[&Tensor],
        _grads: &[&Tensor],
    ) -> Result<Vec<Option<Tensor>>, OpError> {
        Err(OpError::NoGradient(self.op_type().to_string()))
    }

    /// How strictly other implementations must match the reference.
    fn validation(&self) -> Validation {
        Validation::Rounding
    }

    /// Floating-point operations for inputs of these shapes (for benches).
    fn flops(&self, _inputs: &[&[usize]]) -> u64 {
        0
    }

    /// Data the fast CPU path derives once per session from the node's
    /// constant inputs (`consts[i]` is `Some` where input `i` is a model
    /// parameter), e.g. a weight in the layout its matmul reads fastest.
    /// `None` (the default): nothing to prepare.
    fn prepare_cpu(&self, _consts: &[Option<&Tensor>]) -> Option<Prepared> {
        None
    }

    /// The fast CPU path given what [`Op::prepare_cpu`] returned for these
    /// constants; the inputs are the same as for [`Op::cpu`]. Must compute
    /// what [`Op::cpu`] computes.
    fn cpu_prepared(&self, inputs: &[&Tensor], _prepared: &Prepared) -> Result<Vec<Tensor>, OpError> {
        self.cpu(inputs)
    }
}

impl dyn Op {
    /// The op as its concrete type `T`, when it is one (a backend reads a
    /// concrete op's attributes this way).
    pub fn downcast_ref<T: Op>(&self) -> Option<&T> {
        let any: &dyn Any = self;
        any.downcast_ref()
    }

    /// True when the op is a `T`.
    pub fn is<T: Op>(&self) -> bool {
        let any: &dyn Any = self;
        any.is::<T>()
    }
}

/// What [`Op::prepare_cpu`] derived for one node, shared by every run of a
/// session.
#[derive(Clone)]
pub struct Prepared(pub Arc<dyn Any + Send + Sync>);

impl fmt::Debug for Prepared {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str("Prepared")
    }
}

/// A registered op type: how to build it from attributes, and its test cases.
pub struct OpDef {
    /// The op type name used in model files.
    pub op_type: &'static str,
    /// Builds an instance from attributes.
    pub build: fn(&Attrs) -> Result<Arc<dyn Op>, OpError>,
    /// Fixed cases with awkward sizes (1, 3, 17, 1000: no tile multiples).
    pub cases: fn() -> Vec<OpCase>,
    /// A random case, for property tests.
    pub sample: fn(&mut CaseRng) -> OpCase,
}

impl fmt::Debug for OpDef {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.debug_struct("OpDef").field("op_type", &self.op_type).finish()
    }
}

/// Every op wginfer knows, one line each.
pub static REGISTRY: &[OpDef] = &[
    linear::LINEAR,
    matmul::MATMUL,
    qlinear::QLINEAR,
    binary::ADD,
    binary::MUL,
    unary::RELU,
    unary::SIGMOID,
    unary::TANH,
    unary::GELU,
    unary::SILU,
    softmax::SOFTMAX,
    view::RESHAPE,
    view::FLATTEN,
    binary::SUB,
    binary::DIV,
    binary::MAX,
    binary::MIN,
    unary::LEAKY_RELU,
    unary::ERF,
    unary::NEG,
    unary::ABS,
    unary::EXP,
    unary::LOG,
    unary::SQRT,
    unary::RECIPROCAL,
    unary::HARD_SWISH,
    softmax::LOG_SOFTMAX,
    gemm::GEMM,
    conv::CONV,
    qconv::QCONV,
    pool::MAX_POOL,
    pool::AVERAGE_POOL,
    pool::GLOBAL_AVERAGE_POOL,
    norm::BATCH_NORM,
    norm::BATCH_NORM_TRAINING,
    norm::LAYER_NORM,
    movement::TRANSPOSE,
    view::SQUEEZE,
    view::UNSQUEEZE,
    movement::CONCAT,
    cast::CAST,
    movement::GATHER,
    attention::ATTENTION,
    pool::MASKED_MEAN_POOL,
    l2norm::L2_NORMALIZE,
    quantize::DEQUANTIZE_LINEAR,
    cast::CAST_UNSATURATED,
    integer::MATMUL_INTEGER,
    integer::DYNAMIC_QUANTIZE_LINEAR,
    conv_integer::CONV_INTEGER,
    reduce::REDUCE_MIN,
    reduce::REDUCE_MAX,
    unary::FLOOR,
    unary::SIGN,
    unary::ROUND,
];

/// The registered op type of this name.
pub fn lookup(op_type: &str) -> Option<&'static OpDef> {
    REGISTRY.iter().find(|d| d.op_type == op_type)
}

/// The names of every registered op, comma separated (for error messages).
pub fn known_ops() -> String {
    REGISTRY.iter().map(|d| d.op_type).collect::<Vec<_>>().join(", ")
}

// ---- helpers shared by the op files ----

pub(crate) fn check_arity(inputs: usize, min: usize, max: usize, expected: &'static str) -> Result<(), OpError> {
    if inputs < min || inputs > max {
        return Err(OpError::Arity { expected, got: inputs });
    }
    Ok(())
}

pub(crate) fn check_f32(inputs: &[ValueType]) -> Result<(), OpError> {
    for (index, v) in inputs.iter().enumerate() {
        if v.dtype != DType::F32 {
            return Err(OpError::DType {
                index,
                expected: "f32",
                got: v.dtype,
            });
        }
    }
    Ok(())
}

pub(crate) fn f32_input<'a>(inputs: &[&'a Tensor], index: usize) -> Result<&'a [f32], OpError> {
    let t = inputs.get(index).ok_or(OpError::Arity {
        expected: "more",
        got: inputs.len(),
    })?;
    t.as_f32().map_err(|_| OpError::DType {
        index,
        expected: "f32",
        got: t.dtype(),
    })
}

pub(crate) fn attr_i64(attrs: &Attrs, name: &str, default: Option<i64>) -> Result<i64, OpError> {
    match attrs.get(name) {
        None => default.ok_or_else(|| OpError::Attribute {
            name: name.to_string(),
            message: "is required".into(),
        }),
        Some(v) => v.as_i64().ok_or_else(|| OpError::Attribute {
            name: name.to_string(),
            message: format!("must be an integer, got {v}"),
        }),
    }
}

pub(crate) fn attr_ints(attrs: &Attrs, name: &str) -> Result<Vec<i64>, OpError> {
    let bad = |message: String| OpError::Attribute {
        name: name.to_string(),
        message,
    };
    let v = attrs.get(name).ok_or_else(|| bad("is required".into()))?;
    let arr = v
        .as_array()
        .ok_or_else(|| bad(format!("must be a list of integers, got {v}")))?;
    arr.iter()
        .map(|x| {
            x.as_i64()
                .ok_or_else(|| bad(format!("must be a list of integers, got {v}")))
        })
        .collect()
}

pub(crate) fn attr_str<'a>(attrs: &'a Attrs, name: &str, default: &'a str) -> Result<&'a str, OpError> {
    match attrs.get(name) {
        None => Ok(default),
        Some(v) => v.as_str().ok_or_else(|| OpError::Attribute {
            name: name.to_string(),
            message: format!("must be a string, got {v}"),
        }),
    }
}

/// Resolves a possibly negative axis against a rank.
pub(crate) fn normalize_axis(axis: i64, rank: usize) -> Result<usize, OpError> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r.max(1) {
        return Err(OpError::Attribute {
            name: "axis".into(),
            message: format!("{axis} is out of range for a rank-{rank} input"),
        });
    }
    Ok(a as usize)
}

/// Resolves a possibly negative axis against a rank; `what` names the
/// attribute in the error.
pub(crate) fn axis_in(axis: i64, rank: usize, what: &str) -> Result<usize, OpError> {
    let r = rank as i64;
    let a = if axis < 0 { axis + r } else { axis };
    if a < 0 || a >= r {
        return Err(OpError::Attribute {
            name: what.into(),
            message: format!("axis {axis} is out of range for rank {rank}"),
        });
    }
    Ok(a as usize)
}
