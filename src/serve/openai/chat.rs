//! `POST /v1/chat/completions`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State as AxState;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use super::error::{invalid, OpenAiError};
use super::llm::{LlmEngine, LlmEvent, LlmRequest, TokenOut};
use super::params::{self, Fields, MAX_TOP_LOGPROBS};
use super::{finish_name, json_ok, piece, sse, usage, State};
use crate::generate::chat::ChatMessage;
use crate::generate::sample::{SamplingOptions, TokenLogprob};
use crate::generate::tokenizer::Tokenizer;

const EXAMPLE: &str = r#"{"model": "name", "messages": [{"role": "user", "content": "Hello"}]}"#;

/// A parsed chat request.
#[derive(Debug)]
pub(crate) struct ChatRequest {
    pub model: String,
    pub messages: Vec<ChatMessage>,
    /// `max_completion_tokens` or `max_tokens`, with the field's name.
    pub max_tokens: Option<(usize, &'static str)>,
    pub sampling: SamplingOptions,
    pub stop: Vec<String>,
    pub stop_at_eos: bool,
    /// `Some(k)`: log-probabilities with the top `k`.
    pub logprobs: Option<usize>,
    pub stream: bool,
    pub include_usage: bool,
}

/// The text of a message's `content`: a string or a list of text parts.
fn content(v: Option<&Value>, at: &str) -> Result<String, OpenAiError> {
    let param = format!("{at}.content");
    match v {
        Some(Value::String(s)) => Ok(s.clone()),
        Some(Value::Array(parts)) => {
            let mut texts = Vec::with_capacity(parts.len());
            for (j, part) in parts.iter().enumerate() {
                let p = Fields::of(part, &format!("{param}[{j}]"), "")?;
                match (p.string("type")?, p.get("text")) {
                    (Some("text"), Some(Value::String(t))) => texts.push(t.as_str()),
                    (Some("text"), _) => {
                        return Err(invalid(
                            param.clone(),
                            format!("`{param}[{j}]` is a text part without a `text` string"),
                        ))
                    }
                    (t, _) => {
                        return Err(invalid(
                            param.clone(),
                            format!("`{param}[{j}]` has type {t:?}; this model reads text parts only"),
                        ))
                    }
                }
            }
            Ok(texts.join("\n"))
        }
        None => Err(invalid(
            param.clone(),
            format!("`{param}` is required: a string or a list of text parts"),
        )),
        Some(other) => Err(invalid(
            param.clone(),
            format!(
                "`{param}` must be a string or a list of text parts, got {}",
                params::kind(other)
            ),
        )),
    }
}

/// The conversation of `messages`.
fn messages(v: Option<&Value>) -> Result<Vec<ChatMessage>, OpenAiError> {
    let list = match v {
        Some(Value::Array(list)) if !list.is_empty() => list,
        Some(Value::Array(_)) => return Err(invalid("messages", "`messages` is empty; send at least one message")),
        None => {
            return Err(invalid(
                "messages",
                "`messages` is required: a list of {\"role\", \"content\"}",
            ))
        }
        Some(other) => {
            return Err(invalid(
                "messages",
                format!("`messages` must be a list, got {}", params::kind(other)),
            ))
        }
    };
    let mut out = Vec::with_capacity(list.len());
    for (i, m) in list.iter().enumerate() {
        let at = format!("messages[{i}]");
        let f = Fields::of(m, &at, "")?;
        let role = match f.string("role").map_err(|e| e.param(format!("{at}.role")))? {
            Some(r @ ("system" | "user" | "assistant")) => r,
            Some("developer") => "system",
            Some(r) => {
                return Err(invalid(
                    format!("{at}.role"),
                    format!("`{at}.role` is {r:?}; use \"system\", \"user\" or \"assistant\""),
                ))
            }
            None => return Err(invalid(format!("{at}.role"), format!("`{at}.role` is required"))),
        };
        if f.get("tool_calls")
            .is_some_and(|t| t.as_array().is_none_or(|a| !a.is_empty()))
        {
            return Err(invalid(format!("{at}.tool_calls"), "tool calls are not supported"));
        }
        out.push(ChatMessage::new(role, content(f.get("content"), &at)?));
    }
    Ok(out)
}

/// `logprobs` and `top_logprobs`.
fn logprobs(f: &Fields) -> Result<Option<usize>, OpenAiError> {
    let on = f.bool("logprobs")?.unwrap_or(false);
    let top = f.count("top_logprobs")?;
    match top {
        Some(k) if k > MAX_TOP_LOGPROBS => Err(invalid(
            "top_logprobs",
            format!("`top_logprobs` is {k}; give 0 to {MAX_TOP_LOGPROBS}"),
        )),
        Some(_) if !on => Err(invalid("top_logprobs", "`top_logprobs` needs `logprobs: true`")),
        _ if on => Ok(Some(top.unwrap_or(0))),
        _ => Ok(None),
    }
}

/// Parses a chat completion request body.
pub(crate) fn parse(v: &Value) -> Result<ChatRequest, OpenAiError> {
    let f = Fields::of(v, "body", "")?;
    let model = super::model_field(&f)?;
    let messages = messages(f.get("messages"))?;
    let max_tokens = match f.count("max_completion_tokens")? {
        Some(n) => Some((n, "max_completion_tokens")),
        None => f.count("max_tokens")?.map(|n| (n, "max_tokens")),
    };
    if let Some((0, param)) = max_tokens {
        return Err(invalid(param, format!("`{param}` is 0; ask for at least 1 token")));
    }
    params::single_choice(&f, "n")?;
    for unsupported in ["tools", "functions"] {
        if f.get(unsupported)
            .and_then(Value::as_array)
            .is_some_and(|a| !a.is_empty())
        {
            return Err(invalid(
                unsupported,
                format!("`{unsupported}` (tool calling) is not supported"),
            ));
        }
    }
    let (stream, include_usage) = params::streaming(&f)?;
    Ok(ChatRequest {
        model,
        messages,
        max_tokens,
        sampling: params::sampling(&f)?,
        stop: params::stops(&f, "stop")?,
        stop_at_eos: !f.bool("ignore_eos")?.unwrap_or(false),
        logprobs: logprobs(&f)?,
        stream,
        include_usage,
    })
}

/// One entry of `logprobs.content`.
fn logprob_entry(tok: &Tokenizer, id: u32, logprob: Option<f32>, top: &[TokenLogprob]) -> Value {
    let one = |id: u32, logprob: Option<f32>| {
        let t = piece(tok, id);
        json!({"token": t, "logprob": logprob, "bytes": t.as_bytes()})
    };
    let mut v = one(id, logprob);
    v["top_logprobs"] = top.iter().map(|t| one(t.id, Some(t.logprob))).collect();
    v
}

fn logprobs_json(tok: &Tokenizer, tokens: &[TokenOut]) -> Value {
    let content: Vec<Value> = tokens
        .iter()
        .map(|t| logprob_entry(tok, t.id, t.logprob, &t.top))
        .collect();
    json!({"content": content})
}

/// `POST /v1/chat/completions`.
pub(crate) async fn chat_completions(AxState(s): AxState<Arc<State>>, headers: HeaderMap, body: Body) -> Response {
    match run(&s, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn run(s: &State, headers: &HeaderMap, body: Body) -> Result<Response, OpenAiError> {
    let body = super::body_bytes(s, headers, body).await?;
    let req = parse(&params::parse_body(&body, EXAMPLE)?)?;
    let engine = super::engine(s, &req.model, None)?;
    let rendered = engine.chat_prompt(&req.messages).map_err(|e| {
        invalid(
            "messages",
            format!("the model's chat template cannot render these messages: {e}"),
        )
    })?;
    let prompt = engine
        .encode(&rendered)
        .map_err(|e| invalid("messages", format!("cannot tokenize the rendered messages: {e}")))?;
    let max_tokens = params::budget(
        engine.context(),
        prompt.len(),
        req.max_tokens,
        super::DEFAULT_CHAT_MAX_TOKENS,
        "messages",
    )?;
    let stream = engine.submit(LlmRequest {
        prompt,
        max_tokens,
        sampling: req.sampling.clone(),
        stop: req.stop.clone(),
        stop_at_eos: req.stop_at_eos,
        logprobs: req.logprobs,
        prompt_logprobs: None,
    })?;
    let head = Head {
        id: super::fresh_id(s, "chatcmpl"),
        created: super::now(),
        model: req.model.clone(),
    };
    if req.stream {
        return Ok(streamed(engine, stream, head, &req));
    }
    let out = super::collect(stream).await?;
    let logprobs = match req.logprobs {
        Some(_) => logprobs_json(engine.tokenizer(), &out.tokens),
        None => Value::Null,
    };
    Ok(json_ok(&json!({
        "id": head.id,
        "object": "chat.completion",
        "created": head.created,
        "model": head.model,
        "choices": [{
            "index": 0,
            "message": {"role": "assistant", "content": out.text},
            "logprobs": logprobs,
            "finish_reason": finish_name(out.finished.reason),
        }],
        "usage": usage(&out.finished),
    })))
}

/// What every chunk of one response repeats.
pub(crate) struct Head {
    pub id: String,
    pub created: u64,
    pub model: String,
}

/// A `chat.completion.chunk` with one choice (or none, with `usage`).
fn chunk(head: &Head, choice: Option<Value>, usage: Option<Value>, include_usage: bool) -> Bytes {
    let mut v = json!({
        "id": head.id,
        "object": "chat.completion.chunk",
        "created": head.created,
        "model": head.model,
        "choices": choice.into_iter().collect::<Vec<_>>(),
    });
    if include_usage {
        v["usage"] = usage.unwrap_or(Value::Null);
    }
    sse::frame(&v)
}

fn delta(content: Value, logprobs: Value, finish: Value) -> Value {
    json!({"index": 0, "delta": content, "logprobs": logprobs, "finish_reason": finish})
}

/// The response as server-sent events.
fn streamed(engine: Arc<LlmEngine>, stream: super::llm::LlmStream, head: Head, req: &ChatRequest) -> Response {
    let (want_logprobs, include_usage) = (req.logprobs.is_some(), req.include_usage);
    let first = chunk(
        &head,
        Some(delta(
            json!({"role": "assistant", "content": ""}),
            Value::Null,
            Value::Null,
        )),
        None,
        include_usage,
    );
    let render = move |event: Option<LlmEvent>| -> Vec<Bytes> {
        let mut out = Vec::new();
        match event {
            Some(LlmEvent::Prompt(_)) => {}
            Some(LlmEvent::Token(t)) => {
                if !t.text.is_empty() || want_logprobs {
                    let lp = if want_logprobs {
                        logprobs_json(engine.tokenizer(), std::slice::from_ref(&t))
                    } else {
                        Value::Null
                    };
                    let d = delta(json!({"content": t.text}), lp, Value::Null);
                    out.push(chunk(&head, Some(d), None, include_usage));
                }
            }
            Some(LlmEvent::Done(f)) => {
                if !f.text_tail.is_empty() {
                    let d = delta(json!({"content": f.text_tail}), Value::Null, Value::Null);
                    out.push(chunk(&head, Some(d), None, include_usage));
                }
                let d = delta(json!({}), Value::Null, json!(finish_name(f.reason)));
                out.push(chunk(&head, Some(d), None, include_usage));
                if include_usage {
                    out.push(chunk(&head, None, Some(usage(&f)), true));
                }
                out.push(sse::done());
            }
            Some(LlmEvent::Error(e)) => out.extend([sse::frame(&OpenAiError::from(e).body()), sse::done()]),
            None => out.extend([sse::frame(&OpenAiError::from(super::ended_early()).body()), sse::done()]),
        }
        out
    };
    sse::respond(stream, vec![first], render)
}

#[cfg(test)]
mod tests {
    use super::*;

    fn err_param(v: Value) -> String {
        match parse(&v) {
            Ok(r) => panic!("accepted {v}: {r:?}"),
            Err(e) => {
                assert_eq!(e.err.status(), 400, "{v}");
                e.param.unwrap_or_default()
            }
        }
    }

    #[test]
    fn parses_messages_and_fields() {
        let v = json!({
            "model": "m",
            "messages": [
                {"role": "developer", "content": "Be brief."},
                {"role": "user", "content": [{"type": "text", "text": "a"}, {"type": "text", "text": "b"}]},
                {"role": "assistant", "content": "ok", "name": "bot"},
            ],
            "max_tokens": 5, "max_completion_tokens": 7, "temperature": 0, "stop": ["x"],
            "logprobs": true, "top_logprobs": 3, "stream": true, "stream_options": {"include_usage": true},
            "n": 1, "user": "ignored", "ignore_eos": true,
        });
        let r = parse(&v).unwrap();
        assert_eq!(r.model, "m");
        assert_eq!(
            r.messages,
            vec![
                ChatMessage::new("system", "Be brief."),
                ChatMessage::new("user", "a\nb"),
                ChatMessage::new("assistant", "ok"),
            ]
        );
        assert_eq!(r.max_tokens, Some((7, "max_completion_tokens")));
        assert_eq!(r.sampling.temperature, 0.0);
        assert_eq!(r.stop, vec!["x"]);
        assert_eq!(r.logprobs, Some(3));
        assert!(r.stream && r.include_usage && !r.stop_at_eos);
        let r =
            parse(&json!({"model": "m", "messages": [{"role": "user", "content": "hi"}], "logprobs": true})).unwrap();
        assert_eq!((r.logprobs, r.max_tokens, r.stream), (Some(0), None, false));
    }

    #[test]
    fn errors_name_the_field() {
        let user = json!([{"role": "user", "content": "hi"}]);
        let cases = [
            (json!({"messages": user}), "model"),
            (json!({"model": 3, "messages": user}), "model"),
            (json!({"model": "m"}), "messages"),
            (json!({"model": "m", "messages": []}), "messages"),
            (json!({"model": "m", "messages": "hi"}), "messages"),
            (json!({"model": "m", "messages": ["hi"]}), "messages[0]"),
            (
                json!({"model": "m", "messages": [{"role": "tool", "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "m", "messages": [{"content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "m", "messages": [{"role": 1, "content": "x"}]}),
                "messages[0].role",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user"}]}),
                "messages[0].content",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": 5}]}),
                "messages[0].content",
            ),
            (
                json!({"model": "m", "messages": [{"role": "user", "content": [{"type": "image_url", "image_url": {}}]}]}),
                "messages[0].content",
            ),
            (json!({"model": "m", "messages": user, "n": 2}), "n"),
            (json!({"model": "m", "messages": user, "max_tokens": -1}), "max_tokens"),
            (json!({"model": "m", "messages": user, "max_tokens": 0}), "max_tokens"),
            (
                json!({"model": "m", "messages": user, "max_completion_tokens": "9"}),
                "max_completion_tokens",
            ),
            (
                json!({"model": "m", "messages": user, "top_logprobs": 2}),
                "top_logprobs",
            ),
            (
                json!({"model": "m", "messages": user, "logprobs": true, "top_logprobs": 21}),
                "top_logprobs",
            ),
            (json!({"model": "m", "messages": user, "logprobs": 1}), "logprobs"),
            (json!({"model": "m", "messages": user, "stop": 1}), "stop"),
            (
                json!({"model": "m", "messages": user, "temperature": -0.5}),
                "temperature",
            ),
            (
                json!({"model": "m", "messages": user, "tools": [{"type": "function"}]}),
                "tools",
            ),
            (
                json!({"model": "m", "messages": user, "stream": false, "stream_options": {}}),
                "stream_options",
            ),
        ];
        for (body, param) in cases {
            assert_eq!(err_param(body.clone()), param, "{body}");
        }
    }
}
