//! WAL checkpoints, on a thread of their own at low CPU priority.
//!
//! The [`super::writer::SqliteWriter`] never checkpoints (that would stall the commit that
//! triggers it). Instead a thread copies committed WAL frames into the database file
//! every [`INTERVAL`] (a passive checkpoint, which blocks nobody), and restarts the
//! WAL once it holds more than [`RESTART_FRAMES`]: under steady writes a passive
//! checkpoint is never complete at the moment a commit starts, so the WAL is never
//! reused and would grow without bound (measured: 90 MB/s under load).
//!
//! Measured on this 2-core VM at one connection (p99 of a durable request): a RESTART
//! at 16 Ki frames every 50 ms 0.65–1.0 ms, at 64 Ki frames 1.3 ms, at 256 Ki 6.5 ms;
//! TRUNCATE instead of RESTART (the file given back, then grown again) 6 ms. Small
//! and frequent is better: passive checkpoints every 15 ms instead of 50 ms took the
//! p99 of a streamed request from 0.82–0.94 ms to 0.68–0.70 ms (A/B, 3 runs each; no
//! change at 32 connections), every second made it 4–8 ms. The thread runs at nice 10
//! so that copying pages yields to requests.
//!
//! What the checkpoints still cost a durable request at one connection (2026-12-01,
//! temporary builds, medians of 3–5 interleaved rounds): about 0.4 ms of p99 (with no
//! checkpoint thread the p99 fell to the async mode's). Tried without gain: nice 0,
//! `SCHED_IDLE`, passes every 3 or 5 ms; worse: every 100 ms, and no `fsync` in the
//! checkpoint (+6.8 ms). The commit itself is no slower while a pass runs, so the
//! cost is most likely the kernel's I/O work on the shared core, not this thread's CPU.

use std::path::Path;
use std::sync::atomic::{AtomicBool, Ordering};
use std::sync::Arc;
use std::time::Duration;

use rusqlite::Connection;

use super::SqliteStore;
use crate::store::{StoreError, StoreResult};

/// How often committed WAL frames are copied into the database file.
pub const INTERVAL: Duration = Duration::from_millis(15);
/// WAL frames (1 KiB pages) beyond which the next commit starts the WAL over from
/// its beginning; the checkpoint pauses the writer while it copies the last frames.
pub const RESTART_FRAMES: i64 = 16 * 1024;
const NICE: i32 = 10;

/// Stops the checkpoint thread when dropped (within one interval); none runs for
/// PostgreSQL.
#[derive(Debug)]
pub struct Checkpointer {
    stop: Option<Arc<AtomicBool>>,
}

impl Checkpointer {
    pub(crate) fn none() -> Self {
        Checkpointer { stop: None }
    }
}

impl Drop for Checkpointer {
    fn drop(&mut self) {
        if let Some(stop) = &self.stop {
            stop.store(true, Ordering::Relaxed);
        }
    }
}

impl SqliteStore {
    /// Starts the checkpoint thread.
    pub fn start_checkpointer(&self) -> StoreResult<Checkpointer> {
        let conn = open(&self.path)?;
        let stop = Arc::new(AtomicBool::new(false));
        let stopped = stop.clone();
        std::thread::Builder::new()
            .name("wal-checkpoint".into())
            .spawn(move || run(conn, &stopped))
            .map_err(|e| StoreError::Thread(e.to_string()))?;
        Ok(Checkpointer { stop: Some(stop) })
    }
}

fn open(path: &Path) -> StoreResult<Connection> {
    let conn = Connection::open(path)?;
    conn.execute_batch("PRAGMA synchronous = NORMAL; PRAGMA wal_autocheckpoint = 0;")?;
    conn.busy_handler(Some(super::writer::poll_lock))?;
    Ok(conn)
}

fn run(conn: Connection, stop: &AtomicBool) {
    lower_priority();
    while !stop.load(Ordering::Relaxed) {
        std::thread::sleep(INTERVAL);
        let result = checkpoint(&conn, "PASSIVE").and_then(|frames| {
            if frames > RESTART_FRAMES {
                checkpoint(&conn, "RESTART")
            } else {
                Ok(frames)
            }
        });
        if let Err(e) = result {
            tracing::debug!(error = %e, "WAL checkpoint failed; retrying at the next interval");
        }
    }
}

/// Runs a checkpoint; returns how many frames the WAL held.
fn checkpoint(conn: &Connection, mode: &str) -> rusqlite::Result<i64> {
    conn.query_row(&format!("PRAGMA wal_checkpoint({mode})"), [], |row| row.get(1))
}

/// Lowers this thread's CPU priority (Linux keeps a nice value per thread).
fn lower_priority() {
    #[cfg(target_os = "linux")]
    {
        // SAFETY: setpriority reads its three integer arguments and nothing else;
        // `who = 0` names the calling thread.
        let rc = unsafe { libc::setpriority(libc::PRIO_PROCESS, 0, NICE) };
        if rc != 0 {
            tracing::debug!("could not lower the checkpoint thread's priority");
        }
    }
}
