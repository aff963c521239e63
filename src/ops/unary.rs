//! Unary elementwise ops: one op type, [`Unary`], whose [`UnaryKind`] picks
//! the function (Relu, Sigmoid, Tanh, Gelu in its erf and tanh forms, SiLU,
//! LeakyRelu, Erf, Neg, Abs, Exp, Log, Sqrt, Reciprocal, HardSwish, and the
//! steps Floor, Sign and Round). Each kind keeps the
//! op type and attributes of its model-file form; on the GPU every kind is a
//! code of one shader function, so any kind can run in a matmul epilogue.

use std::sync::Arc;

use super::{attr_str, check_arity, check_f32, f32_input, Attrs, CaseRng, Op, OpCase, OpDef, Validation};
use crate::error::OpError;
use crate::linalg;
use crate::tensor::{Tensor, ValueType};

/// Which unary function.
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum UnaryKind {
    /// `max(x, 0)`; NaN stays NaN.
    Relu,
    /// `1 / (1 + e^-x)`
    Sigmoid,
    /// `tanh(x)`
    Tanh,
    /// `x/2 · (1 + erf(x/√2))`, the exact GELU.
    Gelu,
    /// `x/2 · (1 + tanh(√(2/π)·(x + 0.044715·x³)))`, GELU's tanh approximation.
    GeluTanh,
    /// `x · sigmoid(x)` (also called swish).
    Silu,
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
    /// `x · max(0, min(1, x/6 + 1/2))` (ONNX `HardSwish`).
    HardSwish,
    /// The largest integer `<= x`.
    Floor,
    /// `-1`, `0` or `1` by the sign of `x` (NaN stays NaN).
    Sign,
    /// The nearest integer, halves to even.
    Round,
}

const SQRT_2_OVER_PI: f64 = 0.797_884_560_802_865_4;

#[inline]
fn sigmoid(x: f32) -> f32 {
    if x >= 0.0 {
        1.0 / (1.0 + (-x).exp())
    } else {
        let e = x.exp();
        e / (1.0 + e)
    }
}

impl UnaryKind {
    /// Every kind, with the data-carrying ones at their default attributes
    /// (the GPU code table and the tests iterate this).
    pub const ALL: [UnaryKind; 18] = [
        UnaryKind::Relu,
        UnaryKind::Sigmoid,
        UnaryKind::Tanh,
        UnaryKind::Gelu,
        UnaryKind::GeluTanh,
        UnaryKind::Silu,
        UnaryKind::LeakyRelu(0.01),
        UnaryKind::Erf,
        UnaryKind::Neg,
        UnaryKind::Abs,
        UnaryKind::Exp,
        UnaryKind::Log,
        UnaryKind::Sqrt,
        UnaryKind::Reciprocal,
        UnaryKind::HardSwish,
        UnaryKind::Floor,
        UnaryKind::Sign,
        UnaryKind::Round,
    ];

    /// The reference value: computed in f64 (LeakyRelu, Neg and Abs in f32,
    /// where they are exact).
    pub fn reference(self, v: f32) -> f32 {
        let x = v as f64;
        let y = match self {
            UnaryKind::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x
                }
            }
            UnaryKind::Sigmoid => 1.0 / (1.0 + (-x).exp()),
            UnaryKind::Tanh => x.tanh(),
            UnaryKind::Gelu => 0.5 * x * (1.0 + libm::erf(x / std::f64::consts::SQRT_2)),
            UnaryKind::GeluTanh => 0.5 * x * (1.0 + (SQRT_2_OVER_PI * (x + 0.044715 * x * x * x)).tanh()),
            UnaryKind::Silu => x / (1.0 + (-x).exp()),
            UnaryKind::LeakyRelu(alpha) => return if v >= 0.0 { v } else { alpha * v },
            UnaryKind::Erf => libm::erf(x),
            UnaryKind::Neg => return -v,
            UnaryKind::Abs => return v.abs(),
            UnaryKind::Exp => x.exp(),
            UnaryKind::Log => x.ln(),
            UnaryKind::Sqrt => x.sqrt(),
            UnaryKind::Reciprocal => 1.0 / x,
            UnaryKind::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
            UnaryKind::Floor | UnaryKind::Sign | UnaryKind::Round => return self.apply(v),
        };
        y as f32
    }

    /// The fast value, computed in f32 (what the CPU backend runs).
    #[inline]
    pub fn apply(self, x: f32) -> f32 {
        match self {
            UnaryKind::Relu => {
                if x < 0.0 {
                    0.0
                } else {
                    x
                }
            }
            UnaryKind::Sigmoid => sigmoid(x),
            UnaryKind::Tanh => x.tanh(),
            UnaryKind::Gelu => linalg::unary::gelu_scalar(x),
            UnaryKind::GeluTanh => {
                let c = SQRT_2_OVER_PI as f32;
                0.5 * x * (1.0 + (c * (x + 0.044715 * x * x * x)).tanh())
            }
            UnaryKind::Silu => x * sigmoid(x),
            UnaryKind::LeakyRelu(alpha) => {
                if x >= 0.0 {
                    x
                } else {
                    alpha * x
                }
            }
            UnaryKind::Erf => libm::erff(x),
            UnaryKind::Neg => -x,
            UnaryKind::Abs => x.abs(),
            UnaryKind::Exp => x.exp(),
            UnaryKind::Log => x.ln(),
            UnaryKind::Sqrt => x.sqrt(),
            UnaryKind::Reciprocal => 1.0 / x,
            UnaryKind::HardSwish => x * (x / 6.0 + 0.5).clamp(0.0, 1.0),
            UnaryKind::Floor => x.floor(),
            UnaryKind::Sign => {
                if x > 0.0 {
                    1.0
                } else if x < 0.0 {
                    -1.0
                } else {
                    x
                }
            }
            UnaryKind::Round => x.round_ties_even(),
        }
    }

    /// True for the step functions (Floor, Sign, Round): their derivative
    /// is 0 wherever it exists, so they have no backward pass.
    pub fn is_step(self) -> bool {
        matches!(self, UnaryKind::Floor | UnaryKind::Sign | UnaryKind::Round)
    }

    /// `dy · f'(x)`: the gradient with respect to `x` given `dy`.
    pub fn gradient(self, v: f32, g: f32) -> f32 {
        let x = v as f64;
        let sig = |v: f64| 1.0 / (1.0 + (-v).exp());
        let d = match self {
            UnaryKind::Relu => {
                if x > 0.0 {
                    1.0
                } else {
                    0.0
                }
            }
            UnaryKind::Sigmoid => sig(x) * (1.0 - sig(x)),
            UnaryKind::Tanh => 1.0 - x.tanh() * x.tanh(),
            UnaryKind::Gelu => {
                let cdf = 0.5 * (1.0 + libm::erf(x / std::f64::consts::SQRT_2));
                let pdf = (-0.5 * x * x).exp() / (2.0 * std::f64::consts::PI).sqrt();
                cdf + x * pdf
            }
            UnaryKind::GeluTanh => {
                let u = SQRT_2_OVER_PI * (x + 0.044715 * x * x * x);
                let t = u.tanh();
                0.5 * (1.0 + t) + 0.5 * x * (1.0 - t * t) * SQRT_2_OVER_PI * (1.0 + 3.0 * 0.044715 * x * x)
            }
            UnaryKind::Silu => sig(x) * (1.0 + x * (1.0 - sig(x))),
            UnaryKind::LeakyRelu(alpha) => return if v >= 0.0 { g } else { alpha * g },
            UnaryKind::Erf => return g * (2.0 / std::f32::consts::PI.sqrt()) * (-v * v).exp(),
            UnaryKind::Neg => return -g,
            UnaryKind::Abs => return g * v.signum(),
            UnaryKind::Exp => return g * v.exp(),
            UnaryKind::Log => return g / v,
            UnaryKind::Sqrt => return g / (2.0 * v.sqrt()),
            UnaryKind::Reciprocal => return -g / (v * v),
            UnaryKind::HardSwish => {
                if x <= -3.0 {
                    0.0
                } else if x >= 3.0 {
                    1.0
                } else {
                    x / 3.0 + 0.5
                }
            }
            UnaryKind::Floor | UnaryKind::Sign | UnaryKind::Round => 0.0,
        };
        g * d as f32
    }

    /// The op type in model files.
    pub fn op_type(self) -> &'static str {
        match self {
            UnaryKind::Relu => "Relu",
            UnaryKind::Sigmoid => "Sigmoid",
            UnaryKind::Tanh => "Tanh",
            UnaryKind::Gelu | UnaryKind::GeluTanh => "Gelu",
            UnaryKind::Silu => "Silu",
            UnaryKind::LeakyRelu(_) => "LeakyRelu",
            UnaryKind::Erf => "Erf",
            UnaryKind::Neg => "Neg",
            UnaryKind::Abs => "Abs",
            UnaryKind::Exp => "Exp",
            UnaryKind::Log => "Log",
            UnaryKind::Sqrt => "Sqrt",
            UnaryKind::Reciprocal => "Reciprocal",
            UnaryKind::HardSwish => "HardSwish",
            UnaryKind::Floor => "Floor",
            UnaryKind::Sign => "Sign",
            UnaryKind::Round => "Round",
        }
    }

    /// How closely another implementation matches [`UnaryKind::reference`].
    pub fn validation(self) -> Validation {
        match self {
            UnaryKind::Relu
            | UnaryKind::LeakyRelu(_)
            | UnaryKind::Neg
            | UnaryKind::Abs
            | UnaryKind::Floor
            | UnaryKind::Sign
            | UnaryKind::Round => Validation::Exact,
            UnaryKind::Erf | UnaryKind::Sqrt | UnaryKind::Reciprocal | UnaryKind::HardSwish => Validation::Rounding,
            // WGSL promises exp and log to a few ULP plus a term growing with |x|.
            _ => Validation::Approximate,
        }
    }

    /// Where its test inputs are drawn from (inside the domain, away from poles).
    fn domain(self) -> (f32, f32) {
        match self {
            UnaryKind::Log | UnaryKind::Sqrt | UnaryKind::Reciprocal => (0.25, 4.0),
            _ => (-4.0, 4.0),
        }
    }
}

/// A unary elementwise op on one f32 tensor.
#[derive(Clone, Debug)]
pub struct Unary {
    /// The function.
    pub kind: UnaryKind,
}

impl Op for Unary {
    fn op_type(&self) -> &'static str {
        self.kind.op_type()
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        match self.kind {
            UnaryKind::GeluTanh => {
                a.insert("approximate".into(), "tanh".into());
            }
            UnaryKind::LeakyRelu(alpha) => {
                a.insert("alpha".into(), (alpha as f64).into());
            }
            _ => {}
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
        let y = x.iter().map(|&v| self.kind.reference(v)).collect();
        Ok(vec![Tensor::from_vec(inputs[0].shape().to_vec(), y)?])
    }

    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let x = f32_input(inputs, 0)?;
        // One closure per kind, so the loop has no branch on the kind and vectorizes.
        let y = match self.kind {
            UnaryKind::Gelu => linalg::unary::gelu(x),
            UnaryKind::Relu => linalg::map(x, |v| UnaryKind::Relu.apply(v)),
            UnaryKind::LeakyRelu(alpha) => linalg::map(x, move |v| UnaryKind::LeakyRelu(alpha).apply(v)),
            UnaryKind::Erf => linalg::map(x, libm::erff),
            UnaryKind::Neg => linalg::map(x, |v| -v),
            UnaryKind::Abs => linalg::map(x, f32::abs),
            UnaryKind::Exp => linalg::map(x, f32::exp),
            UnaryKind::Log => linalg::map(x, f32::ln),
            UnaryKind::Sqrt => linalg::map(x, f32::sqrt),
            UnaryKind::Reciprocal => linalg::map(x, |v| 1.0 / v),
            kind => linalg::map(x, move |v| kind.apply(v)),
        };
        Ok(vec![Tensor::from_vec(inputs[0].shape().to_vec(), y)?])
    }

    fn backward(
        &self,
        inputs: &[&Tensor],
        _outputs: &[&Tensor],
        grads: &[&Tensor],
    ) -> Result<Vec<Option<Tensor>>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        if self.kind.is_step() {
            return Err(OpError::NoGradient(self.kind.op_type().to_string()));
        }
        let (x, dy) = (f32_input(inputs, 0)?, f32_input(grads, 0)?);
        let dx = x.iter().zip(dy).map(|(&v, &g)| self.kind.gradient(v, g)).collect();
        Ok(vec![Some(Tensor::from_vec(inputs[0].shape().to_vec(), dx)?)])
    }

    fn validation(&self) -> Validation {
        self.kind.validation()
    }

    fn flops(&self, inputs: &[&[usize]]) -> u64 {
        inputs.first().map(|s| s.iter().product::<usize>() as u64).unwrap_or(0)
    }
}

/// Cases for the activations: awkward sizes over `[-6, 6]` and extremes
/// (large magnitudes must not overflow to NaN).
fn activation_cases(kind: UnaryKind) -> Vec<OpCase> {
    let mut rng = CaseRng::new(3);
    let op: Arc<dyn Op> = Arc::new(Unary { kind });
    let mut out: Vec<OpCase> = [&[1usize][..], &[3, 17], &[1000], &[17, 1000]]
        .iter()
        .map(|s| OpCase::new(format!("{kind:?} {s:?}"), op.clone(), vec![rng.tensor(s, -6.0, 6.0)]))
        .collect();
    let edge = vec![-100.0f32, -20.0, -1e-3, 0.0, 1e-3, 20.0, 100.0];
    if let Ok(t) = Tensor::from_vec(vec![edge.len()], edge) {
        out.push(OpCase::new(format!("{kind:?} extremes"), op, vec![t]));
    }
    out
}

fn activation_sample(kind: UnaryKind, rng: &mut CaseRng) -> OpCase {
    let shape: Vec<usize> = (0..rng.range(1, 3)).map(|_| rng.dim(64)).collect();
    let x = rng.tensor(&shape, -8.0, 8.0);
    OpCase::new(format!("{kind:?} {shape:?}"), Arc::new(Unary { kind }), vec![x])
}

/// Cases for the math functions: awkward sizes inside the kind's domain.
fn point_cases(kind: UnaryKind) -> Vec<OpCase> {
    let mut rng = CaseRng::new(22);
    [&[1usize][..], &[3, 17], &[17, 1000], &[2, 3, 5, 7]]
        .iter()
        .map(|s| {
            OpCase::new(
                format!("{kind:?} {s:?}"),
                Arc::new(Unary { kind }),
                vec![rng.tensor(s, kind.domain().0, kind.domain().1)],
            )
        })
        .collect()
}

/// Cases for the steps: the math cases, and halves, integers and signed
/// zeros (where floor, sign and round-half-to-even decide).
fn step_cases(kind: UnaryKind) -> Vec<OpCase> {
    let mut out = point_cases(kind);
    let edge = vec![
        -2.5f32, -1.5, -0.5, -0.0, 0.0, 0.5, 1.5, 2.5, 3.0, -3.0, 1e-3, -1e-3, 0.49999997, 8388609.0, -1e30, 1e30,
    ];
    if let Ok(t) = Tensor::from_vec(vec![edge.len()], edge) {
        out.push(OpCase::new(
            format!("{kind:?} edges"),
            Arc::new(Unary { kind }),
            vec![t],
        ));
    }
    out
}

fn point_sample(kind: UnaryKind, rng: &mut CaseRng) -> OpCase {
    let s: Vec<usize> = (0..rng.range(1, 4)).map(|_| rng.dim(20)).collect();
    let x = rng.tensor(&s, kind.domain().0, kind.domain().1);
    OpCase::new(format!("{kind:?} {s:?}"), Arc::new(Unary { kind }), vec![x])
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

macro_rules! unary_def {
    ($(#[$doc:meta])* $name:ident, $op:literal, $kind:expr, $cases:ident, $sample:ident) => {
        $(#[$doc])*
        pub const $name: OpDef = OpDef {
            op_type: $op,
            build: |_: &Attrs| Ok(Arc::new(Unary { kind: $kind })),
            cases: || $cases($kind),
            sample: |r| $sample($kind, r),
        };
    };
}

unary_def!(
    /// `Relu`: `max(x, 0)`.
    RELU, "Relu", UnaryKind::Relu, activation_cases, activation_sample
);
unary_def!(
    /// `Sigmoid`: `1 / (1 + e^-x)`.
    SIGMOID, "Sigmoid", UnaryKind::Sigmoid, activation_cases, activation_sample
);
unary_def!(
    /// `Tanh`.
    TANH, "Tanh", UnaryKind::Tanh, activation_cases, activation_sample
);
unary_def!(
    /// `Silu`: `x · sigmoid(x)`.
    SILU, "Silu", UnaryKind::Silu, activation_cases, activation_sample
);
unary_def!(
    /// `Erf`: the error function.
    ERF, "Erf", UnaryKind::Erf, point_cases, point_sample
);
unary_def!(
    /// `Neg`: `-x`.
    NEG, "Neg", UnaryKind::Neg, point_cases, point_sample
);
unary_def!(
    /// `Abs`: `|x|`.
    ABS, "Abs", UnaryKind::Abs, point_cases, point_sample
);
unary_def!(
    /// `Exp`: `e^x`.
    EXP, "Exp", UnaryKind::Exp, point_cases, point_sample
);
unary_def!(
    /// `Log`: the natural logarithm.
    LOG, "Log", UnaryKind::Log, point_cases, point_sample
);
unary_def!(
    /// `Sqrt`: the square root.
    SQRT, "Sqrt", UnaryKind::Sqrt, point_cases, point_sample
);
unary_def!(
    /// `HardSwish`: `x · max(0, min(1, x/6 + 1/2))`.
    HARD_SWISH, "HardSwish", UnaryKind::HardSwish, point_cases, point_sample
);
unary_def!(
    /// `Reciprocal`: `1 / x`.
    RECIPROCAL, "Reciprocal", UnaryKind::Reciprocal, point_cases, point_sample
);

unary_def!(
    /// `Floor`: the largest integer `<= x`.
    FLOOR, "Floor", UnaryKind::Floor, step_cases, point_sample
);
unary_def!(
    /// `Sign`: -1, 0 or 1.
    SIGN, "Sign", UnaryKind::Sign, step_cases, point_sample
);
unary_def!(
    /// `Round`: to the nearest integer, halves to even.
    ROUND, "Round", UnaryKind::Round, step_cases, point_sample
);

/// `Gelu`: attribute `approximate` = `"none"` (erf, default) or `"tanh"`.
pub const GELU: OpDef = OpDef {
    op_type: "Gelu",
    build: |attrs: &Attrs| {
        let kind = match attr_str(attrs, "approximate", "none")? {
            "none" => UnaryKind::Gelu,
            "tanh" => UnaryKind::GeluTanh,
            other => {
                return Err(OpError::Attribute {
                    name: "approximate".into(),
                    message: format!("must be \"none\" or \"tanh\", got \"{other}\""),
                })
            }
        };
        Ok(Arc::new(Unary { kind }))
    },
    cases: || {
        let mut c = activation_cases(UnaryKind::Gelu);
        c.extend(activation_cases(UnaryKind::GeluTanh));
        c
    },
    sample: |r| {
        let kind = if r.next_u64().is_multiple_of(2) {
            UnaryKind::Gelu
        } else {
            UnaryKind::GeluTanh
        };
        activation_sample(kind, r)
    },
};

/// `LeakyRelu`: attribute `alpha` (default 0.01).
pub const LEAKY_RELU: OpDef = OpDef {
    op_type: "LeakyRelu",
    build: |attrs: &Attrs| {
        Ok(Arc::new(Unary {
            kind: UnaryKind::LeakyRelu(attr_f32(attrs, "alpha", 0.01)?),
        }))
    },
    cases: || point_cases(UnaryKind::LeakyRelu(0.1)),
    sample: |r| point_sample(UnaryKind::LeakyRelu(0.2), r),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn known_values() {
        // Values from PyTorch's documentation tables / closed forms.
        assert_eq!(UnaryKind::Relu.apply(-1.0), 0.0);
        assert!((UnaryKind::Sigmoid.apply(0.0) - 0.5).abs() < 1e-7);
        assert!((UnaryKind::Gelu.apply(1.0) - 0.841_344_7).abs() < 1e-6);
        assert!((UnaryKind::GeluTanh.apply(1.0) - 0.841_192).abs() < 1e-6);
        assert!((UnaryKind::Silu.apply(1.0) - 0.731_058_6).abs() < 1e-6);
        assert!(UnaryKind::Sigmoid.apply(-100.0).is_finite());
        assert!(UnaryKind::Silu.apply(-100.0).abs() < 1e-30);
    }
}
