//! The body of a streamed answer: the node's SSE (or Ollama's NDJSON) bytes, through
//! the stream tap, to the client as they arrive. What arrived together leaves
//! together, in one chunk. A Messages request answered in chat completions goes
//! through a transcoder after the tap, which reads the node's own chunks.
//!
//! The record is finished when the terminal event arrives (its bytes are held until
//! the commit, the bytes before it are not), when the node ends or breaks the stream,
//! or when it stays silent past the idle timeout. If the client goes away first, hyper drops this body and `Drop`
//! finishes the record as `cancelled` with what was produced so far.

use std::collections::VecDeque;
use std::future::Future;
use std::io;
use std::pin::Pin;
use std::task::{Context, Poll};
use std::time::Duration;

use bytes::{Bytes, BytesMut};
use common::protocol::RequestStatus;
use futures_util::Stream;
use http_body::{Body, Frame};
use http_body_util::BodyExt;
use hyper::body::Incoming;

use super::anthropic::ChatToMessages;
use super::capture::{BodyCapture, StreamCapture};
use crate::balancer::{RequestLease, RequestOutcome};
use crate::state::AppState;
use crate::token::{self, StreamTap};

/// Turns of the scheduler the node connection's task gets to hand over its next frame.
/// Measured on one worker thread: the frame was never ready after one turn and always
/// after two.
const GATHER_TURNS: usize = 2;

/// Gathering stops once this much is queued, so that a long answer the node sent at
/// once still flows to the client in pieces instead of being buffered whole.
const MAX_GATHER_BYTES: usize = 64 * 1024;

/// Finishing a record: done when it is committed (or the commit wait ran out).
type Commit = Pin<Box<dyn Future<Output = ()> + Send>>;

/// A record to finish: why the stream failed, if it did, and the bytes that wait for
/// the commit (the terminal event and what followed it, or what the parser still held
/// at the end).
struct Settle {
    failure: Option<String>,
    then: Bytes,
}

/// A frame from the node, or the idle timeout running out while waiting for one.
type UpstreamFrame = Result<Option<Result<Frame<Bytes>, hyper::Error>>, tokio::time::error::Elapsed>;

pub struct TappedBody {
    upstream: Incoming,
    tap: StreamTap,
    /// Rewrites the node's chat chunks as Anthropic events, after the tap.
    transcoder: Option<ChatToMessages>,
    /// `None` once the record is finished.
    lease: Option<RequestLease>,
    queue: VecDeque<Bytes>,
    /// The record is ready to be finished (see `next`).
    settle: Option<Settle>,
    /// A commit that did not complete at once, and the bytes that wait for it.
    committing: Option<(Commit, Bytes)>,
    /// An error to end the client's stream with, after the queued bytes.
    failure: Option<io::Error>,
    ended: bool,
    idle_timeout: Duration,
    commit_wait: Duration,
    first_chunk: Option<Duration>,
    head_time: Duration,
    /// The node's bytes kept for the record, when the router stores bodies.
    captured: Option<StreamCapture>,
}

impl TappedBody {
    pub fn new(
        st: &AppState,
        lease: RequestLease,
        upstream: Incoming,
        tap: StreamTap,
        transcoder: Option<ChatToMessages>,
        head_time: Duration,
    ) -> Self {
        TappedBody {
            upstream,
            tap,
            transcoder,
            lease: Some(lease),
            queue: VecDeque::new(),
            settle: None,
            committing: None,
            failure: None,
            ended: false,
            idle_timeout: st.proxy.idle_timeout,
            commit_wait: st.proxy.commit_wait,
            first_chunk: None,
            head_time,
            captured: BodyCapture::of(&st.proxy).map(|c| c.stream()),
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
            if let Some(settle) = self.settle.take() {
                // The bytes before the terminal event never wait for the commit: if it
                // completes at once they leave with it, in one piece; if not, they go
                // to hyper now and the terminal event follows the commit.
                let mut commit = self.finish(settle.failure);
                let committed = std::future::poll_fn(|cx| Poll::Ready(commit.as_mut().poll(cx).is_ready())).await;
                if committed {
                    self.push(settle.then);
                } else if self.queue.is_empty() {
                    commit.await;
                    self.push(settle.then);
                } else {
                    self.committing = Some((commit, settle.then));
                }
            }
            if !self.queue.is_empty() {
                return Some(Ok(self.take_queued()));
            }
            if let Some((commit, then)) = self.committing.take() {
                commit.await;
                self.push(then);
                continue;
            }
            if let Some(e) = self.failure.take() {
                return Some(Err(e));
            }
            if self.ended {
                return None;
            }
            let frame = tokio::time::timeout(self.idle_timeout, self.upstream.frame()).await;
            self.on_frame(frame);
            self.gather_ready_frames().await;
        }
    }

    /// Takes in the frames the node has already sent, so that they leave in one write.
    /// hyper's client hands a body over one frame at a time from the connection's
    /// task: taking a frame wakes that task to decode the next one from its read
    /// buffer. This task steps aside for up to `GATHER_TURNS` turns of the scheduler to
    /// let it; if no frame is ready by then, nothing more has arrived and the queue
    /// goes out (at `MAX_GATHER_BYTES` at the latest). Without this, every SSE event
    /// cost a write to the client and a wake-up of the client's reader.
    pub async fn gather_ready_frames(&mut self) {
        while !self.ended && self.queued_bytes() < MAX_GATHER_BYTES {
            let mut ready = None;
            for _ in 0..GATHER_TURNS {
                StepAside::default().await;
                ready = std::future::poll_fn(|cx| {
                    Poll::Ready(match Pin::new(&mut self.upstream).poll_frame(cx) {
                        Poll::Ready(frame) => Some(frame),
                        Poll::Pending => None,
                    })
                })
                .await;
                if ready.is_some() {
                    break;
                }
            }
            match ready {
                Some(frame) => self.on_frame(Ok(frame)),
                None => return,
            }
        }
    }

    fn on_frame(&mut self, frame: UpstreamFrame) {
        match frame {
            Ok(Some(Ok(frame))) => {
                let Ok(data) = frame.into_data() else {
                    return;
                };
                if self.first_chunk.is_none() {
                    self.first_chunk = self.lease.as_ref().map(|l| l.draft().started.elapsed());
                }
                if let Some(c) = self.captured.as_mut() {
                    c.push(&data);
                }
                let mut out = self.tap.on_chunk(data);
                if let Some(t) = self.transcoder.as_mut() {
                    out.now = t.push(&out.now);
                    out.held = out.held.map(|held| t.push(&held));
                }
                if self.settle.is_some() {
                    // After the terminal event: everything waits for the commit.
                    self.settle_with(None, out.now);
                } else {
                    self.push(out.now);
                }
                if let Some(held) = out.held {
                    self.settle_with(None, held);
                }
            }
            Ok(None) => {
                let tail = self.end_of_stream();
                self.settle_with(None, tail);
                self.ended = true;
            }
            Ok(Some(Err(e))) => self.fail(format!("node broke the stream: {e}")),
            Err(_) => self.fail(format!("node sent nothing for {:?}", self.idle_timeout)),
        }
    }

    /// What the framers still held at the end of the node's stream, for the client.
    fn end_of_stream(&mut self) -> Bytes {
        let tail = self.tap.on_end();
        match self.transcoder.as_mut() {
            None => tail,
            Some(t) => {
                let mut all = BytesMut::from(&t.push(&tail)[..]);
                all.extend_from_slice(&t.finish());
                all.freeze()
            }
        }
    }

    /// Bytes taken from the node and not yet handed to hyper.
    fn queued_bytes(&self) -> usize {
        let waiting = self.settle.as_ref().map_or(0, |s| s.then.len());
        self.queue.iter().map(Bytes::len).sum::<usize>() + waiting
    }

    /// Everything queued, as one piece: one HTTP chunk, one write to the client.
    fn take_queued(&mut self) -> Bytes {
        if self.queue.len() == 1 {
            return self.queue.pop_front().unwrap_or_default();
        }
        let mut all = BytesMut::with_capacity(self.queue.iter().map(Bytes::len).sum());
        for b in self.queue.drain(..) {
            all.extend_from_slice(&b);
        }
        all.freeze()
    }

    fn push(&mut self, b: Bytes) {
        if !b.is_empty() {
            self.queue.push_back(b);
        }
    }

    /// The node failed mid-stream: record an error, forward what is buffered, then
    /// break the client's stream too, so it cannot mistake it for a complete one.
    fn fail(&mut self, reason: String) {
        self.failure = Some(io::Error::other(reason.clone()));
        let tail = self.end_of_stream();
        self.settle_with(Some(reason), tail);
        self.ended = true;
    }

    /// Marks the record ready to be finished, with `then` to send after its commit. If
    /// the terminal event came first, its verdict stands and `then` joins its bytes.
    fn settle_with(&mut self, failure: Option<String>, then: Bytes) {
        match self.settle.as_mut() {
            None => self.settle = Some(Settle { failure, then }),
            Some(settle) => {
                if !then.is_empty() {
                    let mut all = BytesMut::from(std::mem::take(&mut settle.then));
                    all.extend_from_slice(&then);
                    settle.then = all.freeze();
                }
            }
        }
    }

    /// Finishes the record once (T-12); the future completes when it is committed.
    fn finish(&mut self, failure: Option<String>) -> Commit {
        let Some(lease) = self.lease.take() else {
            return Box::pin(std::future::ready(()));
        };
        let incomplete = self.tap.incomplete() || self.transcoder.as_ref().is_some_and(ChatToMessages::incomplete);
        let error_message = failure
            .or_else(|| {
                self.tap
                    .error()
                    .map(|e| format!("node reported an error in the stream: {e}"))
            })
            .or_else(|| incomplete.then(|| "node ended the stream before its final event".to_string()));
        let reported = self.tap.reported_usage();
        let generated = self.tap.take_generated();
        let time_to_first_byte = Some(self.first_chunk.unwrap_or(self.head_time));
        let response_body = self.captured.as_mut().map(StreamCapture::take);
        let commit_wait = self.commit_wait;
        Box::pin(async move {
            let counted = token::settle(reported, &lease.draft().prompt, generated).await;
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
                time_to_first_byte,
                response_body,
            };
            lease.finish(outcome).wait(commit_wait).await;
        })
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
        let response_body = self.captured.as_mut().map(StreamCapture::take);
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
                response_body,
            });
        });
    }
}

/// Returns `Pending` once, after waking its own task: the tasks already woken run
/// first (tokio puts a task that woke itself at the back of the run queue). Unlike
/// `tokio::task::yield_now`, it does not make the worker poll the I/O driver.
#[derive(Default)]
struct StepAside {
    stepped: bool,
}

impl Future for StepAside {
    type Output = ();

    fn poll(mut self: Pin<&mut Self>, cx: &mut Context<'_>) -> Poll<()> {
        if self.stepped {
            return Poll::Ready(());
        }
        self.stepped = true;
        cx.waker().wake_by_ref();
        Poll::Pending
    }
}
