//! Anthropic's Messages API, `POST /v1/messages`, for the `anthropic` SDK and
//! Claude Code, over the shared proxy path.
//!
//! Nodes whose server speaks the Messages API ([`speaks_messages`]) get the request
//! as the client sent it; the others get it translated to chat completions
//! (`translate`), and their answer is translated back (`stream` for streams).
//! Tokens come from the Messages usage (`input_tokens` / `output_tokens`), or from
//! the translated node's usage. Errors on this route are in Anthropic's shape. The
//! client's key may come in `x-api-key`, as the SDK sends it.

pub mod count;
mod stream;
pub mod translate;

use std::net::SocketAddr;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::Response;
use axum::routing::post;
use axum::Router;
use common::protocol::RequestType;

pub use stream::ChatToMessages;

use crate::nodes::NodeKind;
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/messages", post(messages))
        .route("/v1/messages/count_tokens", post(count::count_tokens))
}

/// Whether a node of this kind answers `POST /v1/messages` itself: llama.cpp's
/// `llama-server` and vLLM do. The others (Ollama's older releases, LM Studio,
/// generic servers) get chat completions.
pub fn speaks_messages(kind: NodeKind) -> bool {
    matches!(kind, NodeKind::LlamaCpp | NodeKind::Vllm)
}

/// Forwards a Messages request (plain or streamed) to a node serving the model.
#[utoipa::path(post, path = "/v1/messages", tag = "inference",
    request_body(content = Object, description = "An Anthropic Messages request"),
    responses((status = 200, description = "A message, JSON or SSE events"),
        (status = 400, description = "Malformed JSON or missing model (Anthropic's error shape)"),
        (status = 404, description = "No node serves the model")))]
pub async fn messages(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    super::proxy(st, RequestType::Messages, peer, headers, body).await
}
