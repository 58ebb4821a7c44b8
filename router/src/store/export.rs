//! The rows of the usage export: sums per local day × client key × node × model,
//! from `token_stats_hourly_key` (the rollup that has every dimension; kept forever).
//!
//! Like the daily series, a local day is built from UTC hours over a run of constant
//! UTC offset (the caller splits the range at DST changes), so the export's figures
//! are the daily series' figures, split by key, node and model.

use super::rollup::{decode_sums, sum, RollupTotals, VALUE_COLUMNS};
use super::sql::args;
use super::{Store, StoreResult};

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
        let sums: Vec<String> = VALUE_COLUMNS.iter().map(|c| sum(c)).collect();
        let sql = format!(
            "SELECT (hour_start + $1) / 86400 AS local_day, key_id, node_id, model, {}
             FROM token_stats_hourly_key WHERE hour_start >= $2 AND hour_start < $3
             GROUP BY local_day, key_id, node_id, model",
            sums.join(", ")
        );
        self.db()
            .fetch_all(&sql, &args![utc_offset_secs as i64, from_hour, to_hour], |r| {
                ExportRow {
                    local_day: r.int("local_day"),
                    key_id: r.int("key_id"),
                    node_id: r.int("node_id"),
                    model: r.text("model"),
                    totals: decode_sums(r),
                }
            })
            .await
    }
}
