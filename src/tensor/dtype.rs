//! Element types.

use std::fmt;

use half::{bf16, f16};
use serde::{Deserialize, Serialize};

use super::{lowp, Storage};

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
    /// 64-bit IEEE float.
    F64,
    /// Signed 16-bit integer.
    I16,
    /// Unsigned 16-bit integer.
    U16,
    /// Unsigned 32-bit integer.
    U32,
    /// Unsigned 64-bit integer.
    U64,
    /// float8 E4M3FN (one byte each; see [`lowp`](super::lowp)).
    F8E4M3FN,
    /// float8 E4M3FNUZ.
    F8E4M3FNUZ,
    /// float8 E5M2.
    F8E5M2,
    /// float8 E5M2FNUZ.
    F8E5M2FNUZ,
    /// float4 E2M1 (held one per byte).
    F4E2M1,
    /// Signed 4-bit integer (held one per byte).
    I4,
    /// Unsigned 4-bit integer (held one per byte).
    U4,
    /// Signed 2-bit integer (held one per byte).
    I2,
    /// Unsigned 2-bit integer (held one per byte).
    U2,
    /// float8 E8M0: a power of two (the MX scale format).
    F8E8M0,
}

impl DType {
    /// Every dtype, in declaration order.
    pub const ALL: [DType; 23] = [
        DType::F32,
        DType::F16,
        DType::BF16,
        DType::I8,
        DType::U8,
        DType::I32,
        DType::I64,
        DType::Bool,
        DType::F64,
        DType::I16,
        DType::U16,
        DType::U32,
        DType::U64,
        DType::F8E4M3FN,
        DType::F8E4M3FNUZ,
        DType::F8E5M2,
        DType::F8E5M2FNUZ,
        DType::F4E2M1,
        DType::I4,
        DType::U4,
        DType::I2,
        DType::U2,
        DType::F8E8M0,
    ];

    /// Bytes per element in memory (the 4- and 2-bit types are held one per
    /// byte).
    pub fn size_in_bytes(self) -> usize {
        match self {
            DType::F32 | DType::I32 | DType::U32 => 4,
            DType::F16 | DType::BF16 | DType::I16 | DType::U16 => 2,
            DType::I8 | DType::U8 | DType::Bool => 1,
            DType::F8E4M3FN | DType::F8E4M3FNUZ | DType::F8E5M2 | DType::F8E5M2FNUZ | DType::F8E8M0 => 1,
            DType::F4E2M1 => 1,
            DType::I4 | DType::U4 | DType::I2 | DType::U2 => 1,
            DType::I64 | DType::U64 | DType::F64 => 8,
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
            DType::F64 => "f64",
            DType::I16 => "i16",
            DType::U16 => "u16",
            DType::U32 => "u32",
            DType::U64 => "u64",
            DType::F8E4M3FN => "f8e4m3fn",
            DType::F8E4M3FNUZ => "f8e4m3fnuz",
            DType::F8E5M2 => "f8e5m2",
            DType::F8E5M2FNUZ => "f8e5m2fnuz",
            DType::F4E2M1 => "f4e2m1",
            DType::I4 => "i4",
            DType::U4 => "u4",
            DType::I2 => "i2",
            DType::U2 => "u2",
            DType::F8E8M0 => "f8e8m0",
        }
    }

    /// True for the floating-point dtypes.
    pub fn is_float(self) -> bool {
        matches!(
            self,
            DType::F32
                | DType::F16
                | DType::BF16
                | DType::F64
                | DType::F8E4M3FN
                | DType::F8E4M3FNUZ
                | DType::F8E5M2
                | DType::F8E5M2FNUZ
                | DType::F4E2M1
                | DType::F8E8M0
        )
    }

    /// True for the integer dtypes (not bool).
    pub fn is_int(self) -> bool {
        matches!(
            self,
            DType::I8
                | DType::U8
                | DType::I16
                | DType::U16
                | DType::I32
                | DType::U32
                | DType::I64
                | DType::U64
                | DType::I4
                | DType::U4
                | DType::I2
                | DType::U2
        )
    }

    /// The matching safetensors dtype; `None` for the 4- and 2-bit types
    /// (safetensors packs them; wginfer holds them one per byte).
    pub fn to_safetensors(self) -> Option<safetensors::Dtype> {
        use safetensors::Dtype as S;
        Some(match self {
            DType::F32 => S::F32,
            DType::F16 => S::F16,
            DType::BF16 => S::BF16,
            DType::I8 => S::I8,
            DType::U8 => S::U8,
            DType::I32 => S::I32,
            DType::I64 => S::I64,
            DType::Bool => S::BOOL,
            DType::F64 => S::F64,
            DType::I16 => S::I16,
            DType::U16 => S::U16,
            DType::U32 => S::U32,
            DType::U64 => S::U64,
            DType::F8E4M3FN => S::F8_E4M3,
            DType::F8E4M3FNUZ => S::F8_E4M3FNUZ,
            DType::F8E5M2 => S::F8_E5M2,
            DType::F8E5M2FNUZ => S::F8_E5M2FNUZ,
            DType::F8E8M0 => S::F8_E8M0,
            DType::F4E2M1 | DType::I4 | DType::U4 | DType::I2 | DType::U2 => return None,
        })
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
            S::F64 => DType::F64,
            S::I16 => DType::I16,
            S::U16 => DType::U16,
            S::U32 => DType::U32,
            S::U64 => DType::U64,
            S::F8_E4M3 => DType::F8E4M3FN,
            S::F8_E4M3FNUZ => DType::F8E4M3FNUZ,
            S::F8_E5M2 => DType::F8E5M2,
            S::F8_E5M2FNUZ => DType::F8E5M2FNUZ,
            S::F8_E8M0 => DType::F8E8M0,
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
element!(f64, F64);
element!(i16, I16);
element!(u16, U16);
element!(u32, U32);
element!(u64, U64);
element!(lowp::F8E4M3FN, F8E4M3FN);
element!(lowp::F8E4M3FNUZ, F8E4M3FNUZ);
element!(lowp::F8E5M2, F8E5M2);
element!(lowp::F8E5M2FNUZ, F8E5M2FNUZ);
element!(lowp::F4E2M1, F4E2M1);
element!(lowp::I4, I4);
element!(lowp::U4, U4);
element!(lowp::I2, I2);
element!(lowp::U2, U2);
element!(lowp::F8E8M0, F8E8M0);
