//! Rows of the `api_keys` table: client keys, their limits and their secret's hash.
//!
//! The secret itself never reaches the store; `keys` hashes it before calling here.

use chrono::{DateTime, Utc};

use super::sql::{args, Arg, StoreRow};
use super::{from_millis, to_i64, to_millis, to_u64, Store, StoreError, StoreResult};

/// The limits and settings of a key that the operator sets.
#[derive(Debug, Clone, PartialEq, Default)]
pub struct KeyLimits {
    /// `None` allows every model.
    pub allowed_models: Option<Vec<String>>,
    pub expires_at: Option<DateTime<Utc>>,
    pub rpm_limit: Option<u64>,
    pub tpm_limit: Option<u64>,
    pub max_concurrent: Option<u64>,
    pub daily_token_budget: Option<u64>,
    pub monthly_token_budget: Option<u64>,
    /// An IANA zone name, validated by the caller.
    pub budget_tz: String,
    /// Place in the admission queue: higher first (anonymous requests have 0).
    pub priority: i64,
}

/// A key as persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredKey {
    pub id: i64,
    pub name: String,
    pub prefix: String,
    pub secret_hash: [u8; 32],
    pub enabled: bool,
    pub revoked: bool,
    pub created_at: DateTime<Utc>,
    pub last_used_at: Option<DateTime<Utc>>,
    pub limits: KeyLimits,
}

#[derive(Debug, Clone)]
pub struct NewKey {
    pub name: String,
    pub prefix: String,
    pub secret_hash: [u8; 32],
    pub limits: KeyLimits,
}

/// A partial update; `None` leaves the field as it is, `Some(None)` clears it.
#[derive(Debug, Clone, Default, PartialEq)]
pub struct KeyChanges {
    pub name: Option<String>,
    pub enabled: Option<bool>,
    pub allowed_models: Option<Option<Vec<String>>>,
    pub expires_at: Option<Option<DateTime<Utc>>>,
    pub rpm_limit: Option<Option<u64>>,
    pub tpm_limit: Option<Option<u64>>,
    pub max_concurrent: Option<Option<u64>>,
    pub daily_token_budget: Option<Option<u64>>,
    pub monthly_token_budget: Option<Option<u64>>,
    pub budget_tz: Option<String>,
    pub priority: Option<i64>,
}

impl KeyChanges {
    /// `limits` with these changes applied.
    pub fn apply(&self, limits: &KeyLimits) -> KeyLimits {
        fn pick<T: Clone>(change: &Option<T>, current: &T) -> T {
            change.clone().unwrap_or_else(|| current.clone())
        }
        KeyLimits {
            allowed_models: pick(&self.allowed_models, &limits.allowed_models),
            expires_at: pick(&self.expires_at, &limits.expires_at),
            rpm_limit: pick(&self.rpm_limit, &limits.rpm_limit),
            tpm_limit: pick(&self.tpm_limit, &limits.tpm_limit),
            max_concurrent: pick(&self.max_concurrent, &limits.max_concurrent),
            daily_token_budget: pick(&self.daily_token_budget, &limits.daily_token_budget),
            monthly_token_budget: pick(&self.monthly_token_budget, &limits.monthly_token_budget),
            budget_tz: pick(&self.budget_tz, &limits.budget_tz),
            priority: pick(&self.priority, &limits.priority),
        }
    }
}

fn opt_u64(r: &dyn StoreRow, col: &str) -> Option<u64> {
    r.opt_int(col).map(to_u64)
}

fn row_to_key(r: &dyn StoreRow) -> StoredKey {
    let hash = r.bytes("secret_hash");
    let allowed = r.opt_text("allowed_models");
    StoredKey {
        id: r.int("id"),
        name: r.text("name"),
        prefix: r.text("prefix"),
        secret_hash: hash.try_into().unwrap_or([0; 32]),
        enabled: r.int("enabled") != 0,
        revoked: r.int("revoked") != 0,
        created_at: from_millis(r.int("created_at")),
        last_used_at: r.opt_int("last_used_at").map(from_millis),
        limits: KeyLimits {
            // Written by `models_json` only; an unreadable list allows nothing.
            allowed_models: allowed.map(|j| serde_json::from_str(&j).unwrap_or_default()),
            expires_at: r.opt_int("expires_at").map(from_millis),
            rpm_limit: opt_u64(r, "rpm_limit"),
            tpm_limit: opt_u64(r, "tpm_limit"),
            max_concurrent: opt_u64(r, "max_concurrent"),
            daily_token_budget: opt_u64(r, "daily_token_budget"),
            monthly_token_budget: opt_u64(r, "monthly_token_budget"),
            budget_tz: r.text("budget_tz"),
            priority: r.int("priority"),
        },
    }
}

fn models_json(models: &Option<Vec<String>>) -> Option<String> {
    models
        .as_ref()
        .map(|m| serde_json::to_string(m).expect("a list of strings serializes"))
}

/// A key's limits in the order both statements list them: `expires_at`,
/// `allowed_models`, `rpm_limit`, `tpm_limit`, `max_concurrent`, `daily_token_budget`,
/// `monthly_token_budget`, `budget_tz`, `priority`. `models` is `models_json` of the
/// limits.
fn limit_args<'a>(l: &'a KeyLimits, models: &'a Option<String>) -> [Arg<'a>; 9] {
    args![
        l.expires_at.map(to_millis),
        models.as_deref(),
        l.rpm_limit.map(to_i64),
        l.tpm_limit.map(to_i64),
        l.max_concurrent.map(to_i64),
        l.daily_token_budget.map(to_i64),
        l.monthly_token_budget.map(to_i64),
        &l.budget_tz,
        l.priority,
    ]
}

impl Store {
    pub async fn insert_key(&self, new: &NewKey) -> StoreResult<StoredKey> {
        let models = models_json(&new.limits.allowed_models);
        let mut all = args![&new.name, &new.prefix, &new.secret_hash[..], to_millis(Utc::now())].to_vec();
        all.extend(limit_args(&new.limits, &models));
        self.db()
            .fetch_optional(
                "INSERT INTO api_keys (name, prefix, secret_hash, created_at, expires_at, allowed_models,
             rpm_limit, tpm_limit, max_concurrent, daily_token_budget, monthly_token_budget, budget_tz, priority)
             VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11, $12, $13) RETURNING *",
                &all,
                row_to_key,
            )
            .await?
            .ok_or(StoreError::NotFound)
    }

    pub async fn key(&self, id: i64) -> StoreResult<StoredKey> {
        self.db()
            .fetch_optional("SELECT * FROM api_keys WHERE id = $1", &args![id], row_to_key)
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Every key, revoked ones included, by id.
    pub async fn all_keys(&self) -> StoreResult<Vec<StoredKey>> {
        self.db()
            .fetch_all("SELECT * FROM api_keys ORDER BY id", &[], row_to_key)
            .await
    }

    pub async fn update_key(&self, id: i64, changes: &KeyChanges) -> StoreResult<StoredKey> {
        let current = self.key(id).await?;
        let l = changes.apply(&current.limits);
        let models = models_json(&l.allowed_models);
        let mut all = args![
            changes.name.as_ref().unwrap_or(&current.name),
            changes.enabled.unwrap_or(current.enabled),
        ]
        .to_vec();
        all.extend(limit_args(&l, &models));
        all.push(Arg::Int(id));
        self.db()
            .fetch_optional(
                "UPDATE api_keys SET name = $1, enabled = $2, expires_at = $3, allowed_models = $4, rpm_limit = $5,
                 tpm_limit = $6, max_concurrent = $7, daily_token_budget = $8, monthly_token_budget = $9,
                 budget_tz = $10, priority = $11
                 WHERE id = $12 RETURNING *",
                &all,
                row_to_key,
            )
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Revokes a key for good: the row and its statistics stay.
    pub async fn revoke_key(&self, id: i64) -> StoreResult<StoredKey> {
        self.db()
            .fetch_optional(
                "UPDATE api_keys SET revoked = 1 WHERE id = $1 RETURNING *",
                &args![id],
                row_to_key,
            )
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Moves `last_used_at` forward (never back) for each `(key id, instant)`.
    pub async fn touch_keys(&self, used: &[(i64, DateTime<Utc>)]) -> StoreResult<()> {
        if used.is_empty() {
            return Ok(());
        }
        let sql = format!(
            "UPDATE api_keys SET last_used_at = {} WHERE id = $2",
            self.dialect().greatest("COALESCE(last_used_at, 0)", "$1")
        );
        let mut tx = self.begin().await?;
        for (id, at) in used {
            tx.execute(&sql, &args![to_millis(*at), *id]).await?;
        }
        tx.commit().await
    }
}
