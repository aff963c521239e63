//! BERT sentence embedders (all-MiniLM-L6-v2 and its kin) built as an
//! ordinary wginfer graph from a Hugging Face model directory: `config.json`
//! plus `model.safetensors`, the way candle builds models from configs.
//!
//! The graph (every op a registered one, so sessions on any backend,
//! `wginfer quantize` and `wginfer prune --method layers` work on it and it
//! saves as a model file):
//!
//! ```text
//! inputs: input_ids i64 [batch, seq], attention_mask i64 [batch, seq] (1 keep, 0 pad),
//!         position_ids i64 [seq] (0..seq, made on the host)
//! embeddings.word      Gather(word_embeddings, input_ids)
//! embeddings.position  Gather(position_and_type0, position_ids)   (token type 0 folded in)
//! embeddings.sum       Add;  embeddings.LayerNorm
//! mask.float           Cast(attention_mask → f32)
//! encoder.layer.{i}.…  Q/K/V Linear, Attention(mask), output Linear + residual + LayerNorm,
//!                      intermediate Linear + Gelu, output Linear + residual + LayerNorm
//! pooling              MaskedMeanPool(hidden, mask)
//! normalize            L2Normalize → sentence_embedding f32 [batch, hidden]
//! ```
//!
//! Parameter names are the checkpoint's (a `bert.` prefix is dropped), except
//! `embeddings.position_and_type0`: the position table plus token-type row 0
//! (sentence embedders feed token type 0 only). Node names keep the
//! checkpoint's `encoder.layer.{i}.` prefix, which is how layer dropping finds
//! the residual blocks.

use std::collections::HashMap;
use std::path::Path;
use std::sync::Arc;

use serde_json::Value;

use crate::error::{Error, GraphError, ModelError};
use crate::graph::{Graph, Node, ParamInfo, ValueInfo};
use crate::ops::{self, Attrs, Op};
use crate::tensor::{DType, Dim, Tensor, ValueType};

use super::Model;

/// The input names of a built BERT graph.
pub const INPUT_IDS: &str = "input_ids";
/// Attention mask input (1 keep, 0 pad), i64 `[batch, seq]`.
pub const ATTENTION_MASK: &str = "attention_mask";
/// Position ids input, i64 `[seq]` (`0..seq`).
pub const POSITION_IDS: &str = "position_ids";
/// Token type ids: not an input of the built graph (type 0 is folded in), but
/// an input the embedder fills with zeros when an imported model has it.
pub const TOKEN_TYPE_IDS: &str = "token_type_ids";
/// The output name.
pub const OUTPUT: &str = "sentence_embedding";
/// Prefix of the node names of encoder layer `i` (`encoder.layer.{i}.`).
pub const LAYER_PREFIX: &str = "encoder.layer.";

/// The fields of a Hugging Face BERT `config.json` that the graph needs.
#[derive(Clone, Debug, PartialEq)]
pub struct BertConfig {
    /// Vocabulary rows of the word embedding table.
    pub vocab_size: usize,
    /// Hidden width (`num_attention_heads` × head size).
    pub hidden_size: usize,
    /// Encoder layers.
    pub num_hidden_layers: usize,
    /// Attention heads per layer.
    pub num_attention_heads: usize,
    /// Feed-forward width.
    pub intermediate_size: usize,
    /// Rows of the position table: the longest sequence the model takes.
    pub max_position_embeddings: usize,
    /// Rows of the token-type table.
    pub type_vocab_size: usize,
    /// LayerNorm epsilon.
    pub layer_norm_eps: f32,
}

/// Pooling of the last hidden states into one vector per sequence.
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub struct Pooling {
    /// Mean over the unmasked tokens (else the `[CLS]` token: not supported yet).
    pub mean: bool,
    /// L2-normalise the pooled vector (sentence-transformers' `Normalize` module).
    pub normalize: bool,
}

impl Default for Pooling {
    fn default() -> Self {
        Self {
            mean: true,
            normalize: true,
        }
    }
}

fn cfg_err(file: &str, field: &str, message: impl Into<String>) -> ModelError {
    ModelError::Config {
        file: file.to_string(),
        field: field.to_string(),
        message: message.into(),
    }
}

impl BertConfig {
    /// Parses `config.json` text. Every missing or malformed field is a
    /// [`ModelError::Config`] naming it.
    pub fn from_json(text: &str) -> Result<Self, ModelError> {
        const FILE: &str = "config.json";
        let v: Value = serde_json::from_str(text).map_err(|e| cfg_err(FILE, "(document)", format!("not JSON: {e}")))?;
        let obj = v
            .as_object()
            .ok_or_else(|| cfg_err(FILE, "(document)", "must be a JSON object"))?;
        let int = |name: &str| -> Result<usize, ModelError> {
            let f = obj.get(name).ok_or_else(|| cfg_err(FILE, name, "is missing"))?;
            let n = f
                .as_u64()
                .ok_or_else(|| cfg_err(FILE, name, format!("must be a positive integer, got {f}")))?;
            if n == 0 {
                return Err(cfg_err(FILE, name, "must be positive, got 0"));
            }
            usize::try_from(n).map_err(|_| cfg_err(FILE, name, format!("{n} is too large")))
        };
        if let Some(t) = obj.get("model_type").and_then(Value::as_str) {
            if t != "bert" {
                return Err(cfg_err(FILE, "model_type", format!("`{t}`: only `bert` is supported")));
            }
        }
        if let Some(act) = obj.get("hidden_act") {
            if act.as_str() != Some("gelu") {
                return Err(cfg_err(
                    FILE,
                    "hidden_act",
                    format!("{act}: only \"gelu\" (exact erf GELU) is supported"),
                ));
            }
        }
        if let Some(p) = obj.get("position_embedding_type") {
            if p.as_str() != Some("absolute") {
                return Err(cfg_err(
                    FILE,
                    "position_embedding_type",
                    format!("{p}: only \"absolute\" is supported"),
                ));
            }
        }
        let layer_norm_eps = match obj.get("layer_norm_eps") {
            None => 1e-12,
            Some(f) => f
                .as_f64()
                .filter(|e| *e > 0.0)
                .ok_or_else(|| cfg_err(FILE, "layer_norm_eps", format!("must be a positive number, got {f}")))?
                as f32,
        };
        let c = Self {
            vocab_size: int("vocab_size")?,
            hidden_size: int("hidden_size")?,
            num_hidden_layers: int("num_hidden_layers")?,
            num_attention_heads: int("num_attention_heads")?,
            intermediate_size: int("intermediate_size")?,
            max_position_embeddings: int("max_position_embeddings")?,
            type_vocab_size: obj.get("type_vocab_size").map_or(Ok(2), |_| int("type_vocab_size"))?,
            layer_norm_eps,
        };
        if !c.hidden_size.is_multiple_of(c.num_attention_heads) {
            return Err(cfg_err(
                FILE,
                "num_attention_heads",
                format!(
                    "{} does not divide hidden_size {}",
                    c.num_attention_heads, c.hidden_size
                ),
            ));
        }
        Ok(c)
    }

    /// Reads and parses a `config.json` file.
    pub fn load(path: &Path) -> Result<Self, ModelError> {
        let text = std::fs::read_to_string(path).map_err(|source| ModelError::Io {
            action: "cannot read",
            path: path.to_path_buf(),
            source,
        })?;
        Self::from_json(&text)
    }
}

/// Reads `1_Pooling/config.json` and `modules.json` of a sentence-transformers
/// directory when present (mean pooling and normalisation otherwise).
pub fn load_pooling(dir: &Path) -> Result<Pooling, ModelError> {
    let mut p = Pooling::default();
    let pool_file = dir.join("1_Pooling").join("config.json");
    if let Ok(text) = std::fs::read_to_string(&pool_file) {
        let v: Value = serde_json::from_str(&text)
            .map_err(|e| cfg_err("1_Pooling/config.json", "(document)", format!("not JSON: {e}")))?;
        for mode in [
            "pooling_mode_cls_token",
            "pooling_mode_max_tokens",
            "pooling_mode_mean_sqrt_len_tokens",
        ] {
            if v.get(mode).and_then(Value::as_bool) == Some(true) {
                return Err(cfg_err(
                    "1_Pooling/config.json",
                    mode,
                    "only mean pooling (pooling_mode_mean_tokens) is supported",
                ));
            }
        }
        p.mean = v
            .get("pooling_mode_mean_tokens")
            .and_then(Value::as_bool)
            .unwrap_or(true);
        if !p.mean {
            return Err(cfg_err(
                "1_Pooling/config.json",
                "pooling_mode_mean_tokens",
                "only mean pooling is supported",
            ));
        }
    }
    if let Ok(text) = std::fs::read_to_string(dir.join("modules.json")) {
        let v: Value =
            serde_json::from_str(&text).map_err(|e| cfg_err("modules.json", "(document)", format!("not JSON: {e}")))?;
        let types: Vec<&str> = v
            .as_array()
            .map(|a| a.iter().filter_map(|m| m.get("type").and_then(Value::as_str)).collect())
            .unwrap_or_default();
        p.normalize = types.iter().any(|t| t.ends_with(".Normalize"));
    }
    Ok(p)
}

/// Reads the checkpoint tensors the graph needs from `model.safetensors`
/// (names with or without a `bert.` prefix; f32, f16 or bf16, kept as f32).
pub fn load_checkpoint(path: &Path) -> Result<HashMap<String, Tensor>, ModelError> {
    let bytes = std::fs::read(path).map_err(|source| ModelError::Io {
        action: "cannot read",
        path: path.to_path_buf(),
        source,
    })?;
    let st = super::parse_safetensors(&bytes)?;
    let mut out = HashMap::new();
    for (name, view) in st.tensors() {
        let key = name.strip_prefix("bert.").unwrap_or(&name).to_string();
        let Some(dtype) = DType::from_safetensors(view.dtype()) else {
            continue;
        };
        let t = Tensor::from_le_bytes(dtype, view.shape().to_vec(), view.data())?;
        let t = if matches!(dtype, DType::F16 | DType::BF16) {
            t.cast(DType::F32)
        } else {
            t
        };
        out.insert(key, t);
    }
    Ok(out)
}

/// Loads a Hugging Face BERT directory (`config.json`, `model.safetensors`,
/// optional sentence-transformers pooling config) as a model.
pub fn load_dir(dir: &Path) -> Result<Model, Error> {
    let with_path = |path: &Path, source: ModelError| Error::Load {
        path: path.to_path_buf(),
        source: Box::new(source),
    };
    let cfg_path = dir.join("config.json");
    let config = BertConfig::load(&cfg_path).map_err(|e| with_path(&cfg_path, e))?;
    let pooling = load_pooling(dir).map_err(|e| with_path(dir, e))?;
    let st_path = dir.join("model.safetensors");
    let tensors = load_checkpoint(&st_path).map_err(|e| with_path(&st_path, e))?;
    let name = dir.file_name().and_then(|n| n.to_str()).unwrap_or("bert").to_string();
    build(&name, &config, pooling, &tensors).map_err(|e| with_path(&st_path, e))
}

/// Builds the graph of `config` over checkpoint `tensors` (names without the
/// `bert.` prefix). A missing tensor is [`ModelError::MissingTensor`]; one of
/// the wrong shape [`ModelError::TensorShape`].
pub fn build(
    name: &str,
    config: &BertConfig,
    pooling: Pooling,
    tensors: &HashMap<String, Tensor>,
) -> Result<Model, ModelError> {
    let mut b = Builder {
        tensors,
        params: Vec::new(),
        nodes: Vec::new(),
    };
    let h = config.hidden_size;
    let eps = config.layer_norm_eps;

    // Embeddings.
    let word = b.param("embeddings.word_embeddings.weight", &[config.vocab_size, h])?;
    let pos = b.fetch(
        "embeddings.position_embeddings.weight",
        &[config.max_position_embeddings, h],
    )?;
    let ty = b.fetch("embeddings.token_type_embeddings.weight", &[config.type_vocab_size, h])?;
    let (pos, ty) = (pos.to_f32_vec(), ty.to_f32_vec());
    let folded: Vec<f32> = pos.iter().enumerate().map(|(i, p)| p + ty[i % h]).collect();
    let pos_name = "embeddings.position_and_type0".to_string();
    b.own_param(
        &pos_name,
        Tensor::from_vec(vec![config.max_position_embeddings, h], folded)?,
    );
    let gather = attrs(&[("axis", 0.into())]);
    let we = b.node("embeddings.word", "Gather", &gather, &[&word, INPUT_IDS])?;
    let pe = b.node("embeddings.position", "Gather", &gather, &[&pos_name, POSITION_IDS])?;
    let sum = b.node("embeddings.sum", "Add", &Attrs::new(), &[&we, &pe])?;
    let mut x = b.layer_norm("embeddings.LayerNorm", &sum, h, eps)?;
    let mask = b.node("mask.float", "Cast", &attrs(&[("to", "f32".into())]), &[ATTENTION_MASK])?;

    // Encoder.
    let attn = attrs(&[("num_heads", (config.num_attention_heads as i64).into())]);
    let gelu = attrs(&[("approximate", "none".into())]);
    for i in 0..config.num_hidden_layers {
        let p = format!("{LAYER_PREFIX}{i}.");
        let q = b.linear(&format!("{p}attention.self.query"), &x, h, h)?;
        let k = b.linear(&format!("{p}attention.self.key"), &x, h, h)?;
        let v = b.linear(&format!("{p}attention.self.value"), &x, h, h)?;
        let ctx = b.node(&format!("{p}attention.self"), "Attention", &attn, &[&q, &k, &v, &mask])?;
        let o = b.linear(&format!("{p}attention.output.dense"), &ctx, h, h)?;
        let r = b.node(
            &format!("{p}attention.output.residual"),
            "Add",
            &Attrs::new(),
            &[&o, &x],
        )?;
        let a = b.layer_norm(&format!("{p}attention.output.LayerNorm"), &r, h, eps)?;
        let f = b.linear(&format!("{p}intermediate.dense"), &a, config.intermediate_size, h)?;
        let g = b.node(&format!("{p}intermediate.gelu"), "Gelu", &gelu, &[&f])?;
        let o2 = b.linear(&format!("{p}output.dense"), &g, h, config.intermediate_size)?;
        let r2 = b.node(&format!("{p}output.residual"), "Add", &Attrs::new(), &[&o2, &a])?;
        x = b.layer_norm(&format!("{p}output.LayerNorm"), &r2, h, eps)?;
    }

    // Pooling.
    let pooled = b.node("pooling", "MaskedMeanPool", &Attrs::new(), &[&x, &mask])?;
    if pooling.normalize {
        b.node(
            "normalize",
            "L2Normalize",
            &attrs(&[("axis", (-1).into()), ("epsilon", 1e-12.into())]),
            &[&pooled],
        )?;
    }
    // The graph output has a fixed name.
    if let Some(last) = b.nodes.last_mut() {
        last.outputs = vec![OUTPUT.to_string()];
    }

    let sym = |s: &str| Dim::Sym(s.to_string());
    let inputs = vec![
        ValueInfo {
            name: INPUT_IDS.into(),
            ty: ValueType {
                dtype: DType::I64,
                shape: vec![sym("batch"), sym("seq")],
            },
        },
        ValueInfo {
            name: ATTENTION_MASK.into(),
            ty: ValueType {
                dtype: DType::I64,
                shape: vec![sym("batch"), sym("seq")],
            },
        },
        ValueInfo {
            name: POSITION_IDS.into(),
            ty: ValueType {
                dtype: DType::I64,
                shape: vec![sym("seq")],
            },
        },
    ];
    let outputs = vec![ValueInfo {
        name: OUTPUT.into(),
        ty: ValueType {
            dtype: DType::F32,
            shape: vec![sym("batch"), Dim::Known(h)],
        },
    }];
    let infos: Vec<ParamInfo> = b
        .params
        .iter()
        .map(|(n, t)| ParamInfo::plain(n, t.dtype(), t.shape().to_vec()))
        .collect();
    let graph = Graph::new(name, inputs, outputs, infos, b.nodes)?;
    Model::new(graph, b.params.into_iter().collect())
}

fn attrs(pairs: &[(&str, Value)]) -> Attrs {
    pairs.iter().map(|(k, v)| (k.to_string(), v.clone())).collect()
}

struct Builder<'a> {
    tensors: &'a HashMap<String, Tensor>,
    params: Vec<(String, Tensor)>,
    nodes: Vec<Node>,
}

impl Builder<'_> {
    /// A checkpoint tensor of this shape, as f32.
    fn fetch(&self, name: &str, shape: &[usize]) -> Result<Tensor, ModelError> {
        let t = self
            .tensors
            .get(name)
            .ok_or_else(|| ModelError::MissingTensor { name: name.to_string() })?;
        if t.shape() != shape {
            return Err(ModelError::TensorShape {
                name: name.to_string(),
                expected: shape.to_vec(),
                found: t.shape().to_vec(),
            });
        }
        if t.dtype() != DType::F32 {
            return Err(ModelError::TensorDType {
                name: name.to_string(),
                expected: DType::F32,
                found: t.dtype().to_string(),
            });
        }
        Ok(t.clone())
    }

    /// A checkpoint tensor as a graph parameter of the same name.
    fn param(&mut self, name: &str, shape: &[usize]) -> Result<String, ModelError> {
        let t = self.fetch(name, shape)?;
        self.own_param(name, t);
        Ok(name.to_string())
    }

    fn own_param(&mut self, name: &str, t: Tensor) {
        self.params.push((name.to_string(), t));
    }

    /// Appends a node of a registered op; its output is named after the node.
    fn node(&mut self, name: &str, op: &str, a: &Attrs, inputs: &[&str]) -> Result<String, ModelError> {
        let def = ops::lookup(op).ok_or_else(|| GraphError::UnknownOp {
            node: name.to_string(),
            op: op.to_string(),
            known: ops::known_ops(),
        })?;
        let built: Arc<dyn Op> = (def.build)(a).map_err(|source| GraphError::Node {
            node: name.to_string(),
            op: op.to_string(),
            source,
        })?;
        let out = format!("{name}.out");
        self.nodes.push(Node {
            name: name.to_string(),
            op: built,
            inputs: inputs.iter().map(|s| s.to_string()).collect(),
            outputs: vec![out.clone()],
        });
        Ok(out)
    }

    /// `Linear` over the checkpoint's `{prefix}.weight` `[out, inp]` and `{prefix}.bias`.
    fn linear(&mut self, prefix: &str, x: &str, out: usize, inp: usize) -> Result<String, ModelError> {
        let w = self.param(&format!("{prefix}.weight"), &[out, inp])?;
        let bias = self.param(&format!("{prefix}.bias"), &[out])?;
        self.node(prefix, "Linear", &Attrs::new(), &[x, &w, &bias])
    }

    /// `LayerNormalization` over the checkpoint's `{prefix}.weight` and `{prefix}.bias`.
    fn layer_norm(&mut self, prefix: &str, x: &str, h: usize, eps: f32) -> Result<String, ModelError> {
        let g = self.param(&format!("{prefix}.weight"), &[h])?;
        let bias = self.param(&format!("{prefix}.bias"), &[h])?;
        let a = attrs(&[("axis", (-1).into()), ("epsilon", (eps as f64).into())]);
        self.node(prefix, "LayerNormalization", &a, &[x, &g, &bias])
    }
}
