//! The server's error type: every failure is a status code and a message
//! that says what to fix, sent as `{"error": "..."}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use thiserror::Error;

/// An error answered to an HTTP client.
///
/// Input errors (4xx) carry a message meant for the client. Internal errors
/// (500) are logged with their details; the body only says to look at the
/// server log.
#[derive(Debug, Error)]
pub enum ServeError {
    /// 400: the request is malformed (JSON, names, shapes, datatypes, sizes).
    #[error("{0}")]
    BadRequest(String),
    /// 401: the API key is missing or wrong.
    #[error("missing or wrong API key: send `Authorization: Bearer <key>` or `X-API-Key: <key>`")]
    Unauthorized,
    /// 404: unknown model, version or route.
    #[error("{0}")]
    NotFound(String),
    /// 405: the route exists but not for this method.
    #[error("{0}")]
    MethodNotAllowed(String),
    /// 413: the request body is over the server's limit.
    #[error("the request body is over the limit of {limit} bytes; send a smaller batch or raise --max-body-bytes")]
    PayloadTooLarge {
        /// The limit in bytes.
        limit: usize,
    },
    /// 408: the request body did not arrive within the body timeout.
    #[error("the request body did not arrive within {secs} s; send it at once or raise --body-timeout-secs")]
    RequestTimeout {
        /// The timeout in seconds.
        secs: f64,
    },
    /// 503: not ready, queue full, timed out, shutting down.
    #[error("{0}")]
    Unavailable(String),
    /// 500: a failure inside the server; details go to the log.
    #[error("internal error: {0}")]
    Internal(String),
}

impl ServeError {
    /// The HTTP status of this error.
    pub fn status(&self) -> StatusCode {
        match self {
            ServeError::BadRequest(_) => StatusCode::BAD_REQUEST,
            ServeError::Unauthorized => StatusCode::UNAUTHORIZED,
            ServeError::NotFound(_) => StatusCode::NOT_FOUND,
            ServeError::MethodNotAllowed(_) => StatusCode::METHOD_NOT_ALLOWED,
            ServeError::PayloadTooLarge { .. } => StatusCode::PAYLOAD_TOO_LARGE,
            ServeError::RequestTimeout { .. } => StatusCode::REQUEST_TIMEOUT,
            ServeError::Unavailable(_) => StatusCode::SERVICE_UNAVAILABLE,
            ServeError::Internal(_) => StatusCode::INTERNAL_SERVER_ERROR,
        }
    }

    /// A shorthand for [`ServeError::BadRequest`].
    pub fn bad(msg: impl Into<String>) -> Self {
        ServeError::BadRequest(msg.into())
    }
}

/// A JSON body `{"error": msg}` with a status.
pub(crate) fn error_body(status: StatusCode, msg: &str) -> Response {
    let body = serde_json::json!({ "error": msg }).to_string();
    let mut resp = (status, body).into_response();
    resp.headers_mut()
        .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
    resp
}

impl IntoResponse for ServeError {
    fn into_response(self) -> Response {
        let status = self.status();
        let msg = match &self {
            ServeError::Internal(detail) => {
                log::error!("internal error: {detail}");
                "internal server error; the details are in the server log".to_string()
            }
            other => other.to_string(),
        };
        let mut resp = error_body(status, &msg);
        if matches!(self, ServeError::Unauthorized) {
            resp.headers_mut()
                .insert(header::WWW_AUTHENTICATE, HeaderValue::from_static("Bearer"));
        }
        if matches!(self, ServeError::RequestTimeout { .. }) {
            // The rest of the body may still come: the connection cannot
            // carry another request.
            resp.headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        resp
    }
}
