//! AVX2 block products (x86-64 with AVX2, FMA and F16C): the same integer
//! arithmetic per block as the portable kernels, 32 weights per
//! `vpmaddubsw` (unsigned weight bytes × signed activation bytes), one block
//! unpacked once for up to four activation rows; and against 16-bit
//! activations, 16 weights widened to i16 per `vpmaddwd` (for one
//! activation row, four weight rows per activation load, prefetched
//! ahead; for more, one block unpacked once for up to eight activation
//! rows, with every row's operations those of the one-row kernel); and the
//! dequantization of the 32-weight formats.
// The token index addresses the accumulators and the activation rows alike.
#![allow(clippy::needless_range_loop)]

use std::arch::x86_64::*;

use super::acts::{QActs, QActs16, ROW_TILE16};
use super::blocks::k_scale_min;
use super::BlockFormat;

/// Whether this CPU has the features the kernels here are compiled for.
pub(crate) fn available() -> bool {
    is_x86_feature_detected!("avx2") && is_x86_feature_detected!("fma") && is_x86_feature_detected!("f16c")
}

/// `out[t] = Σ_c w[c]·x[t0 + t][c]` for `out.len()` in 1..=4 (see
/// `portable::dot_row`); more rows fall back to the portable kernel.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`available`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_row(format: BlockFormat, row: &[u8], acts: &QActs, t0: usize, out: &mut [f32]) {
    match out.len() {
        1 => dot_t::<1>(format, row, acts, t0, out),
        2 => dot_t::<2>(format, row, acts, t0, out),
        3 => dot_t::<3>(format, row, acts, t0, out),
        4 => dot_t::<4>(format, row, acts, t0, out),
        _ => super::portable::dot_row(format, row, acts, t0, out),
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn dot_t<const T: usize>(format: BlockFormat, row: &[u8], acts: &QActs, t0: usize, out: &mut [f32]) {
    let r: [f32; T] = match format {
        BlockFormat::Q4_0 => nibbles::<T, false, false>(row, acts, t0),
        BlockFormat::Q4_1 => nibbles::<T, true, false>(row, acts, t0),
        BlockFormat::Q5_0 => nibbles::<T, false, true>(row, acts, t0),
        BlockFormat::Q5_1 => nibbles::<T, true, true>(row, acts, t0),
        BlockFormat::Q8_0 => q8_0::<T>(row, acts, t0),
        BlockFormat::Q4_K => q45k::<T, false>(row, acts, t0),
        BlockFormat::Q5_K => q45k::<T, true>(row, acts, t0),
        BlockFormat::Q6_K => q6k::<T>(row, acts, t0),
    };
    out.copy_from_slice(&r);
}

#[inline]
#[target_feature(enable = "avx2")]
fn load32(s: &[u8]) -> __m256i {
    let s = &s[..32];
    // SAFETY: `s` holds 32 readable bytes (the slice above is bounds-checked);
    // `loadu` has no alignment requirement.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn load32_i8(s: &[i8]) -> __m256i {
    let s = &s[..32];
    // SAFETY: as in `load32`.
    unsafe { _mm256_loadu_si256(s.as_ptr().cast()) }
}

#[inline]
#[target_feature(enable = "avx2")]
fn load16(s: &[u8]) -> __m128i {
    let s = &s[..16];
    // SAFETY: `s` holds 16 readable bytes; `loadu` has no alignment requirement.
    unsafe { _mm_loadu_si128(s.as_ptr().cast()) }
}

/// The two little-endian f16 values at `at` and `at + 2` as f32.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16x2(b: &[u8], at: usize) -> (f32, f32) {
    let bits = u32::from_le_bytes([b[at], b[at + 1], b[at + 2], b[at + 3]]);
    let v = _mm_cvtph_ps(_mm_cvtsi32_si128(bits as i32));
    (_mm_cvtss_f32(v), _mm_cvtss_f32(_mm_movehdup_ps(v)))
}

/// The little-endian f16 value at `at` as f32. The conversion is inline
/// assembly so that the compiler sees every lane of its input used: with
/// the intrinsic it loads the 16 bits with `vpinsrw` into whatever register
/// is free, and each block then waits for that register's last writer (an
/// accumulator of the previous block), which chains the loop's iterations.
#[inline]
#[target_feature(enable = "avx2,f16c")]
fn f16_1(b: &[u8], at: usize) -> f32 {
    let bits = _mm_cvtsi32_si128(i32::from(u16::from_le_bytes([b[at], b[at + 1]])));
    let v: __m128;
    // SAFETY: `vcvtph2ps` needs F16C, which this function is compiled for;
    // it reads and writes registers only.
    unsafe {
        std::arch::asm!(
            "vcvtph2ps {v}, {bits}",
            v = lateout(xmm_reg) v,
            bits = in(xmm_reg) bits,
            options(pure, nomem, nostack, preserves_flags)
        );
    }
    _mm_cvtss_f32(v)
}

#[inline]
#[target_feature(enable = "avx2")]
fn hsum(v: __m256) -> f32 {
    let s = _mm_add_ps(_mm256_castps256_ps128(v), _mm256_extractf128_ps::<1>(v));
    let s = _mm_add_ps(s, _mm_movehl_ps(s, s));
    _mm_cvtss_f32(_mm_add_ss(s, _mm_movehdup_ps(s)))
}

/// Σ over pairs of `u8 × i8` products as eight i32 sums.
#[inline]
#[target_feature(enable = "avx2")]
fn dot_u8_i8(w: __m256i, x: __m256i) -> __m256i {
    _mm256_madd_epi16(_mm256_maddubs_epi16(w, x), _mm256_set1_epi16(1))
}

/// The 32 bits of `bits` as bytes `0x10` (bit set) or `0`.
#[inline]
#[target_feature(enable = "avx2")]
fn high_bits(bits: u32) -> __m256i {
    let v = _mm256_set1_epi32(bits as i32);
    let spread = _mm256_setr_epi64x(0, 0x0101_0101_0101_0101, 0x0202_0202_0202_0202, 0x0303_0303_0303_0303);
    let bytes = _mm256_shuffle_epi8(v, spread);
    let mask = _mm256_set1_epi64x(0x8040_2010_0804_0201u64 as i64);
    let set = _mm256_cmpeq_epi8(_mm256_and_si256(bytes, mask), mask);
    _mm256_and_si256(set, _mm256_set1_epi8(0x10))
}

/// Q4_0, Q4_1, Q5_0, Q5_1: `w = d·q + m` with `m = -8d` / `-16d` for the
/// formats without a stored minimum.
#[target_feature(enable = "avx2,fma,f16c")]
fn nibbles<const T: usize, const MIN: bool, const FIVE: bool>(row: &[u8], acts: &QActs, t0: usize) -> [f32; T] {
    let bb = 18 + 2 * usize::from(MIN) + 4 * usize::from(FIVE);
    let qs_at = bb - 16;
    let nb = acts.blocks();
    let mask = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); T];
    let mut accm = [0f32; T];
    for (b, block) in row.chunks_exact(bb).enumerate() {
        let (d, m) = if MIN {
            f16x2(block, 0)
        } else {
            let d = f16_1(block, 0);
            (d, if FIVE { -16.0 * d } else { -8.0 * d })
        };
        let q = load16(&block[qs_at..]);
        let mut w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(q), q), mask);
        if FIVE {
            let at = qs_at - 4;
            let bits = u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
            w = _mm256_or_si256(w, high_bits(bits));
        }
        for t in 0..T {
            let xi = (t0 + t) * nb + b;
            let x = load32_i8(&acts.qs[xi * 32..]);
            let s = _mm256_cvtepi32_ps(dot_u8_i8(w, x));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * acts.d[xi]), s, acc[t]);
            accm[t] += m * acts.ds[xi];
        }
    }
    std::array::from_fn(|t| hsum(acc[t]) + accm[t])
}

/// Q8_0: signed weights; `|w|` against `x` with the sign of `w` moved onto it.
#[target_feature(enable = "avx2,fma,f16c")]
fn q8_0<const T: usize>(row: &[u8], acts: &QActs, t0: usize) -> [f32; T] {
    let nb = acts.blocks();
    let mut acc = [_mm256_setzero_ps(); T];
    for (b, block) in row.chunks_exact(34).enumerate() {
        let d = f16_1(block, 0);
        let w = load32(&block[2..]);
        let aw = _mm256_sign_epi8(w, w);
        for t in 0..T {
            let xi = (t0 + t) * nb + b;
            let x = _mm256_sign_epi8(load32_i8(&acts.qs[xi * 32..]), w);
            let s = _mm256_cvtepi32_ps(dot_u8_i8(aw, x));
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * acts.d[xi]), s, acc[t]);
        }
    }
    std::array::from_fn(|t| hsum(acc[t]))
}

/// Q4_K, Q5_K: eight sub-blocks of 32 with 6-bit scales and minimums.
#[target_feature(enable = "avx2,fma,f16c")]
fn q45k<const T: usize, const FIVE: bool>(row: &[u8], acts: &QActs, t0: usize) -> [f32; T] {
    let bb = if FIVE { 176 } else { 144 };
    let nb = acts.blocks();
    let mask = _mm256_set1_epi8(0x0f);
    let mut acc = [_mm256_setzero_ps(); T];
    let mut accm = [0f32; T];
    for (b, block) in row.chunks_exact(bb).enumerate() {
        let (d, dmin) = f16x2(block, 0);
        let (mut sc, mut mn) = ([0i16; 8], [0i32; 8]);
        for j in 0..8 {
            let (s, m) = k_scale_min(&block[4..16], j);
            sc[j] = i16::from(s);
            mn[j] = i32::from(m);
        }
        let qs = &block[bb - 128..];
        let qh = if FIVE {
            load32(&block[16..])
        } else {
            _mm256_setzero_si256()
        };
        let mut isum = [_mm256_setzero_si256(); T];
        for c in 0..4 {
            let q = load32(&qs[32 * c..]);
            let mut lo = _mm256_and_si256(q, mask);
            let mut hi = _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask);
            if FIVE {
                let sixteen = _mm256_set1_epi8(0x10);
                let (bl, bh) = (
                    _mm256_set1_epi8(1 << (2 * c)),
                    _mm256_set1_epi8((1u8 << (2 * c + 1)) as i8),
                );
                let hl = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bl), bl);
                let hh = _mm256_cmpeq_epi8(_mm256_and_si256(qh, bh), bh);
                lo = _mm256_or_si256(lo, _mm256_and_si256(hl, sixteen));
                hi = _mm256_or_si256(hi, _mm256_and_si256(hh, sixteen));
            }
            let (s_lo, s_hi) = (_mm256_set1_epi16(sc[2 * c]), _mm256_set1_epi16(sc[2 * c + 1]));
            for t in 0..T {
                let x = &acts.qs[((t0 + t) * nb + b) * 256 + 64 * c..];
                let p_lo = _mm256_madd_epi16(_mm256_maddubs_epi16(lo, load32_i8(x)), s_lo);
                let p_hi = _mm256_madd_epi16(_mm256_maddubs_epi16(hi, load32_i8(&x[32..])), s_hi);
                isum[t] = _mm256_add_epi32(isum[t], _mm256_add_epi32(p_lo, p_hi));
            }
        }
        for t in 0..T {
            let xi = (t0 + t) * nb + b;
            let dx = acts.d[xi];
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(isum[t]), acc[t]);
            let sums = &acts.sums16[xi * 16..xi * 16 + 16];
            let ms: i32 = (0..8)
                .map(|j| mn[j] * (i32::from(sums[2 * j]) + i32::from(sums[2 * j + 1])))
                .sum();
            accm[t] -= dmin * dx * ms as f32;
        }
    }
    std::array::from_fn(|t| hsum(acc[t]) + accm[t])
}

/// Q6_K: sixteen sub-blocks of 16 with signed 8-bit scales, values `q - 32`.
#[target_feature(enable = "avx2,fma,f16c")]
fn q6k<const T: usize>(row: &[u8], acts: &QActs, t0: usize) -> [f32; T] {
    let nb = acts.blocks();
    let (mask, three) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(3));
    let mut acc = [_mm256_setzero_ps(); T];
    let mut accm = [0f32; T];
    for (b, block) in row.chunks_exact(210).enumerate() {
        let d = f16_1(block, 208);
        let sc: [i16; 16] = std::array::from_fn(|g| i16::from(block[192 + g] as i8));
        let mut isum = [_mm256_setzero_si256(); T];
        for h in 0..2 {
            let ql = [load32(&block[64 * h..]), load32(&block[64 * h + 32..])];
            let qh = load32(&block[128 + 32 * h..]);
            for k in 0..4 {
                let l = ql[k % 2];
                let lo = if k < 2 {
                    _mm256_and_si256(l, mask)
                } else {
                    _mm256_and_si256(_mm256_srli_epi16::<4>(l), mask)
                };
                let hi = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k as i32)), three);
                let q = _mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi));
                let g = h * 8 + 2 * k;
                let scv = _mm256_set_m128i(_mm_set1_epi16(sc[g + 1]), _mm_set1_epi16(sc[g]));
                for t in 0..T {
                    let x = load32_i8(&acts.qs[((t0 + t) * nb + b) * 256 + h * 128 + k * 32..]);
                    let p = _mm256_madd_epi16(_mm256_maddubs_epi16(q, x), scv);
                    isum[t] = _mm256_add_epi32(isum[t], p);
                }
            }
        }
        for t in 0..T {
            let xi = (t0 + t) * nb + b;
            let dx = acts.d[xi];
            acc[t] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(isum[t]), acc[t]);
            let sums = &acts.sums16[xi * 16..xi * 16 + 16];
            let ms: i32 = (0..16).map(|g| i32::from(sc[g]) * i32::from(sums[g])).sum();
            accm[t] -= 32.0 * d * dx * ms as f32;
        }
    }
    std::array::from_fn(|t| hsum(acc[t]) + accm[t])
}

/// `out[i·tn + t] = Σ_c w_i[c]·x[t0 + t][c]` for the packed rows `w_i`
/// (`row_bytes` each) in `rows` against 16-bit activations, `tn` in 1..=8
/// (see `portable::dot_row16`); more fall back to the portable kernel.
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`available`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dot_rows16(
    format: BlockFormat,
    rows: &[u8],
    row_bytes: usize,
    acts: &QActs16,
    t0: usize,
    tn: usize,
    out: &mut [f32],
) {
    match tn {
        1 => rows16_t::<1>(format, rows, row_bytes, acts, t0, out),
        2 => rows16_t::<2>(format, rows, row_bytes, acts, t0, out),
        3 => rows16_t::<3>(format, rows, row_bytes, acts, t0, out),
        4 => rows16_t::<4>(format, rows, row_bytes, acts, t0, out),
        5 => rows16_t::<5>(format, rows, row_bytes, acts, t0, out),
        6 => rows16_t::<6>(format, rows, row_bytes, acts, t0, out),
        7 => rows16_t::<7>(format, rows, row_bytes, acts, t0, out),
        8 => rows16_t::<8>(format, rows, row_bytes, acts, t0, out),
        _ => {
            for (row, o) in rows.chunks_exact(row_bytes).zip(out.chunks_exact_mut(tn)) {
                super::portable::dot_row16(format, row, acts, t0, o);
            }
        }
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn rows16_t<const T: usize>(format: BlockFormat, rows: &[u8], rb: usize, acts: &QActs16, t0: usize, out: &mut [f32]) {
    let x = Rows16::<T>::new(acts, t0);
    // One activation row: four weight rows at a time for the 32-weight
    // formats, the rest one at a time.
    let (rows, out) = if T == 1 && format.block_len() == 32 {
        let done = quads16(format, rows, rb, &x, out);
        (&rows[done * rb..], &mut out[done..])
    } else {
        (rows, out)
    };
    let rows = rows.chunks_exact(rb).zip(out.chunks_exact_mut(T));
    macro_rules! each_row {
        ($kernel:expr) => {
            for (row, o) in rows {
                o.copy_from_slice(&$kernel(row, &x));
            }
        };
    }
    match format {
        BlockFormat::Q4_0 => each_row!(small16::<T, false, false, false>),
        BlockFormat::Q4_1 => each_row!(small16::<T, true, false, false>),
        BlockFormat::Q5_0 => each_row!(small16::<T, false, true, false>),
        BlockFormat::Q5_1 => each_row!(small16::<T, true, true, false>),
        BlockFormat::Q8_0 => each_row!(small16::<T, false, false, true>),
        BlockFormat::Q4_K => each_row!(q45k16::<T, false>),
        BlockFormat::Q5_K => each_row!(q45k16::<T, true>),
        BlockFormat::Q6_K => each_row!(q6k16::<T>),
    }
}

/// How many groups of four rows ahead [`quad16`] prefetches.
const PREFETCH_QUADS: usize = 3;

/// Whole groups of four rows of a 32-weight format against one activation
/// row; returns the rows done.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn quads16<const T: usize>(format: BlockFormat, rows: &[u8], rb: usize, x: &Rows16<'_, T>, out: &mut [f32]) -> usize {
    let quads = rows.chunks_exact(4 * rb).zip(out.chunks_exact_mut(4));
    let n = quads.len();
    macro_rules! each_quad {
        ($kernel:expr) => {
            for (quad, o) in quads {
                o.copy_from_slice(&$kernel(quad, rb, x));
            }
        };
    }
    match format {
        BlockFormat::Q4_0 => each_quad!(quad16::<T, false, false, false>),
        BlockFormat::Q4_1 => each_quad!(quad16::<T, true, false, false>),
        BlockFormat::Q5_0 => each_quad!(quad16::<T, false, true, false>),
        BlockFormat::Q5_1 => each_quad!(quad16::<T, true, true, false>),
        BlockFormat::Q8_0 => each_quad!(quad16::<T, false, false, true>),
        _ => return 0,
    }
    4 * n
}

/// Four rows (`rb` bytes each, in `quad`) of Q4_0, Q4_1, Q5_0, Q5_1 or
/// (`Q8`) Q8_0 against activation row 0 of `x`: each group of 32
/// activations loaded once for the four rows, four independent accumulator
/// chains, and one horizontal reduction for all four.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn quad16<const T: usize, const MIN: bool, const FIVE: bool, const Q8: bool>(
    quad: &[u8],
    rb: usize,
    x: &Rows16<'_, T>,
) -> [f32; 4] {
    let bb = if Q8 {
        34
    } else {
        18 + 2 * usize::from(MIN) + 4 * usize::from(FIVE)
    };
    let qs_at = if Q8 { 2 } else { bb - 16 };
    let mask = _mm256_set1_epi16(0x0f);
    // Plain arrays, no closures: a closure handed to `array::from_fn` is
    // compiled without AVX2 and called out of line.
    let r: [&[u8]; 4] = [
        &quad[..rb],
        &quad[rb..2 * rb],
        &quad[2 * rb..3 * rb],
        &quad[3 * rb..4 * rb],
    ];
    let mut acc = [_mm256_setzero_ps(); 4];
    let mut accm = [0f32; 4];
    // The four rows are read side by side, which the hardware prefetcher
    // does not follow: fetch the rows a few groups ahead linearly, as fast
    // as this group is read. (Prefetching never faults, so the addresses
    // may run past the matrix.)
    let ahead = quad.as_ptr().wrapping_add(PREFETCH_QUADS * 4 * rb);
    for b in 0..rb / bb {
        let p = ahead.wrapping_add(4 * bb * b);
        _mm_prefetch::<_MM_HINT_T0>(p.cast());
        _mm_prefetch::<_MM_HINT_T0>(p.wrapping_add(64).cast());
        let (xq, dx, sx) = x.group(0, b);
        // SAFETY: `xq` holds 32 readable i16 (64 bytes); `loadu` has no
        // alignment requirement.
        let (x0, x1) = unsafe {
            (
                _mm256_loadu_si256(xq.as_ptr().cast()),
                _mm256_loadu_si256(xq[16..].as_ptr().cast()),
            )
        };
        for i in 0..4 {
            let block = &r[i][b * bb..b * bb + bb];
            let (d, m) = if MIN {
                f16x2(block, 0)
            } else {
                let d = f16_1(block, 0);
                (d, if FIVE { -16.0 * d } else { -8.0 * d })
            };
            let w = if Q8 {
                [
                    _mm256_cvtepi8_epi16(load16(&block[2..])),
                    _mm256_cvtepi8_epi16(load16(&block[18..])),
                ]
            } else {
                let q = widen_u8(&block[qs_at..]);
                let mut w = [
                    _mm256_and_si256(q, mask),
                    _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask),
                ];
                if FIVE {
                    let at = qs_at - 4;
                    let bits = u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
                    w[0] = _mm256_or_si256(w[0], high_bits16(bits as u16));
                    w[1] = _mm256_or_si256(w[1], high_bits16((bits >> 16) as u16));
                }
                w
            };
            let s = _mm256_add_epi32(_mm256_madd_epi16(w[0], x0), _mm256_madd_epi16(w[1], x1));
            acc[i] = _mm256_fmadd_ps(_mm256_set1_ps(d * dx), _mm256_cvtepi32_ps(s), acc[i]);
            if !Q8 {
                accm[i] += m * sx;
            }
        }
    }
    // The four horizontal sums in `hsum`'s order (so a row's result does
    // not depend on how many rows share the call): halves added, then lanes
    // `(0 + 2) + (1 + 3)` after a 4×4 transpose.
    let half_sum = |a: __m256| _mm_add_ps(_mm256_castps256_ps128(a), _mm256_extractf128_ps::<1>(a));
    let s = [half_sum(acc[0]), half_sum(acc[1]), half_sum(acc[2]), half_sum(acc[3])];
    let (t0, t1) = (_mm_unpacklo_ps(s[0], s[1]), _mm_unpackhi_ps(s[0], s[1]));
    let (t2, t3) = (_mm_unpacklo_ps(s[2], s[3]), _mm_unpackhi_ps(s[2], s[3]));
    let (c0, c1) = (_mm_movelh_ps(t0, t2), _mm_movehl_ps(t2, t0));
    let (c2, c3) = (_mm_movelh_ps(t1, t3), _mm_movehl_ps(t3, t1));
    let v = _mm_add_ps(_mm_add_ps(c0, c2), _mm_add_ps(c1, c3));
    let mut o = [0f32; 4];
    // SAFETY: `o` holds 4 writable f32; `storeu` has no alignment requirement.
    unsafe { _mm_storeu_ps(o.as_mut_ptr(), v) };
    if Q8 {
        o
    } else {
        [o[0] + accm[0], o[1] + accm[1], o[2] + accm[2], o[3] + accm[3]]
    }
}

#[inline]
#[target_feature(enable = "avx")]
fn store8(s: &mut [f32], v: __m256) {
    let s = &mut s[..8];
    // SAFETY: `s` holds 8 writable f32 (bounds-checked above); `storeu` has
    // no alignment requirement.
    unsafe { _mm256_storeu_ps(s.as_mut_ptr(), v) }
}

/// Dequantizes a row (see `blocks::dequantize_row`): the same operations
/// per weight (`d·(q - off)`, or `d·q + m`, each rounded once; for the
/// k-quants the sub-block's `d·sc` and `dmin·m` rounded once, then
/// `(d·sc)·q - dmin·m` or `(d·sc)·(q - 32)`), so the same values bit for
/// bit. Returns `true` (every format has a kernel here).
///
/// # Safety
/// The CPU must support AVX2, FMA and F16C ([`available`]).
#[target_feature(enable = "avx2,fma,f16c")]
pub(crate) unsafe fn dequantize(format: BlockFormat, bytes: &[u8], out: &mut [f32]) -> bool {
    match format {
        BlockFormat::Q4_0 => deq_small::<false, false, false>(bytes, out),
        BlockFormat::Q4_1 => deq_small::<true, false, false>(bytes, out),
        BlockFormat::Q5_0 => deq_small::<false, true, false>(bytes, out),
        BlockFormat::Q5_1 => deq_small::<true, true, false>(bytes, out),
        BlockFormat::Q8_0 => deq_small::<false, false, true>(bytes, out),
        BlockFormat::Q4_K => deq_q45k::<false>(bytes, out),
        BlockFormat::Q5_K => deq_q45k::<true>(bytes, out),
        BlockFormat::Q6_K => deq_q6k(bytes, out),
    }
    true
}

/// `y[i] = s·v[i] - m` (`SUB`) or `s·v[i]` for the 32 bytes of `v`, read
/// as unsigned (`SIGNED` false) or signed, each product rounded once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scale32<const SIGNED: bool, const SUB: bool>(v: __m256i, s: f32, m: f32, y: &mut [f32]) {
    let (lo, hi) = (_mm256_castsi256_si128(v), _mm256_extracti128_si256::<1>(v));
    let parts = [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)];
    for (p, y8) in parts.into_iter().zip(y.chunks_exact_mut(8)) {
        let q = if SIGNED {
            _mm256_cvtepi8_epi32(p)
        } else {
            _mm256_cvtepu8_epi32(p)
        };
        let f = _mm256_mul_ps(_mm256_set1_ps(s), _mm256_cvtepi32_ps(q));
        store8(y8, if SUB { _mm256_sub_ps(f, _mm256_set1_ps(m)) } else { f });
    }
}

/// Q4_K, Q5_K: per sub-block of 32, `(d·sc)·q - dmin·m`.
#[target_feature(enable = "avx2,fma,f16c")]
fn deq_q45k<const FIVE: bool>(bytes: &[u8], out: &mut [f32]) {
    let bb = if FIVE { 176 } else { 144 };
    let (mask, one) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(1));
    for (block, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(256)) {
        let (d, dmin) = f16x2(block, 0);
        let qs = &block[bb - 128..];
        let qh = if FIVE {
            load32(&block[16..])
        } else {
            _mm256_setzero_si256()
        };
        for (j, y32) in y.chunks_exact_mut(32).enumerate() {
            let (sc, m) = k_scale_min(&block[4..16], j);
            let q = load32(&qs[(j / 2) * 32..]);
            let mut v = _mm256_and_si256(_mm256_srl_epi16(q, _mm_cvtsi32_si128(4 * (j % 2) as i32)), mask);
            if FIVE {
                let bit = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(j as i32)), one);
                v = _mm256_or_si256(v, _mm256_slli_epi16::<4>(bit));
            }
            scale32::<false, true>(v, d * f32::from(sc), dmin * f32::from(m), y32);
        }
    }
}

/// Q6_K: per sub-block of 16, `(d·sc)·(q - 32)`.
#[target_feature(enable = "avx2,fma,f16c")]
fn deq_q6k(bytes: &[u8], out: &mut [f32]) {
    let (mask, three, off) = (_mm256_set1_epi8(0x0f), _mm256_set1_epi8(3), _mm256_set1_epi8(32));
    for (block, y) in bytes.chunks_exact(210).zip(out.chunks_exact_mut(256)) {
        let d = f16_1(block, 208);
        for h in 0..2 {
            let qh = load32(&block[128 + 32 * h..]);
            for k in 0..4 {
                let ql = load32(&block[64 * h + 32 * (k % 2)..]);
                let lo = _mm256_and_si256(_mm256_srl_epi16(ql, _mm_cvtsi32_si128(4 * (k / 2) as i32)), mask);
                let hi = _mm256_and_si256(_mm256_srl_epi16(qh, _mm_cvtsi32_si128(2 * k as i32)), three);
                let q = _mm256_sub_epi8(_mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi)), off);
                let g = h * 8 + 2 * k;
                let y32 = &mut y[h * 128 + k * 32..h * 128 + k * 32 + 32];
                let (ya, yb) = y32.split_at_mut(16);
                let s = [
                    d * f32::from(block[192 + g] as i8),
                    d * f32::from(block[192 + g + 1] as i8),
                ];
                // The low 16 bytes take scale `g`, the high 16 `g + 1`.
                scale16_signed(_mm256_castsi256_si128(q), s[0], ya);
                scale16_signed(_mm256_extracti128_si256::<1>(q), s[1], yb);
            }
        }
    }
}

/// `y[i] = s·v[i]` for the 16 signed bytes of `v`, each product rounded once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn scale16_signed(v: __m128i, s: f32, y: &mut [f32]) {
    for (p, y8) in [v, _mm_srli_si128::<8>(v)].into_iter().zip(y.chunks_exact_mut(8)) {
        let f = _mm256_mul_ps(_mm256_set1_ps(s), _mm256_cvtepi32_ps(_mm256_cvtepi8_epi32(p)));
        store8(y8, f);
    }
}

#[target_feature(enable = "avx2,fma,f16c")]
fn deq_small<const MIN: bool, const FIVE: bool, const Q8: bool>(bytes: &[u8], out: &mut [f32]) {
    let bb = if Q8 {
        34
    } else {
        18 + 2 * usize::from(MIN) + 4 * usize::from(FIVE)
    };
    let qs_at = bb - 16;
    let off = _mm256_set1_epi32(if FIVE { 16 } else { 8 });
    let mask = _mm256_set1_epi8(0x0f);
    for (block, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(32)) {
        let (d, m) = if MIN { f16x2(block, 0) } else { (f16_1(block, 0), 0.0) };
        let w = if Q8 {
            load32(&block[2..])
        } else {
            let q = load16(&block[qs_at..]);
            let mut w = _mm256_and_si256(_mm256_set_m128i(_mm_srli_epi16::<4>(q), q), mask);
            if FIVE {
                let at = qs_at - 4;
                let bits = u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
                w = _mm256_or_si256(w, high_bits(bits));
            }
            w
        };
        let (lo, hi) = (_mm256_castsi256_si128(w), _mm256_extracti128_si256::<1>(w));
        let parts = [lo, _mm_srli_si128::<8>(lo), hi, _mm_srli_si128::<8>(hi)];
        for (p, y8) in parts.into_iter().zip(y.chunks_exact_mut(8)) {
            let v = if Q8 {
                _mm256_cvtepi8_epi32(p)
            } else if MIN {
                _mm256_cvtepu8_epi32(p)
            } else {
                _mm256_sub_epi32(_mm256_cvtepu8_epi32(p), off)
            };
            let f = _mm256_mul_ps(_mm256_set1_ps(d), _mm256_cvtepi32_ps(v));
            store8(y8, if MIN { _mm256_add_ps(f, _mm256_set1_ps(m)) } else { f });
        }
    }
}

/// 16 bytes of `s` widened to 16 unsigned i16.
#[inline]
#[target_feature(enable = "avx2")]
fn widen_u8(s: &[u8]) -> __m256i {
    _mm256_cvtepu8_epi16(load16(s))
}

/// Activation rows `t0..t0 + T` of 16-bit activations: per row its
/// values, scales and sums; the values group by group with the rows side
/// by side, and the scales and sums of rows `t0..t0 + 8` side by side per
/// group (lanes past the last row are zero).
struct Rows16<'a, const T: usize> {
    qs: [&'a [i16]; T],
    d: [&'a [f32]; T],
    sum: [&'a [f32]; T],
    by_group: &'a [i16],
    d8: &'a [f32],
    sum8: &'a [f32],
    /// Values from one group of the tile to the next.
    group_step: usize,
    groups: usize,
    stride: usize,
}

impl<'a, const T: usize> Rows16<'a, T> {
    /// Rows `t0..t0 + T` of `acts`, which [`super::acts::quantize_acts16`]
    /// filled (panics where its sizes disagree with `n` and `cols`, or the
    /// rows span two tiles of [`ROW_TILE16`]).
    fn new(acts: &'a QActs16, t0: usize) -> Self {
        let (n, cols, ng, stride) = (acts.n, acts.cols, acts.groups(), acts.group_stride());
        assert!(t0 + T <= n && ng * 32 == cols, "activation rows out of range");
        let k = t0 / ROW_TILE16 * ROW_TILE16;
        assert!(t0 + T <= k + ROW_TILE16, "activation rows span two tiles");
        let w = ROW_TILE16.min(n - k);
        assert!(
            acts.qs_by_group.len() == n * cols
                && acts.d_by_group.len() == ng * stride
                && acts.sum_by_group.len() == ng * stride,
            "activations not filled by quantize_acts16"
        );
        Self {
            qs: std::array::from_fn(|t| &acts.qs[(t0 + t) * cols..(t0 + t + 1) * cols]),
            d: std::array::from_fn(|t| &acts.d[(t0 + t) * ng..(t0 + t + 1) * ng]),
            sum: std::array::from_fn(|t| &acts.sum[(t0 + t) * ng..(t0 + t + 1) * ng]),
            by_group: &acts.qs_by_group[(k * ng + t0 - k) * 32..],
            d8: &acts.d_by_group[t0..],
            sum8: &acts.sum_by_group[t0..],
            group_step: w * 32,
            groups: ng,
            stride,
        }
    }

    /// Group `g` of row `t`: its 32 values, scale and sum.
    #[inline(always)]
    fn group(&self, t: usize, g: usize) -> (&'a [i16; 32], f32, f32) {
        let q = self.qs[t][g * 32..g * 32 + 32].try_into().unwrap_or(&[0; 32]);
        (q, self.d[t][g], self.sum[t][g])
    }

    /// `(v·d, m·Σx)` of group `g` for the rows `t0..t0 + 8`, one per lane.
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn scaled8(&self, g: usize, v: f32, m: f32) -> (__m256, __m256) {
        let (d, s) = (&self.d8[g * self.stride..][..8], &self.sum8[g * self.stride..][..8]);
        // SAFETY: `d` and `s` hold 8 readable f32 (bounds-checked above);
        // `loadu` has no alignment requirement.
        let (d, s) = unsafe { (_mm256_loadu_ps(d.as_ptr()), _mm256_loadu_ps(s.as_ptr())) };
        (_mm256_mul_ps(_mm256_set1_ps(v), d), _mm256_mul_ps(_mm256_set1_ps(m), s))
    }

    /// `acc[t] += dd[t]·Σ w·x_t` over group `g` for the `T` rows: an exact
    /// integer sum in eight lanes, converted, then one FMA per lane (the
    /// operations every kernel here does for a group and a row).
    #[inline]
    #[target_feature(enable = "avx2,fma")]
    fn fma_group(&self, acc: &mut [__m256; T], w: [__m256i; 2], g: usize, dd: __m256) {
        assert!(g < self.groups, "group out of range");
        // SAFETY: `by_group` starts at group 0 of row `t0` in its tile of
        // `w` rows (`t0 = k + j`), which runs on to the tile's end at
        // `(groups - 1)·w + w` groups of 32 from the tile's start; group `g`
        // of row `t0 + t` is at `g·w + t` from `by_group`'s start, and
        // `g < groups` (checked above), `j + t < w` (checked in `new`), so
        // each 32 values are in bounds; `loadu` and `broadcast_ss` need no
        // alignment.
        unsafe {
            let p = self.by_group.as_ptr().add(g * self.group_step);
            // Each row's factor broadcast from memory: a load, where a lane
            // permute would take a vector pipe from the products.
            let mut f = [0f32; 8];
            _mm256_storeu_ps(f.as_mut_ptr(), dd);
            for t in 0..T {
                let xp = p.add(t * 32);
                let s = _mm256_add_epi32(
                    _mm256_madd_epi16(w[0], _mm256_loadu_si256(xp.cast())),
                    _mm256_madd_epi16(w[1], _mm256_loadu_si256(xp.add(16).cast())),
                );
                let d = _mm256_broadcast_ss(&f[t]);
                acc[t] = _mm256_fmadd_ps(d, _mm256_cvtepi32_ps(s), acc[t]);
            }
        }
    }
}

/// The eight lanes of `v`.
#[inline]
#[target_feature(enable = "avx")]
fn lanes(v: __m256) -> [f32; 8] {
    let mut o = [0f32; 8];
    store8(&mut o, v);
    o
}

/// The 16 bits of `bits` as i16 lanes `0x10` (bit set) or `0`.
#[inline]
#[target_feature(enable = "avx2")]
fn high_bits16(bits: u16) -> __m256i {
    let mask = _mm256_setr_epi16(
        1,
        2,
        4,
        8,
        16,
        32,
        64,
        128,
        256,
        512,
        1024,
        2048,
        4096,
        8192,
        16384,
        i16::MIN,
    );
    let v = _mm256_and_si256(_mm256_set1_epi16(bits as i16), mask);
    _mm256_and_si256(_mm256_cmpeq_epi16(v, mask), _mm256_set1_epi16(0x10))
}

/// The 32 weights of a block of Q4_0, Q4_1, Q5_0, Q5_1 or (`Q8`) Q8_0
/// widened to i16 (unsigned, or signed for Q8_0), with `(d, m)`, `w = d·q + m`.
#[inline(always)]
fn small_block16<const MIN: bool, const FIVE: bool, const Q8: bool>(block: &[u8]) -> ([__m256i; 2], f32, f32) {
    // SAFETY: the callers are compiled with AVX2, FMA and F16C (this is
    // inlined into them), so the intrinsics run on a CPU that has them.
    unsafe {
        if Q8 {
            let w = [
                _mm256_cvtepi8_epi16(load16(&block[2..])),
                _mm256_cvtepi8_epi16(load16(&block[18..])),
            ];
            return (w, f16_1(block, 0), 0.0);
        }
        let qs_at = block.len() - 16;
        let (d, m) = if MIN {
            f16x2(block, 0)
        } else {
            let d = f16_1(block, 0);
            (d, if FIVE { -16.0 * d } else { -8.0 * d })
        };
        let mask = _mm256_set1_epi16(0x0f);
        let q = widen_u8(&block[qs_at..]);
        let mut w = [
            _mm256_and_si256(q, mask),
            _mm256_and_si256(_mm256_srli_epi16::<4>(q), mask),
        ];
        if FIVE {
            let at = qs_at - 4;
            let bits = u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
            w[0] = _mm256_or_si256(w[0], high_bits16(bits as u16));
            w[1] = _mm256_or_si256(w[1], high_bits16((bits >> 16) as u16));
        }
        (w, d, m)
    }
}

/// Q4_0, Q4_1, Q5_0, Q5_1 or (`Q8`) Q8_0 against `T` rows of 16-bit
/// activations: each block unpacked once for the `T` rows, per group and
/// row `acc += (d·d_x)·Σ q·x` in eight lanes and `accm += m·Σx`, the
/// products `d·d_x` and `m·Σx` taken for eight rows at once.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn small16<const T: usize, const MIN: bool, const FIVE: bool, const Q8: bool>(
    row: &[u8],
    x: &Rows16<'_, T>,
) -> [f32; T] {
    let bb = if Q8 {
        34
    } else {
        18 + 2 * usize::from(MIN) + 4 * usize::from(FIVE)
    };
    let mut acc = [_mm256_setzero_ps(); T];
    let mut accm = _mm256_setzero_ps();
    for (b, block) in row.chunks_exact(bb).enumerate() {
        let (w, d, m) = small_block16::<MIN, FIVE, Q8>(block);
        let (dd, ms) = x.scaled8(b, d, m);
        if !Q8 {
            accm = _mm256_add_ps(accm, ms);
        }
        x.fma_group(&mut acc, w, b, dd);
    }
    let accm = lanes(accm);
    std::array::from_fn(|t| if Q8 { hsum(acc[t]) } else { hsum(acc[t]) + accm[t] })
}

/// Q4_K, Q5_K against 16-bit activations: per sub-block of 32 and row an
/// integer sum scaled by `(d·sc)·d_x` in f32, and `accm -= (dmin·mn)·Σx`.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q45k16<const T: usize, const FIVE: bool>(row: &[u8], x: &Rows16<'_, T>) -> [f32; T] {
    let bb = if FIVE { 176 } else { 144 };
    let mask = _mm256_set1_epi16(0x0f);
    let mut acc = [_mm256_setzero_ps(); T];
    let mut accm = _mm256_setzero_ps();
    for (b, block) in row.chunks_exact(bb).enumerate() {
        let (d, dmin) = f16x2(block, 0);
        let (mut ds, mut dm) = ([0f32; 8], [0f32; 8]);
        for j in 0..8 {
            let (sc, mn) = k_scale_min(&block[4..16], j);
            ds[j] = d * f32::from(sc);
            dm[j] = dmin * f32::from(mn);
        }
        let qs = &block[bb - 128..];
        let qh = if FIVE {
            [widen_u8(&block[16..]), widen_u8(&block[32..])]
        } else {
            [_mm256_setzero_si256(); 2]
        };
        for c in 0..4 {
            let q = [widen_u8(&qs[32 * c..]), widen_u8(&qs[32 * c + 16..])];
            for half in 0..2 {
                let j = 2 * c + half;
                let shift = _mm_cvtsi32_si128(4 * half as i32);
                let mut w = [
                    _mm256_and_si256(_mm256_srl_epi16(q[0], shift), mask),
                    _mm256_and_si256(_mm256_srl_epi16(q[1], shift), mask),
                ];
                if FIVE {
                    let up = _mm_cvtsi32_si128(j as i32);
                    for (wi, h) in w.iter_mut().zip(qh) {
                        let bit = _mm256_and_si256(_mm256_srl_epi16(h, up), _mm256_set1_epi16(1));
                        *wi = _mm256_or_si256(*wi, _mm256_slli_epi16::<4>(bit));
                    }
                }
                let (dd, ms) = x.scaled8(b * 8 + j, ds[j], dm[j]);
                accm = _mm256_sub_ps(accm, ms);
                x.fma_group(&mut acc, w, b * 8 + j, dd);
            }
        }
    }
    let accm = lanes(accm);
    std::array::from_fn(|t| hsum(acc[t]) + accm[t])
}

/// Q6_K against 16-bit activations: `(q - 32)·sc` in i16 (at most 4096 in
/// magnitude), per 32 values and row an integer sum scaled by `d·d_x` in f32.
#[inline]
#[target_feature(enable = "avx2,fma,f16c")]
fn q6k16<const T: usize>(row: &[u8], x: &Rows16<'_, T>) -> [f32; T] {
    let (mask, three, off) = (_mm256_set1_epi16(0x0f), _mm256_set1_epi16(3), _mm256_set1_epi16(32));
    let mut acc = [_mm256_setzero_ps(); T];
    for (b, block) in row.chunks_exact(210).enumerate() {
        let d = f16_1(block, 208);
        for h in 0..2 {
            let ql = [
                [widen_u8(&block[64 * h..]), widen_u8(&block[64 * h + 16..])],
                [widen_u8(&block[64 * h + 32..]), widen_u8(&block[64 * h + 48..])],
            ];
            let qh = [widen_u8(&block[128 + 32 * h..]), widen_u8(&block[128 + 32 * h + 16..])];
            for k in 0..4 {
                let (lo_shift, hi_shift) = (_mm_cvtsi32_si128(4 * (k as i32 / 2)), _mm_cvtsi32_si128(2 * k as i32));
                let g = h * 8 + 2 * k;
                let mut w = [_mm256_setzero_si256(); 2];
                for (i, wi) in w.iter_mut().enumerate() {
                    let lo = _mm256_and_si256(_mm256_srl_epi16(ql[k % 2][i], lo_shift), mask);
                    let hi = _mm256_and_si256(_mm256_srl_epi16(qh[i], hi_shift), three);
                    let q = _mm256_sub_epi16(_mm256_or_si256(lo, _mm256_slli_epi16::<4>(hi)), off);
                    *wi = _mm256_mullo_epi16(q, _mm256_set1_epi16(i16::from(block[192 + g + i] as i8)));
                }
                let group = b * 8 + h * 4 + k;
                let (dd, _) = x.scaled8(group, d, 0.0);
                x.fma_group(&mut acc, w, group, dd);
            }
        }
    }
    std::array::from_fn(|t| hsum(acc[t]))
}
