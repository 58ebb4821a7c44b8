//! What router replicas sharing one database tell each other through it: the
//! settings version (bumped by triggers on every change of a node or of a key's
//! settings), each replica's requests in flight per node with its heartbeat, what it
//! counts per client key (the per-minute windows and requests in flight), and the
//! tokens keys spent since a given hour (their budgets, counted by every replica).

use std::collections::HashMap;

use super::sql::{args, Sql};
use super::{to_u64, Engine, Store, StoreResult};

/// A replica's published load: requests in flight per node (node 0: the heartbeat).
pub type ReplicaLoad = Vec<(i64, u64)>;

/// What a replica counts for one client key: requests admitted and tokens charged in
/// the last 60 s, and requests in flight.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct KeyLoad {
    pub requests: u64,
    pub tokens: u64,
    pub in_flight: u64,
}

impl Store {
    /// Whether other router processes may share this store (PostgreSQL): then
    /// settings, figures and budgets must be read back from it, not only kept in memory.
    pub fn is_shared(&self) -> bool {
        matches!(self.engine, Engine::Postgres(_))
    }

    /// The settings version: it moves whenever a node or a key's settings change.
    pub async fn settings_version(&self) -> StoreResult<i64> {
        let v = self
            .db()
            .fetch_optional("SELECT version FROM settings_version WHERE id = 1", &[], |r| {
                r.int("version")
            })
            .await?;
        Ok(v.unwrap_or(0))
    }

    /// Publishes what `replica` has in flight per node, seen at `now_ms`.
    pub async fn publish_replica_load(&self, replica: &str, load: &[(i64, u64)], now_ms: i64) -> StoreResult<()> {
        if load.is_empty() {
            return Ok(());
        }
        let mut q = Sql::new("INSERT INTO replica_load (replica_id, node_id, in_flight, seen_at) VALUES ");
        for (i, (node, n)) in load.iter().enumerate() {
            q.push(if i == 0 { "(" } else { ", (" })
                .bind(replica)
                .push(", ")
                .bind(*node)
                .push(", ")
                .bind(super::to_i64(*n))
                .push(", ")
                .bind(now_ms)
                .push(")");
        }
        q.push(
            " ON CONFLICT (replica_id, node_id) DO UPDATE SET in_flight = excluded.in_flight, \
             seen_at = excluded.seen_at",
        );
        self.db().execute(&q.text, &q.args).await?;
        Ok(())
    }

    /// What the other replicas seen since `since_ms` have in flight, by replica.
    pub async fn replica_loads(&self, except: &str, since_ms: i64) -> StoreResult<HashMap<String, ReplicaLoad>> {
        let rows = self
            .db()
            .fetch_all(
                "SELECT replica_id, node_id, in_flight FROM replica_load
                 WHERE seen_at >= $1 AND replica_id <> $2",
                &args![since_ms, except],
                |r| (r.text("replica_id"), r.int("node_id"), to_u64(r.int("in_flight"))),
            )
            .await?;
        let mut out: HashMap<String, ReplicaLoad> = HashMap::new();
        for (replica, node, n) in rows {
            out.entry(replica).or_default().push((node, n));
        }
        Ok(out)
    }

    /// Publishes what `replica` counts per key at `now_ms`; its rows of keys not in
    /// `loads` (they count nothing now) are deleted.
    pub async fn publish_key_load(&self, replica: &str, loads: &[(i64, KeyLoad)], now_ms: i64) -> StoreResult<()> {
        if !loads.is_empty() {
            let mut q = Sql::new(
                "INSERT INTO replica_key_load (replica_id, key_id, requests, tokens, in_flight, seen_at) VALUES ",
            );
            for (i, (key, load)) in loads.iter().enumerate() {
                q.push(if i == 0 { "(" } else { ", (" })
                    .bind(replica)
                    .push(", ")
                    .bind(*key);
                for n in [load.requests, load.tokens, load.in_flight] {
                    q.push(", ").bind(super::to_i64(n));
                }
                q.push(", ").bind(now_ms).push(")");
            }
            q.push(
                " ON CONFLICT (replica_id, key_id) DO UPDATE SET requests = excluded.requests, \
                 tokens = excluded.tokens, in_flight = excluded.in_flight, seen_at = excluded.seen_at",
            );
            self.db().execute(&q.text, &q.args).await?;
        }
        self.db()
            .execute(
                "DELETE FROM replica_key_load WHERE replica_id = $1 AND seen_at < $2",
                &args![replica, now_ms],
            )
            .await?;
        Ok(())
    }

    /// What the other replicas seen since `since_ms` count per key, added up.
    pub async fn key_loads_elsewhere(&self, except: &str, since_ms: i64) -> StoreResult<Vec<(i64, KeyLoad)>> {
        let sums: Vec<String> = ["requests", "tokens", "in_flight"].map(super::rollup::sum).into();
        let sql = format!(
            "SELECT key_id, {} FROM replica_key_load WHERE seen_at >= $1 AND replica_id <> $2 GROUP BY key_id",
            sums.join(", ")
        );
        self.db()
            .fetch_all(&sql, &args![since_ms, except], |r| {
                let load = KeyLoad {
                    requests: to_u64(r.int("requests")),
                    tokens: to_u64(r.int("tokens")),
                    in_flight: to_u64(r.int("in_flight")),
                };
                (r.int("key_id"), load)
            })
            .await
    }

    /// Forgets `replica` (it stops), or every replica not seen since `before_ms`.
    pub async fn forget_replicas(&self, replica: Option<&str>, before_ms: i64) -> StoreResult<u64> {
        let mut forgotten = 0;
        for table in ["replica_load", "replica_key_load"] {
            forgotten += match replica {
                Some(r) => {
                    self.db()
                        .execute(&format!("DELETE FROM {table} WHERE replica_id = $1"), &args![r])
                        .await?
                }
                None => {
                    self.db()
                        .execute(&format!("DELETE FROM {table} WHERE seen_at < $1"), &args![before_ms])
                        .await?
                }
            };
        }
        Ok(forgotten)
    }

    /// The tokens each of `key_ids` spent in the hours from `from_hour` (a UTC hour
    /// start, Unix seconds) on: one index range per key of the key rollup.
    pub async fn key_tokens_since(&self, key_ids: &[i64], from_hour: i64) -> StoreResult<Vec<(i64, u64)>> {
        let mut out = Vec::with_capacity(key_ids.len());
        for chunk in key_ids.chunks(500) {
            let mut q = Sql::new("SELECT key_id, ");
            q.push(&super::rollup::sum("total_tokens"))
                .push(" FROM token_stats_hourly_key WHERE hour_start >= ")
                .bind(from_hour)
                .push(" AND key_id IN (");
            for (i, id) in chunk.iter().enumerate() {
                if i > 0 {
                    q.push(", ");
                }
                q.bind(*id);
            }
            q.push(") GROUP BY key_id");
            out.extend(
                self.db()
                    .fetch_all(&q.text, &q.args, |r| (r.int("key_id"), to_u64(r.int("total_tokens"))))
                    .await?,
            );
        }
        Ok(out)
    }
}
