//! Errors of the inference API, with their HTTP status and OpenAI error type.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::ErrorBody;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    #[error("request body is larger than the limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("could not read the request body: {0}")]
    BodyRead(String),
    #[error("the request body did not arrive in time")]
    BodyTimeout,
    #[error("request body is not valid JSON: {0}")]
    InvalidJson(String),
    #[error("request body must be a JSON object with a string field 'model'")]
    MissingModel,
    #[error("the model '{0}' is not served by any node")]
    UnknownModel(String),
    #[error("no node is available for model '{0}'")]
    NoNodeAvailable(String),
    #[error("all nodes failed for model '{model}': {reason}")]
    AllNodesFailed { model: String, reason: String },
    #[error("node error: {0}")]
    Upstream(String),
    #[error("node timed out: {0}")]
    UpstreamTimeout(String),
    #[error("the router cannot record more requests: {0} records wait for the store; retry later")]
    BacklogFull(u64),
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
            ProxyError::BodyRead(_) | ProxyError::InvalidJson(_) | ProxyError::MissingModel => StatusCode::BAD_REQUEST,
            ProxyError::UnknownModel(_) => StatusCode::NOT_FOUND,
            ProxyError::NoNodeAvailable(_) | ProxyError::BacklogFull(_) => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::AllNodesFailed { .. } | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ProxyError::BodyTooLarge(_) => "request_too_large",
            ProxyError::BodyTimeout => "request_timeout",
            ProxyError::BodyRead(_) | ProxyError::InvalidJson(_) => "invalid_json",
            ProxyError::MissingModel => "missing_model",
            ProxyError::UnknownModel(_) => "model_not_found",
            ProxyError::NoNodeAvailable(_) => "no_node_available",
            ProxyError::AllNodesFailed { .. } | ProxyError::Upstream(_) => "upstream_error",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::BacklogFull(_) => "store_unavailable",
        }
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let status = self.status();
        let kind = if status.is_server_error() {
            "server_error"
        } else {
            "invalid_request_error"
        };
        ErrorBody {
            status,
            message: self.to_string(),
            kind,
            code: self.code(),
        }
        .into_response()
    }
}
