//! Rows of the `nodes` table.

use chrono::{DateTime, Utc};

use super::sql::{args, StoreRow};
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

fn is_unique_violation(e: &StoreError) -> bool {
    matches!(e, StoreError::Database(sqlx::Error::Database(d)) if d.is_unique_violation())
}

fn row_to_node(r: &dyn StoreRow) -> StoredNode {
    StoredNode {
        id: r.int("id"),
        name: r.text("name"),
        base_url: r.text("base_url"),
        api_key: r.opt_text("api_key"),
        enabled: r.int("enabled") != 0,
        include_usage: r.int("include_usage") != 0,
        source: r.text("source"),
        kind: r.text("kind"),
        kind_explicit: r.int("kind_explicit") != 0,
        tls_insecure: r.int("tls_insecure") != 0,
        max_concurrent: r.opt_int("max_concurrent").map(to_u64),
        weight: to_u64(r.int("weight")),
        created_at: from_millis(r.int("created_at")),
        deleted_at: r.opt_int("deleted_at").map(from_millis),
    }
}

impl Store {
    pub async fn insert_node(&self, new: &NewNode) -> StoreResult<StoredNode> {
        let row = self
            .db()
            .fetch_optional(
                "INSERT INTO nodes (name, base_url, api_key, include_usage, source, kind, kind_explicit,
                                    tls_insecure, max_concurrent, weight, created_at)
                 VALUES ($1, $2, $3, $4, $5, $6, $7, $8, $9, $10, $11) RETURNING *",
                &args![
                    &new.name,
                    &new.base_url,
                    new.api_key.as_deref(),
                    new.include_usage,
                    new.source,
                    new.kind,
                    new.kind_explicit,
                    new.tls_insecure,
                    new.max_concurrent.map(to_i64),
                    to_i64(new.weight),
                    to_millis(Utc::now()),
                ],
                row_to_node,
            )
            .await
            .map_err(|e| {
                if is_unique_violation(&e) {
                    StoreError::DuplicateBaseUrl(new.base_url.clone())
                } else {
                    e
                }
            })?;
        row.ok_or(StoreError::NotFound)
    }

    pub async fn update_node(&self, id: i64, changes: &NodeChanges) -> StoreResult<StoredNode> {
        let current = self.node(id).await?;
        let api_key = changes.api_key.clone().unwrap_or(current.api_key);
        self.db()
            .fetch_optional(
                "UPDATE nodes SET name = $1, api_key = $2, enabled = $3, include_usage = $4, kind = $5,
                                  kind_explicit = $6, tls_insecure = $7, max_concurrent = $8, weight = $9,
                                  source = $10
                 WHERE id = $11 AND deleted_at IS NULL RETURNING *",
                &args![
                    changes.name.as_ref().unwrap_or(&current.name),
                    api_key.as_deref(),
                    changes.enabled.unwrap_or(current.enabled),
                    changes.include_usage.unwrap_or(current.include_usage),
                    changes.kind.flatten().unwrap_or(&current.kind),
                    changes.kind.map_or(current.kind_explicit, |k| k.is_some()),
                    changes.tls_insecure.unwrap_or(current.tls_insecure),
                    changes.max_concurrent.unwrap_or(current.max_concurrent).map(to_i64),
                    to_i64(changes.weight.unwrap_or(current.weight)),
                    changes.source.unwrap_or(&current.source),
                    id,
                ],
                row_to_node,
            )
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// The kind the health checker told; a kind the operator set is left alone.
    pub async fn set_detected_node_kind(&self, id: i64, kind: &str) -> StoreResult<()> {
        self.db()
            .execute(
                "UPDATE nodes SET kind = $1 WHERE id = $2 AND kind_explicit = 0",
                &args![kind, id],
            )
            .await?;
        Ok(())
    }

    pub async fn node(&self, id: i64) -> StoreResult<StoredNode> {
        self.db()
            .fetch_optional(
                "SELECT * FROM nodes WHERE id = $1 AND deleted_at IS NULL",
                &args![id],
                row_to_node,
            )
            .await?
            .ok_or(StoreError::NotFound)
    }

    /// Soft delete: the row stays so statistics keep the node's name.
    pub async fn delete_node(&self, id: i64) -> StoreResult<()> {
        let done = self
            .db()
            .execute(
                "UPDATE nodes SET deleted_at = $1 WHERE id = $2 AND deleted_at IS NULL",
                &args![to_millis(Utc::now()), id],
            )
            .await?;
        if done == 0 {
            return Err(StoreError::NotFound);
        }
        Ok(())
    }

    /// Every node ever registered, deleted ones included, by id.
    pub async fn all_nodes(&self) -> StoreResult<Vec<StoredNode>> {
        self.db()
            .fetch_all("SELECT * FROM nodes ORDER BY id", &[], row_to_node)
            .await
    }
}
