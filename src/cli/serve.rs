//! `wginfer serve [--model-repository DIR] [--http-port 8000]`

use std::net::SocketAddr;
use std::path::PathBuf;
use std::time::Duration;

use anyhow::{bail, Context, Result};
use wginfer::serve::{Server, ServerOptions, DEFAULT_MAX_BODY_BYTES, DEFAULT_MAX_CONNECTIONS};
use wginfer::Device;

/// Arguments of `serve`.
#[derive(clap::Args, Debug)]
pub struct Args {
    /// The model repository: <DIR>/<model>/<version>/model.safetensors, or
    /// <DIR>/<model>/model.safetensors as version 1; optional
    /// <DIR>/<model>/config.json.
    #[arg(long, env = "WGINFER_MODEL_REPOSITORY", default_value = "models")]
    model_repository: PathBuf,
    /// The port for HTTP (0: any free port; the address is printed).
    #[arg(long, default_value_t = 8000)]
    http_port: u16,
    /// The address to listen on (0.0.0.0: every interface, as in a container).
    #[arg(long, default_value = "0.0.0.0")]
    http_address: String,
    /// Require this key on every route but /v2/health/* (as
    /// `Authorization: Bearer KEY` or `X-API-Key: KEY`).
    #[arg(long, env = "WGINFER_API_KEY", hide_env_values = true)]
    api_key: Option<String>,
    /// Request bodies larger than this get 413.
    #[arg(long, default_value_t = DEFAULT_MAX_BODY_BYTES)]
    max_body_bytes: usize,
    /// Look for new, changed and removed models every N seconds (0: never;
    /// use the repository load/unload API).
    #[arg(long, default_value_t = 0)]
    repository_poll_secs: u64,
    /// How long a request may wait for its result unless the model config or
    /// the request's `timeout` parameter says otherwise (0: no limit).
    #[arg(long, default_value_t = 0)]
    request_timeout_ms: u64,
    /// On SIGTERM or ctrl-c, how long to wait for in-flight requests.
    #[arg(long, default_value_t = 30)]
    shutdown_grace_secs: u64,
    /// true (the default, as in Triton): /v2/health/ready answers 200 only
    /// while every model the server was asked to serve is ready, so a load
    /// balancer or Kubernetes sends no traffic to a server missing a model.
    /// false: ready once the server is up and can serve; failed models show
    /// in their own /v2/models/{m}/ready and the repository index.
    #[arg(long, default_value_t = true, action = clap::ArgAction::Set, value_name = "BOOL")]
    strict_readiness: bool,
    /// Close a connection that has not sent its complete request headers
    /// within N seconds, and an idle keep-alive connection after N seconds
    /// (0: never).
    #[arg(long, default_value_t = 30)]
    header_timeout_secs: u64,
    /// Answer 408 and close the connection when a request's body has not
    /// arrived in full N seconds after its headers, stalled or trickling
    /// (0: never).
    #[arg(long, default_value_t = 30)]
    body_timeout_secs: u64,
    /// At most N open connections; further clients wait until one closes
    /// (they are not refused). Keep it below the open-file limit (ulimit
    /// -n). 0: no limit.
    #[arg(long, default_value_t = DEFAULT_MAX_CONNECTIONS)]
    max_connections: usize,
}

pub fn run(args: &Args, device: Device) -> Result<()> {
    if !args.model_repository.is_dir() {
        bail!(
            "the model repository `{}` is not a directory; pass --model-repository DIR (run from the wginfer checkout to serve its models/)",
            args.model_repository.display()
        );
    }
    let addr: SocketAddr = format!("{}:{}", args.http_address, args.http_port)
        .parse()
        .or_else(|_| format!("[{}]:{}", args.http_address, args.http_port).parse())
        .with_context(|| format!("--http-address `{}` is not an IP address", args.http_address))?;
    let options = ServerOptions {
        model_repository: args.model_repository.clone(),
        device,
        api_key: args.api_key.clone().filter(|k| !k.is_empty()),
        max_body_bytes: args.max_body_bytes,
        poll_interval: (args.repository_poll_secs > 0).then(|| Duration::from_secs(args.repository_poll_secs)),
        request_timeout: (args.request_timeout_ms > 0).then(|| Duration::from_millis(args.request_timeout_ms)),
        shutdown_grace: Duration::from_secs(args.shutdown_grace_secs),
        strict_readiness: args.strict_readiness,
        header_timeout: (args.header_timeout_secs > 0).then(|| Duration::from_secs(args.header_timeout_secs)),
        body_timeout: (args.body_timeout_secs > 0).then(|| Duration::from_secs(args.body_timeout_secs)),
        max_connections: args.max_connections,
    };
    let runtime = tokio::runtime::Builder::new_multi_thread()
        .enable_all()
        .build()
        .context("starting the async runtime")?;
    runtime.block_on(async move {
        let listener = tokio::net::TcpListener::bind(addr)
            .await
            .with_context(|| format!("cannot listen on {addr}"))?;
        let local = listener.local_addr().context("reading the bound address")?;
        eprintln!(
            "wginfer serving {} on http://{local} (KServe v2 REST; ready at /v2/health/ready once the models are warm)",
            args.model_repository.display()
        );
        Server::new(options)
            .serve(listener, wginfer::serve::shutdown_signal())
            .await
            .context("serving HTTP")?;
        eprintln!("wginfer stopped");
        Ok(())
    })
}
