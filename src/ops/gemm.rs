//! `Gemm`: `y = alpha · op(A) · op(B) + beta · C`, with `op` an optional
//! transpose and `C` broadcast to `[M, N]` (ONNX semantics). The importer maps
//! the common `alpha = beta = 1, transB = 1` form with constant weights to
//! [`super::linear::Linear`] instead, so quantization and pruning see it.

use std::sync::Arc;

use super::binary::{broadcast_offset, broadcast_shapes};
use super::{attr_i64, check_arity, check_f32, f32_input, Attrs, CaseRng, Op, OpCase, OpDef, Validation};
use crate::error::OpError;
use crate::linalg::{self, MatRef};
use crate::tensor::{Dim, Tensor, ValueType};

/// A general matrix product with scaling and an optional transpose per operand.
#[derive(Clone, Debug)]
pub struct Gemm {
    /// Scale of the product.
    pub alpha: f32,
    /// Scale of `C`.
    pub beta: f32,
    /// `A` is stored `[K, M]`.
    pub trans_a: bool,
    /// `B` is stored `[N, K]`.
    pub trans_b: bool,
}

impl Gemm {
    fn mkn(&self, a: &[usize], b: &[usize]) -> Result<(usize, usize, usize), OpError> {
        if a.len() != 2 || b.len() != 2 {
            return Err(OpError::Shape(format!("A and B must be 2-D; got {a:?} and {b:?}")));
        }
        let (m, k) = if self.trans_a { (a[1], a[0]) } else { (a[0], a[1]) };
        let (kb, n) = if self.trans_b { (b[1], b[0]) } else { (b[0], b[1]) };
        if k != kb {
            return Err(OpError::Shape(format!(
                "A {a:?} (transA {}) and B {b:?} (transB {}) disagree on K: {k} vs {kb}",
                self.trans_a, self.trans_b
            )));
        }
        Ok((m, k, n))
    }

    fn check_c(&self, c: &[usize], m: usize, n: usize) -> Result<(), OpError> {
        if c.len() > 2 || broadcast_shapes(c, &[m, n])? != [m, n] {
            return Err(OpError::Shape(format!("C {c:?} does not broadcast to [{m}, {n}]")));
        }
        Ok(())
    }
}

impl Op for Gemm {
    fn op_type(&self) -> &'static str {
        "Gemm"
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("alpha".into(), (self.alpha as f64).into());
        a.insert("beta".into(), (self.beta as f64).into());
        a.insert("transA".into(), (self.trans_a as i64).into());
        a.insert("transB".into(), (self.trans_b as i64).into());
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 2, 3, "2 or 3 (A, B, optional C)")?;
        check_f32(inputs)?;
        let (a, b) = (&inputs[0], &inputs[1]);
        if a.rank() != 2 || b.rank() != 2 {
            return Err(OpError::Shape(format!(
                "A and B must be 2-D; got {} and {}",
                a.shape_string(),
                b.shape_string()
            )));
        }
        let m = if self.trans_a { &a.shape[1] } else { &a.shape[0] };
        let ka = if self.trans_a { &a.shape[0] } else { &a.shape[1] };
        let (kb, n) = if self.trans_b {
            (&b.shape[1], &b.shape[0])
        } else {
            (&b.shape[0], &b.shape[1])
        };
        if let (Some(x), Some(y)) = (ka.known(), kb.known()) {
            if x != y {
                return Err(OpError::Shape(format!(
                    "A {} and B {} disagree on K: {x} vs {y}",
                    a.shape_string(),
                    b.shape_string()
                )));
            }
        }
        if let (Some(c), Some(mm), Some(nn)) = (inputs.get(2).and_then(|c| c.concrete_shape()), m.known(), n.known()) {
            self.check_c(&c, mm, nn)?;
        }
        let shape: Vec<Dim> = vec![m.clone(), n.clone()];
        Ok(vec![ValueType { dtype: a.dtype, shape }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 2, 3, "2 or 3 (A, B, optional C)")?;
        let (sa, sb) = (inputs[0].shape(), inputs[1].shape());
        let (m, k, n) = self.mkn(sa, sb)?;
        let (a, b) = (f32_input(inputs, 0)?, f32_input(inputs, 1)?);
        let c = if inputs.len() == 3 {
            self.check_c(inputs[2].shape(), m, n)?;
            Some((f32_input(inputs, 2)?, inputs[2].shape()))
        } else {
            None
        };
        let mut y = vec![0.0f32; m * n];
        for i in 0..m {
            for j in 0..n {
                let mut acc = 0.0f64;
                for p in 0..k {
                    let av = if self.trans_a { a[p * m + i] } else { a[i * k + p] };
                    let bv = if self.trans_b { b[j * k + p] } else { b[p * n + j] };
                    acc += av as f64 * bv as f64;
                }
                let mut v = self.alpha as f64 * acc;
                if let Some((c, cs)) = c {
                    v += self.beta as f64 * c[broadcast_offset(i * n + j, &[m, n], cs)] as f64;
                }
                y[i * n + j] = v as f32;
            }
        }
        Ok(vec![Tensor::from_vec(vec![m, n], y)?])
    }

    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 2, 3, "2 or 3 (A, B, optional C)")?;
        let (sa, sb) = (inputs[0].shape(), inputs[1].shape());
        let (m, k, n) = self.mkn(sa, sb)?;
        let (a, b) = (f32_input(inputs, 0)?, f32_input(inputs, 1)?);
        let am = if self.trans_a {
            MatRef::transposed(a, m, k)
        } else {
            MatRef::row_major(a, m, k)
        };
        let bm = if self.trans_b {
            MatRef::transposed(b, k, n)
        } else {
            MatRef::row_major(b, k, n)
        };
        let mut y = vec![0.0f32; m * n];
        linalg::sgemm(am, bm, &mut y, false)?;
        let c = if inputs.len() == 3 {
            self.check_c(inputs[2].shape(), m, n)?;
            Some((f32_input(inputs, 2)?, inputs[2].shape()))
        } else {
            None
        };
        for (i, v) in y.iter_mut().enumerate() {
            *v *= self.alpha;
            if let Some((c, cs)) = c {
                *v += self.beta * c[broadcast_offset(i, &[m, n], cs)];
            }
        }
        Ok(vec![Tensor::from_vec(vec![m, n], y)?])
    }

    fn validation(&self) -> Validation {
        Validation::Approximate
    }

    fn flops(&self, inputs: &[&[usize]]) -> u64 {
        match inputs {
            [a, b, ..] => self.mkn(a, b).map_or(0, |(m, k, n)| 2 * (m * k * n) as u64),
            _ => 0,
        }
    }
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

#[allow(clippy::too_many_arguments)]
fn case(
    rng: &mut CaseRng,
    m: usize,
    k: usize,
    n: usize,
    ta: bool,
    tb: bool,
    c: Option<&[usize]>,
    alpha: f32,
) -> OpCase {
    let a = if ta { [k, m] } else { [m, k] };
    let b = if tb { [n, k] } else { [k, n] };
    let mut inputs = vec![rng.tensor(&a, -1.0, 1.0), rng.tensor(&b, -1.0, 1.0)];
    if let Some(c) = c {
        inputs.push(rng.tensor(c, -1.0, 1.0));
    }
    let op = Gemm {
        alpha,
        beta: 0.5,
        trans_a: ta,
        trans_b: tb,
    };
    OpCase::new(format!("gemm {m}x{k}x{n} tA{ta} tB{tb} C{c:?}"), Arc::new(op), inputs)
}

/// `Gemm`: attributes `alpha` (1), `beta` (1), `transA` (0), `transB` (0).
pub const GEMM: OpDef = OpDef {
    op_type: "Gemm",
    build: |attrs| {
        Ok(Arc::new(Gemm {
            alpha: attr_f32(attrs, "alpha", 1.0)?,
            beta: attr_f32(attrs, "beta", 1.0)?,
            trans_a: attr_i64(attrs, "transA", Some(0))? != 0,
            trans_b: attr_i64(attrs, "transB", Some(0))? != 0,
        }))
    },
    cases: || {
        let mut rng = CaseRng::new(71);
        vec![
            case(&mut rng, 1, 1, 1, false, false, None, 1.0),
            case(&mut rng, 3, 17, 5, true, false, Some(&[5]), 2.0),
            case(&mut rng, 17, 1000, 3, false, true, Some(&[17, 1]), 0.5),
            case(&mut rng, 33, 7, 17, true, true, Some(&[33, 17]), 1.0),
            case(&mut rng, 4, 3, 2, false, false, Some(&[]), 1.0),
        ]
    },
    sample: |rng| {
        let (m, k, n) = (rng.dim(40), rng.dim(200), rng.dim(40));
        let (ta, tb) = (rng.range(0, 1) == 0, rng.range(0, 1) == 0);
        case(rng, m, k, n, ta, tb, Some(&[n]), 1.5)
    },
};
