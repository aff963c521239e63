//! W8A8's int8 GEMM on AVX2 CPUs without VNNI: uint8 activation codes and
//! int8 weights both widened to int16, multiplied pairwise by `vpmaddwd`
//! (`_mm256_madd_epi16`: two products summed into one int32 lane) and
//! accumulated in int32.
//!
//! `vpmaddubsw` would multiply the bytes directly but sums each pair into a
//! saturating int16: `255·127 + 255·127 = 64770` does not fit, so its sums
//! would differ from the exact ones. Widened pairs never saturate (each pair
//! sum is at most `2·255·128 = 65280`), so the sums here equal the portable
//! loop's for any `k` whose int32 sums do not overflow (`k < 65793`), and
//! the epilogue repeats [`super::w8a8_portable`]'s f32 operations in its
//! order: the outputs are the same bits. One `vpmaddwd` does 16
//! multiply-adds, as many as a `vpmaddubsw` + `vpmaddwd` pair does per
//! instruction; the cost is weights twice as wide (packed once).

use std::arch::x86_64::*;

use rayon::prelude::*;

use super::packed::Epilogue;

/// Outputs per packed block: two ymm of 8 int32 sums.
pub(super) const NB: usize = 16;
/// Rows per register tile (12 accumulators, 2 weight registers, 1 broadcast).
const MR: usize = 6;
/// Rows and packed blocks per parallel task.
const TASK_ROWS: usize = 8 * MR;
const TASK_BLOCKS: usize = 8;

/// int8 weight rows `w [n, k]` widened to int16 and repacked once: blocks of
/// [`NB`] outputs; within a block, for every 2 inputs, the `NB × 2` values
/// one pair of `vpmaddwd` reads (output `j`'s two weights side by side), and
/// `Σ_k w[j, k]` per output (zero past `n`).
#[derive(Clone, Debug)]
pub struct PackedI16 {
    pub(super) n: usize,
    pub(super) k: usize,
    data: Vec<i16>,
    wsum: Vec<i32>,
}

/// Whether this CPU has AVX2.
pub fn available() -> bool {
    std::is_x86_feature_detected!("avx2")
}

impl PackedI16 {
    /// Packs `w` (`n` rows of `k`); `None` without AVX2.
    pub fn new(w: &[i8], n: usize, k: usize) -> Option<Self> {
        if !available() || w.len() < n * k {
            return None;
        }
        let k2 = k.div_ceil(2) * 2;
        let blocks = n.div_ceil(NB);
        let mut data = vec![0i16; blocks * NB * k2];
        for (j, row) in w.chunks_exact(k.max(1)).take(n).enumerate() {
            let (base, c) = ((j / NB) * NB * k2, j % NB);
            for (p, &v) in row.iter().enumerate() {
                data[base + (p / 2) * NB * 2 + c * 2 + p % 2] = v as i16;
            }
        }
        let mut wsum = vec![0i32; blocks * NB];
        for (s, row) in wsum.iter_mut().zip(w.chunks_exact(k.max(1))).take(n) {
            *s = row.iter().map(|&v| v as i32).sum();
        }
        Some(Self { n, k, data, wsum })
    }

    /// Inputs rounded up to a pair: the length of each activation row.
    pub(super) fn k2(&self) -> usize {
        self.k.div_ceil(2) * 2
    }
}

/// Where a tile finds its activation codes: row `r`'s pair `q` (two int16
/// codes read as one int32) at `x + start(r) + offset(q)`.
#[derive(Clone, Copy)]
enum Rows<'a> {
    /// Dense rows of `k2` codes: `start(r) = r·k2`, `offset(q) = 2q`.
    Dense { k2: usize },
    /// Rows gathered from anywhere in `x` (an implicit im2col):
    /// `start(r) = base[r]`, `offset(q) = off[q]`.
    Gathered { base: &'a [usize], off: &'a [usize] },
}

/// `m` activation rows `x` (int16 codes, [`PackedI16::k2`] each, zero
/// padded) against the packed weights, each tile finished by `epi`.
/// The caller checked that `x` holds `m` rows and that the epilogue's
/// buffers hold what [`Epilogue`] lists.
pub(super) fn gemm(x: &[i16], m: usize, w: &PackedI16, epi: Epilogue) {
    let k2 = w.k2();
    if x.len() >= m * k2 {
        run(x, Rows::Dense { k2 }, m, w, epi);
    }
}

/// [`gemm`] over rows gathered from `x`: row `r`'s codes are the pairs at
/// `x[base[r] + off[q]..][..2]` for `q < k2/2` (an implicit im2col: `base`
/// per output pixel, `off` per pair of taps). Panics if `base` has fewer
/// than `m` entries, `off` other than `k2/2`, or a pair lies outside `x`.
pub(super) fn gemm_gathered(x: &[i16], base: &[usize], off: &[usize], m: usize, w: &PackedI16, epi: Epilogue) {
    let far = base[..m].iter().max().copied().unwrap_or(0) + off.iter().max().copied().unwrap_or(0) + 2;
    assert!(
        off.len() == w.k2() / 2 && (m == 0 || far <= x.len()),
        "gemm_gathered sizes"
    );
    run(x, Rows::Gathered { base: &base[..m], off }, m, w, epi);
}

fn run(x: &[i16], rows_of: Rows, m: usize, w: &PackedI16, epi: Epilogue) {
    let (n, k2) = (w.n, w.k2());
    let blocks = n.div_ceil(NB);
    if m == 0 || n == 0 {
        return;
    }
    let big = m * n * w.k >= 1 << 20 && rayon::current_num_threads() > 1;
    let (row_tasks, blk_tasks) = (m.div_ceil(TASK_ROWS), blocks.div_ceil(TASK_BLOCKS));
    let task = |t: usize| {
        let (i0, b0) = ((t / blk_tasks) * TASK_ROWS, (t % blk_tasks) * TASK_BLOCKS);
        let (i1, b1) = ((i0 + TASK_ROWS).min(m), (b0 + TASK_BLOCKS).min(blocks));
        for b in b0..b1 {
            let cols = (n - b * NB).min(NB);
            let mut i = i0;
            while i < i1 {
                let rows = (i1 - i).min(MR);
                let mut start = [0usize; MR];
                for (r, st) in start.iter_mut().enumerate().take(rows) {
                    *st = match rows_of {
                        Rows::Dense { k2 } => (i + r) * k2,
                        Rows::Gathered { base, .. } => base[i + r],
                    };
                }
                let off = match rows_of {
                    Rows::Dense { .. } => std::ptr::null(),
                    Rows::Gathered { off, .. } => off.as_ptr(),
                };
                // SAFETY: AVX2 was detected when `w` was packed. Every pair
                // the tile reads lies in x (rows i..i+rows of k2 codes, or
                // what gemm_gathered checked), block b of the packed weights
                // (k2·NB values) and its NB sums are in bounds; the tile
                // writes rows i..i+rows, columns b·NB..b·NB+cols of the
                // m × n output, which no other task writes.
                unsafe {
                    let args = Tile {
                        x: x.as_ptr(),
                        start,
                        off,
                        k2,
                        w: w.data.as_ptr().add(b * k2 * NB),
                        wsum: w.wsum.as_ptr().add(b * NB),
                        row: i,
                        col: b * NB,
                        ld: n,
                        cols,
                        epi,
                    };
                    match (rows, off.is_null()) {
                        (6, true) => tile::<6, false>(args),
                        (5, true) => tile::<5, false>(args),
                        (4, true) => tile::<4, false>(args),
                        (3, true) => tile::<3, false>(args),
                        (2, true) => tile::<2, false>(args),
                        (_, true) => tile::<1, false>(args),
                        (6, false) => tile::<6, true>(args),
                        (5, false) => tile::<5, true>(args),
                        (4, false) => tile::<4, true>(args),
                        (3, false) => tile::<3, true>(args),
                        (2, false) => tile::<2, true>(args),
                        (_, false) => tile::<1, true>(args),
                    }
                }
                i += rows;
            }
        }
    };
    let tasks = row_tasks * blk_tasks;
    if big {
        (0..tasks).into_par_iter().for_each(task);
    } else {
        (0..tasks).for_each(task);
    }
}

/// One tile: the codes `x` with each row's start and (gathered) the pairs'
/// offsets, `w` at its packed block, the output position `(row, col)` in
/// the `ld`-wide output, `cols` valid outputs.
struct Tile {
    x: *const i16,
    start: [usize; MR],
    off: *const usize,
    k2: usize,
    w: *const i16,
    wsum: *const i32,
    row: usize,
    col: usize,
    ld: usize,
    cols: usize,
    epi: Epilogue,
}

/// Stores the first `cols` of 16 lanes at `dst`: whole registers when
/// `cols == 16`, else through a stack buffer.
#[inline(always)]
unsafe fn store16<T: Copy + Default>(dst: *mut T, cols: usize, store: impl FnOnce(*mut T)) {
    if cols == NB {
        store(dst);
    } else {
        let mut tmp = [T::default(); NB];
        store(tmp.as_mut_ptr());
        std::ptr::copy_nonoverlapping(tmp.as_ptr(), dst, cols);
    }
}

/// `R` rows × 16 outputs: for every 2 inputs, two 32-byte weight loads and
/// `2R` `vpmaddwd` against the rows' two codes broadcast (`GATHER`: the
/// pair's offset from the table, else `2q`).
#[target_feature(enable = "avx2")]
unsafe fn tile<const R: usize, const GATHER: bool>(t: Tile) {
    let mut acc = [[_mm256_setzero_si256(); 2]; R];
    let mut rows = [t.x; R];
    for (p, &st) in rows.iter_mut().zip(&t.start) {
        *p = t.x.add(st);
    }
    for q in 0..t.k2 / 2 {
        let wp = t.w.add(q * 2 * NB);
        let w0 = _mm256_loadu_si256(wp.cast());
        let w1 = _mm256_loadu_si256(wp.add(NB).cast());
        let o = if GATHER { *t.off.add(q) } else { q * 2 };
        for (a, p) in acc.iter_mut().zip(&rows) {
            let xv = _mm256_set1_epi32(p.add(o).cast::<i32>().read_unaligned());
            a[0] = _mm256_add_epi32(a[0], _mm256_madd_epi16(xv, w0));
            a[1] = _mm256_add_epi32(a[1], _mm256_madd_epi16(xv, w1));
        }
    }
    let s0 = _mm256_loadu_si256(t.wsum.cast());
    let s1 = _mm256_loadu_si256(t.wsum.add(8).cast());
    // acc - z·wsum, exact (wrapping as the portable int32 sums would not).
    let centered = |a: __m256i, s: __m256i, z: i32| _mm256_sub_epi32(a, _mm256_mullo_epi32(_mm256_set1_epi32(z), s));
    match t.epi {
        Epilogue::Int { out, z } => {
            for (r, a) in acc.iter().enumerate() {
                let zr = *z.add(t.row + r);
                let o = out.add((t.row + r) * t.ld + t.col);
                store16(o, t.cols, |p: *mut i32| {
                    _mm256_storeu_si256(p.cast(), centered(a[0], s0, zr));
                    _mm256_storeu_si256(p.add(8).cast(), centered(a[1], s1, zr));
                });
            }
        }
        Epilogue::W8A8 {
            xs,
            z,
            ws,
            bias,
            xo,
            owt,
            c,
            n_pad,
            y,
        } => {
            // Scales and transposed outlier weights are padded to whole blocks.
            let (ws0, ws1) = (_mm256_loadu_ps(ws.add(t.col)), _mm256_loadu_ps(ws.add(t.col + 8)));
            let mut bb = [0.0f32; NB];
            if !bias.is_null() {
                std::ptr::copy_nonoverlapping(bias.add(t.col), bb.as_mut_ptr(), t.cols);
            }
            let (b0, b1) = (_mm256_loadu_ps(bb.as_ptr()), _mm256_loadu_ps(bb.as_ptr().add(8)));
            for (r, a) in acc.iter().enumerate() {
                let (sx, zr) = (_mm256_set1_ps(*xs.add(t.row + r)), *z.add(t.row + r));
                // The outlier products, left to right over the outliers.
                let (mut o0, mut o1) = (_mm256_setzero_ps(), _mm256_setzero_ps());
                for tt in 0..c {
                    let ow = owt.add(tt * n_pad + t.col);
                    let xv = _mm256_set1_ps(*xo.add((t.row + r) * c + tt));
                    o0 = _mm256_add_ps(o0, _mm256_mul_ps(xv, _mm256_loadu_ps(ow)));
                    o1 = _mm256_add_ps(o1, _mm256_mul_ps(xv, _mm256_loadu_ps(ow.add(8))));
                }
                let f = |v: __m256i, s: __m256i, wv: __m256, ov: __m256, bv: __m256| {
                    let v = _mm256_cvtepi32_ps(centered(v, s, zr));
                    _mm256_add_ps(_mm256_add_ps(_mm256_mul_ps(v, _mm256_mul_ps(sx, wv)), ov), bv)
                };
                let dst = y.add((t.row + r) * t.ld + t.col);
                store16(dst, t.cols, |p: *mut f32| {
                    _mm256_storeu_ps(p, f(a[0], s0, ws0, o0, b0));
                    _mm256_storeu_ps(p.add(8), f(a[1], s1, ws1, o1, b1));
                });
            }
        }
    }
}

/// `out[i·n + j] = Σ_k x[i·k + k']·w[j·k + k']` for unsigned rows `x` over
/// weights packed by [`PackedI16::new`] (int32 sums, the same as
/// [`super::gemm_u8i8`]'s).
pub fn gemm_u8i8_packed(x: &[u8], m: usize, w: &PackedI16, out: &mut [i32]) {
    let (n, k, k2) = (w.n, w.k, w.k2());
    assert!(x.len() >= m * k && out.len() >= m * n, "gemm_u8i8_packed sizes");
    let mut xw = vec![0i16; m * k2];
    for (d, s) in xw.chunks_mut(k2.max(1)).zip(x.chunks(k.max(1))).take(m) {
        for (d, &v) in d.iter_mut().zip(s) {
            *d = v as i16;
        }
    }
    let z = vec![0i32; m];
    gemm(
        &xw,
        m,
        w,
        Epilogue::Int {
            out: out.as_mut_ptr(),
            z: z.as_ptr(),
        },
    );
}

/// Folds the min and max of `x` into `(lo, hi)` (vector and scalar halves);
/// a NaN is passed over, as `f32::min`/`max` do.
#[inline(always)]
unsafe fn range(x: &[f32], lo: &mut __m256, hi: &mut __m256, lo_s: &mut f32, hi_s: &mut f32) {
    let mut chunks = x.chunks_exact(8);
    for c in &mut chunks {
        let v = _mm256_loadu_ps(c.as_ptr());
        // minps/maxps return the second operand when either is NaN.
        *lo = _mm256_min_ps(v, *lo);
        *hi = _mm256_max_ps(v, *hi);
    }
    for &v in chunks.remainder() {
        *lo_s = lo_s.min(v);
        *hi_s = hi_s.max(v);
    }
}

/// `f` folded over the 8 lanes of `v` (min or max: order does not matter).
#[inline(always)]
unsafe fn reduce(v: __m256, f: impl Fn(__m128, __m128) -> __m128) -> f32 {
    let a = f(_mm256_castps256_ps128(v), _mm256_extractf128_ps(v, 1));
    let b = f(a, _mm_movehl_ps(a, a));
    _mm_cvtss_f32(f(b, _mm_shuffle_ps(b, b, 1)))
}

/// [`super::quantize_row_u8`]'s codes for one row, as int16, into `q`
/// (`q[x.len()..]` zeroed), with the outlier columns (ascending) left out of
/// the range (their codes are don't-cares: their weights are 0). Returns
/// `(s, z)`. Rounding half away from zero as `trunc(t + copysign(0.49999997, t))`,
/// which equals `f32::round` for |t| < 2^22 (here |t| <= 256 except at
/// outliers).
///
/// # Safety
/// The CPU must have AVX2; `q` must hold at least `x.len()` values.
#[target_feature(enable = "avx2")]
pub(super) unsafe fn quantize_row(x: &[f32], outliers: &[usize], q: &mut [i16]) -> (f32, i32) {
    let k = x.len();
    let (mut lo, mut hi) = (_mm256_setzero_ps(), _mm256_setzero_ps());
    let (mut lo_s, mut hi_s) = (0.0f32, 0.0f32);
    let mut start = 0;
    for &o in outliers {
        range(&x[start..o], &mut lo, &mut hi, &mut lo_s, &mut hi_s);
        start = o + 1;
    }
    range(&x[start.min(k)..], &mut lo, &mut hi, &mut lo_s, &mut hi_s);
    // The vector halves hold no NaN (`range` passes them over).
    let lo = reduce(lo, |a, b| _mm_min_ps(a, b)).min(lo_s);
    let hi = reduce(hi, |a, b| _mm_max_ps(a, b)).max(hi_s);
    // At most one padding code in W8A8's rows: no memset call.
    for d in q[k..].iter_mut() {
        *d = 0;
    }
    if hi <= lo {
        q[..k].fill(0);
        return (1.0, 0);
    }
    let s = (hi - lo) / 255.0;
    let inv = 1.0 / s;
    let z = super::round(-lo * inv).clamp(0.0, 255.0);
    let (vinv, vz, half) = (
        _mm256_set1_ps(inv),
        _mm256_set1_epi32(z as i32),
        _mm256_set1_ps(0.499_999_97),
    );
    let (sign, top) = (_mm256_set1_epi32(i32::MIN), _mm256_set1_epi32(255));
    let mut chunks = x.chunks_exact(8);
    let mut p = 0;
    for c in &mut chunks {
        let t = _mm256_mul_ps(_mm256_loadu_ps(c.as_ptr()), vinv);
        let h = _mm256_castsi256_ps(_mm256_or_si256(
            _mm256_and_si256(_mm256_castps_si256(t), sign),
            _mm256_castps_si256(half),
        ));
        // A NaN converts to i32::MIN and clamps to code 0, as `NaN as u8` is 0.
        let r = _mm256_cvttps_epi32(_mm256_add_ps(t, h));
        let v = _mm256_min_epi32(_mm256_max_epi32(_mm256_add_epi32(r, vz), _mm256_setzero_si256()), top);
        // Lanes 0-3 and 4-7 packed to int16 within each half, then the two
        // halves' low quadwords brought together.
        let packed = _mm256_permute4x64_epi64(_mm256_packs_epi32(v, v), 0b00_00_10_00);
        _mm_storeu_si128(q.as_mut_ptr().add(p).cast(), _mm256_castsi256_si128(packed));
        p += 8;
    }
    for (d, &v) in q[p..k].iter_mut().zip(chunks.remainder()) {
        *d = (super::round(v * inv) + z).clamp(0.0, 255.0) as u8 as i16;
    }
    (s, z as i32)
}
