//! Sub-byte and 8-bit element types from ONNX: float8 (E4M3FN, E4M3FNUZ,
//! E5M2, E5M2FNUZ), float4 (E2M1) and 4- and 2-bit integers.
//!
//! Each is held one element per byte (the bit pattern in the low bits);
//! ONNX's packed layout for the 4- and 2-bit types (low bits first) is
//! unpacked when a `TensorProto` is read. Conversions follow the ONNX `Cast`
//! specification: to a float8 type rounds to nearest even and, by default,
//! saturates (out-of-range values and infinities become ±max, NaN stays NaN;
//! see [`encode_f8`] for the non-saturating rules); to float4 rounds to
//! nearest even and always saturates (NaN becomes -0, as the ONNX reference
//! gives); integers to 4 or 2 bits keep the low bits (wrap), as for every
//! integer narrowing.

use super::scalar::{Scalar, ScalarValue};

/// The shape of a small float format.
#[derive(Clone, Copy, Debug, PartialEq)]
pub struct MiniFloat {
    /// Mantissa bits.
    pub mant: u32,
    /// Exponent bits.
    pub exp: u32,
    /// Exponent bias.
    pub bias: i32,
    /// Largest finite value.
    pub max: f64,
    /// How NaN and infinity are encoded.
    pub special: Special,
}

/// How a small float format spells NaN and infinity.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum Special {
    /// IEEE-like: exponent all ones is infinity (mantissa 0) or NaN (E5M2).
    Ieee,
    /// "Finite": all ones in exponent and mantissa is NaN, no infinity (E4M3FN).
    Fn,
    /// "Finite, unsigned zero": the pattern of -0 is NaN, no infinity (FNUZ).
    Fnuz,
    /// No NaN and no infinity (float4 E2M1).
    None,
}

/// float8 E4M3FN.
pub const E4M3FN: MiniFloat = MiniFloat {
    mant: 3,
    exp: 4,
    bias: 7,
    max: 448.0,
    special: Special::Fn,
};
/// float8 E4M3FNUZ.
pub const E4M3FNUZ: MiniFloat = MiniFloat {
    mant: 3,
    exp: 4,
    bias: 8,
    max: 240.0,
    special: Special::Fnuz,
};
/// float8 E5M2.
pub const E5M2: MiniFloat = MiniFloat {
    mant: 2,
    exp: 5,
    bias: 15,
    max: 57344.0,
    special: Special::Ieee,
};
/// float8 E5M2FNUZ.
pub const E5M2FNUZ: MiniFloat = MiniFloat {
    mant: 2,
    exp: 5,
    bias: 16,
    max: 57344.0,
    special: Special::Fnuz,
};
/// float4 E2M1.
pub const E2M1: MiniFloat = MiniFloat {
    mant: 1,
    exp: 2,
    bias: 1,
    max: 6.0,
    special: Special::None,
};

impl MiniFloat {
    fn sign_bit(self) -> u8 {
        1 << (self.mant + self.exp)
    }

    fn mask(self) -> u8 {
        self.sign_bit() - 1
    }

    /// The NaN pattern (float4 has none: -0).
    fn nan(self) -> u8 {
        match self.special {
            Special::Ieee => (self.mask() >> self.mant << self.mant) | (1 << (self.mant - 1)),
            Special::Fn => self.mask(),
            Special::Fnuz | Special::None => self.sign_bit(),
        }
    }

    /// The value of a bit pattern.
    pub fn decode(self, bits: u8) -> f32 {
        let sign = bits & self.sign_bit() != 0;
        let mag = bits & self.mask();
        let e = (mag >> self.mant) as i32;
        let m = (mag & ((1 << self.mant) - 1)) as i32;
        let all_exp = (1 << self.exp) - 1;
        match self.special {
            Special::Fnuz if sign && mag == 0 => return f32::NAN,
            Special::Fn if mag == self.mask() => return f32::NAN,
            Special::Ieee if e == all_exp => {
                let v = if m == 0 { f32::INFINITY } else { f32::NAN };
                return if sign { -v } else { v };
            }
            _ => {}
        }
        let v = if e == 0 {
            m as f64 * 2f64.powi(1 - self.bias - self.mant as i32)
        } else {
            (1.0 + m as f64 / (1 << self.mant) as f64) * 2f64.powi(e - self.bias)
        };
        let v = v as f32;
        if sign {
            -v
        } else {
            v
        }
    }

    /// The bit pattern nearest `x` (ties to even), with the ONNX `Cast`
    /// rules for NaN, infinity and overflow: saturating, ±max; else NaN, or
    /// ±infinity for E5M2. Float4 always saturates.
    pub fn encode(self, x: f64, saturate: bool) -> u8 {
        if x.is_nan() {
            return self.nan();
        }
        let neg = x.is_sign_negative();
        let sign = if neg { self.sign_bit() } else { 0 };
        let overflow = || {
            if saturate || self.special == Special::None {
                return sign | self.encode_finite(self.max);
            }
            match self.special {
                Special::Ieee => sign | (self.mask() >> self.mant << self.mant),
                _ => sign | self.nan(),
            }
        };
        let a = x.abs();
        if a.is_infinite() {
            return overflow();
        }
        let min_exp = 1 - self.bias;
        let e = if a == 0.0 { min_exp } else { floor_log2(a).max(min_exp) };
        let q = 2f64.powi(e - self.mant as i32);
        let v = (a / q).round_ties_even() * q;
        if v > self.max {
            return overflow();
        }
        if v == 0.0 && self.special == Special::Fnuz {
            return 0;
        }
        sign | self.encode_finite(v)
    }

    /// The pattern of a representable non-negative value.
    fn encode_finite(self, v: f64) -> u8 {
        let min_exp = 1 - self.bias;
        if v < 2f64.powi(min_exp) {
            return (v / 2f64.powi(min_exp - self.mant as i32)) as u8;
        }
        let e = floor_log2(v);
        let m = (v / 2f64.powi(e - self.mant as i32)) as u32 - (1 << self.mant);
        (((e + self.bias) as u32) << self.mant | m) as u8
    }
}

/// `floor(log2(a))` of a positive finite `a` (the exponent of a normal f64).
fn floor_log2(a: f64) -> i32 {
    ((a.to_bits() >> 52) & 0x7ff) as i32 - 1023
}

macro_rules! mini_float {
    ($(#[$doc:meta] $name:ident = $fmt:expr;)*) => {$(
        #[$doc]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
        pub struct $name(pub u8);

        impl $name {
            /// The format.
            pub const FORMAT: MiniFloat = $fmt;

            /// The value nearest `x`, saturating or not (see [`MiniFloat::encode`]).
            pub fn from_f64(x: f64, saturate: bool) -> Self {
                Self($fmt.encode(x, saturate))
            }
        }

        impl Scalar for $name {
            #[inline]
            fn value(self) -> ScalarValue {
                ScalarValue::Float($fmt.decode(self.0) as f64)
            }
            #[inline]
            fn from_value(v: ScalarValue) -> Self {
                match v {
                    ScalarValue::Int(i) => Self($fmt.encode(i as f64, true)),
                    ScalarValue::Float(f) => Self($fmt.encode(f, true)),
                }
            }
        }
    )*};
}

mini_float! {
    /// float8 E4M3FN: 4 exponent bits (bias 7), 3 mantissa bits, max 448, no infinity.
    F8E4M3FN = E4M3FN;
    /// float8 E4M3FNUZ: bias 8, max 240, no infinity, no negative zero.
    F8E4M3FNUZ = E4M3FNUZ;
    /// float8 E5M2: IEEE-like, bias 15, max 57344, with infinities.
    F8E5M2 = E5M2;
    /// float8 E5M2FNUZ: bias 16, max 57344, no infinity, no negative zero.
    F8E5M2FNUZ = E5M2FNUZ;
    /// float4 E2M1: values 0, 0.5, 1, 1.5, 2, 3, 4, 6 and their negatives.
    F4E2M1 = E2M1;
}

macro_rules! small_int {
    ($(#[$doc:meta] $name:ident($t:ty, $bits:expr, $signed:expr);)*) => {$(
        #[$doc]
        #[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
        pub struct $name(pub $t);

        impl $name {
            /// Bits per element.
            pub const BITS: u32 = $bits;

            /// The value of the low bits of `b` (sign-extended when signed).
            pub fn from_bits(b: u8) -> Self {
                let low = (b as u32) & ((1 << $bits) - 1);
                if $signed && low >> ($bits - 1) != 0 {
                    Self((low as i32 - (1 << $bits)) as $t)
                } else {
                    Self(low as $t)
                }
            }

            /// The low bits of the value.
            pub fn to_bits(self) -> u8 {
                (self.0 as u8) & ((1 << $bits) - 1)
            }
        }

        impl Scalar for $name {
            #[inline]
            fn value(self) -> ScalarValue {
                ScalarValue::Int(self.0 as i128)
            }
            #[inline]
            fn from_value(v: ScalarValue) -> Self {
                let i = match v {
                    ScalarValue::Int(i) => i as i64,
                    ScalarValue::Float(f) => f as i64,
                };
                Self::from_bits(i as u8)
            }
        }
    )*};
}

small_int! {
    /// Signed 4-bit integer, -8..=7.
    I4(i8, 4, true);
    /// Unsigned 4-bit integer, 0..=15.
    U4(u8, 4, false);
    /// Signed 2-bit integer, -2..=1.
    I2(i8, 2, true);
    /// Unsigned 2-bit integer, 0..=3.
    U2(u8, 2, false);
}

/// float8 E8M0 (the OCP MX scale): the value `2^(bits - 127)`; `0xFF` is
/// NaN. Conversion to it rounds up to a power of two and saturates (ONNX
/// `Cast`'s defaults, `round_mode = "up"`, `saturate = 1`): zero and values
/// below `2^-127` become `2^-127`, values above `2^127` and infinities
/// `2^127`. The sign is ignored (ONNX leaves negative inputs unspecified).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Default)]
pub struct F8E8M0(pub u8);

impl F8E8M0 {
    /// The value of the pattern.
    pub fn decode(self) -> f32 {
        if self.0 == 0xFF {
            f32::NAN
        } else {
            2f64.powi(self.0 as i32 - 127) as f32
        }
    }

    /// `|x|` rounded up to a power of two, saturating.
    pub fn encode(x: f64) -> Self {
        if x.is_nan() {
            return Self(0xFF);
        }
        let a = x.abs();
        if a.is_infinite() {
            return Self(254);
        }
        if a <= 2f64.powi(-127) {
            return Self(0);
        }
        let e = floor_log2(a);
        let up = if a == 2f64.powi(e) { e } else { e + 1 };
        Self((up + 127).clamp(0, 254) as u8)
    }
}

impl Scalar for F8E8M0 {
    #[inline]
    fn value(self) -> ScalarValue {
        ScalarValue::Float(self.decode() as f64)
    }
    #[inline]
    fn from_value(v: ScalarValue) -> Self {
        match v {
            ScalarValue::Int(i) => Self::encode(i as f64),
            ScalarValue::Float(f) => Self::encode(f),
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn every_pattern_round_trips() {
        for f in [E4M3FN, E4M3FNUZ, E5M2, E5M2FNUZ, E2M1] {
            let n = 1u16 << (f.mant + f.exp + 1);
            for b in (0..n).map(|b| b as u8) {
                let v = f.decode(b);
                let back = f.encode(v as f64, false);
                if v.is_nan() {
                    assert!(f.decode(back).is_nan(), "{f:?} {b:#x}");
                } else {
                    assert_eq!(f.decode(back).to_bits(), v.to_bits(), "{f:?} {b:#x} = {v}");
                }
            }
        }
    }

    #[test]
    fn onnx_cast_rules() {
        // Max values and the patterns of known values.
        assert_eq!(E4M3FN.decode(0x7E), 448.0);
        assert_eq!(E4M3FNUZ.decode(0x7F), 240.0);
        assert_eq!(E5M2.decode(0x7B), 57344.0);
        assert_eq!(E5M2.decode(0x7C), f32::INFINITY);
        assert_eq!(E5M2FNUZ.decode(0x7F), 57344.0);
        assert_eq!(E4M3FN.decode(0x01), 2f32.powi(-9));
        assert_eq!(E2M1.decode(0x7), 6.0);
        // Ties to even: 464 is halfway between 448 and (absent) 480.
        assert_eq!(E4M3FN.decode(E4M3FN.encode(464.0, false)), 448.0);
        assert!(E4M3FN.decode(E4M3FN.encode(465.0, false)).is_nan());
        assert_eq!(E4M3FN.decode(E4M3FN.encode(1e6, true)), 448.0);
        assert_eq!(E5M2.decode(E5M2.encode(1e6, false)), f32::INFINITY);
        assert_eq!(E5M2.decode(E5M2.encode(f64::NEG_INFINITY, true)), -57344.0);
        assert!(E5M2FNUZ.decode(E5M2FNUZ.encode(f64::INFINITY, false)).is_nan());
        assert_eq!(E4M3FNUZ.encode(-0.0, true), 0);
        assert_eq!(E4M3FNUZ.encode(-1e-7, true), 0);
        assert_eq!(E4M3FN.encode(-0.0, true), 0x80);
        // Float4: ties to even, saturating, NaN is -0.
        assert_eq!(E2M1.decode(E2M1.encode(0.25, true)), 0.0);
        assert_eq!(E2M1.decode(E2M1.encode(-3.5, true)), -4.0);
        assert_eq!(E2M1.decode(E2M1.encode(f64::INFINITY, false)), 6.0);
        assert_eq!(E2M1.encode(f64::NAN, true), 0x8);
        // E8M0 rounds up to a power of two and saturates.
        let e8: Vec<f32> = [0.0, 0.124, 0.25, 1.1, 8.0, 1e300, f64::NAN]
            .iter()
            .map(|&x| F8E8M0::encode(x).decode())
            .collect();
        assert_eq!(&e8[..6], &[2f32.powi(-127), 0.125, 0.25, 2.0, 8.0, 2f32.powi(127)]);
        assert!(e8[6].is_nan());
        // Small integers wrap.
        assert_eq!(I4::from_scalar(-9.0f32), I4(7));
        assert_eq!(I4::from_scalar(8i32), I4(-8));
        assert_eq!(U2::from_scalar(-3i64), U2(1));
        assert_eq!(I2::from_bits(0b11), I2(-1));
        assert_eq!(I4(-8).to_bits(), 0b1000);
    }
}
