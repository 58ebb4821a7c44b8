//! A key's spending in its budget periods, read from the store's key rollups.
//!
//! Used when the ring loads (so a restart changes no budget), when a key's
//! `budget_tz` changes, and by the dashboard and `/v1/key`, which show what the store
//! holds.

use chrono::{DateTime, Utc};
use chrono_tz::Tz;

use super::limits::{periods, Spent};
use crate::clock::local_midnight;
use crate::store::{GroupBy, RollupFilter, RollupTotals, Store, StoreError};

/// Tokens of a key in the current local day and month of its zone.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct KeySpending {
    pub day: Spent,
    pub month: Spent,
}

impl KeySpending {
    /// Nothing spent in the periods of `now`.
    pub fn none(tz: Tz, now: DateTime<Utc>) -> KeySpending {
        let (day, month) = periods(tz, now);
        KeySpending {
            day: Spent { period: day, tokens: 0 },
            month: Spent {
                period: month,
                tokens: 0,
            },
        }
    }
}

/// The UTC hour holding local midnight of `date` (exact for whole-hour offsets; with
/// :30/:45 offsets the hour that straddles midnight counts in the day it starts in,
/// as in the daily statistics).
pub(super) fn hour_of_midnight(tz: Tz, date: chrono::NaiveDate) -> i64 {
    local_midnight(tz, date).timestamp().div_euclid(3600) * 3600
}

/// The totals of `key_id` (a key id, or `ANONYMOUS`) in the current local day and
/// month of `tz`.
pub async fn period_totals(
    store: &Store,
    key_id: i64,
    tz: Tz,
    now: DateTime<Utc>,
) -> Result<(RollupTotals, RollupTotals), StoreError> {
    let (day, month) = periods(tz, now);
    let mut out = [RollupTotals::default(); 2];
    for (slot, date) in out.iter_mut().zip([day, month]) {
        let filter = RollupFilter {
            key_id: Some(key_id),
            from_hour: Some(hour_of_midnight(tz, date)),
            ..Default::default()
        };
        let rows = store.rollup_totals(GroupBy::Nothing, &filter).await?;
        *slot = rows.first().map(|(_, t)| *t).unwrap_or_default();
    }
    Ok((out[0], out[1]))
}

/// What `key_id` spent today and this month in `tz`.
pub async fn key_spending(store: &Store, key_id: i64, tz: Tz, now: DateTime<Utc>) -> Result<KeySpending, StoreError> {
    let (day, month) = period_totals(store, key_id, tz, now).await?;
    let mut spent = KeySpending::none(tz, now);
    spent.day.tokens = day.total_tokens;
    spent.month.tokens = month.total_tokens;
    Ok(spent)
}
