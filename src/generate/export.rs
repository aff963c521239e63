//! GGUF export of decoder language models: a decoder wginfer loads (a GGUF
//! file or a Hugging Face `*ForCausalLM` directory) written as a GGUF file
//! llama.cpp loads, with its tokenizer and chat template.
//!
//! - Architecture: `qwen2` stays `qwen2`; every other llama-family decoder
//!   is written as `llama`, whose RoPE rotates adjacent pairs. Hugging Face
//!   checkpoints rotate halves, so their Q and K rows (and biases) are
//!   permuted per head as llama.cpp's `convert_hf_to_gguf.py` does:
//!   row `2i + s` of a head takes row `s·head_dim/2 + i`. Row permutations
//!   act on whole rows, so packed block rows are permuted as they are.
//! - Metadata: `{arch}.*` hyperparameters from the decoder's
//!   [`DecoderConfig`]; from a GGUF source every other entry is carried over
//!   (the tokenizer, the chat template, `general.*`); from a Hugging Face
//!   directory the tokenizer is built from `tokenizer.json` as the converter
//!   builds it (see [`hf_tokenizer_metadata`]).
//! - Weights ([`GgufWeightType`]): `keep` writes every matrix in the format
//!   it is held in (GGUF blocks byte for byte); `q8_0`, `q4_0`, `q4_1`,
//!   `q4_k`, `q5_k`, `q6_k` and `f16` re-quantize every 2-D matrix with
//!   ggml's reference quantizers ([`quantize_row`]); `q4_k_m` and `q5_k_m`
//!   mix them per tensor as `llama-quantize` does. A matrix already in its
//!   target format is copied; one whose rows are not whole blocks of its
//!   k-quant takes llama.cpp's fallback (Q5_0, Q5_1, Q8_0), and one whose
//!   rows are not whole 32-weight blocks is written as F16.
//!   Norm weights and biases are F32.

use std::path::Path;

use half::f16;
use rayon::prelude::*;
use serde_json::Value;

use crate::error::{GenerateError, GgufExportError};
use crate::generate::{DecoderConfig, DecoderWeights, Matrix, RopeLayout, RopeScaling};
use crate::linalg::ggml::{quantize_row, BlockFormat, QMatrix};
use crate::model::gguf::{check_target, GgmlType, GgufFile, GgufWriter, MetaValue};

/// How the exported matrices are stored.
#[allow(non_camel_case_types)]
#[derive(Clone, Copy, Debug, Default, PartialEq, Eq)]
pub enum GgufWeightType {
    /// As loaded: GGUF blocks copied, F16 and F32 matrices as they are.
    #[default]
    Keep,
    /// Every matrix re-quantized to Q8_0.
    Q8_0,
    /// Every matrix re-quantized to Q4_0.
    Q4_0,
    /// Every matrix re-quantized to Q4_1.
    Q4_1,
    /// Every matrix re-quantized to Q4_K (llama.cpp's fallback, Q5_0, where
    /// a row is not whole 256-weight blocks).
    Q4_K,
    /// Every matrix re-quantized to Q5_K (fallback Q5_1).
    Q5_K,
    /// Every matrix re-quantized to Q6_K (fallback Q8_0).
    Q6_K,
    /// llama.cpp's Q4_K_M mix: Q4_K, with Q6_K for the output head and for
    /// `attn_v` and `ffn_down` in the first and last eighth of the layers
    /// and every third layer between.
    Q4_K_M,
    /// llama.cpp's Q5_K_M mix: as Q4_K_M on Q5_K.
    Q5_K_M,
    /// Every matrix as F16.
    F16,
}

impl GgufWeightType {
    /// The block format most matrices get, if it is one.
    fn block_format(self) -> Option<BlockFormat> {
        match self {
            Self::Q8_0 => Some(BlockFormat::Q8_0),
            Self::Q4_0 => Some(BlockFormat::Q4_0),
            Self::Q4_1 => Some(BlockFormat::Q4_1),
            Self::Q4_K | Self::Q4_K_M => Some(BlockFormat::Q4_K),
            Self::Q5_K | Self::Q5_K_M => Some(BlockFormat::Q5_K),
            Self::Q6_K => Some(BlockFormat::Q6_K),
            Self::Keep | Self::F16 => None,
        }
    }

    /// The block format of the matrix `name` (llama.cpp's tensor names) of
    /// `cols` columns in a model of `layers` layers (`tied`: the embedding
    /// is the head), as llama.cpp's `llama-quantize` picks it for this type,
    /// with its fallback where a row is not whole blocks (`None`: F16, or
    /// stored as held for `keep`).
    pub fn format_for(self, name: &str, cols: usize, layers: usize, tied: bool) -> Option<BlockFormat> {
        let base = self.block_format()?;
        let mixed = matches!(self, Self::Q4_K_M | Self::Q5_K_M);
        let layer = name
            .strip_prefix("blk.")
            .and_then(|r| r.split('.').next())
            .and_then(|i| i.parse::<usize>().ok());
        let more_bits = |i: usize| i < layers / 8 || i >= 7 * layers / 8 || (i - layers / 8) % 3 == 2;
        let head = name == "output.weight" || (tied && name == "token_embd.weight");
        let chosen = match (mixed, layer) {
            (true, _) if head => {
                if cols.is_multiple_of(256) {
                    BlockFormat::Q6_K
                } else {
                    return Some(BlockFormat::Q8_0);
                }
            }
            (true, Some(i))
                if (name.ends_with("attn_v.weight") || name.ends_with("ffn_down.weight")) && more_bits(i) =>
            {
                BlockFormat::Q6_K
            }
            _ => base,
        };
        let fitted = match chosen {
            f if cols.is_multiple_of(f.block_len()) => f,
            BlockFormat::Q4_K => BlockFormat::Q5_0,
            BlockFormat::Q5_K => BlockFormat::Q5_1,
            BlockFormat::Q6_K => BlockFormat::Q8_0,
            _ => return None,
        };
        cols.is_multiple_of(fitted.block_len()).then_some(fitted)
    }
}

impl std::str::FromStr for GgufWeightType {
    type Err = String;
    fn from_str(s: &str) -> Result<Self, String> {
        match s.to_ascii_lowercase().as_str() {
            "keep" => Ok(Self::Keep),
            "q8_0" => Ok(Self::Q8_0),
            "q4_0" => Ok(Self::Q4_0),
            "q4_1" => Ok(Self::Q4_1),
            "q4_k" => Ok(Self::Q4_K),
            "q5_k" => Ok(Self::Q5_K),
            "q6_k" => Ok(Self::Q6_K),
            "q4_k_m" => Ok(Self::Q4_K_M),
            "q5_k_m" => Ok(Self::Q5_K_M),
            "f16" => Ok(Self::F16),
            _ => Err(format!(
                "GGUF weight type `{s}`: use keep, q8_0, q4_0, q4_1, q4_k, q5_k, q6_k, q4_k_m, q5_k_m or f16"
            )),
        }
    }
}

/// Options for [`export_decoder`].
#[derive(Clone, Copy, Debug, Default)]
pub struct GgufExportOptions {
    /// How matrices are stored.
    pub weight_type: GgufWeightType,
    /// Replace an existing output file (else it is an error).
    pub overwrite: bool,
}

/// What an export wrote.
#[derive(Clone, Debug, PartialEq)]
pub struct GgufExportReport {
    /// The `general.architecture` written.
    pub architecture: String,
    /// Tensors written.
    pub tensors: usize,
    /// Bytes of tensor data.
    pub data_bytes: usize,
    /// Matrices per stored type (`Q8_0`, `F16`), in name order.
    pub matrix_types: Vec<(String, usize)>,
}

/// Exports the decoder at `src` (a GGUF file or a Hugging Face directory)
/// to a GGUF file at `dst`.
pub fn export_decoder(src: &Path, dst: &Path, opts: &GgufExportOptions) -> Result<GgufExportReport, GgufExportError> {
    check_target(dst, opts.overwrite)?;
    let (weights, carried) = load_decoder(src)?;
    write_decoder(&weights, &carried, dst, opts)
}

/// The decoder at `src` (a GGUF file or a Hugging Face directory) and the
/// metadata its export carries over (see [`carried_metadata`] and
/// [`hf_tokenizer_metadata`]).
pub fn load_decoder(src: &Path) -> Result<(DecoderWeights, Vec<(String, MetaValue)>), GgufExportError> {
    let weights = if src.is_dir() {
        crate::generate::hf::from_dir(src)?
    } else {
        crate::generate::load::from_gguf(&GgufFile::open(src)?)?
    };
    let carried = source_metadata(src, weights.config.vocab)?;
    Ok((weights, carried))
}

/// The metadata an export of the decoder at `src` (of `vocab` tokens)
/// carries over: a GGUF file's [`carried_metadata`]; a directory's
/// [`hf_tokenizer_metadata`] and its name as `general.name`.
pub fn source_metadata(src: &Path, vocab: usize) -> Result<Vec<(String, MetaValue)>, GgufExportError> {
    if src.is_dir() {
        let mut carried = hf_tokenizer_metadata(src, vocab)?;
        let name = src.file_name().map(|n| n.to_string_lossy().into_owned());
        carried.extend(name.map(|n| ("general.name".to_string(), MetaValue::String(n))));
        Ok(carried)
    } else {
        Ok(carried_metadata(&GgufFile::open(src)?))
    }
}

/// Writes `weights` with `carried` metadata to a GGUF file at `dst` (as
/// [`export_decoder`] does once it has read them).
pub fn write_decoder(
    weights: &DecoderWeights,
    carried: &[(String, MetaValue)],
    dst: &Path,
    opts: &GgufExportOptions,
) -> Result<GgufExportReport, GgufExportError> {
    check_target(dst, opts.overwrite)?;
    let writer = decoder_gguf(weights, carried, opts.weight_type)?;
    writer.write(dst, opts.overwrite)?;
    Ok(report(&weights.config, &writer))
}

fn report(config: &DecoderConfig, writer: &GgufWriter) -> GgufExportReport {
    let types = writer.matrix_types();
    let mut counts: Vec<(String, usize)> = Vec::new();
    for t in types {
        match counts.iter_mut().find(|(n, _)| n == t.name()) {
            Some((_, c)) => *c += 1,
            None => counts.push((t.name().to_string(), 1)),
        }
    }
    counts.sort();
    GgufExportReport {
        architecture: target_architecture(config).to_string(),
        tensors: writer.tensor_count(),
        data_bytes: writer.data_bytes(),
        matrix_types: counts,
    }
}

/// The `general.architecture` a decoder is written as.
pub fn target_architecture(config: &DecoderConfig) -> &'static str {
    match config.architecture.as_str() {
        "qwen2" => "qwen2",
        _ => "llama",
    }
}

/// How llama.cpp rotates positions for an architecture written here.
fn target_layout(arch: &str) -> RopeLayout {
    match arch {
        "qwen2" => RopeLayout::Halves,
        _ => RopeLayout::Adjacent,
    }
}

/// Metadata of a GGUF source to carry over: everything but the layout keys
/// the writer sets (`general.architecture`, `general.alignment`,
/// `general.file_type`, `general.quantization_version`) and the `{arch}.*`
/// hyperparameters (written from the decoder's configuration).
pub fn carried_metadata(file: &GgufFile) -> Vec<(String, MetaValue)> {
    let arch = file.get_str("general.architecture").unwrap_or_default();
    let prefix = format!("{arch}.");
    file.metadata_entries()
        .iter()
        .filter(|(k, _)| {
            let own = matches!(
                k.as_str(),
                "general.architecture" | "general.alignment" | "general.file_type" | "general.quantization_version"
            );
            let hparam = !arch.is_empty() && k.starts_with(&prefix);
            !own && !hparam
        })
        .cloned()
        .collect()
}

/// llama.cpp's `general.file_type` (`llama_ftype`) for the most common matrix type.
fn file_type(t: GgmlType) -> u32 {
    match t {
        GgmlType::F32 => 0,
        GgmlType::F16 => 1,
        GgmlType::Q4_0 => 2,
        GgmlType::Q4_1 => 3,
        GgmlType::Q8_0 => 7,
        GgmlType::Q5_0 => 8,
        GgmlType::Q5_1 => 9,
        GgmlType::Q4_K => 15,
        GgmlType::Q5_K => 17,
        GgmlType::Q6_K => 18,
        GgmlType::BF16 => 32,
        _ => 0,
    }
}

/// The `{arch}.*` hyperparameters of `c`.
fn architecture_metadata(arch: &str, c: &DecoderConfig) -> Vec<(String, MetaValue)> {
    let u = |v: usize| MetaValue::U32(u32::try_from(v).unwrap_or(u32::MAX));
    [
        ("context_length", u(c.trained_context)),
        ("embedding_length", u(c.d_model)),
        ("block_count", u(c.n_layers)),
        ("feed_forward_length", u(c.ffn)),
        ("attention.head_count", u(c.n_heads)),
        ("attention.head_count_kv", u(c.n_kv_heads)),
        ("attention.key_length", u(c.head_dim)),
        ("attention.value_length", u(c.head_dim)),
        ("rope.dimension_count", u(c.rope_dims)),
        ("rope.freq_base", MetaValue::F32(c.rope_theta)),
        ("attention.layer_norm_rms_epsilon", MetaValue::F32(c.norm_eps)),
        ("vocab_size", u(c.vocab)),
    ]
    .into_iter()
    .chain(match c.rope_scaling {
        RopeScaling::Linear(f) => vec![
            ("rope.scaling.type", MetaValue::String("linear".to_string())),
            ("rope.scaling.factor", MetaValue::F32(f)),
        ],
        RopeScaling::None | RopeScaling::Factors(_) => vec![],
    })
    .map(|(k, v)| (format!("{arch}.{k}"), v))
    .collect()
}

/// A matrix as GGUF stores it: its type and bytes.
struct Stored {
    ggml_type: GgmlType,
    data: Vec<u8>,
}

/// The GGUF type of a block format.
fn block_type(f: BlockFormat) -> GgmlType {
    match f {
        BlockFormat::Q4_0 => GgmlType::Q4_0,
        BlockFormat::Q4_1 => GgmlType::Q4_1,
        BlockFormat::Q5_0 => GgmlType::Q5_0,
        BlockFormat::Q5_1 => GgmlType::Q5_1,
        BlockFormat::Q8_0 => GgmlType::Q8_0,
        BlockFormat::Q4_K => GgmlType::Q4_K,
        BlockFormat::Q5_K => GgmlType::Q5_K,
        BlockFormat::Q6_K => GgmlType::Q6_K,
    }
}

/// The rows of `m` as f32, `rows × cols`.
fn rows_f32(m: &Matrix) -> Vec<f32> {
    let cols = m.cols();
    let mut out = vec![0f32; m.rows() * cols];
    out.par_chunks_mut(cols.max(1))
        .enumerate()
        .for_each(|(r, row)| m.dequantize_row(r, row));
    out
}

fn f16_bytes(values: impl Iterator<Item = f16>) -> Vec<u8> {
    values.flat_map(f16::to_le_bytes).collect()
}

/// Stores `m` as `wt` asks, in `target` where `wt` re-quantizes.
fn store(name: &str, m: &Matrix, wt: GgufWeightType, target: Option<BlockFormat>) -> Result<Stored, GgufExportError> {
    let as_f16 = |m: &Matrix| Stored {
        ggml_type: GgmlType::F16,
        data: f16_bytes(rows_f32(m).into_iter().map(f16::from_f32)),
    };
    Ok(match (m, wt) {
        (Matrix::F32 { data, .. }, GgufWeightType::Keep) => Stored {
            ggml_type: GgmlType::F32,
            data: data.iter().flat_map(|v| v.to_le_bytes()).collect(),
        },
        (Matrix::F16 { data, .. }, GgufWeightType::Keep | GgufWeightType::F16) => Stored {
            ggml_type: GgmlType::F16,
            data: f16_bytes(data.iter().copied()),
        },
        (Matrix::Quant(q), _) if wt == GgufWeightType::Keep || Some(q.format()) == target => Stored {
            ggml_type: block_type(q.format()),
            data: q.data().to_vec(),
        },
        (_, GgufWeightType::F16) => as_f16(m),
        (_, _) => match target {
            Some(f) => quantize(name, m, f)?,
            None => as_f16(m),
        },
    })
}

/// Quantizes every row of `m` to `f` with the reference quantizer.
fn quantize(name: &str, m: &Matrix, f: BlockFormat) -> Result<Stored, GgufExportError> {
    let cols = m.cols();
    let row_bytes = f.row_bytes(cols).ok_or_else(|| GgufExportError::Unsupported {
        name: name.to_string(),
        message: format!("{cols} columns are not whole {} blocks", f.name()),
    })?;
    let x = rows_f32(m);
    let mut data = vec![0u8; row_bytes * m.rows()];
    data.par_chunks_mut(row_bytes.max(1))
        .zip(x.par_chunks(cols.max(1)))
        .try_for_each(|(out, row)| quantize_row(f, row, out))
        .map_err(|e| GgufExportError::Unsupported {
            name: name.to_string(),
            message: e.to_string(),
        })?;
    Ok(Stored {
        ggml_type: block_type(f),
        data,
    })
}

/// The source row of each destination row when `from`'s RoPE layout is
/// rewritten as `to`'s, for `heads` heads of `head_dim` rows.
fn rope_rows(heads: usize, head_dim: usize, from: RopeLayout, to: RopeLayout) -> Vec<usize> {
    let half = head_dim / 2;
    (0..heads * head_dim)
        .map(|r| {
            let (h, j) = (r / head_dim, r % head_dim);
            let src = match (from, to) {
                (RopeLayout::Halves, RopeLayout::Adjacent) => (j % 2) * half + j / 2,
                (RopeLayout::Adjacent, RopeLayout::Halves) => 2 * (j % half) + j / half,
                _ => j,
            };
            h * head_dim + src
        })
        .collect()
}

/// Rows of `cols` values of `data` in the order `order` gives.
fn gather_rows<T: Copy>(data: &[T], cols: usize, order: &[usize]) -> Vec<T> {
    order
        .iter()
        .flat_map(|&r| &data[r * cols..(r + 1) * cols])
        .copied()
        .collect()
}

/// `m` with its rows in the order `order` gives (destination ← source).
fn permute_matrix(m: &Matrix, order: &[usize]) -> Result<Matrix, GgufExportError> {
    let (rows, cols) = (m.rows(), m.cols());
    Ok(match m {
        Matrix::F32 { data, .. } => Matrix::F32 {
            rows,
            cols,
            data: gather_rows(data, cols, order),
        },
        Matrix::F16 { data, .. } => Matrix::F16 {
            rows,
            cols,
            data: gather_rows(data, cols, order),
        },
        Matrix::Quant(q) => {
            let data = order.iter().flat_map(|&r| q.row(r)).copied().collect();
            Matrix::Quant(QMatrix::new(q.format(), rows, cols, data).map_err(GenerateError::from)?)
        }
    })
}

/// The pieces of one exported layer, in llama.cpp's names.
struct Tensors<'a> {
    writer: &'a mut GgufWriter,
    weight_type: GgufWeightType,
    layers: usize,
    tied: bool,
}

impl Tensors<'_> {
    fn matrix(&mut self, name: &str, m: &Matrix) -> Result<(), GgufExportError> {
        let target = self.weight_type.format_for(name, m.cols(), self.layers, self.tied);
        let s = store(name, m, self.weight_type, target)?;
        let dims = vec![m.cols() as u64, m.rows() as u64];
        self.writer.add_tensor(name, dims, s.ggml_type, s.data)
    }

    fn vector(&mut self, name: &str, v: &[f32]) -> Result<(), GgufExportError> {
        let data = v.iter().flat_map(|x| x.to_le_bytes()).collect();
        self.writer.add_tensor(name, vec![v.len() as u64], GgmlType::F32, data)
    }
}

/// Builds the GGUF file of `weights` with `carried` metadata (the tokenizer,
/// the chat template, `general.*`) and matrices stored as `weight_type`.
pub fn decoder_gguf(
    weights: &DecoderWeights,
    carried: &[(String, MetaValue)],
    weight_type: GgufWeightType,
) -> Result<GgufWriter, GgufExportError> {
    let c = &weights.config;
    let arch = target_architecture(c);
    let layout = target_layout(arch);
    if layout != c.rope_layout && c.rope_dims != c.head_dim {
        return Err(GgufExportError::Unsupported {
            name: "blk.0.attn_q.weight".to_string(),
            message: format!(
                "RoPE over {} of {} head dimensions cannot be rewritten from {:?} to {:?} pairs",
                c.rope_dims, c.head_dim, c.rope_layout, layout
            ),
        });
    }
    let q_order = rope_rows(c.n_heads, c.head_dim, c.rope_layout, layout);
    let k_order = rope_rows(c.n_kv_heads, c.head_dim, c.rope_layout, layout);
    let mut writer = GgufWriter::new();
    let mut t = Tensors {
        writer: &mut writer,
        weight_type,
        layers: c.n_layers,
        tied: weights.output.is_none(),
    };
    t.matrix("token_embd.weight", &weights.embed)?;
    t.vector("output_norm.weight", &weights.norm)?;
    if let RopeScaling::Factors(f) = &c.rope_scaling {
        t.vector("rope_freqs.weight", f)?;
    }
    if let Some(out) = &weights.output {
        t.matrix("output.weight", out)?;
    }
    for (i, l) in weights.layers.iter().enumerate() {
        let n = |s: &str| format!("blk.{i}.{s}");
        t.vector(&n("attn_norm.weight"), &l.attn_norm)?;
        t.matrix(&n("attn_q.weight"), &permute_matrix(&l.wq, &q_order)?)?;
        t.matrix(&n("attn_k.weight"), &permute_matrix(&l.wk, &k_order)?)?;
        t.matrix(&n("attn_v.weight"), &l.wv)?;
        let biases = [("attn_q.bias", &l.bq, &q_order), ("attn_k.bias", &l.bk, &k_order)];
        for (name, bias, order) in biases {
            if let Some(b) = bias {
                let permuted: Vec<f32> = order.iter().map(|&r| b.get(r).copied().unwrap_or(0.0)).collect();
                t.vector(&n(name), &permuted)?;
            }
        }
        if let Some(b) = &l.bv {
            t.vector(&n("attn_v.bias"), b)?;
        }
        t.matrix(&n("attn_output.weight"), &l.wo)?;
        t.vector(&n("ffn_norm.weight"), &l.ffn_norm)?;
        t.matrix(&n("ffn_gate.weight"), &l.w_gate)?;
        t.matrix(&n("ffn_up.weight"), &l.w_up)?;
        t.matrix(&n("ffn_down.weight"), &l.w_down)?;
    }
    let metadata = file_metadata(arch, c, carried, &writer);
    let mut out = GgufWriter::new();
    for (k, v) in metadata {
        out.add_metadata(&k, v)?;
    }
    out.take_tensors(writer);
    Ok(out)
}

/// The file's metadata: the architecture first, the carried entries (with
/// the hyperparameters replacing any of the same key), then the rest.
fn file_metadata(
    arch: &str,
    c: &DecoderConfig,
    carried: &[(String, MetaValue)],
    tensors: &GgufWriter,
) -> Vec<(String, MetaValue)> {
    let types = tensors.matrix_types();
    let mut counts: Vec<(GgmlType, usize)> = Vec::new();
    for t in &types {
        match counts.iter_mut().find(|(x, _)| x == t) {
            Some((_, n)) => *n += 1,
            None => counts.push((*t, 1)),
        }
    }
    let common = counts.iter().max_by_key(|(_, n)| *n).map_or(GgmlType::F32, |(t, _)| *t);
    let mut own = architecture_metadata(arch, c);
    own.push(("general.file_type".to_string(), MetaValue::U32(file_type(common))));
    if types.iter().any(|t| t.block_size() > 1) {
        own.push(("general.quantization_version".to_string(), MetaValue::U32(2)));
    }
    let mut out = vec![("general.architecture".to_string(), MetaValue::String(arch.to_string()))];
    for (k, v) in carried {
        if k == "general.architecture" || out.iter().any(|(o, _)| o == k) {
            continue;
        }
        let value = own.iter().find(|(o, _)| o == k).map_or(v, |(_, v)| v);
        out.push((k.clone(), value.clone()));
    }
    for (k, v) in own {
        if !out.iter().any(|(o, _)| *o == k) {
            out.push((k, v));
        }
    }
    out
}

/// `tokenizer.ggml.token_type` values (llama.cpp's `TokenType`).
const TOKEN_NORMAL: i32 = 1;
const TOKEN_CONTROL: i32 = 3;
const TOKEN_USER_DEFINED: i32 = 4;
const TOKEN_UNUSED: i32 = 5;

fn tok_err(message: impl Into<String>) -> GgufExportError {
    GgufExportError::Generate(GenerateError::Tokenizer(message.into()))
}

fn read_json(path: &Path) -> Result<Option<Value>, GgufExportError> {
    if !path.is_file() {
        return Ok(None);
    }
    let text = std::fs::read_to_string(path).map_err(|source| GenerateError::Io {
        path: path.to_path_buf(),
        source,
    })?;
    serde_json::from_str(&text)
        .map(Some)
        .map_err(|e| tok_err(format!("{}: not JSON: {e}", path.display())))
}

/// The `tokenizer.ggml.pre` name of a `tokenizer.json` pre-tokenizer, for
/// the byte-level ones whose splitting llama.cpp knows.
fn pre_name(pre: &Value) -> Option<&'static str> {
    let text = pre.to_string();
    let digits = text.contains("\"Digits\"") && text.contains("\"individual_digits\":true");
    if digits && text.contains("\"ByteLevel\"") && !text.contains("\"Split\"") {
        return Some("smollm");
    }
    if text.contains("\\\\p{N}{1,3}") {
        return Some("llama-bpe");
    }
    if text.contains("[^\\\\r\\\\n\\\\p{L}\\\\p{N}]?\\\\p{L}+|\\\\p{N}") {
        return Some("qwen2");
    }
    let byte_level_only = pre.get("type").and_then(Value::as_str) == Some("ByteLevel");
    byte_level_only.then_some("gpt-2")
}

/// The `tokenizer.*` metadata llama.cpp's converter writes for a Hugging
/// Face byte-level BPE `tokenizer.json` (with `tokenizer_config.json`):
/// tokens by id padded to `vocab` with `[PADi]`, token types (special added
/// tokens CONTROL, other added tokens USER_DEFINED), merges, the
/// pre-tokenizer's name, BOS/EOS/padding ids, `add_bos_token`, and the chat
/// template.
pub fn hf_tokenizer_metadata(dir: &Path, vocab: usize) -> Result<Vec<(String, MetaValue)>, GgufExportError> {
    let path = dir.join("tokenizer.json");
    let doc = read_json(&path)?.ok_or_else(|| tok_err(format!("{} is missing", path.display())))?;
    let model = &doc["model"];
    if model["type"].as_str() != Some("BPE") {
        return Err(tok_err(format!(
            "{}: model type {} is not byte-level BPE, the one GGUF export writes",
            path.display(),
            model["type"]
        )));
    }
    let pre = pre_name(&doc["pre_tokenizer"]).ok_or_else(|| {
        tok_err(format!(
            "{}: the pre-tokenizer {} is not one llama.cpp names (smollm, llama-bpe, qwen2, gpt-2)",
            path.display(),
            doc["pre_tokenizer"]
        ))
    })?;
    let (tokens, types) = hf_tokens(&doc, vocab, &path)?;
    let merges = hf_merges(model, &path)?;
    let s = |v: &str| MetaValue::String(v.to_string());
    let strings = |v: Vec<String>| MetaValue::Array(v.into_iter().map(MetaValue::String).collect());
    let mut out = vec![
        ("tokenizer.ggml.model".to_string(), s("gpt2")),
        ("tokenizer.ggml.pre".to_string(), s(pre)),
        ("tokenizer.ggml.tokens".to_string(), strings(tokens.clone())),
        (
            "tokenizer.ggml.token_type".to_string(),
            MetaValue::Array(types.into_iter().map(MetaValue::I32).collect()),
        ),
        ("tokenizer.ggml.merges".to_string(), strings(merges)),
    ];
    out.extend(hf_special_metadata(dir, &tokens)?);
    Ok(out)
}

/// Tokens by id and their types.
fn hf_tokens(doc: &Value, vocab: usize, path: &Path) -> Result<(Vec<String>, Vec<i32>), GgufExportError> {
    let mut tokens: Vec<Option<(String, i32)>> = vec![None; vocab];
    let mut put = |id: Option<u64>, text: &str, ty: i32| -> Result<(), GgufExportError> {
        let slot = id
            .and_then(|i| usize::try_from(i).ok())
            .and_then(|i| tokens.get_mut(i))
            .ok_or_else(|| {
                tok_err(format!(
                    "{}: token `{text}` has an id outside the vocabulary of {vocab}",
                    path.display()
                ))
            })?;
        *slot = Some((text.to_string(), ty));
        Ok(())
    };
    let entries = doc["model"]["vocab"]
        .as_object()
        .ok_or_else(|| tok_err(format!("{}: `model.vocab` is not an object", path.display())))?;
    for (text, id) in entries {
        put(id.as_u64(), text, TOKEN_NORMAL)?;
    }
    for added in doc["added_tokens"].as_array().into_iter().flatten() {
        let text = added["content"].as_str().unwrap_or_default();
        let special = added["special"].as_bool().unwrap_or(false);
        put(
            added["id"].as_u64(),
            text,
            if special { TOKEN_CONTROL } else { TOKEN_USER_DEFINED },
        )?;
    }
    Ok(tokens
        .into_iter()
        .enumerate()
        .map(|(i, t)| t.unwrap_or_else(|| (format!("[PAD{i}]"), TOKEN_UNUSED)))
        .unzip())
}

/// Merges as `"a b"` strings (from either of `tokenizer.json`'s spellings).
fn hf_merges(model: &Value, path: &Path) -> Result<Vec<String>, GgufExportError> {
    let bad = || tok_err(format!("{}: `model.merges` is not a list of merges", path.display()));
    let list = model["merges"].as_array().ok_or_else(bad)?;
    list.iter()
        .map(|m| match m {
            Value::String(s) => Ok(s.clone()),
            Value::Array(pair) => match (
                pair.first().and_then(Value::as_str),
                pair.get(1).and_then(Value::as_str),
            ) {
                (Some(a), Some(b)) if pair.len() == 2 => Ok(format!("{a} {b}")),
                _ => Err(bad()),
            },
            _ => Err(bad()),
        })
        .collect()
}

/// BOS/EOS/padding ids, `add_bos_token` and the chat template from
/// `tokenizer_config.json`.
fn hf_special_metadata(dir: &Path, tokens: &[String]) -> Result<Vec<(String, MetaValue)>, GgufExportError> {
    let Some(config) = read_json(&dir.join("tokenizer_config.json"))? else {
        return Ok(Vec::new());
    };
    let mut out = Vec::new();
    for (field, key) in [("bos_token", "bos"), ("eos_token", "eos"), ("pad_token", "padding")] {
        let v = &config[field];
        let text = v.as_str().or_else(|| v["content"].as_str());
        if let Some(id) = text.and_then(|t| tokens.iter().position(|x| x == t)) {
            let id = MetaValue::U32(u32::try_from(id).unwrap_or(u32::MAX));
            out.push((format!("tokenizer.ggml.{key}_token_id"), id));
        }
    }
    let add_bos = config["add_bos_token"].as_bool().unwrap_or(false);
    out.push(("tokenizer.ggml.add_bos_token".to_string(), MetaValue::Bool(add_bos)));
    let template = match &config["chat_template"] {
        Value::String(s) => Some(s.clone()),
        Value::Array(named) => named
            .iter()
            .find(|t| t["name"].as_str() == Some("default"))
            .and_then(|t| t["template"].as_str())
            .map(str::to_owned),
        _ => None,
    };
    if let Some(t) = template {
        out.push(("tokenizer.chat_template".to_string(), MetaValue::String(t)));
    }
    Ok(out)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn rope_rows_match_the_converters_permute() {
        // convert_hf_to_gguf.py's permute of one head of 8 rows:
        // reshape(2, 4).swapaxes → rows 0,4,1,5,2,6,3,7.
        assert_eq!(
            rope_rows(2, 8, RopeLayout::Halves, RopeLayout::Adjacent),
            [0, 4, 1, 5, 2, 6, 3, 7, 8, 12, 9, 13, 10, 14, 11, 15]
        );
        let fwd = rope_rows(3, 8, RopeLayout::Halves, RopeLayout::Adjacent);
        let back = rope_rows(3, 8, RopeLayout::Adjacent, RopeLayout::Halves);
        let round: Vec<usize> = back.iter().map(|&r| fwd[r]).collect();
        assert_eq!(round, (0..24).collect::<Vec<_>>());
        assert_eq!(rope_rows(1, 4, RopeLayout::Halves, RopeLayout::Halves), [0, 1, 2, 3]);
    }

    #[test]
    fn weight_types_parse() {
        assert_eq!("Q8_0".parse(), Ok(GgufWeightType::Q8_0));
        assert_eq!("keep".parse(), Ok(GgufWeightType::Keep));
        assert!("q2_k".parse::<GgufWeightType>().is_err());
        assert_eq!("Q4_K_M".parse(), Ok(GgufWeightType::Q4_K_M));
    }

    #[test]
    fn k_mixes_pick_tensor_types_as_llama_quantize() {
        use BlockFormat::*;
        let t = GgufWeightType::Q4_K_M;
        // 30 layers: Q6_K for attn_v / ffn_down in layers 0-2, 26-29 and
        // every third layer from 5 (llama.cpp's use_more_bits).
        let six: Vec<usize> = (0..30)
            .filter(|i| t.format_for(&format!("blk.{i}.ffn_down.weight"), 1536, 30, true) == Some(Q6_K))
            .collect();
        assert_eq!(six, [0, 1, 2, 5, 8, 11, 14, 17, 20, 23, 26, 27, 28, 29]);
        assert_eq!(t.format_for("blk.5.attn_v.weight", 512, 30, true), Some(Q6_K));
        assert_eq!(t.format_for("blk.6.attn_v.weight", 512, 30, true), Some(Q4_K));
        assert_eq!(t.format_for("blk.5.attn_q.weight", 512, 30, true), Some(Q4_K));
        // The head: Q6_K, or Q8_0 when its rows are not whole 256 blocks;
        // tied embeddings are the head.
        assert_eq!(t.format_for("output.weight", 512, 30, false), Some(Q6_K));
        assert_eq!(t.format_for("token_embd.weight", 512, 30, false), Some(Q4_K));
        assert_eq!(t.format_for("token_embd.weight", 576, 30, true), Some(Q8_0));
        // Fallbacks for rows that are not whole 256 blocks, then F16.
        assert_eq!(t.format_for("blk.6.attn_q.weight", 576, 30, true), Some(Q5_0));
        assert_eq!(
            GgufWeightType::Q5_K.format_for("blk.6.attn_q.weight", 576, 30, true),
            Some(Q5_1)
        );
        assert_eq!(
            GgufWeightType::Q6_K.format_for("blk.6.attn_q.weight", 576, 30, true),
            Some(Q8_0)
        );
        assert_eq!(
            GgufWeightType::Q4_K.format_for("blk.6.attn_q.weight", 40, 30, true),
            None
        );
        assert_eq!(
            GgufWeightType::Q6_K.format_for("output.weight", 512, 30, false),
            Some(Q6_K)
        );
    }
}
