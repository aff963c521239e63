//! A direct 2-D convolution with output channels in the vector lanes: the
//! weight of one group packed once into panels of [`LANES`] output
//! channels, tap-major (`k` rows of `LANES` values, 64-byte aligned), and
//! the input read in place from zero-padded planes: a register tile of
//! [`PIX`] output pixels × `LANES` channels accumulates, per tap, two
//! aligned weight loads against one broadcast input value per pixel (its
//! address: the pixel's offset plus the tap's, so strides, dilations and
//! exact pixel counts cost nothing extra). Bias and ReLU are applied in
//! registers; the tile is written transposed into the NCHW output.
//!
//! No im2col matrix is built and no column is computed and dropped; what
//! the caller pays per image is a copy of the input rows into padded planes.
//! AVX2 + FMA only ([`DirectLhs::new`] returns `None` elsewhere; callers keep
//! the im2col GEMM).

use super::conv::{copy_short_raw, ConvShape, OutPtr, PARALLEL_MIN_MACS};

/// Output channels per panel (two ymm vectors).
pub const LANES: usize = 16;
/// Output channels per panel for fewer than 12 channels (one ymm vector).
pub const LANES8: usize = 8;
/// Output pixels per register tile with [`LANES8`] panels.
pub const PIX8: usize = 8;
/// Output pixels per register tile (`2·PIX` accumulators).
pub const PIX: usize = 6;

/// 16 floats on a 64-byte boundary.
#[derive(Clone, Copy, Debug, Default)]
#[repr(C, align(64))]
struct Line([f32; LANES]);

/// One group's weight (`m` output channels by `k` taps, `[m, k]` row-major)
/// packed in panels of [`LANES`] channels: panel `b` holds `k` lines, line
/// `p` channel `b·LANES + l`'s weight for tap `p` (zero past `m`).
#[derive(Clone, Debug)]
pub struct DirectLhs {
    m: usize,
    k: usize,
    /// Channels per panel: [`LANES`], or [`LANES8`] for fewer than 12
    /// channels (one ymm vector; `k` runs of 8 values, 32-byte aligned).
    lanes: usize,
    data: Vec<Line>,
}

impl DirectLhs {
    /// Packs `a` (`m` rows of `k`, row `i` at `a[i·lda]`), or `None` where
    /// the CPU lacks AVX2 + FMA.
    ///
    /// # Panics
    /// If `a` is shorter than the sizes say.
    pub fn new(a: &[f32], m: usize, k: usize, lda: usize) -> Option<Self> {
        if !super::conv::has_avx2_fma() {
            return None;
        }
        assert!(m == 0 || k == 0 || a.len() >= (m - 1) * lda + k, "DirectLhs::new sizes");
        let lanes = if m >= 12 { LANES } else { LANES8 };
        let panels = m.div_ceil(lanes);
        let mut data = vec![Line::default(); (panels * k * lanes).div_ceil(LANES)];
        for i in 0..m {
            let (b, l) = (i / lanes, i % lanes);
            for (p, &v) in a[i * lda..][..k].iter().enumerate() {
                let at = (b * k + p) * lanes + l;
                data[at / LANES].0[at % LANES] = v;
            }
        }
        Some(Self { m, k, lanes, data })
    }

    /// Output channels.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Taps.
    pub fn k(&self) -> usize {
        self.k
    }
}

/// The largest padded band (floats) a task builds.
const BAND_MAX: usize = 1 << 16;

/// The most taps per output channel (a panel of 72 KiB, read from L2).
const KK_MAX: usize = 1152;

/// Whether [`conv2d_direct`] takes this convolution: at least 6 output
/// channels per group (three quarters of the lanes busy, in panels of
/// [`LANES8`] below 12 and [`LANES`] from 12), at most [`KK_MAX`] taps, and
/// a padded input row band that fits [`BAND_MAX`].
pub fn fits(s: &ConvShape) -> bool {
    let g = &s.geom;
    let (cg, mg) = (s.c / s.group.max(1), s.m / s.group.max(1));
    let wp = (g.ow.max(1) - 1) * g.s[1] + (g.kw.max(1) - 1) * g.d[1] + 1;
    let rows = (g.kh.max(1) - 1) * g.d[0] + 1;
    let kk = cg * g.kh * g.kw;
    mg >= 6 && kk <= KK_MAX && g.oh > 0 && g.ow > 0 && cg * rows * wp <= BAND_MAX && super::conv::has_avx2_fma()
}

/// A thread's padded band and its layout, pixel offsets and tap offsets,
/// and the band height and geometry the offsets were made for.
type Bufs = (Vec<f32>, [usize; 7], Vec<usize>, Vec<usize>, [usize; 11]);

thread_local! {
    /// Each thread's [`Bufs`].
    static BUFS: std::cell::RefCell<Bufs> = const { std::cell::RefCell::new((Vec::new(), [0; 7], Vec::new(), Vec::new(), [0; 11])) };
}

/// Below this many multiply-adds a convolution runs on one thread: a
/// quarter of the im2col paths' [`PARALLEL_MIN_MACS`], as the direct
/// kernel's tasks start without a packing pass (the MNIST CNN's first
/// layer, 1→32 channels on 28×28 with the pool folded in, 226K: 8.2 →
/// 6.8–7.2 µs on two threads).
const PARALLEL_MIN: usize = PARALLEL_MIN_MACS / 4;

/// Multiply-adds a parallel task does at least (tasks are grouped up to it).
const TASK_MIN_MACS: usize = 1 << 15;

/// `y [n, m, oh, ow]` (written through `out`, every element) = the
/// convolution of `x [n, c, h, w]` with `w[g]` per group, plus `bias`,
/// then ReLU when `relu`. With `pool`, `y [n, m, oh/2, ow/2]` is that
/// result's 2×2, stride-2 max pooling (a NaN in a window gives NaN), pooled
/// from a small pixel-major buffer per panel: the full-size convolution
/// output is never written. Tasks are bands of output rows of an image (a
/// whole image where there are enough images; pairs of rows with `pool`):
/// each pads the input rows its band reads, then runs every panel over its
/// pixels.
///
/// # Panics
/// If the sizes disagree (`x`, `w`, `bias`), or where [`fits`] is false.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_direct(
    s: &ConvShape,
    x: &[f32],
    w: &[&DirectLhs],
    bias: Option<&[f32]>,
    relu: bool,
    pool: bool,
    out: OutPtr,
) {
    let g = &s.geom;
    let (cg, mg) = (s.c / s.group, s.m / s.group);
    let (plane, pix, kk) = (g.h * g.w, g.oh * g.ow, cg * g.kh * g.kw);
    assert!(
        fits(s)
            && x.len() >= s.n * s.c * plane
            && w.len() == s.group
            && w.iter().all(|p| p.m == mg && p.k == kk)
            && bias.is_none_or(|b| b.len() >= s.m),
        "conv2d_direct sizes"
    );
    // Bands count `unit` output rows (a pooled row: two); `cols` pixels of
    // each row are computed (an odd last column that no window reads is not).
    let (unit, units, cols) = if pool {
        (2, g.oh / 2, g.ow / 2 * 2)
    } else {
        (1, g.oh, g.ow)
    };
    // Each image's output: `opix` values per channel.
    let opix = if pool { (g.oh / 2) * (g.ow / 2) } else { pix };
    if units == 0 || cols == 0 {
        return;
    }
    let threads = super::pool::threads();
    let macs = s.n * s.m * units * unit * cols * kk;
    let parallel = macs >= PARALLEL_MIN && threads > 1;
    // Bands per image: enough for about four tasks per thread.
    let bands = if parallel {
        (4 * threads).div_ceil(s.n).min(units)
    } else {
        1
    };
    let band_units = units.div_ceil(bands);
    let bands = units.div_ceil(band_units);
    // Where the images' bands make fewer than four tasks per thread (one
    // image: a few row bands), each band's panels are split among tasks
    // too, so the threads' shares come out even (7 pooled row pairs on
    // 2 threads: 14 tasks, not 7).
    let panels = w.first().map_or(1, |p| p.m.div_ceil(p.lanes));
    let splits = super::pool::Runs::new(
        panels,
        if parallel {
            (4 * threads).div_ceil(s.n * bands)
        } else {
            1
        },
    );
    let task = |t: usize| {
        let (split, t) = (t % splits.count, t / splits.count);
        let (img, u0) = (t / bands, (t % bands) * band_units);
        let u1 = (u0 + band_units).min(units);
        let (oy0, oy1) = (u0 * unit, u1 * unit);
        let dst = out;
        BUFS.with(|b| {
            let (pad, layout, pixoff, taps, key) = &mut *b.borrow_mut();
            for (gi, wg) in w.iter().enumerate() {
                let xg = &x[(img * s.c + gi * cg) * plane..][..cg * plane];
                let (hb, wp) = pad_band(s, xg, oy0, oy1, pad, layout);
                // The offsets depend on the band's height and the geometry
                // only: kept from this thread's last band when those match.
                let k = [oy1 - oy0, cols, hb, wp, g.s[0], g.s[1], g.d[0], g.d[1], g.kh, g.kw, cg];
                if *key != k {
                    offsets(s, oy0, oy1, cols, hb, wp, pixoff, taps);
                    *key = k;
                }
                let bias = bias.map(|b| &b[gi * mg..][..mg]);
                let band = Band {
                    pad,
                    pixoff,
                    taps,
                    bias,
                    relu,
                    pool_cols: if pool { cols } else { 0 },
                    panels: splits.get(split),
                };
                // SAFETY: `pad` holds cg planes hb × wp, which every pixel
                // offset plus every tap offset stays inside (see `offsets`);
                // the task writes output rows u0..u1 (of `opix / units`
                // values each) of its panels' channels in g·mg..(g+1)·mg
                // of image img, which no other task writes.
                unsafe {
                    let y = dst.0.add((img * s.m + gi * mg) * opix + u0 * (opix / units));
                    run_band(wg, &band, y, opix);
                }
            }
        })
    };
    let tasks = s.n * bands * splits.count;
    if parallel && tasks > 1 {
        let per = (TASK_MIN_MACS / (macs / tasks).max(1)).max(1);
        super::pool::for_each_chunked(tasks, per, task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// Copies the input rows that output rows `oy0..oy1` read into zero-padded
/// planes `hb × wp` (padded row 0 is padded row `oy0·sy` of the image).
/// `layout` is what the buffer held last (`[cg, hb, wp, left pad, input
/// columns, first and end band row inside the input]`). Returns `(hb, wp)`.
fn pad_band(
    s: &ConvShape,
    xg: &[f32],
    oy0: usize,
    oy1: usize,
    pad: &mut Vec<f32>,
    layout: &mut [usize; 7],
) -> (usize, usize) {
    let g = &s.geom;
    let cg = s.c / s.group;
    let wp = (g.ow - 1) * g.s[1] + (g.kw - 1) * g.d[1] + 1;
    let hb = (oy1 - 1 - oy0) * g.s[0] + (g.kh - 1) * g.d[0] + 1;
    // Input columns 0..cols land at padded columns left..left + cols of the
    // rows r0..r1 inside the input; every other float of the band is zero.
    // The band is zeroed only where its layout differs from what the buffer
    // held last, else the rows are copied over the previous ones.
    let left = g.pad[1].min(wp);
    let cols = g.w.min(wp - left);
    let top = (oy0 * g.s[0]) as isize - g.pad[0] as isize;
    let r0 = (-top).clamp(0, hb as isize) as usize;
    let r1 = (g.h as isize - top).clamp(r0 as isize, hb as isize) as usize;
    let key = [cg, hb, wp, left, cols, r0, r1];
    if *layout != key || pad.len() < cg * hb * wp {
        pad.clear();
        pad.resize(cg * hb * wp, 0.0);
        *layout = key;
    }
    for c in 0..cg {
        for lr in r0..r1 {
            let iy = (top + lr as isize) as usize;
            let src = &xg[c * g.h * g.w + iy * g.w..][..cols];
            let dst = &mut pad[(c * hb + lr) * wp + left..][..cols];
            // SAFETY: both slices hold `cols` floats and are distinct buffers.
            unsafe { copy_short_raw(dst.as_mut_ptr(), src.as_ptr(), cols) };
        }
    }
    (hb, wp)
}

/// The offsets into the padded band of output pixels `(oy, ox)` for
/// `oy0 <= oy < oy1` and `ox < cols`, row-major, and of the taps
/// `(c, ky, kx)`: pixel `(oy, ox)` at `(oy - oy0)·sy·wp + ox·sx`,
/// tap at `c·hb·wp + ky·dy·wp + kx·dx`. Their sum is at most
/// `(cg - 1)·hb·wp + (hb - 1)·wp + wp - 1`, inside the band.
#[allow(clippy::too_many_arguments)]
fn offsets(
    s: &ConvShape,
    oy0: usize,
    oy1: usize,
    cols: usize,
    hb: usize,
    wp: usize,
    pixoff: &mut Vec<usize>,
    taps: &mut Vec<usize>,
) {
    let g = &s.geom;
    let cg = s.c / s.group;
    pixoff.clear();
    for oy in oy0..oy1 {
        for ox in 0..cols {
            pixoff.push((oy - oy0) * g.s[0] * wp + ox * g.s[1]);
        }
    }
    taps.clear();
    for c in 0..cg {
        for ky in 0..g.kh {
            for kx in 0..g.kw {
                taps.push(c * hb * wp + ky * g.d[0] * wp + kx * g.d[1]);
            }
        }
    }
}

/// One band's inputs for [`run_band`]: the padded planes, the pixel and
/// tap offsets, the group's bias and ReLU; with `pool_cols > 0`, the width
/// of the computed rows, whose 2×2 windows are pooled (`pixoff` then lists
/// whole row pairs, `pool_cols` pixels a row); the panels to run.
struct Band<'a> {
    pad: &'a [f32],
    pixoff: &'a [usize],
    taps: &'a [usize],
    bias: Option<&'a [f32]>,
    relu: bool,
    pool_cols: usize,
    panels: std::ops::Range<usize>,
}

/// The most pixels a pooled chunk of row pairs holds (one 16-channel
/// panel's results in 16 KiB, pixel-major, read back from L1).
const POOL_CHUNK: usize = 256;

thread_local! {
    /// Each thread's pooling buffer: a chunk's results, then its maxima.
    static SCRATCH: std::cell::RefCell<Vec<Line>> = const { std::cell::RefCell::new(Vec::new()) };
}

/// The panels `band.panels` of `w` over the pixels `band.pixoff` lists. Without
/// pooling, channel `i`'s pixel `j` goes to `y[i·ldy + j]`; with it,
/// channel `i`'s pooled pixel `q` (row pair `q / (pool_cols/2)`, window
/// `q % (pool_cols/2)`) goes to `y[i·ldy + q]`.
///
/// # Safety
/// `band.pad` must hold every `pixoff[j] + taps[p]`; `y` must be writable
/// at `i·ldy + j` for `i < w.m` and `j` below the pixel (or pooled pixel)
/// count; the CPU has AVX2 + FMA.
unsafe fn run_band(w: &DirectLhs, band: &Band, y: *mut f32, ldy: usize) {
    #[cfg(target_arch = "x86_64")]
    {
        let lanes = w.lanes;
        let tile = |b: usize, y: *mut f32, pixel_major: bool| {
            let ch = (w.m - b * lanes).min(lanes);
            let mut lanes_bias = [0.0f32; LANES];
            if let Some(bias) = band.bias {
                lanes_bias[..ch].copy_from_slice(&bias[b * lanes..][..ch]);
            }
            avx2::Tile {
                x: band.pad.as_ptr(),
                taps: band.taps.as_ptr(),
                k: w.k,
                w: w.data.as_ptr().cast::<f32>().add(b * w.k * lanes),
                bias: lanes_bias,
                relu: band.relu,
                ch,
                y,
                ldy,
                pixel_major,
            }
        };
        let cols = band.pool_cols;
        if cols == 0 {
            for b in band.panels.clone() {
                run_pixels(&tile(b, y.add(b * lanes * ldy), false), lanes, band.pixoff);
            }
            return;
        }
        let pair = 2 * cols;
        let pairs = band.pixoff.len() / pair;
        let per = (POOL_CHUNK / pair).max(1);
        let (conv_len, pooled_len) = (per * pair * lanes, per * (cols / 2) * lanes);
        SCRATCH.with(|sc| {
            let mut sc = sc.borrow_mut();
            let need = (conv_len + pooled_len).div_ceil(LANES);
            if sc.len() < need {
                sc.resize(need, Line::default());
            }
            let buf = sc.as_mut_ptr().cast::<f32>();
            for c0 in (0..pairs).step_by(per) {
                let c1 = (c0 + per).min(pairs);
                let pixels = &band.pixoff[c0 * pair..c1 * pair];
                for b in band.panels.clone() {
                    let t = tile(b, buf, true);
                    run_pixels(&t, lanes, pixels);
                    let dst = y.add(b * lanes * ldy + c0 * (cols / 2));
                    let tmp = buf.add(conv_len);
                    if lanes == LANES {
                        avx2::pool_pairs::<2>(buf, cols, c1 - c0, t.ch, dst, ldy, tmp);
                    } else {
                        avx2::pool_pairs::<1>(buf, cols, c1 - c0, t.ch, dst, ldy, tmp);
                    }
                }
            }
        });
    }
    #[cfg(not(target_arch = "x86_64"))]
    {
        let _ = (w, band, y, ldy);
        unreachable!("DirectLhs exists only with AVX2");
    }
}

/// One panel's tiles over `pixoff` (pixel `j` of the list is the tile's
/// pixel `j`).
///
/// # Safety
/// As for [`run_band`], for the panel `t` describes.
#[cfg(target_arch = "x86_64")]
unsafe fn run_pixels(t: &avx2::Tile, lanes: usize, pixoff: &[usize]) {
    let n = pixoff.len();
    if lanes == LANES {
        let mut j = 0;
        while j + PIX <= n {
            avx2::tile::<PIX>(t, &pixoff[j..j + PIX], j);
            j += PIX;
        }
        match n - j {
            5 => avx2::tile::<5>(t, &pixoff[j..], j),
            4 => avx2::tile::<4>(t, &pixoff[j..], j),
            3 => avx2::tile::<3>(t, &pixoff[j..], j),
            2 => avx2::tile::<2>(t, &pixoff[j..], j),
            1 => avx2::tile::<1>(t, &pixoff[j..], j),
            _ => {}
        }
    } else {
        let mut j = 0;
        while j + PIX8 <= n {
            avx2::tile8::<PIX8>(t, &pixoff[j..j + PIX8], j);
            j += PIX8;
        }
        match n - j {
            7 => avx2::tile8::<7>(t, &pixoff[j..], j),
            6 => avx2::tile8::<6>(t, &pixoff[j..], j),
            5 => avx2::tile8::<5>(t, &pixoff[j..], j),
            4 => avx2::tile8::<4>(t, &pixoff[j..], j),
            3 => avx2::tile8::<3>(t, &pixoff[j..], j),
            2 => avx2::tile8::<2>(t, &pixoff[j..], j),
            1 => avx2::tile8::<1>(t, &pixoff[j..], j),
            _ => {}
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod avx2 {
    use std::arch::x86_64::*;

    use super::LANES;

    /// One panel's pass: the padded band, the tap offsets, the panel's
    /// `k` lines, its bias, the valid channels and where channel 0's pixel
    /// 0 goes (`ldy` between channels); `pixel_major`: pixel `j`'s channels
    /// go to `y[j·lanes..]` instead, every lane of the panel.
    pub(super) struct Tile {
        pub x: *const f32,
        pub taps: *const usize,
        pub k: usize,
        pub w: *const f32,
        pub bias: [f32; LANES],
        pub relu: bool,
        pub ch: usize,
        pub y: *mut f32,
        pub ldy: usize,
        pub pixel_major: bool,
    }

    /// Pixels `j..j+R` (at `pix[..R]` in the band) × the panel's channels.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile<const R: usize>(t: &Tile, pix: &[usize], j: usize) {
        let mut base = [std::ptr::null::<f32>(); R];
        for (b, &o) in base.iter_mut().zip(pix) {
            *b = t.x.add(o);
        }
        let b0 = _mm256_loadu_ps(t.bias.as_ptr());
        let b1 = _mm256_loadu_ps(t.bias.as_ptr().add(8));
        let mut acc = [[b0, b1]; R];
        let mut w = t.w;
        for p in 0..t.k {
            let o = *t.taps.add(p);
            let w0 = _mm256_load_ps(w);
            let w1 = _mm256_load_ps(w.add(8));
            for (r, a) in acc.iter_mut().enumerate() {
                let xv = _mm256_broadcast_ss(&*base[r].add(o));
                a[0] = _mm256_fmadd_ps(xv, w0, a[0]);
                a[1] = _mm256_fmadd_ps(xv, w1, a[1]);
            }
            w = w.add(LANES);
        }
        let zero = _mm256_setzero_ps();
        if t.relu {
            for a in acc.iter_mut() {
                // max(0, v) returns v when v is NaN and keeps -0.0, as `Relu` does.
                a[0] = _mm256_max_ps(zero, a[0]);
                a[1] = _mm256_max_ps(zero, a[1]);
            }
        }
        if t.pixel_major {
            for (r, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(t.y.add((j + r) * LANES), a[0]);
                _mm256_storeu_ps(t.y.add((j + r) * LANES + 8), a[1]);
            }
            return;
        }
        let mut tmp = [[0.0f32; LANES]; R];
        for (a, d) in acc.iter().zip(tmp.iter_mut()) {
            _mm256_storeu_ps(d.as_mut_ptr(), a[0]);
            _mm256_storeu_ps(d.as_mut_ptr().add(8), a[1]);
        }
        for c in 0..t.ch {
            let dst = t.y.add(c * t.ldy + j);
            for (r, d) in tmp.iter().enumerate() {
                *dst.add(r) = d[c];
            }
        }
    }

    /// Pixels `j..j+R` (at `pix[..R]` in the band) × an 8-channel panel:
    /// per tap, one aligned weight load and `R` broadcasts.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn tile8<const R: usize>(t: &Tile, pix: &[usize], j: usize) {
        let mut base = [std::ptr::null::<f32>(); R];
        for (b, &o) in base.iter_mut().zip(pix) {
            *b = t.x.add(o);
        }
        let mut acc = [_mm256_loadu_ps(t.bias.as_ptr()); R];
        let mut w = t.w;
        for p in 0..t.k {
            let o = *t.taps.add(p);
            let w0 = _mm256_load_ps(w);
            for (r, a) in acc.iter_mut().enumerate() {
                *a = _mm256_fmadd_ps(_mm256_broadcast_ss(&*base[r].add(o)), w0, *a);
            }
            w = w.add(8);
        }
        let zero = _mm256_setzero_ps();
        if t.relu {
            for a in acc.iter_mut() {
                *a = _mm256_max_ps(zero, *a);
            }
        }
        if t.pixel_major {
            for (r, a) in acc.iter().enumerate() {
                _mm256_storeu_ps(t.y.add((j + r) * 8), *a);
            }
            return;
        }
        let mut tmp = [[0.0f32; 8]; R];
        for (a, d) in acc.iter().zip(tmp.iter_mut()) {
            _mm256_storeu_ps(d.as_mut_ptr(), *a);
        }
        for c in 0..t.ch {
            let dst = t.y.add(c * t.ldy + j);
            for (r, d) in tmp.iter().enumerate() {
                *dst.add(r) = d[c];
            }
        }
    }

    /// The 2×2 maxima of `pairs` row pairs of `cols` pixels held
    /// pixel-major at `s` (`8·V` channels a pixel): pooled pixel `q` of
    /// channel `c < ch` goes to `y[c·ldy + q]`, through `tmp` (`8·V` floats
    /// per pooled pixel). Per window `max(max(a0, b0), max(a1, b1))` of the
    /// upper (`a`) and lower (`b`) pixels, as the MaxPool op takes it.
    #[target_feature(enable = "avx2,fma")]
    #[allow(clippy::too_many_arguments)]
    pub(super) unsafe fn pool_pairs<const V: usize>(
        s: *const f32,
        cols: usize,
        pairs: usize,
        ch: usize,
        y: *mut f32,
        ldy: usize,
        tmp: *mut f32,
    ) {
        let lanes = 8 * V;
        let pw = cols / 2;
        for p in 0..pairs {
            let r0 = s.add(p * 2 * cols * lanes);
            let r1 = r0.add(cols * lanes);
            let out = tmp.add(p * pw * lanes);
            for px in 0..pw {
                for v in 0..V {
                    let o = 2 * px * lanes + 8 * v;
                    let h0 = nan_max(_mm256_loadu_ps(r0.add(o)), _mm256_loadu_ps(r1.add(o)));
                    let h1 = nan_max(_mm256_loadu_ps(r0.add(o + lanes)), _mm256_loadu_ps(r1.add(o + lanes)));
                    _mm256_storeu_ps(out.add(px * lanes + 8 * v), nan_max(h0, h1));
                }
            }
        }
        // Pixel-major to channel-major: 8×8 blocks transposed in registers,
        // then the last pixels one by one.
        let q = pairs * pw;
        let mut i = 0;
        while i + 8 <= q {
            for cb in (0..ch).step_by(8) {
                let mut r = [_mm256_setzero_ps(); 8];
                for (k, rk) in r.iter_mut().enumerate() {
                    *rk = _mm256_loadu_ps(tmp.add((i + k) * lanes + cb));
                }
                let t = transpose8(r);
                for (c, tc) in t.iter().enumerate().take(ch - cb) {
                    _mm256_storeu_ps(y.add((cb + c) * ldy + i), *tc);
                }
            }
            i += 8;
        }
        for c in 0..ch {
            let d = y.add(c * ldy);
            for i in i..q {
                *d.add(i) = *tmp.add(i * lanes + c);
            }
        }
    }

    /// The 8×8 transpose of `r` (`out[c][k] = r[k][c]`).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn transpose8(r: [__m256; 8]) -> [__m256; 8] {
        let t0 = _mm256_unpacklo_ps(r[0], r[1]);
        let t1 = _mm256_unpackhi_ps(r[0], r[1]);
        let t2 = _mm256_unpacklo_ps(r[2], r[3]);
        let t3 = _mm256_unpackhi_ps(r[2], r[3]);
        let t4 = _mm256_unpacklo_ps(r[4], r[5]);
        let t5 = _mm256_unpackhi_ps(r[4], r[5]);
        let t6 = _mm256_unpacklo_ps(r[6], r[7]);
        let t7 = _mm256_unpackhi_ps(r[6], r[7]);
        let u0 = _mm256_shuffle_ps::<0b01_00_01_00>(t0, t2);
        let u1 = _mm256_shuffle_ps::<0b11_10_11_10>(t0, t2);
        let u2 = _mm256_shuffle_ps::<0b01_00_01_00>(t1, t3);
        let u3 = _mm256_shuffle_ps::<0b11_10_11_10>(t1, t3);
        let u4 = _mm256_shuffle_ps::<0b01_00_01_00>(t4, t6);
        let u5 = _mm256_shuffle_ps::<0b11_10_11_10>(t4, t6);
        let u6 = _mm256_shuffle_ps::<0b01_00_01_00>(t5, t7);
        let u7 = _mm256_shuffle_ps::<0b11_10_11_10>(t5, t7);
        [
            _mm256_permute2f128_ps::<0x20>(u0, u4),
            _mm256_permute2f128_ps::<0x20>(u1, u5),
            _mm256_permute2f128_ps::<0x20>(u2, u6),
            _mm256_permute2f128_ps::<0x20>(u3, u7),
            _mm256_permute2f128_ps::<0x31>(u0, u4),
            _mm256_permute2f128_ps::<0x31>(u1, u5),
            _mm256_permute2f128_ps::<0x31>(u2, u6),
            _mm256_permute2f128_ps::<0x31>(u3, u7),
        ]
    }

    /// `v` where `v > m` or `v` is NaN, else `m`: the MaxPool op's running
    /// maximum (a NaN in either gives NaN; on ties, `m`).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn nan_max(m: __m256, v: __m256) -> __m256 {
        let r = _mm256_max_ps(v, m);
        _mm256_blendv_ps(r, v, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v))
    }
}
