//! `MatMul`: NumPy/ONNX matrix product with batch broadcasting.

use std::sync::Arc;

use super::binary::{broadcast_dims, broadcast_offset, broadcast_shapes};
use super::{check_arity, check_f32, f32_input, Attrs, CaseRng, Op, OpCase, OpDef, Validation};
use crate::error::OpError;
use crate::linalg::{self, MatRef};
use crate::tensor::{numel, Dim, Tensor, ValueType};

/// `a [..., M, K] · b [..., K, N] -> [..., M, N]`. The batch dimensions
/// broadcast; a 1-D `a` is a row vector and a 1-D `b` a column vector, and
/// that axis is dropped from the result (as in NumPy's `matmul`).
#[derive(Clone, Debug, Default)]
pub struct MatMul;

/// The concrete layout of one product.
pub(super) struct Plan {
    pub(super) batch: Vec<usize>,
    pub(super) a_batch: Vec<usize>,
    pub(super) b_batch: Vec<usize>,
    pub(super) m: usize,
    pub(super) k: usize,
    pub(super) n: usize,
    pub(super) out: Vec<usize>,
}

/// The layout of `a · b` for concrete shapes.
pub(super) fn plan(a: &[usize], b: &[usize]) -> Result<Plan, OpError> {
    if a.is_empty() || b.is_empty() {
        return Err(OpError::Shape(format!(
            "needs inputs of rank >= 1, got {a:?} and {b:?}"
        )));
    }
    let a2: Vec<usize> = if a.len() == 1 { vec![1, a[0]] } else { a.to_vec() };
    let b2: Vec<usize> = if b.len() == 1 { vec![b[0], 1] } else { b.to_vec() };
    let (m, k) = (a2[a2.len() - 2], a2[a2.len() - 1]);
    let (kb, n) = (b2[b2.len() - 2], b2[b2.len() - 1]);
    if k != kb {
        return Err(OpError::Shape(format!(
            "inner dimensions differ: a {a:?} has {k} columns, b {b:?} has {kb} rows"
        )));
    }
    let a_batch = a2[..a2.len() - 2].to_vec();
    let b_batch = b2[..b2.len() - 2].to_vec();
    let batch = broadcast_shapes(&a_batch, &b_batch)?;
    let mut out = batch.clone();
    if a.len() > 1 {
        out.push(m);
    }
    if b.len() > 1 {
        out.push(n);
    }
    Ok(Plan {
        batch,
        a_batch,
        b_batch,
        m,
        k,
        n,
        out,
    })
}

impl Op for MatMul {
    fn op_type(&self) -> &'static str {
        "MatMul"
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 2, 2, "2")?;
        check_f32(inputs)?;
        let (a, b) = (&inputs[0].shape, &inputs[1].shape);
        if a.is_empty() || b.is_empty() {
            return Err(OpError::Shape("needs inputs of rank >= 1".into()));
        }
        let a2: Vec<Dim> = if a.len() == 1 {
            vec![Dim::Known(1), a[0].clone()]
        } else {
            a.clone()
        };
        let b2: Vec<Dim> = if b.len() == 1 {
            vec![b[0].clone(), Dim::Known(1)]
        } else {
            b.clone()
        };
        let (ka, kb) = (&a2[a2.len() - 1], &b2[b2.len() - 2]);
        if let (Some(x), Some(y)) = (ka.known(), kb.known()) {
            if x != y {
                return Err(OpError::Shape(format!(
                    "inner dimensions differ: a {} has {x} columns, b {} has {y} rows",
                    inputs[0].shape_string(),
                    inputs[1].shape_string()
                )));
            }
        }
        let mut out = broadcast_dims(&a2[..a2.len() - 2], &b2[..b2.len() - 2])?;
        if a.len() > 1 {
            out.push(a2[a2.len() - 2].clone());
        }
        if b.len() > 1 {
            out.push(b2[b2.len() - 1].clone());
        }
        Ok(vec![ValueType {
            dtype: inputs[0].dtype,
            shape: out,
        }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 2, 2, "2")?;
        let p = plan(inputs[0].shape(), inputs[1].shape())?;
        let (a, b) = (f32_input(inputs, 0)?, f32_input(inputs, 1)?);
        let (m, k, n) = (p.m, p.k, p.n);
        let batches = numel(&p.batch);
        let mut out = vec![0.0f32; batches * m * n];
        for bi in 0..batches {
            let ao = broadcast_offset(bi, &p.batch, &p.a_batch) * m * k;
            let bo = broadcast_offset(bi, &p.batch, &p.b_batch) * k * n;
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0.0f64;
                    for q in 0..k {
                        acc += a[ao + i * k + q] as f64 * b[bo + q * n + j] as f64;
                    }
                    out[bi * m * n + i * n + j] = acc as f32;
                }
            }
        }
        Ok(vec![Tensor::from_vec(p.out, out)?])
    }

    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 2, 2, "2")?;
        let p = plan(inputs[0].shape(), inputs[1].shape())?;
        let (a, b) = (f32_input(inputs, 0)?, f32_input(inputs, 1)?);
        let (m, k, n) = (p.m, p.k, p.n);
        let batches = numel(&p.batch);
        let mut out = vec![0.0f32; batches * m * n];
        if numel(&p.b_batch) == 1 && numel(&p.a_batch) == batches {
            // One shared right-hand side: fold the batch into the rows.
            let rows = batches * m;
            linalg::sgemm(
                MatRef::row_major(a, rows, k),
                MatRef::row_major(b, k, n),
                &mut out,
                false,
            )?;
        } else {
            for (bi, c) in out.chunks_mut((m * n).max(1)).enumerate().take(batches) {
                let ao = broadcast_offset(bi, &p.batch, &p.a_batch) * m * k;
                let bo = broadcast_offset(bi, &p.batch, &p.b_batch) * k * n;
                linalg::sgemm(
                    MatRef::row_major(&a[ao..ao + m * k], m, k),
                    MatRef::row_major(&b[bo..bo + k * n], k, n),
                    c,
                    false,
                )?;
            }
        }
        Ok(vec![Tensor::from_vec(p.out, out)?])
    }

    fn backward(
        &self,
        inputs: &[&Tensor],
        _outputs: &[&Tensor],
        grads: &[&Tensor],
    ) -> Result<Vec<Option<Tensor>>, OpError> {
        check_arity(inputs.len(), 2, 2, "2")?;
        let p = plan(inputs[0].shape(), inputs[1].shape())?;
        let (a, b) = (f32_input(inputs, 0)?, f32_input(inputs, 1)?);
        let dc = f32_input(grads, 0)?;
        let (m, k, n) = (p.m, p.k, p.n);
        let mut da = vec![0.0f32; a.len()];
        let mut db = vec![0.0f32; b.len()];
        let mut tmp_a = vec![0.0f32; m * k];
        let mut tmp_b = vec![0.0f32; k * n];
        for bi in 0..numel(&p.batch) {
            let ao = broadcast_offset(bi, &p.batch, &p.a_batch) * m * k;
            let bo = broadcast_offset(bi, &p.batch, &p.b_batch) * k * n;
            let g = &dc[bi * m * n..(bi + 1) * m * n];
            // dA = dC · Bᵀ, dB = Aᵀ · dC; summed where the batch broadcasts.
            linalg::sgemm(
                MatRef::row_major(g, m, n),
                MatRef::transposed(&b[bo..bo + k * n], n, k),
                &mut tmp_a,
                false,
            )?;
            linalg::sgemm(
                MatRef::transposed(&a[ao..ao + m * k], k, m),
                MatRef::row_major(g, m, n),
                &mut tmp_b,
                false,
            )?;
            for (d, t) in da[ao..ao + m * k].iter_mut().zip(&tmp_a) {
                *d += t;
            }
            for (d, t) in db[bo..bo + k * n].iter_mut().zip(&tmp_b) {
                *d += t;
            }
        }
        Ok(vec![
            Some(Tensor::from_vec(inputs[0].shape().to_vec(), da)?),
            Some(Tensor::from_vec(inputs[1].shape().to_vec(), db)?),
        ])
    }

    fn validation(&self) -> Validation {
        Validation::Approximate
    }

    fn flops(&self, inputs: &[&[usize]]) -> u64 {
        match inputs {
            [a, b] => plan(a, b)
                .map(|p| 2 * (numel(&p.batch) * p.m * p.n * p.k) as u64)
                .unwrap_or(0),
            _ => 0,
        }
    }
}

fn case(rng: &mut CaseRng, a: &[usize], b: &[usize]) -> OpCase {
    let inputs = vec![rng.tensor(a, -1.0, 1.0), rng.tensor(b, -1.0, 1.0)];
    OpCase::new(format!("matmul {a:?} x {b:?}"), Arc::new(MatMul), inputs)
}

/// `MatMul`: batched, broadcasting matrix product.
pub const MATMUL: OpDef = OpDef {
    op_type: "MatMul",
    build: |_: &Attrs| Ok(Arc::new(MatMul)),
    cases: || {
        let mut rng = CaseRng::new(2);
        vec![
            case(&mut rng, &[1, 1], &[1, 1]),
            case(&mut rng, &[3, 17], &[17, 5]),
            case(&mut rng, &[17, 1000], &[1000, 3]),
            case(&mut rng, &[1, 1000], &[1000, 17]),
            case(&mut rng, &[2, 3, 7], &[7, 5]),
            case(&mut rng, &[2, 1, 3, 7], &[4, 7, 5]),
            case(&mut rng, &[17], &[17, 3]),
            case(&mut rng, &[3, 17], &[17]),
            case(&mut rng, &[64, 64], &[64, 64]),
        ]
    },
    sample: |rng| {
        let (m, k, n) = (rng.dim(40), rng.dim(200), rng.dim(60));
        match rng.range(0, 3) {
            0 => case(rng, &[m, k], &[k, n]),
            1 => {
                let bs = rng.dim(4);
                case(rng, &[bs, m, k], &[k, n])
            }
            2 => {
                let bs = rng.dim(4);
                case(rng, &[bs, m, k], &[bs, k, n])
            }
            _ => case(rng, &[k], &[k, n]),
        }
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn vector_shapes_follow_numpy() {
        let a = Tensor::from_vec(vec![2], vec![1.0f32, 2.0]).unwrap();
        let b = Tensor::from_vec(vec![2, 2], vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
        let y = MatMul.cpu(&[&a, &b]).unwrap();
        assert_eq!(y[0].shape(), &[2]);
        assert_eq!(y[0].as_f32().unwrap(), &[7.0, 10.0]);
        let y = MatMul.reference(&[&b, &a]).unwrap();
        assert_eq!(y[0].shape(), &[2]);
        assert_eq!(y[0].as_f32().unwrap(), &[5.0, 11.0]);
    }
}
