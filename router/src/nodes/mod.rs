//! The node registry: every node the router knows, live or deleted, with its state.
//!
//! A [`Node`] couples what the operator configured and the health checker observed
//! ([`NodeInfo`], behind a lock) with its [`NodeLoadState`] (atomics, updated by the
//! balancer). Deleted nodes stay in the registry, out of routing and health checks,
//! so their statistics remain listed. Changes are written to the store first, then
//! applied in memory.

pub mod health;

use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};

use crate::balancer::NodeLoadState;
use crate::store::{NewNode, NodeChanges, Store, StoreError, StoredNode};

pub type NodeId = i64;

/// Errors of node management.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid base_url: {0}")]
    InvalidUrl(String),
    #[error("a node with base_url {0} already exists")]
    Duplicate(String),
    #[error("node {0} not found")]
    NotFound(NodeId),
    #[error(transparent)]
    Store(StoreError),
}

impl From<StoreError> for NodeError {
    fn from(e: StoreError) -> Self {
        match e {
            StoreError::DuplicateBaseUrl(u) => NodeError::Duplicate(u),
            other => NodeError::Store(other),
        }
    }
}

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum NodeStatus {
    /// Registered, not probed yet.
    Unknown,
    Online,
    Offline,
}

impl NodeStatus {
    pub fn as_str(self) -> &'static str {
        match self {
            NodeStatus::Unknown => "unknown",
            NodeStatus::Online => "online",
            NodeStatus::Offline => "offline",
        }
    }
}

/// Configuration and observed health of a node.
#[derive(Debug, Clone)]
pub struct NodeInfo {
    pub name: String,
    pub base_url: String,
    pub api_key: Option<String>,
    pub enabled: bool,
    /// Operator's switch: ask this node for `include_usage` on streams.
    pub include_usage: bool,
    /// Learned: the node rejected `stream_options` once; do not ask again.
    pub include_usage_rejected: bool,
    pub source: String,
    pub status: NodeStatus,
    pub models: Vec<String>,
    pub last_seen: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    pub deleted: bool,
}

impl NodeInfo {
    pub fn routable_for(&self, model: &str) -> bool {
        self.enabled && !self.deleted && self.status == NodeStatus::Online && self.serves(model)
    }

    pub fn serves(&self, model: &str) -> bool {
        self.models.iter().any(|m| m == model)
    }

    /// Whether a stream to this node should carry `include_usage`.
    pub fn wants_include_usage(&self) -> bool {
        self.include_usage && !self.include_usage_rejected
    }
}

#[derive(Debug)]
pub struct Node {
    pub id: NodeId,
    info: RwLock<NodeInfo>,
    pub load: NodeLoadState,
}

impl Node {
    pub fn new(stored: StoredNode, load: NodeLoadState) -> Node {
        Node {
            id: stored.id,
            info: RwLock::new(NodeInfo {
                name: stored.name,
                base_url: stored.base_url,
                api_key: stored.api_key,
                enabled: stored.enabled,
                include_usage: stored.include_usage,
                include_usage_rejected: false,
                source: stored.source,
                status: NodeStatus::Unknown,
                models: Vec::new(),
                last_seen: None,
                consecutive_failures: 0,
                deleted: stored.deleted_at.is_some(),
            }),
            load,
        }
    }

    /// A copy of the node's info.
    pub fn info(&self) -> NodeInfo {
        self.info.read().unwrap().clone()
    }

    /// Reads the info without copying it.
    pub fn with_info<R>(&self, f: impl FnOnce(&NodeInfo) -> R) -> R {
        f(&self.info.read().unwrap())
    }

    pub fn update_info(&self, f: impl FnOnce(&mut NodeInfo)) {
        f(&mut self.info.write().unwrap())
    }

    pub fn name(&self) -> String {
        self.with_info(|i| i.name.clone())
    }
}

/// Normalizes a node URL: `http://host:port[/prefix]`, without a trailing `/` or `/v1`.
pub fn normalize_base_url(raw: &str) -> Result<String, NodeError> {
    let url = url::Url::parse(raw.trim()).map_err(|e| NodeError::InvalidUrl(format!("{raw}: {e}")))?;
    if url.scheme() != "http" {
        return Err(NodeError::InvalidUrl(format!(
            "{raw}: only http:// nodes are supported (TLS to nodes is not implemented)"
        )));
    }
    if url.host_str().is_none_or(str::is_empty) || url.query().is_some() || url.fragment().is_some() {
        return Err(NodeError::InvalidUrl(format!(
            "{raw}: expected http://host[:port][/path]"
        )));
    }
    let mut s = url.as_str().trim_end_matches('/').to_string();
    if let Some(stripped) = s.strip_suffix("/v1") {
        s = stripped.to_string();
    }
    Ok(s)
}

/// All nodes, in id order.
pub struct NodeRegistry {
    nodes: RwLock<Vec<Arc<Node>>>,
    store: Store,
}

impl NodeRegistry {
    pub fn new(store: Store, nodes: Vec<Node>) -> NodeRegistry {
        NodeRegistry {
            nodes: RwLock::new(nodes.into_iter().map(Arc::new).collect()),
            store,
        }
    }

    /// Every node, deleted ones included.
    pub fn all(&self) -> Vec<Arc<Node>> {
        self.nodes.read().unwrap().clone()
    }

    /// Nodes that are not deleted.
    pub fn live(&self) -> Vec<Arc<Node>> {
        self.all().into_iter().filter(|n| !n.with_info(|i| i.deleted)).collect()
    }

    /// Runs `f` over every node without copying the list (the routing hot path).
    pub fn for_each(&self, mut f: impl FnMut(&Arc<Node>)) {
        for n in self.nodes.read().unwrap().iter() {
            f(n);
        }
    }

    pub fn get(&self, id: NodeId) -> Option<Arc<Node>> {
        self.nodes.read().unwrap().iter().find(|n| n.id == id).cloned()
    }

    /// A live node, or `NotFound`.
    pub fn live_node(&self, id: NodeId) -> Result<Arc<Node>, NodeError> {
        self.get(id)
            .filter(|n| !n.with_info(|i| i.deleted))
            .ok_or(NodeError::NotFound(id))
    }

    pub async fn add(
        &self,
        base_url: &str,
        name: Option<String>,
        api_key: Option<String>,
        source: &'static str,
    ) -> Result<Arc<Node>, NodeError> {
        let base_url = normalize_base_url(base_url)?;
        let name = name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| default_name(&base_url));
        let stored = self
            .store
            .insert_node(&NewNode {
                name,
                base_url,
                api_key: api_key.filter(|k| !k.is_empty()),
                include_usage: true,
                source,
            })
            .await?;
        let node = Arc::new(Node::new(stored, NodeLoadState::default()));
        self.nodes.write().unwrap().push(node.clone());
        Ok(node)
    }

    /// Adds a node from configuration unless a live node already has its URL.
    pub async fn ensure_static(&self, base_url: &str) -> Result<Arc<Node>, NodeError> {
        let normalized = normalize_base_url(base_url)?;
        if let Some(n) = self
            .live()
            .into_iter()
            .find(|n| n.with_info(|i| i.base_url == normalized))
        {
            return Ok(n);
        }
        self.add(&normalized, None, None, "static").await
    }

    pub async fn update(&self, id: NodeId, changes: NodeChanges) -> Result<Arc<Node>, NodeError> {
        let node = self.live_node(id)?;
        let stored = self.store.update_node(id, &changes).await.map_err(|e| match e {
            StoreError::NotFound => NodeError::NotFound(id),
            other => other.into(),
        })?;
        node.update_info(|i| {
            i.name = stored.name;
            i.api_key = stored.api_key;
            i.enabled = stored.enabled;
            if stored.include_usage != i.include_usage {
                // A new decision of the operator: forget what was learned.
                i.include_usage_rejected = false;
            }
            i.include_usage = stored.include_usage;
        });
        Ok(node)
    }

    /// Removes the node from routing at once; its statistics stay.
    pub async fn delete(&self, id: NodeId) -> Result<(), NodeError> {
        let node = self.live_node(id)?;
        self.store.delete_node(id).await.map_err(|e| match e {
            StoreError::NotFound => NodeError::NotFound(id),
            other => other.into(),
        })?;
        node.update_info(|i| i.deleted = true);
        Ok(())
    }
}

fn default_name(base_url: &str) -> String {
    base_url.trim_start_matches("http://").to_string()
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn base_urls_are_normalized_and_checked() {
        assert_eq!(normalize_base_url("http://h:1/").unwrap(), "http://h:1");
        assert_eq!(normalize_base_url("http://h:1/v1/").unwrap(), "http://h:1");
        assert_eq!(normalize_base_url("http://h/x").unwrap(), "http://h/x");
        assert!(normalize_base_url("ftp://h").is_err());
        assert!(normalize_base_url("not a url").is_err());
        assert!(normalize_base_url("http://h?q=1").is_err());
    }
}
