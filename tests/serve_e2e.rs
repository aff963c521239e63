//! End to end: the `wginfer serve` binary on a loopback port, driven by the
//! real Python clients (tritonclient[http] and kserve's InferenceRESTClient,
//! see tests/e2e/clients.py), then stopped with SIGTERM.
//!
//! The clients live in a virtual environment: `WGINFER_E2E_PYTHON` names its
//! python, else `target/serve-e2e-venv/bin/python` is used (.ci/run makes it).
//! Without one the test prints a visible `SKIPPED` line with the reason and
//! passes, unless `WGINFER_REQUIRE_E2E=1`, when it fails.

mod common;

use std::io::{BufRead, BufReader, Read, Write};
use std::net::TcpStream;
use std::path::PathBuf;
use std::process::{Child, Command, Stdio};
use std::sync::mpsc;
use std::time::{Duration, Instant};

/// Kills the server if the test fails before stopping it.
struct Server(Child);

impl Drop for Server {
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
    if !py.exists() {
        return Err(format!(
            "no Python with the serving clients at {} (set WGINFER_E2E_PYTHON, or make the venv as .ci/run does)",
            py.display()
        ));
    }
    let out = Command::new(&py)
        .args(["-c", "import numpy, tritonclient.http, kserve"])
        .output()
        .map_err(|e| format!("cannot run {}: {e}", py.display()))?;
    if !out.status.success() {
        return Err(format!(
            "{} cannot import numpy, tritonclient.http and kserve: {}",
            py.display(),
            String::from_utf8_lossy(&out.stderr).lines().last().unwrap_or_default()
        ));
    }
    Ok(py)
}

/// One HTTP/1.1 GET on a fresh connection: the status code.
fn http_get_status(addr: &str, path: &str) -> Option<u16> {
    let mut s = TcpStream::connect(addr).ok()?;
    s.set_read_timeout(Some(Duration::from_secs(5))).ok()?;
    write!(s, "GET {path} HTTP/1.1\r\nHost: {addr}\r\nConnection: close\r\n\r\n").ok()?;
    let mut resp = String::new();
    s.read_to_string(&mut resp).ok()?;
    resp.split_whitespace().nth(1)?.parse().ok()
}

/// Waits for a child with a deadline; kills it when the deadline passes.
fn wait_with_deadline(child: &mut Child, limit: Duration) -> Option<std::process::ExitStatus> {
    let start = Instant::now();
    while start.elapsed() < limit {
        if let Ok(Some(status)) = child.try_wait() {
            return Some(status);
        }
        std::thread::sleep(Duration::from_millis(50));
    }
    let _ = child.kill();
    None
}

#[test]
fn python_clients_against_the_server() {
    let py = match python() {
        Ok(p) => p,
        Err(reason) => {
            common::skip_or_fail("WGINFER_REQUIRE_E2E", &reason);
            return;
        }
    };

    // No --model-repository: from the checkout it serves the shipped models/.
    let mut child = Command::new(env!("CARGO_BIN_EXE_wginfer"))
        .current_dir(common::root(""))
        .args(["serve", "--http-address", "127.0.0.1", "--http-port", "0"])
        .env("RUST_LOG", "info")
        .stdout(Stdio::null())
        .stderr(Stdio::piped())
        .spawn()
        .expect("start wginfer serve");
    let stderr = child.stderr.take().expect("stderr is piped");
    let server = Server(child);
    let (tx, rx) = mpsc::channel();
    std::thread::spawn(move || {
        for line in BufReader::new(stderr).lines().map_while(Result::ok) {
            eprintln!("[server] {line}");
            if let Some(rest) = line.split("http://").nth(1) {
                let addr = rest.split_whitespace().next().unwrap_or_default().to_string();
                let _ = tx.send(addr);
            }
        }
    });
    let addr = rx
        .recv_timeout(Duration::from_secs(60))
        .expect("the server prints its address");
    assert!(addr.starts_with("127.0.0.1:"), "{addr}");

    let start = Instant::now();
    while http_get_status(&addr, "/v2/health/ready") != Some(200) {
        assert!(
            start.elapsed() < Duration::from_secs(60),
            "the server did not become ready"
        );
        std::thread::sleep(Duration::from_millis(100));
    }

    let mut clients = Command::new(&py)
        .arg(common::root("tests/e2e/clients.py"))
        .arg(&addr)
        .arg(common::root("models/digits-mlp"))
        .spawn()
        .expect("run the Python clients");
    let status = wait_with_deadline(&mut clients, Duration::from_secs(300)).expect("the clients finish in 5 minutes");
    assert!(status.success(), "the Python clients failed: {status}");

    // SIGTERM: readiness goes, in-flight requests finish, the process exits 0.
    let mut server = server;
    let pid = server.0.id().to_string();
    let killed = Command::new("kill").args(["-TERM", &pid]).status().expect("run kill");
    assert!(killed.success());
    let status = wait_with_deadline(&mut server.0, Duration::from_secs(30)).expect("the server stops within 30 s");
    assert!(status.success(), "the server exited with {status}");
}

/// The KServe runtime in deploy/ probes the routes the server has, mounts
/// the repository where KServe puts it, and passes flags the CLI accepts.
#[test]
fn deploy_files_match_the_server() {
    let runtime = std::fs::read_to_string(common::root("deploy/servingruntime.yaml")).unwrap();
    for needle in [
        "kind: ServingRuntime",
        "path: /v2/health/ready",
        "path: /v2/health/live",
        "- v2",
        "--model-repository=/mnt/models",
    ] {
        assert!(runtime.contains(needle), "servingruntime.yaml lacks `{needle}`");
    }
    let isvc = std::fs::read_to_string(common::root("deploy/inferenceservice.yaml")).unwrap();
    assert!(isvc.contains("kind: InferenceService") && isvc.contains("runtime: wginfer"));
    // The container's flags parse: with a missing repository the command
    // gets as far as complaining about it.
    let args: Vec<String> = runtime
        .lines()
        .map(str::trim)
        .filter_map(|l| l.strip_prefix("- "))
        .filter(|a| *a == "serve" || a.starts_with("--"))
        .map(|a| a.replace("/mnt/models", "/nonexistent/wginfer-models"))
        .collect();
    assert!(args.len() >= 4, "{args:?}");
    let out = Command::new(env!("CARGO_BIN_EXE_wginfer"))
        .args(&args)
        .output()
        .unwrap();
    let err = String::from_utf8_lossy(&out.stderr);
    assert!(!out.status.success());
    assert!(
        err.contains("/nonexistent/wginfer-models") && err.contains("not a directory"),
        "{err}"
    );
}
