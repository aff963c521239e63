//! Host tensors: a shape, a dtype and contiguous row-major data.
//!
//! Tensors are plain values owned by the host. Numeric work on the CPU is done
//! in `f32`; the other dtypes exist so that models, inputs and outputs round-trip
//! exactly (conversions go through [`half`] for `f16`/`bf16`).
#![forbid(unsafe_code)]

mod dtype;
mod limits;
pub mod lowp;
mod npy;
mod scalar;
mod value_type;

pub use dtype::{DType, Element};
pub use limits::{alloc_limit, check_alloc, checked_bytes, checked_numel, read_regular_file, MAX_ALLOC_ENV};
pub use npy::read_npy;
pub use scalar::{Scalar, ScalarValue};
pub use value_type::{Dim, ValueType};

use half::{bf16, f16};

use crate::error::TensorError;

/// The data of a tensor, one variant per [`DType`].
#[derive(Clone, Debug, PartialEq)]
pub enum Storage {
    /// 32-bit floats.
    F32(Vec<f32>),
    /// IEEE half floats.
    F16(Vec<f16>),
    /// bfloat16.
    BF16(Vec<bf16>),
    /// Signed bytes.
    I8(Vec<i8>),
    /// Unsigned bytes.
    U8(Vec<u8>),
    /// 32-bit integers.
    I32(Vec<i32>),
    /// 64-bit integers.
    I64(Vec<i64>),
    /// Booleans.
    Bool(Vec<bool>),
    /// 64-bit floats.
    F64(Vec<f64>),
    /// Signed 16-bit integers.
    I16(Vec<i16>),
    /// Unsigned 16-bit integers.
    U16(Vec<u16>),
    /// Unsigned 32-bit integers.
    U32(Vec<u32>),
    /// Unsigned 64-bit integers.
    U64(Vec<u64>),
    /// float8 E4M3FN bit patterns.
    F8E4M3FN(Vec<lowp::F8E4M3FN>),
    /// float8 E4M3FNUZ bit patterns.
    F8E4M3FNUZ(Vec<lowp::F8E4M3FNUZ>),
    /// float8 E5M2 bit patterns.
    F8E5M2(Vec<lowp::F8E5M2>),
    /// float8 E5M2FNUZ bit patterns.
    F8E5M2FNUZ(Vec<lowp::F8E5M2FNUZ>),
    /// float4 E2M1 bit patterns, one per byte.
    F4E2M1(Vec<lowp::F4E2M1>),
    /// Signed 4-bit integers, one per byte.
    I4(Vec<lowp::I4>),
    /// Unsigned 4-bit integers, one per byte.
    U4(Vec<lowp::U4>),
    /// Signed 2-bit integers, one per byte.
    I2(Vec<lowp::I2>),
    /// Unsigned 2-bit integers, one per byte.
    U2(Vec<lowp::U2>),
    /// float8 E8M0 bit patterns.
    F8E8M0(Vec<lowp::F8E8M0>),
}

/// Runs `$body` with `$v` bound to the vector inside any storage variant.
macro_rules! with_storage {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            $crate::tensor::Storage::F32($v) => $body,
            $crate::tensor::Storage::F16($v) => $body,
            $crate::tensor::Storage::BF16($v) => $body,
            $crate::tensor::Storage::I8($v) => $body,
            $crate::tensor::Storage::U8($v) => $body,
            $crate::tensor::Storage::I32($v) => $body,
            $crate::tensor::Storage::I64($v) => $body,
            $crate::tensor::Storage::Bool($v) => $body,
            $crate::tensor::Storage::F64($v) => $body,
            $crate::tensor::Storage::I16($v) => $body,
            $crate::tensor::Storage::U16($v) => $body,
            $crate::tensor::Storage::U32($v) => $body,
            $crate::tensor::Storage::U64($v) => $body,
            $crate::tensor::Storage::F8E4M3FN($v) => $body,
            $crate::tensor::Storage::F8E4M3FNUZ($v) => $body,
            $crate::tensor::Storage::F8E5M2($v) => $body,
            $crate::tensor::Storage::F8E5M2FNUZ($v) => $body,
            $crate::tensor::Storage::F4E2M1($v) => $body,
            $crate::tensor::Storage::I4($v) => $body,
            $crate::tensor::Storage::U4($v) => $body,
            $crate::tensor::Storage::I2($v) => $body,
            $crate::tensor::Storage::U2($v) => $body,
            $crate::tensor::Storage::F8E8M0($v) => $body,
        }
    };
}

/// Like `with_storage!`, rebuilding the same variant from `$body`'s vector.
macro_rules! map_storage {
    ($s:expr, $v:ident => $body:expr) => {
        match $s {
            $crate::tensor::Storage::F32($v) => $crate::tensor::Storage::F32($body),
            $crate::tensor::Storage::F16($v) => $crate::tensor::Storage::F16($body),
            $crate::tensor::Storage::BF16($v) => $crate::tensor::Storage::BF16($body),
            $crate::tensor::Storage::I8($v) => $crate::tensor::Storage::I8($body),
            $crate::tensor::Storage::U8($v) => $crate::tensor::Storage::U8($body),
            $crate::tensor::Storage::I32($v) => $crate::tensor::Storage::I32($body),
            $crate::tensor::Storage::I64($v) => $crate::tensor::Storage::I64($body),
            $crate::tensor::Storage::Bool($v) => $crate::tensor::Storage::Bool($body),
            $crate::tensor::Storage::F64($v) => $crate::tensor::Storage::F64($body),
            $crate::tensor::Storage::I16($v) => $crate::tensor::Storage::I16($body),
            $crate::tensor::Storage::U16($v) => $crate::tensor::Storage::U16($body),
            $crate::tensor::Storage::U32($v) => $crate::tensor::Storage::U32($body),
            $crate::tensor::Storage::U64($v) => $crate::tensor::Storage::U64($body),
            $crate::tensor::Storage::F8E4M3FN($v) => $crate::tensor::Storage::F8E4M3FN($body),
            $crate::tensor::Storage::F8E4M3FNUZ($v) => $crate::tensor::Storage::F8E4M3FNUZ($body),
            $crate::tensor::Storage::F8E5M2($v) => $crate::tensor::Storage::F8E5M2($body),
            $crate::tensor::Storage::F8E5M2FNUZ($v) => $crate::tensor::Storage::F8E5M2FNUZ($body),
            $crate::tensor::Storage::F4E2M1($v) => $crate::tensor::Storage::F4E2M1($body),
            $crate::tensor::Storage::I4($v) => $crate::tensor::Storage::I4($body),
            $crate::tensor::Storage::U4($v) => $crate::tensor::Storage::U4($body),
            $crate::tensor::Storage::I2($v) => $crate::tensor::Storage::I2($body),
            $crate::tensor::Storage::U2($v) => $crate::tensor::Storage::U2($body),
            $crate::tensor::Storage::F8E8M0($v) => $crate::tensor::Storage::F8E8M0($body),
        }
    };
}
pub(crate) use map_storage;

impl Storage {
    /// The dtype of this storage.
    pub fn dtype(&self) -> DType {
        match self {
            Storage::F32(_) => DType::F32,
            Storage::F16(_) => DType::F16,
            Storage::BF16(_) => DType::BF16,
            Storage::I8(_) => DType::I8,
            Storage::U8(_) => DType::U8,
            Storage::I32(_) => DType::I32,
            Storage::I64(_) => DType::I64,
            Storage::Bool(_) => DType::Bool,
            Storage::F64(_) => DType::F64,
            Storage::I16(_) => DType::I16,
            Storage::U16(_) => DType::U16,
            Storage::U32(_) => DType::U32,
            Storage::U64(_) => DType::U64,
            Storage::F8E4M3FN(_) => DType::F8E4M3FN,
            Storage::F8E4M3FNUZ(_) => DType::F8E4M3FNUZ,
            Storage::F8E5M2(_) => DType::F8E5M2,
            Storage::F8E5M2FNUZ(_) => DType::F8E5M2FNUZ,
            Storage::F4E2M1(_) => DType::F4E2M1,
            Storage::I4(_) => DType::I4,
            Storage::U4(_) => DType::U4,
            Storage::I2(_) => DType::I2,
            Storage::U2(_) => DType::U2,
            Storage::F8E8M0(_) => DType::F8E8M0,
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        with_storage!(self, v => v.len())
    }

    /// True when there are no elements.
    pub fn is_empty(&self) -> bool {
        self.len() == 0
    }
}

/// A host tensor: row-major (C order) data of `shape.iter().product()` elements.
///
/// A tensor of shape `[]` is a scalar holding one element.
#[derive(Clone, Debug, PartialEq)]
pub struct Tensor {
    shape: Vec<usize>,
    storage: Storage,
}

impl Tensor {
    /// Makes a tensor, checking that the data holds exactly one element per
    /// position of the shape.
    pub fn new(shape: Vec<usize>, storage: Storage) -> Result<Self, TensorError> {
        let expected = checked_numel(&shape)?;
        if expected != storage.len() {
            return Err(TensorError::ShapeDataMismatch {
                shape,
                expected,
                got: storage.len(),
            });
        }
        Ok(Self { shape, storage })
    }

    /// Makes a tensor from a vector of any element type.
    pub fn from_vec<T: Element>(shape: Vec<usize>, data: Vec<T>) -> Result<Self, TensorError> {
        Self::new(shape, T::wrap(data))
    }

    /// A tensor of zeros.
    pub fn zeros(dtype: DType, shape: Vec<usize>) -> Self {
        let n = numel(&shape);
        let storage = match dtype {
            DType::F32 => Storage::F32(vec![0.0; n]),
            DType::F16 => Storage::F16(vec![f16::ZERO; n]),
            DType::BF16 => Storage::BF16(vec![bf16::ZERO; n]),
            DType::I8 => Storage::I8(vec![0; n]),
            DType::U8 => Storage::U8(vec![0; n]),
            DType::I32 => Storage::I32(vec![0; n]),
            DType::I64 => Storage::I64(vec![0; n]),
            DType::Bool => Storage::Bool(vec![false; n]),
            DType::F64 => Storage::F64(vec![0.0; n]),
            DType::I16 => Storage::I16(vec![0; n]),
            DType::U16 => Storage::U16(vec![0; n]),
            DType::U32 => Storage::U32(vec![0; n]),
            DType::U64 => Storage::U64(vec![0; n]),
            DType::F8E4M3FN => Storage::F8E4M3FN(vec![Default::default(); n]),
            DType::F8E4M3FNUZ => Storage::F8E4M3FNUZ(vec![Default::default(); n]),
            DType::F8E5M2 => Storage::F8E5M2(vec![Default::default(); n]),
            DType::F8E5M2FNUZ => Storage::F8E5M2FNUZ(vec![Default::default(); n]),
            DType::F4E2M1 => Storage::F4E2M1(vec![Default::default(); n]),
            DType::I4 => Storage::I4(vec![Default::default(); n]),
            DType::U4 => Storage::U4(vec![Default::default(); n]),
            DType::I2 => Storage::I2(vec![Default::default(); n]),
            DType::U2 => Storage::U2(vec![Default::default(); n]),
            DType::F8E8M0 => Storage::F8E8M0(vec![Default::default(); n]),
        };
        Self { shape, storage }
    }

    /// The shape.
    pub fn shape(&self) -> &[usize] {
        &self.shape
    }

    /// The number of dimensions.
    pub fn rank(&self) -> usize {
        self.shape.len()
    }

    /// The dtype.
    pub fn dtype(&self) -> DType {
        self.storage.dtype()
    }

    /// Number of elements.
    pub fn numel(&self) -> usize {
        self.storage.len()
    }

    /// Size of the data in bytes.
    pub fn size_in_bytes(&self) -> usize {
        self.numel() * self.dtype().size_in_bytes()
    }

    /// The storage.
    pub fn storage(&self) -> &Storage {
        &self.storage
    }

    /// Takes the storage out of the tensor.
    pub fn into_storage(self) -> Storage {
        self.storage
    }

    /// The elements as a slice of `T`, when `T` is the tensor's dtype.
    pub fn as_slice<T: Element>(&self) -> Result<&[T], TensorError> {
        T::view(&self.storage).ok_or(TensorError::DTypeMismatch {
            expected: T::DTYPE,
            got: self.dtype(),
        })
    }

    /// The elements as `f32` (a borrowed slice, no copy).
    pub fn as_f32(&self) -> Result<&[f32], TensorError> {
        self.as_slice::<f32>()
    }

    /// Takes the elements out as a `Vec<T>`, when `T` is the tensor's dtype.
    pub fn into_vec<T: Element>(self) -> Result<Vec<T>, TensorError> {
        let got = self.dtype();
        T::unwrap(self.storage).ok_or(TensorError::DTypeMismatch {
            expected: T::DTYPE,
            got,
        })
    }

    /// The elements converted to `f32` (integers and booleans by value,
    /// rounded to nearest).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.storage {
            Storage::F32(v) => v.clone(),
            s => with_storage!(s, v => v.iter().map(|&x| Scalar::to_f32(x)).collect()),
        }
    }

    /// The elements converted to `f64`.
    pub fn to_f64_vec(&self) -> Vec<f64> {
        with_storage!(&self.storage, v => v.iter().map(|&x| Scalar::to_f64(x)).collect())
    }

    /// The elements converted to `i64` (floats truncated toward zero and
    /// saturated, `u64` wrapped).
    pub fn to_i64_vec(&self) -> Vec<i64> {
        match &self.storage {
            Storage::I64(v) => v.clone(),
            s => with_storage!(s, v => v.iter().map(|&x| i64::from_scalar(x)).collect()),
        }
    }

    /// Converts to another dtype, as NumPy's `astype` and ONNX `Cast` do:
    /// integer to integer wraps (keeps the low bits); float to integer
    /// truncates toward zero and saturates (NaN becomes 0); to a float type
    /// rounds to nearest even (once, from the exact value); anything to bool
    /// is `x != 0` (NaN is true); bool is 0 or 1.
    pub fn cast(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        let s = &self.storage;
        let storage = match (s, dtype) {
            // Direct conversions (the same results, without the detour through f64).
            (Storage::F32(v), DType::F16) => Storage::F16(v.iter().map(|&x| f16::from_f32(x)).collect()),
            (Storage::F32(v), DType::BF16) => Storage::BF16(v.iter().map(|&x| bf16::from_f32(x)).collect()),
            (Storage::F16(v), DType::F32) => Storage::F32(v.iter().map(|x| x.to_f32()).collect()),
            (Storage::BF16(v), DType::F32) => Storage::F32(v.iter().map(|x| x.to_f32()).collect()),
            _ => self.cast_general(dtype),
        };
        Tensor {
            shape: self.shape.clone(),
            storage,
        }
    }

    fn cast_general(&self, dtype: DType) -> Storage {
        fn conv<T: Scalar>(s: &Storage) -> Vec<T> {
            with_storage!(s, v => v.iter().map(|&x| T::from_scalar(x)).collect())
        }
        let s = &self.storage;
        match dtype {
            DType::F32 => Storage::F32(conv(s)),
            DType::F16 => Storage::F16(conv(s)),
            DType::BF16 => Storage::BF16(conv(s)),
            DType::I8 => Storage::I8(conv(s)),
            DType::U8 => Storage::U8(conv(s)),
            DType::I32 => Storage::I32(conv(s)),
            DType::I64 => Storage::I64(conv(s)),
            DType::Bool => Storage::Bool(conv(s)),
            DType::F64 => Storage::F64(conv(s)),
            DType::I16 => Storage::I16(conv(s)),
            DType::U16 => Storage::U16(conv(s)),
            DType::U32 => Storage::U32(conv(s)),
            DType::U64 => Storage::U64(conv(s)),
            DType::F8E4M3FN => Storage::F8E4M3FN(conv(s)),
            DType::F8E4M3FNUZ => Storage::F8E4M3FNUZ(conv(s)),
            DType::F8E5M2 => Storage::F8E5M2(conv(s)),
            DType::F8E5M2FNUZ => Storage::F8E5M2FNUZ(conv(s)),
            DType::F4E2M1 => Storage::F4E2M1(conv(s)),
            DType::I4 => Storage::I4(conv(s)),
            DType::U4 => Storage::U4(conv(s)),
            DType::I2 => Storage::I2(conv(s)),
            DType::U2 => Storage::U2(conv(s)),
            DType::F8E8M0 => Storage::F8E8M0(conv(s)),
        }
    }

    /// Same data, another shape with the same number of elements.
    pub fn reshape(self, shape: Vec<usize>) -> Result<Tensor, TensorError> {
        if numel(&shape) != self.numel() {
            return Err(TensorError::ReshapeMismatch {
                from: self.shape,
                to: shape,
            });
        }
        Ok(Tensor {
            shape,
            storage: self.storage,
        })
    }

    /// Reads little-endian bytes of the given dtype and shape.
    pub fn from_le_bytes(dtype: DType, shape: Vec<usize>, bytes: &[u8]) -> Result<Self, TensorError> {
        let expected = checked_bytes(dtype, &shape)?;
        if bytes.len() != expected {
            return Err(TensorError::ByteLengthMismatch {
                dtype,
                shape,
                expected,
                got: bytes.len(),
            });
        }
        fn read<T: bytemuck::Pod, const N: usize>(b: &[u8], f: impl Fn([u8; N]) -> T) -> Vec<T> {
            b.chunks_exact(N)
                .map(|c| {
                    let mut a = [0u8; N];
                    a.copy_from_slice(c);
                    f(a)
                })
                .collect()
        }
        let storage = match dtype {
            DType::F32 => Storage::F32(read(bytes, f32::from_le_bytes)),
            DType::F16 => Storage::F16(read(bytes, f16::from_le_bytes)),
            DType::BF16 => Storage::BF16(read(bytes, bf16::from_le_bytes)),
            DType::I8 => Storage::I8(bytes.iter().map(|&b| b as i8).collect()),
            DType::U8 => Storage::U8(bytes.to_vec()),
            DType::I32 => Storage::I32(read(bytes, i32::from_le_bytes)),
            DType::I64 => Storage::I64(read(bytes, i64::from_le_bytes)),
            DType::F64 => Storage::F64(read(bytes, f64::from_le_bytes)),
            DType::I16 => Storage::I16(read(bytes, i16::from_le_bytes)),
            DType::U16 => Storage::U16(read(bytes, u16::from_le_bytes)),
            DType::U32 => Storage::U32(read(bytes, u32::from_le_bytes)),
            DType::U64 => Storage::U64(read(bytes, u64::from_le_bytes)),
            // One byte each: the bit pattern (sub-byte types: the low bits).
            DType::F8E4M3FN => Storage::F8E4M3FN(bytes.iter().map(|&b| lowp::F8E4M3FN(b)).collect()),
            DType::F8E4M3FNUZ => Storage::F8E4M3FNUZ(bytes.iter().map(|&b| lowp::F8E4M3FNUZ(b)).collect()),
            DType::F8E5M2 => Storage::F8E5M2(bytes.iter().map(|&b| lowp::F8E5M2(b)).collect()),
            DType::F8E5M2FNUZ => Storage::F8E5M2FNUZ(bytes.iter().map(|&b| lowp::F8E5M2FNUZ(b)).collect()),
            DType::F4E2M1 => Storage::F4E2M1(bytes.iter().map(|&b| lowp::F4E2M1(b & 0xf)).collect()),
            DType::I4 => Storage::I4(bytes.iter().map(|&b| lowp::I4::from_bits(b)).collect()),
            DType::U4 => Storage::U4(bytes.iter().map(|&b| lowp::U4::from_bits(b)).collect()),
            DType::I2 => Storage::I2(bytes.iter().map(|&b| lowp::I2::from_bits(b)).collect()),
            DType::U2 => Storage::U2(bytes.iter().map(|&b| lowp::U2::from_bits(b)).collect()),
            DType::F8E8M0 => Storage::F8E8M0(bytes.iter().map(|&b| lowp::F8E8M0(b)).collect()),
            DType::Bool => {
                if let Some(pos) = bytes.iter().position(|&b| b > 1) {
                    return Err(TensorError::InvalidBool {
                        index: pos,
                        byte: bytes[pos],
                    });
                }
                Storage::Bool(bytes.iter().map(|&b| b != 0).collect())
            }
        };
        Ok(Self { shape, storage })
    }

    /// The data as little-endian bytes.
    pub fn to_le_bytes(&self) -> Vec<u8> {
        fn write<T: Copy, const N: usize>(v: &[T], f: impl Fn(T) -> [u8; N]) -> Vec<u8> {
            let mut out = Vec::with_capacity(v.len() * N);
            for &x in v {
                out.extend_from_slice(&f(x));
            }
            out
        }
        match &self.storage {
            Storage::F32(v) => write(v, f32::to_le_bytes),
            Storage::F16(v) => write(v, f16::to_le_bytes),
            Storage::BF16(v) => write(v, bf16::to_le_bytes),
            Storage::I8(v) => v.iter().map(|&x| x as u8).collect(),
            Storage::U8(v) => v.clone(),
            Storage::I32(v) => write(v, i32::to_le_bytes),
            Storage::I64(v) => write(v, i64::to_le_bytes),
            Storage::Bool(v) => v.iter().map(|&x| x as u8).collect(),
            Storage::F64(v) => write(v, f64::to_le_bytes),
            Storage::I16(v) => write(v, i16::to_le_bytes),
            Storage::U16(v) => write(v, u16::to_le_bytes),
            Storage::U32(v) => write(v, u32::to_le_bytes),
            Storage::U64(v) => write(v, u64::to_le_bytes),
            Storage::F8E4M3FN(v) => v.iter().map(|x| x.0).collect(),
            Storage::F8E4M3FNUZ(v) => v.iter().map(|x| x.0).collect(),
            Storage::F8E5M2(v) => v.iter().map(|x| x.0).collect(),
            Storage::F8E5M2FNUZ(v) => v.iter().map(|x| x.0).collect(),
            Storage::F4E2M1(v) => v.iter().map(|x| x.0).collect(),
            Storage::I4(v) => v.iter().map(|x| x.to_bits()).collect(),
            Storage::U4(v) => v.iter().map(|x| x.to_bits()).collect(),
            Storage::I2(v) => v.iter().map(|x| x.to_bits()).collect(),
            Storage::U2(v) => v.iter().map(|x| x.to_bits()).collect(),
            Storage::F8E8M0(v) => v.iter().map(|x| x.0).collect(),
        }
    }

    /// Rows `start..end` along the first axis (a copy).
    pub fn slice_rows(&self, start: usize, end: usize) -> Result<Tensor, TensorError> {
        let rows = self.shape.first().copied().unwrap_or(0);
        if self.shape.is_empty() || start > end || end > rows {
            return Err(TensorError::RowRange {
                shape: self.shape.clone(),
                start,
                end,
            });
        }
        let row = numel(&self.shape[1..]);
        let (a, b) = (start * row, end * row);
        let storage = map_storage!(&self.storage, v => v[a..b].to_vec());
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        Ok(Tensor { shape, storage })
    }
}

/// The number of elements of a shape (1 for a scalar), saturating at
/// `usize::MAX` where the dimensions multiply past it (such a count matches
/// no data, so a check against a data length fails rather than passing on a
/// wrapped count). Sizes taken from user data use [`checked_numel`].
pub fn numel(shape: &[usize]) -> usize {
    checked_numel(shape).unwrap_or(usize::MAX)
}

/// Row-major strides of a shape, in elements.
pub fn strides(shape: &[usize]) -> Vec<usize> {
    let mut s = vec![1; shape.len()];
    for i in (0..shape.len().saturating_sub(1)).rev() {
        s[i] = s[i + 1] * shape[i + 1];
    }
    s
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn bytes_round_trip_every_dtype() {
        let t = Tensor::from_vec(vec![2, 2], vec![1.5f32, -2.0, 0.0, 3.25]).unwrap();
        for dt in DType::ALL {
            let c = t.cast(dt);
            let back = Tensor::from_le_bytes(dt, vec![2, 2], &c.to_le_bytes()).unwrap();
            assert_eq!(back, c, "{dt}");
        }
    }

    #[test]
    fn shape_mismatch_is_an_error() {
        let e = Tensor::from_vec(vec![2, 3], vec![1.0f32; 5]).unwrap_err();
        assert!(e.to_string().contains("6"), "{e}");
    }

    #[test]
    fn half_conversions() {
        let t = Tensor::from_vec(vec![3], vec![1.0f32, 0.1, 65504.0]).unwrap();
        let h = t.cast(DType::F16).to_f32_vec();
        assert_eq!(h[0], 1.0);
        assert!((h[1] - 0.1).abs() < 1e-4);
        assert_eq!(h[2], 65504.0);
        let b = t.cast(DType::BF16).to_f32_vec();
        assert!((b[1] - 0.1).abs() < 1e-3);
    }
}
