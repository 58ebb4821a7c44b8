//! `llm-router migrate-store`: copies one store into another (typically SQLite into
//! PostgreSQL), so that every statistic and every history page reads the same after.
//!
//! Both stores are opened with [`Store::open`] (migrations applied), then every table
//! the two schemas share is copied with its ids: `nodes`, `api_keys`,
//! `request_history`, `request_bodies` and the seven rollup tables (with the `min_id`/`max_id` ranges
//! the history page's node filter reads). Rows go in batches of [`BATCH`], history
//! by id ranges, so nothing is held in memory whole. The source is read in one
//! snapshot; the target is written in one transaction, so a failed copy leaves it as
//! it was.
//!
//! A target that holds any row (node, key, history or rollup) is refused unless
//! `force`: then its tables are emptied first, in the same transaction. On
//! PostgreSQL each id sequence is then set past the copied ids (the history's past
//! the rollups' `max_id` too, so new records never fall inside an old hour's range).
//! PostgreSQL's `record_uid` (the writer's idempotence key) is copied from a
//! PostgreSQL source and made afresh for rows from SQLite, which has none.
//!
//! PostgreSQL's rollups keep a row per writer's shard (`rollup`); SQLite's have no
//! `shard` column. The rollups are therefore read grouped by their key columns
//! (sums added, id ranges widened to hold them all) and written as one row per key:
//! into SQLite as it must, into PostgreSQL as shard 0.

use super::rollup::{sum, TABLES, VALUE_COLUMNS};
use super::sql::{Arg, Sql, StoreRow, StoreTx};
use super::{Dialect, Store, StoreError, StoreResult};

/// Rows read (and written) per batch.
const BATCH: i64 = 2000;

/// Rows of `request_bodies` per batch: two bodies of up to `--stored-body-max-bytes`
/// (4 MiB at most) each, so a batch stays within a few megabytes at the default.
const BODY_BATCH: i64 = 32;

/// Most placeholders in one statement (SQLite allows 32,766, PostgreSQL 65,535).
const MAX_PARAMS: usize = 30_000;

#[derive(Debug, Clone, Copy, PartialEq, Eq)]
enum Kind {
    Int,
    Text,
    Bytes,
}

/// A table to copy: its columns (those both schemas have) and how to page through it.
struct Table {
    name: &'static str,
    columns: Vec<(&'static str, Kind)>,
    /// What is read for each column (a rollup's aggregates), when not the column.
    read_as: Option<Vec<String>>,
    /// Paged by `id` ranges; otherwise grouped by `order`, in that order, by offset
    /// (the rollups, far smaller than the history).
    by_id: bool,
    order: String,
    /// Rows per batch.
    batch: i64,
}

/// Copied rows, per table.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct MigrationReport {
    pub tables: Vec<(&'static str, u64)>,
}

fn with_id(name: &'static str, columns: &[(&'static str, Kind)]) -> Table {
    Table {
        name,
        columns: columns.to_vec(),
        read_as: None,
        by_id: true,
        order: "id".into(),
        batch: BATCH,
    }
}

/// Every table both schemas have, parents first.
fn tables() -> Vec<Table> {
    use Kind::{Bytes, Int, Text};
    let mut all = vec![
        with_id(
            "nodes",
            &[
                ("id", Int),
                ("name", Text),
                ("base_url", Text),
                ("api_key", Text),
                ("enabled", Int),
                ("include_usage", Int),
                ("source", Text),
                ("created_at", Int),
                ("deleted_at", Int),
                ("kind", Text),
                ("kind_explicit", Int),
                ("tls_insecure", Int),
                ("max_concurrent", Int),
                ("weight", Int),
            ],
        ),
        with_id(
            "api_keys",
            &[
                ("id", Int),
                ("name", Text),
                ("prefix", Text),
                ("secret_hash", Bytes),
                ("enabled", Int),
                ("revoked", Int),
                ("created_at", Int),
                ("last_used_at", Int),
                ("expires_at", Int),
                ("allowed_models", Text),
                ("rpm_limit", Int),
                ("tpm_limit", Int),
                ("max_concurrent", Int),
                ("daily_token_budget", Int),
                ("monthly_token_budget", Int),
                ("budget_tz", Text),
                ("priority", Int),
            ],
        ),
        with_id(
            "request_history",
            &[
                ("id", Int),
                ("timestamp", Int),
                ("completed_at", Int),
                ("request_type", Text),
                ("model", Text),
                ("node_id", Int),
                ("node_name", Text),
                ("client_ip", Text),
                ("stream", Int),
                ("status", Text),
                ("http_status", Int),
                ("error_message", Text),
                ("duration_ms", Int),
                ("input_tokens", Int),
                ("output_tokens", Int),
                ("total_tokens", Int),
                ("token_source", Text),
                ("api_key_id", Int),
                ("api_key_name", Text),
                ("time_to_first_token_ms", Int),
            ],
        ),
        Table {
            batch: BODY_BATCH,
            ..with_id(
                "request_bodies",
                &[
                    ("id", Int),
                    ("request_body", Text),
                    ("request_truncated", Int),
                    ("response_body", Text),
                    ("response_truncated", Int),
                ],
            )
        },
    ];
    for t in &TABLES {
        let keys = t.key_columns();
        let mut columns: Vec<(&'static str, Kind)> = keys
            .iter()
            .map(|&c| (c, if c == "model" { Text } else { Int }))
            .collect();
        columns.extend(VALUE_COLUMNS.iter().map(|&c| (c, Int)));
        let mut read_as: Vec<String> = keys.iter().map(|c| c.to_string()).collect();
        read_as.extend(VALUE_COLUMNS.iter().map(|c| sum(c)));
        if t.id_range {
            columns.extend([("min_id", Int), ("max_id", Int)]);
            read_as.extend(["MIN(min_id) AS min_id".into(), "MAX(max_id) AS max_id".into()]);
        }
        all.push(Table {
            name: t.name,
            columns,
            read_as: Some(read_as),
            by_id: false,
            order: keys.join(", "),
            batch: BATCH,
        });
    }
    all
}

/// One value of a row.
#[derive(Debug, Clone)]
enum Value {
    Int(Option<i64>),
    Text(Option<String>),
    Bytes(Option<Vec<u8>>),
}

impl Value {
    fn read(r: &dyn StoreRow, col: &str, kind: Kind) -> Value {
        match kind {
            Kind::Int => Value::Int(r.opt_int(col)),
            // A NUL an older router stored in SQLite: PostgreSQL refuses it (see `writer`).
            Kind::Text => Value::Text(r.opt_text(col).map(|t| t.replace('\0', "\u{fffd}"))),
            Kind::Bytes => Value::Bytes(r.opt_bytes(col)),
        }
    }

    fn arg(&self) -> Arg<'_> {
        match self {
            Value::Int(v) => Arg::OptInt(*v),
            Value::Text(v) => Arg::OptText(v.as_deref()),
            Value::Bytes(v) => Arg::OptBytes(v.as_deref()),
        }
    }
}

/// Copies every node, key, history record and rollup row of the store at `from` into
/// the store at `to`; see the module's documentation.
pub async fn migrate_store(from: &str, to: &str, force: bool) -> StoreResult<MigrationReport> {
    let source = Store::open(from).await?;
    let target = Store::open(to).await?;
    let result = copy(&source, &target, force).await;
    source.close().await;
    target.close().await;
    result
}

async fn copy(source: &Store, target: &Store, force: bool) -> StoreResult<MigrationReport> {
    let tables = tables();
    let mut src = source.snapshot().await?;
    let mut dst = target.begin().await?;
    // Children first when emptying (`request_bodies` refers to `request_history`).
    for table in tables.iter().rev() {
        let any = dst
            .fetch_optional(&format!("SELECT 1 AS one FROM {} LIMIT 1", table.name), &[], |_| ())
            .await?;
        if any.is_some() {
            if !force {
                return Err(StoreError::TargetNotEmpty(table.name));
            }
            dst.execute(&format!("DELETE FROM {}", table.name), &[]).await?;
        }
    }
    let mut report = MigrationReport::default();
    for table in &tables {
        let copied = copy_table(table, &mut src, source.dialect(), &mut dst, target.dialect()).await?;
        report.tables.push((table.name, copied));
    }
    if target.dialect() == Dialect::Postgres {
        for (table, past) in [
            ("nodes", "SELECT MAX(id) AS m FROM nodes"),
            ("api_keys", "SELECT MAX(id) AS m FROM api_keys"),
            (
                "request_history",
                "SELECT GREATEST((SELECT MAX(id) FROM request_history),
                    (SELECT MAX(max_id) FROM token_stats_hourly_node)) AS m",
            ),
        ] {
            let sql =
                format!("SELECT setval(pg_get_serial_sequence('{table}', 'id'), COALESCE(({past}), 0) + 1, false)");
            dst.execute(&sql, &[]).await?;
        }
    }
    dst.commit().await?;
    src.commit().await?;
    Ok(report)
}

/// Copies one table in batches; returns its rows.
async fn copy_table(
    table: &Table,
    src: &mut StoreTx,
    src_dialect: Dialect,
    dst: &mut StoreTx,
    dst_dialect: Dialect,
) -> StoreResult<u64> {
    let names: Vec<&str> = table.columns.iter().map(|(c, _)| *c).collect();
    let is_history = table.name == "request_history";
    let read_uid = is_history && src_dialect == Dialect::Postgres;
    let write_uid = is_history && dst_dialect == Dialect::Postgres;
    let read = table
        .read_as
        .as_ref()
        .map_or_else(|| names.join(", "), |r| r.join(", "));
    let mut select = format!("SELECT {read}");
    if read_uid {
        select.push_str(", record_uid");
    }
    select.push_str(&format!(" FROM {}", table.name));
    let mut insert_columns = names.join(", ");
    if write_uid {
        insert_columns.push_str(", record_uid");
    }
    let width = names.len() + usize::from(write_uid);
    let mut copied = 0u64;
    let mut last_id = i64::MIN;
    loop {
        let (sql, args) = if table.by_id {
            (
                format!("{select} WHERE id > $1 ORDER BY id LIMIT $2"),
                vec![Arg::Int(last_id), Arg::Int(table.batch)],
            )
        } else {
            (
                format!("{select} GROUP BY {0} ORDER BY {0} LIMIT $1 OFFSET $2", table.order),
                vec![Arg::Int(table.batch), Arg::Int(copied as i64)],
            )
        };
        let rows: Vec<Vec<Value>> = src
            .fetch_all(&sql, &args, |r| {
                let mut row: Vec<Value> = table.columns.iter().map(|&(c, kind)| Value::read(r, c, kind)).collect();
                if write_uid {
                    let uid = if read_uid { r.opt_bytes("record_uid") } else { None };
                    let uid = uid.unwrap_or_else(|| rand::random::<u128>().to_be_bytes().to_vec());
                    row.push(Value::Bytes(Some(uid)));
                }
                row
            })
            .await?;
        if rows.is_empty() {
            return Ok(copied);
        }
        for chunk in rows.chunks((MAX_PARAMS / width).max(1)) {
            let mut q = Sql::new(&format!("INSERT INTO {} ({insert_columns}) VALUES ", table.name));
            for (i, row) in chunk.iter().enumerate() {
                q.push(if i == 0 { "(" } else { ", (" });
                for (j, value) in row.iter().enumerate() {
                    if j > 0 {
                        q.push(", ");
                    }
                    q.bind(value.arg());
                }
                q.push(")");
            }
            dst.execute(&q.text, &q.args).await?;
        }
        if table.by_id {
            if let Some(Value::Int(Some(id))) = rows.last().and_then(|r| r.first()) {
                last_id = *id;
            }
        }
        copied += rows.len() as u64;
        if (rows.len() as i64) < table.batch {
            return Ok(copied);
        }
    }
}

#[cfg(test)]
mod tests;
