//! The OpenAI-compatible routes and Triton's generate extension on the
//! shipped SmolLM2-135M (WGINFER_SMOLLM2_GGUF; SKIPPED without it):
//! in-process through the router, checked against `Generator` on the same
//! file (greedy text, token counts, `Generator::score` log-probabilities)
//! and against the numpy reference's greedy answer; every error case; and
//! the real `openai` Python client against the `wginfer serve` binary
//! (tests/e2e/openai_client.py).

mod common;

use std::io::{BufRead, BufReader, Write};
use std::path::{Path, PathBuf};
use std::process::{Child, Command, Stdio};
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, Method, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tempfile::TempDir;
use tower::ServiceExt;
use wginfer::generate::chat::ChatMessage;
use wginfer::generate::{GenerateOptions, Generator};
use wginfer::serve::{Server, ServerOptions};
use wginfer::Device;

const MODEL: &str = "smollm2";
const CONTEXT: usize = 256;
const SYSTEM: &str = "You are a helpful AI assistant named SmolLM, trained by Hugging Face";
/// The chat case of models/smollm2/prompts.json and its greedy answer under
/// the numpy reference (`reference.py --generate`).
const QUESTION: &str = "What is the capital of France? Answer in one short sentence.";
const ANSWER: &str = "The capital of France is Paris.";
/// Log-probabilities of the batched engine against `Generator::score` (its
/// decode steps run 16-bit activations; scoring runs the f32 prompt path).
const LOGPROB_TOL: f32 = 5e-3;

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

fn smollm2() -> Option<PathBuf> {
    match std::env::var_os("WGINFER_SMOLLM2_GGUF") {
        Some(p) => Some(PathBuf::from(p)),
        None => {
            common::skip_or_fail(
                "WGINFER_REQUIRE_SMOLLM2",
                "WGINFER_SMOLLM2_GGUF is not set (.ci/run sets it)",
            );
            None
        }
    }
}

/// A repository: SmolLM2 as `smollm2/1/model.gguf` (context 256) and the
/// digits MLP as `digits` (not a generative model).
fn repo(gguf: &Path) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join(MODEL);
    std::fs::create_dir_all(m.join("1")).unwrap();
    std::os::unix::fs::symlink(gguf, m.join("1/model.gguf")).unwrap();
    std::fs::write(
        m.join("config.json"),
        json!({"parameters": {"context_length": CONTEXT, "max_num_seqs": 8}}).to_string(),
    )
    .unwrap();
    let d = dir.path().join("digits/1");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(
        common::root("models/digits-mlp/model.safetensors"),
        d.join("model.safetensors"),
    )
    .unwrap();
    dir
}

async fn started(dir: &Path) -> Router {
    let server = Server::new(ServerOptions {
        model_repository: dir.to_path_buf(),
        max_body_bytes: 1 << 20,
        ..ServerOptions::default()
    });
    let failed = server.load_models().await;
    assert!(failed.is_empty(), "models failed to load: {failed:?}");
    server.router()
}

struct Reply {
    status: StatusCode,
    headers: HeaderMap,
    body: Vec<u8>,
}

impl Reply {
    fn json(&self) -> Value {
        serde_json::from_slice(&self.body)
            .unwrap_or_else(|e| panic!("not JSON ({e}): {}", String::from_utf8_lossy(&self.body)))
    }

    /// The `data:` payloads of a server-sent event stream.
    fn events(&self) -> Vec<String> {
        assert_eq!(self.status, StatusCode::OK, "{}", String::from_utf8_lossy(&self.body));
        assert_eq!(self.headers["content-type"], "text/event-stream");
        let text = String::from_utf8(self.body.clone()).unwrap();
        assert!(text.ends_with("\n\n"), "every event ends with a blank line");
        text.split("\n\n")
            .filter(|e| !e.is_empty())
            .map(|e| {
                e.strip_prefix("data: ")
                    .unwrap_or_else(|| panic!("not a data event: {e:?}"))
                    .to_string()
            })
            .collect()
    }

    /// The JSON events of an OpenAI stream, checking it ends with `[DONE]`.
    fn chunks(&self) -> Vec<Value> {
        let mut events = self.events();
        assert_eq!(events.pop().as_deref(), Some("[DONE]"));
        events.iter().map(|e| serde_json::from_str(e).unwrap()).collect()
    }

    /// An OpenAI error: (status, param, code, message).
    fn openai_error(&self) -> (StatusCode, Value, Value, String) {
        let v = self.json();
        let e = &v["error"];
        assert!(e["type"].is_string(), "{v}");
        (
            self.status,
            e["param"].clone(),
            e["code"].clone(),
            e["message"].as_str().unwrap_or_default().to_string(),
        )
    }
}

async fn call(router: &Router, method: Method, uri: &str, body: Vec<u8>) -> Reply {
    let req = Request::builder()
        .method(method)
        .uri(uri)
        .header("content-type", "application/json")
        .body(Body::from(body))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    Reply { status, headers, body }
}

async fn post(router: &Router, uri: &str, v: &Value) -> Reply {
    call(router, Method::POST, uri, v.to_string().into_bytes()).await
}

async fn get(router: &Router, uri: &str) -> Reply {
    call(router, Method::GET, uri, Vec::new()).await
}

/// The library's greedy run: text, token ids, prompt ids.
struct Greedy {
    text: String,
    tokens: Vec<u32>,
    prompt: Vec<u32>,
}

fn greedy(g: &mut Generator, ids: impl FnOnce(&Generator) -> Vec<u32>, max_tokens: usize, stop: &[&str]) -> Greedy {
    let prompt = ids(g);
    let opts = GenerateOptions {
        max_tokens,
        stop: stop.iter().map(|s| s.to_string()).collect(),
        ..GenerateOptions::default()
    };
    let mut gen = g.generate_ids(&prompt, &opts).expect("starts");
    let (mut text, mut tokens) = (String::new(), Vec::new());
    for t in gen.by_ref() {
        let t = t.expect("token");
        text.push_str(&t.text);
        tokens.push(t.id);
    }
    text.push_str(&gen.flush());
    Greedy { text, tokens, prompt }
}

fn chat_messages() -> Value {
    json!([{"role": "system", "content": SYSTEM}, {"role": "user", "content": QUESTION}])
}

fn chat_ids(g: &Generator) -> Vec<u32> {
    let prompt = g
        .chat_prompt(&[ChatMessage::new("system", SYSTEM), ChatMessage::new("user", QUESTION)])
        .unwrap();
    g.encode(&prompt).unwrap()
}

/// Checks a log-probability against the library's; returns |difference|.
fn close(got: &Value, want: f32, what: &str) -> f32 {
    let got = got.as_f64().unwrap_or_else(|| panic!("{what}: {got} is not a number")) as f32;
    let diff = (got - want).abs();
    assert!(diff <= LOGPROB_TOL, "{what}: logprob {got} vs Generator::score {want}");
    diff
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn chat_completions_and_streams_match_the_generator() {
    let Some(gguf) = smollm2() else { return };
    let dir = repo(&gguf);
    let router = started(dir.path()).await;
    let mut g = Generator::load(&gguf, &Device::Cpu, Some(CONTEXT)).unwrap();
    let want = greedy(&mut g, chat_ids, 32, &[]);
    assert_eq!(want.text, ANSWER);

    let body = json!({"model": MODEL, "messages": chat_messages(), "temperature": 0, "max_tokens": 32});
    let r = post(&router, "/v1/chat/completions", &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["object"], "chat.completion");
    assert_eq!(v["model"], MODEL);
    assert!(v["id"].as_str().unwrap().starts_with("chatcmpl-"));
    let c = &v["choices"][0];
    assert_eq!(c["message"]["role"], "assistant");
    assert_eq!(c["message"]["content"], ANSWER);
    assert_eq!(c["finish_reason"], "stop");
    assert_eq!(c["logprobs"], Value::Null);
    assert_eq!(v["usage"]["prompt_tokens"], want.prompt.len());
    assert_eq!(v["usage"]["completion_tokens"], want.tokens.len());
    assert_eq!(v["usage"]["total_tokens"], want.prompt.len() + want.tokens.len());

    // Streamed, with usage: the deltas concatenate to the same text.
    let mut sbody = body.clone();
    sbody["stream"] = json!(true);
    sbody["stream_options"] = json!({"include_usage": true});
    let chunks = post(&router, "/v1/chat/completions", &sbody).await.chunks();
    assert_eq!(chunks[0]["choices"][0]["delta"]["role"], "assistant");
    let usage = chunks.last().unwrap();
    assert_eq!(usage["choices"], json!([]));
    assert_eq!(usage["usage"], v["usage"]);
    let fin = &chunks[chunks.len() - 2];
    assert_eq!(fin["choices"][0]["finish_reason"], "stop");
    let mut text = String::new();
    for ch in &chunks[..chunks.len() - 1] {
        assert_eq!(ch["object"], "chat.completion.chunk");
        assert_eq!(ch["id"], chunks[0]["id"]);
        assert!(
            ch.get("usage").is_some_and(Value::is_null),
            "usage: null before the last"
        );
        text.push_str(ch["choices"][0]["delta"]["content"].as_str().unwrap_or_default());
    }
    assert_eq!(text, ANSWER);

    // Stop strings, streamed and not; max_tokens ends with `length`.
    let mut stop = body.clone();
    stop["stop"] = json!(["Paris", "Berlin"]);
    let v = post(&router, "/v1/chat/completions", &stop).await.json();
    let lib = greedy(&mut g, chat_ids, 32, &["Paris", "Berlin"]);
    assert_eq!(lib.text, "The capital of France is ");
    assert_eq!(v["choices"][0]["message"]["content"], lib.text);
    assert_eq!(v["choices"][0]["finish_reason"], "stop");
    stop["stream"] = json!(true);
    let chunks = post(&router, "/v1/chat/completions", &stop).await.chunks();
    let streamed: String = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["delta"]["content"].as_str())
        .collect();
    assert_eq!(streamed, lib.text);
    assert!(chunks.iter().all(|c| c.get("usage").is_none()), "no usage unless asked");
    let mut short = body.clone();
    short["max_completion_tokens"] = json!(3);
    let v = post(&router, "/v1/chat/completions", &short).await.json();
    assert_eq!(v["choices"][0]["finish_reason"], "length");
    assert_eq!(v["usage"]["completion_tokens"], 3);
    let lib3 = greedy(&mut g, chat_ids, 3, &[]);
    assert_eq!(v["choices"][0]["message"]["content"], lib3.text);

    // Log-probabilities against Generator::score of prompt + answer.
    let mut lp = body.clone();
    lp["logprobs"] = json!(true);
    lp["top_logprobs"] = json!(5);
    let v = post(&router, "/v1/chat/completions", &lp).await.json();
    let content = v["choices"][0]["logprobs"]["content"].as_array().unwrap().clone();
    assert_eq!(content.len(), want.tokens.len());
    let all: Vec<u32> = want.prompt.iter().chain(&want.tokens).copied().collect();
    let scores = g.score(&all).unwrap();
    let tok = g.tokenizer();
    let mut worst = 0f32;
    for (j, (entry, &id)) in content.iter().zip(&want.tokens).enumerate() {
        let what = format!("chat token {j}");
        worst = worst.max(close(&entry["logprob"], scores[want.prompt.len() - 1 + j], &what));
        assert_eq!(entry["token"], tok.decode(&[id]).unwrap(), "{what}");
        let bytes: Vec<u8> = entry["bytes"]
            .as_array()
            .unwrap()
            .iter()
            .map(|b| b.as_u64().unwrap() as u8)
            .collect();
        assert_eq!(bytes, tok.decode(&[id]).unwrap().into_bytes());
        let top = entry["top_logprobs"].as_array().unwrap();
        assert_eq!(top.len(), 5);
        assert_eq!(
            top[0]["token"], entry["token"],
            "{what}: greedy takes the most likely token"
        );
        assert!(top
            .windows(2)
            .all(|w| w[0]["logprob"].as_f64() >= w[1]["logprob"].as_f64()));
    }
    say(&format!(
        "chat: {:?} ({} tokens) equals Generator's greedy text, streamed and not; {} logprobs within {worst:.2e} of Generator::score",
        ANSWER,
        want.tokens.len(),
        content.len()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn completions_echo_scoring_and_triton_generate() {
    let Some(gguf) = smollm2() else { return };
    let dir = repo(&gguf);
    let router = started(dir.path()).await;
    let mut g = Generator::load(&gguf, &Device::Cpu, Some(CONTEXT)).unwrap();
    let prompt = "The capital of France is";
    let want = greedy(&mut g, |g| g.encode(prompt).unwrap(), 12, &[]);

    let body = json!({"model": MODEL, "prompt": prompt, "temperature": 0, "max_tokens": 12});
    let v = post(&router, "/v1/completions", &body).await.json();
    assert_eq!(v["object"], "text_completion");
    assert_eq!(v["choices"][0]["text"], want.text);
    assert_eq!(v["usage"]["prompt_tokens"], want.prompt.len());
    assert_eq!(v["usage"]["completion_tokens"], want.tokens.len());
    let text = want.text.clone();

    // The prompt as token ids, and as a one-element list.
    for p in [json!(want.prompt), json!([want.prompt])] {
        let v = post(
            &router,
            "/v1/completions",
            &json!({"model": MODEL, "prompt": p, "temperature": 0, "max_tokens": 12}),
        )
        .await
        .json();
        assert_eq!(v["choices"][0]["text"], text);
    }

    // Streamed with echo and usage.
    let mut s = body.clone();
    s["stream"] = json!(true);
    s["echo"] = json!(true);
    s["stream_options"] = json!({"include_usage": true});
    let chunks = post(&router, "/v1/completions", &s).await.chunks();
    let joined: String = chunks.iter().filter_map(|c| c["choices"][0]["text"].as_str()).collect();
    assert_eq!(joined, format!("{prompt}{text}"));
    assert_eq!(chunks.last().unwrap()["usage"], v["usage"]);

    // Logprobs with the top 3 on generated tokens, streamed and not.
    let mut lp = body.clone();
    lp["logprobs"] = json!(3);
    let v = post(&router, "/v1/completions", &lp).await.json();
    let l = &v["choices"][0]["logprobs"];
    let all: Vec<u32> = want.prompt.iter().chain(&want.tokens).copied().collect();
    let scores = g.score(&all).unwrap();
    let n = want.prompt.len();
    assert_eq!(l["tokens"].as_array().unwrap().len(), want.tokens.len());
    let mut worst = 0f32;
    for (j, id) in want.tokens.iter().enumerate() {
        let d = close(
            &l["token_logprobs"][j],
            scores[n - 1 + j],
            &format!("completion token {j}"),
        );
        worst = worst.max(d);
        let top = l["top_logprobs"][j].as_object().unwrap();
        assert!((3..=4).contains(&top.len()));
        assert!(
            top.contains_key(&g.tokenizer().decode(&[*id]).unwrap()),
            "the sampled token is in the top map"
        );
    }
    let offsets: Vec<u64> = l["text_offset"]
        .as_array()
        .unwrap()
        .iter()
        .map(|o| o.as_u64().unwrap())
        .collect();
    assert_eq!(offsets[0], 0);
    assert!(offsets.windows(2).all(|w| w[0] <= w[1]));
    lp["stream"] = json!(true);
    let chunks = post(&router, "/v1/completions", &lp).await.chunks();
    let streamed: Vec<f64> = chunks
        .iter()
        .filter_map(|c| c["choices"][0]["logprobs"]["token_logprobs"].as_array())
        .flatten()
        .map(|x| x.as_f64().unwrap())
        .collect();
    let plain: Vec<f64> = l["token_logprobs"]
        .as_array()
        .unwrap()
        .iter()
        .map(|x| x.as_f64().unwrap())
        .collect();
    assert_eq!(streamed, plain, "streamed logprobs equal the non-streamed ones");

    // Scoring a text: echo, logprobs and max_tokens 0.
    let score = json!({"model": MODEL, "prompt": prompt, "echo": true, "logprobs": 1, "max_tokens": 0});
    let v = post(&router, "/v1/completions", &score).await.json();
    let c = &v["choices"][0];
    assert_eq!(c["text"], prompt);
    assert_eq!(v["usage"]["completion_tokens"], 0);
    assert_eq!(v["usage"]["prompt_tokens"], n);
    let l = &c["logprobs"];
    assert_eq!(l["tokens"].as_array().unwrap().len(), n);
    assert_eq!(l["token_logprobs"][0], Value::Null);
    assert_eq!(l["top_logprobs"][0], Value::Null);
    let prompt_scores = g.score(&want.prompt).unwrap();
    let mut worst_prompt = 0f32;
    for (i, want_lp) in prompt_scores.iter().enumerate() {
        let d = close(
            &l["token_logprobs"][i + 1],
            *want_lp,
            &format!("prompt position {}", i + 1),
        );
        worst_prompt = worst_prompt.max(d);
    }
    say(&format!(
        "completions: text, ids prompt, stream+echo equal Generator; logprobs within {worst:.2e}, {n} prompt positions within {worst_prompt:.2e} of Generator::score"
    ));

    // Triton's generate extension.
    let t = json!({"text_input": prompt, "parameters": {"max_tokens": 12, "temperature": 0}});
    let r = post(&router, &format!("/v2/models/{MODEL}/generate"), &t).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(
        (v["model_name"].as_str(), v["model_version"].as_str()),
        (Some(MODEL), Some("1"))
    );
    assert_eq!(v["text_output"], text);
    let r = post(&router, &format!("/v2/models/{MODEL}/versions/1/generate_stream"), &t).await;
    let pieces: Vec<Value> = r.events().iter().map(|e| serde_json::from_str(e).unwrap()).collect();
    let joined: String = pieces.iter().map(|p| p["text_output"].as_str().unwrap()).collect();
    assert_eq!(joined, text);
    assert!(pieces.iter().all(|p| p["model_name"] == MODEL));
    let r = post(&router, "/v2/models/digits/generate", &t).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error"].is_string());
    let r = post(&router, "/v2/models/nope/generate", &t).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    let r = post(
        &router,
        &format!("/v2/models/{MODEL}/generate"),
        &json!({"parameters": {}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error"].as_str().unwrap().contains("text_input"));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn models_errors_and_cancellation() {
    let Some(gguf) = smollm2() else { return };
    let dir = repo(&gguf);
    let router = started(dir.path()).await;

    let v = get(&router, "/v1/models").await.json();
    assert_eq!(v["object"], "list");
    let ids: Vec<&str> = v["data"]
        .as_array()
        .unwrap()
        .iter()
        .map(|m| m["id"].as_str().unwrap())
        .collect();
    assert_eq!(ids, vec![MODEL], "the digits MLP is neither generative nor an embedder");
    let m = get(&router, &format!("/v1/models/{MODEL}")).await.json();
    assert_eq!(
        (m["object"].as_str(), m["owned_by"].as_str()),
        (Some("model"), Some("wginfer"))
    );
    assert!(m["created"].as_u64().unwrap() > 1_700_000_000);
    let r = get(&router, "/v1/models/nope").await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    // Routes that do not exist, or the wrong method, answer in OpenAI's shape under /v1.
    for (method, uri, status, words) in [
        (
            Method::GET,
            "/v1/chat/completions",
            StatusCode::METHOD_NOT_ALLOWED,
            "use POST",
        ),
        (Method::POST, "/v1/models", StatusCode::METHOD_NOT_ALLOWED, "use GET"),
        (Method::POST, "/v1/responses", StatusCode::NOT_FOUND, "no route"),
    ] {
        let r = call(&router, method.clone(), uri, Vec::new()).await;
        assert_eq!(r.status, status, "{method} {uri}");
        let e = &r.json()["error"];
        assert_eq!(e["type"], "invalid_request_error", "{method} {uri}: {e}");
        assert!(e["message"].as_str().unwrap().contains(words), "{method} {uri}: {e}");
    }

    let msgs = json!([{"role": "user", "content": "Hi"}]);
    let long = "word ".repeat(400);
    let cases: Vec<(&str, Vec<u8>, StatusCode, Value, &str)> = vec![
        (
            "/v1/chat/completions",
            b"{not json".to_vec(),
            StatusCode::BAD_REQUEST,
            json!("body"),
            "JSON",
        ),
        (
            "/v1/chat/completions",
            b"[1]".to_vec(),
            StatusCode::BAD_REQUEST,
            json!("body"),
            "object",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "nope", "messages": msgs}).to_string().into_bytes(),
            StatusCode::NOT_FOUND,
            json!("model"),
            "does not exist",
        ),
        (
            "/v1/chat/completions",
            json!({"model": "digits", "messages": msgs}).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            json!("model"),
            "not a generative",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": []}).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            json!("messages"),
            "empty",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "wizard", "content": "x"}]})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            json!("messages[0].role"),
            "wizard",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": msgs, "n": 2})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            json!("n"),
            "one choice",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": msgs, "temperature": "hot"})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            json!("temperature"),
            "number",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": msgs, "max_tokens": 1_000_000})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            json!("max_tokens"),
            "context length",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": [{"role": "user", "content": long}]})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            json!("messages"),
            "context",
        ),
        (
            "/v1/chat/completions",
            json!({"model": MODEL, "messages": msgs, "logprobs": true, "top_logprobs": 50})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            json!("top_logprobs"),
            "0 to 20",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": long}).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            json!("prompt"),
            "context",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "max_tokens": 0})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            json!("max_tokens"),
            "echo",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": [999_999]}).to_string().into_bytes(),
            StatusCode::BAD_REQUEST,
            json!("prompt"),
            "vocabulary",
        ),
        (
            "/v1/completions",
            json!({"model": MODEL, "prompt": "x", "stop": [1]})
                .to_string()
                .into_bytes(),
            StatusCode::BAD_REQUEST,
            json!("stop"),
            "string",
        ),
    ];
    for (uri, body, status, param, msg) in cases {
        let r = call(&router, Method::POST, uri, body.clone()).await;
        let (got_status, got_param, _, message) = r.openai_error();
        let what = String::from_utf8_lossy(&body);
        assert_eq!(got_status, status, "{uri} {what}: {message}");
        assert_eq!(got_param, param, "{uri} {what}: {message}");
        assert!(message.contains(msg), "{uri} {what}: `{message}` lacks `{msg}`");
    }
    let r = call(&router, Method::GET, "/v1/chat/completions", Vec::new()).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);

    // A client that goes away mid-stream frees its sequence.
    let body = json!({"model": MODEL, "messages": msgs, "max_tokens": 200, "ignore_eos": true, "stream": true});
    let req = Request::builder()
        .method(Method::POST)
        .uri("/v1/chat/completions")
        .body(Body::from(body.to_string()))
        .unwrap();
    let resp = router.clone().oneshot(req).await.unwrap();
    let mut body_stream = resp.into_body();
    // The role chunk, then the first token's.
    for _ in 0..2 {
        let frame = http_body_util::BodyExt::frame(&mut body_stream).await;
        assert!(frame.is_some(), "the stream starts");
    }
    assert_eq!(running(&router).await.0, 1.0, "one sequence runs");
    drop(body_stream);
    let start = Instant::now();
    loop {
        let (run, kv) = running(&router).await;
        if run == 0.0 && kv == 0.0 {
            break;
        }
        assert!(
            start.elapsed() < Duration::from_secs(10),
            "the cancelled sequence still runs ({run}, kv {kv})"
        );
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    let gen = metric(&get(&router, "/metrics").await, "wginfer_generation_tokens_total");
    assert!(gen < 200.0, "cancelled before its 200 tokens ({gen} generated)");
    say(&format!(
        "cancellation: the dropped stream stopped after {gen} tokens; KV use back to 0"
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_full_queue_answers_503() {
    let Some(gguf) = smollm2() else { return };
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join(MODEL);
    std::fs::create_dir_all(m.join("1")).unwrap();
    std::os::unix::fs::symlink(&gguf, m.join("1/model.gguf")).unwrap();
    let config = json!({
        "parameters": {"context_length": CONTEXT, "max_num_seqs": 1},
        "default_queue_policy": {"max_queue_size": 1},
    });
    std::fs::write(m.join("config.json"), config.to_string()).unwrap();
    let router = started(dir.path()).await;
    let msgs = json!([{"role": "user", "content": "Hi"}]);
    let body = json!({"model": MODEL, "messages": msgs, "max_tokens": 200, "ignore_eos": true, "stream": true});
    let open = |router: &Router| {
        let req = Request::builder()
            .method(Method::POST)
            .uri("/v1/chat/completions")
            .body(Body::from(body.to_string()))
            .unwrap();
        router.clone().oneshot(req)
    };
    // The first runs (its first token arrived), the second waits, the third is shed.
    let mut running = open(&router).await.unwrap().into_body();
    for _ in 0..2 {
        assert!(http_body_util::BodyExt::frame(&mut running).await.is_some());
    }
    let waiting = open(&router).await.unwrap();
    assert_eq!(waiting.status(), StatusCode::OK);
    let r = post(
        &router,
        "/v1/chat/completions",
        &json!({"model": MODEL, "messages": msgs}),
    )
    .await;
    let (status, _, _, message) = r.openai_error();
    assert_eq!(status, StatusCode::SERVICE_UNAVAILABLE, "{message}");
    assert_eq!(r.json()["error"]["type"], "server_error");
    drop((running, waiting));
    say(&format!("a full queue: 503 `{message}`"));
}

/// SmolLM2's chat template, refusing a message `boom` with
/// `raise_exception` and reading a variable that does not exist for a
/// message `missing`.
const FAILING_TEMPLATE: &str = "{% for m in messages %}\
{% if m['content'] == 'boom' %}{{ raise_exception('the template refuses boom') }}{% endif %}\
{% if m['content'] == 'missing' %}{{ no_such_variable.field }}{% endif %}\
{{ '<|im_start|>' + m['role'] + '\n' + m['content'] + '<|im_end|>\n' }}{% endfor %}\
{% if add_generation_prompt %}{{ '<|im_start|>assistant\n' }}{% endif %}";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_chat_template_that_fails_to_render_is_a_400_and_the_server_stays_up() {
    let Some(hf) = std::env::var_os("WGINFER_SMOLLM2_HF").map(PathBuf::from) else {
        common::skip_or_fail(
            "WGINFER_REQUIRE_SMOLLM2_HF",
            "WGINFER_SMOLLM2_HF is not set (models/smollm2/to_hf.py writes the directory; .ci/run does)",
        );
        return;
    };
    // The Hugging Face directory with its tokenizer_config.json's template
    // replaced.
    let dir = tempfile::tempdir().unwrap();
    let v = dir.path().join("smolt/1");
    std::fs::create_dir_all(&v).unwrap();
    for f in [
        "config.json",
        "generation_config.json",
        "model.safetensors",
        "tokenizer.json",
    ] {
        if hf.join(f).exists() {
            std::os::unix::fs::symlink(hf.join(f), v.join(f)).unwrap();
        }
    }
    let mut tc: Value = serde_json::from_slice(&std::fs::read(hf.join("tokenizer_config.json")).unwrap()).unwrap();
    tc["chat_template"] = json!(FAILING_TEMPLATE);
    std::fs::write(v.join("tokenizer_config.json"), tc.to_string()).unwrap();
    std::fs::write(
        dir.path().join("smolt/config.json"),
        json!({"parameters": {"context_length": CONTEXT, "max_num_seqs": 2}}).to_string(),
    )
    .unwrap();
    let router = started(dir.path()).await;
    for (content, words) in [("boom", "the template refuses boom"), ("missing", "undefined value")] {
        for stream in [false, true] {
            let body = json!({"model": "smolt", "stream": stream, "max_tokens": 2,
                "messages": [{"role": "user", "content": content}]});
            let r = post(&router, "/v1/chat/completions", &body).await;
            let (status, param, _, message) = r.openai_error();
            assert_eq!(status, StatusCode::BAD_REQUEST, "{content}: {message}");
            assert_eq!(r.json()["error"]["type"], "invalid_request_error");
            assert_eq!(param, json!("messages"));
            assert!(
                message.contains("chat template") && message.contains(words),
                "{content}: {message}"
            );
            say(&format!("a template failing on `{content}`: 400 `{message}`"));
        }
    }
    // Still serving, the same template included.
    let body =
        json!({"model": "smolt", "max_tokens": 3, "ignore_eos": true, "messages": [{"role": "user", "content": "Hi"}]});
    let r = post(&router, "/v1/chat/completions", &body).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["usage"]["completion_tokens"], 3, "{v}");
}

fn metric(r: &Reply, name: &str) -> f64 {
    let text = String::from_utf8_lossy(&r.body);
    text.lines()
        .find(|l| l.starts_with(&format!("{name}{{model=\"{MODEL}\"")))
        .and_then(|l| l.rsplit(' ').next())
        .and_then(|v| v.parse().ok())
        .unwrap_or_else(|| panic!("no {name} for {MODEL} in /metrics"))
}

/// Running sequences and KV-cache use of the model.
async fn running(router: &Router) -> (f64, f64) {
    let r = get(router, "/metrics").await;
    (
        metric(&r, "wginfer_num_requests_running"),
        metric(&r, "wginfer_kv_cache_usage_ratio"),
    )
}

/// Kills the server if the test fails before stopping it.
struct Child0(Child);

impl Drop for Child0 {
    fn drop(&mut self) {
        let _ = self.0.kill();
        let _ = self.0.wait();
    }
}

fn python() -> Result<PathBuf, String> {
    let py = match std::env::var_os("WGINFER_E2E_PYTHON") {
        Some(p) => PathBuf::from(p),
        None => common::root("target/serve-e2e-venv/bin/python"),
    };
    let out = Command::new(&py)
        .args(["-c", "import numpy, openai"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", py.display()))?;
    if !out.status.success() {
        return Err(format!("{} cannot import numpy and openai", py.display()));
    }
    Ok(py)
}

#[test]
fn openai_python_client_against_the_binary() {
    let Some(gguf) = smollm2() else { return };
    let py = match python() {
        Ok(p) => p,
        Err(reason) => {
            common::skip_or_fail("WGINFER_REQUIRE_E2E", &reason);
            return;
        }
    };
    let dir = repo(&gguf);
    let minilm = common::minilm::model_dir();
    if let Some(src) = &minilm {
        let m = dir.path().join("minilm/1");
        std::fs::create_dir_all(&m).unwrap();
        for f in [
            "config.json",
            "model.safetensors",
            "tokenizer.json",
            "sentence_bert_config.json",
        ] {
            if src.join(f).is_file() {
                std::os::unix::fs::symlink(src.join(f), m.join(f)).unwrap();
            }
        }
    }
    let mut child = Command::new(env!("CARGO_BIN_EXE_wginfer"))
        .args([
            "serve",
            "--http-address",
            "127.0.0.1",
            "--http-port",
            "0",
            "--model-repository",
        ])
        .arg(dir.path())
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wginfer serve");
    let stderr = child.stderr.take().unwrap();
    let server = Child0(child);
    let (tx, rx) = std::sync::mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[server] {line}");
            if let Some(rest) = line.split("http://").nth(1) {
                let _ = tx.send(rest.split_whitespace().next().unwrap_or_default().to_string());
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server prints its address");
    let mut g = Generator::load(&gguf, &Device::Cpu, Some(CONTEXT)).unwrap();
    let completion = greedy(&mut g, |g| g.encode("The capital of France is").unwrap(), 12, &[]);
    let status = Command::new(&py)
        .arg(common::root("tests/e2e/openai_client.py"))
        .arg(format!("http://{addr}/v1"))
        .args([MODEL, ANSWER, &completion.text])
        .arg(if minilm.is_some() { "minilm" } else { "" })
        .status()
        .expect("run the openai client");
    assert!(status.success(), "the openai client checks failed: {status}");
    if minilm.is_none() {
        say("openai client: embeddings SKIPPED (WGINFER_MINILM_DIR is not set)");
    }
    drop(server);
}
