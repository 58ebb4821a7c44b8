//! The usage export (`GET /api/dashboard/export.csv`): token figures per local day or
//! month × client key × node × model in a time zone, from the key rollups.
//!
//! The days are built exactly as the daily series builds them (UTC hours over runs of
//! constant offset, see `series`), so the rows of a day sum to that day's entry of
//! `/stats/tokens/daily` with the same zone, and a month's rows to `/monthly`'s.
//! Groups with no request are left out (the series are zero-filled; the export lists
//! what happened).

use std::collections::{BTreeMap, HashMap};

use chrono::{DateTime, Days, Months, NaiveDate};
use chrono_tz::Tz;

use super::series::{day_range, month_range, offset_runs, parse_tz};
use super::StatsError;
use crate::clock::{first_of_month, local_midnight};
use crate::keys::KeyRing;
use crate::nodes::NodeRegistry;
use crate::store::{RollupTotals, Store, ANONYMOUS};

/// The grain of the export's periods.
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub enum Period {
    Day,
    Month,
}

#[derive(Debug, Clone)]
pub struct ExportQuery {
    pub period: Period,
    /// First day (or day 1 of the first month).
    pub from: Option<NaiveDate>,
    /// Last day (or day 1 of the last month).
    pub to: Option<NaiveDate>,
    pub tz: Option<String>,
    /// Only this key (`ANONYMOUS`: requests without one).
    pub key_id: Option<i64>,
    pub node_id: Option<i64>,
    pub model: Option<String>,
}

/// One row: a period, a key, a node, a model and their sums.
#[derive(Debug, Clone, PartialEq)]
pub struct UsageRow {
    /// `YYYY-MM-DD` or `YYYY-MM` in the export's zone.
    pub period: String,
    /// `None`: anonymous.
    pub key_id: Option<i64>,
    pub key_name: String,
    pub node_id: i64,
    pub node_name: String,
    pub model: String,
    pub totals: RollupTotals,
}

#[derive(Debug, Clone)]
pub struct UsageExport {
    pub tz: String,
    pub period: Period,
    /// Ordered by period, then key (anonymous first), node and model.
    pub rows: Vec<UsageRow>,
}

pub async fn usage_export(
    store: &Store,
    registry: &NodeRegistry,
    keys: &KeyRing,
    q: ExportQuery,
) -> Result<UsageExport, StatsError> {
    let tz: Tz = parse_tz(q.tz.as_deref())?;
    let (from, to, start, end) = match q.period {
        Period::Day => {
            let (from, to) = day_range(tz, q.from, q.to, None)?;
            (
                from,
                to,
                local_midnight(tz, from),
                local_midnight(tz, to + Days::new(1)),
            )
        }
        Period::Month => {
            let (from, to) = month_range(tz, q.from, q.to, None)?;
            let last_day = to + Months::new(1) - Days::new(1);
            (
                from,
                last_day,
                local_midnight(tz, from),
                local_midnight(tz, to + Months::new(1)),
            )
        }
    };
    let start = start.timestamp().div_euclid(3600) * 3600;
    let end = (end.timestamp() + 3599).div_euclid(3600) * 3600;
    let mut sums: BTreeMap<(NaiveDate, i64, i64, String), RollupTotals> = BTreeMap::new();
    for (run_start, run_end, offset) in offset_runs(tz, start, end) {
        for row in store.export_rows(run_start, run_end, offset).await? {
            let day = DateTime::from_timestamp(row.local_day * 86_400, 0)
                .unwrap_or_default()
                .date_naive();
            if day < from || day > to {
                continue;
            }
            let wanted = q.key_id.is_none_or(|k| k == row.key_id)
                && q.node_id.is_none_or(|n| n == row.node_id)
                && q.model.as_ref().is_none_or(|m| *m == row.model);
            if !wanted {
                continue;
            }
            let period = match q.period {
                Period::Day => day,
                Period::Month => first_of_month(day),
            };
            sums.entry((period, row.key_id, row.node_id, row.model))
                .or_default()
                .add(&row.totals);
        }
    }
    let node_names: HashMap<i64, String> = registry.all().iter().map(|n| (n.id, n.name())).collect();
    let key_names: HashMap<i64, String> = keys.all().iter().map(|k| (k.id, k.settings().name.clone())).collect();
    let rows = sums
        .into_iter()
        .map(|((period, key_id, node_id, model), totals)| {
            let key_id = (key_id != ANONYMOUS).then_some(key_id);
            UsageRow {
                period: match q.period {
                    Period::Day => period.format("%Y-%m-%d").to_string(),
                    Period::Month => period.format("%Y-%m").to_string(),
                },
                key_name: match key_id {
                    None => "anonymous".to_string(),
                    Some(id) => key_names.get(&id).cloned().unwrap_or_else(|| format!("key {id}")),
                },
                key_id,
                node_name: node_names
                    .get(&node_id)
                    .cloned()
                    .unwrap_or_else(|| format!("node {node_id}")),
                node_id,
                model,
                totals,
            }
        })
        .collect();
    Ok(UsageExport {
        tz: tz.name().to_string(),
        period: q.period,
        rows,
    })
}
