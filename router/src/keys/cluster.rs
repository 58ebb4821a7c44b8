//! Keys shared by router replicas on one database (DESIGN §12): the ring takes in
//! keys created or changed through other replicas, and the budgets count what every
//! replica spent.
//!
//! A key's budget figure is the larger of this replica's own count (its requests,
//! charged as they finish, on top of what the store had) and the store's sum over
//! every replica's committed requests, read every second. So another replica's
//! tokens count here within a second of their commit; this replica's own are never
//! lost in between.
//!
//! A key's per-minute windows and its concurrency are kept by each replica for its
//! own requests; each sync round a replica publishes its figures per key
//! ([`KeyRing::own_loads`]) and adds up the others' ([`KeyRing::take_loads_elsewhere`]),
//! which `ClientKey::admit` counts beside its own. So a limit holds across replicas
//! up to what the others admitted since their last round (about a second).

use std::collections::HashMap;
use std::sync::Arc;

use chrono_tz::Tz;

use super::limits::periods;
use super::usage::{hour_of_midnight, key_spending};
use super::{settings_of, ClientKey, KeyError, KeyRing};
use crate::store::{KeyLoad, StoreError};

impl KeyRing {
    /// Reads the stored keys and applies them: keys new to this replica join the ring,
    /// changed settings (revocation included) take effect on the next request. Changes
    /// made here wait meanwhile, so a row read before one of them never undoes it.
    pub async fn take_stored(&self) -> Result<(), KeyError> {
        let _changing = self.changing.lock().await;
        for row in self.store.all_keys().await? {
            match self.get(row.id) {
                Ok(key) => {
                    if *key.settings() != settings_of(&row)? {
                        tracing::info!(key = %row.name, "key changed by another replica");
                        self.apply(&key, &row).await?;
                    }
                }
                Err(_) => {
                    tracing::info!(key = %row.name, "key created by another replica");
                    let tz = settings_of(&row)?.tz;
                    let spent = key_spending(&self.store, row.id, tz, self.clock.now()).await?;
                    let hash = row.secret_hash;
                    let key = Arc::new(ClientKey::new(row, spent, &self.metrics, self.clock)?);
                    self.by_hash.write().unwrap().insert(hash, key);
                }
            }
        }
        Ok(())
    }

    /// Reads what the keys with a budget spent today and this month, every replica
    /// together, and takes it where it is more than this replica counted.
    pub async fn take_stored_spending(&self) -> Result<(), StoreError> {
        let mut by_zone: HashMap<Tz, Vec<Arc<ClientKey>>> = HashMap::new();
        for key in self.all() {
            let s = key.settings();
            let budgeted = s.limits.daily_token_budget.is_some() || s.limits.monthly_token_budget.is_some();
            if budgeted && !s.revoked {
                by_zone.entry(s.tz).or_default().push(key);
            }
        }
        let now = self.clock.now();
        for (tz, keys) in by_zone {
            let ids: Vec<i64> = keys.iter().map(|k| k.id).collect();
            let (day, month) = periods(tz, now);
            let spent_today: HashMap<i64, u64> = self
                .store
                .key_tokens_since(&ids, hour_of_midnight(tz, day))
                .await?
                .into_iter()
                .collect();
            let spent_this_month: HashMap<i64, u64> = self
                .store
                .key_tokens_since(&ids, hour_of_midnight(tz, month))
                .await?
                .into_iter()
                .collect();
            for key in keys {
                let mut u = key.usage.lock().unwrap();
                u.day.take_stored(day, spent_today.get(&key.id).copied().unwrap_or(0));
                u.month
                    .take_stored(month, spent_this_month.get(&key.id).copied().unwrap_or(0));
            }
        }
        Ok(())
    }

    /// What this replica counts for the keys with a per-minute or concurrency limit,
    /// those that count anything now: for the others to add to theirs.
    pub fn own_loads(&self) -> Vec<(i64, KeyLoad)> {
        let second = self.clock.now().timestamp();
        let mut loads = Vec::new();
        for key in self.all() {
            let l = &key.settings().limits;
            if l.rpm_limit.is_none() && l.tpm_limit.is_none() && l.max_concurrent.is_none() {
                continue;
            }
            let load = {
                let u = key.usage.lock().unwrap();
                KeyLoad {
                    requests: u.requests.total(second),
                    tokens: u.tokens.total(second),
                    in_flight: key.in_flight(),
                }
            };
            if load != KeyLoad::default() {
                loads.push((key.id, load));
            }
        }
        loads
    }

    /// Takes in what the other replicas count per key (a key not listed: nothing).
    pub fn take_loads_elsewhere(&self, loads: &[(i64, KeyLoad)]) {
        let loads: HashMap<i64, KeyLoad> = loads.iter().copied().collect();
        for key in self.all() {
            key.usage.lock().unwrap().elsewhere = loads.get(&key.id).copied().unwrap_or_default();
        }
    }
}
