//! The health checker: polls every live node's model list (`GET /v1/models`, or
//! `/api/tags` for an Ollama node).
//!
//! Each round probes all nodes concurrently with a short timeout, refreshes their model
//! lists, marks a node `offline` (with the reason in `last_error`) after
//! `failures_before_offline` failed probes in a row and `online` as soon as it answers.
//! A node whose kind the operator did not set has it told from its telltale routes
//! ([`super::kind`]) whenever it comes (back) online: a server replaced behind the same
//! URL goes down first. A llama-server tells its slots (`GET /props` → `total_slots`)
//! with its telltales, or in one more request when its kind is set and it comes
//! online: its capacity unless the operator set one. It runs on its own task and
//! takes no lock that the routing path waits on for longer than a field update.

use std::sync::Arc;
use std::time::Duration;

use chrono::Utc;
use futures_util::future::join_all;
use serde_json::Value;

use super::{kind, Node, NodeKind, NodeRegistry, NodeStatus};
use crate::metrics::Metrics;
use crate::upstream::{CertificateCheck, UpstreamClient};

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
        let target = node.with_info(|i| ProbeTarget {
            base_url: i.base_url.clone(),
            api_key: i.api_key.clone(),
            check: i.certificate_check(),
            kind: i.kind,
            detect_kind: !i.kind_explicit && (i.redetect_kind || i.status != NodeStatus::Online),
            coming_online: i.status != NodeStatus::Online,
        });
        match self.models(&target).await {
            Ok((kind, slots, models)) => {
                let mut detected = None;
                node.update_info(|i| {
                    if target.detect_kind && !i.kind_explicit {
                        if i.kind != kind {
                            detected = Some(kind);
                        }
                        i.kind = kind;
                        i.redetect_kind = false;
                    }
                    if i.status != NodeStatus::Online {
                        tracing::info!(node = %i.name, kind = %i.kind, models = ?models, "node online");
                    }
                    if let Some(slots) = slots {
                        i.detected_slots = slots;
                    }
                    i.status = NodeStatus::Online;
                    i.models = models;
                    i.last_seen = Some(Utc::now());
                    i.consecutive_failures = 0;
                    i.last_error = None;
                });
                if let Some(kind) = detected {
                    if let Err(e) = self.registry.save_detected_kind(node, kind).await {
                        tracing::warn!(node = %node.name(), error = %e, "cannot store the node's kind");
                    }
                }
            }
            Err(reason) => node.update_info(|i| {
                i.consecutive_failures += 1;
                if i.consecutive_failures >= self.failures_before_offline || i.status == NodeStatus::Unknown {
                    if i.status != NodeStatus::Offline {
                        tracing::warn!(node = %i.name, %reason, "node offline");
                    }
                    i.status = NodeStatus::Offline;
                    i.last_error = Some(reason);
                }
            }),
        }
        super::publish_node_up(&self.metrics, node);
        // Back online, or with more slots: queued requests may go to it.
        self.registry.changed();
    }

    /// The node's kind (told again when `detect_kind`), its slots when it was asked
    /// (`Some(None)`: it tells none) and the models it lists.
    async fn models(&self, target: &ProbeTarget) -> Result<(NodeKind, Option<Option<u64>>, Vec<String>), String> {
        let key = target.api_key.as_deref();
        let (kind, slots) = if target.detect_kind {
            let telltales = kind::detect(&self.client, &target.base_url, key, target.check, self.timeout)
                .await
                .map_err(|e| e.to_string())?;
            (telltales.kind(), Some(telltales.slots()))
        } else if target.kind == NodeKind::LlamaCpp && target.coming_online {
            let url = format!("{}/props", target.base_url);
            let props = match self.client.get(&url, key, target.check, self.timeout).await {
                Ok((200, body)) => serde_json::from_slice::<Value>(&body).ok(),
                _ => None,
            };
            (target.kind, Some(props.as_ref().and_then(kind::slots_of_props)))
        } else {
            (target.kind, None)
        };
        let path = kind.models_path();
        let url = format!("{}{path}", target.base_url);
        match self.client.get(&url, key, target.check, self.timeout).await {
            Ok((200, body)) => parse_models(&body, path).map(|models| (kind, slots, models)),
            Ok((status, _)) => Err(format!("HTTP {status} from {path}")),
            Err(e) => Err(e.to_string()),
        }
    }
}

/// What a probe needs of a node, read under its lock once.
struct ProbeTarget {
    base_url: String,
    api_key: Option<String>,
    check: CertificateCheck,
    kind: NodeKind,
    detect_kind: bool,
    coming_online: bool,
}

/// Model ids of OpenAI's list (`{"data": [{"id"}]}`) or Ollama's (`{"models": [{"name"}]}`).
fn parse_models(body: &[u8], path: &str) -> Result<Vec<String>, String> {
    let v: Value = serde_json::from_slice(body).map_err(|e| format!("invalid {path} body: {e}"))?;
    let data = v
        .get("data")
        .or_else(|| v.get("models"))
        .and_then(Value::as_array)
        .ok_or_else(|| format!("no model list in {path}"))?;
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
            parse_models(br#"{"data":[{"id":"a"},{"id":"b"}]}"#, "/v1/models").unwrap(),
            vec!["a", "b"]
        );
        let tags = br#"{"models":[{"name":"c:latest","model":"c:latest","size":1}]}"#;
        assert_eq!(parse_models(tags, "/api/tags").unwrap(), vec!["c:latest"]);
        assert_eq!(
            parse_models(b"{}", "/api/tags").unwrap_err(),
            "no model list in /api/tags"
        );
        assert!(parse_models(b"garbage", "/v1/models").is_err());
    }
}
