//! Which headers cross the router, each way.
//!
//! Client → node: everything but hop-by-hop headers, `host`, `content-length`
//! (recomputed), `accept-encoding` (the router must read the answer to count its
//! tokens, so it asks for identity) and the client's `authorization` and `x-api-key`,
//! which carry the router's client key; the node's own `api_key` is sent instead, to
//! that node only.
//! Node → client: everything but hop-by-hop headers and `content-length`.

use bytes::Bytes;
use http::header::{self, HeaderMap, HeaderName};
use http::Request;
use http_body_util::Full;

use crate::upstream::{bearer, UpstreamError};

const HOP_BY_HOP: [HeaderName; 8] = [
    header::CONNECTION,
    HeaderName::from_static("keep-alive"),
    header::PROXY_AUTHENTICATE,
    header::PROXY_AUTHORIZATION,
    header::TE,
    header::TRAILER,
    header::TRANSFER_ENCODING,
    header::UPGRADE,
];

fn is_hop_by_hop(name: &HeaderName) -> bool {
    HOP_BY_HOP.contains(name)
}

pub fn upstream_request(
    url: &str,
    client: &HeaderMap,
    api_key: Option<&str>,
    body: Bytes,
) -> Result<Request<Full<Bytes>>, UpstreamError> {
    let mut req = Request::post(url);
    let headers = req.headers_mut().expect("a fresh builder has headers");
    for (name, value) in client {
        if is_hop_by_hop(name)
            || matches!(
                *name,
                header::HOST | header::CONTENT_LENGTH | header::ACCEPT_ENCODING | header::AUTHORIZATION
            )
            || name == "x-api-key"
        {
            continue;
        }
        headers.append(name, value.clone());
    }
    if !headers.contains_key(header::CONTENT_TYPE) {
        headers.insert(header::CONTENT_TYPE, http::HeaderValue::from_static("application/json"));
    }
    if let Some(key) = api_key {
        headers.insert(header::AUTHORIZATION, bearer(key)?);
    }
    req.body(Full::new(body))
        .map_err(|e| UpstreamError::Request(e.to_string()))
}

pub fn client_response_headers(node: &HeaderMap) -> HeaderMap {
    let mut out = HeaderMap::with_capacity(node.len());
    for (name, value) in node {
        if !is_hop_by_hop(name) && *name != header::CONTENT_LENGTH {
            out.append(name, value.clone());
        }
    }
    out
}

/// How long a node that answered 429 or 503 asked to be left alone: its `Retry-After`
/// in seconds (at most a minute), else one second.
pub fn retry_after(headers: &HeaderMap) -> std::time::Duration {
    let secs = headers
        .get(http::header::RETRY_AFTER)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.trim().parse::<u64>().ok())
        .unwrap_or(1);
    std::time::Duration::from_secs(secs.min(60))
}
