//! Reading request fields: typed getters whose errors name the field, and
//! the sampling, stop and length fields shared by chat, completions and
//! Triton's generate extension.

use serde_json::{Map, Value};

use super::error::{invalid, OpenAiError};
use crate::error::GenerateError;
use crate::generate::sample::SamplingOptions;

/// Most stop strings a request may give.
pub(crate) const MAX_STOPS: usize = 16;

/// Most top log-probabilities a request may ask for per position.
pub(crate) const MAX_TOP_LOGPROBS: usize = 20;

/// The fields of a JSON object; `null` reads as absent.
#[derive(Clone, Copy)]
pub(crate) struct Fields<'a> {
    obj: &'a Map<String, Value>,
    /// Prefix of the names in errors (`parameters.` for Triton's).
    prefix: &'a str,
}

impl<'a> Fields<'a> {
    /// The fields of `v`, which must be an object (`what` names it in the error).
    pub(crate) fn of(v: &'a Value, what: &str, prefix: &'a str) -> Result<Self, OpenAiError> {
        match v.as_object() {
            Some(obj) => Ok(Self { obj, prefix }),
            None => Err(invalid(
                what,
                format!("`{what}` must be a JSON object, got {}", kind(v)),
            )),
        }
    }

    /// The name of a field as errors give it.
    pub(crate) fn name(&self, field: &str) -> String {
        format!("{}{field}", self.prefix)
    }

    /// A field's value (`None` when absent or null).
    pub(crate) fn get(&self, field: &str) -> Option<&'a Value> {
        self.obj.get(field).filter(|v| !v.is_null())
    }

    fn wrong(&self, field: &str, want: &str, v: &Value) -> OpenAiError {
        let name = self.name(field);
        invalid(name.clone(), format!("`{name}` must be {want}, got {}", kind(v)))
    }

    /// A string field.
    pub(crate) fn string(&self, field: &str) -> Result<Option<&'a str>, OpenAiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::String(s)) => Ok(Some(s)),
            Some(v) => Err(self.wrong(field, "a string", v)),
        }
    }

    /// A boolean field.
    pub(crate) fn bool(&self, field: &str) -> Result<Option<bool>, OpenAiError> {
        match self.get(field) {
            None => Ok(None),
            Some(Value::Bool(b)) => Ok(Some(*b)),
            Some(v) => Err(self.wrong(field, "true or false", v)),
        }
    }

    /// An integer field.
    pub(crate) fn int(&self, field: &str) -> Result<Option<i64>, OpenAiError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => match v.as_i64().or_else(|| v.as_u64().map(|u| u as i64)) {
                Some(i) => Ok(Some(i)),
                None => Err(self.wrong(field, "an integer", v)),
            },
        }
    }

    /// A non-negative integer field.
    pub(crate) fn count(&self, field: &str) -> Result<Option<usize>, OpenAiError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => match v.as_u64() {
                Some(u) => Ok(Some(usize::try_from(u).unwrap_or(usize::MAX))),
                None => Err(self.wrong(field, "an integer >= 0", v)),
            },
        }
    }

    /// A number field.
    pub(crate) fn number(&self, field: &str) -> Result<Option<f64>, OpenAiError> {
        match self.get(field) {
            None => Ok(None),
            Some(v) => match v.as_f64() {
                Some(f) => Ok(Some(f)),
                None => Err(self.wrong(field, "a number", v)),
            },
        }
    }

    /// A number field that must be zero when given (an option not offered).
    pub(crate) fn zero(&self, field: &str, instead: &str) -> Result<(), OpenAiError> {
        match self.number(field)? {
            Some(f) if f != 0.0 => {
                let name = self.name(field);
                Err(invalid(
                    name.clone(),
                    format!("`{name}` is not supported (only 0); {instead}"),
                ))
            }
            _ => Ok(()),
        }
    }
}

/// What kind of JSON value `v` is, for messages.
pub(crate) fn kind(v: &Value) -> String {
    match v {
        Value::Null => "null".into(),
        Value::Bool(b) => format!("the boolean {b}"),
        Value::Number(n) => format!("the number {n}"),
        Value::String(s) if s.len() > 40 => "a string".into(),
        Value::String(s) => format!("the string {s:?}"),
        Value::Array(_) => "a list".into(),
        Value::Object(_) => "an object".into(),
    }
}

/// Parses a request body as a JSON object.
pub(crate) fn parse_body(body: &[u8], example: &str) -> Result<Value, OpenAiError> {
    let v: Value = serde_json::from_slice(body)
        .map_err(|e| invalid("body", format!("the body must be JSON like {example}: {e}")))?;
    if !v.is_object() {
        return Err(invalid(
            "body",
            format!("the body must be a JSON object like {example}, got {}", kind(&v)),
        ));
    }
    Ok(v)
}

/// A seed for a request that gives none: different on every call.
fn fresh_seed() -> u64 {
    use std::sync::atomic::{AtomicU64, Ordering};
    static COUNTER: AtomicU64 = AtomicU64::new(0);
    let nanos = std::time::SystemTime::now()
        .duration_since(std::time::UNIX_EPOCH)
        .map(|d| d.as_nanos() as u64)
        .unwrap_or(0);
    let n = COUNTER.fetch_add(1, Ordering::Relaxed);
    nanos ^ n.wrapping_mul(0x9E37_79B9_7F4A_7C15)
}

/// The sampling fields: `temperature` (default 1), `top_p`, `seed`, and
/// llama.cpp's / vLLM's `top_k` (`-1` or `0`: off), `min_p`,
/// `repetition_penalty` (or `repeat_penalty`); `frequency_penalty` and
/// `presence_penalty` only as 0.
pub(crate) fn sampling(f: &Fields) -> Result<SamplingOptions, OpenAiError> {
    let mut s = SamplingOptions {
        temperature: 1.0,
        seed: fresh_seed(),
        ..SamplingOptions::default()
    };
    if let Some(t) = f.number("temperature")? {
        s.temperature = t as f32;
    }
    if let Some(p) = f.number("top_p")? {
        s.top_p = p as f32;
    }
    if let Some(p) = f.number("min_p")? {
        s.min_p = p as f32;
    }
    match f.int("top_k")? {
        None => {}
        Some(k) if (-1..=0).contains(&k) => s.top_k = 0,
        Some(k) if k > 0 => s.top_k = usize::try_from(k).unwrap_or(usize::MAX),
        Some(k) => {
            let name = f.name("top_k");
            return Err(invalid(
                name.clone(),
                format!("`{name}` is {k}; give a count >= 1, or -1 or 0 for all"),
            ));
        }
    }
    let penalty_field = ["repetition_penalty", "repeat_penalty"]
        .into_iter()
        .find(|n| f.get(n).is_some());
    if let Some(field) = penalty_field {
        if let Some(p) = f.number(field)? {
            s.repetition_penalty = p as f32;
        }
    }
    if let Some(seed) = f.int("seed")? {
        s.seed = seed as u64;
    }
    let instead = "use `repetition_penalty`";
    f.zero("frequency_penalty", instead)?;
    f.zero("presence_penalty", instead)?;
    s.validate().map_err(|e| match e {
        GenerateError::Sampling { name, message } => {
            let field = if name == "repetition_penalty" {
                penalty_field.unwrap_or(name)
            } else {
                name
            };
            let name = f.name(field);
            invalid(name.clone(), format!("`{name}`: {message}"))
        }
        other => invalid("body", other.to_string()),
    })?;
    Ok(s)
}

/// The stop strings of `field`: a string or a list of strings, none empty.
pub(crate) fn stops(f: &Fields, field: &str) -> Result<Vec<String>, OpenAiError> {
    let name = f.name(field);
    let list = match f.get(field) {
        None => return Ok(Vec::new()),
        Some(Value::String(s)) => vec![s.clone()],
        Some(Value::Array(items)) => items
            .iter()
            .enumerate()
            .map(|(i, v)| match v {
                Value::String(s) => Ok(s.clone()),
                other => Err(invalid(
                    name.clone(),
                    format!("`{name}[{i}]` must be a string, got {}", kind(other)),
                )),
            })
            .collect::<Result<Vec<_>, _>>()?,
        Some(other) => {
            return Err(invalid(
                name.clone(),
                format!("`{name}` must be a string or a list of strings, got {}", kind(other)),
            ))
        }
    };
    if list.len() > MAX_STOPS {
        return Err(invalid(
            name.clone(),
            format!("`{name}` has {} strings; give at most {MAX_STOPS}", list.len()),
        ));
    }
    if list.iter().any(String::is_empty) {
        return Err(invalid(name.clone(), format!("`{name}` has an empty string")));
    }
    Ok(list)
}

/// `n` (and `best_of`) must be 1 when given.
pub(crate) fn single_choice(f: &Fields, field: &str) -> Result<(), OpenAiError> {
    match f.int(field)? {
        None | Some(1) => Ok(()),
        Some(n) => Err(invalid(
            field,
            format!("`{field}` is {n}; this server returns one choice per request (n = 1): send {n} requests instead"),
        )),
    }
}

/// `stream` and `stream_options.include_usage`.
pub(crate) fn streaming(f: &Fields) -> Result<(bool, bool), OpenAiError> {
    let stream = f.bool("stream")?.unwrap_or(false);
    let Some(opts) = f.get("stream_options") else {
        return Ok((stream, false));
    };
    if !stream {
        return Err(invalid(
            "stream_options",
            "`stream_options` is only allowed with `stream: true`",
        ));
    }
    let o = Fields::of(opts, "stream_options", "stream_options.")?;
    Ok((true, o.bool("include_usage")?.unwrap_or(false)))
}

/// How many tokens to generate: the asked `max_tokens` when prompt and
/// completion fit the context (400 naming `param` otherwise), else
/// `default` capped at what the context leaves. A prompt that fills the
/// context is a 400 naming `prompt_param`.
pub(crate) fn budget(
    context: usize,
    prompt_len: usize,
    asked: Option<(usize, &str)>,
    default: usize,
    prompt_param: &str,
) -> Result<usize, OpenAiError> {
    let need_new = usize::from(asked.is_none_or(|(n, _)| n > 0));
    if prompt_len + need_new > context {
        return Err(invalid(
            prompt_param,
            format!(
                "the prompt is {prompt_len} tokens and the model's context is {context}: shorten the `{prompt_param}`"
            ),
        )
        .code("context_length_exceeded"));
    }
    match asked {
        None => Ok(default.min(context - prompt_len)),
        Some((n, _)) if prompt_len.saturating_add(n) <= context => Ok(n),
        Some((n, param)) => Err(invalid(
            param,
            format!(
                "this model's maximum context length is {context} tokens, but {} were asked for ({prompt_len} in the prompt, {n} for the completion): lower `{param}` or shorten the prompt",
                prompt_len.saturating_add(n)
            ),
        )
        .code("context_length_exceeded")),
    }
}

#[cfg(test)]
mod tests {
    use super::*;
    use serde_json::json;

    fn fields(v: &Value) -> Fields<'_> {
        Fields::of(v, "body", "").unwrap()
    }

    fn param(e: OpenAiError) -> String {
        e.param.unwrap_or_default()
    }

    #[test]
    fn sampling_defaults_and_fields() {
        let v = json!({});
        let s = sampling(&fields(&v)).unwrap();
        assert_eq!(s.temperature, 1.0);
        assert_eq!(s.top_p, 1.0);
        let v =
            json!({"temperature": 0, "top_p": 0.5, "top_k": 40, "min_p": 0.1, "repetition_penalty": 1.1, "seed": 7});
        let s = sampling(&fields(&v)).unwrap();
        assert_eq!(
            (s.temperature, s.top_p, s.top_k, s.min_p, s.repetition_penalty, s.seed),
            (0.0, 0.5, 40, 0.1, 1.1, 7)
        );
        let v = json!({"top_k": -1, "repeat_penalty": 1.2, "frequency_penalty": 0});
        let s = sampling(&fields(&v)).unwrap();
        assert_eq!((s.top_k, s.repetition_penalty), (0, 1.2));
    }

    #[test]
    fn sampling_errors_name_the_field() {
        for (body, p) in [
            (json!({"temperature": -1}), "temperature"),
            (json!({"temperature": "hot"}), "temperature"),
            (json!({"top_p": 0}), "top_p"),
            (json!({"top_p": 1.5}), "top_p"),
            (json!({"min_p": 2}), "min_p"),
            (json!({"top_k": -2}), "top_k"),
            (json!({"top_k": 1.5}), "top_k"),
            (json!({"repeat_penalty": 0}), "repeat_penalty"),
            (json!({"repetition_penalty": -1}), "repetition_penalty"),
            (json!({"seed": "x"}), "seed"),
            (json!({"presence_penalty": 0.5}), "presence_penalty"),
            (json!({"frequency_penalty": 1}), "frequency_penalty"),
        ] {
            let e = sampling(&fields(&body))
                .err()
                .unwrap_or_else(|| panic!("{body} accepted"));
            assert_eq!(e.err.status(), 400);
            assert_eq!(param(e), p, "{body}");
        }
        let v = json!({"temperature": -1});
        let f = Fields::of(&v, "parameters", "parameters.").unwrap();
        assert_eq!(param(sampling(&f).err().unwrap()), "parameters.temperature");
    }

    #[test]
    fn stop_strings() {
        let v = json!({"stop": "\n", "s2": ["a", "bc"], "bad": [1], "empty": [""], "obj": {}});
        let f = fields(&v);
        assert_eq!(stops(&f, "stop").unwrap(), vec!["\n"]);
        assert_eq!(stops(&f, "s2").unwrap(), vec!["a", "bc"]);
        assert!(stops(&f, "none").unwrap().is_empty());
        for bad in ["bad", "empty", "obj"] {
            assert_eq!(param(stops(&f, bad).err().unwrap()), bad);
        }
        let many = json!({"stop": vec!["x"; MAX_STOPS + 1]});
        assert!(stops(&fields(&many), "stop").is_err());
    }

    #[test]
    fn n_and_streaming() {
        assert!(single_choice(&fields(&json!({"n": 1})), "n").is_ok());
        assert!(single_choice(&fields(&json!({"n": null})), "n").is_ok());
        assert_eq!(param(single_choice(&fields(&json!({"n": 2})), "n").err().unwrap()), "n");
        assert_eq!(streaming(&fields(&json!({}))).unwrap(), (false, false));
        let v = json!({"stream": true, "stream_options": {"include_usage": true}});
        assert_eq!(streaming(&fields(&v)).unwrap(), (true, true));
        let v = json!({"stream_options": {"include_usage": true}});
        assert_eq!(param(streaming(&fields(&v)).err().unwrap()), "stream_options");
        let v = json!({"stream": "yes"});
        assert_eq!(param(streaming(&fields(&v)).err().unwrap()), "stream");
        let v = json!({"stream": true, "stream_options": {"include_usage": 1}});
        assert_eq!(
            param(streaming(&fields(&v)).err().unwrap()),
            "stream_options.include_usage"
        );
    }

    #[test]
    fn token_budget() {
        assert_eq!(budget(100, 10, None, 16, "prompt").unwrap(), 16);
        assert_eq!(budget(100, 90, None, 16, "prompt").unwrap(), 10);
        assert_eq!(budget(100, 10, Some((90, "max_tokens")), 16, "prompt").unwrap(), 90);
        assert_eq!(budget(100, 100, Some((0, "max_tokens")), 16, "prompt").unwrap(), 0);
        let e = budget(100, 10, Some((91, "max_tokens")), 16, "prompt").err().unwrap();
        assert_eq!(
            (e.param.as_deref(), e.code),
            (Some("max_tokens"), Some("context_length_exceeded"))
        );
        let e = budget(100, 100, None, 16, "messages").err().unwrap();
        assert_eq!(e.param.as_deref(), Some("messages"));
        let e = budget(100, 5, Some((usize::MAX, "max_completion_tokens")), 16, "prompt")
            .err()
            .unwrap();
        assert_eq!(e.param.as_deref(), Some("max_completion_tokens"));
    }
}
