//! What a node is doing: its requests in flight (its slots, bounded by its capacity),
//! its back-off after refusing a request, and the totals of the requests it finished.
//!
//! [`NodeLoadState`] is atomics only: the routing path reads and takes slots without a
//! lock. It belongs to the node (`Node::load`); the balancer is the only writer of its
//! counters (`finish_request`), and takes and gives back slots through [`NodeLoadState::try_enter`]
//! and [`NodeLoadState::leave`]. It knows nothing of HTTP, the queue or the store.

use std::sync::atomic::{AtomicU64, Ordering};
use std::sync::OnceLock;
use std::time::{Duration, Instant};

use common::protocol::{RequestStatus, TokenUsage};

use crate::store::RollupTotals;

/// Per-node counters (SPEC T-2/C-2/C-7). Loaded from the store at start-up, so a
/// restart changes no figure; updated only by `finish_request`.
#[derive(Debug, Default)]
pub struct NodeLoadState {
    active_requests: AtomicU64,
    /// Requests in flight on the node through the other replicas of a shared store,
    /// as they last published them (0 with one router).
    elsewhere: AtomicU64,
    /// Milliseconds of [`monotonic_ms`] before which the node is not sent new requests
    /// (it answered 429 or 503 with `Retry-After`); 0: none.
    refused_until_ms: AtomicU64,
    total_requests: AtomicU64,
    successful_requests: AtomicU64,
    failed_requests: AtomicU64,
    cancelled_requests: AtomicU64,
    total_latency_ms: AtomicU64,
    total_input_tokens: AtomicU64,
    total_output_tokens: AtomicU64,
    total_tokens: AtomicU64,
}

/// A consistent-enough copy of a [`NodeLoadState`].
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct LoadSnapshot {
    pub active_requests: u64,
    pub total_requests: u64,
    pub successful_requests: u64,
    /// Errors and cancellations.
    pub failed_requests: u64,
    pub cancelled_requests: u64,
    pub total_latency_ms: u64,
    pub total_input_tokens: u64,
    pub total_output_tokens: u64,
    pub total_tokens: u64,
}

impl LoadSnapshot {
    /// The figures of stored totals, with `active_requests` in flight.
    pub fn from_totals(t: &RollupTotals, active_requests: u64) -> Self {
        LoadSnapshot {
            active_requests,
            total_requests: t.request_count,
            successful_requests: t.success_count,
            failed_requests: t.error_count + t.cancelled_count,
            cancelled_requests: t.cancelled_count,
            total_latency_ms: t.duration_ms_sum,
            total_input_tokens: t.input_tokens,
            total_output_tokens: t.output_tokens,
            total_tokens: t.total_tokens,
        }
    }
}

fn saturating_add(a: &AtomicU64, v: u64) {
    let _ = a.fetch_update(Ordering::Relaxed, Ordering::Relaxed, |x| Some(x.saturating_add(v)));
}

/// Milliseconds since the first call: a cheap monotonic clock for back-offs (never 0).
pub fn monotonic_ms() -> u64 {
    static START: OnceLock<Instant> = OnceLock::new();
    START.get_or_init(Instant::now).elapsed().as_millis() as u64 + 1
}

impl NodeLoadState {
    /// State of a node whose stored totals are `t`.
    pub fn from_totals(t: &RollupTotals) -> Self {
        NodeLoadState {
            active_requests: AtomicU64::new(0),
            elsewhere: AtomicU64::new(0),
            refused_until_ms: AtomicU64::new(0),
            total_requests: AtomicU64::new(t.request_count),
            successful_requests: AtomicU64::new(t.success_count),
            failed_requests: AtomicU64::new(t.error_count + t.cancelled_count),
            cancelled_requests: AtomicU64::new(t.cancelled_count),
            total_latency_ms: AtomicU64::new(t.duration_ms_sum),
            total_input_tokens: AtomicU64::new(t.input_tokens),
            total_output_tokens: AtomicU64::new(t.output_tokens),
            total_tokens: AtomicU64::new(t.total_tokens),
        }
    }

    /// Requests in flight (slots taken).
    pub fn active(&self) -> u64 {
        self.active_requests.load(Ordering::Relaxed)
    }

    /// Requests in flight on the node through the other replicas.
    pub fn elsewhere(&self) -> u64 {
        self.elsewhere.load(Ordering::Relaxed)
    }

    /// What the other replicas published; returns whether it went down (slots freed).
    pub fn set_elsewhere(&self, n: u64) -> bool {
        self.elsewhere.swap(n, Ordering::Relaxed) > n
    }

    /// The slots this router may take of a node of `capacity` (`None`: no limit): what
    /// the other replicas hold is not free.
    pub fn capacity_here(&self, capacity: Option<u64>) -> Option<u64> {
        capacity.map(|c| c.saturating_sub(self.elsewhere()))
    }

    /// Takes a slot if fewer than `capacity` are taken (`None`: no limit).
    pub fn try_enter(&self, capacity: Option<u64>) -> bool {
        match capacity {
            None => {
                self.active_requests.fetch_add(1, Ordering::Relaxed);
                true
            }
            Some(cap) => self
                .active_requests
                .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |a| (a < cap).then_some(a + 1))
                .is_ok(),
        }
    }

    /// Gives a slot back.
    pub fn leave(&self) {
        let _ = self
            .active_requests
            .fetch_update(Ordering::AcqRel, Ordering::Relaxed, |x| Some(x.saturating_sub(1)));
    }

    /// The node refused a request: no new one for `for_how_long`.
    pub fn refuse_for(&self, for_how_long: Duration) {
        let until = monotonic_ms() + for_how_long.as_millis() as u64;
        self.refused_until_ms.fetch_max(until, Ordering::Relaxed);
    }

    /// Whether the node is in a back-off it asked for (read without a clock when it is not).
    pub fn refusing(&self) -> bool {
        let until = self.refused_until_ms.load(Ordering::Relaxed);
        until != 0 && monotonic_ms() < until
    }

    pub fn snapshot(&self) -> LoadSnapshot {
        let l = |a: &AtomicU64| a.load(Ordering::Relaxed);
        LoadSnapshot {
            active_requests: l(&self.active_requests),
            total_requests: l(&self.total_requests),
            successful_requests: l(&self.successful_requests),
            failed_requests: l(&self.failed_requests),
            cancelled_requests: l(&self.cancelled_requests),
            total_latency_ms: l(&self.total_latency_ms),
            total_input_tokens: l(&self.total_input_tokens),
            total_output_tokens: l(&self.total_output_tokens),
            total_tokens: l(&self.total_tokens),
        }
    }

    /// Accounts for one finished request (C-7): counts, latency and tokens.
    pub fn add_finished(&self, status: RequestStatus, duration_ms: u64, usage: &TokenUsage) {
        saturating_add(&self.total_requests, 1);
        match status {
            RequestStatus::Success => saturating_add(&self.successful_requests, 1),
            RequestStatus::Error => saturating_add(&self.failed_requests, 1),
            RequestStatus::Cancelled => {
                saturating_add(&self.failed_requests, 1);
                saturating_add(&self.cancelled_requests, 1);
            }
        }
        saturating_add(&self.total_latency_ms, duration_ms);
        saturating_add(&self.total_input_tokens, usage.input_tokens);
        saturating_add(&self.total_output_tokens, usage.output_tokens);
        saturating_add(&self.total_tokens, usage.total_tokens);
    }
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn slots_are_bounded_by_the_capacity() {
        let load = NodeLoadState::default();
        assert!(load.try_enter(Some(2)));
        assert!(load.try_enter(Some(2)));
        assert!(!load.try_enter(Some(2)));
        assert_eq!(load.active(), 2);
        load.leave();
        assert!(load.try_enter(Some(2)));
        assert!(load.try_enter(None), "no capacity: no limit");
        assert_eq!(load.active(), 3);
    }

    #[test]
    fn a_back_off_ends() {
        let load = NodeLoadState::default();
        assert!(!load.refusing());
        load.refuse_for(Duration::from_millis(30));
        assert!(load.refusing());
        std::thread::sleep(Duration::from_millis(40));
        assert!(!load.refusing());
    }
}
