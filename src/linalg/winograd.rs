//! 3×3, stride-1 convolution by Winograd's minimal filtering F(2×2, 3×3)
//! (Lavin and Gray, "Fast Algorithms for Convolutional Neural Networks"):
//! each 2×2 tile of output pixels comes from a 4×4 input patch `d` as
//! `Aᵀ [U ⊙ (Bᵀ d B)] A`, with `U = G g Gᵀ` the 3×3 filter `g` transformed
//! once. Summed over input channels, the 16 elementwise products become 16
//! matrix products `M_ξ [m, tiles] = U_ξ [m, c] · V_ξ [c, tiles]` on the
//! convolution GEMM ([`PackedLhs`], the weight packed once): 16
//! multiply-adds per tile, input and output channel instead of the direct
//! convolution's 36 (2.25× fewer).
//!
//! A task takes a block of tile rows (of one image or several): per image
//! it copies the input rows the block reads into zero-padded planes split
//! into even and odd columns (so the patches of eight neighbouring tiles
//! are eight consecutive values), transforms the patches eight tiles at a
//! time into the 16 `V_ξ`, then runs the 16 products and transforms each
//! output channel's results eight tiles at a time into 2×2 outputs (plus
//! bias, then ReLU; or their maximum, for a 2×2 stride-2 max pooling folded
//! into the pass). The transforms add and subtract only; the results differ
//! from the direct convolution's by float rounding (within a few units in
//! the last place of the sum of the products' magnitudes). A block whose
//! input holds an infinity or NaN is computed tap by tap instead, since the
//! transform would spread it to outputs whose window does not hold it.

use std::ops::Range;

use super::conv::{has_avx2_fma, ConvShape, OutPtr, PackedLhs, MR, PARALLEL_MIN_MACS};

/// Tiles per vector of the transforms.
const L: usize = 8;
/// Floats a task's transformed inputs and products may take (512 KiB).
const BLOCK_FLOATS: usize = 1 << 17;
/// The most floats a task's padded input planes may take (1 MiB).
const BAND_MAX: usize = 1 << 18;

/// A 3×3 weight `[m, c, 3, 3]` transformed (`U = G g Gᵀ`) and packed as 16
/// `[m, c]` left operands of the convolution GEMM.
#[derive(Clone, Debug)]
pub struct WinogradLhs {
    m: usize,
    c: usize,
    mats: Vec<PackedLhs>,
    /// The weight as given, for blocks whose input is not finite.
    raw: Vec<f32>,
}

impl WinogradLhs {
    /// Transforms and packs `w` (`[m, c, 3, 3]`, row-major), or `None` where
    /// a weight is not finite (the transform would spread it to taps it does
    /// not touch).
    ///
    /// # Panics
    /// If `w` is shorter than `m·c·9`.
    pub fn new(w: &[f32], m: usize, c: usize) -> Option<Self> {
        assert!(w.len() >= m * c * 9, "WinogradLhs::new sizes");
        let raw = w[..m * c * 9].to_vec();
        if m == 0 || c == 0 || !raw.iter().all(|v| v.is_finite()) {
            return None;
        }
        let mut u = vec![vec![0f32; m * c]; 16];
        for o in 0..m {
            for ch in 0..c {
                let g: Vec<f64> = raw[(o * c + ch) * 9..][..9].iter().map(|&v| f64::from(v)).collect();
                // T = G g (4×3), then U = T Gᵀ (4×4), in f64, rounded once.
                let mut t = [[0f64; 3]; 4];
                for s in 0..3 {
                    let (g0, g1, g2) = (g[s], g[3 + s], g[6 + s]);
                    t[0][s] = g0;
                    t[1][s] = 0.5 * (g0 + g1 + g2);
                    t[2][s] = 0.5 * (g0 - g1 + g2);
                    t[3][s] = g2;
                }
                for (i, [a, b, cc]) in t.into_iter().enumerate() {
                    let row = [a, 0.5 * (a + b + cc), 0.5 * (a - b + cc), cc];
                    for (j, v) in row.into_iter().enumerate() {
                        u[i * 4 + j][o * c + ch] = v as f32;
                    }
                }
            }
        }
        let mats = u.iter().map(|u| PackedLhs::gemm_only(u, m, c, c)).collect();
        Some(Self { m, c, mats, raw })
    }

    /// Output channels.
    pub fn m(&self) -> usize {
        self.m
    }

    /// Input channels.
    pub fn c(&self) -> usize {
        self.c
    }
}

/// Whether [`conv2d_winograd`] can take this convolution: a 3×3 window
/// with unit strides and dilations in one group, at least a 2×2 output,
/// padded planes of one tile row that fit [`BAND_MAX`], and AVX2 + FMA.
pub fn fits(s: &ConvShape) -> bool {
    let g = &s.geom;
    let band = s.c * 4 * 2 * (g.ow.div_ceil(2) + 1 + L);
    g.kh == 3
        && g.kw == 3
        && g.s == [1, 1]
        && g.d == [1, 1]
        && s.group == 1
        && s.c > 0
        && s.m > 0
        && g.oh >= 2
        && g.ow >= 2
        && band <= BAND_MAX
        && has_avx2_fma()
}

/// Whether [`conv2d_winograd`] beats the direct convolution here (where it
/// [`fits`]): at least 16 input and output channels, 8 output columns (four
/// tiles a row, half a vector of the transforms) and [`MIN_TILES`] tiles
/// per thread, or [`MIN_TILES_WIDE`] tiles in all with at least 32 input
/// and output channels; below that the transforms and the per-task setup
/// cost more than the products save.
pub fn pays(s: &ConvShape) -> bool {
    let g = &s.geom;
    let tiles = s.n * g.oh.div_ceil(2) * g.ow.div_ceil(2);
    let enough = tiles >= MIN_TILES * super::pool::threads() || (s.c >= 32 && s.m >= 32 && tiles >= MIN_TILES_WIDE);
    fits(s) && s.c >= 16 && s.m >= 16 && g.ow >= 8 && enough
}

/// Output tiles per thread a convolution needs for [`pays`].
const MIN_TILES: usize = 64;
/// Output tiles in all a convolution of at least 32 input and output
/// channels needs for [`pays`] (its products are long enough to beat the
/// direct kernel with fewer tiles, split over channels between threads).
/// One thread on Zen 4, `wginfer bench --batch 1`, Conv+Relu+MaxPool:
/// 32→64 on 14×14 (49 tiles) 0.057 ms against the direct kernel's 0.066,
/// on 12×12 (36 tiles) 0.044 against 0.049; 32→64 on 8×8 (16 tiles)
/// 0.030 against 0.023, and 16→16 on 14×14 0.013 against 0.010.
const MIN_TILES_WIDE: usize = 32;

/// A thread's padded planes, transformed inputs and products.
type Bufs = (Vec<f32>, Vec<f32>, Vec<f32>);

thread_local! {
    /// Each thread's [`Bufs`], kept between calls.
    static BUFS: std::cell::RefCell<Bufs> = const { std::cell::RefCell::new((Vec::new(), Vec::new(), Vec::new())) };
}

/// `v` where `v > m` or `v` is NaN, else `m`: the MaxPool op's running
/// maximum (a NaN in either gives NaN; on ties, `m`).
#[inline(always)]
fn nan_max(m: f32, v: f32) -> f32 {
    if v > m || v.is_nan() {
        v
    } else {
        m
    }
}

/// Where a task's tiles are: tile rows `r0..r1` of the batch's
/// `n·th` (image `r / th`, row `r % th`), `tw` tiles each, column
/// `(r - r0)·tw + tx` of the products; `ld` their row length; the task's
/// output channels: the rows of panels `panels` of the products (of
/// [`super::conv::MR`] channels each).
#[derive(Clone)]
struct Block {
    r0: usize,
    r1: usize,
    th: usize,
    tw: usize,
    ld: usize,
    panels: Range<usize>,
}

/// `y [n, m, oh, ow]` (written through `out`, every element) = the
/// convolution of `x [n, c, h, w]` with `w`, plus `bias`, then ReLU when
/// `relu`. With `pool`, `y [n, m, oh/2, ow/2]` is that result's 2×2,
/// stride-2 max pooling (a NaN in a window gives NaN): each pooled value is
/// the maximum of one output tile, so the full-size output is never
/// written. Tasks are blocks of tile rows.
///
/// # Panics
/// If the sizes disagree (`x`, `w`, `bias`), or where [`fits`] is false.
#[allow(clippy::too_many_arguments)]
pub(crate) fn conv2d_winograd(
    s: &ConvShape,
    x: &[f32],
    w: &WinogradLhs,
    bias: Option<&[f32]>,
    relu: bool,
    pool: bool,
    out: OutPtr,
) {
    let g = &s.geom;
    assert!(
        fits(s) && w.c == s.c && w.m == s.m && x.len() >= s.n * s.c * g.h * g.w && bias.is_none_or(|b| b.len() >= s.m),
        "conv2d_winograd sizes"
    );
    // With the pooling only whole tiles count (the pooled grid is oh/2 × ow/2).
    let (th, tw) = if pool {
        (g.oh / 2, g.ow / 2)
    } else {
        (g.oh.div_ceil(2), g.ow.div_ceil(2))
    };
    let rows_all = s.n * th;
    if rows_all == 0 || tw == 0 {
        return;
    }
    // Tile rows per task: at most what the transformed inputs and products
    // may hold; of the counts down to half that, the one whose tiles best
    // fill the GEMM's 16-column register tiles.
    let per_row = 16 * (s.c + s.m) * tw;
    let most = (BLOCK_FLOATS / per_row).clamp(1, rows_all);
    let fill = |r: usize| (r * tw) as f64 / ((r * tw).div_ceil(16) * 16) as f64;
    let mut rows = (most.div_ceil(2)..=most)
        .rev()
        .fold(most, |b, r| if fill(r) > fill(b) { r } else { b });
    let threads = super::pool::threads();
    if rows_all.div_ceil(rows) < 2 * threads {
        // Enough tasks for every thread where the batch allows.
        rows = rows_all.div_ceil(2 * threads).max(1);
    }
    let row_tasks = rows_all.div_ceil(rows);
    // Where the tile rows make fewer than four tasks per thread (one small
    // image: the MNIST CNN's second layer at batch 1 has 7 tile rows), each
    // block's output channels are split among tasks too, at least four
    // panels (24 channels) each so the repeated input transforms stay a
    // small share: 2 threads then take 8 tasks of 2 or 1 tile rows × half
    // the channels, 7 rows each, not 4 tasks of 2, 2, 2 and 1 rows.
    let mpanels = s.m.div_ceil(MR);
    let macs = rows_all * tw * 16 * s.c * s.m;
    let parallel = macs >= PARALLEL_MIN_MACS && threads > 1;
    let splits = super::pool::Runs::new(
        mpanels,
        if parallel && row_tasks < 4 * threads {
            (4 * threads).div_ceil(row_tasks).clamp(1, (mpanels / 4).max(1))
        } else {
            1
        },
    );
    let tasks = row_tasks * splits.count;
    let job = Job {
        s,
        x,
        w,
        bias,
        relu,
        pool,
        out,
    };
    let run = |t: usize| {
        let (split, t) = (t % splits.count, t / splits.count);
        let r0 = t * rows;
        let r1 = (r0 + rows).min(rows_all);
        let b = Block {
            r0,
            r1,
            th,
            tw,
            // Whole 16-column runs for the products, and 8 columns more
            // for the transforms' last vector.
            ld: ((r1 - r0) * tw).div_ceil(16) * 16 + L,
            panels: splits.get(split),
        };
        BUFS.with(|bufs| {
            let (band, v, mv) = &mut *bufs.borrow_mut();
            super::simd(|| block_run(job, b.clone(), (band, v, mv)))
        });
    };
    if parallel && tasks > 1 {
        super::pool::for_each(tasks, run);
    } else {
        (0..tasks).for_each(run);
    }
}

/// Fills `band` with image `img`'s input rows `2·ty0 - pad .. 2·ty1 + 2 -
/// pad` for every channel as two planes per row (even and odd padded
/// columns, `hw` values each, zero outside the input); returns whether
/// every value is finite.
#[inline(always)]
fn fill_band(s: &ConvShape, x: &[f32], (img, ty0, ty1): (usize, usize, usize), hw: usize, band: &mut [f32]) -> bool {
    let g = &s.geom;
    let bh = 2 * (ty1 - ty0) + 2;
    let y0 = 2 * ty0 as isize - g.pad[0] as isize;
    let pl = g.pad[1];
    let (r_lo, r_hi) = ((-y0).max(0) as usize, ((g.h as isize - y0).max(0) as usize).min(bh));
    // Input column i is padded column pl + i: in the even plane where that
    // is even. The first input column of each plane and how many it holds.
    let cols = g.w.min(2 * hw - pl);
    let first = [pl % 2, 1 - pl % 2];
    let plane = g.h * g.w;
    let mut finite = true;
    for ch in 0..s.c {
        let src = &x[(img * s.c + ch) * plane..];
        for r in 0..bh {
            let dst = &mut band[(ch * bh + r) * 2 * hw..][..2 * hw];
            if r < r_lo || r >= r_hi {
                dst.fill(0.0);
                continue;
            }
            // The row and what follows it in x (whole vectors may be read).
            let from = &src[(y0 + r as isize) as usize * g.w..];
            // Padded column 2q + p holds input column 2q + p - pl: plane p
            // gets the input columns of parity first[p], n[p] of them from
            // q0[p] on; the rest of it is zero.
            let q0 = [(first[0] + pl) / 2, (first[1] + pl) / 2];
            let n = [
                cols.saturating_sub(first[0]).div_ceil(2),
                cols.saturating_sub(first[1]).div_ceil(2),
            ];
            // Where the even and the odd input columns go, and the floats
            // after those runs inside their planes (what a whole-vector
            // store at the end may write over before the zeros go in).
            let at = if first[0] == 0 {
                [q0[0], hw + q0[1]]
            } else {
                [hw + q0[1], q0[0]]
            };
            let room = (hw - q0[0] - n[0]).min(hw - q0[1] - n[1]);
            #[cfg(target_arch = "x86_64")]
            {
                let (even, odd) = (
                    dst.as_mut_ptr().wrapping_add(at[0]),
                    dst.as_mut_ptr().wrapping_add(at[1]),
                );
                // SAFETY: fits() checked AVX2; `from` holds the row's `cols`
                // values; the even input columns go to
                // dst[at[0]..][..cols.div_ceil(2)] and the odd ones to
                // dst[at[1]..][..cols / 2], inside their planes with `room`
                // floats after each.
                finite &= unsafe { x86::split_row(from, cols, even, odd, room) };
            }
            #[cfg(not(target_arch = "x86_64"))]
            for (j, &v) in from[..cols].iter().enumerate() {
                finite &= v.is_finite();
                dst[at[j % 2] + j / 2] = v;
            }
            for (p, half) in dst.chunks_exact_mut(hw).enumerate() {
                half[..q0[p]].fill(0.0);
                half[q0[p] + n[p]..].fill(0.0);
            }
        }
    }
    finite
}

/// A call's operands, as each task sees them.
#[derive(Clone, Copy)]
struct Job<'a> {
    s: &'a ConvShape,
    x: &'a [f32],
    w: &'a WinogradLhs,
    bias: Option<&'a [f32]>,
    relu: bool,
    pool: bool,
    out: OutPtr,
}

/// One task's block of tile rows.
#[inline(always)]
fn block_run(j: Job<'_>, b: Block, (band, v, mv): (&mut Vec<f32>, &mut Vec<f32>, &mut Vec<f32>)) {
    let Job {
        s,
        x,
        w,
        bias,
        relu,
        pool,
        out,
    } = j;
    let (c, m, tw, ld) = (s.c, s.m, b.tw, b.ld);
    // The task's output channels.
    let chans = b.panels.start * MR..(b.panels.end * MR).min(m);
    // Padded columns 0..2·tw + 2 as even and odd planes, with room for the
    // last vector's reads past them.
    let hw = tw + 1 + L;
    let n = (b.r1 - b.r0) * tw;
    v.resize(16 * c * ld, 0.0);
    // The block's runs of one image's rows: (first row, image, its rows,
    // whether its input is finite).
    let mut runs = Vec::with_capacity(b.r1.div_ceil(b.th) - b.r0 / b.th);
    let mut r = b.r0;
    while r < b.r1 {
        let (img, ty0) = (r / b.th, r % b.th);
        let ty1 = b.th.min(ty0 + b.r1 - r);
        let bh = 2 * (ty1 - ty0) + 2;
        band.resize(c * bh * 2 * hw, 0.0);
        let finite = fill_band(s, x, (img, ty0, ty1), hw, &mut band[..c * bh * 2 * hw]);
        runs.push((r, img, (ty0, ty1), finite));
        if !finite {
            by_taps(j, (img, ty0, ty1, tw), chans.clone(), &band[..c * bh * 2 * hw]);
            // Its columns of V are left as they are: the products of these
            // columns are computed but not used.
            r += ty1 - ty0;
            continue;
        }
        for ch in 0..c {
            for ty in 0..ty1 - ty0 {
                let col0 = (r - b.r0 + ty) * tw;
                let row = |i: usize| (ch * bh + 2 * ty + i) * 2 * hw;
                for tx in (0..tw).step_by(L) {
                    let at = (ch * ld + col0 + tx, c * ld);
                    // SAFETY: `fits` checked AVX2 + FMA; the band rows hold
                    // `2·hw` values (each read: 8 values from `tx + 1` at
                    // most, below `hw`), and `v` holds 16 planes of `c·ld`
                    // values with the eight columns from `col0 + tx` inside
                    // (`ld` ≥ the block's tiles plus 8).
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        x86::input(band[row(0)..].as_ptr(), 2 * hw, hw, tx, v.as_mut_ptr(), at)
                    };
                }
            }
        }
        r += ty1 - ty0;
    }
    // M_ξ [m, n] = U_ξ · V_ξ.
    mv.resize(16 * m * ld, 0.0);
    for (xi, mat) in w.mats.iter().enumerate() {
        mat.run_padded(
            &v[xi * c * ld..][..c * ld],
            ld,
            n,
            &mut mv[xi * m * ld..][..m * ld],
            ld,
            b.panels.clone(),
        );
    }
    // Y = Aᵀ M A per tile, eight tiles at a time: Aᵀ has rows (1, 1, 1, 0)
    // and (0, 1, -1, -1).
    let g = &s.geom;
    let (oh, ow) = (g.oh, g.ow);
    let (ph, pw) = (oh / 2, ow / 2);
    for (r, img, (ty0, ty1), finite) in runs {
        if !finite {
            continue;
        }
        for o in chans.clone() {
            let bo = bias.map_or(0.0, |bb| bb[o]);
            for ty in 0..ty1 - ty0 {
                let col0 = (r - b.r0 + ty) * tw;
                let ty_img = ty0 + ty;
                for tx in (0..tw).step_by(L) {
                    let live = L.min(tw - tx);
                    let from = (o * ld + col0 + tx, m * ld);
                    // SAFETY: `fits` checked AVX2 + FMA; `mv` holds 16
                    // planes of `m·ld` values with the eight columns from
                    // `col0 + tx` inside; the pixels written (tiles
                    // `tx..tx + live` of tile row `ty_img` of channel `o` of
                    // image `img`, clipped to the output) are this task's
                    // alone.
                    #[cfg(target_arch = "x86_64")]
                    unsafe {
                        if pool {
                            let dst = out.0.add(((img * m + o) * ph + ty_img) * pw + tx);
                            x86::output(mv.as_ptr(), from, (bo, relu), x86::Dst::Pooled(dst, live));
                        } else {
                            let dst = out.0.add(((img * m + o) * oh + 2 * ty_img) * ow + 2 * tx);
                            let rows = 2.min(oh - 2 * ty_img);
                            let cols = (2 * live).min(ow - 2 * tx);
                            x86::output(mv.as_ptr(), from, (bo, relu), x86::Dst::Full(dst, ow, rows, cols));
                        }
                    }
                }
            }
        }
    }
}

#[cfg(target_arch = "x86_64")]
mod x86 {
    //! The transforms on AVX2, eight tiles per vector.

    use std::arch::x86_64::*;

    /// Where [`output`] writes: a tile row's 2×2 outputs (`rows` ≤ 2 rows
    /// `ld` apart, `cols` ≤ 16 values each), or their pooled maxima (`n` ≤ 8).
    pub(super) enum Dst {
        Full(*mut f32, usize, usize, usize),
        Pooled(*mut f32, usize),
    }

    /// For the row `src[..n]`: `even[q] = src[2q]` and `odd[q] = src[2q +
    /// 1]`; whether every value of the row is finite. Whole vectors are
    /// read past `n` where `src` goes on (their values ignored), and with
    /// `room` ≥ 8 the last values are stored as whole vectors, writing up
    /// to 8 floats of garbage past each half: masked loads and stores cost
    /// AMD's cores several cycles each.
    ///
    /// # Safety
    /// AVX2; `n <= src.len()`; `even` must be writable for
    /// `n.div_ceil(2) + room` values and `odd` for `n / 2 + room`.
    #[target_feature(enable = "avx2")]
    pub(super) unsafe fn split_row(src: &[f32], n: usize, even: *mut f32, odd: *mut f32, room: usize) -> bool {
        debug_assert!(n <= src.len());
        let x = src.as_ptr();
        // x - x is 0 for a finite x and NaN for an infinity or a NaN; the
        // sum of those stays NaN once one is.
        // A mask of the first `c` (0..=8) lanes.
        let mask =
            |c: usize| _mm256_cmpgt_epi32(_mm256_set1_epi32(c as i32), _mm256_setr_epi32(0, 1, 2, 3, 4, 5, 6, 7));
        let mut bad = _mm256_setzero_ps();
        let mut i = 0;
        while i < n {
            // 16 values (masked past the end: zeros in, nothing out).
            let r = n - i;
            let (a, b) = if i + 16 <= src.len() {
                (_mm256_loadu_ps(x.add(i)), _mm256_loadu_ps(x.add(i + 8)))
            } else {
                (
                    _mm256_maskload_ps(x.add(i), mask(r.min(8))),
                    _mm256_maskload_ps(x.add(i + 8), mask(r.saturating_sub(8))),
                )
            };
            let (mut da, mut db) = (_mm256_sub_ps(a, a), _mm256_sub_ps(b, b));
            if r < 16 {
                // Only the row's lanes count.
                da = _mm256_and_ps(da, _mm256_castsi256_ps(mask(r.min(8))));
                db = _mm256_and_ps(db, _mm256_castsi256_ps(mask(r.saturating_sub(8))));
            }
            bad = _mm256_add_ps(bad, _mm256_add_ps(da, db));
            // Lanes [a0 a2 b0 b2 | a4 a6 b4 b6], then the 64-bit pairs reordered.
            let e = _mm256_shuffle_ps::<0b10_00_10_00>(a, b);
            let o = _mm256_shuffle_ps::<0b11_01_11_01>(a, b);
            let e = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(e)));
            let o = _mm256_castpd_ps(_mm256_permute4x64_pd::<0b11_01_10_00>(_mm256_castps_pd(o)));
            if r >= 16 || room >= 8 {
                _mm256_storeu_ps(even.add(i / 2), e);
                _mm256_storeu_ps(odd.add(i / 2), o);
            } else {
                let (mut te, mut to) = ([0f32; 8], [0f32; 8]);
                _mm256_storeu_ps(te.as_mut_ptr(), e);
                _mm256_storeu_ps(to.as_mut_ptr(), o);
                std::ptr::copy_nonoverlapping(te.as_ptr(), even.add(i / 2), r.div_ceil(2));
                std::ptr::copy_nonoverlapping(to.as_ptr(), odd.add(i / 2), r / 2);
            }
            i += 16;
        }
        _mm256_movemask_ps(_mm256_cmp_ps::<_CMP_EQ_OQ>(bad, _mm256_setzero_ps())) == 0xff
    }

    /// `V_ξ = Bᵀ d B` for eight tiles from padded planes at `band` (row `i`
    /// of the patches at `i·ld`: its even columns, then from `hw` its odd
    /// ones; tile `tx + l` reads columns `2(tx + l) .. + 4`), stored at
    /// `v + at.0 + ξ·at.1`.
    ///
    /// # Safety
    /// AVX2 + FMA; the reads and writes named above must be in bounds.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn input(band: *const f32, ld: usize, hw: usize, tx: usize, v: *mut f32, at: (usize, usize)) {
        let mut d = [[_mm256_setzero_ps(); 4]; 4];
        for (i, di) in d.iter_mut().enumerate() {
            let e = band.add(i * ld + tx);
            let o = e.add(hw);
            *di = [
                _mm256_loadu_ps(e),
                _mm256_loadu_ps(o),
                _mm256_loadu_ps(e.add(1)),
                _mm256_loadu_ps(o.add(1)),
            ];
        }
        // Bᵀ d: rows d0 - d2, d1 + d2, d2 - d1, d1 - d3.
        let mut t = [[_mm256_setzero_ps(); 4]; 4];
        for j in 0..4 {
            t[0][j] = _mm256_sub_ps(d[0][j], d[2][j]);
            t[1][j] = _mm256_add_ps(d[1][j], d[2][j]);
            t[2][j] = _mm256_sub_ps(d[2][j], d[1][j]);
            t[3][j] = _mm256_sub_ps(d[1][j], d[3][j]);
        }
        // (Bᵀ d) B: the same combination of the columns.
        for (i, ti) in t.iter().enumerate() {
            let r = [
                _mm256_sub_ps(ti[0], ti[2]),
                _mm256_add_ps(ti[1], ti[2]),
                _mm256_sub_ps(ti[2], ti[1]),
                _mm256_sub_ps(ti[1], ti[3]),
            ];
            for (j, r) in r.into_iter().enumerate() {
                _mm256_storeu_ps(v.add(at.0 + (i * 4 + j) * at.1), r);
            }
        }
    }

    /// `v` where `v > m` or `v` is NaN, else `m`: the MaxPool op's running
    /// maximum (a NaN in either gives NaN; on ties, `m`).
    #[target_feature(enable = "avx2,fma")]
    #[inline]
    unsafe fn nan_max(m: __m256, v: __m256) -> __m256 {
        let r = _mm256_max_ps(v, m);
        _mm256_blendv_ps(r, v, _mm256_cmp_ps::<_CMP_UNORD_Q>(v, v))
    }

    /// `Y = Aᵀ M A` for eight tiles (`M_ξ` at `mv + from.0 + ξ·from.1`),
    /// plus `bias`, then ReLU (max(0, v), keeping NaN and -0.0 as `Relu`
    /// does) when `relu`, written to `dst`.
    ///
    /// # Safety
    /// AVX2 + FMA; the reads and writes named above must be in bounds.
    #[target_feature(enable = "avx2,fma")]
    pub(super) unsafe fn output(mv: *const f32, from: (usize, usize), (bias, relu): (f32, bool), dst: Dst) {
        let mut m = [_mm256_setzero_ps(); 16];
        for (xi, v) in m.iter_mut().enumerate() {
            *v = _mm256_loadu_ps(mv.add(from.0 + xi * from.1));
        }
        // Aᵀ M: rows m0 + m1 + m2 and m1 - m2 - m3.
        let mut s = [[_mm256_setzero_ps(); 4]; 2];
        for j in 0..4 {
            s[0][j] = _mm256_add_ps(_mm256_add_ps(m[j], m[4 + j]), m[8 + j]);
            s[1][j] = _mm256_sub_ps(_mm256_sub_ps(m[4 + j], m[8 + j]), m[12 + j]);
        }
        let (b, zero) = (_mm256_set1_ps(bias), _mm256_setzero_ps());
        let mut y = [[zero; 2]; 2];
        for (ya, sa) in y.iter_mut().zip(&s) {
            ya[0] = _mm256_add_ps(_mm256_add_ps(_mm256_add_ps(sa[0], sa[1]), sa[2]), b);
            ya[1] = _mm256_add_ps(_mm256_sub_ps(_mm256_sub_ps(sa[1], sa[2]), sa[3]), b);
            if relu {
                ya[0] = _mm256_max_ps(zero, ya[0]);
                ya[1] = _mm256_max_ps(zero, ya[1]);
            }
        }
        match dst {
            Dst::Pooled(p, n) => {
                let v = nan_max(nan_max(y[0][0], y[1][0]), nan_max(y[0][1], y[1][1]));
                let mut tmp = [0f32; 8];
                _mm256_storeu_ps(tmp.as_mut_ptr(), v);
                std::ptr::copy_nonoverlapping(tmp.as_ptr(), p, n);
            }
            Dst::Full(p, ld, rows, cols) => {
                for (a, ya) in y.iter().enumerate().take(rows) {
                    // Interleave the tiles' left and right columns.
                    let (lo, hi) = (_mm256_unpacklo_ps(ya[0], ya[1]), _mm256_unpackhi_ps(ya[0], ya[1]));
                    let mut tmp = [0f32; 16];
                    _mm256_storeu_ps(tmp.as_mut_ptr(), _mm256_permute2f128_ps::<0x20>(lo, hi));
                    _mm256_storeu_ps(tmp.as_mut_ptr().add(8), _mm256_permute2f128_ps::<0x31>(lo, hi));
                    std::ptr::copy_nonoverlapping(tmp.as_ptr(), p.add(a * ld), cols);
                }
            }
        }
    }
}

/// The outputs of channels `chans` of image `img`'s tile rows `ty0..ty1`
/// tap by tap from its padded planes (an input that is not finite): each
/// output the sum of its own window's products, then bias and ReLU, or the
/// pooled maximum.
#[cold]
fn by_taps(j: Job<'_>, (img, ty0, ty1, tw): (usize, usize, usize, usize), chans: Range<usize>, band: &[f32]) {
    let (s, w, bias, relu, pool, out) = (j.s, j.w, j.bias, j.relu, j.pool, j.out);
    let (c, m, g) = (s.c, s.m, &s.geom);
    let (oh, ow) = (g.oh, g.ow);
    let (ph, pw) = (oh / 2, ow / 2);
    let (bh, hw) = (2 * (ty1 - ty0) + 2, tw + 1 + L);
    // Padded pixel (row, column) of channel ch.
    let at = |ch: usize, row: usize, col: usize| band[(ch * bh + row) * 2 * hw + (col % 2) * hw + col / 2];
    for o in chans {
        for ty in 0..ty1 - ty0 {
            for tx in 0..tw {
                let y: [[f32; 2]; 2] = std::array::from_fn(|a| {
                    std::array::from_fn(|bx| {
                        let mut acc = bias.map_or(0.0, |b| b[o]);
                        for ch in 0..c {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let v = at(ch, 2 * ty + a + ky, 2 * tx + bx + kx);
                                    acc += v * w.raw[((o * c + ch) * 3 + ky) * 3 + kx];
                                }
                            }
                        }
                        if relu && acc < 0.0 {
                            0.0
                        } else {
                            acc
                        }
                    })
                });
                let ty_img = ty0 + ty;
                if pool {
                    let v = nan_max(nan_max(y[0][0], y[1][0]), nan_max(y[0][1], y[1][1]));
                    // SAFETY: tile (ty_img, tx) of image `img` is this task's
                    // alone, inside the pooled output.
                    unsafe { *out.0.add(((img * m + o) * ph + ty_img) * pw + tx) = v };
                    continue;
                }
                for (a, ya) in y.iter().enumerate() {
                    for (bx, &v) in ya.iter().enumerate() {
                        let (py, px) = (2 * ty_img + a, 2 * tx + bx);
                        if py < oh && px < ow {
                            // SAFETY: pixel (py, px) of channel `o` of image
                            // `img` belongs to this task's tile alone.
                            unsafe { *out.0.add(((img * m + o) * oh + py) * ow + px) = v };
                        }
                    }
                }
            }
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::conv::tests::next;
    use crate::linalg::conv::Im2col;

    /// The convolution in f64 (with bias and ReLU), and per output the sum
    /// of the products' magnitudes (the scale of its rounding error).
    fn naive(s: &ConvShape, x: &[f32], w: &[f32], bias: &[f32], relu: bool) -> (Vec<f64>, Vec<f64>) {
        let g = &s.geom;
        let mut y = vec![0f64; s.n * s.m * g.oh * g.ow];
        let mut mag = y.clone();
        for n in 0..s.n {
            for o in 0..s.m {
                for oy in 0..g.oh {
                    for ox in 0..g.ow {
                        let (mut acc, mut a) = (f64::from(bias[o]), f64::from(bias[o]).abs());
                        for ch in 0..s.c {
                            for ky in 0..3 {
                                for kx in 0..3 {
                                    let iy = (oy + ky) as isize - g.pad[0] as isize;
                                    let ix = (ox + kx) as isize - g.pad[1] as isize;
                                    if iy < 0 || ix < 0 || iy >= g.h as isize || ix >= g.w as isize {
                                        continue;
                                    }
                                    let xv = f64::from(x[((n * s.c + ch) * g.h + iy as usize) * g.w + ix as usize]);
                                    let wv = f64::from(w[((o * s.c + ch) * 3 + ky) * 3 + kx]);
                                    acc += xv * wv;
                                    a += (xv * wv).abs();
                                }
                            }
                        }
                        let at = ((n * s.m + o) * g.oh + oy) * g.ow + ox;
                        y[at] = if relu { acc.max(0.0) } else { acc };
                        mag[at] = a;
                    }
                }
            }
        }
        (y, mag)
    }

    fn shape(n: usize, c: usize, m: usize, (h, wd): (usize, usize), pad: [usize; 2], out_pad: [usize; 2]) -> ConvShape {
        ConvShape {
            n,
            c,
            m,
            group: 1,
            geom: Im2col {
                h,
                w: wd,
                kh: 3,
                kw: 3,
                s: [1, 1],
                d: [1, 1],
                pad,
                oh: h + pad[0] + out_pad[0] - 2,
                ow: wd + pad[1] + out_pad[1] - 2,
            },
        }
    }

    /// Against f64 loops: odd and even sizes, channel counts off the
    /// vector width, padding on either side or none, blocks of several
    /// tile rows and of one, with and without ReLU and bias, pooled.
    #[test]
    fn matches_loops() {
        if !has_avx2_fma() {
            println!("SKIPPED: no AVX2 + FMA");
            return;
        }
        let cases = [
            // n, c, m, (h, w), pad before, pad after
            (2, 8, 8, (6, 6), [1, 1], [1, 1]),
            (1, 9, 13, (7, 5), [1, 0], [0, 1]),
            (3, 32, 64, (14, 14), [1, 1], [1, 1]),
            (4, 17, 29, (9, 11), [1, 0], [0, 1]),
            (1, 16, 24, (5, 9), [0, 0], [0, 0]),
            (2, 520, 520, (3, 40), [1, 1], [1, 1]),
            // One image on several threads: tile rows and channels split.
            (1, 32, 64, (14, 14), [1, 1], [1, 1]),
            (1, 40, 50, (9, 14), [1, 1], [1, 1]),
        ];
        let mut seed = 7u32;
        for (n, c, m, hw, pad, out_pad) in cases {
            let s = shape(n, c, m, hw, pad, out_pad);
            let g = s.geom;
            let x: Vec<f32> = (0..n * c * g.h * g.w).map(|_| next(&mut seed)).collect();
            let wt: Vec<f32> = (0..m * c * 9).map(|_| next(&mut seed) * 0.3).collect();
            let bias: Vec<f32> = (0..m).map(|_| next(&mut seed)).collect();
            let lhs = WinogradLhs::new(&wt, m, c).expect("finite weights");
            assert!(fits(&s), "{c}->{m} {hw:?}");
            for (relu, with_bias) in [(false, false), (true, true)] {
                let b = if with_bias { bias.clone() } else { vec![0.0; m] };
                let run = |pool: bool, len: usize| {
                    let mut y = vec![f32::NAN; len];
                    let bias = with_bias.then_some(&b[..]);
                    conv2d_winograd(&s, &x, &lhs, bias, relu, pool, OutPtr(y.as_mut_ptr()));
                    y
                };
                let (want, mag) = naive(&s, &x, &wt, &b, relu);
                let got = run(false, want.len());
                for (i, ((&gv, &wv), &mg)) in got.iter().zip(&want).zip(&mag).enumerate() {
                    let tol = 1e-6 * (mg + 1.0);
                    assert!(
                        (f64::from(gv) - wv).abs() <= tol,
                        "{c}->{m} {hw:?} relu {relu}: y[{i}] {gv} vs {wv}"
                    );
                }
                // Pooled: the maximum of each 2×2 window of the same pass's
                // output, bit for bit.
                let (ph, pw) = (g.oh / 2, g.ow / 2);
                let pooled = run(true, n * m * ph * pw);
                for (i, &p) in pooled.iter().enumerate() {
                    let (nm, py, px) = (i / (ph * pw), i / pw % ph, i % pw);
                    let at = |a: usize, b: usize| got[(nm * g.oh + 2 * py + a) * g.ow + 2 * px + b];
                    let want = nan_max(nan_max(at(0, 0), at(1, 0)), nan_max(at(0, 1), at(1, 1)));
                    assert_eq!(p.to_bits(), want.to_bits(), "{c}->{m} {hw:?} pooled [{i}]");
                }
            }
        }
    }

    /// The row split against the plain loop at every length to 40, with an
    /// infinity or a NaN at each place in turn and NaNs past the row.
    #[test]
    #[cfg(target_arch = "x86_64")]
    fn split_row_matches_loops() {
        if !has_avx2_fma() {
            println!("SKIPPED: no AVX2 + FMA");
            return;
        }
        for n in 0..=40usize {
            let row: Vec<f32> = (0..n).map(|i| i as f32 * 0.5 - 3.0).collect();
            for room in [0, 8] {
                let split = |row: &[f32]| {
                    // Guard values past each half's room: nothing is written there.
                    let (mut e, mut o) = (vec![7.0f32; n.div_ceil(2) + room + 1], vec![7.0f32; n / 2 + room + 1]);
                    // SAFETY: AVX2 checked; e and o hold the halves and the room.
                    let finite = unsafe { x86::split_row(row, n, e.as_mut_ptr(), o.as_mut_ptr(), room) };
                    (e, o, finite)
                };
                let (e, o, finite) = split(&row);
                assert!(finite, "n {n}");
                assert_eq!(
                    e[..n.div_ceil(2)],
                    row.iter().step_by(2).copied().collect::<Vec<_>>()[..],
                    "n {n}"
                );
                assert_eq!(
                    o[..n / 2],
                    row.iter().skip(1).step_by(2).copied().collect::<Vec<_>>()[..],
                    "n {n}"
                );
                let (ge, go) = (e[n.div_ceil(2) + room..].to_vec(), o[n / 2 + room..].to_vec());
                assert_eq!(
                    (ge, go),
                    (vec![7.0], vec![7.0]),
                    "n {n} room {room}: written past the room"
                );
                if room == 0 {
                    assert!(
                        e[n.div_ceil(2)..] == [7.0] && o[n / 2..] == [7.0],
                        "n {n}: written past the halves"
                    );
                }
                // Values past the row are read but do not count.
                let mut past = row.clone();
                past.extend([f32::NAN; 20]);
                let (mut e2, mut o2) = (vec![7.0f32; n.div_ceil(2) + room + 1], vec![7.0f32; n / 2 + room + 1]);
                // SAFETY: AVX2 checked; e2 and o2 hold the halves and the room.
                let finite = unsafe { x86::split_row(&past, n, e2.as_mut_ptr(), o2.as_mut_ptr(), room) };
                assert!(finite, "n {n}");
                assert_eq!((&e2[..n.div_ceil(2)], &o2[..n / 2]), (&e[..n.div_ceil(2)], &o[..n / 2]));
                for j in 0..n {
                    for bad in [f32::INFINITY, f32::NEG_INFINITY, f32::NAN] {
                        let mut r = row.clone();
                        r[j] = bad;
                        assert!(!split(&r).2, "n {n}: {bad} at {j}");
                    }
                }
            }
        }
    }

    #[test]
    fn nan_reaches_its_outputs_and_pool() {
        let s = shape(1, 8, 8, (6, 6), [1, 1], [1, 1]);
        let mut seed = 3u32;
        let mut x: Vec<f32> = (0..8 * 36).map(|_| next(&mut seed)).collect();
        x[2 * 6 + 2] = f32::NAN;
        let wt: Vec<f32> = (0..8 * 8 * 9).map(|_| next(&mut seed)).collect();
        if !has_avx2_fma() {
            println!("SKIPPED: no AVX2 + FMA");
            return;
        }
        let lhs = WinogradLhs::new(&wt, 8, 8).expect("finite weights");
        let mut y = vec![0f32; 8 * 36];
        conv2d_winograd(&s, &x, &lhs, None, true, false, OutPtr(y.as_mut_ptr()));
        // Output (2, 2) reads input (2, 2) through the centre tap.
        assert!((0..8).all(|o| y[o * 36 + 2 * 6 + 2].is_nan()));
        // Output (5, 5) reads inputs 4..=5 only: finite, as in the direct
        // convolution (the transform alone would spread the NaN there).
        assert!((0..8).all(|o| y[o * 36 + 5 * 6 + 5].is_finite()));
        let mut p = vec![0f32; 8 * 9];
        conv2d_winograd(&s, &x, &lhs, None, true, true, OutPtr(p.as_mut_ptr()));
        assert!((0..8).all(|o| p[o * 9 + 4].is_nan()));
    }

    /// A NaN in one image whose tile rows and channels are split among
    /// tasks: every output against the f64 loops, NaN where its window
    /// holds the NaN and within the rounding bound elsewhere.
    #[test]
    fn nan_with_channels_split() {
        if !has_avx2_fma() {
            println!("SKIPPED: no AVX2 + FMA");
            return;
        }
        let s = shape(1, 32, 64, (14, 14), [1, 1], [1, 1]);
        let mut seed = 11u32;
        let mut x: Vec<f32> = (0..32 * 196).map(|_| next(&mut seed)).collect();
        x[5 * 196 + 6 * 14 + 3] = f32::NAN;
        let wt: Vec<f32> = (0..64 * 32 * 9).map(|_| next(&mut seed) * 0.3).collect();
        let bias: Vec<f32> = (0..64).map(|_| next(&mut seed)).collect();
        let lhs = WinogradLhs::new(&wt, 64, 32).expect("finite weights");
        let mut y = vec![0f32; 64 * 196];
        conv2d_winograd(&s, &x, &lhs, Some(&bias), false, false, OutPtr(y.as_mut_ptr()));
        let (want, mag) = naive(&s, &x, &wt, &bias, false);
        let mut nans = 0;
        for (i, ((&g, &w), &mg)) in y.iter().zip(&want).zip(&mag).enumerate() {
            if w.is_nan() {
                assert!(g.is_nan(), "y[{i}] = {g} for a NaN window");
                nans += 1;
            } else {
                assert!((f64::from(g) - w).abs() <= 1e-6 * (mg + 1.0), "y[{i}] {g} vs {w}");
            }
        }
        assert_eq!(nans, 64 * 9, "the NaN reaches each channel's 3×3 outputs");
    }

    #[test]
    fn fits_only_unit_3x3_single_group_and_pays_on_large_ones() {
        if !has_avx2_fma() {
            println!("SKIPPED: no AVX2 + FMA");
            return;
        }
        let mut s = shape(1, 8, 8, (6, 6), [1, 1], [1, 1]);
        assert!(fits(&s));
        s.geom.s = [2, 2];
        assert!(!fits(&s));
        let mut s = shape(1, 8, 8, (6, 6), [1, 1], [1, 1]);
        s.group = 2;
        assert!(!fits(&s));
        // Too few channels and tiles to pay.
        assert!(!pays(&shape(1, 8, 8, (6, 6), [1, 1], [1, 1])));
        assert!(pays(&shape(64, 32, 64, (14, 14), [1, 1], [1, 1])) || super::super::pool::threads() > 49);
        // One 14×14 image of 32 → 64 channels (49 tiles) pays on any thread
        // count; 16 → 16 channels or an 8×8 image (16 tiles) do not on one.
        assert!(pays(&shape(1, 32, 64, (14, 14), [1, 1], [1, 1])));
        assert!(!pays(&shape(1, 16, 16, (14, 14), [1, 1], [1, 1])));
        assert!(!pays(&shape(1, 32, 64, (8, 8), [1, 1], [1, 1])));
    }
}
