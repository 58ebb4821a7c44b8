//! The rows of the usage export: sums per local day × client key × node × model,
//! from `token_stats_hourly_key` (the rollup that has every dimension; kept forever).
//!
//! Like the daily series, a local day is built from UTC hours over a run of constant
//! UTC offset (the caller splits the range at DST changes), so the export's figures
//! are the daily series' figures, split by key, node and model.

use sqlx::Row;

use super::rollup::RollupTotals;
use super::{to_u64, Store, StoreResult};

/// One row of sums: a local day (days since 1970-01-01), a key (`ANONYMOUS` for
/// requests without one), a node and a model.
#[derive(Debug, Clone, PartialEq, Eq)]
pub struct ExportRow {
    pub local_day: i64,
    pub key_id: i64,
    pub node_id: i64,
    pub model: String,
    pub totals: RollupTotals,
}

impl Store {
    /// Sums of the hours in `[from_hour, to_hour)` (Unix seconds) grouped by local day
    /// (with a UTC offset of `utc_offset_secs` over the whole range), key, node and model.
    pub async fn export_rows(&self, from_hour: i64, to_hour: i64, utc_offset_secs: i32) -> StoreResult<Vec<ExportRow>> {
        let rows = sqlx::query(
            "SELECT (hour_start + ?1) / 86400 AS local_day, key_id, node_id, model,
                SUM(request_count) AS request_count, SUM(success_count) AS success_count,
                SUM(error_count) AS error_count, SUM(cancelled_count) AS cancelled_count,
                SUM(estimated_count) AS estimated_count, SUM(input_tokens) AS input_tokens,
                SUM(output_tokens) AS output_tokens, SUM(total_tokens) AS total_tokens,
                SUM(duration_ms_sum) AS duration_ms_sum
             FROM token_stats_hourly_key WHERE hour_start >= ?2 AND hour_start < ?3
             GROUP BY local_day, key_id, node_id, model",
        )
        .bind(utc_offset_secs)
        .bind(from_hour)
        .bind(to_hour)
        .fetch_all(&self.pool)
        .await?;
        Ok(rows
            .iter()
            .map(|r| ExportRow {
                local_day: r.get("local_day"),
                key_id: r.get("key_id"),
                node_id: r.get("node_id"),
                model: r.get("model"),
                totals: RollupTotals {
                    request_count: to_u64(r.get("request_count")),
                    success_count: to_u64(r.get("success_count")),
                    error_count: to_u64(r.get("error_count")),
                    cancelled_count: to_u64(r.get("cancelled_count")),
                    estimated_count: to_u64(r.get("estimated_count")),
                    input_tokens: to_u64(r.get("input_tokens")),
                    output_tokens: to_u64(r.get("output_tokens")),
                    total_tokens: to_u64(r.get("total_tokens")),
                    duration_ms_sum: to_u64(r.get("duration_ms_sum")),
                },
            })
            .collect())
    }
}
