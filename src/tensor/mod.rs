//! Host tensors: a shape, a dtype and contiguous row-major data.
//!
//! Tensors are plain values owned by the host. Numeric work on the CPU is done
//! in `f32`; the other dtypes exist so that models, inputs and outputs round-trip
//! exactly (conversions go through [`half`] for `f16`/`bf16`).

mod dtype;
mod npy;
mod value_type;

pub use dtype::{DType, Element};
pub use npy::read_npy;
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
}

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
        }
    }

    /// Number of elements.
    pub fn len(&self) -> usize {
        match self {
            Storage::F32(v) => v.len(),
            Storage::F16(v) => v.len(),
            Storage::BF16(v) => v.len(),
            Storage::I8(v) => v.len(),
            Storage::U8(v) => v.len(),
            Storage::I32(v) => v.len(),
            Storage::I64(v) => v.len(),
            Storage::Bool(v) => v.len(),
        }
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
        let expected = numel(&shape);
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

    /// The elements converted to `f32` (integers and booleans by value).
    pub fn to_f32_vec(&self) -> Vec<f32> {
        match &self.storage {
            Storage::F32(v) => v.clone(),
            Storage::F16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Storage::BF16(v) => v.iter().map(|x| x.to_f32()).collect(),
            Storage::I8(v) => v.iter().map(|&x| x as f32).collect(),
            Storage::U8(v) => v.iter().map(|&x| x as f32).collect(),
            Storage::I32(v) => v.iter().map(|&x| x as f32).collect(),
            Storage::I64(v) => v.iter().map(|&x| x as f32).collect(),
            Storage::Bool(v) => v.iter().map(|&x| if x { 1.0 } else { 0.0 }).collect(),
        }
    }

    /// The elements converted to `i64` (floats truncated toward zero).
    pub fn to_i64_vec(&self) -> Vec<i64> {
        match &self.storage {
            Storage::F32(v) => v.iter().map(|&x| x as i64).collect(),
            Storage::F16(v) => v.iter().map(|x| x.to_f32() as i64).collect(),
            Storage::BF16(v) => v.iter().map(|x| x.to_f32() as i64).collect(),
            Storage::I8(v) => v.iter().map(|&x| x as i64).collect(),
            Storage::U8(v) => v.iter().map(|&x| x as i64).collect(),
            Storage::I32(v) => v.iter().map(|&x| x as i64).collect(),
            Storage::I64(v) => v.clone(),
            Storage::Bool(v) => v.iter().map(|&x| x as i64).collect(),
        }
    }

    /// Converts to another dtype. Float to integer truncates toward zero and
    /// saturates; anything to bool is `x != 0`.
    pub fn cast(&self, dtype: DType) -> Tensor {
        if dtype == self.dtype() {
            return self.clone();
        }
        let storage = match dtype {
            DType::F32 => Storage::F32(self.to_f32_vec()),
            DType::F16 => Storage::F16(self.to_f32_vec().into_iter().map(f16::from_f32).collect()),
            DType::BF16 => Storage::BF16(self.to_f32_vec().into_iter().map(bf16::from_f32).collect()),
            DType::I8 => Storage::I8(self.cast_ints(|x| x.clamp(i8::MIN as i64, i8::MAX as i64) as i8)),
            DType::U8 => Storage::U8(self.cast_ints(|x| x.clamp(0, u8::MAX as i64) as u8)),
            DType::I32 => Storage::I32(self.cast_ints(|x| x.clamp(i32::MIN as i64, i32::MAX as i64) as i32)),
            DType::I64 => Storage::I64(self.to_i64_vec()),
            DType::Bool => Storage::Bool(self.to_f32_vec().into_iter().map(|x| x != 0.0).collect()),
        };
        Tensor {
            shape: self.shape.clone(),
            storage,
        }
    }

    fn cast_ints<T>(&self, f: impl Fn(i64) -> T) -> Vec<T> {
        match &self.storage {
            Storage::I64(v) => v.iter().map(|&x| f(x)).collect(),
            _ => self.to_f32_vec().into_iter().map(|x| f(x as f64 as i64)).collect(),
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
        let n = numel(&shape);
        let expected = n * dtype.size_in_bytes();
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
        let storage = match &self.storage {
            Storage::F32(v) => Storage::F32(v[a..b].to_vec()),
            Storage::F16(v) => Storage::F16(v[a..b].to_vec()),
            Storage::BF16(v) => Storage::BF16(v[a..b].to_vec()),
            Storage::I8(v) => Storage::I8(v[a..b].to_vec()),
            Storage::U8(v) => Storage::U8(v[a..b].to_vec()),
            Storage::I32(v) => Storage::I32(v[a..b].to_vec()),
            Storage::I64(v) => Storage::I64(v[a..b].to_vec()),
            Storage::Bool(v) => Storage::Bool(v[a..b].to_vec()),
        };
        let mut shape = self.shape.clone();
        shape[0] = end - start;
        Ok(Tensor { shape, storage })
    }
}

/// The number of elements of a shape (1 for a scalar).
pub fn numel(shape: &[usize]) -> usize {
    shape.iter().product()
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
