//! `/api/nodes`: register, list, change and delete inference nodes.

use axum::body::Bytes;
use axum::extract::{Path, State};
use axum::http::StatusCode;
use axum::response::IntoResponse;
use axum::routing::get;
use axum::{Json, Router};
use chrono::{DateTime, Utc};
use serde::{Deserialize, Serialize};
use serde_json::Value;
use utoipa::ToSchema;

use super::ApiError;
use crate::nodes::{Node, NodeKind, NodeRegistration};
use crate::state::AppState;
use crate::store::NodeChanges;

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/nodes", get(list_nodes).post(create_node))
        .route("/api/nodes/{id}", get(get_node).patch(update_node).delete(delete_node))
}

/// A node as the admin API shows it (the api_key itself is never returned).
#[derive(Debug, Serialize, Deserialize, ToSchema)]
pub struct NodeView {
    pub id: i64,
    pub name: String,
    pub base_url: String,
    pub has_api_key: bool,
    pub enabled: bool,
    /// Operator's switch: request exact usage on streams.
    pub include_usage: bool,
    /// False once the node has rejected `stream_options`.
    pub include_usage_supported: bool,
    /// `online`, `offline` or `unknown`.
    pub status: String,
    pub models: Vec<String>,
    pub last_seen: Option<DateTime<Utc>>,
    /// `api`, `static` (`--node`) or `config` (the configuration file: cannot be deleted).
    pub source: String,
    pub active_requests: u64,
    /// `openai`, `ollama`, `vllm`, `llamacpp` or `lmstudio`.
    pub kind: String,
    /// True when the operator set `kind`; false when told from the node's routes.
    pub kind_explicit: bool,
    /// The node's TLS certificate is not verified (the operator's choice).
    pub tls_insecure: bool,
    /// Why the node is offline (connection refused, certificate error, HTTP status); null when online.
    pub last_error: Option<String>,
    /// The operator's limit of requests in flight; null: the node's own slots, if it tells them.
    pub max_concurrent: Option<u64>,
    /// Slots the node told (llama-server's `total_slots`).
    pub detected_slots: Option<u64>,
    /// Requests it may have in flight: `max_concurrent`, else `detected_slots`; null: no limit.
    pub capacity: Option<u64>,
    /// Its share of the load relative to other nodes.
    pub weight: u64,
}

fn view(n: &Node) -> NodeView {
    let i = n.info();
    let capacity = i.capacity();
    NodeView {
        id: n.id,
        name: i.name,
        base_url: i.base_url,
        has_api_key: i.api_key.is_some(),
        enabled: i.enabled,
        include_usage: i.include_usage,
        include_usage_supported: !i.include_usage_rejected,
        status: i.status.as_str().to_string(),
        models: i.models,
        last_seen: i.last_seen,
        source: i.source,
        active_requests: n.load.active(),
        kind: i.kind.as_str().to_string(),
        kind_explicit: i.kind_explicit,
        tls_insecure: i.tls_insecure,
        capacity,
        last_error: i.last_error,
        max_concurrent: i.max_concurrent,
        detected_slots: i.detected_slots,
        weight: i.weight,
    }
}

#[derive(Debug, Deserialize, ToSchema)]
pub struct CreateNode {
    /// `http://host:port` or `https://host:port` (a trailing `/v1` is accepted and removed).
    pub base_url: String,
    pub name: Option<String>,
    pub api_key: Option<String>,
    /// `openai`, `ollama`, `vllm`, `llamacpp` or `lmstudio`; absent: told from the node's routes.
    pub kind: Option<String>,
    /// Do not verify the node's TLS certificate (logged as a warning).
    #[serde(default)]
    pub tls_insecure: bool,
    /// Requests it may have in flight (at least 1); absent: the node's own slots, if it tells them.
    pub max_concurrent: Option<u64>,
    /// Its share of the load, 1 to 1000 (default 1).
    pub weight: Option<u64>,
}

/// Fields to change; `api_key: null` removes the key, `kind: null` has the kind told
/// from the node's routes again, `max_concurrent: null` removes the operator's limit.
#[derive(Debug, Deserialize, ToSchema)]
pub struct UpdateNode {
    pub name: Option<String>,
    pub api_key: Option<String>,
    pub enabled: Option<bool>,
    pub include_usage: Option<bool>,
    pub kind: Option<String>,
    pub tls_insecure: Option<bool>,
    pub max_concurrent: Option<u64>,
    pub weight: Option<u64>,
}

#[derive(Debug, Serialize, ToSchema)]
pub struct NodeList {
    pub nodes: Vec<NodeView>,
}

fn parse_id(raw: &str) -> Result<i64, ApiError> {
    raw.parse().map_err(|_| ApiError::BadParam {
        param: "id",
        message: format!("'{raw}' is not a node id"),
    })
}

fn parse_kind(raw: &str) -> Result<NodeKind, ApiError> {
    Ok(raw.parse()?)
}

fn parse_body<T: serde::de::DeserializeOwned>(body: &[u8]) -> Result<T, ApiError> {
    serde_json::from_slice(body).map_err(|e| ApiError::BadBody(e.to_string()))
}

/// Live nodes (deleted ones are listed by `/api/dashboard/nodes`).
#[utoipa::path(get, path = "/api/nodes", tag = "nodes", security(("admin_key" = [])),
    responses((status = 200, body = NodeList), (status = 401, description = "No admin key")))]
pub async fn list_nodes(State(st): State<AppState>) -> Json<NodeList> {
    Json(NodeList {
        nodes: st.balancer.registry().live().iter().map(|n| view(n)).collect(),
    })
}

/// Registers a node and probes it at once.
#[utoipa::path(post, path = "/api/nodes", tag = "nodes", security(("admin_key" = [])), request_body = CreateNode,
    responses((status = 201, body = NodeView), (status = 400, description = "Bad URL, kind, max_concurrent, weight or body"),
        (status = 409, description = "A live node has this base_url")))]
pub async fn create_node(State(st): State<AppState>, body: Bytes) -> Result<impl IntoResponse, ApiError> {
    let req: CreateNode = parse_body(&body)?;
    let registration = NodeRegistration {
        base_url: req.base_url,
        name: req.name,
        api_key: req.api_key,
        kind: req.kind.as_deref().map(parse_kind).transpose()?,
        tls_insecure: req.tls_insecure,
        max_concurrent: req.max_concurrent,
        weight: req.weight,
    };
    let node = st.balancer.registry().add(registration, "api").await?;
    st.health.probe(&node).await;
    Ok((StatusCode::CREATED, Json(view(&node))))
}

#[utoipa::path(get, path = "/api/nodes/{id}", tag = "nodes", security(("admin_key" = [])),
    params(("id" = i64, Path, description = "Node id")),
    responses((status = 200, body = NodeView), (status = 404, description = "No such live node")))]
pub async fn get_node(State(st): State<AppState>, Path(id): Path<String>) -> Result<Json<NodeView>, ApiError> {
    let node = st.balancer.registry().live_node(parse_id(&id)?)?;
    Ok(Json(view(&node)))
}

/// Changes a node; a new `kind` or `tls_insecure` is probed at once.
#[utoipa::path(patch, path = "/api/nodes/{id}", tag = "nodes", security(("admin_key" = [])),
    params(("id" = i64, Path, description = "Node id")), request_body = UpdateNode,
    responses((status = 200, body = NodeView), (status = 400, description = "Bad kind or body"),
        (status = 404, description = "No such live node")))]
pub async fn update_node(
    State(st): State<AppState>,
    Path(id): Path<String>,
    body: Bytes,
) -> Result<Json<NodeView>, ApiError> {
    let id = parse_id(&id)?;
    let raw: Value = parse_body(&body)?;
    let req: UpdateNode = serde_json::from_value(raw.clone()).map_err(|e| ApiError::BadBody(e.to_string()))?;
    let changes = NodeChanges {
        name: req.name,
        // Present and null clears the key; absent leaves it.
        api_key: raw.get("api_key").map(|_| req.api_key.filter(|k| !k.is_empty())),
        enabled: req.enabled,
        include_usage: req.include_usage,
        // Present and null: told from the node's routes again.
        kind: match raw.get("kind") {
            None => None,
            Some(_) => Some(req.kind.as_deref().map(parse_kind).transpose()?.map(NodeKind::as_str)),
        },
        tls_insecure: req.tls_insecure,
        // Present and null: no limit of the operator's.
        max_concurrent: raw.get("max_concurrent").map(|_| req.max_concurrent),
        weight: req.weight,
        source: None,
    };
    let reprobe = changes.kind.is_some() || changes.tls_insecure.is_some();
    let node = st.balancer.registry().update(id, changes).await?;
    if reprobe {
        st.health.probe(&node).await;
    }
    Ok(Json(view(&node)))
}

/// Removes the node from routing at once; its statistics stay.
#[utoipa::path(delete, path = "/api/nodes/{id}", tag = "nodes", security(("admin_key" = [])),
    params(("id" = i64, Path, description = "Node id")),
    responses((status = 204, description = "Deleted"), (status = 404, description = "No such live node"),
        (status = 409, description = "Declared in the configuration file (it can be disabled)")))]
pub async fn delete_node(State(st): State<AppState>, Path(id): Path<String>) -> Result<StatusCode, ApiError> {
    let id = parse_id(&id)?;
    st.balancer.registry().delete(id).await?;
    if let Some(n) = st.balancer.registry().get(id) {
        crate::nodes::publish_node_up(&st.metrics, &n);
    }
    Ok(StatusCode::NO_CONTENT)
}
