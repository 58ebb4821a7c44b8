//! Rows of the `nodes` table.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{from_millis, to_i64, to_millis, to_u64, Store, StoreError, StoreResult};

/// A node as persisted.
#[derive(Debug, Clone, PartialEq)]
pub struct StoredNode {
    pub id: i64,
    pub name: String,
    pub base_url: String,
    pub api_key: Option<String>,
    pub enabled: bool,
    /// Ask the node for `stream_options.include_usage` on streams (the per-node switch).
    pub include_usage: bool,
    /// `api`, `static` (from `--node`) or `config` (the configuration file).
    pub source: String,
    /// `openai`, `ollama`, `vllm`, `llamacpp` or `lmstudio`.
    pub kind: String,
    /// The operator set `kind`; otherwise the health checker told it.
    pub kind_explicit: bool,
    /// Do not verify the node's TLS certificate (the operator's choice).
    pub tls_insecure: bool,
    /// Requests in flight the operator allows (`None`: the node's own slots, or no limit).
    pub max_concurrent: Option<u64>,
    /// Share of the load (1 by default).
    pub weight: u64,
    pub created_at: DateTime<Utc>,
    pub deleted_at: Option<DateTime<Utc>>,
}

#[derive(Debug, Clone)]
pub struct NewNode {
    pub name: String,
    pub base_url: String,
    pub api_key: Option<String>,
    pub include_usage: bool,
    pub source: &'static str,
    pub kind: &'static str,
    pub kind_explicit: bool,
    pub tls_insecure: bool,
    pub max_concurrent: Option<u64>,
    pub weight: u64,
}

/// A partial update; `None` leaves the field as it is.
#[derive(Debug, Clone, Default)]
pub struct NodeChanges {
    pub name: Option<String>,
    pub api_key: Option<Option<String>>,
    pub enabled: Option<bool>,
    pub include_usage: Option<bool>,
    /// `Some(Some(kind))`: set by the operator; `Some(None)`: told by the health checker again.
    pub kind: Option<Option<&'static str>>,
    pub tls_insecure: Option<bool>,
    /// `Some(None)`: no limit of the operator's.
    pub max_concurrent: Option<Option<u64>>,
    pub weight: Option<u64>,
    pub source: Option<&'static str>,
}

fn is_unique_violation(e: &sqlx::Error) -> bool {
    matches!(e, sqlx::Error::Database(d) if d.is_unique_violation())
}

fn row_to_node(r: &sqlx::sqlite::SqliteRow) -> StoredNode {
    StoredNode {
        id: r.get("id"),
        name: r.get("name"),
        base_url: r.get("base_url"),
        api_key: r.get("api_key"),
        enabled: r.get::<i64, _>("enabled") != 0,
        include_usage: r.get::<i64, _>("include_usage") != 0,
        source: r.get("source"),
        kind: r.get("kind"),
        kind_explicit: r.get::<i64, _>("kind_explicit") != 0,
        tls_insecure: r.get::<i64, _>("tls_insecure") != 0,
        max_concurrent: r.get::<Option<i64>, _>("max_concurrent").map(to_u64),
        weight: to_u64(r.get("weight")),
        created_at: from_millis(r.get("created_at")),
        deleted_at: r.get::<Option<i64>, _>("deleted_at").map(from_millis),
    }
}

impl Store {
    pub async fn insert_node(&self, new: &NewNode) -> StoreResult<StoredNode> {
        let row = sqlx::query(
            "INSERT INTO nodes (name, base_url, api_key, include_usage, source, kind, kind_explicit, tls_insecure,
                                max_concurrent, weight, created_at)
             VALUES (?, ?, ?, ?, ?, ?, ?, ?, ?, ?, ?) RETURNING *",
        )
        .bind(&new.name)
        .bind(&new.base_url)
        .bind(&new.api_key)
        .bind(new.include_usage as i64)
        .bind(new.source)
        .bind(new.kind)
        .bind(new.kind_explicit as i64)
        .bind(new.tls_insecure as i64)
        .bind(new.max_concurrent.map(to_i64))
        .bind(to_i64(new.weight))
        .bind(to_millis(Utc::now()))
        .fetch_one(&self.pool)
        .await
        .map_err(|e| {
            if is_unique_violation(&e) {
                StoreError::DuplicateBaseUrl(new.base_url.clone())
            } else {
                e.into()
            }
        })?;
        Ok(row_to_node(&row))
    }

    pub async fn update_node(&self, id: i64, changes: &NodeChanges) -> StoreResult<StoredNode> {
        let current = self.node(id).await?;
        let row = sqlx::query(
            "UPDATE nodes SET name = ?, api_key = ?, enabled = ?, include_usage = ?, kind = ?, kind_explicit = ?,
                              tls_insecure = ?, max_concurrent = ?, weight = ?, source = ?
             WHERE id = ? AND deleted_at IS NULL RETURNING *",
        )
        .bind(changes.name.as_ref().unwrap_or(&current.name))
        .bind(changes.api_key.clone().unwrap_or(current.api_key))
        .bind(changes.enabled.unwrap_or(current.enabled) as i64)
        .bind(changes.include_usage.unwrap_or(current.include_usage) as i64)
        .bind(changes.kind.flatten().unwrap_or(&current.kind))
        .bind(changes.kind.map_or(current.kind_explicit, |k| k.is_some()) as i64)
        .bind(changes.tls_insecure.unwrap_or(current.tls_insecure) as i64)
        .bind(changes.max_concurrent.unwrap_or(current.max_concurrent).map(to_i64))
        .bind(to_i64(changes.weight.unwrap_or(current.weight)))
        .bind(changes.source.unwrap_or(&current.source))
        .bind(id)
        .fetch_optional(&self.pool)
        .await?
        .ok_or(StoreError::NotFound)?;
        Ok(row_to_node(&row))
    }

    /// The kind the health checker told; a kind the operator set is left alone.
    pub async fn set_detected_node_kind(&self, id: i64, kind: &str) -> StoreResult<()> {
        sqlx::query("UPDATE nodes SET kind = ? WHERE id = ? AND kind_explicit = 0")
            .bind(kind)
            .bind(id)
            .execute(&self.pool)
            .await?;
        Ok(())
    }

    pub async fn node(&self, id: i64) -> StoreResult<StoredNode> {
        let row = sqlx::query("SELECT * FROM nodes WHERE id = ? AND deleted_at IS NULL")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?
            .ok_or(StoreError::NotFound)?;
        Ok(row_to_node(&row))
    }

    /// Soft delete: the row stays so statistics keep the node's name.
    pub async fn delete_node(&self, id: i64) -> StoreResult<()> {
        let done = sqlx::query("UPDATE nodes SET deleted_at = ? WHERE id = ? AND deleted_at IS NULL")
            .bind(to_millis(Utc::now()))
            .bind(id)
            .execute(&self.pool)
            .await?;
        if done.rows_affected() == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Every node ever registered, deleted ones included, by id.
    pub async fn all_nodes(&self) -> StoreResult<Vec<StoredNode>> {
        let rows = sqlx::query("SELECT * FROM nodes ORDER BY id")
            .fetch_all(&self.pool)
            .await?;
        Ok(rows.iter().map(row_to_node).collect())
    }
}
