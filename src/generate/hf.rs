//! Builds [`DecoderWeights`] from a Hugging Face model directory of the llama
//! family (`LlamaForCausalLM`, `MistralForCausalLM`, `Qwen2ForCausalLM`):
//! hyperparameters from `config.json`, tensors from `model.safetensors` or
//! the shards a `model.safetensors.index.json` lists, by the checkpoint's
//! names (`model.layers.N.self_attn.q_proj.weight`, ...).
//!
//! Formats: F32 tensors load as [`Matrix::F32`], F16 as [`Matrix::F16`];
//! a BF16 matrix is held as F16 when every value converts exactly (the usual
//! case: bf16's 8-bit mantissa fits f16's 10 bits within f16's range), else
//! as F32. Norm weights and biases load as f32. Hugging Face checkpoints
//! rotate halves of each head ([`RopeLayout::Halves`]) for every
//! architecture. Each tensor is read from its file by offset, so loading
//! holds one tensor's bytes at a time beside the weights.

use std::collections::HashMap;
use std::io::{Read, Seek, SeekFrom};
use std::path::{Path, PathBuf};

use half::{bf16, f16};
use serde_json::{Map, Value};

use crate::error::GenerateError;
use crate::generate::config::{llama3_factors, RopeScaling};
use crate::generate::load::{validate, MAX_DIM};
use crate::generate::{DecoderConfig, DecoderWeights, LayerWeights, Matrix, RopeLayout};

/// Largest safetensors header accepted (the format's own limit).
const MAX_HEADER: u64 = 100 << 20;

/// What `config.json` says beyond [`DecoderConfig`].
#[derive(Clone, Debug, PartialEq)]
pub struct HfConfig {
    /// The decoder's shape.
    pub decoder: DecoderConfig,
    /// The output head is the embedding (`tie_word_embeddings`).
    pub tie_word_embeddings: bool,
    /// The Q/K/V projections carry biases (`qwen2`, or `attention_bias`).
    pub qkv_bias: bool,
}

fn cfg_err(key: &str, message: impl Into<String>) -> GenerateError {
    GenerateError::Config {
        key: key.to_string(),
        message: format!("(config.json) {}", message.into()),
    }
}

/// A present, non-null field.
fn field<'a>(obj: &'a Map<String, Value>, key: &str) -> Option<&'a Value> {
    obj.get(key).filter(|v| !v.is_null())
}

fn int(obj: &Map<String, Value>, key: &str, default: Option<usize>) -> Result<usize, GenerateError> {
    let Some(v) = field(obj, key) else {
        return default.ok_or_else(|| cfg_err(key, "is missing"));
    };
    match v.as_u64().and_then(|n| usize::try_from(n).ok()) {
        Some(n) if (1..=MAX_DIM).contains(&n) => Ok(n),
        _ => Err(cfg_err(key, format!("must be an integer in 1..={MAX_DIM}, got {v}"))),
    }
}

fn positive(obj: &Map<String, Value>, key: &str, default: f64) -> Result<f32, GenerateError> {
    let Some(v) = field(obj, key) else {
        return Ok(default as f32);
    };
    match v.as_f64() {
        Some(x) if x.is_finite() && x > 0.0 && (x as f32).is_finite() && x as f32 > 0.0 => Ok(x as f32),
        _ => Err(cfg_err(key, format!("must be a positive finite number, got {v}"))),
    }
}

fn flag(obj: &Map<String, Value>, key: &str, default: bool) -> Result<bool, GenerateError> {
    match field(obj, key) {
        None => Ok(default),
        Some(v) => v
            .as_bool()
            .ok_or_else(|| cfg_err(key, format!("must be true or false, got {v}"))),
    }
}

/// `rope_scaling`: none (`default`), `linear` or `llama3`; the others
/// (yarn, dynamic, longrope) are refused.
fn rope_scaling(obj: &Map<String, Value>, theta: f32, rope_dims: usize) -> Result<RopeScaling, GenerateError> {
    let Some(v) = field(obj, "rope_scaling") else {
        return Ok(RopeScaling::None);
    };
    let Some(m) = v.as_object() else {
        return Err(cfg_err("rope_scaling", format!("must be an object, got {v}")));
    };
    let kind = field(m, "rope_type")
        .or_else(|| field(m, "type"))
        .and_then(Value::as_str);
    let num = |key: &str, default: Option<f64>| -> Result<f64, GenerateError> {
        match field(m, key) {
            None => default.ok_or_else(|| cfg_err("rope_scaling", format!("{v}: `{key}` is missing"))),
            Some(x) => match x.as_f64() {
                Some(x) if x.is_finite() && x > 0.0 => Ok(x),
                _ => Err(cfg_err(
                    "rope_scaling",
                    format!("{v}: `{key}` must be a positive number"),
                )),
            },
        }
    };
    match kind {
        None | Some("default") => Ok(RopeScaling::None),
        Some("linear") => Ok(RopeScaling::Linear(num("factor", None)? as f32)),
        Some("llama3") => {
            let (low, high) = (num("low_freq_factor", Some(1.0))?, num("high_freq_factor", Some(4.0))?);
            if high <= low {
                return Err(cfg_err(
                    "rope_scaling",
                    format!("{v}: high_freq_factor must be above low_freq_factor"),
                ));
            }
            Ok(RopeScaling::Factors(llama3_factors(
                theta,
                rope_dims,
                num("factor", None)?,
                low,
                high,
                num("original_max_position_embeddings", Some(8192.0))?,
            )))
        }
        Some(other) => Err(cfg_err(
            "rope_scaling",
            format!("{v}: `{other}` scaling is not supported; none, linear and llama3 are"),
        )),
    }
}

/// The architecture: `model_type`, else the first of `architectures`.
fn architecture(obj: &Map<String, Value>) -> Result<String, GenerateError> {
    let from_class = |c: &str| match c {
        "LlamaForCausalLM" => Some("llama"),
        "MistralForCausalLM" => Some("mistral"),
        "Qwen2ForCausalLM" => Some("qwen2"),
        _ => None,
    };
    if let Some(v) = field(obj, "model_type") {
        let t = v
            .as_str()
            .ok_or_else(|| cfg_err("model_type", format!("must be a string, got {v}")))?;
        return match t {
            "llama" | "mistral" | "qwen2" => Ok(t.to_string()),
            _ => Err(GenerateError::Architecture(t.to_string())),
        };
    }
    let classes = field(obj, "architectures")
        .and_then(Value::as_array)
        .ok_or_else(|| cfg_err("model_type", "is missing (and `architectures` names no class)"))?;
    let first = classes.first().and_then(Value::as_str).unwrap_or("");
    from_class(first)
        .map(str::to_string)
        .ok_or_else(|| GenerateError::Architecture(first.to_string()))
}

/// Refuses the settings this decoder does not compute: another activation,
/// scaled or partial RoPE, sliding windows (Qwen2), biases on the output or
/// feed-forward projections, quantized checkpoints.
fn check_unsupported(obj: &Map<String, Value>, arch: &str) -> Result<(), GenerateError> {
    if let Some(v) = field(obj, "hidden_act") {
        if !matches!(v.as_str(), Some("silu" | "swish")) {
            return Err(cfg_err(
                "hidden_act",
                format!("{v}: only \"silu\" (SwiGLU) is supported"),
            ));
        }
    }
    if let Some(v) = field(obj, "partial_rotary_factor") {
        if v.as_f64() != Some(1.0) {
            return Err(cfg_err("partial_rotary_factor", format!("{v}: only 1.0 is supported")));
        }
    }
    if arch == "qwen2" && flag(obj, "use_sliding_window", false)? {
        return Err(cfg_err(
            "use_sliding_window",
            "sliding-window attention is not supported",
        ));
    }
    if flag(obj, "mlp_bias", false)? {
        return Err(cfg_err("mlp_bias", "feed-forward biases are not supported"));
    }
    if flag(obj, "attention_bias", false)? && arch != "qwen2" {
        return Err(cfg_err(
            "attention_bias",
            "a bias on the attention output projection (o_proj) is not supported",
        ));
    }
    if field(obj, "quantization_config").is_some() {
        return Err(cfg_err(
            "quantization_config",
            "quantized safetensors checkpoints are not supported: load an f32/f16/bf16 checkpoint or a GGUF file",
        ));
    }
    Ok(())
}

/// The `config.json` field behind a key [`validate`] names.
fn hf_key(key: &str) -> &str {
    match key {
        "vocab" => "vocab_size",
        "attention.head_count" => "num_attention_heads",
        "attention.head_count_kv" => "num_key_value_heads",
        "rope.dimension_count" => "head_dim",
        other => other,
    }
}

/// Parses a `config.json`. Every missing or malformed field is a
/// [`GenerateError::Config`] naming it; unknown architectures are
/// [`GenerateError::Architecture`].
pub fn config_from_json(text: &str) -> Result<HfConfig, GenerateError> {
    let doc: Value = serde_json::from_str(text).map_err(|e| cfg_err("(document)", format!("not JSON: {e}")))?;
    let obj = doc
        .as_object()
        .ok_or_else(|| cfg_err("(document)", "must be a JSON object"))?;
    let arch = architecture(obj)?;
    check_unsupported(obj, &arch)?;
    let d_model = int(obj, "hidden_size", None)?;
    let n_heads = int(obj, "num_attention_heads", None)?;
    let derived_head = (d_model.is_multiple_of(n_heads)).then_some(d_model / n_heads);
    let head_dim = int(obj, "head_dim", derived_head).map_err(|e| match field(obj, "head_dim") {
        None => cfg_err(
            "num_attention_heads",
            format!("{n_heads} does not divide hidden_size {d_model} (and no head_dim is given)"),
        ),
        Some(_) => e,
    })?;
    let mut trained_context = int(obj, "max_position_embeddings", Some(2048))?;
    if arch == "mistral" && field(obj, "sliding_window").is_some() {
        trained_context = trained_context.min(int(obj, "sliding_window", None)?);
    }
    let decoder = DecoderConfig {
        architecture: arch.clone(),
        vocab: int(obj, "vocab_size", None)?,
        d_model,
        n_layers: int(obj, "num_hidden_layers", None)?,
        n_heads,
        n_kv_heads: int(obj, "num_key_value_heads", Some(n_heads))?,
        head_dim,
        ffn: int(obj, "intermediate_size", None)?,
        rope_theta: positive(obj, "rope_theta", 10_000.0)?,
        rope_scaling: rope_scaling(obj, positive(obj, "rope_theta", 10_000.0)?, head_dim)?,
        rope_dims: head_dim,
        rope_layout: RopeLayout::Halves,
        norm_eps: positive(obj, "rms_norm_eps", 1e-6)?,
        trained_context,
    };
    validate(&decoder).map_err(|e| match e {
        GenerateError::Config { key, message } => cfg_err(hf_key(&key), message),
        e => e,
    })?;
    Ok(HfConfig {
        tie_word_embeddings: flag(obj, "tie_word_embeddings", false)?,
        qkv_bias: arch == "qwen2" || flag(obj, "attention_bias", false)?,
        decoder,
    })
}

/// Element types a safetensors tensor may have here.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
enum Dtype {
    F32,
    F16,
    Bf16,
}

impl Dtype {
    fn parse(s: &str) -> Option<Self> {
        match s {
            "F32" => Some(Self::F32),
            "F16" => Some(Self::F16),
            "BF16" => Some(Self::Bf16),
            _ => None,
        }
    }

    fn size(self) -> u64 {
        match self {
            Self::F32 => 4,
            Self::F16 | Self::Bf16 => 2,
        }
    }
}

/// One tensor's entry in a safetensors header (offsets from the start of the file).
#[derive(Clone, Debug)]
struct Entry {
    dtype: Result<Dtype, String>,
    shape: Vec<u64>,
    start: u64,
    len: u64,
}

/// Where a shard's bytes are.
#[derive(Debug)]
enum Source {
    File(PathBuf),
    Memory(Vec<u8>),
}

/// One safetensors file: its tensor table and where to read the data.
#[derive(Debug)]
struct Shard {
    source: Source,
    name: String,
    entries: HashMap<String, Entry>,
}

fn invalid(name: &str, message: impl Into<String>) -> GenerateError {
    GenerateError::Io {
        path: PathBuf::from(name),
        source: std::io::Error::new(std::io::ErrorKind::InvalidData, message.into()),
    }
}

/// Parses the JSON header of a safetensors file of `file_len` bytes whose
/// header is `header` (the bytes after the 8-byte length).
fn parse_header(name: &str, header: &[u8], file_len: u64) -> Result<HashMap<String, Entry>, GenerateError> {
    let data_start = 8 + header.len() as u64;
    let doc: Value =
        serde_json::from_slice(header).map_err(|e| invalid(name, format!("safetensors header is not JSON: {e}")))?;
    let obj = doc
        .as_object()
        .ok_or_else(|| invalid(name, "safetensors header is not a JSON object"))?;
    let mut entries = HashMap::with_capacity(obj.len());
    for (tensor, v) in obj.iter().filter(|(k, _)| *k != "__metadata__") {
        let bad = |m: &str| invalid(name, format!("safetensors header entry `{tensor}`: {m}"));
        let dtype_name = v.get("dtype").and_then(Value::as_str).ok_or_else(|| bad("no dtype"))?;
        let shape = v
            .get("shape")
            .and_then(Value::as_array)
            .and_then(|s| s.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
            .ok_or_else(|| bad("shape is not a list of sizes"))?;
        let offsets = v
            .get("data_offsets")
            .and_then(Value::as_array)
            .and_then(|s| s.iter().map(Value::as_u64).collect::<Option<Vec<u64>>>())
            .filter(|o| o.len() == 2 && o[0] <= o[1])
            .ok_or_else(|| bad("data_offsets is not [begin, end] with begin <= end"))?;
        let (start, end) = (data_start.checked_add(offsets[0]), data_start.checked_add(offsets[1]));
        let (Some(start), Some(end)) = (start, end) else {
            return Err(bad("data_offsets overflow"));
        };
        if end > file_len {
            return Err(bad(&format!("data ends at byte {end}, past the file's {file_len}")));
        }
        let dtype = Dtype::parse(dtype_name).ok_or_else(|| dtype_name.to_string());
        if let Ok(d) = dtype {
            let bytes = shape.iter().try_fold(d.size(), |a, &b| a.checked_mul(b));
            if bytes != Some(end - start) {
                return Err(bad(&format!(
                    "shape {shape:?} of {dtype_name} needs {bytes:?} bytes, data_offsets give {}",
                    end - start
                )));
            }
        }
        entries.insert(
            tensor.clone(),
            Entry {
                dtype,
                shape,
                start,
                len: end - start,
            },
        );
    }
    Ok(entries)
}

/// The header length stored in a safetensors file's first 8 bytes, checked
/// against the file's length.
fn header_len(name: &str, first: [u8; 8], file_len: u64) -> Result<usize, GenerateError> {
    let n = u64::from_le_bytes(first);
    if n > MAX_HEADER || n > file_len.saturating_sub(8) {
        return Err(invalid(
            name,
            format!("safetensors header length {n} exceeds the file ({file_len} bytes) or 100 MiB"),
        ));
    }
    usize::try_from(n).map_err(|_| invalid(name, "safetensors header too large"))
}

impl Shard {
    fn open(path: &Path) -> Result<Self, GenerateError> {
        let io = |source| GenerateError::Io {
            path: path.to_path_buf(),
            source,
        };
        let name = path.display().to_string();
        let mut f = std::fs::File::open(path).map_err(io)?;
        let file_len = f.metadata().map_err(io)?.len();
        let mut first = [0u8; 8];
        f.read_exact(&mut first)
            .map_err(|_| invalid(&name, "shorter than the 8-byte safetensors header length"))?;
        let mut header = vec![0u8; header_len(&name, first, file_len)?];
        f.read_exact(&mut header).map_err(io)?;
        Ok(Self {
            entries: parse_header(&name, &header, file_len)?,
            source: Source::File(path.to_path_buf()),
            name,
        })
    }

    fn from_bytes(name: &str, bytes: Vec<u8>) -> Result<Self, GenerateError> {
        let first: [u8; 8] = bytes
            .get(..8)
            .and_then(|b| b.try_into().ok())
            .ok_or_else(|| invalid(name, "shorter than the 8-byte safetensors header length"))?;
        let n = header_len(name, first, bytes.len() as u64)?;
        let entries = parse_header(name, &bytes[8..8 + n], bytes.len() as u64)?;
        Ok(Self {
            entries,
            source: Source::Memory(bytes),
            name: name.to_string(),
        })
    }

    /// The bytes of a tensor listed in the header (which checked the range).
    fn read(&self, e: &Entry) -> Result<Vec<u8>, GenerateError> {
        let len = usize::try_from(e.len).map_err(|_| invalid(&self.name, "tensor too large"))?;
        match &self.source {
            Source::Memory(bytes) => usize::try_from(e.start)
                .ok()
                .and_then(|s| bytes.get(s..s.checked_add(len)?))
                .map(<[u8]>::to_vec)
                .ok_or_else(|| invalid(&self.name, "tensor data outside the file")),
            Source::File(path) => {
                let io = |source| GenerateError::Io {
                    path: path.clone(),
                    source,
                };
                let mut f = std::fs::File::open(path).map_err(io)?;
                f.seek(SeekFrom::Start(e.start)).map_err(io)?;
                let mut buf = vec![0u8; len];
                f.read_exact(&mut buf).map_err(io)?;
                Ok(buf)
            }
        }
    }
}

/// The tensors of a checkpoint, over one or more safetensors files.
#[derive(Debug)]
struct Checkpoint {
    shards: Vec<Shard>,
    /// Tensor name → shard index.
    index: HashMap<String, usize>,
    /// `model.` when names carry it (`LlamaForCausalLM`), else empty.
    prefix: &'static str,
}

impl Checkpoint {
    fn new(shards: Vec<Shard>) -> Self {
        let mut index = HashMap::new();
        for (i, s) in shards.iter().enumerate() {
            for name in s.entries.keys() {
                index.insert(name.clone(), i);
            }
        }
        let prefix = if index.contains_key("embed_tokens.weight") && !index.contains_key("model.embed_tokens.weight") {
            ""
        } else {
            "model."
        };
        Self { shards, index, prefix }
    }

    /// A tensor's entry, bytes and element type, its shape checked against `shape`.
    fn fetch(&self, name: &str, shape: &[usize]) -> Result<(Dtype, Vec<u8>), GenerateError> {
        let shard = self
            .index
            .get(name)
            .and_then(|&i| self.shards.get(i))
            .ok_or_else(|| GenerateError::MissingTensor(name.to_string()))?;
        let e = shard
            .entries
            .get(name)
            .ok_or_else(|| GenerateError::MissingTensor(name.to_string()))?;
        let tensor_err = |message: String| GenerateError::Tensor {
            name: name.to_string(),
            message,
        };
        let dtype = e.dtype.clone().map_err(|d| {
            tensor_err(format!(
                "dtype {d} is not supported (F32, F16, BF16 are); convert the checkpoint"
            ))
        })?;
        if e.shape.len() != shape.len() || e.shape.iter().zip(shape).any(|(&a, &b)| a != b as u64) {
            return Err(tensor_err(format!("has shape {:?}; expected {shape:?}", e.shape)));
        }
        Ok((dtype, shard.read(e)?))
    }

    fn vector(&self, name: &str, len: usize) -> Result<Vec<f32>, GenerateError> {
        let (dtype, bytes) = self.fetch(name, &[len])?;
        Ok(to_f32(dtype, &bytes))
    }

    fn vector_opt(&self, name: &str, len: usize, wanted: bool) -> Result<Option<Vec<f32>>, GenerateError> {
        if wanted {
            self.vector(name, len).map(Some)
        } else {
            Ok(None)
        }
    }

    fn matrix(&self, name: &str, rows: usize, cols: usize) -> Result<Matrix, GenerateError> {
        let (dtype, bytes) = self.fetch(name, &[rows, cols])?;
        Ok(match dtype {
            Dtype::F32 => Matrix::F32 {
                rows,
                cols,
                data: to_f32(dtype, &bytes),
            },
            Dtype::F16 => Matrix::F16 {
                rows,
                cols,
                data: bytes
                    .chunks_exact(2)
                    .map(|b| f16::from_le_bytes([b[0], b[1]]))
                    .collect(),
            },
            Dtype::Bf16 => bf16_matrix(rows, cols, &bytes),
        })
    }
}

/// Little-endian elements as f32.
fn to_f32(dtype: Dtype, bytes: &[u8]) -> Vec<f32> {
    match dtype {
        Dtype::F32 => bytes
            .chunks_exact(4)
            .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
            .collect(),
        Dtype::F16 => bytes
            .chunks_exact(2)
            .map(|b| f16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
        Dtype::Bf16 => bytes
            .chunks_exact(2)
            .map(|b| bf16::from_le_bytes([b[0], b[1]]).to_f32())
            .collect(),
    }
}

/// A BF16 matrix as F16 when every value converts exactly, else as F32.
fn bf16_matrix(rows: usize, cols: usize, bytes: &[u8]) -> Matrix {
    let data = to_f32(Dtype::Bf16, bytes);
    let halves: Vec<f16> = data.iter().map(|&v| f16::from_f32(v)).collect();
    if halves.iter().zip(&data).all(|(h, &v)| h.to_f32() == v) {
        Matrix::F16 {
            rows,
            cols,
            data: halves,
        }
    } else {
        Matrix::F32 { rows, cols, data }
    }
}

fn layer(ck: &Checkpoint, c: &HfConfig, i: usize) -> Result<LayerWeights, GenerateError> {
    let n = |s: &str| format!("{}layers.{i}.{s}", ck.prefix);
    let d = &c.decoder;
    let (dm, q, kv, f) = (d.d_model, d.q_dim(), d.kv_dim(), d.ffn);
    let bias = c.qkv_bias;
    Ok(LayerWeights {
        attn_norm: ck.vector(&n("input_layernorm.weight"), dm)?,
        wq: ck.matrix(&n("self_attn.q_proj.weight"), q, dm)?,
        wk: ck.matrix(&n("self_attn.k_proj.weight"), kv, dm)?,
        wv: ck.matrix(&n("self_attn.v_proj.weight"), kv, dm)?,
        bq: ck.vector_opt(&n("self_attn.q_proj.bias"), q, bias)?,
        bk: ck.vector_opt(&n("self_attn.k_proj.bias"), kv, bias)?,
        bv: ck.vector_opt(&n("self_attn.v_proj.bias"), kv, bias)?,
        wo: ck.matrix(&n("self_attn.o_proj.weight"), dm, q)?,
        ffn_norm: ck.vector(&n("post_attention_layernorm.weight"), dm)?,
        w_gate: ck.matrix(&n("mlp.gate_proj.weight"), f, dm)?,
        w_up: ck.matrix(&n("mlp.up_proj.weight"), f, dm)?,
        w_down: ck.matrix(&n("mlp.down_proj.weight"), dm, f)?,
    })
}

fn build(config: HfConfig, ck: &Checkpoint) -> Result<DecoderWeights, GenerateError> {
    let d = &config.decoder;
    let (dm, v) = (d.d_model, d.vocab);
    let layers = (0..d.n_layers)
        .map(|i| layer(ck, &config, i))
        .collect::<Result<Vec<_>, _>>()?;
    let output = if config.tie_word_embeddings {
        None
    } else {
        Some(ck.matrix("lm_head.weight", v, dm)?)
    };
    Ok(DecoderWeights {
        embed: ck.matrix(&format!("{}embed_tokens.weight", ck.prefix), v, dm)?,
        layers,
        norm: ck.vector(&format!("{}norm.weight", ck.prefix), dm)?,
        output,
        config: config.decoder,
    })
}

/// The safetensors files of a directory: `model.safetensors`, else the
/// shards `model.safetensors.index.json`'s `weight_map` names.
fn shard_paths(dir: &Path) -> Result<Vec<PathBuf>, GenerateError> {
    let single = dir.join("model.safetensors");
    if single.is_file() {
        return Ok(vec![single]);
    }
    let index = dir.join("model.safetensors.index.json");
    let text = std::fs::read_to_string(&index).map_err(|source| GenerateError::Io {
        path: index.clone(),
        source,
    })?;
    let bad = |m: &str| invalid(&index.display().to_string(), m.to_string());
    let doc: Value = serde_json::from_str(&text).map_err(|e| bad(&format!("not JSON: {e}")))?;
    let map = doc
        .get("weight_map")
        .and_then(Value::as_object)
        .ok_or_else(|| bad("`weight_map` is missing or not an object"))?;
    let mut files: Vec<&str> = Vec::new();
    for (tensor, file) in map {
        let file = file
            .as_str()
            .filter(|f| !f.is_empty() && Path::new(f).components().count() == 1 && !f.contains(".."))
            .ok_or_else(|| {
                bad(&format!(
                    "`weight_map` entry `{tensor}` is not a file name in the directory"
                ))
            })?;
        if !files.contains(&file) {
            files.push(file);
        }
    }
    files.sort_unstable();
    Ok(files.into_iter().map(|f| dir.join(f)).collect())
}

/// Reads a directory's `config.json`.
pub fn read_config(dir: &Path) -> Result<HfConfig, GenerateError> {
    let path = dir.join("config.json");
    let text = std::fs::read_to_string(&path).map_err(|source| GenerateError::Io { path, source })?;
    config_from_json(&text)
}

/// Loads a llama-family decoder from a Hugging Face directory
/// (`config.json` and `model.safetensors` or its sharded index).
pub fn from_dir(dir: &Path) -> Result<DecoderWeights, GenerateError> {
    let config = read_config(dir)?;
    let shards = shard_paths(dir)?
        .iter()
        .map(|p| Shard::open(p))
        .collect::<Result<Vec<_>, _>>()?;
    build(config, &Checkpoint::new(shards))
}

/// Loads a decoder from `config.json` text and one safetensors file held in
/// memory (what [`from_dir`] reads from a directory).
pub fn from_memory(config_json: &str, safetensors: Vec<u8>) -> Result<DecoderWeights, GenerateError> {
    let config = config_from_json(config_json)?;
    let shard = Shard::from_bytes("model.safetensors", safetensors)?;
    build(config, &Checkpoint::new(vec![shard]))
}

/// The tokenizer (`tokenizer.json`, with `tokenizer_config.json` and
/// `generation_config.json` beside it) and the chat template
/// (`tokenizer_config.json`'s `chat_template`, if any) of a directory.
#[cfg(feature = "text")]
pub fn tokenizer_and_template(
    dir: &Path,
) -> Result<
    (
        crate::generate::tokenizer::Tokenizer,
        Option<crate::generate::chat::ChatTemplate>,
    ),
    GenerateError,
> {
    let tokenizer = crate::generate::tokenizer::Tokenizer::from_file(&dir.join("tokenizer.json"))?;
    let config = dir.join("tokenizer_config.json");
    let template = if config.is_file() {
        crate::generate::chat::ChatTemplate::from_tokenizer_config(&config)?
    } else {
        None
    };
    Ok((tokenizer, template))
}

#[cfg(test)]
mod tests {
    use super::*;

    const CONFIG: &str = r#"{"model_type": "qwen2", "hidden_size": 8, "num_hidden_layers": 1,
        "num_attention_heads": 2, "num_key_value_heads": 1, "intermediate_size": 12,
        "vocab_size": 5, "rms_norm_eps": 1e-6, "rope_theta": 1000000.0,
        "tie_word_embeddings": true, "max_position_embeddings": 64}"#;

    fn with(key: &str, value: &str) -> String {
        let mut v: Value = serde_json::from_str(CONFIG).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert(key.to_string(), serde_json::from_str(value).unwrap_or(Value::Null));
        }
        v.to_string()
    }

    fn err(text: &str) -> String {
        match config_from_json(text) {
            Ok(c) => panic!("expected an error, got {c:?}"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn a_qwen2_config_reads_with_halves_and_biases() {
        let c = config_from_json(CONFIG).expect("config");
        assert_eq!(c.decoder.architecture, "qwen2");
        assert_eq!((c.decoder.head_dim, c.decoder.kv_dim(), c.decoder.ffn), (4, 4, 12));
        assert_eq!(c.decoder.rope_layout, RopeLayout::Halves);
        assert_eq!(c.decoder.rope_theta, 1e6);
        assert!(c.qkv_bias && c.tie_word_embeddings);
        let llama = config_from_json(&with("model_type", "\"llama\"")).expect("llama");
        assert!(!llama.qkv_bias);
        let explicit = config_from_json(&with("head_dim", "16")).expect("head_dim");
        assert_eq!(explicit.decoder.q_dim(), 32);
        let by_class = CONFIG.replace(r#""model_type": "qwen2""#, r#""architectures": ["MistralForCausalLM"]"#);
        let mut v: Value = serde_json::from_str(&by_class).unwrap_or_default();
        if let Some(o) = v.as_object_mut() {
            o.insert("sliding_window".to_string(), Value::from(32));
        }
        let mistral = config_from_json(&v.to_string()).expect("mistral");
        assert_eq!(mistral.decoder.architecture, "mistral");
        assert_eq!(mistral.decoder.trained_context, 32);
        assert!(!mistral.qkv_bias);
    }

    #[test]
    fn bad_configs_name_the_field() {
        let e = err(&with("model_type", "\"gpt2\""));
        assert!(e.contains("architecture `gpt2`"), "{e}");
        let e = err(&with("hidden_size", "-3"));
        assert!(e.contains("hidden_size") && e.contains("integer"), "{e}");
        let e = err(&with("num_key_value_heads", "3"));
        assert!(e.contains("num_key_value_heads") && e.contains("do not divide"), "{e}");
        let e = err(&with("num_attention_heads", "3"));
        assert!(
            e.contains("num_attention_heads") && e.contains("does not divide"),
            "{e}"
        );
        let e = err(&with("rope_scaling", r#"{"rope_type": "yarn", "factor": 4.0}"#));
        assert!(e.contains("rope_scaling") && e.contains("not supported"), "{e}");
        let e = err(&with("rope_scaling", r#"{"rope_type": "llama3"}"#));
        assert!(e.contains("rope_scaling") && e.contains("`factor` is missing"), "{e}");
        let e = err(&with("rms_norm_eps", "0"));
        assert!(e.contains("rms_norm_eps"), "{e}");
        let e = err(&with("hidden_act", "\"gelu\""));
        assert!(e.contains("hidden_act"), "{e}");
        let e = err(&CONFIG.replace("\"vocab_size\": 5,", ""));
        assert!(e.contains("vocab_size") && e.contains("missing"), "{e}");
        let e = err("[1, 2]");
        assert!(e.contains("JSON object"), "{e}");
    }

    /// A safetensors file of named f32 tensors, written by hand.
    fn safetensors(tensors: &[(&str, Vec<usize>, &str, Vec<u8>)]) -> Vec<u8> {
        let mut header = serde_json::Map::new();
        let mut data = Vec::new();
        for (name, shape, dtype, bytes) in tensors {
            let begin = data.len();
            data.extend_from_slice(bytes);
            header.insert(
                name.to_string(),
                serde_json::json!({"dtype": dtype, "shape": shape, "data_offsets": [begin, data.len()]}),
            );
        }
        let header = Value::Object(header).to_string().into_bytes();
        let mut out = (header.len() as u64).to_le_bytes().to_vec();
        out.extend(header);
        out.extend(data);
        out
    }

    fn f32s(n: usize) -> Vec<u8> {
        (0..n).flat_map(|i| (i as f32 * 0.01).to_le_bytes()).collect()
    }

    fn tiny_tensors() -> Vec<(&'static str, Vec<usize>, &'static str, Vec<u8>)> {
        let m = |name, r: usize, c: usize| (name, vec![r, c], "F32", f32s(r * c));
        let v = |name, n: usize| (name, vec![n], "F32", f32s(n));
        vec![
            m("model.embed_tokens.weight", 5, 8),
            v("model.norm.weight", 8),
            v("model.layers.0.input_layernorm.weight", 8),
            v("model.layers.0.post_attention_layernorm.weight", 8),
            m("model.layers.0.self_attn.q_proj.weight", 8, 8),
            v("model.layers.0.self_attn.q_proj.bias", 8),
            m("model.layers.0.self_attn.k_proj.weight", 4, 8),
            v("model.layers.0.self_attn.k_proj.bias", 4),
            m("model.layers.0.self_attn.v_proj.weight", 4, 8),
            v("model.layers.0.self_attn.v_proj.bias", 4),
            m("model.layers.0.self_attn.o_proj.weight", 8, 8),
            m("model.layers.0.mlp.gate_proj.weight", 12, 8),
            m("model.layers.0.mlp.up_proj.weight", 12, 8),
            m("model.layers.0.mlp.down_proj.weight", 8, 12),
        ]
    }

    fn load_err(tensors: &[(&str, Vec<usize>, &str, Vec<u8>)]) -> String {
        match from_memory(CONFIG, safetensors(tensors)) {
            Ok(_) => panic!("expected an error"),
            Err(e) => e.to_string(),
        }
    }

    #[test]
    fn tensors_load_and_bad_ones_name_the_tensor() {
        let w = from_memory(CONFIG, safetensors(&tiny_tensors())).expect("loads");
        assert!(w.output.is_none() && w.layers[0].bq.is_some());
        assert_eq!(w.layers[0].wk.rows(), 4);

        let mut t = tiny_tensors();
        t.retain(|x| x.0 != "model.layers.0.mlp.up_proj.weight");
        let e = load_err(&t);
        assert!(
            e.contains("model.layers.0.mlp.up_proj.weight") && e.contains("missing"),
            "{e}"
        );

        let mut t = tiny_tensors();
        t[4].1 = vec![4, 16];
        let e = load_err(&t);
        assert!(e.contains("q_proj.weight") && e.contains("expected [8, 8]"), "{e}");

        let mut t = tiny_tensors();
        t[4].2 = "I64";
        let e = load_err(&t);
        assert!(e.contains("q_proj.weight") && e.contains("I64 is not supported"), "{e}");

        let mut bytes = safetensors(&tiny_tensors());
        bytes.truncate(bytes.len() - 3);
        let e = from_memory(CONFIG, bytes).map(|_| ()).expect_err("truncated");
        assert!(e.to_string().contains("past the file"), "{e}");
        let e = from_memory(CONFIG, vec![255; 12])
            .map(|_| ())
            .expect_err("header length");
        assert!(e.to_string().contains("header length"), "{e}");
    }

    #[test]
    fn bf16_matrices_become_f16_when_exact() {
        let exact: Vec<u8> = [1.5f32, -0.25, 3.0, 0.0]
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect();
        assert_eq!(bf16_matrix(2, 2, &exact).format_name(), "f16");
        let tiny: Vec<u8> = [1e-30f32, 1.0]
            .iter()
            .flat_map(|&v| bf16::from_f32(v).to_le_bytes())
            .collect();
        match bf16_matrix(1, 2, &tiny) {
            Matrix::F32 { data, .. } => assert_eq!(data[0], bf16::from_f32(1e-30).to_f32()),
            m => panic!("expected f32, got {}", m.format_name()),
        }
    }
}
