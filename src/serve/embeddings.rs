//! Text embedding models: texts in, one vector per text out.
//!
//! A repository version with a `tokenizer.json` beside its model (see
//! [`super::repository`]) serves texts two ways:
//!
//! - KServe v2: `POST /v2/models/{m}/infer` with one `BYTES` input of texts
//!   (JSON strings, or the binary extension's length-prefixed elements);
//!   the response is the model's output, `FP32 [N, dim]`. The model's own
//!   tensor inputs (`input_ids`, `attention_mask`, ...) are accepted too.
//! - OpenAI-compatible `POST /v1/embeddings` with
//!   `{"input": "text" | ["text", ...], "model": "name"}`, answering
//!   `{"object": "list", "data": [{"object": "embedding", "index": i,
//!   "embedding": [...]}], "model": ..., "usage": {"prompt_tokens": n,
//!   "total_tokens": n}}`. `encoding_format: "base64"` (what the `openai`
//!   client sends unless told otherwise) gives each embedding as the
//!   base64 of its little-endian f32 bytes; `"float"` (the default here)
//!   as numbers. `dimensions` must equal the model's width. Its errors have
//!   OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.
//!
//! Texts are tokenized (truncated as sentence-transformers does) and run on
//! the model's session through its scheduler, in chunks of
//! [`CHUNK`] texts padded to their longest, so they share the queue,
//! timeouts and metrics with tensor requests.

use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::error::ServeError;
use super::openai::error::{invalid, OpenAiError};
use super::repository::Instance;
use crate::embed::Embedder;
use crate::graph::Graph;
use crate::model::bert::{ATTENTION_MASK, INPUT_IDS, OUTPUT, POSITION_IDS, TOKEN_TYPE_IDS};
use crate::tensor::{DType, Tensor};

/// Texts per model run; a longer list runs in several.
pub const CHUNK: usize = 32;

/// The name of the KServe input of an embedding model (any `BYTES` input
/// name is accepted).
pub const TEXT_INPUT: &str = "text";

/// The graph output that holds the embeddings.
pub(crate) fn output_index(graph: &Graph) -> usize {
    graph.outputs().iter().position(|o| o.name == OUTPUT).unwrap_or(0)
}

/// The embedding width, when the graph says it.
pub(crate) fn width(graph: &Graph) -> Option<usize> {
    graph.outputs().get(output_index(graph))?.ty.shape.last()?.known()
}

/// Graph inputs by name.
type NamedInputs = Vec<(String, Tensor)>;

/// The graph inputs for one tokenized chunk, named as the graph wants them.
fn chunk_inputs(embedder: &Embedder, graph: &Graph, texts: &[&str]) -> Result<(NamedInputs, Vec<usize>), ServeError> {
    let batch = embedder
        .tokenize(texts)
        .map_err(|e| ServeError::bad(format!("cannot tokenize the texts: {e}")))?;
    let shape = batch.input_ids.shape().to_vec();
    let (rows, seq) = (shape.first().copied().unwrap_or(0), shape.get(1).copied().unwrap_or(0));
    let tensor =
        |shape: Vec<usize>, v: Vec<i64>| Tensor::from_vec(shape, v).map_err(|e| ServeError::Internal(e.to_string()));
    let mut inputs = Vec::with_capacity(graph.inputs().len());
    for info in graph.inputs() {
        let mut t = match info.name.as_str() {
            INPUT_IDS => batch.input_ids.clone(),
            ATTENTION_MASK => batch.attention_mask.clone(),
            POSITION_IDS => {
                let shape = if info.ty.rank() == 2 { vec![1, seq] } else { vec![seq] };
                tensor(shape, (0..seq as i64).collect())?
            }
            TOKEN_TYPE_IDS => tensor(vec![rows, seq], vec![0; rows * seq])?,
            other => {
                return Err(ServeError::Internal(format!(
                    "the embedding model has an input `{other}` that texts do not give"
                )))
            }
        };
        if t.dtype() != info.ty.dtype && matches!(info.ty.dtype, DType::I32 | DType::F32) {
            t = t.cast(info.ty.dtype);
        }
        inputs.push((info.name.clone(), t));
    }
    Ok((inputs, batch.token_counts))
}

/// Embeds texts on an embedding model's instance: `[texts, dim]` f32 and
/// the token count of each text.
pub(crate) async fn embed_texts(
    inst: &Instance,
    texts: &[String],
    timeout: Option<Duration>,
) -> Result<(Tensor, Vec<usize>), ServeError> {
    let embedder = inst.embedder.as_ref().ok_or_else(|| not_embedding(&inst.name))?;
    if texts.is_empty() {
        return Err(ServeError::bad("there are no texts to embed; send at least one"));
    }
    let graph = inst.session.graph();
    let out_index = output_index(graph);
    let mut values: Vec<f32> = Vec::new();
    let mut counts = Vec::with_capacity(texts.len());
    let mut dim = 0;
    let chunk_len = match inst.config.max_batch_size {
        0 => CHUNK,
        n => n.min(CHUNK),
    };
    for chunk in texts.chunks(chunk_len) {
        let refs: Vec<&str> = chunk.iter().map(String::as_str).collect();
        let (inputs, tokens) = chunk_inputs(embedder, graph, &refs)?;
        let (inputs, rows) = inst.prepare(inputs)?;
        let mut out = inst.infer(inputs, rows, timeout).await?;
        if out_index >= out.len() {
            return Err(ServeError::Internal("the embedding model returned no output".into()));
        }
        let t = out.swap_remove(out_index);
        dim = t.numel() / chunk.len();
        values.extend(t.to_f32_vec());
        counts.extend(tokens);
    }
    let t = Tensor::from_vec(vec![texts.len(), dim], values).map_err(|e| ServeError::Internal(e.to_string()))?;
    Ok((t, counts))
}

fn not_embedding(name: &str) -> ServeError {
    ServeError::bad(format!(
        "model `{name}` is not a text embedding model (its directory has no tokenizer.json); send it tensors at /v2/models/{name}/infer"
    ))
}

/// The texts of an OpenAI `input`: a string or a list of strings.
fn input_texts(v: Option<&Value>) -> Result<Vec<String>, OpenAiError> {
    let texts = match v {
        None | Some(Value::Null) => return Err(invalid("input", "`input` is required: a string or a list of strings")),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => {
            if items.is_empty() {
                return Err(invalid("input", "`input` is an empty list; send at least one string"));
            }
            items
                .iter()
                .enumerate()
                .map(|(i, item)| match item {
                    Value::String(s) => Ok(s.clone()),
                    Value::Number(_) | Value::Array(_) => Err(invalid(
                        "input",
                        format!("`input[{i}]` is {item}: token-id inputs are not supported; send strings"),
                    )),
                    other => Err(invalid(
                        "input",
                        format!("`input[{i}]` is {other}; it must be a string"),
                    )),
                })
                .collect::<Result<_, _>>()?
        }
        Some(other) => {
            return Err(invalid(
                "input",
                format!("`input` is {other}; it must be a string or a list of strings"),
            ))
        }
    };
    if let Some(i) = texts.iter().position(String::is_empty) {
        return Err(invalid(
            "input",
            format!("`input[{i}]` is an empty string; every input must have text"),
        ));
    }
    Ok(texts)
}

/// `dimensions`: accepted only as the model's width (`width`, when known).
fn check_dimensions(d: &Value, width: Option<usize>, model: &str) -> Result<(), OpenAiError> {
    match (d.as_u64(), width) {
        (Some(n), Some(w)) if n == w as u64 => Ok(()),
        (Some(_), None) => Ok(()),
        (Some(n), Some(w)) => Err(invalid(
            "dimensions",
            format!("`dimensions` is {n}, but model `{model}` gives vectors of {w} values (it cannot shorten them)"),
        )),
        (None, _) => Err(invalid(
            "dimensions",
            format!("`dimensions` is {d}; it must be an integer"),
        )),
    }
}

const BASE64: &[u8; 64] = b"ABCDEFGHIJKLMNOPQRSTUVWXYZabcdefghijklmnopqrstuvwxyz0123456789+/";

/// Standard base64 (with padding) of `bytes`.
pub(crate) fn base64(bytes: &[u8]) -> String {
    let mut out = String::with_capacity(bytes.len().div_ceil(3) * 4);
    for chunk in bytes.chunks(3) {
        let b = [chunk[0], *chunk.get(1).unwrap_or(&0), *chunk.get(2).unwrap_or(&0)];
        let n = (u32::from(b[0]) << 16) | (u32::from(b[1]) << 8) | u32::from(b[2]);
        for i in 0..4 {
            if i <= chunk.len() {
                out.push(char::from(BASE64[(n >> (18 - 6 * i)) as usize & 63]));
            } else {
                out.push('=');
            }
        }
    }
    out
}

/// The base64 of `values` as little-endian f32 bytes (OpenAI's
/// `encoding_format: "base64"`).
pub(crate) fn base64_f32(values: &[f32]) -> String {
    let bytes: Vec<u8> = values.iter().flat_map(|v| v.to_le_bytes()).collect();
    base64(&bytes)
}

/// `POST /v1/embeddings`.
pub(crate) async fn openai_embeddings(state: &super::State, body: &[u8]) -> Result<Response, OpenAiError> {
    let req: Value = serde_json::from_slice(body).map_err(|e| {
        invalid(
            "body",
            format!("the body must be JSON like {{\"input\": [\"text\"], \"model\": \"name\"}}: {e}"),
        )
    })?;
    let obj = req
        .as_object()
        .ok_or_else(|| invalid("body", "the body must be a JSON object with `input` and `model`"))?;
    let model = match obj.get("model") {
        Some(Value::String(m)) if !m.is_empty() => m.clone(),
        None | Some(Value::Null) => {
            return Err(invalid("model", "`model` is required: the name of an embedding model"))
        }
        Some(other) => return Err(invalid("model", format!("`model` is {other}; it must be a model name"))),
    };
    let texts = input_texts(obj.get("input"))?;
    let base64 = match obj.get("encoding_format") {
        None | Some(Value::Null) => false,
        Some(Value::String(f)) if f == "float" => false,
        Some(Value::String(f)) if f == "base64" => true,
        Some(other) => {
            return Err(invalid(
                "encoding_format",
                format!("`encoding_format` is {other}; use \"float\" or \"base64\""),
            ))
        }
    };
    let inst = state.repo.get(&model, None).map_err(|e| match e {
        ServeError::NotFound(_) => OpenAiError::from(ServeError::NotFound(format!(
            "the model `{model}` does not exist in this server's repository"
        )))
        .param("model")
        .code("model_not_found"),
        other => other.into(),
    })?;
    if inst.embedder.is_none() {
        return Err(OpenAiError::from(not_embedding(&model)).param("model"));
    }
    let dimensions = obj.get("dimensions").filter(|d| !d.is_null());
    if let Some(d) = dimensions {
        check_dimensions(d, width(inst.session.graph()), &model)?;
    }
    let started = std::time::Instant::now();
    let result = embed_texts(&inst, &texts, inst.config.timeout).await;
    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    let (vectors, counts) = match result {
        Ok(r) => {
            inst.metrics.success(us, texts.len() as u64);
            r
        }
        Err(e) => {
            let reason = match e {
                ServeError::Unavailable(_) => super::metrics::FailureReason::Rejected,
                ServeError::Internal(_) => super::metrics::FailureReason::Backend,
                _ => super::metrics::FailureReason::Other,
            };
            inst.metrics.failure(reason, us);
            return Err(e.into());
        }
    };
    let dim = vectors.shape().get(1).copied().unwrap_or(0).max(1);
    let values = vectors.to_f32_vec();
    if let Some(d) = dimensions {
        check_dimensions(d, Some(dim), &model)?;
    }
    let data: Vec<Value> = values
        .chunks(dim)
        .enumerate()
        .map(|(i, v)| {
            let embedding = if base64 { json!(base64_f32(v)) } else { json!(v) };
            json!({"object": "embedding", "index": i, "embedding": embedding})
        })
        .collect();
    let tokens: usize = counts.iter().sum();
    let body = json!({
        "object": "list",
        "data": data,
        "model": model,
        "usage": {"prompt_tokens": tokens, "total_tokens": tokens},
    });
    let mut r = (StatusCode::OK, body.to_string()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    Ok(r)
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base64_matches_rfc4648_vectors() {
        // RFC 4648, section 10.
        for (plain, want) in [
            ("", ""),
            ("f", "Zg=="),
            ("fo", "Zm8="),
            ("foo", "Zm9v"),
            ("foob", "Zm9vYg=="),
            ("fooba", "Zm9vYmE="),
            ("foobar", "Zm9vYmFy"),
        ] {
            assert_eq!(base64(plain.as_bytes()), want);
        }
        assert_eq!(base64(&[0xff, 0xfe, 0xfd]), "//79");
    }

    #[test]
    fn base64_of_f32_is_little_endian() {
        // 1.0f32 = 0x3f800000 -> bytes 00 00 80 3f; -2.0 = 0xc0000000 -> 00 00 00 c0.
        assert_eq!(base64_f32(&[1.0, -2.0]), base64(&[0, 0, 0x80, 0x3f, 0, 0, 0, 0xc0]));
        assert_eq!(base64_f32(&[1.0]), "AACAPw==");
    }

    #[test]
    fn dimensions_must_equal_the_width() {
        assert!(check_dimensions(&json!(384), Some(384), "m").is_ok());
        for (d, w) in [(json!(128), Some(384)), (json!("384"), Some(384)), (json!(-1), None)] {
            let e = check_dimensions(&d, w, "m").err().unwrap();
            assert_eq!(e.param.as_deref(), Some("dimensions"));
        }
    }
}
