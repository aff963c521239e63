//! `DequantizeLinear` computed at run time: `y = (x - zero_point) * scale`
//! for integer `x` (2 to 32 bits) or float8/float4 `x` (whose zero point, if
//! given, must be zero), per tensor, per axis or per block, as ONNX defines
//! it (opset 10 to 25).
//!
//! The ONNX importer folds a dequantized constant weight at import (and may
//! pack it for [`QLinear`](crate::ops::qlinear::QLinear)); this op is for
//! values computed or fed at run time. The arithmetic is that of the ONNX
//! reference implementation: `x - zero_point` and the product in `f32`, then
//! one rounding to the output dtype (the scale's, unless set).

use std::sync::Arc;

use super::{attr_i64, attr_str, check_arity, normalize_axis, Attrs, CaseRng, Op, OpCase, OpDef, Validation};
use crate::error::OpError;
use crate::tensor::{DType, Dim, Tensor, ValueType};

/// `DequantizeLinear`: inputs `x`, `scale` and an optional `zero_point`
/// (the dtype of `x`, the shape of `scale`).
#[derive(Clone, Debug)]
pub struct DequantizeLinear {
    /// The quantization axis (per-axis and blocked scales); may be negative.
    pub axis: i64,
    /// Elements per block along `axis` (0: per tensor or per axis).
    pub block_size: usize,
    /// The output dtype; `None` takes the scale's.
    pub output: Option<DType>,
}

/// How the scale maps onto `x`.
enum Layout {
    /// One scale.
    Tensor,
    /// `scale[c]` for coordinate `c` along the axis: `outer` x `len` x `inner`.
    Axis { len: usize, inner: usize },
    /// `scale[o, c / block, i]` with `blocks` scales along the axis.
    Block {
        len: usize,
        inner: usize,
        blocks: usize,
        block: usize,
    },
}

fn is_quantized(d: DType) -> bool {
    matches!(
        d,
        DType::I8
            | DType::U8
            | DType::I16
            | DType::U16
            | DType::I32
            | DType::U32
            | DType::I4
            | DType::U4
            | DType::I2
            | DType::U2
            | DType::F8E4M3FN
            | DType::F8E4M3FNUZ
            | DType::F8E5M2
            | DType::F8E5M2FNUZ
            | DType::F4E2M1
    )
}

impl DequantizeLinear {
    fn output_dtype(&self, scale: DType) -> DType {
        self.output.unwrap_or(scale)
    }

    fn check_types(&self, x: DType, scale: DType, zero: Option<DType>) -> Result<(), OpError> {
        if !is_quantized(x) {
            return Err(OpError::DType {
                index: 0,
                expected: "an integer of 2 to 32 bits, float8 or float4",
                got: x,
            });
        }
        if !matches!(scale, DType::F32 | DType::F16 | DType::BF16) {
            return Err(OpError::DType {
                index: 1,
                expected: "f32, f16 or bf16",
                got: scale,
            });
        }
        if let Some(z) = zero.filter(|&z| z != x) {
            return Err(OpError::DType {
                index: 2,
                expected: x.name(),
                got: z,
            });
        }
        Ok(())
    }

    /// The layout of a scale of shape `scale` over `x`, checking the shapes.
    fn layout(&self, x: &[usize], scale: &[usize]) -> Result<Layout, OpError> {
        let count: usize = scale.iter().product();
        let bad = |why: String| OpError::Shape(format!("DequantizeLinear: scale {scale:?} for x {x:?}: {why}"));
        if self.block_size == 0 {
            if scale.len() <= 1 && count == 1 {
                return Ok(Layout::Tensor);
            }
            if scale.len() != 1 {
                return Err(bad("per-axis scales must be 1-D".into()));
            }
            let axis = normalize_axis(self.axis, x.len())?;
            if x[axis] != count {
                return Err(bad(format!("axis {axis} has {} elements, not {count}", x[axis])));
            }
            return Ok(Layout::Axis {
                len: x[axis],
                inner: x[axis + 1..].iter().product(),
            });
        }
        let axis = normalize_axis(self.axis, x.len())?;
        if scale.len() != x.len() {
            return Err(bad("blocked scales have the rank of x".into()));
        }
        for (i, (&d, &s)) in x.iter().zip(scale).enumerate() {
            let want = if i == axis { d.div_ceil(self.block_size) } else { d };
            if s != want {
                return Err(bad(format!(
                    "dimension {i} must be {want} (block size {})",
                    self.block_size
                )));
            }
        }
        Ok(Layout::Block {
            len: x[axis],
            inner: x[axis + 1..].iter().product(),
            blocks: scale[axis],
            block: self.block_size,
        })
    }
}

impl Op for DequantizeLinear {
    fn op_type(&self) -> &'static str {
        "DequantizeLinear"
    }

    fn attrs(&self) -> Attrs {
        let mut a = Attrs::new();
        a.insert("axis".into(), self.axis.into());
        a.insert("block_size".into(), (self.block_size as u64).into());
        if let Some(d) = self.output {
            a.insert("output_dtype".into(), d.name().into());
        }
        a
    }

    fn infer(&self, inputs: &[ValueType]) -> Result<Vec<ValueType>, OpError> {
        check_arity(inputs.len(), 2, 3, "2 or 3")?;
        let (x, scale) = (&inputs[0], &inputs[1]);
        self.check_types(x.dtype, scale.dtype, inputs.get(2).map(|z| z.dtype))?;
        if let Some(z) = inputs.get(2) {
            // One value may be shaped [] or [1] (as in ONNX's own tests).
            let single = |t: &ValueType| t.concrete_shape().is_some_and(|s| s.iter().product::<usize>() == 1);
            if z.shape != scale.shape && !(single(z) && single(scale)) {
                return Err(OpError::Shape(format!(
                    "DequantizeLinear: zero point {} and scale {} differ in shape",
                    z.shape_string(),
                    scale.shape_string()
                )));
            }
        }
        if let (Some(xs), Some(ss)) = (x.concrete_shape(), scale.concrete_shape()) {
            self.layout(&xs, &ss)?;
        }
        let shape: Vec<Dim> = x.shape.clone();
        Ok(vec![ValueType {
            dtype: self.output_dtype(scale.dtype),
            shape,
        }])
    }

    fn reference(&self, inputs: &[&Tensor]) -> Result<Vec<Tensor>, OpError> {
        check_arity(inputs.len(), 2, 3, "2 or 3")?;
        let (x, scale, zero) = (inputs[0], inputs[1], inputs.get(2).copied());
        self.check_types(x.dtype(), scale.dtype(), zero.map(Tensor::dtype))?;
        if let Some(z) = zero {
            if z.shape() != scale.shape() && !(z.numel() == 1 && scale.numel() == 1) {
                return Err(OpError::Shape(format!(
                    "DequantizeLinear: zero point {:?} and scale {:?} differ in shape",
                    z.shape(),
                    scale.shape()
                )));
            }
        }
        let layout = self.layout(x.shape(), scale.shape())?;
        let xv = x.to_f32_vec();
        let sv = scale.to_f32_vec();
        let zv = zero.map(Tensor::to_f32_vec);
        if x.dtype().is_float() && zv.as_ref().is_some_and(|z| z.iter().any(|&v| v != 0.0)) {
            return Err(OpError::Attribute {
                name: "x_zero_point".into(),
                message: format!("must be zero for {} input", x.dtype()),
            });
        }
        let y: Vec<f32> = xv
            .iter()
            .enumerate()
            .map(|(i, &q)| {
                let k = match layout {
                    Layout::Tensor => 0,
                    Layout::Axis { len, inner } => (i / inner) % len,
                    Layout::Block {
                        len,
                        inner,
                        blocks,
                        block,
                    } => {
                        let (o, c, r) = (i / (len * inner), (i / inner) % len, i % inner);
                        (o * blocks + c / block) * inner + r
                    }
                };
                let z = zv.as_ref().map_or(0.0, |z| z[k]);
                (q - z) * sv[k]
            })
            .collect();
        let out = Tensor::from_vec(x.shape().to_vec(), y)?;
        Ok(vec![out.cast(self.output_dtype(scale.dtype()))])
    }

    fn validation(&self) -> Validation {
        Validation::Exact
    }
}

fn build(attrs: &Attrs) -> Result<Arc<dyn Op>, OpError> {
    let block = attr_i64(attrs, "block_size", Some(0))?;
    let block_size = usize::try_from(block).map_err(|_| OpError::Attribute {
        name: "block_size".into(),
        message: format!("must be >= 0, got {block}"),
    })?;
    let output = match attr_str(attrs, "output_dtype", "")? {
        "" => None,
        name => Some(
            DType::ALL
                .into_iter()
                .find(|d| d.name() == name)
                .ok_or_else(|| OpError::Attribute {
                    name: "output_dtype".into(),
                    message: format!("`{name}` is not a dtype wginfer knows"),
                })?,
        ),
    };
    Ok(Arc::new(DequantizeLinear {
        axis: attr_i64(attrs, "axis", Some(1))?,
        block_size,
        output,
    }))
}

fn case(
    rng: &mut CaseRng,
    name: &str,
    op: DequantizeLinear,
    dt: DType,
    x: &[usize],
    scale: &[usize],
    zero: bool,
) -> OpCase {
    let (lo, hi) = match dt {
        DType::U8 => (0.0, 255.0),
        DType::U16 => (0.0, 65535.0),
        _ => (-128.0, 127.0),
    };
    let mut inputs = vec![rng.tensor(x, lo, hi).cast(dt), rng.tensor(scale, 0.01, 0.5)];
    if zero {
        inputs.push(rng.tensor(scale, lo / 4.0, hi / 4.0).cast(dt));
    }
    OpCase::new(name, Arc::new(op), inputs)
}

/// `DequantizeLinear`: attributes `axis` (default 1), `block_size` (default
/// 0) and `output_dtype` (a dtype name; default the scale's).
pub const DEQUANTIZE_LINEAR: OpDef = OpDef {
    op_type: "DequantizeLinear",
    build,
    cases: || {
        let mut rng = CaseRng::new(77);
        let op = |axis, block_size, output| DequantizeLinear {
            axis,
            block_size,
            output,
        };
        vec![
            case(
                &mut rng,
                "u8 per tensor",
                op(1, 0, None),
                DType::U8,
                &[3, 17],
                &[],
                true,
            ),
            case(
                &mut rng,
                "i8 per axis",
                op(1, 0, None),
                DType::I8,
                &[2, 3, 5],
                &[3],
                true,
            ),
            case(
                &mut rng,
                "i16 per axis -1",
                op(-1, 0, None),
                DType::I16,
                &[4, 7],
                &[7],
                false,
            ),
            case(
                &mut rng,
                "u16 blocks of 4 -> f16",
                op(1, 4, Some(DType::F16)),
                DType::U16,
                &[2, 10, 3],
                &[2, 3, 3],
                true,
            ),
            case(
                &mut rng,
                "i32 per tensor",
                op(0, 0, None),
                DType::I32,
                &[1000],
                &[1],
                true,
            ),
        ]
    },
    sample: |rng| {
        let rows = rng.dim(9);
        let cols = rng.dim(9);
        case(
            rng,
            "u8 per axis",
            DequantizeLinear {
                axis: 0,
                block_size: 0,
                output: None,
            },
            DType::U8,
            &[rows, cols],
            &[rows],
            true,
        )
    },
};

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn per_tensor_axis_and_block_values() {
        let op = DequantizeLinear {
            axis: 1,
            block_size: 0,
            output: None,
        };
        let x = Tensor::from_vec(vec![4], vec![0u8, 3, 128, 255]).unwrap();
        let s = Tensor::from_vec(vec![], vec![2.0f32]).unwrap();
        let z = Tensor::from_vec(vec![], vec![128u8]).unwrap();
        let y = op.reference(&[&x, &s, &z]).unwrap();
        assert_eq!(y[0].as_f32().unwrap(), &[-256.0, -250.0, 0.0, 254.0]);

        // Per axis 1 of [2, 2, 2]: scales 1 and 10.
        let x = Tensor::from_vec(vec![2, 2, 2], vec![1i16, 2, 3, 4, 5, 6, 7, 8]).unwrap();
        let s = Tensor::from_vec(vec![2], vec![1.0f32, 10.0]).unwrap();
        let y = op.reference(&[&x, &s]).unwrap();
        assert_eq!(y[0].as_f32().unwrap(), &[1.0, 2.0, 30.0, 40.0, 5.0, 6.0, 70.0, 80.0]);

        // Blocks of 2 along axis 0 of [3, 2] (the last block is short).
        let op = DequantizeLinear {
            axis: 0,
            block_size: 2,
            output: Some(DType::F16),
        };
        let x = Tensor::from_vec(vec![3, 2], vec![1i8, 2, 3, 4, 5, 6]).unwrap();
        let s = Tensor::from_vec(vec![2, 2], vec![1.0f32, 2.0, 3.0, 4.0]).unwrap();
        let z = Tensor::from_vec(vec![2, 2], vec![0i8, 1, 0, -1]).unwrap();
        let y = op.reference(&[&x, &s, &z]).unwrap();
        assert_eq!(y[0].dtype(), DType::F16);
        assert_eq!(y[0].to_f32_vec(), vec![1.0, 2.0, 3.0, 6.0, 15.0, 28.0]);
    }

    #[test]
    fn float8_and_int4_inputs() {
        let op = DequantizeLinear {
            axis: 0,
            block_size: 0,
            output: None,
        };
        let x = Tensor::from_vec(vec![3], vec![1.5f32, -2.0, 448.0])
            .unwrap()
            .cast(DType::F8E4M3FN);
        let s = Tensor::from_vec(vec![], vec![0.5f32]).unwrap();
        let z = Tensor::zeros(DType::F8E4M3FN, vec![1]);
        let y = op.reference(&[&x, &s, &z]).unwrap();
        assert_eq!(y[0].as_f32().unwrap(), &[0.75, -1.0, 224.0]);
        let z1 = Tensor::from_vec(vec![1], vec![1.0f32]).unwrap().cast(DType::F8E4M3FN);
        assert!(matches!(op.reference(&[&x, &s, &z1]), Err(OpError::Attribute { .. })));
        let x = Tensor::from_vec(vec![2], vec![-8i32, 7]).unwrap().cast(DType::I4);
        let z = Tensor::from_vec(vec![1], vec![1i32]).unwrap().cast(DType::I4);
        let s = Tensor::from_vec(vec![1], vec![2.0f32]).unwrap();
        let y = op.reference(&[&x, &s, &z]).unwrap();
        assert_eq!(y[0].as_f32().unwrap(), &[-18.0, 12.0]);
    }

    #[test]
    fn mismatches_are_typed_errors() {
        let op = DequantizeLinear {
            axis: 1,
            block_size: 0,
            output: None,
        };
        let x = Tensor::from_vec(vec![2, 3], vec![1i8; 6]).unwrap();
        let s = Tensor::from_vec(vec![2], vec![1.0f32; 2]).unwrap();
        assert!(matches!(op.reference(&[&x, &s]), Err(OpError::Shape(_))));
        let z = Tensor::from_vec(vec![], vec![1u8]).unwrap();
        let s1 = Tensor::from_vec(vec![], vec![1.0f32]).unwrap();
        assert!(matches!(
            op.reference(&[&x, &s1, &z]),
            Err(OpError::DType { index: 2, .. })
        ));
        let f = Tensor::from_vec(vec![2], vec![1.0f32; 2]).unwrap();
        assert!(matches!(op.reference(&[&f, &s1]), Err(OpError::DType { index: 0, .. })));
    }
}
