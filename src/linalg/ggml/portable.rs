//! The portable block products: one packed row against a few rows of 8-bit
//! or 16-bit activations, in integer arithmetic per block (as the SIMD
//! kernels do), in plain Rust for every CPU.

use super::acts::{QActs, QActs16};
use super::blocks::{f16_at, k_scale_min, q6k_value, small_layout};
use super::BlockFormat;

/// `out[t] = Σ_c w[c]·x[t0 + t][c]` for the packed `row` of `format` and
/// the quantized activations `acts` (rows `t0..t0 + out.len()`).
pub(crate) fn dot_row(format: BlockFormat, row: &[u8], acts: &QActs, t0: usize, out: &mut [f32]) {
    out.fill(0.0);
    let bb = format.block_bytes();
    if format.block_len() == 32 {
        let mut q = [0i8; 32];
        for (b, block) in row.chunks_exact(bb).enumerate() {
            let (d, m) = decode_small(format, block, &mut q);
            for (t, o) in out.iter_mut().enumerate() {
                let xi = (t0 + t) * acts.blocks() + b;
                let x = &acts.qs[xi * 32..xi * 32 + 32];
                let dot: i32 = q.iter().zip(x).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
                *o += d * acts.d[xi] * dot as f32 + m * acts.ds[xi];
            }
        }
    } else {
        let mut q = [0u8; 256];
        let mut sc = [0i32; 16];
        let mut mn = [0i32; 16];
        for (b, block) in row.chunks_exact(bb).enumerate() {
            let (d, dmin) = decode_k(format, block, &mut q, &mut sc, &mut mn);
            for (t, o) in out.iter_mut().enumerate() {
                let xi = (t0 + t) * acts.blocks() + b;
                let x = &acts.qs[xi * 256..xi * 256 + 256];
                let sums = &acts.sums16[xi * 16..xi * 16 + 16];
                let (mut dot, mut msum) = (0i32, 0i32);
                for g in 0..16 {
                    let (qg, xg) = (&q[g * 16..g * 16 + 16], &x[g * 16..g * 16 + 16]);
                    let s: i32 = qg.iter().zip(xg).map(|(&a, &b)| i32::from(a) * i32::from(b)).sum();
                    dot += sc[g] * s;
                    msum += mn[g] * i32::from(sums[g]);
                }
                let dx = acts.d[xi];
                *o += d * dx * dot as f32 - dmin * dx * msum as f32;
            }
        }
    }
}

/// `out[t] = Σ_c w[c]·x[t0 + t][c]` for the packed `row` of `format` and
/// the 16-bit activations `acts` (rows `t0..t0 + out.len()`): per group of
/// 32 an exact integer sum `Σ q_w·q_x`, scaled in f32.
pub(crate) fn dot_row16(format: BlockFormat, row: &[u8], acts: &QActs16, t0: usize, out: &mut [f32]) {
    out.fill(0.0);
    let (bb, ng) = (format.block_bytes(), acts.groups());
    let dot = |q: &[i32], x: &[i16]| -> i32 { q.iter().zip(x).map(|(&a, &b)| a * i32::from(b)).sum() };
    if format.block_len() == 32 {
        let mut q8 = [0i8; 32];
        for (b, block) in row.chunks_exact(bb).enumerate() {
            let (d, m) = decode_small(format, block, &mut q8);
            let q = q8.map(i32::from);
            for (t, o) in out.iter_mut().enumerate() {
                let xi = (t0 + t) * ng + b;
                let s = dot(&q, &acts.qs[xi * 32..xi * 32 + 32]);
                *o += d * acts.d[xi] * s as f32 + m * acts.sum[xi];
            }
        }
        return;
    }
    let mut q8 = [0u8; 256];
    let (mut sc, mut mn) = ([0i32; 16], [0i32; 16]);
    let six = format == BlockFormat::Q6_K;
    for (b, block) in row.chunks_exact(bb).enumerate() {
        let (d, dmin) = decode_k(format, block, &mut q8, &mut sc, &mut mn);
        // Q6_K's offset of 32 stays in the integers; the others' minimums
        // multiply the group sums.
        let q = q8.map(|v| i32::from(v) - if six { 32 } else { 0 });
        for (t, o) in out.iter_mut().enumerate() {
            for j in 0..8 {
                let xi = (t0 + t) * ng + b * 8 + j;
                let x = &acts.qs[xi * 32..xi * 32 + 32];
                // Each product fits an i32 (|Σ 16 q·x| ≤ 16·32·32767, |sc| ≤ 128); their sum may not.
                let s = i64::from(sc[2 * j] * dot(&q[j * 32..j * 32 + 16], &x[..16]))
                    + i64::from(sc[2 * j + 1] * dot(&q[j * 32 + 16..j * 32 + 32], &x[16..]));
                let min = if six {
                    0.0
                } else {
                    dmin * mn[2 * j] as f32 * acts.sum[xi]
                };
                *o += d * acts.d[xi] * s as f32 - min;
            }
        }
    }
}

/// Unpacks a 32-weight block into `q` (unsigned 0..32 for the 4/5-bit
/// formats, signed for Q8_0) and returns `(d, m)` with `w = d·q + m`.
fn decode_small(format: BlockFormat, block: &[u8], q: &mut [i8; 32]) -> (f32, f32) {
    let d = f16_at(block, 0);
    if format == BlockFormat::Q8_0 {
        for (o, &b) in q.iter_mut().zip(&block[2..34]) {
            *o = b as i8;
        }
        return (d, 0.0);
    }
    let (_, m_at, qh_at, qs) = small_layout(format);
    for j in 0..16 {
        q[j] = (block[qs + j] & 0x0f) as i8;
        q[j + 16] = (block[qs + j] >> 4) as i8;
    }
    if let Some(at) = qh_at {
        let bits = u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
        for (i, v) in q.iter_mut().enumerate() {
            *v |= (((bits >> i) & 1) << 4) as i8;
        }
    }
    let m = match (m_at, format) {
        (Some(at), _) => f16_at(block, at),
        (None, BlockFormat::Q4_0) => -8.0 * d,
        _ => -16.0 * d,
    };
    (d, m)
}

/// Unpacks a k-quant block into unsigned values `q` and per-16-group integer
/// scales `sc` and minimums `mn`, returning `(d, dmin)` with
/// `w = d·sc·q - dmin·mn` in each group.
fn decode_k(
    format: BlockFormat,
    block: &[u8],
    q: &mut [u8; 256],
    sc: &mut [i32; 16],
    mn: &mut [i32; 16],
) -> (f32, f32) {
    if format == BlockFormat::Q6_K {
        for (i, v) in q.iter_mut().enumerate() {
            *v = q6k_value(block, i);
        }
        for g in 0..16 {
            sc[g] = i32::from(block[192 + g] as i8);
            mn[g] = 32 * sc[g];
        }
        let d = f16_at(block, 208);
        return (d, d);
    }
    let five = format == BlockFormat::Q5_K;
    let qs = if five { &block[48..176] } else { &block[16..144] };
    for j in 0..8 {
        let (s, m) = k_scale_min(&block[4..16], j);
        sc[2 * j] = i32::from(s);
        sc[2 * j + 1] = i32::from(s);
        mn[2 * j] = i32::from(m);
        mn[2 * j + 1] = i32::from(m);
        for l in 0..32 {
            let mut v = (qs[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0x0f;
            if five {
                v |= ((block[16 + l] >> j) & 1) << 4;
            }
            q[j * 32 + l] = v;
        }
    }
    (f16_at(block, 0), f16_at(block, 2))
}
