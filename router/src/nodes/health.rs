//! The health checker: polls every live node's `GET {base_url}/v1/models`.
//!
//! Each round probes all nodes concurrently with a short timeout, refreshes their model
//! lists, marks a node `offline` after `failures_before_offline` failed probes in a row
//! and `online` as soon as it answers. It runs on its own task and takes no lock that
//! the routing path waits on for longer than a field update.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::future::join_all;
use serde_json::Value;

use super::{Node, NodeRegistry, NodeStatus};
use crate::metrics::Metrics;
use crate::upstream::UpstreamClient;

#[derive(Clone)]
pub struct HealthChecker {
    pub registry: Arc<NodeRegistry>,
    pub client: UpstreamClient,
    pub metrics: Arc<Metrics>,
    pub interval: Duration,
    pub timeout: Duration,
    pub failures_before_offline: u32,
}

impl HealthChecker {
    /// Probes forever, one round per interval.
    pub async fn run(self) {
        // The first round is due one interval from now: start-up probes on its own.
        let mut tick = tokio::time::interval_at(tokio::time::Instant::now() + self.interval, self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        loop {
            tick.tick().await;
            self.probe_all().await;
        }
    }

    pub async fn probe_all(&self) {
        let nodes = self.registry.live();
        join_all(nodes.iter().map(|n| self.probe(n))).await;
    }

    /// Probes one node and applies the result.
    pub async fn probe(&self, node: &Arc<Node>) {
        let (url, key) = node.with_info(|i| (format!("{}/v1/models", i.base_url), i.api_key.clone()));
        let result = self.client.get(&url, key.as_deref(), self.timeout).await;
        let models = match result {
            Ok((200, body)) => parse_models(&body),
            Ok((status, _)) => Err(format!("HTTP {status}")),
            Err(e) => Err(e.to_string()),
        };
        match models {
            Ok(models) => node.update_info(|i| {
                if i.status != NodeStatus::Online {
                    tracing::info!(node = %i.name, models = ?models, "node online");
                }
                i.status = NodeStatus::Online;
                i.models = models;
                i.last_seen = Some(Utc::now());
                i.consecutive_failures = 0;
            }),
            Err(reason) => node.update_info(|i| {
                i.consecutive_failures += 1;
                if i.consecutive_failures >= self.failures_before_offline || i.status == NodeStatus::Unknown {
                    if i.status != NodeStatus::Offline {
                        tracing::warn!(node = %i.name, %reason, "node offline");
                    }
                    i.status = NodeStatus::Offline;
                }
            }),
        }
        crate::balancer::publish_node_up(&self.metrics, node);
    }
}

fn parse_models(body: &[u8]) -> Result<Vec<String>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid /v1/models body: {e}"))?;
    let data = v
        .get("data")
        .or_else(|| v.get("models"))
        .and_then(Value::as_array)
        .ok_or("no data array in /v1/models")?;
    Ok(data
        .iter()
        .filter_map(|m| m.get("id").or_else(|| m.get("name")).and_then(Value::as_str))
        .map(str::to_string)
        .collect())
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn models_of_openai_and_ollama_shapes() {
        assert_eq!(
            parse_models(br#"{"data":[{"id":"a"},{"id":"b"}]}"#).unwrap(),
            vec!["a", "b"]
        );
        assert_eq!(parse_models(br#"{"models":[{"name":"c"}]}"#).unwrap(), vec!["c"]);
        assert!(parse_models(b"garbage").is_err());
    }
}
