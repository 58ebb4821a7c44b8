//! The inference API: `POST /v1/{chat/completions,completions,embeddings,responses}`
//! forwarded to a node, and `GET /v1/models`.
//!
//! A request is read (size-limited) and parsed once for its model, then handed to the
//! balancer, which admits it to a node (or queues it until one has a free slot); a
//! connection error before any byte reached the client fails over to the next node,
//! and so does a 429 or 503 answer of the node (`--retry-refused`). Plain responses are read whole (their usage is in the body) and released
//! once their record is committed; streams go through `stream::TappedBody`. Every
//! request ends in exactly one record: through its lease, or `record_unrouted` when no
//! node took it. The proxy never writes SQL and never counts tokens itself: it hands
//! texts and usage to the `token` module.

pub mod client_key;
mod error;
mod headers;
mod stream;

use std::net::SocketAddr;
use std::sync::Arc;
use std::time::{Duration, Instant};

use axum::body::Body;
use axum::extract::{ConnectInfo, State};
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::routing::{get, post};
use axum::{Json, Router};
use bytes::Bytes;
use common::protocol::{RequestStatus, RequestType, TokenUsage};
use http_body_util::{BodyExt, Full, Limited};
use serde_json::{json, Value};

pub use error::ProxyError;

use crate::app::AppState;
use crate::balancer::{session_key, NoNode, RecordDraft, Refusal, RequestLease, RequestOutcome, Unplaced, Wanted};
use crate::nodes::{NodeId, NodeStatus};
use crate::token::{self, include_usage, Prompt};
use crate::upstream::UpstreamError;

/// Limits and timeouts of the proxy path.
#[derive(Debug, Clone)]
pub struct ProxySettings {
    pub max_body_bytes: usize,
    /// From sending the request to the node's response head.
    pub first_byte_timeout: Duration,
    /// Longest silence between two body chunks of a node's answer.
    pub idle_timeout: Duration,
    /// Longest wait for a record's commit before a response is released anyway.
    pub commit_wait: Duration,
    /// Records waiting for the store beyond which requests are refused.
    pub max_backlog: u64,
    /// A node's 429 or 503 sends the request to the next candidate.
    pub retry_refused: bool,
}

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/v1/chat/completions", post(chat_completions))
        .route("/v1/completions", post(completions))
        .route("/v1/embeddings", post(embeddings))
        .route("/v1/responses", post(responses))
        .route("/v1/models", get(list_models))
        .route("/v1/key", get(client_key::key_info))
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

async fn read_request(settings: &ProxySettings, body: Body) -> Result<Parsed, ProxyError> {
    let body = Limited::new(body, settings.max_body_bytes)
        .collect()
        .await
        .map_err(|e| {
            if e.downcast_ref::<http_body_util::LengthLimitError>().is_some() {
                ProxyError::BodyTooLarge(settings.max_body_bytes)
            } else {
                ProxyError::BodyRead(e.to_string())
            }
        })?
        .to_bytes();
    let json: Value = serde_json::from_slice(&body).map_err(|e| ProxyError::InvalidJson(e.to_string()))?;
    let model = json
        .get("model")
        .and_then(Value::as_str)
        .ok_or(ProxyError::MissingModel)?
        .to_string();
    let stream = json.get("stream").and_then(Value::as_bool).unwrap_or(false);
    Ok(Parsed {
        body,
        json: Arc::new(json),
        model,
        stream,
    })
}

async fn proxy(st: AppState, kind: RequestType, peer: SocketAddr, headers: HeaderMap, body: Body) -> Response {
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
    };
    // Its record could not be kept either: refused, and not recorded.
    let backlog = st.balancer.recorder().backlog();
    if backlog >= st.proxy.max_backlog {
        tracing::debug!(backlog, "store unavailable and backlog full; request refused");
        return ProxyError::BacklogFull(backlog).into_response();
    }
    // Before the body is read: a refused client costs no more than its head.
    let key = match client_key::authenticate(&st, &headers) {
        Ok(k) => k,
        Err(e) => return reject(&st, draft, e).await,
    };
    draft.client_key = key.as_ref().map(|k| (k.id, k.settings().name.clone()));
    let req = match read_request(&st.proxy, body).await {
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
        session: session_key(headers.get("x-session-id").map(|v| v.as_bytes()), &req.json),
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
        match forward(st, lease, req, headers, &tried).await {
            Forwarded::Done(resp) => return resp,
            Forwarded::FailOver(lease, reason) => {
                st.balancer.connection_failed(lease.node(), &reason);
                draft = lease.abandon(&reason);
                last_failure = Some(reason);
            }
            Forwarded::Refused(lease, reason) => {
                draft = lease.abandon(&reason);
                last_failure = Some(reason);
            }
        }
    }
}

/// Answers with `err` and records the request, which no node took.
async fn reject(st: &AppState, draft: RecordDraft, err: ProxyError) -> Response {
    let outcome = RequestOutcome::rejected(err.status().as_u16(), err.to_string());
    st.balancer
        .record_unrouted(draft, outcome)
        .wait(st.proxy.commit_wait)
        .await;
    err.into_response()
}

enum Forwarded {
    Done(Response),
    /// The node could not be reached; the lease goes back for another node.
    FailOver(RequestLease, String),
    /// The node answered 429 or 503 (and is left alone for its `Retry-After`); the
    /// lease goes back for another node.
    Refused(RequestLease, String),
}

async fn forward(
    st: &AppState,
    lease: RequestLease,
    req: &Parsed,
    client_headers: &HeaderMap,
    tried: &[NodeId],
) -> Forwarded {
    let node = lease.node().clone();
    let (base_url, api_key, wants_usage, check) = node.with_info(|i| {
        (
            i.base_url.clone(),
            i.api_key.clone(),
            i.wants_include_usage(),
            i.certificate_check(),
        )
    });
    let kind = lease.draft().request_type;
    let injected = match kind {
        RequestType::ChatCompletions | RequestType::Completions if wants_usage => {
            include_usage::request_with_include_usage(&req.body, &req.json)
        }
        _ => None,
    };
    let url = format!("{base_url}{}", kind.upstream_path());
    let send = |body: Bytes| {
        let request = headers::upstream_request(&url, client_headers, api_key.as_deref(), body);
        let client = st.client.clone();
        let timeout = st.proxy.first_byte_timeout;
        async move { client.send(request?, check, timeout).await }
    };
    let sent_at = Instant::now();
    let mut result = send(injected.clone().unwrap_or_else(|| req.body.clone())).await;
    let mut hide_usage = injected.is_some();
    if let (Ok(resp), true) = (&result, hide_usage) {
        if matches!(
            resp.status(),
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
        ) {
            // The node may reject `stream_options`: ask once more as the client asked.
            let retry = send(req.body.clone()).await;
            if retry.as_ref().is_ok_and(|r| r.status().is_success()) {
                node.update_info(|i| i.include_usage_rejected = true);
                tracing::info!(node = %node.name(), "node rejects stream_options; include_usage disabled for it");
            }
            result = retry;
            hide_usage = false;
        }
    }
    let resp = match result {
        Ok(r) => r,
        Err(e) if e.may_fail_over() => return Forwarded::FailOver(lease, e.to_string()),
        Err(e) => return Forwarded::Done(fail_after_send(st, lease, e).await),
    };
    let ttfb = sent_at.elapsed();
    let status = resp.status();
    if matches!(status, StatusCode::TOO_MANY_REQUESTS | StatusCode::SERVICE_UNAVAILABLE) {
        st.balancer.refused(&node, headers::retry_after(resp.headers()));
        // Passed on to the client when no other node could take the request.
        if st.proxy.retry_refused && st.balancer.has_candidate(&req.model, tried) {
            return Forwarded::Refused(lease, format!("node answered {}", status.as_u16()));
        }
    }
    let is_sse = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .is_some_and(|v| v.starts_with("text/event-stream"));
    let out_headers = headers::client_response_headers(resp.headers());
    if is_sse && status.is_success() {
        let mut body = stream::TappedBody::new(st, lease, resp.into_body(), hide_usage, ttfb);
        // What came with the response head leaves with it, in one write.
        body.gather_ready_frames().await;
        let mut response = Response::new(Body::from_stream(body.into_stream()));
        *response.status_mut() = status;
        *response.headers_mut() = out_headers;
        return Forwarded::Done(response);
    }
    Forwarded::Done(complete_plain(st, lease, status, out_headers, resp.into_body(), ttfb).await)
}

/// A node that took the request but failed before answering (timeout, reset):
/// an error, counted with the estimated prompt since the node received it.
async fn fail_after_send(st: &AppState, lease: RequestLease, e: UpstreamError) -> Response {
    let err = match e {
        UpstreamError::Timeout(_) => ProxyError::UpstreamTimeout(e.to_string()),
        _ => ProxyError::Upstream(e.to_string()),
    };
    let input = lease.draft().prompt.estimate().await;
    let outcome = RequestOutcome {
        status: RequestStatus::Error,
        http_status: err.status().as_u16(),
        error_message: Some(err.to_string()),
        usage: TokenUsage::new(input, 0, None),
        token_source: common::protocol::TokenSource::Estimated,
        time_to_first_byte: None,
    };
    lease.finish(outcome).wait(st.proxy.commit_wait).await;
    err.into_response()
}

/// Reads a whole (non-SSE) answer, accounts for it, and releases it after the commit.
async fn complete_plain(
    st: &AppState,
    lease: RequestLease,
    status: StatusCode,
    headers: HeaderMap,
    body: hyper::body::Incoming,
    ttfb: Duration,
) -> Response {
    let collected = tokio::time::timeout(st.proxy.idle_timeout, body.collect()).await;
    let bytes = match collected {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) => return fail_after_send(st, lease, UpstreamError::Io(e.to_string())).await,
        Err(_) => return fail_after_send(st, lease, UpstreamError::Timeout(st.proxy.idle_timeout)).await,
    };
    let reported = token::usage_in_body(&bytes);
    // The whole answer is read only to estimate its output or quote its error.
    let parsed: Option<Value> = if reported.is_none() || !status.is_success() {
        serde_json::from_slice(&bytes).ok()
    } else {
        None
    };
    // The generated text is only needed to estimate, and an error produced none.
    let generated = match (&parsed, reported, status.is_success()) {
        (Some(v), None, true) => token::output_text(v),
        _ => String::new(),
    };
    let counted = token::settle(reported, &lease.draft().prompt, generated).await;
    let error_message = (!status.is_success()).then(|| {
        let detail = parsed
            .as_ref()
            .and_then(|v| v.pointer("/error/message").and_then(Value::as_str).map(str::to_string))
            .unwrap_or_else(|| String::from_utf8_lossy(&bytes[..bytes.len().min(512)]).into_owned());
        format!("node answered {}: {detail}", status.as_u16())
    });
    let outcome = RequestOutcome {
        status: if status.is_success() {
            RequestStatus::Success
        } else {
            RequestStatus::Error
        },
        http_status: status.as_u16(),
        error_message,
        usage: counted.usage,
        token_source: counted.source,
        time_to_first_byte: Some(ttfb),
    };
    lease.finish(outcome).wait(st.proxy.commit_wait).await;
    let mut response = Response::new(Body::new(Full::new(bytes)));
    *response.status_mut() = status;
    *response.headers_mut() = headers;
    response
}
