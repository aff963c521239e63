//! Prometheus metrics with Triton's meanings (`nv_inference_*` there,
//! `wginfer_inference_*` here), per model and version.
//!
//! - `request_success` / `request_failure{reason}`: inference requests, by
//!   outcome. Reasons: `REJECTED` (queue full, timed out, not ready),
//!   `BACKEND` (the engine failed), `OTHER` (a bad request).
//! - `inference_count`: inferences performed; a request of batch size 8
//!   counts 8.
//! - `exec_count`: model executions; one dynamic batch counts 1.
//! - `request_duration_us`, `queue_duration_us`,
//!   `compute_input_duration_us`, `compute_infer_duration_us`,
//!   `compute_output_duration_us`: cumulative microseconds.
//! - `pending_request_count` (gauge): requests waiting to execute.
//!
//! Generative models add their own (see [`super::llm::metrics`]).

use std::collections::BTreeMap;
use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};

use super::llm::metrics::LlmMetrics;

/// Why a request failed (the `reason` label).
#[derive(Clone, Copy, Debug, PartialEq, Eq)]
pub enum FailureReason {
    /// Queue full, timed out, or model not ready.
    Rejected,
    /// The engine failed.
    Backend,
    /// Anything else (a bad request).
    Other,
}

impl FailureReason {
    const ALL: [FailureReason; 3] = [FailureReason::Rejected, FailureReason::Backend, FailureReason::Other];

    fn label(self) -> &'static str {
        match self {
            FailureReason::Rejected => "REJECTED",
            FailureReason::Backend => "BACKEND",
            FailureReason::Other => "OTHER",
        }
    }
}

/// The counters of one model version.
#[derive(Debug, Default)]
pub struct ModelMetrics {
    success: AtomicU64,
    failure: [AtomicU64; 3],
    inference_count: AtomicU64,
    exec_count: AtomicU64,
    request_duration_us: AtomicU64,
    queue_duration_us: AtomicU64,
    compute_input_duration_us: AtomicU64,
    compute_infer_duration_us: AtomicU64,
    compute_output_duration_us: AtomicU64,
    pending: AtomicU64,
}

fn add(c: &AtomicU64, v: u64) {
    c.fetch_add(v, Ordering::Relaxed);
}

impl ModelMetrics {
    /// A request finished well after `duration_us`, with `batch` inferences.
    pub fn success(&self, duration_us: u64, batch: u64) {
        add(&self.success, 1);
        add(&self.request_duration_us, duration_us);
        add(&self.inference_count, batch);
    }

    /// A request failed.
    pub fn failure(&self, reason: FailureReason, duration_us: u64) {
        let i = FailureReason::ALL.iter().position(|r| *r == reason).unwrap_or(2);
        add(&self.failure[i], 1);
        add(&self.request_duration_us, duration_us);
    }

    /// One execution of the model, and its compute times.
    pub fn execution(&self, input_us: u64, infer_us: u64, output_us: u64) {
        add(&self.exec_count, 1);
        add(&self.compute_input_duration_us, input_us);
        add(&self.compute_infer_duration_us, infer_us);
        add(&self.compute_output_duration_us, output_us);
    }

    /// Time a request spent waiting before its execution started.
    pub fn queued(&self, us: u64) {
        add(&self.queue_duration_us, us);
    }

    /// A request starts waiting; the guard ends the wait when dropped.
    pub fn pending(self: &Arc<Self>) -> PendingGuard {
        add(&self.pending, 1);
        PendingGuard(self.clone())
    }

    /// Successful requests so far.
    pub fn success_count(&self) -> u64 {
        self.success.load(Ordering::Relaxed)
    }

    /// Executions so far.
    pub fn exec_count(&self) -> u64 {
        self.exec_count.load(Ordering::Relaxed)
    }

    /// Inferences so far.
    pub fn inference_count(&self) -> u64 {
        self.inference_count.load(Ordering::Relaxed)
    }
}

/// Counts a request as pending while it lives.
#[derive(Debug)]
pub struct PendingGuard(Arc<ModelMetrics>);

impl Drop for PendingGuard {
    fn drop(&mut self) {
        self.0.pending.fetch_sub(1, Ordering::Relaxed);
    }
}

/// All the server's metrics.
#[derive(Debug, Default)]
pub struct Metrics {
    models: Mutex<BTreeMap<(String, String), Arc<ModelMetrics>>>,
    llms: Mutex<BTreeMap<(String, String), Arc<LlmMetrics>>>,
}

impl Metrics {
    /// The counters of one model version (created on first use; kept across
    /// reloads so counters only grow).
    pub fn model(&self, name: &str, version: &str) -> Arc<ModelMetrics> {
        let mut map = self.models.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((name.to_string(), version.to_string())).or_default().clone()
    }

    /// The counters of one generative model version (see
    /// [`super::llm::metrics`]).
    pub fn llm(&self, name: &str, version: &str) -> Arc<LlmMetrics> {
        let mut map = self.llms.lock().unwrap_or_else(|p| p.into_inner());
        map.entry((name.to_string(), version.to_string())).or_default().clone()
    }

    /// The Prometheus text exposition (format 0.0.4).
    pub fn render(&self) -> String {
        let map = self.models.lock().unwrap_or_else(|p| p.into_inner()).clone();
        let mut out = String::new();
        type Get = fn(&ModelMetrics) -> u64;
        let counters: [(&str, &str, &str, Get); 9] = [
            (
                "inference_request_success",
                "counter",
                "Number of successful inference requests, all batch sizes",
                |m| m.success.load(Ordering::Relaxed),
            ),
            (
                "inference_count",
                "counter",
                "Number of inferences performed (a request of batch size N counts N)",
                |m| m.inference_count.load(Ordering::Relaxed),
            ),
            (
                "inference_exec_count",
                "counter",
                "Number of model executions performed (a dynamic batch counts 1)",
                |m| m.exec_count.load(Ordering::Relaxed),
            ),
            (
                "inference_request_duration_us",
                "counter",
                "Cumulative inference request duration in microseconds (queue and compute included)",
                |m| m.request_duration_us.load(Ordering::Relaxed),
            ),
            (
                "inference_queue_duration_us",
                "counter",
                "Cumulative inference queuing duration in microseconds",
                |m| m.queue_duration_us.load(Ordering::Relaxed),
            ),
            (
                "inference_compute_input_duration_us",
                "counter",
                "Cumulative compute input duration in microseconds (batching the inputs)",
                |m| m.compute_input_duration_us.load(Ordering::Relaxed),
            ),
            (
                "inference_compute_infer_duration_us",
                "counter",
                "Cumulative compute inference duration in microseconds (running the model)",
                |m| m.compute_infer_duration_us.load(Ordering::Relaxed),
            ),
            (
                "inference_compute_output_duration_us",
                "counter",
                "Cumulative compute output duration in microseconds (splitting the outputs)",
                |m| m.compute_output_duration_us.load(Ordering::Relaxed),
            ),
            (
                "inference_pending_request_count",
                "gauge",
                "Instantaneous number of pending requests awaiting execution",
                |m| m.pending.load(Ordering::Relaxed),
            ),
        ];
        for (i, (name, kind, help, get)) in counters.iter().enumerate() {
            let _ = writeln!(out, "# HELP wginfer_{name} {help}");
            let _ = writeln!(out, "# TYPE wginfer_{name} {kind}");
            for ((model, version), m) in &map {
                let _ = writeln!(
                    out,
                    "wginfer_{name}{{model=\"{}\",version=\"{}\"}} {}",
                    escape(model),
                    escape(version),
                    get(m)
                );
            }
            if i == 0 {
                let _ = writeln!(
                    out,
                    "# HELP wginfer_inference_request_failure Number of failed inference requests, all batch sizes"
                );
                let _ = writeln!(out, "# TYPE wginfer_inference_request_failure counter");
                for ((model, version), m) in &map {
                    for (j, reason) in FailureReason::ALL.iter().enumerate() {
                        let _ = writeln!(
                            out,
                            "wginfer_inference_request_failure{{model=\"{}\",reason=\"{}\",version=\"{}\"}} {}",
                            escape(model),
                            reason.label(),
                            escape(version),
                            m.failure[j].load(Ordering::Relaxed)
                        );
                    }
                }
            }
        }
        let llms: Vec<(String, String, Arc<LlmMetrics>)> = self
            .llms
            .lock()
            .unwrap_or_else(|p| p.into_inner())
            .iter()
            .map(|((m, v), x)| (m.clone(), v.clone(), x.clone()))
            .collect();
        super::llm::metrics::render(&mut out, &llms);
        out
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
