//! Daily and monthly token series in an IANA time zone, built from hourly rollups.

use std::collections::BTreeMap;

use chrono::{DateTime, Datelike, Days, Months, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;
use common::protocol::{DailyTokenSeries, DailyTokenStats, MonthlyTokenSeries, MonthlyTokenStats};

use super::{bad, StatsError};
use crate::clock::{first_of_month, local_midnight};
use crate::store::{GroupBy, RollupFilter, RollupTotals, Store};

/// Longest daily range (about ten years).
pub const MAX_DAYS: u32 = 3660;
/// Longest monthly range.
pub const MAX_MONTHS: u32 = 120;

#[derive(Debug, Clone, Default)]
pub struct DailyQuery {
    pub from: Option<NaiveDate>,
    pub to: Option<NaiveDate>,
    pub days: Option<u32>,
    /// Only this client key (`ANONYMOUS`: requests without one).
    pub key_id: Option<i64>,
    pub node_id: Option<i64>,
    pub model: Option<String>,
    pub tz: Option<String>,
}

#[derive(Debug, Clone, Default)]
pub struct MonthlyQuery {
    /// First day of the first month.
    pub from: Option<NaiveDate>,
    /// First day of the last month.
    pub to: Option<NaiveDate>,
    pub months: Option<u32>,
    /// Only this client key (`ANONYMOUS`: requests without one).
    pub key_id: Option<i64>,
    pub node_id: Option<i64>,
    pub model: Option<String>,
    pub tz: Option<String>,
}

impl DailyQuery {
    fn scope(&self) -> RollupFilter {
        scope(self.key_id, self.node_id, &self.model)
    }
}

impl MonthlyQuery {
    fn scope(&self) -> RollupFilter {
        scope(self.key_id, self.node_id, &self.model)
    }
}

fn scope(key_id: Option<i64>, node_id: Option<i64>, model: &Option<String>) -> RollupFilter {
    RollupFilter {
        key_id,
        node_id,
        model: model.clone(),
        ..Default::default()
    }
}

pub fn parse_tz(tz: Option<&str>) -> Result<Tz, StatsError> {
    match tz {
        None | Some("") => Ok(Tz::UTC),
        Some(name) => name.parse::<Tz>().map_err(|_| {
            bad(
                "tz",
                format!("unknown time zone '{name}' (expected an IANA name such as Europe/Paris)"),
            )
        }),
    }
}

/// The zone's UTC offset at `t` (Unix seconds), in seconds.
fn offset_at(tz: Tz, t: i64) -> i32 {
    use chrono::Offset;
    let at = DateTime::from_timestamp(t, 0).unwrap_or_default();
    tz.offset_from_utc_datetime(&at.naive_utc()).fix().local_minus_utc()
}

/// Splits the hours of `[start, end)` into runs over which the zone's offset is
/// constant: one run per DST period, found by checking each day and then the hours of
/// a day whose offset changed.
pub(super) fn offset_runs(tz: Tz, start: i64, end: i64) -> Vec<(i64, i64, i32)> {
    let mut runs = Vec::new();
    let (mut run_start, mut offset) = (start, offset_at(tz, start));
    let mut t = start;
    while t < end {
        let next_day = (t + 86_400).min(end);
        if offset_at(tz, next_day.min(end - 1)) != offset {
            let mut h = t + 3600;
            while h < next_day && offset_at(tz, h) == offset {
                h += 3600;
            }
            let h = h.min(end);
            runs.push((run_start, h, offset));
            run_start = h;
            offset = offset_at(tz, h);
            t = h;
            continue;
        }
        t = next_day;
    }
    if run_start < end {
        runs.push((run_start, end, offset));
    }
    runs
}

/// Sums per local date between two instants, in a few small queries: one per run of
/// constant UTC offset, each grouping hours by `(hour_start + offset) / 86400`.
async fn local_days(
    store: &Store,
    tz: Tz,
    scope: RollupFilter,
    from: DateTime<Utc>,
    to: DateTime<Utc>,
) -> Result<Vec<(NaiveDate, RollupTotals)>, StatsError> {
    // Widened to whole hours; dates outside the local range are dropped by the caller.
    let start = from.timestamp().div_euclid(3600) * 3600;
    let end = (to.timestamp() + 3599).div_euclid(3600) * 3600;
    let mut out = Vec::new();
    for (run_start, run_end, utc_offset_secs) in offset_runs(tz, start, end) {
        let filter = RollupFilter {
            from_hour: Some(run_start),
            to_hour: Some(run_end),
            ..scope.clone()
        };
        for (k, t) in store
            .rollup_totals(GroupBy::LocalDay { utc_offset_secs }, &filter)
            .await?
        {
            let day = k.local_day.unwrap_or_default();
            let date = DateTime::from_timestamp(day * 86_400, 0)
                .unwrap_or_default()
                .date_naive();
            out.push((date, t));
        }
    }
    Ok(out)
}

fn today(tz: Tz) -> NaiveDate {
    Utc::now().with_timezone(&tz).date_naive()
}

/// The inclusive local dates of a daily query: `from`/`to`, or `days` ending today.
pub(super) fn day_range(
    tz: Tz,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    days: Option<u32>,
) -> Result<(NaiveDate, NaiveDate), StatsError> {
    if days.is_some() && (from.is_some() || to.is_some()) {
        return Err(bad("days", "give either days or from/to, not both"));
    }
    let to = to.unwrap_or_else(|| today(tz));
    let from = match (from, days) {
        (Some(f), _) => f,
        (None, days) => {
            let days = days.unwrap_or(30);
            if days == 0 || days > MAX_DAYS {
                return Err(bad("days", format!("must be between 1 and {MAX_DAYS}")));
            }
            to - Days::new(days as u64 - 1)
        }
    };
    if from > to {
        return Err(bad("from", "from is after to"));
    }
    let span = (to - from).num_days() + 1;
    if span > MAX_DAYS as i64 {
        return Err(bad("to", format!("range of {span} days is longer than {MAX_DAYS}")));
    }
    Ok((from, to))
}

/// The first days of the first and last months of a monthly query: `from`/`to`, or
/// `months` ending this month.
pub(super) fn month_range(
    tz: Tz,
    from: Option<NaiveDate>,
    to: Option<NaiveDate>,
    months: Option<u32>,
) -> Result<(NaiveDate, NaiveDate), StatsError> {
    if months.is_some() && (from.is_some() || to.is_some()) {
        return Err(bad("months", "give either months or from/to, not both"));
    }
    let to = first_of_month(to.unwrap_or_else(|| today(tz)));
    let from = match (from, months) {
        (Some(f), _) => first_of_month(f),
        (None, months) => {
            let months = months.unwrap_or(12);
            if months == 0 || months > MAX_MONTHS {
                return Err(bad("months", format!("must be between 1 and {MAX_MONTHS}")));
            }
            to - Months::new(months - 1)
        }
    };
    if from > to {
        return Err(bad("from", "from is after to"));
    }
    let span = month_span(from, to);
    if span > MAX_MONTHS as i32 {
        return Err(bad("to", format!("range of {span} months is longer than {MAX_MONTHS}")));
    }
    Ok((from, to))
}

/// The number of months from `from` to `to`, both included.
fn month_span(from: NaiveDate, to: NaiveDate) -> i32 {
    (to.year() - from.year()) * 12 + to.month() as i32 - from.month() as i32 + 1
}

pub async fn daily(store: &Store, q: DailyQuery) -> Result<DailyTokenSeries, StatsError> {
    let tz = parse_tz(q.tz.as_deref())?;
    let (from, to) = day_range(tz, q.from, q.to, q.days)?;
    let span = (to - from).num_days() + 1;
    let start = local_midnight(tz, from);
    let end = local_midnight(tz, to + Days::new(1));
    let mut buckets: BTreeMap<NaiveDate, RollupTotals> = BTreeMap::new();
    for (d, t) in local_days(store, tz, q.scope(), start, end).await? {
        if d >= from && d <= to {
            buckets.entry(d).or_default().add(&t);
        }
    }
    let days = from
        .iter_days()
        .take(span as usize)
        .map(|d| {
            let t = buckets.get(&d).copied().unwrap_or_default();
            DailyTokenStats {
                date: d.format("%Y-%m-%d").to_string(),
                input_tokens: t.input_tokens,
                output_tokens: t.output_tokens,
                total_tokens: t.total_tokens,
                request_count: t.request_count,
            }
        })
        .collect();
    Ok(DailyTokenSeries {
        tz: tz.name().to_string(),
        days,
    })
}

pub async fn monthly(store: &Store, q: MonthlyQuery) -> Result<MonthlyTokenSeries, StatsError> {
    let tz = parse_tz(q.tz.as_deref())?;
    let (from, to) = month_range(tz, q.from, q.to, q.months)?;
    let span = month_span(from, to);
    let start = local_midnight(tz, from);
    let end = local_midnight(tz, to + Months::new(1));
    let mut buckets: BTreeMap<NaiveDate, RollupTotals> = BTreeMap::new();
    for (d, t) in local_days(store, tz, q.scope(), start, end).await? {
        let m = first_of_month(d);
        if m >= from && m <= to {
            buckets.entry(m).or_default().add(&t);
        }
    }
    let months = (0..span as u32)
        .map(|i| {
            let m = from + Months::new(i);
            let t = buckets.get(&m).copied().unwrap_or_default();
            MonthlyTokenStats {
                month: m.format("%Y-%m").to_string(),
                input_tokens: t.input_tokens,
                output_tokens: t.output_tokens,
                total_tokens: t.total_tokens,
                request_count: t.request_count,
            }
        })
        .collect();
    Ok(MonthlyTokenSeries {
        tz: tz.name().to_string(),
        months,
    })
}

#[cfg(test)]
mod tests {
    use super::*;

    #[test]
    fn midnight_in_dst_zones() {
        let tz: Tz = "Europe/Paris".parse().unwrap();
        let d = NaiveDate::from_ymd_opt(2026, 3, 29).unwrap(); // DST starts at 02:00
        assert_eq!(local_midnight(tz, d).to_rfc3339(), "2026-03-28T23:00:00+00:00");
        let d = NaiveDate::from_ymd_opt(2026, 3, 30).unwrap();
        assert_eq!(local_midnight(tz, d).to_rfc3339(), "2026-03-29T22:00:00+00:00");
        // Midnight does not exist in America/Santiago on DST day; the day starts at 01:00.
        let tz: Tz = "America/Santiago".parse().unwrap();
        let d = NaiveDate::from_ymd_opt(2026, 9, 6).unwrap();
        assert_eq!(local_midnight(tz, d).to_rfc3339(), "2026-09-06T04:00:00+00:00");
    }

    #[test]
    fn offset_runs_split_at_dst_changes() {
        let tz: Tz = "Europe/Paris".parse().unwrap();
        let start = DateTime::parse_from_rfc3339("2026-03-01T00:00:00Z")
            .unwrap()
            .timestamp();
        let end = DateTime::parse_from_rfc3339("2026-11-01T00:00:00Z")
            .unwrap()
            .timestamp();
        let runs = offset_runs(tz, start, end);
        let change = |s: &str| DateTime::parse_from_rfc3339(s).unwrap().timestamp();
        assert_eq!(
            runs,
            [
                (start, change("2026-03-29T01:00:00Z"), 3600),
                (change("2026-03-29T01:00:00Z"), change("2026-10-25T01:00:00Z"), 7200),
                (change("2026-10-25T01:00:00Z"), end, 3600),
            ]
        );
        let utc = offset_runs(Tz::UTC, start, end);
        assert_eq!(utc, [(start, end, 0)]);
    }

    #[test]
    fn unknown_zone_names_the_parameter() {
        let e = parse_tz(Some("Mars/Base")).unwrap_err();
        assert!(e.to_string().contains("'tz'"), "{e}");
    }
}
