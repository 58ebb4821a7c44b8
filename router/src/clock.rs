//! The router's clock: UTC now, optionally shifted.
//!
//! Everything that depends on the date (a record's timestamp, a key's rate windows,
//! its daily and monthly budgets) reads this clock, so a test can move one router to
//! just before a day boundary in some time zone (the hidden `--clock-offset-secs`)
//! without touching the machine's clock or other routers in the same process.

use chrono::{DateTime, Datelike, LocalResult, NaiveDate, TimeZone, Utc};
use chrono_tz::Tz;

#[derive(Debug, Clone, Copy, Default)]
pub struct Clock {
    offset_ms: i64,
}

impl Clock {
    /// A clock `offset_secs` ahead of the system's (behind when negative).
    pub fn shifted(offset_secs: i64) -> Clock {
        Clock {
            offset_ms: offset_secs.saturating_mul(1000),
        }
    }

    pub fn now(&self) -> DateTime<Utc> {
        let now = Utc::now();
        if self.offset_ms == 0 {
            return now;
        }
        now + chrono::Duration::milliseconds(self.offset_ms)
    }
}

/// The UTC instant of local midnight starting `date` (the first instant of the day
/// when midnight falls in a DST gap).
pub fn local_midnight(tz: Tz, date: NaiveDate) -> DateTime<Utc> {
    let midnight = date.and_hms_opt(0, 0, 0).expect("midnight exists");
    match tz.from_local_datetime(&midnight) {
        LocalResult::Single(t) | LocalResult::Ambiguous(t, _) => t.with_timezone(&Utc),
        LocalResult::None => (1..=3)
            .find_map(|h| {
                tz.from_local_datetime(&(midnight + chrono::Duration::hours(h)))
                    .earliest()
            })
            .map(|t| t.with_timezone(&Utc))
            .unwrap_or_else(|| midnight.and_utc()),
    }
}

pub fn first_of_month(d: NaiveDate) -> NaiveDate {
    d.with_day(1).expect("day 1 exists")
}
