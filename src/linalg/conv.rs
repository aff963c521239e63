//! Convolution kernels: an f32 GEMM for short, wide products
//! `C [m, n] = A [m, k] · B [k, n] (+ bias [m], then ReLU)` with `A` (a
//! convolution's weight, `m` output channels by `k` taps) packed once into
//! panels of [`MR`] rows, K-major, and `B` (an im2col tile, or the input
//! itself for a 1×1 convolution) read in place, row-major; and the im2col
//! fill of one tile of output pixels.
//!
//! The microkernel holds an [`MR`] × [`NR`] tile of `C` in registers (AVX2 +
//! FMA: 12 ymm accumulators), broadcasting one packed weight per row against
//! two 8-wide loads of a `B` row; a column tile past `n` is read and written
//! masked. K is blocked by [`KC`] so a `B` strip stays in L1 while every
//! panel of `A` passes over it. Without AVX2 and FMA the same loops run in
//! plain Rust.

use super::conv_direct::{self, DirectLhs};
use super::winograd::{self, WinogradLhs};
use std::ops::Range;

/// Rows (output channels) per register tile and per packed panel.
pub const MR: usize = 6;
/// Columns (output pixels) per register tile.
pub const NR: usize = 16;
/// Inputs per K block.
pub const KC: usize = 256;

/// A `[m, k]` left operand packed for [`PackedLhs::run`]: panel `i` holds
/// rows `i·MR..i·MR+MR` (zero past `m`) as `k` groups of `MR` values.
#[derive(Clone, Debug)]
pub struct PackedLhs {
    m: usize,
    k: usize,
    data: Vec<f32>,
    /// The same weight for the direct kernel, where it may run (AVX2, at
    /// least 6 rows).
    direct: Option<DirectLhs>,
    /// The same 3×3 weight transformed for Winograd's F(2×2, 3×3) (see
    /// [`Self::with_winograd`]).
    winograd: Option<WinogradLhs>,
}

/// Where the tile's results go: `c` at its first element, `ldc` apart,
/// the bias at its first row (null: none), whether to add to `c` (a later
/// K block) and whether to apply ReLU (the last K block).
#[derive(Clone, Copy)]
struct Epilogue {
    c: *mut f32,
    ldc: usize,
    bias: *const f32,
    accumulate: bool,
    relu: bool,
}

impl PackedLhs {
    /// Packs `a`, `m` rows of `k` values, row `i` starting at `a[i·lda]`.
    ///
    /// # Panics
    /// If `a` is shorter than the sizes say.
    pub fn new(a: &[f32], m: usize, k: usize, lda: usize) -> Self {
        let mut packed = Self::gemm_only(a, m, k, lda);
        packed.direct = if m >= 6 { DirectLhs::new(a, m, k, lda) } else { None };
        packed
    }

    /// [`Self::new`] for the GEMM alone (no direct-kernel copy).
    pub(crate) fn gemm_only(a: &[f32], m: usize, k: usize, lda: usize) -> Self {
        assert!(m == 0 || k == 0 || a.len() >= (m - 1) * lda + k, "PackedLhs::new sizes");
        let panels = m.div_ceil(MR);
        let mut data = vec![0.0f32; panels * k * MR];
        for (pi, panel) in data.chunks_mut((k * MR).max(1)).enumerate().take(panels) {
            for r in 0..MR.min(m - pi * MR) {
                let row = &a[(pi * MR + r) * lda..][..k];
                for (p, &v) in row.iter().enumerate() {
                    panel[p * MR + r] = v;
                }
            }
        }
        Self {
            m,
            k,
            data,
            direct: None,
            winograd: None,
        }
    }

    /// Adds the weight's Winograd form where it is a 3×3 window over `c`
    /// input channels (`k = 9c`, `a` row-major `[m, c, 3, 3]` with
    /// `lda = k`), with at least 16 input and output channels and finite
    /// weights; [`conv2d`] then takes it for unit strides and dilations
    /// where it pays (see [`winograd::pays`]).
    pub fn with_winograd(mut self, a: &[f32], c: usize) -> Self {
        if c >= 16 && self.m >= 16 && self.k == 9 * c && a.len() >= self.m * self.k {
            self.winograd = WinogradLhs::new(a, self.m, c);
        }
        self
    }

    /// Rows.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Inputs per row.
    pub fn k(&self) -> usize {
        self.k
    }

    /// `c[i·ldc + j] = bias[i] + Σ_p A[i, p] · b[p·ldb + j]` for `i < m`,
    /// `j < n`, then `max(0, ·)` when `relu`.
    ///
    /// # Panics
    /// If `b`, `bias` or `c` is shorter than the sizes say, or `ldb`/`ldc` < `n`.
    #[allow(clippy::too_many_arguments)]
    pub fn run(&self, b: &[f32], ldb: usize, n: usize, bias: Option<&[f32]>, relu: bool, c: &mut [f32], ldc: usize) {
        let (m, k) = (self.m, self.k);
        let fits = |len: usize, rows: usize, ld: usize| rows == 0 || n == 0 || len >= (rows - 1) * ld + n;
        assert!(
            ldb >= n && ldc >= n && fits(b.len(), k, ldb) && fits(c.len(), m, ldc) && bias.is_none_or(|b| b.len() >= m),
            "PackedLhs::run sizes"
        );
        // SAFETY: the assertion bounds every read of `b`/`bias` and write of `c`.
        unsafe {
            self.run_raw(
                b.as_ptr(),
                ldb,
                n,
                bias.map_or(std::ptr::null(), <[f32]>::as_ptr),
                relu,
                c.as_mut_ptr(),
                ldc,
            )
        }
    }

    /// [`Self::run`] on raw pointers (tasks writing disjoint column ranges
    /// of one output share it this way).
    ///
    /// # Safety
    /// `b` must be readable at `p·ldb + j` and `c` writable at `i·ldc + j`
    /// for `p < k`, `i < m`, `j < n`; `bias` null or readable for `m` values.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_raw(
        &self,
        b: *const f32,
        ldb: usize,
        n: usize,
        bias: *const f32,
        relu: bool,
        c: *mut f32,
        ldc: usize,
    ) {
        let panels = 0..self.m.div_ceil(MR);
        self.run_with(
            b,
            BRows::Stride(ldb),
            (n, n),
            panels,
            (bias, relu),
            c,
            ldc,
            has_avx2_fma(),
        );
    }

    /// [`Self::run_raw`] with row `p` of `B` at `b + offs[p]` (an implicit
    /// im2col: each tap's row is a shifted view of the padded input).
    ///
    /// # Safety
    /// `offs` holds `k` offsets; `b` must be readable at `offs[p] + j` and
    /// `c` writable at `i·ldc + j` for `p < k`, `i < m`, `j < n`; `bias`
    /// null or readable for `m` values.
    #[allow(clippy::too_many_arguments)]
    pub unsafe fn run_offsets(
        &self,
        b: *const f32,
        offs: &[usize],
        n: usize,
        bias: *const f32,
        relu: bool,
        c: *mut f32,
        ldc: usize,
    ) {
        assert!(offs.len() >= self.k, "PackedLhs::run_offsets sizes");
        let panels = 0..self.m.div_ceil(MR);
        self.run_with(
            b,
            BRows::Offsets(offs.as_ptr()),
            (n, n),
            panels,
            (bias, relu),
            c,
            ldc,
            has_avx2_fma(),
        );
    }

    /// [`Self::run`] without bias or ReLU for the rows of panels `panels`
    /// ([`MR`] rows each; rows `panels.start·MR..min(panels.end·MR, m)`),
    /// where `b` holds `k` whole rows of `ldb` and `c` `m` whole rows of
    /// `ldc`, and columns `n..ldc` of `c` may be overwritten (scratch): the
    /// register tiles then read and write whole 16-column runs up to
    /// `min(ldb, ldc)` instead of masked ones, which cost AMD's cores
    /// several cycles per load and store.
    ///
    /// # Panics
    /// If `b`, `c` or the strides are shorter than the sizes say, or the
    /// panels are past `m`.
    pub fn run_padded(&self, b: &[f32], ldb: usize, n: usize, c: &mut [f32], ldc: usize, panels: Range<usize>) {
        let (m, k) = (self.m, self.k);
        assert!(
            ldb >= n
                && ldc >= n
                && b.len() >= k * ldb
                && c.len() >= m * ldc
                && panels.start <= panels.end
                && panels.end <= m.div_ceil(MR),
            "PackedLhs::run_padded sizes"
        );
        // SAFETY: the assertion bounds every read of `b` (whole rows) and
        // write of `c` (whole rows; columns past n are the caller's scratch).
        unsafe {
            self.run_with(
                b.as_ptr(),
                BRows::Stride(ldb),
                (n, ldb.min(ldc)),
                panels,
                (std::ptr::null(), false),
                c.as_mut_ptr(),
                ldc,
                has_avx2_fma(),
            )
        }
    }

    /// [`Self::run_raw`] for the rows of `panels`, on the AVX2 kernel when
    /// `fast` (the caller checked the CPU); `(n, wide)`: the columns to
    /// compute, and how many columns of `b`'s rows may be read and of `c`'s
    /// rows written (at least `n`).
    #[allow(clippy::too_many_arguments)]
    unsafe fn run_with(
        &self,
        b: *const f32,
        rows_b: BRows,
        (n, wide): (usize, usize),
        panels: Range<usize>,
        (bias, relu): (*const f32, bool),
        c: *mut f32,
        ldc: usize,
        fast: bool,
    ) {
        let (m, k) = (self.m, self.k);
        if m == 0 || n == 0 {
            return;
        }
        if k == 0 {
            for i in 0..m {
                let v = if bias.is_null() { 0.0 } else { *bias.add(i) };
                let v = if relu { relu_f32(v) } else { v };
                for j in 0..n {
                    c.add(i * ldc + j).write(v);
                }
            }
            return;
        }
        // K blocks of equal size, at most KC.
        let step = k.div_ceil(k.div_ceil(KC));
        let mut p0 = 0;
        while p0 < k {
            let kc = (k - p0).min(step);
            let last = p0 + kc == k;
            let mut j = 0;
            while j < n {
                let cols = (n - j).min(NR);
                for pi in panels.clone() {
                    let rows = (m - pi * MR).min(MR);
                    let a = self.data.as_ptr().add((pi * k + p0) * MR);
                    let e = Epilogue {
                        c: c.add(pi * MR * ldc + j),
                        ldc,
                        bias: if bias.is_null() || p0 > 0 {
                            std::ptr::null()
                        } else {
                            bias.add(pi * MR)
                        },
                        accumulate: p0 > 0,
                        relu: relu && last,
                    };
                    let (bt, br) = match rows_b {
                        BRows::Stride(ldb) => (b.add(p0 * ldb + j), BRows::Stride(ldb)),
                        BRows::Offsets(o) => (b.add(j), BRows::Offsets(o.add(p0))),
                    };
                    #[cfg(target_arch = "x86_64")]
                    if fast {
                        match br {
                            BRows::Stride(ldb) => {
                                avx2::tile::<false>(a, bt, ldb, std::ptr::null(), kc, rows, cols, wide - j, e)
                            }
                            BRows::Offsets(o) => avx2::tile::<true>(a, bt, 0, o, kc, rows, cols, wide - j, e),
                        }
                        continue;
                    }
                    let _ = fast;
                    tile_generic(a, bt, br, kc, rows, cols, e);
                }
                j += NR;
            }
            p0 += kc;
        }
    }
}

/// Where the rows of `B` lie: `ldb` apart, or at offsets from its start.
#[derive(Clone, Copy)]
enum BRows {
    /// Row `p` at `p·ldb`.
    Stride(usize),
    /// Row `p` at `offs[p]`.
    Offsets(*const usize),
}

/// ReLU as the `Relu` op computes it: 0 below zero, `v` otherwise (NaN
/// and -0.0 pass through).
#[inline(always)]
fn relu_f32(v: f32) -> f32 {
    if v < 0.0 {
        0.0
    } else {
        v
    }
}

/// Whether the AVX2 + FMA kernel runs on this CPU.
pub fn has_avx2_fma() -> bool {
    #[cfg(target_arch = "x86_64")]
    {
        std::is_x86_feature_detected!("avx2") && std::is_x86_feature_detected!("fma")
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        false
    }
}

/// The portable tile: the same sums in the same order as the AVX2 one.
unsafe fn tile_generic(a: *const f32, b: *const f32, rows_b: BRows, kc: usize, rows: usize, cols: usize, e: Epilogue) {
    let mut acc = [[0.0f32; NR]; MR];
    for p in 0..kc {
        let br = match rows_b {
            BRows::Stride(ldb) => b.add(p * ldb),
            BRows::Offsets(o) => b.add(*o.add(p)),
        };
        for (r, acc_r) in acc.iter_mut().enumerate().take(rows) {
            let av = *a.add(p * MR + r);
            for (j, v) in acc_r.iter_mut().enumerate().take(cols) {
                *v = av.mul_add(*br.add(j), *v);
            }
        }
    }
    for (r, acc_r) in acc.iter().enumerate().take(rows) {
        let bias = if e.bias.is_null() { 0.0 } else { *e.bias.add(r) };
        for (j, &v) in acc_r.iter().enumerate().take(cols) {
            let dst = e.c.add(r * e.ldc + j);
            let mut v = v + if e.accumulate { *dst } else { bias };
            if e.relu {
                v = relu_f32(v);
            }
            dst.write(v);
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::{Epilogue, MR};

    /// A mask of the first `n` (0..=8) lanes.
    #[inline(always)]
    unsafe fn mask(n: usize) -> __m256i {
        _mm256_cmpgt_epi32(_mm256_set1_epi32(n as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7))
    }

    /// `rows` × `cols` (≤ 6 × 16) outputs over `kc` inputs; row `p` of `b`
    /// at `offs[p]` when `OFFS`, else at `p·ldb`. With `wide` ≥ 16, whole
    /// 16-column runs of `b` may be read and of `c` written.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn tile<const OFFS: bool>(
        a: *const f32,
        b: *const f32,
        ldb: usize,
        offs: *const usize,
        kc: usize,
        rows: usize,
        cols: usize,
        wide: usize,
        e: Epilogue,
    ) {
        let mut acc = [[_mm256_setzero_ps(); 2]; MR];
        let (m0, m1) = (mask(cols.min(8)), mask(cols.saturating_sub(8)));
        let full = cols == 16 || wide >= 16;
        let mut ap = a;
        let mut bp = b;
        for p in 0..kc {
            if OFFS {
                bp = b.add(*offs.add(p));
            }
            let (b0, b1) = if full {
                (_mm256_loadu_ps(bp), _mm256_loadu_ps(bp.add(8)))
            } else {
                (_mm256_maskload_ps(bp, m0), _mm256_maskload_ps(bp.add(8), m1))
            };
            for (r, acc_r) in acc.iter_mut().enumerate() {
                let av = _mm256_broadcast_ss(&*ap.add(r));
                acc_r[0] = _mm256_fmadd_ps(av, b0, acc_r[0]);
                acc_r[1] = _mm256_fmadd_ps(av, b1, acc_r[1]);
            }
            ap = ap.add(MR);
            if !OFFS {
                bp = bp.add(ldb);
            }
        }
        let zero = _mm256_setzero_ps();
        for (r, acc_r) in acc.iter().enumerate().take(rows) {
            let dst = e.c.add(r * e.ldc);
            let mut v = *acc_r;
            if e.accumulate {
                v[0] = _mm256_add_ps(v[0], _mm256_maskload_ps(dst, m0));
                v[1] = _mm256_add_ps(v[1], _mm256_maskload_ps(dst.add(8), m1));
            } else if !e.bias.is_null() {
                let bv = _mm256_broadcast_ss(&*e.bias.add(r));
                v[0] = _mm256_add_ps(v[0], bv);
                v[1] = _mm256_add_ps(v[1], bv);
            }
            if e.relu {
                // max(0, v) returns v when v is NaN and keeps -0.0, as `Relu` does.
                v[0] = _mm256_max_ps(zero, v[0]);
                v[1] = _mm256_max_ps(zero, v[1]);
            }
            if full {
                _mm256_storeu_ps(dst, v[0]);
                _mm256_storeu_ps(dst.add(8), v[1]);
            } else {
                _mm256_maskstore_ps(dst, m0, v[0]);
                _mm256_maskstore_ps(dst.add(8), m1, v[1]);
            }
        }
    }
}

/// The geometry of a 2-D convolution's im2col: input planes `h × w`, kernel
/// `kh × kw`, strides, dilations, the top and left pads, the output size.
#[derive(Clone, Copy, Debug)]
pub struct Im2col {
    /// Input height.
    pub h: usize,
    /// Input width.
    pub w: usize,
    /// Kernel height.
    pub kh: usize,
    /// Kernel width.
    pub kw: usize,
    /// Strides (y, x).
    pub s: [usize; 2],
    /// Dilations (y, x).
    pub d: [usize; 2],
    /// Pads before (top, left).
    pub pad: [usize; 2],
    /// Output height.
    pub oh: usize,
    /// Output width.
    pub ow: usize,
}

impl Im2col {
    /// Fills `col` (`channels·kh·kw` rows of `ld` values) with output pixels
    /// `j0..j0+cols` (flat, row-major over `oh × ow`): row `(c, ky, kx)`
    /// holds, per pixel, input channel `c`'s value under that tap (0 in the
    /// padding). `x` holds the channels' planes one after another.
    ///
    /// # Panics
    /// If `x` or `col` is shorter than the sizes say.
    pub fn fill(&self, x: &[f32], channels: usize, j0: usize, cols: usize, col: &mut [f32], ld: usize) {
        let plane = self.h * self.w;
        let taps = self.kh * self.kw;
        for (r, row) in col.chunks_mut(ld.max(1)).take(channels * taps).enumerate() {
            let (c, ky, kx) = (r / taps, (r / self.kw) % self.kh, r % self.kw);
            self.fill_row(&x[c * plane..][..plane], ky, kx, j0, &mut row[..cols]);
        }
    }

    /// One im2col row: tap `(ky, kx)` of one input plane for `dst.len()`
    /// output pixels from `j0`.
    fn fill_row(&self, plane: &[f32], ky: usize, kx: usize, j0: usize, dst: &mut [f32]) {
        let ow = self.ow.max(1);
        // ix = ox·sx + off lies in [0, w) for ox in [lo, hi).
        let off = (kx * self.d[1]) as isize - self.pad[1] as isize;
        let sx = self.s[1] as isize;
        let lo = if off >= 0 { 0 } else { ((-off + sx - 1) / sx) as usize }.min(ow);
        let hi = (((self.w as isize - off).max(0) + sx - 1) / sx).clamp(lo as isize, ow as isize) as usize;
        let mut j = j0;
        let mut out = 0;
        while out < dst.len() {
            let (oy, ox0) = (j / ow, j % ow);
            let n = (ow - ox0).min(dst.len() - out);
            let seg = &mut dst[out..out + n];
            let iy = (oy * self.s[0] + ky * self.d[0]) as isize - self.pad[0] as isize;
            if iy < 0 || iy >= self.h as isize {
                seg.fill(0.0);
            } else {
                let src = &plane[iy as usize * self.w..][..self.w];
                // Pixels ox0 + [a, b) of the segment read inside the row.
                let a = lo.saturating_sub(ox0).min(n);
                let b = hi.saturating_sub(ox0).clamp(a, n);
                seg[..a].fill(0.0);
                seg[b..].fill(0.0);
                let first = ((ox0 + a) as isize * sx + off) as usize;
                if sx == 1 {
                    seg[a..b].copy_from_slice(&src[first..first + (b - a)]);
                } else {
                    for (v, &s) in seg[a..b].iter_mut().zip(src[first..].iter().step_by(sx as usize)) {
                        *v = s;
                    }
                }
            }
            out += n;
            j += n;
        }
    }
}

/// A batch of 2-D convolutions (NCHW): `n` images of `c` channels, `m`
/// output channels in `group` groups, the window geometry.
#[derive(Clone, Copy, Debug)]
pub struct ConvShape {
    /// Images.
    pub n: usize,
    /// Input channels.
    pub c: usize,
    /// Output channels.
    pub m: usize,
    /// Groups (`c` and `m` divisible by it).
    pub group: usize,
    /// Planes, kernel and window.
    pub geom: Im2col,
}

/// Below this many multiply-adds (about 6 µs on one core) a convolution
/// runs on one thread; above, its tasks go to [`super::pool`], whose
/// workers spin between jobs, so a second thread starts within
/// microseconds.
pub(crate) const PARALLEL_MIN_MACS: usize = 1 << 18;
/// Multiply-adds a parallel task does at least (tasks are grouped up to it).
const TASK_MIN_MACS: usize = 1 << 15;
/// The im2col tile's size limit in floats (256 KiB: it stays in L2).
const COL_MAX: usize = 1 << 16;

thread_local! {
    /// Each thread's im2col tile, kept between calls.
    static COL: std::cell::RefCell<Vec<f32>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The output pointer, shared by tasks that write disjoint pixel ranges.
#[derive(Clone, Copy)]
pub(crate) struct OutPtr(pub(crate) *mut f32);
// SAFETY: tasks write disjoint elements (see `conv2d`).
unsafe impl Send for OutPtr {}
// SAFETY: as for Send.
unsafe impl Sync for OutPtr {}

/// `y [n, m, oh, ow]` = the convolution of `x [n, c, h, w]` with the
/// weight packed per group (`w[g]`: `m/group` rows of `c/group·kh·kw`),
/// plus `bias [m]`, then ReLU when `relu`. A 1×1 convolution with unit
/// strides and no padding reads `x` in place; others fill an im2col tile of
/// output pixels per task. Tasks (image × pixel tile) run in parallel for
/// large products.
///
/// # Panics
/// If `x`, `w` or `bias` do not match the shape.
pub fn conv2d(s: &ConvShape, x: &[f32], w: &[PackedLhs], bias: Option<&[f32]>, relu: bool) -> Vec<f32> {
    let g = &s.geom;
    let (cg, mg) = (s.c / s.group.max(1), s.m / s.group.max(1));
    let (plane, pix, kk) = (g.h * g.w, g.oh * g.ow, cg * g.kh * g.kw);
    assert!(
        x.len() >= s.n * s.c * plane
            && w.len() == s.group
            && w.iter().all(|p| p.m() == mg && p.k() == kk)
            && bias.is_none_or(|b| b.len() >= s.m),
        "conv2d sizes"
    );
    let len = s.n * s.m * pix;
    if len == 0 {
        return Vec::new();
    }
    // Not zeroed first: each path writes every output element (every image
    // × channel × pixel) through the pointer.
    let mut y: Vec<f32> = Vec::with_capacity(len);
    let out = OutPtr(y.as_mut_ptr());
    let direct: Option<Vec<&DirectLhs>> = w.iter().map(|p| p.direct.as_ref()).collect();
    if let Some(wg) = w[0].winograd.as_ref().filter(|_| s.group == 1 && winograd::pays(s)) {
        winograd::conv2d_winograd(s, x, wg, bias, relu, false, out);
    } else if let Some(direct) = direct.filter(|_| conv_direct::fits(s)) {
        conv_direct::conv2d_direct(s, x, &direct, bias, relu, false, out);
    } else if batched_fits(s) {
        conv2d_batched(s, x, w, bias, relu, out);
    } else if wide_fits(s) {
        conv2d_wide(s, x, w, bias, relu, out);
    } else {
        conv2d_tiled(s, x, w, bias, relu, out);
    }
    // SAFETY: the capacity holds `len` floats, all written above.
    unsafe { y.set_len(len) };
    y
}

/// [`conv2d`] followed by a 2×2, stride-2 max pooling without padding
/// (`y [n, m, oh/2, ow/2]`; a NaN in a window gives NaN), in one pass on
/// the direct kernel: the convolution's full output is never written.
/// `None` where the direct kernel does not take this convolution (the
/// caller then runs [`conv2d`] and the pooling apart).
///
/// # Panics
/// If `x`, `w` or `bias` do not match the shape.
pub fn conv2d_max_pool2(
    s: &ConvShape,
    x: &[f32],
    w: &[PackedLhs],
    bias: Option<&[f32]>,
    relu: bool,
) -> Option<Vec<f32>> {
    let g = &s.geom;
    let len = s.n * s.m * (g.oh / 2) * (g.ow / 2);
    let winograd = w
        .first()
        .and_then(|p| p.winograd.as_ref())
        .filter(|_| s.group == 1 && winograd::pays(s));
    if let Some(wg) = winograd {
        // Not zeroed first: every tile writes its pooled element.
        let mut y: Vec<f32> = Vec::with_capacity(len);
        winograd::conv2d_winograd(s, x, wg, bias, relu, true, OutPtr(y.as_mut_ptr()));
        // SAFETY: the capacity holds `len` floats, all written above.
        unsafe { y.set_len(len) };
        return Some(y);
    }
    let direct: Option<Vec<&DirectLhs>> = w.iter().map(|p| p.direct.as_ref()).collect();
    let direct = direct.filter(|_| conv_direct::fits(s) && g.oh >= 2 && g.ow >= 2)?;
    // Not zeroed first: the direct kernel writes every pooled element.
    let mut y: Vec<f32> = Vec::with_capacity(len);
    conv_direct::conv2d_direct(s, x, &direct, bias, relu, true, OutPtr(y.as_mut_ptr()));
    // SAFETY: the capacity holds `len` floats, all written above.
    unsafe { y.set_len(len) };
    Some(y)
}

/// A convolution over tiles of output pixels, an im2col tile per task (the
/// input itself for a 1×1 unit-stride convolution), tasks over images ×
/// pixel tiles.
fn conv2d_tiled(s: &ConvShape, x: &[f32], w: &[PackedLhs], bias: Option<&[f32]>, relu: bool, out: OutPtr) {
    let g = &s.geom;
    let (cg, mg) = (s.c / s.group.max(1), s.m / s.group.max(1));
    let (plane, pix, kk) = (g.h * g.w, g.oh * g.ow, cg * g.kh * g.kw);
    let direct = g.kh == 1 && g.kw == 1 && g.s == [1, 1] && g.pad == [0, 0] && g.oh == g.h && g.ow == g.w;
    // Pixels per task: what fits the im2col tile; fewer when there are
    // fewer images than threads, so a single image is split between them.
    let mut tile = if direct {
        1024
    } else {
        (COL_MAX / kk.max(1) / NR * NR).max(NR)
    };
    let threads = super::pool::threads();
    if s.n < threads {
        tile = tile.min((pix.div_ceil(threads)).div_ceil(NR) * NR);
    }
    let tile = tile.min(pix);
    let tiles = pix.div_ceil(tile);
    let task = |t: usize| {
        let (img, j0) = (t / tiles, (t % tiles) * tile);
        let cols = tile.min(pix - j0);
        // The whole wrapper (not its raw field) moves into the closure.
        let dst = out;
        let run = |col: Option<&mut [f32]>| {
            let mut col = col;
            for (gi, wg) in w.iter().enumerate() {
                let xg = &x[(img * s.c + gi * cg) * plane..][..cg * plane];
                let (b, ldb) = match col.as_deref_mut() {
                    Some(col) => {
                        g.fill(xg, cg, j0, cols, col, tile);
                        (col.as_ptr(), tile)
                    }
                    None => (xg[j0..].as_ptr(), plane),
                };
                let bias = bias.map_or(std::ptr::null(), |b| b[gi * mg..].as_ptr());
                // SAFETY: `b` holds kk rows of `ldb` from column j0 (the tile,
                // or x's planes); the task writes columns j0..j0+cols of rows
                // g·mg.. of image img, which no other task writes.
                unsafe {
                    let c = dst.0.add((img * s.m + gi * mg) * pix + j0);
                    wg.run_raw(b, ldb, cols, bias, relu, c, pix);
                }
            }
        };
        if direct {
            run(None);
        } else {
            COL.with(|c| {
                let mut c = c.borrow_mut();
                if c.len() < kk * tile {
                    c.resize(kk * tile, 0.0);
                }
                run(Some(&mut c[..kk * tile]));
            });
        }
    };
    let tasks = s.n * tiles;
    let macs = s.n * s.m * pix * kk;
    if macs >= PARALLEL_MIN_MACS && tasks > 1 && threads > 1 {
        let per = (TASK_MIN_MACS / (macs / tasks).max(1)).max(1);
        super::pool::for_each_chunked(tasks, per, task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// Output pixels per image at or below which [`conv2d_batched`] may take a
/// convolution.
const SMALL_PIX: usize = 256;
/// The largest im2col matrix (floats) of one image that [`conv2d_batched`]
/// takes, and the size (128 KiB) it fills per task where images allow.
const BATCH_COL_MAX: usize = 1 << 15;

thread_local! {
    /// Each thread's padded planes and im2col matrix (see [`conv2d_batched`]).
    static BATCH: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// Whether [`conv2d_batched`] takes this convolution: small output planes
/// whose im2col matrix fits [`BATCH_COL_MAX`].
fn batched_fits(s: &ConvShape) -> bool {
    let g = &s.geom;
    let kk = (s.c / s.group.max(1)) * g.kh * g.kw;
    let pix = g.oh * g.ow;
    pix > 0 && pix <= SMALL_PIX && kk * pix <= BATCH_COL_MAX
}

/// The extent `(hp, wp)` of the zero-padded input the outputs read.
fn padded_dims(g: &Im2col) -> (usize, usize) {
    let hp = (g.oh - 1) * g.s[0] + (g.kh - 1) * g.d[0] + 1;
    let wp = (g.ow - 1) * g.s[1] + (g.kw - 1) * g.d[1] + 1;
    (hp, wp)
}

/// Copies `cg` input planes `h × w` into zero-padded planes `hp × wp`
/// (the top and left pads before them, only what the outputs read).
fn pad_planes(g: &Im2col, x: &[f32], cg: usize, pad: &mut [f32]) {
    let (hp, wp) = padded_dims(g);
    let plane = g.h * g.w;
    pad[..cg * hp * wp].fill(0.0);
    let rows = g.h.min(hp.saturating_sub(g.pad[0]));
    let n = g.w.min(wp.saturating_sub(g.pad[1]));
    for (c, pc) in pad.chunks_mut(hp * wp).take(cg).enumerate() {
        for iy in 0..rows {
            let dst = &mut pc[(iy + g.pad[0]) * wp + g.pad[1]..][..n];
            dst.copy_from_slice(&x[c * plane + iy * g.w..][..n]);
        }
    }
}

/// One image's im2col columns from its padded planes: row `(c, ky, kx)`
/// (`ld` apart in `col`) gets that tap of every output pixel.
///
/// # Panics
/// If `pad` or `col` is shorter than the sizes say.
fn fill_from_padded(g: &Im2col, pad: &[f32], cg: usize, col: &mut [f32], ld: usize) {
    let (hp, wp) = padded_dims(g);
    let (pix, rows) = (g.oh * g.ow, cg * g.kh * g.kw);
    assert!(
        rows == 0 || (pad.len() >= cg * hp * wp && ld >= pix && col.len() >= (rows - 1) * ld + pix),
        "fill_from_padded sizes"
    );
    let (sy, sx, ow) = (g.s[0] * wp, g.s[1], g.ow);
    let mut r = 0;
    for c in 0..cg {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                let base = c * hp * wp + ky * g.d[0] * wp + kx * g.d[1];
                // SAFETY: the last read, (oh-1)·sy + (ow-1)·sx past `base`, is
                // c·hp·wp + (hp-1)·wp + wp-1 (see `padded_dims`), inside
                // `pad`; the writes are row r's pix floats, inside `col`.
                unsafe {
                    let (src, dst) = (pad.as_ptr().add(base), col.as_mut_ptr().add(r * ld));
                    for oy in 0..g.oh {
                        let (s, d) = (src.add(oy * sy), dst.add(oy * ow));
                        if sx == 1 {
                            copy_short_raw(d, s, ow);
                        } else {
                            for ox in 0..ow {
                                *d.add(ox) = *s.add(ox * sx);
                            }
                        }
                    }
                }
                r += 1;
            }
        }
    }
}

/// Copies `n` floats (a few: an output row) in fixed-size moves rather
/// than a `memcpy` call.
///
/// # Safety
/// `src` readable and `dst` writable for `n` floats, not overlapping.
#[inline(always)]
pub(crate) unsafe fn copy_short_raw(dst: *mut f32, src: *const f32, n: usize) {
    let mut i = 0;
    while i + 8 <= n {
        std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), 8);
        i += 8;
    }
    if i + 4 <= n {
        std::ptr::copy_nonoverlapping(src.add(i), dst.add(i), 4);
        i += 4;
    }
    while i < n {
        *dst.add(i) = *src.add(i);
        i += 1;
    }
}

/// A convolution with small output planes, several images per task: each
/// image's planes are copied into zero-padded planes, its im2col columns
/// (exact: `oh·ow` per image) go side by side into one matrix of the
/// task's images, and the GEMM runs per image on its columns, writing the
/// output planes in place.
fn conv2d_batched(s: &ConvShape, x: &[f32], w: &[PackedLhs], bias: Option<&[f32]>, relu: bool, out: OutPtr) {
    let g = &s.geom;
    let (cg, mg) = (s.c / s.group, s.m / s.group);
    let (plane, pix, kk) = (g.h * g.w, g.oh * g.ow, cg * g.kh * g.kw);
    let (hp, wp) = padded_dims(g);
    let macs = s.n * s.m * pix * kk;
    let threads = super::pool::threads();
    let parallel = macs >= PARALLEL_MIN_MACS && s.n > 1 && threads > 1;
    let mut chunk = (BATCH_COL_MAX / (kk * pix)).clamp(1, s.n);
    if parallel {
        // About four tasks per thread, so a thread that starts late (a
        // loaded machine) leaves its share to the others.
        chunk = chunk.min(s.n.div_ceil(4 * threads));
    }
    let tasks = s.n.div_ceil(chunk);
    let out_ptr = out;
    let task = |t: usize| {
        let (i0, i1) = (t * chunk, ((t + 1) * chunk).min(s.n));
        let ld = (i1 - i0) * pix;
        let dst_ptr = out_ptr;
        BATCH.with(|bufs| {
            let (pad, col) = &mut *bufs.borrow_mut();
            pad.resize(cg * hp * wp, 0.0);
            col.resize(kk * ld, 0.0);
            for (gi, wg) in w.iter().enumerate() {
                for img in i0..i1 {
                    pad_planes(g, &x[(img * s.c + gi * cg) * plane..][..cg * plane], cg, pad);
                    fill_from_padded(g, pad, cg, &mut col[(img - i0) * pix..], ld);
                }
                let bias = bias.map_or(std::ptr::null(), |b| b[gi * mg..].as_ptr());
                for img in i0..i1 {
                    // SAFETY: `col` holds kk rows of `ld` floats, this image's
                    // columns from (img - i0)·pix; the output rows g·mg.. of
                    // image img (pix floats each) lie in y and only this task
                    // writes them.
                    unsafe {
                        let c = dst_ptr.0.add((img * s.m + gi * mg) * pix);
                        wg.run_raw(col.as_ptr().add((img - i0) * pix), ld, pix, bias, relu, c, pix);
                    }
                }
            }
        })
    };
    if parallel && tasks > 1 {
        super::pool::for_each(tasks, task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// The largest wide im2col matrix (floats) [`conv2d_wide`] builds per image.
const WIDE_MAX: usize = 1 << 18;

thread_local! {
    /// Each thread's padded planes and wide output (see [`conv2d_wide`]).
    static WIDE: std::cell::RefCell<(Vec<f32>, Vec<f32>)> = const { std::cell::RefCell::new((Vec::new(), Vec::new())) };
}

/// The padded width and the wide row length of a unit-stride convolution.
fn wide_dims(g: &Im2col) -> (usize, usize, usize) {
    let wp = (g.ow - 1) + (g.kw - 1) * g.d[1] + 1;
    let hp = (g.oh - 1) + (g.kh - 1) * g.d[0] + 1;
    (hp, wp, (g.oh - 1) * wp + g.ow)
}

/// Whether [`conv2d_wide`] takes this convolution: unit strides, and one
/// image's wide im2col matrix within [`WIDE_MAX`].
fn wide_fits(s: &ConvShape) -> bool {
    let g = &s.geom;
    if g.s != [1, 1] || g.oh == 0 || g.ow == 0 {
        return false;
    }
    let (_, _, len) = wide_dims(g);
    (s.c / s.group.max(1)) * g.kh * g.kw * len <= WIDE_MAX
}

/// A unit-stride convolution, a band of an image's output rows per task
/// (the whole image when there are as many images as threads): each group's input
/// planes are copied once into zero-padded planes `hp × wp` (`wp` the
/// padded width the outputs need), so that tap `(c, ky, kx)` of output
/// pixel `(oy, ox)` sits at `c·hp·wp + (oy + ky·dy)·wp + ox + kx·dx`: every
/// im2col row is one contiguous copy, over "wide" pixels `oy·wp + ox`
/// (`ox` up to `wp`; the extra columns are computed and dropped when the
/// rows are copied out).
fn conv2d_wide(s: &ConvShape, x: &[f32], w: &[PackedLhs], bias: Option<&[f32]>, relu: bool, out: OutPtr) {
    let g = &s.geom;
    let (cg, mg) = (s.c / s.group, s.m / s.group);
    let (plane, pix, kk) = (g.h * g.w, g.oh * g.ow, cg * g.kh * g.kw);
    let (hp, wp, _) = wide_dims(g);
    // Bands of output rows per image: one, or enough to give every thread
    // work when there are fewer images than threads.
    let threads = super::pool::threads();
    let bands = if s.n >= threads {
        1
    } else {
        threads.div_ceil(s.n).min(g.oh)
    };
    let band_rows = g.oh.div_ceil(bands);
    let bands = g.oh.div_ceil(band_rows);
    let out_ptr = out;
    let task = |t: usize| {
        let (img, oy0) = (t / bands, (t % bands) * band_rows);
        let rows = band_rows.min(g.oh - oy0);
        let len = (rows - 1) * wp + g.ow;
        let dst_ptr = out_ptr;
        WIDE.with(|bufs| {
            let (pad, out) = &mut *bufs.borrow_mut();
            pad.resize(cg * hp * wp, 0.0);
            out.resize(mg * len, 0.0);
            // Tap (c, ky, kx)'s row: the padded planes from its first pixel.
            let offs: Vec<usize> = (0..kk)
                .map(|r| {
                    let (c, ky, kx) = (r / (g.kh * g.kw), (r / g.kw) % g.kh, r % g.kw);
                    c * hp * wp + (oy0 + ky * g.d[0]) * wp + kx * g.d[1]
                })
                .collect();
            for (gi, wg) in w.iter().enumerate() {
                let xg = &x[(img * s.c + gi * cg) * plane..][..cg * plane];
                pad.fill(0.0);
                for (c, pc) in pad.chunks_mut(hp * wp).enumerate() {
                    for iy in 0..g.h.min(hp.saturating_sub(g.pad[0])) {
                        let dst = &mut pc[(iy + g.pad[0]) * wp + g.pad[1]..];
                        let n = g.w.min(wp.saturating_sub(g.pad[1]));
                        dst[..n].copy_from_slice(&xg[c * plane + iy * g.w..][..n]);
                    }
                }
                let bias = bias.map_or(std::ptr::null(), |b| b[gi * mg..].as_ptr());
                // SAFETY: row r of B, offs[r] + j for j < len, is at most
                // c·hp·wp + (oy0 + rows - 1 + ky·dy)·wp + kx·dx + ow - 1 <
                // (c + 1)·hp·wp (see `wide_dims`), inside `pad`; `out` holds
                // mg rows of len.
                unsafe { wg.run_offsets(pad.as_ptr(), &offs, len, bias, relu, out.as_mut_ptr(), len) };
                for (mo, o) in out.chunks(len).enumerate() {
                    for r in 0..rows {
                        let src = &o[r * wp..][..g.ow];
                        // SAFETY: row oy0 + r of channel g·mg + mo of image
                        // img lies inside y, and only this task writes it.
                        unsafe {
                            let at = ((img * s.m + gi * mg + mo) * g.oh + oy0 + r) * g.ow;
                            std::ptr::copy_nonoverlapping(src.as_ptr(), dst_ptr.0.add(at), g.ow);
                        }
                    }
                }
            }
        })
    };
    let tasks = s.n * bands;
    let macs = s.n * s.m * pix * kk;
    if macs >= PARALLEL_MIN_MACS && tasks > 1 && threads > 1 {
        let per = (TASK_MIN_MACS / (macs / tasks).max(1)).max(1);
        super::pool::for_each_chunked(tasks, per, task);
    } else {
        (0..tasks).for_each(task);
    }
}

#[cfg(test)]
pub(super) mod tests {
    use super::*;

    /// A pseudo-random value in [-1, 1) from a linear congruential step
    /// (the convolution tests' inputs and weights).
    pub(in crate::linalg) fn next(seed: &mut u32) -> f32 {
        *seed = seed.wrapping_mul(1_664_525).wrapping_add(1_013_904_223);
        (*seed >> 8) as f32 / (1u32 << 24) as f32 * 2.0 - 1.0
    }

    #[test]
    fn run_matches_loops_on_odd_shapes() {
        let mut seed = 3;
        for &(m, k, n) in &[
            (1, 1, 1),
            (6, 9, 16),
            (7, 9, 17),
            (8, 72, 64),
            (13, 300, 33),
            (16, 257, 5),
            (3, 600, 40),
            (11, 288, 110),
        ] {
            let lda = k + 2;
            let (ldb, ldc) = (n + 3, n + 1);
            let a: Vec<f32> = (0..m * lda).map(|_| next(&mut seed)).collect();
            let b: Vec<f32> = (0..k * ldb).map(|_| next(&mut seed)).collect();
            let bias: Vec<f32> = (0..m).map(|_| next(&mut seed)).collect();
            let p = PackedLhs::new(&a, m, k, lda);
            for (bias, relu) in [(None, false), (Some(&bias[..]), false), (Some(&bias[..]), true)] {
                let offs: Vec<usize> = (0..k).map(|q| q * ldb).collect();
                for (fast, by_offsets) in [
                    (false, false),
                    (false, true),
                    (has_avx2_fma(), false),
                    (has_avx2_fma(), true),
                ] {
                    let mut c = vec![f32::NAN; m * ldc];
                    let bp = bias.map_or(std::ptr::null(), <[f32]>::as_ptr);
                    let rows_b = if by_offsets {
                        BRows::Offsets(offs.as_ptr())
                    } else {
                        BRows::Stride(ldb)
                    };
                    // SAFETY: `b` and `c` hold k and m rows of their strides
                    // (`offs` lists b's row starts), `bias` m values.
                    unsafe {
                        p.run_with(
                            b.as_ptr(),
                            rows_b,
                            (n, n),
                            0..m.div_ceil(MR),
                            (bp, relu),
                            c.as_mut_ptr(),
                            ldc,
                            fast,
                        )
                    };
                    for i in 0..m {
                        for j in 0..n {
                            let mut want = bias.map_or(0.0f64, |b| b[i] as f64);
                            for q in 0..k {
                                want += a[i * lda + q] as f64 * b[q * ldb + j] as f64;
                            }
                            if relu {
                                want = want.max(0.0);
                            }
                            let got = c[i * ldc + j];
                            assert!(
                                (got as f64 - want).abs() <= 1e-5 * (k as f64).sqrt() * (1.0 + want.abs()),
                                "{m}x{k}x{n} ({i}, {j}): {got} vs {want}"
                            );
                        }
                        if ldc > n {
                            assert!(c[i * ldc + n].is_nan(), "wrote past n");
                        }
                    }
                }
            }
        }
    }

    /// One of the convolution paths.
    type PathFn = fn(&ConvShape, &[f32], &[PackedLhs], Option<&[f32]>, bool, OutPtr);

    /// The convolution in f64 loops, straight from the definition.
    fn naive(s: &ConvShape, x: &[f32], w: &[f32], bias: &[f32], relu: bool) -> Vec<f64> {
        let g = &s.geom;
        let (cg, mg) = (s.c / s.group, s.m / s.group);
        let mut y = vec![0.0f64; s.n * s.m * g.oh * g.ow];
        for n in 0..s.n {
            for m in 0..s.m {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let mut acc = bias[m] as f64;
                        for ci in 0..cg {
                            let c = (m / mg) * cg + ci;
                            for ky in 0..g.kh {
                                for kx in 0..g.kw {
                                    let iy = (oy * g.s[0] + ky * g.d[0]) as isize - g.pad[0] as isize;
                                    let ix = (ox * g.s[1] + kx * g.d[1]) as isize - g.pad[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                        continue;
                                    }
                                    let xv = x[((n * s.c + c) * g.h + iy as usize) * g.w + ix as usize];
                                    acc += xv as f64 * w[((m * cg + ci) * g.kh + ky) * g.kw + kx] as f64;
                                }
                            }
                        }
                        y[((n * s.m + m) * g.oh + oy) * g.ow + ox] = if relu && acc < 0.0 { 0.0 } else { acc };
                    }
                }
            }
        }
        y
    }

    /// A convolution case: `(n, c, m, group, h, w, kh, kw, stride,
    /// dilation, pad [t, l, b, r])`.
    type Case = (
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        usize,
        [usize; 2],
        [usize; 2],
        [usize; 4],
    );

    /// A case's shape, and its random input, weight and bias (drawn in that
    /// order) with the weight packed per group.
    fn setup(case: Case, seed: &mut u32) -> (ConvShape, Vec<f32>, Vec<f32>, Vec<f32>, Vec<PackedLhs>) {
        let (n, c, m, group, h, wd, kh, kw, st, dl, pad) = case;
        let oh = (h + pad[0] + pad[2] - (kh - 1) * dl[0] - 1) / st[0] + 1;
        let ow = (wd + pad[1] + pad[3] - (kw - 1) * dl[1] - 1) / st[1] + 1;
        let geom = Im2col {
            h,
            w: wd,
            kh,
            kw,
            s: st,
            d: dl,
            pad: [pad[0], pad[1]],
            oh,
            ow,
        };
        let s = ConvShape { n, c, m, group, geom };
        let (mg, kk) = (m / group, c / group * kh * kw);
        let x: Vec<f32> = (0..n * c * h * wd).map(|_| next(seed)).collect();
        let w: Vec<f32> = (0..m * kk).map(|_| next(seed)).collect();
        let bias: Vec<f32> = (0..m).map(|_| next(seed)).collect();
        let packed = (0..group)
            .map(|gi| PackedLhs::new(&w[gi * mg * kk..], mg, kk, kk))
            .collect();
        (s, x, w, bias, packed)
    }

    /// Every path (batched small planes, wide unit-stride, im2col tiles)
    /// against the loops, on odd sizes: channel and pixel remainders,
    /// padding, strides, dilations, groups, ReLU.
    #[test]
    fn every_path_matches_loops() {
        let mut seed = 11;
        let cases: &[Case] = &[
            (3, 1, 8, 1, 8, 8, 3, 3, [1, 1], [1, 1], [1, 1, 1, 1]),
            (5, 8, 16, 1, 4, 4, 3, 3, [1, 1], [1, 1], [1, 1, 1, 1]),
            (2, 3, 7, 1, 9, 7, 3, 2, [2, 1], [1, 1], [0, 1, 2, 0]),
            (4, 6, 9, 3, 7, 9, 3, 3, [1, 2], [2, 1], [2, 1, 1, 2]),
            (1, 4, 4, 4, 5, 6, 3, 3, [1, 1], [1, 1], [1, 1, 1, 1]),
            (2, 5, 13, 1, 6, 5, 1, 1, [1, 1], [1, 1], [0, 0, 0, 0]),
            (3, 2, 5, 1, 11, 10, 5, 4, [3, 2], [1, 2], [2, 0, 1, 3]),
            (2, 3, 11, 1, 20, 19, 3, 3, [1, 1], [1, 1], [1, 1, 1, 1]),
            (1, 32, 13, 1, 14, 14, 3, 3, [1, 1], [1, 1], [1, 1, 1, 1]),
            (2, 50, 7, 1, 9, 11, 3, 3, [1, 1], [2, 1], [2, 1, 2, 1]),
            (2, 6, 26, 2, 9, 8, 3, 2, [2, 1], [1, 2], [1, 0, 2, 1]),
            (3, 4, 40, 1, 7, 7, 3, 3, [1, 1], [1, 1], [1, 1, 1, 1]),
            (64, 8, 16, 1, 4, 4, 3, 3, [1, 1], [1, 1], [1, 1, 1, 1]),
            (5, 1, 8, 1, 8, 8, 3, 3, [1, 1], [1, 1], [1, 1, 1, 1]),
            (2, 4, 22, 2, 9, 7, 2, 3, [2, 1], [1, 2], [1, 2, 0, 1]),
            // Above PARALLEL_MIN_MACS: parallel tasks.
            (7, 32, 64, 1, 14, 13, 3, 3, [1, 1], [1, 1], [1, 1, 1, 1]),
            (1, 32, 40, 1, 14, 13, 3, 3, [1, 1], [1, 1], [1, 1, 1, 1]),
        ];
        for &(n, c, m, group, h, wd, kh, kw, st, dl, pad) in cases {
            let (s, x, w, bias, packed) = setup((n, c, m, group, h, wd, kh, kw, st, dl, pad), &mut seed);
            let kk = c / group * kh * kw;
            for relu in [false, true] {
                let want = naive(&s, &x, &w, &bias, relu);
                let mut paths: Vec<(&str, Vec<f32>)> = Vec::new();
                let run = |f: PathFn| {
                    let mut y = vec![f32::NAN; want.len()];
                    f(&s, &x, &packed, Some(&bias), relu, OutPtr(y.as_mut_ptr()));
                    y
                };
                paths.push(("batched", run(conv2d_batched)));
                paths.push(("tiled", run(conv2d_tiled)));
                if st == [1, 1] {
                    paths.push(("wide", run(conv2d_wide)));
                }
                let direct: Option<Vec<&DirectLhs>> = packed.iter().map(|p| p.direct.as_ref()).collect();
                if let Some(direct) = direct.filter(|_| conv_direct::fits(&s)) {
                    let mut y = vec![f32::NAN; want.len()];
                    conv_direct::conv2d_direct(&s, &x, &direct, Some(&bias), relu, false, OutPtr(y.as_mut_ptr()));
                    paths.push(("direct", y));
                }
                paths.push(("conv2d", conv2d(&s, &x, &packed, Some(&bias), relu)));
                for (name, got) in paths {
                    for (i, (&g, &e)) in got.iter().zip(&want).enumerate() {
                        assert!(
                            (g as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()) * (kk as f64).sqrt(),
                            "{name} {:?} relu {relu} at {i}: {g} vs {e}",
                            (n, c, m, group, h, wd, kh, kw, st, dl, pad)
                        );
                    }
                }
            }
        }
    }

    /// The direct kernel with the 2×2, stride-2 max pooling fused, against
    /// the loops' convolution pooled in f64: odd output sizes (a row and a
    /// column no window reads), 8- and 16-channel panels with channel
    /// remainders, groups, strides, several pooled chunks per band, rows
    /// wider than a chunk, parallel tasks (one image: its bands split over panels), and a NaN
    /// input.
    #[test]
    fn direct_max_pool2_matches_loops() {
        if !has_avx2_fma() {
            return;
        }
        let mut seed = 5;
        let cases: &[Case] = &[
            (3, 1, 32, 1, 28, 28, 3, 3, [1, 1], [1, 1], [1, 1, 1, 1]),
            (2, 32, 64, 1, 14, 14, 3, 3, [1, 1], [1, 1], [1, 1, 1, 1]),
            (1, 32, 64, 1, 14, 14, 3, 3, [1, 1], [1, 1], [1, 1, 1, 1]),
            (1, 32, 80, 2, 14, 14, 3, 3, [1, 1], [1, 1], [1, 1, 1, 1]),
            (2, 3, 7, 1, 9, 7, 3, 2, [2, 1], [1, 1], [0, 1, 2, 0]),
            (1, 4, 13, 1, 5, 6, 3, 3, [1, 1], [1, 1], [1, 1, 1, 1]),
            (2, 6, 26, 2, 9, 8, 3, 2, [2, 1], [1, 2], [1, 0, 2, 1]),
            (1, 2, 12, 1, 3, 300, 3, 3, [1, 1], [1, 1], [1, 1, 1, 1]),
            (64, 8, 16, 1, 4, 4, 3, 3, [1, 1], [1, 1], [1, 1, 1, 1]),
            (1, 3, 8, 1, 3, 3, 3, 3, [1, 1], [1, 1], [0, 0, 0, 0]),
        ];
        for &(n, c, m, group, h, wd, kh, kw, st, dl, pad) in cases {
            let (s, mut x, w, bias, packed) = setup((n, c, m, group, h, wd, kh, kw, st, dl, pad), &mut seed);
            x[(n * c * h * wd) / 2 + 1] = f32::NAN;
            let (kk, oh, ow) = (c / group * kh * kw, s.geom.oh, s.geom.ow);
            for relu in [false, true] {
                let got = conv2d_max_pool2(&s, &x, &packed, Some(&bias), relu);
                let case = (n, c, m, group, h, wd, kh, kw, st, dl, pad);
                if oh < 2 || ow < 2 {
                    assert!(got.is_none(), "{case:?}");
                    continue;
                }
                let got = got.expect("the direct kernel takes these");
                let conv = naive(&s, &x, &w, &bias, relu);
                let (ph, pw) = (oh / 2, ow / 2);
                assert_eq!(got.len(), n * m * ph * pw);
                let mut nans = 0;
                for (p, plane) in conv.chunks(oh * ow).enumerate() {
                    for py in 0..ph {
                        for px in 0..pw {
                            let at = |dy: usize, dx: usize| plane[(2 * py + dy) * ow + 2 * px + dx];
                            let win = [at(0, 0), at(0, 1), at(1, 0), at(1, 1)];
                            let g = got[(p * ph + py) * pw + px];
                            if win.iter().any(|v| v.is_nan()) {
                                assert!(g.is_nan(), "{case:?} relu {relu} plane {p} ({py}, {px}): {g} for a NaN");
                                nans += 1;
                                continue;
                            }
                            let e = win.iter().fold(f64::NEG_INFINITY, |a, &b| a.max(b));
                            assert!(
                                (g as f64 - e).abs() <= 1e-5 * (1.0 + e.abs()) * (kk as f64).sqrt(),
                                "{case:?} relu {relu} plane {p} ({py}, {px}): {g} vs {e}"
                            );
                        }
                    }
                }
                assert!(nans > 0 || got.len() < 4, "{case:?}: the NaN reached no window");
            }
        }
    }
}
