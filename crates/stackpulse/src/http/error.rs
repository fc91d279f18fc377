//! [`AppError`]: the one shape an HTTP refusal leaves in, `{"message": …}` with a
//! status (and a machine-readable `code` where a client may branch on it).

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;

/// An HTTP error response: a status and one sentence a person can act on.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct AppError {
    pub status: StatusCode,
    pub message: String,
    /// A stable identifier of the cause (`access_denied`, `throttled`…), when the
    /// message alone is not enough for a program.
    pub code: Option<&'static str>,
}

impl AppError {
    pub fn new(status: StatusCode, message: impl Into<String>) -> AppError {
        AppError {
            status,
            message: message.into(),
            code: None,
        }
    }

    pub fn with_code(mut self, code: &'static str) -> AppError {
        self.code = Some(code);
        self
    }
}

impl IntoResponse for AppError {
    fn into_response(self) -> Response {
        let body = match self.code {
            Some(code) => serde_json::json!({ "message": self.message, "code": code }),
            None => serde_json::json!({ "message": self.message }),
        };
        (self.status, Json(body)).into_response()
    }
}

impl From<(StatusCode, String)> for AppError {
    fn from((status, message): (StatusCode, String)) -> AppError {
        AppError::new(status, message)
    }
}
