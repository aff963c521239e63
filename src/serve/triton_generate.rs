//! Triton's generate extension for generative models:
//! `POST /v2/models/{m}[/versions/{v}]/generate` and `.../generate_stream`.
//!
//! The request is `{"text_input": "...", "parameters": {...}}`; the text is
//! tokenized as given (no chat template). `parameters` (or the same names at
//! the top level, as TensorRT-LLM's ensembles send them) takes
//! `max_tokens` (default 16), `temperature` (default 1; 0 is greedy),
//! `top_p`, `top_k`, `min_p`, `repetition_penalty`, `seed`, `stop` (or
//! `stop_words`), `ignore_eos`, and `exclude_input_in_output` (default
//! true: `text_output` is the generated text only; false puts the input
//! before it). The answer is `{"model_name", "model_version",
//! "text_output"}`; `generate_stream` sends one such object per piece of
//! text as server-sent events (`data: {...}`), the last with
//! `finish_reason` too. Errors are Triton's `{"error": "..."}`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::{Path, State as AxState};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::error::ServeError;
use super::openai::error::{invalid, public_message, OpenAiError};
use super::openai::llm::{LlmEvent, LlmRequest};
use super::openai::params::{self, Fields};
use super::openai::{collect, ended_early, finish_name, json_ok, sse};
use super::State;

type S = Arc<State>;

const EXAMPLE: &str = r#"{"text_input": "Once upon a time", "parameters": {"max_tokens": 16}}"#;

/// A Triton-shaped error (`{"error": "..."}`) of an OpenAI-shaped one.
fn triton(e: OpenAiError) -> ServeError {
    e.err
}

/// A parsed generate request.
struct GenerateRequest {
    text: String,
    max_tokens: Option<usize>,
    sampling: crate::generate::sample::SamplingOptions,
    stop: Vec<String>,
    stop_at_eos: bool,
    exclude_input: bool,
}

/// The fields of `parameters`, each also read at the top level when absent there.
fn merged(v: &Value) -> Result<Value, OpenAiError> {
    let top = Fields::of(v, "body", "")?;
    let mut m: Map<String, Value> = top.get("parameters").map_or(Ok(Map::new()), |p| {
        Fields::of(p, "parameters", "")?;
        Ok::<_, OpenAiError>(p.as_object().cloned().unwrap_or_default())
    })?;
    if let Some(obj) = v.as_object() {
        for (k, val) in obj {
            if k != "parameters" && k != "text_input" {
                m.entry(k.clone()).or_insert_with(|| val.clone());
            }
        }
    }
    Ok(Value::Object(m))
}

fn parse(v: &Value) -> Result<GenerateRequest, OpenAiError> {
    let top = Fields::of(v, "body", "")?;
    let text = match top.get("text_input") {
        Some(Value::String(s)) => s.clone(),
        Some(Value::Array(a)) if a.len() == 1 && a[0].is_string() => a[0].as_str().unwrap_or_default().to_string(),
        None => return Err(invalid("text_input", "`text_input` is required: the prompt text")),
        Some(other) => {
            return Err(invalid(
                "text_input",
                format!("`text_input` must be a string, got {}", params::kind(other)),
            ))
        }
    };
    let p = merged(v)?;
    let f = Fields::of(&p, "parameters", "")?;
    let stop_field = if f.get("stop").is_some() { "stop" } else { "stop_words" };
    Ok(GenerateRequest {
        text,
        max_tokens: f.count("max_tokens")?,
        sampling: params::sampling(&f)?,
        stop: params::stops(&f, stop_field)?,
        stop_at_eos: !f.bool("ignore_eos")?.unwrap_or(false),
        exclude_input: f.bool("exclude_input_in_output")?.unwrap_or(true),
    })
}

/// `POST /v2/models/{m}/generate`.
pub(crate) async fn generate(
    AxState(s): AxState<S>,
    Path(m): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    respond(run(&s, &m, None, &headers, body, false).await)
}

/// `POST /v2/models/{m}/versions/{v}/generate`.
pub(crate) async fn generate_v(
    AxState(s): AxState<S>,
    Path((m, v)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    respond(run(&s, &m, Some(&v), &headers, body, false).await)
}

/// `POST /v2/models/{m}/generate_stream`.
pub(crate) async fn generate_stream(
    AxState(s): AxState<S>,
    Path(m): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    respond(run(&s, &m, None, &headers, body, true).await)
}

/// `POST /v2/models/{m}/versions/{v}/generate_stream`.
pub(crate) async fn generate_stream_v(
    AxState(s): AxState<S>,
    Path((m, v)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    respond(run(&s, &m, Some(&v), &headers, body, true).await)
}

fn respond(r: Result<Response, ServeError>) -> Response {
    r.unwrap_or_else(IntoResponse::into_response)
}

async fn run(
    s: &State,
    m: &str,
    v: Option<&str>,
    headers: &HeaderMap,
    body: Body,
    stream: bool,
) -> Result<Response, ServeError> {
    let body = super::openai::body_bytes(s, headers, body).await.map_err(triton)?;
    let req = parse(&params::parse_body(&body, EXAMPLE).map_err(triton)?).map_err(triton)?;
    let engine = super::openai::engine(s, m, v).map_err(triton)?;
    let version = match v {
        Some(v) => v.to_string(),
        None => s.repo.versions(m).last().map(u64::to_string).unwrap_or_default(),
    };
    let prompt = engine
        .encode(&req.text)
        .map_err(|e| ServeError::bad(format!("cannot tokenize `text_input`: {e}")))?;
    let max_tokens = params::budget(
        engine.context(),
        prompt.len(),
        req.max_tokens.map(|n| (n, "parameters.max_tokens")),
        super::openai::DEFAULT_COMPLETION_MAX_TOKENS,
        "text_input",
    )
    .map_err(triton)?;
    let llm = engine.submit(LlmRequest {
        prompt,
        max_tokens,
        sampling: req.sampling,
        stop: req.stop,
        stop_at_eos: req.stop_at_eos,
        logprobs: None,
        prompt_logprobs: None,
    })?;
    let prefix = if req.exclude_input { String::new() } else { req.text };
    let out = |text: &str| json!({"model_name": m, "model_version": version, "text_output": text});
    if !stream {
        let done = collect(llm).await?;
        let mut v = out(&(prefix + &done.text));
        v["finish_reason"] = json!(finish_name(done.finished.reason));
        return Ok(json_ok(&v));
    }
    let (name, mut pending) = (m.to_string(), Some(prefix));
    let render = move |event: Option<LlmEvent>| -> Vec<Bytes> {
        let piece = |text: String| json!({"model_name": name, "model_version": version, "text_output": text});
        match event {
            Some(LlmEvent::Token(t)) if !t.text.is_empty() || pending.as_ref().is_some_and(|p| !p.is_empty()) => {
                let text = pending.take().unwrap_or_default() + &t.text;
                vec![sse::frame(&piece(text))]
            }
            Some(LlmEvent::Prompt(_)) | Some(LlmEvent::Token(_)) => Vec::new(),
            Some(LlmEvent::Done(f)) => {
                let mut v = piece(pending.take().unwrap_or_default() + &f.text_tail);
                v["finish_reason"] = json!(finish_name(f.reason));
                vec![sse::frame(&v)]
            }
            Some(LlmEvent::Error(e)) => vec![sse::frame(&json!({"error": public_message(&e)}))],
            None => vec![sse::frame(&json!({"error": ended_early().to_string()}))],
        }
    };
    Ok(sse::respond(llm, Vec::new(), render))
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn parameters_and_top_level_fields() {
        let r = parse(&json!({
            "text_input": "Hi",
            "parameters": {"max_tokens": 8, "temperature": 0, "stop": ["."], "exclude_input_in_output": false},
            "top_k": 5, "temperature": 0.7,
        }))
        .unwrap();
        assert_eq!(r.text, "Hi");
        assert_eq!(r.max_tokens, Some(8));
        assert_eq!((r.sampling.temperature, r.sampling.top_k), (0.0, 5));
        assert_eq!(r.stop, vec!["."]);
        assert!(!r.exclude_input && r.stop_at_eos);
        let r = parse(&json!({"text_input": ["Hi"], "stop_words": "x"})).unwrap();
        assert_eq!(
            (r.text.as_str(), r.stop.clone(), r.exclude_input),
            ("Hi", vec!["x".to_string()], true)
        );
    }

    #[test]
    fn errors() {
        for (body, param) in [
            (json!({}), "text_input"),
            (json!({"text_input": 3}), "text_input"),
            (json!({"text_input": "x", "parameters": 3}), "parameters"),
            (
                json!({"text_input": "x", "parameters": {"max_tokens": "a"}}),
                "max_tokens",
            ),
            (json!({"text_input": "x", "parameters": {"top_p": 0}}), "top_p"),
        ] {
            let e = parse(&body).err().unwrap_or_else(|| panic!("accepted {body}"));
            assert_eq!(e.param.as_deref(), Some(param), "{body}");
            assert!(e.err.to_string().contains(param), "{}", e.err);
        }
    }
}
