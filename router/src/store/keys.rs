//! Rows of the `api_keys` table: client keys, their limits and their secret's hash.
//!
//! The secret itself never reaches the store; `keys` hashes it before calling here.

use chrono::{DateTime, Utc};
use sqlx::Row;

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

fn opt_u64(r: &sqlx::sqlite::SqliteRow, col: &str) -> Option<u64> {
    r.get::<Option<i64>, _>(col).map(to_u64)
}

fn row_to_key(r: &sqlx::sqlite::SqliteRow) -> StoredKey {
    let hash: Vec<u8> = r.get("secret_hash");
    let allowed: Option<String> = r.get("allowed_models");
    StoredKey {
        id: r.get("id"),
        name: r.get("name"),
        prefix: r.get("prefix"),
        secret_hash: hash.try_into().unwrap_or([0; 32]),
        enabled: r.get::<i64, _>("enabled") != 0,
        revoked: r.get::<i64, _>("revoked") != 0,
        created_at: from_millis(r.get("created_at")),
        last_used_at: r.get::<Option<i64>, _>("last_used_at").map(from_millis),
        limits: KeyLimits {
            // Written by `models_json` only; an unreadable list allows nothing.
            allowed_models: allowed.map(|j| serde_json::from_str(&j).unwrap_or_default()),
            expires_at: r.get::<Option<i64>, _>("expires_at").map(from_millis),
            rpm_limit: opt_u64(r, "rpm_limit"),
            tpm_limit: opt_u64(r, "tpm_limit"),
            max_concurrent: opt_u64(r, "max_concurrent"),
            daily_token_budget: opt_u64(r, "daily_token_budget"),
            monthly_token_budget: opt_u64(r, "monthly_token_budget"),
            budget_tz: r.get("budget_tz"),
            priority: r.get("priority"),
        },
    }
}

fn models_json(models: &Option<Vec<String>>) -> Option<String> {
    models
        .as_ref()
        .map(|m| serde_json::to_string(m).expect("a list of strings serializes"))
}

type SqliteQuery<'q> = sqlx::query::Query<'q, sqlx::Sqlite, sqlx::sqlite::SqliteArguments<'q>>;

/// Binds a key's limits in the order both statements list them: `expires_at`,
/// `allowed_models`, `rpm_limit`, `tpm_limit`, `max_concurrent`, `daily_token_budget`,
/// `monthly_token_budget`, `budget_tz`, `priority`.
fn bind_limits<'q>(q: SqliteQuery<'q>, l: &'q KeyLimits) -> SqliteQuery<'q> {
    q.bind(l.expires_at.map(to_millis))
        .bind(models_json(&l.allowed_models))
        .bind(l.rpm_limit.map(to_i64))
        .bind(l.tpm_limit.map(to_i64))
        .bind(l.max_concurrent.map(to_i64))
        .bind(l.daily_token_budget.map(to_i64))
        .bind(l.monthly_token_budget.map(to_i64))
        .bind(&l.budget_tz)
        .bind(l.priority)
}

impl Store {
    pub async fn insert_key(&self, new: &NewKey) -> StoreResult<StoredKey> {
        let row = bind_limits(
            sqlx::query(
                "INSERT INTO api_keys (name, prefix, secret_hash, created_at, expires_at, allowed_models,
             rpm_limit, tpm_limit, max_concurrent, daily_token_budget, monthly_token_budget, budget_tz, priority)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
            )
            .bind(&new.name)
            .bind(&new.prefix)
            .bind(&new.secret_hash[..])
            .bind(to_millis(Utc::now())),
            &new.limits,
        )
        .fetch_one(&self.pool)
        .await?;
        Ok(row_to_key(&row))
    }

    pub async fn key(&self, id: i64) -> StoreResult<StoredKey> {
        let row = sqlx::query("SELECT * FROM api_keys WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(row_to_key(&row))
    }

    /// Every key, revoked ones included, by id.
    pub async fn all_keys(&self) -> StoreResult<Vec<StoredKey>> {
        let rows = sqlx::query("SELECT * FROM api_keys ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(row_to_key).collect())
    }

    pub async fn update_key(&self, id: i64, changes: &KeyChanges) -> StoreResult<StoredKey> {
        let current = self.key(id).await?;
        let l = changes.apply(&current.limits);
        let row = bind_limits(
            sqlx::query(
                "UPDATE api_keys SET name = ?, enabled = ?, expires_at = ?, allowed_models = ?, rpm_limit = ?,
                 tpm_limit = ?, max_concurrent = ?, daily_token_budget = ?, monthly_token_budget = ?, budget_tz = ?,
                 priority = ?
                 WHERE id = ? RETURNING *",
            )
            .bind(changes.name.as_ref().unwrap_or(&current.name))
            .bind(changes.enabled.unwrap_or(current.enabled) as i64),
            &l,
        )
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        Ok(row_to_key(&row))
    }

    /// Revokes a key for good: the row and its statistics stay.
    pub async fn revoke_key(&self, id: i64) -> StoreResult<StoredKey> {
        let row = sqlx::query("UPDATE api_keys SET revoked = 1 WHERE id = ? RETURNING *")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(row_to_key(&row))
    }

    /// Moves `last_used_at` forward (never back) for each `(key id, instant)`.
    pub async fn touch_keys(&self, used: &[(i64, DateTime<Utc>)]) -> StoreResult<()> {
        if used.is_empty() {
            return Ok(());
        }
        let mut tx = self.pool.begin().await?;
        for (id, at) in used {
            sqlx::query("UPDATE api_keys SET last_used_at = MAX(COALESCE(last_used_at, 0), ?) WHERE id = ?")
                .bind(to_millis(*at))
                .bind(id)
                .execute(&mut *tx)
                .await?;
        }
        tx.commit().await?;
        Ok(())
    }
}
