//! The integer ops of ONNX's dynamic quantization: [`MatMulInteger`]
//! (8-bit operands minus their zero points, multiplied with i32 sums) and
//! [`DynamicQuantizeLinear`] (f32 to u8, with a scale and zero point taken
//! from the tensor's range), as ONNX defines them (opsets 10 and 11). Both
//! are exact: integer sums, and the single f32 operations of ONNX's
//! reference, rounded half to even where it rounds.

use std::sync::Arc;

use super::binary::{broadcast_offset, broadcast_shapes};
use super::matmul::{plan, MatMul, Plan};
use super::{check_arity, Attrs, CaseRng, Op, OpCase, OpDef, Prepared, Validation};
use crate::error::OpError;
use crate::linalg;
use crate::tensor::{numel, DType, Storage, Tensor, ValueType};

/// `MatMulInteger(A, B, a_zero_point?, b_zero_point?)`: `(A - a_zero_point)
/// · (B - b_zero_point)` with i32 sums (wrapping past the i32 range, as
/// ONNX's reference does), batched and broadcast as `MatMul`. `A` and `B`
/// are u8 or i8 each; a zero point has its operand's dtype and is one value,
/// one per row of `A` (`[M]`, or `[..., M, 1]`) or one per column of `B`
/// (`[N]`, or `[..., 1, N]`).
#[derive(Clone, Debug, Default)]
pub struct MatMulInteger;

/// Fails unless the operands are u8 or i8 and each zero point has its
/// operand's dtype.
fn check_types(d: &[DType]) -> Result<(), OpError> {
    for (index, &got) in d.iter().enumerate() {
        let want = if index < 2 { None } else { Some(d[index - 2]) };
        match want {
            None if !matches!(got, DType::U8 | DType::I8) => {
                return Err(OpError::DType {
                    index,
                    expected: "u8 or i8",
                    got,
                })
            }
            Some(w) if w != got => {
                return Err(OpError::DType {
                    index,
                    expected: if w == DType::U8 {
                        "u8 (its operand's dtype)"
                    } else {
                        "i8 (its operand's dtype)"
                    },
                    got,
                })
            }
            _ => {}
        }
    }
    Ok(())
}

/// Which lines of an operand share a zero point: the rows of `A` (its last
/// axis is summed over) or the columns of `B` (its second-to-last is).
#[derive(Clone, Copy, Debug, PartialEq)]
enum Side {
    A,
    B,
}

/// The zero point of every line of an operand of shape `shape` (rank >= 2,
/// 1-D operands promoted as `MatMul` does), in order: rows `[..., M]` of A
/// or columns `[..., N]` of B.
fn line_zero_points(zp: Option<&Tensor>, shape: &[usize], side: Side) -> Result<Vec<i32>, OpError> {
    let r = shape.len();
    let summed = if side == Side::A { r - 1 } else { r - 2 };
    let without = |s: &[usize], axis: usize| -> Vec<usize> {
        s.iter()
            .enumerate()
            .filter(|&(i, _)| i != axis)
            .map(|(_, &d)| d)
            .collect()
    };
    let lines = without(shape, summed);
    let count = numel(&lines);
    let Some(z) = zp else {
        return Ok(vec![0; count]);
    };
    let v: Vec<i32> = z.to_i64_vec().iter().map(|&x| x as i32).collect();
    if v.len() == 1 {
        return Ok(vec![v[0]; count]);
    }
    let bad = || {
        OpError::Shape(format!(
            "MatMulInteger: zero point {:?} for an operand {shape:?} (one value, one per {}, or a shape that broadcasts with 1 along the summed axis)",
            z.shape(),
            if side == Side::A { "row" } else { "column" }
        ))
    };
    let zs = match z.rank() {
        1 => z.shape().to_vec(),
        zr if zr <= r && z.shape()[summed + zr - r] == 1 => without(z.shape(), summed + zr - r),
        _ => return Err(bad()),
    };
    if broadcast_shapes(&lines, &zs).ok().as_deref() != Some(&lines[..]) {
        return Err(bad());
    }
    Ok((0..count).map(|l| v[broadcast_offset(l, &lines, &zs)]).collect())
}

/// The values of a u8 or i8 tensor as i16.
fn byte_values(t: &Tensor, index: usize) -> Result<Vec<i16>, OpError> {
    match t.storage() {
        Storage::U8(v) => Ok(v.iter().map(|&x| x as i16).collect()),
        Storage::I8(v) => Ok(v.iter().map(|&x| x as i16).collect()),
        _ => Err(OpError::DType {
            index,
            expected: "u8 or i8",
            got: t.dtype(),
        }),
    }
}

/// An operand's shape as a matrix (or a batch of them): a 1-D `A` is a
/// row, a 1-D `B` a column.
fn promoted(shape: &[usize], side: Side) -> Vec<usize> {
    match (shape, side) {
        ([k], Side::A) => vec![1, *k],
        ([k], Side::B) => vec![*k, 1],
        _ => shape.to_vec(),
    }
}

/// `A - a_zero_point` as i16, in A's layout.
fn centered_a(a: &Tensor, zp: Option<&Tensor>) -> Result<Vec<i16>, OpError> {
    let shape = promoted(a.shape(), Side::A);
    let k = shape[shape.len() - 1];
    let z = line_zero_points(zp, &shape, Side::A)?;
    let v = byte_values(a, 0)?;
    Ok(v.chunks(k.max(1))
        .zip(&z)
        .flat_map(|(row, &zr)| row.iter().map(move |&x| x - zr as i16))
        .collect())
}

/// `B - b_zero_point` as i16, each matrix of the batch transposed to `[N, K]`.
fn centered_bt(b: &Tensor, zp: Option<&Tensor>) -> Result<Vec<i16>, OpError> {
    let shape = promoted(b.shape(), Side::B);
    let r = shape.len();
    let (k, n) = (shape[r - 2], shape[r - 1]);
    let z = line_zero_points(zp, &shape, Side::B)?;
    let v = byte_values(b, 1)?;
    let mut out = vec![0i16; v.len()];
    for bi in 0..numel(&shape[..r - 2]) {
        let (src, dst, zb) = (&v[bi * k * n..], &mut out[bi * n * k..], &z[bi * n..]);
        for q in 0..k {
            for j in 0..n {
                dst[j * k + q] = src[q * n + j] - zb[j] as i16;
            }
        }
    }
    Ok(out)
}

/// B prepared once per session: its shape and [`centered_bt`].
struct PreparedB {
    shape: Vec<usize>,
    bt: Vec<i16>,
}

impl MatMulInteger {
    fn checked_plan(inputs: &[&Tensor]) -> Result<Plan, OpError> {
        check_arity(inputs.len(), 2, 4, "2 to 4")?;
        check_types(&inputs.iter().map(|t| t.dtype()).collect::<Vec<_>>())?;
        plan(inputs[0].shape(), inputs[1].shape())
    }

    /// The fast product, with B centered and transposed already when given.
    fn product(&self, inputs: &[&Tensor], bt: Option<&[i16]>) -> Result<Vec<Tensor>, OpError> {
        let p = Self::checked_plan(inputs)?;
        let ac = centered_a(inputs[0], inputs.get(2).copied())?;
        let owned;
        let bt = match bt {
            Some(b) => b,
            None => {
                owned = centered_bt(inputs[1], inputs.get(3).copied())?;
                &owned
            }
        };
        let (m, k, n) = (p.m, p.k, p.n);
        let batches = numel(&p.batch);
        let mut out = vec![0i32; batches * m * n];
        if numel(&p.b_batch) == 1 && numel(&p.a_batch) == batches {
            // One shared right-hand side: fold the batch into the rows.
            linalg::int16::gemm_i16_nt(&ac, batches * m, bt, n, k, &mut out);
        } else {
            for (bi, c) in out.chunks_mut((m * n).max(1)).enumerate().take(batches) {
                let ao = broadcast_offset(bi, &p.batch, &p.a_batch) * m * k;
                let bo = broadcast_offset(bi, &p.batch, &p.b_batch) * k * n;
                linalg::int16::gemm_i16_nt(&ac[ao..ao + m * k], m, &bt[bo..bo + n * k], n, k, c);
            }
        }
        Ok(vec![Tensor::from_vec(p.out, out)?])
    }
}

impl Op for MatMulInteger {
    fn op_type(&self) -> &'static str {
        "MatMulInteger"
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 2, 4, "2 to 4")?;
        check_types(&inputs.iter().map(|t| t.dtype).collect::<Vec<_>>())?;
        let as_f32: Vec<ValueType> = inputs[..2]
            .iter()
            .map(|t| ValueType {
                dtype: DType::F32,
                shape: t.shape.clone(),
            })
            .collect();
        let mut out = MatMul.infer(&as_f32)?;
        for o in &mut out {
            o.dtype = DType::I32;
        }
        Ok(out)
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        let p = Self::checked_plan(inputs)?;
        let (a2, b2) = (
            promoted(inputs[0].shape(), Side::A),
            promoted(inputs[1].shape(), Side::B),
        );
        let za = line_zero_points(inputs.get(2).copied(), &a2, Side::A)?;
        let zb = line_zero_points(inputs.get(3).copied(), &b2, Side::B)?;
        let (a, b) = (inputs[0].to_i64_vec(), inputs[1].to_i64_vec());
        let (m, k, n) = (p.m, p.k, p.n);
        let batches = numel(&p.batch);
        let mut out = vec![0i32; batches * m * n];
        for bi in 0..batches {
            let ab = broadcast_offset(bi, &p.batch, &p.a_batch);
            let bb = broadcast_offset(bi, &p.batch, &p.b_batch);
            for i in 0..m {
                for j in 0..n {
                    let mut acc = 0i64;
                    for q in 0..k {
                        let x = a[(ab * m + i) * k + q] - za[ab * m + i] as i64;
                        let y = b[(bb * k + q) * n + j] - zb[bb * n + j] as i64;
                        acc += x * y;
                    }
                    // Wraps past the i32 range, as int32 sums do.
                    out[(bi * m + i) * n + j] = acc as i32;
                }
            }
        }
        Ok(vec![Tensor::from_vec(p.out, out)?])
    }

    fn cpu(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        self.product(inputs, None)
    }

    fn prepare_cpu(&self, consts: &[Option<&Tensor>]) -> Option<Prepared> {
        let b = (*consts.get(1)?)?;
        let zp = match consts.get(3) {
            None => None,
            Some(z) => Some((*z)?),
        };
        let bt = centered_bt(b, zp).ok()?;
        Some(Prepared(Arc::new(PreparedB {
            shape: b.shape().to_vec(),
            bt,
        })))
    }

    fn cpu_prepared(&self, inputs: &[&Tensor], prepared: &Prepared) -> Result<Vec<Tensor>, OpError> {
        match prepared.0.downcast_ref::<PreparedB>() {
            Some(p) if inputs.len() >= 2 && inputs[1].shape() == p.shape.as_slice() => {
                self.product(inputs, Some(&p.bt))
            }
            _ => self.product(inputs, None),
        }
    }

    fn validation(&self) -> Validation {
        Validation::Exact
    }

    fn flops(&self, inputs: &[&[usize]]) -> u64 {
        match inputs {
            [a, b, ..] => plan(a, b)
                .map(|p| 2 * (numel(&p.batch) * p.m * p.n * p.k) as u64)
                .unwrap_or(0),
            _ => 0,
        }
    }
}

/// `DynamicQuantizeLinear(x)`: `(y, y_scale, y_zero_point)` with y u8 of x's
/// shape and the other two scalars, computed as ONNX's reference does (in
/// f32): the range `[min(0, min x), max(0, max x)]` (NaN ignored), `y_scale
/// = (max - min)/255` (`1/255` when the range is empty), `y_zero_point =
/// round(clamp(-min/y_scale, 0, 255))` and `y = clamp(round(x/y_scale) +
/// y_zero_point, 0, 255)`, rounding half to even.
#[derive(Clone, Debug, Default)]
pub struct DynamicQuantizeLinear;

/// The scale and the (integral) zero point of [`DynamicQuantizeLinear`] for `x`.
pub fn dynamic_quantization(x: &[f32]) -> (f32, f32) {
    let (lo, hi) = x.iter().fold((0.0f32, 0.0f32), |(lo, hi), &v| (lo.min(v), hi.max(v)));
    let range = if hi == lo { 1.0 } else { hi - lo };
    let scale = range / 255.0;
    let zero = (0.0 - lo / scale).clamp(0.0, 255.0).round_ties_even();
    (scale, zero)
}

impl Op for DynamicQuantizeLinear {
    fn op_type(&self) -> &'static str {
        "DynamicQuantizeLinear"
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        super::check_f32(inputs)?;
        Ok(vec![
            ValueType {
                dtype: DType::U8,
                shape: inputs[0].shape.clone(),
            },
            ValueType::known(DType::F32, &[]),
            ValueType::known(DType::U8, &[]),
        ])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        let x = super::f32_input(inputs, 0)?;
        let (scale, zero) = dynamic_quantization(x);
        let y: Vec<u8> = x
            .iter()
            .map(|&v| ((v / scale).round_ties_even() + zero).clamp(0.0, 255.0) as u8)
            .collect();
        Ok(vec![
            Tensor::from_vec(inputs[0].shape().to_vec(), y)?,
            Tensor::from_vec(vec![], vec![scale])?,
            Tensor::from_vec(vec![], vec![zero as u8])?,
        ])
    }

    fn validation(&self) -> Validation {
        Validation::Exact
    }
}

/// Random u8 or i8 values of `shape`.
fn bytes(rng: &mut CaseRng, shape: &[usize], dt: DType) -> Tensor {
    let (lo, hi) = if dt == DType::U8 { (0.0, 256.0) } else { (-128.0, 128.0) };
    // The cast truncates toward zero: i8 values fall in [-127, 127].
    rng.tensor(shape, lo, hi).cast(dt)
}

/// A `MatMulInteger` case; zero points of shapes `za`/`zb` when given.
fn mm_case(
    rng: &mut CaseRng,
    (ta, tb): (DType, DType),
    a: &[usize],
    b: &[usize],
    za: Option<&[usize]>,
    zb: Option<&[usize]>,
) -> OpCase {
    let mut inputs = vec![bytes(rng, a, ta), bytes(rng, b, tb)];
    match (za, zb) {
        (None, None) => {}
        (za, zb) => {
            inputs.push(bytes(rng, za.unwrap_or(&[]), ta));
            if let Some(zb) = zb {
                inputs.push(bytes(rng, zb, tb));
            }
        }
    }
    OpCase::new(
        format!("matmulinteger {ta}{a:?} x {tb}{b:?} zero points {za:?} {zb:?}"),
        Arc::new(MatMulInteger),
        inputs,
    )
}

/// `MatMulInteger`: no attributes.
pub const MATMUL_INTEGER: OpDef = OpDef {
    op_type: "MatMulInteger",
    build: |_: &Attrs| Ok(Arc::new(MatMulInteger)),
    cases: || {
        let mut rng = CaseRng::new(61);
        let (u, i) = (DType::U8, DType::I8);
        vec![
            mm_case(&mut rng, (u, u), &[4, 3], &[3, 2], Some(&[]), Some(&[])),
            mm_case(&mut rng, (u, i), &[17, 1000], &[1000, 3], Some(&[1]), Some(&[3])),
            mm_case(&mut rng, (i, u), &[3, 17], &[17, 5], Some(&[3]), None),
            mm_case(&mut rng, (i, i), &[2, 3, 7], &[7, 5], None, None),
            mm_case(
                &mut rng,
                (u, u),
                &[2, 3, 7],
                &[2, 7, 5],
                Some(&[2, 3, 1]),
                Some(&[2, 1, 5]),
            ),
            mm_case(&mut rng, (u, i), &[2, 1, 3, 7], &[4, 7, 5], Some(&[]), Some(&[1, 5])),
            mm_case(&mut rng, (u, u), &[17], &[17, 3], Some(&[1]), Some(&[3])),
            mm_case(&mut rng, (u, i), &[3, 17], &[17], Some(&[3]), Some(&[])),
            mm_case(&mut rng, (u, u), &[64, 64], &[64, 64], Some(&[]), Some(&[64])),
        ]
    },
    sample: |rng| {
        let (m, k, n) = (rng.dim(40), rng.dim(200), rng.dim(60));
        let ta = if rng.next_u64().is_multiple_of(2) {
            DType::U8
        } else {
            DType::I8
        };
        let tb = if rng.next_u64().is_multiple_of(2) {
            DType::U8
        } else {
            DType::I8
        };
        match rng.range(0, 2) {
            0 => mm_case(rng, (ta, tb), &[m, k], &[k, n], Some(&[m]), Some(&[n])),
            1 => {
                let bs = rng.dim(4);
                mm_case(rng, (ta, tb), &[bs, m, k], &[k, n], Some(&[]), Some(&[]))
            }
            _ => mm_case(rng, (ta, tb), &[m, k], &[k, n], None, None),
        }
    },
};

fn dq_case(name: &str, x: Tensor) -> OpCase {
    OpCase::new(
        format!("dynamicquantizelinear {name} {:?}", x.shape()),
        Arc::new(DynamicQuantizeLinear),
        vec![x],
    )
}

/// `DynamicQuantizeLinear`: no attributes.
pub const DYNAMIC_QUANTIZE_LINEAR: OpDef = OpDef {
    op_type: "DynamicQuantizeLinear",
    build: |_: &Attrs| Ok(Arc::new(DynamicQuantizeLinear)),
    cases: || {
        let mut rng = CaseRng::new(62);
        let t = |v: Vec<f32>| Tensor::from_vec(vec![v.len()], v).unwrap_or_else(|e| unreachable!("1-D: {e}"));
        vec![
            dq_case("onnx example", t(vec![0.0, 2.0, -3.0, -2.5, 1.34, 0.5])),
            dq_case("positive", rng.tensor(&[3, 17], 0.5, 6.0)),
            dq_case("negative", rng.tensor(&[17], -6.0, -0.5)),
            dq_case("mixed", rng.tensor(&[2, 3, 1000], -3.0, 9.0)),
            dq_case("zeros", Tensor::zeros(DType::F32, vec![5])),
            // Scale 1 (range 255): x.5 values tie and round to even.
            dq_case("ties", t(vec![0.0, 255.0, 0.5, 1.5, 2.5, 100.5, 254.5])),
        ]
    },
    sample: |rng| {
        let shape: Vec<usize> = (0..rng.range(1, 3)).map(|_| rng.dim(64)).collect();
        let lo = rng.uniform(-8.0, 1.0);
        let hi = lo + rng.uniform(0.1, 10.0);
        let x = rng.tensor(&shape, lo, hi);
        dq_case("random", x)
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn onnx_example_values() {
        // The example of ONNX's operator documentation.
        let x = Tensor::from_vec(vec![6], vec![0.0f32, 2.0, -3.0, -2.5, 1.34, 0.5]).unwrap();
        let y = DynamicQuantizeLinear.reference(&[&x]).unwrap();
        assert_eq!(y[0].as_slice::<u8>().unwrap(), &[153, 255, 0, 26, 221, 179]);
        assert!((y[1].as_f32().unwrap()[0] - 0.019_607_844).abs() < 1e-9);
        assert_eq!(y[2].as_slice::<u8>().unwrap(), &[153]);
    }

    #[test]
    fn zero_points_per_row_and_column() {
        // A [2, 2] u8 minus rows' zero points (1, 2); B [2, 2] i8 minus columns' (0, -1).
        let a = Tensor::from_vec(vec![2, 2], vec![3u8, 4, 5, 6]).unwrap();
        let b = Tensor::from_vec(vec![2, 2], vec![1i8, 2, 3, -4]).unwrap();
        let za = Tensor::from_vec(vec![2], vec![1u8, 2]).unwrap();
        let zb = Tensor::from_vec(vec![2], vec![0i8, -1]).unwrap();
        // [[2, 3], [3, 4]] · [[1, 3], [3, -3]]
        let want = [11, -3, 15, -3];
        for f in [MatMulInteger::reference, MatMulInteger::cpu] {
            let y = f(&MatMulInteger, &[&a, &b, &za, &zb]).unwrap();
            assert_eq!(y[0].as_slice::<i32>().unwrap(), &want);
        }
        let bad = Tensor::from_vec(vec![3], vec![0i8; 3]).unwrap();
        assert!(matches!(
            MatMulInteger.reference(&[&a, &b, &za, &bad]),
            Err(OpError::Shape(_))
        ));
        assert!(matches!(
            MatMulInteger.reference(&[&a, &b, &za, &za]),
            Err(OpError::DType { index: 3, .. })
        ));
    }
}
