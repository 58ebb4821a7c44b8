//! The write path of request records: one writer per recorder commits a batch of
//! records and their rollup increments in one transaction, on either engine.
//!
//! SQLite's writer ([`super::sqlite::writer`]) is a synchronous connection used on
//! the caller's thread (tens of microseconds a commit, so a lone request commits its
//! own record); PostgreSQL's ([`super::postgres::writer`]) talks to a server over the
//! network and never runs on a runtime thread. [`HistoryWriter::commits_inline`] tells
//! the recorder which it may do.

use common::protocol::RequestResponseRecord;

use super::{postgres, sqlite, StoreResult};

/// Whether a commit waits for another connection's write lock (a checkpoint,
/// pruning, a node update, another process).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum LockWait {
    /// Fail at once (on a runtime thread).
    Never,
    /// Wait for the lock: SQLite polls every 200 µs for up to 5 s (its own busy
    /// timeout sleeps 1, 2, 5, 10, 15, 20… ms between tries, so a commit could sleep
    /// 10 ms past a lock held for 3).
    Patient,
}

/// The one connection that writes request records.
pub enum HistoryWriter {
    Sqlite(sqlite::writer::SqliteWriter),
    Postgres(postgres::writer::PgWriter),
}

impl HistoryWriter {
    /// Whether a commit may run on a runtime thread (the caller's, when the writer is
    /// free): cheap and local. When not, the recorder's committer thread commits.
    pub fn commits_inline(&self) -> bool {
        matches!(self, HistoryWriter::Sqlite(_))
    }

    /// Commits `records` and their rollup increments in one transaction.
    pub fn commit(&mut self, records: &[RequestResponseRecord], lock_wait: LockWait) -> StoreResult<()> {
        match self {
            HistoryWriter::Sqlite(w) => w.commit(records, lock_wait),
            HistoryWriter::Postgres(w) => {
                let uids: Vec<u128> = records.iter().map(|_| rand::random()).collect();
                w.commit(records, &uids)
            }
        }
    }

    /// Like [`Self::commit`], with a unique id per record made by the caller: a
    /// batch committed again with the same ids (its first commit's outcome unknown,
    /// the connection lost) adds nothing twice. (SQLite's commit has no unknown
    /// outcome and ignores them.)
    pub fn commit_once(
        &mut self,
        records: &[RequestResponseRecord],
        uids: &[u128],
        lock_wait: LockWait,
    ) -> StoreResult<()> {
        if records.is_empty() {
            return Ok(());
        }
        match self {
            HistoryWriter::Sqlite(w) => w.commit(records, lock_wait),
            HistoryWriter::Postgres(w) => w.commit(records, uids),
        }
    }
}
