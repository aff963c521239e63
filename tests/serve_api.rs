//! The server's routes in-process (the router through `tower::ServiceExt::oneshot`):
//! every endpoint and every error, with results checked against `Session::run`
//! on the CPU.

mod common;

use std::path::Path;
use std::time::Duration;

use axum::body::Body;
use axum::http::{HeaderMap, Request, StatusCode};
use axum::Router;
use serde_json::{json, Value};
use tempfile::TempDir;
use tower::ServiceExt;
use wginfer::serve::{Server, ServerOptions};
use wginfer::{Device, Model, Session, Tensor};

const MODEL: &str = "digits-mlp";

fn model_file() -> std::path::PathBuf {
    common::root("models/digits-mlp/model.safetensors")
}

/// A repository with `digits-mlp` (version 1, dynamic batching) and `flat`
/// (the model file directly in the model directory, no config).
fn repo() -> TempDir {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join(MODEL);
    std::fs::create_dir_all(m.join("1")).unwrap();
    std::fs::copy(model_file(), m.join("1/model.safetensors")).unwrap();
    std::fs::write(
        m.join("config.json"),
        r#"{"max_batch_size": 64, "dynamic_batching": {"max_queue_delay_microseconds": 200}, "extra": "ignored"}"#,
    )
    .unwrap();
    let f = dir.path().join("flat");
    std::fs::create_dir_all(&f).unwrap();
    std::fs::copy(model_file(), f.join("model.safetensors")).unwrap();
    dir
}

fn options(dir: &Path) -> ServerOptions {
    ServerOptions {
        model_repository: dir.to_path_buf(),
        max_body_bytes: 1 << 20,
        ..ServerOptions::default()
    }
}

async fn started(opts: ServerOptions) -> (Server, Router) {
    let server = Server::new(opts);
    let failed = server.load_models().await;
    assert!(failed.is_empty(), "models failed to load: {failed:?}");
    let router = server.router();
    (server, router)
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

    fn error(&self) -> String {
        self.json()["error"].as_str().unwrap_or_default().to_string()
    }

    /// The response JSON and its outputs (binary or JSON) as f32 tensors.
    fn outputs(&self) -> (Value, Vec<(String, Tensor)>) {
        let (json_part, mut binary) = match self.headers.get("inference-header-content-length") {
            Some(n) => {
                let n: usize = n.to_str().unwrap().parse().unwrap();
                (&self.body[..n], &self.body[n..])
            }
            None => (&self.body[..], &[][..]),
        };
        let v: Value = serde_json::from_slice(json_part).unwrap();
        let mut out = Vec::new();
        for o in v["outputs"].as_array().unwrap() {
            let shape: Vec<usize> = o["shape"]
                .as_array()
                .unwrap()
                .iter()
                .map(|d| d.as_u64().unwrap() as usize)
                .collect();
            assert_eq!(o["datatype"], "FP32");
            let t = match o["parameters"]["binary_data_size"].as_u64() {
                Some(n) => {
                    let (b, rest) = binary.split_at(n as usize);
                    binary = rest;
                    Tensor::from_le_bytes(wginfer::DType::F32, shape, b).unwrap()
                }
                None => {
                    let data: Vec<f32> = o["data"]
                        .as_array()
                        .unwrap()
                        .iter()
                        .map(|x| x.as_f64().unwrap() as f32)
                        .collect();
                    Tensor::from_vec(shape, data).unwrap()
                }
            };
            out.push((o["name"].as_str().unwrap().to_string(), t));
        }
        assert!(binary.is_empty(), "binary data left over");
        (v, out)
    }
}

async fn call(router: &Router, method: &str, uri: &str, headers: &[(&str, &str)], body: Vec<u8>) -> Reply {
    let mut req = Request::builder().method(method).uri(uri);
    for (k, v) in headers {
        req = req.header(*k, *v);
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

async fn get(router: &Router, uri: &str) -> Reply {
    call(router, "GET", uri, &[], Vec::new()).await
}

async fn post_json(router: &Router, uri: &str, v: Value) -> Reply {
    call(router, "POST", uri, &[], v.to_string().into_bytes()).await
}

/// Rows `start..end` of the shipped test set.
fn digits(start: usize, end: usize) -> Tensor {
    let data = wginfer::model::load_tensors(common::root("models/digits-mlp/digits_test.safetensors")).unwrap();
    let input = data.into_iter().find(|(n, _)| n == "input").unwrap().1;
    input.slice_rows(start, end).unwrap()
}

/// What the engine itself computes on the CPU.
fn reference(x: &Tensor) -> std::collections::BTreeMap<String, Tensor> {
    let session = Session::new(&Model::load(model_file()).unwrap(), Device::Cpu).unwrap();
    session.run([("input", x.clone())]).unwrap()
}

fn close(got: &Tensor, want: &Tensor, what: &str) {
    common::assert_close(got, want, common::Tolerance { atol: 1e-5, rtol: 1e-5 }, what);
}

fn json_input(x: &Tensor, nested: bool) -> Value {
    let v = x.as_f32().unwrap();
    let data: Value = if nested {
        v.chunks(64).map(|r| r.to_vec()).collect::<Vec<_>>().into()
    } else {
        v.to_vec().into()
    };
    json!({"name": "input", "shape": x.shape(), "datatype": "FP32", "data": data})
}

/// A binary body: JSON header then the raw bytes.
fn binary_body(header: Value, data: &[u8]) -> (Vec<u8>, String) {
    let mut body = header.to_string().into_bytes();
    let n = body.len().to_string();
    body.extend_from_slice(data);
    (body, n)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn health_and_metadata() {
    let dir = repo();
    let server = Server::new(options(dir.path()));
    let router = server.router();
    // Not ready before the models are loaded and warmed up; live always.
    let r = get(&router, "/v2/health/ready").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert_eq!(r.json()["ready"], false);
    assert_eq!(get(&router, "/v2/health/live").await.json(), json!({"live": true}));
    assert!(server.load_models().await.is_empty());
    let r = get(&router, "/v2/health/ready").await;
    assert_eq!((r.status, r.json()), (StatusCode::OK, json!({"ready": true})));
    assert!(r.headers["content-type"]
        .to_str()
        .unwrap()
        .starts_with("application/json"));

    let r = get(&router, "/v2").await.json();
    assert_eq!(r["name"], "wginfer");
    assert!(r["extensions"]
        .as_array()
        .unwrap()
        .contains(&json!("binary_tensor_data")));

    for uri in ["/v2/models/digits-mlp", "/v2/models/digits-mlp/versions/1"] {
        let r = get(&router, uri).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}");
        let m = r.json();
        assert_eq!(m["name"], MODEL);
        assert_eq!(m["versions"], json!(["1"]));
        assert_eq!(
            m["inputs"],
            json!([{"name": "input", "datatype": "FP32", "shape": [-1, 64]}])
        );
        assert_eq!(
            m["outputs"][1],
            json!({"name": "probabilities", "datatype": "FP32", "shape": [-1, 10]})
        );
    }
    // The flat layout serves as version 1.
    assert_eq!(get(&router, "/v2/models/flat").await.json()["versions"], json!(["1"]));

    for uri in ["/v2/models/digits-mlp/ready", "/v2/models/digits-mlp/versions/1/ready"] {
        let r = get(&router, uri).await;
        assert_eq!(
            (r.status, r.json()["ready"].clone()),
            (StatusCode::OK, json!(true)),
            "{uri}"
        );
    }
    for uri in [
        "/v2/models/digits-mlp/config",
        "/v2/models/digits-mlp/versions/1/config",
    ] {
        let c = get(&router, uri).await.json();
        assert_eq!(c["max_batch_size"], 64, "{uri}");
        assert_eq!(c["input"][0]["dims"], json!([64]));
        assert_eq!(c["input"][0]["data_type"], "TYPE_FP32");
        assert_eq!(c["dynamic_batching"]["max_queue_delay_microseconds"], 200);
        assert_eq!(c["version_policy"], json!({"latest": {"num_versions": 1}}));
    }
    let flat = get(&router, "/v2/models/flat/config").await.json();
    assert_eq!(flat["max_batch_size"], 0);
    assert_eq!(flat["input"][0]["dims"], json!([-1, 64]));
    assert!(flat.get("dynamic_batching").is_none());

    // 404s: unknown model, version, route.
    for uri in [
        "/v2/models/nope",
        "/v2/models/nope/ready",
        "/v2/models/nope/config",
        "/v2/models/digits-mlp/versions/7",
        "/v2/models/digits-mlp/versions/7/ready",
        "/v2/models/digits-mlp/versions/x/config",
        "/v2/nothing",
        "/",
    ] {
        let r = get(&router, uri).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{uri}");
        assert!(!r.error().is_empty(), "{uri}: {:?}", r.json());
    }
    let r = post_json(&router, "/v2/models/nope/infer", json!({"inputs": []})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);
    assert!(r.error().contains("nope"), "{}", r.error());
    // 405 with a hint.
    let r = call(&router, "POST", "/v2/models/digits-mlp", &[], Vec::new()).await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
    assert!(r.error().contains("GET"), "{}", r.error());
    let r = get(&router, "/v2/models/digits-mlp/infer").await;
    assert_eq!(r.status, StatusCode::METHOD_NOT_ALLOWED);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn infer_json_and_binary_match_the_engine() {
    let dir = repo();
    let (_server, router) = started(options(dir.path())).await;
    let x = digits(0, 8);
    let want = reference(&x);

    for model in ["digits-mlp", "flat"] {
        for nested in [false, true] {
            // JSON in, JSON out, all outputs; an unknown field is ignored.
            let uri = format!("/v2/models/{model}/infer");
            let r = post_json(
                &router,
                &uri,
                json!({"id": "a1", "inputs": [json_input(&x, nested)], "unknown": {"x": 1}}),
            )
            .await;
            assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
            assert!(r.headers.get("inference-header-content-length").is_none());
            let (v, outs) = r.outputs();
            assert_eq!(
                (v["model_name"].as_str(), v["model_version"].as_str(), v["id"].as_str()),
                (Some(model), Some("1"), Some("a1"))
            );
            assert_eq!(outs.len(), 2);
            for (name, t) in &outs {
                close(t, &want[name], &format!("{model} JSON {name}"));
            }
        }
    }

    // Binary in (no Content-Type at all), binary out for one output.
    let header = json!({
        "inputs": [{"name": "input", "shape": [8, 64], "datatype": "FP32", "parameters": {"binary_data_size": 8 * 64 * 4}}],
        "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}],
    });
    let (body, n) = binary_body(header, &x.to_le_bytes());
    let r = call(
        &router,
        "POST",
        "/v2/models/digits-mlp/versions/1/infer",
        &[("Inference-Header-Content-Length", &n)],
        body,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert!(r.headers.get("inference-header-content-length").is_some());
    let (v, outs) = r.outputs();
    assert!(
        v["id"].as_str().is_some_and(|s| !s.is_empty()),
        "an id is always returned: {v}"
    );
    assert_eq!(outs.len(), 1);
    close(&outs[0].1, &want["probabilities"], "binary probabilities");

    // JSON in, every output binary through the request-level flag; one output
    // overrides it back to JSON.
    let r = post_json(
        &router,
        "/v2/models/digits-mlp/infer",
        json!({"inputs": [json_input(&x, false)], "parameters": {"binary_data_output": true},
               "outputs": [{"name": "logits"}, {"name": "probabilities", "parameters": {"binary_data": false}}]}),
    )
    .await;
    let (v, outs) = r.outputs();
    assert!(v["outputs"][0]["parameters"]["binary_data_size"].is_u64());
    assert!(v["outputs"][1]["data"].is_array());
    close(&outs[0].1, &want["logits"], "binary logits");
    close(&outs[1].1, &want["probabilities"], "JSON probabilities");
    let r = post_json(
        &router,
        "/v2/models/digits-mlp/infer",
        json!({"inputs": [json_input(&x, false)], "parameters": {"binary_data_output": true}}),
    )
    .await;
    assert_eq!(r.outputs().1.len(), 2);

    // Concurrent requests of different sizes go through the batcher and each
    // gets its own rows back.
    let mut tasks = Vec::new();
    for i in 0..24usize {
        let router = router.clone();
        let rows = 1 + i % 3;
        tasks.push(tokio::spawn(async move {
            let x = digits(i * 3, i * 3 + rows);
            let r = post_json(
                &router,
                "/v2/models/digits-mlp/infer",
                json!({"inputs": [json_input(&x, false)]}),
            )
            .await;
            (x, r)
        }));
    }
    for t in tasks {
        let (x, r) = t.await.unwrap();
        assert_eq!(r.status, StatusCode::OK);
        let want = reference(&x);
        for (name, t) in r.outputs().1 {
            close(&t, &want[&name], "batched request");
        }
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn every_datatype_round_trips() {
    use wginfer::DType;
    // An identity-like model per dtype is not shipped; check the wire format
    // itself: every datatype parses from JSON and from binary to the same tensor.
    let base = Tensor::from_vec(vec![2, 3], vec![1.0f32, 0.0, 3.0, 1.0, 0.0, 1.0]).unwrap();
    for dt in DType::ALL {
        let t = base.cast(dt);
        let name = wginfer::serve::protocol::datatype_name(dt);
        let data: Vec<Value> = match dt {
            DType::Bool => t.to_f32_vec().iter().map(|&x| json!(x != 0.0)).collect(),
            d if d.is_float() => t.to_f32_vec().iter().map(|&x| json!(x)).collect(),
            _ => t.to_i64_vec().iter().map(|&x| json!(x)).collect(),
        };
        let body = json!({"inputs": [{"name": "x", "shape": [2, 3], "datatype": name, "data": data}]}).to_string();
        let p = wginfer::serve::protocol::parse_infer(body.as_bytes(), None).unwrap();
        assert_eq!(p.inputs[0].1, t, "{name} JSON");
        let header = json!({"inputs": [{"name": "x", "shape": [2, 3], "datatype": name, "parameters": {"binary_data_size": t.size_in_bytes()}}]});
        let (body, n) = binary_body(header, &t.to_le_bytes());
        let p = wginfer::serve::protocol::parse_infer(&body, Some(n.parse().unwrap())).unwrap();
        assert_eq!(p.inputs[0].1, t, "{name} binary");
        let enc = wginfer::serve::protocol::encode_response("m", "1", "i", &[("y".into(), t.clone(), true)]).unwrap();
        let json_len = enc.json_len.unwrap();
        let v: Value = serde_json::from_slice(&enc.body[..json_len]).unwrap();
        assert_eq!(v["outputs"][0]["datatype"], name);
        assert_eq!(
            Tensor::from_le_bytes(dt, vec![2, 3], &enc.body[json_len..]).unwrap(),
            t,
            "{name} binary out"
        );
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_requests_are_400_with_a_message() {
    let dir = repo();
    let (_server, router) = started(options(dir.path())).await;
    let x = digits(0, 2);
    let ok_input = json_input(&x, false);
    let uri = "/v2/models/digits-mlp/infer";
    let cases: Vec<(&str, Value, &str)> = vec![
        (
            "wrong input name",
            json!({"inputs": [{"name": "pixels", "shape": [2, 64], "datatype": "FP32", "data": x.as_f32().unwrap()}]}),
            "pixels",
        ),
        ("no inputs", json!({"inputs": []}), "no inputs"),
        ("missing inputs field", json!({"id": "x"}), "inputs"),
        (
            "wrong datatype",
            json!({"inputs": [{"name": "input", "shape": [2, 64], "datatype": "INT32", "data": vec![1; 128]}]}),
            "INT32",
        ),
        (
            "unsupported datatype",
            json!({"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP64", "data": vec![1.0; 128]}]}),
            "FP64",
        ),
        (
            "BYTES",
            json!({"inputs": [{"name": "input", "shape": [1], "datatype": "BYTES", "data": ["a"]}]}),
            "BYTES",
        ),
        (
            "wrong shape",
            json!({"inputs": [{"name": "input", "shape": [2, 32], "datatype": "FP32", "data": vec![0.0; 64]}]}),
            "shape",
        ),
        (
            "wrong rank",
            json!({"inputs": [{"name": "input", "shape": [128], "datatype": "FP32", "data": vec![0.0; 128]}]}),
            "shape",
        ),
        (
            "size mismatch",
            json!({"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "data": vec![0.0; 100]}]}),
            "needs 128 elements",
        ),
        (
            "negative dim",
            json!({"inputs": [{"name": "input", "shape": [-1, 64], "datatype": "FP32", "data": vec![0.0; 64]}]}),
            "negative",
        ),
        (
            "not a number",
            json!({"inputs": [{"name": "input", "shape": [1, 2], "datatype": "FP32", "data": [1.0, "a"]}]}),
            "not a number",
        ),
        (
            "over max_batch_size",
            json!({"inputs": [json_input(&digits(0, 65), false)]}),
            "max_batch_size",
        ),
        (
            "no data",
            json!({"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32"}]}),
            "no `data`",
        ),
        (
            "input twice",
            json!({"inputs": [ok_input.clone(), ok_input.clone()]}),
            "twice",
        ),
        (
            "output twice",
            json!({"inputs": [ok_input.clone()], "outputs": [{"name": "logits"}, {"name": "logits"}]}),
            "twice",
        ),
        (
            "unknown output",
            json!({"inputs": [ok_input.clone()], "outputs": [{"name": "scores"}]}),
            "scores",
        ),
        (
            "bad binary_data flag",
            json!({"inputs": [ok_input.clone()], "outputs": [{"name": "logits", "parameters": {"binary_data": "yes"}}]}),
            "binary_data",
        ),
        (
            "bad timeout",
            json!({"inputs": [ok_input.clone()], "parameters": {"timeout": -5}}),
            "timeout",
        ),
    ];
    for (what, body, needle) in cases {
        let r = post_json(&router, uri, body).await;
        assert_eq!(
            r.status,
            StatusCode::BAD_REQUEST,
            "{what}: {}",
            String::from_utf8_lossy(&r.body)
        );
        assert!(
            r.error().contains(needle),
            "{what}: `{}` should mention `{needle}`",
            r.error()
        );
    }
    // Not JSON at all.
    let r = call(&router, "POST", uri, &[], b"{not json".to_vec()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("JSON"), "{}", r.error());
    // Binary: sizes that do not add up.
    let header = |size: usize| json!({"inputs": [{"name": "input", "shape": [2, 64], "datatype": "FP32", "parameters": {"binary_data_size": size}}]});
    let bytes = x.to_le_bytes();
    let cases: Vec<(&str, Vec<u8>, String, &str)> = {
        let (b1, n1) = binary_body(header(100), &bytes);
        let (b2, n2) = binary_body(header(512), &bytes[..300]);
        let (mut b3, n3) = binary_body(header(512), &bytes);
        b3.extend_from_slice(&[0; 8]);
        let (b4, _) = binary_body(header(512), &bytes);
        let (b5, _) = binary_body(header(512), &bytes);
        vec![
            ("binary size wrong", b1, n1, "binary_data_size"),
            ("binary data short", b2, n2, "bytes of binary data are left"),
            ("binary data left over", b3, n3, "follow the inputs"),
            (
                "header length past the body",
                b4,
                "999999".into(),
                "Inference-Header-Content-Length",
            ),
            (
                "header length not a number",
                b5,
                "ten".into(),
                "Inference-Header-Content-Length",
            ),
        ]
    };
    for (what, body, n, needle) in cases {
        let r = call(&router, "POST", uri, &[("Inference-Header-Content-Length", &n)], body).await;
        assert_eq!(r.status, StatusCode::BAD_REQUEST, "{what}");
        assert!(
            r.error().contains(needle),
            "{what}: `{}` should mention `{needle}`",
            r.error()
        );
    }
    // A binary body without the header is read as (invalid) JSON, and says so.
    let (body, _) = binary_body(header(512), &bytes);
    let r = call(&router, "POST", uri, &[], body).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("Inference-Header-Content-Length"), "{}", r.error());
    // Compressed bodies are refused with the fix.
    let r = call(
        &router,
        "POST",
        uri,
        &[("Content-Encoding", "gzip")],
        ok_input.to_string().into_bytes(),
    )
    .await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("uncompressed"));
    // The failures are counted as OTHER.
    let m = String::from_utf8(get(&router, "/metrics").await.body).unwrap();
    let line = m
        .lines()
        .find(|l| l.starts_with("wginfer_inference_request_failure{model=\"digits-mlp\",reason=\"OTHER\""))
        .unwrap();
    assert!(!line.ends_with(" 0"), "{line}");
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn body_limit_is_413() {
    let dir = repo();
    let (_server, router) = started(ServerOptions {
        max_body_bytes: 4096,
        ..options(dir.path())
    })
    .await;
    let x = digits(0, 40);
    let body = json!({"inputs": [json_input(&x, false)]}).to_string().into_bytes();
    assert!(body.len() > 4096);
    let r = call(&router, "POST", "/v2/models/digits-mlp/infer", &[], body.clone()).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    assert!(r.error().contains("4096"), "{}", r.error());
    // With a Content-Length header, refused before the body is read. (The
    // call above has none, as a chunked body: read up to the limit.)
    let len = body.len().to_string();
    let r = call(
        &router,
        "POST",
        "/v2/models/digits-mlp/infer",
        &[("Content-Length", &len)],
        body,
    )
    .await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
    // Repository routes have the same limit.
    let r = call(&router, "POST", "/v2/repository/index", &[], vec![b' '; 5000]).await;
    assert_eq!(r.status, StatusCode::PAYLOAD_TOO_LARGE);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn api_key_guards_everything_but_health() {
    let dir = repo();
    let (_server, router) = started(ServerOptions {
        api_key: Some("s3cret".into()),
        ..options(dir.path())
    })
    .await;
    assert_eq!(get(&router, "/v2/health/live").await.status, StatusCode::OK);
    assert_eq!(get(&router, "/v2/health/ready").await.status, StatusCode::OK);
    for uri in [
        "/v2",
        "/v2/models/digits-mlp",
        "/v2/models/digits-mlp/ready",
        "/metrics",
    ] {
        let r = get(&router, uri).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{uri}");
        assert!(r.error().contains("API key"));
        assert_eq!(r.headers["www-authenticate"], "Bearer");
        let r = call(&router, "GET", uri, &[("Authorization", "Bearer wrong")], Vec::new()).await;
        assert_eq!(r.status, StatusCode::UNAUTHORIZED, "{uri}");
        let r = call(&router, "GET", uri, &[("Authorization", "Bearer s3cret")], Vec::new()).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}");
        let r = call(&router, "GET", uri, &[("X-API-Key", "s3cret")], Vec::new()).await;
        assert_eq!(r.status, StatusCode::OK, "{uri}");
    }
    let r = call(&router, "POST", "/v2/repository/index", &[], Vec::new()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let body = json!({"inputs": [json_input(&digits(0, 1), false)]})
        .to_string()
        .into_bytes();
    let r = call(&router, "POST", "/v2/models/digits-mlp/infer", &[], body.clone()).await;
    assert_eq!(r.status, StatusCode::UNAUTHORIZED);
    let r = call(
        &router,
        "POST",
        "/v2/models/digits-mlp/infer",
        &[("x-api-key", "s3cret")],
        body,
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn repository_load_unload_and_hot_reload() {
    let dir = repo();
    let (server, router) = started(options(dir.path())).await;
    let x = digits(0, 4);
    let want = reference(&x);
    let infer = |router: Router, uri: &'static str| {
        let x = x.clone();
        async move { post_json(&router, uri, json!({"inputs": [json_input(&x, false)]})).await }
    };

    let index = post_json(&router, "/v2/repository/index", json!({})).await;
    assert_eq!(index.status, StatusCode::OK);
    assert_eq!(
        index.json(),
        json!([{"name": "digits-mlp", "version": "1", "state": "READY"}, {"name": "flat", "version": "1", "state": "READY"}])
    );
    let r = call(&router, "POST", "/v2/repository/index", &[], Vec::new()).await;
    assert_eq!(r.status, StatusCode::OK, "an empty body is fine");
    let r = call(&router, "POST", "/v2/repository/index", &[], b"[1".to_vec()).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);

    // Unload: 503 for infer and ready, the index says why; the server's own
    // readiness is unaffected (the model was unloaded on purpose).
    let r = post_json(&router, "/v2/repository/models/flat/unload", json!({})).await;
    assert_eq!(r.status, StatusCode::OK);
    let r = infer(router.clone(), "/v2/models/flat/infer").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.error().contains("unloaded"), "{}", r.error());
    let r = get(&router, "/v2/models/flat/ready").await;
    assert_eq!(
        (r.status, r.json()["ready"].clone()),
        (StatusCode::SERVICE_UNAVAILABLE, json!(false))
    );
    assert_eq!(
        get(&router, "/v2/models/flat").await.status,
        StatusCode::SERVICE_UNAVAILABLE
    );
    let idx = post_json(&router, "/v2/repository/index", json!({})).await.json();
    assert_eq!(
        idx[1],
        json!({"name": "flat", "state": "UNAVAILABLE", "reason": "unloaded"})
    );
    let idx = post_json(&router, "/v2/repository/index", json!({"ready": true}))
        .await
        .json();
    assert_eq!(idx.as_array().unwrap().len(), 1);
    assert_eq!(get(&router, "/v2/health/ready").await.status, StatusCode::OK);
    // Load it back (no body at all, as tritonclient sends).
    let r = call(&router, "POST", "/v2/repository/models/flat/load", &[], Vec::new()).await;
    assert_eq!(r.status, StatusCode::OK, "{}", String::from_utf8_lossy(&r.body));
    assert_eq!(
        infer(router.clone(), "/v2/models/flat/infer").await.status,
        StatusCode::OK
    );
    // Unknown models: 404 for load and unload.
    for op in ["load", "unload"] {
        let r = post_json(&router, &format!("/v2/repository/models/nope/{op}"), json!({})).await;
        assert_eq!(r.status, StatusCode::NOT_FOUND, "{op}");
    }
    let r = post_json(&router, "/v2/repository/models/..%2F..%2Fetc/load", json!({})).await;
    assert_eq!(r.status, StatusCode::NOT_FOUND);

    // A new version loads beside the old one; traffic moves once it is ready.
    let m = dir.path().join(MODEL);
    std::fs::create_dir_all(m.join("2")).unwrap();
    std::fs::copy(model_file(), m.join("2/model.safetensors")).unwrap();
    let r = post_json(
        &router,
        "/v2/repository/models/digits-mlp/load",
        json!({"parameters": {}}),
    )
    .await;
    assert_eq!(r.status, StatusCode::OK);
    let r = infer(router.clone(), "/v2/models/digits-mlp/infer").await;
    let (v, outs) = r.outputs();
    assert_eq!(v["model_version"], "2");
    close(&outs[1].1, &want["probabilities"], "version 2");
    assert_eq!(
        get(&router, "/v2/models/digits-mlp").await.json()["versions"],
        json!(["2"])
    );
    assert_eq!(
        get(&router, "/v2/models/digits-mlp/versions/1").await.status,
        StatusCode::NOT_FOUND
    );

    // A broken version 3 fails to load with a message naming the file; 2 keeps serving.
    std::fs::create_dir_all(m.join("3")).unwrap();
    std::fs::write(m.join("3/model.safetensors"), b"not a model").unwrap();
    let r = post_json(&router, "/v2/repository/models/digits-mlp/load", json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(
        r.error().contains("3") && r.error().contains("model.safetensors"),
        "{}",
        r.error()
    );
    let r = infer(router.clone(), "/v2/models/digits-mlp/infer").await;
    assert_eq!(r.status, StatusCode::OK);
    assert_eq!(r.json()["model_version"], "2");
    assert_eq!(get(&router, "/v2/health/ready").await.status, StatusCode::OK);

    // A repository poll sees the fixed file and moves to version 3.
    std::fs::copy(model_file(), m.join("3/model.safetensors")).unwrap();
    server.repository().poll().await;
    let r = infer(router.clone(), "/v2/models/digits-mlp/infer").await;
    assert_eq!(r.json()["model_version"], "3");
    // A poll after the directory is removed unloads the model.
    std::fs::remove_dir_all(dir.path().join("flat")).unwrap();
    server.repository().poll().await;
    assert_eq!(
        infer(router.clone(), "/v2/models/flat/infer").await.status,
        StatusCode::NOT_FOUND
    );

    // "all" policy serves every version, each addressable.
    std::fs::write(
        m.join("config.json"),
        r#"{"max_batch_size": 8, "version_policy": {"all": {}}}"#,
    )
    .unwrap();
    std::fs::remove_dir_all(m.join("3")).unwrap();
    assert_eq!(
        post_json(&router, "/v2/repository/models/digits-mlp/load", json!({}))
            .await
            .status,
        StatusCode::OK
    );
    assert_eq!(
        get(&router, "/v2/models/digits-mlp").await.json()["versions"],
        json!(["1", "2"])
    );
    let r = infer(router.clone(), "/v2/models/digits-mlp/versions/1/infer").await;
    assert_eq!(r.json()["model_version"], "1");
    assert_eq!(
        get(&router, "/v2/models/digits-mlp/versions/2/ready").await.status,
        StatusCode::OK
    );
    // A bad config fails the load and keeps the versions serving.
    std::fs::write(m.join("config.json"), r#"{"dynamic_batching": {}}"#).unwrap();
    let r = post_json(&router, "/v2/repository/models/digits-mlp/load", json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("max_batch_size"), "{}", r.error());
    assert_eq!(
        infer(router.clone(), "/v2/models/digits-mlp/versions/1/infer")
            .await
            .status,
        StatusCode::OK
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_model_at_start_keeps_the_server_not_ready() {
    let dir = repo();
    let b = dir.path().join("broken/1");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("model.safetensors"), [0u8; 4]).unwrap();
    let server = Server::new(options(dir.path()));
    assert_eq!(server.load_models().await, vec!["broken".to_string()]);
    let router = server.router();
    let r = get(&router, "/v2/health/ready").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.json()["error"].as_str().unwrap().contains("broken"));
    let r = post_json(
        &router,
        "/v2/models/broken/infer",
        json!({"inputs": [json_input(&digits(0, 1), false)]}),
    )
    .await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.error().contains("truncated"), "{}", r.error());
    // The others serve.
    assert_eq!(get(&router, "/v2/models/digits-mlp/ready").await.status, StatusCode::OK);
    let idx = post_json(&router, "/v2/repository/index", json!({})).await.json();
    assert_eq!(idx[0]["state"], "UNAVAILABLE");
    // Unloading the broken model makes the server ready.
    post_json(&router, "/v2/repository/models/broken/unload", json!({})).await;
    assert_eq!(get(&router, "/v2/health/ready").await.status, StatusCode::OK);
}

/// Without strict readiness a failed model does not make the server not
/// ready; it still reports itself failed, with its reason.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn broken_model_with_non_strict_readiness_leaves_the_server_ready() {
    let dir = repo();
    let b = dir.path().join("broken/1");
    std::fs::create_dir_all(&b).unwrap();
    std::fs::write(b.join("model.safetensors"), [0u8; 4]).unwrap();
    let server = Server::new(ServerOptions {
        strict_readiness: false,
        ..options(dir.path())
    });
    assert_eq!(server.load_models().await, vec!["broken".to_string()]);
    assert!(server.is_ready());
    let router = server.router();
    assert_eq!(get(&router, "/v2/health/ready").await.status, StatusCode::OK);
    let r = get(&router, "/v2/models/broken/ready").await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.error().contains("truncated"), "{}", r.error());
    let idx = post_json(&router, "/v2/repository/index", json!({})).await.json();
    assert_eq!(idx[0]["name"], "broken");
    assert_eq!(idx[0]["state"], "UNAVAILABLE");
    assert!(idx[0]["reason"].as_str().unwrap().contains("truncated"), "{idx}");
    // An explicit load of it fails with the reason in the response.
    let r = post_json(&router, "/v2/repository/models/broken/load", json!({})).await;
    assert_eq!(r.status, StatusCode::BAD_REQUEST);
    assert!(r.error().contains("truncated"), "{}", r.error());
    assert_eq!(get(&router, "/v2/health/ready").await.status, StatusCode::OK);
    assert_eq!(get(&router, "/v2/models/digits-mlp/ready").await.status, StatusCode::OK);
}

/// A model slow enough to hold the queue: Linear 1024 -> 1024.
fn slow_model(dir: &Path) {
    use wginfer::graph::{Graph, GraphDoc};
    let doc: GraphDoc = serde_json::from_value(json!({
        "format": "wginfer.graph", "version": 1, "name": "slow",
        "inputs": [{"name": "x", "dtype": "f32", "shape": ["batch", 1024]}],
        "outputs": [{"name": "y", "dtype": "f32", "shape": ["batch", 1024]}],
        "params": [{"name": "w", "dtype": "f32", "shape": [1024, 1024]}],
        "nodes": [{"name": "fc", "op": "Linear", "inputs": ["x", "w"], "outputs": ["y"]}]
    }))
    .unwrap();
    let graph = Graph::from_doc(&doc).unwrap();
    let w = Tensor::from_vec(vec![1024, 1024], vec![0.001f32; 1024 * 1024]).unwrap();
    let model = Model::new(graph, [("w".to_string(), w)].into_iter().collect()).unwrap();
    std::fs::create_dir_all(dir.join("1")).unwrap();
    model.save(dir.join("1/model.safetensors")).unwrap();
}

#[tokio::test(flavor = "multi_thread", worker_threads = 4)]
async fn queue_full_and_timeouts_are_503() {
    let dir = tempfile::tempdir().unwrap();
    let slow = dir.path().join("slow");
    slow_model(&slow);
    // One execution at a time and one waiting request: a third is rejected.
    std::fs::write(
        slow.join("config.json"),
        r#"{"default_queue_policy": {"max_queue_size": 1}}"#,
    )
    .unwrap();
    let batched = dir.path().join("batched");
    std::fs::create_dir_all(batched.join("1")).unwrap();
    std::fs::copy(model_file(), batched.join("1/model.safetensors")).unwrap();
    std::fs::write(
        batched.join("config.json"),
        r#"{"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 300000}}"#,
    )
    .unwrap();
    let (server, router) = started(ServerOptions {
        max_body_bytes: 8 << 20,
        ..options(dir.path())
    })
    .await;

    let x = Tensor::from_vec(vec![512, 1024], vec![0.5f32; 512 * 1024]).unwrap();
    let header = json!({"inputs": [{"name": "x", "shape": [512, 1024], "datatype": "FP32", "parameters": {"binary_data_size": x.size_in_bytes()}}],
                        "parameters": {"binary_data_output": true}});
    let (body, n) = binary_body(header, &x.to_le_bytes());
    let send = |router: Router| {
        let (body, n) = (body.clone(), n.clone());
        tokio::spawn(async move {
            call(
                &router,
                "POST",
                "/v2/models/slow/infer",
                &[("Inference-Header-Content-Length", &n)],
                body,
            )
            .await
        })
    };
    // Fire requests until one is rejected (bounded: the queue holds two at
    // most, so this ends within a few requests while the first still runs).
    let mut tasks = Vec::new();
    let mut rejected = None;
    for _ in 0..100 {
        tasks.push(send(router.clone()));
        tokio::time::sleep(Duration::from_millis(2)).await;
        if let Some(i) = tasks.iter().position(|t| t.is_finished()) {
            let r = tasks.remove(i).await.unwrap();
            if r.status == StatusCode::SERVICE_UNAVAILABLE {
                rejected = Some(r);
                break;
            }
        }
    }
    let r = rejected.expect("a full queue must reject with 503");
    assert!(r.error().contains("queue"), "{}", r.error());
    for t in tasks {
        let r = t.await.unwrap();
        assert!(
            matches!(r.status, StatusCode::OK | StatusCode::SERVICE_UNAVAILABLE),
            "{}",
            r.status
        );
    }

    // A request-level timeout shorter than the batcher's delay: 503, and the
    // request is dropped from the queue.
    let body = json!({"inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "data": vec![0.0; 64]}], "parameters": {"timeout": 1000}});
    let r = post_json(&router, "/v2/models/batched/infer", body).await;
    assert_eq!(r.status, StatusCode::SERVICE_UNAVAILABLE);
    assert!(r.error().contains("timed out"), "{}", r.error());
    let m = server.metrics().render();
    assert!(
        m.contains("wginfer_inference_request_failure{model=\"batched\",reason=\"REJECTED\",version=\"1\"} 1"),
        "{m}"
    );
    assert!(
        m.contains("wginfer_inference_request_failure{model=\"slow\",reason=\"REJECTED\",version=\"1\"}"),
        "{m}"
    );
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn metrics_count_requests_inferences_and_executions() {
    let dir = repo();
    let (_server, router) = started(options(dir.path())).await;
    for rows in [1, 2, 3] {
        let r = post_json(
            &router,
            "/v2/models/digits-mlp/infer",
            json!({"inputs": [json_input(&digits(0, rows), false)]}),
        )
        .await;
        assert_eq!(r.status, StatusCode::OK);
    }
    let r = get(&router, "/metrics").await;
    assert_eq!(r.status, StatusCode::OK);
    assert!(r.headers["content-type"].to_str().unwrap().starts_with("text/plain"));
    let text = String::from_utf8(r.body).unwrap();
    let value = |name: &str| -> u64 {
        let prefix = format!("{name}{{model=\"digits-mlp\",version=\"1\"}} ");
        text.lines()
            .find_map(|l| l.strip_prefix(&prefix))
            .unwrap_or_else(|| panic!("no {prefix} in\n{text}"))
            .parse()
            .unwrap()
    };
    assert_eq!(value("wginfer_inference_request_success"), 3);
    assert_eq!(value("wginfer_inference_count"), 6);
    let execs = value("wginfer_inference_exec_count");
    assert!((1..=3).contains(&execs), "{execs}");
    assert!(value("wginfer_inference_request_duration_us") > 0);
    assert!(value("wginfer_inference_compute_infer_duration_us") > 0);
    assert_eq!(value("wginfer_inference_pending_request_count"), 0);
    assert!(text.contains("# TYPE wginfer_inference_pending_request_count gauge"));
    assert!(text.contains("# TYPE wginfer_inference_request_failure counter"));
}

#[test]
fn config_errors_name_the_file_and_the_fix() {
    use wginfer::serve::config::VersionPolicy;
    use wginfer::serve::ModelConfig;
    let dir = tempfile::tempdir().unwrap();
    let load = |text: &str| {
        std::fs::write(dir.path().join("config.json"), text).unwrap();
        ModelConfig::load(dir.path(), "m", &Device::Cpu, None)
    };
    let c = load(
        r#"{"max_batch_size": 4, "dynamic_batching": {"max_queue_delay_microseconds": 7,
            "default_queue_policy": {"max_queue_size": 3, "default_timeout_microseconds": 9}},
            "version_policy": {"specific": {"versions": [2]}}, "instance_group": [{"count": 3}],
            "parameters": {"device": {"string_value": "cpu-reference"}}}"#,
    )
    .unwrap();
    assert_eq!(c.max_batch_size, 4);
    assert_eq!(c.batching.unwrap().max_queue_delay, Duration::from_micros(7));
    assert_eq!(
        (c.max_queue_size, c.timeout, c.instances),
        (3, Some(Duration::from_micros(9)), 3)
    );
    assert_eq!(c.version_policy, VersionPolicy::Specific { versions: vec![2] });
    assert_eq!(c.version_policy.select(&[1, 2, 3]), vec![2]);
    assert_eq!(c.device, Device::CpuReference);
    assert_eq!(VersionPolicy::Latest { num_versions: 2 }.select(&[1, 2, 3]), vec![2, 3]);
    for (text, needle) in [
        ("{", "invalid model config"),
        (r#"{"name": "other"}"#, "directory"),
        (r#"{"dynamic_batching": {}}"#, "max_batch_size"),
        (r#"{"version_policy": {"latest": {"num_versions": 0}}}"#, "at least 1"),
        (r#"{"instance_group": [{"kind": "KIND_TPU"}]}"#, "KIND_TPU"),
        (r#"{"parameters": {"device": "abacus"}}"#, "abacus"),
        (r#"{"max_batch_size": -1}"#, "-1"),
    ] {
        let e = load(text).unwrap_err().to_string();
        assert!(e.contains("config.json") && e.contains(needle), "{text}: {e}");
    }
}
