//! GPTQ onto ggml's block formats ([`BlockFormat`]): the group grid is the
//! ggml block, and each block's parameters are the ones ggml's reference
//! quantizer ([`quantize_row`]) chooses for the block's values at the time
//! they are fitted — the error-updated weights when the block's first
//! column is reached, or the original weights with `act_order` (static
//! groups). The values are then rounded as that quantizer rounds them, so
//! the result is an ordinary GGUF row that llama.cpp and every kernel here
//! run unchanged; with no error feedback (a diagonal `H`) it is
//! [`quantize_row`]'s row byte for byte.
//!
//! - Q4_0 / Q5_0: `d = m / -8 (-16)` for the value `m` of largest
//!   magnitude, `q = trunc(x/d + 8.5 (16.5))` clamped to the levels.
//! - Q4_1 / Q5_1: `d = (max − min)/15 (31)`, `q = trunc((x − min)/d + 0.5)`.
//! - Q8_0: `d = max|x|/127`, `q = round(x/d)` clamped to ±127.
//! - Q4_K / Q5_K / Q6_K: the block's f16 `d` (and `dmin`) and its 6-bit (8-bit)
//!   sub-block scales from the reference search over the 256 values, then
//!   `q = round((x + dm)/ds)` (`round(x/ds)`) per sub-block, as the reference
//!   re-rounds to its quantized scales.

use half::f16;

use super::gptq::{gptq_grid, Factor, GptqOptions, Grid};
use crate::error::OpError;
use crate::linalg::ggml::{quantize_row, BlockFormat};

/// One ggml block's parameters: the bytes the block stores before (Q6_K:
/// after) its codes, and how its values are rounded and rebuilt.
#[derive(Clone, Copy, Debug, Default)]
pub struct BlockParams {
    /// The stored parameter bytes: `d` (and `m`) for the 32-weight formats,
    /// `d`, `dmin` and the 12 scale bytes for Q4_K/Q5_K, the 16 scales and
    /// `d` for Q6_K.
    header: [u8; 18],
    /// The 32-weight formats: `1/d` with `d` before f16 rounding (ggml
    /// rounds with it).
    inv: f32,
    /// Q4_1/Q5_1: the minimum before f16 rounding.
    min: f32,
    /// Per sub-block (one for the 32-weight formats): the value of code `q`
    /// is `scale·(q − zero) + offset`, computed as the dequantization does.
    scale: [f32; 16],
    offset: [f32; 16],
}

/// GPTQ's [`Grid`] for a ggml block format.
#[derive(Clone, Copy, Debug)]
pub struct BlockGrid {
    format: BlockFormat,
}

impl BlockGrid {
    /// The grid of `format`.
    pub fn new(format: BlockFormat) -> Self {
        Self { format }
    }

    /// The code offset (`q − zero` multiplies the scale).
    fn zero(&self) -> i32 {
        match self.format {
            BlockFormat::Q4_0 => 8,
            BlockFormat::Q5_0 => 16,
            BlockFormat::Q6_K => 32,
            _ => 0,
        }
    }

    /// Sub-block length (the scale changes every this many values).
    fn sub_len(&self) -> usize {
        match self.format {
            BlockFormat::Q6_K => 16,
            _ => 32,
        }
    }
}

fn f16_at(b: &[u8], at: usize) -> f32 {
    f16::from_le_bytes([b[at], b[at + 1]]).to_f32()
}

fn inverse(d: f32) -> f32 {
    if d == 0.0 {
        0.0
    } else {
        1.0 / d
    }
}

/// The 6-bit scale and minimum of sub-block `j` of a Q4_K/Q5_K block from
/// its 12 scale bytes (ggml's `get_scale_min_k4`).
fn k_scale_min(s: &[u8], j: usize) -> (u8, u8) {
    if j < 4 {
        (s[j] & 63, s[j + 4] & 63)
    } else {
        (
            (s[j + 4] & 0x0f) | ((s[j - 4] >> 6) << 4),
            (s[j + 4] >> 4) | ((s[j] >> 6) << 4),
        )
    }
}

impl Grid for BlockGrid {
    type Params = BlockParams;

    fn group(&self) -> usize {
        self.format.block_len()
    }

    fn fit(&self, x: &[f32]) -> BlockParams {
        let mut p = BlockParams::default();
        let put = |h: &mut [u8; 18], at: usize, v: f32| {
            let v = f16::from_f32(v);
            h[at..at + 2].copy_from_slice(&v.to_le_bytes());
            v.to_f32()
        };
        match self.format {
            BlockFormat::Q8_0 => {
                let d = x.iter().fold(0.0f32, |m, v| m.max(v.abs())) / 127.0;
                p.inv = inverse(d);
                p.scale[0] = put(&mut p.header, 0, d);
            }
            BlockFormat::Q4_0 | BlockFormat::Q5_0 => {
                let (mut amax, mut max) = (0.0f32, 0.0f32);
                for &v in x {
                    if amax < v.abs() {
                        (amax, max) = (v.abs(), v);
                    }
                }
                let d = max / -(self.zero() as f32);
                p.inv = inverse(d);
                p.scale[0] = put(&mut p.header, 0, d);
            }
            BlockFormat::Q4_1 | BlockFormat::Q5_1 => {
                let min = x.iter().fold(f32::INFINITY, |m, &v| m.min(v));
                let max = x.iter().fold(f32::NEG_INFINITY, |m, &v| m.max(v));
                let d = (max - min) / self.top() as f32;
                (p.inv, p.min) = (inverse(d), min);
                p.scale[0] = put(&mut p.header, 0, d);
                p.offset[0] = put(&mut p.header, 2, min);
            }
            BlockFormat::Q4_K | BlockFormat::Q5_K | BlockFormat::Q6_K => self.fit_k(x, &mut p),
        }
        p
    }

    fn nearest(&self, x: f32, p: &BlockParams, at: usize) -> (f32, i32) {
        let (top, zero) = (self.top(), self.zero());
        let j = at / self.sub_len();
        let code = match self.format {
            BlockFormat::Q8_0 => ((x * p.inv).round() as i32).clamp(-127, 127),
            BlockFormat::Q4_0 | BlockFormat::Q5_0 => ((x * p.inv + (zero as f32 + 0.5)).trunc() as i32).clamp(0, top),
            BlockFormat::Q4_1 | BlockFormat::Q5_1 => (((x - p.min) * p.inv + 0.5).trunc() as i32).clamp(0, top),
            BlockFormat::Q4_K | BlockFormat::Q5_K if p.scale[j] != 0.0 => {
                ((x - p.offset[j]) / p.scale[j]).round_ties_even() as i32
            }
            BlockFormat::Q6_K if p.scale[j] != 0.0 => (x / p.scale[j]).round_ties_even() as i32 + zero,
            // A zero scale: every code gives the same value.
            _ => zero,
        }
        .clamp(if self.format == BlockFormat::Q8_0 { -127 } else { 0 }, top);
        let value = match self.format {
            BlockFormat::Q4_1 | BlockFormat::Q5_1 => p.scale[0] * code as f32 + p.offset[0],
            BlockFormat::Q4_K | BlockFormat::Q5_K => p.scale[j] * code as f32 + p.offset[j],
            _ => p.scale[j] * (code - zero) as f32,
        };
        (value, code)
    }
}

impl BlockGrid {
    /// The largest code.
    fn top(&self) -> i32 {
        match self.format {
            BlockFormat::Q4_0 | BlockFormat::Q4_1 | BlockFormat::Q4_K => 15,
            BlockFormat::Q5_0 | BlockFormat::Q5_1 | BlockFormat::Q5_K => 31,
            BlockFormat::Q6_K => 63,
            BlockFormat::Q8_0 => 127,
        }
    }

    /// The k-quants: the reference quantizer's block, read back.
    fn fit_k(&self, x: &[f32], p: &mut BlockParams) {
        let mut block = vec![0u8; self.format.block_bytes()];
        if quantize_row(self.format, x, &mut block).is_err() {
            // Not a whole block (a caller error `quantize_blocks_gptq` rules out).
            return;
        }
        if self.format == BlockFormat::Q6_K {
            p.header.copy_from_slice(&block[192..210]);
            let d = f16_at(&block, 208);
            for (i, s) in p.scale.iter_mut().enumerate() {
                *s = d * f32::from(block[192 + i] as i8);
            }
            return;
        }
        p.header[..16].copy_from_slice(&block[..16]);
        let (d, dmin) = (f16_at(&block, 0), f16_at(&block, 2));
        for j in 0..8 {
            let (sc, m) = k_scale_min(&block[4..16], j);
            p.scale[j] = d * f32::from(sc);
            p.offset[j] = -(dmin * f32::from(m));
        }
    }

    /// Writes one block from its parameters and codes.
    fn pack(&self, p: &BlockParams, codes: &[i32], block: &mut [u8]) {
        let c = |i: usize| codes[i] as u8;
        match self.format {
            BlockFormat::Q8_0 => {
                block[..2].copy_from_slice(&p.header[..2]);
                for (b, &q) in block[2..34].iter_mut().zip(codes) {
                    *b = q as i8 as u8;
                }
            }
            BlockFormat::Q4_0 | BlockFormat::Q4_1 | BlockFormat::Q5_0 | BlockFormat::Q5_1 => {
                let with_min = matches!(self.format, BlockFormat::Q4_1 | BlockFormat::Q5_1);
                let five = matches!(self.format, BlockFormat::Q5_0 | BlockFormat::Q5_1);
                let head = if with_min { 4 } else { 2 };
                block[..head].copy_from_slice(&p.header[..head]);
                let qs = head + if five { 4 } else { 0 };
                for j in 0..16 {
                    block[qs + j] = (c(j) & 0x0f) | ((c(j + 16) & 0x0f) << 4);
                }
                if five {
                    let bits = (0..32).fold(0u32, |acc, i| acc | (u32::from(c(i) >> 4) << i));
                    block[head..head + 4].copy_from_slice(&bits.to_le_bytes());
                }
            }
            BlockFormat::Q4_K | BlockFormat::Q5_K => {
                block[..16].copy_from_slice(&p.header[..16]);
                let five = self.format == BlockFormat::Q5_K;
                let qs = if five { 48 } else { 16 };
                if five {
                    block[16..48].fill(0);
                }
                for pair in 0..4 {
                    for l in 0..32 {
                        let (lo, hi) = (c(64 * pair + l), c(64 * pair + 32 + l));
                        block[qs + 32 * pair + l] = (lo & 0x0f) | ((hi & 0x0f) << 4);
                        if five {
                            block[16 + l] |= ((lo >> 4) << (2 * pair)) | ((hi >> 4) << (2 * pair + 1));
                        }
                    }
                }
            }
            BlockFormat::Q6_K => {
                block[192..210].copy_from_slice(&p.header);
                for half in 0..2 {
                    let (ql, qh, lv) = (64 * half, 128 + 32 * half, 128 * half);
                    for l in 0..32 {
                        let q = [c(lv + l), c(lv + l + 32), c(lv + l + 64), c(lv + l + 96)];
                        block[ql + l] = (q[0] & 0x0f) | ((q[2] & 0x0f) << 4);
                        block[ql + l + 32] = (q[1] & 0x0f) | ((q[3] & 0x0f) << 4);
                        block[qh + l] = (q[0] >> 4) | ((q[1] >> 4) << 2) | ((q[2] >> 4) << 4) | ((q[3] >> 4) << 6);
                    }
                }
            }
        }
    }
}

/// GPTQ-quantizes an f32 `[out, in]` weight into `format`'s GGUF rows
/// (`out · format.row_bytes(in)` bytes), given the [`Factor`] of its input
/// statistics (no exact columns). Fails with [`OpError::Shape`] unless `in`
/// is whole blocks and the shapes agree.
pub fn quantize_blocks_gptq(
    format: BlockFormat,
    w: &[f32],
    out: usize,
    inp: usize,
    factor: &Factor,
    opts: &GptqOptions,
) -> Result<Vec<u8>, OpError> {
    let row_bytes = format.row_bytes(inp).filter(|_| inp > 0).ok_or_else(|| {
        OpError::Shape(format!(
            "GPTQ to {}: {inp} columns are not whole {}-weight blocks",
            format.name(),
            format.block_len()
        ))
    })?;
    if factor.exact > 0 {
        return Err(OpError::Shape(format!(
            "GPTQ to {}: the factor keeps {} columns in f32, which a GGUF block cannot",
            format.name(),
            factor.exact
        )));
    }
    let grid = BlockGrid::new(format);
    let res = gptq_grid(&grid, w, out, inp, factor, opts)?;
    let (bl, bb) = (format.block_len(), format.block_bytes());
    let blocks = inp / bl;
    let mut data = vec![0u8; out * row_bytes];
    for (r, row) in data.chunks_exact_mut(row_bytes).enumerate() {
        for (b, block) in row.chunks_exact_mut(bb).enumerate() {
            let codes = &res.codes[r * inp + b * bl..r * inp + (b + 1) * bl];
            grid.pack(&res.params[r * blocks + b], codes, block);
        }
    }
    Ok(data)
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::linalg::ggml::dequantize_row;

    /// Deterministic values in [-1, 1) (xorshift), with a few large ones.
    fn values(n: usize, seed: u64) -> Vec<f32> {
        let mut s = 0x9e37_79b9_7f4a_7c15u64 ^ seed;
        (0..n)
            .map(|i| {
                s ^= s << 13;
                s ^= s >> 7;
                s ^= s << 17;
                let v = (s >> 40) as f32 / (1u64 << 23) as f32 - 1.0;
                if i % 97 == 5 {
                    v * 6.0
                } else {
                    v
                }
            })
            .collect()
    }

    #[test]
    fn without_error_feedback_it_is_the_reference_quantizer() {
        // Diagonal H: GPTQ passes no error on, so every block is what
        // quantize_row writes (and the same in act_order, with static groups).
        let (out, k) = (5, 512);
        let w = values(out * k, 3);
        let mut h = vec![0.0f64; k * k];
        for i in 0..k {
            h[i * k + i] = 1.0 + (i % 11) as f64;
        }
        for act_order in [false, true] {
            let opts = GptqOptions {
                act_order,
                ..Default::default()
            };
            let f = Factor::new(&h, k, &opts).expect("factor");
            for format in BlockFormat::ALL {
                let got = quantize_blocks_gptq(format, &w, out, k, &f, &opts).expect("gptq");
                let rb = format.row_bytes(k).expect("row bytes");
                let mut want = vec![0u8; out * rb];
                for (o, x) in want.chunks_exact_mut(rb).zip(w.chunks_exact(k)) {
                    quantize_row(format, x, o).expect("reference");
                }
                assert_eq!(got, want, "{} act_order {act_order}", format.name());
            }
        }
    }

    #[test]
    fn the_values_chosen_are_the_packed_values() {
        // Correlated inputs (error feedback on): the values GPTQ rounded to
        // are exactly what the packed rows dequantize to.
        let (out, k, n) = (4, 256, 300);
        let x = values(n * k, 9);
        let mut h = vec![0.0f64; k * k];
        for row in x.chunks_exact(k) {
            for p in 0..k {
                for q in 0..k {
                    h[p * k + q] += f64::from(row[p] + row[(p + 1) % k]) * f64::from(row[q] + row[(q + 1) % k]);
                }
            }
        }
        let w = values(out * k, 4);
        for act_order in [false, true] {
            let opts = GptqOptions {
                act_order,
                ..Default::default()
            };
            let f = Factor::new(&h, k, &opts).expect("factor");
            for format in BlockFormat::ALL {
                let grid = BlockGrid::new(format);
                let res = gptq_grid(&grid, &w, out, k, &f, &opts).expect("gptq");
                let data = quantize_blocks_gptq(format, &w, out, k, &f, &opts).expect("gptq");
                let rb = format.row_bytes(k).expect("row bytes");
                let mut deq = vec![0f32; out * k];
                for (o, b) in deq.chunks_exact_mut(k).zip(data.chunks_exact(rb)) {
                    dequantize_row(format, b, o);
                }
                for (i, (a, b)) in deq.iter().zip(&res.q).enumerate() {
                    assert!(
                        (a - b).abs() <= 1e-6 * b.abs().max(1e-3),
                        "{} [{i}]: {a} vs {b}",
                        format.name()
                    );
                }
            }
        }
    }

    #[test]
    fn bad_shapes_are_errors() {
        let opts = GptqOptions::default();
        let identity =
            |k: usize| -> Vec<f64> { (0..k * k).map(|i| if i % (k + 1) == 0 { 1.0 } else { 0.0 }).collect() };
        let w = values(2 * 48, 1);
        // 48 columns are not whole 32-weight blocks.
        let f48 = Factor::new(&identity(48), 48, &opts).expect("factor");
        assert!(quantize_blocks_gptq(BlockFormat::Q4_0, &w, 2, 48, &f48, &opts).is_err());
        // Exact columns have no place in a GGUF block.
        let exact = Factor::with_exact(&identity(32), 32, &opts, &[1]).expect("factor");
        assert!(quantize_blocks_gptq(BlockFormat::Q8_0, &w[..64], 2, 32, &exact, &opts).is_err());
        // The weight's size disagrees with its shape.
        let f32c = Factor::new(&identity(32), 32, &opts).expect("factor");
        assert!(quantize_blocks_gptq(BlockFormat::Q8_0, &w[..60], 2, 32, &f32c, &opts).is_err());
        assert!(quantize_blocks_gptq(BlockFormat::Q8_0, &w[..64], 2, 32, &f32c, &opts).is_ok());
    }
}
