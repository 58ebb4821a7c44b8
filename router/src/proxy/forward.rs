//! One attempt on one node: what is sent (the client's body; with `include_usage`
//! for OpenAI streams; translated for a Messages request to a node that only speaks
//! chat completions) and how the answer comes back (read whole, or streamed through
//! the tap), ending the lease with the request's one record. A node's 429 or 503 (its
//! `Retry-After` keeps it out of placement meanwhile) sends the lease back for another
//! node when one could take it (`--retry-refused`), whatever the protocol.

use std::time::{Duration, Instant};

use axum::body::Body;
use axum::http::{HeaderMap, StatusCode};
use axum::response::{IntoResponse, Response};
use bytes::Bytes;
use common::protocol::{RequestStatus, RequestType, TokenUsage};
use http_body_util::{BodyExt, Full};
use serde_json::Value;

use super::anthropic::{self, translate, ChatToMessages};
use super::capture::BodyCapture;
use super::{headers, stream, Parsed, Protocol, ProxyError};
use crate::balancer::{RequestLease, RequestOutcome, Wanted};
use crate::nodes::{NodeId, NodeKind};
use crate::state::AppState;
use crate::token::{self, include_usage, StreamTap};
use crate::upstream::UpstreamError;

pub(super) enum Forwarded {
    Done(Response),
    /// The node could not be reached; the lease goes back for another node.
    FailOver(RequestLease, String),
    /// The node answered 429 or 503 (and is left alone for its `Retry-After`); the
    /// lease goes back for another node.
    Refused(RequestLease, String),
}

/// What goes to the node for one request.
struct Upstream {
    path: &'static str,
    body: Bytes,
    /// Sent instead if the node rejects `body` with 400/422: the request without the
    /// `include_usage` the router added.
    fallback: Option<Bytes>,
    /// The router added `include_usage` to an OpenAI stream: hide its effects.
    hide_usage: bool,
    /// A Messages request translated to chat completions.
    translated: bool,
}

/// What to send for `req` to a node that `wants_usage` on streams, of `node_kind`.
fn upstream_for(
    protocol: Protocol,
    req: &Parsed,
    kind: RequestType,
    wants_usage: bool,
    node_kind: NodeKind,
) -> Upstream {
    let as_sent = |body: Bytes| Upstream {
        path: kind.upstream_path(),
        body,
        fallback: None,
        hide_usage: false,
        translated: false,
    };
    match protocol {
        Protocol::OpenAi => {
            let injected = match kind {
                RequestType::ChatCompletions | RequestType::Completions if wants_usage => {
                    include_usage::request_with_include_usage(&req.body, &req.json)
                }
                _ => None,
            };
            match injected {
                Some(body) => Upstream {
                    fallback: Some(req.body.clone()),
                    hide_usage: true,
                    ..as_sent(body)
                },
                None => as_sent(req.body.clone()),
            }
        }
        Protocol::Ollama => as_sent(req.body.clone()),
        Protocol::Anthropic if anthropic::speaks_messages(node_kind) => as_sent(req.body.clone()),
        Protocol::Anthropic => {
            let chat = |usage: bool| Bytes::from(translate::messages_to_chat(&req.json, usage).to_string());
            let ask_usage = wants_usage && req.stream;
            Upstream {
                path: "/v1/chat/completions",
                body: chat(ask_usage),
                fallback: ask_usage.then(|| chat(false)),
                hide_usage: false,
                translated: true,
            }
        }
    }
}

/// Sends `req` to the lease's node; `wanted` and `tried` (the nodes tried so far, this
/// one included) say whether another node could take it if this one refuses it.
pub(super) async fn forward(
    st: &AppState,
    lease: RequestLease,
    req: &Parsed,
    client_headers: &HeaderMap,
    wanted: Wanted<'_>,
    tried: &[NodeId],
) -> Forwarded {
    let node = lease.node().clone();
    let (base_url, api_key, wants_usage, check, node_kind) = node.with_info(|i| {
        (
            i.base_url.clone(),
            i.api_key.clone(),
            i.wants_include_usage(),
            i.certificate_check(),
            i.kind,
        )
    });
    let kind = lease.draft().request_type;
    let protocol = Protocol::of(kind);
    let up = upstream_for(protocol, req, kind, wants_usage, node_kind);
    let url = format!("{base_url}{}", up.path);
    let send = |body: Bytes| {
        let request = headers::upstream_request(&url, client_headers, api_key.as_deref(), body);
        let client = st.client.clone();
        let timeout = st.proxy.first_byte_timeout;
        async move { client.send(request?, check, timeout).await }
    };
    let sent_at = Instant::now();
    let mut result = send(up.body.clone()).await;
    let mut hide_usage = up.hide_usage;
    if let (Ok(resp), Some(fallback)) = (&result, up.fallback) {
        if matches!(
            resp.status(),
            StatusCode::BAD_REQUEST | StatusCode::UNPROCESSABLE_ENTITY
        ) {
            // The node may reject `stream_options`: ask once more as the client asked.
            let retry = send(fallback).await;
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
        if st.proxy.retry_refused && st.balancer.has_candidate(wanted, tried) {
            return Forwarded::Refused(lease, format!("node answered {}", status.as_u16()));
        }
    }
    let content_type = resp
        .headers()
        .get(http::header::CONTENT_TYPE)
        .and_then(|v| v.to_str().ok())
        .unwrap_or("");
    let streamed = status.is_success()
        && match protocol {
            Protocol::Ollama => content_type.starts_with("application/x-ndjson") || req.stream,
            _ => content_type.starts_with("text/event-stream"),
        };
    let out_headers = headers::client_response_headers(resp.headers());
    if streamed {
        let (tap, transcoder) = match protocol {
            Protocol::OpenAi => (StreamTap::new(hide_usage), None),
            // The tap reads the node's chat chunks; the client gets Messages events.
            Protocol::Anthropic if up.translated => (StreamTap::new(false), Some(ChatToMessages::new(&req.model))),
            _ => (StreamTap::for_mode(protocol.tap_mode()), None),
        };
        let mut body = stream::TappedBody::new(st, lease, resp.into_body(), tap, transcoder, ttfb);
        // What came with the response head leaves with it, in one write.
        body.gather_ready_frames().await;
        let mut response = Response::new(Body::from_stream(body.into_stream()));
        *response.status_mut() = status;
        *response.headers_mut() = out_headers;
        return Forwarded::Done(response);
    }
    let answer = Answer {
        status,
        headers: out_headers,
        ttfb,
        translated: up.translated,
    };
    Forwarded::Done(complete_plain(st, lease, answer, resp.into_body()).await)
}

/// A node that took the request but failed before answering (timeout, reset):
/// an error, counted with the estimated prompt since the node received it.
async fn fail_after_send(st: &AppState, lease: RequestLease, e: UpstreamError) -> Response {
    let err = match e {
        UpstreamError::Timeout(_) => ProxyError::UpstreamTimeout(e.to_string()),
        _ => ProxyError::Upstream(e.to_string()),
    };
    let protocol = Protocol::of(lease.draft().request_type);
    let input = lease.draft().prompt.estimate().await;
    let outcome = RequestOutcome {
        status: RequestStatus::Error,
        http_status: err.status().as_u16(),
        error_message: Some(err.to_string()),
        usage: TokenUsage::new(input, 0, None),
        token_source: common::protocol::TokenSource::Estimated,
        time_to_first_byte: None,
        response_body: None,
    };
    lease.finish(outcome).wait(st.proxy.commit_wait).await;
    err.into_response_for(protocol)
}

/// The head of a node's whole (non-streamed) answer.
struct Answer {
    status: StatusCode,
    headers: HeaderMap,
    ttfb: Duration,
    translated: bool,
}

/// Reads a whole (non-streamed) answer, accounts for it, and releases it after the commit.
async fn complete_plain(st: &AppState, lease: RequestLease, a: Answer, body: hyper::body::Incoming) -> Response {
    let collected = tokio::time::timeout(st.proxy.idle_timeout, body.collect()).await;
    let bytes = match collected {
        Ok(Ok(c)) => c.to_bytes(),
        Ok(Err(e)) => return fail_after_send(st, lease, UpstreamError::Io(e.to_string())).await,
        Err(_) => return fail_after_send(st, lease, UpstreamError::Timeout(st.proxy.idle_timeout)).await,
    };
    let status = a.status;
    let protocol = Protocol::of(lease.draft().request_type);
    let reported = match protocol {
        Protocol::Ollama => token::ollama_usage_in_body(&bytes),
        _ => token::usage_in_body(&bytes),
    };
    // The whole answer is read only to estimate its output, quote its error or
    // translate it.
    let parsed: Option<Value> = if reported.is_none() || !status.is_success() || a.translated {
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
            .and_then(|v| {
                let e = v.get("error")?;
                e.get("message")
                    .and_then(Value::as_str)
                    .or(e.as_str())
                    .map(str::to_string)
            })
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
        time_to_first_byte: Some(a.ttfb),
        response_body: BodyCapture::of(&st.proxy).map(|c| c.keep(&bytes)),
    };
    let model = a.translated.then(|| lease.draft().model.clone());
    lease.finish(outcome).wait(st.proxy.commit_wait).await;
    if let Some(model) = model {
        if !status.is_success() {
            return super::error::anthropic_error(status, &translate::error_message(&bytes));
        }
        let message = translate::chat_to_message(parsed.as_ref().unwrap_or(&Value::Null), &model, counted.usage);
        let mut response = axum::Json(message).into_response();
        *response.status_mut() = status;
        return response;
    }
    let mut response = Response::new(Body::new(Full::new(bytes)));
    *response.status_mut() = status;
    *response.headers_mut() = a.headers;
    response
}
