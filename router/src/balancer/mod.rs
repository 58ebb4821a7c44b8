//! The balancer: admits each request to a node and accounts for how it ended.
//!
//! [`Balancer::admit`] places a request on a node with a free slot ([`placement`]:
//! among the nodes of one kind when the request's protocol needs it, least loaded
//! relative to weight and capacity, conversation affinity) or, when every
//! candidate is full, waits in the bounded priority queue ([`queue`]) until a slot
//! frees for it. It returns a [`RequestLease`]; every lease ends in exactly one
//! `Balancer::finish_request` (explicitly, or from `Drop` when the handler's future or
//! the response body is dropped: the client went away), which gives the slot back
//! (handing it to the next waiter), updates the node's [`NodeLoadState`] and the
//! Prometheus counters and queues the request's one record. A failed attempt is
//! [`RequestLease::abandon`]ed instead: it produces no record. A request that leaves
//! the queue without a node is recorded through [`Balancer::record_unrouted`].
//! It knows nothing of HTTP.

pub mod placement;
pub mod queue;

use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::protocol::{RequestResponseRecord, RequestStatus, RequestType, StoredBody, TokenSource, TokenUsage};

pub use crate::nodes::{publish_node_up, LoadSnapshot, NodeLoadState};
pub use placement::{session_key, NoNode, Wanted};
pub use queue::QueueStats;

use crate::keys::KeyPermit;
use crate::metrics::{Metrics, RequestMetrics};
use crate::nodes::{Node, NodeId, NodeRegistry, NodeStatus};
use crate::recorder::{CommitTicket, Recorder};
use crate::token::Prompt;
use placement::{AffinityResult, Placement, Placer};
use queue::{AdmissionQueue, Left, Turn};

/// How requests wait for and are spread over nodes.
#[derive(Debug, Clone, Copy)]
pub struct AdmissionSettings {
    /// Most requests waiting for a slot at once (0: a request that finds every node
    /// full is refused at once).
    pub queue_size: usize,
    /// Longest wait in the queue.
    pub queue_timeout: Duration,
    /// Requests in flight a conversation's node may have beyond the least busy
    /// candidate and still take the conversation's next request.
    pub affinity_margin: u64,
}

impl Default for AdmissionSettings {
    fn default() -> Self {
        AdmissionSettings {
            queue_size: 100,
            queue_timeout: Duration::from_secs(30),
            affinity_margin: 2,
        }
    }
}

/// Why a request got no node; its draft comes back to be recorded.
#[derive(Debug)]
pub struct Unplaced {
    pub draft: RecordDraft,
    pub why: Refusal,
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Refusal {
    NoNode(NoNode),
    /// Every candidate was full and so was the queue.
    QueueFull,
    /// Every candidate stayed full for the whole queue timeout.
    QueueTimeout(Duration),
}

/// What is known of a request before it ends.
#[derive(Debug)]
pub struct RecordDraft {
    pub timestamp: DateTime<Utc>,
    pub started: Instant,
    pub request_type: RequestType,
    pub model: String,
    pub client_ip: Option<String>,
    pub stream: bool,
    /// Kept to estimate input tokens if the node reports none.
    pub prompt: Prompt,
    /// The client key presented, `(id, name)` (`None`: anonymous), for the record.
    pub client_key: Option<(i64, String)>,
    /// Its admission, charged when the request ends (`None`: anonymous or refused).
    pub key: Option<KeyPermit>,
    /// The client's body, kept for the record when the router stores bodies.
    pub request_body: Option<StoredBody>,
}

/// How a request ended, with its token figures.
#[derive(Debug, Clone)]
pub struct RequestOutcome {
    pub status: RequestStatus,
    pub http_status: u16,
    pub error_message: Option<String>,
    pub usage: TokenUsage,
    pub token_source: TokenSource,
    pub time_to_first_byte: Option<Duration>,
    /// The node's answer, kept for the record when the router stores bodies.
    pub response_body: Option<StoredBody>,
}

impl RequestOutcome {
    /// A request that never reached a node: no tokens.
    pub fn rejected(http_status: u16, message: impl Into<String>) -> Self {
        RequestOutcome {
            status: RequestStatus::Error,
            http_status,
            error_message: Some(message.into()),
            usage: TokenUsage::default(),
            token_source: TokenSource::Reported,
            time_to_first_byte: None,
            response_body: None,
        }
    }
}

#[derive(Clone)]
pub struct Balancer {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<NodeRegistry>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    placer: Placer,
    queue: AdmissionQueue,
    /// Leases not ended yet, on every node: the recorder's measure of load.
    in_flight: AtomicUsize,
}

impl Balancer {
    pub fn new(
        registry: Arc<NodeRegistry>,
        recorder: Recorder,
        metrics: Arc<Metrics>,
        settings: AdmissionSettings,
    ) -> Self {
        let queue = AdmissionQueue::new(settings.queue_size, settings.queue_timeout, metrics.queue.clone());
        let balancer = Balancer {
            inner: Arc::new(Inner {
                placer: Placer::new(registry.clone(), settings.affinity_margin),
                registry,
                recorder,
                metrics,
                queue,
                in_flight: AtomicUsize::new(0),
            }),
        };
        // A node that changes (capacity raised, back online, enabled) may take waiters.
        let weak = Arc::downgrade(&balancer.inner);
        balancer.inner.registry.on_change(Box::new(move || {
            if let Some(inner) = weak.upgrade() {
                Balancer { inner }.dispatch();
            }
        }));
        balancer
    }

    pub fn registry(&self) -> &Arc<NodeRegistry> {
        &self.inner.registry
    }

    pub fn recorder(&self) -> &Recorder {
        &self.inner.recorder
    }

    pub fn queue_stats(&self) -> QueueStats {
        self.inner.queue.stats()
    }

    /// A node for the request, skipping `tried`: at once when a candidate has a free
    /// slot, else after waiting in the queue (at `priority`) for one to free. Dropping
    /// the future while it waits (the client left) records the request `cancelled`.
    pub async fn admit(
        &self,
        draft: RecordDraft,
        wanted: Wanted<'_>,
        priority: i64,
        tried: &[NodeId],
    ) -> Result<RequestLease, Unplaced> {
        match self.place(wanted, tried) {
            Placement::Placed(node) => return Ok(self.begin_request(node, draft)),
            Placement::NoNode(no) => {
                return Err(Unplaced {
                    draft,
                    why: Refusal::NoNode(no),
                })
            }
            Placement::Full => {}
        }
        let q = &self.inner.queue;
        let Ok((turn, slot)) = q.enqueue(priority, wanted, tried) else {
            return Err(Unplaced {
                draft,
                why: Refusal::QueueFull,
            });
        };
        let mut waiting = Waiting {
            balancer: self,
            turn,
            slot,
            draft: Some(draft),
            since: Instant::now(),
        };
        // A slot may have freed between the placement and the enqueue.
        self.dispatch();
        let slot = match tokio::time::timeout(q.timeout, &mut waiting.slot).await {
            Ok(Ok(slot)) => Some(slot),
            _ => waiting.leave(Left::TimedOut),
        };
        let waited = waiting.since.elapsed();
        let draft = waiting.draft.take().expect("a waiting request has its draft");
        match slot {
            Some(slot) => {
                q.served_after(waited);
                Ok(self.begin_request(slot.into_node(), draft))
            }
            None => Err(Unplaced {
                draft,
                why: Refusal::QueueTimeout(waited),
            }),
        }
    }

    /// Whether a node other than `tried` could take `wanted` now (busy or not): where a
    /// refused request may go next.
    pub fn has_candidate(&self, wanted: Wanted<'_>, tried: &[NodeId]) -> bool {
        self.inner.placer.candidate(wanted, tried).is_ok()
    }

    /// A node that could take `wanted` (the least busy; no slot taken), for what is not
    /// an inference request and needs no slot (Ollama's `/api/show`).
    pub fn candidate(&self, wanted: Wanted<'_>) -> Result<Arc<Node>, NoNode> {
        self.inner.placer.candidate(wanted, &[])
    }

    /// The node answered 429 or 503: it gets no new request for `retry_after`; the
    /// queue is looked at again when that ends.
    pub fn refused(&self, node: &Node, retry_after: Duration) {
        node.load.refuse_for(retry_after);
        let weak = Arc::downgrade(&self.inner);
        if let Ok(rt) = tokio::runtime::Handle::try_current() {
            rt.spawn(async move {
                tokio::time::sleep(retry_after + Duration::from_millis(1)).await;
                if let Some(inner) = weak.upgrade() {
                    Balancer { inner }.dispatch();
                }
            });
        }
    }

    fn place(&self, wanted: Wanted<'_>, tried: &[NodeId]) -> Placement {
        let (placement, affinity) = self.inner.placer.place(wanted, tried);
        match affinity {
            AffinityResult::None => {}
            AffinityResult::Hit => {
                self.inner.metrics.affinity.hits.inc();
            }
            AffinityResult::Miss => {
                self.inner.metrics.affinity.misses.inc();
            }
        }
        placement
    }

    /// Hands free slots to waiters (no lock unless some wait).
    fn dispatch(&self) {
        if self.inner.queue.is_empty() {
            return;
        }
        self.inner.queue.dispatch(|w| {
            let wanted = Wanted {
                model: &w.model,
                kind: w.kind,
                session: w.session,
            };
            match self.place(wanted, &w.tried) {
                Placement::Placed(node) => Some(NodeSlot {
                    node: Some(node),
                    balancer: self.clone(),
                }),
                _ => None,
            }
        });
    }

    /// Gives a slot of `node` back and hands it to a waiter if any.
    fn release_slot(&self, node: &Node) {
        node.load.leave();
        self.dispatch();
    }

    /// Starts a request on `node`, whose slot is taken for it: it counts as active
    /// until its lease ends.
    fn begin_request(&self, node: Arc<Node>, draft: RecordDraft) -> RequestLease {
        self.inner.in_flight.fetch_add(1, Ordering::Relaxed);
        let metrics = node.with_info(|i| self.inner.metrics.for_request(node.id, &i.name, &draft.model));
        metrics.active_requests.inc();
        RequestLease {
            balancer: self.clone(),
            node,
            metrics,
            draft: Some(draft),
        }
    }

    /// Records a request no node took (unknown model, none available, all failed).
    pub fn record_unrouted(&self, draft: RecordDraft, outcome: RequestOutcome) -> CommitTicket {
        let duration_ms = draft.started.elapsed().as_millis() as u64;
        let others = self.inner.in_flight.load(Ordering::Relaxed);
        self.inner
            .recorder
            .record(build_record(draft, None, duration_ms, outcome), others)
    }

    /// The one end of every lease (SPEC C-6): node counters, metrics, record.
    fn finish_request(
        &self,
        node: &Node,
        metrics: &RequestMetrics,
        draft: RecordDraft,
        outcome: RequestOutcome,
    ) -> CommitTicket {
        let others = self.inner.in_flight.fetch_sub(1, Ordering::Relaxed) - 1;
        let duration = draft.started.elapsed();
        let duration_ms = duration.as_millis() as u64;
        node.load.add_finished(outcome.status, duration_ms, &outcome.usage);

        metrics.active_requests.dec();
        let key_metrics = draft
            .key
            .as_ref()
            .map_or(&*self.inner.metrics.anonymous, KeyPermit::metrics);
        key_metrics.count(outcome.status, &outcome.usage);
        if let Some(key) = &draft.key {
            key.charge(&outcome.usage, draft.timestamp);
        }
        metrics.requests(outcome.status).inc();
        metrics.input_tokens.inc_by(outcome.usage.input_tokens);
        metrics.output_tokens.inc_by(outcome.usage.output_tokens);
        metrics.total_tokens.inc_by(outcome.usage.total_tokens);
        metrics.request_duration.observe(duration.as_secs_f64());
        if let Some(t) = outcome.time_to_first_byte {
            metrics.time_to_first_token.observe(t.as_secs_f64());
        }
        let ticket = self.inner.recorder.record(
            build_record(draft, Some((node.id, node.name())), duration_ms, outcome),
            others,
        );
        self.release_slot(node);
        ticket
    }

    /// A node refused a connection: mark it offline at once.
    pub fn connection_failed(&self, node: &Node, reason: &str) {
        node.update_info(|i| {
            if i.status != NodeStatus::Offline {
                tracing::warn!(node = %i.name, %reason, "node refused a connection; marked offline");
            }
            i.status = NodeStatus::Offline;
            i.last_error = Some(reason.to_string());
        });
        publish_node_up(&self.inner.metrics, node);
    }
}

/// A slot taken on a node for a queued request; given back if dropped unused (the
/// waiter left as it was handed the slot).
pub(crate) struct NodeSlot {
    node: Option<Arc<Node>>,
    balancer: Balancer,
}

impl NodeSlot {
    fn into_node(mut self) -> Arc<Node> {
        self.node.take().expect("an unused slot has its node")
    }
}

impl Drop for NodeSlot {
    fn drop(&mut self) {
        if let Some(node) = self.node.take() {
            self.balancer.release_slot(&node);
        }
    }
}

/// A request in the queue. Dropped before it is served or refused, its client left:
/// it leaves the queue at once and is recorded `cancelled`, without a node.
struct Waiting<'a> {
    balancer: &'a Balancer,
    turn: Turn,
    slot: tokio::sync::oneshot::Receiver<NodeSlot>,
    draft: Option<RecordDraft>,
    since: Instant,
}

impl Waiting<'_> {
    /// Leaves the queue; the slot if one was handed over meanwhile.
    fn leave(&mut self, why: Left) -> Option<NodeSlot> {
        if self.balancer.inner.queue.leave(self.turn, why) {
            None
        } else {
            self.slot.try_recv().ok()
        }
    }
}

impl Drop for Waiting<'_> {
    fn drop(&mut self) {
        let Some(draft) = self.draft.take() else {
            return;
        };
        // A slot handed over as the client left goes back (dropping it releases it).
        drop(self.leave(Left::Cancelled));
        let outcome = RequestOutcome {
            status: RequestStatus::Cancelled,
            http_status: 0,
            error_message: Some("client disconnected while queued".into()),
            usage: TokenUsage::default(),
            token_source: TokenSource::Reported,
            time_to_first_byte: None,
            response_body: None,
        };
        let _ = self.balancer.record_unrouted(draft, outcome);
    }
}

/// The record of a finished request. `duration_ms` is the one measurement that both the
/// record and `NodeLoadState` use, so their latency figures cannot drift apart.
fn build_record(
    draft: RecordDraft,
    node: Option<(NodeId, String)>,
    duration_ms: u64,
    o: RequestOutcome,
) -> RequestResponseRecord {
    let (node_id, node_name) = node.unzip();
    let (api_key_id, api_key_name) = draft.client_key.unzip();
    RequestResponseRecord {
        id: 0,
        timestamp: draft.timestamp,
        // On the router's clock, like the timestamp.
        completed_at: draft.timestamp + chrono::Duration::milliseconds(duration_ms as i64),
        request_type: draft.request_type,
        model: draft.model,
        node_id,
        node_name,
        client_ip: draft.client_ip,
        api_key_id,
        api_key_name,
        stream: draft.stream,
        status: o.status,
        http_status: o.http_status,
        error_message: o.error_message,
        duration_ms,
        // The same measurement the time-to-first-token histogram observes.
        time_to_first_token_ms: o.time_to_first_byte.map(|t| t.as_millis() as u64),
        input_tokens: o.usage.input_tokens,
        output_tokens: o.usage.output_tokens,
        total_tokens: o.usage.total_tokens,
        token_source: o.token_source,
        request_body: draft.request_body,
        response_body: o.response_body,
    }
}

/// A request in flight on a node. Ends in exactly one `finish_request`, or in
/// `abandon` for an attempt that never reached the node.
pub struct RequestLease {
    balancer: Balancer,
    node: Arc<Node>,
    /// Resolved when the lease began, so that it ends on the gauge it started on.
    metrics: Arc<RequestMetrics>,
    draft: Option<RecordDraft>,
}

impl RequestLease {
    pub fn node(&self) -> &Arc<Node> {
        &self.node
    }

    pub fn draft(&self) -> &RecordDraft {
        self.draft.as_ref().expect("a live lease has its draft")
    }

    pub fn finish(mut self, outcome: RequestOutcome) -> CommitTicket {
        let draft = self.draft.take().expect("a live lease has its draft");
        self.balancer.finish_request(&self.node, &self.metrics, draft, outcome)
    }

    /// The attempt failed before the node got the request: no record, and the draft
    /// goes back to the caller to try another node.
    pub fn abandon(mut self, reason: &str) -> RecordDraft {
        let draft = self.draft.take().expect("a live lease has its draft");
        self.balancer.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.active_requests.dec();
        self.balancer.release_slot(&self.node);
        let labels = self.node.labels();
        self.balancer
            .inner
            .metrics
            .upstream_failures
            .get_or_create(&labels)
            .inc();
        tracing::debug!(node = %labels.node, reason, "attempt abandoned");
        draft
    }
}

impl Drop for RequestLease {
    /// The request was dropped mid-way (the client went away before the response
    /// began): cancelled, with the prompt estimated since the node received it.
    fn drop(&mut self) {
        let Some(mut draft) = self.draft.take() else {
            return;
        };
        let prompt = std::mem::take(&mut draft.prompt);
        let balancer = self.balancer.clone();
        let node = self.node.clone();
        let metrics = self.metrics.clone();
        let finish = move |input: u64| {
            let outcome = RequestOutcome {
                status: RequestStatus::Cancelled,
                http_status: 0,
                error_message: Some("client disconnected".into()),
                usage: TokenUsage::new(input, 0, None),
                token_source: TokenSource::Estimated,
                time_to_first_byte: None,
                response_body: None,
            };
            let _ = balancer.finish_request(&node, &metrics, draft, outcome);
        };
        match tokio::runtime::Handle::try_current() {
            Ok(rt) => {
                rt.spawn(async move { finish(prompt.estimate().await) });
            }
            Err(_) => finish(prompt.estimate_blocking()),
        }
    }
}
