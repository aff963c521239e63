//! `Softmax` and `LogSoftmax` along any axis, numerically stable (the
//! maximum is subtracted).

use std::sync::Arc;

use super::{
    attr_i64, check_arity, check_f32, f32_input, normalize_axis, Attrs, CaseRng, Op, OpCase, OpDef, Validation,
};
use crate::error::OpError;
use crate::linalg;
use crate::tensor::{Tensor, ValueType};

/// `exp(x - max) / Σ exp(x - max)` along `axis` (negative counts from the end).
#[derive(Clone, Debug)]
pub struct Softmax {
    /// The axis to normalise over.
    pub axis: i64,
}

/// (outer, axis length, inner) of a concrete call.
fn split(shape: &[usize], axis: i64) -> Result<(usize, usize, usize), OpError> {
    let a = normalize_axis(axis, shape.len())?;
    if shape.is_empty() {
        return Ok((1, 1, 1));
    }
    let outer = shape[..a].iter().product();
    let inner = shape[a + 1..].iter().product();
    Ok((outer, shape[a], inner))
}

/// One row in place: the exponentials by [`linalg::exp_fast`], which
/// vectorizes (within 2 ulp of `exp`; a row's classes, 10 for a
/// classifier, cost a call to the libm function each otherwise).
#[inline(always)]
fn softmax_row(row: &mut [f32]) {
    let max = row.iter().copied().fold(f32::NEG_INFINITY, f32::max);
    for v in row.iter_mut() {
        // exp_fast's clamp keeps a tiny value for -inf; softmax's is 0.
        *v = if *v == f32::NEG_INFINITY {
            0.0
        } else {
            linalg::exp_fast(*v - max)
        };
    }
    let sum: f32 = row.iter().sum();
    let inv = 1.0 / sum;
    for v in row.iter_mut() {
        *v *= inv;
    }
}

impl Op for Softmax {
    fn op_type(&self) -> &'static str {
        "Softmax"
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
        let x = f32_input(inputs, 0)?;
        let (outer, len, inner) = split(inputs[0].shape(), self.axis)?;
        let mut y = vec![0.0f32; x.len()];
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| o * len * inner + j * inner + i;
                let max = (0..len).map(|j| x[at(j)]).fold(f32::NEG_INFINITY, f32::max);
                let sum: f64 = (0..len).map(|j| ((x[at(j)] - max) as f64).exp()).sum();
                for j in 0..len {
                    y[at(j)] = (((x[at(j)] - max) as f64).exp() / sum) as f32;
                }
            }
        }
        Ok(vec![Tensor::from_vec(inputs[0].shape().to_vec(), y)?])
    }

    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let x = f32_input(inputs, 0)?;
        let (_, len, inner) = split(inputs[0].shape(), self.axis)?;
        if inner != 1 {
            return self.reference(inputs);
        }
        let mut y = x.to_vec();
        linalg::for_each_row(&mut y, len, |r| linalg::simd(|| softmax_row(r)));
        Ok(vec![Tensor::from_vec(inputs[0].shape().to_vec(), y)?])
    }

    fn backward(
        &self,
        inputs: &[&Tensor],
        outputs: &[&Tensor],
        grads: &[&Tensor],
    ) -> Result<Vec<Option<Tensor>>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let y = f32_input(outputs, 0)?;
        let dy = f32_input(grads, 0)?;
        let (outer, len, inner) = split(inputs[0].shape(), self.axis)?;
        let mut dx = vec![0.0f32; y.len()];
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| o * len * inner + j * inner + i;
                let dot: f64 = (0..len).map(|j| dy[at(j)] as f64 * y[at(j)] as f64).sum();
                for j in 0..len {
                    dx[at(j)] = (y[at(j)] as f64 * (dy[at(j)] as f64 - dot)) as f32;
                }
            }
        }
        Ok(vec![Some(Tensor::from_vec(inputs[0].shape().to_vec(), dx)?)])
    }

    fn validation(&self) -> Validation {
        Validation::Approximate
    }

    fn flops(&self, inputs: &[&[usize]]) -> u64 {
        inputs
            .first()
            .map(|s| 5 * s.iter().product::<usize>() as u64)
            .unwrap_or(0)
    }
}

fn case(rng: &mut CaseRng, shape: &[usize], axis: i64, spread: f32) -> OpCase {
    let x = rng.tensor(shape, -spread, spread);
    OpCase::new(
        format!("softmax {shape:?} axis {axis}"),
        Arc::new(Softmax { axis }),
        vec![x],
    )
}

/// `Softmax`: attribute `axis` (default -1).
pub const SOFTMAX: OpDef = OpDef {
    op_type: "Softmax",
    build: |attrs: &Attrs| {
        Ok(Arc::new(Softmax {
            axis: attr_i64(attrs, "axis", Some(-1))?,
        }))
    },
    cases: || {
        let mut rng = CaseRng::new(4);
        vec![
            case(&mut rng, &[1], -1, 3.0),
            case(&mut rng, &[3, 17], -1, 3.0),
            case(&mut rng, &[17, 1000], 1, 10.0),
            case(&mut rng, &[5, 1000], -1, 100.0),
            case(&mut rng, &[3, 17, 5], 1, 3.0),
            case(&mut rng, &[17, 3], 0, 3.0),
        ]
    },
    sample: |rng| {
        let rank = rng.range(1, 3);
        let shape: Vec<usize> = (0..rank).map(|_| rng.dim(40)).collect();
        let axis = rng.range(0, rank - 1) as i64
            - if rng.next_u64().is_multiple_of(2) {
                rank as i64
            } else {
                0
            };
        case(rng, &shape, axis, 20.0)
    },
};

/// `x - max - log Σ exp(x - max)` along `axis` (negative counts from the end).
#[derive(Clone, Debug)]
pub struct LogSoftmax {
    /// The axis to normalise over.
    pub axis: i64,
}

impl LogSoftmax {
    fn run(&self, t: &Tensor, wide: bool) -> Result<Tensor, OpError> {
        let x = t.as_f32()?;
        let (outer, len, inner) = if t.shape().is_empty() {
            (1, 1, 1)
        } else {
            split(t.shape(), self.axis)?
        };
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

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn stable_for_large_logits() {
        let x = Tensor::from_vec(vec![1, 3], vec![1000.0f32, 1001.0, 1002.0]).unwrap();
        let op = Softmax { axis: -1 };
        for y in [op.reference(&[&x]).unwrap(), op.cpu(&[&x]).unwrap()] {
            let y = y[0].as_f32().unwrap();
            assert!((y[2] - 0.665_240_9).abs() < 1e-6, "{y:?}");
            assert!((y.iter().sum::<f32>() - 1.0).abs() < 1e-6);
        }
    }

    #[test]
    fn bad_axis_is_an_error() {
        let x = ValueType::known(crate::tensor::DType::F32, &[2, 3]);
        assert!(Softmax { axis: 2 }.infer(&[x]).is_err());
    }
}
