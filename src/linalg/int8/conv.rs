//! W8A8 convolution: im2col rows (one per output pixel: that pixel's
//! `c/group·kh·kw` input patch, 0 in the padding) through the W8A8 layer —
//! each patch quantized to uint8 with its own scale and zero point, int8
//! weights per output channel, int32 sums — then written out as NCHW.
//!
//! Per-patch activation ranges are W8A8 Linear's per-row ranges applied to
//! the convolution's GEMM rows: no calibration, and each output pixel's
//! error scales with its own patch's range rather than the whole tensor's.

use rayon::prelude::*;

use super::{w8a8_portable, PackedW8A8, W8A8Weights};
use crate::linalg::conv::{ConvShape, Im2col};

/// One group's W8A8 product: the packed fast kernel, or the portable loop.
#[derive(Clone, Debug)]
pub enum W8A8Gemm<'a> {
    /// [`PackedW8A8::run`] (VNNI or AVX2).
    Packed(&'a PackedW8A8),
    /// [`w8a8_portable`].
    Portable(W8A8Weights<'a>),
}

impl W8A8Gemm<'_> {
    /// Outputs and inputs.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            W8A8Gemm::Packed(p) => (p.n(), p.k()),
            W8A8Gemm::Portable(w) => (w.n, w.k),
        }
    }

    /// `y [m, n]` for `x [m, k]`; both forms give the same bits.
    pub fn run(&self, x: &[f32], m: usize, bias: Option<&[f32]>, y: &mut [f32]) {
        match self {
            W8A8Gemm::Packed(p) => p.run(x, m, bias, y),
            W8A8Gemm::Portable(w) => w8a8_portable(x, m, w, bias, y),
        }
    }
}

/// im2col rows per chunk of images, in floats (1 MiB).
const ROWS_MAX: usize = 1 << 18;

/// Fills `rows` (`oh·ow` rows of `cg·kh·kw`) with the input patch of each
/// output pixel of one image's group: `x` holds its `cg` planes.
pub fn fill_patch_rows(g: &Im2col, x: &[f32], cg: usize, rows: &mut [f32]) {
    let kk = cg * g.kh * g.kw;
    let plane = g.h * g.w;
    for (p, row) in rows.chunks_mut(kk.max(1)).take(g.oh * g.ow).enumerate() {
        let (oy, ox) = (p / g.ow.max(1), p % g.ow.max(1));
        let mut t = 0;
        for c in 0..cg {
            let pl = &x[c * plane..][..plane];
            for ky in 0..g.kh {
                let iy = (oy * g.s[0] + ky * g.d[0]) as isize - g.pad[0] as isize;
                let dst = &mut row[t..t + g.kw];
                t += g.kw;
                if iy < 0 || iy >= g.h as isize {
                    dst.fill(0.0);
                    continue;
                }
                let src = &pl[iy as usize * g.w..][..g.w];
                for (kx, d) in dst.iter_mut().enumerate() {
                    let ix = (ox * g.s[1] + kx * g.d[1]) as isize - g.pad[1] as isize;
                    *d = if ix >= 0 && ix < g.w as isize {
                        src[ix as usize]
                    } else {
                        0.0
                    };
                }
            }
        }
    }
}

/// `y [n, m, oh, ow]` = the W8A8 convolution of `x [n, c, h, w]` with one
/// W8A8 weight per group (`w[g]`: `m/group` outputs of `c/group·kh·kw`
/// inputs, taps in `(c, ky, kx)` order), plus `bias [m]`, then ReLU when
/// `relu`. Images go through in chunks: their patch rows, one W8A8 product
/// per group (threaded inside for large products), then the outputs moved
/// to NCHW.
///
/// # Panics
/// If `x`, `w` or `bias` do not match the shape.
pub fn conv2d_w8a8(s: &ConvShape, x: &[f32], w: &[W8A8Gemm], bias: Option<&[f32]>, relu: bool) -> Vec<f32> {
    let g = &s.geom;
    let (cg, mg) = (s.c / s.group.max(1), s.m / s.group.max(1));
    let (plane, pix, kk) = (g.h * g.w, g.oh * g.ow, cg * g.kh * g.kw);
    assert!(
        x.len() >= s.n * s.c * plane
            && w.len() == s.group
            && w.iter().all(|p| p.dims() == (mg, kk))
            && bias.is_none_or(|b| b.len() >= s.m),
        "conv2d_w8a8 sizes"
    );
    let mut y = vec![0.0f32; s.n * s.m * pix];
    if y.is_empty() {
        return y;
    }
    let chunk = (ROWS_MAX / (pix * kk).max(1)).clamp(1, s.n);
    let mut rows = vec![0.0f32; chunk * pix * kk];
    let mut out = vec![0.0f32; chunk * pix * mg];
    for n0 in (0..s.n).step_by(chunk) {
        let nb = chunk.min(s.n - n0);
        for (gi, wg) in w.iter().enumerate() {
            let fill = |(i, r): (usize, &mut [f32])| {
                let xs = &x[((n0 + i) * s.c + gi * cg) * plane..][..cg * plane];
                fill_patch_rows(g, xs, cg, r);
            };
            let rows = &mut rows[..nb * pix * kk];
            if rows.len() >= 1 << 16 && nb > 1 {
                rows.par_chunks_mut(pix * kk).enumerate().for_each(fill);
            } else {
                rows.chunks_mut(pix * kk).enumerate().for_each(fill);
            }
            let out = &mut out[..nb * pix * mg];
            wg.run(rows, nb * pix, bias.map(|b| &b[gi * mg..][..mg]), out);
            // [nb, pix, mg] -> y[n0 + i, gi·mg + j, pix].
            for (i, img) in out.chunks(pix * mg).enumerate() {
                let yi = &mut y[((n0 + i) * s.m + gi * mg) * pix..][..mg * pix];
                for (p, o) in img.chunks(mg).enumerate() {
                    for (j, &v) in o.iter().enumerate() {
                        // ReLU as the `Relu` op computes it (NaN and -0.0 pass).
                        yi[j * pix + p] = if relu && v < 0.0 { 0.0 } else { v };
                    }
                }
            }
        }
    }
    y
}
