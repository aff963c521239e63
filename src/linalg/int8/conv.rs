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
    let mut pad = Vec::new();
    pad_planes(g, x, cg, &mut pad);
    fill_from_padded(g, &pad, cg, rows);
}

/// The padded plane's height and width: every tap of every output pixel
/// reads inside it.
fn padded_dims(g: &Im2col) -> (usize, usize) {
    let span = |o: usize, s: usize, k: usize, d: usize| (o.max(1) - 1) * s + (k.max(1) - 1) * d + 1;
    (
        (g.h + g.pad[0]).max(span(g.oh, g.s[0], g.kh, g.d[0])),
        (g.w + g.pad[1]).max(span(g.ow, g.s[1], g.kw, g.d[1])),
    )
}

/// `cg` planes of `x` copied into `pad` with zero borders (top and left
/// pads before, what the windows reach after).
fn pad_planes(g: &Im2col, x: &[f32], cg: usize, pad: &mut Vec<f32>) {
    let (ph, pw) = padded_dims(g);
    pad.clear();
    pad.resize(cg * ph * pw, 0.0);
    for c in 0..cg {
        for iy in 0..g.h {
            let dst = &mut pad[(c * ph + iy + g.pad[0]) * pw + g.pad[1]..][..g.w];
            dst.copy_from_slice(&x[(c * g.h + iy) * g.w..][..g.w]);
        }
    }
}

/// The patch rows read from padded planes: per output pixel, per channel
/// and kernel row, `kw` values at stride `dx` (no bounds to test).
fn fill_from_padded(g: &Im2col, pad: &[f32], cg: usize, rows: &mut [f32]) {
    let (ph, pw) = padded_dims(g);
    let (kk, dx) = (cg * g.kh * g.kw, g.d[1]);
    for (p, row) in rows.chunks_exact_mut(kk.max(1)).take(g.oh * g.ow).enumerate() {
        let (oy, ox) = (p / g.ow.max(1), p % g.ow.max(1));
        let mut t = 0;
        for c in 0..cg {
            for ky in 0..g.kh {
                let at = (c * ph + oy * g.s[0] + ky * g.d[0]) * pw + ox * g.s[1];
                let src = &pad[at..at + (g.kw - 1) * dx + 1];
                for (kx, d) in row[t..t + g.kw].iter_mut().enumerate() {
                    *d = src[kx * dx];
                }
                t += g.kw;
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
    let mut pad = Vec::new();
    for n0 in (0..s.n).step_by(chunk) {
        let nb = chunk.min(s.n - n0);
        for (gi, wg) in w.iter().enumerate() {
            let fill = |pad: &mut Vec<f32>, (i, r): (usize, &mut [f32])| {
                pad_planes(g, &x[((n0 + i) * s.c + gi * cg) * plane..][..cg * plane], cg, pad);
                fill_from_padded(g, pad, cg, r);
            };
            let rows = &mut rows[..nb * pix * kk];
            if rows.len() >= 1 << 16 && nb > 1 {
                rows.par_chunks_mut(pix * kk).enumerate().for_each_init(Vec::new, fill);
            } else {
                rows.chunks_mut(pix * kk)
                    .enumerate()
                    .for_each(|job| fill(&mut pad, job));
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
