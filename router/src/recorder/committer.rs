//! The committer: a thread that commits what the requests did not commit themselves.
//!
//! It commits continuously: while one transaction runs, the records of the next
//! gather in the queue, and as soon as it is done it takes all of them (group
//! commit without an artificial delay). It serves durable requests finishing under
//! load (see `COMMIT_SIBLINGS`), records nobody waits for (cancelled requests),
//! async mode (after a short linger) and retries while the store fails.
//!
//! A thread of its own rather than a task: the earlier design (a tokio task handing
//! each batch to `spawn_blocking`, which slept 300 µs to gather) cost four thread
//! hand-offs per batch and left the single proxy thread idle while the clients
//! waited. A/B at 32 connections: durable streamed 19.1k → 21.4k req/s.

use std::panic::AssertUnwindSafe;
use std::sync::atomic::Ordering;
use std::sync::{Arc, Condvar, Mutex};
use std::time::{Duration, Instant};

use tokio::sync::oneshot;

use super::{Durability, Shared, MAX_BATCH};
use crate::store::LockWait;

const FIRST_BACKOFF: Duration = Duration::from_millis(50);
const MAX_BACKOFF: Duration = Duration::from_secs(2);
/// In async mode nobody waits for a commit, so the committer lets records gather for
/// a moment: a transaction's fixed cost is then shared by many records.
const ASYNC_LINGER: Duration = Duration::from_millis(5);
/// Under load (the previous kick came within this), the committer polls this long for
/// the next kick before it sleeps: a kick then costs the proxy's thread no system call
/// and the committer no wake-up. A/B at 32 connections, durable: plain +6–7 %,
/// streamed +1–4 %; one connection unchanged (it commits inline).
const POLL_BEFORE_SLEEP: Duration = Duration::from_micros(100);

/// Wakes the committer. A kick costs a system call only when the committer sleeps.
#[derive(Default)]
pub(super) struct Signal {
    state: Mutex<SignalState>,
    woken: Condvar,
}

#[derive(Default)]
struct SignalState {
    kicked: bool,
    sleeping: bool,
}

impl Signal {
    pub(super) fn kick(&self) {
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        if !state.kicked {
            state.kicked = true;
            if state.sleeping {
                self.woken.notify_one();
            }
        }
    }

    /// Returns at once if kicked since the last call. `poll`: first poll for a kick
    /// for up to `POLL_BEFORE_SLEEP`, yielding the CPU between tries.
    fn wait(&self, poll: bool) {
        if poll {
            let until = Instant::now() + POLL_BEFORE_SLEEP;
            while Instant::now() < until {
                if std::mem::take(&mut self.state.lock().unwrap_or_else(|p| p.into_inner()).kicked) {
                    return;
                }
                std::thread::yield_now();
            }
        }
        let mut state = self.state.lock().unwrap_or_else(|p| p.into_inner());
        state.sleeping = true;
        while !state.kicked {
            state = self.woken.wait(state).unwrap_or_else(|p| p.into_inner());
        }
        state.sleeping = false;
        state.kicked = false;
    }
}

/// Runs until the recorder closes and the queue is empty; then sends on `exited`.
pub(super) fn run(shared: Arc<Shared>, exited: oneshot::Sender<()>) {
    let mut backoff = FIRST_BACKOFF;
    // Whether the last kick came within `POLL_BEFORE_SLEEP` of the wait.
    let mut busy = false;
    loop {
        if shared.is_empty() {
            if shared.closing.load(Ordering::Acquire) {
                // Refuse new records, then commit any that came in meanwhile.
                shared.stopped.store(true, Ordering::Release);
                if shared.is_empty() {
                    break;
                }
                continue;
            }
            let waiting = Instant::now();
            shared.signal.wait(busy);
            busy = waiting.elapsed() <= POLL_BEFORE_SLEEP;
            if shared.durability == Durability::Async && !shared.closing.load(Ordering::Acquire) {
                std::thread::sleep(ASYNC_LINGER);
            }
            continue;
        }
        let mut batch = shared.take(MAX_BATCH);
        // A panic must not take the batch with it.
        let result = std::panic::catch_unwind(AssertUnwindSafe(|| {
            shared
                .lock_writer()
                .commit_once(&batch.records, &batch.uids, LockWait::Patient)
        }));
        let error = match result {
            Ok(Ok(())) => {
                shared.committed(batch);
                if shared.failing.swap(false, Ordering::Relaxed) {
                    tracing::info!("store writable again; backlog committed");
                }
                *shared.status.last_error.lock().unwrap() = None;
                backoff = FIRST_BACKOFF;
                continue;
            }
            Ok(Err(e)) => e.to_string(),
            Err(_) => "the writer panicked".to_string(),
        };
        tracing::warn!(error = %error, pending = batch.records.len(), "store write failed; keeping records in memory");
        *shared.status.last_error.lock().unwrap() = Some(error);
        shared.failing.store(true, Ordering::Relaxed);
        // Release the waiters: the router keeps serving while the records wait here.
        for w in batch.waiters.iter_mut().filter_map(Option::take) {
            let _ = w.send(false);
        }
        shared.requeue(batch);
        std::thread::sleep(backoff);
        backoff = (backoff * 2).min(MAX_BACKOFF);
    }
    let _ = exited.send(());
}
