//! A bounded load test on 127.0.0.1: many concurrent keep-alive clients, a
//! fixed number of requests, zero errors allowed, every answer checked
//! against the engine; once with dynamic batching and once without, and a
//! hot reload of new versions in the middle of the load with zero failed
//! requests. It prints req/s and p50/p99 latency; it asserts nothing about
//! timing.
//!
//! `WGINFER_LOAD_CLIENTS` (default 16) and `WGINFER_LOAD_REQUESTS` (per
//! client, default 25) size it; for the numbers in docs/serving.md:
//! `WGINFER_LOAD_CLIENTS=64 WGINFER_LOAD_REQUESTS=200 cargo test --release --test serve_load -- --nocapture --test-threads 1`.

mod common;

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use serde_json::{json, Value};
use tokio::io::{AsyncBufReadExt, AsyncReadExt, AsyncWriteExt, BufReader};
use tokio::net::TcpStream;
use wginfer::serve::{Server, ServerOptions};
use wginfer::{Device, Model, Session, Tensor};

const IO_TIMEOUT: Duration = Duration::from_secs(30);

fn env_usize(name: &str, default: usize) -> usize {
    std::env::var(name).ok().and_then(|v| v.parse().ok()).unwrap_or(default)
}

/// A minimal HTTP/1.1 keep-alive client (responses always carry a
/// Content-Length here).
struct Conn {
    stream: BufReader<TcpStream>,
}

struct Resp {
    status: u16,
    json_len: Option<usize>,
    body: Vec<u8>,
}

impl Conn {
    async fn connect(addr: &str) -> std::io::Result<Self> {
        let s = TcpStream::connect(addr).await?;
        s.set_nodelay(true)?;
        Ok(Self {
            stream: BufReader::new(s),
        })
    }

    async fn request(
        &mut self,
        method: &str,
        path: &str,
        extra: &[(&str, String)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        tokio::time::timeout(IO_TIMEOUT, self.request_inner(method, path, extra, body))
            .await
            .map_err(|_| std::io::Error::new(std::io::ErrorKind::TimedOut, "no response in 30 s"))?
    }

    async fn request_inner(
        &mut self,
        method: &str,
        path: &str,
        extra: &[(&str, String)],
        body: &[u8],
    ) -> std::io::Result<Resp> {
        let mut head = format!(
            "{method} {path} HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Length: {}\r\n",
            body.len()
        );
        for (k, v) in extra {
            head.push_str(&format!("{k}: {v}\r\n"));
        }
        head.push_str("\r\n");
        let s = self.stream.get_mut();
        s.write_all(head.as_bytes()).await?;
        s.write_all(body).await?;
        let mut line = String::new();
        self.stream.read_line(&mut line).await?;
        let status: u16 = line
            .split_whitespace()
            .nth(1)
            .and_then(|c| c.parse().ok())
            .ok_or_else(|| std::io::Error::other(format!("bad status line {line:?}")))?;
        let (mut len, mut json_len) = (0usize, None);
        loop {
            line.clear();
            self.stream.read_line(&mut line).await?;
            let l = line.trim_end();
            if l.is_empty() {
                break;
            }
            if let Some((k, v)) = l.split_once(':') {
                let v = v.trim();
                match k.to_ascii_lowercase().as_str() {
                    "content-length" => len = v.parse().unwrap_or(0),
                    "inference-header-content-length" => json_len = v.parse().ok(),
                    _ => {}
                }
            }
        }
        let mut body = vec![0; len];
        self.stream.read_exact(&mut body).await?;
        Ok(Resp { status, json_len, body })
    }
}

fn repo(dir: &Path, batching: bool) {
    let m = dir.join("digits-mlp");
    std::fs::create_dir_all(m.join("1")).unwrap();
    std::fs::copy(
        common::root("models/digits-mlp/model.safetensors"),
        m.join("1/model.safetensors"),
    )
    .unwrap();
    let config = if batching {
        r#"{"max_batch_size": 64, "dynamic_batching": {"max_queue_delay_microseconds": 500}, "instance_group": [{"count": 2}]}"#
    } else {
        r#"{"max_batch_size": 64, "instance_group": [{"count": 2}]}"#
    };
    std::fs::write(m.join("config.json"), config).unwrap();
}

struct Rows {
    inputs: Vec<Vec<u8>>,
    want: Vec<Vec<f32>>,
}

/// The first rows of the test set, and the engine's probabilities for each.
fn rows(n: usize) -> Rows {
    let data = wginfer::model::load_tensors(common::root("models/digits-mlp/digits_test.safetensors")).unwrap();
    let x = data.into_iter().find(|(n, _)| n == "input").unwrap().1;
    let session = Session::new(
        &Model::load(common::root("models/digits-mlp/model.safetensors")).unwrap(),
        Device::Cpu,
    )
    .unwrap();
    let probs = session
        .run([("input", x.slice_rows(0, n).unwrap())])
        .unwrap()
        .remove("probabilities")
        .unwrap();
    let p = probs.as_f32().unwrap();
    Rows {
        inputs: (0..n).map(|i| x.slice_rows(i, i + 1).unwrap().to_le_bytes()).collect(),
        want: (0..n).map(|i| p[i * 10..(i + 1) * 10].to_vec()).collect(),
    }
}

struct Report {
    ok: usize,
    errors: Vec<String>,
    versions: std::collections::BTreeSet<String>,
    latencies: Vec<Duration>,
    elapsed: Duration,
}

impl Report {
    fn print(&self, what: &str) {
        let mut l = self.latencies.clone();
        l.sort();
        let pct = |p: f64| {
            l.get(((l.len() as f64 * p) as usize).min(l.len().saturating_sub(1)))
                .copied()
                .unwrap_or_default()
        };
        println!(
            "{what}: {} requests, {} errors, {:.0} req/s, p50 {:.2} ms, p99 {:.2} ms, versions {:?}",
            self.ok + self.errors.len(),
            self.errors.len(),
            self.ok as f64 / self.elapsed.as_secs_f64(),
            pct(0.50).as_secs_f64() * 1e3,
            pct(0.99).as_secs_f64() * 1e3,
            self.versions
        );
    }
}

/// `clients` connections, `per_client` binary requests each (one row, the
/// probabilities back in binary); every answer compared with the engine.
/// With `more`, each client goes on past `per_client` while it is set (at
/// most 100 times as many requests, and 60 s).
async fn load(addr: &str, clients: usize, per_client: usize, rows: Arc<Rows>, more: Option<Arc<AtomicBool>>) -> Report {
    let started = Instant::now();
    let mut tasks = Vec::new();
    for c in 0..clients {
        let addr = addr.to_string();
        let rows = rows.clone();
        let more = more.clone();
        tasks.push(tokio::spawn(async move {
            let mut out = (Vec::new(), Vec::new(), Vec::new());
            let mut conn = match Conn::connect(&addr).await {
                Ok(c) => c,
                Err(e) => {
                    out.1.push(format!("connect: {e}"));
                    return out;
                }
            };
            let go_on = || more.as_ref().is_some_and(|m| m.load(Ordering::SeqCst)) && started.elapsed() < Duration::from_secs(60);
            for i in 0..per_client * 100 {
                if i >= per_client && !go_on() {
                    break;
                }
                let r = (c * per_client + i) % rows.inputs.len();
                let header = json!({
                    "id": format!("{c}-{i}"),
                    "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32", "parameters": {"binary_data_size": 256}}],
                    "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}],
                })
                .to_string();
                let mut body = header.clone().into_bytes();
                body.extend_from_slice(&rows.inputs[r]);
                let t = Instant::now();
                let resp = conn
                    .request("POST", "/v2/models/digits-mlp/infer", &[("Inference-Header-Content-Length", header.len().to_string())], &body)
                    .await;
                let dt = t.elapsed();
                match resp {
                    Err(e) => {
                        out.1.push(format!("request {c}-{i}: {e}"));
                        match Conn::connect(&addr).await {
                            Ok(c) => conn = c,
                            Err(_) => return out,
                        }
                    }
                    Ok(resp) if resp.status != 200 => {
                        out.1.push(format!("request {c}-{i}: {} {}", resp.status, String::from_utf8_lossy(&resp.body)))
                    }
                    Ok(resp) => match check(&resp, &rows.want[r], &format!("{c}-{i}")) {
                        Ok(version) => {
                            out.0.push(dt);
                            out.2.push(version);
                        }
                        Err(e) => out.1.push(e),
                    },
                }
            }
            out
        }));
    }
    let mut report = Report {
        ok: 0,
        errors: Vec::new(),
        versions: Default::default(),
        latencies: Vec::new(),
        elapsed: Duration::ZERO,
    };
    for t in tasks {
        let (lat, errs, versions) = t.await.unwrap();
        report.ok += lat.len();
        report.latencies.extend(lat);
        report.errors.extend(errs);
        report.versions.extend(versions);
    }
    report.elapsed = started.elapsed();
    report
}

fn check(resp: &Resp, want: &[f32], id: &str) -> Result<String, String> {
    let n = resp
        .json_len
        .ok_or("no Inference-Header-Content-Length in the response")?;
    let v: Value = serde_json::from_slice(&resp.body[..n]).map_err(|e| e.to_string())?;
    if v["id"] != id {
        return Err(format!("id {} for request {id}", v["id"]));
    }
    let got = Tensor::from_le_bytes(wginfer::DType::F32, vec![10], &resp.body[n..]).map_err(|e| e.to_string())?;
    let got = got.as_f32().map_err(|e| e.to_string())?;
    for (g, w) in got.iter().zip(want) {
        if (g - w).abs() > 1e-5 {
            return Err(format!("request {id}: probability {g}, engine says {w}"));
        }
    }
    Ok(v["model_version"].as_str().unwrap_or_default().to_string())
}

type Running = (
    String,
    tokio::sync::oneshot::Sender<()>,
    tokio::task::JoinHandle<std::io::Result<()>>,
);

async fn start(dir: &Path) -> Running {
    start_with(ServerOptions {
        model_repository: dir.to_path_buf(),
        ..ServerOptions::default()
    })
    .await
}

/// Starts a server on a free loopback port and waits until it is ready.
async fn start_with(options: ServerOptions) -> Running {
    let server = Server::new(options);
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server.serve(listener, async move {
        let _ = rx.await;
    }));
    let t = Instant::now();
    loop {
        if let Ok(mut c) = Conn::connect(&addr).await {
            if c.request("GET", "/v2/health/ready", &[], b"")
                .await
                .is_ok_and(|r| r.status == 200)
            {
                break;
            }
        }
        assert!(t.elapsed() < Duration::from_secs(60), "the server did not become ready");
        tokio::time::sleep(Duration::from_millis(20)).await;
    }
    (addr, tx, handle)
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn load_with_and_without_dynamic_batching() {
    let clients = env_usize("WGINFER_LOAD_CLIENTS", 16);
    let per_client = env_usize("WGINFER_LOAD_REQUESTS", 25);
    let rows = Arc::new(rows(450));
    for batching in [true, false] {
        let dir = tempfile::tempdir().unwrap();
        repo(dir.path(), batching);
        let (addr, stop, handle) = start(dir.path()).await;
        // Warm the connections' path once, then measure.
        let report = load(&addr, clients, per_client, rows.clone(), None).await;
        let what = if batching { "dynamic batching" } else { "no batching" };
        report.print(&format!("{clients} clients x {per_client} requests, {what}"));
        assert!(
            report.errors.is_empty(),
            "{what}: {} errors, first: {}",
            report.errors.len(),
            report.errors[0]
        );
        assert_eq!(report.ok, clients * per_client);
        // Metrics agree with what the clients saw.
        let mut c = Conn::connect(&addr).await.unwrap();
        let m = String::from_utf8(c.request("GET", "/metrics", &[], b"").await.unwrap().body).unwrap();
        let line = format!(
            "wginfer_inference_request_success{{model=\"digits-mlp\",version=\"1\"}} {}",
            clients * per_client
        );
        assert!(m.contains(&line), "{line} not in\n{m}");
        let execs: u64 = m
            .lines()
            .find_map(|l| l.strip_prefix("wginfer_inference_exec_count{model=\"digits-mlp\",version=\"1\"} "))
            .and_then(|v| v.parse().ok())
            .unwrap();
        println!("  executions: {execs} for {} requests", clients * per_client);
        if !batching {
            assert_eq!(execs as usize, clients * per_client);
        }
        let _ = stop.send(());
        handle.await.unwrap().unwrap();
    }
}

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn reload_during_load_fails_no_request() {
    let clients = env_usize("WGINFER_LOAD_CLIENTS", 16);
    let per_client = env_usize("WGINFER_LOAD_REQUESTS", 25).max(20);
    let rows = Arc::new(rows(450));
    let dir = tempfile::tempdir().unwrap();
    repo(dir.path(), true);
    let (addr, stop, handle) = start(dir.path()).await;
    let reloading = Arc::new(AtomicBool::new(true));
    // While the load runs: versions 2, 3 and 4 appear and are loaded; each
    // replaces the one before while requests are in flight.
    let reloader = {
        let (addr, reloading, m) = (addr.clone(), reloading.clone(), dir.path().join("digits-mlp"));
        tokio::spawn(async move {
            let mut loaded = Vec::new();
            for v in 2..=4 {
                tokio::time::sleep(Duration::from_millis(30)).await;
                std::fs::create_dir_all(m.join(v.to_string())).unwrap();
                std::fs::copy(
                    common::root("models/digits-mlp/model.safetensors"),
                    m.join(format!("{v}/model.safetensors")),
                )
                .unwrap();
                let mut c = Conn::connect(&addr).await.unwrap();
                let r = c
                    .request("POST", "/v2/repository/models/digits-mlp/load", &[], b"")
                    .await
                    .unwrap();
                assert_eq!(r.status, 200, "{}", String::from_utf8_lossy(&r.body));
                loaded.push(v);
            }
            tokio::time::sleep(Duration::from_millis(30)).await;
            reloading.store(false, Ordering::SeqCst);
            loaded
        })
    };
    let report = load(&addr, clients, per_client, rows, Some(reloading)).await;
    let loaded = reloader.await.unwrap();
    report.print(&format!(
        "{clients} clients x {per_client} requests, reloads to {loaded:?} during the load"
    ));
    assert!(
        report.errors.is_empty(),
        "{} failed requests, first: {}",
        report.errors.len(),
        report.errors[0]
    );
    assert!(report.ok >= clients * per_client);
    assert_eq!(loaded, vec![2, 3, 4]);
    assert!(
        report.versions.len() >= 2,
        "traffic should have moved between versions: {:?}",
        report.versions
    );
    let _ = stop.send(());
    handle.await.unwrap().unwrap();
}

/// SIGTERM's path: readiness goes off at once, a request still in the queue
/// finishes with 200, then the server stops and refuses connections.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_drains_in_flight_requests() {
    let dir = tempfile::tempdir().unwrap();
    let m = dir.path().join("digits-mlp");
    std::fs::create_dir_all(m.join("1")).unwrap();
    std::fs::copy(
        common::root("models/digits-mlp/model.safetensors"),
        m.join("1/model.safetensors"),
    )
    .unwrap();
    // A lone request waits 400 ms in the batcher: it is in flight when the
    // shutdown starts.
    std::fs::write(
        m.join("config.json"),
        r#"{"max_batch_size": 8, "dynamic_batching": {"max_queue_delay_microseconds": 400000}}"#,
    )
    .unwrap();
    let server = Server::new(ServerOptions {
        model_repository: dir.path().to_path_buf(),
        ..ServerOptions::default()
    });
    let listener = tokio::net::TcpListener::bind("127.0.0.1:0").await.unwrap();
    let addr = listener.local_addr().unwrap().to_string();
    let (tx, rx) = tokio::sync::oneshot::channel::<()>();
    let handle = tokio::spawn(server.clone().serve(listener, async move {
        let _ = rx.await;
    }));
    let t = Instant::now();
    while !server.is_ready() {
        assert!(t.elapsed() < Duration::from_secs(60), "not ready");
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
    let rows = rows(1);
    let request = {
        let addr = addr.clone();
        let input = rows.inputs[0].clone();
        tokio::spawn(async move {
            let header = json!({"id": "late", "inputs": [{"name": "input", "shape": [1, 64], "datatype": "FP32",
                "parameters": {"binary_data_size": 256}}], "outputs": [{"name": "probabilities", "parameters": {"binary_data": true}}]})
            .to_string();
            let mut body = header.clone().into_bytes();
            body.extend_from_slice(&input);
            let mut c = Conn::connect(&addr).await.unwrap();
            let r = c
                .request(
                    "POST",
                    "/v2/models/digits-mlp/infer",
                    &[("Inference-Header-Content-Length", header.len().to_string())],
                    &body,
                )
                .await;
            (r, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(100)).await;
    let stopped_at = Instant::now();
    let _ = tx.send(());
    tokio::time::sleep(Duration::from_millis(20)).await;
    assert!(!server.is_ready(), "readiness goes off as soon as the shutdown starts");
    let (resp, answered_at) = request.await.unwrap();
    let resp = resp.expect("the in-flight request is answered");
    assert_eq!(resp.status, 200, "{}", String::from_utf8_lossy(&resp.body));
    assert!(
        answered_at > stopped_at,
        "the request was answered after the shutdown began"
    );
    // ... and it is right.
    check(&resp, &rows.want[0], "late").unwrap();
    tokio::time::timeout(Duration::from_secs(10), handle)
        .await
        .expect("the server stops once drained")
        .unwrap()
        .unwrap();
    assert!(
        TcpStream::connect(&addr).await.is_err(),
        "no connections after the shutdown"
    );
}

/// A model whose graph reshapes [1, 10] to [7, 5270498306774157606] (the
/// product wraps to 10 in 64 bits) and transposes it: it must fail to load
/// or warm up, with a reason, and never take the server down.
fn overflow_model(dir: &Path) {
    model_file(
        dir,
        json!({
            "format": "wginfer.graph", "version": 1, "name": "overflow",
            "inputs": [{"name": "x", "dtype": "f32", "shape": [1, 10]}],
            "outputs": [{"name": "y", "dtype": "f32", "shape": ["a", "b"]}],
            "nodes": [
                {"name": "r", "op": "Reshape", "inputs": ["x"], "outputs": ["r"], "attrs": {"shape": [7, 5270498306774157606i64]}},
                {"name": "t", "op": "Transpose", "inputs": ["r"], "outputs": ["y"], "attrs": {"perm": [1, 0]}}
            ]
        }),
    );
}

/// A model that reshapes [batch, 10] to [3, 5]: accepted while the batch is
/// symbolic, it fails on its first run (the warm-up, batch 1).
fn reshape_error_model(dir: &Path) {
    model_file(
        dir,
        json!({
            "format": "wginfer.graph", "version": 1, "name": "reshape-error",
            "inputs": [{"name": "x", "dtype": "f32", "shape": ["batch", 10]}],
            "outputs": [{"name": "y", "dtype": "f32", "shape": [3, 5]}],
            "nodes": [{"name": "r", "op": "Reshape", "inputs": ["x"], "outputs": ["y"], "attrs": {"shape": [3, 5]}}]
        }),
    );
}

/// Writes `<dir>/1/model.safetensors`: a safetensors file with no tensors
/// whose metadata holds `graph`, written by hand so that a graph the loader
/// refuses is written as it is.
fn model_file(dir: &Path, graph: Value) {
    std::fs::create_dir_all(dir.join("1")).unwrap();
    let mut header = json!({"__metadata__": {"wginfer.graph": graph.to_string()}}).to_string();
    while !header.len().is_multiple_of(8) {
        header.push(' ');
    }
    let mut bytes = (header.len() as u64).to_le_bytes().to_vec();
    bytes.extend_from_slice(header.as_bytes());
    std::fs::write(dir.join("1/model.safetensors"), bytes).unwrap();
}

/// The repository index as JSON rows.
async fn index(addr: &str) -> Vec<Value> {
    let mut c = Conn::connect(addr).await.unwrap();
    let r = c.request("POST", "/v2/repository/index", &[], b"{}").await.unwrap();
    assert_eq!(r.status, 200);
    serde_json::from_slice::<Value>(&r.body)
        .unwrap()
        .as_array()
        .unwrap()
        .clone()
}

/// The index row of a model that is not ready, once its load was tried.
fn failed_row<'a>(rows: &'a [Value], name: &str) -> Option<&'a Value> {
    rows.iter().find(|r| r["name"] == name && r["state"] == "UNAVAILABLE")
}

/// Bad models dropped into a polled repository while clients load the good
/// one: a file that fails to load, one that fails on its warm-up run and
/// one whose sizes overflow. Every request to the good model succeeds; each
/// bad one is UNAVAILABLE with its reason (index and model readiness); the
/// server stays up and, with non-strict readiness, ready.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn bad_models_in_a_polled_repository_leave_the_others_serving() {
    let clients = env_usize("WGINFER_LOAD_CLIENTS", 16).min(8);
    let per_client = env_usize("WGINFER_LOAD_REQUESTS", 25);
    let rows = Arc::new(rows(450));
    let dir = tempfile::tempdir().unwrap();
    repo(dir.path(), true);
    let (addr, stop, handle) = start_with(ServerOptions {
        model_repository: dir.path().to_path_buf(),
        poll_interval: Some(Duration::from_millis(100)),
        strict_readiness: false,
        ..ServerOptions::default()
    })
    .await;
    let loading = Arc::new(AtomicBool::new(true));
    let dropper = {
        let (addr, loading, root) = (addr.clone(), loading.clone(), dir.path().to_path_buf());
        tokio::spawn(async move {
            tokio::time::sleep(Duration::from_millis(50)).await;
            std::fs::create_dir_all(root.join("truncated/1")).unwrap();
            std::fs::write(root.join("truncated/1/model.safetensors"), [0u8; 4]).unwrap();
            reshape_error_model(&root.join("reshape-error"));
            overflow_model(&root.join("overflow"));
            let t = Instant::now();
            let rows = loop {
                let rows = index(&addr).await;
                if ["truncated", "reshape-error", "overflow"]
                    .iter()
                    .all(|m| failed_row(&rows, m).is_some())
                {
                    break rows;
                }
                assert!(
                    t.elapsed() < Duration::from_secs(60),
                    "the bad models were not all marked failed: {rows:?}"
                );
                tokio::time::sleep(Duration::from_millis(50)).await;
            };
            loading.store(false, Ordering::SeqCst);
            rows
        })
    };
    let report = load(&addr, clients, per_client, rows, Some(loading)).await;
    let rows = dropper.await.unwrap();
    report.print(&format!(
        "{clients} clients x {per_client}+ requests while bad models are polled"
    ));
    assert!(
        report.errors.is_empty(),
        "{} failed requests to the good model, first: {}",
        report.errors.len(),
        report.errors[0]
    );
    assert!(report.ok >= clients * per_client);
    let reason = |m: &str| {
        failed_row(&rows, m).unwrap()["reason"]
            .as_str()
            .unwrap_or_default()
            .to_string()
    };
    assert!(reason("truncated").contains("truncated"), "{}", reason("truncated"));
    assert!(
        reason("reshape-error").contains("reshape"),
        "{}",
        reason("reshape-error")
    );
    assert!(!reason("overflow").is_empty());
    println!("  overflow: {}", reason("overflow"));
    let mut c = Conn::connect(&addr).await.unwrap();
    for m in ["truncated", "reshape-error", "overflow"] {
        let r = c
            .request("GET", &format!("/v2/models/{m}/ready"), &[], b"")
            .await
            .unwrap();
        assert_eq!(r.status, 503, "{m}");
        let body: Value = serde_json::from_slice(&r.body).unwrap();
        assert_eq!(body["ready"], false);
        assert!(
            body["error"].as_str().is_some_and(|e| e.contains(&reason(m))),
            "{m}: {body}"
        );
    }
    let r = c.request("GET", "/v2/health/ready", &[], b"").await.unwrap();
    assert_eq!(r.status, 200, "non-strict readiness ignores failed models");
    let r = c.request("GET", "/v2/models/digits-mlp/ready", &[], b"").await.unwrap();
    assert_eq!(r.status, 200);
    let _ = stop.send(());
    handle.await.unwrap().unwrap();
}

/// A server with one small model, and how it was told to stop.
async fn connection_server(options: impl FnOnce(ServerOptions) -> ServerOptions) -> (tempfile::TempDir, Running) {
    let dir = tempfile::tempdir().unwrap();
    repo(dir.path(), false);
    let running = start_with(options(ServerOptions {
        model_repository: dir.path().to_path_buf(),
        ..ServerOptions::default()
    }))
    .await;
    (dir, running)
}

/// Reads until the server closes the connection; how long that took.
async fn closed_within(stream: &mut TcpStream, limit: Duration) -> Option<Duration> {
    let t = Instant::now();
    let mut buf = [0u8; 256];
    loop {
        match tokio::time::timeout(limit.saturating_sub(t.elapsed()), stream.read(&mut buf)).await {
            Err(_) => return None,
            Ok(Ok(0)) | Ok(Err(_)) => return Some(t.elapsed()),
            Ok(Ok(_)) => {}
        }
    }
}

const HALF_HEADER: &[u8] = b"POST /v2/models/digits-mlp/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Le";

#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_half_sent_header_is_closed_after_the_header_timeout() {
    let (_dir, (addr, stop, handle)) = connection_server(|o| ServerOptions {
        header_timeout: Some(Duration::from_secs(1)),
        ..o
    })
    .await;
    let mut s = TcpStream::connect(&addr).await.unwrap();
    s.write_all(HALF_HEADER).await.unwrap();
    let took = closed_within(&mut s, Duration::from_secs(10))
        .await
        .expect("the connection is closed after the header timeout");
    assert!(
        took >= Duration::from_millis(900),
        "closed after {took:?}, before the timeout"
    );
    // Complete requests still work.
    let mut c = Conn::connect(&addr).await.unwrap();
    assert_eq!(
        c.request("GET", "/v2/health/ready", &[], b"").await.unwrap().status,
        200
    );
    let _ = stop.send(());
    handle.await.unwrap().unwrap();
}

/// Reads one HTTP response head: its status code, and whether it says
/// `Connection: close`.
async fn response_head(stream: &mut (impl tokio::io::AsyncRead + Unpin)) -> (u16, bool) {
    let mut r = BufReader::new(stream);
    let mut line = String::new();
    r.read_line(&mut line).await.unwrap();
    let status = line.split_whitespace().nth(1).and_then(|c| c.parse().ok()).unwrap_or(0);
    let mut close = false;
    loop {
        line.clear();
        if r.read_line(&mut line).await.unwrap() == 0 || line == "\r\n" {
            break;
        }
        close |= line.to_ascii_lowercase().starts_with("connection: close");
    }
    (status, close)
}

const BODY_HEAD: &[u8] =
    b"POST /v2/models/digits-mlp/infer HTTP/1.1\r\nHost: 127.0.0.1\r\nContent-Type: application/json\r\nContent-Length: 200\r\n\r\n";

/// A body that stalls after its first bytes, and one that trickles a byte
/// every 100 ms (it would take 20 s), are both answered 408 once the body
/// timeout (1 s) passes, and their connections closed; other clients are
/// served meanwhile.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn a_stalled_or_trickling_body_gets_408_after_the_body_timeout() {
    let (_dir, (addr, stop, handle)) = connection_server(|o| ServerOptions {
        body_timeout: Some(Duration::from_secs(1)),
        ..o
    })
    .await;
    let mut stalled = TcpStream::connect(&addr).await.unwrap();
    stalled.write_all(BODY_HEAD).await.unwrap();
    stalled.write_all(b"{\"inputs\": [").await.unwrap();
    let (mut trickle, mut drip) = TcpStream::connect(&addr).await.unwrap().into_split();
    drip.write_all(BODY_HEAD).await.unwrap();
    let t = Instant::now();
    let dripping = tokio::spawn(async move {
        for _ in 0..200 {
            if drip.write_all(b" ").await.is_err() {
                break;
            }
            tokio::time::sleep(Duration::from_millis(100)).await;
        }
    });
    let mut c = Conn::connect(&addr).await.unwrap();
    assert_eq!(
        c.request("GET", "/v2/health/ready", &[], b"").await.unwrap().status,
        200
    );
    let (status, close) = tokio::time::timeout(Duration::from_secs(10), response_head(&mut stalled))
        .await
        .expect("a stalled body is answered");
    let took = t.elapsed();
    assert_eq!((status, close), (408, true));
    assert!(
        took >= Duration::from_millis(900),
        "answered after {took:?}, before the timeout"
    );
    assert!(closed_within(&mut stalled, Duration::from_secs(5)).await.is_some());
    // The trickling client, though it keeps sending, is answered too, long
    // before its 20 s.
    let (status, close) = tokio::time::timeout(Duration::from_secs(10), response_head(&mut trickle))
        .await
        .expect("a trickling body is answered");
    assert_eq!((status, close), (408, true));
    assert!(t.elapsed() < Duration::from_secs(5), "answered after {:?}", t.elapsed());
    dripping.abort();
    let _ = stop.send(());
    handle.await.unwrap().unwrap();
}

/// A connection that sent half a header and one that sent nothing do not
/// hold the shutdown: it ends at once, not after the header timeout or the
/// grace period (both 30 s here).
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn shutdown_is_prompt_with_unfinished_connections_open() {
    let (_dir, (addr, stop, handle)) = connection_server(|o| ServerOptions {
        header_timeout: Some(Duration::from_secs(30)),
        shutdown_grace: Duration::from_secs(30),
        ..o
    })
    .await;
    let mut half = TcpStream::connect(&addr).await.unwrap();
    half.write_all(HALF_HEADER).await.unwrap();
    let mut silent = TcpStream::connect(&addr).await.unwrap();
    tokio::time::sleep(Duration::from_millis(100)).await;
    let t = Instant::now();
    let _ = stop.send(());
    tokio::time::timeout(Duration::from_secs(5), handle)
        .await
        .expect("the shutdown is not held by unfinished connections")
        .unwrap()
        .unwrap();
    println!("  shutdown took {:?}", t.elapsed());
    for s in [&mut half, &mut silent] {
        assert!(closed_within(s, Duration::from_secs(2)).await.is_some());
    }
}

/// With `max_connections` open, another client waits (it is not refused)
/// and is served once a connection closes.
#[tokio::test(flavor = "multi_thread", worker_threads = 2)]
async fn connections_over_the_cap_wait_for_a_free_slot() {
    let (_dir, (addr, stop, handle)) = connection_server(|o| ServerOptions {
        max_connections: 2,
        ..o
    })
    .await;
    // `start_with`'s readiness probe closed its connection; let the slot free.
    tokio::time::sleep(Duration::from_millis(100)).await;
    let first = Conn::connect(&addr).await.unwrap();
    let mut second = Conn::connect(&addr).await.unwrap();
    assert_eq!(
        second.request("GET", "/v2/health/live", &[], b"").await.unwrap().status,
        200
    );
    let waiting = {
        let addr = addr.clone();
        tokio::spawn(async move {
            let mut third = Conn::connect(&addr).await.unwrap();
            let r = third.request("GET", "/v2/health/live", &[], b"").await.unwrap();
            (r.status, Instant::now())
        })
    };
    tokio::time::sleep(Duration::from_millis(500)).await;
    assert!(
        !waiting.is_finished(),
        "a third connection was served while two were open"
    );
    let freed = Instant::now();
    drop(first);
    let (status, served) = tokio::time::timeout(Duration::from_secs(5), waiting)
        .await
        .expect("the waiting client is served once a slot frees")
        .unwrap();
    assert_eq!(status, 200);
    assert!(served > freed);
    drop(second);
    let _ = stop.send(());
    handle.await.unwrap().unwrap();
}
