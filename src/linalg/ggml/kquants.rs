//! Reference quantizers for the k-quants (Q4_K, Q5_K, Q6_K) in the
//! algorithm of llama.cpp's `quantize_row_q*_K_ref` (no importance matrix):
//!
//! - Q4_K / Q5_K: per sub-block of 32, a weighted least-squares search over
//!   candidate scales for `x ≈ s·q - m` (weights `rms(x) + |x|`, 20 or 15
//!   candidates), then the 8 scales and 8 minimums quantized to 6 bits
//!   against the block's f16 `d` and `dmin`, and the weights re-rounded to
//!   the 6-bit scales.
//! - Q6_K: per sub-block of 16, a search over 19 scales for the symmetric
//!   `x ≈ s·(q - 32)` weighted by `x²`, the 16 scales quantized to signed
//!   bytes against the block's f16 `d`, the weights re-rounded.
//!
//! Rounding is to nearest with ties to even, as llama.cpp's `nearest_int`.

use super::blocks::k_scale_min;
use super::BlockFormat;

/// Below this magnitude a sub-block or block counts as all zero.
const GROUP_MAX_EPS: f32 = 1e-15;

/// Rounds to the nearest integer, ties to even.
#[inline]
fn nearest(v: f32) -> i32 {
    v.round_ties_even() as i32
}

fn put_f16(block: &mut [u8], at: usize, v: f32) -> f32 {
    let h = half::f16::from_f32(v);
    block[at..at + 2].copy_from_slice(&h.to_le_bytes());
    h.to_f32()
}

/// Quantizes one 256-weight block of a k-quant format into `block`
/// (`format.block_bytes()` bytes).
pub(super) fn quantize_block_k(format: BlockFormat, x: &[f32], block: &mut [u8]) {
    match format {
        BlockFormat::Q6_K => q6_k(x, block),
        BlockFormat::Q5_K => qk_min(x, block, 31, -0.5, 15),
        _ => qk_min(x, block, 15, -1.0, 20),
    }
}

/// A scale and minimum for `x ≈ scale·L - min`, `L` in `0..=nmax`, by a
/// weighted least-squares search over `nstep + 1` candidate scales around
/// `nmax / (max - min)` (llama.cpp's `make_qkx2_quants`). Returns
/// `(scale, min)` with `min ≥ 0` and writes the levels to `l`.
fn scale_min_search(x: &[f32], w: &[f32], l: &mut [u8], nmax: i32, rmin: f32, nstep: usize) -> (f32, f32) {
    let n = x.len();
    let (mut min, mut max) = (x[0], x[0]);
    let (mut sum_w, mut sum_x) = (w[0], w[0] * x[0]);
    for i in 1..n {
        min = min.min(x[i]);
        max = max.max(x[i]);
        sum_w += w[i];
        sum_x += w[i] * x[i];
    }
    if min > 0.0 {
        min = 0.0;
    }
    if max == min {
        l.fill(0);
        return (0.0, -min);
    }
    // `min` moves to each better candidate's minimum, and the later
    // candidates are taken relative to it.
    let level = |iscale: f32, v: f32, min: f32| nearest(iscale * (v - min)).clamp(0, nmax) as u8;
    let mut iscale = nmax as f32 / (max - min);
    let mut scale = 1.0 / iscale;
    let mut best = 0.0f32;
    for i in 0..n {
        l[i] = level(iscale, x[i], min);
        let diff = scale * f32::from(l[i]) + min - x[i];
        best += w[i] * diff * diff;
    }
    let mut aux = [0u8; 32];
    for step in 0..=nstep {
        iscale = (rmin + 0.1 * step as f32 + nmax as f32) / (max - min);
        let (mut sum_l, mut sum_l2, mut sum_xl) = (0.0f32, 0.0f32, 0.0f32);
        for i in 0..n {
            aux[i] = level(iscale, x[i], min);
            let q = f32::from(aux[i]);
            sum_l += w[i] * q;
            sum_l2 += w[i] * q * q;
            sum_xl += w[i] * q * x[i];
        }
        let det = sum_w * sum_l2 - sum_l * sum_l;
        if det.is_nan() || det <= 0.0 {
            continue;
        }
        let mut this_scale = (sum_w * sum_xl - sum_x * sum_l) / det;
        let mut this_min = (sum_l2 * sum_x - sum_l * sum_xl) / det;
        if this_min > 0.0 {
            this_min = 0.0;
            this_scale = sum_xl / sum_l2;
        }
        let mut err = 0.0f32;
        for i in 0..n {
            let diff = this_scale * f32::from(aux[i]) + this_min - x[i];
            err += w[i] * diff * diff;
        }
        if err < best {
            l[..n].copy_from_slice(&aux[..n]);
            best = err;
            scale = this_scale;
            min = this_min;
        }
    }
    (scale, -min)
}

/// Q4_K (`nmax` 15) and Q5_K (`nmax` 31): `d`, `dmin`, 12 bytes of 6-bit
/// scales and minimums, (Q5_K: 32 bytes of high bits,) 128 bytes of nibbles.
fn qk_min(x: &[f32], block: &mut [u8], nmax: i32, rmin: f32, nstep: usize) {
    let mut levels = [0u8; 256];
    let (mut scales, mut mins) = ([0f32; 8], [0f32; 8]);
    for j in 0..8 {
        let sub = &x[32 * j..32 * j + 32];
        let av = (sub.iter().map(|v| v * v).sum::<f32>() / 32.0).sqrt();
        let mut w = [0f32; 32];
        for (wi, v) in w.iter_mut().zip(sub) {
            *wi = av + v.abs();
        }
        (scales[j], mins[j]) = scale_min_search(sub, &w, &mut levels[32 * j..32 * j + 32], nmax, rmin, nstep);
    }
    let max_scale = scales.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let max_min = mins.iter().fold(0f32, |m, &s| if s > m { s } else { m });
    let inv_scale = if max_scale > 0.0 { 63.0 / max_scale } else { 0.0 };
    let inv_min = if max_min > 0.0 { 63.0 / max_min } else { 0.0 };
    let packed = &mut block[4..16];
    packed.fill(0);
    for j in 0..8 {
        let ls = (nearest(inv_scale * scales[j]) as u8).min(63);
        let lm = (nearest(inv_min * mins[j]) as u8).min(63);
        if j < 4 {
            packed[j] = ls;
            packed[j + 4] = lm;
        } else {
            packed[j + 4] = (ls & 0x0f) | ((lm & 0x0f) << 4);
            packed[j - 4] |= (ls >> 4) << 6;
            packed[j] |= (lm >> 4) << 6;
        }
    }
    let d = put_f16(block, 0, max_scale / 63.0);
    let dmin = put_f16(block, 2, max_min / 63.0);
    for j in 0..8 {
        let (sc, m) = k_scale_min(&block[4..16], j);
        let ds = d * f32::from(sc);
        if ds == 0.0 {
            continue;
        }
        let dm = dmin * f32::from(m);
        for i in 32 * j..32 * j + 32 {
            levels[i] = nearest((x[i] + dm) / ds).clamp(0, nmax) as u8;
        }
    }
    let qs = if nmax == 31 { 48 } else { 16 };
    if nmax == 31 {
        block[16..48].fill(0);
    }
    for pair in 0..4 {
        for l in 0..32 {
            let (lo, hi) = (levels[64 * pair + l], levels[64 * pair + 32 + l]);
            block[qs + 32 * pair + l] = (lo & 0x0f) | ((hi & 0x0f) << 4);
            if nmax == 31 {
                block[16 + l] |= ((lo >> 4) << (2 * pair)) | ((hi >> 4) << (2 * pair + 1));
            }
        }
    }
}

/// A symmetric scale for `x ≈ scale·L`, `L` in `-nmax..nmax`, weighted by
/// `x²`, from 19 candidates around `-nmax / x[argmax |x|]` (llama.cpp's
/// `make_qx_quants` with `rmse_type` 1). Writes `L + nmax` to `l`.
fn symmetric_search(x: &[f32], l: &mut [u8], nmax: i32) -> f32 {
    let (mut amax, mut max) = (0f32, 0f32);
    for &v in x {
        if v.abs() > amax {
            amax = v.abs();
            max = v;
        }
    }
    if amax < GROUP_MAX_EPS {
        l.fill(0);
        return 0.0;
    }
    let level = |iscale: f32, v: f32| nearest(iscale * v).clamp(-nmax, nmax - 1);
    let sums = |iscale: f32| {
        x.iter().fold((0f32, 0f32), |(lx, l2), &v| {
            let q = level(iscale, v) as f32;
            let w = v * v;
            (lx + w * v * q, l2 + w * q * q)
        })
    };
    let mut iscale = -(nmax as f32) / max;
    let (sumlx, suml2) = sums(iscale);
    for (o, &v) in l.iter_mut().zip(x) {
        *o = (level(iscale, v) + nmax) as u8;
    }
    let mut scale = if suml2 != 0.0 { sumlx / suml2 } else { 0.0 };
    let mut best = scale * sumlx;
    for step in -9i32..=9 {
        if step == 0 {
            continue;
        }
        iscale = -(nmax as f32 + 0.1 * step as f32) / max;
        let (sumlx, suml2) = sums(iscale);
        if suml2 > 0.0 && sumlx * sumlx > best * suml2 {
            for (o, &v) in l.iter_mut().zip(x) {
                *o = (level(iscale, v) + nmax) as u8;
            }
            scale = sumlx / suml2;
            best = scale * sumlx;
        }
    }
    scale
}

/// Q6_K: 128 bytes of low nibbles, 64 of high bit pairs, 16 signed 8-bit
/// scales, f16 `d`.
fn q6_k(x: &[f32], block: &mut [u8]) {
    let mut levels = [0u8; 256];
    let mut scales = [0f32; 16];
    let (mut max_scale, mut max_abs) = (0f32, 0f32);
    for (ib, s) in scales.iter_mut().enumerate() {
        *s = symmetric_search(&x[16 * ib..16 * ib + 16], &mut levels[16 * ib..16 * ib + 16], 32);
        if s.abs() > max_abs {
            max_abs = s.abs();
            max_scale = *s;
        }
    }
    block.fill(0);
    if max_abs < GROUP_MAX_EPS {
        return;
    }
    let iscale = -128.0 / max_scale;
    let d = put_f16(block, 208, 1.0 / iscale);
    for (ib, &s) in scales.iter().enumerate() {
        block[192 + ib] = nearest(iscale * s).min(127) as i8 as u8;
    }
    for ib in 0..16 {
        let ds = d * f32::from(block[192 + ib] as i8);
        if ds == 0.0 {
            continue;
        }
        for i in 16 * ib..16 * ib + 16 {
            levels[i] = (nearest(x[i] / ds).clamp(-32, 31) + 32) as u8;
        }
    }
    for half in 0..2 {
        let (ql, qh, lv) = (64 * half, 128 + 32 * half, 128 * half);
        for l in 0..32 {
            let q = [
                levels[lv + l],
                levels[lv + l + 32],
                levels[lv + l + 64],
                levels[lv + l + 96],
            ];
            block[ql + l] = (q[0] & 0x0f) | ((q[2] & 0x0f) << 4);
            block[ql + l + 32] = (q[1] & 0x0f) | ((q[3] & 0x0f) << 4);
            block[qh + l] = (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
        }
    }
}
