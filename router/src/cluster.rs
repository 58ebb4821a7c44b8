//! Router replicas on one shared database (DESIGN §12): what each replica learns from
//! the others through the store, every second.
//!
//! - **Settings.** Triggers bump the store's settings version whenever a node or a
//!   key's settings change; a replica that sees it move reloads every node and key
//!   and applies the differences (`NodeRegistry::take_stored`,
//!   `KeyRing::take_stored`), so a change made through any replica takes effect on
//!   every replica within about a second (polling: no connection is held for it, and
//!   a replica that was cut off catches up by itself).
//! - **Requests in flight.** Each replica publishes its requests in flight per node
//!   with a heartbeat (node 0); the others' figures (`NodeLoadState::elsewhere`)
//!   count in `active_requests` and take slots of a node's capacity here, while their
//!   heartbeat is younger than [`REPLICA_TIMEOUT`], so a replica that died stops
//!   counting within it. A replica that stops cleanly removes its rows.
//! - **Budgets.** The keys' spending is read back from the rollups
//!   (`KeyRing::take_stored_spending`).
//! - **Key limits.** Each replica publishes what it counts per key with a
//!   per-minute or concurrency limit (requests and tokens of the last 60 s, requests
//!   in flight) and adds up the others' (`KeyRing::own_loads`,
//!   `KeyRing::take_loads_elsewhere`), seen within [`REPLICA_TIMEOUT`].
//!
//! Token figures need no exchange: on a shared store every statistic, dashboard
//! figure and Prometheus token counter is read from the rollups, which hold every
//! replica's committed requests.

use std::collections::HashMap;
use std::sync::atomic::{AtomicUsize, Ordering};
use std::sync::Arc;
use std::time::Duration;

use crate::keys::KeyRing;
use crate::nodes::health::HealthChecker;
use crate::nodes::{NodeId, NodeRegistry};
use crate::store::{Store, StoreError};

/// How long a replica counts after its last heartbeat.
pub const REPLICA_TIMEOUT: Duration = Duration::from_secs(10);
/// Rows of replicas gone for longer than this are deleted.
const FORGET_AFTER: Duration = Duration::from_secs(3600);

/// Errors of a synchronisation round (logged; the next round tries again).
#[derive(Debug, thiserror::Error)]
pub enum SyncError {
    #[error(transparent)]
    Store(#[from] StoreError),
    #[error(transparent)]
    Keys(#[from] crate::keys::KeyError),
}

/// This replica's view of the others.
pub struct Cluster {
    /// This replica's name in the store: host, port and a random suffix.
    pub replica_id: String,
    /// The other live replicas.
    others: AtomicUsize,
}

impl Cluster {
    pub fn new(listening_on: std::net::SocketAddr) -> Arc<Cluster> {
        let host = std::fs::read_to_string("/etc/hostname")
            .map(|h| h.trim().to_string())
            .unwrap_or_default();
        let suffix: u32 = rand::random();
        Arc::new(Cluster {
            replica_id: format!("{host}:{}:{suffix:08x}", listening_on.port()),
            others: AtomicUsize::new(0),
        })
    }

    /// The live replicas, this one included.
    pub fn replicas(&self) -> usize {
        self.others.load(Ordering::Relaxed) + 1
    }
}

/// The task that keeps this replica in step with the others.
pub struct ClusterSync {
    pub cluster: Arc<Cluster>,
    pub store: Store,
    pub registry: Arc<NodeRegistry>,
    pub keys: Arc<KeyRing>,
    pub health: HealthChecker,
    pub interval: Duration,
}

impl ClusterSync {
    /// One round per interval, forever.
    pub async fn run(self) {
        let mut tick = tokio::time::interval(self.interval);
        tick.set_missed_tick_behavior(tokio::time::MissedTickBehavior::Delay);
        let mut version = None;
        let mut rounds = 0u64;
        loop {
            tick.tick().await;
            if let Err(e) = self.round(&mut version, rounds).await {
                tracing::warn!(error = %e, "cannot exchange state with the other replicas");
            }
            rounds += 1;
        }
    }

    async fn round(&self, version: &mut Option<i64>, rounds: u64) -> Result<(), SyncError> {
        let now = now_ms();
        let current = self.store.settings_version().await?;
        if *version != Some(current) {
            self.take_settings().await?;
            *version = Some(current);
        }
        let mut load: Vec<(NodeId, u64)> = vec![(0, 0)];
        self.registry.for_each(|n| load.push((n.id, n.load.active())));
        self.store
            .publish_replica_load(&self.cluster.replica_id, &load, now)
            .await?;
        let since = now - REPLICA_TIMEOUT.as_millis() as i64;
        let others = self.store.replica_loads(&self.cluster.replica_id, since).await?;
        let mut in_flight: HashMap<NodeId, u64> = HashMap::new();
        for (node, n) in others.values().flatten() {
            *in_flight.entry(*node).or_default() += n;
        }
        self.cluster.others.store(others.len(), Ordering::Relaxed);
        let mut freed = false;
        self.registry
            .for_each(|n| freed |= n.load.set_elsewhere(in_flight.get(&n.id).copied().unwrap_or(0)));
        if freed {
            // Slots the others gave back may take requests waiting here.
            self.registry.changed();
        }
        self.keys.take_stored_spending().await?;
        self.store
            .publish_key_load(&self.cluster.replica_id, &self.keys.own_loads(), now)
            .await?;
        let elsewhere = self.store.key_loads_elsewhere(&self.cluster.replica_id, since).await?;
        self.keys.take_loads_elsewhere(&elsewhere);
        if rounds.is_multiple_of(60) {
            self.store
                .forget_replicas(None, now - FORGET_AFTER.as_millis() as i64)
                .await?;
        }
        Ok(())
    }

    /// Reloads every node and key and applies what changed.
    async fn take_settings(&self) -> Result<(), SyncError> {
        let added = self.registry.take_stored().await?;
        for node in added {
            let health = self.health.clone();
            tokio::spawn(async move { health.probe(&node).await });
        }
        self.keys.take_stored().await?;
        Ok(())
    }
}

fn now_ms() -> i64 {
    chrono::Utc::now().timestamp_millis()
}
