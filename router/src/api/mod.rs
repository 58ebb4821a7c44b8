//! The operator's API: `/api/nodes`, `/api/keys`, `/api/dashboard/*`, `/metrics` and
//! `/health`. Everything under `/api` needs the admin key (`auth` is a layer, not a
//! check repeated in handlers; [`admin_only`] puts it on routes of the layers above,
//! such as the OpenAPI document). Handlers translate HTTP to calls of `nodes`, `keys`
//! and `stats` and back; they hold no logic of their own.

mod auth;
pub(crate) mod dashboard;
mod error;
pub(crate) mod export;
pub(crate) mod keys;
pub(crate) mod nodes;

use axum::extract::State;
use axum::http::header;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::{Json, Router};
use serde_json::json;

pub use error::ApiError;

use crate::config::MetricsAccess;
use crate::state::AppState;

pub fn routes(state: AppState) -> Router<AppState> {
    let admin = Router::new()
        .merge(nodes::routes())
        .merge(keys::routes())
        .merge(dashboard::routes());
    let admin = admin_only(admin, state.clone());
    let metrics = Router::new().route("/metrics", get(metrics));
    let metrics = match state.metrics_access {
        MetricsAccess::Open => metrics,
        MetricsAccess::Admin => admin_only(metrics, state),
    };
    admin.merge(metrics).route("/health", get(health))
}

/// `routes` behind the admin layer: the admin key as a Bearer token, or a dashboard
/// session (writes from the dashboard's own origin only).
pub fn admin_only(routes: Router<AppState>, state: AppState) -> Router<AppState> {
    routes.route_layer(middleware::from_fn_with_state(state, auth::require_admin))
}

/// Prometheus text exposition of request, token, latency and node metrics.
#[utoipa::path(get, path = "/metrics", tag = "operations", responses((status = 200, description = "Prometheus text format")))]
pub async fn metrics(State(st): State<AppState>) -> Response {
    let text = if st.metrics.counts_from_store() {
        match crate::stats::counter_totals(&st.store, st.balancer.registry(), &st.keys).await {
            Ok(totals) => st.metrics.encode_stored(Some(&totals)),
            Err(e) => {
                tracing::warn!(error = %e, "cannot read the rollups: /metrics shows the counters of the last scrape");
                st.metrics.encode_stored(None)
            }
        }
    } else {
        st.metrics.encode()
    };
    (
        [(
            header::CONTENT_TYPE,
            "application/openmetrics-text; version=1.0.0; charset=utf-8",
        )],
        text,
    )
        .into_response()
}

/// Liveness and the recorder's backlog (records not yet committed).
#[utoipa::path(get, path = "/health", tag = "operations", responses((status = 200, description = "Router status")))]
pub async fn health(State(st): State<AppState>) -> impl IntoResponse {
    let rec = st.balancer.recorder().status();
    let last_error = rec.last_error.lock().unwrap().clone();
    let backlog = st.balancer.recorder().backlog();
    let nodes = st.balancer.registry().live();
    let online = nodes
        .iter()
        .filter(|n| n.with_info(|i| i.status == crate::nodes::NodeStatus::Online))
        .count();
    Json(json!({
        "status": if last_error.is_none() && backlog < st.proxy.max_backlog { "ok" } else { "degraded" },
        "nodes": nodes.len(),
        "online_nodes": online,
        "recorder": {
            "backlog": backlog,
            "max_backlog": st.proxy.max_backlog,
            "committed": rec.committed.load(std::sync::atomic::Ordering::Relaxed),
            "last_error": last_error,
        }
    }))
}
