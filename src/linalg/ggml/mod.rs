//! GGUF's block formats (llama.cpp's `ggml` quantization) as CPU weight
//! formats: the block layouts, a reference dequantization per format, and the
//! matrix products a decoder runs on packed rows ([`QMatrix`]).

mod acts;
mod blocks;
mod kquants;
mod matmul;
mod panel;
mod portable;
#[cfg(target_arch = "x86_64")]
mod x86;

use std::sync::OnceLock;

use rayon::prelude::*;

pub use acts::{quantize_acts, quantize_acts16, QActs, QActs16};
pub use blocks::quantize_row;
pub use matmul::{ActPrecision, Kernel, PRECISE_MAX_N};
pub use panel::{PanelMatrix, PANEL};

use crate::error::OpError;

/// Dequantizes one row: `bytes` holds `out.len() / block_len` whole blocks.
/// Equal bit for bit to the `gguf` package's `gguf.quants.dequantize` (the
/// scalar reference in `blocks`, vectorized with AVX2 where the CPU has it).
pub fn dequantize_row(format: BlockFormat, bytes: &[u8], out: &mut [f32]) {
    #[cfg(target_arch = "x86_64")]
    if Kernel::Avx2.is_available() {
        // SAFETY: the CPU has AVX2, FMA and F16C (checked above).
        if unsafe { x86::dequantize(format, bytes, out) } {
            return;
        }
    }
    blocks::dequantize_row(format, bytes, out);
}

/// A ggml block format: a row of `cols` weights is `cols / block_len()` blocks
/// of `block_bytes()` bytes each, laid out as llama.cpp writes them.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, PartialEq, Eq, Hash)]
pub enum BlockFormat {
    /// 32 weights: f16 scale `d`, 16 bytes of 4-bit `q`; `w = d·(q - 8)`.
    Q4_0,
    /// 32 weights: f16 `d`, f16 `m`, 16 bytes of 4-bit `q`; `w = d·q + m`.
    Q4_1,
    /// 32 weights: f16 `d`, 4 bytes of high bits, 16 bytes of low nibbles; `w = d·(q - 16)`.
    Q5_0,
    /// 32 weights: f16 `d`, f16 `m`, 4 bytes of high bits, 16 bytes of low nibbles; `w = d·q + m`.
    Q5_1,
    /// 32 weights: f16 `d`, 32 signed bytes `q`; `w = d·q`.
    Q8_0,
    /// 256 weights in 8 sub-blocks of 32 with 6-bit scales and minimums.
    Q4_K,
    /// 256 weights in 8 sub-blocks of 32, 5 bits each, 6-bit scales and minimums.
    Q5_K,
    /// 256 weights in 16 sub-blocks of 16, 6 bits each, 8-bit scales.
    Q6_K,
}

impl BlockFormat {
    /// Every format.
    pub const ALL: [BlockFormat; 8] = [
        Self::Q4_0,
        Self::Q4_1,
        Self::Q5_0,
        Self::Q5_1,
        Self::Q8_0,
        Self::Q4_K,
        Self::Q5_K,
        Self::Q6_K,
    ];

    /// Weights per block.
    pub const fn block_len(self) -> usize {
        match self {
            Self::Q4_0 | Self::Q4_1 | Self::Q5_0 | Self::Q5_1 | Self::Q8_0 => 32,
            Self::Q4_K | Self::Q5_K | Self::Q6_K => 256,
        }
    }

    /// Bytes per block.
    pub const fn block_bytes(self) -> usize {
        match self {
            Self::Q4_0 => 18,
            Self::Q4_1 => 20,
            Self::Q5_0 => 22,
            Self::Q5_1 => 24,
            Self::Q8_0 => 34,
            Self::Q4_K => 144,
            Self::Q5_K => 176,
            Self::Q6_K => 210,
        }
    }

    /// The name llama.cpp gives the format (`Q4_K`).
    pub const fn name(self) -> &'static str {
        match self {
            Self::Q4_0 => "Q4_0",
            Self::Q4_1 => "Q4_1",
            Self::Q5_0 => "Q5_0",
            Self::Q5_1 => "Q5_1",
            Self::Q8_0 => "Q8_0",
            Self::Q4_K => "Q4_K",
            Self::Q5_K => "Q5_K",
            Self::Q6_K => "Q6_K",
        }
    }

    /// The format with this name, if it is one.
    pub fn from_name(name: &str) -> Option<Self> {
        Self::ALL.into_iter().find(|f| f.name() == name)
    }

    /// Bytes in a row of `cols` weights; `None` unless `cols` is a whole
    /// number of blocks (or the count overflows).
    pub fn row_bytes(self, cols: usize) -> Option<usize> {
        if !cols.is_multiple_of(self.block_len()) {
            return None;
        }
        (cols / self.block_len()).checked_mul(self.block_bytes())
    }
}

/// A matrix of `rows × cols` weights stored row by row in a block format.
#[derive(Clone, Debug)]
pub struct QMatrix {
    format: BlockFormat,
    rows: usize,
    cols: usize,
    data: Vec<u8>,
    /// The rows repacked in panels, made on first use ([`QMatrix::panels`]).
    panels: OnceLock<Option<PanelMatrix>>,
}

impl QMatrix {
    /// Wraps packed rows, checking that `data` holds exactly `rows` rows of
    /// `cols` weights.
    pub fn new(format: BlockFormat, rows: usize, cols: usize, data: Vec<u8>) -> Result<Self, OpError> {
        let expected = format.row_bytes(cols).and_then(|r| r.checked_mul(rows));
        if expected != Some(data.len()) {
            return Err(OpError::Shape(format!(
                "a {} matrix of {rows}x{cols} needs {} bytes (rows of whole {}-weight blocks), got {}",
                format.name(),
                expected.map_or("an overflowing number of".to_string(), |e| e.to_string()),
                format.block_len(),
                data.len()
            )));
        }
        Ok(Self {
            format,
            rows,
            cols,
            data,
            panels: OnceLock::new(),
        })
    }

    /// The rows repacked in panels of eight ([`PanelMatrix`]), made on the
    /// first call (the packed bytes once more) and kept; `None` for the
    /// formats without a panel form (the k-quants).
    pub fn panels(&self) -> Option<&PanelMatrix> {
        self.panels.get_or_init(|| PanelMatrix::pack(self)).as_ref()
    }

    /// The block format.
    pub fn format(&self) -> BlockFormat {
        self.format
    }

    /// Output rows.
    pub fn rows(&self) -> usize {
        self.rows
    }

    /// Weights per row.
    pub fn cols(&self) -> usize {
        self.cols
    }

    /// All packed bytes, row after row.
    pub fn data(&self) -> &[u8] {
        &self.data
    }

    /// Bytes per packed row.
    pub fn row_bytes(&self) -> usize {
        self.data.len() / self.rows.max(1)
    }

    /// The packed bytes of row `r`.
    pub fn row(&self, r: usize) -> &[u8] {
        let rb = self.row_bytes();
        &self.data[r * rb..(r + 1) * rb]
    }

    /// Row `r` as f32 (`out.len() == cols`).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        dequantize_row(self.format, self.row(r), out);
    }
}

/// `out = x·Wᵀ` for an f32 weight `rows × cols` and `n` rows of `x`.
pub fn matmul_f32(w: &[f32], rows: usize, cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
    for t in 0..n {
        let xt = &x[t * cols..(t + 1) * cols];
        out[t * rows..(t + 1) * rows]
            .par_iter_mut()
            .enumerate()
            .for_each(|(r, o)| *o = w[r * cols..(r + 1) * cols].iter().zip(xt).map(|(a, b)| a * b).sum());
    }
}

/// `out = x·Wᵀ` for an f16 weight `rows × cols` and `n` rows of `x`.
pub fn matmul_f16(w: &[half::f16], rows: usize, cols: usize, x: &[f32], n: usize, out: &mut [f32]) {
    for t in 0..n {
        let xt = &x[t * cols..(t + 1) * cols];
        out[t * rows..(t + 1) * rows]
            .par_iter_mut()
            .enumerate()
            .for_each(|(r, o)| {
                *o = w[r * cols..(r + 1) * cols]
                    .iter()
                    .zip(xt)
                    .map(|(a, b)| a.to_f32() * b)
                    .sum()
            });
    }
}
