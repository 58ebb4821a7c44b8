//! The PostgreSQL engine: one database shared by several router replicas.
//!
//! Reads and rare writes go through a `sqlx` pool; request records through
//! [`writer`]'s own connection on a thread of its own. Migrations are embedded from
//! `router/migrations_pg/` (numbered like SQLite's, a schema of the same shape with
//! 64-bit integers). `sqlx` holds a PostgreSQL advisory lock while it migrates, so
//! replicas starting at once apply each migration once and wait for each other
//! (tested below).

pub mod writer;

use std::str::FromStr;
use std::sync::Arc;

use sqlx::postgres::{PgConnectOptions, PgPoolOptions};
use sqlx::PgPool;

use super::{StoreResult, CONNECT_TIMEOUT};

#[derive(Clone, Debug)]
pub(super) struct PgStore {
    pub pool: PgPool,
    /// For the writer's own connection.
    options: Arc<PgConnectOptions>,
}

impl PgStore {
    /// Connects to the database at `url` and applies pending migrations.
    pub async fn open(url: &str) -> StoreResult<PgStore> {
        let options = PgConnectOptions::from_str(url)?;
        let pool = PgPoolOptions::new()
            .max_connections(8)
            .acquire_timeout(CONNECT_TIMEOUT)
            .connect_with(options.clone())
            .await?;
        sqlx::migrate!("./migrations_pg").run(&pool).await?;
        Ok(PgStore {
            pool,
            options: Arc::new(options),
        })
    }

    pub fn writer(&self) -> StoreResult<writer::PgWriter> {
        writer::PgWriter::open((*self.options).clone())
    }
}

#[cfg(test)]
mod tests {
    use crate::store::testing::postgres_database;
    use crate::store::Store;

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn replicas_starting_at_once_apply_the_migrations_once() {
        let url = postgres_database().await;
        let opening: Vec<_> = (0..4)
            .map(|_| {
                let url = url.clone();
                tokio::spawn(async move { Store::open(&url).await })
            })
            .collect();
        for o in opening {
            o.await.unwrap().expect("every replica opens the store");
        }
        let store = Store::open(&url).await.unwrap();
        let applied = store
            .db()
            .fetch_all("SELECT version FROM _sqlx_migrations ORDER BY version", &[], |r| {
                r.int("version")
            })
            .await
            .unwrap();
        let embedded: Vec<i64> = sqlx::migrate!("./migrations_pg").iter().map(|m| m.version).collect();
        assert_eq!(applied, embedded);
    }
}
