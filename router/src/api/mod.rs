//! The operator's API: `/api/nodes`, `/api/keys`, `/api/dashboard/*`, `/api/openapi.json` and
//! `/metrics`. Everything under `/api` needs the admin key (`auth` is a layer, not a
//! check repeated in handlers). Handlers translate HTTP to calls of `nodes`, `keys`
//! and `stats` and back; they hold no logic of their own.

mod auth;
mod dashboard;
mod error;
mod export;
mod keys;
mod nodes;
pub mod openapi;

use axum::extract::State;
use axum::http::header;
use axum::middleware;
use axum::response::{IntoResponse, Response};
use axum::routing::get;
use axum::Router;

pub use auth::{resolve_admin_key, AdminKey};
pub use error::ApiError;

use crate::app::AppState;
use crate::config::MetricsAccess;

pub fn routes(state: AppState) -> Router<AppState> {
    let admin = Router::new()
        .merge(nodes::routes())
        .merge(keys::routes())
        .merge(dashboard::routes())
        .route("/api/openapi.json", get(openapi::serve))
        .route_layer(middleware::from_fn_with_state(state.clone(), auth::require_admin));
    let metrics = Router::new().route("/metrics", get(metrics));
    let metrics = match state.metrics_access {
        MetricsAccess::Open => metrics,
        MetricsAccess::Admin => metrics.route_layer(middleware::from_fn_with_state(state, auth::require_admin)),
    };
    admin.merge(metrics)
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
