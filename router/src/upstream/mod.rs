//! The HTTP client the router speaks to nodes with (hyper, pooled keep-alive
//! connections): a plain connector for `http://` nodes, rustls for `https://` ones
//! ([`tls`]). Proxying and health probes share it; it knows nothing of routing.

pub mod tls;

use std::path::PathBuf;
use std::sync::Arc;
use std::time::Duration;

use bytes::Bytes;
use http::{HeaderValue, Request, Response};
use http_body_util::{BodyExt, Full};
use hyper::body::Incoming;
use hyper_rustls::{HttpsConnector, HttpsConnectorBuilder};
use hyper_util::client::legacy::connect::{Connect, HttpConnector};
use hyper_util::client::legacy::Client;
use hyper_util::rt::{TokioExecutor, TokioTimer};
pub use tls::CertificateCheck;

/// Errors talking to a node.
#[derive(Debug, thiserror::Error)]
pub enum UpstreamError {
    /// No connection could be made: safe to try another node.
    #[error("cannot connect to node: {0}")]
    Connect(String),
    /// The TLS handshake failed (say, an untrusted certificate): no request was sent.
    #[error("{0}")]
    Tls(String),
    #[error("cannot use CA file {0}")]
    CaFile(String),
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
        matches!(self, UpstreamError::Connect(_) | UpstreamError::Tls(_))
    }
}

/// The client, cloned for every request: one reference count.
#[derive(Clone)]
pub struct UpstreamClient(Arc<Pools>);

/// One pool per way of connecting: `http://` nodes keep a plain connector (no TLS
/// wrapper on their path), `https://` nodes use the pool of their [`CertificateCheck`].
struct Pools {
    plain: Client<HttpConnector, Full<Bytes>>,
    verified: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
    unverified: Client<HttpsConnector<HttpConnector>, Full<Bytes>>,
}

impl UpstreamClient {
    /// Fails when a `ca_files` entry cannot be read or holds no certificate.
    /// `keep_alive`: how long a connection stays in the pool unused. Most inference
    /// servers close an idle connection after 5 s (uvicorn under vLLM and SGLang,
    /// llama.cpp's server, Node's) and Ollama never does; a pooled connection holds
    /// memory (the 256 pooled after 4,000 slow streams kept ~40 MB resident).
    pub fn new(connect_timeout: Duration, keep_alive: Duration, ca_files: &[PathBuf]) -> Result<Self, UpstreamError> {
        let mut tcp = HttpConnector::new();
        tcp.set_connect_timeout(Some(connect_timeout));
        tcp.set_nodelay(true);
        let configs = tls::client_configs(ca_files)?;
        let https = |config| {
            let mut tcp = tcp.clone();
            tcp.enforce_http(false);
            let connector = HttpsConnectorBuilder::new()
                .with_tls_config(config)
                .https_only()
                .enable_http1()
                .wrap_connector(tcp);
            pooled(connector, keep_alive)
        };
        Ok(UpstreamClient(Arc::new(Pools {
            verified: https(configs.verify),
            unverified: https(configs.skip),
            plain: pooled(tcp, keep_alive),
        })))
    }

    /// Sends `req` and waits for the response head at most `timeout`; `check` says how
    /// an `https://` node's certificate is verified.
    pub async fn send(
        &self,
        req: Request<Full<Bytes>>,
        check: CertificateCheck,
        timeout: Duration,
    ) -> Result<Response<Incoming>, UpstreamError> {
        let response = match (req.uri().scheme_str() == Some("https"), check) {
            (false, _) => self.0.plain.request(req),
            (true, CertificateCheck::Verify) => self.0.verified.request(req),
            (true, CertificateCheck::Skip) => self.0.unverified.request(req),
        };
        match tokio::time::timeout(timeout, response).await {
            Err(_) => Err(UpstreamError::Timeout(timeout)),
            Ok(Ok(resp)) => Ok(resp),
            Ok(Err(e)) if e.is_connect() => Err(match tls::tls_failure(&e) {
                Some(reason) => UpstreamError::Tls(reason),
                None => UpstreamError::Connect(source_chain(&e)),
            }),
            Ok(Err(e)) => Err(UpstreamError::Io(source_chain(&e))),
        }
    }

    /// `GET url` with an optional bearer key; returns the status and body.
    pub async fn get(
        &self,
        url: &str,
        api_key: Option<&str>,
        check: CertificateCheck,
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
            let resp = self.send(req, check, timeout).await?;
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

fn pooled<C: Connect + Clone + Send + Sync + 'static>(connector: C, keep_alive: Duration) -> Client<C, Full<Bytes>> {
    Client::builder(TokioExecutor::new())
        .pool_idle_timeout(keep_alive)
        // Without a timer the pool closes an expired connection only when it is next
        // asked for one to the same node.
        .pool_timer(TokioTimer::new())
        .pool_max_idle_per_host(256)
        .build(connector)
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
