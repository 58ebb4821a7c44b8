//! The node registry: every node the router knows, live or deleted, with its state.
//!
//! A [`Node`] couples what the operator configured and the health checker observed
//! ([`NodeInfo`], behind a lock) with its [`NodeLoadState`] (atomics, updated by the
//! balancer). Deleted nodes stay in the registry, out of routing and health checks,
//! so their statistics remain listed. Changes are written to the store first, then
//! applied in memory. A node's [`NodeKind`] is set by the operator or told by the
//! health checker ([`kind`]). Its capacity is `max_concurrent` when the operator set
//! one, else the slots the node tells (llama-server's `total_slots`), else none.
//! Nodes declared in the configuration file (`source = "config"`) cannot be deleted.
//! What a registration holds and the checks it goes through are in [`registration`].

pub mod health;
pub mod kind;
pub mod load;
mod registration;
mod sync;

use std::path::PathBuf;
use std::sync::{Arc, RwLock};

use chrono::{DateTime, Utc};

pub use kind::NodeKind;
pub use load::{LoadSnapshot, NodeLoadState};
use registration::{check_capacity, check_texts, default_name};
pub use registration::{normalize_base_url, NodeRegistration};

use crate::metrics::{Metrics, NodeLabels};
use crate::store::{NewNode, NodeChanges, Store, StoreError, StoredNode};
use crate::upstream::CertificateCheck;

/// The `source` of a node declared in the configuration file.
pub const CONFIG_SOURCE: &str = "config";
/// Highest `weight` of a node.
pub const MAX_WEIGHT: u64 = 1000;

pub type NodeId = i64;

/// Errors of node management.
#[derive(Debug, thiserror::Error)]
pub enum NodeError {
    #[error("invalid base_url: {0}")]
    InvalidUrl(String),
    #[error("invalid kind: {0}")]
    InvalidKind(String),
    #[error("a node with base_url {0} already exists")]
    Duplicate(String),
    #[error("node {0} not found")]
    NotFound(NodeId),
    #[error("invalid {field}: {message}")]
    InvalidValue { field: &'static str, message: String },
    /// `by`: "the configuration file <path>", or "the command line (--node)".
    #[error("node {id} is declared in {by}: remove it there (it can be disabled here)")]
    Declared { id: NodeId, by: String },
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
    pub kind: NodeKind,
    /// The operator set the kind; otherwise the health checker tells it.
    pub kind_explicit: bool,
    /// The next probe tells the kind again (the operator asked for detection).
    pub redetect_kind: bool,
    /// Operator's choice: do not verify the certificate of this `https://` node.
    pub tls_insecure: bool,
    pub status: NodeStatus,
    pub models: Vec<String>,
    pub last_seen: Option<DateTime<Utc>>,
    pub consecutive_failures: u32,
    /// Why the node is offline (refused connection, certificate error, HTTP status).
    pub last_error: Option<String>,
    pub deleted: bool,
    /// The operator's limit of requests in flight (`None`: the node's own, if it tells).
    pub max_concurrent: Option<u64>,
    /// Slots the node told (llama-server's `total_slots`).
    pub detected_slots: Option<u64>,
    /// Share of the load relative to other nodes (1 by default).
    pub weight: u64,
}

impl NodeInfo {
    /// Requests it may have in flight: the operator's limit, else the node's own slots.
    pub fn capacity(&self) -> Option<u64> {
        self.max_concurrent.or(self.detected_slots)
    }

    pub fn routable_for(&self, model: &str) -> bool {
        self.enabled && !self.deleted && self.status == NodeStatus::Online && self.serves(model)
    }

    /// Whether the node lists `model`; an `ollama` node also serves `name` as
    /// `name:latest`, as Ollama itself does.
    pub fn serves(&self, model: &str) -> bool {
        self.models
            .iter()
            .any(|m| m == model || (self.kind == NodeKind::Ollama && m.strip_suffix(":latest") == Some(model)))
    }

    /// Whether a stream to this node should carry `include_usage`.
    pub fn wants_include_usage(&self) -> bool {
        self.include_usage && !self.include_usage_rejected
    }

    pub fn certificate_check(&self) -> CertificateCheck {
        CertificateCheck::for_node(self.tls_insecure)
    }

    /// Takes the operator's settings of the node's stored row (what the health checker
    /// observed stays).
    fn take_settings(&mut self, stored: StoredNode) {
        if stored.tls_insecure && !self.tls_insecure {
            warn_unverified(&stored.name, &self.base_url);
        }
        self.name = stored.name;
        self.api_key = stored.api_key;
        self.enabled = stored.enabled;
        if stored.include_usage != self.include_usage {
            // A new decision of the operator: forget what was learned.
            self.include_usage_rejected = false;
        }
        self.include_usage = stored.include_usage;
        self.kind = stored.kind.parse().unwrap_or(self.kind);
        self.kind_explicit = stored.kind_explicit;
        self.tls_insecure = stored.tls_insecure;
        self.max_concurrent = stored.max_concurrent;
        self.weight = stored.weight;
        self.source = stored.source;
        self.deleted |= stored.deleted_at.is_some();
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
        let kind = stored.kind.parse().unwrap_or_else(|e| {
            tracing::warn!(node = %stored.name, error = %e, "stored node kind not known; taking openai");
            NodeKind::OpenAi
        });
        let deleted = stored.deleted_at.is_some();
        if stored.tls_insecure && !deleted {
            warn_unverified(&stored.name, &stored.base_url);
        }
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
                kind,
                kind_explicit: stored.kind_explicit,
                redetect_kind: false,
                tls_insecure: stored.tls_insecure,
                status: NodeStatus::Unknown,
                models: Vec::new(),
                last_seen: None,
                consecutive_failures: 0,
                last_error: None,
                deleted,
                max_concurrent: stored.max_concurrent,
                detected_slots: None,
                weight: stored.weight,
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

    pub fn labels(&self) -> NodeLabels {
        NodeLabels {
            node_id: self.id.to_string(),
            node: self.name(),
        }
    }
}

/// Sets the node-up gauge from the node's status.
pub fn publish_node_up(metrics: &Metrics, node: &Node) {
    let up = node.with_info(|i| i.status == NodeStatus::Online && !i.deleted);
    metrics.node_up.get_or_create(&node.labels()).set(up as i64);
}

/// Logged whenever a node is (or starts as) `tls_insecure`: the operator's choice,
/// never silent.
fn warn_unverified(name: &str, base_url: &str) {
    if base_url.starts_with("https://") {
        tracing::warn!(node = %name, %base_url, "tls_insecure: this node's certificate is not verified");
    }
}

/// All nodes, in id order.
pub struct NodeRegistry {
    nodes: RwLock<Vec<Arc<Node>>>,
    store: Store,
    /// The configuration file that declares nodes, named when one cannot be deleted.
    config_file: RwLock<Option<PathBuf>>,
    /// Nodes that `--node` (or `LLM_ROUTER_NODES`) declares in this run: they cannot be
    /// deleted either (they would come back at the next start).
    flag_declared: RwLock<std::collections::HashSet<NodeId>>,
    /// Told when a node may take more requests than before (set by the balancer).
    on_change: std::sync::OnceLock<Box<dyn Fn() + Send + Sync>>,
    /// Held while a change is written to the store and applied here, and while the
    /// replicas' sync reads and applies the stored nodes (see `sync`).
    changing: tokio::sync::Mutex<()>,
}

impl NodeRegistry {
    pub fn new(store: Store, nodes: Vec<Node>) -> NodeRegistry {
        NodeRegistry {
            nodes: RwLock::new(nodes.into_iter().map(Arc::new).collect()),
            store,
            config_file: RwLock::new(None),
            flag_declared: RwLock::default(),
            on_change: std::sync::OnceLock::new(),
            changing: tokio::sync::Mutex::new(()),
        }
    }

    /// Sets what to do when a node changed (once: the balancer looks at its queue).
    pub fn on_change(&self, f: Box<dyn Fn() + Send + Sync>) {
        let _ = self.on_change.set(f);
    }

    /// A node changed (settings, status, slots): it may take waiting requests.
    pub fn changed(&self) {
        if let Some(f) = self.on_change.get() {
            f();
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

    /// Nodes in the registry, deleted ones included.
    pub fn node_count(&self) -> usize {
        self.nodes.read().unwrap().len()
    }

    /// The node list, read-locked (the placement scan: no copy).
    pub fn read(&self) -> std::sync::RwLockReadGuard<'_, Vec<Arc<Node>>> {
        self.nodes.read().unwrap()
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

    pub async fn add(&self, node: NodeRegistration, source: &'static str) -> Result<Arc<Node>, NodeError> {
        let base_url = normalize_base_url(&node.base_url)?;
        check_capacity(node.max_concurrent, node.weight)?;
        check_texts(node.name.as_deref(), node.api_key.as_deref())?;
        let name = node
            .name
            .filter(|n| !n.trim().is_empty())
            .unwrap_or_else(|| default_name(&base_url));
        let _changing = self.changing.lock().await;
        let stored = self
            .store
            .insert_node(&NewNode {
                name,
                base_url,
                api_key: node.api_key.filter(|k| !k.is_empty()),
                include_usage: true,
                source,
                kind: node.kind.unwrap_or_default().as_str(),
                kind_explicit: node.kind.is_some(),
                tls_insecure: node.tls_insecure,
                max_concurrent: node.max_concurrent,
                weight: node.weight.unwrap_or(1),
            })
            .await?;
        let node = Arc::new(Node::new(stored, NodeLoadState::default()));
        self.nodes.write().unwrap().push(node.clone());
        Ok(node)
    }

    /// Adds a node from configuration (`URL` or `KIND=URL`) unless a live node already
    /// has its URL; a kind the configuration names is set on that node.
    pub async fn ensure_static(&self, spec: &str) -> Result<Arc<Node>, NodeError> {
        let node = self.declare_static(spec).await?;
        self.flag_declared.write().unwrap().insert(node.id);
        Ok(node)
    }

    async fn declare_static(&self, spec: &str) -> Result<Arc<Node>, NodeError> {
        let node = NodeRegistration::from_static(spec)?;
        let normalized = normalize_base_url(&node.base_url)?;
        let Some(existing) = self
            .live()
            .into_iter()
            .find(|n| n.with_info(|i| i.base_url == normalized))
        else {
            return self.add(node, "static").await;
        };
        match node.kind {
            Some(kind) if existing.with_info(|i| !i.kind_explicit || i.kind != kind) => {
                let changes = NodeChanges {
                    kind: Some(Some(kind.as_str())),
                    ..NodeChanges::default()
                };
                self.update(existing.id, changes).await
            }
            _ => Ok(existing),
        }
    }

    /// Declares a node of the configuration file: added, or the live node with its URL
    /// takes the file's settings (the file wins at every start). Fields the file does
    /// not set (`enabled`, `include_usage`) keep what the operator chose.
    pub async fn ensure_declared(&self, node: NodeRegistration) -> Result<Arc<Node>, NodeError> {
        let normalized = normalize_base_url(&node.base_url)?;
        check_capacity(node.max_concurrent, node.weight)?;
        check_texts(node.name.as_deref(), node.api_key.as_deref())?;
        let Some(existing) = self
            .live()
            .into_iter()
            .find(|n| n.with_info(|i| i.base_url == normalized))
        else {
            return self.add(node, CONFIG_SOURCE).await;
        };
        let changes = NodeChanges {
            name: Some(
                node.name
                    .filter(|n| !n.trim().is_empty())
                    .unwrap_or_else(|| default_name(&normalized)),
            ),
            api_key: Some(node.api_key.filter(|k| !k.is_empty())),
            kind: Some(node.kind.map(NodeKind::as_str)),
            tls_insecure: Some(node.tls_insecure),
            max_concurrent: Some(node.max_concurrent),
            weight: Some(node.weight.unwrap_or(1)),
            source: Some(CONFIG_SOURCE),
            ..NodeChanges::default()
        };
        self.update(existing.id, changes).await
    }

    /// Nodes the file declared before but no longer does become ordinary (`api`) nodes.
    pub async fn release_undeclared(&self, declared: &[NodeId]) -> Result<(), NodeError> {
        for node in self.live() {
            if !declared.contains(&node.id) && node.with_info(|i| i.source == CONFIG_SOURCE) {
                tracing::info!(node = %node.name(), "no longer declared in the configuration file; deletable again");
                let changes = NodeChanges {
                    source: Some("api"),
                    ..NodeChanges::default()
                };
                self.update(node.id, changes).await?;
            }
        }
        Ok(())
    }

    /// The configuration file that declares nodes.
    pub fn set_config_file(&self, path: Option<PathBuf>) {
        *self.config_file.write().unwrap() = path;
    }

    pub async fn update(&self, id: NodeId, changes: NodeChanges) -> Result<Arc<Node>, NodeError> {
        let node = self.live_node(id)?;
        check_capacity(changes.max_concurrent.flatten(), changes.weight)?;
        check_texts(
            changes.name.as_deref(),
            changes.api_key.as_ref().and_then(|k| k.as_deref()),
        )?;
        let _changing = self.changing.lock().await;
        let stored = self.store.update_node(id, &changes).await.map_err(|e| match e {
            StoreError::NotFound => NodeError::NotFound(id),
            other => other.into(),
        })?;
        node.update_info(|i| {
            i.take_settings(stored);
            i.redetect_kind |= changes.kind == Some(None);
        });
        self.changed();
        Ok(node)
    }

    /// Keeps the kind the health checker told, unless the operator has set one since.
    pub async fn save_detected_kind(&self, node: &Node, kind: NodeKind) -> Result<(), NodeError> {
        self.store.set_detected_node_kind(node.id, kind.as_str()).await?;
        Ok(())
    }

    /// Removes the node from routing at once; its statistics stay.
    pub async fn delete(&self, id: NodeId) -> Result<(), NodeError> {
        let node = self.live_node(id)?;
        if node.with_info(|i| i.source == CONFIG_SOURCE) {
            let file = self.config_file.read().unwrap().clone();
            return Err(NodeError::Declared {
                id,
                by: format!(
                    "the configuration file {}",
                    file.map_or_else(String::new, |f| f.display().to_string())
                ),
            });
        }
        if self.flag_declared.read().unwrap().contains(&id) {
            return Err(NodeError::Declared {
                id,
                by: "the command line (--node or LLM_ROUTER_NODES)".into(),
            });
        }
        let _changing = self.changing.lock().await;
        self.store.delete_node(id).await.map_err(|e| match e {
            StoreError::NotFound => NodeError::NotFound(id),
            other => other.into(),
        })?;
        node.update_info(|i| i.deleted = true);
        Ok(())
    }
}
