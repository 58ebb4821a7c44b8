//! The write path of request records: one writer per recorder commits a batch of
//! records and their rollup increments in one transaction, on either engine.
//!
//! SQLite's writer ([`super::sqlite::writer`]) is a synchronous connection used on
//! the caller's thread (tens of microseconds a commit, so a lone request commits its
//! own record); PostgreSQL's ([`super::postgres::writer`]) talks to a server over the
//! network and never runs on a runtime thread. [`HistoryWriter::commits_inline`] tells
//! the recorder which it may do.
//!
//! A record's text is stored without NUL characters, on both engines: PostgreSQL
//! refuses them in `TEXT`, and a client can put one in a model name (`"m\u0000"`
//! is valid JSON) or a body, a node in its error. Refused, such a record would hold
//! its batch, and every record queued behind it, out of the store for good. Each NUL
//! becomes U+FFFD, as bytes that are not UTF-8 do.

use std::borrow::Cow;

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
        let records = &*storable(records);
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
        let records = &*storable(records);
        match self {
            HistoryWriter::Sqlite(w) => w.commit(records, lock_wait),
            HistoryWriter::Postgres(w) => w.commit(records, uids),
        }
    }
}

/// `records`, copied with every NUL replaced if any of their texts holds one.
fn storable(records: &[RequestResponseRecord]) -> Cow<'_, [RequestResponseRecord]> {
    if !records.iter().any(|r| texts(r).any(|t| t.contains('\0'))) {
        return Cow::Borrowed(records);
    }
    let mut copy = records.to_vec();
    for r in &mut copy {
        for text in texts_mut(r) {
            if text.contains('\0') {
                *text = text.replace('\0', "\u{fffd}");
            }
        }
    }
    Cow::Owned(copy)
}

/// Every text of a record that comes from a client, a node or the operator.
fn texts(r: &RequestResponseRecord) -> impl Iterator<Item = &String> {
    let bodies = [&r.request_body, &r.response_body];
    [
        Some(&r.model),
        r.node_name.as_ref(),
        r.client_ip.as_ref(),
        r.api_key_name.as_ref(),
    ]
    .into_iter()
    .chain([r.error_message.as_ref()])
    .flatten()
    .chain(bodies.into_iter().flatten().map(|b| &b.text))
}

/// [`texts`], to change.
fn texts_mut(r: &mut RequestResponseRecord) -> impl Iterator<Item = &mut String> {
    let bodies = [&mut r.request_body, &mut r.response_body];
    [
        Some(&mut r.model),
        r.node_name.as_mut(),
        r.client_ip.as_mut(),
        r.api_key_name.as_mut(),
    ]
    .into_iter()
    .chain([r.error_message.as_mut()])
    .flatten()
    .chain(bodies.into_iter().flatten().map(|b| &mut b.text))
}

#[cfg(test)]
mod tests {
    use common::protocol::StoredBody;

    use super::*;

    #[test]
    fn every_text_loses_its_nul_characters_and_clean_records_are_not_copied() {
        let clean = vec![crate::store::testing::record()];
        assert!(matches!(storable(&clean), Cow::Borrowed(_)));
        let nul = |s: &str| Some(format!("{s}\0"));
        let dirty = RequestResponseRecord {
            model: "m\0".into(),
            node_name: nul("n"),
            client_ip: nul("ip"),
            api_key_name: nul("k"),
            error_message: nul("e"),
            request_body: Some(StoredBody {
                text: "\0{}".into(),
                truncated: false,
            }),
            response_body: Some(StoredBody {
                text: "a\0\0".into(),
                truncated: true,
            }),
            ..crate::store::testing::record()
        };
        let fixed = storable(std::slice::from_ref(&dirty)).into_owned();
        let r = &fixed[0];
        assert_eq!(texts(r).count(), 7);
        assert!(texts(r).all(|t| !t.contains('\0')));
        assert_eq!(r.model, "m\u{fffd}");
        assert_eq!(r.response_body.as_ref().unwrap().text, "a\u{fffd}\u{fffd}");
        assert_eq!(r.input_tokens, dirty.input_tokens);
    }
}
