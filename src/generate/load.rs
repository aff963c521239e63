//! Builds [`DecoderWeights`] from a GGUF file of the llama family (`llama`,
//! `mistral`, `qwen2`): hyperparameters from `{arch}.*` metadata, tensors by
//! llama.cpp's names (`blk.N.attn_q.weight`, ...), block formats kept packed.

use half::f16;

use crate::error::GenerateError;
use crate::generate::config::RopeScaling;
use crate::generate::{DecoderConfig, DecoderWeights, LayerWeights, Matrix, RopeLayout};
use crate::linalg::ggml::{BlockFormat, QMatrix};
use crate::model::gguf::{GgmlType, GgufFile, TensorInfo};

/// Largest dimension a loaded decoder may declare (guards allocations
/// computed from metadata).
pub(crate) const MAX_DIM: usize = 1 << 24;

/// How each supported architecture rotates positions: llama.cpp's converter
/// permutes the Q/K rows of `llama`-style files into adjacent pairs, and
/// leaves `qwen2`'s in halves.
fn rope_layout(arch: &str) -> Option<RopeLayout> {
    match arch {
        "llama" | "mistral" | "granite" => Some(RopeLayout::Adjacent),
        "qwen2" => Some(RopeLayout::Halves),
        _ => None,
    }
}

fn meta_usize(file: &GgufFile, key: &str, default: Option<usize>) -> Result<usize, GenerateError> {
    let value = match file.get_u64(key) {
        Some(v) => usize::try_from(v).ok(),
        None if file.metadata(key).is_some() => None,
        None => default,
    };
    match value {
        Some(v) if v > 0 && v <= MAX_DIM => Ok(v),
        Some(v) => Err(GenerateError::Config {
            key: key.to_string(),
            message: format!("{v} is outside 1..={MAX_DIM}"),
        }),
        None => Err(GenerateError::Config {
            key: key.to_string(),
            message: "missing, or not an unsigned integer".to_string(),
        }),
    }
}

fn meta_f32(file: &GgufFile, key: &str, default: f32) -> Result<f32, GenerateError> {
    match file.metadata(key) {
        None => Ok(default),
        Some(_) => match file.get_f64(key) {
            Some(v) if v.is_finite() && v > 0.0 => Ok(v as f32),
            _ => Err(GenerateError::Config {
                key: key.to_string(),
                message: "must be a positive finite number".to_string(),
            }),
        },
    }
}

/// Reads the hyperparameters of a llama-family GGUF file.
pub fn gguf_config(file: &GgufFile) -> Result<DecoderConfig, GenerateError> {
    let arch = file
        .get_str("general.architecture")
        .ok_or_else(|| GenerateError::Config {
            key: "general.architecture".to_string(),
            message: "missing".to_string(),
        })?;
    let rope_layout = rope_layout(arch).ok_or_else(|| GenerateError::Architecture(arch.to_string()))?;
    let key = |k: &str| format!("{arch}.{k}");
    let d_model = meta_usize(file, &key("embedding_length"), None)?;
    let n_heads = meta_usize(file, &key("attention.head_count"), None)?;
    let n_kv_heads = meta_usize(file, &key("attention.head_count_kv"), Some(n_heads))?;
    let head_dim = meta_usize(file, &key("attention.key_length"), Some(d_model / n_heads.max(1)))?;
    let vocab = match file.tensor("token_embd.weight") {
        Some(t) if t.dims.len() == 2 => usize::try_from(t.dims[1]).unwrap_or(usize::MAX),
        _ => return Err(GenerateError::MissingTensor("token_embd.weight".to_string())),
    };
    let rope_dims = meta_usize(file, &key("rope.dimension_count"), Some(head_dim))?;
    let config = DecoderConfig {
        rope_scaling: gguf_rope_scaling(file, arch, rope_dims)?,
        architecture: arch.to_string(),
        vocab,
        d_model,
        n_layers: meta_usize(file, &key("block_count"), None)?,
        n_heads,
        n_kv_heads,
        head_dim,
        ffn: meta_usize(file, &key("feed_forward_length"), None)?,
        rope_theta: meta_f32(file, &key("rope.freq_base"), 10_000.0)?,
        rope_dims,
        rope_layout,
        norm_eps: meta_f32(file, &key("attention.layer_norm_rms_epsilon"), 1e-5)?,
        trained_context: meta_usize(file, &key("context_length"), Some(2048))?,
    };
    validate(&config)?;
    Ok(config)
}

/// RoPE scaling: the `rope_freqs` tensor (one divisor per frequency, as
/// llama.cpp writes Llama 3 files), else `{arch}.rope.scaling.type` `linear`
/// with its `factor`; other types (yarn) are refused.
fn gguf_rope_scaling(file: &GgufFile, arch: &str, rope_dims: usize) -> Result<RopeScaling, GenerateError> {
    if file.tensor("rope_freqs.weight").is_some() {
        let factors = vector(file, "rope_freqs.weight", rope_dims / 2)?;
        if factors.iter().any(|f| !(f.is_finite() && *f > 0.0)) {
            return Err(GenerateError::Tensor {
                name: "rope_freqs.weight".to_string(),
                message: "holds a factor that is not a positive finite number".to_string(),
            });
        }
        return Ok(RopeScaling::Factors(factors));
    }
    let kind_key = format!("{arch}.rope.scaling.type");
    match file.get_str(&kind_key) {
        None | Some("none") => Ok(RopeScaling::None),
        Some("linear") => Ok(RopeScaling::Linear(meta_f32(
            file,
            &format!("{arch}.rope.scaling.factor"),
            1.0,
        )?)),
        Some(other) => Err(GenerateError::Config {
            key: kind_key,
            message: format!("`{other}`: only linear scaling and per-frequency factors (rope_freqs) are supported"),
        }),
    }
}

/// Checks that the hyperparameters fit together.
pub fn validate(c: &DecoderConfig) -> Result<(), GenerateError> {
    let bad = |key: &str, message: String| {
        Err(GenerateError::Config {
            key: key.to_string(),
            message,
        })
    };
    if c.vocab == 0 || c.vocab > MAX_DIM {
        return bad("vocab", format!("{} is outside 1..={MAX_DIM}", c.vocab));
    }
    if c.n_kv_heads > c.n_heads || !c.n_heads.is_multiple_of(c.n_kv_heads) {
        return bad(
            "attention.head_count_kv",
            format!(
                "{} key/value heads do not divide {} query heads",
                c.n_kv_heads, c.n_heads
            ),
        );
    }
    if !c.rope_dims.is_multiple_of(2) || c.rope_dims > c.head_dim {
        return bad(
            "rope.dimension_count",
            format!("{} must be even and at most the head size {}", c.rope_dims, c.head_dim),
        );
    }
    if c.n_heads.checked_mul(c.head_dim).is_none_or(|q| q > MAX_DIM) {
        return bad(
            "attention.head_count",
            format!("{} heads of {} are too wide", c.n_heads, c.head_dim),
        );
    }
    Ok(())
}

fn tensor<'a>(file: &'a GgufFile, name: &str) -> Result<(&'a TensorInfo, &'a [u8]), GenerateError> {
    let info = file
        .tensor(name)
        .ok_or_else(|| GenerateError::MissingTensor(name.to_string()))?;
    let bytes = file
        .tensor_bytes(name)
        .ok_or_else(|| GenerateError::MissingTensor(name.to_string()))?;
    Ok((info, bytes))
}

fn shape_error(name: &str, info: &TensorInfo, expected: &str) -> GenerateError {
    GenerateError::Tensor {
        name: name.to_string(),
        message: format!("has dims {:?} ({}); expected {expected}", info.dims, info.ggml_type),
    }
}

/// A `[len]` vector (norm weights, biases) as f32.
fn vector(file: &GgufFile, name: &str, len: usize) -> Result<Vec<f32>, GenerateError> {
    let (info, bytes) = tensor(file, name)?;
    if info.dims.iter().product::<u64>() != len as u64 {
        return Err(shape_error(name, info, &format!("{len} elements")));
    }
    match info.ggml_type {
        GgmlType::F32 => Ok(bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect()),
        GgmlType::F16 => Ok(bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect()),
        GgmlType::BF16 => Ok(bytes
            .chunks_exact(2)
            .map(|b| f32::from_bits(u32::from(u16::from_le_bytes([b[0], b[1]])) << 16))
            .collect()),
        other => Err(GenerateError::Tensor {
            name: name.to_string(),
            message: format!("type {other} is not supported for a vector (F32, F16, BF16 are)"),
        }),
    }
}

fn vector_opt(file: &GgufFile, name: &str, len: usize) -> Result<Option<Vec<f32>>, GenerateError> {
    if file.tensor(name).is_some() {
        vector(file, name, len).map(Some)
    } else {
        Ok(None)
    }
}

/// A `[rows, cols]` matrix (GGUF dims `[cols, rows]`), packed formats kept packed.
fn matrix(file: &GgufFile, name: &str, rows: usize, cols: usize) -> Result<Matrix, GenerateError> {
    let (info, bytes) = tensor(file, name)?;
    if info.dims.len() != 2 || info.dims[0] != cols as u64 || info.dims[1] != rows as u64 {
        return Err(shape_error(name, info, &format!("dims [{cols}, {rows}]")));
    }
    let unsupported = |t: GgmlType| {
        GenerateError::Tensor {
        name: name.to_string(),
        message: format!(
            "type {t} is not supported for a matrix (F32, F16, BF16, Q4_0, Q4_1, Q5_0, Q5_1, Q8_0, Q4_K, Q5_K, Q6_K are)"
        ),
    }
    };
    Ok(match info.ggml_type {
        GgmlType::F32 => Matrix::F32 {
            rows,
            cols,
            data: vector(file, name, rows * cols)?,
        },
        GgmlType::BF16 => Matrix::F32 {
            rows,
            cols,
            data: vector(file, name, rows * cols)?,
        },
        GgmlType::F16 => Matrix::F16 {
            rows,
            cols,
            data: bytes
                .chunks_exact(2)
                .map(|b| f16::from_le_bytes([b[0], b[1]]))
                .collect(),
        },
        t => {
            let format = BlockFormat::from_name(t.name()).ok_or_else(|| unsupported(t))?;
            let q = QMatrix::new(format, rows, cols, bytes.to_vec()).map_err(|e| GenerateError::Tensor {
                name: name.to_string(),
                message: e.to_string(),
            })?;
            Matrix::Quant(q)
        }
    })
}

fn layer(file: &GgufFile, c: &DecoderConfig, i: usize) -> Result<LayerWeights, GenerateError> {
    let n = |s: &str| format!("blk.{i}.{s}");
    let (d, q, kv, f) = (c.d_model, c.q_dim(), c.kv_dim(), c.ffn);
    Ok(LayerWeights {
        attn_norm: vector(file, &n("attn_norm.weight"), d)?,
        wq: matrix(file, &n("attn_q.weight"), q, d)?,
        wk: matrix(file, &n("attn_k.weight"), kv, d)?,
        wv: matrix(file, &n("attn_v.weight"), kv, d)?,
        bq: vector_opt(file, &n("attn_q.bias"), q)?,
        bk: vector_opt(file, &n("attn_k.bias"), kv)?,
        bv: vector_opt(file, &n("attn_v.bias"), kv)?,
        wo: matrix(file, &n("attn_output.weight"), d, q)?,
        ffn_norm: vector(file, &n("ffn_norm.weight"), d)?,
        w_gate: matrix(file, &n("ffn_gate.weight"), f, d)?,
        w_up: matrix(file, &n("ffn_up.weight"), f, d)?,
        w_down: matrix(file, &n("ffn_down.weight"), d, f)?,
    })
}

/// Loads a llama-family decoder from a parsed GGUF file.
pub fn from_gguf(file: &GgufFile) -> Result<DecoderWeights, GenerateError> {
    let config = gguf_config(file)?;
    let (d, v) = (config.d_model, config.vocab);
    let layers = (0..config.n_layers)
        .map(|i| layer(file, &config, i))
        .collect::<Result<Vec<_>, _>>()?;
    let output = if file.tensor("output.weight").is_some() {
        Some(matrix(file, "output.weight", v, d)?)
    } else {
        None
    };
    Ok(DecoderWeights {
        embed: matrix(file, "token_embd.weight", v, d)?,
        layers,
        norm: vector(file, "output_norm.weight", d)?,
        output,
        config,
    })
}
