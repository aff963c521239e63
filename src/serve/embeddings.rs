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
//!   "total_tokens": n}}`. Its errors have OpenAI's shape:
//!   `{"error": {"message", "type", "param", "code"}}`.
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

/// An error in OpenAI's shape.
#[derive(Debug)]
pub(crate) struct OpenAiError {
    err: ServeError,
    param: Option<&'static str>,
    code: Option<&'static str>,
}

impl From<ServeError> for OpenAiError {
    fn from(err: ServeError) -> Self {
        Self {
            err,
            param: None,
            code: None,
        }
    }
}

fn invalid(param: &'static str, msg: impl Into<String>) -> OpenAiError {
    OpenAiError {
        err: ServeError::bad(msg),
        param: Some(param),
        code: None,
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let status = self.err.status();
        let kind = match status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            s if s.is_client_error() => "invalid_request_error",
            _ => "server_error",
        };
        let message = match &self.err {
            ServeError::Internal(detail) => {
                log::error!("internal error: {detail}");
                "internal server error; the details are in the server log".to_string()
            }
            other => other.to_string(),
        };
        let body = json!({"error": {"message": message, "type": kind, "param": self.param, "code": self.code}});
        let mut r = (status, body.to_string()).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    }
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
    match obj.get("encoding_format") {
        None | Some(Value::Null) => {}
        Some(Value::String(f)) if f == "float" => {}
        Some(other) => {
            return Err(invalid(
                "encoding_format",
                format!("`encoding_format` is {other}; only \"float\" is supported"),
            ))
        }
    }
    let inst = state.repo.get(&model, None).map_err(|e| match e {
        ServeError::NotFound(_) => OpenAiError {
            err: ServeError::NotFound(format!(
                "the model `{model}` does not exist in this server's repository"
            )),
            param: Some("model"),
            code: Some("model_not_found"),
        },
        other => other.into(),
    })?;
    if inst.embedder.is_none() {
        return Err(OpenAiError {
            err: not_embedding(&model),
            param: Some("model"),
            code: None,
        });
    }
    if let Some(d) = obj.get("dimensions").filter(|d| !d.is_null()) {
        let want = width(inst.session.graph());
        if d.as_u64().map(|d| d as usize) != want || want.is_none() {
            return Err(invalid(
                "dimensions",
                format!("`dimensions` is {d}, but model `{model}` only gives vectors of {want:?} values"),
            ));
        }
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
    let data: Vec<Value> = values
        .chunks(dim)
        .enumerate()
        .map(|(i, v)| json!({"object": "embedding", "index": i, "embedding": v}))
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
