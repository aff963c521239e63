//! The uniform parameter block (`struct Params`, binding 1) of each kernel
//! family, as `#[repr(C)]` Pod structs that mirror the WGSL structs member
//! for member. [`layouts`] lists each struct's size and member offsets; the
//! naga test compares them with naga's layout of the WGSL struct, so a
//! mismatch fails on a machine with no GPU.

use bytemuck::{Pod, Zeroable};

use super::super::shaders::ShaderId;

/// A params struct as the `Vec<u32>` a [`super::DispatchSpec`] carries.
pub(super) fn words<P: Pod>(p: &P) -> Vec<u32> {
    bytemuck::cast_slice::<P, u32>(std::slice::from_ref(p)).to_vec()
}

/// `shaders/elementwise.wgsl`: unary, broadcasting binary, strided copy.
/// Axis `d` of the shapes and strides is entry `d` (rank <= 8).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct ElementwiseParams {
    pub n: u32,
    pub rank: u32,
    pub pad0: u32,
    pub pad1: u32,
    pub shape: [u32; 8],
    pub a_strides: [u32; 8],
    pub b_strides: [u32; 8],
}

/// `shaders/softmax.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct SoftmaxParams {
    pub outer: u32,
    pub len: u32,
    pub inner: u32,
    pub rows: u32,
}

/// `shaders/matmul.wgsl` and `matmul_vec4.wgsl`: up to 4 batch axes.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct MatmulParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub batch_rank: u32,
    pub batch_shape: [u32; 4],
    pub a_batch_strides: [u32; 4],
    pub b_batch_strides: [u32; 4],
}

/// `shaders/gemm.wgsl`: element strides of A, B and C; alpha and beta as bits.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct GemmParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub has_c: u32,
    pub a_i: u32,
    pub a_k: u32,
    pub b_k: u32,
    pub b_j: u32,
    pub c_i: u32,
    pub c_j: u32,
    pub alpha_bits: u32,
    pub beta_bits: u32,
}

/// `shaders/qlinear.wgsl` (and `qlinear_f16.wgsl`, `qlinear_sg.wgsl`).
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct QLinearParams {
    pub m: u32,
    pub n: u32,
    pub k: u32,
    pub aux: u32,
}

/// `shaders/cast.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct CastParams {
    pub n: u32,
    pub pad0: u32,
    pub pad1: u32,
    pub pad2: u32,
}

/// `shaders/attention.wgsl`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct AttentionParams {
    pub batch: u32,
    pub sq: u32,
    pub sk: u32,
    pub heads: u32,
    pub head_dim: u32,
    pub scale_bits: u32,
    pub rows: u32,
    pub pad0: u32,
}

/// `shaders/embedding.wgsl`: `a`, `b`, `c` as each entry point reads them.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct EmbeddingParams {
    pub n: u32,
    pub a: u32,
    pub b: u32,
    pub c: u32,
    pub eps_bits: u32,
    pub pad0: u32,
    pub pad1: u32,
    pub pad2: u32,
}

/// `shaders/conv.wgsl`: 2-D convolution, blocks of 4 output channels by 4
/// output pixels.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct ConvParams {
    pub c: u32,
    pub h: u32,
    pub w: u32,
    pub m: u32,
    pub cg: u32,
    pub mg: u32,
    pub kh: u32,
    pub kw: u32,
    pub oh: u32,
    pub ow: u32,
    pub stride_y: u32,
    pub stride_x: u32,
    pub dil_y: u32,
    pub dil_x: u32,
    pub pad_y: u32,
    pub pad_x: u32,
    pub groups: u32,
    pub pblocks: u32,
    pub mblocks: u32,
    pub has_bias: u32,
}

/// `shaders/pool.wgsl` and `pool_index.wgsl`. Spatial sizes in (y, x, z)
/// order; the per-axis arrays are the WGSL `vec4<u32>`s, entry 3 unused.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct PoolParams {
    pub n: u32,
    pub h: u32,
    pub w: u32,
    pub d: u32,
    pub oh: u32,
    pub ow: u32,
    pub od: u32,
    pub neg_inf_bits: u32,
    pub k: [u32; 4],
    pub stride: [u32; 4],
    pub dil: [u32; 4],
    pub pad: [u32; 4],
    pub pad_end: [u32; 4],
    pub count_include_pad: u32,
    pub pad0: u32,
    pub pad1: u32,
    pub pad2: u32,
}

/// `shaders/norm.wgsl`: `n`, `len`, `a`, `b` as each entry point reads them;
/// `batchnorm_train` reads the momentum (f32 bits) from `pad0`.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct NormParams {
    pub n: u32,
    pub len: u32,
    pub a: u32,
    pub b: u32,
    pub eps_bits: u32,
    pub pad0: u32,
    pub pad1: u32,
    pub pad2: u32,
}

/// `shaders/concat.wgsl`: `lens` is the WGSL `array<vec4<u32>, 2>`, the
/// inputs' lengths along the axis in order.
#[repr(C)]
#[derive(Clone, Copy, Debug, Default, Pod, Zeroable)]
pub(super) struct ConcatParams {
    pub n: u32,
    pub inner: u32,
    pub total: u32,
    pub count: u32,
    pub lens: [u32; 8],
}

/// One params struct's layout: the kernel family whose `struct Params` it
/// mirrors, its size, and each member's name and byte offset.
#[derive(Clone, Debug)]
pub struct ParamsLayout {
    /// The kernel family.
    pub shader: ShaderId,
    /// The Rust struct.
    pub rust: &'static str,
    /// `size_of` the Rust struct.
    pub size: usize,
    /// Member names (as in WGSL) and their byte offsets.
    pub members: Vec<(&'static str, usize)>,
}

macro_rules! layout {
    ($shader:expr, $ty:ident { $($f:ident),* $(,)? }) => {
        ParamsLayout {
            shader: $shader,
            rust: stringify!($ty),
            size: std::mem::size_of::<$ty>(),
            members: vec![$((stringify!($f), std::mem::offset_of!($ty, $f))),*],
        }
    };
}

/// The layout of every params struct, by the kernel family it serves.
pub fn layouts() -> Vec<ParamsLayout> {
    use ShaderId as S;
    let mut out = vec![
        layout!(
            S::Elementwise,
            ElementwiseParams {
                n,
                rank,
                pad0,
                pad1,
                shape,
                a_strides,
                b_strides
            }
        ),
        layout!(
            S::Softmax,
            SoftmaxParams {
                outer,
                len,
                inner,
                rows
            }
        ),
        layout!(
            S::Gemm,
            GemmParams {
                m,
                n,
                k,
                has_c,
                a_i,
                a_k,
                b_k,
                b_j,
                c_i,
                c_j,
                alpha_bits,
                beta_bits
            }
        ),
        layout!(S::Cast, CastParams { n, pad0, pad1, pad2 }),
        layout!(
            S::Attention,
            AttentionParams {
                batch,
                sq,
                sk,
                heads,
                head_dim,
                scale_bits,
                rows,
                pad0
            }
        ),
        layout!(
            S::Embedding,
            EmbeddingParams {
                n,
                a,
                b,
                c,
                eps_bits,
                pad0,
                pad1,
                pad2
            }
        ),
        layout!(
            S::Conv,
            ConvParams {
                c,
                h,
                w,
                m,
                cg,
                mg,
                kh,
                kw,
                oh,
                ow,
                stride_y,
                stride_x,
                dil_y,
                dil_x,
                pad_y,
                pad_x,
                groups,
                pblocks,
                mblocks,
                has_bias
            }
        ),
        layout!(
            S::Norm,
            NormParams {
                n,
                len,
                a,
                b,
                eps_bits,
                pad0,
                pad1,
                pad2
            }
        ),
        layout!(
            S::Concat,
            ConcatParams {
                n,
                inner,
                total,
                count,
                lens
            }
        ),
    ];
    for s in [S::Pool, S::PoolIndex] {
        out.push(layout!(
            s,
            PoolParams {
                n,
                h,
                w,
                d,
                oh,
                ow,
                od,
                neg_inf_bits,
                k,
                stride,
                dil,
                pad,
                pad_end,
                count_include_pad,
                pad0,
                pad1,
                pad2
            }
        ));
    }
    for s in [S::Matmul, S::MatmulVec4] {
        out.push(layout!(
            s,
            MatmulParams {
                m,
                n,
                k,
                batch_rank,
                batch_shape,
                a_batch_strides,
                b_batch_strides
            }
        ));
    }
    for s in [S::QLinear, S::QLinearDp4a, S::QLinearF16, S::QLinearSg] {
        out.push(layout!(s, QLinearParams { m, n, k, aux }));
    }
    out
}
