//! Where the store bench's databases live, and how it fills a history fast: SQLite
//! files in a temporary directory, or databases it creates on the PostgreSQL server
//! named by `BENCH_DATABASE` (an admin URL such as `postgres://postgres@127.0.0.1:5432/postgres`).
//!
//! Everything the bench measures goes through `Store`; only the bulk fill talks SQL to
//! the engine directly. The fill is one statement text for both engines but for the
//! generator of row numbers (SQLite's recursive CTE, PostgreSQL's `generate_series`).

use std::time::Instant;

use chrono::{Duration as Span, Utc};
use sqlx::{Connection, Executor, PgConnection, SqliteConnection};

pub enum Databases {
    Sqlite(tempfile::TempDir),
    Postgres { admin: url::Url },
}

/// A connection for the bulk fill.
enum Conn {
    Sqlite(SqliteConnection),
    Postgres(PgConnection),
}

impl Conn {
    async fn execute(&mut self, sql: &str) {
        let done = match self {
            Conn::Sqlite(c) => c.execute(sql).await.map(|_| ()),
            Conn::Postgres(c) => c.execute(sql).await.map(|_| ()),
        };
        done.unwrap_or_else(|e| panic!("{e}: {sql}"));
    }
}

/// The rollup tables and their key columns (see `store::rollup`): the fill rebuilds
/// each from the history as the record writer would have kept it.
const ROLLUPS: [(&str, &str); 7] = [
    ("token_stats_hourly", "hour_start, node_id, model"),
    ("token_stats_hourly_node", "hour_start, node_id"),
    ("token_stats_hourly_model", "hour_start, model"),
    ("token_stats_hourly_all", "hour_start"),
    ("token_stats_total", "node_id, model"),
    ("token_stats_hourly_key", "hour_start, key_id, node_id, model"),
    ("token_stats_total_key", "key_id, node_id, model"),
];

const VALUES: &str = "request_count, success_count, error_count, cancelled_count, estimated_count,
    input_tokens, output_tokens, total_tokens, duration_ms_sum";

impl Databases {
    pub fn from_env() -> Databases {
        match std::env::var("BENCH_DATABASE") {
            Ok(url) if !url.is_empty() => Databases::Postgres {
                admin: url::Url::parse(&url).expect("BENCH_DATABASE is a postgres:// URL"),
            },
            _ => Databases::Sqlite(tempfile::TempDir::new().unwrap()),
        }
    }

    pub fn engine(&self) -> &'static str {
        match self {
            Databases::Sqlite(_) => "SQLite, WAL",
            Databases::Postgres { .. } => "PostgreSQL",
        }
    }

    /// The URL of a new, empty database called `name` (a PostgreSQL database of that
    /// name left by an earlier run is dropped first).
    pub async fn fresh(&self, name: &str) -> String {
        match self {
            Databases::Sqlite(dir) => format!("sqlite://{}/{name}.db", dir.path().display()),
            Databases::Postgres { admin } => {
                let name = format!(
                    "bench_{}",
                    name.to_lowercase().replace(|c: char| !c.is_alphanumeric(), "_")
                );
                let mut conn = PgConnection::connect(admin.as_str()).await.unwrap();
                conn.execute(format!("DROP DATABASE IF EXISTS {name}").as_str())
                    .await
                    .unwrap();
                conn.execute(format!("CREATE DATABASE {name}").as_str()).await.unwrap();
                let mut url = admin.clone();
                url.set_path(&name);
                url.to_string()
            }
        }
    }

    async fn connect(&self, url: &str) -> Conn {
        match self {
            Databases::Sqlite(_) => Conn::Sqlite(SqliteConnection::connect(url).await.unwrap()),
            Databases::Postgres { .. } => Conn::Postgres(PgConnection::connect(url).await.unwrap()),
        }
    }

    /// A CTE `seq(i)` of the integers `from..to`.
    fn sequence(&self, from: u64, to: u64) -> String {
        match self {
            Databases::Sqlite(_) => {
                format!("WITH RECURSIVE seq(i) AS (SELECT {from} UNION ALL SELECT i + 1 FROM seq WHERE i < {to} - 1)")
            }
            Databases::Postgres { .. } => {
                format!("WITH seq(i) AS (SELECT generate_series({from}::BIGINT, {to}::BIGINT - 1))")
            }
        }
    }

    /// Bulk-loads history rows `from..to` of `total` into the store at `url`: spread
    /// over the last 365 days (8 nodes × 3 models), ids in insertion order and
    /// timestamps shuffled; then rebuilds every rollup from the whole history, as the
    /// record writer would have kept them.
    pub async fn load_history(&self, url: &str, from: u64, to: u64, total: u64) {
        let mut conn = self.connect(url).await;
        let start_ms = (Utc::now() - Span::days(365)).timestamp_millis();
        let step_ms = (365 * 24 * 3600 * 1000) / total as i64;
        let t = Instant::now();
        conn.execute(&format!(
            "INSERT INTO request_history (timestamp, completed_at, request_type, model, node_id, node_name, client_ip,
                stream, status, http_status, error_message, duration_ms, input_tokens, output_tokens, total_tokens, token_source)
             {}
             SELECT {start_ms} + ((i * 7919) % {total}) * {step_ms}, {start_ms} + ((i * 7919) % {total}) * {step_ms} + 20,
                'chat_completions', 'model-' || ((i / 8) % 3), (i % 8) + 1, 'node', '127.0.0.1', i % 2,
                CASE WHEN i % 50 = 0 THEN 'error' ELSE 'success' END, 200, NULL, 20 + i % 100,
                10 + i % 90, 50 + i % 400, 60 + i % 90 + i % 400, CASE WHEN i % 7 = 0 THEN 'estimated' ELSE 'reported' END
             FROM seq",
            self.sequence(from, to)
        ))
        .await;
        let inserted = t.elapsed();
        // The finest grain once from the history (one scan), every table from it.
        let count = |condition: &str| format!("CAST(SUM(CASE WHEN {condition} THEN 1 ELSE 0 END) AS BIGINT)");
        conn.execute("DROP TABLE IF EXISTS bench_hourly").await;
        conn.execute(&format!(
            "CREATE TEMP TABLE bench_hourly AS
             SELECT (timestamp / 3600000) * 3600 AS hour_start, COALESCE(api_key_id, 0) AS key_id, node_id, model,
                COUNT(*) AS request_count, {} AS success_count, {} AS error_count, {} AS cancelled_count,
                {} AS estimated_count, CAST(SUM(input_tokens) AS BIGINT) AS input_tokens,
                CAST(SUM(output_tokens) AS BIGINT) AS output_tokens, CAST(SUM(total_tokens) AS BIGINT) AS total_tokens,
                CAST(SUM(duration_ms) AS BIGINT) AS duration_ms_sum, MIN(id) AS min_id, MAX(id) AS max_id
             FROM request_history GROUP BY 1, 2, 3, 4",
            count("status = 'success'"),
            count("status = 'error'"),
            count("status = 'cancelled'"),
            count("token_source = 'estimated'"),
        ))
        .await;
        let sums = VALUES
            .split(',')
            .map(|c| format!("CAST(SUM({}) AS BIGINT)", c.trim()))
            .collect::<Vec<_>>()
            .join(", ");
        for (table, keys) in ROLLUPS {
            let (range_columns, ranges) = if table == "token_stats_hourly_node" {
                (", min_id, max_id", ", MIN(min_id), MAX(max_id)")
            } else {
                ("", "")
            };
            conn.execute(&format!("DELETE FROM {table}")).await;
            conn.execute(&format!(
                "INSERT INTO {table} ({keys}, {VALUES}{range_columns})
                 SELECT {keys}, {sums}{ranges} FROM bench_hourly GROUP BY {keys}"
            ))
            .await;
        }
        conn.execute("DROP TABLE bench_hourly").await;
        if let Conn::Postgres(_) = conn {
            // What autovacuum would do on a live server after a bulk insert, done now so
            // that it does not run during the measurements (and the planner has figures).
            conn.execute("VACUUM ANALYZE").await;
        }
        println!(
            "loaded rows {from}..{to}: inserted in {:.1} s, rollups rebuilt in {:.1} s",
            inserted.as_secs_f64(),
            (t.elapsed() - inserted).as_secs_f64()
        );
    }
}
