//! The WGSL kernels in `shaders/`, embedded at build time.
//!
//! A kernel family that uses the activation functions has
//! `shaders/activation.wgsl` prepended to it; [`ALL`] lists every kernel
//! source exactly as the device compiles it, which is what the naga test
//! validates for every output language.

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
        }
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
const MATMUL: &str = concat!(
    include_str!("../../../shaders/activation.wgsl"),
    "\n",
    include_str!("../../../shaders/matmul.wgsl")
);

/// The full WGSL of a kernel family, as compiled.
pub fn source(id: ShaderId) -> &'static str {
    match id {
        ShaderId::Elementwise => ELEMENTWISE,
        ShaderId::Softmax => SOFTMAX,
        ShaderId::Matmul => MATMUL,
        ShaderId::MatmulVec4 => MATMUL_VEC4,
        ShaderId::Norm => NORM,
        ShaderId::Attention => ATTENTION,
        ShaderId::Embedding => EMBEDDING,
        ShaderId::Conv => CONV,
        ShaderId::Pool => POOL,
        ShaderId::Concat => CONCAT,
        ShaderId::Gemm => GEMM,
    }
}

/// Every kernel family.
pub const ALL: [ShaderId; 11] = [
    ShaderId::Elementwise,
    ShaderId::Softmax,
    ShaderId::Matmul,
    ShaderId::MatmulVec4,
    ShaderId::Norm,
    ShaderId::Attention,
    ShaderId::Embedding,
    ShaderId::Conv,
    ShaderId::Pool,
    ShaderId::Concat,
    ShaderId::Gemm,
];

/// Files in `shaders/` that are not kernels themselves but are prepended to
/// the kernels that use them.
pub const PRELUDES: [&str; 1] = ["activation.wgsl"];
