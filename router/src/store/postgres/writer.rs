//! PostgreSQL's record writer: a connection of its own, on a thread of its own, that
//! commits a batch of records and their rollup increments in one transaction.
//!
//! A commit takes network round trips, so it never runs on a runtime thread: the
//! recorder's committer thread hands each batch over here and waits.
//! The thread runs its own single-threaded tokio runtime, so the writer works
//! whatever runtime (or none) its caller has.
//!
//! Each record comes with a unique id made by the router (`record_uid`, a UNIQUE
//! column): the history rows are inserted with `ON CONFLICT DO NOTHING` and only the
//! rows actually inserted are added to the rollups, in the same transaction. When a
//! connection breaks during COMMIT the outcome is unknown; the recorder commits the
//! batch again with the same ids, and nothing is counted twice. A failed commit
//! drops the connection; the next one connects afresh.
//!
//! Each writer upserts the rollup rows of its own shard (the `shard` column of
//! migration 004): when it connects it takes the first free shard's advisory lock,
//! held as long as its connection lives. A transaction holds its row locks through
//! its COMMIT's fsync, so replicas updating the same rows took turns (two served
//! fewer requests than one); with a shard each they never wait for each other. Past
//! [`SHARDS`] writers they share shards: correct, only slower. Rollup rows are
//! upserted in key order (`rows_to_add`), every table in one statement
//! (`upsert_all_sql_postgres`) that is the same text for every writer, so writers
//! that share a shard lock rows in one order and never deadlock.
//!
//! A commit is four round trips: BEGIN, the history rows (their ids come back for
//! the rollups' id ranges, and only the rows inserted are added), the rollups,
//! COMMIT. One statement per rollup table made it ten: at one connection a request
//! waited 1.66 ms over a direct one with the server's fsync on (1.47 ms with it off);
//! with four, 1.10 ms (0.75 ms). See the README's figures.

use std::collections::HashMap;
use std::sync::mpsc;
use std::sync::LazyLock;
use std::time::Duration;

use common::protocol::RequestResponseRecord;
use sqlx::postgres::PgConnectOptions;
use sqlx::{Connection, PgConnection, Row};

use crate::store::history::body_row;
use crate::store::rollup::{rows_to_add, upsert_all_sql_postgres, TABLES};
use crate::store::{to_i64, to_millis, StoreError, StoreResult, CONNECT_TIMEOUT};

/// A commit that takes longer fails (and is tried again): the server or the network
/// is gone.
const COMMIT_TIMEOUT: Duration = Duration::from_secs(30);

const INSERT_HISTORY: &str = "INSERT INTO request_history (record_uid, timestamp, completed_at, request_type,
    model, node_id, node_name, client_ip, stream, status, http_status, error_message, duration_ms,
    input_tokens, output_tokens, total_tokens, token_source, api_key_id, api_key_name, time_to_first_token_ms)
    SELECT * FROM UNNEST($1::bytea[], $2::bigint[], $3::bigint[], $4::text[], $5::text[], $6::bigint[],
        $7::text[], $8::text[], $9::bigint[], $10::text[], $11::bigint[], $12::text[], $13::bigint[],
        $14::bigint[], $15::bigint[], $16::bigint[], $17::text[], $18::bigint[], $19::text[], $20::bigint[])
    ON CONFLICT (record_uid) DO NOTHING
    RETURNING id, record_uid";

const INSERT_BODIES: &str = "INSERT INTO request_bodies (id, request_body, request_truncated,
    response_body, response_truncated)
    SELECT * FROM UNNEST($1::bigint[], $2::text[], $3::bigint[], $4::text[], $5::bigint[])";

/// The first key of the shards' advisory locks (`pg_try_advisory_lock(int, int)`; the
/// second key is the shard). sqlx's migration lock takes the one-`bigint` form,
/// another key space.
const SHARD_LOCKS: i32 = 0x6c6c_6d72;

/// Shards the writers take one each; more writers share them.
const SHARDS: i32 = 64;

static UPSERTS: LazyLock<String> = LazyLock::new(upsert_all_sql_postgres);

/// A batch handed to the writer's thread.
struct Job {
    records: Vec<RequestResponseRecord>,
    uids: Vec<u128>,
    done: mpsc::SyncSender<StoreResult<()>>,
}

/// The writer's connection and the shard of the rollup rows it writes.
struct Session {
    conn: PgConnection,
    shard: i64,
}

/// The one connection that writes request records; its thread stops when dropped.
pub struct PgWriter {
    jobs: mpsc::Sender<Job>,
}

impl PgWriter {
    pub(in crate::store) fn open(options: PgConnectOptions) -> StoreResult<PgWriter> {
        let runtime = tokio::runtime::Builder::new_current_thread()
            .enable_all()
            .build()
            .map_err(|e| StoreError::Thread(e.to_string()))?;
        let (jobs, queue) = mpsc::channel::<Job>();
        std::thread::Builder::new()
            .name("pg-writer".into())
            .spawn(move || {
                let mut session = None;
                while let Ok(job) = queue.recv() {
                    let result = runtime.block_on(commit(&mut session, &options, &job.records, &job.uids));
                    let _ = job.done.send(result);
                }
            })
            .map_err(|e| StoreError::Thread(e.to_string()))?;
        Ok(PgWriter { jobs })
    }

    /// Commits `records` (with their unique ids `uids`) and their rollup increments;
    /// blocks the calling thread until done.
    pub fn commit(&mut self, records: &[RequestResponseRecord], uids: &[u128]) -> StoreResult<()> {
        let (done, result) = mpsc::sync_channel(1);
        let stopped = || StoreError::Thread("the PostgreSQL writer's thread stopped".into());
        self.jobs
            .send(Job {
                records: records.to_vec(),
                uids: uids.to_vec(),
                done,
            })
            .map_err(|_| stopped())?;
        result.recv().map_err(|_| stopped())?
    }
}

/// Commits in `session`, connecting first if needed; drops the connection (and its
/// shard) on failure.
async fn commit(
    session: &mut Option<Session>,
    options: &PgConnectOptions,
    records: &[RequestResponseRecord],
    uids: &[u128],
) -> StoreResult<()> {
    let result = async {
        if session.is_none() {
            let connected = tokio::time::timeout(CONNECT_TIMEOUT, connect(options))
                .await
                .map_err(|_| sqlx::Error::PoolTimedOut)??;
            *session = Some(connected);
        }
        let s = session.as_mut().expect("connected above");
        tokio::time::timeout(COMMIT_TIMEOUT, insert(&mut s.conn, s.shard, records, uids))
            .await
            .map_err(|_| StoreError::Database(sqlx::Error::PoolTimedOut))?
    }
    .await;
    if result.is_err() {
        *session = None;
    }
    result
}

/// Connects and takes the first shard no other writer holds (one round trip per
/// shard tried: as many as there are writers at most, once per connection).
async fn connect(options: &PgConnectOptions) -> StoreResult<Session> {
    let mut conn = PgConnection::connect_with(options).await?;
    for shard in 0..SHARDS {
        let free: bool = sqlx::query_scalar("SELECT pg_try_advisory_lock($1, $2)")
            .bind(SHARD_LOCKS)
            .bind(shard)
            .fetch_one(&mut conn)
            .await?;
        if free {
            return Ok(Session {
                conn,
                shard: shard.into(),
            });
        }
    }
    let shard = rand::random_range(0..SHARDS).into();
    Ok(Session { conn, shard })
}

async fn insert(
    conn: &mut PgConnection,
    shard: i64,
    records: &[RequestResponseRecord],
    uids: &[u128],
) -> StoreResult<()> {
    let mut tx = conn.begin().await?;
    let col = |f: fn(&RequestResponseRecord) -> i64| records.iter().map(f).collect::<Vec<i64>>();
    let text = |f: fn(&RequestResponseRecord) -> Option<&str>| records.iter().map(f).collect::<Vec<Option<&str>>>();
    let inserted = sqlx::query(INSERT_HISTORY)
        .bind(uids.iter().map(|u| u.to_be_bytes().to_vec()).collect::<Vec<Vec<u8>>>())
        .bind(col(|r| to_millis(r.timestamp)))
        .bind(col(|r| to_millis(r.completed_at)))
        .bind(text(|r| Some(r.request_type.as_str())))
        .bind(text(|r| Some(r.model.as_str())))
        .bind(records.iter().map(|r| r.node_id).collect::<Vec<_>>())
        .bind(text(|r| r.node_name.as_deref()))
        .bind(text(|r| r.client_ip.as_deref()))
        .bind(col(|r| r.stream as i64))
        .bind(text(|r| Some(r.status.as_str())))
        .bind(col(|r| r.http_status as i64))
        .bind(text(|r| r.error_message.as_deref()))
        .bind(col(|r| to_i64(r.duration_ms)))
        .bind(col(|r| to_i64(r.input_tokens)))
        .bind(col(|r| to_i64(r.output_tokens)))
        .bind(col(|r| to_i64(r.total_tokens)))
        .bind(text(|r| Some(r.token_source.as_str())))
        .bind(records.iter().map(|r| r.api_key_id).collect::<Vec<_>>())
        .bind(text(|r| r.api_key_name.as_deref()))
        .bind(
            records
                .iter()
                .map(|r| r.time_to_first_token_ms.map(to_i64))
                .collect::<Vec<_>>(),
        )
        .fetch_all(&mut *tx)
        .await?;
    // Rows a previous attempt of this batch inserted already are not returned.
    let index: HashMap<u128, usize> = uids.iter().enumerate().map(|(i, u)| (*u, i)).collect();
    let mut added = Vec::with_capacity(inserted.len());
    for row in &inserted {
        let uid: Vec<u8> = row.get("record_uid");
        let uid = u128::from_be_bytes(
            uid.try_into()
                .map_err(|_| StoreError::Corrupt("a record_uid is not 16 bytes".into()))?,
        );
        let i = index
            .get(&uid)
            .ok_or_else(|| StoreError::Corrupt("an inserted record_uid is not in the batch".into()))?;
        added.push((&records[*i], row.get::<i64, _>("id")));
    }
    insert_bodies(&mut tx, &added).await?;
    // Every rollup table in one statement (one round trip); a table without rows
    // gets empty arrays.
    let mut q = sqlx::query(&UPSERTS).bind(shard);
    for table in &TABLES {
        let rows = rows_to_add(table, added.iter().copied());
        let key = |f: fn(&(i64, i64, i64, &str)) -> i64| rows.keys().map(f).collect::<Vec<i64>>();
        if table.by_hour {
            q = q.bind(key(|k| k.0));
        }
        if table.by_key {
            q = q.bind(key(|k| k.1));
        }
        if table.by_node {
            q = q.bind(key(|k| k.2));
        }
        if table.by_model {
            q = q.bind(rows.keys().map(|k| k.3).collect::<Vec<&str>>());
        }
        for v in 0..9 {
            q = q.bind(
                rows.values()
                    .map(|(t, _, _)| to_i64(t.values()[v]))
                    .collect::<Vec<i64>>(),
            );
        }
        if table.id_range {
            q = q.bind(rows.values().map(|s| s.1).collect::<Vec<i64>>());
            q = q.bind(rows.values().map(|s| s.2).collect::<Vec<i64>>());
        }
    }
    q.execute(&mut *tx).await?;
    tx.commit().await?;
    Ok(())
}

/// The bodies of the records `added` (with their new ids), if any has one: one more
/// round trip, only when the router stores bodies.
async fn insert_bodies(
    tx: &mut sqlx::Transaction<'_, sqlx::Postgres>,
    added: &[(&RequestResponseRecord, i64)],
) -> StoreResult<()> {
    let rows: Vec<_> = added
        .iter()
        .filter_map(|(r, id)| body_row(r).map(|b| (*id, b)))
        .collect();
    if rows.is_empty() {
        return Ok(());
    }
    sqlx::query(INSERT_BODIES)
        .bind(rows.iter().map(|(id, _)| *id).collect::<Vec<i64>>())
        .bind(rows.iter().map(|(_, b)| b.0).collect::<Vec<Option<&str>>>())
        .bind(rows.iter().map(|(_, b)| b.1).collect::<Vec<i64>>())
        .bind(rows.iter().map(|(_, b)| b.2).collect::<Vec<Option<&str>>>())
        .bind(rows.iter().map(|(_, b)| b.3).collect::<Vec<i64>>())
        .execute(&mut **tx)
        .await?;
    Ok(())
}

#[cfg(test)]
mod tests {
    use super::*;
    use crate::store::testing::postgres_database;
    use crate::store::{GroupBy, LockWait, Store};

    fn record(i: u64) -> RequestResponseRecord {
        RequestResponseRecord {
            api_key_id: Some(3),
            api_key_name: Some("k".into()),
            stream: true,
            duration_ms: 5,
            time_to_first_token_ms: Some(2),
            input_tokens: i,
            total_tokens: i + 1,
            ..crate::store::testing::record()
        }
    }

    #[tokio::test]
    async fn a_batch_committed_again_with_the_same_ids_counts_once() {
        let url = postgres_database().await;
        let store = Store::open(&url).await.unwrap();
        let mut writer = store.writer().unwrap();
        let records: Vec<_> = (1..=3).map(record).collect();
        let uids = [1u128 << 100, 2, 3];
        writer
            .commit_once(&records[..2], &uids[..2], LockWait::Patient)
            .unwrap();
        // The first commit's outcome was unknown: the whole batch comes again.
        writer.commit_once(&records, &uids, LockWait::Patient).unwrap();
        writer.commit_once(&records, &uids, LockWait::Patient).unwrap();
        assert_eq!(store.history_count().await.unwrap(), 3);
        for group in [GroupBy::Nothing, GroupBy::Key, GroupBy::NodeAndModel, GroupBy::Hour] {
            let rows = store.rollup_totals(group, &Default::default()).await.unwrap();
            assert_eq!(rows.len(), 1, "{group:?}");
            assert_eq!((rows[0].1.request_count, rows[0].1.input_tokens), (3, 6), "{group:?}");
        }
        let stored = store.history_record(1).await.unwrap().unwrap();
        assert_eq!(
            (stored.input_tokens, stored.api_key_id, stored.stream),
            (1, Some(3), true)
        );
        assert_eq!(stored.time_to_first_token_ms, Some(2));
    }

    /// Past `SHARDS` writers share shards: their one rollup statement locks rows in
    /// one order (the same text, rows in key order), so they wait for each other but
    /// never deadlock (a deadlock would fail a commit here).
    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_sharing_a_shard_never_deadlock_and_count_every_record_once() {
        let url = postgres_database().await;
        let store = Store::open(&url).await.unwrap();
        let tasks: Vec<_> = (0..4u64)
            .map(|w| {
                let url = url.clone();
                tokio::spawn(async move {
                    let mut conn = PgConnection::connect(&url).await.unwrap();
                    for b in 0..40u64 {
                        // Two keys, two nodes, two models: rows in every table that
                        // all four writers update, on the one shard.
                        let batch: Vec<_> = (0..8u64)
                            .map(|i| RequestResponseRecord {
                                api_key_id: Some(((i + b + w) % 2) as i64 + 1),
                                node_id: Some(((i + w) % 2) as i64 + 1),
                                model: format!("m{}", (i + b) % 2),
                                ..record(w * 1000 + b * 8 + i)
                            })
                            .collect();
                        let uids: Vec<u128> = (0..8u128).map(|i| (w as u128) << 64 | (b as u128) << 8 | i).collect();
                        insert(&mut conn, 0, &batch, &uids).await.unwrap();
                    }
                })
            })
            .collect();
        for t in tasks {
            t.await.unwrap();
        }
        let expected: u64 = (0..4u64).flat_map(|w| (0..320u64).map(move |i| w * 1000 + i)).sum();
        assert_eq!(store.history_count().await.unwrap(), 4 * 320);
        for group in [GroupBy::Nothing, GroupBy::Key, GroupBy::NodeAndModel, GroupBy::Hour] {
            let rows = store.rollup_totals(group, &Default::default()).await.unwrap();
            let input: u64 = rows.iter().map(|(_, t)| t.input_tokens).sum();
            let requests: u64 = rows.iter().map(|(_, t)| t.request_count).sum();
            assert_eq!((requests, input), (1280, expected), "{group:?}");
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn writers_of_several_replicas_committing_at_once_count_every_record_once() {
        let url = postgres_database().await;
        let store = Store::open(&url).await.unwrap();
        // Four replicas' writers, each committing 50 batches that touch the same
        // rollup rows (two keys, one node, one model, this hour) in varying order.
        let writers: Vec<_> = (0..4u64)
            .map(|w| {
                let mut writer = store.writer().unwrap();
                std::thread::spawn(move || {
                    for b in 0..50u64 {
                        let mut batch: Vec<_> = (0..8).map(|i| record(w * 1000 + b * 8 + i)).collect();
                        for (i, r) in batch.iter_mut().enumerate() {
                            r.api_key_id = Some(((i as u64 + b + w) % 2) as i64 + 1);
                        }
                        if b % 2 == 1 {
                            batch.reverse();
                        }
                        writer.commit(&batch, LockWait::Patient).unwrap();
                    }
                })
            })
            .collect();
        for w in writers {
            w.join().unwrap();
        }
        let expected: u64 = (0..4u64).flat_map(|w| (0..400u64).map(move |i| w * 1000 + i)).sum();
        assert_eq!(store.history_count().await.unwrap(), 4 * 400);
        let total = store
            .rollup_totals(GroupBy::Nothing, &Default::default())
            .await
            .unwrap();
        assert_eq!((total[0].1.request_count, total[0].1.input_tokens), (1600, expected));
        let by_key = store.rollup_totals(GroupBy::Key, &Default::default()).await.unwrap();
        assert_eq!(by_key.iter().map(|(_, t)| t.input_tokens).sum::<u64>(), expected);
    }
}
