//! Random weights of a real model's shape, built on the spot (as vLLM's
//! dummy load format does), so decoding speed can be measured at sizes no
//! package ships and on machines the files cannot travel to. The values are
//! random; only the shapes, formats and bytes read per token are real.

use half::f16;
use rayon::prelude::*;

use crate::error::GenerateError;
use crate::generate::{DecoderConfig, DecoderWeights, LayerWeights, Matrix, RopeLayout};
use crate::linalg::ggml::{BlockFormat, QMatrix};

/// A named shape: `(name, d_model, layers, heads, kv_heads, head_dim, ffn,
/// vocab, rope θ, architecture)`.
type Preset = (
    &'static str,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    usize,
    f32,
    &'static str,
);

/// The shapes of real models.
const PRESETS: &[Preset] = &[
    ("smollm2-135m", 576, 30, 9, 3, 64, 1536, 49152, 1e5, "llama"),
    ("qwen2-0.5b", 896, 24, 14, 2, 64, 4864, 151_936, 1e6, "qwen2"),
    ("llama-1b", 2048, 16, 32, 8, 64, 8192, 128_256, 5e5, "llama"),
    ("llama-3b", 3072, 28, 24, 8, 128, 8192, 128_256, 5e5, "llama"),
    ("llama-8b", 4096, 32, 32, 8, 128, 14336, 128_256, 5e5, "llama"),
];

/// The names [`preset`] knows.
pub fn preset_names() -> Vec<&'static str> {
    PRESETS.iter().map(|p| p.0).collect()
}

/// The configuration of a named shape (`llama-1b`, `qwen2-0.5b`, ...).
pub fn preset(name: &str) -> Result<DecoderConfig, GenerateError> {
    let p = PRESETS
        .iter()
        .find(|p| p.0 == name)
        .ok_or_else(|| GenerateError::Config {
            key: "synthetic".to_string(),
            message: format!("unknown shape `{name}`; known: {}", preset_names().join(", ")),
        })?;
    Ok(DecoderConfig {
        architecture: p.9.to_string(),
        vocab: p.7,
        d_model: p.1,
        n_layers: p.2,
        n_heads: p.3,
        n_kv_heads: p.4,
        head_dim: p.5,
        ffn: p.6,
        rope_theta: p.8,
        rope_scaling: Default::default(),
        rope_dims: p.5,
        rope_layout: if p.9 == "qwen2" {
            RopeLayout::Halves
        } else {
            RopeLayout::Adjacent
        },
        norm_eps: 1e-5,
        trained_context: 4096,
    })
}

/// splitmix64: a seeded stream of random words.
fn splitmix(state: &mut u64) -> u64 {
    *state = state.wrapping_add(0x9E37_79B9_7F4A_7C15);
    let mut z = *state;
    z = (z ^ (z >> 30)).wrapping_mul(0xBF58_476D_1CE4_E5B9);
    z = (z ^ (z >> 27)).wrapping_mul(0x94D0_49BB_1331_11EB);
    z ^ (z >> 31)
}

/// Where a block keeps its f16 scale (`d`) and minimum/second scale, if any.
fn scale_offsets(format: BlockFormat) -> (usize, Option<usize>) {
    match format {
        BlockFormat::Q4_0 | BlockFormat::Q5_0 | BlockFormat::Q8_0 => (0, None),
        BlockFormat::Q4_1 | BlockFormat::Q5_1 | BlockFormat::Q4_K | BlockFormat::Q5_K => (0, Some(2)),
        BlockFormat::Q6_K => (208, None),
    }
}

/// A `rows × cols` matrix of random blocks whose f16 scales are set so the
/// weights have a spread of about `1/sqrt(cols)`.
fn random_matrix(format: Option<BlockFormat>, rows: usize, cols: usize, seed: u64) -> Result<Matrix, GenerateError> {
    let scale = 1.0 / (cols as f32).sqrt();
    let Some(format) = format else {
        let data = (0..rows * cols)
            .into_par_iter()
            .map(|i| {
                let mut s = seed ^ (i as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
                f16::from_f32(((splitmix(&mut s) >> 40) as f32 / (1u64 << 24) as f32 - 0.5) * 3.4 * scale)
            })
            .collect();
        return Ok(Matrix::F16 { rows, cols, data });
    };
    let row_bytes = format.row_bytes(cols).ok_or_else(|| GenerateError::Config {
        key: "synthetic".to_string(),
        message: format!("rows of {cols} are not whole {} blocks", format.name()),
    })?;
    let mut data = vec![0u8; rows * row_bytes];
    let (d_at, m_at) = scale_offsets(format);
    let levels = match format {
        BlockFormat::Q8_0 => 127.0,
        BlockFormat::Q4_0 | BlockFormat::Q4_1 => 8.0,
        BlockFormat::Q5_0 | BlockFormat::Q5_1 => 16.0,
        BlockFormat::Q4_K | BlockFormat::Q5_K => 8.0 * 32.0,
        BlockFormat::Q6_K => 32.0 * 64.0,
    };
    data.par_chunks_mut(row_bytes).enumerate().for_each(|(r, row)| {
        let mut s = seed ^ (r as u64).wrapping_mul(0x2545_F491_4F6C_DD1D);
        for chunk in row.chunks_mut(8) {
            let w = splitmix(&mut s).to_le_bytes();
            chunk.copy_from_slice(&w[..chunk.len()]);
        }
        for block in row.chunks_exact_mut(format.block_bytes()) {
            block[d_at..d_at + 2].copy_from_slice(&f16::from_f32(1.7 * scale / levels).to_le_bytes());
            if let Some(m) = m_at {
                let min = if format == BlockFormat::Q4_1 || format == BlockFormat::Q5_1 {
                    -1.7 * scale
                } else {
                    1.7 * scale / 32.0
                };
                block[m..m + 2].copy_from_slice(&f16::from_f32(min).to_le_bytes());
            }
        }
    });
    Ok(Matrix::Quant(QMatrix::new(format, rows, cols, data)?))
}

/// Random weights for `config`, matrices in `format` (`None`: f16), norms 1.
pub fn random_weights(
    config: DecoderConfig,
    format: Option<BlockFormat>,
    seed: u64,
) -> Result<DecoderWeights, GenerateError> {
    crate::generate::load::validate(&config)?;
    let c = &config;
    let (d, q, kv, f) = (c.d_model, c.q_dim(), c.kv_dim(), c.ffn);
    let mut layers = Vec::with_capacity(c.n_layers);
    for l in 0..c.n_layers {
        let s = seed.wrapping_add(1000 * l as u64);
        let m = |i: u64, rows: usize, cols: usize| random_matrix(format, rows, cols, s + i);
        layers.push(LayerWeights {
            attn_norm: vec![1.0; d],
            wq: m(1, q, d)?,
            wk: m(2, kv, d)?,
            wv: m(3, kv, d)?,
            bq: None,
            bk: None,
            bv: None,
            wo: m(4, d, q)?,
            ffn_norm: vec![1.0; d],
            w_gate: m(5, f, d)?,
            w_up: m(6, f, d)?,
            w_down: m(7, d, f)?,
        });
    }
    Ok(DecoderWeights {
        embed: random_matrix(format, c.vocab, d, seed.wrapping_sub(1))?,
        layers,
        norm: vec![1.0; d],
        output: None,
        config,
    })
}
