//! Errors of the inference API, with their HTTP status, in the shape of the client's
//! protocol: OpenAI's `{"error": {"message", "type", "code"}}`, Ollama's
//! `{"error": "…"}` or Anthropic's `{"type": "error", "error": {"type", "message"}}`.

use axum::http::StatusCode;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::json;

use super::protocol::Protocol;
use crate::error::ErrorBody;
use crate::keys::KeyRefusal;

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
            ProxyError::BodyTimeout => StatusCode::REQUEST_TIMEOUT,
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
            ProxyError::BodyTimeout => "request_timeout",
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
        self.into_response_for(Protocol::OpenAi)
    }
}

impl ProxyError {
    /// The error in the shape of `protocol`, with `Retry-After` when known.
    pub fn into_response_for(self, protocol: Protocol) -> Response {
        let status = self.status();
        let mut response = match protocol {
            Protocol::OpenAi => ErrorBody {
                status,
                message: self.to_string(),
                kind: self.kind(),
                code: self.code(),
            }
            .into_response(),
            Protocol::Ollama => (status, Json(json!({"error": self.to_string()}))).into_response(),
            Protocol::Anthropic => anthropic_error(status, &self.to_string()),
        };
        if let Some(secs) = self.retry_after() {
            response.headers_mut().insert(http::header::RETRY_AFTER, secs.into());
        }
        response
    }
}

/// Anthropic's error shape; the `type` follows the status as Anthropic's API does.
pub fn anthropic_error(status: StatusCode, message: &str) -> Response {
    let kind = match status.as_u16() {
        400 | 422 => "invalid_request_error",
        401 => "authentication_error",
        403 => "permission_error",
        404 => "not_found_error",
        413 => "request_too_large",
        429 => "rate_limit_error",
        503 | 529 => "overloaded_error",
        _ if status.is_client_error() => "invalid_request_error",
        _ => "api_error",
    };
    let body = json!({"type": "error", "error": {"type": kind, "message": message}});
    (status, Json(body)).into_response()
}

#[cfg(test)]
mod tests {
    use http_body_util::BodyExt;
    use serde_json::Value;

    use super::*;

    async fn shape(err: ProxyError, protocol: Protocol) -> (u16, Option<String>, Value) {
        let r = err.into_response_for(protocol);
        let status = r.status().as_u16();
        let retry = r
            .headers()
            .get(http::header::RETRY_AFTER)
            .map(|v| v.to_str().unwrap().to_string());
        let body = r.into_body().collect().await.unwrap().to_bytes();
        (status, retry, serde_json::from_slice(&body).unwrap())
    }

    #[tokio::test]
    async fn queue_refusals_take_the_shape_of_each_protocol() {
        let full = || ProxyError::QueueFull("m".into());
        let (status, retry, body) = shape(full(), Protocol::OpenAi).await;
        assert_eq!((status, retry.as_deref()), (503, Some("1")));
        assert_eq!(body["error"]["code"], "queue_full");
        assert_eq!(body["error"]["type"], "server_error");
        let (status, retry, body) = shape(full(), Protocol::Ollama).await;
        assert_eq!((status, retry.as_deref()), (503, Some("1")));
        assert!(body["error"].as_str().unwrap().contains("queue is full"), "{body}");
        let timeout = ProxyError::QueueTimeout {
            model: "m".into(),
            waited_secs: 30,
        };
        let (status, retry, body) = shape(timeout, Protocol::Anthropic).await;
        assert_eq!((status, retry.as_deref()), (503, Some("1")));
        assert_eq!(body["type"], "error");
        assert_eq!(body["error"]["type"], "overloaded_error");
        assert!(body["error"]["message"].as_str().unwrap().contains("30 s"), "{body}");
    }
}
