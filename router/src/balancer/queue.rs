//! The admission queue: requests that found every candidate node full wait here, in
//! order of their key's priority (higher first), then of arrival, and each is handed a
//! slot as soon as one frees on a node that can take it.
//!
//! A waiter holds the receiving end of a oneshot channel; [`AdmissionQueue::dispatch`]
//! (run whenever a slot frees or a node changes) takes the first waiter that a node
//! can take, removes it, and sends it a slot already taken for it, so nobody can
//! overtake it between the wake-up and the start. The queue is bounded (`--queue-size`);
//! a waiter leaves it when it is served, when its time is up (`--queue-timeout-secs`)
//! or at once when its client goes away. While it is empty, the routing path reads one
//! atomic and takes no lock. It knows nothing of HTTP or of how slots are chosen.

use std::cmp::Reverse;
use std::collections::BTreeMap;
use std::sync::atomic::{AtomicU64, AtomicUsize, Ordering};
use std::sync::Mutex;
use std::time::Duration;

use tokio::sync::oneshot;

use super::{NodeSlot, Wanted};
use crate::metrics::QueueMetrics;
use crate::nodes::{NodeId, NodeKind};

/// A place in the queue: higher priority first, then arrival.
#[derive(Debug, Clone, Copy, PartialEq, Eq, PartialOrd, Ord)]
pub(super) struct Turn {
    priority: Reverse<i64>,
    arrival: u64,
}

/// A request waiting for a slot.
pub(super) struct Waiter {
    pub model: String,
    /// The only kind of node that may take it (`None`: any).
    pub kind: Option<NodeKind>,
    pub session: Option<u64>,
    /// Nodes it has already been refused by.
    pub tried: Vec<NodeId>,
    give: oneshot::Sender<NodeSlot>,
}

#[derive(Default)]
struct Waiters {
    arrivals: u64,
    by_turn: BTreeMap<Turn, Waiter>,
}

/// Figures of the queue since start-up, for the dashboard.
#[derive(Debug, Clone, Copy, Default, PartialEq)]
pub struct QueueStats {
    /// Requests waiting now.
    pub depth: u64,
    /// Requests that waited and were then served.
    pub served: u64,
    /// Their total wait, in milliseconds.
    pub wait_ms: u64,
    /// Refused because the queue was full.
    pub full: u64,
    pub timed_out: u64,
    /// Clients that left while queued.
    pub cancelled: u64,
}

/// The queue is full: the request is refused at once.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) struct QueueFull;

/// Why a request left the queue without a slot.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub(super) enum Left {
    TimedOut,
    Cancelled,
}

pub struct AdmissionQueue {
    /// Waiters in the queue: read without the lock on every slot release.
    waiting: AtomicUsize,
    waiters: Mutex<Waiters>,
    /// Most requests waiting at once (0: none wait, a full node refuses at once).
    pub size: usize,
    pub timeout: Duration,
    metrics: QueueMetrics,
    served: AtomicU64,
    wait_ms: AtomicU64,
    full: AtomicU64,
    timed_out: AtomicU64,
    cancelled: AtomicU64,
}

impl AdmissionQueue {
    pub fn new(size: usize, timeout: Duration, metrics: QueueMetrics) -> Self {
        AdmissionQueue {
            waiting: AtomicUsize::new(0),
            waiters: Mutex::default(),
            size,
            timeout,
            metrics,
            served: AtomicU64::new(0),
            wait_ms: AtomicU64::new(0),
            full: AtomicU64::new(0),
            timed_out: AtomicU64::new(0),
            cancelled: AtomicU64::new(0),
        }
    }

    pub fn is_empty(&self) -> bool {
        self.waiting.load(Ordering::Acquire) == 0
    }

    pub fn stats(&self) -> QueueStats {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        QueueStats {
            depth: self.waiting.load(Ordering::Relaxed) as u64,
            served: l(&self.served),
            wait_ms: l(&self.wait_ms),
            full: l(&self.full),
            timed_out: l(&self.timed_out),
            cancelled: l(&self.cancelled),
        }
    }

    /// Puts a request in line; it receives its slot on the returned channel.
    pub(super) fn enqueue(
        &self,
        priority: i64,
        wanted: Wanted<'_>,
        tried: &[NodeId],
    ) -> Result<(Turn, oneshot::Receiver<NodeSlot>), QueueFull> {
        let mut w = self.waiters.lock().unwrap();
        if w.by_turn.len() >= self.size {
            drop(w);
            self.full.fetch_add(1, Ordering::Relaxed);
            self.metrics.refused_full.inc();
            return Err(QueueFull);
        }
        let (give, take) = oneshot::channel();
        w.arrivals += 1;
        let turn = Turn {
            priority: Reverse(priority),
            arrival: w.arrivals,
        };
        let waiter = Waiter {
            model: wanted.model.to_string(),
            kind: wanted.kind,
            session: wanted.session,
            tried: tried.to_vec(),
            give,
        };
        w.by_turn.insert(turn, waiter);
        self.set_depth(w.by_turn.len());
        Ok((turn, take))
    }

    /// Takes the request out of line; false if it was already handed a slot.
    pub(super) fn leave(&self, turn: Turn, why: Left) -> bool {
        let mut w = self.waiters.lock().unwrap();
        if w.by_turn.remove(&turn).is_none() {
            return false;
        }
        self.set_depth(w.by_turn.len());
        drop(w);
        let (count, metric) = match why {
            Left::TimedOut => (&self.timed_out, &self.metrics.refused_timeout),
            Left::Cancelled => (&self.cancelled, &self.metrics.cancelled),
        };
        count.fetch_add(1, Ordering::Relaxed);
        metric.inc();
        true
    }

    /// A request was served after waiting `waited`.
    pub(super) fn served_after(&self, waited: Duration) {
        self.served.fetch_add(1, Ordering::Relaxed);
        self.wait_ms.fetch_add(waited.as_millis() as u64, Ordering::Relaxed);
        self.metrics.wait.observe(waited.as_secs_f64());
    }

    /// Hands slots to waiters, first in line first, while `place` finds one for them.
    pub(super) fn dispatch(&self, mut place: impl FnMut(&Waiter) -> Option<NodeSlot>) {
        while !self.is_empty() {
            let mut w = self.waiters.lock().unwrap();
            // Models (of a node kind) no node could take in this pass: later waiters for
            // them are skipped.
            let mut full_models: Vec<(&str, Option<NodeKind>)> = Vec::new();
            let mut chosen = None;
            for (turn, waiter) in &w.by_turn {
                if waiter.give.is_closed() || full_models.contains(&(waiter.model.as_str(), waiter.kind)) {
                    continue;
                }
                match place(waiter) {
                    Some(slot) => {
                        chosen = Some((*turn, slot));
                        break;
                    }
                    None if waiter.tried.is_empty() => full_models.push((&waiter.model, waiter.kind)),
                    None => {}
                }
            }
            let Some((turn, slot)) = chosen else {
                return;
            };
            let waiter = w.by_turn.remove(&turn).expect("the chosen waiter is in line");
            self.set_depth(w.by_turn.len());
            drop(w);
            // A waiter that left meanwhile gives the slot back (its drop runs dispatch again).
            let _ = waiter.give.send(slot);
        }
    }

    fn set_depth(&self, depth: usize) {
        self.waiting.store(depth, Ordering::Release);
        self.metrics.depth.set(depth as i64);
    }
}
