//! The numeric codes that select a function inside a shader: unary kinds
//! (`ACT`), binary ops (`OP`) and weight formats (`FORMAT`). Each table is
//! the one definition of its codes; [`wgsl`] writes them as WGSL constants
//! (`const UNARY_RELU: u32 = 1u;`) that every shader is compiled with, so the
//! `.wgsl` files compare against names, never numbers.

use std::fmt::Write;

use crate::ops::binary::BinaryKind;
use crate::ops::unary::UnaryKind;
use crate::quant::WeightFormat;

/// A unary kind's code and WGSL constant name (`wg_activate` in
/// `shaders/activation.wgsl`; code 0 is the identity).
pub(crate) fn unary(kind: UnaryKind) -> (u32, &'static str) {
    match kind {
        UnaryKind::Relu => (1, "UNARY_RELU"),
        UnaryKind::Sigmoid => (2, "UNARY_SIGMOID"),
        UnaryKind::Tanh => (3, "UNARY_TANH"),
        UnaryKind::Gelu => (4, "UNARY_GELU"),
        UnaryKind::GeluTanh => (5, "UNARY_GELU_TANH"),
        UnaryKind::Silu => (6, "UNARY_SILU"),
        UnaryKind::LeakyRelu(_) => (7, "UNARY_LEAKY_RELU"),
        UnaryKind::Erf => (8, "UNARY_ERF"),
        UnaryKind::Neg => (9, "UNARY_NEG"),
        UnaryKind::Abs => (10, "UNARY_ABS"),
        UnaryKind::Exp => (11, "UNARY_EXP"),
        UnaryKind::Log => (12, "UNARY_LOG"),
        UnaryKind::Sqrt => (13, "UNARY_SQRT"),
        UnaryKind::Reciprocal => (14, "UNARY_RECIPROCAL"),
        UnaryKind::HardSwish => (15, "UNARY_HARD_SWISH"),
        UnaryKind::Floor => (16, "UNARY_FLOOR"),
        UnaryKind::Sign => (17, "UNARY_SIGN"),
        UnaryKind::Round => (18, "UNARY_ROUND"),
    }
}

/// Every binary kind (for [`wgsl`]).
const BINARY_KINDS: [BinaryKind; 6] = BinaryKind::ALL;

/// A binary op's code and WGSL constant name (`apply_op` in `shaders/elementwise.wgsl`).
pub(crate) fn binary(kind: BinaryKind) -> (u32, &'static str) {
    match kind {
        BinaryKind::Add => (0, "BINARY_ADD"),
        BinaryKind::Mul => (1, "BINARY_MUL"),
        BinaryKind::Sub => (2, "BINARY_SUB"),
        BinaryKind::Div => (3, "BINARY_DIV"),
        BinaryKind::Max => (4, "BINARY_MAX"),
        BinaryKind::Min => (5, "BINARY_MIN"),
    }
}

/// A weight format as the QLinear kernels tell them apart (`FORMAT`).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub(crate) enum FormatCode {
    /// IEEE half floats.
    F16,
    /// Symmetric int8 per channel.
    Int8,
    /// Affine int8 (with a zero point) per channel.
    Int8Affine,
    /// Power-of-two fixed point.
    Pow2,
    /// int4 blocks (symmetric or with a minimum).
    Int4,
    /// One sign bit per weight, f32 activations.
    Binary,
    /// int8 weights with u8 activations quantized per row.
    W8A8,
    /// Binary weights and binarized activations.
    Xnor,
    /// N:M structured sparsity.
    NM,
}

impl FormatCode {
    /// Every code (for [`wgsl`]).
    const ALL: [FormatCode; 9] = [
        FormatCode::F16,
        FormatCode::Int8,
        FormatCode::Int8Affine,
        FormatCode::Pow2,
        FormatCode::Int4,
        FormatCode::Binary,
        FormatCode::W8A8,
        FormatCode::Xnor,
        FormatCode::NM,
    ];

    /// The code of a weight format.
    pub(crate) fn of(f: &WeightFormat) -> FormatCode {
        match *f {
            WeightFormat::F16 => FormatCode::F16,
            WeightFormat::Int8 { affine: false } => FormatCode::Int8,
            WeightFormat::Int8 { affine: true } => FormatCode::Int8Affine,
            WeightFormat::Pow2 { .. } => FormatCode::Pow2,
            WeightFormat::Int4 { .. } => FormatCode::Int4,
            WeightFormat::Binary { xnor: false } => FormatCode::Binary,
            WeightFormat::W8A8 { .. } => FormatCode::W8A8,
            WeightFormat::Binary { xnor: true } => FormatCode::Xnor,
            WeightFormat::NM { .. } => FormatCode::NM,
        }
    }

    /// The code and its WGSL constant name.
    pub(crate) fn code(self) -> (u32, &'static str) {
        match self {
            FormatCode::F16 => (1, "FORMAT_F16"),
            FormatCode::Int8 => (2, "FORMAT_INT8"),
            FormatCode::Int8Affine => (3, "FORMAT_INT8_AFFINE"),
            FormatCode::Pow2 => (4, "FORMAT_POW2"),
            FormatCode::Int4 => (5, "FORMAT_INT4"),
            FormatCode::Binary => (6, "FORMAT_BINARY"),
            FormatCode::W8A8 => (7, "FORMAT_W8A8"),
            FormatCode::Xnor => (8, "FORMAT_XNOR"),
            FormatCode::NM => (9, "FORMAT_NM"),
        }
    }
}

/// Every code as WGSL `const` declarations, one a line.
pub(crate) fn wgsl() -> String {
    let mut out = String::from("// Generated from src/backend/gpu/kernels/codes.rs.\n");
    let lines = UnaryKind::ALL
        .iter()
        .map(|&k| unary(k))
        .chain(BINARY_KINDS.iter().map(|&k| binary(k)))
        .chain(FormatCode::ALL.iter().map(|f| f.code()));
    for (code, name) in lines {
        let _ = writeln!(out, "const {name}: u32 = {code}u;");
    }
    out
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn codes_and_names_are_distinct_within_each_table() {
        let unaries: Vec<_> = UnaryKind::ALL.iter().map(|&k| unary(k)).collect();
        let binaries: Vec<_> = BINARY_KINDS.iter().map(|&k| binary(k)).collect();
        let formats: Vec<_> = FormatCode::ALL.iter().map(|f| f.code()).collect();
        for table in [unaries, binaries, formats] {
            for (i, a) in table.iter().enumerate() {
                for b in &table[i + 1..] {
                    assert!(a.0 != b.0 && a.1 != b.1, "{a:?} and {b:?} clash");
                }
            }
        }
        assert!(UnaryKind::ALL.iter().all(|&k| unary(k).0 != 0), "0 is the identity");
    }
}
