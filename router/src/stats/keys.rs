//! Usage per client key, from the key rollups: the dashboard's list of keys and a
//! key holder's own figures (`/v1/key`).
//!
//! Today and this month are the key's `budget_tz` periods, read from the store like
//! every other statistic (the in-memory figures of `keys` serve admission only).

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use common::protocol::{DashboardKey, DashboardKeys};

use super::StatsError;
use crate::keys::{period_totals, ClientKey, KeyRing};
use crate::store::{GroupBy, RollupFilter, RollupTotals, Store};

/// A key's figures, with the request counts of its periods.
#[derive(Debug, Clone)]
pub struct KeyUsage {
    pub figures: DashboardKey,
    pub today_requests: u64,
    pub month_requests: u64,
}

fn usage_of(key: &ClientKey, all_time: RollupTotals, day: RollupTotals, month: RollupTotals) -> KeyUsage {
    let s = key.settings();
    KeyUsage {
        figures: DashboardKey {
            id: key.id,
            name: s.name.clone(),
            prefix: key.prefix.clone(),
            enabled: s.enabled,
            revoked: s.revoked,
            last_used_at: key.last_used_at(),
            total_requests: all_time.request_count,
            total_input_tokens: all_time.input_tokens,
            total_output_tokens: all_time.output_tokens,
            total_tokens: all_time.total_tokens,
            today_tokens: day.total_tokens,
            month_tokens: month.total_tokens,
            daily_token_budget: s.limits.daily_token_budget,
            monthly_token_budget: s.limits.monthly_token_budget,
        },
        today_requests: day.request_count,
        month_requests: month.request_count,
    }
}

/// One key's usage at `now`.
pub async fn key_usage(store: &Store, key: &ClientKey, now: DateTime<Utc>) -> Result<KeyUsage, StatsError> {
    let filter = RollupFilter {
        key_id: Some(key.id),
        ..Default::default()
    };
    let all_time = store
        .rollup_totals(GroupBy::Nothing, &filter)
        .await?
        .first()
        .map(|(_, t)| *t)
        .unwrap_or_default();
    let (day, month) = period_totals(store, key.id, key.settings().tz, now).await?;
    Ok(usage_of(key, all_time, day, month))
}

/// Every key with its usage (`GET /api/dashboard/keys`).
pub async fn dashboard_keys(store: &Store, keys: &KeyRing, now: DateTime<Utc>) -> Result<DashboardKeys, StatsError> {
    let all_time: HashMap<i64, RollupTotals> = store
        .rollup_totals(GroupBy::Key, &RollupFilter::default())
        .await?
        .into_iter()
        .filter_map(|(k, t)| Some((k.key_id?, t)))
        .collect();
    let mut out = Vec::new();
    for key in keys.all() {
        let (day, month) = period_totals(store, key.id, key.settings().tz, now).await?;
        let total = all_time.get(&key.id).copied().unwrap_or_default();
        out.push(usage_of(&key, total, day, month).figures);
    }
    Ok(DashboardKeys { keys: out })
}
