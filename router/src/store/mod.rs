//! Persistence: SQLite through `sqlx`, with embedded numbered migrations; request
//! records are written through a `rusqlite` connection of their own (see `writer`).
//!
//! The store owns every SQL statement of the router and nothing else: it does not know
//! about HTTP, balancing or tokenizers. One concern per file: `nodes` (the node
//! registry's rows), `writer` (request records, committed in batches together with
//! their rollups), `checkpoint` (the WAL, copied into the database file in the
//! background), `history` (reading and pruning records), `rollup` (the
//! aggregation queries the statistics are built from), `export` (the usage export's
//! rows per day × key × node × model) and `speed` (generation speed and time to first
//! token over a recent window of the history).

pub mod checkpoint;
mod export;
mod history;
mod keys;
mod nodes;
mod rollup;
mod speed;
mod writer;

use std::path::PathBuf;
use std::str::FromStr;
use std::time::Duration;

use sqlx::sqlite::{SqliteConnectOptions, SqliteJournalMode, SqlitePoolOptions, SqliteSynchronous};
use sqlx::SqlitePool;

pub use checkpoint::Checkpointer;
pub use export::ExportRow;
pub use history::{HistoryFilter, HistoryPage};
pub use keys::{KeyChanges, KeyLimits, NewKey, StoredKey};
pub use nodes::{NewNode, NodeChanges, StoredNode};
pub use rollup::{GroupBy, RollupFilter, RollupKey, RollupTotals, ANONYMOUS};
pub use speed::SpeedSums;
pub use writer::{HistoryWriter, LockWait};

/// Errors of the persistence layer.
#[derive(Debug, thiserror::Error)]
pub enum StoreError {
    #[error("a live node already has base_url {0}")]
    DuplicateBaseUrl(String),
    #[error("not found")]
    NotFound,
    #[error("database error: {0}")]
    Database(#[from] sqlx::Error),
    #[error("database error: {0}")]
    Writer(#[from] rusqlite::Error),
    #[error("an in-memory database cannot be used: the record writer needs a file (give a path in --database-url)")]
    InMemory,
    #[error("cannot start the checkpoint thread: {0}")]
    Thread(String),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("unexpected data in the store: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    pool: SqlitePool,
    /// The database file, for the [`HistoryWriter`]'s own connection.
    path: PathBuf,
}

impl Store {
    /// Opens (creating if needed) the database at `url` and applies pending migrations.
    pub async fn open(url: &str) -> StoreResult<Store> {
        let options = SqliteConnectOptions::from_str(url)?
            .create_if_missing(true)
            .journal_mode(SqliteJournalMode::Wal)
            // WAL + NORMAL survives a killed process (the durability we promise);
            // only a power cut may lose the last commits.
            .synchronous(SqliteSynchronous::Normal)
            .busy_timeout(Duration::from_secs(5))
            .pragma("cache_size", "-16000")
            // Every commit dirties about a dozen pages (history, its indexes, five
            // rollups) and the WAL writes each whole: 1 KiB pages cut the bytes written
            // per commit and checkpoint fourfold (measured: +25 % durable records/s,
            // p99 at one connection 2.5 ms → 1.6 ms). Applies when the file is created.
            .page_size(1024);
        let path = options.get_filename().to_path_buf();
        let name = path.to_string_lossy();
        if name == ":memory:" || name.starts_with("file:sqlx-in-memory") {
            return Err(StoreError::InMemory);
        }
        let pool = SqlitePoolOptions::new()
            .max_connections(4)
            // A local file needs no ping before each use (a round trip to its thread).
            .test_before_acquire(false)
            .connect_with(options)
            .await?;
        sqlx::migrate!("./migrations").run(&pool).await?;
        Ok(Store { pool, path })
    }

    pub async fn close(&self) {
        self.pool.close().await;
    }
}

/// Milliseconds since the Unix epoch, as stored.
pub(crate) fn to_millis(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_millis(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// SQLite stores `i64`; counters are `u64` and never negative.
pub(crate) fn to_u64(v: i64) -> u64 {
    v.max(0) as u64
}

pub(crate) fn to_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn migration_005_keeps_the_id_ranges_of_the_history_it_finds() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        for sql in [
            include_str!("../../migrations/001_create_nodes.sql"),
            include_str!("../../migrations/002_create_request_history.sql"),
            include_str!("../../migrations/003_request_history_indexes.sql"),
            include_str!("../../migrations/004_add_token_statistics.sql"),
        ] {
            conn.execute_batch(sql).unwrap();
        }
        // Hour 0: node 1 (ids 1, 3), node 2 (id 2); hour 1: node 1 (id 4), a record
        // without a node (id 5). Only node 1's rows have rollups (node 2's history is
        // older than migration 004).
        for (hour, node) in [(0, Some(1)), (0, Some(2)), (0, Some(1)), (1, Some(1)), (1, None)] {
            conn.execute(
                "INSERT INTO request_history (timestamp, completed_at, request_type, model, node_id,
                 stream, status, http_status, duration_ms, input_tokens)
                 VALUES (?1, ?1, 'chat_completions', 'm', ?2, 0, 'success', 200, 1, 10)",
                rusqlite::params![hour * 3_600_000 + 1_000, node],
            )
            .unwrap();
        }
        conn.execute_batch(
            "INSERT INTO token_stats_hourly_node (hour_start, node_id, request_count, input_tokens)
             VALUES (0, 1, 2, 20), (3600, 1, 1, 10)",
        )
        .unwrap();
        conn.execute_batch(include_str!("../../migrations/005_lighter_history_indexes.sql"))
            .unwrap();
        let rows: Vec<(i64, i64, i64, i64, i64, i64)> = conn
            .prepare(
                "SELECT hour_start, node_id, min_id, max_id, request_count, input_tokens
                 FROM token_stats_hourly_node ORDER BY hour_start, node_id",
            )
            .unwrap()
            .query_map([], |r| {
                Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?, r.get(4)?, r.get(5)?))
            })
            .unwrap()
            .map(Result::unwrap)
            .collect();
        // Sums unchanged; node 2 gets a range with zero sums.
        assert_eq!(rows, [(0, 1, 1, 3, 2, 20), (0, 2, 2, 2, 0, 0), (3600, 1, 4, 4, 1, 10)]);
        let indexes: Vec<String> = conn
            .prepare(
                "SELECT name FROM sqlite_master WHERE type = 'index' AND tbl_name = 'request_history' ORDER BY name",
            )
            .unwrap()
            .query_map([], |r| r.get(0))
            .unwrap()
            .map(Result::unwrap)
            .collect();
        assert_eq!(
            indexes,
            [
                "request_history_model",
                "request_history_timestamp",
                "request_history_unsuccessful"
            ]
        );
    }

    #[test]
    fn migration_006_counts_what_came_before_keys_as_anonymous() {
        let conn = rusqlite::Connection::open_in_memory().unwrap();
        for sql in [
            include_str!("../../migrations/001_create_nodes.sql"),
            include_str!("../../migrations/002_create_request_history.sql"),
            include_str!("../../migrations/003_request_history_indexes.sql"),
            include_str!("../../migrations/004_add_token_statistics.sql"),
            include_str!("../../migrations/005_lighter_history_indexes.sql"),
        ] {
            conn.execute_batch(sql).unwrap();
        }
        conn.execute_batch(
            "INSERT INTO token_stats_hourly (hour_start, node_id, model, request_count, success_count,
                 input_tokens, output_tokens, total_tokens)
             VALUES (0, 1, 'a', 2, 2, 10, 20, 30), (3600, 2, 'b', 1, 0, 1, 2, 3);
             INSERT INTO token_stats_total (node_id, model, request_count, success_count, input_tokens,
                 output_tokens, total_tokens)
             VALUES (1, 'a', 2, 2, 10, 20, 30), (2, 'b', 1, 0, 1, 2, 3);",
        )
        .unwrap();
        conn.execute_batch(include_str!("../../migrations/006_client_keys.sql"))
            .unwrap();
        let rows = |sql: &str| -> Vec<(i64, i64, i64, i64)> {
            conn.prepare(sql)
                .unwrap()
                .query_map([], |r| Ok((r.get(0)?, r.get(1)?, r.get(2)?, r.get(3)?)))
                .unwrap()
                .map(Result::unwrap)
                .collect()
        };
        assert_eq!(
            rows("SELECT hour_start, key_id, request_count, total_tokens FROM token_stats_hourly_key ORDER BY hour_start"),
            [(0, 0, 2, 30), (3600, 0, 1, 3)]
        );
        assert_eq!(
            rows("SELECT node_id, key_id, request_count, total_tokens FROM token_stats_total_key ORDER BY node_id"),
            [(1, 0, 2, 30), (2, 0, 1, 3)]
        );
    }

    #[tokio::test]
    async fn an_in_memory_database_is_refused_with_a_clear_error() {
        for url in ["sqlite::memory:", "sqlite://:memory:"] {
            let err = Store::open(url).await.unwrap_err();
            assert!(matches!(err, StoreError::InMemory), "{url}: {err}");
        }
    }
}
