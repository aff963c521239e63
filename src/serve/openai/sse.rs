//! Server-sent events: a response body fed by a task that turns a
//! sequence's events into `data: ...\n\n` frames.
//!
//! The task owns the [`LlmStream`]; when the client goes away the body is
//! dropped, the task sees its channel close and drops the stream, which
//! cancels the sequence at the engine's next step.

use std::convert::Infallible;
use std::pin::Pin;
use std::task::{Context, Poll};

use axum::body::{Body, Bytes};
use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use hyper::body::{Body as HttpBody, Frame};
use serde_json::Value;
use tokio::sync::mpsc;

use super::llm::{LlmEvent, LlmStream};

/// Frames buffered for a slow client before the task waits for it.
const BUFFERED: usize = 64;

/// One event: `data: <json>\n\n`.
pub(crate) fn frame(v: &Value) -> Bytes {
    Bytes::from(format!("data: {v}\n\n"))
}

/// The OpenAI stream's end: `data: [DONE]\n\n`.
pub(crate) fn done() -> Bytes {
    Bytes::from_static(b"data: [DONE]\n\n")
}

/// A response body of frames received from a channel.
struct SseBody(mpsc::Receiver<Bytes>);

impl HttpBody for SseBody {
    type Data = Bytes;
    type Error = Infallible;

    fn poll_frame(self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Infallible>>> {
        self.get_mut().0.poll_recv(cx).map(|b| b.map(|b| Ok(Frame::data(b))))
    }
}

/// Streams `stream`'s events as server-sent events: `first` at once, then
/// the frames `render` makes of each event (`None`: the engine ended the
/// stream without finishing it). The stream ends after a `Done` or an
/// `Error` event.
pub(crate) fn respond<F>(mut stream: LlmStream, first: Vec<Bytes>, mut render: F) -> Response
where
    F: FnMut(Option<LlmEvent>) -> Vec<Bytes> + Send + 'static,
{
    let (tx, rx) = mpsc::channel::<Bytes>(BUFFERED.max(first.len()));
    for f in first {
        // The channel has room for all of them and its receiver is alive.
        let _ = tx.try_send(f);
    }
    tokio::spawn(async move {
        loop {
            let event = tokio::select! {
                _ = tx.closed() => return,
                e = stream.recv() => e,
            };
            let last = matches!(event, None | Some(LlmEvent::Done(_)) | Some(LlmEvent::Error(_)));
            for f in render(event) {
                if tx.send(f).await.is_err() {
                    return;
                }
            }
            if last {
                return;
            }
        }
    });
    let mut r = (StatusCode::OK, Body::new(SseBody(rx))).into_response();
    let h = r.headers_mut();
    h.insert(header::CONTENT_TYPE, HeaderValue::from_static("text/event-stream"));
    h.insert(header::CACHE_CONTROL, HeaderValue::from_static("no-cache"));
    h.insert("x-accel-buffering", HeaderValue::from_static("no"));
    r
}
