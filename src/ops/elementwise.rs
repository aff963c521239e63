//! Elementwise ops added for ONNX import: `LeakyRelu`, `Erf`, `Neg`, `Abs`,
//! `Exp`, `Log`, `Sqrt`, `Reciprocal`, and `LogSoftmax` along one axis. (`Sub` and `Div` are [`super::binary`] kinds.)

use std::any::Any;
use std::sync::Arc;

use super::{
    attr_i64, check_arity, check_f32, f32_input, normalize_axis, Attrs, CaseRng, Op, OpCase, OpDef, Validation,
};
use crate::error::OpError;
use crate::linalg;
use crate::tensor::{Tensor, ValueType};

/// An elementwise op with an f64 reference and an f32 fast form.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum PointKind {
    /// `x` if `x >= 0`, else `alpha · x`.
    LeakyRelu(f32),
    /// The error function.
    Erf,
    /// `-x`.
    Neg,
    /// `|x|`.
    Abs,
    /// `e^x`.
    Exp,
    /// The natural logarithm.
    Log,
    /// The square root.
    Sqrt,
    /// `1 / x`.
    Reciprocal,
}

impl PointKind {
    /// The function in f64 (the reference; LeakyRelu in f32 as ONNX defines it).
    fn eval(self, v: f32) -> f32 {
        let d = v as f64;
        match self {
            PointKind::LeakyRelu(alpha) => {
                if v >= 0.0 {
                    v
                } else {
                    alpha * v
                }
            }
            PointKind::Erf => libm::erf(d) as f32,
            PointKind::Neg => -v,
            PointKind::Abs => v.abs(),
            PointKind::Exp => d.exp() as f32,
            PointKind::Log => d.ln() as f32,
            PointKind::Sqrt => d.sqrt() as f32,
            PointKind::Reciprocal => (1.0 / d) as f32,
        }
    }

    /// Where its test inputs are drawn from (inside the domain, away from poles).
    fn domain(self) -> (f32, f32) {
        match self {
            PointKind::Log | PointKind::Sqrt | PointKind::Reciprocal => (0.25, 4.0),
            _ => (-4.0, 4.0),
        }
    }
}

/// One of the [`PointKind`] functions on one f32 tensor.
#[derive(Clone, Debug)]
pub struct Pointwise {
    /// The function.
    pub kind: PointKind,
}

impl Op for Pointwise {
    fn op_type(&self) -> &'static str {
        match self.kind {
            PointKind::LeakyRelu(_) => "LeakyRelu",
            PointKind::Erf => "Erf",
            PointKind::Neg => "Neg",
            PointKind::Abs => "Abs",
            PointKind::Exp => "Exp",
            PointKind::Log => "Log",
            PointKind::Sqrt => "Sqrt",
            PointKind::Reciprocal => "Reciprocal",
        }
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        if let PointKind::LeakyRelu(alpha) = self.kind {
            a.insert("alpha".into(), (alpha as f64).into());
        }
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        check_f32(inputs)?;
        Ok(vec![inputs[0].clone()])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let x = f32_input(inputs, 0)?;
        let y = x.iter().map(|&v| self.kind.eval(v)).collect();
        Ok(vec![Tensor::from_vec(inputs[0].shape().to_vec(), y)?])
    }

    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let x = f32_input(inputs, 0)?;
        let y = match self.kind {
            PointKind::LeakyRelu(alpha) => linalg::map(x, move |v| if v >= 0.0 { v } else { alpha * v }),
            PointKind::Erf => linalg::map(x, libm::erff),
            PointKind::Neg => linalg::map(x, |v| -v),
            PointKind::Abs => linalg::map(x, f32::abs),
            PointKind::Exp => linalg::map(x, f32::exp),
            PointKind::Log => linalg::map(x, f32::ln),
            PointKind::Sqrt => linalg::map(x, f32::sqrt),
            PointKind::Reciprocal => linalg::map(x, |v| 1.0 / v),
        };
        Ok(vec![Tensor::from_vec(inputs[0].shape().to_vec(), y)?])
    }

    fn backward(
        &self,
        inputs: &[&Tensor],
        _outputs: &[&Tensor],
        grads: &[&Tensor],
    ) -> Result<Vec<Option<Tensor>>, OpError> {
        let x = f32_input(inputs, 0)?;
        let dy = f32_input(grads, 0)?;
        let dx = x
            .iter()
            .zip(dy)
            .map(|(&v, &g)| match self.kind {
                PointKind::LeakyRelu(alpha) => {
                    if v >= 0.0 {
                        g
                    } else {
                        alpha * g
                    }
                }
                PointKind::Erf => g * (2.0 / std::f32::consts::PI.sqrt()) * (-v * v).exp(),
                PointKind::Neg => -g,
                PointKind::Abs => g * v.signum(),
                PointKind::Exp => g * v.exp(),
                PointKind::Log => g / v,
                PointKind::Sqrt => g / (2.0 * v.sqrt()),
                PointKind::Reciprocal => -g / (v * v),
            })
            .collect();
        Ok(vec![Some(Tensor::from_vec(inputs[0].shape().to_vec(), dx)?)])
    }

    fn validation(&self) -> Validation {
        match self.kind {
            PointKind::LeakyRelu(_) | PointKind::Neg | PointKind::Abs => Validation::Exact,
            PointKind::Erf | PointKind::Sqrt | PointKind::Reciprocal => Validation::Rounding,
            // WGSL promises exp and log to a few ULP plus a term growing with |x|.
            PointKind::Exp | PointKind::Log => Validation::Approximate,
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn point_cases(kind: PointKind) -> Vec<OpCase> {
    let mut rng = CaseRng::new(22);
    [&[1usize][..], &[3, 17], &[17, 1000], &[2, 3, 5, 7]]
        .iter()
        .map(|s| {
            OpCase::new(
                format!("{kind:?} {s:?}"),
                Arc::new(Pointwise { kind }),
                vec![rng.tensor(s, kind.domain().0, kind.domain().1)],
            )
        })
        .collect()
}

fn point_sample(kind: PointKind, rng: &mut CaseRng) -> OpCase {
    let s: Vec<usize> = (0..rng.range(1, 4)).map(|_| rng.dim(20)).collect();
    let x = rng.tensor(&s, kind.domain().0, kind.domain().1);
    OpCase::new(format!("{kind:?} {s:?}"), Arc::new(Pointwise { kind }), vec![x])
}

fn attr_f32(attrs: &Attrs, name: &str, default: f32) -> Result<f32, OpError> {
    match attrs.get(name) {
        None => Ok(default),
        Some(v) => v.as_f64().map(|x| x as f32).ok_or_else(|| OpError::Attribute {
            name: name.to_string(),
            message: format!("must be a number, got {v}"),
        }),
    }
}

/// `LeakyRelu`: attribute `alpha` (default 0.01).
pub const LEAKY_RELU: OpDef = OpDef {
    op_type: "LeakyRelu",
    build: |attrs: &Attrs| {
        Ok(Arc::new(Pointwise {
            kind: PointKind::LeakyRelu(attr_f32(attrs, "alpha", 0.01)?),
        }))
    },
    cases: || point_cases(PointKind::LeakyRelu(0.1)),
    sample: |r| point_sample(PointKind::LeakyRelu(0.2), r),
};

/// `Erf`: the error function.
pub const ERF: OpDef = OpDef {
    op_type: "Erf",
    build: |_: &Attrs| Ok(Arc::new(Pointwise { kind: PointKind::Erf })),
    cases: || point_cases(PointKind::Erf),
    sample: |r| point_sample(PointKind::Erf, r),
};

macro_rules! point_def {
    ($name:ident, $kind:expr, $op:literal, $doc:literal) => {
        #[doc = $doc]
        pub const $name: OpDef = OpDef {
            op_type: $op,
            build: |_: &Attrs| Ok(Arc::new(Pointwise { kind: $kind })),
            cases: || point_cases($kind),
            sample: |r| point_sample($kind, r),
        };
    };
}

point_def!(NEG, PointKind::Neg, "Neg", "`Neg`: `-x`.");
point_def!(ABS, PointKind::Abs, "Abs", "`Abs`: `|x|`.");
point_def!(EXP, PointKind::Exp, "Exp", "`Exp`: `e^x`.");
point_def!(LOG, PointKind::Log, "Log", "`Log`: the natural logarithm.");
point_def!(SQRT, PointKind::Sqrt, "Sqrt", "`Sqrt`: the square root.");
point_def!(
    RECIPROCAL,
    PointKind::Reciprocal,
    "Reciprocal",
    "`Reciprocal`: `1 / x`."
);

/// `x - max - log Σ exp(x - max)` along `axis` (negative counts from the end).
#[derive(Clone, Debug)]
pub struct LogSoftmax {
    /// The axis to normalise over.
    pub axis: i64,
}

fn split(shape: &[usize], axis: i64) -> Result<(usize, usize, usize), OpError> {
    if shape.is_empty() {
        return Ok((1, 1, 1));
    }
    let a = normalize_axis(axis, shape.len())?;
    Ok((shape[..a].iter().product(), shape[a], shape[a + 1..].iter().product()))
}

impl LogSoftmax {
    fn run(&self, t: &Tensor, wide: bool) -> Result<Tensor, OpError> {
        let x = t.as_f32()?;
        let (outer, len, inner) = split(t.shape(), self.axis)?;
        let mut y = vec![0.0f32; x.len()];
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| o * len * inner + j * inner + i;
                let max = (0..len).map(|j| x[at(j)]).fold(f32::NEG_INFINITY, f32::max);
                if wide {
                    let sum: f64 = (0..len).map(|j| ((x[at(j)] - max) as f64).exp()).sum();
                    let lse = sum.ln();
                    for j in 0..len {
                        y[at(j)] = ((x[at(j)] - max) as f64 - lse) as f32;
                    }
                } else {
                    let sum: f32 = (0..len).map(|j| (x[at(j)] - max).exp()).sum();
                    let lse = sum.ln();
                    for j in 0..len {
                        y[at(j)] = x[at(j)] - max - lse;
                    }
                }
            }
        }
        Ok(Tensor::from_vec(t.shape().to_vec(), y)?)
    }
}

impl Op for LogSoftmax {
    fn op_type(&self) -> &'static str {
        "LogSoftmax"
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("axis".into(), self.axis.into());
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        check_f32(inputs)?;
        normalize_axis(self.axis, inputs[0].rank())?;
        Ok(vec![inputs[0].clone()])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        Ok(vec![self.run(inputs[0], true)?])
    }

    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        Ok(vec![self.run(inputs[0], false)?])
    }

    fn validation(&self) -> Validation {
        Validation::Approximate
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// `LogSoftmax`: attribute `axis` (default -1).
pub const LOG_SOFTMAX: OpDef = OpDef {
    op_type: "LogSoftmax",
    build: |attrs: &Attrs| {
        Ok(Arc::new(LogSoftmax {
            axis: attr_i64(attrs, "axis", Some(-1))?,
        }))
    },
    cases: || {
        let mut rng = CaseRng::new(23);
        [
            (&[1usize][..], -1i64),
            (&[3, 17], 1),
            (&[17, 1000], -1),
            (&[5, 3, 7], 1),
            (&[4, 3], 0),
        ]
        .iter()
        .map(|(s, axis)| {
            OpCase::new(
                format!("logsoftmax {s:?} axis {axis}"),
                Arc::new(LogSoftmax { axis: *axis }),
                vec![rng.tensor(s, -5.0, 5.0)],
            )
        })
        .collect()
    },
    sample: |rng| {
        let s: Vec<usize> = (0..rng.range(1, 3)).map(|_| rng.dim(40)).collect();
        let axis = rng.range(0, s.len() - 1) as i64;
        let x = rng.tensor(&s, -5.0, 5.0);
        OpCase::new(
            format!("logsoftmax {s:?} axis {axis}"),
            Arc::new(LogSoftmax { axis }),
            vec![x],
        )
    },
};
