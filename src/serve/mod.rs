//! The model server: the KServe v2 / Open Inference Protocol over HTTP
//! (axum on tokio), as Triton's clients and KServe's expect it.
//!
//! ```no_run
//! use wginfer::serve::{Server, ServerOptions};
//!
//! # async fn demo() -> std::io::Result<()> {
//! let server = Server::new(ServerOptions {
//!     model_repository: "models".into(),
//!     ..ServerOptions::default()
//! });
//! let listener = tokio::net::TcpListener::bind("127.0.0.1:8000").await?;
//! server.serve(listener, wginfer::serve::shutdown_signal()).await
//! # }
//! ```
//!
//! Routes (every one but `/v2/health/*` needs the API key when one is set):
//!
//! | route | what |
//! | --- | --- |
//! | `GET /v2/health/live`, `GET /v2/health/ready` | `{"live":true}` / `{"ready":true}`; 503 while not ready or shutting down |
//! | `GET /v2` | server name, version, extensions |
//! | `GET /v2/models/{m}[/versions/{v}]` | model metadata: inputs and outputs (-1: any size) |
//! | `GET .../ready`, `GET .../config` | model readiness (200 or 503); Triton-style model config |
//! | `POST .../infer` | inference: JSON or binary tensor bodies |
//! | `POST /v2/repository/index` | every model and its state |
//! | `POST /v2/repository/models/{m}/load`, `.../unload` | load (or reload) and unload |
//! | `GET /metrics` | Prometheus text (see [`metrics`]) |
//! | `POST .../generate`, `POST .../generate_stream` | Triton's generate extension for generative models: `text_input` → `text_output`, streamed as server-sent events |
//! | `POST /v1/chat/completions`, `POST /v1/completions` | OpenAI-compatible chat and text completions of generative models, streamed or not |
//! | `GET /v1/models`, `GET /v1/models/{m}` | the generative and embedding models, as OpenAI lists them |
//! | `POST /v1/embeddings` | OpenAI-compatible embeddings of a text embedding model (see [`embeddings`]) |
//!
//! The `/v1` routes answer errors in OpenAI's shape
//! (`{"error": {"message", "type", "param", "code"}}`); the others as
//! `{"error": "..."}`: 400 bad input, 401 wrong API key, 404
//! unknown model/version/route, 413 body too large, 503 not ready, queue
//! full or timed out, 500 for internal failures (details in the log).
#![forbid(unsafe_code)]

mod batcher;
pub mod config;
mod connections;
pub mod embeddings;
pub mod error;
mod isolate;
pub mod llm;
pub mod metrics;
mod openai;
pub mod protocol;
pub mod repository;
mod routes;
mod triton_generate;

use std::future::Future;
use std::path::PathBuf;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::Router;

pub use config::ModelConfig;
pub use error::ServeError;
pub use metrics::Metrics;
pub use repository::Repository;

use crate::session::Device;

/// The default request body limit: 64 MiB.
pub const DEFAULT_MAX_BODY_BYTES: usize = 64 << 20;

/// The default time a client has to send its request headers: 30 s.
pub const DEFAULT_HEADER_TIMEOUT: Duration = Duration::from_secs(30);

/// The default time a client has to send a request body once its headers
/// arrived: 30 s.
pub const DEFAULT_BODY_TIMEOUT: Duration = Duration::from_secs(30);

/// The default cap on open connections: 1000, under the common limit of
/// 1024 open files per process.
pub const DEFAULT_MAX_CONNECTIONS: usize = 1000;

/// How a server is set up.
#[derive(Clone, Debug)]
pub struct ServerOptions {
    /// The model repository directory.
    pub model_repository: PathBuf,
    /// Where models run unless their config says otherwise.
    pub device: Device,
    /// When set, every route but health needs `Authorization: Bearer <key>`
    /// or `X-API-Key: <key>`.
    pub api_key: Option<String>,
    /// Bodies larger than this get 413.
    pub max_body_bytes: usize,
    /// How often to look for new, changed or removed models (`None`: never;
    /// load and unload explicitly).
    pub poll_interval: Option<Duration>,
    /// How long a request may wait for its result unless the model config
    /// or the request says otherwise (`None`: no limit).
    pub request_timeout: Option<Duration>,
    /// How long shutdown waits for in-flight requests.
    pub shutdown_grace: Duration,
    /// Readiness (`/v2/health/ready`): with `true`, ready only while every
    /// model the server was asked to serve is ready (Triton's
    /// `--strict-readiness`); with `false`, ready once the server is up and
    /// can serve, whatever failed.
    pub strict_readiness: bool,
    /// A connection that does not send its request headers within this
    /// time is closed; an idle keep-alive connection too (`None`: never).
    pub header_timeout: Option<Duration>,
    /// A request whose body (after its headers) does not arrive in full
    /// within this time, stalled or trickling, is answered 408 and its
    /// connection closed (`None`: never).
    pub body_timeout: Option<Duration>,
    /// At most this many open connections; more clients wait until one
    /// closes (0: no limit).
    pub max_connections: usize,
}

impl Default for ServerOptions {
    fn default() -> Self {
        Self {
            model_repository: PathBuf::from("models"),
            device: Device::Cpu,
            api_key: None,
            max_body_bytes: DEFAULT_MAX_BODY_BYTES,
            poll_interval: None,
            request_timeout: None,
            shutdown_grace: Duration::from_secs(30),
            strict_readiness: true,
            header_timeout: Some(DEFAULT_HEADER_TIMEOUT),
            body_timeout: Some(DEFAULT_BODY_TIMEOUT),
            max_connections: DEFAULT_MAX_CONNECTIONS,
        }
    }
}

impl State {
    /// Why the server is not ready, or `None` when it is.
    pub(crate) fn not_ready(&self) -> Option<String> {
        if self.stopping.load(Ordering::SeqCst) {
            Some("the server is shutting down".to_string())
        } else if !self.started.load(Ordering::SeqCst) {
            Some("the models are still loading".to_string())
        } else if self.options.strict_readiness {
            self.repo.all_ready()
        } else {
            None
        }
    }
}

pub(crate) struct State {
    repo: Repository,
    metrics: Arc<Metrics>,
    options: ServerOptions,
    started: AtomicBool,
    stopping: AtomicBool,
    next_id: AtomicU64,
}

/// A model server: a repository, its metrics, and the HTTP routes.
#[derive(Clone)]
pub struct Server {
    state: Arc<State>,
}

impl std::fmt::Debug for Server {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("Server")
            .field("options", &self.state.options)
            .finish_non_exhaustive()
    }
}

impl Server {
    /// A server over a repository; no model is loaded yet (see
    /// [`Server::load_models`], or [`Server::serve`] which loads them).
    pub fn new(options: ServerOptions) -> Self {
        let metrics = Arc::new(Metrics::default());
        let repo = Repository::new(
            options.model_repository.clone(),
            options.device.clone(),
            options.request_timeout,
            metrics.clone(),
        );
        Self {
            state: Arc::new(State {
                repo,
                metrics,
                options,
                started: AtomicBool::new(false),
                stopping: AtomicBool::new(false),
                next_id: AtomicU64::new(1),
            }),
        }
    }

    /// Loads every model in the repository and warms it up; the server is
    /// ready after this. Returns the models that failed to load (each is
    /// logged; with strict readiness the server stays not ready until they
    /// are fixed and reloaded, or unloaded).
    pub async fn load_models(&self) -> Vec<String> {
        let failed = self.state.repo.load_all().await;
        self.state.started.store(true, Ordering::SeqCst);
        failed
    }

    /// The repository.
    pub fn repository(&self) -> &Repository {
        &self.state.repo
    }

    /// The metrics.
    pub fn metrics(&self) -> &Metrics {
        &self.state.metrics
    }

    /// True when the server is ready (see [`ServerOptions::strict_readiness`]).
    pub fn is_ready(&self) -> bool {
        self.state.not_ready().is_none()
    }

    /// The HTTP routes (an axum router, for in-process use or tests).
    pub fn router(&self) -> Router {
        routes::router(self.state.clone())
    }

    /// Serves on `listener` until `shutdown` completes: loads the models
    /// (liveness answers meanwhile; readiness once they are warm), polls the
    /// repository if asked, and on shutdown stops taking connections, turns
    /// readiness off and waits up to the grace period for in-flight requests.
    pub async fn serve(
        self,
        listener: tokio::net::TcpListener,
        shutdown: impl Future<Output = ()> + Send + 'static,
    ) -> std::io::Result<()> {
        let loader = self.clone();
        tokio::spawn(async move {
            let failed = loader.load_models().await;
            if failed.is_empty() {
                log::info!("all models loaded; the server is ready");
            } else {
                let ready = if loader.state.options.strict_readiness {
                    "the server is not ready (strict readiness)"
                } else {
                    "the other models serve"
                };
                log::error!("model(s) failed to load: {}; {ready}", failed.join(", "));
            }
            if let Some(every) = loader.state.options.poll_interval {
                let mut tick = tokio::time::interval(every);
                tick.tick().await;
                while !loader.state.stopping.load(Ordering::SeqCst) {
                    tick.tick().await;
                    loader.state.repo.poll().await;
                }
            }
        });
        let state = self.state.clone();
        let graceful = async move {
            shutdown.await;
            log::info!("shutting down: finishing in-flight requests");
            state.stopping.store(true, Ordering::SeqCst);
            state.repo.stop_generating();
        };
        let options = &self.state.options;
        let limits = connections::Limits {
            header_timeout: options.header_timeout,
            max_connections: options.max_connections,
            grace: options.shutdown_grace,
        };
        connections::serve(listener, self.router(), limits, graceful).await?;
        let state = self.state.clone();
        let stopped = tokio::task::spawn_blocking(move || state.repo.wait_generating_stopped(GENERATION_STOP_WAIT))
            .await
            .unwrap_or(false);
        if !stopped {
            log::warn!("a generative model's scheduler was still running at exit");
        }
        self.state.repo.clear();
        Ok(())
    }
}

/// How long a server that stopped taking requests waits for its generative
/// models' schedulers to end their last sequences and release the models.
const GENERATION_STOP_WAIT: Duration = Duration::from_secs(10);

/// Completes on ctrl-c or (on Unix) SIGTERM.
pub async fn shutdown_signal() {
    let ctrl_c = async {
        if tokio::signal::ctrl_c().await.is_err() {
            std::future::pending::<()>().await;
        }
    };
    #[cfg(unix)]
    let term = async {
        match tokio::signal::unix::signal(tokio::signal::unix::SignalKind::terminate()) {
            Ok(mut s) => {
                s.recv().await;
            }
            Err(_) => std::future::pending::<()>().await,
        }
    };
    #[cfg(not(unix))]
    let term = std::future::pending::<()>();
    tokio::select! {
        _ = ctrl_c => {}
        _ = term => {}
    }
}
