//! The balancer: picks a node for each request and accounts for how it ended.
//!
//! Selection: online, enabled nodes that serve the model (of one kind, for protocols
//! only that kind speaks); least active requests first; round-robin among ties. [`Balancer::begin_request`] returns a
//! [`RequestLease`]; every lease ends in exactly one `Balancer::finish_request`
//! (explicitly, or from `Drop` when the handler's future or the response body is
//! dropped: the client went away), which updates the node's [`NodeLoadState`] and
//! the Prometheus counters and queues the request's one record. A failed connection
//! attempt is [`RequestLease::abandon`]ed instead: it produces no record.

use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::{Duration, Instant};

use chrono::{DateTime, Utc};
use common::protocol::{RequestResponseRecord, RequestStatus, RequestType, TokenSource, TokenUsage};

use crate::keys::KeyPermit;
use crate::metrics::{Metrics, NodeLabels, RequestMetrics};
use crate::nodes::{Node, NodeId, NodeKind, NodeRegistry, NodeStatus};
use crate::recorder::{CommitTicket, Recorder};
use crate::store::RollupTotals;
use crate::token::Prompt;

/// Per-node counters (SPEC T-2/C-2/C-7). Loaded from the store at start-up, so a
/// restart changes no figure; updated only by `finish_request`.
#[derive(Debug, Default)]
pub struct NodeLoadState {
    active_requests: AtomicU64,
    total_requests: AtomicU64,
    successful_requests: AtomicU64,
    failed_requests: AtomicU64,
    cancelled_requests: AtomicU64,
    total_latency_ms: AtomicU64,
    total_input_tokens: AtomicU64,
    total_output_tokens: AtomicU64,
    total_tokens: AtomicU64,
}

/// A consistent-enough copy of a [`NodeLoadState`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadSnapshot {
    pub active_requests: u64,
    pub total_requests: u64,
    pub successful_requests: u64,
    /// Errors and cancellations.
    pub failed_requests: u64,
    pub cancelled_requests: u64,
    pub total_latency_ms: u64,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    pub total_tokens: u64,
}

fn saturating_add(a: &AtomicU64, v: u64) {
    let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(x.saturating_add(v)));
}

impl NodeLoadState {
    /// State of a node whose stored totals are `t`.
    pub fn from_totals(t: &RollupTotals) -> Self {
        NodeLoadState {
            active_requests: AtomicU64::new(0),
            total_requests: AtomicU64::new(t.request_count),
            successful_requests: AtomicU64::new(t.success_count),
            failed_requests: AtomicU64::new(t.error_count + t.cancelled_count),
            cancelled_requests: AtomicU64::new(t.cancelled_count),
            total_latency_ms: AtomicU64::new(t.duration_ms_sum),
            total_input_tokens: AtomicU64::new(t.input_tokens),
            total_output_tokens: AtomicU64::new(t.output_tokens),
            total_tokens: AtomicU64::new(t.total_tokens),
        }
    }

    pub fn active(&self) -> u64 {
        self.active_requests.load(Ordering::Relaxed)
    }

    pub fn snapshot(&self) -> LoadSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LoadSnapshot {
            active_requests: l(&self.active_requests),
            total_requests: l(&self.total_requests),
            successful_requests: l(&self.successful_requests),
            failed_requests: l(&self.failed_requests),
            cancelled_requests: l(&self.cancelled_requests),
            total_latency_ms: l(&self.total_latency_ms),
            total_input_tokens: l(&self.total_input_tokens),
            total_output_tokens: l(&self.total_output_tokens),
            total_tokens: l(&self.total_tokens),
        }
    }

    /// Accounts for one finished request (C-7): counts, latency and tokens.
    fn add_finished(&self, status: RequestStatus, duration_ms: u64, usage: &TokenUsage) {
        saturating_add(&self.total_requests, 1);
        match status {
            RequestStatus::Success => saturating_add(&self.successful_requests, 1),
            RequestStatus::Error => saturating_add(&self.failed_requests, 1),
            RequestStatus::Cancelled => {
                saturating_add(&self.failed_requests, 1);
                saturating_add(&self.cancelled_requests, 1);
            }
        }
        saturating_add(&self.total_latency_ms, duration_ms);
        saturating_add(&self.total_input_tokens, usage.input_tokens);
        saturating_add(&self.total_output_tokens, usage.output_tokens);
        saturating_add(&self.total_tokens, usage.total_tokens);
    }

    fn leave(&self) {
        let _ = self
            .active_requests
            .fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(x.saturating_sub(1)));
    }
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
        }
    }
}

/// Why no node was chosen.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NoNode {
    /// No live node lists the model.
    UnknownModel,
    /// Some node lists it, but none is online, enabled and untried.
    Unavailable,
}

#[derive(Clone)]
pub struct Balancer {
    inner: Arc<Inner>,
}

struct Inner {
    registry: Arc<NodeRegistry>,
    recorder: Recorder,
    metrics: Arc<Metrics>,
    next: AtomicUsize,
    /// Leases not ended yet, on every node: the recorder's measure of load.
    in_flight: AtomicUsize,
}

impl Balancer {
    pub fn new(registry: Arc<NodeRegistry>, recorder: Recorder, metrics: Arc<Metrics>) -> Self {
        Balancer {
            inner: Arc::new(Inner {
                registry,
                recorder,
                metrics,
                next: AtomicUsize::new(0),
                in_flight: AtomicUsize::new(0),
            }),
        }
    }

    pub fn registry(&self) -> &Arc<NodeRegistry> {
        &self.inner.registry
    }

    pub fn recorder(&self) -> &Recorder {
        &self.inner.recorder
    }

    /// The least-loaded routable node for `model`, skipping `tried`.
    pub fn select(&self, model: &str, tried: &[NodeId]) -> Result<Arc<Node>, NoNode> {
        self.select_kind(model, tried, None)
    }

    /// [`Balancer::select`] among the nodes of one `kind` (`None`: any kind); a model
    /// only other kinds serve is unknown here.
    pub fn select_kind(&self, model: &str, tried: &[NodeId], kind: Option<NodeKind>) -> Result<Arc<Node>, NoNode> {
        let mut candidates: Vec<(u64, Arc<Node>)> = Vec::new();
        let mut listed = false;
        self.inner.registry.for_each(|n| {
            let (serves, routable) = n.with_info(|i| {
                let fits = kind.is_none_or(|k| i.kind == k);
                (fits && !i.deleted && i.serves(model), fits && i.routable_for(model))
            });
            listed |= serves;
            if routable && !tried.contains(&n.id) {
                candidates.push((n.load.active(), n.clone()));
            }
        });
        let Some(min) = candidates.iter().map(|(a, _)| *a).min() else {
            return Err(if listed {
                NoNode::Unavailable
            } else {
                NoNode::UnknownModel
            });
        };
        candidates.retain(|(a, _)| *a == min);
        let turn = self.inner.next.fetch_add(1, Ordering::Relaxed);
        Ok(candidates.swap_remove(turn % candidates.len()).1)
    }

    /// Starts a request on `node`: it counts as active until its lease ends.
    pub fn begin_request(&self, node: Arc<Node>, draft: RecordDraft) -> RequestLease {
        node.load.active_requests.fetch_add(1, Ordering::Relaxed);
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
        node.load.leave();
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
        self.inner.recorder.record(
            build_record(draft, Some((node.id, node.name())), duration_ms, outcome),
            others,
        )
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

fn node_labels(node: &Node) -> NodeLabels {
    NodeLabels {
        node_id: node.id.to_string(),
        node: node.name(),
    }
}

/// Sets the node-up gauge from the node's status.
pub fn publish_node_up(metrics: &Metrics, node: &Node) {
    let up = node.with_info(|i| i.status == NodeStatus::Online && !i.deleted);
    metrics.node_up.get_or_create(&node_labels(node)).set(up as i64);
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
        self.node.load.leave();
        self.balancer.inner.in_flight.fetch_sub(1, Ordering::Relaxed);
        self.metrics.active_requests.dec();
        let labels = node_labels(&self.node);
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
