//! Speed per node × model over a recent window: requests per minute, time to first
//! token (p50, p95) and output tokens per second of generation, from the history
//! (see `store::speed` for the definitions). The history survives a restart, so do
//! these figures; a window longer than the history kept covers what is left.

use std::collections::HashMap;

use chrono::{DateTime, Utc};
use common::protocol::{NodeModelSpeed, SpeedStats};

use super::{bad, StatsError};
use crate::nodes::NodeRegistry;
use crate::store::Store;

/// Longest window: a week, so that a query scans a bounded slice of the history.
pub const MAX_WINDOW_MINUTES: u32 = 7 * 24 * 60;
pub const DEFAULT_WINDOW_MINUTES: u32 = 60;

pub async fn speed(
    store: &Store,
    registry: &NodeRegistry,
    window_minutes: Option<u32>,
    now: DateTime<Utc>,
) -> Result<SpeedStats, StatsError> {
    let minutes = window_minutes.unwrap_or(DEFAULT_WINDOW_MINUTES);
    if minutes == 0 || minutes > MAX_WINDOW_MINUTES {
        return Err(bad("minutes", format!("must be between 1 and {MAX_WINDOW_MINUTES}")));
    }
    let from = now - chrono::Duration::minutes(minutes as i64);
    let names: HashMap<i64, String> = registry.all().iter().map(|n| (n.id, n.name())).collect();
    let by_node_model = store
        .speed_sums(from, now)
        .await?
        .into_iter()
        .map(|s| NodeModelSpeed {
            node_name: names
                .get(&s.node_id)
                .cloned()
                .unwrap_or_else(|| format!("node {}", s.node_id)),
            node_id: s.node_id,
            model: s.model,
            request_count: s.request_count,
            success_count: s.success_count,
            requests_per_minute: s.request_count as f64 / minutes as f64,
            ttft_count: s.ttft_count,
            ttft_p50_ms: s.ttft_p50_ms,
            ttft_p95_ms: s.ttft_p95_ms,
            generation_count: s.generation_count,
            generation_output_tokens: s.generation_output_tokens,
            generation_ms: s.generation_ms,
            output_tokens_per_second: (s.generation_ms > 0)
                .then(|| s.generation_output_tokens as f64 * 1000.0 / s.generation_ms as f64),
        })
        .collect();
    Ok(SpeedStats {
        window_minutes: minutes,
        from,
        to: now,
        by_node_model,
    })
}
