//! `/api/dashboard/*`: the statistics of DESIGN §7, as JSON.
//!
//! Query strings are parsed here, by hand, so that every bad value is a 400 that
//! names its parameter; the figures come from `stats`.

use std::collections::HashMap;

use axum::extract::{Path, Query, State};
use axum::routing::get;
use axum::{Json, Router};
use chrono::NaiveDate;
use common::protocol::{
    DailyTokenSeries, DashboardKeys, DashboardNodes, DashboardStats, MonthlyTokenSeries, RequestHistoryPage,
    RequestResponseRecord, RequestStatus, SpeedStats, TokenStats,
};

use super::ApiError;
use crate::state::AppState;
use crate::stats::{self, DailyQuery, MonthlyQuery};
use crate::store::{HistoryFilter, RollupFilter, ANONYMOUS};

pub fn routes() -> Router<AppState> {
    Router::new()
        .route("/api/dashboard/nodes", get(nodes))
        .route("/api/dashboard/stats", get(stats_overview))
        .route("/api/dashboard/stats/tokens", get(tokens))
        .route("/api/dashboard/stats/tokens/daily", get(daily))
        .route("/api/dashboard/stats/tokens/monthly", get(monthly))
        .route("/api/dashboard/request-history", get(history))
        .route("/api/dashboard/request-history/{id}", get(history_record))
        .route("/api/dashboard/keys", get(keys))
        .route("/api/dashboard/stats/speed", get(speed))
        .route("/api/dashboard/export.csv", get(super::export::export_csv))
}

pub(super) type Params = Query<HashMap<String, String>>;

pub(super) fn bad(param: &'static str, message: impl Into<String>) -> ApiError {
    ApiError::BadParam {
        param,
        message: message.into(),
    }
}

pub(super) fn param<'a>(p: &'a HashMap<String, String>, name: &str) -> Option<&'a str> {
    p.get(name).map(String::as_str).filter(|v| !v.is_empty())
}

pub(super) fn int<T: std::str::FromStr>(
    p: &HashMap<String, String>,
    name: &'static str,
) -> Result<Option<T>, ApiError> {
    param(p, name)
        .map(|v| {
            v.parse::<T>()
                .map_err(|_| bad(name, format!("'{v}' is not a valid number")))
        })
        .transpose()
}

pub(super) fn date(p: &HashMap<String, String>, name: &'static str) -> Result<Option<NaiveDate>, ApiError> {
    param(p, name)
        .map(|v| {
            NaiveDate::parse_from_str(v, "%Y-%m-%d").map_err(|_| bad(name, format!("'{v}' is not a date (YYYY-MM-DD)")))
        })
        .transpose()
}

pub(super) fn month(p: &HashMap<String, String>, name: &'static str) -> Result<Option<NaiveDate>, ApiError> {
    param(p, name)
        .map(|v| {
            NaiveDate::parse_from_str(&format!("{v}-01"), "%Y-%m-%d")
                .ok()
                .filter(|_| v.len() == 7)
                .ok_or_else(|| bad(name, format!("'{v}' is not a month (YYYY-MM)")))
        })
        .transpose()
}

/// `key_id`: a key id, or `anonymous` for requests made without a key.
pub(super) fn key_id(p: &HashMap<String, String>) -> Result<Option<i64>, ApiError> {
    match param(p, "key_id") {
        None => Ok(None),
        Some("anonymous") => Ok(Some(ANONYMOUS)),
        Some(v) => v
            .parse::<i64>()
            .ok()
            .filter(|id| *id > 0)
            .map(Some)
            .ok_or_else(|| bad("key_id", format!("'{v}' is neither a key id nor 'anonymous'"))),
    }
}

/// Every node with its load and token totals, offline and deleted ones included.
#[utoipa::path(get, path = "/api/dashboard/nodes", tag = "dashboard", security(("admin_key" = [])),
    responses((status = 200, body = DashboardNodes)))]
pub async fn nodes(State(st): State<AppState>) -> Json<DashboardNodes> {
    let figures = stats::node_figures(&st.store, st.balancer.registry(), st.cluster.as_deref()).await;
    Json(stats::dashboard_nodes(st.balancer.registry(), &figures))
}

/// Router-wide request and token figures.
#[utoipa::path(get, path = "/api/dashboard/stats", tag = "dashboard", security(("admin_key" = [])),
    responses((status = 200, body = DashboardStats)))]
pub async fn stats_overview(State(st): State<AppState>) -> Json<DashboardStats> {
    let registry = st.balancer.registry();
    let figures = stats::node_figures(&st.store, registry, st.cluster.as_deref()).await;
    Json(stats::dashboard_stats(registry, &figures, st.balancer.queue_stats()))
}

/// Token totals, by node and by model, optionally filtered.
#[utoipa::path(get, path = "/api/dashboard/stats/tokens", tag = "dashboard", security(("admin_key" = [])),
    params(("node_id" = Option<i64>, Query, description = "Only this node"), ("model" = Option<String>, Query, description = "Only this model"),
        ("key_id" = Option<String>, Query, description = "Only this client key (an id, or anonymous)")),
    responses((status = 200, body = TokenStats), (status = 400, description = "Bad parameter")))]
pub async fn tokens(State(st): State<AppState>, Query(p): Params) -> Result<Json<TokenStats>, ApiError> {
    let filter = RollupFilter {
        key_id: key_id(&p)?,
        node_id: int(&p, "node_id")?,
        model: param(&p, "model").map(str::to_string),
        ..Default::default()
    };
    Ok(Json(
        stats::token_stats(&st.store, st.balancer.registry(), &st.keys, &filter).await?,
    ))
}

/// Tokens per day in a time zone, zero-filled, ascending.
#[utoipa::path(get, path = "/api/dashboard/stats/tokens/daily", tag = "dashboard", security(("admin_key" = [])),
    params(("from" = Option<String>, Query, description = "First day, YYYY-MM-DD"), ("to" = Option<String>, Query, description = "Last day, YYYY-MM-DD"),
        ("days" = Option<u32>, Query, description = "Days ending today (default 30)"), ("node_id" = Option<i64>, Query, description = "Only this node"),
        ("model" = Option<String>, Query, description = "Only this model"), ("tz" = Option<String>, Query, description = "IANA time zone (default UTC)"),
        ("key_id" = Option<String>, Query, description = "Only this client key (an id, or anonymous)")),
    responses((status = 200, body = DailyTokenSeries), (status = 400, description = "Bad parameter")))]
pub async fn daily(State(st): State<AppState>, Query(p): Params) -> Result<Json<DailyTokenSeries>, ApiError> {
    let q = DailyQuery {
        from: date(&p, "from")?,
        to: date(&p, "to")?,
        days: int(&p, "days")?,
        key_id: key_id(&p)?,
        node_id: int(&p, "node_id")?,
        model: param(&p, "model").map(str::to_string),
        tz: param(&p, "tz").map(str::to_string),
    };
    Ok(Json(stats::daily(&st.store, q).await?))
}

/// Tokens per month in a time zone, zero-filled, ascending.
#[utoipa::path(get, path = "/api/dashboard/stats/tokens/monthly", tag = "dashboard", security(("admin_key" = [])),
    params(("from" = Option<String>, Query, description = "First month, YYYY-MM"), ("to" = Option<String>, Query, description = "Last month, YYYY-MM"),
        ("months" = Option<u32>, Query, description = "Months ending this month (default 12)"), ("node_id" = Option<i64>, Query, description = "Only this node"),
        ("model" = Option<String>, Query, description = "Only this model"), ("tz" = Option<String>, Query, description = "IANA time zone (default UTC)"),
        ("key_id" = Option<String>, Query, description = "Only this client key (an id, or anonymous)")),
    responses((status = 200, body = MonthlyTokenSeries), (status = 400, description = "Bad parameter")))]
pub async fn monthly(State(st): State<AppState>, Query(p): Params) -> Result<Json<MonthlyTokenSeries>, ApiError> {
    let q = MonthlyQuery {
        from: month(&p, "from")?,
        to: month(&p, "to")?,
        months: int(&p, "months")?,
        key_id: key_id(&p)?,
        node_id: int(&p, "node_id")?,
        model: param(&p, "model").map(str::to_string),
        tz: param(&p, "tz").map(str::to_string),
    };
    Ok(Json(stats::monthly(&st.store, q).await?))
}

/// Recent request records, newest first, with cursor pagination.
#[utoipa::path(get, path = "/api/dashboard/request-history", tag = "dashboard", security(("admin_key" = [])),
    params(("node_id" = Option<i64>, Query, description = "Only this node"), ("model" = Option<String>, Query, description = "Only this model"),
        ("status" = Option<String>, Query, description = "success, error or cancelled"),
        ("key_id" = Option<String>, Query, description = "Only this client key (an id, or anonymous)"), ("cursor" = Option<String>, Query, description = "next_cursor of the previous page"),
        ("limit" = Option<u32>, Query, description = "1 to 500, default 50")),
    responses((status = 200, body = RequestHistoryPage), (status = 400, description = "Bad parameter")))]
pub async fn history(State(st): State<AppState>, Query(p): Params) -> Result<Json<RequestHistoryPage>, ApiError> {
    let limit = int::<u32>(&p, "limit")?.unwrap_or(50);
    if !(1..=500).contains(&limit) {
        return Err(bad("limit", "must be between 1 and 500"));
    }
    let status = param(&p, "status")
        .map(|s| {
            RequestStatus::parse(s)
                .ok_or_else(|| bad("status", format!("'{s}' is not one of success, error, cancelled")))
        })
        .transpose()?;
    let filter = HistoryFilter {
        key_id: key_id(&p)?,
        node_id: int(&p, "node_id")?,
        model: param(&p, "model").map(str::to_string),
        status,
        before_id: int(&p, "cursor")?,
        limit,
    };
    let page = st.store.history_page(&filter).await?;
    let next_cursor = if page.has_more {
        page.records.last().map(|r| r.id.to_string())
    } else {
        None
    };
    Ok(Json(RequestHistoryPage {
        records: page.records,
        next_cursor,
    }))
}

/// One request record.
#[utoipa::path(get, path = "/api/dashboard/request-history/{id}", tag = "dashboard", security(("admin_key" = [])),
    params(("id" = i64, Path, description = "Record id")),
    responses((status = 200, body = RequestResponseRecord), (status = 400, description = "Malformed id"), (status = 404, description = "No such record")))]
pub async fn history_record(
    State(st): State<AppState>,
    Path(id): Path<String>,
) -> Result<Json<RequestResponseRecord>, ApiError> {
    let id: i64 = id
        .parse()
        .map_err(|_| bad("id", format!("'{id}' is not a record id")))?;
    let rec = st
        .store
        .history_record(id)
        .await?
        .ok_or_else(|| ApiError::NotFound(format!("record {id}")))?;
    Ok(Json(rec))
}

/// Every client key with its usage: all time, today and this month (in the key's
/// `budget_tz`), against its budgets.
#[utoipa::path(get, path = "/api/dashboard/keys", tag = "dashboard", security(("admin_key" = [])),
    responses((status = 200, body = DashboardKeys)))]
pub async fn keys(State(st): State<AppState>) -> Result<Json<DashboardKeys>, ApiError> {
    Ok(Json(stats::dashboard_keys(&st.store, &st.keys, st.clock.now()).await?))
}

/// Speed per node × model over the last `minutes`: requests per minute, time to first
/// token (p50, p95) and output tokens per second of generation.
#[utoipa::path(get, path = "/api/dashboard/stats/speed", tag = "dashboard", security(("admin_key" = [])),
    params(("minutes" = Option<u32>, Query, description = "The window, ending now: 1 to 10080 minutes (default 60)")),
    responses((status = 200, body = SpeedStats), (status = 400, description = "Bad parameter")))]
pub async fn speed(State(st): State<AppState>, Query(p): Params) -> Result<Json<SpeedStats>, ApiError> {
    let minutes = int::<u32>(&p, "minutes")?;
    Ok(Json(
        stats::speed(&st.store, st.balancer.registry(), minutes, st.clock.now()).await?,
    ))
}
