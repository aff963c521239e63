//! `MaskedMeanPool`: the mean of the token vectors a mask keeps, per
//! sequence (sentence-transformers' mean pooling).

use std::any::Any;
use std::sync::Arc;

use rayon::prelude::*;

use super::{check_arity, check_f32, f32_input, Attrs, CaseRng, Op, OpCase, OpDef, Validation};
use crate::error::OpError;
use crate::tensor::{Tensor, ValueType};

/// The smallest divisor: a row with no kept tokens pools to zeros, not NaN
/// (sentence-transformers clamps `Σ mask` to 1e-9).
pub const MIN_COUNT: f32 = 1e-9;

/// `y[b, e] = Σ_s mask[b, s] · x[b, s, e] / max(Σ_s mask[b, s], 1e-9)`.
///
/// Inputs `x [B, S, E]` and `mask [B, S]` (f32, usually 0/1); output `[B, E]`.
#[derive(Clone, Debug, Default)]
pub struct MaskedMeanPool;

fn dims(x: &[usize], m: &[usize]) -> Result<(usize, usize, usize), OpError> {
    if x.len() != 3 || m.len() != 2 || m[0] != x[0] || m[1] != x[1] {
        return Err(OpError::Shape(format!(
            "needs x [batch, seq, width] and mask [batch, seq]; got x {x:?}, mask {m:?}"
        )));
    }
    Ok((x[0], x[1], x[2]))
}

impl Op for MaskedMeanPool {
    fn op_type(&self) -> &'static str {
        "MaskedMeanPool"
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 2, 2, "2 (x, mask)")?;
        check_f32(inputs)?;
        let (x, m) = (&inputs[0], &inputs[1]);
        let clash = |i: usize| matches!((x.shape[i].known(), m.shape[i].known()), (Some(a), Some(b)) if a != b);
        if x.rank() != 3 || m.rank() != 2 || clash(0) || clash(1) {
            return Err(OpError::Shape(format!(
                "needs x [batch, seq, width] and mask [batch, seq]; got x {}, mask {}",
                x.shape_string(),
                m.shape_string()
            )));
        }
        Ok(vec![ValueType {
            dtype: x.dtype,
            shape: vec![x.shape[0].clone(), x.shape[2].clone()],
        }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 2, 2, "2 (x, mask)")?;
        let (b, s, e) = dims(inputs[0].shape(), inputs[1].shape())?;
        let (x, m) = (f32_input(inputs, 0)?, f32_input(inputs, 1)?);
        let mut y = vec![0.0f32; b * e];
        for bi in 0..b {
            let count: f64 = (0..s).map(|si| m[bi * s + si] as f64).sum();
            let den = count.max(MIN_COUNT as f64);
            for ei in 0..e {
                let acc: f64 = (0..s)
                    .map(|si| m[bi * s + si] as f64 * x[(bi * s + si) * e + ei] as f64)
                    .sum();
                y[bi * e + ei] = (acc / den) as f32;
            }
        }
        Ok(vec![Tensor::from_vec(vec![b, e], y)?])
    }

    /// Per sequence in parallel, accumulating whole token rows (contiguous).
    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 2, 2, "2 (x, mask)")?;
        let (b, s, e) = dims(inputs[0].shape(), inputs[1].shape())?;
        let (x, m) = (f32_input(inputs, 0)?, f32_input(inputs, 1)?);
        let mut y = vec![0.0f32; b * e];
        if e == 0 {
            return Ok(vec![Tensor::from_vec(vec![b, e], y)?]);
        }
        let pool = |(bi, row): (usize, &mut [f32])| {
            let mut count = 0.0f32;
            for si in 0..s {
                let w = m[bi * s + si];
                count += w;
                if w != 0.0 {
                    for (o, &v) in row.iter_mut().zip(&x[(bi * s + si) * e..][..e]) {
                        *o += w * v;
                    }
                }
            }
            let inv = 1.0 / count.max(MIN_COUNT);
            for o in row.iter_mut() {
                *o *= inv;
            }
        };
        if x.len() >= 1 << 15 {
            y.par_chunks_mut(e).enumerate().for_each(pool);
        } else {
            y.chunks_mut(e).enumerate().for_each(pool);
        }
        Ok(vec![Tensor::from_vec(vec![b, e], y)?])
    }

    /// `dx[b, s, e] = mask[b, s] · dy[b, e] / max(Σ mask, 1e-9)`; the mask has none.
    fn backward(
        &self,
        inputs: &[&Tensor],
        _outputs: &[&Tensor],
        grads: &[&Tensor],
    ) -> Result<Vec<Option<Tensor>>, OpError> {
        check_arity(inputs.len(), 2, 2, "2 (x, mask)")?;
        let (b, s, e) = dims(inputs[0].shape(), inputs[1].shape())?;
        let (m, dy) = (f32_input(inputs, 1)?, f32_input(grads, 0)?);
        let mut dx = vec![0.0f32; b * s * e];
        for bi in 0..b {
            let count: f64 = (0..s).map(|si| m[bi * s + si] as f64).sum();
            let den = count.max(MIN_COUNT as f64);
            for si in 0..s {
                let w = m[bi * s + si] as f64 / den;
                for ei in 0..e {
                    dx[(bi * s + si) * e + ei] = (w * dy[bi * e + ei] as f64) as f32;
                }
            }
        }
        Ok(vec![Some(Tensor::from_vec(vec![b, s, e], dx)?), None])
    }

    fn validation(&self) -> Validation {
        Validation::Approximate
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

fn case(rng: &mut CaseRng, b: usize, s: usize, e: usize, valid: &[usize]) -> OpCase {
    let m: Vec<f32> = (0..b * s)
        .map(|i| if i % s < valid[i / s] { 1.0 } else { 0.0 })
        .collect();
    let mask = Tensor::from_vec(vec![b, s], m).unwrap_or_else(|_| unreachable!("numel matches"));
    OpCase::new(
        format!("masked mean pool [{b}, {s}, {e}] valid {valid:?}"),
        Arc::new(MaskedMeanPool),
        vec![rng.tensor(&[b, s, e], -2.0, 2.0), mask],
    )
}

/// `MaskedMeanPool`: no attributes; inputs `x [B, S, E]`, `mask [B, S]`.
pub const MASKED_MEAN_POOL: OpDef = OpDef {
    op_type: "MaskedMeanPool",
    build: |_: &Attrs| Ok(Arc::new(MaskedMeanPool)),
    cases: || {
        let mut rng = CaseRng::new(94);
        vec![
            case(&mut rng, 1, 1, 1, &[1]),
            case(&mut rng, 3, 17, 384, &[17, 5, 0]),
            case(&mut rng, 2, 33, 7, &[1, 33]),
            case(&mut rng, 17, 3, 1000, &[3; 17]),
        ]
    },
    sample: |rng| {
        let (b, s, e) = (rng.range(1, 4), rng.dim(33), rng.dim(65));
        let valid: Vec<usize> = (0..b).map(|_| rng.range(0, s)).collect();
        case(rng, b, s, e, &valid)
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn mean_of_kept_tokens_by_hand() {
        // Batch 0 keeps tokens 0 and 1 of 3; batch 1 keeps none (zeros, not NaN).
        let x = Tensor::from_vec(
            vec![2, 3, 2],
            vec![1.0f32, 2.0, 3.0, 6.0, 100.0, 100.0, 5.0, 5.0, 5.0, 5.0, 5.0, 5.0],
        )
        .unwrap();
        let m = Tensor::from_vec(vec![2, 3], vec![1.0f32, 1.0, 0.0, 0.0, 0.0, 0.0]).unwrap();
        for y in [
            MaskedMeanPool.reference(&[&x, &m]).unwrap(),
            MaskedMeanPool.cpu(&[&x, &m]).unwrap(),
        ] {
            assert_eq!(y[0].shape(), &[2, 2]);
            assert_eq!(y[0].as_f32().unwrap(), &[2.0, 4.0, 0.0, 0.0]);
        }
    }

    #[test]
    fn mismatched_mask_is_an_error() {
        let x = Tensor::from_vec(vec![1, 2, 2], vec![0.0f32; 4]).unwrap();
        let m = Tensor::from_vec(vec![1, 3], vec![1.0f32; 3]).unwrap();
        assert!(MaskedMeanPool.cpu(&[&x, &m]).is_err());
    }
}
