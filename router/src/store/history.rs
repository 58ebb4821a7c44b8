//! `request_history` rows: the paged read path and retention pruning (the write path
//! is [`super::writer`]).

use chrono::{DateTime, Utc};
use common::protocol::{RequestResponseRecord, RequestStatus, RequestType, TokenSource};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{from_millis, to_millis, to_u64, Store, StoreResult};

/// Filters of the history page; every field is optional.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    pub node_id: Option<i64>,
    pub model: Option<String>,
    pub status: Option<RequestStatus>,
    /// Only records with an id below this one (the cursor of the previous page).
    pub before_id: Option<i64>,
    pub limit: u32,
}

#[derive(Debug, Clone)]
pub struct HistoryPage {
    pub records: Vec<RequestResponseRecord>,
    pub has_more: bool,
}

impl Store {
    /// Newest first, `filter.limit` records, starting below `filter.before_id`.
    pub async fn history_page(&self, filter: &HistoryFilter) -> StoreResult<HistoryPage> {
        let mut q: QueryBuilder<Sqlite> = QueryBuilder::new("SELECT * FROM request_history WHERE 1 = 1");
        if let Some(id) = filter.node_id {
            q.push(" AND node_id = ").push_bind(id);
        }
        if let Some(m) = &filter.model {
            q.push(" AND model = ").push_bind(m.clone());
        }
        if let Some(s) = filter.status {
            q.push(" AND status = ").push_bind(s.as_str());
        }
        if let Some(id) = filter.before_id {
            q.push(" AND id < ").push_bind(id);
        }
        q.push(" ORDER BY id DESC LIMIT ").push_bind(filter.limit as i64 + 1);
        let rows = q.build().fetch_all(&self.pool).await?;
        let has_more = rows.len() > filter.limit as usize;
        let records = rows.iter().take(filter.limit as usize).map(row_to_record).collect();
        Ok(HistoryPage { records, has_more })
    }

    pub async fn history_record(&self, id: i64) -> StoreResult<Option<RequestResponseRecord>> {
        let row = sqlx::query("SELECT * FROM request_history WHERE id = ?")
            .bind(id)
            .fetch_optional(&self.pool)
            .await?;
        Ok(row.as_ref().map(row_to_record))
    }

    pub async fn history_count(&self) -> StoreResult<u64> {
        let n: i64 = sqlx::query_scalar("SELECT COUNT(*) FROM request_history")
            .fetch_one(&self.pool)
            .await?;
        Ok(to_u64(n))
    }

    /// Deletes history rows that started before `before`, in slices so the writer is
    /// never blocked for long. The rollups are untouched: token figures do not change.
    pub async fn prune_history(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let mut deleted = 0;
        loop {
            let done = sqlx::query(
                "DELETE FROM request_history WHERE id IN
                 (SELECT id FROM request_history WHERE timestamp < ? LIMIT 10000)",
            )
            .bind(to_millis(before))
            .execute(&self.pool)
            .await?;
            deleted += done.rows_affected();
            if done.rows_affected() < 10000 {
                return Ok(deleted);
            }
        }
    }
}

fn row_to_record(r: &sqlx::sqlite::SqliteRow) -> RequestResponseRecord {
    RequestResponseRecord {
        id: r.get("id"),
        timestamp: from_millis(r.get("timestamp")),
        completed_at: from_millis(r.get("completed_at")),
        request_type: RequestType::parse(r.get("request_type")).unwrap_or(RequestType::ChatCompletions),
        model: r.get("model"),
        node_id: r.get("node_id"),
        node_name: r.get("node_name"),
        client_ip: r.get("client_ip"),
        stream: r.get::<i64, _>("stream") != 0,
        status: RequestStatus::parse(r.get("status")).unwrap_or(RequestStatus::Error),
        http_status: r.get::<i64, _>("http_status").clamp(0, u16::MAX as i64) as u16,
        error_message: r.get("error_message"),
        duration_ms: to_u64(r.get("duration_ms")),
        input_tokens: to_u64(r.get("input_tokens")),
        output_tokens: to_u64(r.get("output_tokens")),
        total_tokens: to_u64(r.get("total_tokens")),
        token_source: TokenSource::parse(r.get("token_source")).unwrap_or(TokenSource::Reported),
    }
}
