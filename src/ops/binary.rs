//! Elementwise binary ops with NumPy broadcasting: Add, Mul, Sub, Div.

use std::any::Any;
use std::sync::Arc;

use super::{check_arity, check_f32, f32_input, Attrs, CaseRng, Op, OpCase, OpDef, Validation};
use crate::error::OpError;
use crate::linalg;
use crate::tensor::{numel, strides, Dim, Tensor, ValueType};

/// Which elementwise binary operation.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum BinaryKind {
    /// `a + b`
    Add,
    /// `a * b`
    Mul,
    /// `a - b`
    Sub,
    /// `a / b` (IEEE division: `x / 0` is ±inf or NaN)
    Div,
}

impl BinaryKind {
    /// The low end of test values for the right operand (divisors stay away from zero).
    fn rhs_low(self) -> f32 {
        if self == BinaryKind::Div {
            0.5
        } else {
            -2.0
        }
    }

    /// Applies the operation to one pair.
    #[inline]
    pub fn apply(self, a: f32, b: f32) -> f32 {
        match self {
            BinaryKind::Add => a + b,
            BinaryKind::Mul => a * b,
            BinaryKind::Sub => a - b,
            BinaryKind::Div => a / b,
        }
    }
}

/// An elementwise binary op on two f32 tensors, broadcasting as NumPy does.
#[derive(Clone, Debug)]
pub struct Binary {
    /// The operation.
    pub kind: BinaryKind,
}

impl Op for Binary {
    fn op_type(&self) -> &'static str {
        match self.kind {
            BinaryKind::Add => "Add",
            BinaryKind::Mul => "Mul",
            BinaryKind::Sub => "Sub",
            BinaryKind::Div => "Div",
        }
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 2, 2, "2")?;
        check_f32(inputs)?;
        let shape = broadcast_dims(&inputs[0].shape, &inputs[1].shape)?;
        Ok(vec![ValueType {
            dtype: inputs[0].dtype,
            shape,
        }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 2, 2, "2")?;
        let (a, b) = (f32_input(inputs, 0)?, f32_input(inputs, 1)?);
        let (sa, sb) = (inputs[0].shape(), inputs[1].shape());
        let out_shape = broadcast_shapes(sa, sb)?;
        let n = numel(&out_shape);
        let mut out = Vec::with_capacity(n);
        for i in 0..n {
            let x = a[broadcast_offset(i, &out_shape, sa)];
            let y = b[broadcast_offset(i, &out_shape, sb)];
            out.push(self.kind.apply(x, y));
        }
        Ok(vec![Tensor::from_vec(out_shape, out)?])
    }

    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 2, 2, "2")?;
        let (a, b) = (f32_input(inputs, 0)?, f32_input(inputs, 1)?);
        let (sa, sb) = (inputs[0].shape(), inputs[1].shape());
        let kind = self.kind;
        if sa == sb {
            return Ok(vec![Tensor::from_vec(
                sa.to_vec(),
                linalg::zip(a, b, move |x, y| kind.apply(x, y)),
            )?]);
        }
        let out_shape = broadcast_shapes(sa, sb)?;
        // `b` repeats along the leading axes of `a` (a bias row, a scalar).
        if out_shape == sa && is_suffix_broadcast(sb, sa) {
            let row = b.len().max(1);
            let mut out = a.to_vec();
            linalg::for_each_row(&mut out, row, |r| {
                for (x, &y) in r.iter_mut().zip(b.iter().cycle()) {
                    *x = kind.apply(*x, y);
                }
            });
            return Ok(vec![Tensor::from_vec(out_shape, out)?]);
        }
        self.reference(inputs)
    }

    fn backward(
        &self,
        inputs: &[&Tensor],
        outputs: &[&Tensor],
        grads: &[&Tensor],
    ) -> Result<Vec<Option<Tensor>>, OpError> {
        check_arity(inputs.len(), 2, 2, "2")?;
        let (a, b) = (f32_input(inputs, 0)?, f32_input(inputs, 1)?);
        let (sa, sb) = (inputs[0].shape(), inputs[1].shape());
        let dy = f32_input(grads, 0)?;
        let out = outputs
            .first()
            .map(|t| t.shape().to_vec())
            .unwrap_or(broadcast_shapes(sa, sb)?);
        let mut da = vec![0.0f32; a.len()];
        let mut db = vec![0.0f32; b.len()];
        for (i, &g) in dy.iter().enumerate() {
            let (ia, ib) = (broadcast_offset(i, &out, sa), broadcast_offset(i, &out, sb));
            match self.kind {
                BinaryKind::Add => {
                    da[ia] += g;
                    db[ib] += g;
                }
                BinaryKind::Mul => {
                    da[ia] += g * b[ib];
                    db[ib] += g * a[ia];
                }
                BinaryKind::Sub => {
                    da[ia] += g;
                    db[ib] -= g;
                }
                BinaryKind::Div => {
                    da[ia] += g / b[ib];
                    db[ib] -= g * a[ia] / (b[ib] * b[ib]);
                }
            }
        }
        Ok(vec![
            Some(Tensor::from_vec(sa.to_vec(), da)?),
            Some(Tensor::from_vec(sb.to_vec(), db)?),
        ])
    }

    /// Add, Mul and Sub are single IEEE operations everywhere: exact. WGSL
    /// only promises division to 2.5 ULP, so Div is compared to rounding.
    fn validation(&self) -> Validation {
        if self.kind == BinaryKind::Div {
            Validation::Rounding
        } else {
            Validation::Exact
        }
    }

    fn as_any(&self) -> &dyn Any {
        self
    }
}

/// True when `small` broadcast to `big` is `small` repeated whole (its shape,
/// without leading ones, is a suffix of `big`).
fn is_suffix_broadcast(small: &[usize], big: &[usize]) -> bool {
    let trimmed: Vec<usize> = small.iter().copied().skip_while(|&d| d == 1).collect();
    trimmed.len() <= big.len() && big[big.len() - trimmed.len()..] == trimmed[..]
}

/// The broadcast of two concrete shapes.
pub fn broadcast_shapes(a: &[usize], b: &[usize]) -> Result<Vec<usize>, OpError> {
    let rank = a.len().max(b.len());
    let mut out = vec![0; rank];
    for i in 0..rank {
        let da = if i + a.len() >= rank { a[i + a.len() - rank] } else { 1 };
        let db = if i + b.len() >= rank { b[i + b.len() - rank] } else { 1 };
        out[i] = match (da, db) {
            (x, y) if x == y => x,
            (1, y) => y,
            (x, 1) => x,
            _ => {
                return Err(OpError::Shape(format!(
                    "shapes {a:?} and {b:?} do not broadcast (dimension {i}: {da} vs {db})"
                )))
            }
        };
    }
    Ok(out)
}

/// The broadcast of two symbolic shapes.
pub fn broadcast_dims(a: &[Dim], b: &[Dim]) -> Result<Vec<Dim>, OpError> {
    let rank = a.len().max(b.len());
    let one = Dim::Known(1);
    let mut out = Vec::with_capacity(rank);
    for i in 0..rank {
        let da = if i + a.len() >= rank {
            &a[i + a.len() - rank]
        } else {
            &one
        };
        let db = if i + b.len() >= rank {
            &b[i + b.len() - rank]
        } else {
            &one
        };
        let d = match (da, db) {
            (x, y) if x == y => x.clone(),
            (Dim::Known(1), y) => y.clone(),
            (x, Dim::Known(1)) => x.clone(),
            (Dim::Known(x), Dim::Known(y)) => {
                return Err(OpError::Shape(format!(
                    "shapes {a:?} and {b:?} do not broadcast (dimension {i}: {x} vs {y})"
                )))
            }
            (Dim::Known(x), Dim::Sym(_)) | (Dim::Sym(_), Dim::Known(x)) => Dim::Known(*x),
            (Dim::Sym(x), Dim::Sym(_)) => Dim::Sym(x.clone()),
        };
        out.push(d);
    }
    Ok(out)
}

/// The flat offset in an input of shape `input` of the element that
/// broadcasts to flat position `index` of `out`.
pub fn broadcast_offset(index: usize, out: &[usize], input: &[usize]) -> usize {
    let in_strides = strides(input);
    let lead = out.len() - input.len();
    let mut rem = index;
    let mut offset = 0;
    for axis in (0..out.len()).rev() {
        let coord = rem % out[axis].max(1);
        rem /= out[axis].max(1);
        if axis >= lead {
            let ia = axis - lead;
            if input[ia] != 1 {
                offset += coord * in_strides[ia];
            }
        }
    }
    offset
}

fn build(kind: BinaryKind) -> Arc<dyn Op> {
    Arc::new(Binary { kind })
}

fn cases(kind: BinaryKind) -> Vec<OpCase> {
    let mut rng = CaseRng::new(11);
    let shapes: [(&[usize], &[usize]); 6] = [
        (&[1], &[1]),
        (&[3, 17], &[3, 17]),
        (&[17, 1000], &[1000]),
        (&[5, 3, 7], &[3, 1]),
        (&[1, 33], &[17, 1]),
        (&[1000], &[]),
    ];
    shapes
        .iter()
        .map(|(a, b)| {
            let inputs = vec![rng.tensor(a, -2.0, 2.0), rng.tensor(b, kind.rhs_low(), 2.0)];
            OpCase::new(format!("{kind:?} {a:?} {b:?}"), build(kind), inputs)
        })
        .collect()
}

fn sample(kind: BinaryKind, rng: &mut CaseRng) -> OpCase {
    let rank = rng.range(1, 4);
    let a: Vec<usize> = (0..rank).map(|_| rng.dim(12)).collect();
    // b: a suffix of a, with some axes set to 1.
    let keep = rng.range(0, rank);
    let b: Vec<usize> = a[rank - keep..]
        .iter()
        .map(|&d| if rng.next_u64().is_multiple_of(3) { 1 } else { d })
        .collect();
    let (a, b) = if rng.next_u64().is_multiple_of(2) {
        (a, b)
    } else {
        (b, a)
    };
    let inputs = vec![rng.tensor(&a, -2.0, 2.0), rng.tensor(&b, kind.rhs_low(), 2.0)];
    OpCase::new(format!("{kind:?} {a:?} {b:?}"), build(kind), inputs)
}

/// `Add`: elementwise sum with broadcasting.
pub const ADD: OpDef = OpDef {
    op_type: "Add",
    build: |_: &Attrs| Ok(build(BinaryKind::Add)),
    cases: || cases(BinaryKind::Add),
    sample: |r| sample(BinaryKind::Add, r),
};

/// `Mul`: elementwise product with broadcasting.
pub const MUL: OpDef = OpDef {
    op_type: "Mul",
    build: |_: &Attrs| Ok(build(BinaryKind::Mul)),
    cases: || cases(BinaryKind::Mul),
    sample: |r| sample(BinaryKind::Mul, r),
};

/// `Sub`: elementwise difference with broadcasting.
pub const SUB: OpDef = OpDef {
    op_type: "Sub",
    build: |_: &Attrs| Ok(build(BinaryKind::Sub)),
    cases: || cases(BinaryKind::Sub),
    sample: |r| sample(BinaryKind::Sub, r),
};

/// `Div`: elementwise quotient with broadcasting.
pub const DIV: OpDef = OpDef {
    op_type: "Div",
    build: |_: &Attrs| Ok(build(BinaryKind::Div)),
    cases: || cases(BinaryKind::Div),
    sample: |r| sample(BinaryKind::Div, r),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn broadcasting_rules() {
        assert_eq!(broadcast_shapes(&[5, 3, 7], &[3, 1]).unwrap(), vec![5, 3, 7]);
        assert_eq!(broadcast_shapes(&[1, 33], &[17, 1]).unwrap(), vec![17, 33]);
        assert!(broadcast_shapes(&[2, 3], &[4]).is_err());
        let d = broadcast_dims(&[Dim::Sym("batch".into()), Dim::Known(4)], &[Dim::Known(4)]).unwrap();
        assert_eq!(d, vec![Dim::Sym("batch".into()), Dim::Known(4)]);
    }

    #[test]
    fn add_broadcasts_a_bias_row() {
        let a = Tensor::from_vec(vec![2, 3], vec![1.0f32, 2.0, 3.0, 4.0, 5.0, 6.0]).unwrap();
        let b = Tensor::from_vec(vec![3], vec![10.0f32, 20.0, 30.0]).unwrap();
        let op = Binary { kind: BinaryKind::Add };
        let want = [11.0, 22.0, 33.0, 14.0, 25.0, 36.0];
        assert_eq!(op.reference(&[&a, &b]).unwrap()[0].as_f32().unwrap(), &want);
        assert_eq!(op.cpu(&[&a, &b]).unwrap()[0].as_f32().unwrap(), &want);
    }
}
