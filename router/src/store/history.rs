//! `request_history` rows: the paged read path and retention pruning (the write path
//! is [`super::writer`]), and the bodies `request_bodies` keeps of some of them (read
//! for one record; deleted with their row by the foreign key's cascade).

use chrono::{DateTime, Utc};
use common::protocol::{RequestResponseRecord, RequestStatus, RequestType, StoredBody, TokenSource};

use super::rollup::ANONYMOUS;
use super::sql::{args, Sql, StoreRow};
use super::{from_millis, to_millis, to_u64, Store, StoreError, StoreResult};

/// Filters of the history page; every field is optional.
#[derive(Debug, Clone, Default)]
pub struct HistoryFilter {
    /// A client key id, or `ANONYMOUS` for records without a key.
    pub key_id: Option<i64>,
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
    ///
    /// A node filter alone has no index on the history (migration 005): the page
    /// reads the id ranges the node's hourly rollup rows keep, newest first, until
    /// it is full. The model filter and the unsuccessful statuses have indexes; a
    /// success or no filter scans back by id.
    pub async fn history_page(&self, filter: &HistoryFilter) -> StoreResult<HistoryPage> {
        let want = filter.limit as usize + 1;
        // The node filter is the only one that needs the ranges.
        let node_only = filter.node_id.filter(|_| {
            filter.model.is_none()
                && filter.key_id.is_none()
                && matches!(filter.status, None | Some(RequestStatus::Success))
        });
        let records = if let Some(node_id) = node_only {
            let mut records = Vec::new();
            for (low, high) in self.node_id_ranges(node_id, filter.before_id).await? {
                let mut q = filtered_query(filter);
                q.push(" AND id BETWEEN ").bind(low).push(" AND ").bind(high);
                q.push(" ORDER BY id DESC LIMIT ").bind((want - records.len()) as i64);
                records.extend(self.db().fetch_all(&q.text, &q.args, row_to_record).await?);
                if records.len() == want {
                    break;
                }
            }
            records
        } else {
            let mut q = filtered_query(filter);
            q.push(" ORDER BY id DESC LIMIT ").bind(want as i64);
            self.db().fetch_all(&q.text, &q.args, row_to_record).await?
        };
        let has_more = records.len() == want;
        let mut records = records;
        records.truncate(filter.limit as usize);
        Ok(HistoryPage { records, has_more })
    }

    /// The ranges of history ids that may hold records of `node_id` below `before_id`:
    /// disjoint, highest first.
    async fn node_id_ranges(&self, node_id: i64, before_id: Option<i64>) -> StoreResult<Vec<(i64, i64)>> {
        // The highest id wanted (any cursor, however hostile, stays an integer).
        let last = before_id.map_or(i64::MAX, |id| id.saturating_sub(1));
        // One JSON array rather than a row per hour: a year of hours is 8,760 rows,
        // and SQLite's pool hands rows over one at a time (~1 µs each). Hours older
        // than the oldest history row kept are skipped.
        let dialect = self.dialect();
        let sql = format!(
            "SELECT {} AS ranges
             FROM token_stats_hourly_node
             WHERE node_id = $2 AND min_id <= $1
               AND hour_start >= (SELECT COALESCE(MIN(timestamp), 0) / 3600000 * 3600 FROM request_history)
               AND max_id >= (SELECT COALESCE(MIN(id), 0) FROM request_history)",
            dialect.json_rows(&format!("min_id, {}", dialect.least("max_id", "$1")))
        );
        let json = self
            .db()
            .fetch_optional(&sql, &args![last, node_id], |r| r.text("ranges"))
            .await?
            .unwrap_or_default();
        let mut ranges: Vec<(i64, i64)> =
            serde_json::from_str(&json).map_err(|e| StoreError::Corrupt(format!("node id ranges: {e}")))?;
        Ok(merge_ranges(&mut ranges))
    }

    /// One record, with its bodies when they were stored.
    pub async fn history_record(&self, id: i64) -> StoreResult<Option<RequestResponseRecord>> {
        let Some(mut record) = self
            .db()
            .fetch_optional("SELECT * FROM request_history WHERE id = $1", &args![id], row_to_record)
            .await?
        else {
            return Ok(None);
        };
        let bodies = self
            .db()
            .fetch_optional("SELECT * FROM request_bodies WHERE id = $1", &args![id], |r| {
                (stored_body(r, "request"), stored_body(r, "response"))
            })
            .await?;
        if let Some((request, response)) = bodies {
            record.request_body = request;
            record.response_body = response;
        }
        Ok(Some(record))
    }

    pub async fn history_count(&self) -> StoreResult<u64> {
        let n = self
            .db()
            .fetch_optional("SELECT COUNT(*) AS n FROM request_history", &[], |r| r.int("n"))
            .await?;
        Ok(to_u64(n.unwrap_or(0)))
    }

    /// Deletes history rows that started before `before`, in slices so the writer is
    /// never blocked for long. The rollups are untouched: token figures do not change.
    pub async fn prune_history(&self, before: DateTime<Utc>) -> StoreResult<u64> {
        let mut deleted = 0;
        loop {
            let done = self
                .db()
                .execute(
                    "DELETE FROM request_history WHERE id IN
                     (SELECT id FROM request_history WHERE timestamp < $1 LIMIT 10000)",
                    &args![to_millis(before)],
                )
                .await?;
            deleted += done;
            if done < 10000 {
                return Ok(deleted);
            }
        }
    }
}

/// `SELECT * FROM request_history` with the filter's conditions.
fn filtered_query(filter: &HistoryFilter) -> Sql<'_> {
    let mut q = Sql::new("SELECT * FROM request_history WHERE 1 = 1");
    match filter.key_id {
        Some(ANONYMOUS) => {
            q.push(" AND api_key_id IS NULL");
        }
        Some(id) => {
            q.push(" AND api_key_id = ").bind(id);
        }
        None => {}
    }
    if let Some(id) = filter.node_id {
        q.push(" AND node_id = ").bind(id);
    }
    if let Some(m) = &filter.model {
        q.push(" AND model = ").bind(m);
    }
    if let Some(s) = filter.status {
        q.push(" AND status = ").bind(s.as_str());
        if s != RequestStatus::Success {
            // Lets SQLite use the partial index of migration 005.
            q.push(" AND status <> 'success'");
        }
    }
    if let Some(id) = filter.before_id {
        q.push(" AND id < ").bind(id);
    }
    q
}

/// Sorts `ranges` and merges those that overlap or touch: disjoint, highest first.
/// (An hour's range overlaps the next one's when its requests outlast the hour.)
fn merge_ranges(ranges: &mut [(i64, i64)]) -> Vec<(i64, i64)> {
    ranges.sort_unstable_by_key(|r| std::cmp::Reverse(r.1));
    let mut merged: Vec<(i64, i64)> = Vec::with_capacity(ranges.len());
    for &(low, high) in ranges.iter() {
        match merged.last_mut() {
            Some(last) if high >= last.0 - 1 => last.0 = last.0.min(low),
            _ => merged.push((low, high)),
        }
    }
    merged
}

fn row_to_record(r: &dyn StoreRow) -> RequestResponseRecord {
    RequestResponseRecord {
        id: r.int("id"),
        timestamp: from_millis(r.int("timestamp")),
        completed_at: from_millis(r.int("completed_at")),
        request_type: RequestType::parse(&r.text("request_type")).unwrap_or(RequestType::ChatCompletions),
        model: r.text("model"),
        node_id: r.opt_int("node_id"),
        node_name: r.opt_text("node_name"),
        client_ip: r.opt_text("client_ip"),
        api_key_id: r.opt_int("api_key_id"),
        api_key_name: r.opt_text("api_key_name"),
        stream: r.int("stream") != 0,
        status: RequestStatus::parse(&r.text("status")).unwrap_or(RequestStatus::Error),
        http_status: r.int("http_status").clamp(0, u16::MAX as i64) as u16,
        error_message: r.opt_text("error_message"),
        duration_ms: to_u64(r.int("duration_ms")),
        time_to_first_token_ms: r.opt_int("time_to_first_token_ms").map(to_u64),
        input_tokens: to_u64(r.int("input_tokens")),
        output_tokens: to_u64(r.int("output_tokens")),
        total_tokens: to_u64(r.int("total_tokens")),
        token_source: TokenSource::parse(&r.text("token_source")).unwrap_or(TokenSource::Reported),
        // In `request_bodies`, read for one record only.
        request_body: None,
        response_body: None,
    }
}

/// The `request` or `response` body of a `request_bodies` row.
fn stored_body(r: &dyn StoreRow, which: &str) -> Option<StoredBody> {
    let text = r.opt_text(&format!("{which}_body"))?;
    Some(StoredBody {
        text,
        truncated: r.int(&format!("{which}_truncated")) != 0,
    })
}

fn body_parts(b: Option<&StoredBody>) -> (Option<&str>, i64) {
    b.map_or((None, 0), |b| (Some(b.text.as_str()), i64::from(b.truncated)))
}

/// The values of a record's `request_bodies` row (request text, cut, response text,
/// cut); `None` when it has no body to store.
pub(super) fn body_row(r: &RequestResponseRecord) -> Option<(Option<&str>, i64, Option<&str>, i64)> {
    if r.request_body.is_none() && r.response_body.is_none() {
        return None;
    }
    let (request, request_cut) = body_parts(r.request_body.as_ref());
    let (response, response_cut) = body_parts(r.response_body.as_ref());
    Some((request, request_cut, response, response_cut))
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;
    use crate::store::LockWait;

    fn record(node_id: i64, hour: i64, status: RequestStatus) -> RequestResponseRecord {
        let at = Utc.timestamp_opt(1_700_000_000 + hour * 3600, 0).unwrap();
        RequestResponseRecord {
            timestamp: at,
            completed_at: at,
            node_id: Some(node_id),
            node_name: Some(format!("n{node_id}")),
            status,
            ..crate::store::testing::record()
        }
    }

    /// Ids of `node`'s records (with `status`), newest first.
    fn expect(records: &[(i64, i64, RequestStatus)], node: i64, status: Option<RequestStatus>) -> Vec<i64> {
        records
            .iter()
            .rev()
            .filter(|(_, n, s)| *n == node && status.is_none_or(|w| w == *s))
            .map(|(id, _, _)| *id)
            .collect()
    }

    /// Every page of `filter`, as ids.
    async fn all_pages(store: &Store, mut filter: HistoryFilter) -> Vec<Vec<i64>> {
        let mut pages = Vec::new();
        loop {
            let page = store.history_page(&filter).await.unwrap();
            let ids: Vec<i64> = page.records.iter().map(|r| r.id).collect();
            filter.before_id = ids.last().copied();
            pages.push(ids);
            if !page.has_more {
                return pages;
            }
        }
    }

    #[tokio::test]
    async fn a_node_filter_reads_overlapping_hourly_ranges_newest_first() {
        let dir = tempfile::tempdir().unwrap();
        for (engine, store) in crate::store::testing::stores(&dir).await {
            eprintln!("engine: {engine}");
            node_filter_reads_overlapping_ranges(&store).await;
        }
    }

    async fn node_filter_reads_overlapping_ranges(store: &Store) {
        let mut writer = store.writer().unwrap();
        // 400 records over 3 nodes and 12 hours, committed in an order that makes the
        // id ranges of hours overlap (long requests finish after later ones started).
        let mut expected: Vec<(i64, i64, RequestStatus)> = Vec::new();
        let mut seed = 7u64;
        let mut next = || {
            seed = seed.wrapping_mul(6364136223846793005).wrapping_add(1442695040888963407);
            seed >> 33
        };
        for batch in 0..40 {
            let records: Vec<_> = (0..10)
                .map(|_| {
                    let node = 1 + (next() % 3) as i64;
                    let hour = (batch / 4 + (next() % 3) as i64).min(11);
                    let status = if next() % 5 == 0 {
                        RequestStatus::Error
                    } else {
                        RequestStatus::Success
                    };
                    record(node, hour, status)
                })
                .collect();
            writer.commit(&records, LockWait::Never).unwrap();
            for r in &records {
                expected.push(((expected.len() + 1) as i64, r.node_id.unwrap(), r.status));
            }
        }
        let mut read_rows = 0;
        for node in 1..=3 {
            for status in [None, Some(RequestStatus::Success), Some(RequestStatus::Error)] {
                let filter = HistoryFilter {
                    node_id: Some(node),
                    status,
                    limit: 7,
                    ..Default::default()
                };
                let pages = all_pages(store, filter).await;
                assert!(pages.iter().all(|p| p.len() <= 7));
                assert!(pages.iter().rev().skip(1).all(|p| p.len() == 7), "{pages:?}");
                let ids: Vec<i64> = pages.concat();
                assert_eq!(ids, expect(&expected, node, status), "node {node} {status:?}");
                read_rows += ids.len();
            }
        }
        assert_eq!(read_rows, 2 * 400);

        // Pruned history: its ranges are skipped, what is left still pages right.
        let pruned = store
            .prune_history(Utc.timestamp_opt(1_700_000_000 + 6 * 3600, 0).unwrap())
            .await
            .unwrap();
        assert!(pruned > 0);
        let left: Vec<i64> = store
            .db()
            .fetch_all("SELECT id FROM request_history", &[], |r| r.int("id"))
            .await
            .unwrap();
        expected.retain(|(id, _, _)| left.contains(id));
        for node in 1..=3 {
            let filter = HistoryFilter {
                node_id: Some(node),
                limit: 5,
                ..Default::default()
            };
            assert_eq!(all_pages(store, filter).await.concat(), expect(&expected, node, None));
        }
    }

    #[tokio::test]
    async fn bodies_are_read_with_their_record_and_pruned_with_it() {
        let dir = tempfile::tempdir().unwrap();
        for (engine, store) in crate::store::testing::stores(&dir).await {
            eprintln!("engine: {engine}");
            let body = |text: &str, truncated| {
                Some(StoredBody {
                    text: text.into(),
                    truncated,
                })
            };
            let old = RequestResponseRecord {
                request_body: body("{\"old\": \"é\"}", false),
                response_body: body("data: 1", true),
                ..record(1, 0, RequestStatus::Success)
            };
            let new = RequestResponseRecord {
                request_body: body("{\"new\": 1}", true),
                ..record(1, 5, RequestStatus::Success)
            };
            let plain = record(1, 5, RequestStatus::Success);
            let mut writer = store.writer().unwrap();
            writer
                .commit(&[old.clone(), new.clone(), plain], LockWait::Never)
                .unwrap();
            let bodies = |id| {
                let store = &store;
                async move {
                    let r = store.history_record(id).await.unwrap().unwrap();
                    (r.request_body, r.response_body)
                }
            };
            assert_eq!(bodies(1).await, (old.request_body, old.response_body));
            assert_eq!(bodies(2).await, (new.request_body.clone(), None));
            assert_eq!(bodies(3).await, (None, None));
            let rows = || async {
                store
                    .db()
                    .fetch_all("SELECT id FROM request_bodies ORDER BY id", &[], |r| r.int("id"))
                    .await
                    .unwrap()
            };
            assert_eq!(rows().await, [1, 2]);
            // Retention deletes the first record, and its bodies with it.
            let cutoff = Utc.timestamp_opt(1_700_000_000 + 3600, 0).unwrap();
            assert_eq!(store.prune_history(cutoff).await.unwrap(), 1);
            assert_eq!(rows().await, [2]);
            assert_eq!(bodies(2).await, (new.request_body, None));
        }
    }

    #[test]
    fn ranges_merge_when_they_overlap_or_touch() {
        let mut ranges = [(1, 4), (10, 12), (3, 6), (7, 8), (20, 30), (25, 26)];
        assert_eq!(merge_ranges(&mut ranges), [(20, 30), (10, 12), (1, 8)]);
        assert_eq!(merge_ranges(&mut []), []);
    }
}
