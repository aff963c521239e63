//! `ReduceMin` and `ReduceMax`: the smallest or largest element over a set
//! of axes (every axis when none is given), the reduced axes kept as 1s or
//! dropped, as ONNX defines them (opsets 1 to 20): NaN propagates (as in
//! NumPy), and an empty set gives the dtype's identity (+inf or -inf for
//! floats, the largest or smallest integer, true or false for bool).

use std::sync::Arc;

use half::{bf16, f16};

use super::{attr_i64, check_arity, Attrs, CaseRng, Op, OpCase, OpDef, Validation};
use crate::error::OpError;
use crate::tensor::{numel, strides, DType, Dim, Storage, Tensor, ValueType};

/// Which extreme.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum ReduceKind {
    /// The smallest element.
    Min,
    /// The largest element.
    Max,
}

/// `ReduceMin` / `ReduceMax` over `axes`.
#[derive(Clone, Debug)]
pub struct Reduce {
    /// Which extreme.
    pub kind: ReduceKind,
    /// The reduced axes (negative ones count from the end); `None`: every
    /// axis (an empty list reduces none).
    pub axes: Option<Vec<i64>>,
    /// Keep the reduced axes as 1s (else drop them).
    pub keepdims: bool,
}

/// Element types with the identities of min and max.
trait Extremes: Copy + PartialOrd {
    /// The identity of max (the lowest value).
    const LOWEST: Self;
    /// The identity of min (the highest value).
    const HIGHEST: Self;
}

macro_rules! extremes {
    ($($t:ty: $lo:expr, $hi:expr;)*) => {$(
        impl Extremes for $t {
            const LOWEST: Self = $lo;
            const HIGHEST: Self = $hi;
        }
    )*};
}

extremes! {
    f32: f32::NEG_INFINITY, f32::INFINITY;
    f64: f64::NEG_INFINITY, f64::INFINITY;
    f16: f16::NEG_INFINITY, f16::INFINITY;
    bf16: bf16::NEG_INFINITY, bf16::INFINITY;
    i8: i8::MIN, i8::MAX;
    u8: u8::MIN, u8::MAX;
    i16: i16::MIN, i16::MAX;
    u16: u16::MIN, u16::MAX;
    i32: i32::MIN, i32::MAX;
    u32: u32::MIN, u32::MAX;
    i64: i64::MIN, i64::MAX;
    u64: u64::MIN, u64::MAX;
    bool: false, true;
}

/// `acc` updated with `v`; a NaN (the one value not equal to itself) sticks.
#[inline(always)]
fn pick<T: PartialOrd>(acc: T, v: T, kind: ReduceKind) -> T {
    use std::cmp::Ordering::{Greater, Less};
    match (v.partial_cmp(&acc), kind) {
        (None, _) if acc.partial_cmp(&acc).is_none() => acc,
        (None, _) | (Some(Less), ReduceKind::Min) | (Some(Greater), ReduceKind::Max) => v,
        _ => acc,
    }
}

/// The reduction of `x` (of `shape`) over the flagged axes, in the layout
/// of the shape with those axes as 1s. `contiguous`: take the fast path
/// when the reduced axes are the trailing ones.
fn reduce_vec<T: Extremes>(x: &[T], shape: &[usize], reduced: &[bool], kind: ReduceKind, contiguous: bool) -> Vec<T> {
    let init = if kind == ReduceKind::Min { T::HIGHEST } else { T::LOWEST };
    let kept: Vec<usize> = shape
        .iter()
        .zip(reduced)
        .map(|(&d, &r)| if r { 1 } else { d })
        .collect();
    let mut out = vec![init; numel(&kept)];
    let tail = reduced.iter().rev().take_while(|&&r| r).count();
    if contiguous && reduced.iter().filter(|&&r| r).count() == tail {
        let len = numel(&shape[shape.len() - tail..]);
        if len > 0 {
            for (o, row) in out.iter_mut().zip(x.chunks(len)) {
                *o = row.iter().fold(init, |a, &v| pick(a, v, kind));
            }
        }
        return out;
    }
    // Walk x in order, moving the output offset along the kept axes.
    let ostr = strides(&kept);
    let mut coord = vec![0usize; shape.len()];
    let mut o = 0usize;
    for &v in x {
        out[o] = pick(out[o], v, kind);
        for ax in (0..shape.len()).rev() {
            coord[ax] += 1;
            if !reduced[ax] {
                o += ostr[ax];
            }
            if coord[ax] < shape[ax] {
                break;
            }
            if !reduced[ax] {
                o -= ostr[ax] * shape[ax];
            }
            coord[ax] = 0;
        }
    }
    out
}

impl Reduce {
    /// Which axes of a rank-`rank` input are reduced.
    fn reduced(&self, rank: usize) -> Result<Vec<bool>, OpError> {
        let mut flags = vec![self.axes.is_none(); rank];
        for &a in self.axes.iter().flatten() {
            let ax = super::axis_in(a, rank, "axes")?;
            if flags[ax] {
                return Err(OpError::Attribute {
                    name: "axes".into(),
                    message: format!("axis {a} is given twice"),
                });
            }
            flags[ax] = true;
        }
        Ok(flags)
    }

    fn run(&self, x: &Tensor, contiguous: bool) -> Result<Tensor, OpError> {
        let shape = x.shape();
        let reduced = self.reduced(shape.len())?;
        let k = self.kind;
        let storage = match x.storage() {
            Storage::F32(v) => Storage::F32(reduce_vec(v, shape, &reduced, k, contiguous)),
            Storage::F64(v) => Storage::F64(reduce_vec(v, shape, &reduced, k, contiguous)),
            Storage::F16(v) => Storage::F16(reduce_vec(v, shape, &reduced, k, contiguous)),
            Storage::BF16(v) => Storage::BF16(reduce_vec(v, shape, &reduced, k, contiguous)),
            Storage::I8(v) => Storage::I8(reduce_vec(v, shape, &reduced, k, contiguous)),
            Storage::U8(v) => Storage::U8(reduce_vec(v, shape, &reduced, k, contiguous)),
            Storage::I16(v) => Storage::I16(reduce_vec(v, shape, &reduced, k, contiguous)),
            Storage::U16(v) => Storage::U16(reduce_vec(v, shape, &reduced, k, contiguous)),
            Storage::I32(v) => Storage::I32(reduce_vec(v, shape, &reduced, k, contiguous)),
            Storage::U32(v) => Storage::U32(reduce_vec(v, shape, &reduced, k, contiguous)),
            Storage::I64(v) => Storage::I64(reduce_vec(v, shape, &reduced, k, contiguous)),
            Storage::U64(v) => Storage::U64(reduce_vec(v, shape, &reduced, k, contiguous)),
            Storage::Bool(v) => Storage::Bool(reduce_vec(v, shape, &reduced, k, contiguous)),
            _ => return Err(unsupported(x.dtype())),
        };
        let out: Vec<usize> = shape
            .iter()
            .zip(&reduced)
            .filter(|(_, &r)| !r || self.keepdims)
            .map(|(&d, &r)| if r { 1 } else { d })
            .collect();
        Ok(Tensor::new(out, storage)?)
    }
}

const DTYPES: &str = "a float (f32, f64, f16, bf16), an integer of 8 to 64 bits, or bool";

fn unsupported(got: DType) -> OpError {
    OpError::DType {
        index: 0,
        expected: DTYPES,
        got,
    }
}

impl Op for Reduce {
    fn op_type(&self) -> &'static str {
        match self.kind {
            ReduceKind::Min => "ReduceMin",
            ReduceKind::Max => "ReduceMax",
        }
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        if let Some(axes) = &self.axes {
            a.insert("axes".into(), axes.clone().into());
        }
        a.insert("keepdims".into(), (self.keepdims as i64).into());
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let x = &inputs[0];
        if matches!(
            x.dtype,
            DType::F8E4M3FN
                | DType::F8E4M3FNUZ
                | DType::F8E5M2
                | DType::F8E5M2FNUZ
                | DType::F8E8M0
                | DType::F4E2M1
                | DType::I4
                | DType::U4
                | DType::I2
                | DType::U2
        ) {
            return Err(unsupported(x.dtype));
        }
        let reduced = self.reduced(x.rank())?;
        let shape: Vec<Dim> = x
            .shape
            .iter()
            .zip(&reduced)
            .filter(|(_, &r)| !r || self.keepdims)
            .map(|(d, &r)| if r { Dim::Known(1) } else { d.clone() })
            .collect();
        Ok(vec![ValueType { dtype: x.dtype, shape }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        Ok(vec![self.run(inputs[0], false)?])
    }

    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        Ok(vec![self.run(inputs[0], true)?])
    }

    fn validation(&self) -> Validation {
        Validation::Exact
    }
}

fn build(attrs: &Attrs, kind: ReduceKind) -> Result<Arc<dyn Op>, OpError> {
    let axes = match attrs.get("axes") {
        None => None,
        Some(_) => Some(super::attr_ints(attrs, "axes")?),
    };
    Ok(Arc::new(Reduce {
        kind,
        axes,
        keepdims: attr_i64(attrs, "keepdims", Some(1))? != 0,
    }))
}

fn case(kind: ReduceKind, x: Tensor, axes: Option<&[i64]>, keepdims: bool) -> OpCase {
    let name = format!(
        "{kind:?} {} {:?} axes {axes:?} keepdims {keepdims}",
        x.dtype(),
        x.shape()
    );
    let op = Reduce {
        kind,
        axes: axes.map(<[i64]>::to_vec),
        keepdims,
    };
    OpCase::new(name, Arc::new(op), vec![x])
}

fn cases(kind: ReduceKind) -> Vec<OpCase> {
    let mut rng = CaseRng::new(63);
    let t = |shape: Vec<usize>, v: Vec<f32>| Tensor::from_vec(shape, v).unwrap_or_else(|e| unreachable!("{e}"));
    // NaN propagation is checked in the unit tests (NaN != NaN in the registry's equality checks).
    let inf = t(vec![2, 3], vec![1.0, f32::INFINITY, -2.0, 3.0, f32::NEG_INFINITY, -0.5]);
    let bools = Tensor::from_vec(vec![2, 2], vec![true, false, true, true]).unwrap_or_else(|e| unreachable!("{e}"));
    vec![
        case(kind, rng.tensor(&[3, 17], -6.0, 6.0), Some(&[1]), true),
        case(kind, rng.tensor(&[17, 1000], -6.0, 6.0), Some(&[-1]), false),
        case(kind, rng.tensor(&[2, 3, 5, 7], -6.0, 6.0), Some(&[0, 2]), true),
        case(kind, rng.tensor(&[2, 3, 5], -6.0, 6.0), Some(&[1]), false),
        case(kind, rng.tensor(&[3, 2, 2], -6.0, 6.0), None, true),
        case(kind, rng.tensor(&[3, 2, 2], -6.0, 6.0), None, false),
        case(
            kind,
            rng.tensor(&[4, 5], -100.0, 100.0).cast(DType::I32),
            Some(&[0]),
            true,
        ),
        case(kind, rng.tensor(&[4, 5], 0.0, 255.0).cast(DType::U8), Some(&[1]), false),
        case(kind, inf, Some(&[1]), true),
        case(kind, bools, Some(&[1]), true),
        case(kind, Tensor::zeros(DType::F32, vec![2, 0, 4]), Some(&[1]), true),
    ]
}

fn sample(kind: ReduceKind, rng: &mut CaseRng) -> OpCase {
    let shape: Vec<usize> = (0..rng.range(1, 4)).map(|_| rng.dim(20)).collect();
    let axes: Vec<i64> = (0..shape.len() as i64)
        .filter(|_| rng.next_u64().is_multiple_of(2))
        .collect();
    let keepdims = rng.next_u64().is_multiple_of(2);
    let x = rng.tensor(&shape, -8.0, 8.0);
    let axes = (!axes.is_empty()).then_some(axes);
    case(kind, x, axes.as_deref(), keepdims)
}

/// `ReduceMin`: attributes `axes` (absent: every axis) and `keepdims` (default 1).
pub const REDUCE_MIN: OpDef = OpDef {
    op_type: "ReduceMin",
    build: |a| build(a, ReduceKind::Min),
    cases: || cases(ReduceKind::Min),
    sample: |r| sample(ReduceKind::Min, r),
};

/// `ReduceMax`: attributes `axes` (absent: every axis) and `keepdims` (default 1).
pub const REDUCE_MAX: OpDef = OpDef {
    op_type: "ReduceMax",
    build: |a| build(a, ReduceKind::Max),
    cases: || cases(ReduceKind::Max),
    sample: |r| sample(ReduceKind::Max, r),
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn values_nan_and_empty_sets() {
        let x = Tensor::from_vec(vec![2, 3], vec![1.0f32, 5.0, -2.0, 3.0, f32::NAN, 4.0]).unwrap();
        let op = |kind, axes: Option<Vec<i64>>, keepdims| Reduce { kind, axes, keepdims };
        for contiguous in [false, true] {
            let y = op(ReduceKind::Min, Some(vec![1]), false).run(&x, contiguous).unwrap();
            assert_eq!(y.shape(), &[2]);
            let v = y.to_f32_vec();
            assert_eq!(v[0], -2.0);
            assert!(v[1].is_nan());
            let y = op(ReduceKind::Max, Some(vec![0]), true).run(&x, contiguous).unwrap();
            assert_eq!(y.shape(), &[1, 3]);
            let v = y.to_f32_vec();
            assert_eq!((v[0], v[2]), (3.0, 4.0));
            assert!(v[1].is_nan());
        }
        let e = Tensor::zeros(DType::I32, vec![2, 0]);
        let y = op(ReduceKind::Min, Some(vec![1]), true).run(&e, true).unwrap();
        assert_eq!(y.as_slice::<i32>().unwrap(), &[i32::MAX, i32::MAX]);
        let b = Tensor::from_vec(vec![2], vec![true, false]).unwrap();
        let y = op(ReduceKind::Max, None, false).run(&b, false).unwrap();
        assert_eq!(y.shape(), &[] as &[usize]);
        assert_eq!(y.as_slice::<bool>().unwrap(), &[true]);
        assert!(matches!(
            op(ReduceKind::Max, Some(vec![0, -2]), true).run(&x, false),
            Err(OpError::Attribute { .. })
        ));
    }
}
