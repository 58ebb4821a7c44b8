//! The rollups, kept forever: written with the history rows they sum, read by every
//! statistic.
//!
//! Seven tables hold the same sums at different grains: `token_stats_hourly` (UTC hour
//! x node x model), `token_stats_hourly_node`, `token_stats_hourly_model`,
//! `token_stats_hourly_all` (UTC hour), `token_stats_total` (node x model, all time),
//! and with the client key (0: anonymous) `token_stats_hourly_key` (UTC hour x key x
//! node x model) and `token_stats_total_key` (key x node x model). Each engine's
//! writer updates all of them in its transaction (the rows to add come from
//! [`rows_to_add`], the statements from [`upsert_sql`] and
//! [`upsert_all_sql_postgres`]);
//! [`Store::rollup_totals`] reads the smallest table that can answer, so queries stay
//! fast however long the history grows. Every statistic of the router
//! (node totals at start-up, Prometheus counters at boot, the dashboard's totals,
//! by-node, by-model, daily and monthly figures) is one call of `rollup_totals`.
//! Records without a node (rejected before routing) are in the history only.
//!
//! On PostgreSQL every table also has a `shard` column, last in its primary key: each
//! replica's writer upserts the rows of its own shard (see `postgres::writer`), so
//! replicas committing at once do not wait for each other's row locks. A key may
//! therefore have several rows, and every read here and elsewhere sums over the key
//! columns (`SUM`, and `MIN`/`MAX` for the id ranges) rather than reading one row.

use std::collections::BTreeMap;

use chrono::{DateTime, Utc};
use common::protocol::{RequestResponseRecord, RequestStatus, TokenSource};

use super::sql::{Sql, StoreRow};
use super::{to_u64, Dialect, Store, StoreResult};

/// The `key_id` of requests made without a client key, in the key rollups.
pub const ANONYMOUS: i64 = 0;

/// The summed columns, in the order of [`RollupTotals::values`].
pub(super) const VALUE_COLUMNS: [&str; 9] = [
    "request_count",
    "success_count",
    "error_count",
    "cancelled_count",
    "estimated_count",
    "input_tokens",
    "output_tokens",
    "total_tokens",
    "duration_ms_sum",
];

/// A rollup table and the key columns it is grouped by.
pub(super) struct RollupTable {
    pub name: &'static str,
    pub by_hour: bool,
    /// Grouped by client key as well (0: anonymous); node and model always come with it.
    pub by_key: bool,
    pub by_node: bool,
    pub by_model: bool,
    /// Keeps `min_id` and `max_id`: the range of history ids summed in each row (the
    /// history page's node filter reads them, see `super::history`).
    pub id_range: bool,
}

const fn table(name: &'static str, by_hour: bool, by_node: bool, by_model: bool) -> RollupTable {
    RollupTable {
        name,
        by_hour,
        by_key: false,
        by_node,
        by_model,
        id_range: false,
    }
}

/// Every grain, finest first. A query reads the one whose keys are exactly what it
/// filters or groups by, so it never sums rows of dimensions it does not need.
pub(super) const TABLES: [RollupTable; 7] = [
    table("token_stats_hourly", true, true, true),
    RollupTable {
        id_range: true,
        ..table("token_stats_hourly_node", true, true, false)
    },
    table("token_stats_hourly_model", true, false, true),
    table("token_stats_hourly_all", true, false, false),
    table("token_stats_total", false, true, true),
    RollupTable {
        by_key: true,
        ..table("token_stats_hourly_key", true, true, true)
    },
    RollupTable {
        by_key: true,
        ..table("token_stats_total_key", false, true, true)
    },
];

impl RollupTable {
    pub fn key_columns(&self) -> Vec<&'static str> {
        let mut cols = Vec::new();
        if self.by_hour {
            cols.push("hour_start");
        }
        if self.by_key {
            cols.push("key_id");
        }
        if self.by_node {
            cols.push("node_id");
        }
        if self.by_model {
            cols.push("model");
        }
        cols
    }

    /// The table for a query that needs these dimensions.
    fn for_query(hourly: bool, key: bool, node: bool, model: bool) -> &'static RollupTable {
        match (key, hourly) {
            (true, true) => &TABLES[5],
            (true, false) => &TABLES[6],
            (false, false) => &TABLES[4],
            (false, true) => TABLES[..4]
                .iter()
                .find(|t| t.by_node == node && t.by_model == model)
                .expect("every combination has a table"),
        }
    }
}

fn hour_start(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(3600) * 3600
}

/// The column of PostgreSQL's rollups that tells the writers' rows apart (SQLite has
/// one writer per file and no such column).
const SHARD: &str = "shard";

/// SQLite's upsert adding one row of sums to `table` (`?` placeholders: the key
/// columns, the sums, then `min_id` and `max_id`).
pub(super) fn upsert_sql(table: &RollupTable) -> String {
    upsert(table, Dialect::Sqlite, &mut 0)
}

/// PostgreSQL's upserts of every rollup table in one statement, so that a commit costs
/// one round trip for all of them instead of one per table: `$1` is the writer's
/// shard, then per table of [`TABLES`], in order, one array per column (the key
/// columns, the sums, then `min_id` and `max_id`), every row of the batch at once.
/// An empty array adds nothing to its table.
pub(super) fn upsert_all_sql_postgres() -> String {
    let mut param = 1;
    let parts: Vec<String> = TABLES
        .iter()
        .enumerate()
        .map(|(i, t)| format!("t{i} AS ({})", upsert(t, Dialect::Postgres, &mut param)))
        .collect();
    format!("WITH {} SELECT 1", parts.join(", "))
}

/// The upsert adding rows of sums to `table`. PostgreSQL's takes its arrays from the
/// parameters after `*param` (advanced past them) and the shard from `$1`.
fn upsert(table: &RollupTable, dialect: Dialect, param: &mut usize) -> String {
    let keys = table.key_columns();
    let mut values = VALUE_COLUMNS.to_vec();
    // In PostgreSQL a bare column is ambiguous next to `excluded`.
    let current = match dialect {
        Dialect::Sqlite => String::new(),
        Dialect::Postgres => format!("{}.", table.name),
    };
    let mut updates: Vec<String> = VALUE_COLUMNS
        .iter()
        .map(|c| format!("{c} = {current}{c} + excluded.{c}"))
        .collect();
    if table.id_range {
        values.extend(["min_id", "max_id"]);
        // NULL (a row from before migration 005 whose history is pruned) is no bound.
        for (col, pick) in [
            ("min_id", Dialect::least as fn(Dialect, &str, &str) -> String),
            ("max_id", Dialect::greatest),
        ] {
            let both = pick(dialect, &format!("{current}{col}"), &format!("excluded.{col}"));
            updates.push(format!("{col} = COALESCE({both}, excluded.{col})"));
        }
    }
    let source = match dialect {
        Dialect::Sqlite => format!("VALUES ({})", vec!["?"; keys.len() + values.len()].join(", ")),
        Dialect::Postgres => {
            let arrays: Vec<String> = keys
                .iter()
                .chain(&values)
                .map(|c| {
                    *param += 1;
                    format!("${}::{}[]", *param, if *c == "model" { "text" } else { "bigint" })
                })
                .collect();
            format!("SELECT *, $1::bigint FROM UNNEST({})", arrays.join(", "))
        }
    };
    let mut columns = keys.clone();
    columns.extend(&values);
    let mut row_key = keys;
    if dialect == Dialect::Postgres {
        columns.push(SHARD);
        row_key.push(SHARD);
    }
    format!(
        "INSERT INTO {} ({}) {source} ON CONFLICT ({}) DO UPDATE SET {}",
        table.name,
        columns.join(", "),
        row_key.join(", "),
        updates.join(", ")
    )
}

/// The key of a rollup row: (hour, key, node, model), 0 or "" where the table has no
/// such column.
pub(super) type RowKey<'r> = (i64, i64, i64, &'r str);

/// The sums of one rollup row and the range of history ids they come from.
pub(super) type RowSums = (RollupTotals, i64, i64);

/// What `records`, inserted as history rows `ids`, add to `table`: one entry per row
/// of the table, in key order (so concurrent writers lock rows in one order).
pub(super) fn rows_to_add<'r>(
    table: &RollupTable,
    records: impl IntoIterator<Item = (&'r RequestResponseRecord, i64)>,
) -> BTreeMap<RowKey<'r>, RowSums> {
    let mut sums: BTreeMap<RowKey<'r>, RowSums> = BTreeMap::new();
    for (r, id) in records {
        let Some(node_id) = r.node_id else { continue };
        let hour = if table.by_hour { hour_start(r.timestamp) } else { 0 };
        let key = if table.by_key {
            r.api_key_id.unwrap_or(ANONYMOUS)
        } else {
            0
        };
        let node = if table.by_node { node_id } else { 0 };
        let model = if table.by_model { r.model.as_str() } else { "" };
        let (totals, min_id, max_id) =
            sums.entry((hour, key, node, model))
                .or_insert((RollupTotals::default(), id, id));
        totals.add(&RollupTotals::of(r));
        *min_id = (*min_id).min(id);
        *max_id = (*max_id).max(id);
    }
    sums
}

/// What the rows are grouped by.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum GroupBy {
    Nothing,
    Node,
    Model,
    NodeAndModel,
    /// Client key (`ANONYMOUS` for requests without one).
    Key,
    Hour,
    /// Local days of a zone whose UTC offset is `utc_offset_secs` over the filtered
    /// hours: the key is the day number since 1970-01-01 of each hour's local start.
    LocalDay {
        utc_offset_secs: i32,
    },
}

/// Restricts the rows summed; `None` fields do not restrict.
#[derive(Debug, Clone, Default)]
pub struct RollupFilter {
    /// A client key id, or `ANONYMOUS`.
    pub key_id: Option<i64>,
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
    pub key_id: Option<i64>,
    pub node_id: Option<i64>,
    pub model: Option<String>,
    pub hour_start: Option<i64>,
    pub local_day: Option<i64>,
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
    /// The contribution of one record.
    pub fn of(r: &RequestResponseRecord) -> Self {
        RollupTotals {
            request_count: 1,
            success_count: (r.status == RequestStatus::Success) as u64,
            error_count: (r.status == RequestStatus::Error) as u64,
            cancelled_count: (r.status == RequestStatus::Cancelled) as u64,
            estimated_count: (r.token_source == TokenSource::Estimated) as u64,
            input_tokens: r.input_tokens,
            output_tokens: r.output_tokens,
            total_tokens: r.total_tokens,
            duration_ms_sum: r.duration_ms,
        }
    }

    /// The sums in the order of `VALUE_COLUMNS`.
    pub(super) fn values(&self) -> [u64; 9] {
        [
            self.request_count,
            self.success_count,
            self.error_count,
            self.cancelled_count,
            self.estimated_count,
            self.input_tokens,
            self.output_tokens,
            self.total_tokens,
            self.duration_ms_sum,
        ]
    }

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

/// Rows of one grouping: its key and its sums.
pub type RollupRows = Vec<(RollupKey, RollupTotals)>;

impl Store {
    /// Sums the rollups matching `filter`, grouped by `group`, ordered by the group key.
    pub async fn rollup_totals(&self, group: GroupBy, filter: &RollupFilter) -> StoreResult<RollupRows> {
        let q = totals_query(group, filter);
        self.db().fetch_all(&q.text, &q.args, |r| decode_totals(group, r)).await
    }

    /// Several groupings of the same rows, read from one snapshot: their sums agree
    /// even while records are being committed.
    pub async fn rollup_totals_together(
        &self,
        groups: &[GroupBy],
        filter: &RollupFilter,
    ) -> StoreResult<Vec<RollupRows>> {
        let mut tx = self.snapshot().await?;
        let mut out = Vec::with_capacity(groups.len());
        for &group in groups {
            let q = totals_query(group, filter);
            out.push(tx.fetch_all(&q.text, &q.args, |r| decode_totals(group, r)).await?);
        }
        tx.commit().await?;
        Ok(out)
    }
}

/// The sum of `column` as a 64-bit integer on both engines (PostgreSQL sums `BIGINT`
/// into `NUMERIC`).
pub(super) fn sum(column: &str) -> String {
    format!("CAST(COALESCE(SUM({column}), 0) AS BIGINT) AS {column}")
}

fn totals_query(group: GroupBy, filter: &RollupFilter) -> Sql<'_> {
    let day_expr;
    let (key_cols, key_select) = match group {
        GroupBy::Nothing => ("", ""),
        GroupBy::Node => ("node_id", "node_id"),
        GroupBy::Model => ("model", "model"),
        GroupBy::NodeAndModel => ("node_id, model", "node_id, model"),
        GroupBy::Key => ("key_id", "key_id"),
        GroupBy::Hour => ("hour_start", "hour_start"),
        GroupBy::LocalDay { utc_offset_secs } => {
            // An integer from chrono-tz, not user text: safe to format into SQL.
            day_expr = format!("(hour_start + {utc_offset_secs}) / 86400 AS local_day");
            ("local_day", day_expr.as_str())
        }
    };
    let hourly = matches!(group, GroupBy::Hour | GroupBy::LocalDay { .. })
        || filter.from_hour.is_some()
        || filter.to_hour.is_some();
    let needs_node = filter.node_id.is_some() || matches!(group, GroupBy::Node | GroupBy::NodeAndModel);
    let needs_model = filter.model.is_some() || matches!(group, GroupBy::Model | GroupBy::NodeAndModel);
    let needs_key = filter.key_id.is_some() || group == GroupBy::Key;
    let table = RollupTable::for_query(hourly, needs_key, needs_node, needs_model);
    let sums: Vec<String> = VALUE_COLUMNS.iter().map(|c| sum(c)).collect();
    let mut q = Sql::new("SELECT ");
    if !key_cols.is_empty() {
        q.push(key_select).push(", ");
    }
    q.push(&sums.join(", "))
        .push(&format!(" FROM {} WHERE 1 = 1", table.name));
    if let Some(id) = filter.key_id {
        q.push(" AND key_id = ").bind(id);
    }
    if let Some(id) = filter.node_id {
        q.push(" AND node_id = ").bind(id);
    }
    if let Some(m) = &filter.model {
        q.push(" AND model = ").bind(m);
    }
    if let Some(from) = filter.from_hour {
        q.push(" AND hour_start >= ").bind(from);
    }
    if let Some(to) = filter.to_hour {
        q.push(" AND hour_start < ").bind(to);
    }
    if !key_cols.is_empty() {
        q.push(" GROUP BY ").push(key_cols).push(" ORDER BY ").push(key_cols);
    }
    q
}

/// The sums of a row named after `VALUE_COLUMNS`.
pub(super) fn decode_sums(r: &dyn StoreRow) -> RollupTotals {
    RollupTotals {
        request_count: to_u64(r.int("request_count")),
        success_count: to_u64(r.int("success_count")),
        error_count: to_u64(r.int("error_count")),
        cancelled_count: to_u64(r.int("cancelled_count")),
        estimated_count: to_u64(r.int("estimated_count")),
        input_tokens: to_u64(r.int("input_tokens")),
        output_tokens: to_u64(r.int("output_tokens")),
        total_tokens: to_u64(r.int("total_tokens")),
        duration_ms_sum: to_u64(r.int("duration_ms_sum")),
    }
}

fn decode_totals(group: GroupBy, r: &dyn StoreRow) -> (RollupKey, RollupTotals) {
    let key = RollupKey {
        key_id: (group == GroupBy::Key).then(|| r.int("key_id")),
        node_id: matches!(group, GroupBy::Node | GroupBy::NodeAndModel).then(|| r.int("node_id")),
        model: matches!(group, GroupBy::Model | GroupBy::NodeAndModel).then(|| r.text("model")),
        hour_start: matches!(group, GroupBy::Hour).then(|| r.int("hour_start")),
        local_day: matches!(group, GroupBy::LocalDay { .. }).then(|| r.int("local_day")),
    };
    (key, decode_sums(r))
}

#[cfg(test)]
mod tests;
