//! Request and token counters read from the store at each scrape, for router replicas
//! on a shared store (DESIGN §12): every replica's `/metrics` then shows the
//! cluster's totals, equal to the rollups and to the sum of the records.
//!
//! The counters a replica counts itself cannot show the others' requests, and adding
//! the others' later would count a request twice whenever labels change (a rename).
//! So on a shared store the families exposed are these, emptied and filled from the
//! rollups under one lock at each scrape; the counters `finish_request` updates are
//! not exposed. Latency histograms, requests in flight and node health stay per
//! replica, as Prometheus expects of each scraped instance.

use std::sync::Mutex;

use super::{KeyLabels, Metrics, NodeModelLabels, TokenCounters};
use crate::store::RollupTotals;

/// The exposed counters of a replica on a shared store.
#[derive(Default)]
pub struct StoredCounters {
    pub(super) counters: TokenCounters,
    /// Held while the counters are filled and encoded: scrapes do not interleave.
    scrape: Mutex<()>,
}

/// The rollups' totals at one moment, with the labels they are shown under.
#[derive(Default)]
pub struct StoredTotals {
    pub by_node_model: Vec<(NodeModelLabels, RollupTotals)>,
    pub by_key: Vec<(KeyLabels, RollupTotals)>,
}

impl Metrics {
    /// Whether the exposed counters come from the store (`from_store`).
    pub fn counts_from_store(&self) -> bool {
        self.stored.is_some()
    }

    /// The text exposition, with the request and token counters set to `totals` when
    /// they come from the store. `None` (the store could not be read) keeps the
    /// figures of the last scrape: stale for a while, never wrong or going back.
    pub fn encode_stored(&self, totals: Option<&StoredTotals>) -> String {
        let Some(stored) = &self.stored else {
            return self.encode();
        };
        let _scrape = stored.scrape.lock().unwrap_or_else(|p| p.into_inner());
        if let Some(totals) = totals {
            stored.counters.clear();
            for (labels, t) in &totals.by_node_model {
                stored.counters.add_node_model(labels, t);
            }
            for (labels, t) in &totals.by_key {
                stored.counters.add_key(labels, t);
            }
        }
        self.encode()
    }
}
