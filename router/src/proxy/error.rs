//! Errors of the inference API, with their HTTP status and OpenAI error type.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};

use crate::error::ErrorBody;
use crate::keys::KeyRefusal;

#[derive(Debug, Clone, thiserror::Error)]
pub enum ProxyError {
    #[error("request body is larger than the limit of {0} bytes")]
    BodyTooLarge(usize),
    #[error("could not read the request body: {0}")]
    BodyRead(String),
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
    #[error("every node serving '{0}' is busy and the queue is full; retry later")]
    QueueFull(String),
    #[error("every node serving '{model}' stayed busy for the {waited_secs} s this request waited; retry later")]
    QueueTimeout { model: String, waited_secs: u64 },
    #[error("{0}")]
    InvalidApiKey(&'static str),
    #[error("this API key may not use the model '{0}'")]
    ModelNotAllowed(String),
    #[error("rate limit reached for {what}: limit {limit}; retry in {retry_after} s")]
    RateLimited {
        what: &'static str,
        limit: u64,
        retry_after: u64,
    },
    #[error("the {what} token budget of this API key ({budget} tokens) is used up; it renews in {retry_after} s")]
    QuotaExceeded {
        what: &'static str,
        budget: u64,
        retry_after: u64,
    },
}

impl From<KeyRefusal> for ProxyError {
    fn from(r: KeyRefusal) -> Self {
        match r {
            KeyRefusal::InvalidKey(why) => ProxyError::InvalidApiKey(why),
            KeyRefusal::ModelNotAllowed(m) => ProxyError::ModelNotAllowed(m),
            KeyRefusal::RateLimited {
                what,
                limit,
                retry_after,
            } => ProxyError::RateLimited {
                what,
                limit,
                retry_after,
            },
            KeyRefusal::QuotaExceeded {
                what,
                budget,
                retry_after,
            } => ProxyError::QuotaExceeded {
                what,
                budget,
                retry_after,
            },
        }
    }
}

impl ProxyError {
    pub fn status(&self) -> StatusCode {
        match self {
            ProxyError::BodyTooLarge(_) => StatusCode::PAYLOAD_TOO_LARGE,
            ProxyError::BodyRead(_) | ProxyError::InvalidJson(_) | ProxyError::MissingModel => StatusCode::BAD_REQUEST,
            ProxyError::UnknownModel(_) => StatusCode::NOT_FOUND,
            ProxyError::NoNodeAvailable(_)
            | ProxyError::BacklogFull(_)
            | ProxyError::QueueFull(_)
            | ProxyError::QueueTimeout { .. } => StatusCode::SERVICE_UNAVAILABLE,
            ProxyError::AllNodesFailed { .. } | ProxyError::Upstream(_) => StatusCode::BAD_GATEWAY,
            ProxyError::UpstreamTimeout(_) => StatusCode::GATEWAY_TIMEOUT,
            ProxyError::InvalidApiKey(_) => StatusCode::UNAUTHORIZED,
            ProxyError::ModelNotAllowed(_) => StatusCode::FORBIDDEN,
            ProxyError::RateLimited { .. } | ProxyError::QuotaExceeded { .. } => StatusCode::TOO_MANY_REQUESTS,
        }
    }

    /// Seconds a client should wait before retrying, when the router knows.
    fn retry_after(&self) -> Option<u64> {
        match self {
            ProxyError::RateLimited { retry_after, .. } | ProxyError::QuotaExceeded { retry_after, .. } => {
                Some(*retry_after)
            }
            // Slots free as requests finish: a second is a fair guess.
            ProxyError::QueueFull(_) | ProxyError::QueueTimeout { .. } => Some(1),
            _ => None,
        }
    }

    /// OpenAI's `type` of the error.
    fn kind(&self) -> &'static str {
        match self {
            ProxyError::RateLimited { what, .. } if what.starts_with("tokens") => "tokens",
            ProxyError::RateLimited { .. } => "requests",
            ProxyError::QuotaExceeded { .. } => "insufficient_quota",
            _ if self.status().is_server_error() => "server_error",
            _ => "invalid_request_error",
        }
    }

    fn code(&self) -> &'static str {
        match self {
            ProxyError::BodyTooLarge(_) => "request_too_large",
            ProxyError::BodyRead(_) | ProxyError::InvalidJson(_) => "invalid_json",
            ProxyError::MissingModel => "missing_model",
            ProxyError::UnknownModel(_) => "model_not_found",
            ProxyError::NoNodeAvailable(_) => "no_node_available",
            ProxyError::AllNodesFailed { .. } | ProxyError::Upstream(_) => "upstream_error",
            ProxyError::UpstreamTimeout(_) => "upstream_timeout",
            ProxyError::BacklogFull(_) => "store_unavailable",
            ProxyError::QueueFull(_) => "queue_full",
            ProxyError::QueueTimeout { .. } => "queue_timeout",
            ProxyError::InvalidApiKey(_) => "invalid_api_key",
            ProxyError::ModelNotAllowed(_) => "model_not_allowed",
            ProxyError::RateLimited { .. } => "rate_limit_exceeded",
            ProxyError::QuotaExceeded { .. } => "insufficient_quota",
        }
    }
}

impl IntoResponse for ProxyError {
    fn into_response(self) -> Response {
        let mut response = ErrorBody {
            status: self.status(),
            message: self.to_string(),
            kind: self.kind(),
            code: self.code(),
        }
        .into_response();
        if let Some(secs) = self.retry_after() {
            response.headers_mut().insert(http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}
