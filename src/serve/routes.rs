//! The HTTP routes and their handlers.

use std::sync::atomic::Ordering;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::{Body, Bytes};
use axum::extract::{Path, Request, State as AxState};
use axum::http::{header, HeaderMap, HeaderValue, Method, StatusCode, Uri};
use axum::middleware::{self, Next};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::Router;
use http_body_util::{BodyExt, LengthLimitError, Limited};
use serde_json::{json, Value};

use super::embeddings::{self, TEXT_INPUT};
use super::error::ServeError;
use super::metrics::FailureReason;
use super::openai::{self, error::OpenAiError};
use super::protocol::{self, config_type_name, datatype_name, HEADER_LENGTH};
use super::repository::{protocol_shape, Instance};
use super::triton_generate as tgen;
use super::{ServerOptions, State};

type S = Arc<State>;

pub(super) fn router(state: S) -> Router {
    let health = Router::new()
        .route("/v2/health/live", get(live))
        .route("/v2/health/ready", get(ready));
    let api = Router::new()
        .route("/v2", get(server_metadata))
        .route("/v2/models/{m}", get(model_metadata))
        .route("/v2/models/{m}/ready", get(model_ready))
        .route("/v2/models/{m}/config", get(model_config))
        .route("/v2/models/{m}/infer", post(infer))
        .route("/v2/models/{m}/versions/{v}", get(model_metadata_v))
        .route("/v2/models/{m}/versions/{v}/ready", get(model_ready_v))
        .route("/v2/models/{m}/versions/{v}/config", get(model_config_v))
        .route("/v2/models/{m}/versions/{v}/infer", post(infer_v))
        .route("/v2/repository/index", post(repository_index))
        .route("/v2/repository/models/{m}/load", post(load))
        .route("/v2/repository/models/{m}/unload", post(unload))
        .route("/metrics", get(metrics))
        .route("/v1/embeddings", post(v1_embeddings))
        .route("/v1/chat/completions", post(openai::chat_completions))
        .route("/v1/completions", post(openai::completions))
        .route("/v1/models", get(openai::models))
        .route("/v1/models/{m}", get(openai::model))
        .route("/v2/models/{m}/generate", post(tgen::generate))
        .route("/v2/models/{m}/generate_stream", post(tgen::generate_stream))
        .route("/v2/models/{m}/versions/{v}/generate", post(tgen::generate_v))
        .route(
            "/v2/models/{m}/versions/{v}/generate_stream",
            post(tgen::generate_stream_v),
        )
        .route_layer(middleware::from_fn_with_state(state.clone(), auth));
    health
        .merge(api)
        .fallback(not_found)
        .method_not_allowed_fallback(method_not_allowed)
        .with_state(state)
}

fn json_response(status: StatusCode, v: Value) -> Response {
    let mut r = (status, v.to_string()).into_response();
    r.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    r
}

fn ok(v: Value) -> Response {
    json_response(StatusCode::OK, v)
}

/// `err` in OpenAI's error shape under `/v1`, else in the KServe shape.
fn route_error(path: &str, err: ServeError) -> Response {
    if path == "/v1" || path.starts_with("/v1/") {
        openai::error::OpenAiError::from(err).into_response()
    } else {
        err.into_response()
    }
}

async fn not_found(method: Method, uri: Uri) -> Response {
    let err = ServeError::NotFound(format!(
        "no route for {method} {}; the API is under /v2 (KServe v2 protocol, Triton's generate), /v1 (OpenAI) and /metrics",
        uri.path()
    ));
    route_error(uri.path(), err)
}

async fn method_not_allowed(method: Method, uri: Uri) -> Response {
    let p = uri.path();
    let post = ["/infer", "/generate", "/generate_stream"]
        .iter()
        .any(|e| p.ends_with(e))
        || p.starts_with("/v2/repository")
        || (p.starts_with("/v1/") && !p.starts_with("/v1/models"));
    let hint = if post { "POST" } else { "GET" };
    let err = ServeError::MethodNotAllowed(format!("{method} is not allowed on {}; use {hint}", uri.path()));
    route_error(p, err)
}

/// Constant-time comparison, so the key cannot be guessed byte by byte
/// from response times.
fn same(a: &[u8], b: &[u8]) -> bool {
    a.len() == b.len() && a.iter().zip(b).fold(0u8, |acc, (x, y)| acc | (x ^ y)) == 0
}

async fn auth(AxState(state): AxState<S>, req: Request, next: Next) -> Response {
    let Some(key) = state.options.api_key.as_deref() else {
        return next.run(req).await;
    };
    let h = req.headers();
    let bearer = h
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")))
        .map(str::trim);
    let x_key = h.get("x-api-key").and_then(|v| v.to_str().ok()).map(str::trim);
    let good = [bearer, x_key]
        .into_iter()
        .flatten()
        .any(|given| same(given.as_bytes(), key.as_bytes()));
    if good {
        next.run(req).await
    } else {
        ServeError::Unauthorized.into_response()
    }
}

async fn live() -> Response {
    ok(json!({"live": true}))
}

async fn ready(AxState(state): AxState<S>) -> Response {
    match state.not_ready() {
        None => ok(json!({"ready": true})),
        Some(why) => json_response(StatusCode::SERVICE_UNAVAILABLE, json!({"ready": false, "error": why})),
    }
}

async fn server_metadata() -> Response {
    ok(json!({
        "name": "wginfer",
        "version": env!("CARGO_PKG_VERSION"),
        "extensions": ["binary_tensor_data", "model_configuration", "model_repository", "metrics"],
    }))
}

fn metadata(state: &State, inst: &Instance) -> Value {
    let g = inst.session.graph();
    let io = |v: &crate::graph::ValueInfo| {
        json!({
            "name": v.name,
            "datatype": datatype_name(v.ty.dtype),
            "shape": protocol_shape(&v.ty.shape),
        })
    };
    let versions: Vec<String> = state.repo.versions(&inst.name).iter().map(u64::to_string).collect();
    let inputs: Vec<Value> = if inst.embedder.is_some() {
        vec![json!({"name": TEXT_INPUT, "datatype": "BYTES", "shape": [-1]})]
    } else {
        g.inputs().iter().map(io).collect()
    };
    json!({
        "name": inst.name,
        "versions": versions,
        "platform": "wginfer",
        "inputs": inputs,
        "outputs": g.outputs().iter().map(io).collect::<Vec<_>>(),
    })
}

async fn model_metadata(AxState(s): AxState<S>, Path(m): Path<String>) -> Result<Response, ServeError> {
    let inst = s.repo.get(&m, None)?;
    Ok(ok(metadata(&s, &inst)))
}

async fn model_metadata_v(
    AxState(s): AxState<S>,
    Path((m, v)): Path<(String, String)>,
) -> Result<Response, ServeError> {
    let inst = s.repo.get(&m, Some(&v))?;
    Ok(ok(metadata(&s, &inst)))
}

fn readiness(s: &State, m: &str, v: Option<&str>) -> Result<Response, ServeError> {
    match s.repo.get(m, v) {
        Ok(inst) => Ok(ok(
            json!({"name": m, "version": inst.version.to_string(), "ready": true}),
        )),
        Err(ServeError::Unavailable(why)) => Ok(json_response(
            StatusCode::SERVICE_UNAVAILABLE,
            json!({"name": m, "ready": false, "error": why}),
        )),
        Err(e) => Err(e),
    }
}

async fn model_ready(AxState(s): AxState<S>, Path(m): Path<String>) -> Result<Response, ServeError> {
    readiness(&s, &m, None)
}

async fn model_ready_v(AxState(s): AxState<S>, Path((m, v)): Path<(String, String)>) -> Result<Response, ServeError> {
    readiness(&s, &m, Some(&v))
}

fn config_json(inst: &Instance) -> Value {
    let cfg = &inst.config;
    let g = inst.session.graph();
    let batched = cfg.max_batch_size > 0;
    let io = |v: &crate::graph::ValueInfo| {
        let mut dims = protocol_shape(&v.ty.shape);
        if batched && !dims.is_empty() {
            dims.remove(0);
        }
        json!({"name": v.name, "data_type": config_type_name(v.ty.dtype), "dims": dims})
    };
    let mut c = json!({
        "name": inst.name,
        "platform": "wginfer",
        "backend": "wginfer",
        "max_batch_size": cfg.max_batch_size,
        "input": if inst.embedder.is_some() {
            vec![json!({"name": TEXT_INPUT, "data_type": "TYPE_STRING", "dims": [-1]})]
        } else {
            g.inputs().iter().map(io).collect::<Vec<_>>()
        },
        "output": g.outputs().iter().map(io).collect::<Vec<_>>(),
        "version_policy": cfg.version_policy,
        "instance_group": [{
            "count": cfg.instances,
            "kind": if super::config::is_cpu(&cfg.device) { "KIND_CPU" } else { "KIND_GPU" },
        }],
        "parameters": {
            "device": {"string_value": cfg.device.to_string()},
        },
    });
    let timeout_us = cfg.timeout.map(|t| t.as_micros() as u64).unwrap_or(0);
    if let Some(b) = &cfg.batching {
        c["dynamic_batching"] = json!({
            "max_queue_delay_microseconds": b.max_queue_delay.as_micros() as u64,
            "default_queue_policy": {
                "max_queue_size": cfg.max_queue_size,
                "default_timeout_microseconds": timeout_us,
            },
        });
    }
    c
}

async fn model_config(AxState(s): AxState<S>, Path(m): Path<String>) -> Result<Response, ServeError> {
    Ok(ok(config_json(&*s.repo.get(&m, None)?)))
}

async fn model_config_v(AxState(s): AxState<S>, Path((m, v)): Path<(String, String)>) -> Result<Response, ServeError> {
    Ok(ok(config_json(&*s.repo.get(&m, Some(&v))?)))
}

/// Reads a body up to the size limit (413 beyond it) within the body
/// timeout (408 past it).
pub(super) async fn read_body(body: Body, headers: &HeaderMap, options: &ServerOptions) -> Result<Bytes, ServeError> {
    let read = read_limited(body, headers, options.max_body_bytes);
    match options.body_timeout {
        None => read.await,
        Some(t) => tokio::time::timeout(t, read)
            .await
            .unwrap_or(Err(ServeError::RequestTimeout { secs: t.as_secs_f64() })),
    }
}

/// Reads a body up to the limit: 413 beyond it.
async fn read_limited(body: Body, headers: &HeaderMap, limit: usize) -> Result<Bytes, ServeError> {
    if let Some(len) = headers
        .get(header::CONTENT_LENGTH)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.parse::<u64>().ok())
    {
        if len > limit as u64 {
            return Err(ServeError::PayloadTooLarge { limit });
        }
    }
    match Limited::new(body, limit).collect().await {
        Ok(c) => Ok(c.to_bytes()),
        Err(e) if e.is::<LengthLimitError>() => Err(ServeError::PayloadTooLarge { limit }),
        Err(e) => Err(ServeError::bad(format!("could not read the request body: {e}"))),
    }
}

async fn infer(
    AxState(s): AxState<S>,
    Path(m): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServeError> {
    do_infer(&s, &m, None, &headers, body).await
}

async fn infer_v(
    AxState(s): AxState<S>,
    Path((m, v)): Path<(String, String)>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServeError> {
    do_infer(&s, &m, Some(&v), &headers, body).await
}

async fn do_infer(
    s: &State,
    m: &str,
    v: Option<&str>,
    headers: &HeaderMap,
    body: Body,
) -> Result<Response, ServeError> {
    let inst = s.repo.get(m, v)?;
    let started = Instant::now();
    let result = infer_with(s, &inst, headers, body).await;
    let us = u64::try_from(started.elapsed().as_micros()).unwrap_or(u64::MAX);
    match &result {
        Ok((_, rows)) => inst.metrics.success(us, *rows as u64),
        Err(e) => {
            let reason = match e {
                ServeError::Unavailable(_) => FailureReason::Rejected,
                ServeError::Internal(_) => FailureReason::Backend,
                _ => FailureReason::Other,
            };
            inst.metrics.failure(reason, us);
        }
    }
    result.map(|(r, _)| r)
}

async fn infer_with(
    s: &State,
    inst: &Instance,
    headers: &HeaderMap,
    body: Body,
) -> Result<(Response, usize), ServeError> {
    if let Some(enc) = headers.get(header::CONTENT_ENCODING).and_then(|v| v.to_str().ok()) {
        if !enc.eq_ignore_ascii_case("identity") {
            return Err(ServeError::bad(format!(
                "Content-Encoding `{enc}` is not supported; send the body uncompressed"
            )));
        }
    }
    let json_len = match headers.get(HEADER_LENGTH) {
        None => None,
        Some(v) => Some(
            v.to_str()
                .ok()
                .and_then(|v| v.trim().parse::<usize>().ok())
                .ok_or_else(|| ServeError::bad("Inference-Header-Content-Length must be a non-negative integer"))?,
        ),
    };
    let body = read_body(body, headers, &s.options).await?;
    let req = protocol::parse_infer(&body, json_len)?;
    drop(body);
    let graph = inst.session.graph();
    let mut wanted: Vec<(String, bool)> = match &req.outputs {
        Some(list) => {
            for (name, _) in list {
                if !graph.outputs().iter().any(|o| o.name == *name) {
                    let known: Vec<&str> = graph.outputs().iter().map(|o| o.name.as_str()).collect();
                    return Err(ServeError::bad(format!(
                        "unknown output `{name}` for model `{}`; its outputs are: {}",
                        inst.name,
                        known.join(", ")
                    )));
                }
            }
            list.clone()
        }
        None => graph
            .outputs()
            .iter()
            .map(|o| (o.name.clone(), req.binary_output))
            .collect(),
    };
    let timeout = req
        .timeout_us
        .filter(|&us| us > 0)
        .map(Duration::from_micros)
        .or(inst.config.timeout);
    let (mut outputs, rows) = if req.texts.is_empty() {
        let (inputs, rows) = inst.prepare(req.inputs)?;
        (inst.infer(inputs, rows, timeout).await?, rows)
    } else {
        let (name, _) = &req.texts[0];
        if inst.embedder.is_none() {
            return Err(ServeError::bad(format!(
                "input `{name}` is BYTES, but model `{}` takes tensors only; its metadata at /v2/models/{} lists them",
                inst.name, inst.name
            )));
        }
        if req.texts.len() != 1 || !req.inputs.is_empty() {
            return Err(ServeError::bad(format!(
                "model `{}` takes one BYTES input of texts (e.g. `{TEXT_INPUT}`) and nothing beside it",
                inst.name
            )));
        }
        let out_index = embeddings::output_index(graph);
        let emb_name = graph
            .outputs()
            .get(out_index)
            .map(|o| o.name.clone())
            .unwrap_or_default();
        if let Some((other, _)) = wanted
            .iter()
            .find(|(n, _)| *n != emb_name)
            .filter(|_| req.outputs.is_some())
        {
            return Err(ServeError::bad(format!(
                "output `{other}` is not computed from texts; ask for `{emb_name}` only"
            )));
        }
        wanted.retain(|(n, _)| *n == emb_name);
        let texts = &req.texts[0].1;
        let (t, _) = embeddings::embed_texts(inst, texts, timeout).await?;
        let mut outs: Vec<crate::tensor::Tensor> = graph
            .outputs()
            .iter()
            .map(|_| crate::tensor::Tensor::zeros(crate::DType::U8, vec![0]))
            .collect();
        if let Some(slot) = outs.get_mut(out_index) {
            *slot = t;
        }
        (outs, texts.len())
    };
    let mut selected = Vec::with_capacity(wanted.len());
    for (name, binary) in wanted {
        let Some(i) = graph.outputs().iter().position(|o| o.name == name) else {
            continue;
        };
        let t = std::mem::replace(&mut outputs[i], crate::tensor::Tensor::zeros(crate::DType::U8, vec![0]));
        selected.push((name, t, binary));
    }
    let id = req
        .id
        .unwrap_or_else(|| format!("wginfer-{}", s.next_id.fetch_add(1, Ordering::Relaxed)));
    let version = inst.version.to_string();
    let enc = protocol::encode_response(&inst.name, &version, &id, &selected)?;
    let mut resp = Response::new(Body::from(enc.body));
    let h = resp.headers_mut();
    match enc.json_len {
        Some(n) => {
            h.insert(
                header::CONTENT_TYPE,
                HeaderValue::from_static("application/octet-stream"),
            );
            h.insert(HEADER_LENGTH, HeaderValue::from(n));
        }
        None => {
            h.insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        }
    }
    Ok((resp, rows))
}

async fn repository_index(AxState(s): AxState<S>, headers: HeaderMap, body: Body) -> Result<Response, ServeError> {
    let body = read_body(body, &headers, &s.options).await?;
    let mut ready_only = false;
    if !body.iter().all(u8::is_ascii_whitespace) {
        let v: Value = serde_json::from_slice(&body)
            .map_err(|e| ServeError::bad(format!("the index request must be JSON like {{\"ready\": true}}: {e}")))?;
        ready_only = match v.get("ready") {
            None | Some(Value::Null) => false,
            Some(Value::Bool(b)) => *b,
            Some(other) => return Err(ServeError::bad(format!("`ready` must be true or false, got {other}"))),
        };
    }
    let index = s.repo.index(ready_only);
    Ok(ok(
        serde_json::to_value(index).map_err(|e| ServeError::Internal(e.to_string()))?
    ))
}

async fn check_json_body(s: &State, headers: &HeaderMap, body: Body) -> Result<(), ServeError> {
    let body = read_body(body, headers, &s.options).await?;
    if !body.iter().all(u8::is_ascii_whitespace) {
        serde_json::from_slice::<Value>(&body)
            .map_err(|e| ServeError::bad(format!("the request body must be JSON (or empty): {e}")))?;
    }
    Ok(())
}

async fn load(
    AxState(s): AxState<S>,
    Path(m): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServeError> {
    check_json_body(&s, &headers, body).await?;
    s.repo.load(&m).await?;
    let versions: Vec<String> = s.repo.versions(&m).iter().map(u64::to_string).collect();
    Ok(ok(json!({"name": m, "versions": versions, "state": "READY"})))
}

async fn unload(
    AxState(s): AxState<S>,
    Path(m): Path<String>,
    headers: HeaderMap,
    body: Body,
) -> Result<Response, ServeError> {
    check_json_body(&s, &headers, body).await?;
    s.repo.unload(&m).await?;
    Ok(ok(json!({"name": m, "state": "UNAVAILABLE"})))
}

async fn v1_embeddings(AxState(s): AxState<S>, headers: HeaderMap, body: Body) -> Response {
    let body = match read_body(body, &headers, &s.options).await {
        Ok(b) => b,
        Err(e) => return OpenAiError::from(e).into_response(),
    };
    match embeddings::openai_embeddings(&s, &body).await {
        Ok(r) => r,
        Err(e) => e.into_response(),
    }
}

async fn metrics(AxState(s): AxState<S>) -> Response {
    let mut r = s.metrics.render().into_response();
    r.headers_mut().insert(
        header::CONTENT_TYPE,
        HeaderValue::from_static("text/plain; version=0.0.4; charset=utf-8"),
    );
    r
}
