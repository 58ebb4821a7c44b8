//! The arithmetic of a key's limits, free of locks and I/O: per-minute windows and
//! the token budgets of the current day and month.
//!
//! Semantics (documented in docs/API.md):
//! - `rpm_limit`: requests admitted in the last 60 seconds, counted per whole second
//!   (a request admitted at 12:00:00.9 leaves the window at 12:01:00.0). Refused
//!   requests do not count.
//! - `tpm_limit`: input + output tokens of the key's requests that *finished* in the
//!   last 60 seconds, by the same seconds. A request is admitted while the window is
//!   below the limit; its tokens are charged when it ends.
//! - budgets: total tokens of the requests that *started* in the current day (month)
//!   of `budget_tz`, charged when they end, the same tokens as every statistic. A
//!   request is refused once the figure is at or above the budget; requests admitted
//!   before that complete, so the overshoot is bounded by the requests in flight.
//!
//! `governor` and similar crates implement GCRA (a smoothed rate with a burst),
//! which admits a request every 60/n seconds once the burst is spent: not the
//! "n requests in the last minute" of the contract, and they cannot charge tokens
//! after the fact. A ring of 60 one-second counters is both exact and small.

use chrono::{DateTime, Days, Months, NaiveDate, Utc};
use chrono_tz::Tz;

use crate::clock::{first_of_month, local_midnight};

const WINDOW_SECS: i64 = 60;

/// Counts per second over the last 60 seconds.
#[derive(Debug, Clone)]
pub struct Window {
    /// `(second, count)`, indexed by `second mod 60`.
    slots: [(i64, u64); WINDOW_SECS as usize],
}

impl Default for Window {
    fn default() -> Self {
        Window {
            slots: [(i64::MIN, 0); WINDOW_SECS as usize],
        }
    }
}

impl Window {
    fn live(&self, now: i64) -> impl Iterator<Item = &(i64, u64)> {
        self.slots
            .iter()
            .filter(move |(s, _)| *s > now - WINDOW_SECS && *s <= now)
    }

    /// The count of the last 60 seconds up to `now` (Unix seconds).
    pub fn total(&self, now: i64) -> u64 {
        self.live(now).map(|(_, c)| *c).sum()
    }

    pub fn add(&mut self, now: i64, n: u64) {
        let slot = &mut self.slots[now.rem_euclid(WINDOW_SECS) as usize];
        if slot.0 != now {
            *slot = (now, 0);
        }
        slot.1 = slot.1.saturating_add(n);
    }

    /// Seconds from `now` until the count drops below `limit` (at least 1).
    pub fn retry_after(&self, now: i64, limit: u64) -> u64 {
        let mut live: Vec<(i64, u64)> = self.live(now).copied().collect();
        live.sort_unstable();
        let mut total: u64 = live.iter().map(|(_, c)| c).sum();
        for (second, count) in live {
            total -= count;
            if total < limit {
                return (second + WINDOW_SECS - now).max(1) as u64;
            }
        }
        1
    }
}

/// Tokens spent in one period (a local day, or a month: its first day).
#[derive(Debug, Clone, Copy, PartialEq, Eq)]
pub struct Spent {
    pub period: NaiveDate,
    pub tokens: u64,
}

impl Spent {
    /// Tokens spent in `period`: zero once it has moved past the one counted.
    pub fn in_period(&self, period: NaiveDate) -> u64 {
        if self.period == period {
            self.tokens
        } else {
            0
        }
    }

    /// Counts `tokens` of a request that started in `period`. A request of a past
    /// period (it started before midnight and ended after) changes nothing current.
    pub fn add(&mut self, period: NaiveDate, tokens: u64) {
        if period == self.period {
            self.tokens = self.tokens.saturating_add(tokens);
        } else if period > self.period {
            *self = Spent { period, tokens };
        }
    }
}

impl Spent {
    /// Takes the store's count of `period` (every replica's committed requests) when it
    /// is higher than this replica's own count: its own requests not yet committed
    /// keep counting until the store has them.
    pub fn take_stored(&mut self, period: NaiveDate, tokens: u64) {
        if period == self.period {
            self.tokens = self.tokens.max(tokens);
        } else if period > self.period {
            *self = Spent { period, tokens };
        }
    }
}

/// The local day and month (its first day) of `at` in `tz`.
pub fn periods(tz: Tz, at: DateTime<Utc>) -> (NaiveDate, NaiveDate) {
    let day = at.with_timezone(&tz).date_naive();
    (day, first_of_month(day))
}

/// Seconds from `now` to the start of the next local day (`monthly`: month) in `tz`.
pub fn until_next_period(tz: Tz, now: DateTime<Utc>, monthly: bool) -> u64 {
    let (day, month) = periods(tz, now);
    let next = if monthly {
        month + Months::new(1)
    } else {
        day + Days::new(1)
    };
    (local_midnight(tz, next) - now).num_seconds().max(1) as u64
}

#[cfg(test)]
mod tests {
    use chrono::TimeZone;

    use super::*;

    #[test]
    fn a_window_counts_the_last_sixty_seconds() {
        let mut w = Window::default();
        w.add(1000, 1);
        w.add(1000, 1);
        w.add(1030, 1);
        assert_eq!(w.total(1000), 2);
        assert_eq!(w.total(1059), 3);
        // Second 1000 leaves the window at 1060.
        assert_eq!(w.total(1060), 1);
        assert_eq!(w.total(1090), 0);
        // With a limit of 3 reached at 1030: the two of second 1000 leave at 1060.
        assert_eq!(w.retry_after(1030, 3), 30);
        // A limit of 2: one must leave, the first second's pair.
        assert_eq!(w.retry_after(1030, 2), 30);
        // A limit of 1: both seconds must leave.
        assert_eq!(w.retry_after(1030, 1), 60);
        // A slot reused a minute later starts from zero.
        w.add(1060, 5);
        assert_eq!(w.total(1060), 6);
    }

    #[test]
    fn spent_tokens_follow_the_period_of_the_request_start() {
        let d = |day| NaiveDate::from_ymd_opt(2026, 3, day).unwrap();
        let mut s = Spent {
            period: d(1),
            tokens: 10,
        };
        s.add(d(1), 5);
        assert_eq!(s.in_period(d(1)), 15);
        assert_eq!(s.in_period(d(2)), 0);
        s.add(d(2), 7);
        assert_eq!(s.in_period(d(2)), 7);
        // A request of yesterday ending today counts for yesterday, not today.
        s.add(d(1), 100);
        assert_eq!(s.in_period(d(2)), 7);
    }

    #[test]
    fn the_stored_count_is_taken_when_it_is_higher() {
        let d = |day| NaiveDate::from_ymd_opt(2026, 3, day).unwrap();
        let mut s = Spent {
            period: d(1),
            tokens: 10,
        };
        // Another replica spent 30: the store has 40.
        s.take_stored(d(1), 40);
        assert_eq!(s.in_period(d(1)), 40);
        // This replica's own 5 are not committed yet: the store still says 40.
        s.add(d(1), 5);
        s.take_stored(d(1), 40);
        assert_eq!(s.in_period(d(1)), 45);
        // A past period changes nothing; a new one starts from the store.
        s.take_stored(d(1), 1);
        assert_eq!(s.in_period(d(1)), 45);
        s.take_stored(d(2), 3);
        assert_eq!(s.in_period(d(2)), 3);
    }

    #[test]
    fn periods_are_local_to_the_zone() {
        let tz: Tz = "Asia/Tokyo".parse().unwrap();
        // 2026-03-31 15:30 UTC is 2026-04-01 00:30 in Tokyo.
        let at = Utc.with_ymd_and_hms(2026, 3, 31, 15, 30, 0).unwrap();
        let (day, month) = periods(tz, at);
        assert_eq!(day, NaiveDate::from_ymd_opt(2026, 4, 1).unwrap());
        assert_eq!(month, NaiveDate::from_ymd_opt(2026, 4, 1).unwrap());
        // Next Tokyo midnight: 2026-04-01 15:00 UTC.
        assert_eq!(until_next_period(tz, at, false), 23 * 3600 + 30 * 60);
        assert_eq!(periods(Tz::UTC, at).0, NaiveDate::from_ymd_opt(2026, 3, 31).unwrap());
    }
}
