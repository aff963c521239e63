//! `L2Normalize`: scales vectors to unit Euclidean length along an axis
//! (`torch.nn.functional.normalize`, the last step of a sentence embedder).

use std::sync::Arc;

use super::{
    attr_i64, check_arity, check_f32, f32_input, normalize_axis, Attrs, CaseRng, Op, OpCase, OpDef, Validation,
};
use crate::error::OpError;
use crate::linalg;
use crate::tensor::{Tensor, ValueType};

/// `y = x / max(‖x‖₂, epsilon)` along `axis`.
#[derive(Clone, Debug)]
pub struct L2Normalize {
    /// The axis the norm is taken over (negative counts from the end).
    pub axis: i64,
    /// The smallest divisor (a zero vector stays zero).
    pub epsilon: f32,
}

/// (outer, axis length, inner) of a concrete call.
fn split(shape: &[usize], axis: i64) -> Result<(usize, usize, usize), OpError> {
    if shape.is_empty() {
        return Ok((1, 1, 1));
    }
    let a = normalize_axis(axis, shape.len())?;
    Ok((shape[..a].iter().product(), shape[a], shape[a + 1..].iter().product()))
}

impl L2Normalize {
    fn norms(&self, x: &[f32], (outer, len, inner): (usize, usize, usize)) -> Vec<f64> {
        let mut n = Vec::with_capacity(outer * inner);
        for o in 0..outer {
            for i in 0..inner {
                let ss: f64 = (0..len).map(|j| (x[(o * len + j) * inner + i] as f64).powi(2)).sum();
                n.push(ss.sqrt());
            }
        }
        n
    }
}

impl Op for L2Normalize {
    fn op_type(&self) -> &'static str {
        "L2Normalize"
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("axis".into(), self.axis.into());
        a.insert("epsilon".into(), (self.epsilon as f64).into());
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
        let g = split(inputs[0].shape(), self.axis)?;
        let (_, len, inner) = g;
        let norms = self.norms(x, g);
        let y = x
            .iter()
            .enumerate()
            .map(|(p, &v)| {
                let (o, i) = (p / (len * inner), p % inner);
                (v as f64 / norms[o * inner + i].max(self.epsilon as f64)) as f32
            })
            .collect();
        Ok(vec![Tensor::from_vec(inputs[0].shape().to_vec(), y)?])
    }

    /// Rows along the last axis in parallel; other axes take the reference.
    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let x = f32_input(inputs, 0)?;
        let (_, len, inner) = split(inputs[0].shape(), self.axis)?;
        if inner != 1 {
            return self.reference(inputs);
        }
        let eps = self.epsilon;
        let mut y = x.to_vec();
        linalg::for_each_row(&mut y, len, |row| {
            let inv = 1.0 / linalg::dot(row, row).sqrt().max(eps);
            for v in row.iter_mut() {
                *v *= inv;
            }
        });
        Ok(vec![Tensor::from_vec(inputs[0].shape().to_vec(), y)?])
    }

    /// `dx = (dy - y·(y·dy)) / ‖x‖` where `‖x‖ > epsilon`, else `dy / epsilon`.
    fn backward(
        &self,
        inputs: &[&Tensor],
        outputs: &[&Tensor],
        grads: &[&Tensor],
    ) -> Result<Vec<Option<Tensor>>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let x = f32_input(inputs, 0)?;
        let (y, dy) = (f32_input(outputs, 0)?, f32_input(grads, 0)?);
        let g = split(inputs[0].shape(), self.axis)?;
        let (outer, len, inner) = g;
        let norms = self.norms(x, g);
        let mut dx = vec![0.0f32; x.len()];
        for o in 0..outer {
            for i in 0..inner {
                let at = |j: usize| (o * len + j) * inner + i;
                let n = norms[o * inner + i];
                if n > self.epsilon as f64 {
                    let dot: f64 = (0..len).map(|j| y[at(j)] as f64 * dy[at(j)] as f64).sum();
                    for j in 0..len {
                        dx[at(j)] = ((dy[at(j)] as f64 - y[at(j)] as f64 * dot) / n) as f32;
                    }
                } else {
                    for j in 0..len {
                        dx[at(j)] = (dy[at(j)] as f64 / self.epsilon as f64) as f32;
                    }
                }
            }
        }
        Ok(vec![Some(Tensor::from_vec(inputs[0].shape().to_vec(), dx)?)])
    }

    fn validation(&self) -> Validation {
        Validation::Approximate
    }
}

fn case(rng: &mut CaseRng, shape: &[usize], axis: i64) -> OpCase {
    OpCase::new(
        format!("l2normalize {shape:?} axis {axis}"),
        Arc::new(L2Normalize { axis, epsilon: 1e-12 }),
        vec![rng.tensor(shape, -2.0, 2.0)],
    )
}

/// `L2Normalize`: attributes `axis` (-1), `epsilon` (1e-12).
pub const L2_NORMALIZE: OpDef = OpDef {
    op_type: "L2Normalize",
    build: |attrs: &Attrs| {
        let epsilon = match attrs.get("epsilon") {
            None => 1e-12,
            Some(v) => v.as_f64().ok_or_else(|| OpError::Attribute {
                name: "epsilon".into(),
                message: format!("must be a number, got {v}"),
            })? as f32,
        };
        Ok(Arc::new(L2Normalize {
            axis: attr_i64(attrs, "axis", Some(-1))?,
            epsilon,
        }))
    },
    cases: || {
        let mut rng = CaseRng::new(95);
        vec![
            case(&mut rng, &[1, 1], -1),
            case(&mut rng, &[17, 384], -1),
            case(&mut rng, &[3, 1000], 1),
            case(&mut rng, &[3, 5, 7], 1),
            case(&mut rng, &[33], 0),
        ]
    },
    sample: |rng| {
        let s: Vec<usize> = (0..rng.range(1, 3)).map(|_| rng.dim(65)).collect();
        let axis = rng.range(0, s.len() - 1) as i64;
        case(rng, &s, axis)
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn three_four_five_and_a_zero_row() {
        let x = Tensor::from_vec(vec![2, 2], vec![3.0f32, 4.0, 0.0, 0.0]).unwrap();
        let op = L2Normalize {
            axis: -1,
            epsilon: 1e-12,
        };
        for y in [op.reference(&[&x]).unwrap(), op.cpu(&[&x]).unwrap()] {
            assert_eq!(y[0].as_f32().unwrap(), &[0.6, 0.8, 0.0, 0.0]);
        }
    }

    #[test]
    fn epsilon_bounds_the_divisor() {
        let x = Tensor::from_vec(vec![1, 2], vec![3e-3f32, 4e-3]).unwrap();
        let op = L2Normalize { axis: 1, epsilon: 1.0 };
        let y = op.cpu(&[&x]).unwrap();
        assert_eq!(y[0].as_f32().unwrap(), &[3e-3, 4e-3]);
    }

    #[test]
    fn along_the_first_axis() {
        let x = Tensor::from_vec(vec![2, 2], vec![3.0f32, 0.0, 4.0, 2.0]).unwrap();
        let y = L2Normalize {
            axis: 0,
            epsilon: 1e-12,
        }
        .cpu(&[&x])
        .unwrap();
        assert_eq!(y[0].as_f32().unwrap(), &[0.6, 0.0, 0.8, 1.0]);
    }
}
