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

use super::sql::{args, StoreRow};
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

/// Integer sums cast back to `BIGINT` (PostgreSQL sums `BIGINT` into `NUMERIC`).
const SUMS: &str = "SELECT node_id, model, COUNT(*) AS requests,
        CAST(SUM(CASE WHEN status = 'success' THEN 1 ELSE 0 END) AS BIGINT) AS successes,
        COUNT(time_to_first_token_ms) AS ttft_count,
        CAST(SUM(generating) AS BIGINT) AS generation_count,
        CAST(SUM(CASE WHEN generating = 1 THEN output_tokens ELSE 0 END) AS BIGINT) AS generation_tokens,
        CAST(SUM(CASE WHEN generating = 1 THEN duration_ms - time_to_first_token_ms ELSE 0 END) AS BIGINT)
            AS generation_ms
    FROM (SELECT node_id, model, status, output_tokens, duration_ms, time_to_first_token_ms,
            CASE WHEN stream = 1 AND status = 'success' AND time_to_first_token_ms IS NOT NULL
                      AND duration_ms > time_to_first_token_ms THEN 1 ELSE 0 END AS generating
          FROM request_history WHERE timestamp >= $1 AND timestamp < $2 AND node_id IS NOT NULL) AS window_rows
    GROUP BY node_id, model ORDER BY node_id, model";

/// Nearest-rank percentiles: the value of rank ceil(p × n / 100) in ascending order.
const PERCENTILES: &str = "SELECT node_id, model,
        MAX(CASE WHEN rank = (n * 50 + 99) / 100 THEN v END) AS p50,
        MAX(CASE WHEN rank = (n * 95 + 99) / 100 THEN v END) AS p95
    FROM (SELECT node_id, model, time_to_first_token_ms AS v,
            ROW_NUMBER() OVER (PARTITION BY node_id, model ORDER BY time_to_first_token_ms) AS rank,
            COUNT(*) OVER (PARTITION BY node_id, model) AS n
          FROM request_history
          WHERE timestamp >= $1 AND timestamp < $2 AND node_id IS NOT NULL
            AND time_to_first_token_ms IS NOT NULL) AS ranked
    GROUP BY node_id, model";

impl Store {
    /// Speed sums per node × model of the records that started in `[from, to)`,
    /// ordered by node id and model.
    pub async fn speed_sums(&self, from: DateTime<Utc>, to: DateTime<Utc>) -> StoreResult<Vec<SpeedSums>> {
        let window = args![to_millis(from), to_millis(to)];
        // One snapshot for both queries: the counts and the percentiles agree.
        let mut tx = self.snapshot().await?;
        let mut out = tx
            .fetch_all(SUMS, &window, |r| SpeedSums {
                node_id: r.int("node_id"),
                model: r.text("model"),
                request_count: to_u64(r.int("requests")),
                success_count: to_u64(r.int("successes")),
                ttft_count: to_u64(r.int("ttft_count")),
                generation_count: to_u64(r.int("generation_count")),
                generation_output_tokens: to_u64(r.int("generation_tokens")),
                generation_ms: to_u64(r.int("generation_ms")),
                ..SpeedSums::default()
            })
            .await?;
        let percentiles = tx
            .fetch_all(PERCENTILES, &window, |r: &dyn StoreRow| {
                (r.int("node_id"), r.text("model"), r.opt_int("p50"), r.opt_int("p95"))
            })
            .await?;
        tx.commit().await?;
        for (node_id, model, p50, p95) in percentiles {
            if let Some(s) = out.iter_mut().find(|s| s.node_id == node_id && s.model == model) {
                s.ttft_p50_ms = p50.map(to_u64);
                s.ttft_p95_ms = p95.map(to_u64);
            }
        }
        Ok(out)
    }
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;
    use common::protocol::{RequestResponseRecord, RequestStatus};

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
            timestamp: t,
            completed_at: t,
            stream,
            status,
            duration_ms: duration,
            time_to_first_token_ms: ttft,
            output_tokens: out,
            total_tokens: 1 + out,
            ..crate::store::testing::record()
        }
    }

    #[tokio::test]
    async fn sums_and_nearest_rank_percentiles_of_the_window() {
        let dir = tempfile::tempdir().unwrap();
        for (engine, store) in crate::store::testing::stores(&dir).await {
            eprintln!("engine: {engine}");
            sums_and_percentiles(&store).await;
        }
    }

    async fn sums_and_percentiles(store: &Store) {
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
