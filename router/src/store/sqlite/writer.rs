//! SQLite's record writer: a synchronous connection that commits a batch of records
//! and their rollup increments in one transaction.
//!
//! Reads and every other statement go through `sqlx`, whose SQLite connections each
//! run on a thread of their own: a query costs two thread wake-ups, about 90 µs on
//! this 2-core VM. A durable client waits for its record's commit, so the write path
//! skips that hand-off: [`SqliteWriter`] is a `rusqlite` connection (the same
//! bundled SQLite library) used on the caller's thread. A commit of one record
//! writes about 12 WAL frames (the history row, its AUTOINCREMENT sequence, two index
//! entries, five rollup rows, and the pages that split or grow the file): 60–70 µs at the
//! median and ~115 µs at p99 inside the router at one connection, on the benchmark's
//! pinned core (measured 2026-12-01; a commit is two `pwrite`s a frame and a few
//! lock calls, about half of it in the kernel).
//!
//! The writer never checkpoints the WAL itself (`wal_autocheckpoint = 0`): a
//! checkpoint syncs the files and would stall the commit that triggers it (the p99
//! of a lone client was a millisecond). [`super::checkpoint`] does it in the
//! background instead.

use std::path::Path;
use std::sync::LazyLock;
use std::time::Duration;

use common::protocol::RequestResponseRecord;
use rusqlite::{params, Connection, TransactionBehavior};

use crate::store::history::body_row;
use crate::store::rollup::{rows_to_add, upsert_sql, TABLES};
use crate::store::{to_i64, to_millis, LockWait, StoreResult};

const INSERT_HISTORY: &str = "INSERT INTO request_history (timestamp, completed_at, request_type, model,
    node_id, node_name, client_ip, stream, status, http_status, error_message, duration_ms,
    input_tokens, output_tokens, total_tokens, token_source, api_key_id, api_key_name, time_to_first_token_ms)
    VALUES (?1, ?2, ?3, ?4, ?5, ?6, ?7, ?8, ?9, ?10, ?11, ?12, ?13, ?14, ?15, ?16, ?17, ?18, ?19)";

const INSERT_BODIES: &str = "INSERT INTO request_bodies (id, request_body, request_truncated,
    response_body, response_truncated) VALUES (?1, ?2, ?3, ?4, ?5)";

const LOCK_POLL: Duration = Duration::from_micros(200);
const LOCK_PATIENCE: Duration = Duration::from_secs(5);

/// A busy handler: polls every `LOCK_POLL` for up to `LOCK_PATIENCE`.
pub(super) fn poll_lock(retries: i32) -> bool {
    std::thread::sleep(LOCK_POLL);
    (retries as u128) < LOCK_PATIENCE.as_micros() / LOCK_POLL.as_micros()
}

static UPSERTS: LazyLock<Vec<String>> = LazyLock::new(|| TABLES.iter().map(upsert_sql).collect());

/// The one connection that writes request records.
pub struct SqliteWriter {
    conn: Connection,
    lock_wait: LockWait,
}

impl SqliteWriter {
    pub(super) fn open(path: &Path) -> StoreResult<SqliteWriter> {
        let conn = Connection::open(path)?;
        // The database is in WAL mode already (set when the store opened it). The page
        // cache is SQLite's default (2 MB): a commit appends to the history and its
        // indexes and updates the current rollup rows, a few dozen pages on the right
        // edges of the trees, and a larger cache filled up with pages no commit touches
        // again (16 MB: +10 MB resident after each burst of load, no faster in A/B).
        conn.execute_batch(
            "PRAGMA synchronous = NORMAL;
             PRAGMA foreign_keys = ON;
             PRAGMA cache_size = -2000;
             PRAGMA wal_autocheckpoint = 0;
             PRAGMA journal_size_limit = 33554432;",
        )?;
        conn.set_prepared_statement_cache_capacity(16);
        conn.busy_handler(None)?;
        Ok(SqliteWriter {
            conn,
            lock_wait: LockWait::Never,
        })
    }

    /// Commits `records` (with their bodies, if any) and their rollup increments in one
    /// transaction.
    pub fn commit(&mut self, records: &[RequestResponseRecord], lock_wait: LockWait) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        if lock_wait != self.lock_wait {
            self.conn.busy_handler(match lock_wait {
                LockWait::Never => None,
                LockWait::Patient => Some(poll_lock),
            })?;
            self.lock_wait = lock_wait;
        }
        // Dropped without commit on any error: rolled back.
        let tx = self.conn.transaction_with_behavior(TransactionBehavior::Immediate)?;
        let mut ids = Vec::with_capacity(records.len());
        {
            let mut insert = tx.prepare_cached(INSERT_HISTORY)?;
            for r in records {
                ids.push(insert.insert(params![
                    to_millis(r.timestamp),
                    to_millis(r.completed_at),
                    r.request_type.as_str(),
                    r.model,
                    r.node_id,
                    r.node_name,
                    r.client_ip,
                    r.stream,
                    r.status.as_str(),
                    r.http_status,
                    r.error_message,
                    to_i64(r.duration_ms),
                    to_i64(r.input_tokens),
                    to_i64(r.output_tokens),
                    to_i64(r.total_tokens),
                    r.token_source.as_str(),
                    r.api_key_id,
                    r.api_key_name,
                    r.time_to_first_token_ms.map(to_i64),
                ])?);
            }
        }
        for (r, id) in records.iter().zip(&ids) {
            if let Some((request, request_cut, response, response_cut)) = body_row(r) {
                tx.prepare_cached(INSERT_BODIES)?
                    .execute(params![id, request, request_cut, response, response_cut])?;
            }
        }
        add_to_rollups(&tx, records, &ids)?;
        tx.commit()?;
        Ok(())
    }
}

/// Adds `records`, inserted as history rows `ids`, to every rollup table, inside the
/// writer's transaction.
fn add_to_rollups(
    tx: &rusqlite::Transaction<'_>,
    records: &[RequestResponseRecord],
    ids: &[i64],
) -> rusqlite::Result<()> {
    for (table, sql) in TABLES.iter().zip(UPSERTS.iter()) {
        let mut upsert = tx.prepare_cached(sql)?;
        for ((hour, key, node, model), (totals, min_id, max_id)) in
            rows_to_add(table, records.iter().zip(ids.iter().copied()))
        {
            let mut index = 0;
            let mut next = || {
                index += 1;
                index
            };
            if table.by_hour {
                upsert.raw_bind_parameter(next(), hour)?;
            }
            if table.by_key {
                upsert.raw_bind_parameter(next(), key)?;
            }
            if table.by_node {
                upsert.raw_bind_parameter(next(), node)?;
            }
            if table.by_model {
                upsert.raw_bind_parameter(next(), model)?;
            }
            for v in totals.values() {
                upsert.raw_bind_parameter(next(), to_i64(v))?;
            }
            if table.id_range {
                upsert.raw_bind_parameter(next(), min_id)?;
                upsert.raw_bind_parameter(next(), max_id)?;
            }
            upsert.raw_execute()?;
        }
    }
    Ok(())
}
