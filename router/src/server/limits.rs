//! How many client connections the server holds, and what happens beyond: the table
//! of open connections (which one to close to make room), the open-file limit the
//! default cap is derived from, and the accept loop's pause when the process is out
//! of file descriptors anyway.

use std::sync::{Arc, Mutex};
use std::time::Duration;

use tokio::sync::Notify;
use tokio::time::Instant;

use super::connection::ConnectionState;

/// File descriptors kept for what is not a client connection: the listener, SQLite's
/// files, the runtime's, over-cap answers ([`super::OVERFLOW_ANSWERS`]) and connections
/// being closed to make room ([`EVICTION_SLACK`]).
const RESERVED_FDS: u64 = 128;
/// Connections over the cap while the idle ones closed to make room for them have not
/// closed yet.
const EVICTION_SLACK: usize = 16;
/// Entries of the table looked at to find a connection to close.
const EVICTION_SCAN: usize = 128;
/// Longest wait of the accept loop for closing connections before it answers 503
/// (they close as soon as their task runs).
const EVICTION_WAIT: Duration = Duration::from_millis(100);

/// The process's open-file limit after [`raise_open_file_limit`].
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct OpenFileLimit {
    pub current: u64,
    /// The soft limit before it was raised, if it was.
    pub raised_from: Option<u64>,
}

/// Raises the soft open-file limit to the hard limit: every client connection is a
/// file descriptor, and a common soft default (1024) caps a gateway at a few hundred
/// streams.
#[cfg(unix)]
#[allow(clippy::unnecessary_cast)] // rlim_t is u64 on 64-bit Linux, not everywhere
pub fn raise_open_file_limit() -> OpenFileLimit {
    let mut limit = libc::rlimit {
        rlim_cur: 0,
        rlim_max: 0,
    };
    // SAFETY: getrlimit and setrlimit only read and write the struct passed.
    if unsafe { libc::getrlimit(libc::RLIMIT_NOFILE, &mut limit) } != 0 {
        tracing::warn!(error = %std::io::Error::last_os_error(), "cannot read the open-file limit");
        return OpenFileLimit {
            current: 1024,
            raised_from: None,
        };
    }
    let before = limit.rlim_cur;
    if limit.rlim_cur < limit.rlim_max {
        let raised = libc::rlimit {
            rlim_cur: limit.rlim_max,
            rlim_max: limit.rlim_max,
        };
        // SAFETY: as above.
        if unsafe { libc::setrlimit(libc::RLIMIT_NOFILE, &raised) } == 0 {
            return OpenFileLimit {
                current: raised.rlim_cur as u64,
                raised_from: Some(before as u64),
            };
        }
        tracing::warn!(error = %std::io::Error::last_os_error(), soft = before as u64, hard = limit.rlim_max as u64,
            "cannot raise the open-file limit");
    }
    OpenFileLimit {
        current: before as u64,
        raised_from: None,
    }
}

#[cfg(not(unix))]
pub fn raise_open_file_limit() -> OpenFileLimit {
    OpenFileLimit {
        current: 8192,
        raised_from: None,
    }
}

/// The connection cap for an open-file limit: a proxied request holds two
/// descriptors (the client's and the node's), and some are kept for the rest.
pub fn default_max_connections(open_files: u64) -> usize {
    (open_files.saturating_sub(RESERVED_FDS) / 2).clamp(16, 1 << 20) as usize
}

/// The open client connections and the cap on them.
pub(super) struct ConnectionTable {
    max: usize,
    /// The time connections' activity is measured from, to compare them.
    epoch: Instant,
    slots: Mutex<Slots>,
    /// Signalled when a connection leaves the table.
    room: Notify,
}

#[derive(Default)]
struct Slots {
    entries: Vec<Option<Arc<ConnectionState>>>,
    free: Vec<usize>,
    open: usize,
    /// Where the next search for a connection to close starts.
    hand: usize,
}

pub(super) enum Admission {
    Admitted(Entry),
    /// At the cap, and every connection is serving a request.
    Full,
}

enum Attempt {
    Admitted(Entry),
    Full,
    /// Connections closed to make room have not closed yet.
    Wait,
}

/// A connection's place in the table, freed when dropped.
pub(super) struct Entry {
    table: Arc<ConnectionTable>,
    slot: usize,
    pub state: Arc<ConnectionState>,
}

impl Drop for Entry {
    fn drop(&mut self) {
        let mut slots = self.table.slots.lock().unwrap();
        slots.entries[self.slot] = None;
        slots.free.push(self.slot);
        slots.open -= 1;
        drop(slots);
        self.table.room.notify_one();
    }
}

impl ConnectionTable {
    pub(super) fn new(max: usize) -> Self {
        ConnectionTable {
            max,
            epoch: Instant::now(),
            slots: Mutex::default(),
            room: Notify::new(),
        }
    }

    /// A place for a new connection: free, or made by closing the connection idle the
    /// longest among those looked at; if they are all busy, [`Admission::Full`].
    pub(super) async fn admit_waiting_for_evictions(self: &Arc<Self>) -> Admission {
        let deadline = Instant::now() + EVICTION_WAIT;
        loop {
            match self.try_admit() {
                Attempt::Admitted(entry) => return Admission::Admitted(entry),
                Attempt::Full => return Admission::Full,
                // A connection that leaves meanwhile leaves a permit: no wake-up is lost.
                Attempt::Wait => {
                    if tokio::time::timeout_at(deadline, self.room.notified()).await.is_err() {
                        return Admission::Full;
                    }
                }
            }
        }
    }

    fn try_admit(self: &Arc<Self>) -> Attempt {
        let mut slots = self.slots.lock().unwrap();
        if slots.open >= self.max {
            if slots.open >= self.max + EVICTION_SLACK {
                return Attempt::Wait;
            }
            if !slots.evict_one() {
                return Attempt::Full;
            }
        }
        let state = Arc::new(ConnectionState::new(self.epoch));
        let slot = match slots.free.pop() {
            Some(slot) => {
                slots.entries[slot] = Some(state.clone());
                slot
            }
            None => {
                slots.entries.push(Some(state.clone()));
                slots.entries.len() - 1
            }
        };
        slots.open += 1;
        Attempt::Admitted(Entry {
            table: self.clone(),
            slot,
            state,
        })
    }
}

impl Slots {
    /// Asks the connection idle the longest among the next [`EVICTION_SCAN`] to close.
    fn evict_one(&mut self) -> bool {
        let len = self.entries.len();
        let mut oldest: Option<(u64, usize)> = None;
        for i in 0..len.min(EVICTION_SCAN) {
            let at = (self.hand + i) % len;
            let Some(state) = &self.entries[at] else { continue };
            if let Some(since) = state.evictable_since() {
                if oldest.is_none_or(|(s, _)| since < s) {
                    oldest = Some((since, at));
                }
            }
        }
        let Some((_, at)) = oldest else {
            self.hand = (self.hand + EVICTION_SCAN) % len.max(1);
            return false;
        };
        self.hand = (at + 1) % len;
        self.entries[at].as_ref().expect("scanned").evict();
        true
    }
}

/// Accept errors: a connection that failed before it was accepted is skipped; out of
/// file descriptors (or memory), the loop pauses briefly instead of spinning, and
/// says so at most once a second.
#[derive(Default)]
pub(super) struct AcceptErrors {
    last_warning: Option<Instant>,
}

impl AcceptErrors {
    pub(super) async fn pause_after(&mut self, e: std::io::Error) {
        use std::io::ErrorKind::*;
        if matches!(
            e.kind(),
            ConnectionAborted | ConnectionReset | ConnectionRefused | Interrupted
        ) {
            return;
        }
        if self.last_warning.is_none_or(|t| t.elapsed() >= Duration::from_secs(1)) {
            tracing::warn!(error = %e, "cannot accept connections; pausing");
            self.last_warning = Some(Instant::now());
        }
        tokio::time::sleep(Duration::from_millis(10)).await;
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn the_default_cap_keeps_two_descriptors_per_connection_and_a_reserve() {
        assert_eq!(default_max_connections(256), 64);
        assert_eq!(default_max_connections(1024), 448);
        assert_eq!(default_max_connections(4096), 1984);
        assert_eq!(default_max_connections(20), 16);
        assert_eq!(default_max_connections(u64::MAX), 1 << 20);
    }
}
