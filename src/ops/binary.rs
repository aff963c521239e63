//! Elementwise binary ops with NumPy broadcasting: Add, Mul, Sub, Div, Max,
//! Min.
//!
//! They take two inputs of one dtype: any float (`f16` and `bf16` computed in
//! `f32` and rounded once, which gives the same result as native arithmetic)
//! or integer type. Integer arithmetic wraps; integer division truncates
//! toward zero and defines `x / 0 = 0` (what the ONNX reference
//! implementation's NumPy `floor_divide`/`remainder` gives). Max and Min
//! propagate NaN (IEEE 754 `maximum`/`minimum`, NumPy's `maximum`): a NaN in
//! either operand gives NaN.

use std::sync::Arc;

use half::{bf16, f16};
use rayon::prelude::*;

use super::{check_arity, f32_input, Attrs, CaseRng, Op, OpCase, OpDef, Validation};
use crate::error::OpError;
use crate::linalg;
use crate::tensor::{numel, strides, DType, Dim, Element, Tensor, ValueType};

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
    /// The larger of `a` and `b`; NaN when either is NaN.
    Max,
    /// The smaller of `a` and `b`; NaN when either is NaN.
    Min,
}

impl BinaryKind {
    /// Every kind.
    pub const ALL: [BinaryKind; 6] = [
        BinaryKind::Add,
        BinaryKind::Mul,
        BinaryKind::Sub,
        BinaryKind::Div,
        BinaryKind::Max,
        BinaryKind::Min,
    ];

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
            BinaryKind::Max => nan_max(a, b),
            BinaryKind::Min => nan_min(a, b),
        }
    }
}

/// IEEE 754 `maximum`: NaN when either operand is NaN (`f32::max` drops it).
#[inline]
fn nan_max(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.max(b)
    }
}

/// IEEE 754 `minimum`: NaN when either operand is NaN.
#[inline]
fn nan_min(a: f32, b: f32) -> f32 {
    if a.is_nan() || b.is_nan() {
        f32::NAN
    } else {
        a.min(b)
    }
}

/// An element type the binary ops compute on.
pub trait Arith: Element {
    /// `a (kind) b`: IEEE for floats; wrapping for integers, division
    /// truncating toward zero with `x / 0 = 0`.
    fn arith(kind: BinaryKind, a: Self, b: Self) -> Self;
}

impl Arith for f32 {
    #[inline]
    fn arith(kind: BinaryKind, a: f32, b: f32) -> f32 {
        kind.apply(a, b)
    }
}

impl Arith for f64 {
    #[inline]
    fn arith(kind: BinaryKind, a: f64, b: f64) -> f64 {
        match kind {
            BinaryKind::Add => a + b,
            BinaryKind::Mul => a * b,
            BinaryKind::Sub => a - b,
            BinaryKind::Div => a / b,
            BinaryKind::Max if a.is_nan() || b.is_nan() => f64::NAN,
            BinaryKind::Min if a.is_nan() || b.is_nan() => f64::NAN,
            BinaryKind::Max => a.max(b),
            BinaryKind::Min => a.min(b),
        }
    }
}

macro_rules! half_arith {
    ($($t:ty),*) => {$(
        impl Arith for $t {
            // f32 has more than twice the significand bits plus two: one
            // f32 operation rounded to 16 bits is the correctly rounded result.
            #[inline]
            fn arith(kind: BinaryKind, a: $t, b: $t) -> $t {
                <$t>::from_f32(kind.apply(a.to_f32(), b.to_f32()))
            }
        }
    )*};
}

half_arith!(f16, bf16);

macro_rules! int_arith {
    ($($t:ty),*) => {$(
        impl Arith for $t {
            #[inline]
            fn arith(kind: BinaryKind, a: $t, b: $t) -> $t {
                match kind {
                    BinaryKind::Add => a.wrapping_add(b),
                    BinaryKind::Mul => a.wrapping_mul(b),
                    BinaryKind::Sub => a.wrapping_sub(b),
                    // `wrapping_div` truncates toward zero; MIN / -1 wraps to MIN.
                    BinaryKind::Div if b == 0 => 0,
                    BinaryKind::Div => a.wrapping_div(b),
                    BinaryKind::Max => a.max(b),
                    BinaryKind::Min => a.min(b),
                }
            }
        }
    )*};
}

int_arith!(i8, u8, i16, u16, i32, u32, i64, u64);

/// Calls `$f::<T>($args)` with `T` the element type of dtype `$dt` (every
/// dtype of 8 bits or more but bool).
macro_rules! with_arith_type {
    ($dt:expr, $f:ident($($args:expr),*)) => {
        match $dt {
            DType::F32 => $f::<f32>($($args),*),
            DType::F64 => $f::<f64>($($args),*),
            DType::F16 => $f::<f16>($($args),*),
            DType::BF16 => $f::<bf16>($($args),*),
            DType::I8 => $f::<i8>($($args),*),
            DType::U8 => $f::<u8>($($args),*),
            DType::I16 => $f::<i16>($($args),*),
            DType::U16 => $f::<u16>($($args),*),
            DType::I32 => $f::<i32>($($args),*),
            DType::U32 => $f::<u32>($($args),*),
            DType::I64 => $f::<i64>($($args),*),
            DType::U64 => $f::<u64>($($args),*),
            other => Err(OpError::DType {
                index: 0,
                expected: "a number type of 8 bits or more (not bool)",
                got: other,
            }),
        }
    };
}

/// The dtypes the binary ops compute on.
pub const ARITH_DTYPES: [DType; 12] = [
    DType::F32,
    DType::F64,
    DType::F16,
    DType::BF16,
    DType::I8,
    DType::U8,
    DType::I16,
    DType::U16,
    DType::I32,
    DType::U32,
    DType::I64,
    DType::U64,
];

/// The inputs' common dtype: both the same, one of [`ARITH_DTYPES`].
fn operand_dtype(a: DType, b: DType) -> Result<DType, OpError> {
    if !ARITH_DTYPES.contains(&a) {
        return Err(OpError::DType {
            index: 0,
            expected: "a number type of 8 bits or more (not bool)",
            got: a,
        });
    }
    if b != a {
        return Err(OpError::DType {
            index: 1,
            expected: a.name(),
            got: b,
        });
    }
    Ok(a)
}

/// The reference loop for one element type.
fn reference_typed<T: Arith>(kind: BinaryKind, a: &Tensor, b: &Tensor) -> Result<Tensor, OpError> {
    let (x, y) = (a.as_slice::<T>()?, b.as_slice::<T>()?);
    let (sa, sb) = (a.shape(), b.shape());
    let out_shape = broadcast_shapes(sa, sb)?;
    let n = numel(&out_shape);
    let mut out = Vec::with_capacity(n);
    for i in 0..n {
        let p = x[broadcast_offset(i, &out_shape, sa)];
        let q = y[broadcast_offset(i, &out_shape, sb)];
        out.push(T::arith(kind, p, q));
    }
    Ok(Tensor::from_vec(out_shape, out)?)
}

/// Elements from which the typed fast path splits work across threads.
const PARALLEL_MIN: usize = 1 << 15;

/// The fast path for one (non-f32) element type: equal shapes and a `b`
/// repeated along the leading axes of `a` in parallel, else the reference.
fn cpu_typed<T: Arith>(kind: BinaryKind, a: &Tensor, b: &Tensor) -> Result<Tensor, OpError> {
    let (x, y) = (a.as_slice::<T>()?, b.as_slice::<T>()?);
    let (sa, sb) = (a.shape(), b.shape());
    let f = move |p: T, q: T| T::arith(kind, p, q);
    if sa == sb {
        let out: Vec<T> = if x.len() >= PARALLEL_MIN {
            x.par_iter().zip(y.par_iter()).map(|(&p, &q)| f(p, q)).collect()
        } else {
            x.iter().zip(y).map(|(&p, &q)| f(p, q)).collect()
        };
        return Ok(Tensor::from_vec(sa.to_vec(), out)?);
    }
    if broadcast_shapes(sa, sb)? == sa && is_suffix_broadcast(sb, sa) && !y.is_empty() {
        let mut out = x.to_vec();
        let row = |r: &mut [T]| {
            for (p, &q) in r.iter_mut().zip(y.iter().cycle()) {
                *p = f(*p, q);
            }
        };
        if out.len() >= PARALLEL_MIN {
            let chunk = y.len() * PARALLEL_MIN.div_ceil(4 * y.len()).max(1);
            out.par_chunks_mut(chunk).for_each(row);
        } else {
            row(&mut out);
        }
        return Ok(Tensor::from_vec(sa.to_vec(), out)?);
    }
    reference_typed::<T>(kind, a, b)
}

/// `f` over two equal-length slices (one loop per closure type, so it vectorizes).
fn zip_f32(a: &[f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) -> Vec<f32> {
    linalg::zip(a, b, f)
}

/// `out[i] = f(out[i], b[i % b.len()])`: `b` repeated along the leading axes.
fn repeat_rows_f32(out: &mut [f32], b: &[f32], f: impl Fn(f32, f32) -> f32 + Sync + Send) {
    // Rows are exactly `b.len()` long (the caller checked the broadcast).
    linalg::for_each_row(out, b.len().max(1), |r| {
        for (x, &y) in r.iter_mut().zip(b) {
            *x = f(*x, y);
        }
    });
}

/// `a ∘ b` with the AVX-512 kernel ([`linalg::binary::zip_avx512`]); `None`
/// without AVX-512 F or where `a.len()` is not a multiple of `b.len()`.
fn simd_f32(kind: BinaryKind, a: &[f32], b: &[f32]) -> Option<Vec<f32>> {
    use linalg::binary::{zip_avx512, ADD, DIV, MUL, SUB};
    match kind {
        BinaryKind::Add => zip_avx512::<ADD>(a, b),
        BinaryKind::Mul => zip_avx512::<MUL>(a, b),
        BinaryKind::Sub => zip_avx512::<SUB>(a, b),
        BinaryKind::Div => zip_avx512::<DIV>(a, b),
        BinaryKind::Max | BinaryKind::Min => None,
    }
}

/// An elementwise binary op on two tensors of one dtype, broadcasting as NumPy does.
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
            BinaryKind::Max => "Max",
            BinaryKind::Min => "Min",
        }
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 2, 2, "2")?;
        operand_dtype(inputs[0].dtype, inputs[1].dtype)?;
        let shape = broadcast_dims(&inputs[0].shape, &inputs[1].shape)?;
        Ok(vec![ValueType {
            dtype: inputs[0].dtype,
            shape,
        }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 2, 2, "2")?;
        let dt = operand_dtype(inputs[0].dtype(), inputs[1].dtype())?;
        if dt != DType::F32 {
            return Ok(vec![with_arith_type!(
                dt,
                reference_typed(self.kind, inputs[0], inputs[1])
            )?]);
        }
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
        let dt = operand_dtype(inputs[0].dtype(), inputs[1].dtype())?;
        if dt != DType::F32 {
            return Ok(vec![with_arith_type!(dt, cpu_typed(self.kind, inputs[0], inputs[1]))?]);
        }
        let (a, b) = (f32_input(inputs, 0)?, f32_input(inputs, 1)?);
        let (sa, sb) = (inputs[0].shape(), inputs[1].shape());
        // One monomorphic loop per kind: a `match` per element keeps the loop
        // scalar (a jump per element).
        macro_rules! per_kind {
            ($call:ident ( $($arg:expr),* )) => {
                match self.kind {
                    BinaryKind::Add => $call($($arg,)* |x: f32, y: f32| x + y),
                    BinaryKind::Mul => $call($($arg,)* |x: f32, y: f32| x * y),
                    BinaryKind::Sub => $call($($arg,)* |x: f32, y: f32| x - y),
                    BinaryKind::Div => $call($($arg,)* |x: f32, y: f32| x / y),
                    BinaryKind::Max => $call($($arg,)* nan_max),
                    BinaryKind::Min => $call($($arg,)* nan_min),
                }
            };
        }
        if sa == sb {
            if let Some(y) = simd_f32(self.kind, a, b) {
                return Ok(vec![Tensor::from_vec(sa.to_vec(), y)?]);
            }
            return Ok(vec![Tensor::from_vec(sa.to_vec(), per_kind!(zip_f32(a, b)))?]);
        }
        let out_shape = broadcast_shapes(sa, sb)?;
        if out_shape == sa && is_suffix_broadcast(sb, sa) && b.len() >= 16 {
            if let Some(y) = simd_f32(self.kind, a, b) {
                return Ok(vec![Tensor::from_vec(out_shape, y)?]);
            }
        }
        // `b` repeats along the leading axes of `a` (a bias row, a scalar).
        if out_shape == sa && is_suffix_broadcast(sb, sa) {
            let mut out = a.to_vec();
            per_kind!(repeat_rows_f32(&mut out, b));
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
                // The gradient goes to the operand that was picked (`a` on a tie).
                BinaryKind::Max if a[ia] >= b[ib] => da[ia] += g,
                BinaryKind::Min if a[ia] <= b[ib] => da[ia] += g,
                BinaryKind::Max | BinaryKind::Min => db[ib] += g,
            }
        }
        Ok(vec![
            Some(Tensor::from_vec(sa.to_vec(), da)?),
            Some(Tensor::from_vec(sb.to_vec(), db)?),
        ])
    }

    /// Add, Mul, Sub, Max and Min are single IEEE operations everywhere: exact. WGSL
    /// only promises division to 2.5 ULP, so Div is compared to rounding.
    fn validation(&self) -> Validation {
        if self.kind == BinaryKind::Div {
            Validation::Rounding
        } else {
            Validation::Exact
        }
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

/// `Max`: elementwise maximum of two inputs with broadcasting (NaN wins).
pub const MAX: OpDef = OpDef {
    op_type: "Max",
    build: |_: &Attrs| Ok(build(BinaryKind::Max)),
    cases: || cases(BinaryKind::Max),
    sample: |r| sample(BinaryKind::Max, r),
};

/// `Min`: elementwise minimum of two inputs with broadcasting (NaN wins).
pub const MIN: OpDef = OpDef {
    op_type: "Min",
    build: |_: &Attrs| Ok(build(BinaryKind::Min)),
    cases: || cases(BinaryKind::Min),
    sample: |r| sample(BinaryKind::Min, r),
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

    fn run(kind: BinaryKind, a: Tensor, b: Tensor) -> Tensor {
        let op = Binary { kind };
        let r = op.reference(&[&a, &b]).unwrap().remove(0);
        assert_eq!(op.cpu(&[&a, &b]).unwrap()[0], r, "{kind:?} fast path");
        r
    }

    #[test]
    fn integer_arithmetic_wraps_and_division_truncates() {
        let i8s = |v: Vec<i8>| Tensor::from_vec(vec![v.len()], v).unwrap();
        let got = run(BinaryKind::Add, i8s(vec![100, -128, 5]), i8s(vec![100, -1, -7]));
        assert_eq!(got.as_slice::<i8>().unwrap(), &[-56, 127, -2]);
        let got = run(BinaryKind::Mul, i8s(vec![16, -128, 3]), i8s(vec![16, -1, -7]));
        assert_eq!(got.as_slice::<i8>().unwrap(), &[0, -128, -21]);
        let i32s = |v: Vec<i32>| Tensor::from_vec(vec![v.len()], v).unwrap();
        let got = run(
            BinaryKind::Div,
            i32s(vec![-7, 7, 7, -7, 5, i32::MIN, 0]),
            i32s(vec![2, -2, 2, -2, 0, -1, 3]),
        );
        assert_eq!(got.as_slice::<i32>().unwrap(), &[-3, -3, 3, 3, 0, i32::MIN, 0]);
        let u8s = |v: Vec<u8>| Tensor::from_vec(vec![v.len()], v).unwrap();
        let got = run(BinaryKind::Sub, u8s(vec![3, 250]), u8s(vec![5, 4]));
        assert_eq!(got.as_slice::<u8>().unwrap(), &[254, 246]);
        let u64s = |v: Vec<u64>| Tensor::from_vec(vec![v.len()], v).unwrap();
        let got = run(
            BinaryKind::Mul,
            u64s(vec![u64::MAX, (1 << 40) + 1]),
            u64s(vec![2, 1 << 30]),
        );
        assert_eq!(got.as_slice::<u64>().unwrap(), &[u64::MAX - 1, 1 << 30]);
        let got = run(BinaryKind::Div, u64s(vec![u64::MAX, 9]), u64s(vec![u64::MAX / 2, 0]));
        assert_eq!(got.as_slice::<u64>().unwrap(), &[2, 0]);
    }

    #[test]
    fn typed_fast_path_matches_reference_when_broadcasting() {
        let mut rng = CaseRng::new(5);
        // [17, 2000] is past the parallel threshold; [3, 1] and [1, 33] x [17, 1]
        // take the reference loop.
        let shapes: [(&[usize], &[usize]); 5] = [
            (&[17, 2000], &[17, 2000]),
            (&[17, 2000], &[2000]),
            (&[5, 3, 7], &[3, 1]),
            (&[1, 33], &[17, 1]),
            (&[4], &[]),
        ];
        for dt in ARITH_DTYPES {
            for kind in BinaryKind::ALL {
                for (sa, sb) in shapes {
                    let a = rng.tensor(sa, -300.0, 300.0).cast(dt);
                    let b = rng.tensor(sb, -300.0, 300.0).cast(dt);
                    let op = Binary { kind };
                    let want = op.reference(&[&a, &b]).unwrap();
                    assert_eq!(op.cpu(&[&a, &b]).unwrap(), want, "{dt} {kind:?} {sa:?} {sb:?}");
                    assert_eq!(want[0].dtype(), dt);
                }
            }
        }
    }

    #[test]
    fn max_and_min_propagate_nan_in_either_operand() {
        let nan = f32::NAN;
        let a = Tensor::from_vec(vec![5], vec![1.0f32, nan, 3.0, -0.0, nan]).unwrap();
        let b = Tensor::from_vec(vec![5], vec![2.0f32, 0.0, nan, 0.0, nan]).unwrap();
        for (kind, finite) in [(BinaryKind::Max, [2.0f32, 0.0]), (BinaryKind::Min, [1.0, -0.0])] {
            let op = Binary { kind };
            for y in [op.cpu(&[&a, &b]).unwrap(), op.reference(&[&a, &b]).unwrap()] {
                let y = y[0].as_f32().unwrap();
                assert_eq!(y[0], finite[0], "{kind:?}");
                assert!(y[1].is_nan() && y[2].is_nan() && y[4].is_nan(), "{kind:?} {y:?}");
                // ±0 compare equal: either is a right answer.
                assert_eq!(y[3], 0.0, "{kind:?}");
            }
        }
        // A bias row (the repeated-row path) with a NaN.
        let x = Tensor::from_vec(vec![2, 2], vec![1.0f32, 5.0, -1.0, 7.0]).unwrap();
        let row = Tensor::from_vec(vec![2], vec![nan, 6.0]).unwrap();
        let y = Binary { kind: BinaryKind::Max }.cpu(&[&x, &row]).unwrap();
        let y = y[0].as_f32().unwrap();
        assert!(y[0].is_nan() && y[2].is_nan());
        assert_eq!((y[1], y[3]), (6.0, 7.0));
    }

    #[test]
    fn mixed_or_bool_operands_are_typed_errors() {
        let a = Tensor::from_vec(vec![2], vec![1i32, 2]).unwrap();
        let b = Tensor::from_vec(vec![2], vec![1i64, 2]).unwrap();
        let op = Binary { kind: BinaryKind::Add };
        assert!(matches!(op.cpu(&[&a, &b]), Err(OpError::DType { index: 1, .. })));
        let t = Tensor::from_vec(vec![1], vec![true]).unwrap();
        assert!(matches!(op.reference(&[&t, &t]), Err(OpError::DType { index: 0, .. })));
    }

    #[test]
    fn f32_kernel_is_bit_exact_with_tails_and_repeated_rows() {
        let mut rng = CaseRng::new(17);
        for kind in BinaryKind::ALL {
            let op = Binary { kind };
            // (shape of a, shape of b): equal shapes with tails, bias rows,
            // a row longer than a parallel chunk, and a large equal pair.
            let shapes: [(&[usize], &[usize]); 7] = [
                (&[1], &[1]),
                (&[17], &[17]),
                (&[3, 33], &[3, 33]),
                (&[5, 31], &[31]),
                (&[2, 3, 48], &[1, 48]),
                (&[3, 70_001], &[70_001]),
                (&[1 << 18], &[1 << 18]),
            ];
            for (sa, sb) in shapes {
                let a = rng.tensor(sa, -3.0, 3.0);
                let b = rng.tensor(sb, 0.5, 2.0);
                let got = op.cpu(&[&a, &b]).unwrap();
                let want = op.reference(&[&a, &b]).unwrap();
                assert_eq!(got[0].shape(), want[0].shape());
                assert_eq!(
                    got[0].as_f32().unwrap(),
                    want[0].as_f32().unwrap(),
                    "{kind:?} {sa:?} {sb:?}"
                );
            }
        }
    }
}
