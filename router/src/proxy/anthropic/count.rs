//! `POST /v1/messages/count_tokens`: the input tokens of a Messages request, as the
//! `anthropic` SDK's `messages.count_tokens` asks, without running it.
//!
//! The count is the router's own estimate (the BPE tokenizer over the system prompt
//! and the messages' text), the same one it records for a Messages request whose node
//! reports no usage; a node's own tokenizer may count a few tokens differently. Like
//! an inference request it needs a valid key under `--client-auth required`, honours
//! the key's model list and answers 404 for a model no node serves, all in
//! Anthropic's error shape; it reaches no node, counts against no limit and leaves no
//! record.

use axum::body::Body;
use axum::extract::State;
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::Json;
use serde_json::{json, Value};

use super::super::protocol::Protocol;
use super::super::{client_key, read_body, ProxyError};
use crate::balancer::{NoNode, Wanted};
use crate::state::AppState;
use crate::token;

/// Counts the input tokens of a Messages request.
#[utoipa::path(post, path = "/v1/messages/count_tokens", tag = "inference",
    request_body(content = Object, description = "A Messages request (model, system, messages)"),
    responses((status = 200, description = "`{\"input_tokens\": n}`, the router's estimate"),
        (status = 400, description = "Malformed JSON, missing model or messages (Anthropic's error shape)"),
        (status = 404, description = "No node serves the model")))]
pub async fn count_tokens(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    match count(&st, &headers, body).await {
        Ok(n) => Json(json!({ "input_tokens": n })).into_response(),
        Err(e) => e.into_response_for(Protocol::Anthropic),
    }
}

async fn count(st: &AppState, headers: &HeaderMap, body: Body) -> Result<u64, ProxyError> {
    let key = client_key::authenticate(st, headers)?;
    let body = read_body(body, st.proxy.max_body_bytes).await?;
    let request: Value = serde_json::from_slice(&body).map_err(|e| ProxyError::InvalidJson(e.to_string()))?;
    let model = request
        .get("model")
        .and_then(Value::as_str)
        .ok_or(ProxyError::MissingModel)?;
    if !request.get("messages").is_some_and(Value::is_array) {
        return Err(ProxyError::InvalidJson("'messages' must be an array".into()));
    }
    if key.as_ref().is_some_and(|k| !k.allows(model)) {
        return Err(ProxyError::ModelNotAllowed(model.into()));
    }
    let wanted = Wanted {
        model,
        kind: None,
        session: None,
    };
    if let Err(NoNode::UnknownModel) = st.balancer.candidate(wanted) {
        return Err(ProxyError::UnknownModel(model.into()));
    }
    Ok(token::prompt_text(&request).estimate().await)
}
