//! The recorder: commits request records in batches (group commit).
//!
//! Every record goes through [`Recorder::record`], which queues it. One
//! [`HistoryWriter`] commits everything queued in one transaction, so a burst of N
//! finished requests costs one commit, not N.
//!
//! Durable mode (the default): the caller gets a [`CommitTicket`] and completes its
//! response to the client only once the record is committed. A request that
//! finishes alone commits the queue itself, on its own thread (about 25 µs for a lone
//! client, with no thread hand-off); when the writer is busy, its holder commits the
//! newcomers as soon as it is done. Under load (see `COMMIT_SIBLINGS`) the
//! [`committer`] thread commits instead, off the proxy's thread. Async mode: the
//! committer commits every few milliseconds and nobody waits.
//!
//! When the store fails (locked by another process, read-only, disk full) the
//! records stay queued and the committer retries with backoff; waiters are
//! released so the router keeps serving. The recorder also runs the store's WAL
//! checkpoint thread. On shutdown [`Recorder::shutdown`] drains the queue first.

mod committer;

use std::collections::VecDeque;
use std::sync::atomic::{AtomicBool, AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::protocol::RequestResponseRecord;
use tokio::sync::oneshot;

use crate::store::{Checkpointer, HistoryWriter, LockWait, Store, StoreError, StoreResult};
use committer::Signal;

/// Most records committed in one transaction by the committer.
const MAX_BATCH: usize = 8192;
/// Most records a finishing request commits at once on its own thread (a
/// transaction of this size takes about a millisecond).
const INLINE_BATCH: usize = 512;
/// Requests still in flight beyond which a finishing request does not commit on its
/// own thread: the committer does it, and while it commits, the next batch gathers.
/// On the proxy's thread each of these commits held up every other request. A/B
/// against 4 (since the committer polls before it sleeps): 32 connections +4 % plain,
/// +2 % streamed, 3 connections unchanged; 1 made 2 connections 25 % slower.
const COMMIT_SIBLINGS: usize = 2;
/// Transactions a finishing request commits in a row before it hands what is still
/// queued to the committer.
const INLINE_ROUNDS: usize = 4;

/// Whether a response waits for its record to be committed.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum Durability {
    /// The body (or the final `[DONE]`) is released after the commit.
    Durable,
    /// Responses never wait; a crash may lose the last records.
    Async,
}

/// Figures for `/health`.
#[derive(Debug, Default)]
pub struct RecorderStatus {
    /// Records accepted but not committed yet.
    pub backlog: AtomicU64,
    pub committed: AtomicU64,
    pub last_error: Mutex<Option<String>>,
}

/// A queued record, its unique id (the same however often its commit is tried, so a
/// retried commit never counts it twice) and whoever waits for its commit.
struct Pending {
    record: RequestResponseRecord,
    uid: u128,
    waiter: Option<oneshot::Sender<bool>>,
}

/// Records taken from the queue for one transaction, their ids and their waiters.
#[derive(Default)]
struct Batch {
    records: Vec<RequestResponseRecord>,
    uids: Vec<u128>,
    waiters: Vec<Option<oneshot::Sender<bool>>>,
}

/// Resolves when the record is committed (`true`) or parked in memory after a store
/// failure (`false`). Empty in async mode.
#[must_use]
pub struct CommitTicket {
    committed: Option<oneshot::Receiver<bool>>,
    /// Set until the ticket's holder has tried to commit the queue itself.
    recorder: Option<Arc<Shared>>,
    /// Other requests were in flight: leave the commit to the committer.
    gather: bool,
}

impl CommitTicket {
    pub fn none() -> Self {
        CommitTicket {
            committed: None,
            recorder: None,
            gather: false,
        }
    }

    /// Commits the queue if the writer is free, then waits at most `max` for this
    /// record; returns whether it is known to be committed.
    pub async fn wait(mut self, max: Duration) -> bool {
        if let Some(shared) = self.recorder.take() {
            if self.gather || !shared.inline || shared.failing.load(Ordering::Relaxed) {
                shared.signal.kick();
            } else {
                shared.commit_inline();
            }
        }
        match self.committed.take() {
            None => false,
            Some(rx) => matches!(tokio::time::timeout(max, rx).await, Ok(Ok(true))),
        }
    }
}

impl Drop for CommitTicket {
    /// Nobody waits for this record (a cancelled request): the committer commits it.
    fn drop(&mut self) {
        if let Some(shared) = self.recorder.take() {
            shared.signal.kick();
        }
    }
}

/// Handle to the recorder; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    shared: Arc<Shared>,
    /// Until shutdown; dropping the last handle closes the recorder too.
    running: Arc<Mutex<Option<Running>>>,
}

/// What runs beside the requests: the committer and the checkpoint thread.
struct Running {
    shared: Arc<Shared>,
    committer_exited: oneshot::Receiver<()>,
    _checkpointer: Checkpointer,
}

impl Drop for Running {
    /// The committer drains the queue, then stops.
    fn drop(&mut self) {
        self.shared.closing.store(true, Ordering::Release);
        self.shared.signal.kick();
    }
}

struct Shared {
    durability: Durability,
    queue: Mutex<VecDeque<Pending>>,
    writer: Mutex<HistoryWriter>,
    /// The writer may commit on a runtime thread (see `HistoryWriter::commits_inline`);
    /// otherwise every commit goes to the committer.
    inline: bool,
    /// Wakes the committer: records to commit in async mode, under load, left over
    /// or cancelled in durable mode, a failure, shutdown.
    signal: Signal,
    /// Set while the store fails: requests stop trying to commit themselves.
    failing: AtomicBool,
    closing: AtomicBool,
    /// Set when the committer has drained the queue and stopped.
    stopped: AtomicBool,
    status: RecorderStatus,
}

impl Recorder {
    /// Opens the writer's connection and starts the committer.
    pub fn start(store: Store, durability: Durability) -> StoreResult<Recorder> {
        let writer = store.writer()?;
        let shared = Arc::new(Shared {
            durability,
            queue: Mutex::new(VecDeque::new()),
            inline: writer.commits_inline(),
            writer: Mutex::new(writer),
            signal: Signal::default(),
            failing: AtomicBool::new(false),
            closing: AtomicBool::new(false),
            stopped: AtomicBool::new(false),
            status: RecorderStatus::default(),
        });
        let checkpointer = store.start_checkpointer()?;
        let (exited, committer_exited) = oneshot::channel();
        let committer_side = shared.clone();
        std::thread::Builder::new()
            .name("recorder".into())
            .spawn(move || committer::run(committer_side, exited))
            .map_err(|e| StoreError::Thread(e.to_string()))?;
        Ok(Recorder {
            shared: shared.clone(),
            running: Arc::new(Mutex::new(Some(Running {
                shared,
                committer_exited,
                _checkpointer: checkpointer,
            }))),
        })
    }

    /// Queues `record`; never fails (after shutdown the record is logged). In durable
    /// mode, [`CommitTicket::wait`] commits the queue on the caller's thread when the
    /// writer is free.
    /// `others_in_flight`: requests still running besides this one (see
    /// `COMMIT_SIBLINGS`).
    pub fn record(&self, record: RequestResponseRecord, others_in_flight: usize) -> CommitTicket {
        let shared = &self.shared;
        if shared.stopped.load(Ordering::Acquire) {
            tracing::error!(?record, "recorder is shut down; record not persisted");
            return CommitTicket::none();
        }
        let (waiter, ticket) = match shared.durability {
            Durability::Durable => {
                let (tx, rx) = oneshot::channel();
                let ticket = CommitTicket {
                    committed: Some(rx),
                    recorder: Some(shared.clone()),
                    gather: others_in_flight >= COMMIT_SIBLINGS,
                };
                (Some(tx), ticket)
            }
            Durability::Async => (None, CommitTicket::none()),
        };
        shared.status.backlog.fetch_add(1, Ordering::Relaxed);
        let uid = rand::random();
        shared.queue.lock().unwrap().push_back(Pending { record, uid, waiter });
        if shared.durability == Durability::Async {
            shared.signal.kick();
        }
        ticket
    }

    pub fn status(&self) -> &RecorderStatus {
        &self.shared.status
    }

    /// Records accepted but not committed yet.
    pub fn backlog(&self) -> u64 {
        self.shared.status.backlog.load(Ordering::Relaxed)
    }

    /// Stops accepting and waits until every queued record is committed (or the
    /// store keeps failing for `max`).
    pub async fn shutdown(&self, max: Duration) {
        let Some(mut running) = self.running.lock().unwrap().take() else {
            return;
        };
        self.shared.closing.store(true, Ordering::Release);
        self.shared.signal.kick();
        if tokio::time::timeout(max, &mut running.committer_exited).await.is_err() {
            self.shared.stopped.store(true, Ordering::Release);
            let left = self.shared.status.backlog.load(Ordering::Relaxed);
            tracing::error!(left, "recorder did not drain in time; records not persisted");
        }
    }
}

impl Shared {
    /// Takes up to `max` queued records.
    fn take(&self, max: usize) -> Batch {
        let mut queue = self.queue.lock().unwrap();
        let n = queue.len().min(max);
        let mut batch = Batch {
            records: Vec::with_capacity(n),
            uids: Vec::with_capacity(n),
            waiters: Vec::with_capacity(n),
        };
        for p in queue.drain(..n) {
            batch.records.push(p.record);
            batch.uids.push(p.uid);
            batch.waiters.push(p.waiter);
        }
        batch
    }

    /// Locks the writer, even if a panic poisoned its lock (a transaction that
    /// panicked was rolled back when it was dropped).
    fn lock_writer(&self) -> std::sync::MutexGuard<'_, HistoryWriter> {
        self.writer.lock().unwrap_or_else(|poisoned| poisoned.into_inner())
    }

    fn is_empty(&self) -> bool {
        self.queue.lock().unwrap().is_empty()
    }

    /// Durable fast path. Whoever holds the writer checks the queue again after
    /// releasing it, so a record queued while the writer is busy is never left
    /// behind: a request that finds the writer busy simply lets the holder commit it.
    fn commit_inline(&self) {
        for _ in 0..INLINE_ROUNDS {
            let mut writer = match self.writer.try_lock() {
                Ok(w) => w,
                Err(std::sync::TryLockError::Poisoned(p)) => p.into_inner(),
                Err(std::sync::TryLockError::WouldBlock) => return,
            };
            let batch = self.take(INLINE_BATCH);
            if batch.records.is_empty() {
                return;
            }
            // Never wait for a lock on a runtime thread: on any failure the
            // committer takes over (it waits, retries and reports).
            let result = writer.commit_once(&batch.records, &batch.uids, LockWait::Never);
            drop(writer);
            match result {
                Ok(()) => self.committed(batch),
                Err(e) => {
                    tracing::debug!(error = %e, "inline commit failed; handing over to the committer");
                    self.requeue(batch);
                    self.signal.kick();
                    return;
                }
            }
        }
        if !self.is_empty() {
            self.signal.kick();
        }
    }

    fn committed(&self, batch: Batch) {
        let n = batch.records.len() as u64;
        self.status.backlog.fetch_sub(n, Ordering::Relaxed);
        self.status.committed.fetch_add(n, Ordering::Relaxed);
        for w in batch.waiters.into_iter().flatten() {
            let _ = w.send(true);
        }
    }

    /// Puts a batch that could not be committed back at the head of the queue.
    fn requeue(&self, batch: Batch) {
        let mut queue = self.queue.lock().unwrap();
        let pending = batch.records.into_iter().zip(batch.uids).zip(batch.waiters);
        for ((record, uid), waiter) in pending.rev() {
            queue.push_front(Pending { record, uid, waiter });
        }
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    fn record(i: u64) -> RequestResponseRecord {
        RequestResponseRecord {
            input_tokens: i,
            total_tokens: i + 1,
            ..crate::store::testing::record()
        }
    }

    async fn open(dir: &tempfile::TempDir) -> Store {
        Store::open(&format!("sqlite://{}/r.db", dir.path().display()))
            .await
            .unwrap()
    }

    async fn total_input_tokens(store: &Store) -> u64 {
        let rows = store
            .rollup_totals(crate::store::GroupBy::Nothing, &Default::default())
            .await
            .unwrap();
        rows[0].1.input_tokens
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn every_concurrent_durable_waiter_sees_its_record_committed() {
        // Committed by the waiters themselves (nothing else in flight), then by the
        // committer (many requests in flight).
        let dir = tempfile::tempdir().unwrap();
        let stores = crate::store::testing::stores(&dir).await;
        for ((engine, store), others_in_flight) in stores.iter().flat_map(|s| [(s, 0), (s, COMMIT_SIBLINGS)]) {
            eprintln!("engine: {engine}, others in flight: {others_in_flight}");
            let before = store.history_count().await.unwrap();
            let tokens_before = if before == 0 {
                0
            } else {
                total_input_tokens(store).await
            };
            let recorder = Recorder::start(store.clone(), Durability::Durable).unwrap();
            let tasks: Vec<_> = (0..400u64)
                .map(|i| {
                    let recorder = recorder.clone();
                    tokio::spawn(async move {
                        recorder
                            .record(record(i), others_in_flight)
                            .wait(Duration::from_secs(10))
                            .await
                    })
                })
                .collect();
            for t in tasks {
                assert!(t.await.unwrap(), "a waiter was released without its commit");
            }
            // Every waiter saw its own commit, so the store holds all of them already.
            assert_eq!(store.history_count().await.unwrap(), before + 400);
            assert_eq!(total_input_tokens(store).await, tokens_before + (0..400).sum::<u64>());
            assert_eq!(recorder.status().backlog.load(Ordering::Relaxed), 0);
            assert_eq!(recorder.status().committed.load(Ordering::Relaxed), 400);
        }
    }

    #[tokio::test(flavor = "multi_thread", worker_threads = 2)]
    async fn the_wal_stops_growing_under_steady_writes() {
        let dir = tempfile::tempdir().unwrap();
        let store = open(&dir).await;
        let recorder = Recorder::start(store.clone(), Durability::Durable).unwrap();
        let wal = dir.path().join("r.db-wal");
        let mut largest = 0;
        // One commit per record, about 10 WAL frames (1 KiB) each: ~150 MiB of WAL
        // written, 9 times RESTART_FRAMES. A passive checkpoint never catches up with
        // a steady writer, so without the restarts the file would hold all of it.
        for i in 0..15_000 {
            assert!(recorder.record(record(i), 0).wait(Duration::from_secs(10)).await);
            if i % 100 == 0 {
                largest = largest.max(std::fs::metadata(&wal).map(|m| m.len()).unwrap_or(0));
            }
        }
        // The WAL header counts the times the WAL started over (big-endian u32 at 12).
        let header = std::fs::read(&wal).unwrap();
        let restarts = u32::from_be_bytes(header[12..16].try_into().unwrap());
        assert!(restarts >= 3, "the WAL started over {restarts} times");
        assert!(largest < 48 << 20, "the WAL grew to {largest} bytes");
        assert_eq!(store.history_count().await.unwrap(), 15_000);
    }

    #[tokio::test]
    async fn a_record_nobody_waits_for_is_committed_by_the_committer() {
        let dir = tempfile::tempdir().unwrap();
        for (engine, store) in crate::store::testing::stores(&dir).await {
            eprintln!("engine: {engine}");
            committer_commits_an_unwaited_record(store).await;
        }
    }

    async fn committer_commits_an_unwaited_record(store: Store) {
        let recorder = Recorder::start(store.clone(), Durability::Durable).unwrap();
        // Let the committer go idle first: it must be woken for this record.
        tokio::time::sleep(Duration::from_millis(20)).await;
        drop(recorder.record(record(7), 0));
        for _ in 0..200 {
            if store.history_count().await.unwrap() == 1 {
                break;
            }
            tokio::time::sleep(Duration::from_millis(10)).await;
        }
        assert_eq!(store.history_count().await.unwrap(), 1);
        assert_eq!(total_input_tokens(&store).await, 7);
    }

    #[tokio::test]
    async fn shutdown_commits_what_is_queued_then_refuses_new_records() {
        let dir = tempfile::tempdir().unwrap();
        for (engine, store) in crate::store::testing::stores(&dir).await {
            eprintln!("engine: {engine}");
            shutdown_commits_then_refuses(store).await;
        }
    }

    async fn shutdown_commits_then_refuses(store: Store) {
        let recorder = Recorder::start(store.clone(), Durability::Async).unwrap();
        for i in 0..50 {
            assert!(!recorder.record(record(i), 0).wait(Duration::from_secs(1)).await);
        }
        recorder.shutdown(Duration::from_secs(10)).await;
        assert_eq!(store.history_count().await.unwrap(), 50);
        let _ = recorder.record(record(1000), 0);
        tokio::time::sleep(Duration::from_millis(50)).await;
        assert_eq!(store.history_count().await.unwrap(), 50);
        assert_eq!(total_input_tokens(&store).await, (0..50).sum::<u64>());
    }
}
