//! Client keys: who may use the router, within which limits, and whose tokens each
//! request counts for (DESIGN §11).
//!
//! [`KeyRing`] is the in-memory index of every key by the hash of its secret, kept
//! current by every change made through it, so authenticating a request costs one
//! SHA-256 and one map read, never a database round trip. [`ClientKey::admit`]
//! checks the key's model list, budgets, concurrency and per-minute windows before
//! any node is contacted and returns a [`KeyPermit`]; the permit travels with the
//! request's record draft, and `finish_request` charges the request's tokens to it
//! (the same tokens as every statistic) and releases its concurrency slot on drop.
//! Budget figures start from the store's rollups, so a restart changes none.

mod cluster;
mod limits;
pub mod secret;
mod usage;

use std::collections::HashMap;
use std::sync::atomic::{AtomicI64, AtomicU64, Ordering};
use std::sync::{Arc, Mutex, RwLock};

use chrono::{DateTime, Utc};
use chrono_tz::Tz;
use common::protocol::TokenUsage;

pub use usage::{key_spending, period_totals, KeySpending};

use crate::clock::Clock;
use crate::metrics::{KeyMetrics, Metrics};
use crate::store::{KeyChanges, KeyLimits, KeyLoad, NewKey, Store, StoreError, StoredKey};
use limits::{periods, until_next_period, Spent, Window};
use secret::SecretHash;

/// Errors of key management.
#[derive(Debug, thiserror::Error)]
pub enum KeyError {
    #[error("key {0} not found")]
    NotFound(i64),
    #[error("invalid '{field}': {message}")]
    Invalid { field: &'static str, message: String },
    #[error(transparent)]
    Store(#[from] StoreError),
}

/// Why a request with a key was refused.
#[derive(Debug, Clone, PartialEq, Eq)]
pub enum KeyRefusal {
    /// Missing (with `required`), unknown (with `required`), disabled, revoked or expired.
    InvalidKey(&'static str),
    ModelNotAllowed(String),
    /// A per-minute window or the concurrency limit: retry after these seconds.
    RateLimited {
        what: &'static str,
        limit: u64,
        retry_after: u64,
    },
    /// The daily or monthly token budget is used up until the next period.
    QuotaExceeded {
        what: &'static str,
        budget: u64,
        retry_after: u64,
    },
}

/// Whether requests without a valid key are served.
#[derive(Debug, Clone, Copy, PartialEq, Eq, clap::ValueEnum)]
pub enum ClientAuth {
    /// A valid key is attributed and held to its limits; no key or an unknown one is
    /// anonymous. Disabled, revoked and expired keys are refused.
    Open,
    /// Every inference request needs a valid key.
    Required,
}

/// The mutable settings of a key, replaced whole on every change.
#[derive(Debug, Clone, PartialEq)]
pub struct KeySettings {
    pub name: String,
    pub enabled: bool,
    pub revoked: bool,
    pub limits: KeyLimits,
    pub tz: Tz,
}

/// The per-minute windows and the budgets' current periods.
#[derive(Debug, Clone)]
struct Usage {
    requests: Window,
    tokens: Window,
    day: Spent,
    month: Spent,
    /// What the other replicas count for the key (zero without replicas).
    elsewhere: KeyLoad,
}

/// One client key, as the request path sees it.
pub struct ClientKey {
    pub id: i64,
    pub prefix: String,
    pub created_at: DateTime<Utc>,
    settings: RwLock<Arc<KeySettings>>,
    usage: Mutex<Usage>,
    in_flight: AtomicU64,
    /// Unix milliseconds of the last admitted request (0: never), and what the store has.
    last_used: AtomicI64,
    stored_last_used: AtomicI64,
    metrics: RwLock<Arc<KeyMetrics>>,
    clock: Clock,
}

/// The rate-limit figures of an admitted request, for OpenAI's `x-ratelimit-*`
/// headers: only the limits that are set.
#[derive(Debug, Clone, Copy, Default, PartialEq, Eq)]
pub struct RateLimitStatus {
    /// `(limit, remaining)` of `rpm_limit`, counting this request.
    pub requests: Option<(u64, u64)>,
    /// `(limit, remaining)` of `tpm_limit`.
    pub tokens: Option<(u64, u64)>,
}

impl ClientKey {
    fn new(stored: StoredKey, spent: KeySpending, metrics: &Metrics, clock: Clock) -> Result<ClientKey, KeyError> {
        let settings = settings_of(&stored)?;
        let ms = stored.last_used_at.map_or(0, |t| t.timestamp_millis());
        Ok(ClientKey {
            id: stored.id,
            prefix: stored.prefix,
            created_at: stored.created_at,
            metrics: RwLock::new(metrics.for_key(stored.id, &settings.name)),
            usage: Mutex::new(Usage {
                requests: Window::default(),
                tokens: Window::default(),
                day: spent.day,
                month: spent.month,
                elsewhere: KeyLoad::default(),
            }),
            settings: RwLock::new(Arc::new(settings)),
            in_flight: AtomicU64::new(0),
            last_used: AtomicI64::new(ms),
            stored_last_used: AtomicI64::new(ms),
            clock,
        })
    }

    pub fn settings(&self) -> Arc<KeySettings> {
        self.settings.read().unwrap().clone()
    }

    pub fn last_used_at(&self) -> Option<DateTime<Utc>> {
        match self.last_used.load(Ordering::Relaxed) {
            0 => None,
            ms => DateTime::from_timestamp_millis(ms),
        }
    }

    pub fn in_flight(&self) -> u64 {
        self.in_flight.load(Ordering::Relaxed)
    }

    /// Why the key cannot be used at `now`, if it cannot.
    fn unusable(&self, now: DateTime<Utc>) -> Option<&'static str> {
        let s = self.settings.read().unwrap();
        if s.revoked {
            Some("the API key has been revoked")
        } else if !s.enabled {
            Some("the API key is disabled")
        } else if s.limits.expires_at.is_some_and(|t| t <= now) {
            Some("the API key has expired")
        } else {
            None
        }
    }

    /// Whether the key may use `model`.
    pub fn allows(&self, model: &str) -> bool {
        let s = self.settings.read().unwrap();
        s.limits
            .allowed_models
            .as_ref()
            .is_none_or(|m| m.iter().any(|x| x == model))
    }

    /// Admits a request for `model`, or says why not. Nothing is counted for a refusal.
    pub fn admit(self: &Arc<Self>, model: &str) -> Result<KeyPermit, KeyRefusal> {
        if !self.allows(model) {
            return Err(KeyRefusal::ModelNotAllowed(model.to_string()));
        }
        let now = self.clock.now();
        let second = now.timestamp();
        let settings = self.settings();
        let l = &settings.limits;
        let mut usage = self.usage.lock().unwrap();
        let (day, month) = periods(settings.tz, now);
        for (budget, spent, what, monthly) in [
            (l.daily_token_budget, usage.day.in_period(day), "daily", false),
            (l.monthly_token_budget, usage.month.in_period(month), "monthly", true),
        ] {
            if let Some(budget) = budget.filter(|b| spent >= *b) {
                return Err(KeyRefusal::QuotaExceeded {
                    what,
                    budget,
                    retry_after: until_next_period(settings.tz, now, monthly),
                });
            }
        }
        let elsewhere = usage.elsewhere;
        if let Some(max) = l
            .max_concurrent
            .filter(|m| self.in_flight() + elsewhere.in_flight >= *m)
        {
            return Err(KeyRefusal::RateLimited {
                what: "concurrent requests",
                limit: max,
                retry_after: 1,
            });
        }
        let mut status = RateLimitStatus::default();
        if let Some(limit) = l.rpm_limit {
            let used = usage.requests.total(second) + elsewhere.requests;
            if used >= limit {
                return Err(KeyRefusal::RateLimited {
                    what: "requests per minute",
                    limit,
                    retry_after: usage
                        .requests
                        .retry_after(second, limit.saturating_sub(elsewhere.requests)),
                });
            }
            status.requests = Some((limit, limit - used - 1));
        }
        if let Some(limit) = l.tpm_limit {
            let used = usage.tokens.total(second) + elsewhere.tokens;
            if used >= limit {
                return Err(KeyRefusal::RateLimited {
                    what: "tokens per minute",
                    limit,
                    retry_after: usage.tokens.retry_after(second, limit.saturating_sub(elsewhere.tokens)),
                });
            }
            status.tokens = Some((limit, limit - used));
        }
        usage.requests.add(second, 1);
        drop(usage);
        self.in_flight.fetch_add(1, Ordering::Relaxed);
        self.last_used.fetch_max(now.timestamp_millis(), Ordering::Relaxed);
        Ok(KeyPermit {
            key: self.clone(),
            name: settings.name.clone(),
            metrics: self.metrics.read().unwrap().clone(),
            rate: status,
            priority: l.priority,
        })
    }

    /// Counts the tokens of a request of this key that started at `started`.
    fn charge(&self, usage: &TokenUsage, started: DateTime<Utc>) {
        let tz = self.settings.read().unwrap().tz;
        let (day, month) = periods(tz, started);
        let now = self.clock.now().timestamp();
        let mut u = self.usage.lock().unwrap();
        u.tokens.add(now, usage.total_tokens);
        u.day.add(day, usage.total_tokens);
        u.month.add(month, usage.total_tokens);
    }
}

/// An admitted request of a key: holds one of its concurrency slots until dropped.
pub struct KeyPermit {
    key: Arc<ClientKey>,
    /// The key's name at admission, for the record.
    name: String,
    metrics: Arc<KeyMetrics>,
    pub rate: RateLimitStatus,
    /// The key's place in the admission queue (higher first).
    pub priority: i64,
}

impl KeyPermit {
    pub fn key_id(&self) -> i64 {
        self.key.id
    }

    pub fn key_name(&self) -> &str {
        &self.name
    }

    pub fn metrics(&self) -> &KeyMetrics {
        &self.metrics
    }

    /// Charges the request's tokens to the key's windows and budgets.
    pub fn charge(&self, usage: &TokenUsage, started: DateTime<Utc>) {
        self.key.charge(usage, started);
    }
}

impl std::fmt::Debug for KeyPermit {
    fn fmt(&self, f: &mut std::fmt::Formatter<'_>) -> std::fmt::Result {
        f.debug_struct("KeyPermit")
            .field("key_id", &self.key.id)
            .field("name", &self.name)
            .finish()
    }
}

impl Drop for KeyPermit {
    fn drop(&mut self) {
        self.key.in_flight.fetch_sub(1, Ordering::Relaxed);
    }
}

fn parse_tz(name: &str) -> Result<Tz, KeyError> {
    name.parse().map_err(|_| KeyError::Invalid {
        field: "budget_tz",
        message: format!("unknown time zone '{name}' (expected an IANA name such as Europe/Paris)"),
    })
}

fn settings_of(k: &StoredKey) -> Result<KeySettings, KeyError> {
    Ok(KeySettings {
        name: k.name.clone(),
        enabled: k.enabled,
        revoked: k.revoked,
        tz: parse_tz(&k.limits.budget_tz)?,
        limits: k.limits.clone(),
    })
}

/// Every key, by the hash of its secret.
pub struct KeyRing {
    store: Store,
    metrics: Arc<Metrics>,
    clock: Clock,
    by_hash: RwLock<HashMap<SecretHash, Arc<ClientKey>>>,
    /// Held while a change is written to the store and applied here, and while the
    /// replicas' sync reads the stored keys and applies them: a sync that read the rows
    /// before a change here would otherwise undo it (a revoked key usable again until
    /// the next sync).
    changing: tokio::sync::Mutex<()>,
}

impl KeyRing {
    /// The keys of the store, with today's and this month's spending from its rollups.
    pub async fn load(store: Store, metrics: Arc<Metrics>, clock: Clock) -> Result<KeyRing, KeyError> {
        let stored = store.all_keys().await?;
        let mut by_hash = HashMap::with_capacity(stored.len());
        for k in stored {
            let tz = parse_tz(&k.limits.budget_tz)?;
            let spent = key_spending(&store, k.id, tz, clock.now()).await?;
            by_hash.insert(k.secret_hash, Arc::new(ClientKey::new(k, spent, &metrics, clock)?));
        }
        Ok(KeyRing {
            store,
            metrics,
            clock,
            by_hash: RwLock::new(by_hash),
            changing: tokio::sync::Mutex::new(()),
        })
    }

    pub fn clock(&self) -> Clock {
        self.clock
    }

    /// The key a request presents, under `mode`. `Ok(None)`: anonymous.
    pub fn authenticate(
        &self,
        presented: Option<&str>,
        mode: ClientAuth,
    ) -> Result<Option<Arc<ClientKey>>, KeyRefusal> {
        let found = presented.and_then(|s| self.by_hash.read().unwrap().get(&secret::hash(s)).cloned());
        match (found, mode) {
            (Some(key), _) => match key.unusable(self.clock.now()) {
                Some(why) => Err(KeyRefusal::InvalidKey(why)),
                None => Ok(Some(key)),
            },
            (None, ClientAuth::Open) => Ok(None),
            (None, ClientAuth::Required) if presented.is_some() => Err(KeyRefusal::InvalidKey("invalid API key")),
            (None, ClientAuth::Required) => Err(KeyRefusal::InvalidKey(
                "an API key is required (Authorization: Bearer <key> or x-api-key)",
            )),
        }
    }

    /// Every key, by id.
    pub fn all(&self) -> Vec<Arc<ClientKey>> {
        let mut keys: Vec<_> = self.by_hash.read().unwrap().values().cloned().collect();
        keys.sort_by_key(|k| k.id);
        keys
    }

    pub fn get(&self, id: i64) -> Result<Arc<ClientKey>, KeyError> {
        self.by_hash
            .read()
            .unwrap()
            .values()
            .find(|k| k.id == id)
            .cloned()
            .ok_or(KeyError::NotFound(id))
    }

    /// Creates a key; returns it with its secret, which is not kept anywhere.
    pub async fn create(&self, name: String, limits: KeyLimits) -> Result<(Arc<ClientKey>, String), KeyError> {
        let tz = parse_tz(&limits.budget_tz)?;
        let secret = secret::generate();
        let _changing = self.changing.lock().await;
        let stored = self
            .store
            .insert_key(&NewKey {
                name,
                prefix: secret::prefix(&secret),
                secret_hash: secret::hash(&secret),
                limits,
            })
            .await?;
        let hash = stored.secret_hash;
        let key = Arc::new(ClientKey::new(
            stored,
            KeySpending::none(tz, self.clock.now()),
            &self.metrics,
            self.clock,
        )?);
        self.by_hash.write().unwrap().insert(hash, key.clone());
        Ok((key, secret))
    }

    /// Changes a key; takes effect on the next request.
    pub async fn update(&self, id: i64, changes: &KeyChanges) -> Result<Arc<ClientKey>, KeyError> {
        let key = self.get(id)?;
        if let Some(tz) = &changes.budget_tz {
            parse_tz(tz)?;
        }
        let _changing = self.changing.lock().await;
        let stored = self.store.update_key(id, changes).await.map_err(|e| not_found(e, id))?;
        self.apply(&key, &stored).await?;
        Ok(key)
    }

    /// Revokes a key for good; its row and statistics stay.
    pub async fn revoke(&self, id: i64) -> Result<Arc<ClientKey>, KeyError> {
        let key = self.get(id)?;
        let _changing = self.changing.lock().await;
        let stored = self.store.revoke_key(id).await.map_err(|e| not_found(e, id))?;
        self.apply(&key, &stored).await?;
        Ok(key)
    }

    async fn apply(&self, key: &ClientKey, stored: &StoredKey) -> Result<(), KeyError> {
        let settings = settings_of(stored)?;
        let old = key.settings();
        if settings.name != old.name {
            *key.metrics.write().unwrap() = self.metrics.for_key(key.id, &settings.name);
        }
        if settings.tz != old.tz {
            // The budgets' periods are the zone's days and months: recount them.
            let spent = key_spending(&self.store, key.id, settings.tz, self.clock.now()).await?;
            let mut u = key.usage.lock().unwrap();
            u.day = spent.day;
            u.month = spent.month;
        }
        *key.settings.write().unwrap() = Arc::new(settings);
        Ok(())
    }

    /// Writes the keys' `last_used_at` that moved since the last call.
    pub async fn store_last_used(&self) -> Result<(), StoreError> {
        let moved: Vec<(Arc<ClientKey>, i64)> = self
            .all()
            .into_iter()
            .filter_map(|k| {
                let at = k.last_used.load(Ordering::Relaxed);
                (at > k.stored_last_used.load(Ordering::Relaxed)).then_some((k, at))
            })
            .collect();
        let rows: Vec<(i64, DateTime<Utc>)> = moved
            .iter()
            .filter_map(|(k, at)| Some((k.id, DateTime::from_timestamp_millis(*at)?)))
            .collect();
        self.store.touch_keys(&rows).await?;
        for (k, at) in moved {
            k.stored_last_used.fetch_max(at, Ordering::Relaxed);
        }
        Ok(())
    }
}

fn not_found(e: StoreError, id: i64) -> KeyError {
    match e {
        StoreError::NotFound => KeyError::NotFound(id),
        other => other.into(),
    }
}
