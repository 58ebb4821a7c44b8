//! Persistence, on one of two engines behind one interface: SQLite (the embedded
//! default) or PostgreSQL (`--database-url postgres://…`, shared by several router
//! replicas). Nothing above the store knows which one it talks to.
//!
//! The store owns every SQL statement of the router and nothing else: it does not know
//! about HTTP, balancing or tokenizers. The queries are written once, with `$1`
//! placeholders that both engines accept, in one file per concern: `nodes` (the node
//! registry's rows), `keys` (client keys), `history` (reading and pruning records),
//! `rollup` (the aggregation queries the statistics are built from, and the rollup
//! tables the writers update), `export` (the usage export's rows per day × key × node
//! × model), `speed` (generation speed and time to first token over a recent
//! window) and `cluster` (what replicas sharing the database tell each other: the
//! settings version, their requests in flight, keys' spending). What differs per engine lives in `sqlite/` and `postgres/`: opening the
//! database and its migrations, and the record writer (`HistoryWriter`: group commit
//! of records with their rollups). `sql` runs a statement on whichever engine is open.

mod cluster;
mod export;
mod history;
mod keys;
pub mod migrate;
mod nodes;
mod postgres;
mod rollup;
mod speed;
mod sql;
mod sqlite;
mod writer;

use std::time::Duration;

pub use cluster::{KeyLoad, ReplicaLoad};
pub use export::ExportRow;
pub use history::{HistoryFilter, HistoryPage};
pub use keys::{KeyChanges, KeyLimits, NewKey, StoredKey};
pub use nodes::{NewNode, NodeChanges, StoredNode};
pub use rollup::{GroupBy, RollupFilter, RollupKey, RollupTotals, ANONYMOUS};
pub use speed::SpeedSums;
pub use sqlite::checkpoint::Checkpointer;
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
    #[error("cannot start a store thread: {0}")]
    Thread(String),
    #[error("migration failed: {0}")]
    Migration(#[from] sqlx::migrate::MigrateError),
    #[error("the target database is not empty ({0} has rows): give --force to empty it first")]
    TargetNotEmpty(&'static str),
    #[error("unexpected data in the store: {0}")]
    Corrupt(String),
}

pub type StoreResult<T> = Result<T, StoreError>;

/// A handle on the database; cheap to clone.
#[derive(Clone, Debug)]
pub struct Store {
    engine: Engine,
}

#[derive(Clone, Debug)]
enum Engine {
    Sqlite(sqlite::SqliteStore),
    Postgres(postgres::PgStore),
}

/// The SQL spoken by the engine, where the two differ (see `sql`).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(crate) enum Dialect {
    Sqlite,
    Postgres,
}

impl Store {
    /// Opens the database at `url` and applies pending migrations: PostgreSQL for a
    /// `postgres://` or `postgresql://` URL, SQLite (created if needed) otherwise.
    pub async fn open(url: &str) -> StoreResult<Store> {
        let engine = if is_postgres_url(url) {
            Engine::Postgres(postgres::PgStore::open(url).await?)
        } else {
            Engine::Sqlite(sqlite::SqliteStore::open(url).await?)
        };
        Ok(Store { engine })
    }

    pub async fn close(&self) {
        match &self.engine {
            Engine::Sqlite(e) => e.pool.close().await,
            Engine::Postgres(e) => e.pool.close().await,
        }
    }

    pub(crate) fn dialect(&self) -> Dialect {
        match &self.engine {
            Engine::Sqlite(_) => Dialect::Sqlite,
            Engine::Postgres(_) => Dialect::Postgres,
        }
    }

    /// Opens the connection that writes request records (one per recorder).
    pub fn writer(&self) -> StoreResult<HistoryWriter> {
        match &self.engine {
            Engine::Sqlite(e) => Ok(HistoryWriter::Sqlite(e.writer()?)),
            Engine::Postgres(e) => Ok(HistoryWriter::Postgres(e.writer()?)),
        }
    }

    /// Starts what keeps the database in shape beside the writer: SQLite's WAL
    /// checkpoints (PostgreSQL does its own).
    pub fn start_checkpointer(&self) -> StoreResult<Checkpointer> {
        match &self.engine {
            Engine::Sqlite(e) => e.start_checkpointer(),
            Engine::Postgres(_) => Ok(Checkpointer::none()),
        }
    }
}

pub fn is_postgres_url(url: &str) -> bool {
    url.starts_with("postgres://") || url.starts_with("postgresql://")
}

/// How long opening a PostgreSQL connection may take before the attempt fails.
const CONNECT_TIMEOUT: Duration = Duration::from_secs(5);

/// Milliseconds since the Unix epoch, as stored.
pub(crate) fn to_millis(t: chrono::DateTime<chrono::Utc>) -> i64 {
    t.timestamp_millis()
}

pub(crate) fn from_millis(ms: i64) -> chrono::DateTime<chrono::Utc> {
    chrono::DateTime::from_timestamp_millis(ms).unwrap_or_default()
}

/// Both engines store `i64`; counters are `u64` and never negative.
pub(crate) fn to_u64(v: i64) -> u64 {
    v.max(0) as u64
}

pub(crate) fn to_i64(v: u64) -> i64 {
    v.min(i64::MAX as u64) as i64
}

#[cfg(test)]
pub(crate) mod testing {
    //! Stores for unit tests: SQLite in a temporary directory, and PostgreSQL too when
    //! `LLM_ROUTER_TEST_DATABASE` names a server (a fresh database per store).

    use chrono::Utc;
    use common::protocol::{RequestResponseRecord, RequestStatus, RequestType, TokenSource};

    use super::Store;

    /// A record for tests to start from: a successful chat completion, not streamed,
    /// finished now on node 1 ("n") for model "m" without a client key, 1 token in and 1
    /// out as the node reported. Tests set what they look at with `..record()`.
    pub fn record() -> RequestResponseRecord {
        let now = Utc::now();
        RequestResponseRecord {
            id: 0,
            timestamp: now,
            completed_at: now,
            request_type: RequestType::ChatCompletions,
            model: "m".into(),
            node_id: Some(1),
            node_name: Some("n".into()),
            client_ip: None,
            api_key_id: None,
            api_key_name: None,
            stream: false,
            status: RequestStatus::Success,
            http_status: 200,
            error_message: None,
            duration_ms: 1,
            time_to_first_token_ms: None,
            input_tokens: 1,
            output_tokens: 1,
            total_tokens: 2,
            token_source: TokenSource::Reported,
            request_body: None,
            response_body: None,
        }
    }

    /// One store per engine available to the tests, with its name.
    pub async fn stores(dir: &tempfile::TempDir) -> Vec<(&'static str, Store)> {
        let sqlite = Store::open(&format!("sqlite://{}/t.db", dir.path().display()))
            .await
            .unwrap();
        let mut stores = vec![("sqlite", sqlite)];
        if let Some(url) = fresh_postgres_database().await {
            stores.push(("postgres", Store::open(&url).await.unwrap()));
        }
        stores
    }

    /// A fresh database for a test that is about PostgreSQL alone. Without
    /// `LLM_ROUTER_TEST_DATABASE` it fails rather than pass having tested nothing:
    /// `scripts/test.sh` leaves these tests out of its SQLite pass (`--skip
    /// store::postgres::` …) and runs them in its PostgreSQL pass.
    pub async fn postgres_database() -> String {
        fresh_postgres_database()
            .await
            .expect("a PostgreSQL test: set LLM_ROUTER_TEST_DATABASE (scripts/test.sh does)")
    }

    /// Creates a database on the server named by `LLM_ROUTER_TEST_DATABASE`, if set.
    pub async fn fresh_postgres_database() -> Option<String> {
        let admin = std::env::var("LLM_ROUTER_TEST_DATABASE")
            .ok()
            .filter(|u| !u.is_empty())?;
        let name = format!("t_{:016x}", rand::random::<u64>());
        let mut conn = <sqlx::PgConnection as sqlx::Connection>::connect(&admin).await.unwrap();
        sqlx::Executor::execute(&mut conn, format!("CREATE DATABASE {name}").as_str())
            .await
            .unwrap();
        let mut url = url::Url::parse(&admin).unwrap();
        url.set_path(&name);
        Some(url.to_string())
    }
}
