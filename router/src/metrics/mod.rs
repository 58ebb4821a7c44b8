//! Prometheus metrics (`GET /metrics`), with the `prometheus-client` crate.
//!
//! Counters of requests and tokens are fed by `finish_request` only, the same call
//! that updates `NodeLoadState` and queues the record, and start at boot from the
//! stored rollups, so they agree with every other figure of the router.

use std::collections::HashMap;
use std::sync::{Arc, Mutex};

use common::protocol::RequestStatus;
use prometheus_client::encoding::EncodeLabelSet;
use prometheus_client::metrics::counter::Counter;
use prometheus_client::metrics::family::Family;
use prometheus_client::metrics::gauge::Gauge;
use prometheus_client::metrics::histogram::{exponential_buckets, Histogram};
use prometheus_client::registry::Registry;

use crate::store::RollupTotals;

mod stored;

pub use stored::{StoredCounters, StoredTotals};

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct RequestLabels {
    pub node_id: String,
    pub node: String,
    pub model: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeModelLabels {
    pub node_id: String,
    pub node: String,
    pub model: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyLabels {
    /// The key's id, or `anonymous`.
    pub key_id: String,
    pub key: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct KeyRequestLabels {
    pub key_id: String,
    pub key: String,
    pub status: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct NodeLabels {
    pub node_id: String,
    pub node: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ResultLabels {
    pub result: String,
}

#[derive(Clone, Debug, Hash, PartialEq, Eq, EncodeLabelSet)]
pub struct ReasonLabels {
    pub reason: String,
}

type HistogramFamily = Family<NodeModelLabels, Histogram, fn() -> Histogram>;

/// The admission queue's metrics, resolved once.
#[derive(Clone)]
pub struct QueueMetrics {
    pub depth: Gauge,
    pub wait: Histogram,
    pub refused_full: Counter,
    pub refused_timeout: Counter,
    pub cancelled: Counter,
}

/// Affinity hits and misses, resolved once.
#[derive(Clone)]
pub struct AffinityMetrics {
    pub hits: Counter,
    pub misses: Counter,
}

fn latency_histogram() -> Histogram {
    Histogram::new(exponential_buckets(0.005, 2.0, 16))
}

/// The metrics a request on one node × model updates, resolved once: a request then
/// updates them without building label sets (nine strings) and hashing them in seven
/// family look-ups, which was 2 % of the proxy thread's time.
pub struct RequestMetrics {
    /// By [`RequestStatus`]: success, error, cancelled.
    requests: [Counter; 3],
    pub input_tokens: Counter,
    pub output_tokens: Counter,
    pub total_tokens: Counter,
    pub request_duration: Histogram,
    pub time_to_first_token: Histogram,
    pub active_requests: Gauge,
}

impl RequestMetrics {
    pub fn requests(&self, status: RequestStatus) -> &Counter {
        &self.requests[status_index(status)]
    }
}

/// The counters of one client key (or of anonymous requests), resolved once per name.
pub struct KeyMetrics {
    /// By [`RequestStatus`]: success, error, cancelled.
    requests: [Counter; 3],
    pub input_tokens: Counter,
    pub output_tokens: Counter,
    pub total_tokens: Counter,
}

impl KeyMetrics {
    /// Counts one finished request and its tokens.
    pub fn count(&self, status: RequestStatus, usage: &common::protocol::TokenUsage) {
        self.requests[status_index(status)].inc();
        self.input_tokens.inc_by(usage.input_tokens);
        self.output_tokens.inc_by(usage.output_tokens);
        self.total_tokens.inc_by(usage.total_tokens);
    }
}

fn status_index(status: RequestStatus) -> usize {
    match status {
        RequestStatus::Success => 0,
        RequestStatus::Error => 1,
        RequestStatus::Cancelled => 2,
    }
}

const STATUSES: [RequestStatus; 3] = [RequestStatus::Success, RequestStatus::Error, RequestStatus::Cancelled];

/// The `key_id` label of requests without a key.
pub const ANONYMOUS_LABEL: &str = "anonymous";

/// Resolved [`RequestMetrics`] by node id, then model, with the node name they carry.
type RequestMetricsCache = HashMap<i64, HashMap<String, (String, Arc<RequestMetrics>)>>;

/// The request and token counters, by node × model and by key.
#[derive(Default, Clone)]
pub struct TokenCounters {
    pub requests: Family<RequestLabels, Counter>,
    pub input_tokens: Family<NodeModelLabels, Counter>,
    pub output_tokens: Family<NodeModelLabels, Counter>,
    pub total_tokens: Family<NodeModelLabels, Counter>,
    pub key_requests: Family<KeyRequestLabels, Counter>,
    pub key_input_tokens: Family<KeyLabels, Counter>,
    pub key_output_tokens: Family<KeyLabels, Counter>,
    pub key_tokens: Family<KeyLabels, Counter>,
}

impl TokenCounters {
    /// Adds stored totals to a node × model's counters.
    fn add_node_model(&self, labels: &NodeModelLabels, t: &RollupTotals) {
        self.input_tokens.get_or_create(labels).inc_by(t.input_tokens);
        self.output_tokens.get_or_create(labels).inc_by(t.output_tokens);
        self.total_tokens.get_or_create(labels).inc_by(t.total_tokens);
        for (status, n) in STATUSES
            .into_iter()
            .zip([t.success_count, t.error_count, t.cancelled_count])
        {
            if n > 0 {
                self.requests
                    .get_or_create(&request_labels(labels, status.as_str()))
                    .inc_by(n);
            }
        }
    }

    /// Adds stored totals to a key's counters.
    fn add_key(&self, labels: &KeyLabels, t: &RollupTotals) {
        self.key_input_tokens.get_or_create(labels).inc_by(t.input_tokens);
        self.key_output_tokens.get_or_create(labels).inc_by(t.output_tokens);
        self.key_tokens.get_or_create(labels).inc_by(t.total_tokens);
        for (status, n) in STATUSES
            .into_iter()
            .zip([t.success_count, t.error_count, t.cancelled_count])
        {
            let labels = KeyRequestLabels {
                key_id: labels.key_id.clone(),
                key: labels.key.clone(),
                status: status.as_str().to_string(),
            };
            self.key_requests.get_or_create(&labels).inc_by(n);
        }
    }

    fn clear(&self) {
        self.requests.clear();
        self.input_tokens.clear();
        self.output_tokens.clear();
        self.total_tokens.clear();
        self.key_requests.clear();
        self.key_input_tokens.clear();
        self.key_output_tokens.clear();
        self.key_tokens.clear();
    }

    fn register(&self, registry: &mut Registry) {
        registry.register(
            "requests",
            "Requests finished, by node, model and status",
            self.requests.clone(),
        );
        registry.register(
            "input_tokens",
            "Input (prompt) tokens, by node and model",
            self.input_tokens.clone(),
        );
        registry.register(
            "output_tokens",
            "Output (completion) tokens, by node and model",
            self.output_tokens.clone(),
        );
        registry.register("tokens", "Total tokens, by node and model", self.total_tokens.clone());
        registry.register(
            "key_requests",
            "Requests finished, by client key (key_id=\"anonymous\": without a key) and status",
            self.key_requests.clone(),
        );
        registry.register(
            "key_input_tokens",
            "Input (prompt) tokens, by client key",
            self.key_input_tokens.clone(),
        );
        registry.register(
            "key_output_tokens",
            "Output (completion) tokens, by client key",
            self.key_output_tokens.clone(),
        );
        registry.register("key_tokens", "Total tokens, by client key", self.key_tokens.clone());
    }
}

pub struct Metrics {
    registry: Registry,
    request_metrics: Mutex<RequestMetricsCache>,
    /// Counted by `finish_request` (exposed unless `stored` is set).
    counters: TokenCounters,
    /// On a store shared by replicas: the counters exposed, filled from the rollups at
    /// each scrape.
    stored: Option<StoredCounters>,
    pub request_duration: HistogramFamily,
    pub time_to_first_token: HistogramFamily,
    pub active_requests: Family<NodeLabels, Gauge>,
    pub node_up: Family<NodeLabels, Gauge>,
    pub upstream_failures: Family<NodeLabels, Counter>,
    /// Client connections the router closed, by why (`server`).
    pub connections_closed: Family<ReasonLabels, Counter>,
    /// The counters of requests made without a key.
    pub anonymous: Arc<KeyMetrics>,
    pub queue: QueueMetrics,
    pub affinity: AffinityMetrics,
}

impl Default for Metrics {
    fn default() -> Self {
        Self::new()
    }
}

impl Metrics {
    /// Counters of this process's requests, started from the rollups at boot.
    pub fn new() -> Self {
        Self::with_counters(None)
    }

    /// For a store shared by router replicas: the request and token counters exposed
    /// are the rollups' (every replica's), read at each scrape (`encode_stored`).
    pub fn from_store() -> Self {
        Self::with_counters(Some(StoredCounters::default()))
    }

    fn with_counters(stored: Option<StoredCounters>) -> Self {
        let mut registry = Registry::with_prefix("llm_router");
        let queue_left: Family<ReasonLabels, Counter> = Family::default();
        let left = |reason: &str| {
            queue_left
                .get_or_create(&ReasonLabels { reason: reason.into() })
                .clone()
        };
        let queue = QueueMetrics {
            depth: Gauge::default(),
            wait: Histogram::new(exponential_buckets(0.001, 2.0, 18)),
            refused_full: left("full"),
            refused_timeout: left("timeout"),
            cancelled: left("cancelled"),
        };
        let affinity: Family<ResultLabels, Counter> = Family::default();
        let result = |r: &str| affinity.get_or_create(&ResultLabels { result: r.into() }).clone();
        let m = Metrics {
            registry: Registry::default(),
            request_metrics: Mutex::default(),
            counters: TokenCounters::default(),
            stored,
            request_duration: Family::new_with_constructor(latency_histogram),
            time_to_first_token: Family::new_with_constructor(latency_histogram),
            active_requests: Family::default(),
            node_up: Family::default(),
            upstream_failures: Family::default(),
            connections_closed: Family::default(),
            anonymous: Arc::new(KeyMetrics {
                requests: STATUSES.map(|_| Counter::default()),
                input_tokens: Counter::default(),
                output_tokens: Counter::default(),
                total_tokens: Counter::default(),
            }),
            queue,
            affinity: AffinityMetrics {
                hits: result("hit"),
                misses: result("miss"),
            },
        };
        let m = Metrics {
            anonymous: m.for_key_labels(KeyLabels {
                key_id: ANONYMOUS_LABEL.into(),
                key: ANONYMOUS_LABEL.into(),
            }),
            ..m
        };
        registry.register(
            "queue_depth",
            "Requests waiting in the admission queue for a node slot",
            m.queue.depth.clone(),
        );
        registry.register(
            "queue_wait_seconds",
            "Time a request waited in the admission queue before a node took it",
            m.queue.wait.clone(),
        );
        registry.register(
            "queue_refused",
            "Requests that left the admission queue without a node: full (refused at once), timeout, cancelled (client left)",
            queue_left,
        );
        registry.register(
            "affinity",
            "Requests of a known conversation (x-session-id or prompt prefix): hit = sent back to its node, miss = to another",
            affinity,
        );
        match &m.stored {
            Some(stored) => stored.counters.register(&mut registry),
            None => m.counters.register(&mut registry),
        }
        registry.register(
            "request_duration_seconds",
            "Time from request to the end of the response",
            m.request_duration.clone(),
        );
        registry.register(
            "time_to_first_token_seconds",
            "Time from request to the first body byte of the node's answer",
            m.time_to_first_token.clone(),
        );
        registry.register(
            "active_requests",
            "Requests in flight, by node",
            m.active_requests.clone(),
        );
        registry.register("node_up", "1 when the node is online, else 0", m.node_up.clone());
        registry.register(
            "upstream_failures",
            "Attempts that failed before any byte reached the client (then failed over)",
            m.upstream_failures.clone(),
        );
        registry.register(
            "client_connections_closed",
            "Client connections the router closed: head_timeout, keep_alive_timeout, send_timeout (the client stopped reading), evicted (to make room at the cap), over_cap (every connection busy)",
            m.connections_closed.clone(),
        );
        Metrics { registry, ..m }
    }

    /// The counters of key `key_id` named `name` (a renamed key gets new ones: its
    /// label changed).
    pub fn for_key(&self, key_id: i64, name: &str) -> Arc<KeyMetrics> {
        self.for_key_labels(KeyLabels {
            key_id: key_id.to_string(),
            key: name.to_string(),
        })
    }

    fn for_key_labels(&self, labels: KeyLabels) -> Arc<KeyMetrics> {
        Arc::new(KeyMetrics {
            requests: STATUSES.map(|s| {
                self.counters
                    .key_requests
                    .get_or_create(&KeyRequestLabels {
                        key_id: labels.key_id.clone(),
                        key: labels.key.clone(),
                        status: s.as_str().to_string(),
                    })
                    .clone()
            }),
            input_tokens: self.counters.key_input_tokens.get_or_create(&labels).clone(),
            output_tokens: self.counters.key_output_tokens.get_or_create(&labels).clone(),
            total_tokens: self.counters.key_tokens.get_or_create(&labels).clone(),
        })
    }

    /// The metrics of requests on node `node_id` (named `node`) for `model`. A renamed
    /// node gets new ones: its label changed.
    pub fn for_request(&self, node_id: i64, node: &str, model: &str) -> Arc<RequestMetrics> {
        let mut cache = self.request_metrics.lock().unwrap_or_else(|p| p.into_inner());
        let by_model = cache.entry(node_id).or_default();
        if let Some((name, m)) = by_model.get(model) {
            if name == node {
                return m.clone();
            }
        }
        let labels = NodeModelLabels {
            node_id: node_id.to_string(),
            node: node.to_string(),
            model: model.to_string(),
        };
        let node_labels = NodeLabels {
            node_id: labels.node_id.clone(),
            node: labels.node.clone(),
        };
        let m = Arc::new(RequestMetrics {
            requests: STATUSES.map(|s| {
                self.counters
                    .requests
                    .get_or_create(&request_labels(&labels, s.as_str()))
                    .clone()
            }),
            input_tokens: self.counters.input_tokens.get_or_create(&labels).clone(),
            output_tokens: self.counters.output_tokens.get_or_create(&labels).clone(),
            total_tokens: self.counters.total_tokens.get_or_create(&labels).clone(),
            request_duration: self.request_duration.get_or_create(&labels).clone(),
            time_to_first_token: self.time_to_first_token.get_or_create(&labels).clone(),
            active_requests: self.active_requests.get_or_create(&node_labels).clone(),
        });
        by_model.insert(model.to_string(), (node.to_string(), m.clone()));
        m
    }

    /// Starts the token and request counters of a node × model at stored totals.
    pub fn seed(&self, labels: &NodeModelLabels, t: &RollupTotals) {
        self.counters.add_node_model(labels, t);
    }

    /// Starts the counters of a key (or anonymous) at its stored totals.
    pub fn seed_key(&self, key: &KeyMetrics, t: &RollupTotals) {
        key.input_tokens.inc_by(t.input_tokens);
        key.output_tokens.inc_by(t.output_tokens);
        key.total_tokens.inc_by(t.total_tokens);
        for (status, n) in STATUSES
            .into_iter()
            .zip([t.success_count, t.error_count, t.cancelled_count])
        {
            key.requests[status_index(status)].inc_by(n);
        }
    }

    /// The text exposition format.
    pub fn encode(&self) -> String {
        let mut out = String::new();
        prometheus_client::encoding::text::encode(&mut out, &self.registry).expect("writing to a String cannot fail");
        out
    }
}

fn request_labels(l: &NodeModelLabels, status: &str) -> RequestLabels {
    RequestLabels {
        node_id: l.node_id.clone(),
        node: l.node.clone(),
        model: l.model.clone(),
        status: status.to_string(),
    }
}
