//! The recorder: one writer task that commits request records in batches.
//!
//! Every record goes through [`Recorder::record`]. The writer takes everything queued
//! and commits it in one transaction (group commit), so a burst of N finished requests
//! costs one commit, not N. In durable mode the caller gets a [`CommitTicket`] and
//! completes its response to the client only once the record is committed.
//!
//! When the store fails (locked, read-only, disk full) the records stay in memory and
//! are retried with backoff; waiters are released so the router keeps serving. On
//! shutdown [`Recorder::shutdown`] drains the queue before returning.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::{Arc, Mutex};
use std::time::Duration;

use common::protocol::RequestResponseRecord;
use tokio::sync::{mpsc, oneshot};
use tokio::task::JoinHandle;

use crate::store::Store;

/// Most records committed in one transaction.
const MAX_BATCH: usize = 8192;
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// In async mode nobody waits for a commit, so the writer lets records gather for a
/// moment: a transaction's fixed cost is then shared by many records. Durable mode
/// never lingers (clients wait); its batches grow by themselves under load.
const ASYNC_LINGER: Duration = Duration::from_millis(5);

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

enum Job {
    Record {
        record: RequestResponseRecord,
        waiter: Option<oneshot::Sender<bool>>,
    },
    /// Commit what is queued, then stop.
    Shutdown,
}

/// Resolves when the record is committed (`true`) or parked in memory after a store
/// failure (`false`). Empty in async mode.
#[must_use]
pub struct CommitTicket(Option<oneshot::Receiver<bool>>);

impl CommitTicket {
    pub fn none() -> Self {
        CommitTicket(None)
    }

    /// Waits at most `max`; returns whether the record is known to be committed.
    pub async fn wait(self, max: Duration) -> bool {
        match self.0 {
            None => false,
            Some(rx) => matches!(tokio::time::timeout(max, rx).await, Ok(Ok(true))),
        }
    }
}

/// Handle to the writer task; cheap to clone.
#[derive(Clone)]
pub struct Recorder {
    tx: mpsc::UnboundedSender<Job>,
    durability: Durability,
    status: Arc<RecorderStatus>,
    writer: Arc<Mutex<Option<JoinHandle<()>>>>,
}

impl Recorder {
    pub fn start(store: Store, durability: Durability) -> Recorder {
        let (tx, rx) = mpsc::unbounded_channel();
        let status = Arc::new(RecorderStatus::default());
        let linger = match durability {
            Durability::Durable => Duration::ZERO,
            Durability::Async => ASYNC_LINGER,
        };
        let writer = tokio::spawn(write_loop(store, rx, status.clone(), linger));
        Recorder {
            tx,
            durability,
            status,
            writer: Arc::new(Mutex::new(Some(writer))),
        }
    }

    /// Queues `record`; never blocks, never fails (after shutdown the record is logged).
    pub fn record(&self, record: RequestResponseRecord) -> CommitTicket {
        let (waiter, ticket) = match self.durability {
            Durability::Durable => {
                let (tx, rx) = oneshot::channel();
                (Some(tx), CommitTicket(Some(rx)))
            }
            Durability::Async => (None, CommitTicket::none()),
        };
        self.status.backlog.fetch_add(1, Ordering::Relaxed);
        if let Err(e) = self.tx.send(Job::Record { record, waiter }) {
            self.status.backlog.fetch_sub(1, Ordering::Relaxed);
            if let Job::Record { record, .. } = e.0 {
                tracing::error!(?record, "recorder is shut down; record not persisted");
            }
        }
        ticket
    }

    pub fn status(&self) -> &RecorderStatus {
        &self.status
    }

    /// Stops accepting and waits until every queued record is committed (or the
    /// store keeps failing for `max`).
    pub async fn shutdown(&self, max: Duration) {
        let writer = self.writer.lock().unwrap().take();
        let _ = self.tx.send(Job::Shutdown);
        if let Some(mut w) = writer {
            if tokio::time::timeout(max, &mut w).await.is_err() {
                w.abort();
                let left = self.status.backlog.load(Ordering::Relaxed);
                tracing::error!(left, "recorder did not drain in time; records not persisted");
            }
        }
    }
}

async fn write_loop(store: Store, mut rx: mpsc::UnboundedReceiver<Job>, status: Arc<RecorderStatus>, linger: Duration) {
    let mut records: Vec<RequestResponseRecord> = Vec::new();
    let mut waiters: Vec<oneshot::Sender<bool>> = Vec::new();
    let mut backoff = Duration::from_millis(50);
    let mut open = true;
    loop {
        if records.is_empty() {
            if !open {
                return;
            }
            match rx.recv().await {
                Some(job) => open &= push(job, &mut records, &mut waiters),
                None => return,
            }
            if open && !linger.is_zero() {
                tokio::time::sleep(linger).await;
            } else {
                // Let handlers that are finishing right now queue their records first.
                tokio::task::yield_now().await;
            }
        }
        while records.len() < MAX_BATCH {
            match rx.try_recv() {
                Ok(job) => open &= push(job, &mut records, &mut waiters),
                Err(_) => break,
            }
        }
        if records.is_empty() {
            continue;
        }
        match store.write_batch(&records).await {
            Ok(()) => {
                let n = records.len() as u64;
                status.backlog.fetch_sub(n, Ordering::Relaxed);
                status.committed.fetch_add(n, Ordering::Relaxed);
                *status.last_error.lock().unwrap() = None;
                records.clear();
                for w in waiters.drain(..) {
                    let _ = w.send(true);
                }
                backoff = Duration::from_millis(50);
            }
            Err(e) => {
                tracing::warn!(error = %e, pending = records.len(), "store write failed; keeping records in memory");
                *status.last_error.lock().unwrap() = Some(e.to_string());
                for w in waiters.drain(..) {
                    let _ = w.send(false);
                }
                tokio::time::sleep(backoff).await;
                backoff = (backoff * 2).min(MAX_BACKOFF);
            }
        }
    }
}

/// Adds a queued record to the batch; returns `false` for the shutdown signal.
fn push(job: Job, records: &mut Vec<RequestResponseRecord>, waiters: &mut Vec<oneshot::Sender<bool>>) -> bool {
    match job {
        Job::Record { record, waiter } => {
            records.push(record);
            waiters.extend(waiter);
            true
        }
        Job::Shutdown => false,
    }
}
