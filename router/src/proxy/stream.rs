//! The body of a streamed answer: the node's SSE bytes, through the stream tap, to the
//! client, chunk by chunk as they arrive.
//!
//! The record is finished when the terminal event arrives (its bytes are held until
//! the commit), when the node ends or breaks the stream, or when it stays silent past
//! the idle timeout. If the client goes away first, hyper drops this body and `Drop`
//! finishes the record as `cancelled` with what was produced so far.

use std::collections::VecDeque;
use std::io;
use std::time::Duration;

use bytes::Bytes;
use common::protocol::RequestStatus;
use futures_util::Stream;
use http_body_util::BodyExt;
use hyper::body::Incoming;

use crate::app::AppState;
use crate::balancer::{RequestLease, RequestOutcome};
use crate::token::{self, StreamTap};

pub struct TappedBody {
    upstream: Incoming,
    tap: StreamTap,
    /// `None` once the record is finished.
    lease: Option<RequestLease>,
    queue: VecDeque<Bytes>,
    /// An error to end the client's stream with, after the queued bytes.
    failure: Option<io::Error>,
    ended: bool,
    idle_timeout: Duration,
    commit_wait: Duration,
    first_chunk: Option<Duration>,
    head_time: Duration,
}

impl TappedBody {
    pub fn new(
        st: &AppState,
        lease: RequestLease,
        upstream: Incoming,
        hide_injected_usage: bool,
        head_time: Duration,
    ) -> Self {
        TappedBody {
            upstream,
            tap: StreamTap::new(hide_injected_usage),
            lease: Some(lease),
            queue: VecDeque::new(),
            failure: None,
            ended: false,
            idle_timeout: st.proxy.idle_timeout,
            commit_wait: st.proxy.commit_wait,
            first_chunk: None,
            head_time,
        }
    }

    pub fn into_stream(self) -> impl Stream<Item = Result<Bytes, io::Error>> + Send {
        futures_util::stream::unfold(self, |mut body| async move {
            let item = body.next().await?;
            Some((item, body))
        })
    }

    async fn next(&mut self) -> Option<Result<Bytes, io::Error>> {
        loop {
            if let Some(b) = self.queue.pop_front() {
                return Some(Ok(b));
            }
            if let Some(e) = self.failure.take() {
                return Some(Err(e));
            }
            if self.ended {
                return None;
            }
            match tokio::time::timeout(self.idle_timeout, self.upstream.frame()).await {
                Ok(Some(Ok(frame))) => {
                    let Ok(data) = frame.into_data() else {
                        continue;
                    };
                    if self.first_chunk.is_none() {
                        self.first_chunk = self.lease.as_ref().map(|l| l.draft().started.elapsed());
                    }
                    let out = self.tap.on_chunk(data);
                    self.push(out.now);
                    if let Some(held) = out.held {
                        self.finish(None).await;
                        self.push(held);
                    }
                }
                Ok(None) => {
                    let tail = self.tap.on_end();
                    self.finish(None).await;
                    self.push(tail);
                    self.ended = true;
                }
                Ok(Some(Err(e))) => self.fail(format!("node broke the stream: {e}")).await,
                Err(_) => {
                    self.fail(format!("node sent nothing for {:?}", self.idle_timeout))
                        .await
                }
            }
        }
    }

    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.queue.push_back(b);
        }
    }

    /// The node failed mid-stream: record an error, forward what is buffered, then
    /// break the client's stream too, so it cannot mistake it for a complete one.
    async fn fail(&mut self, reason: String) {
        let tail = self.tap.on_end();
        self.finish(Some(reason.clone())).await;
        self.push(tail);
        self.failure = Some(io::Error::other(reason));
        self.ended = true;
    }

    /// Finishes the record once (T-12) and waits for its commit.
    async fn finish(&mut self, failure: Option<String>) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let error_message = failure.or_else(|| {
            self.tap
                .error()
                .map(|e| format!("node reported an error in the stream: {e}"))
        });
        let counted = token::settle(
            self.tap.reported_usage(),
            &lease.draft().prompt,
            self.tap.take_generated(),
        )
        .await;
        let outcome = RequestOutcome {
            status: if error_message.is_some() {
                RequestStatus::Error
            } else {
                RequestStatus::Success
            },
            http_status: 200,
            error_message,
            usage: counted.usage,
            token_source: counted.source,
            time_to_first_byte: Some(self.first_chunk.unwrap_or(self.head_time)),
        };
        lease.finish(outcome).wait(self.commit_wait).await;
    }
}

impl Drop for TappedBody {
    /// The client went away mid-stream: count what was produced, as `cancelled`.
    fn drop(&mut self) {
        let Some(lease) = self.lease.take() else {
            return;
        };
        let reported = self.tap.reported_usage();
        let generated = self.tap.take_generated();
        let first_chunk = self.first_chunk;
        let Ok(rt) = tokio::runtime::Handle::try_current() else {
            return; // The lease's own Drop records the cancellation.
        };
        rt.spawn(async move {
            let counted = token::settle(reported, &lease.draft().prompt, generated).await;
            let _ = lease.finish(RequestOutcome {
                status: RequestStatus::Cancelled,
                http_status: 200,
                error_message: Some("client disconnected mid-stream".into()),
                usage: counted.usage,
                token_source: counted.source,
                time_to_first_byte: first_chunk,
            });
        });
    }
}
