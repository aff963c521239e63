//! Errors in OpenAI's shape: `{"error": {"message", "type", "param", "code"}}`.

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use serde_json::{json, Value};

use crate::serve::error::ServeError;

/// An error answered on the `/v1` routes: a [`ServeError`] (its status and
/// message) with the request field at fault and a machine-readable code.
#[derive(Debug)]
pub(crate) struct OpenAiError {
    pub(crate) err: ServeError,
    pub(crate) param: Option<String>,
    pub(crate) code: Option<&'static str>,
}

impl From<ServeError> for OpenAiError {
    fn from(err: ServeError) -> Self {
        Self {
            err,
            param: None,
            code: None,
        }
    }
}

/// A 400 naming the request field at fault.
pub(crate) fn invalid(param: impl Into<String>, msg: impl Into<String>) -> OpenAiError {
    OpenAiError {
        err: ServeError::bad(msg),
        param: Some(param.into()),
        code: None,
    }
}

impl OpenAiError {
    /// The same error naming the request field at fault.
    pub(crate) fn param(mut self, param: impl Into<String>) -> Self {
        self.param = Some(param.into());
        self
    }

    /// The same error with a machine-readable code.
    pub(crate) fn code(mut self, code: &'static str) -> Self {
        self.code = Some(code);
        self
    }

    /// The `{"error": {...}}` body (internal details go to the log, not here).
    pub(crate) fn body(&self) -> Value {
        let status = self.err.status();
        let kind = match status {
            StatusCode::UNAUTHORIZED => "authentication_error",
            s if s.is_client_error() => "invalid_request_error",
            _ => "server_error",
        };
        let message = public_message(&self.err);
        json!({"error": {"message": message, "type": kind, "param": self.param, "code": self.code}})
    }
}

/// The message a client sees: an internal error's details go to the log.
pub(crate) fn public_message(err: &ServeError) -> String {
    match err {
        ServeError::Internal(detail) => {
            log::error!("internal error: {detail}");
            "internal server error; the details are in the server log".to_string()
        }
        other => other.to_string(),
    }
}

impl IntoResponse for OpenAiError {
    fn into_response(self) -> Response {
        let mut r = (self.err.status(), self.body().to_string()).into_response();
        r.headers_mut()
            .insert(header::CONTENT_TYPE, HeaderValue::from_static("application/json"));
        r
    }
}
