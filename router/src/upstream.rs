//! The HTTP client the router speaks to nodes with (hyper, pooled keep-alive
//! connections). Proxying and health probes share it; it knows nothing of routing.

use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_util::client::legacy::connect::HttpConnector;
use hyper_util::client::legacy::Client;
use hyper_util::rt::TokioExecutor;

/// Errors talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made: safe to try another node.
    #[error("cannot connect to node: {0}")]
    Connect(String),
    #[error("node did not answer within {0:?}")]
    Timeout(Duration),
    #[error("node connection failed: {0}")]
    Io(String),
    #[error("invalid request to node: {0}")]
    Request(String),
}

impl UpstreamError {
    /// The request never reached the node, so another node may take it.
    pub fn may_fail_over(&self) -> bool {
        matches!(self, UpstreamError::Connect(_))
    }
}

#[derive(Clone)]
pub struct UpstreamClient {
    client: Client<HttpConnector, Full<Bytes>>,
}

impl UpstreamClient {
    pub fn new(connect_timeout: Duration) -> Self {
        let mut connector = HttpConnector::new();
        connector.set_connect_timeout(Some(connect_timeout));
        connector.set_nodelay(true);
        let client = Client::builder(TokioExecutor::new())
            .pool_idle_timeout(Duration::from_secs(90))
            .pool_max_idle_per_host(256)
            .build(connector);
        UpstreamClient { client }
    }

    /// Sends `req` and waits for the response head at most `timeout`.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        match tokio::time::timeout(timeout, self.client.request(req)).await {
            Err(_) => Err(UpstreamError::Timeout(timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => Err(UpstreamError::Connect(source_chain(&e))),
            Ok(Err(e)) => Err(UpstreamError::Io(source_chain(&e))),
        }
    }

    /// `GET url` with an optional bearer key; returns the status and body.
    pub async fn get(
        &self,
        url: &str,
        api_key: Option<&str>,
        timeout: Duration,
    ) -> Result<(u16, Bytes), UpstreamError> {
        let mut req = Request::get(url);
        if let Some(key) = api_key {
            req = req.header(http::header::AUTHORIZATION, bearer(key)?);
        }
        let req = req
            .body(Full::new(Bytes::new()))
            .map_err(|e| UpstreamError::Request(e.to_string()))?;
        let work = async {
            let resp = self.send(req, timeout).await?;
            let status = resp.status().as_u16();
            let body = resp
                .into_body()
                .collect()
                .await
                .map_err(|e| UpstreamError::Io(e.to_string()))?
                .to_bytes();
            Ok((status, body))
        };
        tokio::time::timeout(timeout, work)
            .await
            .unwrap_or(Err(UpstreamError::Timeout(timeout)))
    }
}

pub fn bearer(key: &str) -> Result<HeaderValue, UpstreamError> {
    HeaderValue::from_str(&format!("Bearer {key}"))
        .map_err(|_| UpstreamError::Request("api_key is not a valid header value".into()))
}

fn source_chain(e: &dyn std::error::Error) -> String {
    let mut s = e.to_string();
    let mut cur = e.source();
    while let Some(c) = cur {
        s.push_str(": ");
        s.push_str(&c.to_string());
        cur = c.source();
    }
    s
}
