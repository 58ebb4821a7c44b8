//! The inference API: `POST /v1/{chat/completions,completions,embeddings,responses}`
//! forwarded to a node, and `GET /v1/models`; Ollama's API under `/ollama`
//! (`ollama`) and Anthropic's Messages API (`anthropic`) over the same path.
//!
//! A request is read (size-limited) and parsed once for its model, then handed to the
//! balancer, which admits it to a node (or queues it until one has a free slot, among
//! the nodes of the kind its protocol needs); a connection error before any byte
//! reached the client fails over to the next node, and so does a 429 or 503 answer of
//! the node (`--retry-refused`; both in `forward`). Plain responses are read whole
//! (their usage is in the body) and released once their record is committed; streams
//! go through `stream::TappedBody`. Every request ends in exactly one record: through
//! its lease, or `record_unrouted` when no node took it. What differs between client
//! protocols is in `protocol`; nothing of this path is copied per protocol. The proxy
//! never writes SQL and never counts tokens itself: it hands texts and usage to the
//! `token` module.

pub mod anthropic;
mod capture;
pub mod client_key;
mod error;
mod forward;
mod headers;
pub mod ollama;
mod protocol;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::Instant;

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, HeaderName};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use common::protocol::RequestType;
use http_body_util::{BodyExt, Limited};
use serde_json::{json, Value};

use capture::BodyCapture;
pub use error::ProxyError;
pub use protocol::Protocol;

use crate::balancer::{session_key, NoNode, RecordDraft, Refusal, RequestOutcome, Unplaced, Wanted};
use crate::nodes::NodeStatus;
use crate::state::AppState;
use crate::token::Prompt;

/// The client's name for its conversation (affinity), read on every request: a
/// constant, so that the lookup does not parse the name each time.
const SESSION_ID: HeaderName = HeaderName::from_static("x-session-id");

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses))
        .route("/v1/models", get(list_models))
        .route("/v1/key", get(client_key::key_info))
        .merge(anthropic::routes())
        .merge(ollama::routes())
}

/// Forwards a chat completion (plain or streamed) to a node serving the model.
#[utoipa::path(post, path = "/v1/chat/completions", tag = "inference",
    request_body(content = Object, description = "An OpenAI chat completion request"),
    responses((status = 200, description = "The node's answer, JSON or SSE"),
        (status = 400, description = "Malformed JSON or missing model"), (status = 404, description = "No node serves the model"),
        (status = 413, description = "Body too large"), (status = 502, description = "Node failed"),
        (status = 503, description = "No online node for the model")))]
pub async fn chat_completions(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    proxy(st, RequestType::ChatCompletions, peer, headers, body).await
}

/// Forwards a legacy completion to a node serving the model.
#[utoipa::path(post, path = "/v1/completions", tag = "inference",
    request_body(content = Object, description = "An OpenAI completion request"),
    responses((status = 200, description = "The node's answer, JSON or SSE")))]
pub async fn completions(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    proxy(st, RequestType::Completions, peer, headers, body).await
}

/// Forwards an embeddings request to a node serving the model.
#[utoipa::path(post, path = "/v1/embeddings", tag = "inference",
    request_body(content = Object, description = "An OpenAI embeddings request"),
    responses((status = 200, description = "The node's answer")))]
pub async fn embeddings(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    proxy(st, RequestType::Embeddings, peer, headers, body).await
}

/// Forwards a Responses API request to a node serving the model.
#[utoipa::path(post, path = "/v1/responses", tag = "inference",
    request_body(content = Object, description = "An OpenAI Responses API request"),
    responses((status = 200, description = "The node's answer, JSON or SSE")))]
pub async fn responses(
    State(st): State<AppState>,
    ConnectInfo(peer): ConnectInfo<SocketAddr>,
    headers: HeaderMap,
    body: Body,
) -> Response {
    proxy(st, RequestType::Responses, peer, headers, body).await
}

/// The union of the models of online nodes, in OpenAI's list format; with a client
/// key, only the models it may use.
#[utoipa::path(get, path = "/v1/models", tag = "inference", responses((status = 200, description = "OpenAI model list"),
    (status = 401, description = "Missing or invalid client key (with --client-auth required)")))]
pub async fn list_models(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let key = match client_key::authenticate(&st, &headers) {
        Ok(k) => k,
        Err(e) => return e.into_response(),
    };
    let mut models: Vec<String> = Vec::new();
    st.balancer.registry().for_each(|n| {
        n.with_info(|i| {
            if i.enabled && !i.deleted && i.status == NodeStatus::Online {
                models.extend(i.models.iter().cloned());
            }
        })
    });
    if let Some(key) = key {
        models.retain(|m| key.allows(m));
    }
    models.sort();
    models.dedup();
    let data: Vec<Value> = models
        .iter()
        .map(|m| json!({"id": m, "object": "model", "created": 0, "owned_by": "llm-router"}))
        .collect();
    Json(json!({"object": "list", "data": data})).into_response()
}

/// A parsed inference request.
struct Parsed {
    body: Bytes,
    json: Arc<Value>,
    model: String,
    stream: bool,
}

/// A request body of at most `limit` bytes.
pub(crate) async fn read_body(body: Body, limit: usize) -> Result<Bytes, ProxyError> {
    let body = Limited::new(body, limit).collect().await.map_err(|e| {
        if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
            ProxyError::BodyTooLarge(limit)
        } else if crate::server::is_body_timeout(&*e) {
            ProxyError::BodyTimeout
        } else {
            ProxyError::BodyRead(e.to_string())
        }
    })?;
    Ok(body.to_bytes())
}

/// The model and stream flag of a request's `body`.
fn parse_request(kind: RequestType, body: Bytes) -> Result<Parsed, ProxyError> {
    let json: Value = serde_json::from_slice(&body).map_err(|e| ProxyError::InvalidJson(e.to_string()))?;
    let model = json
        .get("model")
        .and_then(Value::as_str)
        .ok_or(ProxyError::MissingModel)?
        .to_string();
    let stream = json
        .get("stream")
        .and_then(Value::as_bool)
        .unwrap_or_else(|| Protocol::streams_by_default(kind));
    Ok(Parsed {
        body,
        json: Arc::new(json),
        model,
        stream,
    })
}

/// The shared path of every inference request, whatever its protocol: backlog check,
/// client key, body, admission, then `route`.
pub(crate) async fn proxy(
    st: AppState,
    kind: RequestType,
    peer: SocketAddr,
    headers: HeaderMap,
    body: Body,
) -> Response {
    let mut draft = RecordDraft {
        timestamp: st.clock.now(),
        started: Instant::now(),
        request_type: kind,
        model: String::new(),
        client_ip: Some(peer.ip().to_string()),
        stream: false,
        prompt: Prompt::default(),
        client_key: None,
        key: None,
        request_body: None,
    };
    // Its record could not be kept either: refused, and not recorded.
    let backlog = st.balancer.recorder().backlog();
    if backlog >= st.proxy.max_backlog {
        tracing::debug!(backlog, "store unavailable and backlog full; request refused");
        return ProxyError::BacklogFull(backlog).into_response_for(Protocol::of(kind));
    }
    // Before the body is read: a refused client costs no more than its head.
    let key = match client_key::authenticate(&st, &headers) {
        Ok(k) => k,
        Err(e) => return reject(&st, draft, e).await,
    };
    draft.client_key = key.as_ref().map(|k| (k.id, k.settings().name.clone()));
    let body = match read_body(body, st.proxy.max_body_bytes).await {
        Ok(b) => b,
        Err(e) => return reject(&st, draft, e).await,
    };
    // Kept before it is parsed: a body the router refuses is the one worth reading.
    draft.request_body = BodyCapture::of(&st.proxy).map(|c| c.keep(&body));
    let req = match parse_request(kind, body) {
        Ok(r) => r,
        Err(e) => return reject(&st, draft, e).await,
    };
    draft.model = req.model.clone();
    draft.stream = req.stream;
    draft.prompt = Prompt::of(req.json.clone());
    // The key's limits, before any node is contacted.
    if let Some(key) = &key {
        match key.admit(&req.model) {
            Ok(permit) => draft.key = Some(permit),
            Err(refusal) => return reject(&st, draft, refusal.into()).await,
        }
    }
    let rate = draft.key.as_ref().map(|p| p.rate);
    let mut response = route(&st, draft, &req, &headers).await;
    if let Some(rate) = rate {
        client_key::add_rate_headers(response.headers_mut(), &rate);
    }
    response
}

/// Sends the request to the best node for its model (waiting in the queue while every
/// one is full), failing over to the next one while no byte has reached the client.
async fn route(st: &AppState, mut draft: RecordDraft, req: &Parsed, headers: &HeaderMap) -> Response {
    let mut tried = Vec::new();
    let mut last_failure: Option<String> = None;
    let priority = draft.key.as_ref().map_or(0, |k| k.priority);
    let wanted = Wanted {
        model: &req.model,
        kind: Protocol::of(draft.request_type).node_kind(),
        // With one node there is no choice to remember: the body is not hashed.
        session: if st.balancer.registry().node_count() > 1 {
            session_key(headers.get(&SESSION_ID).map(|v| v.as_bytes()), &req.json)
        } else {
            None
        },
    };
    loop {
        let lease = match st.balancer.admit(draft, wanted, priority, &tried).await {
            Ok(lease) => lease,
            Err(Unplaced { draft, why }) => {
                let model = req.model.clone();
                let err = match (why, last_failure) {
                    (Refusal::NoNode(_), Some(reason)) => ProxyError::AllNodesFailed { model, reason },
                    (Refusal::NoNode(NoNode::UnknownModel), None) => ProxyError::UnknownModel(model),
                    (Refusal::NoNode(NoNode::Unavailable), None) => ProxyError::NoNodeAvailable(model),
                    (Refusal::QueueFull, _) => ProxyError::QueueFull(model),
                    (Refusal::QueueTimeout(waited), _) => ProxyError::QueueTimeout {
                        model,
                        waited_secs: waited.as_secs(),
                    },
                };
                return reject(st, draft, err).await;
            }
        };
        tried.push(lease.node().id);
        match forward::forward(st, lease, req, headers, wanted, &tried).await {
            forward::Forwarded::Done(resp) => return resp,
            forward::Forwarded::FailOver(lease, reason) => {
                st.balancer.connection_failed(lease.node(), &reason);
                draft = lease.abandon(&reason);
                last_failure = Some(reason);
            }
            forward::Forwarded::Refused(lease, reason) => {
                draft = lease.abandon(&reason);
                last_failure = Some(reason);
            }
        }
    }
}

/// Answers with `err` in the request's protocol and records the request, which no
/// node took.
async fn reject(st: &AppState, draft: RecordDraft, err: ProxyError) -> Response {
    let protocol = Protocol::of(draft.request_type);
    let outcome = RequestOutcome::rejected(err.status().as_u16(), err.to_string());
    st.balancer
        .record_unrouted(draft, outcome)
        .wait(st.proxy.commit_wait)
        .await;
    err.into_response_for(protocol)
}
