//! `request_history` rows: the group-commit write path (history + rollups in one
//! transaction), the paged read path and retention pruning.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use common::protocol::{RequestResponseRecord, RequestStatus, RequestType, TokenSource};
use sqlx::{QueryBuilder, Row, Sqlite};

use super::{from_millis, to_i64, to_millis, to_u64, Store, StoreResult};

/// Rows per INSERT statement: 17 bound values each stays under SQLite's 32766 limit.
const ROWS_PER_STATEMENT: usize = 500;

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

#[derive(Default)]
struct HourAgg {
    requests: i64,
    success: i64,
    error: i64,
    cancelled: i64,
    estimated: i64,
    input: i64,
    output: i64,
    total: i64,
    duration: i64,
}

fn hour_start(t: DateTime<Utc>) -> i64 {
    t.timestamp().div_euclid(3600) * 3600
}

impl Store {
    /// Commits `records` and their rollup increments in one transaction.
    /// Records without a node (rejected before routing) go to the history only.
    pub async fn write_batch(&self, records: &[RequestResponseRecord]) -> StoreResult<()> {
        let mut tx = self.pool.begin().await?;
        for chunk in records.chunks(ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO request_history (timestamp, completed_at, request_type, model, node_id,
                 node_name, client_ip, stream, status, http_status, error_message, duration_ms,
                 input_tokens, output_tokens, total_tokens, token_source) ",
            );
            q.push_values(chunk, |mut b, r| {
                b.push_bind(to_millis(r.timestamp))
                    .push_bind(to_millis(r.completed_at))
                    .push_bind(r.request_type.as_str())
                    .push_bind(&r.model)
                    .push_bind(r.node_id)
                    .push_bind(&r.node_name)
                    .push_bind(&r.client_ip)
                    .push_bind(r.stream as i64)
                    .push_bind(r.status.as_str())
                    .push_bind(r.http_status as i64)
                    .push_bind(&r.error_message)
                    .push_bind(to_i64(r.duration_ms))
                    .push_bind(to_i64(r.input_tokens))
                    .push_bind(to_i64(r.output_tokens))
                    .push_bind(to_i64(r.total_tokens))
                    .push_bind(r.token_source.as_str());
            });
            q.build().execute(&mut *tx).await?;
        }

        let mut hours: HashMap<(i64, i64, &str), HourAgg> = HashMap::new();
        for r in records {
            let Some(node_id) = r.node_id else { continue };
            let a = hours.entry((hour_start(r.timestamp), node_id, &r.model)).or_default();
            a.requests += 1;
            match r.status {
                RequestStatus::Success => a.success += 1,
                RequestStatus::Error => a.error += 1,
                RequestStatus::Cancelled => a.cancelled += 1,
            }
            a.estimated += (r.token_source == TokenSource::Estimated) as i64;
            a.input = a.input.saturating_add(to_i64(r.input_tokens));
            a.output = a.output.saturating_add(to_i64(r.output_tokens));
            a.total = a.total.saturating_add(to_i64(r.total_tokens));
            a.duration = a.duration.saturating_add(to_i64(r.duration_ms));
        }
        let hours: Vec<_> = hours.into_iter().collect();
        for chunk in hours.chunks(ROWS_PER_STATEMENT) {
            let mut q: QueryBuilder<Sqlite> = QueryBuilder::new(
                "INSERT INTO token_stats_hourly (hour_start, node_id, model, request_count,
                 success_count, error_count, cancelled_count, estimated_count, input_tokens,
                 output_tokens, total_tokens, duration_ms_sum) ",
            );
            q.push_values(chunk, |mut b, ((hour, node, model), a)| {
                b.push_bind(*hour)
                    .push_bind(*node)
                    .push_bind(*model)
                    .push_bind(a.requests)
                    .push_bind(a.success)
                    .push_bind(a.error)
                    .push_bind(a.cancelled)
                    .push_bind(a.estimated)
                    .push_bind(a.input)
                    .push_bind(a.output)
                    .push_bind(a.total)
                    .push_bind(a.duration);
            });
            q.push(
                " ON CONFLICT (hour_start, node_id, model) DO UPDATE SET
                 request_count = request_count + excluded.request_count,
                 success_count = success_count + excluded.success_count,
                 error_count = error_count + excluded.error_count,
                 cancelled_count = cancelled_count + excluded.cancelled_count,
                 estimated_count = estimated_count + excluded.estimated_count,
                 input_tokens = input_tokens + excluded.input_tokens,
                 output_tokens = output_tokens + excluded.output_tokens,
                 total_tokens = total_tokens + excluded.total_tokens,
                 duration_ms_sum = duration_ms_sum + excluded.duration_ms_sum",
            );
            q.build().execute(&mut *tx).await?;
        }
        tx.commit().await?;
        Ok(())
    }

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
