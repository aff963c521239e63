//! Casts between dtypes: `Cast` (saturating, as ONNX `Cast` with its
//! default `saturate = 1`) and `CastUnsaturated` (a float8 target with
//! `saturate = 0`).

use std::sync::Arc;

use super::{attr_str, check_arity, Attrs, CaseRng, Op, OpCase, OpDef, Validation};
use crate::error::OpError;
use crate::tensor::lowp::{F8E4M3FN, F8E4M3FNUZ, F8E5M2, F8E5M2FNUZ};
use crate::tensor::{DType, Storage, Tensor, ValueType};

/// `Cast` to another dtype (float to integer truncates toward zero and saturates).
#[derive(Clone, Debug)]
pub struct Cast {
    /// The target dtype.
    pub to: DType,
}

impl Op for Cast {
    fn op_type(&self) -> &'static str {
        "Cast"
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("to".into(), self.to.name().into());
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        Ok(vec![ValueType {
            dtype: self.to,
            shape: inputs[0].shape.clone(),
        }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        Ok(vec![inputs[0].cast(self.to)])
    }

    fn validation(&self) -> Validation {
        Validation::Exact
    }
}

/// i64 values whose f32 is exact (|v| <= 2^24, or a multiple of a power of
/// two above it, beyond the i32 range when `wide`), so that every backend
/// agrees bit for bit.
fn int_values(rng: &mut CaseRng, wide: bool) -> Tensor {
    let mut v: Vec<i64> = vec![
        0,
        1,
        0,
        1,
        1,
        -1,
        16_777_216,
        -16_777_216,
        123_456,
        -7,
        1 << 30,
        -(1 << 31),
    ];
    if wide {
        v.extend([1i64 << 40, -(1i64 << 40), 3 << 33, -(5 << 45), (1 << 32) + (1 << 31)]);
    }
    for _ in 0..20 {
        v.push(rng.uniform(-1e6, 1e6) as i64);
    }
    let n = v.len();
    Tensor::from_vec(vec![n], v).unwrap_or_else(|e| unreachable!("a vector of n values: {e}"))
}

/// Values that probe float conversions: infinities, signed zero, f16
/// overflow and subnormals, exact ties (1 + 2^-11 rounds to even in f16,
/// 1 + 2^-8 in bf16) and random values over a wide range; an odd count (two
/// 16-bit values share a word on the GPU). No NaN: cases are compared with
/// `==` elsewhere (the ONNX node tests cover NaN).
fn cast_values(rng: &mut CaseRng) -> Tensor {
    let mut v = vec![
        f32::INFINITY,
        f32::NEG_INFINITY,
        -0.0,
        65504.0,
        65520.0,
        -1e6,
        1e38,
        1.0 + 2f32.powi(-11),
        1.0 + 3.0 * 2f32.powi(-11),
        1.0 + 2f32.powi(-8),
        1.0 + 3.0 * 2f32.powi(-8),
        6e-8,
        2.9e-8,
        1e-5,
        -3.3e-6,
        1e-40,
        -1e-30,
    ];
    for _ in 0..20 {
        let e = rng.uniform(-30.0, 20.0);
        v.push(rng.uniform(-1.0, 1.0) * 2f32.powf(e));
    }
    let n = v.len();
    Tensor::from_vec(vec![n], v).unwrap_or_else(|e| unreachable!("a vector of n values: {e}"))
}

/// `Cast`: attribute `to` (a dtype name: f32, f16, i64, ...).
pub const CAST: OpDef = OpDef {
    op_type: "Cast",
    build: |attrs: &Attrs| {
        let name = attr_str(attrs, "to", "")?;
        let to = DType::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| OpError::Attribute {
                name: "to".into(),
                message: format!("`{name}` is not a dtype wginfer knows (f32 f16 bf16 i8 u8 i32 i64 bool)"),
            })?;
        Ok(Arc::new(Cast { to }))
    },
    cases: || {
        let mut rng = CaseRng::new(35);
        vec![
            OpCase::new(
                "cast [3,17] f32->i64",
                Arc::new(Cast { to: DType::I64 }),
                vec![rng.tensor(&[3, 17], -9.0, 9.0)],
            ),
            OpCase::new(
                "cast [17] f32->f32",
                Arc::new(Cast { to: DType::F32 }),
                vec![rng.tensor(&[17], -9.0, 9.0)],
            ),
            OpCase::new(
                "cast f32->f16 (specials, ties, subnormals)",
                Arc::new(Cast { to: DType::F16 }),
                vec![cast_values(&mut rng)],
            ),
            OpCase::new(
                "cast f32->bf16 (specials, ties)",
                Arc::new(Cast { to: DType::BF16 }),
                vec![cast_values(&mut rng)],
            ),
            OpCase::new(
                "cast f16->f32",
                Arc::new(Cast { to: DType::F32 }),
                vec![cast_values(&mut rng).cast(DType::F16)],
            ),
            OpCase::new(
                "cast bf16->f32",
                Arc::new(Cast { to: DType::F32 }),
                vec![cast_values(&mut rng).cast(DType::BF16)],
            ),
            OpCase::new(
                "cast f16->bf16",
                Arc::new(Cast { to: DType::BF16 }),
                vec![cast_values(&mut rng).cast(DType::F16)],
            ),
            OpCase::new(
                "cast i64->f32 (a mask, i32-range and large values)",
                Arc::new(Cast { to: DType::F32 }),
                vec![int_values(&mut rng, true)],
            ),
            OpCase::new(
                "cast i32->f32",
                Arc::new(Cast { to: DType::F32 }),
                vec![int_values(&mut rng, false).cast(DType::I32)],
            ),
            OpCase::new(
                "cast i8->f32",
                Arc::new(Cast { to: DType::F32 }),
                vec![rng.tensor(&[5, 7], -128.0, 127.0).cast(DType::I8)],
            ),
            OpCase::new(
                "cast u8->f32",
                Arc::new(Cast { to: DType::F32 }),
                vec![rng.tensor(&[3, 11], 0.0, 255.0).cast(DType::U8)],
            ),
            OpCase::new(
                "cast bool->f32 (an attention mask)",
                Arc::new(Cast { to: DType::F32 }),
                vec![rng.tensor(&[2, 13], -1.0, 1.0).cast(DType::Bool)],
            ),
        ]
    },
    sample: |rng| {
        let s: Vec<usize> = (0..rng.range(1, 3)).map(|_| rng.dim(9)).collect();
        let x = rng.tensor(&s, -9.0, 9.0);
        OpCase::new(format!("cast {s:?} -> i32"), Arc::new(Cast { to: DType::I32 }), vec![x])
    },
};

/// ONNX `Cast` to a float8 type with `saturate = 0`: round to nearest even;
/// values beyond the largest finite one become NaN (E5M2: ±infinity), and
/// so do infinities.
#[derive(Clone, Debug)]
pub struct CastUnsaturated {
    /// The target: one of the four float8 dtypes.
    pub to: DType,
}

fn check_float8(to: DType) -> Result<(), OpError> {
    match to {
        DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ => Ok(()),
        other => Err(OpError::Attribute {
            name: "to".into(),
            message: format!("{other} is not a float8 type (only float8 casts saturate)"),
        }),
    }
}

impl Op for CastUnsaturated {
    fn op_type(&self) -> &'static str {
        "CastUnsaturated"
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("to".into(), self.to.name().into());
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        check_float8(self.to)?;
        Ok(vec![ValueType {
            dtype: self.to,
            shape: inputs[0].shape.clone(),
        }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 1, 1, "1")?;
        check_float8(self.to)?;
        let x = inputs[0].to_f64_vec();
        let storage = match self.to {
            DType::F8E4M3FN => Storage::F8E4M3FN(x.iter().map(|&v| F8E4M3FN::from_f64(v, false)).collect()),
            DType::F8E4M3FNUZ => Storage::F8E4M3FNUZ(x.iter().map(|&v| F8E4M3FNUZ::from_f64(v, false)).collect()),
            DType::F8E5M2 => Storage::F8E5M2(x.iter().map(|&v| F8E5M2::from_f64(v, false)).collect()),
            _ => Storage::F8E5M2FNUZ(x.iter().map(|&v| F8E5M2FNUZ::from_f64(v, false)).collect()),
        };
        Ok(vec![Tensor::new(inputs[0].shape().to_vec(), storage)?])
    }

    fn validation(&self) -> Validation {
        Validation::Exact
    }
}

fn float8_values(rng: &mut CaseRng, n: usize) -> Tensor {
    let mut t = rng.tensor(&[n], -600.0, 600.0);
    if let Ok(v) = t.as_slice::<f32>() {
        let mut v = v.to_vec();
        v.extend([
            f32::INFINITY,
            f32::NEG_INFINITY,
            f32::NAN,
            1e6,
            -1e6,
            0.0,
            -0.0,
            464.0,
            465.0,
        ]);
        t = Tensor::from_vec(vec![v.len()], v).unwrap_or(t);
    }
    t
}

/// `CastUnsaturated`: attribute `to` (a float8 dtype name).
pub const CAST_UNSATURATED: OpDef = OpDef {
    op_type: "CastUnsaturated",
    build: |attrs: &Attrs| {
        let name = attr_str(attrs, "to", "")?;
        let to = DType::ALL
            .into_iter()
            .find(|d| d.name() == name)
            .ok_or_else(|| OpError::Attribute {
                name: "to".into(),
                message: format!("`{name}` is not a dtype wginfer knows"),
            })?;
        check_float8(to)?;
        Ok(Arc::new(CastUnsaturated { to }))
    },
    cases: || {
        let mut rng = CaseRng::new(78);
        [DType::F8E4M3FN, DType::F8E4M3FNUZ, DType::F8E5M2, DType::F8E5M2FNUZ]
            .into_iter()
            .map(|to| {
                OpCase::new(
                    format!("cast f32 -> {to} unsaturated"),
                    Arc::new(CastUnsaturated { to }),
                    vec![float8_values(&mut rng, 40)],
                )
            })
            .collect()
    },
    sample: |rng| {
        let n = rng.dim(50);
        OpCase::new(
            "cast f32 -> f8e5m2 unsaturated",
            Arc::new(CastUnsaturated { to: DType::F8E5M2 }),
            vec![float8_values(rng, n)],
        )
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn unsaturated_float8_overflows_to_nan_or_infinity() {
        let x = Tensor::from_vec(vec![5], vec![1e6f32, f32::NEG_INFINITY, 448.0, 464.0, -1e-9]).unwrap();
        let y = |to| CastUnsaturated { to }.reference(&[&x]).unwrap().remove(0).to_f32_vec();
        let e4 = y(DType::F8E4M3FN);
        assert!(e4[0].is_nan() && e4[1].is_nan());
        assert_eq!(&e4[2..], &[448.0, 448.0, -0.0]);
        let e5 = y(DType::F8E5M2);
        assert_eq!(&e5[..3], &[f32::INFINITY, f32::NEG_INFINITY, 448.0]);
        let uz = y(DType::F8E5M2FNUZ);
        assert!(uz[0].is_nan() && uz[1].is_nan());
        assert!(CastUnsaturated { to: DType::F16 }.reference(&[&x]).is_err());
    }
}
