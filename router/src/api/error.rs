//! Errors of the admin API, turned into the shared JSON error shape.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::ErrorBody;
use crate::nodes::NodeError;
use crate::stats::StatsError;
use crate::store::StoreError;

#[derive(Debug, thiserror::Error)]
pub enum ApiError {
    #[error("missing or invalid admin key (send Authorization: Bearer <key>)")]
    Unauthorized,
    #[error(
        "cross-site request refused: a write made with the dashboard session must come from the dashboard's own origin"
    )]
    CrossSite,
    #[error("too many wrong admin keys from this address; try again in {0} s")]
    TooManyAttempts(u64),
    #[error("invalid parameter '{param}': {message}")]
    BadParam { param: &'static str, message: String },
    #[error("invalid JSON body: {0}")]
    BadBody(String),
    #[error("{0} not found")]
    NotFound(String),
    #[error("{0}")]
    Conflict(String),
    #[error("internal error: {0}")]
    Internal(String),
}

impl From<NodeError> for ApiError {
    fn from(e: NodeError) -> Self {
        match e {
            NodeError::InvalidUrl(m) => ApiError::BadParam {
                param: "base_url",
                message: m,
            },
            NodeError::InvalidKind(m) => ApiError::BadParam {
                param: "kind",
                message: m,
            },
            NodeError::InvalidValue { field, message } => ApiError::BadParam { param: field, message },
            NodeError::Duplicate(_) | NodeError::Declared { .. } => ApiError::Conflict(e.to_string()),
            NodeError::NotFound(id) => ApiError::NotFound(format!("node {id}")),
            NodeError::Store(s) => ApiError::Internal(s.to_string()),
        }
    }
}

impl From<StatsError> for ApiError {
    fn from(e: StatsError) -> Self {
        match e {
            StatsError::BadParam { param, message } => ApiError::BadParam { param, message },
            StatsError::Store(s) => ApiError::Internal(s.to_string()),
        }
    }
}

impl From<StoreError> for ApiError {
    fn from(e: StoreError) -> Self {
        ApiError::Internal(e.to_string())
    }
}

impl IntoResponse for ApiError {
    fn into_response(self) -> Response {
        let (status, kind, code) = match &self {
            ApiError::Unauthorized => (StatusCode::UNAUTHORIZED, "authentication_error", "invalid_admin_key"),
            ApiError::CrossSite => (StatusCode::FORBIDDEN, "invalid_request_error", "cross_site_request"),
            ApiError::TooManyAttempts(_) => (StatusCode::TOO_MANY_REQUESTS, "rate_limit_error", "too_many_attempts"),
            ApiError::BadParam { .. } => (StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_parameter"),
            ApiError::BadBody(_) => (StatusCode::BAD_REQUEST, "invalid_request_error", "invalid_json"),
            ApiError::NotFound(_) => (StatusCode::NOT_FOUND, "invalid_request_error", "not_found"),
            ApiError::Conflict(_) => (StatusCode::CONFLICT, "invalid_request_error", "conflict"),
            ApiError::Internal(_) => (StatusCode::INTERNAL_SERVER_ERROR, "server_error", "internal_error"),
        };
        if let ApiError::Internal(m) = &self {
            tracing::error!(error = %m, "admin API failed");
        }
        ErrorBody {
            status,
            message: self.to_string(),
            kind,
            code,
        }
        .into_response()
    }
}
