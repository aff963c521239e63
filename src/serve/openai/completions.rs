//! `POST /v1/completions`.

use std::sync::Arc;

use axum::body::{Body, Bytes};
use axum::extract::State as AxState;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use serde_json::{json, Map, Value};

use super::chat::Head;
use super::error::{invalid, OpenAiError};
use super::llm::{LlmEngine, LlmEvent, LlmRequest, LlmStream, PositionLogprobs, TokenOut};
use super::params::{self, Fields, MAX_TOP_LOGPROBS};
use super::{finish_name, json_ok, piece, sse, usage, State};
use crate::generate::sample::{SamplingOptions, TokenLogprob};
use crate::generate::tokenizer::Tokenizer;

const EXAMPLE: &str = r#"{"model": "name", "prompt": "Once upon a time"}"#;

/// A prompt: text, or token ids used as given.
#[derive(Debug, PartialEq)]
pub(crate) enum Prompt {
    Text(String),
    Ids(Vec<u32>),
}

/// A parsed completion request.
#[derive(Debug)]
pub(crate) struct CompletionRequest {
    pub model: String,
    pub prompt: Prompt,
    pub max_tokens: Option<usize>,
    pub sampling: SamplingOptions,
    pub stop: Vec<String>,
    pub stop_at_eos: bool,
    /// `Some(k)`: log-probabilities with the top `k`.
    pub logprobs: Option<usize>,
    pub echo: bool,
    pub stream: bool,
    pub include_usage: bool,
}

fn ids(list: &[Value]) -> Option<Vec<u32>> {
    list.iter()
        .map(|v| v.as_u64().and_then(|u| u32::try_from(u).ok()))
        .collect()
}

/// `prompt`: a string, a list of token ids, or a one-element list of either.
fn prompt(v: Option<&Value>) -> Result<Prompt, OpenAiError> {
    let bad = |msg: String| Err(invalid("prompt", msg));
    match v {
        None => bad("`prompt` is required: a string or a list of token ids".into()),
        Some(Value::String(s)) => Ok(Prompt::Text(s.clone())),
        Some(Value::Array(list)) if list.is_empty() => bad("`prompt` is an empty list".into()),
        Some(Value::Array(list)) if list.iter().all(Value::is_number) => match ids(list) {
            Some(ids) => Ok(Prompt::Ids(ids)),
            None => bad("`prompt` holds a number that is not a token id (an integer >= 0)".into()),
        },
        Some(Value::Array(list)) if list.len() > 1 => bad(format!(
            "`prompt` holds {} prompts; this server takes one prompt per request",
            list.len()
        )),
        Some(Value::Array(list)) => match &list[0] {
            Value::String(s) => Ok(Prompt::Text(s.clone())),
            Value::Array(inner) if !inner.is_empty() => match ids(inner) {
                Some(ids) => Ok(Prompt::Ids(ids)),
                None => bad("`prompt[0]` must be a list of token ids (integers >= 0)".into()),
            },
            other => bad(format!(
                "`prompt[0]` must be a string or a list of token ids, got {}",
                params::kind(other)
            )),
        },
        Some(other) => bad(format!(
            "`prompt` must be a string or a list of token ids, got {}",
            params::kind(other)
        )),
    }
}

/// Parses a completion request body.
pub(crate) fn parse(v: &Value) -> Result<CompletionRequest, OpenAiError> {
    let f = Fields::of(v, "body", "")?;
    let model = super::model_field(&f)?;
    let prompt = prompt(f.get("prompt"))?;
    let echo = f.bool("echo")?.unwrap_or(false);
    let max_tokens = f.count("max_tokens")?;
    if max_tokens == Some(0) && !echo {
        return Err(invalid(
            "max_tokens",
            "`max_tokens` is 0: that only scores the prompt, with `echo: true`",
        ));
    }
    let logprobs = f.count("logprobs")?;
    if let Some(k) = logprobs.filter(|&k| k > MAX_TOP_LOGPROBS) {
        return Err(invalid(
            "logprobs",
            format!("`logprobs` is {k}; give 0 to {MAX_TOP_LOGPROBS}"),
        ));
    }
    params::single_choice(&f, "n")?;
    params::single_choice(&f, "best_of")?;
    if f.string("suffix")?.is_some_and(|s| !s.is_empty()) {
        return Err(invalid("suffix", "`suffix` (insertion) is not supported"));
    }
    let (stream, include_usage) = params::streaming(&f)?;
    Ok(CompletionRequest {
        model,
        prompt,
        max_tokens,
        sampling: params::sampling(&f)?,
        stop: params::stops(&f, "stop")?,
        stop_at_eos: !f.bool("ignore_eos")?.unwrap_or(false),
        logprobs,
        echo,
        stream,
        include_usage,
    })
}

/// The legacy `logprobs` object, built token by token; `text_offset` counts
/// characters of the token texts from the start of the choice's `text`.
#[derive(Default)]
struct Logprobs {
    tokens: Vec<String>,
    token_logprobs: Vec<Value>,
    top: Vec<Value>,
    offsets: Vec<usize>,
    offset: usize,
}

impl Logprobs {
    /// Adds a position; `top: None` for a position without a distribution
    /// (the prompt's first). The sampled token is always in its top map.
    fn push(&mut self, tok: &Tokenizer, id: u32, logprob: Option<f32>, top: Option<&[TokenLogprob]>) {
        let text = piece(tok, id);
        self.offsets.push(self.offset);
        self.offset += text.chars().count();
        self.token_logprobs.push(json!(logprob));
        self.top.push(match (top, logprob) {
            (Some(top), Some(lp)) => {
                let mut m = Map::new();
                for t in top {
                    m.entry(piece(tok, t.id)).or_insert(json!(t.logprob));
                }
                m.entry(text.clone()).or_insert(json!(lp));
                Value::Object(m)
            }
            _ => Value::Null,
        });
        self.tokens.push(text);
    }

    fn prompt(&mut self, tok: &Tokenizer, positions: &[PositionLogprobs]) {
        for p in positions {
            self.push(tok, p.id, p.logprob, Some(&p.top));
        }
    }

    fn token(&mut self, tok: &Tokenizer, t: &TokenOut) {
        self.push(tok, t.id, t.logprob, Some(&t.top));
    }

    /// The object of the positions added since the last call.
    fn take(&mut self) -> Value {
        json!({
            "tokens": std::mem::take(&mut self.tokens),
            "token_logprobs": std::mem::take(&mut self.token_logprobs),
            "top_logprobs": std::mem::take(&mut self.top),
            "text_offset": std::mem::take(&mut self.offsets),
        })
    }
}

/// `POST /v1/completions`.
pub(crate) async fn completions(AxState(s): AxState<Arc<State>>, headers: HeaderMap, body: Body) -> Response {
    match run(&s, &headers, body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

/// The prompt's token ids and its text.
fn encode(engine: &LlmEngine, prompt: Prompt) -> Result<(Vec<u32>, String), OpenAiError> {
    let (ids, text) = match prompt {
        Prompt::Text(t) => {
            let ids = engine
                .encode(&t)
                .map_err(|e| invalid("prompt", format!("cannot tokenize the prompt: {e}")))?;
            (ids, t)
        }
        Prompt::Ids(ids) => {
            let text = engine
                .tokenizer()
                .decode(&ids)
                .map_err(|e| invalid("prompt", format!("`prompt`: {e}")))?;
            (ids, text)
        }
    };
    if ids.is_empty() {
        return Err(invalid("prompt", "the prompt is empty; give at least one token"));
    }
    Ok((ids, text))
}

async fn run(s: &State, headers: &HeaderMap, body: Body) -> Result<Response, OpenAiError> {
    let body = super::body_bytes(s, headers, body).await?;
    let mut req = parse(&params::parse_body(&body, EXAMPLE)?)?;
    let engine = super::engine(s, &req.model, None)?;
    let prompt = std::mem::replace(&mut req.prompt, Prompt::Ids(Vec::new()));
    let (ids, prompt_text) = encode(&engine, prompt)?;
    let max_tokens = params::budget(
        engine.context(),
        ids.len(),
        req.max_tokens.map(|n| (n, "max_tokens")),
        super::DEFAULT_COMPLETION_MAX_TOKENS,
        "prompt",
    )?;
    let stream = engine.submit(LlmRequest {
        prompt: ids,
        max_tokens,
        sampling: req.sampling.clone(),
        stop: req.stop.clone(),
        stop_at_eos: req.stop_at_eos,
        logprobs: req.logprobs,
        prompt_logprobs: req.logprobs.filter(|_| req.echo),
    })?;
    let head = Head {
        id: super::fresh_id(s, "cmpl"),
        created: super::now(),
        model: req.model.clone(),
    };
    let echo = req.echo.then_some(prompt_text);
    if req.stream {
        return Ok(streamed(engine, stream, head, &req, echo));
    }
    let out = super::collect(stream).await?;
    let tok = engine.tokenizer();
    let logprobs = req.logprobs.map(|_| {
        let mut lp = Logprobs::default();
        if let (Some(_), Some(p)) = (&echo, &out.prompt) {
            lp.prompt(tok, p);
        }
        out.tokens.iter().for_each(|t| lp.token(tok, t));
        lp.take()
    });
    Ok(json_ok(&json!({
        "id": head.id,
        "object": "text_completion",
        "created": head.created,
        "model": head.model,
        "choices": [{
            "index": 0,
            "text": echo.unwrap_or_default() + &out.text,
            "logprobs": logprobs,
            "finish_reason": finish_name(out.finished.reason),
        }],
        "usage": usage(&out.finished),
    })))
}

/// A `text_completion` chunk with one choice (or none, with `usage`).
fn chunk(head: &Head, choice: Option<Value>, usage: Option<Value>, include_usage: bool) -> Bytes {
    let mut v = json!({
        "id": head.id,
        "object": "text_completion",
        "created": head.created,
        "model": head.model,
        "choices": choice.into_iter().collect::<Vec<_>>(),
    });
    if include_usage {
        v["usage"] = usage.unwrap_or(Value::Null);
    }
    sse::frame(&v)
}

fn choice(text: &str, logprobs: Value, finish: Value) -> Value {
    json!({"index": 0, "text": text, "logprobs": logprobs, "finish_reason": finish})
}

/// The response as server-sent events; with `echo`, the prompt's text (and
/// its scores, when asked for) comes first.
fn streamed(
    engine: Arc<LlmEngine>,
    stream: LlmStream,
    head: Head,
    req: &CompletionRequest,
    echo: Option<String>,
) -> Response {
    let (want, include_usage) = (req.logprobs.is_some(), req.include_usage);
    let mut lp = Logprobs::default();
    let mut first = Vec::new();
    let mut echo_scored = None;
    match echo {
        Some(text) if want => echo_scored = Some(text),
        Some(text) => first.push(chunk(
            &head,
            Some(choice(&text, Value::Null, Value::Null)),
            None,
            include_usage,
        )),
        None => {}
    }
    let render = move |event: Option<LlmEvent>| -> Vec<Bytes> {
        let tok = engine.tokenizer();
        let mut out = Vec::new();
        match event {
            Some(LlmEvent::Prompt(p)) => {
                if let Some(text) = echo_scored.take() {
                    lp.prompt(tok, &p);
                    out.push(chunk(
                        &head,
                        Some(choice(&text, lp.take(), Value::Null)),
                        None,
                        include_usage,
                    ));
                }
            }
            Some(LlmEvent::Token(t)) => {
                let scores = if want {
                    lp.token(tok, &t);
                    lp.take()
                } else {
                    Value::Null
                };
                if want || !t.text.is_empty() {
                    out.push(chunk(
                        &head,
                        Some(choice(&t.text, scores, Value::Null)),
                        None,
                        include_usage,
                    ));
                }
            }
            Some(LlmEvent::Done(f)) => {
                let reason = json!(finish_name(f.reason));
                out.push(chunk(
                    &head,
                    Some(choice(&f.text_tail, Value::Null, reason)),
                    None,
                    include_usage,
                ));
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
    sse::respond(stream, first, render)
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
    fn prompt_forms() {
        let p = |v: Value| parse(&json!({"model": "m", "prompt": v})).unwrap().prompt;
        assert_eq!(p(json!("hi")), Prompt::Text("hi".into()));
        assert_eq!(p(json!(["hi"])), Prompt::Text("hi".into()));
        assert_eq!(p(json!([1, 2, 3])), Prompt::Ids(vec![1, 2, 3]));
        assert_eq!(p(json!([[4, 5]])), Prompt::Ids(vec![4, 5]));
    }

    #[test]
    fn fields() {
        let r = parse(&json!({
            "model": "m", "prompt": "x", "echo": true, "max_tokens": 0, "logprobs": 2,
            "stop": "\n", "best_of": 1, "suffix": "", "seed": 3, "temperature": 0.5,
        }))
        .unwrap();
        assert!(r.echo);
        assert_eq!((r.max_tokens, r.logprobs), (Some(0), Some(2)));
        assert_eq!(r.stop, vec!["\n"]);
        assert_eq!((r.sampling.seed, r.sampling.temperature), (3, 0.5));
        let r = parse(&json!({"model": "m", "prompt": "x", "logprobs": null})).unwrap();
        assert_eq!((r.logprobs, r.max_tokens, r.echo), (None, None, false));
    }

    #[test]
    fn errors_name_the_field() {
        let cases = [
            (json!({"prompt": "x"}), "model"),
            (json!({"model": "m"}), "prompt"),
            (json!({"model": "m", "prompt": []}), "prompt"),
            (json!({"model": "m", "prompt": ["a", "b"]}), "prompt"),
            (json!({"model": "m", "prompt": [[1], [2]]}), "prompt"),
            (json!({"model": "m", "prompt": [-1, 2]}), "prompt"),
            (json!({"model": "m", "prompt": [1.5]}), "prompt"),
            (json!({"model": "m", "prompt": [[]]}), "prompt"),
            (json!({"model": "m", "prompt": {"text": "x"}}), "prompt"),
            (json!({"model": "m", "prompt": "x", "max_tokens": 0}), "max_tokens"),
            (json!({"model": "m", "prompt": "x", "max_tokens": 1.5}), "max_tokens"),
            (json!({"model": "m", "prompt": "x", "logprobs": 21}), "logprobs"),
            (json!({"model": "m", "prompt": "x", "logprobs": true}), "logprobs"),
            (json!({"model": "m", "prompt": "x", "n": 3}), "n"),
            (json!({"model": "m", "prompt": "x", "best_of": 2}), "best_of"),
            (json!({"model": "m", "prompt": "x", "suffix": "end"}), "suffix"),
            (json!({"model": "m", "prompt": "x", "echo": "yes"}), "echo"),
            (json!({"model": "m", "prompt": "x", "top_p": 2}), "top_p"),
        ];
        for (body, param) in cases {
            assert_eq!(err_param(body.clone()), param, "{body}");
        }
    }
}
