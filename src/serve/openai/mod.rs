//! OpenAI-compatible routes for generative models: `POST
//! /v1/chat/completions`, `POST /v1/completions`, `GET /v1/models` and
//! `GET /v1/models/{m}` (the embeddings route is in [`super::embeddings`]).
//!
//! Requests are JSON as OpenAI's API takes them; what this server does with
//! each field:
//!
//! | field | |
//! | --- | --- |
//! | `model` | required: a generative model of the repository (404 `model_not_found` otherwise) |
//! | `messages` (chat) | `system`/`developer`, `user`, `assistant` turns; `content` a string or a list of `{"type": "text", "text"}` parts (joined by `\n`); rendered with the model's chat template |
//! | `prompt` (completions) | a string, or token ids (a list of integers; a one-element list of either also works) |
//! | `max_tokens`, `max_completion_tokens` (chat) | default: chat, what the context leaves (at most [`DEFAULT_CHAT_MAX_TOKENS`]); completions, 16 as OpenAI. Prompt plus `max_tokens` past the context: 400 |
//! | `temperature` (default 1), `top_p`, `seed` | sampling (greedy at `temperature: 0`); a request without `seed` gets a fresh one |
//! | `top_k`, `min_p`, `repetition_penalty` / `repeat_penalty`, `ignore_eos` | llama.cpp's and vLLM's extra fields |
//! | `frequency_penalty`, `presence_penalty` | only 0 |
//! | `stop` | a string or up to 16 strings; the text ends before the first one found |
//! | `n` (and `best_of`) | only 1 |
//! | `logprobs`, `top_logprobs` (chat) | `logprobs: true` gives every token's log-probability, and `top_logprobs` (0 to 20) the most likely alternatives |
//! | `logprobs: K` (completions) | tokens, their log-probabilities, the top K (0 to 20; the sampled token is always among them) and text offsets (characters into `text`) |
//! | `echo` (completions) | the prompt is put before the text; with `logprobs` its positions are scored too (the first has none), and `max_tokens: 0` scores a text without generating |
//! | `stream`, `stream_options.include_usage` | server-sent events: `chat.completion.chunk` / `text_completion` chunks, the last with `finish_reason`, then (asked for) one chunk with `usage` and no choices, then `data: [DONE]` |
//!
//! Errors are `{"error": {"message", "type", "param", "code"}}`: 400
//! `invalid_request_error` naming the `param`, 404 for an unknown model,
//! 503 when the engine's queue is full. A streaming client that disconnects
//! cancels its sequence.

mod chat;
mod completions;
pub(crate) mod error;
pub(crate) mod params;
pub(crate) mod sse;

use std::sync::atomic::Ordering;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{Path, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

pub(crate) use super::llm;
pub(crate) use chat::chat_completions;
pub(crate) use completions::completions;
use error::{invalid, OpenAiError};
use llm::{Finished, LlmEngine, LlmEvent, LlmStream, PositionLogprobs, TokenOut};

use super::error::ServeError;
use super::State;
use crate::generate::tokenizer::Tokenizer;
use crate::generate::FinishReason;

/// The most tokens a chat completion generates when the request does not say.
pub const DEFAULT_CHAT_MAX_TOKENS: usize = 4096;

/// The tokens a completion generates when the request does not say (OpenAI's default).
pub const DEFAULT_COMPLETION_MAX_TOKENS: usize = 16;

/// A JSON 200 response.
pub(crate) fn json_ok(v: &Value) -> Response {
    let mut r = (StatusCode::OK, v.to_string()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

/// Seconds since the Unix epoch.
pub(crate) fn now() -> u64 {
    std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_secs())
        .unwrap_or(0)
}

/// A fresh response id: `prefix-<n>`.
pub(crate) fn fresh_id(s: &State, prefix: &str) -> String {
    format!("{prefix}-{:x}", s.next_id.fetch_add(1, Ordering::Relaxed))
}

/// The engine of a generative model; errors name the `model` field.
pub(crate) fn engine(s: &State, model: &str, version: Option<&str>) -> Result<Arc<LlmEngine>, OpenAiError> {
    s.repo.llm(model, version).map_err(|e| match e {
        ServeError::NotFound(_) => OpenAiError::from(ServeError::NotFound(format!(
            "the model `{model}` does not exist in this server's repository; GET /v1/models lists them"
        )))
        .param("model")
        .code("model_not_found"),
        ServeError::BadRequest(m) => invalid("model", m),
        other => other.into(),
    })
}

/// The required `model` field.
pub(crate) fn model_field(f: &params::Fields) -> Result<String, OpenAiError> {
    match f.string("model")? {
        Some(m) if !m.is_empty() => Ok(m.to_string()),
        _ => Err(invalid(
            "model",
            "`model` is required: the name of a model (GET /v1/models lists them)",
        )),
    }
}

/// Reads the request body (413 past the size limit, 408 past the body timeout).
pub(crate) async fn body_bytes(s: &State, headers: &HeaderMap, body: Body) -> Result<axum::body::Bytes, OpenAiError> {
    super::routes::read_body(body, headers, &s.options)
        .await
        .map_err(OpenAiError::from)
}

/// OpenAI's name of a finish reason.
pub(crate) fn finish_name(r: FinishReason) -> &'static str {
    match r {
        FinishReason::Stop => "stop",
        FinishReason::Length => "length",
    }
}

/// The `usage` object.
pub(crate) fn usage(f: &Finished) -> Value {
    json!({
        "prompt_tokens": f.prompt_tokens,
        "completion_tokens": f.completion_tokens,
        "total_tokens": f.prompt_tokens + f.completion_tokens,
    })
}

/// The text of one token as it reads in the output (`" world"`, not `Ġworld`).
pub(crate) fn piece(tok: &Tokenizer, id: u32) -> String {
    tok.decode(&[id]).unwrap_or_default()
}

/// Everything a sequence produced, for a response that is not streamed.
pub(crate) struct Collected {
    /// The prompt's log-probabilities, when asked for.
    pub prompt: Option<Vec<PositionLogprobs>>,
    /// The generated tokens.
    pub tokens: Vec<TokenOut>,
    /// The generated text.
    pub text: String,
    /// How it ended.
    pub finished: Finished,
}

/// Waits for a sequence to finish.
pub(crate) async fn collect(mut stream: LlmStream) -> Result<Collected, ServeError> {
    let mut prompt = None;
    let mut tokens = Vec::new();
    let mut text = String::new();
    loop {
        match stream.recv().await {
            Some(LlmEvent::Prompt(p)) => prompt = Some(p),
            Some(LlmEvent::Token(t)) => {
                text.push_str(&t.text);
                tokens.push(t);
            }
            Some(LlmEvent::Done(finished)) => {
                text.push_str(&finished.text_tail);
                return Ok(Collected {
                    prompt,
                    tokens,
                    text,
                    finished,
                });
            }
            Some(LlmEvent::Error(e)) => return Err(e),
            None => return Err(ended_early()),
        }
    }
}

/// The engine closed a stream without finishing it.
pub(crate) fn ended_early() -> ServeError {
    ServeError::Internal("the engine ended a sequence without finishing it".into())
}

/// A model row of `GET /v1/models`.
fn model_row(id: &str, created: u64) -> Value {
    json!({"id": id, "object": "model", "created": created, "owned_by": "wginfer"})
}

/// When the server started (the `created` of models without a load time).
fn started() -> u64 {
    static STARTED: std::sync::OnceLock<u64> = std::sync::OnceLock::new();
    *STARTED.get_or_init(now)
}

/// The ready models `/v1` serves: generative ones with their load time,
/// then text embedding ones.
fn served_models(s: &State) -> Vec<Value> {
    let mut rows: Vec<(String, Value)> = Vec::new();
    for name in s.repo.llm_names() {
        if let Ok(e) = s.repo.llm(&name, None) {
            rows.push((name.clone(), model_row(&name, e.created())));
        }
    }
    for entry in s.repo.index(true) {
        if rows.iter().any(|(n, _)| *n == entry.name) {
            continue;
        }
        if let Ok(inst) = s.repo.get(&entry.name, None) {
            if inst.embedder.is_some() {
                rows.push((entry.name.clone(), model_row(&entry.name, started())));
            }
        }
    }
    rows.sort_by(|a, b| a.0.cmp(&b.0));
    rows.into_iter().map(|(_, v)| v).collect()
}

/// `GET /v1/models`.
pub(crate) async fn models(AxState(s): AxState<Arc<State>>) -> Response {
    started();
    json_ok(&json!({"object": "list", "data": served_models(&s)}))
}

/// `GET /v1/models/{m}`.
pub(crate) async fn model(AxState(s): AxState<Arc<State>>, Path(m): Path<String>) -> Response {
    match served_models(&s).into_iter().find(|v| v["id"] == m.as_str()) {
        Some(v) => json_ok(&v),
        None => OpenAiError::from(ServeError::NotFound(format!(
            "the model `{m}` does not exist or is not ready; GET /v1/models lists them"
        )))
        .param("model")
        .code("model_not_found")
        .into_response(),
    }
}
