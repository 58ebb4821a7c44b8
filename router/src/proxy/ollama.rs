//! Ollama's API under `/ollama`, so that an Ollama client whose base URL is
//! `http://router:32768/ollama` works unchanged.
//!
//! Inference (`/api/chat`, `/api/generate`, `/api/embed`, `/api/embeddings`) takes
//! the shared proxy path, restricted to `ollama` nodes; their NDJSON streams pass
//! through byte for byte and tokens come from `prompt_eval_count` / `eval_count`.
//! The model routes are answered from the `ollama` nodes: `/api/tags` and `/api/ps`
//! are the union of what the online ones list, `/api/show` goes to a node serving
//! the model, `/api/version` is the version of one of them. Those are not inference
//! and leave no record. Errors are in Ollama's shape, `{"error": "…"}`.

use std::net::SocketAddr;
use std::sync::Arc;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::HeaderMap;
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use common::protocol::RequestType;
use futures_util::future::join_all;
use http_body_util::BodyExt;
use serde_json::{json, Value};

use super::{client_key, headers, Protocol, ProxyError};
use crate::balancer::{NoNode, Wanted};
use crate::keys::ClientKey;
use crate::nodes::{Node, NodeKind, NodeStatus};
use crate::state::AppState;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/ollama", get(running))
        .route("/ollama/api/chat", post(chat))
        .route("/ollama/api/generate", post(generate))
        .route("/ollama/api/embed", post(embed))
        .route("/ollama/api/embeddings", post(embeddings))
        .route("/ollama/api/tags", get(tags))
        .route("/ollama/api/ps", get(ps))
        .route("/ollama/api/show", post(show))
        .route("/ollama/api/version", get(version))
}

/// What Ollama answers at its root (clients check it to see the server is up).
#[utoipa::path(get, path = "/ollama", tag = "ollama", responses((status = 200, description = "Ollama is running")))]
pub async fn running() -> &'static str {
    "Ollama is running"
}

/// Ollama's chat, streamed (NDJSON) unless `"stream": false`, on an `ollama` node.
#[utoipa::path(post, path = "/ollama/api/chat", tag = "ollama",
    request_body(content = Object, description = "An Ollama chat request"),
    responses((status = 200, description = "The node's answer, JSON or NDJSON"),
        (status = 400, description = "Malformed JSON or missing model (Ollama's error shape)"),
        (status = 404, description = "No ollama node serves the model")))]
pub async fn chat(st: State<AppState>, peer: ConnectInfo<SocketAddr>, headers: HeaderMap, body: Body) -> Response {
    inference(st, peer, headers, body, RequestType::OllamaChat).await
}

/// Ollama's generate, streamed (NDJSON) unless `"stream": false`, on an `ollama` node.
#[utoipa::path(post, path = "/ollama/api/generate", tag = "ollama",
    request_body(content = Object, description = "An Ollama generate request"),
    responses((status = 200, description = "The node's answer, JSON or NDJSON")))]
pub async fn generate(st: State<AppState>, peer: ConnectInfo<SocketAddr>, headers: HeaderMap, body: Body) -> Response {
    inference(st, peer, headers, body, RequestType::OllamaGenerate).await
}

/// Ollama's embeddings of one or more inputs, on an `ollama` node.
#[utoipa::path(post, path = "/ollama/api/embed", tag = "ollama",
    request_body(content = Object, description = "An Ollama embed request"),
    responses((status = 200, description = "The node's answer")))]
pub async fn embed(st: State<AppState>, peer: ConnectInfo<SocketAddr>, headers: HeaderMap, body: Body) -> Response {
    inference(st, peer, headers, body, RequestType::OllamaEmbed).await
}

/// Ollama's legacy embeddings of one prompt, on an `ollama` node.
#[utoipa::path(post, path = "/ollama/api/embeddings", tag = "ollama",
    request_body(content = Object, description = "An Ollama embeddings request"),
    responses((status = 200, description = "The node's answer")))]
pub async fn embeddings(
    st: State<AppState>,
    peer: ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    inference(st, peer, headers, body, RequestType::OllamaEmbeddings).await
}

async fn inference(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
    kind: RequestType,
) -> Response {
    super::proxy(st, kind, peer, headers, body).await
}

fn error(err: ProxyError) -> Response {
    err.into_response_for(Protocol::Ollama)
}

/// The online, enabled `ollama` nodes.
fn ollama_nodes(st: &AppState) -> Vec<Arc<Node>> {
    let mut nodes = Vec::new();
    st.balancer.registry().for_each(|n| {
        let up =
            n.with_info(|i| i.kind == NodeKind::Ollama && i.enabled && !i.deleted && i.status == NodeStatus::Online);
        if up {
            nodes.push(n.clone());
        }
    });
    nodes
}

/// `GET path` on a node; its JSON when it answered 200.
async fn get_json(st: &AppState, node: &Node, path: &str) -> Option<Value> {
    let (base_url, api_key, check) = node.with_info(|i| (i.base_url.clone(), i.api_key.clone(), i.certificate_check()));
    let url = format!("{base_url}{path}");
    match st
        .client
        .get(&url, api_key.as_deref(), check, st.proxy.first_byte_timeout)
        .await
    {
        Ok((200, body)) => serde_json::from_slice(&body).ok(),
        _ => None,
    }
}

/// The `models` of every online `ollama` node at `path`, one entry per name, only
/// those the client's key may use.
async fn union_of_models(st: &AppState, path: &str, key: Option<&ClientKey>) -> Value {
    let nodes = ollama_nodes(st);
    let answers = join_all(nodes.iter().map(|n| get_json(st, n, path))).await;
    let mut models: Vec<Value> = Vec::new();
    for answer in answers.into_iter().flatten() {
        for m in answer.get("models").and_then(Value::as_array).into_iter().flatten() {
            let Some(name) = m.get("name").or(m.get("model")).and_then(Value::as_str) else {
                continue;
            };
            let known = models
                .iter()
                .any(|k| k.get("name").and_then(Value::as_str) == Some(name));
            if !known && key.is_none_or(|k| k.allows(name)) {
                models.push(m.clone());
            }
        }
    }
    models.sort_by(|a, b| a["name"].as_str().cmp(&b["name"].as_str()));
    json!({"models": models})
}

/// The models of the `ollama` nodes, in Ollama's shape.
#[utoipa::path(get, path = "/ollama/api/tags", tag = "ollama", responses((status = 200, description = "Ollama's model list")))]
pub async fn tags(State(st): State<AppState>, headers: HeaderMap) -> Response {
    match client_key::authenticate(&st, &headers) {
        Ok(key) => Json(union_of_models(&st, "/api/tags", key.as_deref()).await).into_response(),
        Err(e) => error(e),
    }
}

/// The models the `ollama` nodes hold in memory.
#[utoipa::path(get, path = "/ollama/api/ps", tag = "ollama", responses((status = 200, description = "Ollama's running models")))]
pub async fn ps(State(st): State<AppState>, headers: HeaderMap) -> Response {
    match client_key::authenticate(&st, &headers) {
        Ok(key) => Json(union_of_models(&st, "/api/ps", key.as_deref()).await).into_response(),
        Err(e) => error(e),
    }
}

/// The version of an online `ollama` node (the first that answers).
#[utoipa::path(get, path = "/ollama/api/version", tag = "ollama", responses((status = 200, description = "{\"version\": …}"),
    (status = 503, description = "No ollama node is online")))]
pub async fn version(State(st): State<AppState>, headers: HeaderMap) -> Response {
    if let Err(e) = client_key::authenticate(&st, &headers) {
        return error(e);
    }
    for node in ollama_nodes(&st) {
        if let Some(v) = get_json(&st, &node, "/api/version").await {
            return Json(v).into_response();
        }
    }
    error(ProxyError::NoNodeAvailable("any".into()))
}

/// A model's details, from an `ollama` node that serves it (no record: not inference).
#[utoipa::path(post, path = "/ollama/api/show", tag = "ollama",
    request_body(content = Object, description = "{\"model\": …}"),
    responses((status = 200, description = "The node's answer"), (status = 404, description = "No ollama node serves the model")))]
pub async fn show(State(st): State<AppState>, headers: HeaderMap, body: Body) -> Response {
    let key = match client_key::authenticate(&st, &headers) {
        Ok(k) => k,
        Err(e) => return error(e),
    };
    let body = match super::read_body(body, st.proxy.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return error(e),
    };
    let json: Value = match serde_json::from_slice(&body) {
        Ok(v) => v,
        Err(e) => return error(ProxyError::InvalidJson(e.to_string())),
    };
    let Some(model) = json.get("model").or(json.get("name")).and_then(Value::as_str) else {
        return error(ProxyError::MissingModel);
    };
    if key.as_ref().is_some_and(|k| !k.allows(model)) {
        return error(ProxyError::ModelNotAllowed(model.into()));
    }
    let wanted = Wanted {
        model,
        kind: Some(NodeKind::Ollama),
        session: None,
    };
    let node = match st.balancer.candidate(wanted) {
        Ok(n) => n,
        Err(NoNode::UnknownModel) => return error(ProxyError::UnknownModel(model.into())),
        Err(NoNode::Unavailable) => return error(ProxyError::NoNodeAvailable(model.into())),
    };
    let (base_url, api_key, check) = node.with_info(|i| (i.base_url.clone(), i.api_key.clone(), i.certificate_check()));
    let url = format!("{base_url}/api/show");
    let request = match headers::upstream_request(&url, &headers, api_key.as_deref(), body) {
        Ok(r) => r,
        Err(e) => return error(ProxyError::Upstream(e.to_string())),
    };
    let timeout = st.proxy.first_byte_timeout;
    let answer = match st.client.send(request, check, timeout).await {
        Ok(r) => r,
        Err(e) => return error(ProxyError::Upstream(e.to_string())),
    };
    let status = answer.status();
    let out_headers = headers::client_response_headers(answer.headers());
    match tokio::time::timeout(st.proxy.idle_timeout, answer.into_body().collect()).await {
        Ok(Ok(b)) => {
            let mut response = Response::new(Body::from(b.to_bytes()));
            *response.status_mut() = status;
            *response.headers_mut() = out_headers;
            response
        }
        _ => error(ProxyError::Upstream("node broke its answer".into())),
    }
}
