//! Text embedding models in the server, in-process (the router through
//! `tower::ServiceExt::oneshot`): KServe v2 infer with a `BYTES` input of
//! texts (JSON and binary bodies) and the OpenAI-compatible
//! `POST /v1/embeddings`, checked against `Embedder::embed` on the same
//! device and sentence-transformers' reference vectors; and every malformed
//! body as a typed error.
//!
//! The MiniLM tests need `WGINFER_MINILM_DIR` (see tests/common/minilm.rs);
//! the error tests run on the shipped digits MLP without it.

mod common;

use std::io::Write;
use std::path::Path;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use common::minilm;
use serde_json::{json, Value};
use tempfile::TempDir;
use tower::ServiceExt;
use wginfer::embed::cosine;
use wginfer::serve::{Server, ServerOptions};
use wginfer::{Device, Embedder};

fn say(line: &str) {
    let _ = writeln!(std::io::stderr(), "{line}");
}

/// A repository with the digits MLP (`digits`, not an embedding model) and,
/// when given, MiniLM as `minilm/1/` (links to the Hugging Face files).
fn repo(minilm_dir: Option<&Path>) -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let d = dir.path().join("digits/1");
    std::fs::create_dir_all(&d).unwrap();
    std::fs::copy(
        common::root("models/digits-mlp/model.safetensors"),
        d.join("model.safetensors"),
    )
    .unwrap();
    if let Some(src) = minilm_dir {
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
    dir
}

async fn started(dir: &Path, device: Device) -> Router {
    let server = Server::new(ServerOptions {
        model_repository: dir.to_path_buf(),
        device,
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
}

async fn call(router: &Router, uri: &str, headers: &[(&str, String)], body: Vec<u8>) -> Reply {
    let mut req = Request::builder().method("POST").uri(uri);
    for (k, v) in headers {
        req = req.header(*k, v.as_str());
    }
    let resp = router
        .clone()
        .oneshot(req.body(Body::from(body)).unwrap())
        .await
        .unwrap();
    let status = resp.status();
    let headers = resp.headers().clone();
    let body = axum::body::to_bytes(resp.into_body(), usize::MAX)
        .await
        .unwrap()
        .to_vec();
    Reply { status, headers, body }
}

async fn post_json(router: &Router, uri: &str, v: &Value) -> Reply {
    call(router, uri, &[], v.to_string().into_bytes()).await
}

/// The `data[].embedding` vectors of an OpenAI reply, checking the envelope.
fn openai_vectors(r: &Reply, model: &str, n: usize) -> (Vec<Vec<f32>>, u64) {
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let v = r.json();
    assert_eq!(v["object"], "list");
    assert_eq!(v["model"], model);
    let data = v["data"].as_array().unwrap();
    assert_eq!(data.len(), n);
    let mut out = Vec::new();
    for (i, d) in data.iter().enumerate() {
        assert_eq!(d["object"], "embedding");
        assert_eq!(d["index"], i);
        out.push(
            d["embedding"]
                .as_array()
                .unwrap()
                .iter()
                .map(|x| x.as_f64().unwrap() as f32)
                .collect(),
        );
    }
    let tokens = v["usage"]["prompt_tokens"].as_u64().unwrap();
    assert_eq!(v["usage"]["total_tokens"].as_u64().unwrap(), tokens);
    (out, tokens)
}

/// The FP32 `[N, dim]` output of a KServe reply (JSON or binary).
fn kserve_vectors(r: &Reply) -> Vec<Vec<f32>> {
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    let (json_part, binary) = match r.headers.get("inference-header-content-length") {
        Some(n) => r.body.split_at(n.to_str().unwrap().parse().unwrap()),
        None => (&r.body[..], &[][..]),
    };
    let v: Value = serde_json::from_slice(json_part).unwrap();
    let outs = v["outputs"].as_array().unwrap();
    assert_eq!(outs.len(), 1, "{v}");
    let o = &outs[0];
    assert_eq!(o["datatype"], "FP32");
    let shape: Vec<usize> = o["shape"]
        .as_array()
        .unwrap()
        .iter()
        .map(|d| d.as_u64().unwrap() as usize)
        .collect();
    let flat: Vec<f32> = match o["parameters"]["binary_data_size"].as_u64() {
        Some(n) => {
            assert_eq!(n as usize, binary.len());
            binary
                .chunks_exact(4)
                .map(|b| f32::from_le_bytes([b[0], b[1], b[2], b[3]]))
                .collect()
        }
        None => o["data"]
            .as_array()
            .unwrap()
            .iter()
            .map(|x| x.as_f64().unwrap() as f32)
            .collect(),
    };
    assert_eq!(shape.len(), 2);
    assert_eq!(flat.len(), shape[0] * shape[1]);
    flat.chunks(shape[1]).map(<[f32]>::to_vec).collect()
}

fn assert_same(got: &[Vec<f32>], want: &[Vec<f32>], tol: f32, what: &str) {
    assert_eq!(got.len(), want.len(), "{what}: count");
    for (i, (g, w)) in got.iter().zip(want).enumerate() {
        assert_eq!(g.len(), w.len(), "{what}: width of {i}");
        let worst = g.iter().zip(w).map(|(a, b)| (a - b).abs()).fold(0.0f32, f32::max);
        assert!(worst <= tol, "{what}: vector {i} differs by {worst:e} (> {tol:e})");
    }
}

/// A binary KServe body with one BYTES input of `texts`.
fn binary_bytes_body(texts: &[&str]) -> (Vec<u8>, String) {
    let mut data = Vec::new();
    for t in texts {
        data.extend_from_slice(&(t.len() as u32).to_le_bytes());
        data.extend_from_slice(t.as_bytes());
    }
    let header = json!({
        "inputs": [{"name": "text", "shape": [texts.len()], "datatype": "BYTES",
                    "parameters": {"binary_data_size": data.len()}}],
        "parameters": {"binary_data_output": true},
    });
    let mut body = header.to_string().into_bytes();
    let n = body.len().to_string();
    body.extend_from_slice(&data);
    (body, n)
}

/// Every route of a MiniLM repository on `device`, against `Embedder::embed`
/// on the same device (`tol`) and sentence-transformers (cosine >= `min_cos`).
async fn check_minilm(dir: &Path, device: Device, texts: &[String], tol: f32, min_cos: f32) {
    let repo = repo(Some(dir));
    let router = started(repo.path(), device.clone()).await;
    let r = minilm::reference();
    let refs: Vec<&str> = texts.iter().map(String::as_str).collect();
    let want = Embedder::load(dir, device.clone()).unwrap().embed(&refs).unwrap();
    let label = device.to_string();

    // OpenAI, a list of texts.
    let reply = post_json(&router, "/v1/embeddings", &json!({"input": texts, "model": "minilm"})).await;
    let (got, tokens) = openai_vectors(&reply, "minilm", texts.len());
    assert_eq!(tokens as usize, want.token_counts.iter().sum::<usize>());
    assert_same(
        &got,
        &want.vectors,
        tol,
        &format!("{label}: /v1/embeddings vs Embedder::embed"),
    );
    for (i, t) in texts.iter().enumerate() {
        if let Some(j) = r.texts.iter().position(|x| x == t) {
            let c = cosine(&got[i], &r.embeddings[j]);
            assert!(
                c >= min_cos,
                "{label}: text {i} cosine to sentence-transformers {c} < {min_cos}"
            );
        }
    }
    assert!(got.iter().all(|v| v.len() == 384));

    // OpenAI, one string.
    let one = post_json(
        &router,
        "/v1/embeddings",
        &json!({"input": texts[0], "model": "minilm", "encoding_format": "float"}),
    )
    .await;
    let (got1, tokens1) = openai_vectors(&one, "minilm", 1);
    assert_eq!(tokens1 as usize, want.token_counts[0]);
    assert_same(&got1, &want.vectors[..1], tol, &format!("{label}: one string"));

    // KServe v2 with a JSON BYTES input.
    let body = json!({"inputs": [{"name": "text", "shape": [texts.len()], "datatype": "BYTES", "data": texts}]});
    let kv = kserve_vectors(&post_json(&router, "/v2/models/minilm/infer", &body).await);
    assert_same(&kv, &want.vectors, tol, &format!("{label}: KServe JSON BYTES"));

    // KServe v2 with a binary BYTES input and a binary output.
    let (body, n) = binary_bytes_body(&refs);
    let reply = call(
        &router,
        "/v2/models/minilm/infer",
        &[("inference-header-content-length", n)],
        body,
    )
    .await;
    assert!(reply.headers.get("inference-header-content-length").is_some());
    let kb = kserve_vectors(&reply);
    assert_same(&kb, &want.vectors, tol, &format!("{label}: KServe binary BYTES"));
    say(&format!(
        "{label}: {} texts through /v1/embeddings and KServe JSON/binary BYTES match Embedder::embed",
        texts.len()
    ));
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_served_on_the_cpu_matches_the_embedder_and_sentence_transformers() {
    let Some(dir) = minilm::model_dir() else { return };
    let r = minilm::reference();
    check_minilm(&dir, Device::Cpu, &r.texts, 1e-5, 0.9999).await;
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_served_on_the_gpu_matches_the_embedder() {
    let Some(dir) = minilm::model_dir() else { return };
    let Some(choice) = minilm::gpu_choice() else { return };
    let r = minilm::reference();
    let texts: Vec<String> = r.texts.iter().take(4).cloned().collect();
    check_minilm(&dir, Device::Gpu(choice), &texts, 1e-5, 0.9999).await;
}

/// With `dynamic_batching`, concurrent text requests of different lengths
/// run together (their token ids padded to the longest) and each gets its
/// own vector back: the same as embedding it alone.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_concurrent_text_requests_share_dynamic_batches() {
    let Some(dir) = minilm::model_dir() else { return };
    let repo = repo(Some(&dir));
    let config = json!({"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 300000}});
    std::fs::write(repo.path().join("minilm/config.json"), config.to_string()).unwrap();
    let router = started(repo.path(), Device::Cpu).await;
    let r = minilm::reference();
    let texts: Vec<String> = r.texts.iter().take(8).cloned().collect();
    let lengths: std::collections::BTreeSet<usize> = r.token_counts.iter().take(8).copied().collect();
    assert!(lengths.len() > 2, "the texts should differ in length: {lengths:?}");
    let alone = Embedder::load(&dir, Device::Cpu).unwrap();
    let handles: Vec<_> = texts
        .iter()
        .map(|t| {
            let (router, t) = (router.clone(), t.clone());
            tokio::spawn(
                async move { post_json(&router, "/v1/embeddings", &json!({"input": t, "model": "minilm"})).await },
            )
        })
        .collect();
    for (i, h) in handles.into_iter().enumerate() {
        let reply = h.await.unwrap();
        let (got, tokens) = openai_vectors(&reply, "minilm", 1);
        assert_eq!(tokens as usize, r.token_counts[i]);
        let want = alone.embed(&[texts[i].as_str()]).unwrap();
        let c = cosine(&got[0], &want.vectors[0]);
        assert!(c > 0.999_999, "text {i}: batched with others vs alone: cosine {c}");
    }
    let metrics = router
        .clone()
        .oneshot(Request::get("/metrics").body(Body::empty()).unwrap())
        .await
        .unwrap();
    let m = String::from_utf8(
        axum::body::to_bytes(metrics.into_body(), usize::MAX)
            .await
            .unwrap()
            .to_vec(),
    )
    .unwrap();
    let count = |name: &str| -> u64 {
        m.lines()
            .find_map(|l| l.strip_prefix(&format!("wginfer_{name}{{model=\"minilm\",version=\"1\"}} ")))
            .and_then(|v| v.parse().ok())
            .unwrap_or_else(|| panic!("{name} for minilm not in\n{m}"))
    };
    let (execs, inferences) = (count("inference_exec_count"), count("inference_count"));
    say(&format!(
        "{} concurrent text requests ran in {execs} executions (warm-up excluded)",
        texts.len()
    ));
    assert_eq!(inferences, texts.len() as u64);
    assert!(
        execs < texts.len() as u64,
        "{execs} executions for {} concurrent requests: nothing was batched",
        texts.len()
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn minilm_metadata_and_errors() {
    let Some(dir) = minilm::model_dir() else { return };
    let repo = repo(Some(&dir));
    let router = started(repo.path(), Device::Cpu).await;
    let meta = router
        .clone()
        .oneshot(Request::get("/v2/models/minilm").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(meta.status(), StatusCode::OK);
    let v: Value = serde_json::from_slice(&axum::body::to_bytes(meta.into_body(), usize::MAX).await.unwrap()).unwrap();
    assert_eq!(
        v["inputs"],
        json!([{"name": "text", "datatype": "BYTES", "shape": [-1]}])
    );
    assert_eq!(v["outputs"][0]["datatype"], "FP32");
    assert_eq!(v["outputs"][0]["shape"].as_array().unwrap().last().unwrap(), 384);

    let bad = |body: Value, want: &'static str| (body, want);
    for (body, want) in [
        bad(
            json!({"inputs": [{"name": "text", "shape": [0], "datatype": "BYTES", "data": []}]}),
            "no texts",
        ),
        bad(
            json!({"inputs": [{"name": "text", "shape": [2], "datatype": "BYTES", "data": ["a"]}]}),
            "needs 2 elements",
        ),
        bad(
            json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "data": [3]}]}),
            "must be a string",
        ),
        bad(
            json!({"inputs": [{"name": "a", "shape": [1], "datatype": "BYTES", "data": ["x"]},
                              {"name": "b", "shape": [1], "datatype": "BYTES", "data": ["y"]}]}),
            "one BYTES input",
        ),
    ] {
        let r = post_json(&router, "/v2/models/minilm/infer", &body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{body}");
        let msg = r.json()["error"].as_str().unwrap().to_string();
        assert!(msg.contains(want), "{body}: {msg}");
    }
    // A binary BYTES element cut short.
    let header =
        json!({"inputs": [{"name": "text", "shape": [1], "datatype": "BYTES", "parameters": {"binary_data_size": 6}}]});
    let mut body = header.to_string().into_bytes();
    let n = body.len().to_string();
    body.extend_from_slice(&[9, 0, 0, 0, b'h', b'i']);
    let r = call(
        &router,
        "/v2/models/minilm/infer",
        &[("inference-header-content-length", n)],
        body,
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error"].as_str().unwrap().contains("cut short"));
    // `dimensions` other than the model's.
    let r = post_json(
        &router,
        "/v1/embeddings",
        &json!({"input": "hi", "model": "minilm", "dimensions": 128}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert_eq!(r.json()["error"]["param"], "dimensions");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn openai_errors_are_typed() {
    // No embedding model needed: bodies are checked before the model runs.
    let repo = repo(None);
    let router = started(repo.path(), Device::Cpu).await;
    let cases: Vec<(&str, Vec<u8>, StatusCode, &str, &str)> = vec![
        (
            "not JSON",
            b"{input".to_vec(),
            StatusCode::BAD_REQUEST,
            "body",
            "must be JSON",
        ),
        (
            "not an object",
            b"[1]".to_vec(),
            StatusCode::BAD_REQUEST,
            "body",
            "JSON object",
        ),
        (
            "no model",
            br#"{"input": "a"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "model",
            "`model` is required",
        ),
        (
            "model a number",
            br#"{"input": "a", "model": 3}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "model",
            "must be a model name",
        ),
        (
            "no input",
            br#"{"model": "digits"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "input",
            "`input` is required",
        ),
        (
            "empty list",
            br#"{"input": [], "model": "digits"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "input",
            "empty list",
        ),
        (
            "empty string",
            br#"{"input": "", "model": "digits"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "input",
            "empty string",
        ),
        (
            "number",
            br#"{"input": 5, "model": "digits"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "input",
            "string or a list",
        ),
        (
            "token ids",
            br#"{"input": [[1, 2]], "model": "digits"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "input",
            "token-id",
        ),
        (
            "null item",
            br#"{"input": ["a", null], "model": "digits"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "input",
            "`input[1]`",
        ),
        (
            "unknown encoding",
            br#"{"input": "a", "model": "digits", "encoding_format": "int8"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "encoding_format",
            "\"float\" or \"base64\"",
        ),
        (
            "not an embedding model",
            br#"{"input": "a", "model": "digits"}"#.to_vec(),
            StatusCode::BAD_REQUEST,
            "model",
            "not a text embedding model",
        ),
        (
            "unknown model",
            br#"{"input": "a", "model": "nope"}"#.to_vec(),
            StatusCode::NOT_FOUND,
            "model",
            "does not exist",
        ),
    ];
    for (what, body, status, param, msg) in cases {
        let r = call(&router, "/v1/embeddings", &[], body).await;
        assert_eq!(r.status, status, "{what}: {}", String::from_utf8_lossy(&r.body));
        let e = &r.json()["error"];
        assert_eq!(e["type"], "invalid_request_error", "{what}");
        assert_eq!(e["param"], param, "{what}");
        assert!(e["message"].as_str().unwrap().contains(msg), "{what}: {e}");
        if what == "unknown model" {
            assert_eq!(e["code"], "model_not_found");
        }
    }
    // A BYTES input to a tensor model is a 400 naming it.
    let r = post_json(
        &router,
        "/v2/models/digits/infer",
        &json!({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.json()["error"].as_str().unwrap().contains("BYTES"));
    // GET is 405 with a hint.
    let r = router
        .clone()
        .oneshot(Request::get("/v1/embeddings").body(Body::empty()).unwrap())
        .await
        .unwrap();
    assert_eq!(r.status(), StatusCode::METHOD_NOT_ALLOWED);
}
