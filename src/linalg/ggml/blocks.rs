//! The block layouts, the reference dequantization of every format and the
//! reference (round-to-nearest) quantization of the 32-weight formats. These
//! are plain scalar loops: the fast paths are checked against them.

use super::BlockFormat;
use crate::error::OpError;

/// Reads the little-endian f16 at `at` as f32.
#[inline(always)]
pub(crate) fn f16_at(b: &[u8], at: usize) -> f32 {
    half::f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

/// Byte offsets inside a 32-weight block: `(d, m, qh, qs)` (`m`, `qh`
/// absent where the format has none).
pub(crate) const fn small_layout(format: BlockFormat) -> (usize, Option<usize>, Option<usize>, usize) {
    match format {
        BlockFormat::Q4_0 => (0, None, None, 2),
        BlockFormat::Q4_1 => (0, Some(2), None, 4),
        BlockFormat::Q5_0 => (0, None, Some(2), 6),
        BlockFormat::Q5_1 => (0, Some(2), Some(4), 8),
        _ => (0, None, None, 2),
    }
}

/// The 6-bit scale and minimum of sub-block `j` (0..8) of a Q4_K/Q5_K block
/// from its 12 packed bytes: sub-blocks 0..4 keep theirs in the low 6 bits of
/// bytes `j` and `j + 4`; sub-blocks 4..8 in the nibbles of byte `j + 4` with
/// the top two bits taken from bytes `j - 4` and `j`.
#[inline(always)]
pub(crate) fn k_scale_min(scales: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (scales[j] & 63, scales[j + 4] & 63)
    } else {
        (
            (scales[j + 4] & 0x0f) | ((scales[j - 4] >> 6) << 4),
            (scales[j + 4] >> 4) | ((scales[j] >> 6) << 4),
        )
    }
}

/// The quantized value (before offset) of weight `i` (0..256) of a Q6_K block:
/// the low 4 bits from `ql`, the high 2 from `qh`, in 0..64.
#[inline(always)]
pub(crate) fn q6k_value(block: &[u8], i: usize) -> u8 {
    let (half, k, l) = (i / 128, (i % 128) / 32, i % 32);
    let lo = (block[half * 64 + (k % 2) * 32 + l] >> (4 * (k / 2))) & 0x0f;
    let hi = (block[128 + half * 32 + l] >> (2 * k)) & 3;
    lo | (hi << 4)
}

/// The quantized value of weight `i` (0..32) of a 32-weight block: unsigned
/// (0..16 or 0..32) for the 4/5-bit formats, the signed byte for Q8_0.
#[inline(always)]
pub(crate) fn small_value(format: BlockFormat, block: &[u8], i: usize) -> i32 {
    if format == BlockFormat::Q8_0 {
        return i32::from(block[2 + i] as i8);
    }
    let (_, _, qh, qs) = small_layout(format);
    let lo = (block[qs + i % 16] >> (4 * (i / 16))) & 0x0f;
    let hi = qh.map_or(0, |at| {
        let bits = u32::from_le_bytes([block[at], block[at + 1], block[at + 2], block[at + 3]]);
        (bits >> i) & 1
    });
    i32::from(lo) | (hi << 4) as i32
}

/// Dequantizes one row: `bytes` holds `out.len() / block_len` whole blocks.
/// The reference every fast path is checked against; equal bit for bit to
/// the `gguf` package's `gguf.quants.dequantize`.
pub fn dequantize_row(format: BlockFormat, bytes: &[u8], out: &mut [f32]) {
    let (bl, bb) = (format.block_len(), format.block_bytes());
    for (block, y) in bytes.chunks_exact(bb).zip(out.chunks_exact_mut(bl)) {
        dequantize_block(format, block, y);
    }
}

fn dequantize_block(format: BlockFormat, block: &[u8], y: &mut [f32]) {
    match format {
        BlockFormat::Q4_0 | BlockFormat::Q5_0 | BlockFormat::Q8_0 => {
            let d = f16_at(block, 0);
            let off = match format {
                BlockFormat::Q4_0 => 8,
                BlockFormat::Q5_0 => 16,
                _ => 0,
            };
            for (i, v) in y.iter_mut().enumerate() {
                *v = d * (small_value(format, block, i) - off) as f32;
            }
        }
        BlockFormat::Q4_1 | BlockFormat::Q5_1 => {
            let (d, m) = (f16_at(block, 0), f16_at(block, 2));
            for (i, v) in y.iter_mut().enumerate() {
                *v = d * small_value(format, block, i) as f32 + m;
            }
        }
        BlockFormat::Q4_K | BlockFormat::Q5_K => {
            let (d, dmin) = (f16_at(block, 0), f16_at(block, 2));
            let scales = &block[4..16];
            let five = format == BlockFormat::Q5_K;
            let qs = if five { &block[48..176] } else { &block[16..144] };
            for (j, sub) in y.chunks_exact_mut(32).enumerate() {
                let (sc, m) = k_scale_min(scales, j);
                let (ds, dm) = (d * f32::from(sc), dmin * f32::from(m));
                for (l, v) in sub.iter_mut().enumerate() {
                    let mut q = (qs[(j / 2) * 32 + l] >> (4 * (j % 2))) & 0x0f;
                    if five {
                        q |= ((block[16 + l] >> j) & 1) << 4;
                    }
                    *v = ds * f32::from(q) - dm;
                }
            }
        }
        BlockFormat::Q6_K => {
            let d = f16_at(block, 208);
            for (i, v) in y.iter_mut().enumerate() {
                let ds = d * f32::from(block[192 + i / 16] as i8);
                *v = ds * f32::from(i16::from(q6k_value(block, i)) - 32);
            }
        }
    }
}

/// Quantizes one row as llama.cpp's reference quantizers do: `x` holds
/// whole blocks and `out` receives `format.row_bytes(x.len())` bytes. For
/// the 32-weight formats (round to nearest, no search) equal byte for byte
/// to the `gguf` package's `gguf.quants.quantize`:
///
/// - Q8_0: `d = max|x|/127`, `q = round(x/d)` (halves away from zero).
/// - Q4_0 / Q5_0: `d = -m/8` (`-m/16`) where `m` is the value of largest
///   magnitude, `q = min(15 (31), trunc(x/d + 8.5 (16.5)))`.
/// - Q4_1 / Q5_1: `d = (max - min)/15 (31)`, `q = min(15 (31), trunc((x - min)/d + 0.5))`.
///
/// The k-quants search their scales as llama.cpp's `quantize_row_q*_K_ref`
/// does ([`kquants`](super::kquants)).
///
/// Fails with [`OpError::Shape`] unless `x` is whole blocks and `out`
/// exactly their bytes.
pub fn quantize_row(format: BlockFormat, x: &[f32], out: &mut [u8]) -> Result<(), OpError> {
    if format.row_bytes(x.len()) != Some(out.len()) {
        return Err(OpError::Shape(format!(
            "quantizing {} values to {} needs whole blocks and {:?} output bytes, got {}",
            x.len(),
            format.name(),
            format.row_bytes(x.len()),
            out.len()
        )));
    }
    if format.block_len() == 256 {
        for (xb, block) in x.chunks_exact(256).zip(out.chunks_exact_mut(format.block_bytes())) {
            super::kquants::quantize_block_k(format, xb, block);
        }
        return Ok(());
    }
    for (xb, block) in x.chunks_exact(32).zip(out.chunks_exact_mut(format.block_bytes())) {
        let mut v = [0f32; 32];
        v.copy_from_slice(xb);
        quantize_block(format, &v, block);
    }
    Ok(())
}

fn put_f16(block: &mut [u8], at: usize, v: f32) {
    block[at..at + 2].copy_from_slice(&half::f16::from_f32(v).to_le_bytes());
}

fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

fn quantize_block(format: BlockFormat, x: &[f32; 32], block: &mut [u8]) {
    let mut q = [0u8; 32];
    match format {
        BlockFormat::Q8_0 => {
            let amax = x.iter().fold(0.0f32, |m, v| m.max(v.abs()));
            let d = amax / 127.0;
            let id = inverse(d);
            put_f16(block, 0, d);
            for (b, &v) in block[2..34].iter_mut().zip(x) {
                *b = (v * id).round() as i8 as u8;
            }
            return;
        }
        BlockFormat::Q4_0 | BlockFormat::Q5_0 => {
            let (mut amax, mut max) = (0.0f32, 0.0f32);
            for &v in x {
                if amax < v.abs() {
                    amax = v.abs();
                    max = v;
                }
            }
            let levels = if format == BlockFormat::Q4_0 { 8.0 } else { 16.0 };
            let d = max / -levels;
            let id = inverse(d);
            put_f16(block, 0, d);
            for (o, &v) in q.iter_mut().zip(x) {
                *o = ((v * id + (levels + 0.5)).trunc() as u8).min(2 * levels as u8 - 1);
            }
        }
        _ => {
            let min = x.iter().fold(f32::INFINITY, |m, &v| m.min(v));
            let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
            let top = if format == BlockFormat::Q4_1 { 15u8 } else { 31 };
            let d = (max - min) / f32::from(top);
            let id = inverse(d);
            put_f16(block, 0, d);
            put_f16(block, 2, min);
            for (o, &v) in q.iter_mut().zip(x) {
                *o = (((v - min) * id + 0.5).trunc() as u8).min(top);
            }
        }
    }
    pack_small(format, &q, block);
}

/// Writes 32 unsigned 4/5-bit values into a block's `qh` and `qs`.
fn pack_small(format: BlockFormat, q: &[u8; 32], block: &mut [u8]) {
    let (_, _, qh, qs) = small_layout(format);
    for j in 0..16 {
        block[qs + j] = (q[j] & 0x0f) | ((q[j + 16] & 0x0f) << 4);
    }
    if let Some(at) = qh {
        let bits = q
            .iter()
            .enumerate()
            .fold(0u32, |acc, (i, &v)| acc | (u32::from(v >> 4) << i));
        block[at..at + 4].copy_from_slice(&bits.to_le_bytes());
    }
}
