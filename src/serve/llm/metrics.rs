//! The metrics of a generative model version (`wginfer_` prefix, labels
//! `model` and `version`):
//!
//! - `time_to_first_token_seconds` (histogram): from arrival to the first
//!   generated token, queueing and prompt processing included.
//! - `time_per_output_token_seconds` (histogram): between consecutive
//!   tokens of one sequence.
//! - `prompt_tokens_total`, `generation_tokens_total` (counters).
//! - `num_requests_running`, `num_requests_waiting` (gauges): sequences in
//!   the running batch and in the queue.
//! - `kv_cache_usage_ratio` (gauge): the share of the KV-cache budget
//!   reserved by running sequences.
//! - `prefix_cache_hit_tokens_total` (counter): prompt tokens whose keys and
//!   values were copied from the prefix cache instead of computed.
//! - `prefix_cache_usage_ratio` (gauge): the share of the KV-cache budget
//!   held by the prefix cache (ended sequences' caches, dropped whenever a
//!   new sequence needs the room).

use std::fmt::Write;
use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::Mutex;
use std::time::Duration;

/// Upper bounds (seconds) of the latency histograms' buckets.
const BUCKETS: [f64; 14] = [
    0.005, 0.01, 0.025, 0.05, 0.075, 0.1, 0.25, 0.5, 0.75, 1.0, 2.5, 5.0, 10.0, 30.0,
];

/// A Prometheus histogram over [`BUCKETS`].
#[derive(Debug, Default)]
struct Histogram {
    inner: Mutex<HistogramData>,
}

#[derive(Clone, Debug, Default)]
struct HistogramData {
    counts: [u64; BUCKETS.len()],
    count: u64,
    sum: f64,
}

impl Histogram {
    fn observe(&self, d: Duration) {
        let s = d.as_secs_f64();
        let mut h = self.inner.lock().unwrap_or_else(|p| p.into_inner());
        for (c, b) in h.counts.iter_mut().zip(BUCKETS) {
            if s <= b {
                *c += 1;
            }
        }
        h.count += 1;
        h.sum += s;
    }

    fn data(&self) -> HistogramData {
        self.inner.lock().unwrap_or_else(|p| p.into_inner()).clone()
    }
}

/// The counters of one generative model version.
#[derive(Debug, Default)]
pub struct LlmMetrics {
    ttft: Histogram,
    tpot: Histogram,
    prompt_tokens: AtomicU64,
    generation_tokens: AtomicU64,
    running: AtomicU64,
    waiting: AtomicU64,
    /// KV-cache use in millionths.
    kv_usage_ppm: AtomicU64,
    prefix_hit_tokens: AtomicU64,
    /// Prefix-cache use in millionths.
    prefix_usage_ppm: AtomicU64,
}

impl LlmMetrics {
    /// A first token `d` after the request arrived.
    pub fn first_token(&self, d: Duration) {
        self.ttft.observe(d);
    }

    /// A token `d` after the previous one of its sequence.
    pub fn next_token(&self, d: Duration) {
        self.tpot.observe(d);
    }

    /// Prompt tokens processed.
    pub fn prompt_tokens(&self, n: usize) {
        self.prompt_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// Tokens generated.
    pub fn generated(&self, n: usize) {
        self.generation_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The scheduler's state after a step.
    pub fn state(&self, running: usize, waiting: usize, kv_usage: f64) {
        self.running.store(running as u64, Ordering::Relaxed);
        self.waiting.store(waiting as u64, Ordering::Relaxed);
        self.kv_usage_ppm
            .store((kv_usage.clamp(0.0, 1.0) * 1e6).round() as u64, Ordering::Relaxed);
    }

    /// Prompt tokens taken from the prefix cache.
    pub fn prefix_cache_hit(&self, n: usize) {
        self.prefix_hit_tokens.fetch_add(n as u64, Ordering::Relaxed);
    }

    /// The share of the KV budget the prefix cache holds.
    pub fn prefix_cache_usage(&self, ratio: f64) {
        self.prefix_usage_ppm
            .store((ratio.clamp(0.0, 1.0) * 1e6).round() as u64, Ordering::Relaxed);
    }

    /// Generated tokens so far.
    pub fn generation_tokens(&self) -> u64 {
        self.generation_tokens.load(Ordering::Relaxed)
    }
}

/// Appends the Prometheus text of every generative model's metrics;
/// `models` holds `(model, version, metrics)`.
pub(crate) fn render(out: &mut String, models: &[(String, String, std::sync::Arc<LlmMetrics>)]) {
    if models.is_empty() {
        return;
    }
    let label = |m: &str, v: &str| format!("model=\"{}\",version=\"{}\"", escape(m), escape(v));
    type Pick = fn(&LlmMetrics) -> &Histogram;
    let hists: [(&str, &str, Pick); 2] = [
        (
            "time_to_first_token_seconds",
            "Time from a request's arrival to its first generated token",
            |m| &m.ttft,
        ),
        (
            "time_per_output_token_seconds",
            "Time between consecutive generated tokens of a sequence",
            |m| &m.tpot,
        ),
    ];
    for (name, help, get) in hists {
        let _ = writeln!(out, "# HELP wginfer_{name} {help}");
        let _ = writeln!(out, "# TYPE wginfer_{name} histogram");
        for (model, version, m) in models {
            let l = label(model, version);
            let h = get(m).data();
            for (b, c) in BUCKETS.iter().zip(h.counts) {
                let _ = writeln!(out, "wginfer_{name}_bucket{{{l},le=\"{b}\"}} {c}");
            }
            let _ = writeln!(out, "wginfer_{name}_bucket{{{l},le=\"+Inf\"}} {}", h.count);
            let _ = writeln!(out, "wginfer_{name}_sum{{{l}}} {}", h.sum);
            let _ = writeln!(out, "wginfer_{name}_count{{{l}}} {}", h.count);
        }
    }
    type Get = fn(&LlmMetrics) -> String;
    let scalars: [(&str, &str, &str, Get); 7] = [
        ("prompt_tokens_total", "counter", "Prompt tokens processed", |m| {
            m.prompt_tokens.load(Ordering::Relaxed).to_string()
        }),
        ("generation_tokens_total", "counter", "Tokens generated", |m| {
            m.generation_tokens.load(Ordering::Relaxed).to_string()
        }),
        ("num_requests_running", "gauge", "Sequences in the running batch", |m| {
            m.running.load(Ordering::Relaxed).to_string()
        }),
        (
            "num_requests_waiting",
            "gauge",
            "Requests queued for a place in the batch",
            |m| m.waiting.load(Ordering::Relaxed).to_string(),
        ),
        (
            "kv_cache_usage_ratio",
            "gauge",
            "Share of the KV-cache budget reserved by running sequences",
            |m| (m.kv_usage_ppm.load(Ordering::Relaxed) as f64 / 1e6).to_string(),
        ),
        (
            "prefix_cache_hit_tokens_total",
            "counter",
            "Prompt tokens whose keys and values came from the prefix cache",
            |m| m.prefix_hit_tokens.load(Ordering::Relaxed).to_string(),
        ),
        (
            "prefix_cache_usage_ratio",
            "gauge",
            "Share of the KV-cache budget held by ended sequences' caches kept for reuse",
            |m| (m.prefix_usage_ppm.load(Ordering::Relaxed) as f64 / 1e6).to_string(),
        ),
    ];
    for (name, kind, help, get) in scalars {
        let _ = writeln!(out, "# HELP wginfer_{name} {help}");
        let _ = writeln!(out, "# TYPE wginfer_{name} {kind}");
        for (model, version, m) in models {
            let _ = writeln!(out, "wginfer_{name}{{{}}} {}", label(model, version), get(m));
        }
    }
}

fn escape(s: &str) -> String {
    s.replace('\\', "\\\\").replace('"', "\\\"").replace('\n', "\\n")
}
