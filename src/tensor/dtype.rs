//! Element types.

use std::fmt;

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use super::Storage;

/// The element type of a tensor.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash, Serialize, Deserialize, PartialOrd, Ord)]
#[serde(rename_all = "lowercase")]
pub enum DType {
    /// 32-bit IEEE float.
    F32,
    /// 16-bit IEEE float.
    F16,
    /// bfloat16.
    BF16,
    /// Signed 8-bit integer.
    I8,
    /// Unsigned 8-bit integer.
    U8,
    /// Signed 32-bit integer.
    I32,
    /// Signed 64-bit integer.
    I64,
    /// Boolean, one byte each (0 or 1).
    Bool,
}

impl DType {
    /// Every dtype, in declaration order.
    pub const ALL: [DType; 8] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::U8,
        DType::I32,
        DType::I64,
        DType::Bool,
    ];

    /// Bytes per element.
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 => 4,
            DType::F16 | DType::BF16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::I64 => 8,
        }
    }

    /// The lowercase name used in model files and on the command line.
    pub fn name(self) -> &'static str {
        match self {
            DType::F32 => "f32",
            DType::F16 => "f16",
            DType::BF16 => "bf16",
            DType::I8 => "i8",
            DType::U8 => "u8",
            DType::I32 => "i32",
            DType::I64 => "i64",
            DType::Bool => "bool",
        }
    }

    /// True for the floating-point dtypes.
    pub fn is_float(self) -> bool {
        matches!(self, DType::F32 | DType::F16 | DType::BF16)
    }

    /// The matching safetensors dtype.
    pub fn to_safetensors(self) -> safetensors::Dtype {
        use safetensors::Dtype as S;
        match self {
            DType::F32 => S::F32,
            DType::F16 => S::F16,
            DType::BF16 => S::BF16,
            DType::I8 => S::I8,
            DType::U8 => S::U8,
            DType::I32 => S::I32,
            DType::I64 => S::I64,
            DType::Bool => S::BOOL,
        }
    }

    /// The dtype for a safetensors dtype, if wginfer has one.
    pub fn from_safetensors(d: safetensors::Dtype) -> Option<DType> {
        use safetensors::Dtype as S;
        Some(match d {
            S::F32 => DType::F32,
            S::F16 => DType::F16,
            S::BF16 => DType::BF16,
            S::I8 => DType::I8,
            S::U8 => DType::U8,
            S::I32 => DType::I32,
            S::I64 => DType::I64,
            S::BOOL => DType::Bool,
            _ => return None,
        })
    }
}

impl fmt::Display for DType {
    fn fmt(&self, f: &mut fmt::Formatter<'_>) -> fmt::Result {
        f.write_str(self.name())
    }
}

/// A Rust type that is the element of one [`DType`].
pub trait Element: Copy + Send + Sync + fmt::Debug + 'static {
    /// The dtype of this element type.
    const DTYPE: DType;
    /// Wraps a vector into storage.
    fn wrap(v: Vec<Self>) -> Storage;
    /// Borrows the storage as a slice, if it holds this type.
    fn view(s: &Storage) -> Option<&[Self]>;
    /// Takes the vector out of storage, if it holds this type.
    fn unwrap(s: Storage) -> Option<Vec<Self>>;
}

macro_rules! element {
    ($t:ty, $dt:ident) => {
        impl Element for $t {
            const DTYPE: DType = DType::$dt;
            fn wrap(v: Vec<Self>) -> Storage {
                Storage::$dt(v)
            }
            fn view(s: &Storage) -> Option<&[Self]> {
                match s {
                    Storage::$dt(v) => Some(v),
                    _ => None,
                }
            }
            fn unwrap(s: Storage) -> Option<Vec<Self>> {
                match s {
                    Storage::$dt(v) => Some(v),
                    _ => None,
                }
            }
        }
    };
}

element!(f32, F32);
element!(f16, F16);
element!(bf16, BF16);
element!(i8, I8);
element!(u8, U8);
element!(i32, I32);
element!(i64, I64);
element!(bool, Bool);
