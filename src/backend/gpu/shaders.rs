//! The WGSL kernels in `shaders/`, embedded at build time.
//!
//! A kernel family that uses the unary functions has
//! `shaders/activation.wgsl` prepended to it, and every kernel has the
//! generated code constants ([`codes`]: `UNARY_*`, `BINARY_*`, `FORMAT_*`)
//! appended (WGSL declarations may follow their use, and appending keeps
//! `enable` directives first). [`source`] gives every kernel exactly as the
//! device compiles it, which is what the naga test validates for every
//! output language.

use std::collections::HashMap;
use std::sync::OnceLock;

/// One WGSL kernel family (a file in `shaders/`).
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum ShaderId {
    /// `shaders/elementwise.wgsl`: unary activations, broadcasting Add/Mul.
    Elementwise,
    /// `shaders/softmax.wgsl`: softmax along any axis.
    Softmax,
    /// `shaders/matmul.wgsl`: MatMul and Linear (blocked, tiled, GEMV).
    Matmul,
    /// `shaders/matmul_vec4.wgsl`: MatMul and Linear on aligned shapes,
    /// 8x16 register tiles with vec4 loads.
    MatmulVec4,
    /// `shaders/norm.wgsl`: LayerNormalization and BatchNormalization.
    Norm,
    /// `shaders/attention.wgsl`: fused multi-head attention.
    Attention,
    /// `shaders/embedding.wgsl`: Gather, MaskedMeanPool, L2Normalize.
    Embedding,
    /// `shaders/conv.wgsl`: 2-D convolution (implicit GEMM, register-blocked).
    Conv,
    /// `shaders/pool.wgsl`: MaxPool, AveragePool, GlobalAveragePool.
    Pool,
    /// `shaders/concat.wgsl`: Concat of up to 6 inputs.
    Concat,
    /// `shaders/gemm.wgsl`: Gemm with alpha, beta, transA/transB and a broadcast C.
    Gemm,
    /// `shaders/qlinear.wgsl`: QLinear over packed weights (every format),
    /// with the shift-based int8 dot product of `qlinear_idot.wgsl`.
    QLinear,
    /// `qlinear.wgsl` with `qlinear_dp4a.wgsl`'s `dot4I8Packed` (the WGSL
    /// language extension `packed_4x8_integer_dot_product`).
    QLinearDp4a,
    /// `shaders/qlinear_f16.wgsl`: QLinear over f16 weights with `enable f16`
    /// (adapters with `SHADER_F16`).
    QLinearF16,
    /// `qlinear.wgsl` with `shaders/qlinear_sg.wgsl` appended: the
    /// weight-only formats with activations shared through subgroup
    /// broadcasts (adapters with `SUBGROUP`, subgroups of >= 8).
    QLinearSg,
    /// `shaders/cast.wgsl`: Cast between f32, f16 and bf16 (on the bits).
    Cast,
    /// `shaders/pool_index.wgsl`: MaxPool's Indices output (int64).
    PoolIndex,
}

impl ShaderId {
    /// The file name under `shaders/`.
    pub fn file(self) -> &'static str {
        match self {
            ShaderId::Elementwise => "elementwise.wgsl",
            ShaderId::Softmax => "softmax.wgsl",
            ShaderId::Matmul => "matmul.wgsl",
            ShaderId::MatmulVec4 => "matmul_vec4.wgsl",
            ShaderId::Norm => "norm.wgsl",
            ShaderId::Attention => "attention.wgsl",
            ShaderId::Embedding => "embedding.wgsl",
            ShaderId::Conv => "conv.wgsl",
            ShaderId::Pool => "pool.wgsl",
            ShaderId::Concat => "concat.wgsl",
            ShaderId::Gemm => "gemm.wgsl",
            ShaderId::QLinear => "qlinear.wgsl",
            ShaderId::QLinearDp4a => "qlinear_dp4a.wgsl",
            ShaderId::QLinearF16 => "qlinear_f16.wgsl",
            ShaderId::QLinearSg => "qlinear_sg.wgsl",
            ShaderId::Cast => "cast.wgsl",
            ShaderId::PoolIndex => "pool_index.wgsl",
        }
    }

    /// True for kernels that `enable f16` (they need `SHADER_F16`).
    pub fn needs_f16(self) -> bool {
        self == ShaderId::QLinearF16
    }
}

const ELEMENTWISE: &str = concat!(
    include_str!("../../../shaders/activation.wgsl"),
    "\n",
    include_str!("../../../shaders/elementwise.wgsl")
);
const MATMUL_VEC4: &str = concat!(
    include_str!("../../../shaders/activation.wgsl"),
    "\n",
    include_str!("../../../shaders/matmul_vec4.wgsl")
);
const SOFTMAX: &str = include_str!("../../../shaders/softmax.wgsl");
const NORM: &str = include_str!("../../../shaders/norm.wgsl");
const ATTENTION: &str = include_str!("../../../shaders/attention.wgsl");
const EMBEDDING: &str = include_str!("../../../shaders/embedding.wgsl");
const CONV: &str = include_str!("../../../shaders/conv.wgsl");
const POOL: &str = include_str!("../../../shaders/pool.wgsl");
const CONCAT: &str = include_str!("../../../shaders/concat.wgsl");
const GEMM: &str = include_str!("../../../shaders/gemm.wgsl");
const CAST: &str = include_str!("../../../shaders/cast.wgsl");
const POOL_INDEX: &str = include_str!("../../../shaders/pool_index.wgsl");
const MATMUL: &str = concat!(
    include_str!("../../../shaders/activation.wgsl"),
    "\n",
    include_str!("../../../shaders/matmul.wgsl")
);

const QLINEAR: &str = concat!(
    include_str!("../../../shaders/activation.wgsl"),
    "\n",
    include_str!("../../../shaders/qlinear_idot.wgsl"),
    "\n",
    include_str!("../../../shaders/qlinear.wgsl")
);
const QLINEAR_DP4A: &str = concat!(
    include_str!("../../../shaders/activation.wgsl"),
    "\n",
    include_str!("../../../shaders/qlinear_dp4a.wgsl"),
    "\n",
    include_str!("../../../shaders/qlinear.wgsl")
);
const QLINEAR_SG: &str = concat!(
    include_str!("../../../shaders/activation.wgsl"),
    "\n",
    include_str!("../../../shaders/qlinear_idot.wgsl"),
    "\n",
    include_str!("../../../shaders/qlinear.wgsl"),
    "\n",
    include_str!("../../../shaders/qlinear_sg.wgsl")
);
// `enable f16;` must come first: the activation prelude is appended.
const QLINEAR_F16: &str = concat!(
    include_str!("../../../shaders/qlinear_f16.wgsl"),
    "\n",
    include_str!("../../../shaders/activation.wgsl")
);

/// The WGSL files of a kernel family, concatenated.
fn files(id: ShaderId) -> &'static str {
    match id {
        ShaderId::Elementwise => ELEMENTWISE,
        ShaderId::Softmax => SOFTMAX,
        ShaderId::Matmul => MATMUL,
        ShaderId::MatmulVec4 => MATMUL_VEC4,
        ShaderId::QLinear => QLINEAR,
        ShaderId::QLinearDp4a => QLINEAR_DP4A,
        ShaderId::QLinearF16 => QLINEAR_F16,
        ShaderId::QLinearSg => QLINEAR_SG,
        ShaderId::Norm => NORM,
        ShaderId::Attention => ATTENTION,
        ShaderId::Embedding => EMBEDDING,
        ShaderId::Conv => CONV,
        ShaderId::Pool => POOL,
        ShaderId::Concat => CONCAT,
        ShaderId::Gemm => GEMM,
        ShaderId::Cast => CAST,
        ShaderId::PoolIndex => POOL_INDEX,
    }
}

pub use super::kernels::params::{layouts as params_layouts, ParamsLayout};

/// The generated code constants every kernel is compiled with, as WGSL.
pub fn codes() -> String {
    super::kernels::codes::wgsl()
}

/// The full WGSL of a kernel family, as compiled: its files and [`codes`].
pub fn source(id: ShaderId) -> &'static str {
    static SOURCES: OnceLock<HashMap<ShaderId, String>> = OnceLock::new();
    let all = SOURCES.get_or_init(|| {
        let codes = codes();
        ALL.iter().map(|&id| (id, format!("{}\n{codes}", files(id)))).collect()
    });
    // ALL names every ShaderId (tests/shaders_naga.rs checks it against shaders/).
    &all[&id]
}

/// Every kernel family.
pub const ALL: [ShaderId; 17] = [
    ShaderId::Elementwise,
    ShaderId::Softmax,
    ShaderId::Matmul,
    ShaderId::MatmulVec4,
    ShaderId::QLinear,
    ShaderId::QLinearDp4a,
    ShaderId::QLinearF16,
    ShaderId::QLinearSg,
    ShaderId::Norm,
    ShaderId::Attention,
    ShaderId::Embedding,
    ShaderId::Conv,
    ShaderId::Pool,
    ShaderId::Concat,
    ShaderId::Gemm,
    ShaderId::Cast,
    ShaderId::PoolIndex,
];

/// Files in `shaders/` that are not kernels themselves but are prepended to
/// the kernels that use them.
pub const PRELUDES: [&str; 2] = ["activation.wgsl", "qlinear_idot.wgsl"];
