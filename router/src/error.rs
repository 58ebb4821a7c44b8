//! The one JSON error shape of every HTTP answer of the router, OpenAI's:
//! `{"error": {"message", "type", "code"}}`. Each layer has its own error type
//! (`ProxyError`, `ApiError`); both turn into a response here.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

/// An error as the client sees it.
#[derive(Debug, Clone)]
pub struct ErrorBody {
    pub status: StatusCode,
    pub message: String,
    /// OpenAI's `type`: `invalid_request_error`, `server_error`, …
    pub kind: &'static str,
    /// A stable machine-readable code.
    pub code: &'static str,
}

impl IntoResponse for ErrorBody {
    fn into_response(self) -> Response {
        let body = json!({"error": {"message": self.message, "type": self.kind, "code": self.code}});
        (self.status, Json(body)).into_response()
    }
}
