//! Statistics for the dashboard API (SPEC T-7/C-10, I-1…I-5).
//!
//! Node figures come from `NodeLoadState` (in memory, loaded from the store at boot),
//! or, on a store shared by router replicas, from the rollups and every live
//! replica's requests in flight (`node_figures`); token figures come from the hourly
//! rollups, which are kept forever. Daily and
//! monthly series are built from UTC hours: each hour counts in the local day (or
//! month) of its start in the requested IANA time zone. That is exact for every zone
//! whose offset is a whole number of hours (DST included); for zones with a :30 or :45
//! offset, the hour that straddles local midnight counts in the day it starts in.
//! The usage export (`export`) splits those days by key, node and model; the speed
//! figures (`speed`) come from the history of a recent window.

mod export;
mod keys;
mod series;
mod speed;

use std::collections::HashMap;

use common::protocol::{
    DashboardNode, DashboardNodes, DashboardStats, KeyTokenStats, ModelTokenStats, NodeTokenStats, QueueFigures,
    TokenStats,
};

pub use export::{usage_export, ExportQuery, Period, UsageExport, UsageRow};
pub use keys::{dashboard_keys, key_usage, KeyUsage};
pub use series::{daily, monthly, DailyQuery, MonthlyQuery};
pub use speed::{speed, DEFAULT_WINDOW_MINUTES, MAX_WINDOW_MINUTES};

use crate::balancer::QueueStats;
use crate::cluster::Cluster;
use crate::keys::KeyRing;
use crate::metrics::{KeyLabels, NodeModelLabels, StoredTotals, ANONYMOUS_LABEL};
use crate::nodes::{LoadSnapshot, NodeId, NodeRegistry, NodeStatus};
use crate::store::{GroupBy, RollupFilter, Store, StoreError, ANONYMOUS};

/// Errors of statistics queries.
#[derive(Debug, thiserror::Error)]
pub enum StatsError {
    #[error("invalid parameter '{param}': {message}")]
    BadParam { param: &'static str, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

pub fn bad(param: &'static str, message: impl Into<String>) -> StatsError {
    StatsError::BadParam {
        param,
        message: message.into(),
    }
}

fn ratio(total: u64, count: u64) -> f64 {
    if count == 0 {
        0.0
    } else {
        total as f64 / count as f64
    }
}

/// Each node's figures: this router's own (`NodeLoadState`), or, with replicas on a
/// shared store (`cluster`), the rollups' totals, which hold every replica's
/// committed requests, and every live replica's requests in flight. While the shared
/// store cannot be read, a replica shows its own figures (what the store had when it
/// started and what it served since, records waiting in memory included).
pub async fn node_figures(
    store: &Store,
    registry: &NodeRegistry,
    cluster: Option<&Cluster>,
) -> HashMap<NodeId, LoadSnapshot> {
    let own = || registry.all().iter().map(|n| (n.id, n.load.snapshot())).collect();
    if cluster.is_none() {
        return own();
    }
    let totals: HashMap<NodeId, crate::store::RollupTotals> =
        match store.rollup_totals(GroupBy::Node, &RollupFilter::default()).await {
            Ok(rows) => rows.into_iter().filter_map(|(k, t)| Some((k.node_id?, t))).collect(),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the rollups: showing this replica's own node figures");
                return own();
            }
        };
    registry
        .all()
        .iter()
        .map(|n| {
            let t = totals.get(&n.id).copied().unwrap_or_default();
            let active = n.load.active() + n.load.elsewhere();
            (n.id, LoadSnapshot::from_totals(&t, active))
        })
        .collect()
}

/// Every node, deleted ones included, with load and token totals (T-8, I-1).
pub fn dashboard_nodes(registry: &NodeRegistry, figures: &HashMap<NodeId, LoadSnapshot>) -> DashboardNodes {
    let nodes = registry
        .all()
        .iter()
        .map(|n| {
            let info = n.info();
            let load = figures.get(&n.id).copied().unwrap_or_default();
            let status = if info.enabled { info.status.as_str() } else { "disabled" };
            DashboardNode {
                id: n.id,
                name: info.name,
                base_url: info.base_url,
                status: status.to_string(),
                models: info.models,
                active_requests: load.active_requests,
                total_requests: load.total_requests,
                successful_requests: load.successful_requests,
                failed_requests: load.failed_requests,
                average_response_time_ms: ratio(load.total_latency_ms, load.total_requests),
                total_input_tokens: load.total_input_tokens,
                total_output_tokens: load.total_output_tokens,
                total_tokens: load.total_tokens,
                average_tokens_per_request: ratio(load.total_tokens, load.total_requests),
                last_seen: info.last_seen,
                deleted: info.deleted,
                kind: info.kind.as_str().to_string(),
                last_error: info.last_error,
            }
        })
        .collect();
    DashboardNodes { nodes }
}

/// Router-wide figures (T-9, I-2): the sums over every node, deleted ones included.
pub fn dashboard_stats(
    registry: &NodeRegistry,
    figures: &HashMap<NodeId, LoadSnapshot>,
    queue: QueueStats,
) -> DashboardStats {
    let mut s = DashboardStats {
        total_nodes: 0,
        online_nodes: 0,
        offline_nodes: 0,
        total_requests: 0,
        successful_requests: 0,
        failed_requests: 0,
        active_requests: 0,
        average_response_time_ms: 0.0,
        total_input_tokens: 0,
        total_output_tokens: 0,
        total_tokens: 0,
        queue: QueueFigures {
            depth: queue.depth,
            served: queue.served,
            average_wait_ms: ratio(queue.wait_ms, queue.served),
            full: queue.full,
            timed_out: queue.timed_out,
            cancelled: queue.cancelled,
        },
    };
    let mut latency = 0u64;
    for n in registry.all() {
        let (deleted, status) = n.with_info(|i| (i.deleted, i.status));
        if !deleted {
            s.total_nodes += 1;
            match status {
                NodeStatus::Online => s.online_nodes += 1,
                NodeStatus::Offline | NodeStatus::Unknown => s.offline_nodes += 1,
            }
        }
        let l = figures.get(&n.id).copied().unwrap_or_default();
        s.total_requests += l.total_requests;
        s.successful_requests += l.successful_requests;
        s.failed_requests += l.failed_requests;
        s.active_requests += l.active_requests;
        latency = latency.saturating_add(l.total_latency_ms);
        s.total_input_tokens = s.total_input_tokens.saturating_add(l.total_input_tokens);
        s.total_output_tokens = s.total_output_tokens.saturating_add(l.total_output_tokens);
        s.total_tokens = s.total_tokens.saturating_add(l.total_tokens);
    }
    s.average_response_time_ms = ratio(latency, s.total_requests);
    s
}

/// Totals, by node and by model, from the rollups (T-10, I-3).
pub async fn token_stats(
    store: &Store,
    registry: &NodeRegistry,
    keys: &KeyRing,
    filter: &RollupFilter,
) -> Result<TokenStats, StatsError> {
    let names: HashMap<i64, String> = registry.all().iter().map(|n| (n.id, n.name())).collect();
    // One snapshot: Σ by_node = Σ by_model = Σ by_key = the totals, even during a commit.
    let mut groupings = store
        .rollup_totals_together(&[GroupBy::Node, GroupBy::Model, GroupBy::Key], filter)
        .await?
        .into_iter();
    let mut next = || groupings.next().unwrap_or_default();
    let (node_rows, model_rows, key_rows) = (next(), next(), next());
    let key_names: HashMap<i64, String> = keys.all().iter().map(|k| (k.id, k.settings().name.clone())).collect();
    let by_key = key_rows
        .into_iter()
        .map(|(k, t)| {
            let key_id = k.key_id.filter(|id| *id != ANONYMOUS);
            KeyTokenStats {
                key_id,
                key_name: match key_id {
                    None => "anonymous".to_string(),
                    Some(id) => key_names.get(&id).cloned().unwrap_or_else(|| format!("key {id}")),
                },
                input_tokens: t.input_tokens,
                output_tokens: t.output_tokens,
                total_tokens: t.total_tokens,
                request_count: t.request_count,
            }
        })
        .collect();
    let by_node: Vec<NodeTokenStats> = node_rows
        .into_iter()
        .map(|(k, t)| {
            let node_id = k.node_id.unwrap_or_default();
            NodeTokenStats {
                node_id,
                node_name: names
                    .get(&node_id)
                    .cloned()
                    .unwrap_or_else(|| format!("node {node_id}")),
                input_tokens: t.input_tokens,
                output_tokens: t.output_tokens,
                total_tokens: t.total_tokens,
                request_count: t.request_count,
            }
        })
        .collect();
    let mut totals = crate::store::RollupTotals::default();
    let by_model: Vec<ModelTokenStats> = model_rows
        .into_iter()
        .map(|(k, t)| {
            totals.add(&t);
            ModelTokenStats {
                model: k.model.unwrap_or_default(),
                input_tokens: t.input_tokens,
                output_tokens: t.output_tokens,
                total_tokens: t.total_tokens,
                request_count: t.request_count,
            }
        })
        .collect();
    Ok(TokenStats {
        total_input_tokens: totals.input_tokens,
        total_output_tokens: totals.output_tokens,
        total_tokens: totals.total_tokens,
        request_count: totals.request_count,
        estimated_request_count: totals.estimated_count,
        by_node,
        by_model,
        by_key,
    })
}

/// The rollups' request and token totals by node × model and by key, labelled as
/// `/metrics` shows them (for replicas on a shared store: `Metrics::encode_stored`).
pub async fn counter_totals(
    store: &Store,
    registry: &NodeRegistry,
    keys: &KeyRing,
) -> Result<StoredTotals, StatsError> {
    let mut groupings = store
        .rollup_totals_together(&[GroupBy::NodeAndModel, GroupBy::Key], &RollupFilter::default())
        .await?
        .into_iter();
    let (node_rows, key_rows) = (
        groupings.next().unwrap_or_default(),
        groupings.next().unwrap_or_default(),
    );
    let names: HashMap<i64, String> = registry.all().iter().map(|n| (n.id, n.name())).collect();
    let key_names: HashMap<i64, String> = keys.all().iter().map(|k| (k.id, k.settings().name.clone())).collect();
    let by_node_model = node_rows
        .into_iter()
        .filter_map(|(k, t)| {
            let node_id = k.node_id?;
            let labels = NodeModelLabels {
                node_id: node_id.to_string(),
                node: names.get(&node_id).cloned().unwrap_or_default(),
                model: k.model?,
            };
            Some((labels, t))
        })
        .collect();
    let by_key = key_rows
        .into_iter()
        .map(|(k, t)| {
            let labels = match k.key_id.filter(|id| *id != ANONYMOUS) {
                None => KeyLabels {
                    key_id: ANONYMOUS_LABEL.into(),
                    key: ANONYMOUS_LABEL.into(),
                },
                Some(id) => KeyLabels {
                    key_id: id.to_string(),
                    key: key_names.get(&id).cloned().unwrap_or_else(|| format!("key {id}")),
                },
            };
            (labels, t)
        })
        .collect();
    Ok(StoredTotals { by_node_model, by_key })
}
