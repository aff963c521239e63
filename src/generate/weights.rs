//! The weights of a llama-family decoder, held in their stored formats
//! (GGUF blocks stay packed).

use half::f16;

use rayon::prelude::*;

use crate::error::OpError;
use crate::generate::DecoderConfig;
use crate::linalg::ggml::QMatrix;
use crate::linalg::{sgemm, MatRef};

/// From this many tokens on, a product of packed weights decodes them to f32
/// and runs f32 GEMM (the prompt path); below it, block kernels read the
/// packed weights directly (the decode path, memory-bound).
pub const PROMPT_MIN_TOKENS: usize = 8;

/// Floats of dequantized weights the prompt path holds at once (8 MiB).
const CHUNK_FLOATS: usize = 1 << 21;

/// A weight matrix `rows × cols` (`y = W·x` maps `cols` inputs to `rows` outputs).
#[derive(Clone, Debug)]
pub enum Matrix {
    /// f32, row-major.
    F32 {
        /// Output rows.
        rows: usize,
        /// Inputs per row.
        cols: usize,
        /// `rows × cols` weights.
        data: Vec<f32>,
    },
    /// f16, row-major.
    F16 {
        /// Output rows.
        rows: usize,
        /// Inputs per row.
        cols: usize,
        /// `rows × cols` weights.
        data: Vec<f16>,
    },
    /// A GGUF block format, packed.
    Quant(QMatrix),
}

impl Matrix {
    /// Output rows.
    pub fn rows(&self) -> usize {
        match self {
            Self::F32 { rows, .. } | Self::F16 { rows, .. } => *rows,
            Self::Quant(q) => q.rows(),
        }
    }

    /// Inputs per row.
    pub fn cols(&self) -> usize {
        match self {
            Self::F32 { cols, .. } | Self::F16 { cols, .. } => *cols,
            Self::Quant(q) => q.cols(),
        }
    }

    /// Bytes the weights occupy as stored.
    pub fn stored_bytes(&self) -> usize {
        match self {
            Self::F32 { data, .. } => data.len() * 4,
            Self::F16 { data, .. } => data.len() * 2,
            Self::Quant(q) => q.data().len(),
        }
    }

    /// The name of the stored format (`f32`, `f16`, `Q4_K`).
    pub fn format_name(&self) -> &'static str {
        match self {
            Self::F32 { .. } => "f32",
            Self::F16 { .. } => "f16",
            Self::Quant(q) => q.format().name(),
        }
    }

    /// Row `r` as f32 (`out.len() == cols`).
    pub fn dequantize_row(&self, r: usize, out: &mut [f32]) {
        match self {
            Self::F32 { cols, data, .. } => out.copy_from_slice(&data[r * cols..(r + 1) * cols]),
            Self::F16 { cols, data, .. } => {
                for (o, v) in out.iter_mut().zip(&data[r * cols..(r + 1) * cols]) {
                    *o = v.to_f32();
                }
            }
            Self::Quant(q) => q.dequantize_row(r, out),
        }
    }

    /// `out = x·Wᵀ` for `n` rows of `x` (`n × cols` in, `n × rows` out).
    pub fn matmul(&self, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), OpError> {
        let (rows, cols) = (self.rows(), self.cols());
        if x.len() != n * cols || out.len() != n * rows {
            return Err(OpError::Shape(format!(
                "matmul of a {rows}x{cols} weight with {} inputs into {} outputs for {n} rows",
                x.len(),
                out.len()
            )));
        }
        match self {
            Self::F32 { data, .. } => {
                sgemm(
                    MatRef::row_major(x, n, cols),
                    MatRef::transposed(data, cols, rows),
                    out,
                    false,
                )?;
            }
            Self::Quant(q) if n < PROMPT_MIN_TOKENS => q.matmul(x, n, out),
            _ => self.matmul_dequantized(x, n, out)?,
        }
        Ok(())
    }

    /// The prompt path: dequantizes chunks of rows to f32 (in parallel) and
    /// multiplies them with f32 GEMM, so the result is the f32 product of
    /// the dequantized weights, and each weight is decoded once per call
    /// however many tokens it serves.
    fn matmul_dequantized(&self, x: &[f32], n: usize, out: &mut [f32]) -> Result<(), OpError> {
        let (rows, cols) = (self.rows(), self.cols());
        let chunk_rows = (CHUNK_FLOATS / cols.max(1)).clamp(1, rows.max(1));
        let mut w = vec![0f32; chunk_rows * cols];
        let mut tmp = vec![0f32; n * chunk_rows];
        for r0 in (0..rows).step_by(chunk_rows) {
            let r1 = (r0 + chunk_rows).min(rows);
            let rr = r1 - r0;
            let wbuf = &mut w[..rr * cols];
            wbuf.par_chunks_mut(cols)
                .with_min_len(16)
                .enumerate()
                .for_each(|(i, row)| self.dequantize_row(r0 + i, row));
            let t = &mut tmp[..n * rr];
            sgemm(
                MatRef::row_major(x, n, cols),
                MatRef::transposed(wbuf, cols, rr),
                t,
                false,
            )?;
            for (orow, trow) in out.chunks_exact_mut(rows).zip(t.chunks_exact(rr)) {
                orow[r0..r1].copy_from_slice(trow);
            }
        }
        Ok(())
    }
}

/// One transformer block.
#[derive(Clone, Debug)]
pub struct LayerWeights {
    /// RMSNorm weight before attention, `[d_model]`.
    pub attn_norm: Vec<f32>,
    /// Query projection, `[q_dim, d_model]`.
    pub wq: Matrix,
    /// Key projection, `[kv_dim, d_model]`.
    pub wk: Matrix,
    /// Value projection, `[kv_dim, d_model]`.
    pub wv: Matrix,
    /// Query bias (qwen2), `[q_dim]`.
    pub bq: Option<Vec<f32>>,
    /// Key bias, `[kv_dim]`.
    pub bk: Option<Vec<f32>>,
    /// Value bias, `[kv_dim]`.
    pub bv: Option<Vec<f32>>,
    /// Attention output projection, `[d_model, q_dim]`.
    pub wo: Matrix,
    /// RMSNorm weight before the feed-forward, `[d_model]`.
    pub ffn_norm: Vec<f32>,
    /// SwiGLU gate projection, `[ffn, d_model]`.
    pub w_gate: Matrix,
    /// SwiGLU up projection, `[ffn, d_model]`.
    pub w_up: Matrix,
    /// Feed-forward down projection, `[d_model, ffn]`.
    pub w_down: Matrix,
}

/// A whole decoder.
#[derive(Clone, Debug)]
pub struct DecoderWeights {
    /// Its hyperparameters.
    pub config: DecoderConfig,
    /// Token embeddings, `[vocab, d_model]`.
    pub embed: Matrix,
    /// The blocks, first to last.
    pub layers: Vec<LayerWeights>,
    /// Final RMSNorm weight, `[d_model]`.
    pub norm: Vec<f32>,
    /// The output head `[vocab, d_model]`; `None` when tied to `embed`.
    pub output: Option<Matrix>,
}

impl DecoderWeights {
    /// The output head (the embedding when tied).
    pub fn head(&self) -> &Matrix {
        self.output.as_ref().unwrap_or(&self.embed)
    }

    /// Bytes of all weights as stored.
    pub fn stored_bytes(&self) -> usize {
        let layer = |l: &LayerWeights| {
            [&l.wq, &l.wk, &l.wv, &l.wo, &l.w_gate, &l.w_up, &l.w_down]
                .iter()
                .map(|m| m.stored_bytes())
                .sum::<usize>()
                + 4 * (l.attn_norm.len() + l.ffn_norm.len())
                + 4 * [&l.bq, &l.bk, &l.bv]
                    .iter()
                    .map(|b| b.as_ref().map_or(0, |b| b.len()))
                    .sum::<usize>()
        };
        self.embed.stored_bytes()
            + self.layers.iter().map(layer).sum::<usize>()
            + 4 * self.norm.len()
            + self.output.as_ref().map_or(0, |m| m.stored_bytes())
    }
}
