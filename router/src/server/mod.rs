//! The HTTP server: accepts client connections and serves the routes on each with
//! hyper's HTTP/1 connection, bounding what a slow or hostile client can hold.
//!
//! - A request head must arrive within `head_timeout` (from the connection, or from
//!   the first byte of a later head); an idle keep-alive connection is closed after
//!   `keep_alive_timeout`; a request body must arrive within `body_timeout` of its
//!   head, else the request gets 408 and the connection is closed; a response the
//!   client leaves unread (the socket's writes blocked) for `send_timeout` closes the
//!   connection, which ends the request as cancelled (`connection`).
//! - At most `max_connections` client connections are open. Beyond it a connection
//!   that is not serving a request (idle, or still sending its head) is closed to make
//!   room, as nginx reuses its keep-alive connections; when every one is busy, the new
//!   client gets 503 on a connection of its own, a few at a time, and beyond those its
//!   connection is closed at once (`limits`). The accept loop never waits for a
//!   client.
//! - At start the soft open-file limit is raised to the hard one, and the default
//!   connection cap is derived from it (`limits::open_file_limit`).
//!
//! This module owns sockets and timers, not routes: it hands each request to the axum
//! `Router` with its peer address (`ConnectInfo`) and knows nothing of what it serves.

mod connection;
mod limits;

use std::convert::Infallible;
use std::sync::Arc;
use std::time::Duration;

use axum::http::{header, HeaderValue, StatusCode};
use axum::response::{IntoResponse, Response};
use axum::Router;
use hyper::server::conn::http1;
use hyper_util::rt::{TokioIo, TokioTimer};
use tokio::net::{TcpListener, TcpStream};
use tokio::sync::{watch, OwnedSemaphorePermit, Semaphore};
use tokio::task::{JoinHandle, JoinSet};

use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;

use crate::config::ServeArgs;
use crate::error::ErrorBody;
use crate::metrics::ReasonLabels;
use limits::{Admission, ConnectionTable};

pub use limits::{default_max_connections, raise_open_file_limit, OpenFileLimit};

/// Over-cap clients answered 503 at the same time; beyond, their connection is
/// closed at once.
const OVERFLOW_ANSWERS: usize = 32;

/// How the server treats its clients.
#[derive(Debug, Clone)]
pub struct ServerSettings {
    pub head_timeout: Duration,
    pub body_timeout: Duration,
    pub keep_alive_timeout: Duration,
    /// Longest a write to the client may stay blocked while a response is sent.
    pub send_timeout: Duration,
    /// `None`: derived from the open-file limit ([`default_max_connections`]).
    pub max_connections: Option<usize>,
    /// Counts the connections the server closes, by reason (`Metrics::connections_closed`).
    pub closed: Family<ReasonLabels, Counter>,
}

impl ServerSettings {
    /// Counts a connection the server closed for `reason`.
    fn count_closed(&self, reason: &'static str) {
        self.closed.get_or_create(&ReasonLabels { reason: reason.into() }).inc();
    }
}

impl From<&ServeArgs> for ServerSettings {
    fn from(args: &ServeArgs) -> Self {
        ServerSettings {
            head_timeout: Duration::from_millis(args.request_head_timeout_ms),
            body_timeout: Duration::from_millis(args.request_body_timeout_ms),
            keep_alive_timeout: Duration::from_millis(args.keep_alive_timeout_ms),
            send_timeout: Duration::from_millis(args.send_timeout_ms),
            max_connections: args.max_connections.map(|n| usize::try_from(n).unwrap_or(usize::MAX)),
            closed: Family::default(),
        }
    }
}

/// What the server answers on its own, without a route: errors of the connection
/// layer, in the OpenAI error shape.
#[derive(Debug, Clone, thiserror::Error)]
pub enum ConnectionError {
    #[error("the request body did not arrive within {0:?}")]
    BodyTimeout(Duration),
    #[error("the router has too many open connections; retry later")]
    TooManyConnections,
}

impl IntoResponse for ConnectionError {
    fn into_response(self) -> Response {
        let (status, kind, code) = match self {
            ConnectionError::BodyTimeout(_) => {
                (StatusCode::REQUEST_TIMEOUT, "invalid_request_error", "request_timeout")
            }
            ConnectionError::TooManyConnections => {
                (StatusCode::SERVICE_UNAVAILABLE, "server_error", "too_many_connections")
            }
        };
        let mut response = ErrorBody {
            status,
            message: self.to_string(),
            kind,
            code,
        }
        .into_response();
        response
            .headers_mut()
            .insert(header::CONNECTION, HeaderValue::from_static("close"));
        if status == StatusCode::SERVICE_UNAVAILABLE {
            response
                .headers_mut()
                .insert(header::RETRY_AFTER, HeaderValue::from_static("1"));
        }
        response
    }
}

/// Whether a request body read failed because the body did not arrive in time
/// (the error may be wrapped, by axum's `Body` or a `Limited` body).
pub fn is_body_timeout(error: &(dyn std::error::Error + 'static)) -> bool {
    let mut next = Some(error);
    while let Some(e) = next {
        if matches!(
            e.downcast_ref::<ConnectionError>(),
            Some(ConnectionError::BodyTimeout(_))
        ) {
            return true;
        }
        next = e.source();
    }
    false
}

/// Raises the open-file limit, logs it, and serves `app` on `listener` until
/// `shutdown` completes; then stops accepting and lets the open connections finish
/// their requests. Aborting the returned task drops every connection.
pub fn spawn(
    listener: TcpListener,
    app: Router,
    settings: ServerSettings,
    shutdown: impl std::future::Future<Output = ()> + Send + 'static,
) -> JoinHandle<()> {
    let limit = raise_open_file_limit();
    let max_connections = settings
        .max_connections
        .unwrap_or_else(|| default_max_connections(limit.current));
    match limit.raised_from {
        Some(before) => tracing::info!(
            soft_before = before,
            open_files = limit.current,
            max_connections,
            "open-file limit raised to the hard limit"
        ),
        None => tracing::info!(open_files = limit.current, max_connections, "open-file limit"),
    }
    let table = Arc::new(ConnectionTable::new(max_connections));
    tokio::spawn(accept_loop(listener, app, settings, table, shutdown))
}

async fn accept_loop(
    listener: TcpListener,
    app: Router,
    settings: ServerSettings,
    table: Arc<ConnectionTable>,
    shutdown: impl std::future::Future<Output = ()>,
) {
    let settings = Arc::new(settings);
    let overflow = Arc::new(Semaphore::new(OVERFLOW_ANSWERS));
    let (stop_connections, stopping) = watch::channel(());
    let mut connections = JoinSet::new();
    let mut accept_errors = limits::AcceptErrors::default();
    tokio::pin!(shutdown);
    loop {
        let (tcp, peer) = tokio::select! {
            _ = &mut shutdown => break,
            Some(_) = connections.join_next(), if !connections.is_empty() => continue,
            accepted = listener.accept() => match accepted {
                Ok(a) => a,
                Err(e) => {
                    accept_errors.pause_after(e).await;
                    continue;
                }
            },
        };
        // Streams are many small writes: without TCP_NODELAY each waits for the
        // client's delayed ACK (~40 ms).
        if let Err(e) = tcp.set_nodelay(true) {
            tracing::debug!(error = %e, "cannot set TCP_NODELAY");
        }
        match table.admit_waiting_for_evictions().await {
            Admission::Admitted(entry) => {
                let served = connection::serve(tcp, peer, app.clone(), settings.clone(), entry, stopping.clone());
                connections.spawn(served);
            }
            Admission::Full => match overflow.clone().try_acquire_owned() {
                Ok(permit) => {
                    settings.count_closed("over_cap");
                    connections.spawn(answer_too_many_connections(tcp, settings.head_timeout, permit));
                }
                Err(_) => {
                    settings.count_closed("over_cap");
                    tracing::debug!(%peer, "connection refused: too many connections and refusals");
                }
            },
        }
    }
    drop(listener);
    let _ = stop_connections.send(());
    while connections.join_next().await.is_some() {}
}

/// Reads the over-cap client's request head and answers 503 (then closes), so the
/// client sees why instead of a reset.
async fn answer_too_many_connections(tcp: TcpStream, head_timeout: Duration, _permit: OwnedSemaphorePermit) {
    let service = hyper::service::service_fn(|_request| async {
        Ok::<_, Infallible>(ConnectionError::TooManyConnections.into_response())
    });
    let conn = http1::Builder::new()
        .timer(TokioTimer::new())
        .header_read_timeout(head_timeout)
        .keep_alive(false)
        .serve_connection(TokioIo::new(tcp), service);
    // The head is bounded by its timeout; the answer is small, but the client may not read it.
    let _ = tokio::time::timeout(head_timeout + Duration::from_secs(1), conn).await;
}
