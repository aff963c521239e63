//! The model repository: a directory of models, each a directory of numbered
//! versions.
//!
//! ```text
//! <repo>/<model>/config.json                 optional (see [`super::config`])
//! <repo>/<model>/<version>/model.safetensors version: a positive integer
//! <repo>/<model>/model.safetensors           no numbered versions: version 1
//! ```
//!
//! A version directory that also holds a `tokenizer.json` is a text
//! embedding model (a Hugging Face sentence-transformers directory:
//! `config.json`, `model.safetensors`, `tokenizer.json`; see
//! [`crate::embed`]). It serves texts: a KServe `BYTES` input, and
//! `POST /v1/embeddings` (see [`super::embeddings`]). Keep such a model in a
//! numbered version directory (`<repo>/<model>/1/`), so its Hugging Face
//! `config.json` is not read as the model's serving config.
//!
//! A version whose file is `model.gguf` (a llama.cpp GGUF decoder), or a
//! Hugging Face decoder directory (`config.json` naming a `...ForCausalLM`
//! architecture, `model.safetensors` or its sharded index,
//! `tokenizer.json`), is a generative language model: it is served by an [`LlmEngine`] with
//! continuous batching on the OpenAI routes and Triton's generate extension
//! (see [`super::llm`]), not on `/infer`.
//!
//! A version is ready only after its warm-up run. Loading a model again
//! (explicitly or by a repository poll) loads new and changed versions
//! beside the ones serving; traffic moves to them in one swap once they are
//! all ready, and requests already holding an old version finish on it. A
//! failed load leaves what was serving untouched.

use std::collections::BTreeMap;
use std::path::{Path, PathBuf};
use std::sync::{Arc, RwLock};
use std::time::{Duration, Instant, SystemTime};

use serde::Serialize;

use super::batcher::{Merge, Scheduler};
use super::config::{ModelConfig, CONFIG_FILE};
use super::error::ServeError;
use super::isolate::{isolated, Health};
use super::llm::LlmEngine;
use super::metrics::{Metrics, ModelMetrics};
use crate::embed::Embedder;
use crate::graph::Graph;
use crate::model::bert::POSITION_IDS;
use crate::model::Model;
use crate::session::{Device, Session};
use crate::tensor::{Dim, Tensor};

/// File names a version's model may have, in the order they are looked for.
pub const MODEL_FILES: [&str; 4] = [
    "model.safetensors",
    "model.onnx",
    "model.gguf",
    "model.safetensors.index.json",
];

/// A model's state, as the repository index reports it.
#[derive(Clone, Copy, Debug, PartialEq, Eq, Serialize)]
#[serde(rename_all = "UPPERCASE")]
pub enum ModelState {
    /// Being loaded (no version ready yet).
    Loading,
    /// At least one version serves.
    Ready,
    /// Not serving: unloaded, or its load failed.
    Unavailable,
}

/// What identifies the files a version was loaded from: size and
/// modification time of the model file and of the model's config.
#[derive(Clone, Debug, PartialEq, Eq)]
struct Stamp {
    model: (u64, Option<SystemTime>),
    config: Option<(u64, Option<SystemTime>)>,
}

fn file_stamp(path: &Path) -> Option<(u64, Option<SystemTime>)> {
    let m = std::fs::metadata(path).ok()?;
    Some((m.len(), m.modified().ok()))
}

/// One loaded, warmed-up model version.
pub struct Instance {
    /// Model name.
    pub name: String,
    /// Version number.
    pub version: u64,
    /// The effective configuration.
    pub config: Arc<ModelConfig>,
    /// The compiled model.
    pub session: Arc<Session>,
    /// The file it was loaded from.
    pub path: PathBuf,
    /// Its metrics.
    pub metrics: Arc<ModelMetrics>,
    /// For a text embedding model: its tokenizer (the model itself runs on
    /// `session` through the scheduler, like any other request).
    pub embedder: Option<Arc<Embedder>>,
    stamp: Stamp,
    scheduler: Scheduler,
    health: Arc<Health>,
}

impl std::fmt::Debug for Instance {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Instance")
            .field("name", &self.name)
            .field("version", &self.version)
            .field("path", &self.path)
            .finish_non_exhaustive()
    }
}

impl Instance {
    /// Why this version stopped serving (its run panicked), if it did.
    pub fn failure(&self) -> Option<String> {
        self.health.failure()
    }

    /// Checks named inputs against the model and puts them in graph order.
    /// Returns them and the batch size (first dimension; 1 for a model
    /// whose inputs have no batch axis).
    pub fn prepare(&self, inputs: Vec<(String, Tensor)>) -> Result<(Vec<Tensor>, usize), ServeError> {
        let graph = self.session.graph();
        let expected = || {
            graph
                .inputs()
                .iter()
                .map(|i| {
                    format!(
                        "{} ({} {})",
                        i.name,
                        super::protocol::datatype_name(i.ty.dtype),
                        shape_str(&i.ty.shape)
                    )
                })
                .collect::<Vec<_>>()
                .join(", ")
        };
        let mut given: BTreeMap<String, Tensor> = BTreeMap::new();
        for (name, t) in inputs {
            if !graph.inputs().iter().any(|i| i.name == name) {
                return Err(ServeError::bad(format!(
                    "unknown input `{name}` for model `{}`; its inputs are: {}",
                    self.name,
                    expected()
                )));
            }
            given.insert(name, t);
        }
        let mut symbols: BTreeMap<&str, usize> = BTreeMap::new();
        let mut ordered = Vec::with_capacity(graph.inputs().len());
        for info in graph.inputs() {
            let t = given.remove(&info.name).ok_or_else(|| {
                ServeError::bad(format!(
                    "missing input `{}` for model `{}`; its inputs are: {}",
                    info.name,
                    self.name,
                    expected()
                ))
            })?;
            if t.dtype() != info.ty.dtype {
                return Err(ServeError::bad(format!(
                    "input `{}` has datatype {} but model `{}` takes {}",
                    info.name,
                    super::protocol::datatype_name(t.dtype()),
                    self.name,
                    super::protocol::datatype_name(info.ty.dtype)
                )));
            }
            let bad_shape = || {
                ServeError::bad(format!(
                    "input `{}` has shape {:?} but model `{}` takes {} (-1: any size)",
                    info.name,
                    t.shape(),
                    self.name,
                    shape_str(&info.ty.shape)
                ))
            };
            if t.rank() != info.ty.shape.len() {
                return Err(bad_shape());
            }
            for (d, &got) in info.ty.shape.iter().zip(t.shape()) {
                match d {
                    Dim::Known(n) if *n != got => return Err(bad_shape()),
                    Dim::Sym(s) => {
                        let want = *symbols.entry(s.as_str()).or_insert(got);
                        if want != got {
                            return Err(ServeError::bad(format!(
                                "input `{}` has size {got} for dimension `{s}`, but another input has {want}; they must agree",
                                info.name
                            )));
                        }
                    }
                    _ => {}
                }
            }
            ordered.push(t);
        }
        let rows = if self.config.max_batch_size > 0 {
            let rows = ordered.first().and_then(|t| t.shape().first().copied()).unwrap_or(1);
            if rows > self.config.max_batch_size {
                return Err(ServeError::bad(format!(
                    "the batch has {rows} rows but model `{}` takes at most max_batch_size = {}; split the request",
                    self.name, self.config.max_batch_size
                )));
            }
            rows
        } else {
            ordered.first().and_then(|t| t.shape().first().copied()).unwrap_or(1)
        };
        Ok((ordered, rows))
    }

    /// Runs a prepared request through the scheduler.
    pub async fn infer(
        &self,
        inputs: Vec<Tensor>,
        rows: usize,
        timeout: Option<Duration>,
    ) -> Result<Vec<Tensor>, ServeError> {
        self.scheduler.infer(inputs, rows, timeout).await
    }
}

/// One served version: a graph model or a generative one.
#[derive(Clone, Debug)]
enum Served {
    Graph(Arc<Instance>),
    Llm(Arc<LlmVersion>),
}

/// A loaded generative model version.
#[derive(Debug)]
struct LlmVersion {
    engine: Arc<LlmEngine>,
    config: Arc<ModelConfig>,
    stamp: Stamp,
}

impl Served {
    fn failure(&self) -> Option<String> {
        match self {
            Served::Graph(i) => i.failure(),
            Served::Llm(l) => l.engine.failure(),
        }
    }

    fn unchanged(&self, stamp: &Stamp, config: &ModelConfig) -> bool {
        let (s, c) = match self {
            Served::Graph(i) => (&i.stamp, &*i.config),
            Served::Llm(l) => (&l.stamp, &*l.config),
        };
        s == stamp && c == config && self.failure().is_none()
    }
}

/// The requested version of a model entry (`None` or empty: the newest).
fn pick_version(name: &str, e: &Entry, version: Option<&str>) -> Result<Served, ServeError> {
    match version {
        None | Some("") => e
            .versions
            .values()
            .next_back()
            .cloned()
            .ok_or_else(|| ServeError::Unavailable(format!("model `{name}` has no version ready"))),
        Some(v) => v
            .parse::<u64>()
            .ok()
            .and_then(|n| e.versions.get(&n).cloned())
            .ok_or_else(|| {
                let served: Vec<String> = e.versions.keys().map(u64::to_string).collect();
                ServeError::NotFound(format!(
                    "model `{name}` has no version `{v}` serving; versions serving: {}",
                    served.join(", ")
                ))
            }),
    }
}

/// A graph model's version: a generative one is refused with the routes
/// that serve it.
fn graph_version(name: &str, served: Served) -> Result<Arc<Instance>, ServeError> {
    match served {
        Served::Graph(i) => Ok(i),
        Served::Llm(_) => Err(ServeError::bad(format!(
            "model `{name}` is a generative language model: use POST /v1/chat/completions, /v1/completions or /v2/models/{name}/generate"
        ))),
    }
}

/// A shape with symbolic dimensions as -1, as the protocol writes it.
pub fn protocol_shape(shape: &[Dim]) -> Vec<i64> {
    shape
        .iter()
        .map(|d| d.known().and_then(|n| i64::try_from(n).ok()).unwrap_or(-1))
        .collect()
}

fn shape_str(shape: &[Dim]) -> String {
    format!("{:?}", protocol_shape(shape))
}

#[derive(Default)]
struct Entry {
    state: Option<ModelState>,
    reason: String,
    config: Option<Arc<ModelConfig>>,
    versions: BTreeMap<u64, Served>,
    unloaded: bool,
    /// What the last poll saw on disk, so an unchanged broken model is not
    /// reloaded (and logged) on every poll.
    seen: Option<String>,
}

/// One row of the repository index.
#[derive(Clone, Debug, Serialize)]
pub struct IndexEntry {
    /// Model name.
    pub name: String,
    /// Version, when one is loaded.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub version: Option<String>,
    /// State, once a load was tried.
    #[serde(skip_serializing_if = "Option::is_none")]
    pub state: Option<ModelState>,
    /// Why the model is not ready.
    #[serde(skip_serializing_if = "String::is_empty")]
    pub reason: String,
}

/// The models a server knows, and their loaded versions.
pub struct Repository {
    root: PathBuf,
    device: Device,
    timeout: Option<Duration>,
    metrics: Arc<Metrics>,
    models: RwLock<BTreeMap<String, Entry>>,
    load_lock: tokio::sync::Mutex<()>,
}

impl std::fmt::Debug for Repository {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Repository")
            .field("root", &self.root)
            .finish_non_exhaustive()
    }
}

fn version_dirs(dir: &Path) -> Vec<(u64, PathBuf)> {
    let mut out = Vec::new();
    if let Ok(rd) = std::fs::read_dir(dir) {
        for e in rd.flatten() {
            let name = e.file_name();
            let Some(v) = name.to_str().and_then(|s| s.parse::<u64>().ok()) else {
                continue;
            };
            if v == 0 || !e.path().is_dir() {
                continue;
            }
            if let Some(f) = MODEL_FILES.iter().map(|f| e.path().join(f)).find(|p| p.is_file()) {
                out.push((v, f));
            }
        }
    }
    if out.is_empty() {
        if let Some(f) = MODEL_FILES.iter().map(|f| dir.join(f)).find(|p| p.is_file()) {
            out.push((1, f));
        }
    }
    out.sort();
    out
}

fn valid_name(name: &str) -> bool {
    !name.is_empty() && !name.starts_with('.') && !name.contains(['/', '\\']) && name != ".."
}

impl Repository {
    /// A repository at `root`; nothing is loaded yet.
    pub fn new(root: PathBuf, device: Device, timeout: Option<Duration>, metrics: Arc<Metrics>) -> Self {
        Self {
            root,
            device,
            timeout,
            metrics,
            models: RwLock::new(BTreeMap::new()),
            load_lock: tokio::sync::Mutex::new(()),
        }
    }

    /// The repository directory.
    pub fn root(&self) -> &Path {
        &self.root
    }

    fn read(&self) -> std::sync::RwLockReadGuard<'_, BTreeMap<String, Entry>> {
        self.models.read().unwrap_or_else(|p| p.into_inner())
    }

    fn write(&self) -> std::sync::RwLockWriteGuard<'_, BTreeMap<String, Entry>> {
        self.models.write().unwrap_or_else(|p| p.into_inner())
    }

    /// The model directories on disk (those holding a model file, a
    /// numbered version or a config).
    pub fn scan(&self) -> Vec<String> {
        let mut names = Vec::new();
        if let Ok(rd) = std::fs::read_dir(&self.root) {
            for e in rd.flatten() {
                let Some(name) = e.file_name().to_str().map(str::to_string) else {
                    continue;
                };
                let p = e.path();
                if valid_name(&name) && p.is_dir() && (!version_dirs(&p).is_empty() || p.join(CONFIG_FILE).is_file()) {
                    names.push(name);
                }
            }
        }
        names.sort();
        names
    }

    fn model_dir(&self, name: &str) -> Result<PathBuf, ServeError> {
        let dir = self.root.join(name);
        if !valid_name(name) || !dir.is_dir() {
            return Err(ServeError::NotFound(format!(
                "model `{name}` is not in the repository {}",
                self.root.display()
            )));
        }
        Ok(dir)
    }

    /// What is on disk for a model, as a string that changes when any file
    /// that matters changes.
    fn fingerprint(&self, name: &str) -> String {
        let dir = self.root.join(name);
        let mut s = format!("{:?}", file_stamp(&dir.join(CONFIG_FILE)));
        for (v, p) in version_dirs(&dir) {
            s.push_str(&format!("|{v}:{:?}", file_stamp(&p)));
        }
        s
    }

    /// Loads (or reloads) a model: new and changed versions load and warm
    /// up beside the serving ones, then replace them in one swap. On error
    /// what was serving keeps serving.
    pub async fn load(&self, name: &str) -> Result<(), ServeError> {
        let _guard = self.load_lock.lock().await;
        let dir = self.model_dir(name)?;
        let seen = self.fingerprint(name);
        {
            let mut models = self.write();
            let e = models.entry(name.to_string()).or_default();
            if e.versions.is_empty() {
                e.state = Some(ModelState::Loading);
                e.reason.clear();
            }
        }
        let result = self.load_versions(name, &dir).await;
        let mut models = self.write();
        let e = models.entry(name.to_string()).or_default();
        e.seen = Some(seen);
        match result {
            Ok((config, versions)) => {
                let list: Vec<String> = versions.keys().map(u64::to_string).collect();
                log::info!("model `{name}` ready: version(s) {}", list.join(", "));
                e.config = Some(config);
                e.versions = versions;
                e.state = Some(ModelState::Ready);
                e.reason.clear();
                e.unloaded = false;
                Ok(())
            }
            Err(err) => {
                log::error!("loading model `{name}` failed: {err}");
                if e.versions.is_empty() {
                    e.state = Some(ModelState::Unavailable);
                    e.reason = err.to_string();
                } else {
                    log::warn!("model `{name}` keeps serving the versions it had");
                }
                Err(err)
            }
        }
    }

    async fn load_versions(
        &self,
        name: &str,
        dir: &Path,
    ) -> Result<(Arc<ModelConfig>, BTreeMap<u64, Served>), ServeError> {
        let config = Arc::new(ModelConfig::load(dir, name, &self.device, self.timeout)?);
        let on_disk = version_dirs(dir);
        if on_disk.is_empty() {
            return Err(ServeError::bad(format!(
                "model `{name}` has no model file: put one at {}/<version>/model.safetensors",
                dir.display()
            )));
        }
        let numbers: Vec<u64> = on_disk.iter().map(|(v, _)| *v).collect();
        let wanted = config.version_policy.select(&numbers);
        if wanted.is_empty() {
            return Err(ServeError::bad(format!(
                "the version policy of model `{name}` selects none of the versions on disk ({numbers:?})"
            )));
        }
        let config_stamp = file_stamp(&dir.join(CONFIG_FILE));
        let current: BTreeMap<u64, Served> = self.read().get(name).map(|e| e.versions.clone()).unwrap_or_default();
        let mut versions = BTreeMap::new();
        for v in wanted {
            let Some((_, path)) = on_disk.iter().find(|(n, _)| *n == v) else {
                continue;
            };
            let stamp = Stamp {
                model: file_stamp(path).unwrap_or((0, None)),
                config: config_stamp,
            };
            if let Some(old) = current.get(&v) {
                if old.unchanged(&stamp, &config) {
                    versions.insert(v, old.clone());
                    continue;
                }
            }
            let served = if let Some(source) = generative_source(path) {
                Served::Llm(Arc::new(self.load_llm(name, v, source, config.clone(), stamp).await?))
            } else {
                Served::Graph(Arc::new(
                    self.load_version(name, v, path.clone(), config.clone(), stamp).await?,
                ))
            };
            versions.insert(v, served);
        }
        Ok((config, versions))
    }

    async fn load_version(
        &self,
        name: &str,
        version: u64,
        path: PathBuf,
        config: Arc<ModelConfig>,
        stamp: Stamp,
    ) -> Result<Instance, ServeError> {
        log::info!(
            "loading model `{name}` version {version} from {} on {}",
            path.display(),
            config.device
        );
        let p = path.clone();
        let cfg = config.clone();
        let what = format!("loading and warming up model `{name}` version {version}");
        let loaded = tokio::task::spawn_blocking(move || isolated(&what, || load_and_warm_up(&p, &cfg)))
            .await
            .map_err(|e| ServeError::Internal(format!("loading {}: {e}", path.display())))?
            .map_err(|e| ServeError::bad(format!("cannot load model `{name}` version {version}: {e}")))?;
        let (session, embedder) = loaded;
        let session = Arc::new(session);
        let metrics = self.metrics.model(name, &version.to_string());
        let merge = merge_rules(session.graph(), embedder.is_some());
        let health = Arc::new(Health::default());
        let scheduler = Scheduler::new(
            session.clone(),
            health.clone(),
            &config,
            format!("model `{name}` version {version}"),
            metrics.clone(),
            merge,
        );
        Ok(Instance {
            name: name.to_string(),
            version,
            config,
            session,
            path,
            metrics,
            embedder,
            stamp,
            scheduler,
            health,
        })
    }

    async fn load_llm(
        &self,
        name: &str,
        version: u64,
        path: PathBuf,
        config: Arc<ModelConfig>,
        stamp: Stamp,
    ) -> Result<LlmVersion, ServeError> {
        log::info!(
            "loading generative model `{name}` version {version} from {} on {}",
            path.display(),
            config.device
        );
        let (p, cfg) = (path.clone(), config.clone());
        let metrics = self.metrics.llm(name, &version.to_string());
        let what = format!("serving generative model `{name}` version {version}");
        let engine = tokio::task::spawn_blocking(move || LlmEngine::load(&p, &cfg, metrics, what))
            .await
            .map_err(|e| ServeError::Internal(format!("loading {}: {e}", path.display())))?
            .map_err(|e| ServeError::bad(format!("cannot load model `{name}` version {version}: {e}")))?;
        Ok(LlmVersion {
            engine: Arc::new(engine),
            config,
            stamp,
        })
    }

    /// Stops serving a model. Requests already running finish.
    pub async fn unload(&self, name: &str) -> Result<(), ServeError> {
        let _guard = self.load_lock.lock().await;
        let mut models = self.write();
        if !models.contains_key(name) {
            self.model_dir(name)?;
        }
        let e = models.entry(name.to_string()).or_default();
        e.versions.clear();
        e.state = Some(ModelState::Unavailable);
        e.reason = "unloaded".into();
        e.unloaded = true;
        log::info!("model `{name}` unloaded");
        Ok(())
    }

    /// Loads every model on disk (at start-up). Returns the names that failed.
    pub async fn load_all(&self) -> Vec<String> {
        let mut failed = Vec::new();
        for name in self.scan() {
            if self.load(&name).await.is_err() {
                failed.push(name);
            }
        }
        failed
    }

    /// One repository poll: loads models that are new or changed on disk,
    /// unloads models whose directory is gone. Models unloaded explicitly
    /// stay unloaded.
    pub async fn poll(&self) {
        let on_disk = self.scan();
        let known: Vec<(String, bool, Option<String>)> = self
            .read()
            .iter()
            .map(|(n, e)| (n.clone(), e.unloaded, e.seen.clone()))
            .collect();
        for (name, unloaded, _) in &known {
            if !on_disk.contains(name) && !unloaded {
                let _guard = self.load_lock.lock().await;
                if self.write().remove(name).is_some() {
                    log::info!("model `{name}` is gone from the repository; unloaded it");
                }
            }
        }
        for name in on_disk {
            let prev = known.iter().find(|(n, ..)| *n == name);
            if prev.is_some_and(|(_, unloaded, _)| *unloaded) {
                continue;
            }
            let seen = self.fingerprint(&name);
            if prev.and_then(|(_, _, s)| s.as_ref()) == Some(&seen) {
                continue;
            }
            let _ = self.load(&name).await;
        }
    }

    /// A serving version: the given one, or the newest.
    pub fn get(&self, name: &str, version: Option<&str>) -> Result<Arc<Instance>, ServeError> {
        let models = self.read();
        let Some(e) = models.get(name) else {
            return Err(match self.model_dir(name) {
                Err(nf) => nf,
                Ok(_) => ServeError::Unavailable(format!(
                    "model `{name}` is not loaded; load it with POST /v2/repository/models/{name}/load"
                )),
            });
        };
        if e.versions.is_empty() {
            let why = match e.state {
                Some(ModelState::Loading) => "is still loading; retry shortly".to_string(),
                _ if e.unloaded => format!("is unloaded; load it with POST /v2/repository/models/{name}/load"),
                _ => format!("is not available: {}", e.reason),
            };
            return Err(ServeError::Unavailable(format!("model `{name}` {why}")));
        }
        let inst = graph_version(name, pick_version(name, e, version)?)?;
        match inst.failure() {
            None => Ok(inst),
            Some(why) => Err(ServeError::Unavailable(format!(
                "model `{name}` version {} failed: {why}; fix the model and load it again with POST /v2/repository/models/{name}/load",
                inst.version
            ))),
        }
    }

    /// A serving version of a generative model: the given one, or the
    /// newest. 404 for an unknown model, 400 for a model that is not
    /// generative, 503 for one not ready.
    pub fn llm(&self, name: &str, version: Option<&str>) -> Result<Arc<LlmEngine>, ServeError> {
        let models = self.read();
        let e = match models.get(name) {
            Some(e) if !e.versions.is_empty() => e,
            _ => {
                drop(models);
                return self.get(name, version).and_then(|_| {
                    Err(ServeError::bad(format!(
                        "model `{name}` is not a generative language model"
                    )))
                });
            }
        };
        match pick_version(name, e, version)? {
            Served::Llm(l) => match l.engine.failure() {
                None => Ok(l.engine.clone()),
                Some(why) => Err(ServeError::Unavailable(format!(
                    "model `{name}` failed: {why}; load it again with POST /v2/repository/models/{name}/load"
                ))),
            },
            Served::Graph(_) => Err(ServeError::bad(format!(
                "model `{name}` is not a generative language model; use POST /v2/models/{name}/infer"
            ))),
        }
    }

    /// Stops every generative model admitting requests (server shutdown;
    /// see [`LlmEngine::stop`]).
    pub fn stop_generating(&self) {
        for e in self.read().values() {
            for s in e.versions.values() {
                if let Served::Llm(l) = s {
                    l.engine.stop();
                }
            }
        }
    }

    /// After [`Repository::stop_generating`]: waits up to `timeout` in all
    /// for every generative model's scheduler to end its sequences and
    /// release its model; whether all did.
    pub fn wait_generating_stopped(&self, timeout: Duration) -> bool {
        let engines: Vec<Arc<LlmEngine>> = self
            .read()
            .values()
            .flat_map(|e| e.versions.values())
            .filter_map(|s| match s {
                Served::Llm(l) => Some(l.engine.clone()),
                _ => None,
            })
            .collect();
        let until = Instant::now() + timeout;
        engines
            .iter()
            .all(|e| e.wait_stopped(until.saturating_duration_since(Instant::now())))
    }

    /// The generative models with a version serving.
    pub fn llm_names(&self) -> Vec<String> {
        self.read()
            .iter()
            .filter(|(_, e)| {
                e.versions
                    .values()
                    .any(|s| matches!(s, Served::Llm(l) if l.engine.failure().is_none()))
            })
            .map(|(n, _)| n.clone())
            .collect()
    }

    /// The versions serving of a model (ascending).
    pub fn versions(&self, name: &str) -> Vec<u64> {
        self.read()
            .get(name)
            .map(|e| e.versions.keys().copied().collect())
            .unwrap_or_default()
    }

    /// True when a model was asked for by name that is known or on disk.
    pub fn knows(&self, name: &str) -> bool {
        self.read().contains_key(name) || self.model_dir(name).is_ok()
    }

    /// The repository index: every model on disk or known, each loaded
    /// version on its own row. With `ready_only`, only ready ones.
    pub fn index(&self, ready_only: bool) -> Vec<IndexEntry> {
        let models = self.read();
        let mut names: Vec<String> = self.scan();
        for n in models.keys() {
            if !names.contains(n) {
                names.push(n.clone());
            }
        }
        names.sort();
        let mut out = Vec::new();
        for name in names {
            match models.get(&name) {
                Some(e) if !e.versions.is_empty() => {
                    for (v, inst) in &e.versions {
                        let failure = inst.failure();
                        if ready_only && failure.is_some() {
                            continue;
                        }
                        out.push(IndexEntry {
                            name: name.clone(),
                            version: Some(v.to_string()),
                            state: Some(if failure.is_some() {
                                ModelState::Unavailable
                            } else {
                                ModelState::Ready
                            }),
                            reason: failure.unwrap_or_default(),
                        });
                    }
                }
                _ if ready_only => {}
                Some(e) => out.push(IndexEntry {
                    name: name.clone(),
                    version: None,
                    state: e.state,
                    reason: e.reason.clone(),
                }),
                None => out.push(IndexEntry {
                    name: name.clone(),
                    version: None,
                    state: None,
                    reason: String::new(),
                }),
            }
        }
        out
    }

    /// True when every model that should serve does: none loading, none
    /// failed (explicitly unloaded ones do not count).
    pub fn all_ready(&self) -> Option<String> {
        for (name, e) in self.read().iter() {
            if e.unloaded {
                continue;
            }
            if let Some((v, why)) = e.versions.iter().find_map(|(v, i)| i.failure().map(|w| (v, w))) {
                return Some(format!("model `{name}` version {v} failed: {why}"));
            }
            match e.state {
                Some(ModelState::Ready) => {}
                Some(ModelState::Loading) => return Some(format!("model `{name}` is loading")),
                _ => return Some(format!("model `{name}` is not available: {}", e.reason)),
            }
        }
        None
    }

    /// Drops every loaded version (at shutdown).
    pub fn clear(&self) {
        for e in self.write().values_mut() {
            e.versions.clear();
        }
    }
}

/// Loads a version's model, compiles it and runs it once (see [`warm_up`]).
fn load_and_warm_up(p: &Path, cfg: &ModelConfig) -> Result<(Session, Option<Arc<Embedder>>), String> {
    let (model, embedder) = match embedding_dir(p) {
        Some(dir) => load_embedding_model(p, &dir)?,
        None => (Model::load(p).map_err(|e| e.to_string())?, None),
    };
    check_batchable(&model, cfg, &merge_rules(model.graph(), embedder.is_some()))?;
    let session = Session::new(&model, cfg.device.clone()).map_err(|e| format!("{}: {e}", p.display()))?;
    warm_up(&session).map_err(|e| format!("{}: the warm-up run failed: {e}", p.display()))?;
    Ok((session, embedder))
}

/// How each input of a model merges in a dynamic batch: by rows, except
/// for a text embedding model whose token inputs (`[batch, seq]`) are padded
/// to the longest request and whose `position_ids` without a batch axis are
/// shared.
fn merge_rules(g: &Graph, embedding: bool) -> Vec<Merge> {
    let batch = g.inputs().first().and_then(|i| i.ty.shape.first()).cloned();
    g.inputs()
        .iter()
        .map(|i| {
            if !embedding {
                return Merge::Rows;
            }
            let batch_first = batch
                .as_ref()
                .is_some_and(|b| matches!(b, Dim::Sym(_)) && i.ty.shape.first() == Some(b));
            if !batch_first && i.name == POSITION_IDS {
                Merge::Shared
            } else if batch_first && i.ty.rank() == 2 && matches!(i.ty.shape.get(1), Some(Dim::Sym(_))) {
                Merge::PaddedRows
            } else {
                Merge::Rows
            }
        })
        .collect()
}

/// With `max_batch_size > 0` every input and output must start with one
/// shared symbolic dimension, or batching would mix up rows (inputs shared
/// by every row excepted); outputs of a model whose inputs are padded must
/// not have the padded axis, or splitting could not undo the padding.
fn check_batchable(model: &Model, config: &ModelConfig, merge: &[Merge]) -> Result<(), String> {
    if config.max_batch_size == 0 {
        return Ok(());
    }
    let g = model.graph();
    let first = g.inputs().first().and_then(|i| i.ty.shape.first());
    let Some(Dim::Sym(sym)) = first else {
        return Err(
            "max_batch_size > 0, but the model's first input does not start with a symbolic (batch) dimension; set max_batch_size to 0"
                .into(),
        );
    };
    let batched = g
        .inputs()
        .iter()
        .zip(merge.iter().chain(std::iter::repeat(&Merge::Rows)))
        .filter(|(_, m)| **m != Merge::Shared)
        .map(|(v, _)| v);
    for v in batched.chain(g.outputs()) {
        if v.ty.shape.first() != Some(&Dim::Sym(sym.clone())) {
            return Err(format!(
                "max_batch_size > 0, but `{}` does not start with the batch dimension `{sym}`; set max_batch_size to 0",
                v.name
            ));
        }
    }
    let padded: Vec<&Dim> = g
        .inputs()
        .iter()
        .zip(merge)
        .filter(|(_, m)| **m == Merge::PaddedRows)
        .filter_map(|(v, _)| v.ty.shape.get(1))
        .collect();
    for o in g.outputs() {
        if o.ty.shape.iter().skip(1).any(|d| padded.contains(&d)) {
            return Err(format!(
                "max_batch_size > 0, but output `{}` has the padded sequence axis; set max_batch_size to 0",
                o.name
            ));
        }
    }
    Ok(())
}

/// The directory of a text embedding model: the model file's directory when
/// it holds a `tokenizer.json`.
/// Where a generative model loads from: a `.gguf` file, or the directory
/// of a Hugging Face causal language model (its `config.json` names an
/// architecture ending in `ForCausalLM`).
fn generative_source(model_file: &Path) -> Option<PathBuf> {
    if model_file.extension().is_some_and(|e| e.eq_ignore_ascii_case("gguf")) {
        return Some(model_file.to_path_buf());
    }
    let dir = model_file.parent()?;
    let text = std::fs::read_to_string(dir.join("config.json")).ok()?;
    let doc: serde_json::Value = serde_json::from_str(&text).ok()?;
    let causal = doc
        .get("architectures")?
        .as_array()?
        .iter()
        .any(|a| a.as_str().is_some_and(|a| a.ends_with("ForCausalLM")));
    causal.then(|| dir.to_path_buf())
}

fn embedding_dir(model_file: &Path) -> Option<PathBuf> {
    let dir = model_file.parent()?;
    dir.join("tokenizer.json").is_file().then(|| dir.to_path_buf())
}

/// Loads an embedding model: a wginfer model file (e.g. a quantized one)
/// when the file holds a graph, else the Hugging Face directory. The
/// embedder only tokenizes (its own session is a CPU one that shares the
/// model's weights and never runs); the instance's session runs the model.
fn load_embedding_model(file: &Path, dir: &Path) -> Result<(Model, Option<Arc<Embedder>>), String> {
    let model = match Model::load(file) {
        Ok(m) => m,
        Err(file_err) => Model::load(dir).map_err(|e| {
            format!(
                "{} is neither a wginfer model ({file_err}) nor a Hugging Face model directory ({e})",
                dir.display()
            )
        })?,
    };
    let embedder = Embedder::new(&model, &dir.join("tokenizer.json"), Device::CpuReference)
        .map_err(|e| format!("{}: {e}", dir.display()))?;
    Ok((model, Some(Arc::new(embedder))))
}

/// Runs the model once on zeros (symbolic dimensions as 1).
fn warm_up(session: &Session) -> Result<(), crate::Error> {
    let inputs: Vec<(String, Tensor)> = session
        .graph()
        .inputs()
        .iter()
        .map(|i| {
            let shape = i.ty.shape.iter().map(|d| d.known().unwrap_or(1)).collect();
            (i.name.clone(), Tensor::zeros(i.ty.dtype, shape))
        })
        .collect();
    session.run(inputs).map(|_| ())
}
