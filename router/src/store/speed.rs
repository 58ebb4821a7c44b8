//! Speed figures per node × model over a recent window, read from `request_history`
//! (the rollups keep sums, not the distributions a percentile needs).
//!
//! Definitions (the API documents the same):
//! - requests: records with a node that started in the window, any status;
//! - time to first token: `time_to_first_token_ms` of the records that have one (the
//!   observations of the `llm_router_time_to_first_token_seconds` histogram), p50 and
//!   p95 by nearest rank;
//! - generation: streamed successful records with a time to first token shorter than
//!   their duration; generation time is `duration_ms − time_to_first_token_ms`.
//!
//! The window's start is an index range on `timestamp`; both queries scan the window
//! only, so the window must stay short next to the history kept.

use chrono::{DateTime, Utc};
use sqlx::Row;

use super::{to_millis, to_u64, Store, StoreResult};

/// Sums and percentiles of one node × model.
#[derive(Debug, Clone, Default, PartialEq, Eq)]
pub struct SpeedSums {
    pub node_id: i64,
    pub model: String,
    pub request_count: u64,
    pub success_count: u64,
    /// Records with a time to first token.
    pub ttft_count: u64,
    pub ttft_p50_ms: Option<u64>,
    pub ttft_p95_ms: Option<u64>,
    /// Streamed successful records with a generation phase.
    pub generation_count: u64,
    pub generation_output_tokens: u64,
    pub generation_ms: u64,
}

const SUMS: &str = "SELECT node_id, model, COUNT(*) AS requests,
        SUM(status = 'success') AS successes,
        COUNT(time_to_first_token_ms) AS ttft_count,
        SUM(generating) AS generation_count,
        SUM(CASE WHEN generating THEN output_tokens ELSE 0 END) AS generation_tokens,
        SUM(CASE WHEN generating THEN duration_ms - time_to_first_token_ms ELSE 0 END) AS generation_ms
    FROM (SELECT node_id, model, status, output_tokens, duration_ms, time_to_first_token_ms,
            (stream = 1 AND status = 'success' AND time_to_first_token_ms IS NOT NULL
             AND duration_ms > time_to_first_token_ms) AS generating
          FROM request_history WHERE timestamp >= ?1 AND timestamp < ?2 AND node_id IS NOT NULL)
    GROUP BY node_id, model ORDER BY node_id, model";

/// Nearest-rank percentiles: the value of rank ceil(p × n / 100) in ascending order.
const PERCENTILES: &str = "SELECT node_id, model,
        MAX(CASE WHEN rank = (n * 50 + 99) / 100 THEN v END) AS p50,
        MAX(CASE WHEN rank = (n * 95 + 99) / 100 THEN v END) AS p95
    FROM (SELECT node_id, model, time_to_first_token_ms AS v,
            ROW_NUMBER() OVER (PARTITION BY node_id, model ORDER BY time_to_first_token_ms) AS rank,
            COUNT(*) OVER (PARTITION BY node_id, model) AS n
          FROM request_history
          WHERE timestamp >= ?1 AND timestamp < ?2 AND node_id IS NOT NULL
            AND time_to_first_token_ms IS NOT NULL)
    GROUP BY node_id, model";

impl Store {
    /// Speed sums per node × model of the records that started in `[from, to)`,
    /// ordered by node id and model.
    pub async fn speed_sums(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> StoreResult<Vec<SpeedSums>> {
        // One snapshot for both queries: the counts and the percentiles agree.
        let mut tx = self.pool.begin().await?;
        let rows = sqlx::query(SUMS)
            .bind(to_millis(from))
            .bind(to_millis(to))
            .fetch_all(&mut *tx)
            .await?;
        let mut out: Vec<SpeedSums> = rows
            .iter()
            .map(|r| SpeedSums {
                node_id: r.get("node_id"),
                model: r.get("model"),
                request_count: to_u64(r.get("requests")),
                success_count: to_u64(r.get("successes")),
                ttft_count: to_u64(r.get("ttft_count")),
                generation_count: to_u64(r.get("generation_count")),
                generation_output_tokens: to_u64(r.get("generation_tokens")),
                generation_ms: to_u64(r.get("generation_ms")),
                ..SpeedSums::default()
            })
            .collect();
        let percentiles = sqlx::query(PERCENTILES)
            .bind(to_millis(from))
            .bind(to_millis(to))
            .fetch_all(&mut *tx)
            .await?;
        tx.commit().await?;
        for r in &percentiles {
            let (node_id, model): (i64, String) = (r.get("node_id"), r.get("model"));
            if let Some(s) = out.iter_mut().find(|s| s.node_id == node_id && s.model == model) {
                s.ttft_p50_ms = r.get::<Option<i64>, _>("p50").map(to_u64);
                s.ttft_p95_ms = r.get::<Option<i64>, _>("p95").map(to_u64);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use common::protocol::{RequestResponseRecord, RequestStatus, RequestType, TokenSource};

    use super::*;
    use crate::store::LockWait;

    fn record(
        at: i64,
        stream: bool,
        status: RequestStatus,
        ttft: Option<u64>,
        duration: u64,
        out: u64,
    ) -> RequestResponseRecord {
        let t = Utc.timestamp_opt(at, 0).unwrap();
        RequestResponseRecord {
            id: 0,
            timestamp: t,
            completed_at: t,
            request_type: RequestType::ChatCompletions,
            model: "m".into(),
            node_id: Some(1),
            node_name: Some("n".into()),
            client_ip: None,
            api_key_id: None,
            api_key_name: None,
            stream,
            status,
            http_status: 200,
            error_message: None,
            duration_ms: duration,
            time_to_first_token_ms: ttft,
            input_tokens: 1,
            output_tokens: out,
            total_tokens: 1 + out,
            token_source: TokenSource::Reported,
        }
    }

    #[tokio::test]
    async fn sums_and_nearest_rank_percentiles_of_the_window() {
        let dir = tempfile::tempdir().unwrap();
        let store = Store::open(&format!("sqlite://{}/s.db", dir.path().display()))
            .await
            .unwrap();
        let mut w = store.writer().unwrap();
        let base = 1_800_000_000;
        let mut records: Vec<RequestResponseRecord> = (1..=20)
            .map(|i| record(base + i, true, RequestStatus::Success, Some(i as u64 * 10), 1000, 50))
            .collect();
        // Counted as requests; no generation (plain, error, or no first token).
        records.push(record(base + 30, false, RequestStatus::Success, Some(5), 5, 7));
        records.push(record(base + 31, true, RequestStatus::Error, Some(300), 400, 3));
        records.push(record(base + 32, true, RequestStatus::Cancelled, None, 400, 0));
        // Outside the window.
        records.push(record(base - 1, true, RequestStatus::Success, Some(1), 1000, 999));
        w.commit(&records, LockWait::Never).unwrap();
        let from = Utc.timestamp_opt(base, 0).unwrap();
        let to = Utc.timestamp_opt(base + 60, 0).unwrap();
        let sums = store.speed_sums(from, to).await.unwrap();
        // 22 first tokens: 5, 10..200, 300. p50 = rank 11 (100), p95 = rank 21 (200).
        let ttft_sum_generation: u64 = (1..=20).map(|i| 1000 - i * 10).sum();
        assert_eq!(
            sums,
            [SpeedSums {
                node_id: 1,
                model: "m".into(),
                request_count: 23,
                success_count: 21,
                ttft_count: 22,
                ttft_p50_ms: Some(100),
                ttft_p95_ms: Some(200),
                generation_count: 20,
                generation_output_tokens: 1000,
                generation_ms: ttft_sum_generation,
            }]
        );
    }
}
