//! W8A8 convolution. Each image's input channels of one group are
//! quantized together to uint8 (W8A8's activation quantization,
//! [`super::quantize_row_u8`], over the group's `c/group·h·w` values: one
//! scale and zero point per image and group) into planes padded with the
//! zero point's code (which stands for 0.0); int8 weights per output
//! channel multiply each output pixel's patch of codes with int32 sums; the
//! epilogue is W8A8 Linear's. The AVX2 kernel reads the patches in place
//! ([`W8A8Gemm::Gathered`]); the VNNI kernel and the portable loop read
//! im2col rows of codes. All give the same bits.
//!
//! One range per image rather than per output pixel's patch: patch rows
//! repeat every input value `kh·kw` times, so per-patch ranges quantize
//! `kh·kw` times the values and need materialized patch rows (a patch read
//! in place has no codes of its own); on the digits CNN they made a batch-64
//! run 6× the f32 model's time (2.3× with one range per image), for the same
//! accuracy (0.9733 either way on the 450 held-out digits; logits' relative
//! RMS error to f32 1.55% per patch, 1.58% per image). Per image, not per
//! batch: a sample's outputs do not depend on the other samples in its batch.

use rayon::prelude::*;

use super::{gemm_u8i8, quantize_row_u8, Codes, PackedW8A8, W8A8Weights};
use crate::linalg::conv::{ConvShape, Im2col};

/// One group's W8A8 product: the packed fast kernel, or the portable loop.
/// The weight has no outlier columns.
#[derive(Clone, Debug)]
pub enum W8A8Gemm<'a> {
    /// [`PackedW8A8::run_codes`] (VNNI or AVX2).
    Packed(&'a PackedW8A8),
    /// [`gemm_u8i8`] and W8A8's epilogue in plain loops.
    Portable(W8A8Weights<'a>),
    /// The AVX2 kernel reading each patch in place from the padded planes
    /// of codes ([`PackedW8A8::run_gathered`]; unit horizontal dilation):
    /// a weight from [`gathered_weight`].
    Gathered(&'a PackedW8A8),
}

impl W8A8Gemm<'_> {
    /// Outputs and inputs.
    pub fn dims(&self) -> (usize, usize) {
        match self {
            W8A8Gemm::Packed(p) | W8A8Gemm::Gathered(p) => (p.n(), p.k()),
            W8A8Gemm::Portable(w) => (w.n, w.k),
        }
    }

    fn has_outliers(&self) -> bool {
        match self {
            W8A8Gemm::Packed(p) | W8A8Gemm::Gathered(p) => p.has_outliers(),
            W8A8Gemm::Portable(w) => !w.outliers.is_empty(),
        }
    }
}

/// Kernel width rounded up to a pair: the gathered kernel reads taps two at
/// a time along a row.
fn even(kw: usize) -> usize {
    kw.div_ceil(2) * 2
}

/// A group's W8A8 weight (`[mg, cg·kh·kw]`, no outlier columns) for
/// [`W8A8Gemm::Gathered`]: taps in `(c, ky, kx)` order with `kw` rounded up
/// to even (0 in the extra column, so the sums are unchanged), packed for
/// the AVX2 kernel. `None` without AVX2 or with outlier columns.
pub fn gathered_weight(w: &W8A8Weights, cg: usize, kh: usize, kw: usize) -> Option<PackedW8A8> {
    if !w.outliers.is_empty() || w.k != cg * kh * kw {
        return None;
    }
    let kw2 = even(kw);
    let k2 = cg * kh * kw2;
    let mut q = vec![0i8; w.n * k2];
    for (dst, src) in q.chunks_exact_mut(k2.max(1)).zip(w.q.chunks_exact(w.k.max(1))) {
        for (d, s) in dst.chunks_exact_mut(kw2).zip(src.chunks_exact(kw)) {
            d[..kw].copy_from_slice(s);
        }
    }
    PackedW8A8::new_avx2(&W8A8Weights {
        q: &q,
        k: k2,
        outliers: Vec::new(),
        ..w.clone()
    })
}

/// An activation code type: `u8` (VNNI and portable) or `i16` (AVX2).
pub trait Code: Copy + Default + Send + Sync {
    /// The code of a zero point (0..=255).
    fn from_z(z: i32) -> Self;
}

impl Code for u8 {
    fn from_z(z: i32) -> Self {
        z as u8
    }
}

impl Code for i16 {
    fn from_z(z: i32) -> Self {
        z as i16
    }
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

/// Fills `rows` (`oh·ow` rows of `row_len`) with each output pixel's input
/// patch of one image's group, taps in `(c, ky, kx)` order: `x` holds the
/// group's `cg` planes, `zero` stands for the padding, and the row past its
/// `cg·kh·kw` taps gets `T::default()`. `pad` is scratch.
pub fn fill_patch_rows<T: Copy + Default>(
    g: &Im2col,
    x: &[T],
    cg: usize,
    zero: T,
    pad: &mut Vec<T>,
    rows: &mut [T],
    row_len: usize,
) {
    let (ph, pw) = padded_dims(g);
    pad.clear();
    pad.resize(cg * ph * pw, zero);
    for c in 0..cg {
        for iy in 0..g.h {
            let dst = &mut pad[(c * ph + iy + g.pad[0]) * pw + g.pad[1]..][..g.w];
            dst.copy_from_slice(&x[(c * g.h + iy) * g.w..][..g.w]);
        }
    }
    let rows = &mut rows[..g.oh * g.ow * row_len];
    // Fixed-width copies for the common unit-dilation kernel widths.
    match (g.kw, g.d[1]) {
        (1, 1) => fill_rows::<T, 1>(g, pad, cg, rows, row_len),
        (2, 1) => fill_rows::<T, 2>(g, pad, cg, rows, row_len),
        (3, 1) => fill_rows::<T, 3>(g, pad, cg, rows, row_len),
        (5, 1) => fill_rows::<T, 5>(g, pad, cg, rows, row_len),
        (7, 1) => fill_rows::<T, 7>(g, pad, cg, rows, row_len),
        _ => fill_rows::<T, 0>(g, pad, cg, rows, row_len),
    }
}

/// The patch rows from the padded planes: per output pixel, channel and
/// kernel row, `kw` codes (`KW` of them at unit dilation; any `kw` at
/// stride `dx` when `KW` is 0); past the taps, `T::default()`.
#[inline(always)]
fn fill_rows<T: Copy + Default, const KW: usize>(g: &Im2col, pad: &[T], cg: usize, rows: &mut [T], row_len: usize) {
    let (ph, pw) = padded_dims(g);
    let (kk, dx) = (cg * g.kh * g.kw, g.d[1]);
    for (p, row) in rows.chunks_exact_mut(row_len.max(1)).enumerate() {
        let (oy, ox) = (p / g.ow.max(1), p % g.ow.max(1));
        let (taps, rest) = row.split_at_mut(kk);
        let mut segs = taps.chunks_exact_mut(g.kw.max(1));
        for c in 0..cg {
            let base = c * ph * pw + oy * g.s[0] * pw + ox * g.s[1];
            for (ky, dst) in (0..g.kh).zip(&mut segs) {
                let at = base + ky * g.d[0] * pw;
                if KW > 0 {
                    // A constant length: a few moves, no memcpy call.
                    dst[..KW].copy_from_slice(&pad[at..at + KW]);
                } else {
                    for (kx, d) in dst.iter_mut().enumerate() {
                        *d = pad[at + kx * dx];
                    }
                }
            }
        }
        for d in rest {
            *d = T::default();
        }
    }
}

/// What one chunk of images needs: patch rows of codes and each row's
/// scale and zero point.
struct Chunk<T> {
    rows: Vec<T>,
    xs: Vec<f32>,
    xz: Vec<i32>,
}

impl<T: Code> Chunk<T> {
    fn new() -> Self {
        Self {
            rows: Vec::new(),
            xs: Vec::new(),
            xz: Vec::new(),
        }
    }

    /// Images `n0..n0+nb`, group `gi`: each image's group quantized by
    /// `quant` (codes and `(s, z)` of one contiguous slice), then its
    /// patch rows of `row_len` codes.
    #[allow(clippy::too_many_arguments)]
    fn fill(
        &mut self,
        s: &ConvShape,
        x: &[f32],
        n0: usize,
        nb: usize,
        gi: usize,
        row_len: usize,
        quant: &(impl Fn(&[f32], &mut [T]) -> (f32, i32) + Sync),
    ) {
        let g = &s.geom;
        let (cg, plane, pix) = (s.c / s.group, g.h * g.w, g.oh * g.ow);
        self.rows.resize(nb * pix * row_len, T::default());
        self.xs.resize(nb * pix, 0.0);
        self.xz.resize(nb * pix, 0);
        let image = |(codes, pad): &mut (Vec<T>, Vec<T>), (i, ((rows, xs), xz)): (usize, RowsOf<T>)| {
            codes.resize(cg * plane, T::default());
            let (sc, z) = quant(&x[((n0 + i) * s.c + gi * cg) * plane..][..cg * plane], codes);
            fill_patch_rows(g, codes, cg, T::from_z(z), pad, rows, row_len);
            xs.fill(sc);
            xz.fill(z);
        };
        let jobs = self
            .rows
            .chunks_mut((pix * row_len).max(1))
            .zip(self.xs.chunks_mut(pix.max(1)))
            .zip(self.xz.chunks_mut(pix.max(1)));
        if nb > 1 && nb * pix * row_len >= 1 << 16 {
            let jobs: Vec<_> = jobs.enumerate().collect();
            jobs.into_par_iter()
                .for_each_init(|| (Vec::new(), Vec::new()), |buf, job| image(buf, job));
        } else {
            let mut buf = (Vec::new(), Vec::new());
            jobs.enumerate().for_each(|job| image(&mut buf, job));
        }
    }
}

/// One image's patch rows, row scales and row zero points.
type RowsOf<'a, T> = ((&'a mut [T], &'a mut [f32]), &'a mut [i32]);

/// W8A8's epilogue in plain loops over int32 sums `acc [m, n]`:
/// `((acc - z_i·wsum_j) as f32)·(s_i·scale_j) + 0 + b_j`, the kernels' order.
fn epilogue(acc: &[i32], w: &W8A8Weights, xs: &[f32], xz: &[i32], bias: Option<&[f32]>, y: &mut [f32]) {
    let n = w.n.max(1);
    for (i, (yr, ar)) in y.chunks_mut(n).zip(acc.chunks(n)).enumerate() {
        for (j, (d, &a)) in yr.iter_mut().zip(ar).enumerate() {
            *d = (a - xz[i] * w.wsum[j]) as f32 * (xs[i] * w.scale[j]) + 0.0 + bias.map_or(0.0, |b| b[j]);
        }
    }
}

/// `y [n, m, oh, ow]` = the W8A8 convolution of `x [n, c, h, w]` with one
/// W8A8 weight per group (`w[g]`: `m/group` outputs of `c/group·kh·kw`
/// inputs, taps in `(c, ky, kx)` order, no outlier columns), plus
/// `bias [m]`, then ReLU when `relu`. Images go through in chunks: per
/// group, each image's codes and patch rows (images in parallel when
/// large), one product (threaded inside when large), then the outputs
/// moved to NCHW. Packed and portable weights give the same bits.
///
/// # Panics
/// If `x`, `w` or `bias` do not match the shape, or a weight has outlier columns.
pub fn conv2d_w8a8(s: &ConvShape, x: &[f32], w: &[W8A8Gemm], bias: Option<&[f32]>, relu: bool) -> Vec<f32> {
    let g = &s.geom;
    let (cg, mg) = (s.c / s.group.max(1), s.m / s.group.max(1));
    let (plane, pix, kk) = (g.h * g.w, g.oh * g.ow, cg * g.kh * g.kw);
    assert!(
        x.len() >= s.n * s.c * plane
            && w.len() == s.group
            && w.iter().all(|p| !p.has_outliers()
                && p.dims()
                    == match p {
                        W8A8Gemm::Gathered(_) => (mg, cg * g.kh * even(g.kw)),
                        _ => (mg, kk),
                    })
            && (g.d[1] == 1 || !w.iter().any(|p| matches!(p, W8A8Gemm::Gathered(_))))
            && bias.is_none_or(|b| b.len() >= s.m),
        "conv2d_w8a8 sizes"
    );
    let mut y = vec![0.0f32; s.n * s.m * pix];
    if y.is_empty() {
        return y;
    }
    let chunk = (ROWS_MAX / (pix * kk).max(1)).clamp(1, s.n);
    let mut out = vec![0.0f32; chunk * pix * mg];
    let (mut bytes, mut words) = (Chunk::<u8>::new(), Chunk::<i16>::new());
    let mut planes = Planes::default();
    let mut acc = Vec::new();
    for n0 in (0..s.n).step_by(chunk) {
        let nb = chunk.min(s.n - n0);
        for (gi, wg) in w.iter().enumerate() {
            let (m, out) = (nb * pix, &mut out[..nb * pix * mg]);
            let b = bias.map(|b| &b[gi * mg..][..mg]);
            match wg {
                W8A8Gemm::Packed(p) => match p.code_row_len() {
                    len if p.is_vnni() => {
                        let q = |x: &[f32], c: &mut [u8]| super::quantize_row_padded(x, &[], c);
                        bytes.fill(s, x, n0, nb, gi, len, &q);
                        p.run_codes(Codes::U8(&bytes.rows), m, &bytes.xs, &bytes.xz, b, out);
                    }
                    len => {
                        words.fill(s, x, n0, nb, gi, len, &quantize_i16);
                        p.run_codes(Codes::I16(&words.rows), m, &words.xs, &words.xz, b, out);
                    }
                },
                W8A8Gemm::Gathered(p) => {
                    planes.fill(s, x, n0, nb, gi);
                    p.run_gathered(
                        &planes.codes,
                        &planes.base,
                        &planes.off,
                        m,
                        &planes.xs,
                        &planes.xz,
                        b,
                        out,
                    );
                }
                W8A8Gemm::Portable(wp) => {
                    let q = |x: &[f32], c: &mut [u8]| crate::linalg::simd(|| quantize_row_u8(x, None, c));
                    bytes.fill(s, x, n0, nb, gi, kk, &q);
                    acc.resize(m * mg, 0);
                    gemm_u8i8(&bytes.rows, m, wp.q, mg, kk, &mut acc);
                    epilogue(&acc, wp, &bytes.xs, &bytes.xz, b, out);
                }
            }
            scatter(out, &mut y, s, n0, gi, relu);
        }
    }
    y
}

/// The padded planes of codes of a chunk of images' group, where the
/// gathered kernel reads each patch: `[nb, cg, ph, pw + 1]` int16 codes
/// (the zero point in the padding; one more column, so the last pair of an
/// odd-width kernel stays inside), each output pixel's start `base`, each
/// pair of taps' offset `off`, each pixel's scale and zero point.
#[derive(Default)]
struct Planes {
    codes: Vec<i16>,
    img: Vec<i16>,
    base: Vec<usize>,
    off: Vec<usize>,
    xs: Vec<f32>,
    xz: Vec<i32>,
}

impl Planes {
    fn fill(&mut self, s: &ConvShape, x: &[f32], n0: usize, nb: usize, gi: usize) {
        let g = &s.geom;
        let (cg, plane, pix) = (s.c / s.group, g.h * g.w, g.oh * g.ow);
        let (ph, pw) = padded_dims(g);
        let (pw, kw2) = (pw + 1, even(g.kw));
        let per = cg * ph * pw;
        self.codes.resize(nb * per, 0);
        self.xs.resize(nb * pix, 0.0);
        self.xz.resize(nb * pix, 0);
        for i in 0..nb {
            self.img.resize(cg * plane, 0);
            let (sc, z) = quantize_i16(&x[((n0 + i) * s.c + gi * cg) * plane..][..cg * plane], &mut self.img);
            let dst = &mut self.codes[i * per..][..per];
            dst.fill(z as i16);
            for (c, src) in self.img.chunks_exact(plane).enumerate() {
                for (iy, row) in src.chunks_exact(g.w).enumerate() {
                    dst[(c * ph + iy + g.pad[0]) * pw + g.pad[1]..][..g.w].copy_from_slice(row);
                }
            }
            self.xs[i * pix..][..pix].fill(sc);
            self.xz[i * pix..][..pix].fill(z);
        }
        self.base.clear();
        for i in 0..nb {
            for oy in 0..g.oh {
                for ox in 0..g.ow {
                    self.base.push(i * per + oy * g.s[0] * pw + ox * g.s[1]);
                }
            }
        }
        self.off.clear();
        for c in 0..cg {
            for ky in 0..g.kh {
                for kp in 0..kw2 / 2 {
                    self.off.push((c * ph + ky * g.d[0]) * pw + 2 * kp);
                }
            }
        }
    }
}

/// Patch rows per chunk of images, in codes (256 Ki).
const ROWS_MAX: usize = 1 << 18;

/// [`super::avx2::quantize_row`] where AVX2 exists (an AVX2 weight was
/// packed), else the portable codes widened.
fn quantize_i16(x: &[f32], q: &mut [i16]) -> (f32, i32) {
    #[cfg(target_arch = "x86_64")]
    {
        if super::avx2::available() {
            // SAFETY: AVX2 detected; `q` holds `x.len()` codes.
            return unsafe { super::avx2::quantize_row(x, &[], q) };
        }
    }
    let mut b = vec![0u8; x.len()];
    let r = quantize_row_u8(x, None, &mut b);
    for (d, &v) in q.iter_mut().zip(&b) {
        *d = v as i16;
    }
    r
}

/// Group `gi`'s outputs `[nb, pix, mg]` into `y[n0 + i, gi·mg + j, pix]`,
/// ReLU as the `Relu` op computes it (NaN and -0.0 pass) when `relu`.
fn scatter(out: &[f32], y: &mut [f32], s: &ConvShape, n0: usize, gi: usize, relu: bool) {
    let (pix, mg) = (s.geom.oh * s.geom.ow, s.m / s.group);
    for (i, img) in out.chunks(pix * mg).enumerate() {
        let yi = &mut y[((n0 + i) * s.m + gi * mg) * pix..][..mg * pix];
        for (j, yr) in yi.chunks_exact_mut(pix.max(1)).enumerate() {
            for (d, o) in yr.iter_mut().zip(img.chunks_exact(mg)) {
                let v = o[j];
                *d = if relu && v < 0.0 { 0.0 } else { v };
            }
        }
    }
}
