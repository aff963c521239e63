//! The HTTP/1.1 accept loop: one task per connection (hyper), a timeout on
//! reading request headers, a cap on open connections, and a graceful
//! shutdown that finishes the requests in flight and closes everything
//! else at once.
//!
//! - **Header timeout**: a connection that does not finish sending its
//!   request headers within the timeout is closed. The same clock runs while
//!   a keep-alive connection waits for its next request, so idle
//!   connections close after it too.
//! - **Body timeout** (not here: in the routes' body reader, which answers
//!   408): a request body must arrive in full within its own timeout.
//! - **Connection cap**: with `max_connections` open, the server stops
//!   accepting; further clients wait in the operating system's listen queue
//!   until a connection closes (they are not refused).
//! - **Shutdown**: no new connections are accepted; a request being handled
//!   (its headers complete) finishes and its response is sent; a connection
//!   with no request in flight — idle, or still sending headers — is closed
//!   without waiting. After the grace period the rest are dropped.

use std::convert::Infallible;
use std::future::Future;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use axum::body::Body;
use axum::http::{Request, Response};
use axum::Router;
use http_body_util::BodyExt;
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use hyper_util::service::TowerToHyperService;
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::JoinSet;

/// How connections are limited.
#[derive(Clone, Copy, Debug)]
pub(super) struct Limits {
    /// Close a connection whose request headers take longer (`None`: never).
    pub header_timeout: Option<Duration>,
    /// At most this many open connections (0: no limit).
    pub max_connections: usize,
    /// How long shutdown waits for requests in flight.
    pub grace: Duration,
}

/// How long a connection with no request in flight may stay open once the
/// shutdown began: long enough to flush a response just finished.
const IDLE_CLOSE: Duration = Duration::from_millis(100);

/// Serves `router` on `listener` until `shutdown` completes, then drains
/// as the module documentation says.
pub(super) async fn serve(
    listener: TcpListener,
    router: Router,
    limits: Limits,
    shutdown: impl Future<Output = ()> + Send + 'static,
) -> std::io::Result<()> {
    let (stop_tx, stop_rx) = watch::channel(false);
    let cap = (limits.max_connections > 0).then(|| Arc::new(Semaphore::new(limits.max_connections)));
    let mut conns = JoinSet::new();
    let mut shutdown = pin!(shutdown);
    loop {
        let permit = match &cap {
            Some(cap) => tokio::select! {
                p = cap.clone().acquire_owned() => p.ok(),
                _ = &mut shutdown => break,
            },
            None => None,
        };
        let stream = tokio::select! {
            r = listener.accept() => match r {
                Ok((stream, _)) => stream,
                Err(e) => {
                    accept_error(e).await;
                    continue;
                }
            },
            _ = &mut shutdown => break,
        };
        while conns.try_join_next().is_some() {}
        let conn = connection(stream, router.clone(), limits.header_timeout, stop_rx.clone(), permit);
        conns.spawn(conn);
    }
    drop(listener);
    let _ = stop_tx.send(true);
    let drained = tokio::time::timeout(limits.grace, async { while conns.join_next().await.is_some() {} }).await;
    if drained.is_err() {
        log::warn!(
            "in-flight requests did not finish within {} s; stopping anyway",
            limits.grace.as_secs()
        );
        conns.abort_all();
    }
    Ok(())
}

/// An accept error: the client's own (reset before accepted) is skipped;
/// anything else (out of file descriptors) is logged and retried after a
/// second, as the condition usually passes when connections close.
async fn accept_error(e: std::io::Error) {
    use std::io::ErrorKind::{ConnectionAborted, ConnectionRefused, ConnectionReset};
    if matches!(e.kind(), ConnectionAborted | ConnectionRefused | ConnectionReset) {
        return;
    }
    log::error!(
        "accepting a connection failed: {e}; retrying in 1 s (lower --max-connections below the open-file limit)"
    );
    tokio::time::sleep(Duration::from_secs(1)).await;
}

/// Completes once the shutdown began (or the server is gone).
async fn stopped(mut stop: watch::Receiver<bool>) {
    while !*stop.borrow_and_update() {
        if stop.changed().await.is_err() {
            return;
        }
    }
}

type Conn = http1::Connection<TokioIo<TcpStream>, Counted>;

/// Serves one connection; `_permit` holds its place under the cap.
async fn connection(
    stream: TcpStream,
    router: Router,
    header_timeout: Option<Duration>,
    stop: watch::Receiver<bool>,
    _permit: Option<OwnedSemaphorePermit>,
) {
    let _ = stream.set_nodelay(true);
    let active = Arc::new(AtomicUsize::new(0));
    let service = Counted {
        inner: TowerToHyperService::new(router),
        active: active.clone(),
    };
    let mut builder = http1::Builder::new();
    builder.timer(TokioTimer::new()).header_read_timeout(header_timeout);
    let mut conn = pin!(builder.serve_connection(TokioIo::new(stream), service));
    tokio::select! {
        r = conn.as_mut() => return closed(r),
        _ = stopped(stop) => {}
    }
    conn.as_mut().graceful_shutdown();
    drain(conn, &active).await;
}

fn closed(r: Result<(), hyper::Error>) {
    if let Err(e) = r {
        log::debug!("connection closed: {e}");
    }
}

/// After a graceful shutdown: waits while a request is in flight; closes
/// the connection once none has been for [`IDLE_CLOSE`].
async fn drain(mut conn: Pin<&mut Conn>, active: &AtomicUsize) {
    let mut idle = Duration::ZERO;
    let tick = Duration::from_millis(20);
    while idle < IDLE_CLOSE {
        tokio::select! {
            r = conn.as_mut() => return closed(r),
            _ = tokio::time::sleep(tick) => {}
        }
        idle = if active.load(Ordering::SeqCst) == 0 {
            idle + tick
        } else {
            Duration::ZERO
        };
    }
    log::debug!("closing a connection with no request in flight at shutdown");
}

/// The router as a hyper service that counts its requests in flight: from
/// complete headers until the response body is sent (or the request is
/// dropped).
#[derive(Clone)]
struct Counted {
    inner: TowerToHyperService<Router>,
    active: Arc<AtomicUsize>,
}

/// One request in flight while alive.
struct InFlight(Arc<AtomicUsize>);

impl InFlight {
    fn new(active: &Arc<AtomicUsize>) -> Self {
        active.fetch_add(1, Ordering::SeqCst);
        Self(active.clone())
    }
}

impl Drop for InFlight {
    fn drop(&mut self) {
        self.0.fetch_sub(1, Ordering::SeqCst);
    }
}

type ResponseFuture = Pin<Box<dyn Future<Output = Result<Response<Body>, Infallible>> + Send>>;

impl hyper::service::Service<Request<Incoming>> for Counted {
    type Response = Response<Body>;
    type Error = Infallible;
    type Future = ResponseFuture;

    fn call(&self, req: Request<Incoming>) -> Self::Future {
        let guard = InFlight::new(&self.active);
        let fut = self.inner.call(req);
        Box::pin(async move {
            let resp = fut.await?;
            Ok(resp.map(|body| {
                Body::new(body.map_frame(move |frame| {
                    let _in_flight = &guard;
                    frame
                }))
            }))
        })
    }
}
