//! The client key on the inference API: which key a request presents, OpenAI's
//! `x-ratelimit-*` headers on keyed answers, `/v1/models` filtered for the key, and
//! the key holder's own view, `GET /v1/key`.
//!
//! The decisions (is the key valid, may it use the model, is it within its limits)
//! are the `keys` module's; this file only maps them to HTTP.

use axum::extract::State;
use axum::http::{header, HeaderMap, HeaderName, HeaderValue};
use axum::response::{IntoResponse, Response};
use axum::Json;
use common::protocol::DashboardKey;
use serde_json::{json, Value};

use super::ProxyError;
use crate::keys::{ClientKey, RateLimitStatus};
use crate::state::AppState;
use crate::stats;
use std::sync::Arc;

/// The secret a request presents: `Authorization: Bearer …`, else `x-api-key`.
pub fn presented(headers: &HeaderMap) -> Option<&str> {
    let bearer = headers
        .get(header::AUTHORIZATION)
        .and_then(|v| v.to_str().ok())
        .and_then(|v| v.strip_prefix("Bearer ").or_else(|| v.strip_prefix("bearer ")));
    bearer
        .or_else(|| headers.get("x-api-key").and_then(|v| v.to_str().ok()))
        .map(str::trim)
        .filter(|k| !k.is_empty())
}

/// The key of a request under the router's `--client-auth` (`None`: anonymous).
pub fn authenticate(st: &AppState, headers: &HeaderMap) -> Result<Option<Arc<ClientKey>>, ProxyError> {
    Ok(st.keys.authenticate(presented(headers), st.client_auth)?)
}

const LIMIT_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-limit-requests");
const REMAINING_REQUESTS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-requests");
const LIMIT_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-limit-tokens");
const REMAINING_TOKENS: HeaderName = HeaderName::from_static("x-ratelimit-remaining-tokens");

/// Adds OpenAI's rate-limit headers for the limits that are set.
pub fn add_rate_headers(headers: &mut HeaderMap, rate: &RateLimitStatus) {
    if let Some((limit, remaining)) = rate.requests {
        headers.insert(LIMIT_REQUESTS, HeaderValue::from(limit));
        headers.insert(REMAINING_REQUESTS, HeaderValue::from(remaining));
    }
    if let Some((limit, remaining)) = rate.tokens {
        headers.insert(LIMIT_TOKENS, HeaderValue::from(limit));
        headers.insert(REMAINING_TOKENS, HeaderValue::from(remaining));
    }
}

/// The key holder's own key: name, prefix, limits and usage (today and this month in
/// the key's `budget_tz`, and all time), without the admin key.
#[utoipa::path(get, path = "/v1/key", tag = "inference",
    responses((status = 200, description = "The presented key, its limits and usage"),
        (status = 401, description = "No valid key presented")))]
pub async fn key_info(State(st): State<AppState>, headers: HeaderMap) -> Response {
    let key = match st
        .keys
        .authenticate(presented(&headers), crate::keys::ClientAuth::Required)
    {
        Ok(Some(k)) => k,
        Ok(None) => return ProxyError::InvalidApiKey("an API key is required").into_response(),
        Err(r) => return ProxyError::from(r).into_response(),
    };
    match stats::key_usage(&st.store, &key, st.clock.now()).await {
        Ok(usage) => Json(self_view(&key, usage)).into_response(),
        Err(e) => ProxyError::Upstream(format!("usage unavailable: {e}")).into_response(),
    }
}

fn self_view(key: &ClientKey, usage: stats::KeyUsage) -> Value {
    let s = key.settings();
    let l = &s.limits;
    let DashboardKey {
        today_tokens,
        month_tokens,
        total_requests,
        total_input_tokens,
        total_output_tokens,
        total_tokens,
        ..
    } = usage.figures;
    json!({
        "id": key.id,
        "name": s.name,
        "prefix": key.prefix,
        "expires_at": l.expires_at,
        "allowed_models": l.allowed_models,
        "limits": {
            "rpm_limit": l.rpm_limit,
            "tpm_limit": l.tpm_limit,
            "max_concurrent": l.max_concurrent,
            "daily_token_budget": l.daily_token_budget,
            "monthly_token_budget": l.monthly_token_budget,
            "budget_tz": l.budget_tz,
        },
        "usage": {
            "today": {"requests": usage.today_requests, "tokens": today_tokens},
            "month": {"requests": usage.month_requests, "tokens": month_tokens},
            "all_time": {
                "requests": total_requests,
                "input_tokens": total_input_tokens,
                "output_tokens": total_output_tokens,
                "tokens": total_tokens,
            },
        },
        "remaining": {
            "daily_tokens": l.daily_token_budget.map(|b| b.saturating_sub(today_tokens)),
            "monthly_tokens": l.monthly_token_budget.map(|b| b.saturating_sub(month_tokens)),
        },
    })
}
