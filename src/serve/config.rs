//! The per-model configuration file, `<repo>/<model>/config.json`: Triton's
//! model configuration in its JSON form, the fields wginfer uses.
//!
//! ```json
//! {
//!   "max_batch_size": 64,
//!   "dynamic_batching": {
//!     "max_queue_delay_microseconds": 500,
//!     "default_queue_policy": {"max_queue_size": 1024, "default_timeout_microseconds": 5000000}
//!   },
//!   "version_policy": {"latest": {"num_versions": 1}},
//!   "instance_group": [{"count": 2, "kind": "KIND_CPU"}],
//!   "parameters": {"device": "cpu"}
//! }
//! ```
//!
//! Every field is optional. `max_batch_size > 0` says the model's first
//! dimension is a batch dimension (every input and output must start with
//! the same symbolic dimension) and caps the batch size of a request; with
//! `dynamic_batching` too, concurrent requests are merged up to
//! `max_batch_size` rows, waiting at most `max_queue_delay_microseconds`
//! after the first. `version_policy` is `{"latest": {"num_versions": N}}`
//! (default N = 1), `{"all": {}}` or `{"specific": {"versions": [1, 3]}}`.
//! `instance_group[].count` is how many executions of the model may run at
//! once. The device is `parameters.device` (or `KIND_GPU`/`KIND_CPU` in
//! `instance_group[].kind`); without one, the server's `--device`.

use std::path::Path;
use std::time::Duration;

use serde::{Deserialize, Serialize};
use serde_json::{Map, Value};

use super::error::ServeError;
use crate::session::Device;

/// The name of the per-model configuration file.
pub const CONFIG_FILE: &str = "config.json";

/// Which versions of a model are served.
#[derive(Clone, Debug, PartialEq, Eq, Serialize, Deserialize)]
#[serde(rename_all = "lowercase")]
pub enum VersionPolicy {
    /// The newest N versions.
    Latest {
        /// How many.
        num_versions: usize,
    },
    /// Every version on disk.
    All {},
    /// These versions.
    Specific {
        /// Version numbers.
        versions: Vec<u64>,
    },
}

impl Default for VersionPolicy {
    fn default() -> Self {
        VersionPolicy::Latest { num_versions: 1 }
    }
}

impl VersionPolicy {
    /// The versions to serve among those on disk (ascending).
    pub fn select(&self, on_disk: &[u64]) -> Vec<u64> {
        let mut v: Vec<u64> = match self {
            VersionPolicy::Latest { num_versions } => on_disk.iter().rev().take(*num_versions).copied().collect(),
            VersionPolicy::All {} => on_disk.to_vec(),
            VersionPolicy::Specific { versions } => on_disk.iter().filter(|v| versions.contains(v)).copied().collect(),
        };
        v.sort_unstable();
        v
    }
}

#[derive(Debug, Default, Deserialize)]
struct QueuePolicy {
    #[serde(default)]
    max_queue_size: Option<usize>,
    #[serde(default)]
    default_timeout_microseconds: Option<u64>,
}

#[derive(Debug, Default, Deserialize)]
struct DynamicBatchingFile {
    #[serde(default)]
    max_queue_delay_microseconds: u64,
    #[serde(default)]
    default_queue_policy: Option<QueuePolicy>,
}

#[derive(Debug, Deserialize)]
struct InstanceGroupFile {
    #[serde(default = "one")]
    count: usize,
    #[serde(default)]
    kind: Option<String>,
}

fn one() -> usize {
    1
}

/// The file as written (unknown fields are ignored, as Triton's configs
/// carry many this server does not use).
#[derive(Debug, Default, Deserialize)]
struct ConfigFile {
    #[serde(default)]
    name: Option<String>,
    #[serde(default)]
    max_batch_size: usize,
    #[serde(default)]
    dynamic_batching: Option<DynamicBatchingFile>,
    #[serde(default)]
    version_policy: Option<VersionPolicy>,
    #[serde(default)]
    instance_group: Vec<InstanceGroupFile>,
    #[serde(default)]
    parameters: Map<String, Value>,
    #[serde(default)]
    default_queue_policy: Option<QueuePolicy>,
}

/// Dynamic batching settings.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct Batching {
    /// How long the first request of a batch waits for others.
    pub max_queue_delay: Duration,
}

/// A model's effective configuration: the file, with defaults filled in.
#[derive(Clone, Debug, PartialEq, Eq)]
pub struct ModelConfig {
    /// The largest batch (0: the model is not batched by the server).
    pub max_batch_size: usize,
    /// Dynamic batching, when on.
    pub batching: Option<Batching>,
    /// The most requests waiting per version; more are rejected with 503.
    pub max_queue_size: usize,
    /// How long a request may wait for its result (`None`: no limit).
    pub timeout: Option<Duration>,
    /// Which versions are served.
    pub version_policy: VersionPolicy,
    /// Executions that may run at once.
    pub instances: usize,
    /// Where the model runs.
    pub device: Device,
    /// The file's `parameters` (model-kind settings such as a generative
    /// model's `max_num_seqs`; see [`super::llm`]).
    pub parameters: Map<String, Value>,
}

/// The default bound on waiting requests per model version.
pub const DEFAULT_MAX_QUEUE_SIZE: usize = 1024;

impl ModelConfig {
    /// The configuration of a model without a config file.
    pub fn defaults(device: Device, timeout: Option<Duration>) -> Self {
        Self {
            max_batch_size: 0,
            batching: None,
            max_queue_size: DEFAULT_MAX_QUEUE_SIZE,
            timeout,
            version_policy: VersionPolicy::default(),
            instances: 1,
            device,
            parameters: Map::new(),
        }
    }

    /// Reads `<model_dir>/config.json` if there is one. Errors name the file
    /// and say what to fix.
    pub fn load(model_dir: &Path, name: &str, device: &Device, timeout: Option<Duration>) -> Result<Self, ServeError> {
        let path = model_dir.join(CONFIG_FILE);
        let text = match std::fs::read(&path) {
            Ok(t) => t,
            Err(e) if e.kind() == std::io::ErrorKind::NotFound => {
                return Ok(Self::defaults(device.clone(), timeout));
            }
            Err(e) => return Err(ServeError::bad(format!("cannot read {}: {e}", path.display()))),
        };
        let bad = |msg: String| ServeError::bad(format!("{}: {msg}", path.display()));
        let file: ConfigFile = serde_json::from_slice(&text).map_err(|e| bad(format!("invalid model config: {e}")))?;
        if let Some(n) = &file.name {
            if n != name {
                return Err(bad(format!(
                    "`name` is \"{n}\" but the model's directory is `{name}`; they must agree (or leave `name` out)"
                )));
            }
        }
        let mut cfg = Self::defaults(device.clone(), timeout);
        cfg.max_batch_size = file.max_batch_size;
        let queue = file
            .dynamic_batching
            .as_ref()
            .and_then(|d| d.default_queue_policy.as_ref())
            .or(file.default_queue_policy.as_ref());
        if let Some(q) = queue {
            if let Some(n) = q.max_queue_size.filter(|&n| n > 0) {
                cfg.max_queue_size = n;
            }
            if let Some(us) = q.default_timeout_microseconds.filter(|&us| us > 0) {
                cfg.timeout = Some(Duration::from_micros(us));
            }
        }
        if let Some(d) = &file.dynamic_batching {
            if file.max_batch_size == 0 {
                return Err(bad(
                    "`dynamic_batching` needs `max_batch_size` > 0 (the largest batch to merge requests into)".into(),
                ));
            }
            cfg.batching = Some(Batching {
                max_queue_delay: Duration::from_micros(d.max_queue_delay_microseconds),
            });
        }
        if let Some(p) = file.version_policy {
            if p == (VersionPolicy::Latest { num_versions: 0 }) {
                return Err(bad("`version_policy.latest.num_versions` must be at least 1".into()));
            }
            cfg.version_policy = p;
        }
        if !file.instance_group.is_empty() {
            cfg.instances = file.instance_group.iter().map(|g| g.count).sum::<usize>().max(1);
            if let Some(kind) = file.instance_group.iter().find_map(|g| g.kind.as_deref()) {
                match kind {
                    "KIND_CPU" => cfg.device = Device::Cpu,
                    "KIND_GPU" => {
                        if is_cpu(device) {
                            cfg.device = "gpu".parse().map_err(bad)?;
                        }
                    }
                    "KIND_AUTO" => {}
                    other => {
                        return Err(bad(format!(
                            "instance_group kind `{other}` is not known; use KIND_CPU, KIND_GPU or KIND_AUTO"
                        )))
                    }
                }
            }
        }
        if let Some(d) = file.parameters.get("device") {
            let s = match d {
                Value::String(s) => s.clone(),
                Value::Object(o) => o
                    .get("string_value")
                    .and_then(Value::as_str)
                    .unwrap_or_default()
                    .to_string(),
                other => other.to_string(),
            };
            cfg.device = s.parse().map_err(|e: String| bad(format!("parameters.device: {e}")))?;
        }
        cfg.parameters = file.parameters;
        Ok(cfg)
    }
}

/// True for the CPU devices (`cpu`, `cpu-reference`).
pub fn is_cpu(device: &Device) -> bool {
    matches!(device.to_string().as_str(), "cpu" | "cpu-reference")
}
