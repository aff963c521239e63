//! Element-wise conversions between dtypes, with NumPy `astype` semantics.

use half::{bf16, f16};

/// The exact value of one element: an integer (bool is 0 or 1) or a float
/// (`f64` holds every `f32`, `f16` and `bf16` value exactly).
#[derive(Clone, Copy, Debug, PartialEq)]
pub enum ScalarValue {
    /// An integer or bool.
    Int(i128),
    /// A floating-point value.
    Float(f64),
}

/// An element type that converts to and from every other one.
///
/// Conversions are those of NumPy's `astype` (and ONNX `Cast`): integer to
/// integer wraps (keeps the low bits); float to integer truncates toward zero
/// and saturates, NaN becoming 0; to a float type rounds to nearest even once,
/// from the exact value; to bool is `x != 0` (NaN is true).
pub trait Scalar: Copy + Send + Sync + 'static {
    /// The exact value.
    fn value(self) -> ScalarValue;

    /// Converts an exact value to this type.
    fn from_value(v: ScalarValue) -> Self;

    /// Converts from another element type.
    #[inline]
    fn from_scalar<S: Scalar>(x: S) -> Self {
        Self::from_value(x.value())
    }

    /// The value as `f32`, rounded to nearest.
    #[inline]
    fn to_f32(self) -> f32 {
        match self.value() {
            ScalarValue::Int(i) => i as f32,
            ScalarValue::Float(f) => f as f32,
        }
    }

    /// The value as `f64`, rounded to nearest.
    #[inline]
    fn to_f64(self) -> f64 {
        match self.value() {
            ScalarValue::Int(i) => i as f64,
            ScalarValue::Float(f) => f,
        }
    }
}

macro_rules! int_scalar {
    ($($t:ty),*) => {$(
        impl Scalar for $t {
            #[inline]
            fn value(self) -> ScalarValue {
                ScalarValue::Int(self as i128)
            }
            #[inline]
            fn from_value(v: ScalarValue) -> Self {
                match v {
                    // `as` from i128 keeps the low bits (wraps).
                    ScalarValue::Int(i) => i as $t,
                    // `as` from a float truncates, saturates and maps NaN to 0.
                    ScalarValue::Float(f) => f as $t,
                }
            }
        }
    )*};
}

int_scalar!(i8, u8, i16, u16, i32, u32, i64, u64);

impl Scalar for bool {
    #[inline]
    fn value(self) -> ScalarValue {
        ScalarValue::Int(self as i128)
    }
    #[inline]
    fn from_value(v: ScalarValue) -> Self {
        match v {
            ScalarValue::Int(i) => i != 0,
            ScalarValue::Float(f) => f != 0.0,
        }
    }
}

impl Scalar for f32 {
    #[inline]
    fn value(self) -> ScalarValue {
        ScalarValue::Float(self as f64)
    }
    #[inline]
    fn from_value(v: ScalarValue) -> Self {
        match v {
            ScalarValue::Int(i) => i as f32,
            ScalarValue::Float(f) => f as f32,
        }
    }
    #[inline]
    fn to_f32(self) -> f32 {
        self
    }
}

impl Scalar for f64 {
    #[inline]
    fn value(self) -> ScalarValue {
        ScalarValue::Float(self)
    }
    #[inline]
    fn from_value(v: ScalarValue) -> Self {
        match v {
            ScalarValue::Int(i) => i as f64,
            ScalarValue::Float(f) => f,
        }
    }
}

/// `x` rounded to an `f32` with round-to-odd (truncate, and set the last bit
/// when inexact): rounding that to a float of at most 22 significant bits
/// (f16, bf16) gives the correctly rounded result of `x`, with no double
/// rounding.
#[inline]
pub(crate) fn f64_to_f32_odd(x: f64) -> f32 {
    let r = x as f32;
    if !r.is_finite() || r as f64 == x {
        return r;
    }
    let mut bits = r.to_bits();
    if (r as f64).abs() > x.abs() {
        bits -= 1;
    }
    f32::from_bits(bits | 1)
}

macro_rules! half_scalar {
    ($($t:ty),*) => {$(
        impl Scalar for $t {
            #[inline]
            fn value(self) -> ScalarValue {
                ScalarValue::Float(self.to_f64())
            }
            #[inline]
            fn from_value(v: ScalarValue) -> Self {
                match v {
                    // Integers beyond 2^53 round twice, but they overflow a
                    // 16-bit float either way.
                    ScalarValue::Int(i) => <$t>::from_f32(f64_to_f32_odd(i as f64)),
                    ScalarValue::Float(f) => <$t>::from_f32(f64_to_f32_odd(f)),
                }
            }
            #[inline]
            fn to_f32(self) -> f32 {
                <$t>::to_f32(self)
            }
        }
    )*};
}

half_scalar!(f16, bf16);

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn numpy_astype_semantics() {
        // Integer to integer wraps.
        assert_eq!(i8::from_scalar(300i64), 44);
        assert_eq!(u8::from_scalar(-1i32), 255);
        assert_eq!(i64::from_scalar(u64::MAX), -1);
        assert_eq!(u16::from_scalar(-2i8), 65534);
        // Float to integer truncates toward zero and saturates; NaN is 0.
        assert_eq!(i32::from_scalar(-2.9f32), -2);
        assert_eq!(u8::from_scalar(300.0f64), 255);
        assert_eq!(u32::from_scalar(-5.0f32), 0);
        assert_eq!(i16::from_scalar(f32::NAN), 0);
        // Floats round once, to nearest even.
        let x = 1.0f64 + f64::EPSILON * 3.0;
        assert_eq!(f32::from_scalar(x), 1.0);
        // 1 + 2^-11 + 2^-40 is above the f16 midpoint: rounds up, not to even.
        let y = 1.0f64 + 2f64.powi(-11) + 2f64.powi(-40);
        assert_eq!(f16::from_scalar(y), f16::from_f32(1.0 + 2f32.powi(-10)));
        let z = 1.0f64 + 2f64.powi(-8) + 2f64.powi(-40);
        assert_eq!(bf16::from_scalar(z), bf16::from_f32(1.0 + 2f32.powi(-7)));
        assert_eq!(f16::from_scalar(-1e-30f64), f16::from_f32(-0.0));
        assert_eq!(f16::from_scalar(1e10f64), f16::INFINITY);
        assert_eq!(f64::from_scalar(u64::MAX), 18446744073709551615.0);
        // Bool.
        assert!(bool::from_scalar(f32::NAN));
        assert!(!bool::from_scalar(0u64));
        assert_eq!(f32::from_scalar(true), 1.0);
    }
}
