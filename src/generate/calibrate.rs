//! Calibration of decoders on text, and the two quantizers that use it.
//!
//! The model runs over calibration chunks (token ids, a few hundred each) on
//! the CPU, layer by layer ([`CpuModel::layer_pass`]), and each layer's
//! matrix inputs ([`LayerInput`]) are summarized as [`InputStats`]: `H = Σ x xᵀ`
//! (f64) and the largest `|x_j|` per input channel.
//!
//! - [`gptq_decoder`]: GPTQ onto ggml block formats
//!   ([`quantize_blocks_gptq`]), sequentially: a layer's inputs come from the
//!   layers before it *as quantized*, and inside a layer the matrices go in
//!   four stages (Q/K/V, the output projection, gate/up, down), each
//!   calibrated on inputs computed with the stages before it quantized (the
//!   reference implementation's `--true-sequential`).
//! - [`smooth_decoder`]: SmoothQuant's migration of activation outliers into
//!   the weights, `s_j = max|X_j|^α / max|W_j|^(1−α)` per input channel,
//!   folded into the RMSNorm weight before Q/K/V and before gate/up, and into
//!   up's rows before down. The result is the same function (up to f32
//!   rounding) with flatter activations; quantize it with Q8_0 for W8A8.
//!
//! Embeddings and the output head are left as they are.

use std::sync::Arc;

use rayon::prelude::*;

use crate::error::GenerateError;
use crate::generate::cache::KvCache;
use crate::generate::cpu::{CpuModel, LayerInput};
use crate::generate::{DecoderWeights, LayerWeights, Matrix};
use crate::linalg::ggml::{BlockFormat, QMatrix};
use crate::linalg::{sgemm, MatRef};
use crate::quant::gptq::{Factor, GptqOptions};
use crate::quant::gptq_ggml::quantize_blocks_gptq;

/// Calibration chunks: `ids` cut into chunks of at most `chunk` tokens, at
/// most `max_tokens` in all (a partial last chunk is kept), each with its
/// first token replaced by `bos` when given (as perplexity runs them).
/// Fails when `ids` is empty or `chunk` is under 2.
pub fn chunks(ids: &[u32], chunk: usize, max_tokens: usize, bos: Option<u32>) -> Result<Vec<Vec<u32>>, GenerateError> {
    if chunk < 2 {
        return Err(GenerateError::Calibration(format!(
            "chunks of {chunk} tokens are too short: use at least 2"
        )));
    }
    let ids = &ids[..ids.len().min(max_tokens)];
    if ids.is_empty() {
        return Err(GenerateError::Calibration(
            "the calibration text has no tokens (or the token budget is 0)".to_string(),
        ));
    }
    Ok(ids
        .chunks(chunk)
        .map(|c| {
            let mut c = c.to_vec();
            if let Some(b) = bos {
                c[0] = b;
            }
            c
        })
        .collect())
}

/// What the calibration chunks show of one matrix input.
#[derive(Clone, Debug)]
pub struct InputStats {
    /// Input channels.
    pub dim: usize,
    /// Rows (tokens) seen.
    pub rows: usize,
    /// `Σ x xᵀ`, `dim × dim` row-major.
    pub h: Vec<f64>,
    /// `max |x_j|` per channel.
    pub max_abs: Vec<f32>,
}

impl InputStats {
    /// Nothing seen yet.
    pub fn new(dim: usize) -> Self {
        Self {
            dim,
            rows: 0,
            h: vec![0.0; dim * dim],
            max_abs: vec![0.0; dim],
        }
    }

    /// Adds rows of `dim` values: `H += XᵀX` (an f32 product per call,
    /// summed in f64) and the channel maxima.
    pub fn add(&mut self, x: &[f32]) -> Result<(), GenerateError> {
        let (d, n) = (self.dim, x.len() / self.dim.max(1));
        let mut xtx = vec![0f32; d * d];
        sgemm(MatRef::transposed(x, d, n), MatRef::row_major(x, n, d), &mut xtx, false)?;
        self.h.par_iter_mut().zip(&xtx).for_each(|(h, v)| *h += f64::from(*v));
        for row in x.chunks_exact(d) {
            for (m, v) in self.max_abs.iter_mut().zip(row) {
                *m = m.max(v.abs());
            }
        }
        self.rows += n;
        Ok(())
    }
}

/// The width of `at` in a model.
fn input_dim(model: &CpuModel, at: LayerInput) -> usize {
    let c = &model.weights().config;
    match at {
        LayerInput::Attention | LayerInput::FeedForward => c.d_model,
        LayerInput::AttentionOutput => c.q_dim(),
        LayerInput::FeedForwardHidden => c.ffn,
    }
}

/// Runs layer `li` with `w` over every chunk's input `xs` (each left as it
/// is unless `advance`, which replaces it by the layer's output) and
/// collects the statistics of the inputs in `wanted`.
fn layer_stats(
    model: &CpuModel,
    li: usize,
    w: &LayerWeights,
    xs: &mut [Vec<f32>],
    cache: &mut KvCache,
    wanted: &[LayerInput],
    advance: bool,
) -> Result<Vec<InputStats>, GenerateError> {
    let mut stats: Vec<InputStats> = wanted.iter().map(|&at| InputStats::new(input_dim(model, at))).collect();
    let mut failed = None;
    for x in xs.iter_mut() {
        let mut scratch;
        let rows: &mut [f32] = if advance {
            x
        } else {
            scratch = x.clone();
            &mut scratch
        };
        cache.len = 0;
        let mut observe = |at: LayerInput, v: &[f32]| {
            if let Some(i) = wanted.iter().position(|&a| a == at) {
                if let Err(e) = stats[i].add(v) {
                    failed = Some(e);
                }
            }
        };
        model.layer_pass(li, w, rows, cache, &mut observe)?;
    }
    match failed {
        Some(e) => Err(e),
        None => Ok(stats),
    }
}

/// The embedding rows of each chunk.
fn embed(weights: &DecoderWeights, chunks: &[Vec<u32>]) -> Result<Vec<Vec<f32>>, GenerateError> {
    let (d, vocab) = (weights.config.d_model, weights.config.vocab);
    chunks
        .iter()
        .map(|c| {
            let mut x = vec![0f32; c.len() * d];
            for (row, &t) in x.chunks_exact_mut(d).zip(c) {
                if t as usize >= vocab {
                    return Err(GenerateError::TokenId { id: t, vocab });
                }
                weights.embed.dequantize_row(t as usize, row);
            }
            Ok(x)
        })
        .collect()
}

/// A model over `weights` with a cache for the longest chunk.
fn calibration_model(weights: Arc<DecoderWeights>, chunks: &[Vec<u32>]) -> Result<(CpuModel, KvCache), GenerateError> {
    let longest = chunks.iter().map(Vec::len).max().unwrap_or(0);
    if longest == 0 {
        return Err(GenerateError::Calibration("no calibration tokens".to_string()));
    }
    let model = CpuModel::new(weights, longest)?;
    let cache = model.new_cache(longest)?;
    Ok((model, cache))
}

/// The rows of `m` as f32.
fn rows_f32(m: &Matrix) -> Vec<f32> {
    let cols = m.cols();
    let mut out = vec![0f32; m.rows() * cols];
    out.par_chunks_mut(cols.max(1))
        .enumerate()
        .for_each(|(r, row)| m.dequantize_row(r, row));
    out
}

/// A layer's matrices by stage: each stage's input and the matrices that
/// read it, with their GGUF names (`blk.N.` + name).
fn stages(w: &mut LayerWeights) -> [(LayerInput, Vec<(&'static str, &mut Matrix)>); 4] {
    [
        (
            LayerInput::Attention,
            vec![("attn_q", &mut w.wq), ("attn_k", &mut w.wk), ("attn_v", &mut w.wv)],
        ),
        (LayerInput::AttentionOutput, vec![("attn_output", &mut w.wo)]),
        (
            LayerInput::FeedForward,
            vec![("ffn_gate", &mut w.w_gate), ("ffn_up", &mut w.w_up)],
        ),
        (LayerInput::FeedForwardHidden, vec![("ffn_down", &mut w.w_down)]),
    ]
}

/// What [`gptq_decoder`] did.
#[derive(Clone, Debug, Default, PartialEq)]
pub struct GptqReport {
    /// Calibration tokens per layer input.
    pub tokens: usize,
    /// Matrices quantized by GPTQ, by format (`Q4_0`), in name order.
    pub matrices: Vec<(String, usize)>,
    /// Layer matrices left as they were (no block format for them).
    pub skipped: usize,
}

/// GPTQ of every layer matrix of `weights` onto the block format
/// `format_of(gguf_name, cols)` picks (`None`: left as it is, for the
/// export to store), calibrated on `chunks` of token ids; `on_layer(i, n)`
/// after each layer. Returns the weights with those matrices packed (the
/// embeddings, norms and head unchanged).
pub fn gptq_decoder(
    weights: Arc<DecoderWeights>,
    chunks: &[Vec<u32>],
    format_of: &dyn Fn(&str, usize) -> Option<BlockFormat>,
    opts: &GptqOptions,
    mut on_layer: impl FnMut(usize, usize),
) -> Result<(DecoderWeights, GptqReport), GenerateError> {
    let mut xs = embed(&weights, chunks)?;
    let (model, mut cache) = calibration_model(weights.clone(), chunks)?;
    let n_layers = weights.layers.len();
    let mut report = GptqReport {
        tokens: chunks.iter().map(Vec::len).sum(),
        ..Default::default()
    };
    let mut layers = Vec::with_capacity(n_layers);
    for li in 0..n_layers {
        let mut w = weights.layers[li].clone();
        for stage in 0..4 {
            let at = stages(&mut w)[stage].0;
            let stats = layer_stats(&model, li, &w, &mut xs, &mut cache, &[at], false)?;
            let st = &stats[0];
            let factor = Factor::new(&st.h, st.dim, opts)?;
            for (name, m) in stages(&mut w)[stage].1.iter_mut() {
                let full = format!("blk.{li}.{name}.weight");
                let Some(f) = format_of(&full, m.cols()) else {
                    report.skipped += 1;
                    continue;
                };
                let (rows, cols) = (m.rows(), m.cols());
                let data = quantize_blocks_gptq(f, &rows_f32(m), rows, cols, &factor, opts)?;
                **m = Matrix::Quant(QMatrix::new(f, rows, cols, data)?);
                match report.matrices.iter_mut().find(|(n, _)| n == f.name()) {
                    Some((_, c)) => *c += 1,
                    None => report.matrices.push((f.name().to_string(), 1)),
                }
            }
        }
        layer_stats(&model, li, &w, &mut xs, &mut cache, &[], true)?;
        layers.push(w);
        on_layer(li + 1, n_layers);
    }
    report.matrices.sort();
    drop(model);
    let mut out = Arc::try_unwrap(weights).unwrap_or_else(|a| (*a).clone());
    out.layers = layers;
    Ok((out, report))
}

/// SmoothQuant's per-channel factors for inputs whose largest magnitudes
/// are `x_max` and whose matrices' largest magnitudes per input column are
/// `w_max`: `s = x_max^α / w_max^(1−α)`, 1 where either is zero, clamped
/// to `[1e-5, 1e5]`.
pub fn smooth_factors(x_max: &[f32], w_max: &[f32], alpha: f32) -> Vec<f32> {
    x_max
        .iter()
        .zip(w_max)
        .map(|(&x, &w)| {
            if x > 0.0 && w > 0.0 && x.is_finite() && w.is_finite() {
                (x.powf(alpha) / w.powf(1.0 - alpha)).clamp(1e-5, 1e5)
            } else {
                1.0
            }
        })
        .collect()
}

/// Largest magnitude per input column over `ms` (all `cols` wide).
fn column_max(ms: &[&[f32]], cols: usize) -> Vec<f32> {
    let mut out = vec![0f32; cols];
    for m in ms {
        for row in m.chunks_exact(cols) {
            for (o, v) in out.iter_mut().zip(row) {
                *o = o.max(v.abs());
            }
        }
    }
    out
}

fn scale_columns(w: &mut [f32], s: &[f32]) {
    for row in w.chunks_exact_mut(s.len()) {
        for (v, f) in row.iter_mut().zip(s) {
            *v *= f;
        }
    }
}

fn f32_matrix(rows: usize, cols: usize, data: Vec<f32>) -> Matrix {
    Matrix::F32 { rows, cols, data }
}

/// What [`smooth_decoder`] did: per layer, the largest factor of each
/// smoothed input (Q/K/V, gate/up, down).
#[derive(Clone, Debug, Default, PartialEq)]
pub struct SmoothReport {
    /// Calibration tokens.
    pub tokens: usize,
    /// Per layer, `max s_j` for the attention, feed-forward and down inputs.
    pub max_factor: Vec<[f32; 3]>,
}

/// SmoothQuant on every layer of `weights` with strength `alpha` (0.5 in
/// the paper), calibrated on `chunks` of token ids run through the original
/// model. Smoothed matrices become f32; the rest is unchanged.
pub fn smooth_decoder(
    weights: Arc<DecoderWeights>,
    chunks: &[Vec<u32>],
    alpha: f32,
) -> Result<(DecoderWeights, SmoothReport), GenerateError> {
    if !(0.0..=1.0).contains(&alpha) {
        return Err(GenerateError::Calibration(format!(
            "SmoothQuant's alpha {alpha} is not in [0, 1]"
        )));
    }
    let mut xs = embed(&weights, chunks)?;
    let (model, mut cache) = calibration_model(weights.clone(), chunks)?;
    let wanted = [
        LayerInput::Attention,
        LayerInput::FeedForward,
        LayerInput::FeedForwardHidden,
    ];
    let mut report = SmoothReport {
        tokens: chunks.iter().map(Vec::len).sum(),
        ..Default::default()
    };
    let mut layers = Vec::with_capacity(weights.layers.len());
    for (li, w) in weights.layers.iter().enumerate() {
        let stats = layer_stats(&model, li, w, &mut xs, &mut cache, &wanted, true)?;
        let (smoothed, maxes) = smooth_layer(w, [&stats[0].max_abs, &stats[1].max_abs, &stats[2].max_abs], alpha);
        report.max_factor.push(maxes);
        layers.push(smoothed);
    }
    drop(model);
    let mut out = Arc::try_unwrap(weights).unwrap_or_else(|a| (*a).clone());
    out.layers = layers;
    Ok((out, report))
}

/// One layer smoothed with the input maxima `[attention, feed-forward,
/// down]`; returns it and the largest factor of each.
fn smooth_layer(w: &LayerWeights, x_max: [&[f32]; 3], alpha: f32) -> (LayerWeights, [f32; 3]) {
    let (d, f) = (w.wq.cols(), w.w_down.cols());
    let [mut q, mut k, mut v, mut gate, mut up, mut down] =
        [&w.wq, &w.wk, &w.wv, &w.w_gate, &w.w_up, &w.w_down].map(rows_f32);
    let s_att = smooth_factors(x_max[0], &column_max(&[&q, &k, &v], d), alpha);
    let s_ffn = smooth_factors(x_max[1], &column_max(&[&gate, &up], d), alpha);
    let s_down = smooth_factors(x_max[2], &column_max(&[&down], f), alpha);
    for m in [&mut q, &mut k, &mut v] {
        scale_columns(m, &s_att);
    }
    for m in [&mut gate, &mut up] {
        scale_columns(m, &s_ffn);
    }
    // down's input is silu(gate)·up: channel j divided by s_j through up's row j.
    for (row, s) in up.chunks_exact_mut(d).zip(&s_down) {
        row.iter_mut().for_each(|x| *x /= s);
    }
    scale_columns(&mut down, &s_down);
    let divide = |norm: &[f32], s: &[f32]| norm.iter().zip(s).map(|(g, s)| g / s).collect::<Vec<f32>>();
    let max = |s: &[f32]| s.iter().fold(0f32, |m, &v| m.max(v));
    let maxes = [max(&s_att), max(&s_ffn), max(&s_down)];
    let smoothed = LayerWeights {
        attn_norm: divide(&w.attn_norm, &s_att),
        wq: f32_matrix(w.wq.rows(), d, q),
        wk: f32_matrix(w.wk.rows(), d, k),
        wv: f32_matrix(w.wv.rows(), d, v),
        bq: w.bq.clone(),
        bk: w.bk.clone(),
        bv: w.bv.clone(),
        wo: w.wo.clone(),
        ffn_norm: divide(&w.ffn_norm, &s_ffn),
        w_gate: f32_matrix(w.w_gate.rows(), d, gate),
        w_up: f32_matrix(w.w_up.rows(), d, up),
        w_down: f32_matrix(w.w_down.rows(), f, down),
    };
    (smoothed, maxes)
}
