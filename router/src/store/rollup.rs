//! Aggregation queries over `token_stats_hourly`, the rollups kept forever.
//!
//! Every statistic of the router (node totals at start-up, Prometheus counters at
//! boot, the dashboard's totals, by-node, by-model, daily and monthly figures) is one
//! call of [`Store::rollup_totals`] with a different grouping, so they cannot disagree.

use sqlx::{QueryBuilder, Row, Sqlite};

use super::{to_u64, Store, StoreResult};

/// What the rows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Nothing,
    Node,
    Model,
    NodeAndModel,
    Hour,
}

/// Restricts the rows summed; `None` fields do not restrict.
#[derive(Debug, Clone, Default)]
pub struct RollupFilter {
    pub node_id: Option<i64>,
    pub model: Option<String>,
    /// Unix seconds, inclusive.
    pub from_hour: Option<i64>,
    /// Unix seconds, exclusive.
    pub to_hour: Option<i64>,
}

/// The group of a row, per [`GroupBy`].
#[derive(Debug, Clone, PartialEq, Eq, Hash, Default)]
pub struct RollupKey {
    pub node_id: Option<i64>,
    pub model: Option<String>,
    pub hour_start: Option<i64>,
}

/// Sums of one group.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RollupTotals {
    pub request_count: u64,
    pub success_count: u64,
    pub error_count: u64,
    pub cancelled_count: u64,
    pub estimated_count: u64,
    pub input_tokens: u64,
    pub output_tokens: u64,
    pub total_tokens: u64,
    pub duration_ms_sum: u64,
}

impl RollupTotals {
    pub fn add(&mut self, o: &RollupTotals) {
        self.request_count += o.request_count;
        self.success_count += o.success_count;
        self.error_count += o.error_count;
        self.cancelled_count += o.cancelled_count;
        self.estimated_count += o.estimated_count;
        self.input_tokens = self.input_tokens.saturating_add(o.input_tokens);
        self.output_tokens = self.output_tokens.saturating_add(o.output_tokens);
        self.total_tokens = self.total_tokens.saturating_add(o.total_tokens);
        self.duration_ms_sum = self.duration_ms_sum.saturating_add(o.duration_ms_sum);
    }
}

impl Store {
    /// Sums the rollups matching `filter`, grouped by `group`, ordered by the group key.
    pub async fn rollup_totals(
        &self,
        group: GroupBy,
        filter: &RollupFilter,
    ) -> StoreResult<Vec<(RollupKey, RollupTotals)>> {
        let key_cols = match group {
            GroupBy::Nothing => "",
            GroupBy::Node => "node_id",
            GroupBy::Model => "model",
            GroupBy::NodeAndModel => "node_id, model",
            GroupBy::Hour => "hour_start",
        };
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT ");
        if !key_cols.is_empty() {
            q.push(key_cols).push(", ");
        }
        q.push(
            "COALESCE(SUM(request_count), 0) AS request_count, COALESCE(SUM(success_count), 0) AS success_count,
             COALESCE(SUM(error_count), 0) AS error_count, COALESCE(SUM(cancelled_count), 0) AS cancelled_count,
             COALESCE(SUM(estimated_count), 0) AS estimated_count, COALESCE(SUM(input_tokens), 0) AS input_tokens,
             COALESCE(SUM(output_tokens), 0) AS output_tokens, COALESCE(SUM(total_tokens), 0) AS total_tokens,
             COALESCE(SUM(duration_ms_sum), 0) AS duration_ms_sum
             FROM token_stats_hourly WHERE 1 = 1",
        );
        if let Some(id) = filter.node_id {
            q.push(" AND node_id = ").push_bind(id);
        }
        if let Some(m) = &filter.model {
            q.push(" AND model = ").push_bind(m.clone());
        }
        if let Some(from) = filter.from_hour {
            q.push(" AND hour_start >= ").push_bind(from);
        }
        if let Some(to) = filter.to_hour {
            q.push(" AND hour_start < ").push_bind(to);
        }
        if !key_cols.is_empty() {
            q.push(" GROUP BY ").push(key_cols).push(" ORDER BY ").push(key_cols);
        }
        let rows = q.build().fetch_all(&self.pool).await?;
        Ok(rows
            .iter()
            .map(|r| {
                let key = RollupKey {
                    node_id: matches!(group, GroupBy::Node | GroupBy::NodeAndModel).then(|| r.get("node_id")),
                    model: matches!(group, GroupBy::Model | GroupBy::NodeAndModel).then(|| r.get("model")),
                    hour_start: matches!(group, GroupBy::Hour).then(|| r.get("hour_start")),
                };
                let totals = RollupTotals {
                    request_count: to_u64(r.get("request_count")),
                    success_count: to_u64(r.get("success_count")),
                    error_count: to_u64(r.get("error_count")),
                    cancelled_count: to_u64(r.get("cancelled_count")),
                    estimated_count: to_u64(r.get("estimated_count")),
                    input_tokens: to_u64(r.get("input_tokens")),
                    output_tokens: to_u64(r.get("output_tokens")),
                    total_tokens: to_u64(r.get("total_tokens")),
                    duration_ms_sum: to_u64(r.get("duration_ms_sum")),
                };
                (key, totals)
            })
            .collect())
    }
}
