//! One client connection: hyper's HTTP/1 connection over the socket, and the clock
//! that closes it when the client is too slow.
//!
//! A connection is in one of three phases. `Head`: waiting for a request head, since
//! the connection was accepted or since the first byte of a later head arrived; closed
//! after the head timeout. `Idle`: a keep-alive connection between requests, since
//! its last response was handed to the socket; closed after the keep-alive timeout.
//! `Busy`: a request is being served, its response not sent yet; no clock (the body
//! has its own deadline, [`DeadlineBody`], and the proxy bounds the node's answer)
//! except while a write to the socket is blocked: a client that stops reading is
//! closed after the send timeout (hyper stops polling the response body when the
//! socket is full, so nothing else would ever end the request and free its node's
//! slot; nginx's `send_timeout` does the same).
//! The phase is kept in atomics that the socket wrapper, the service and the response
//! body update as they go, all within the connection's task; the task looks at it
//! whenever hyper returns, and its timer, armed at the earliest deadline it knows of,
//! is checked again when it fires (a later deadline moves it on, without a timer
//! update per request).

use std::convert::Infallible;
use std::future::Future;
use std::io;
use std::net::SocketAddr;
use std::pin::{pin, Pin};
use std::sync::atomic::{AtomicBool, AtomicU64, AtomicU8, Ordering::Relaxed};
use std::sync::Arc;
use std::task::{Context, Poll};
use std::time::Duration;

use axum::body::Body;
use axum::extract::ConnectInfo;
use axum::http::{header, HeaderValue, Request, Response, StatusCode};
use axum::response::IntoResponse;
use axum::Router;
use bytes::Bytes;
use http_body::{Frame, SizeHint};
use hyper::body::Incoming;
use hyper::server::conn::http1;
use hyper_util::rt::TokioIo;
use tokio::io::{AsyncRead, AsyncWrite, ReadBuf};
use tokio::net::TcpStream;
use tokio::sync::{watch, Notify};
use tokio::time::{Instant, Sleep};
use tower::util::Oneshot;
use tower::ServiceExt;

use super::limits::Entry;
use super::{ConnectionError, ServerSettings};

const HEAD: u8 = 0;
const IDLE: u8 = 1;
const BUSY: u8 = 2;

/// What the connection is doing, shared by its socket, service, response bodies and
/// the table of connections (which may ask it to close).
pub(super) struct ConnectionState {
    epoch: Instant,
    phase: AtomicU8,
    /// Start of the phase, in nanoseconds since `epoch`.
    since: AtomicU64,
    /// Since when a write to the socket has been blocked (nanoseconds since `epoch`),
    /// or `NOT_BLOCKED`.
    blocked_since: AtomicU64,
    body_timed_out: AtomicBool,
    evicted: AtomicBool,
    evict: Notify,
}

const NOT_BLOCKED: u64 = u64::MAX;

impl ConnectionState {
    pub(super) fn new(epoch: Instant) -> Self {
        let state = ConnectionState {
            epoch,
            phase: AtomicU8::new(HEAD),
            since: AtomicU64::new(0),
            blocked_since: AtomicU64::new(NOT_BLOCKED),
            body_timed_out: AtomicBool::new(false),
            evicted: AtomicBool::new(false),
            evict: Notify::new(),
        };
        state.since.store(state.now(), Relaxed);
        state
    }

    fn now(&self) -> u64 {
        Instant::now().saturating_duration_since(self.epoch).as_nanos() as u64
    }

    fn enter(&self, phase: u8) {
        self.since.store(self.now(), Relaxed);
        self.phase.store(phase, Relaxed);
    }

    /// When the connection must have made progress, or `None` while it serves a request
    /// and its writes go through.
    fn deadline(&self, settings: &ServerSettings) -> Option<Instant> {
        let (since, timeout) = match self.phase.load(Relaxed) {
            HEAD => (self.since.load(Relaxed), settings.head_timeout),
            IDLE => (self.since.load(Relaxed), settings.keep_alive_timeout),
            _ => match self.blocked_since.load(Relaxed) {
                NOT_BLOCKED => return None,
                blocked => (blocked, settings.send_timeout),
            },
        };
        Some(self.epoch + Duration::from_nanos(since) + timeout)
    }

    /// Why the connection's deadline closes it (the metric's `reason`).
    fn timed_out(&self) -> &'static str {
        match self.phase.load(Relaxed) {
            HEAD => "head_timeout",
            IDLE => "keep_alive_timeout",
            _ => "send_timeout",
        }
    }

    /// Notes whether a write went through, or since when they have been blocked.
    fn wrote<T>(&self, result: Poll<T>) -> Poll<T> {
        match result {
            Poll::Pending => {
                if self.blocked_since.load(Relaxed) == NOT_BLOCKED {
                    self.blocked_since.store(self.now(), Relaxed);
                }
            }
            Poll::Ready(_) => self.blocked_since.store(NOT_BLOCKED, Relaxed),
        }
        result
    }

    /// Since when the connection has not served a request, if it may be closed to make
    /// room (not busy, not already asked to close).
    pub(super) fn evictable_since(&self) -> Option<u64> {
        let evictable = self.phase.load(Relaxed) != BUSY && !self.evicted.load(Relaxed);
        evictable.then(|| self.since.load(Relaxed))
    }

    pub(super) fn evict(&self) {
        self.evicted.store(true, Relaxed);
        self.evict.notify_one();
    }
}

/// Serves one client connection until it closes, times out, is evicted, or the
/// server shuts down (then the request in progress finishes first).
pub(super) async fn serve(
    tcp: TcpStream,
    peer: SocketAddr,
    app: Router,
    settings: Arc<ServerSettings>,
    entry: Entry,
    mut stopping: watch::Receiver<()>,
) {
    let state = entry.state.clone();
    let io = TokioIo::new(WatchedSocket {
        tcp,
        state: state.clone(),
    });
    let service = ConnectionService {
        app,
        peer,
        state: state.clone(),
        body_timeout: settings.body_timeout,
    };
    let mut conn = pin!(http1::Builder::new()
        .header_read_timeout(None)
        .serve_connection(io, service));
    let mut timer = pin!(tokio::time::sleep_until(
        state.deadline(&settings).expect("a new connection waits for its head")
    ));
    let mut armed = timer.deadline();
    let mut evicted = pin!(state.evict.notified());
    let mut stop = pin!(stopping.changed());
    let mut closing = false;
    let end = std::future::poll_fn(|cx| loop {
        if let Poll::Ready(result) = conn.as_mut().poll(cx) {
            if let Err(e) = result {
                tracing::debug!(%peer, error = %e, "client connection failed");
            }
            return Poll::Ready(None);
        }
        if let Some(deadline) = state.deadline(&settings) {
            if deadline < armed {
                timer.as_mut().reset(deadline);
                armed = deadline;
            }
            if timer.as_mut().poll(cx).is_ready() {
                if Instant::now() >= deadline {
                    return Poll::Ready(Some(state.timed_out()));
                }
                timer.as_mut().reset(deadline);
                armed = deadline;
                continue;
            }
        }
        if evicted.as_mut().poll(cx).is_ready() {
            if state.phase.load(Relaxed) != BUSY {
                return Poll::Ready(Some("evicted"));
            }
            // It began a request meanwhile: it stays, and may be chosen again later.
            state.evicted.store(false, Relaxed);
            evicted.set(state.evict.notified());
            continue;
        }
        if !closing && stop.as_mut().poll(cx).is_ready() {
            closing = true;
            conn.as_mut().graceful_shutdown();
            continue;
        }
        return Poll::Pending;
    });
    if let Some(reason) = end.await {
        settings.count_closed(reason);
        tracing::debug!(%peer, reason, "client connection closed by the router");
    }
    drop(entry);
}

/// The client's socket, noting when the first byte of a new request head arrives and
/// when its writes block.
struct WatchedSocket {
    tcp: TcpStream,
    state: Arc<ConnectionState>,
}

impl AsyncRead for WatchedSocket {
    fn poll_read(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &mut ReadBuf<'_>) -> Poll<io::Result<()>> {
        let before = buf.filled().len();
        let result = Pin::new(&mut self.tcp).poll_read(cx, buf);
        if buf.filled().len() > before && self.state.phase.load(Relaxed) == IDLE {
            self.state.enter(HEAD);
        }
        result
    }
}

impl AsyncWrite for WatchedSocket {
    fn poll_write(mut self: Pin<&mut Self>, cx: &mut Context<'_>, buf: &[u8]) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.tcp).poll_write(cx, buf);
        self.state.wrote(result)
    }

    fn poll_write_vectored(
        mut self: Pin<&mut Self>,
        cx: &mut Context<'_>,
        bufs: &[io::IoSlice<'_>],
    ) -> Poll<io::Result<usize>> {
        let result = Pin::new(&mut self.tcp).poll_write_vectored(cx, bufs);
        self.state.wrote(result)
    }

    fn is_write_vectored(&self) -> bool {
        self.tcp.is_write_vectored()
    }

    fn poll_flush(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_flush(cx)
    }

    fn poll_shutdown(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<io::Result<()>> {
        Pin::new(&mut self.tcp).poll_shutdown(cx)
    }
}

/// Hands each request of the connection to the routes, with the peer address and a
/// body deadline, and marks the connection busy until its response is sent.
struct ConnectionService {
    app: Router,
    peer: SocketAddr,
    state: Arc<ConnectionState>,
    body_timeout: Duration,
}

impl hyper::service::Service<Request<Incoming>> for ConnectionService {
    type Response = Response<TrackedBody>;
    type Error = Infallible;
    type Future = ServedResponse;

    fn call(&self, request: Request<Incoming>) -> ServedResponse {
        self.state.phase.store(BUSY, Relaxed);
        let (mut parts, body) = request.into_parts();
        parts.extensions.insert(ConnectInfo(self.peer));
        let body = DeadlineBody {
            inner: body,
            deadline: Instant::now() + self.body_timeout,
            timeout: self.body_timeout,
            timer: None,
            state: self.state.clone(),
        };
        ServedResponse {
            inner: self.app.clone().oneshot(Request::from_parts(parts, body)),
            state: self.state.clone(),
            body_timeout: self.body_timeout,
        }
    }
}

/// The routes' response, closing the connection after a request whose body did not
/// arrive in time (the body's rest would be read as the next request).
pub(super) struct ServedResponse {
    inner: Oneshot<Router, Request<DeadlineBody>>,
    state: Arc<ConnectionState>,
    body_timeout: Duration,
}

impl Future for ServedResponse {
    type Output = Result<Response<TrackedBody>, Infallible>;

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Self::Output> {
        let Ok(mut response) = std::task::ready!(Pin::new(&mut self.inner).poll(cx));
        if self.state.body_timed_out.swap(false, Relaxed) {
            // The proxy answers 408 itself (and records it); other routes fail their read.
            if response.status() != StatusCode::REQUEST_TIMEOUT {
                response = ConnectionError::BodyTimeout(self.body_timeout).into_response();
            }
            response
                .headers_mut()
                .insert(header::CONNECTION, HeaderValue::from_static("close"));
        }
        let state = self.state.clone();
        Poll::Ready(Ok(response.map(|inner| TrackedBody { inner, state })))
    }
}

/// A request body that fails with [`ConnectionError::BodyTimeout`] once its deadline
/// passes. The timer is only made if the body has to be waited for.
pub(super) struct DeadlineBody {
    inner: Incoming,
    deadline: Instant,
    timeout: Duration,
    timer: Option<Pin<Box<Sleep>>>,
    state: Arc<ConnectionState>,
}

impl http_body::Body for DeadlineBody {
    type Data = Bytes;
    type Error = Box<dyn std::error::Error + Send + Sync>;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        if let Poll::Ready(frame) = Pin::new(&mut self.inner).poll_frame(cx) {
            return Poll::Ready(frame.map(|f| f.map_err(Into::into)));
        }
        let deadline = self.deadline;
        let timer = self
            .timer
            .get_or_insert_with(|| Box::pin(tokio::time::sleep_until(deadline)));
        if timer.as_mut().poll(cx).is_pending() {
            return Poll::Pending;
        }
        self.state.body_timed_out.store(true, Relaxed);
        Poll::Ready(Some(Err(Box::new(ConnectionError::BodyTimeout(self.timeout)))))
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}

/// A response body that marks the connection idle once hyper is done with it.
pub(super) struct TrackedBody {
    inner: Body,
    state: Arc<ConnectionState>,
}

impl Drop for TrackedBody {
    fn drop(&mut self) {
        self.state.enter(IDLE);
    }
}

impl http_body::Body for TrackedBody {
    type Data = Bytes;
    type Error = axum::Error;

    fn poll_frame(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<Option<Result<Frame<Bytes>, Self::Error>>> {
        Pin::new(&mut self.inner).poll_frame(cx)
    }

    fn is_end_stream(&self) -> bool {
        self.inner.is_end_stream()
    }

    fn size_hint(&self) -> SizeHint {
        self.inner.size_hint()
    }
}
